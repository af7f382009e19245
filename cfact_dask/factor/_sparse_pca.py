"""Sparse PCA on raw or compressed chunked matrices (scikit-learn's objective, distributed).

For a features × samples matrix ``M`` (a sketch ``P M`` in the compressed setting), centred per
feature, solve scikit-learn's ``SparsePCA`` problem::

    min_{W, H}  ½ ‖M_c − W H‖_F² + α ‖W‖_1   s.t. ‖H_k‖_2 ≤ 1 for every row k of H,

with ``W`` (n × r) the sparse components (scikit-learn's ``components_`` are the rows of ``Wᵀ``,
normalised) and ``H`` (r × m) the dictionary. Alternating updates, as in
``sklearn.decomposition.dict_learning``: the ℓ1 step is a lasso per feature with the shared Gram
``H Hᵀ`` (coordinate descent, vectorised over the features of a chunk); the dictionary step is a
block-coordinate sweep over the atoms followed by projection onto the unit ball. The sweep is
sequential over atoms, but every quantity it needs is a small Gram matrix of ``[H; Wᵀ M_c]``, so it
runs on the client in ``r × 2r`` coefficients and the new ``H`` is applied in one blockwise pass.
Per iteration: two reads of ``M_c`` (held in memory when it is a sketch), reductions of ``r × r``,
``n × r`` (chunked along the features) and ``2r × 2r`` blocks only.

References
----------
.. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization: fast and accurate
   low-rank factorization of compressively-sensed data". ICML 2019, arXiv:1706.08146.
.. [2] J. Mairal, F. Bach, J. Ponce, G. Sapiro. "Online dictionary learning for sparse coding".
   ICML 2009 (the dictionary update used by scikit-learn).
.. [3] H. Zou, T. Hastie, R. Tibshirani. "Sparse principal component analysis". JCGS 15(2), 2006.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np

from .._runtime.checkpoint import as_checkpoint
from .._runtime.checks import check_rank
from .._runtime.cluster import client_context, compute, persist
from .._runtime.display import summary_html, summary_repr
from .._runtime.random import SeedLike, normalize_seed
from ..errors import ConvergenceWarning, InputError, NonFiniteError
from ..sketching._sketch import Sketch
from ._input import as_features_first
from ._signs import sign_stats, sign_vector
from ._svd import svd

__all__ = ["SparsePCAResult", "relative_error_tolerance", "sparse_pca", "sparse_pca_transform"]

logger = logging.getLogger(__name__)

#: matrices with at most this many entries are factorized in memory (one numpy block)
_IN_MEMORY_ENTRIES = 4_000_000


@dataclass(frozen=True)
class SparsePCAResult:
    """Result of :func:`sparse_pca`: ``M_c ≈ W H``.

    Attributes
    ----------
    W : numpy.ndarray or dask.array.Array
        ``n × r`` sparse components (unnormalised code; chunked along the features for big raw
        inputs). ``components`` gives scikit-learn's normalised ``components_``.
    H : numpy.ndarray or dask.array.Array
        ``r × m`` dictionary, rows of norm ≤ 1 (chunked along the samples for big inputs).
    mean : numpy.ndarray or dask.array.Array
        Per-feature mean that was subtracted (zeros when ``center=False``).
    errors : list of float
        Objective ``½‖M_c − W H‖² + α‖W‖₁`` after each iteration.
    n_iter : int
    relative_error : float
        ``‖M − (mean 1ᵀ + W H)‖_F / ‖M‖_F`` of the returned factors against the matrix
        factorized (the raw input, or the sketch), from the Gram quantities of the last
        iteration's pass (no extra read; ``nan`` when no iteration ran). Exact up to the
        cancellation of ``‖M_c‖² − 2⟨M_c, W H⟩ + ‖W H‖²`` in float64: see
        :func:`relative_error_tolerance`.
    norms : dict
        ``{"data": ‖M‖_F, "centred": ‖M_c‖_F, "residual": ‖M_c − W H‖_F}`` from the same
        quantities (the mean alone can make :attr:`relative_error` small: ``residual /
        centred`` is the share of the variation about the mean the model leaves out).
    operator : SketchOperator or None
        The sketch's operator when the input was a :class:`~cfact_dask.Sketch` (then ``W`` is the
        compressed ``P W``; recover ``W`` with sparse recovery or :func:`refit_components`).
    """

    W: Any
    H: Any
    mean: Any
    errors: list[float] = field(default_factory=list)
    n_iter: int = 0
    alpha: float = 1.0
    operator: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    relative_error: float = float("nan")
    norms: dict[str, float] = field(default_factory=dict)

    def _summary(self) -> tuple[str, list[tuple[str, Any]]]:
        return "cfact SparsePCAResult", [
            ("W", self.W), ("H", self.H), ("alpha", self.alpha),
            ("iterations", self.n_iter),
            ("objective ½‖M − WH‖² + α‖W‖₁", self.errors[-1] if self.errors else None),
            ("on a sketch", self.operator is not None),
        ]

    # short summaries for the terminal and notebooks (not the arrays: see _runtime.display)
    __repr__ = summary_repr
    _repr_html_ = summary_html

    @property
    def components(self) -> Any:
        """scikit-learn's ``components_``: rows of ``Wᵀ`` scaled to unit norm (zero rows kept)."""
        Wt = self.W.T
        nrm = (Wt**2).sum(axis=1) ** 0.5
        if isinstance(nrm, np.ndarray):
            nrm = np.where(nrm == 0, 1.0, nrm)
        else:
            nrm = da.where(nrm == 0, 1.0, nrm)
        return Wt / nrm[:, None]

    @property
    def n_iter_(self) -> int:
        return self.n_iter

    @property
    def reconstruction_err_(self) -> float | None:
        """:attr:`relative_error` (None when no iteration ran; the objective is :attr:`error_`)."""
        e = float(self.relative_error)
        return None if e != e else e

    @property
    def error_(self) -> list[float]:
        return self.errors

    def to_zarr(self, store: str | os.PathLike, group: str = "sparse-pca", *,
                overwrite: bool = False, upstream: Mapping[str, str] | None = None) -> str:
        """Write ``W``, ``H``, ``mean`` and the metadata to ``store/group`` (dask factors
        blockwise from the workers); complete only when done (see
        :func:`~cfact_dask._runtime.resultstore.write_result`). The layout is the one
        ``cfact factor --method sparse-pca`` writes; the rows of a sketch's ``W`` are
        ``sketch_row``."""
        from .._runtime.resultstore import write_result

        row = "sketch_row" if self.operator is not None else "feature"
        return write_result(
            store, group, {"W": self.W, "H": self.H, "mean": self.mean},
            {"type": "sparse-pca", "errors": self.errors, "n_iter": self.n_iter,
             "params": self.params, "relative_error": self.reconstruction_err_,
             "norms": dict(self.norms),
             "operator": self.operator.to_dict() if self.operator is not None else None},
            overwrite=overwrite, upstream=upstream,
            dims={"W": (row, "component"), "H": ("component", "sample"), "mean": (row,)})

    @classmethod
    def from_zarr(cls, store: str | os.PathLike, group: str = "sparse-pca") -> SparsePCAResult:
        """Open a result written by :meth:`to_zarr` (the arrays lazily, as dask arrays)."""
        from .._runtime.resultstore import read_result
        from ..sketching.operators import SketchOperator

        arrays, meta = read_result(store, group, "sparse-pca", lazy=True)
        params = dict(meta.get("params") or {})
        op = meta.get("operator")
        rel = meta.get("relative_error")
        return cls(W=arrays["W"], H=arrays["H"], mean=arrays["mean"],
                   errors=[float(e) for e in meta.get("errors") or []],
                   n_iter=int(meta.get("n_iter", 0)), alpha=float(params.get("alpha", 1.0)),
                   operator=SketchOperator.from_dict(op) if op else None, params=params,
                   relative_error=float("nan") if rel is None else float(rel),
                   norms={k: float(v) for k, v in (meta.get("norms") or {}).items()})


