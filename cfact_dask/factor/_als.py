"""Distributed alternating least squares (ALS) core shared by the matrix factorizations.

The data ``X`` is a ``p × m`` matrix (``p`` = features: ``d`` for a sketch, ``n`` for raw data;
``m`` = samples). The model is ``X ≈ W H`` with ``W`` (p × r) and ``H`` (r × m).

Layout on the cluster
---------------------
* ``H`` is chunked along the samples exactly like ``X``'s column chunks and stays on the workers.
* ``W`` is chunked along the features exactly like ``X``'s row chunks. For a sketch (and any input
  stored in one chunk along the features, the usual layout) that is a single small ``p × r`` block:
  dask ships it to every task that needs it, i.e. it is broadcast. For tall raw data stored in
  several feature chunks the same code updates ``W`` block by block: the problem is symmetric, each
  factor's update is separable over its own chunks given the other factor's ``r × r`` Gram.

One iteration (:func:`als_step`) is one dask graph, persisted, that

1. computes ``WᵀW`` (r × r) and ``WᵀX`` blockwise (a tree sum over the feature chunks, none for a
   single feature chunk) and updates every ``H`` chunk locally;
2. reduces ``H Hᵀ`` (r × r) and ``X Hᵀ`` (p × r) over the sample chunks by one tree reduction and
   updates ``W`` locally;
3. reduces the two numbers the error needs (``⟨W, X Hᵀ⟩`` and ``WᵀW``).

Each chunk of ``X`` is read once per iteration (both products use the same chunk keys). No task
output is ``m``-sized or ``n``-sized: only ``H`` / ``W`` chunks and ``r × r``, ``p × r`` partials
(``tests/factor/test_als.py`` checks every task output of a run). The previous iteration's
factors are released when the next ones are persisted.

The error needs no extra pass: ``‖X − W H‖² = ‖X‖² − 2⟨W, X Hᵀ⟩ + ⟨WᵀW, H Hᵀ⟩``.

In-memory (numpy) inputs run the very same kernels on one block without dask, so small problems
(and scikit-learn's estimator checks) do not pay dask's per-task overhead.

References
----------
.. [1] A. Cichocki, A.-H. Phan. "Fast local algorithms for large scale nonnegative matrix and tensor
   factorizations". IEICE Trans. Fundamentals E92-A(3), 2009 (HALS).
.. [2] C.-J. Lin. "Projected gradient methods for nonnegative matrix factorization". Neural
   Computation 19(10), 2007 (ANLS with projected gradient).
.. [3] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization: fast and accurate
   low-rank factorization of compressively-sensed data". ICML 2019, arXiv:1706.08146.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import dask.array as da
import numpy as np

from .._runtime import jit
from .._runtime.checkpoint import Checkpoint
from .._runtime.cluster import compute, persist
from .._runtime.codecs import array_kwargs
from .._runtime.random import generator
from ..errors import ConvergenceWarning, DivergenceError
from ..io import checked_dask, checked_numpy

__all__ = [
    "ALSOutcome",
    "ALSSpec",
    "Backend",
    "LowRank",
    "als_step",
    "objective",
    "qb_decomposition",
    "random_factor",
    "randomized_svd",
    "run_als",
    "solve_factor",
    "sq_error",
]

logger = logging.getLogger(__name__)

Solver = Literal["hals", "anls"]
Array = Any  # numpy.ndarray | dask.array.Array

#: fixed tile of the random factor streams along an axis (chunking-invariant init)
_TILE = 4096
#: stream purposes (part of the SeedSequence key)
_PURPOSE = {"W": 11, "H": 12, "range": 13}


# ---------------------------------------------------------------------- solver settings
@dataclass(frozen=True)
class ALSSpec:
    """Frozen settings of one ALS run.

    Parameters
    ----------
    solver : {"hals", "anls"}
        ``hals``: one pass of hierarchical ALS (exact coordinate minimisation over each component,
        Cichocki & Phan 2009) per factor per iteration. ``anls``: each factor's nonnegative least
        squares subproblem is solved approximately by ``inner_iter`` steps of accelerated projected
        gradient (Lin 2007; Nesterov momentum, step ``1/L``, ``L`` the largest eigenvalue of the
        Gram).
    nonneg_W : bool
        ``False`` for semi-NMF: ``W`` is free (an exact ridge / least-squares update, or HALS with
        soft thresholding when ``l1_W > 0``). ``H`` is always nonnegative.
    l1_W, l2_W, l1_H, l2_H : float
        Penalties ``l1 ‖F‖₁ + ½ l2 ‖F‖²_F`` on each factor (already scaled).
    inner_iter : int
        Inner projected-gradient steps per subproblem for ``anls``.
    """

    solver: Solver = "hals"
    nonneg_W: bool = True
    l1_W: float = 0.0
    l2_W: float = 0.0
    l1_H: float = 0.0
    l2_H: float = 0.0
    inner_iter: int = 10
    hals_sweeps: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ALSSpec:
        return cls(**dict(d))

    def __dask_tokenize__(self) -> Any:
        return ("cfact.ALSSpec", tuple(sorted(self.to_dict().items())))


# ---------------------------------------------------------------------- block kernels
def _hals_rows(F: np.ndarray, C: np.ndarray, G: np.ndarray, l1: float, l2: float,
               nonneg: bool, sweeps: int = 1) -> np.ndarray:
    """``sweeps`` HALS sweeps over the r rows of ``F`` for
    ``min ½ tr(FᵀGF) − tr(CᵀF) + l1|F| + ½l2‖F‖²``.

    Rows (components) are updated in order, each with the latest values of the others
    (Gauss-Seidel), columns all at once: ``F_k ← [C_k − l1 − Σ_{j≠k} G_kj F_j]₊ / (G_kk + l2)``.
    """
    # a copy in the input's own memory layout: a factor keeps its layout from one iteration to
    # the next, so a resumed run (factors read back C-ordered) multiplies the same layouts as
    # an uninterrupted one, and BLAS gives the same bits
    F = np.array(F, dtype=np.float64, copy=True)
    C = np.asarray(C, dtype=np.float64)
    G = np.asarray(G, dtype=np.float64)
    if jit.enabled():  # the same sweep compiled: 1.4-2.4x faster at r = 10-20 (call-bound)
        # the kernel runs along rows: C-ordered copies once for all the sweeps
        Fc, Cc, Gc = np.ascontiguousarray(F), np.ascontiguousarray(C), np.ascontiguousarray(G)
        for _ in range(sweeps):
            _hals_sweep(Fc, Cc, Gc, float(l1), float(l2), bool(nonneg))
        if Fc is not F:
            F[...] = Fc
        return F
    for _ in range(sweeps):
        _hals_sweep_numpy(F, C, G, l1, l2, nonneg)
    return F


def _hals_sweep_numpy(F: np.ndarray, C: np.ndarray, G: np.ndarray, l1: float, l2: float,
                      nonneg: bool) -> None:
    """:func:`_hals_sweep` in numpy, in place on ``F``."""
    # Σ_{j≠k} G_kj F_j as one product with the diagonal zeroed, and the row written in place:
    # five numpy calls per component instead of eight (the sweep is call-bound at small m)
    G0 = G.copy()
    np.fill_diagonal(G0, 0.0)
    for k in range(F.shape[0]):
        gkk = G[k, k] + l2
        if gkk <= 0.0:
            continue  # an empty component: leave it (as scikit-learn's CD does)
        num = G0[k] @ F
        np.subtract(C[k], num, out=num)
        if nonneg:
            if l1:
                num -= l1
            np.maximum(num, 0.0, out=num)
            np.divide(num, gkk, out=F[k])
        elif l1 > 0:
            F[k] = np.sign(num) * np.maximum(np.abs(num) - l1, 0.0) / gkk
        else:
            np.divide(num, gkk, out=F[k])


@jit.kernel
def _hals_sweep(F, C, G, l1, l2, nonneg):  # pragma: no cover - compiled (tests run it so)
    """:func:`_hals_rows`'s sweep in place on ``F``, one compiled pass per component."""
    r, m = F.shape
    num = np.empty(m)
    for k in range(r):
        gkk = G[k, k] + l2
        if gkk <= 0.0:
            continue
        num[:] = C[k]
        for j in range(r):
            if j != k:
                g = G[k, j]
                for c in range(m):
                    num[c] -= g * F[j, c]
        for c in range(m):
            v = num[c]
            if nonneg:
                F[k, c] = max(v - l1, 0.0) / gkk
            elif l1 > 0.0:
                a = max(abs(v) - l1, 0.0) / gkk
                F[k, c] = a if v >= 0.0 else -a
            else:
                F[k, c] = v / gkk


