"""Projective clustering ("MESSI"): k subspaces of dimension j fitted to the rows, out of core.

Each EM step is **one pass** over the row chunks of ``A``: every chunk assigns its rows to the
closest subspace with one GEMM against the stacked bases (``dist² = ‖a‖² − ‖X_l a‖²``, or
``‖X_l⊥ a‖²`` from the orthogonal complement when j > D/2, the smaller product) and returns the
per-cluster weighted D × D scatters (one sort by label, one ``syrk`` per cluster), which are
tree-summed; the client refits each subspace by an eigendecomposition (the restarts in parallel
threads). All restarts advance in the same pass, so ``n_init`` restarts cost no extra reads.

References
----------
.. [1] A. Maalouf, H. Lang, D. Rus, D. Feldman. "Deep learning meets projective clustering".
   ICLR 2021, arXiv:2010.04290.
.. [2] M. Tukan, A. Maalouf, M. Weksler, D. Feldman. "Compressed deep networks: goodbye SVD, hello
   robust low-rank approximation". arXiv:2009.05647, 2020.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import dask.array as da
import numpy as np
import scipy.linalg

from .._runtime.blas import blas_threads
from .._runtime.cluster import client_context, persist
from .._runtime.display import fmt_value, summary_html, summary_repr
from .._runtime.random import SeedLike, generator, normalize_seed
from ..errors import ConfigError, ConvergenceWarning, InputError, NonFiniteError, RankError
from ._rows import PROFILE_BINS, fix_signs, prepare_rows, reduce_rows, residual_profile

__all__ = ["LOSSES", "ProjectiveClusteringResult", "projective_clustering"]

logger = logging.getLogger(__name__)

Loss = Literal["l2", "lp", "huber", "cauchy"]
LOSSES: tuple[str, ...] = ("l2", "lp", "huber", "cauchy")

_LABEL_TILE = 4096  # rows per tile of the initial random split (fixed: chunking-invariant)
_PURPOSE_INIT = 7301  # stream key of the initial split


# ====================================================================== losses
def _loss_and_weight(d2: np.ndarray, loss: str, p: float, c: float, delta: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Loss of each squared distance and its IRLS weight ``ρ'(d)/d`` (so that the refit of a
    cluster is the top-j eigenvectors of ``Σ w_i a_i a_iᵀ``)."""
    if loss == "l2":
        return d2, np.ones_like(d2)
    d = np.sqrt(d2)
    if loss == "lp":
        return d**p, np.maximum(d, delta) ** (p - 2.0)
    if loss == "huber":
        small = d <= c
        val = np.where(small, 0.5 * d2, c * (d - 0.5 * c))
        w = np.where(small, 1.0, c / np.maximum(d, 1e-300))
        return val, w
    # cauchy
    r2 = d2 / (c * c)
    return 0.5 * c * c * np.log1p(r2), 1.0 / (1.0 + r2)


# ====================================================================== kernels
def _init_labels(start: int, stop: int, k: int, seed: int, restart: int) -> np.ndarray:
    """Random labels of rows ``start:stop`` from fixed row tiles keyed by (seed, restart, tile)."""
    t0, t1 = start // _LABEL_TILE, (stop - 1) // _LABEL_TILE
    parts = [generator(seed, _PURPOSE_INIT, restart, t).integers(0, k, _LABEL_TILE)
             for t in range(t0, t1 + 1)]
    lab = np.concatenate(parts)
    off = start - t0 * _LABEL_TILE
    return lab[off : off + (stop - start)]


def _cluster_scatters(X: np.ndarray, labels: np.ndarray, w: np.ndarray | None, k: int
                      ) -> np.ndarray:
    """Per-cluster (weighted) scatters ``Σ_{i ∈ l} w_i a_i a_iᵀ`` (k × D × D, float64).

    The rows are gathered by label once (one stable sort, one copy) and each cluster's scatter is
    a symmetric rank-update (``syrk``: half the flops of ``Xᵀ X``) of its contiguous slice; the
    weights enter as ``√w_i a_i`` (all weights are positive)."""
    D = X.shape[1]
    S = np.zeros((k, D, D))
    counts = np.bincount(labels, minlength=k)
    order = np.argsort(labels, kind="stable")
    Xs = X[order]
    if w is not None:
        Xs *= np.sqrt(w[order]).astype(X.dtype, copy=False)[:, None]
    syrk = scipy.linalg.blas.get_blas_funcs("syrk", (Xs,))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    for c_ in range(k):
        a, b = int(bounds[c_]), int(bounds[c_ + 1])
        if a == b:
            continue
        # Xs[a:b] is C-ordered, so its transpose is a Fortran D × m matrix: C = Aᵀ A (upper)
        C = syrk(1.0, Xs[a:b].T, trans=0, lower=0)
        S[c_] = np.triu(C)
        S[c_] += np.triu(C, 1).T
    return S