# ---------------------------------------------------------------------- numpy kernels
def _soft(x: np.ndarray, t: float) -> np.ndarray:
    return np.sign(x) * np.maximum(np.abs(x) - t, 0.0)


def _lasso_cd(
    C: np.ndarray, G: np.ndarray, alpha: float, W0: np.ndarray, max_iter: int = 1000,
    tol: float = 1e-12,
) -> np.ndarray:
    """Rows ``w`` minimising ``½ wᵀ G w − cᵀ w + α‖w‖₁`` for each row ``c`` of ``C`` (cyclic CD).

    Vectorised over the rows; stops when the largest coordinate change is below ``tol`` times
    the largest coefficient.
    """
    W = np.array(W0, dtype=np.float64, copy=True)
    C = np.asarray(C, dtype=np.float64)
    diag = np.diag(G).copy()
    r = G.shape[0]
    for _ in range(max_iter):
        delta = 0.0
        for j in range(r):
            old = W[:, j].copy()
            if diag[j] <= 0:
                W[:, j] = 0.0
            else:
                rho = C[:, j] - W @ G[:, j] + old * diag[j]
                W[:, j] = _soft(rho, alpha) / diag[j]
            if W.shape[0]:
                delta = max(delta, float(np.max(np.abs(W[:, j] - old))))
        scale = float(np.max(np.abs(W))) if W.size else 0.0
        if delta <= tol * max(scale, 1e-300):
            break
    return W