def _apg_rows(F: np.ndarray, C: np.ndarray, G: np.ndarray, l1: float, l2: float,
              nonneg: bool, n_inner: int) -> np.ndarray:
    """Accelerated projected gradient on ``min ½ tr(FᵀGF) − tr(CᵀF) + l1|F| + ½l2‖F‖²``."""
    F = np.array(F, dtype=np.float64, copy=True)
    C = np.asarray(C, dtype=np.float64)
    G = np.asarray(G, dtype=np.float64) + l2 * np.eye(F.shape[0])
    L = float(np.linalg.eigvalsh(G)[-1])
    if not L > 0:
        return F
    step = 1.0 / L
    Y = F.copy()
    t = 1.0
    for _ in range(n_inner):
        Z = Y - step * (G @ Y - C)
        if nonneg:
            Fn = np.maximum(Z - step * l1, 0.0)
        else:
            Fn = np.sign(Z) * np.maximum(np.abs(Z) - step * l1, 0.0)
        t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        Y = Fn + ((t - 1.0) / t_new) * (Fn - F)
        F, t = Fn, t_new
    return F


def _ls_rows(F: np.ndarray, C: np.ndarray, G: np.ndarray, l2: float) -> np.ndarray:
    """Exact (ridge) least squares ``(G + l2 I)⁻¹ C`` for a free factor; safe when G is singular."""
    G = np.asarray(G, dtype=np.float64) + l2 * np.eye(F.shape[0])
    C = np.asarray(C, dtype=np.float64)
    return np.linalg.lstsq(G, C, rcond=None)[0]