def _init_kernel(X: np.ndarray, start: int, k: int, seed: int, restarts: tuple[int, ...]
                 ) -> np.ndarray:
    n2 = float(np.einsum("ij,ij->i", X, X).astype(np.float64).sum())
    out = [np.array([n2])]
    for r in restarts:
        lab = _init_labels(start, start + X.shape[0], k, seed, r)
        out.append(np.bincount(lab, minlength=k).astype(np.float64))
        out.append(_cluster_scatters(X, lab, None, k).ravel())
    return np.concatenate(out)


_DIST_ROWS = 2048  # rows per slab of the distance GEMM (its n × Σm product stays in cache)


def _dist_operator(bases: np.ndarray, comps: list[list[np.ndarray]], dims: tuple[int, ...]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stacked columns that give every squared distance with one GEMM.

    ``dist²(a, S_l) = ‖a‖² − ‖B_l a‖²`` needs ``dims[l]`` columns; when ``dims[l] > D/2`` the
    orthogonal complement ``B_l⊥`` (``comps[r][l]``, ``D − dims[l]`` orthonormal rows from the
    same eigendecomposition as ``B_l``; ``dist² = ‖B_l⊥ a‖²``) is cheaper and loses no digits to
    cancellation. Returns ``W`` (D × M, float64), the first column of every (restart, cluster)
    segment and whether the segment is a complement."""
    R, k, _, D = bases.shape
    cols, starts, comp = [], [], []
    m = 0
    for r in range(R):
        for c_ in range(k):
            j = dims[c_]
            if 2 * j > D:
                cols.append(comps[r][c_].T)
                comp.append(True)
            else:
                cols.append(bases[r, c_, :j].T)
                comp.append(False)
            starts.append(m)
            m += cols[-1].shape[1]
    return np.concatenate(cols, axis=1), np.array(starts), np.array(comp)


def _sq_dists(X: np.ndarray, op: tuple[np.ndarray, np.ndarray, np.ndarray], R: int, k: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances (n × R × k, float64) of the rows to every subspace and the squared row
    norms, from the stacked operator of :func:`_dist_operator`, slab by slab of rows."""
    W, starts, comp = op
    W = W.astype(X.dtype, copy=False)
    n = X.shape[0]
    n2 = np.einsum("ij,ij->i", X, X).astype(np.float64)
    d2 = np.empty((n, R * k))
    widths = np.diff(np.append(starts, W.shape[1]))
    for a in range(0, n, _DIST_ROWS):
        P = X[a : a + _DIST_ROWS] @ W
        if np.all(widths == widths[0]):  # equal dims: one fused square-and-sum
            P3 = P.reshape(P.shape[0], R * k, int(widths[0]))
            d2[a : a + _DIST_ROWS] = np.einsum("nsw,nsw->ns", P3, P3)
        else:
            P *= P
            d2[a : a + _DIST_ROWS] = np.add.reduceat(P, starts, axis=1)
    d2 = np.where(comp[None, :], d2, n2[:, None] - d2)
    return np.maximum(d2, 0.0).reshape(n, R, k), n2


def _em_kernel(X: np.ndarray, op: tuple[np.ndarray, np.ndarray, np.ndarray], R: int, k: int,
               loss: str, p: float, c: float, delta: float) -> np.ndarray:
    d2, n2 = _sq_dists(X, op, R, k)
    out = [np.array([n2.sum()])]
    for r in range(R):
        lab = np.argmin(d2[:, r, :], axis=1)
        dmin = d2[np.arange(X.shape[0]), r, lab]
        val, w = _loss_and_weight(dmin, loss, p, c, delta)
        counts = np.bincount(lab, minlength=k).astype(np.float64)
        ccost = np.bincount(lab, weights=val, minlength=k)
        S = _cluster_scatters(X, lab, None if loss == "l2" else w, k)
        out += [np.array([val.sum(), dmin.sum()]), residual_profile(n2, dmin), counts, ccost,
                S.ravel()]
    return np.concatenate(out)


def _distances(X: np.ndarray, bases: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Squared distances (n × R × k) of the rows to every subspace, the projections
    (n × R × k × j) and the squared row norms, from one GEMM against the stacked bases."""
    R, k, j, D = bases.shape
    P = X @ bases.reshape(R * k * j, D).T.astype(X.dtype, copy=False)
    P = P.reshape(X.shape[0], R, k, j)
    n2 = np.einsum("ij,ij->i", X, X).astype(np.float64)
    p2 = np.einsum("nrkj,nrkj->nrk", P, P).astype(np.float64)
    return np.maximum(n2[:, None, None] - p2, 0.0), P, n2


def _assign_block(X: np.ndarray, bases: np.ndarray) -> np.ndarray:
    """Label (column 0) and the j coefficients of every row on its closest subspace."""
    d2, P, _ = _distances(X, bases[None])
    lab = np.argmin(d2[:, 0, :], axis=1)
    coef = P[np.arange(X.shape[0]), 0, lab, :]
    out = np.empty((X.shape[0], 1 + coef.shape[1]), dtype=np.float64)
    out[:, 0] = lab
    out[:, 1:] = coef
    return out


def _reconstruct_block(labels: np.ndarray, coef: np.ndarray, bases: np.ndarray) -> np.ndarray:
    out = np.einsum("nj,njd->nd", coef, bases[labels].astype(coef.dtype, copy=False))
    return out


# ====================================================================== result
@dataclass(frozen=True)
class ProjectiveClusteringResult:
    """k subspaces fitted to the rows of ``A``; row ``i`` ≈ ``coefficients[i] @ bases[labels[i]]``.

    Attributes
    ----------
    labels : dask.array.Array
        Cluster id per row (n,), int32, chunked like the rows of ``A``, lazy.
    coefficients : dask.array.Array
        n × j (j = max of ``dims``) coordinates of each row in its cluster's basis, lazy; columns
        beyond a cluster's own dimension are zero.
    bases : numpy.ndarray
        k × j × D; the first ``dims[l]`` rows of ``bases[l]`` are orthonormal, the rest zero.
    dims : tuple of int
        The dimension of each subspace.
    cost : float
        ``Σ_i loss(dist(a_i, closest subspace))`` of ``bases``.
    cost_history : list of float
        Cost per pass of the kept restart.
    restart_costs : list of float
        Best cost of every restart.
    relative_error : float
        ``‖A − Â‖_F / ‖A‖_F`` of the reconstruction from ``bases`` (assignment by distance).
    counts : numpy.ndarray
        Rows per cluster.
    loss, n_iter, n_passes, converged
        Settings and stopping information.
    """

    labels: da.Array
    coefficients: da.Array
    bases: np.ndarray
    dims: tuple[int, ...]
    cost: float
    cost_history: list[float]
    restart_costs: list[float]
    relative_error: float
    counts: np.ndarray
    loss: str
    n_iter: int
    n_passes: int
    converged: bool
    info: dict[str, Any] = field(default_factory=dict)

    def _summary(self) -> tuple[str, list[tuple[str, Any]]]:
        counts = np.asarray(self.counts)
        return "cfact ProjectiveClusteringResult", [
            ("shape", self.shape), ("subspaces", self.n_subspaces),
            ("dims", fmt_value(list(self.dims))),
            ("rows per subspace", fmt_value(counts.tolist())),
            ("loss", self.loss), ("cost", self.cost),
            ("relative error (Frobenius)", self.relative_error),
            ("iterations / passes", f"{self.n_iter} / {self.n_passes}"),
            ("converged", self.converged),
        ]

    # short summaries for the terminal and notebooks (not the arrays: see _runtime.display)
    __repr__ = summary_repr
    _repr_html_ = summary_html

    @property
    def n_iter_(self) -> int:
        """Iterations (EM passes) run (``n_iter``)."""
        return self.n_iter

    @property
    def reconstruction_err_(self) -> float:
        """``relative_error``: ``‖A − Â‖_F / ‖A‖_F`` of the reconstruction from ``bases``."""
        return self.relative_error

    def to_zarr(self, store: str | os.PathLike, group: str = "projective-clustering", *,
                overwrite: bool = False, upstream: Mapping[str, str] | None = None) -> str:
        """Write the bases, counts, labels and coefficients (blockwise) and the record to
        ``store/group``; complete only when done (see
        :func:`~cfact_dask._runtime.resultstore.write_result`)."""
        from .._runtime.resultstore import write_result

        return write_result(store, group, {
            "bases": self.bases, "counts": np.asarray(self.counts), "labels": self.labels,
            "coefficients": self.coefficients,
        }, {
            "type": "projective-clustering", "dims": list(self.dims), "cost": self.cost,
            "cost_history": list(self.cost_history), "restart_costs": list(self.restart_costs),
            "relative_error": self.relative_error, "loss": self.loss, "n_iter": self.n_iter,
            "n_passes": self.n_passes, "converged": self.converged, "info": self.info,
        }, overwrite=overwrite, upstream=upstream, dims={
            "bases": ("subspace", "component", "embedding_dim"), "counts": ("subspace",),
            "labels": ("token",), "coefficients": ("token", "component"),
        }, chunk_axis={"labels": 0, "coefficients": 0})

    @classmethod
    def from_zarr(cls, store: str | os.PathLike, group: str = "projective-clustering"
                  ) -> ProjectiveClusteringResult:
        """Open a result written by :meth:`to_zarr` (labels and coefficients lazily)."""
        from .._runtime.resultstore import read_result

        arrays, meta = read_result(store, group, "projective-clustering", lazy=True)
        return cls(
            labels=arrays["labels"], coefficients=arrays["coefficients"],
            bases=np.asarray(arrays["bases"]), dims=tuple(int(d) for d in meta["dims"]),
            cost=float(meta["cost"]), cost_history=[float(v) for v in meta["cost_history"]],
            restart_costs=[float(v) for v in meta["restart_costs"]],
            relative_error=float(meta["relative_error"]), counts=np.asarray(arrays["counts"]),
            loss=str(meta["loss"]), n_iter=int(meta["n_iter"]), n_passes=int(meta["n_passes"]),
            converged=bool(meta["converged"]), info=dict(meta.get("info") or {}),
        )

    @property
    def n_subspaces(self) -> int:
        return int(self.bases.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.labels.shape[0]), int(self.bases.shape[2]))

    def reconstruct(self) -> da.Array:
        """The n × D reconstruction, lazy, on the row chunks of ``A``."""
        D = self.bases.shape[2]
        return self.coefficients.map_blocks(
            _reconstruct_rows, self.labels[:, None], self.bases,
            chunks=(self.coefficients.chunks[0], (D,)), dtype=self.coefficients.dtype,
        )


def _reconstruct_rows(coef: np.ndarray, labels: np.ndarray, bases: np.ndarray) -> np.ndarray:
    return _reconstruct_block(labels[:, 0], coef, bases)


# ====================================================================== public API
def projective_clustering(
    A: Any,
    n_subspaces: int,
    dim: int | Sequence[int],
    *,
    n_init: int = 5,
    max_iter: int = 20,
    tol: float = 1e-4,
    loss: Loss = "l2",
    p: float = 1.0,
    scale: float | None = None,
    random_state: SeedLike = None,
    client: Any = None,
    callback: Callable[[dict[str, Any]], bool | None] | None = None,
    check_finite: bool = True,
    checkpoint: Any = None,
) -> ProjectiveClusteringResult:
    """Fit ``n_subspaces`` linear subspaces of dimension ``dim`` to the rows of ``A`` (MESSI).

    Minimises ``Σ_i min_l loss(dist(a_i, S_l))`` by the EM (Lloyd) algorithm of [1]_, out of
    core: each step assigns every row to its closest subspace (one GEMM per chunk against the
    stacked bases) and refits each subspace as the top eigenvectors of its cluster's (weighted)
    D × D scatter, tree-reduced over the row chunks. For robust losses the scatter is weighted by
    the IRLS weight ``ρ'(d)/d`` of each row (one reweighting step per pass).

    Parameters
    ----------
    A : array-like, dask array, zarr array, xarray DataArray or Zarr path
        n × D matrix, chunked by rows (native chunks kept).
    n_subspaces : int
        k >= 1.
    dim : int or sequence of int
        j, the dimension of every subspace (1 <= j < D), or one dimension per subspace.
    n_init : int
        Restarts from different random equal splits; all advance in the same passes, the one
        with the lowest cost is kept.
    max_iter : int
        EM steps (passes) after the initial split.
    tol : float
        A restart stops when its cost falls by less than ``tol`` (relative) in a step.
    loss : {"l2", "lp", "huber", "cauchy"}
        ``dist²`` (the paper's default), ``dist^p``, Huber or Cauchy M-estimators of the distance.
    p : float
        Exponent for ``loss="lp"`` (1 <= p <= 2).
    scale : float, optional
        Scale ``c`` of the Huber / Cauchy losses; default 0.1 × the root-mean-square row norm.
    random_state : int, SeedSequence, Generator or None
        Seed of the initial splits (per row tile: the same labels whatever the chunking).
    client : distributed.Client, str or None
        Where to compute; see :func:`cfact_dask.client_context`.
    callback : callable, optional
        ``callback(state) -> bool | None`` after each pass (``iteration``, ``costs``,
        ``seconds``); True stops.
    check_finite : bool
        Raise :class:`~cfact_dask.errors.NonFiniteError` naming the chunk for NaN / Inf.
    checkpoint : str, dict or Checkpoint, optional
        Save the EM state of every restart (bases, the complements the distances use, the best
        iterate, the histories) every ``every`` passes into a Zarr store and resume from the
        last saved state when one is there: ``dict(store=..., every=10, group="checkpoint")``
        or a store path (see :mod:`cfact_dask._runtime.checkpoint`). A resume continues bitwise
        as the uninterrupted run would have (for the same chunking) and skips the initial
        split; one with other settings or data is refused
        (:class:`~cfact_dask.errors.ResumeError`). ``info["resumed_from"]`` says where it
        continued.

    Returns
    -------
    ProjectiveClusteringResult
        ``info["profile"]`` is the histogram of the rows' relative residuals
        ``‖a_i − â_i‖ / ‖a_i‖`` of the kept bases (20 bins of [0, 1]) from the pass that
        assigned the rows to them.

    Notes
    -----
    A cluster left with fewer rows than its dimension is re-seeded from the cluster with the
    highest cost: the new basis spans the directions of that cluster's scatter that its own
    subspace misses (no extra pass). Parameters of the resulting layer: ``n·j + k·j·D``
    (see :mod:`cfact_dask.nn`).

    References
    ----------
    .. [1] A. Maalouf, H. Lang, D. Rus, D. Feldman. "Deep learning meets projective clustering".
       ICLR 2021, arXiv:2010.04290.
    .. [2] M. Tukan, A. Maalouf, M. Weksler, D. Feldman. "Compressed deep networks: goodbye SVD,
       hello robust low-rank approximation". arXiv:2009.05647, 2020.
    """
    x, source, in_memory = prepare_rows(A, "projective_clustering")
    n, D = (int(s) for s in x.shape)
    if isinstance(n_subspaces, bool) or not isinstance(n_subspaces, (int, np.integer)) or (
        n_subspaces < 1
    ):
        raise ConfigError(f"n_subspaces must be an int >= 1, got {n_subspaces!r}")
    k = int(n_subspaces)
    if k > n:
        raise RankError(f"n_subspaces={k} exceeds the number of rows n={n} of {source}")
    dims = _check_dims(dim, k, D, source)
    if loss not in LOSSES:
        raise ConfigError(f"loss={loss!r} is unknown; use one of {LOSSES}")
    if loss == "lp" and not (1.0 <= float(p) <= 2.0):
        raise ConfigError(f"p={p!r} is outside [1, 2] for loss='lp'; pass 1 <= p <= 2")
    if scale is not None and not (float(scale) > 0):
        raise ConfigError(f"scale must be > 0, got {scale!r}")
    for name, v, lo in (("n_init", n_init, 1), ("max_iter", max_iter, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ConfigError(f"{name} must be an int >= {lo}, got {v!r}")
    seed = normalize_seed(random_state)
    jmax = max(dims)

    from .._runtime.checkpoint import as_checkpoint

    ckpt = as_checkpoint(checkpoint, {
        "method": "messi", "n_subspaces": k, "dims": list(dims), "n_init": int(n_init),
        "loss": loss, "p": float(p), "scale": None if scale is None else float(scale),
        "seed": seed, "shape": [n, D], "dtype": str(x.dtype),
        "chunks": [list(c_) for c_ in x.chunks], "source": source,
    })
    restarts = tuple(range(int(n_init)))
    with client_context(client, nbytes=int(x.nbytes)) as c:
        if c is not None and in_memory:
            (x,) = persist(x, client=c)
        loaded = ckpt.load() if ckpt is not None else None
        if loaded is None:
            st = _initial_state(x, k, D, dims, seed, restarts, scale, c, check_finite, source)
        else:
            st = _state_from(loaded, dims, restarts)
            logger.info("projective_clustering: resuming after pass %d", loaded.iteration)
        bases, comps, hist, best = st["bases"], st["comps"], st["hist"], st["best"]
        active, done, passes = st["active"], st["done"], st["passes"]
        cscale, delta = st["cscale"], st["delta"]
        it = st["iteration"]
        for it in range(st["iteration"] + 1, max_iter + 1):
            t0 = time.perf_counter()
            sub = bases[active]
            op = _dist_operator(sub, [comps[r] for r in active], dims)
            out = reduce_rows(x, _em_kernel, (op, len(active), k, loss, float(p), cscale, delta),
                              c, source=source,
                              check_finite=check_finite and loaded is not None and
                              it == st["iteration"] + 1)
            passes += 1
            _check_sums(out, source)
            n2 = float(out[0])
            per = 2 + PROFILE_BINS + 2 * k + k * D * D
            still = []
            jobs = []
            for i, r in enumerate(active):
                blk = out[1 + i * per : 1 + (i + 1) * per]
                cost, d2 = float(blk[0]), float(blk[1])
                prof = blk[2 : 2 + PROFILE_BINS]
                blk = blk[2 + PROFILE_BINS:]
                counts = blk[:k]
                ccost = blk[k : 2 * k]
                S = blk[2 * k :].reshape(k, D, D)
                hist[r].append(cost)
                rel = math.sqrt(d2 / n2) if n2 > 0 else 0.0
                if cost < best[r][0]:
                    best[r] = (cost, bases[r].copy(), rel, counts.copy(), prof.copy())
                h = hist[r]
                if len(h) > 1 and (h[-2] - h[-1]) <= tol * max(abs(h[-2]), 1e-300):
                    done[r] = True
                    continue
                jobs.append((S, counts, ccost, bases[r], r))
                still.append(r)
            for r, (B_r, C_r) in zip(still, _refit_many(jobs, dims), strict=True):
                bases[r], comps[r] = B_r, C_r
            costs = [hist[r][-1] for r in restarts if hist[r]]
            logger.debug("projective_clustering pass %d: costs %s (%.2fs)", it,
                        [f"{v:.6g}" for v in costs], time.perf_counter() - t0)
            stop = bool(callback({"iteration": it, "costs": costs,
                                  "seconds": time.perf_counter() - t0})) if callback else False
            active = still
            if not active or stop:
                if stop:
                    done = [True] * len(done)
                break
            if ckpt is not None and ckpt.should_save(it):
                ckpt.save(it, _state_arrays(bases, comps, best, active, done, passes, cscale,
                                            delta, dims),
                          {f"cost_{r}": hist[r] for r in restarts})
    rbest = int(np.argmin([b[0] for b in best]))
    cost, B, rel, counts, prof = best[rbest]
    converged = done[rbest] or max_iter == 0
    if not converged:
        warnings.warn(
            f"projective_clustering stopped at max_iter={max_iter} with the best restart still "
            f"improving (last costs {[f'{v:.6g}' for v in hist[rbest][-3:]]}); raise max_iter "
            f"or tol",
            ConvergenceWarning,
            stacklevel=2,
        )
    assigned = x.map_blocks(_assign_block, B, chunks=(x.chunks[0], (1 + jmax,)),
                            dtype=np.float64)
    labels = assigned[:, 0].astype(np.int32)
    coef = assigned[:, 1:].astype(x.dtype)
    return ProjectiveClusteringResult(
        labels=labels, coefficients=coef, bases=B, dims=dims, cost=float(cost),
        cost_history=hist[rbest], restart_costs=[b[0] for b in best],
        relative_error=float(rel), counts=counts.astype(np.int64), loss=loss, n_iter=it,
        n_passes=passes, converged=bool(converged),
        info={"restart": rbest, "seed": seed, "scale": cscale if loss in ("huber", "cauchy")
              else None, "profile": [float(v) for v in prof],
              "resumed_from": 0 if loaded is None else int(loaded.iteration)},
    )


def _initial_state(x: da.Array, k: int, D: int, dims: tuple[int, ...], seed: int,
                   restarts: tuple[int, ...], scale: float | None, client: Any,
                   check_finite: bool, source: str) -> dict[str, Any]:
    """The initial random split of every restart (one pass) and its subspaces."""
    t0 = time.perf_counter()
    out = reduce_rows(x, _init_kernel, (k, seed, restarts), client, check_finite=check_finite,
                      source=source, with_offset=True)
    _check_sums(out, source)
    rms = math.sqrt(float(out[0]) / int(x.shape[0]))
    per = k + k * D * D
    bases = np.zeros((len(restarts), k, max(dims), D))
    jobs = []
    for r in restarts:
        blk = out[1 + r * per : 1 + (r + 1) * per]
        jobs.append((blk[k:].reshape(k, D, D), blk[:k], np.zeros(k), bases[r], r))
    comps: list[list[np.ndarray]] = [[] for _ in restarts]
    for r, (B_r, C_r) in zip(restarts, _refit_many(jobs, dims), strict=True):
        bases[r], comps[r] = B_r, C_r
    logger.debug("projective_clustering: initial split of %d restarts (%.2fs)", len(restarts),
                time.perf_counter() - t0)
    return {
        "bases": bases, "comps": comps, "hist": [[] for _ in restarts],
        "best": [(math.inf, bases[r], 1.0, np.zeros(k), np.zeros(PROFILE_BINS))
                 for r in restarts],
        "active": list(restarts), "done": [False] * len(restarts), "passes": 1,
        "cscale": float(scale) if scale is not None else 0.1 * rms,
        "delta": 1e-6 * max(rms, 1e-300), "iteration": 0,
    }


def _state_arrays(bases: np.ndarray, comps: list[list[np.ndarray]], best: list[tuple[Any, ...]],
                  active: list[int], done: list[bool], passes: int, cscale: float, delta: float,
                  dims: tuple[int, ...]) -> dict[str, np.ndarray]:
    """The EM state as arrays for a checkpoint (the complements zero-padded to one shape)."""
    R, k, _, D = bases.shape
    C = np.zeros((R, k, D - min(dims), D))
    for r in range(R):
        for c_ in range(k):
            C[r, c_, : D - dims[c_]] = comps[r][c_]
    return {
        "bases": bases, "comps": C,
        "best_cost": np.array([b[0] for b in best], np.float64),
        "best_bases": np.stack([b[1] for b in best]),
        "best_rel": np.array([b[2] for b in best], np.float64),
        "best_counts": np.stack([np.asarray(b[3], np.float64) for b in best]),
        "best_profile": np.stack([np.asarray(b[4], np.float64) for b in best]),
        "active": np.isin(np.arange(R), active), "done": np.array(done, bool),
        "scalars": np.array([passes, cscale, delta], np.float64),
    }


def _state_from(loaded: Any, dims: tuple[int, ...], restarts: tuple[int, ...]
                ) -> dict[str, Any]:
    """The EM state of :func:`_state_arrays` read back from a checkpoint."""
    a = loaded.arrays
    k, D = a["bases"].shape[1], a["bases"].shape[3]
    sc = a["scalars"]
    return {
        "bases": np.array(a["bases"]),
        "comps": [[np.array(a["comps"][r, c_, : D - dims[c_]]) for c_ in range(k)]
                  for r in restarts],
        "hist": [[float(v) for v in loaded.history.get(f"cost_{r}", [])] for r in restarts],
        "best": [(float(a["best_cost"][r]), np.array(a["best_bases"][r]),
                  float(a["best_rel"][r]), np.array(a["best_counts"][r]),
                  np.array(a["best_profile"][r])) for r in restarts],
        "active": [r for r in restarts if bool(a["active"][r])],
        "done": [bool(v) for v in a["done"]], "passes": int(sc[0]), "cscale": float(sc[1]),
        "delta": float(sc[2]), "iteration": int(loaded.iteration),
    }


def _check_dims(dim: Any, k: int, D: int, source: str) -> tuple[int, ...]:
    if isinstance(dim, (int, np.integer)) and not isinstance(dim, bool):
        dims = (int(dim),) * k
    elif isinstance(dim, Sequence) and not isinstance(dim, str):
        dims = tuple(int(d) for d in dim)
        if len(dims) != k:
            raise ConfigError(
                f"dim has {len(dims)} entries but n_subspaces={k}; give one dimension per "
                f"subspace or a single int"
            )
    else:
        raise ConfigError(f"dim must be an int or a sequence of ints, got {dim!r}")
    for d in dims:
        if not 1 <= d < D:
            raise RankError(
                f"subspace dimension {d} is impossible for {source} with D={D} columns; pass "
                f"1 <= dim < {D}"
            )
    return dims


def _check_sums(out: np.ndarray, source: str) -> None:
    if not np.all(np.isfinite(out)):
        raise NonFiniteError(
            f"a pass over {source} produced non-finite sums (overflow); rescale the data or "
            f"convert it to float64"
        )


def _top(S: np.ndarray, j: int) -> np.ndarray:
    """The top-j eigenvectors of ``S`` as rows (descending, deterministic signs)."""
    return _eig_split(S, j)[0]


def _eig_split(S: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-j eigenvectors of ``S`` as rows (descending, deterministic signs) and the other
    ``D − j`` (an orthonormal basis of the complement, for the distances)."""
    S = 0.5 * (S + S.T)
    D = S.shape[0]
    # the full divide-and-conquer eigh with one BLAS thread, then the top j: measured on a
    # busy 2-core machine at D = 384, j = 216: 22 ms against 160 ms for the subset driver with
    # the default BLAS pools (the refits were 84 % of a MESSI run). The caller holds the limit
    # (see _refit_many) so that several refits can run in threads; alone, take it here.
    if _REFITS.active:
        _, V = scipy.linalg.eigh(S, driver="evd")
    else:
        with blas_threads():
            _, V = scipy.linalg.eigh(S, driver="evd")
    return fix_signs(V[:, D - j:][:, ::-1]).T, V[:, : D - j].T


class _RefitState(threading.local):
    active = False


_REFITS = _RefitState()


def _refit_many(jobs: list[tuple[Any, ...]], dims: tuple[int, ...]
                ) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """:func:`_refit` of every ``(S, counts, ccost, old, restart)`` job, the restarts in
    parallel threads (LAPACK releases the GIL) under one BLAS-thread limit: the k·n_init
    D × D eigendecompositions of a pass otherwise run one after the other on one core."""
    def one(job: tuple[Any, ...]) -> tuple[np.ndarray, list[np.ndarray]]:
        _REFITS.active = True
        try:
            return _refit(job[0], job[1], job[2], dims, job[3], job[4])
        finally:
            _REFITS.active = False

    workers = min(len(jobs), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                  else os.cpu_count() or 1)
    with blas_threads():
        if workers <= 1:
            return [one(j) for j in jobs]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, jobs))


def _refit(S: np.ndarray, counts: np.ndarray, ccost: np.ndarray, dims: tuple[int, ...],
           old: np.ndarray, restart: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """New bases from the cluster scatters, and the orthogonal complement of each; clusters
    with fewer rows than their dimension are re-seeded from the complement of the
    worst-fitting cluster's subspace."""
    k, D, _ = S.shape
    jmax = max(dims)
    B = np.zeros((k, jmax, D))
    C: list[np.ndarray] = [np.empty((0, D))] * k
    small = [c_ for c_ in range(k) if counts[c_] < dims[c_]]
    for c_ in range(k):
        if c_ not in small:
            B[c_, : dims[c_]], C[c_] = _eig_split(S[c_], dims[c_])
    donors = [c_ for c_ in np.argsort(-ccost) if c_ not in small]
    for i, c_ in enumerate(small):
        if not donors:
            raise InputError(
                f"every cluster has fewer rows than its dimension {dims}; lower dim or "
                f"n_subspaces"
            )
        dnr = int(donors[i % len(donors)])
        Bd = B[dnr, : dims[dnr]]
        Pc = np.eye(D) - Bd.T @ Bd
        B[c_, : dims[c_]], C[c_] = _eig_split(Pc @ S[dnr] @ Pc, dims[c_])
        logger.info("restart %d: cluster %d had %d rows (< dim %d); re-seeded from cluster %d",
                    restart, c_, int(counts[c_]), dims[c_], dnr)
    return B, C