def _dict_coefficients(
    A: np.ndarray, GZ: np.ndarray
) -> tuple[np.ndarray, list[int]]:
    """scikit-learn's atom sweep in coefficients over the basis ``Z = [H; B]`` (B = Wᵀ M_c).

    Returns ``Cf`` (r × 2r) with ``H_new = Cf Z`` and the atoms that were unused (``A_kk`` tiny).
    """
    r = A.shape[0]
    Cf = np.hstack([np.eye(r), np.zeros((r, r))])
    unused = []
    for k in range(r):
        if A[k, k] > 1e-6:
            e = np.zeros(2 * r)
            e[r + k] = 1.0
            Cf[k] = Cf[k] + (e - A[k] @ Cf) / A[k, k]
        else:
            unused.append(k)
        nrm2 = float(Cf[k] @ GZ @ Cf[k])
        Cf[k] /= max(np.sqrt(max(nrm2, 0.0)), 1.0)
    return Cf, unused


# ---------------------------------------------------------------------- backends
class _NumpyOps:
    """The iteration on one in-memory block."""

    def __init__(self, Mc: np.ndarray, M: np.ndarray) -> None:
        self.Mc = Mc
        self.norm2 = float(np.sum(Mc * Mc))
        self.raw_norm2 = float(np.sum(M * M))

    def gram(self, H: np.ndarray) -> np.ndarray:
        return H @ H.T

    def code_step(self, W: np.ndarray, H: np.ndarray, G: np.ndarray, alpha: float) -> np.ndarray:
        return _lasso_cd(self.Mc @ H.T, G, alpha, W)

    def dict_step(
        self, W: np.ndarray, H: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        B = W.T @ self.Mc
        Z = np.vstack([H, B])
        return W.T @ W, Z @ Z.T, Z, float(np.abs(W).sum())

    def apply(self, Cf: np.ndarray, Z: Any) -> np.ndarray:
        return Cf @ Z

    def finish(self, W: Any, H: Any) -> tuple[Any, Any]:
        return W, H


class _DaskOps:
    """The iteration on a chunked matrix: small reductions, factors chunked like the data."""

    def __init__(self, Mc: da.Array, M: da.Array, client: Any) -> None:
        self.Mc = Mc
        self.client = client
        # ‖M‖² (the relative error's denominator) from the same read as ‖M_c‖²
        n2, raw = self.compute((Mc * Mc).sum(), (M.astype(np.float64) ** 2).sum())
        self.norm2, self.raw_norm2 = float(n2), float(raw)

    def compute(self, *xs: Any) -> list[Any]:
        return compute(*xs, client=self.client, progress=False)

    def persist(self, *xs: Any) -> list[Any]:
        return persist(*xs, client=self.client)

    def gram(self, H: da.Array) -> np.ndarray:
        return np.asarray(self.compute(H @ H.T)[0])

    def code_step(self, W: da.Array, H: da.Array, G: np.ndarray, alpha: float) -> da.Array:
        C = self.Mc @ H.T  # n × r, chunked along the features
        Wn = da.map_blocks(
            lambda c, w: _lasso_cd(c, G, alpha, w), C, W.rechunk({0: C.chunks[0]}),
            dtype=np.float64,
        )
        return self.persist(Wn)[0]

    def dict_step(
        self, W: da.Array, H: da.Array
    ) -> tuple[np.ndarray, np.ndarray, da.Array, float]:
        B = W.T @ self.Mc.rechunk({0: W.chunks[0]}) if W.chunks[0] != self.Mc.chunks[0] else (
            W.T @ self.Mc
        )
        Z = da.concatenate([H.rechunk({1: B.chunks[1]}), B], axis=0).rechunk({0: -1})
        (Z,) = self.persist(Z)
        A, GZ, l1 = self.compute(W.T @ W, Z @ Z.T, abs(W).sum())
        return A, GZ, Z, float(l1)

    def apply(self, Cf: np.ndarray, Z: da.Array) -> da.Array:
        out = Z.map_blocks(lambda z: Cf @ z, chunks=((Cf.shape[0],), Z.chunks[1]), dtype=Z.dtype)
        return self.persist(out)[0]

    def finish(self, W: Any, H: Any) -> tuple[Any, Any]:
        return W, H


# ---------------------------------------------------------------------- entry point
def _check_finite_np(M: np.ndarray, source: str) -> None:
    if not np.isfinite(M).all():
        bad = np.argwhere(~np.isfinite(M))[0]
        raise NonFiniteError(
            f"{source} holds {int((~np.isfinite(M)).sum())} NaN/Inf values (first at index "
            f"{tuple(int(b) for b in bad)}); clean or impute the data first"
        )


def _svd_flip_cols(W: np.ndarray) -> np.ndarray:
    idx = np.argmax(np.abs(W), axis=0)
    sg = np.sign(W[idx, np.arange(W.shape[1])])
    sg[sg == 0] = 1.0
    return sg


def sparse_pca(
    X: Any,
    rank: int,
    alpha: float = 1.0,
    *,
    ridge_alpha: float = 0.01,
    max_iter: int = 1000,
    tol: float = 1e-8,
    center: bool = True,
    init: tuple[Any, Any] | None = None,
    random_state: SeedLike = 0,
    callback: Callable[[dict[str, Any]], bool | None] | None = None,
    client: Any = None,
    checkpoint: Any = None,
) -> SparsePCAResult:
    """Sparse PCA of a features × samples matrix or a sketch (scikit-learn's objective).

    Parameters
    ----------
    X : array-like, InputArray or Sketch
        Features first (an :class:`~cfact_dask.InputArray` with ``feature_axis=1`` is transposed
        lazily). For scikit-learn's samples × features layout pass ``X.T``.
    rank : int
        Number of sparse components, ``1 <= rank < min(shape)``.
    alpha : float
        ℓ1 penalty on the components (scikit-learn's ``alpha``).
    ridge_alpha : float
        Ridge penalty of :func:`sparse_pca_transform`; stored in ``params``.
    max_iter, tol : int, float
        Stop when the objective falls by less than ``tol`` times its value (scikit-learn's rule),
        or after ``max_iter`` iterations (``ConvergenceWarning``).
    center : bool
        Subtract the per-feature mean over the samples first (scikit-learn does).
    init : (W, H), optional
        Initial code and dictionary; default: truncated SVD ``W = U``, ``H = S Vᵀ`` with
        scikit-learn's sign convention.
    random_state : int, SeedSequence, Generator or None
        Seed of the randomized SVD used to initialise big inputs.
    callback : callable, optional
        ``callback(state) -> bool | None`` after each iteration, with ``state`` a dict holding
        ``iteration``, ``error``, ``elapsed``; returning True stops.
    client : distributed.Client, optional
    checkpoint : str, dict or Checkpoint, optional
        ``dict(store=..., every=k[, group=...])``: the iterate (``W``, ``H`` and the next
        code step's Gram ``H Hᵀ``) is written to Zarr every ``k`` iterations; running again
        with the same store and parameters resumes there and ends with the same result as an
        uninterrupted run (bitwise on the same path: in memory, or the same chunking). A
        checkpoint made with another rank, ``alpha``, ``center``, seed, input shape, dtype or
        chunking is refused (:class:`~cfact_dask.ResumeError`); ``max_iter`` and ``tol`` may
        change.

    Returns
    -------
    SparsePCAResult

    Notes
    -----
    Matches ``sklearn.decomposition.SparsePCA`` on ``X = M.T`` (its ``components_`` are
    :attr:`SparsePCAResult.components`, its ``error_`` our ``errors``) up to solver
    tolerance. One deviation: an atom that falls out of use (``‖W_k‖² ≤ 1e-6``) keeps its
    previous dictionary row instead of being redrawn from a random data row.

    References
    ----------
    .. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization". ICML 2019.
    .. [2] J. Mairal, F. Bach, J. Ponce, G. Sapiro. "Online dictionary learning for sparse
       coding". ICML 2009.
    """
    M, source, operator = as_features_first(X, "sparse_pca")
    if 0 in M.shape:
        raise InputError(f"{source} is empty (shape {M.shape}); nothing to factorize")
    rank = check_rank(rank, min(M.shape), source=f"{source} of shape {tuple(M.shape)}")
    if not np.isfinite(alpha) or alpha < 0:
        raise InputError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise InputError(f"max_iter must be an int >= 0, got {max_iter!r}")
    seed = normalize_seed(random_state)
    M = M.astype(np.float64) if M.dtype != np.float64 and M.dtype != np.float32 else M
    ck_params: dict[str, Any] = dict(
        method="sparse-pca", rank=int(rank), alpha=float(alpha), center=bool(center), seed=seed,
        shape=[int(x) for x in M.shape], dtype=str(M.dtype), source=source,
        chunks=[list(map(int, c)) for c in M.chunks],
        operator=operator.to_dict() if operator is not None else None,
        init="svd" if init is None else "custom")
    if init is not None:
        ck_params["init_sum"] = [float(np.asarray(a).sum()) for a in init]
    ck = as_checkpoint(checkpoint, ck_params)
    state = ck.load() if ck is not None else None
    t0 = time.perf_counter()
    with client_context(client, nbytes=int(M.nbytes)) as c:
        small = c is None and M.size <= _IN_MEMORY_ENTRIES
        if small:
            Mn = np.asarray(M.compute(), dtype=np.float64)
            _check_finite_np(Mn, source)
            mean = Mn.mean(axis=1) if center else np.zeros(Mn.shape[0])
            Mc = Mn - mean[:, None]
            ops: Any = _NumpyOps(Mc, Mn)
            if state is not None:
                W, H = state.arrays["W"], state.arrays["H"]
            elif init is None:
                u, s, vt = np.linalg.svd(Mc, full_matrices=False)
                sg = _svd_flip_cols(u)
                u, vt = u * sg, vt * sg[:, None]
                W, H = u[:, :rank].copy(), (s[:, None] * vt)[:rank].copy()
            else:
                W, H = (np.array(np.asarray(a), dtype=np.float64) for a in init)
        else:
            # in float64 from the start: the model mean 1ᵀ + W H is then exactly what the
            # relative error below measures, whatever the input's dtype
            M64 = M.astype(np.float64)
            mean = M64.mean(axis=1) if center else da.zeros(M.shape[0], chunks=M.chunks[0])
            Mc = M64 - mean[:, None]
            if isinstance(X, Sketch):
                (Mc,) = persist(Mc, client=c)
            ops = _DaskOps(Mc, M64, c)
            if not np.isfinite(ops.norm2):
                raise NonFiniteError(
                    f"{source} holds NaN or Inf values; clean or impute the data first"
                )
            if state is not None:
                # the chunking the iteration gives them: a resumed run adds in the same order
                W = da.from_array(state.arrays["W"], chunks=(Mc.chunks[0], -1))
                H = da.from_array(state.arrays["H"], chunks=(-1, Mc.chunks[1]))
            elif init is None:
                W, H = _dask_init(Mc, rank, seed, c)
            else:
                W = da.asarray(init[0]).rechunk({0: Mc.chunks[0]})
                H = da.asarray(init[1]).rechunk({1: Mc.chunks[1]})
        _check_init(W, H, M.shape, rank)
        if state is not None:
            G = np.asarray(state.arrays["G"], dtype=np.float64)
            errors: list[float] = [float(e) for e in state.history.get("errors", [])]
            resid2 = float((state.history.get("resid2") or [float("nan")])[-1])
            start = state.iteration
        else:
            G = ops.gram(H)
            errors = []
            resid2 = float("nan")
            start = 0
        it = start
        # a checkpoint of the iteration that converged: the uninterrupted run stopped there
        converged = len(errors) >= 2 and errors[-2] - errors[-1] < tol * errors[-1]
        for it in range(start + 1, (start if converged else max_iter) + 1):
            W = ops.code_step(W, H, G, alpha)
            A, GZ, Z, l1 = ops.dict_step(W, H)
            Cf, unused = _dict_coefficients(A, GZ)
            if unused:
                logger.debug("sparse_pca: atoms %s unused at iteration %d", unused, it)
            H = ops.apply(Cf, Z)
            # objective from Gram quantities: no extra read of the data
            r = rank
            WtMHt = GZ[r:, :] @ Cf.T  # B Zᵀ Cfᵀ = Wᵀ M_c H_newᵀ
            HHt = Cf @ GZ @ Cf.T
            G = 0.5 * (HHt + HHt.T)  # the next code step's Gram, with no extra read
            resid2 = ops.norm2 - 2.0 * np.trace(WtMHt) + np.trace(A @ HHt)
            cost = 0.5 * max(resid2, 0.0) + alpha * l1
            if not np.isfinite(cost):
                raise NonFiniteError(f"sparse_pca objective became {cost} at iteration {it}")
            errors.append(float(cost))
            if ck is not None and ck.should_save(it):
                ck.save(it, {"W": W, "H": H, "G": G}, {"errors": errors, "resid2": [resid2]})
            logger.debug("sparse_pca iteration %d: objective %.6g (%.1fs)", it, cost,
                        time.perf_counter() - t0)
            stop = False
            if callback is not None:
                stop = bool(callback({"iteration": it, "error": cost,
                                      "elapsed": time.perf_counter() - t0}))
            if it > 1 and errors[-2] - errors[-1] < tol * errors[-1]:
                converged = True
                break
            if stop:
                converged = True
                break
        if not converged and max_iter > 0 and tol > 0:
            warnings.warn(
                f"sparse_pca did not converge in max_iter={max_iter} iterations (last relative "
                f"decrease above tol={tol}); raise max_iter or tol",
                ConvergenceWarning, stacklevel=2,
            )
        # scikit-learn's final sign convention: largest |entry| of each component positive
        if small:
            sg = _svd_flip_cols(W)
            W, H = W * sg, H * sg[:, None]
        else:
            st = ops.compute(sign_stats(W))[0]
            sg = sign_vector(np.asarray(st))
            W, H = ops.persist(W * sg[None, :], H * sg[:, None])
            mean = ops.persist(mean)[0]
    params = dict(rank=rank, alpha=alpha, ridge_alpha=ridge_alpha, max_iter=max_iter, tol=tol,
                  center=center, seed=seed)
    # the residual of the returned (W, H) (the sign flip leaves W H as it is) over ‖M‖
    rel = (float(np.sqrt(max(resid2, 0.0) / ops.raw_norm2)) if ops.raw_norm2 > 0
           else (0.0 if resid2 == resid2 else float("nan")))
    norms = {"data": float(np.sqrt(ops.raw_norm2)), "centred": float(np.sqrt(ops.norm2))}
    if resid2 == resid2:
        norms["residual"] = float(np.sqrt(max(resid2, 0.0)))
    return SparsePCAResult(W=W, H=H, mean=mean, errors=errors, n_iter=it, alpha=float(alpha),
                           operator=operator, params=params, relative_error=rel, norms=norms)


def relative_error_tolerance(relative_error: float) -> float:
    """How far :attr:`SparsePCAResult.relative_error` may be from the exact error (relative).

    The squared residual is ``‖M_c‖² − 2 tr(Wᵀ M_c Hᵀ) + tr(WᵀW H Hᵀ)`` from float64 Gram
    quantities; its terms are at most about ``4 ‖M_c‖² ≤ 4 ‖M‖²`` (``‖W H‖ ≤ ‖M_c‖`` for the
    shrunk least-squares fit), each rounded to about ``250 ε`` (summation over the entries and
    the ``r`` components). The squared relative error is then off by at most ``1000 ε``, the
    relative error by ``1000 ε / (2 e²)`` of itself: ``2e-9`` at ``e = 0.01``, but large when
    the fit is near exact (``e ≲ 1e-6``), where the estimate is only an upper bound's order.
    """
    e2 = max(float(relative_error) ** 2, 1e-300)
    return float(min(1000.0 * np.finfo(np.float64).eps / (2.0 * e2), 1.0))


def _check_init(W: Any, H: Any, shape: tuple[int, ...], rank: int) -> None:
    if tuple(W.shape) != (shape[0], rank) or tuple(H.shape) != (rank, shape[1]):
        raise InputError(
            f"init must be (W, H) with shapes {(shape[0], rank)} and {(rank, shape[1])}; got "
            f"{tuple(W.shape)} and {tuple(H.shape)}"
        )


def _dask_init(Mc: da.Array, rank: int, seed: int, client: Any) -> tuple[da.Array, da.Array]:
    """SVD initialisation; exact when one axis is a single chunk, else randomized (6 passes)."""
    if Mc.numblocks[0] == 1 or Mc.numblocks[1] == 1:
        u, s, vt = da.linalg.svd(Mc)
        u, s, vt = u[:, :rank], s[:rank], vt[:rank]
        u, s, vt = persist(u, s, vt, client=client)
        st = compute(sign_stats(u), client=client, progress=False)[0]
        sg = sign_vector(np.asarray(st))
        W = u * sg[None, :]
        H = (vt * sg[:, None]) * s[:, None]
    else:
        res = svd(Mc, rank, passes=6, random_state=seed, client=client, progress=False,
                  n_test=0)
        W, H = res.U, res.Vt * res.s[:, None]
    W = W.rechunk({0: Mc.chunks[0]})
    H = H.rechunk({1: Mc.chunks[1]})
    return W, H


def sparse_pca_transform(
    M: Any, components: Any, mean: Any = None, ridge_alpha: float = 0.01
) -> Any:
    """Codes of new samples: ridge regression on the components (scikit-learn's ``transform``).

    Parameters
    ----------
    M : array (n_features × n_samples), numpy or dask
    components : array (r × n_features)
        Normalised components (:attr:`SparsePCAResult.components`).
    mean : array (n_features,), optional
    ridge_alpha : float

    Returns
    -------
    array (n_samples × r)
        ``(M − mean)ᵀ Cᵀ (C Cᵀ + ridge_alpha I)⁻¹``; chunked along the samples for dask input.
    """
    C = components
    if isinstance(C, da.Array):
        C = C.compute()
    C = np.asarray(C, dtype=np.float64)
    G = C @ C.T + ridge_alpha * np.eye(C.shape[0])
    if mean is not None:
        M = M - (mean[:, None] if getattr(mean, "ndim", 1) == 1 else mean)
    # n × r right-hand side factor: (C Cᵀ + λI)⁻¹ C, applied to the samples
    Ginv_C = np.linalg.solve(G, C)
    if isinstance(M, da.Array):
        return (Ginv_C @ M).T
    return (Ginv_C @ np.asarray(M, dtype=np.float64)).T


def refit_components(
    X: Any, H: Any, alpha: float, *, mean: Any = None, client: Any = None
) -> Any:
    """One exact ℓ1 code step on the raw data with the dictionary ``H`` fixed.

    Recovers sparse components in the original feature space after a sparse PCA of a sketch
    (the samples' dictionary ``H`` is shared): one extra read of ``X`` (features × samples).

    Returns
    -------
    numpy.ndarray or dask.array.Array
        ``W`` (n × r), the lasso solution of ``min ½‖X_c − W H‖² + α‖W‖₁``.
    """
    M, source, _ = as_features_first(X, "refit_components")
    Hn = np.asarray(H.compute() if isinstance(H, da.Array) else H, dtype=np.float64)
    if Hn.shape[1] != M.shape[1]:
        raise InputError(
            f"H has {Hn.shape[1]} samples but {source} has {M.shape[1]}; pass the same samples"
        )
    G = Hn @ Hn.T
    if mean is None:
        mean = M.mean(axis=1)
    Mc = M - mean[:, None]
    C = Mc @ da.from_array(Hn.T, chunks=(M.chunks[1], -1))
    Wd = C.map_blocks(lambda c: _lasso_cd(c, G, alpha, np.zeros_like(c)), dtype=np.float64)
    with client_context(client, nbytes=int(M.nbytes)) as c:
        return persist(Wd, client=c)[0]