def _update_rows(F: np.ndarray, C: np.ndarray, G: np.ndarray, spec: ALSSpec, side: str
                 ) -> np.ndarray:
    nonneg = True if side == "H" else spec.nonneg_W
    l1 = spec.l1_H if side == "H" else spec.l1_W
    l2 = spec.l2_H if side == "H" else spec.l2_W
    if not nonneg and l1 == 0:
        return _ls_rows(F, C, G, l2)
    if spec.solver == "anls":
        return _apg_rows(F, C, G, l1, l2, nonneg, spec.inner_iter)
    return _hals_rows(F, C, G, l1, l2, nonneg, sweeps=max(1, spec.hals_sweeps))


def _map_update(F: Array, C: Array, G: Array, spec: ALSSpec, side: str) -> Array:
    """Apply the update to every chunk of ``F`` (r × len) with its chunk of ``C`` and the Gram."""
    if not isinstance(F, da.Array):
        return _update_rows(F, np.asarray(C), np.asarray(G), spec, side)
    if not isinstance(G, da.Array):
        G = da.from_array(np.asarray(G), chunks=G.shape)
    # G gets its own indices: every task receives the single r × r block (a broadcast)
    return da.blockwise(
        _update_rows, "ij", F, "ij", C, "ij", G, "kl", spec, None, side, None,
        dtype=np.float64, concatenate=True,
        meta=np.empty((0, 0), dtype=np.float64),
    )


# ---------------------------------------------------------------------- one iteration
def als_step(X: Array, W: Array, H: Array, spec: ALSSpec, WtW: Array | None = None
             ) -> tuple[Array, Array, Array, Array, Array, Array]:
    """One ALS iteration (H then W), lazily for dask inputs.

    Parameters
    ----------
    X : (p, m) array or LowRank
        The data, numpy or dask (any chunking), or its :class:`LowRank` QB approximation
        (randomized HALS: the iteration then works on ``Q B``).
    W : (p, r) array
        Chunked along p like ``X``'s rows (dask) or numpy.
    H : (r, m) array
        Chunked along m like ``X``'s columns (dask) or numpy.
    spec : ALSSpec
    WtW : (r, r) array, optional
        ``WᵀW`` if already known (from the previous step).

    Returns
    -------
    W, H : the updated factors
    WtW, HHt : (r, r) Grams of the updated factors
    cross : scalar ``⟨W, X Hᵀ⟩`` (for the error)
    l1 : (2,) array ``(‖W‖₁, ‖H‖₁)`` when the spec has an ℓ1 penalty, else zeros (for the objective)
    """
    if WtW is None:
        WtW = W.T @ W
    # X as its QB approximation: the products through the l-dimensional range, never p × m
    WtX = (W.T @ X.Q) @ X.B if isinstance(X, LowRank) else W.T @ X
    H = _map_update(H, WtX, WtW, spec, "H")
    HHt = H @ H.T
    XHt = X.Q @ (X.B @ H.T) if isinstance(X, LowRank) else X @ H.T
    W = _map_update(W.T, XHt.T, HHt, spec, "W").T
    WtW = W.T @ W
    cross = (W * XHt).sum()
    if spec.l1_W > 0 or spec.l1_H > 0:
        l1 = _stack2(abs(W).sum(), abs(H).sum())
    else:
        l1 = np.zeros(2)
    return W, H, WtW, HHt, cross, l1


def _stack2(a: Array, b: Array) -> Array:
    if isinstance(a, da.Array) or isinstance(b, da.Array):
        return da.stack([da.asarray(a), da.asarray(b)])
    return np.array([float(a), float(b)])


def solve_factor(X: Array, fixed: Array, side: Literal["H", "W"], spec: ALSSpec,
                 init: Array | None = None, n_iter: int = 50) -> Array:
    """Solve for one factor with the other fixed (e.g. ``transform``, or a refit of ``W``).

    ``side="H"`` solves ``min_H ‖X − W H‖`` for ``fixed = W``; ``side="W"`` solves for ``W`` with
    ``fixed = H``. ``n_iter`` sweeps of the solver from ``init`` (default: zeros), each column
    independently, so the result for a sample does not depend on the others in the batch.
    The Gram and the cross product are computed once; the sweeps are local per chunk.
    """
    if side == "H":
        G = fixed.T @ fixed
        C = fixed.T @ X
    else:
        G = fixed @ fixed.T
        C = (X @ fixed.T).T
    if isinstance(G, da.Array):
        G = G.compute()
    G = np.asarray(G, dtype=np.float64)
    if init is None:
        # HALS from zero: the first sweep is a greedy fit; each sample (column) independently
        F = C * 0.0
    else:
        F = init if side == "H" else init.T

    def sweeps(F: np.ndarray, C: np.ndarray, G: np.ndarray, spec: ALSSpec, side: str) -> np.ndarray:
        for _ in range(n_iter):
            F = _update_rows(F, C, G, spec, side)
        return F

    if isinstance(F, da.Array):
        out = da.blockwise(sweeps, "ij", F, "ij", C, "ij", G, None, spec, None, side, None,
                           dtype=np.float64, meta=np.empty((0, 0)))
    else:
        out = sweeps(np.asarray(F), np.asarray(C), np.asarray(G), spec, side)
    return out if side == "H" else out.T


# ---------------------------------------------------------------------- backend
class Backend:
    """Where the work runs: numpy in-process, dask's local scheduler, or a distributed client.

    Holds the client the iterations compute on; the compute / persist logic itself is
    :func:`cfact_dask._runtime.cluster.compute` / :func:`~cfact_dask._runtime.cluster.persist`
    (without progress bars: an iteration's small reductions are not worth one).
    """

    def __init__(self, client: Any = None) -> None:
        self.client = client

    def persist(self, *xs: Any) -> list[Any]:
        return persist(*xs, client=self.client, progress=False)

    def compute(self, *xs: Any) -> list[Any]:
        return compute(*xs, client=self.client, progress=False)


# ---------------------------------------------------------------------- random factors
def _random_block(seed: int, key: tuple[int, ...], start: int, stop: int, r: int,
                  scale: float, absval: bool) -> np.ndarray:
    """Columns ``start:stop`` of an r × ∞ N(0,1) stream, in fixed (chunk-invariant) tiles."""
    parts = []
    for t in range(start // _TILE, -(-stop // _TILE)):
        tile = generator(seed, *key, t).standard_normal((r, _TILE))
        lo, hi = max(start - t * _TILE, 0), min(stop - t * _TILE, _TILE)
        parts.append(tile[:, lo:hi])
    out = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0].copy()
    if absval:
        np.abs(out, out=out)
    return out * scale


def _random_dask_block(seed: int, key: tuple[int, ...], r: int, scale: float, absval: bool,
                       block_info: dict | None = None) -> np.ndarray:
    assert block_info is not None
    lo, hi = block_info[None]["array-location"][1]
    return _random_block(seed, key, lo, hi, r, scale, absval)


def random_factor(seed: int, key: tuple[int, ...], r: int, length: int,
                  chunks: tuple[int, ...] | None, scale: float = 1.0, absval: bool = True
                  ) -> Array:
    """An r × ``length`` random factor (numpy when ``chunks`` is None, else dask with those chunks).

    Generated from fixed tiles keyed by ``(seed, *key, tile)``, so it does not depend on chunking.
    """
    if chunks is None:
        return _random_block(seed, key, 0, length, r, scale, absval)
    return da.map_blocks(
        _random_dask_block, seed, key, r, scale, absval, chunks=((r,), tuple(chunks)),
        dtype=np.float64, meta=np.empty((0, 0)),
    )


# ---------------------------------------------------------------------- randomized SVD / QB
@dataclass(frozen=True)
class LowRank:
    """A data matrix held as its randomized QB approximation ``X ≈ Q B``.

    ``Q`` (p × l) has orthonormal columns and is chunked along ``p`` like ``X``'s rows; ``B`` =
    ``Qᵀ X`` (l × m) is chunked along ``m`` like ``X``'s columns (numpy for in-memory data).
    :func:`als_step` takes it in place of ``X``: ``Wᵀ X ≈ (Wᵀ Q) B`` and ``X Hᵀ ≈ Q (B Hᵀ)``,
    so an iteration costs ``O((p + m) l r)`` and reads nothing of ``X``.
    """

    Q: Array
    B: Array

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.Q.shape[0]), int(self.B.shape[1]))

    @property
    def rank(self) -> int:
        return int(self.B.shape[0])


def qb_decomposition(X: Array, ll: int, seed: int, backend: Backend, power_iter: int = 1
                     ) -> LowRank:
    """Randomized range finder (Halko, Martinsson & Tropp 2011): ``X ≈ Q Qᵀ X = Q B``.

    ``Z = G X`` for an ``ll × p`` Gaussian ``G`` (chunking-invariant tiles keyed by ``seed``),
    then ``power_iter`` times ``Q = orth(X Zᵀ)``, ``Z = Qᵀ X``: ``1 + 2·power_iter`` passes over
    ``X``; each power step squares the decay of the spectrum the range sees. ``Q`` stays
    chunked along ``p`` (a tall-skinny QR when ``X`` has several row chunks), ``B`` along ``m``;
    both are persisted. No ``m``-sized object reaches the client.
    """
    if power_iter < 1:
        raise ValueError(f"power_iter must be >= 1, got {power_iter}")
    p, m = X.shape
    lazy = isinstance(X, da.Array)
    ll = min(int(ll), p, m)
    G = random_factor(seed, (_PURPOSE["range"],), ll, p, X.chunks[0] if lazy else None,
                      absval=False)  # ll × p
    Z = G @ X  # ll × m
    Q: Array = None  # set by the first power step (power_iter >= 1)
    for _ in range(power_iter):
        (Z,) = backend.persist(Z)
        Y = X @ Z.T  # p × ll
        if lazy:
            Y = Y.rechunk({1: -1})
            Q, _ = da.linalg.qr(Y)
        else:
            Q, _ = np.linalg.qr(Y)
        # Q before Qᵀ X: in one graph dask would keep every chunk of X read for X Zᵀ in memory
        # until the QR is done (the whole matrix; spilled, when it is bigger than the cluster)
        (Q,) = backend.persist(Q)
        Z = Q.T @ X  # ll × m
    (Z,) = backend.persist(Z)
    return LowRank(Q, Z)


def randomized_svd(X: Array, k: int, seed: int, backend: Backend, oversample: int = 10,
                   lowrank: LowRank | None = None) -> tuple[Array, np.ndarray, Array]:
    """Rank-``k`` randomized SVD ``X ≈ U diag(s) Vt`` with one power step (3 passes over X).

    ``lowrank``: a :func:`qb_decomposition` of ``X`` already at hand (of rank ≥ ``k``); then no
    pass is made (with ``ll = k + oversample``, ``power_iter=1`` and the same ``seed`` it is the
    very QB this function would compute). Only ``ll × ll`` matrices reach the client; ``U``
    (p × k) stays chunked along p and ``Vt`` (k × m) chunked along m.
    """
    p, m = X.shape
    if lowrank is None:
        lowrank = qb_decomposition(X, min(k + oversample, p, m), seed, backend, power_iter=1)
    Q, Cq = lowrank.Q, lowrank.B
    M = Cq @ Cq.T
    (M,) = backend.compute(M)
    evals, evecs = np.linalg.eigh(np.asarray(M))
    order = np.argsort(evals)[::-1][:k]
    s = np.sqrt(np.maximum(evals[order], 0.0))
    Uc = evecs[:, order]
    inv = np.divide(1.0, s, out=np.zeros_like(s), where=s > s[0] * 1e-12 if s[0] > 0 else False)
    U = Q @ Uc
    Vt = (Uc.T * inv[:, None]) @ Cq
    return U, s, Vt


# ---------------------------------------------------------------------- the iteration loop
@dataclass(frozen=True)
class ALSOutcome:
    """What :func:`run_als` returns: the factors and the iteration record."""

    W: Array
    H: Array
    n_iter: int
    history: tuple[float, ...]
    converged: bool
    stopped_by_callback: bool = False
    elapsed: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)


def sq_error(xsq: float, cross: float, WtW: np.ndarray, HHt: np.ndarray) -> float:
    """``‖X − W H‖²`` from ``‖X‖²``, ``⟨W, X Hᵀ⟩`` and the Grams (clipped at 0): no pass."""
    return max(xsq - 2.0 * float(cross) + float(np.sum(np.asarray(WtW) * np.asarray(HHt))), 0.0)


def objective(spec: ALSSpec, e2: float, WtW: np.ndarray, HHt: np.ndarray, l1: np.ndarray
              ) -> float:
    """``½‖X − WH‖² + l1_W‖W‖₁ + ½ l2_W‖W‖² + l1_H‖H‖₁ + ½ l2_H‖H‖²`` from the small reductions."""
    return (0.5 * e2 + spec.l1_W * float(l1[0]) + 0.5 * spec.l2_W * float(np.trace(WtW))
            + spec.l1_H * float(l1[1]) + 0.5 * spec.l2_H * float(np.trace(HHt)))


#: checkpointed factors' dimension names (so that xarray opens a store holding them)
_CKPT_DIMS = {"W": ("row", "component"), "H": ("component", "column")}


def _factor_path(ckpt: Checkpoint, it: int) -> str:
    return f"{ckpt.group}-factors/iter_{it:08d}"


def _save_factors(ckpt: Checkpoint, it: int, W: Array, H: Array) -> None:
    """Write W and H under the checkpoint store (blockwise for dask, so nothing is gathered)."""
    import zarr

    root = zarr.open_group(ckpt.store, mode="a", zarr_format=3)
    path = _factor_path(ckpt, it)
    if path in root:
        del root[path]
    for name, arr in (("W", W), ("H", H)):
        if isinstance(arr, da.Array):
            # zarr needs a regular chunk grid; factors are small per chunk, so this is cheap
            axis = 0 if name == "W" else 1
            c = max(arr.chunks[axis])
            arr = arr.rechunk({axis: c, 1 - axis: -1})
            da.to_zarr(arr, ckpt.store, component=f"{path}/{name}", overwrite=True,
                       zarr_format=3, dimension_names=_CKPT_DIMS[name], **array_kwargs())
        else:
            a = np.asarray(arr)
            z = root.create_array(f"{path}/{name}", shape=a.shape, dtype=a.dtype, chunks=a.shape,
                                  dimension_names=_CKPT_DIMS[name], **array_kwargs())
            z[...] = a


def _load_factors(ckpt: Checkpoint, it: int, like_W: Array, like_H: Array) -> tuple[Array, Array]:
    import zarr

    root = zarr.open_group(ckpt.store, mode="r")
    path = _factor_path(ckpt, it)
    out = []
    for name, like in (("W", like_W), ("H", like_H)):
        z = root[f"{path}/{name}"]
        src = f"checkpoint {ckpt.store}/{path}/{name}"
        if isinstance(like, da.Array):  # checked reads: a corrupt chunk is a ChunkError naming it
            out.append(checked_dask(z, src).rechunk(like.chunks))
        else:
            out.append(checked_numpy(z, src))
    return out[0], out[1]


def _drop_old_factors(ckpt: Checkpoint, keep: int) -> None:
    import zarr

    root = zarr.open_group(ckpt.store, mode="a")
    grp = f"{ckpt.group}-factors"
    if grp not in root:
        return
    for name in list(root[grp].group_keys()):
        if name != f"iter_{keep:08d}":
            del root[f"{grp}/{name}"]


def run_als(
    X: Array,
    W: Array,
    H: Array,
    spec: ALSSpec,
    *,
    xsq: float,
    max_iter: int = 200,
    tol: float = 1e-4,
    callback: Callable[[dict[str, Any]], bool | None] | None = None,
    checkpoint: Checkpoint | None = None,
    backend: Backend | None = None,
    verbose: bool = False,
    label: str = "als",
) -> ALSOutcome:
    """Iterate :func:`als_step` until the relative error stalls, ``max_iter``, or the callback.

    Stops when ``(f_{t-1} − f_t) / f_1 < tol`` for the penalised objective ``f`` (see
    :func:`objective`; the scikit-learn NMF rule); ``tol=0`` runs ``max_iter`` iterations.
    A :class:`~cfact_dask.errors.ConvergenceWarning`
    is emitted when ``max_iter`` is reached first.

    ``callback(state)`` receives a dict with ``iteration``, ``error``, ``elapsed``, ``W``, ``H``,
    ``history``; returning True stops the run (``n_iter`` = that iteration).

    ``checkpoint``: factors are written every ``checkpoint.every`` iterations; if the checkpoint
    already holds a state (same parameters), the run resumes from it and gives the same result as
    an uninterrupted run.
    """
    import warnings

    backend = backend or Backend()
    level = logging.INFO if verbose else logging.DEBUG
    history: list[float] = []
    objectives: list[float] = []
    start_it = 0
    if checkpoint is not None:
        state = checkpoint.load()
        if state is not None:
            start_it = state.iteration
            W, H = _load_factors(checkpoint, start_it, W, H)
            history = list(state.history.get("error", []))
            objectives = list(state.history.get("objective", []))
    W, H = backend.persist(W, H)
    WtW = W.T @ W
    (WtW,) = backend.persist(WtW)
    t0 = time.perf_counter()
    converged = False
    stopped = False
    it = start_it
    for it in range(start_it + 1, max_iter + 1):
        W, H, WtW, HHt, cross, l1 = als_step(X, W, H, spec, WtW)
        W, H, WtW, HHt, cross, l1 = backend.persist(W, H, WtW, HHt, cross, l1)
        WtW_np, HHt_np, cross_np, l1_np = backend.compute(WtW, HHt, cross, l1)
        e2 = sq_error(xsq, float(cross_np), WtW_np, HHt_np)
        err = math.sqrt(e2 / xsq) if xsq > 0 else math.sqrt(e2)
        obj = objective(spec, e2, WtW_np, HHt_np, np.asarray(l1_np))
        if not math.isfinite(err):
            raise DivergenceError(
                f"{label}: the error became {err} at iteration {it}; the data may hold values "
                f"too large for float64 or the penalties are negative; rescale the data"
            )
        history.append(err)
        objectives.append(obj)
        elapsed = time.perf_counter() - t0
        logger.log(level, "%s iteration %d  error %.6g  elapsed %.2fs", label, it, err, elapsed)
        if checkpoint is not None and checkpoint.should_save(it):
            _save_factors(checkpoint, it, W, H)
            checkpoint.save(it, {}, {"error": history, "objective": objectives})
            _drop_old_factors(checkpoint, it)
        if callback is not None:
            state = {"iteration": it, "error": err, "elapsed": elapsed, "W": W, "H": H,
                     "history": tuple(history)}
            if callback(state):
                stopped = True
                break
        if tol > 0 and len(objectives) >= 2 and objectives[0] > 0 and (
            objectives[-2] - objectives[-1]
        ) / objectives[0] < tol:
            converged = True
            break
    n_iter = it
    if not converged and not stopped and n_iter >= max_iter and max_iter > start_it:
        last = (
            (objectives[-2] - objectives[-1]) / objectives[0]
            if len(objectives) > 1 and objectives[0] > 0 else float("nan")
        )
        warnings.warn(
            f"{label} stopped at max_iter={max_iter} before reaching tol={tol} (last relative "
            f"decrease of the objective {last:.3g}); increase max_iter, or tol",
            ConvergenceWarning,
            stacklevel=3,
        )
    return ALSOutcome(W, H, n_iter, tuple(history), converged, stopped,
                      time.perf_counter() - t0, {"objective": tuple(objectives)})
