"""Recover the high-dimensional factor ``W`` (n x r) from its compression ``W̃ = P W`` (d x r).

Methods
-------
``nnlasso`` / ``lasso``
    (Nonnegative) LASSO by FISTA with function-value restart, matrix-free: every iteration is one
    pass over the row blocks of ``W`` in which each task regenerates its columns of ``P`` from the
    operator spec and computes both ``P_bᵀ G`` and ``P_b x_b``; only d x r partials travel to the
    client. A small ``W`` (``cfact.recover.local-max-bytes``) runs the same block kernels, with
    the same order of the partial sums, in this process on numpy blocks: no scheduling per
    iteration, the same numbers. All r columns at once, each with its own λ. λ is set from the
    noise level of the fit (a scaled-LASSO step: a first solve at ``λ = α₀ λ_max``, the
    residual of the least-squares debias on its support estimates σ, then
    λ₀ = σ √(2 log n) ‖P_col‖); given a held-out sketch, λ ∈ {2, 1, 0.5} x λ₀ is chosen by
    the smallest held-out error estimate. Each LASSO solve is followed by one round of
    reweighted ℓ1 [8] (fewer false positives near the phase transition). Optional debias:
    least squares (nonnegative for ``nnlasso``) on the found support, with the support's columns
    of ``P`` gathered (they are few: the support is sparse) and kept sparse: Cholesky of the
    normal equations, and for the NNLS an exact shortcut (a nonnegative least-squares solution
    is the NNLS solution) or a KKT-certified active set; scipy's ``nnls`` / numpy's ``lstsq``
    where the solution may not be unique.
``bp``
    Basis pursuit ``min ‖x‖₁ s.t. P x = y`` after projecting ``y`` onto range(P), by HiGHS; the
    authors' method (negatives clamped after for NMF). Moderate n only.
``omp``
    Orthogonal matching pursuit with known sparsity ``k``: one pass over ``P`` per atom.
``lstsq-data``
    One extra pass over the data: ``W = argmin ‖M − W H‖`` (row-wise NNLS when nonnegative),
    exact, with the exact reconstruction error computed in the same pass. The reference.

Every recovery carries a :class:`Certificate`: the fit residual ``‖P Ŵ − W̃‖/‖W̃‖`` and, given a
held-out sketch ``(Q M, Q)`` taken in the same pass as the sketch (an independent Gaussian ``Q``
the factorization never saw), an estimate of ``‖M − Ŵ H‖/‖M‖`` and of the best error any ``W``
could reach with this ``H``. When the estimate is much worse than that baseline, or the recovered
columns are too dense for the compression, a :class:`~cfact_dask.errors.RecoveryWarning` says so
with the figures and the fix. The held-out estimate, when there is one, decides the verdict
(``ok``); the density of the recovered columns is then only a note (it decides without one).

References
----------
.. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization: fast and accurate
   low-rank factorization of compressively-sensed data". ICML 2019, arXiv:1706.08146.
.. [2] A. Beck, M. Teboulle. "A fast iterative shrinkage-thresholding algorithm for linear
   inverse problems". SIAM J. Imaging Sci. 2(1), 2009.
.. [3] B. O'Donoghue, E. Candès. "Adaptive restart for accelerated gradient schemes". Found.
   Comput. Math. 15, 2015.
.. [4] T. Sun, C.-H. Zhang. "Scaled sparse linear regression". Biometrika 99(4), 2012.
.. [5] R. Berinde, A. C. Gilbert, P. Indyk, H. Karloff, M. J. Strauss. "Combining geometry and
   combinatorics: a unified approach to sparse signal recovery". Allerton 2008.
.. [6] J. A. Tropp, A. C. Gilbert. "Signal recovery from random measurements via orthogonal
   matching pursuit". IEEE Trans. Inf. Theory 53(12), 2007.
.. [7] W. B. Johnson, J. Lindenstrauss. "Extensions of Lipschitz mappings into a Hilbert space".
   Contemp. Math. 26, 1984 (the held-out estimate is a JL projection of the residual).
.. [8] E. J. Candès, M. B. Wakin, S. P. Boyd. "Enhancing sparsity by reweighted ℓ1
   minimization". J. Fourier Anal. Appl. 14(5-6), 2008.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
from dask import delayed

from .. import config
from .._runtime.cluster import client_context, detach
from .._runtime.display import SKIP, summary_html, summary_repr
from ..errors import ConvergenceWarning, InputError, RecoveryWarning
from ..sketching.operators import SketchOperator

__all__ = ["Certificate", "Recovery", "holdout_error", "recover"]

logger = logging.getLogger(__name__)

Method = Literal["nnlasso", "lasso", "bp", "omp", "lstsq-data"]
METHODS: tuple[str, ...] = ("nnlasso", "lasso", "bp", "omp", "lstsq-data")

#: basis pursuit builds P whole (sparse) and one LP per column: refuse above this many features
BP_MAX_FEATURES = 200_000
#: the held-out error may exceed the best error reachable with H by this factor ...
HOLDOUT_RATIO = 1.5
#: ... plus this absolute slack, before the recovery is declared poor
HOLDOUT_SLACK = 0.05
#: first-stage λ of the automatic choice, relative to λ_max (the λ at which the solution is 0)
_ALPHA0 = 0.05
#: smallest λ the automatic choice goes to, relative to λ_max (noiseless data)
_ALPHA_MIN = 1e-4
#: an entry is significant above this fraction of its column's largest (density check)
_SIGNIFICANT = 0.01
#: the debias refits on entries above this fraction of the column's largest
_DEBIAS_SUPPORT = 1e-3
#: reweighted ℓ1: ε of the weights ε / (|x| + ε), relative to the column's largest entry
_REWEIGHT_EPS = 0.1
#: multiples of the noise-based λ tried (largest first, warm-started) when a hold-out is given
_LAM_PATH = (2.0, 1.0, 0.5)
#: relative-change tolerance of the automatic λ's LASSO solves when they are debiased
_AUTO_TOL = 1e-3
#: the in-process FISTA keeps the operator's columns when all of P takes at most this many bytes
#: (an expander: 12 n s bytes), else regenerates them per step through the tile cache
_LOCAL_P_MAX_BYTES = 2**28
#: ... and runs the blocks' steps in threads when W has at least this many entries (n r)
_LOCAL_THREADS_MIN_ENTRIES = 2**20
#: FISTA also stops when no column's objective fell by more than tol x this factor (relative)
#: over the last _OBJ_WINDOW iterations
_OBJ_TOL_FACTOR = 0.2
_OBJ_WINDOW = 10


# ---------------------------------------------------------------------- results
@dataclass(frozen=True)
class Certificate:
    """How much a recovery can be trusted.

    Attributes
    ----------
    fit_residual : float or None
        ``‖P Ŵ − W̃‖_F / ‖W̃‖_F`` (None for ``lstsq-data`` without ``W̃``).
    fit_residual_per_column : ndarray or None
    holdout_error : float or None
        Estimated ``‖M − Ŵ H‖_F / ‖M‖_F`` from the held-out sketch: ``‖Q M − (Q Ŵ) H‖/‖Q M‖``.
    holdout_baseline : float or None
        The same estimate for the best ``W`` given ``H`` (``Q M (I − H⁺H)``): what an exact extra
        pass over the data (``lstsq-data``) would reach (for a nonnegative ``W``, a lower bound).
    exact_error : float or None
        ``‖M − Ŵ H‖_F / ‖M‖_F`` computed exactly (``lstsq-data`` only).
    support_sizes : ndarray or None
        Nonzeros per recovered column.
    effective_support : ndarray or None
        Entries per column above 1 % of the column's largest (what the density check uses).
    n_measurements, n_features : int
        ``d`` and ``n``.
    ok : bool
        False when a check failed (the messages say which). With a held-out sketch the verdict
        is the held-out estimate against its baseline: ``holdout_error <= 1.5 x
        holdout_baseline + 0.05``; without one, the density check of the recovered columns.
    messages : tuple of str
        Why the recovery is not ok (each is also emitted as a RecoveryWarning).
    notes : tuple of str
        Informational findings that did not decide the verdict (e.g. the density heuristic when
        the held-out estimate is available and good).
    """

    fit_residual: float | None = None
    fit_residual_per_column: np.ndarray | None = None
    holdout_error: float | None = None
    holdout_baseline: float | None = None
    exact_error: float | None = None
    support_sizes: np.ndarray | None = None
    effective_support: np.ndarray | None = None
    n_measurements: int | None = None
    n_features: int | None = None
    ok: bool = True
    messages: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def _summary(self) -> tuple[str, list[tuple[str, Any]]]:
        rows: list[tuple[str, Any]] = [
            ("verdict", "ok" if self.ok else "NOT OK"),
            ("relative error (exact)", self.exact_error if self.exact_error is not None
             else SKIP),
            ("estimated relative error (held-out)", self.holdout_error),
            ("best reachable with this H", self.holdout_baseline),
            ("sketch fit residual", self.fit_residual if self.fit_residual is not None
             else SKIP),
            ("measurements d / features n", f"{self.n_measurements} / {self.n_features}"),
        ]
        if self.effective_support is not None and np.size(self.effective_support):
            rows.append(("largest effective support", int(np.max(self.effective_support))))
        for i, m in enumerate(self.messages[:2]):
            rows.append((f"problem {i + 1}", m))
        return "cfact Certificate", rows

    # short summaries for the terminal and notebooks (not the arrays: see _runtime.display)
    __repr__ = summary_repr
    _repr_html_ = summary_html

    def __post_init__(self) -> None:  # lists from a JSON round trip
        object.__setattr__(self, "messages", tuple(self.messages))
        object.__setattr__(self, "notes", tuple(self.notes))

    @property
    def estimated_error(self) -> float | None:
        """The best available estimate of ``‖M − Ŵ H‖/‖M‖`` (exact, else held-out, else None)."""
        return self.exact_error if self.exact_error is not None else self.holdout_error

    def to_dict(self) -> dict[str, Any]:
        def conv(v: Any) -> Any:
            if isinstance(v, np.ndarray):
                return v.tolist()
            if isinstance(v, tuple):
                return list(v)
            return v

        return {k: conv(v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Recovery:
    """A recovered factor with its certificate.

    Attributes
    ----------
    W : dask.array.Array
        n x r, chunked along the features, persisted.
    H : ndarray or None
        The r x m factor it goes with (from the factorization result), if known.
    method : str
    certificate : Certificate
    lam : ndarray or None
        λ per column (LASSO methods).
    n_iter_ : int
        Iterations (FISTA) or atoms (OMP) used.
    history : dict
        ``objective`` and ``rel_change`` per FISTA iteration.
    """

    W: da.Array
    H: np.ndarray | None
    method: str
    certificate: Certificate
    lam: np.ndarray | None = None
    n_iter_: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def _summary(self) -> tuple[str, list[tuple[str, Any]]]:
        c = self.certificate
        lam = None if self.lam is None else np.asarray(self.lam, dtype=float)
        return "cfact Recovery", [
            ("W", self.W), ("method", self.method), ("iterations", self.n_iter_),
            ("certificate", "ok" if c.ok else "NOT OK"),
            ("relative error (exact)" if c.exact_error is not None
             else "estimated relative error (held-out)", c.estimated_error),
            ("best reachable with this H", c.holdout_baseline),
            ("sketch fit residual", c.fit_residual if c.fit_residual is not None else SKIP),
            ("lambda", SKIP if lam is None or lam.size == 0 else
             f"{lam.min():.3g}..{lam.max():.3g} over {lam.size} columns"),
            ("problem", c.messages[0] if c.messages else SKIP),
        ]

    # short summaries for the terminal and notebooks (not the arrays: see _runtime.display)
    __repr__ = summary_repr
    _repr_html_ = summary_html

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.W.shape)  # type: ignore[return-value]

    def compute(self) -> np.ndarray:
        """``W`` in memory (n x r): only for n that fits on the client."""
        return np.asarray(self.W.compute())


# ---------------------------------------------------------------------- the driver
class _Blocks:
    """Row blocks of ``W`` (aligned to operator tiles) and the scheduler running their tasks.

    Two modes share every kernel and every reduction order:

    * distributed (``local=False``): a block's values are dask objects persisted where they were
      computed (a cluster's workers, or dask's local scheduler); ``compute`` / ``persist`` go
      through dask. For a W too large for one process.
    * in-process (``local=True``, the ``recover.local-max-bytes`` path): a block's values are
      numpy arrays. ``compute`` / ``persist`` evaluate the (few, small) delayed graphs of the
      one-off steps synchronously, and the hot loop (FISTA) calls the block kernels directly on
      the columns of ``P`` (:meth:`block_cols`): a dask round trip per iteration costs ~20 ms of
      scheduling where the arithmetic costs ~1 ms. The kernels, the blocks and the order of
      the partial sums are the same as distributed, so both modes compute the same numbers.
    """

    def __init__(self, op: SketchOperator, client: Any, chunks: Any, local: bool = False) -> None:
        self.op = op
        self.client = client
        self.local = bool(local)
        n = op.n_features
        if chunks is None:
            T = op.tile_size
            rows = min(max(-(-n // 8), T), 2**18)
            rows = -(-rows // T) * T
            chunks = rows
        row_chunks = (
            da.core.normalize_chunks((chunks,), (n,))[0]
            if isinstance(chunks, (int, np.integer))
            else tuple(int(c) for c in chunks)
        )
        if sum(row_chunks) != n:
            raise InputError(f"chunks {chunks} do not add up to n_features={n}")
        self.chunks = row_chunks
        b = np.concatenate([[0], np.cumsum(row_chunks)]).astype(int)
        self.ranges = [(int(b[i]), int(b[i + 1])) for i in range(len(row_chunks))]
        self._P: dict[int, Any] = {}
        self._keep_cols = op.operator_bytes <= _LOCAL_P_MAX_BYTES  # per kind: SKETCH_KINDS

    def block_cols(self, i: int) -> Any:
        """Columns of ``P`` of block ``i`` for the in-process loop: generated once and kept when
        the whole ``P`` is small (sparse kinds: ``n s`` entries), else regenerated each time
        (through the tile cache) like the dask tasks do. The same matrix either way."""
        if i in self._P:
            return self._P[i]
        a, b = self.ranges[i]
        P = _cols(self.op, a, b)
        if self._keep_cols:
            self._P[i] = P
        return P

    def persist(self, objs: list[Any]) -> list[Any]:
        if self.local:  # the values themselves (numpy), not handles to them
            return list(dask.compute(*objs, scheduler="sync")) if objs else []
        if self.client is not None:
            return list(self.client.persist(objs))
        return list(_dpersist(*objs))

    def compute(self, obj: Any) -> Any:
        if self.local:
            return dask.compute(obj, scheduler="sync")[0]
        if self.client is not None:
            return self.client.gather(self.client.compute(obj))
        return _dcompute(obj)[0]

    def to_array(self, parts: Sequence[Any], r: int, dtype: Any = np.float64) -> da.Array:
        if self.local:
            X = np.concatenate([np.asarray(p, dtype=dtype).reshape(b - a, r)
                                for p, (a, b) in zip(parts, self.ranges, strict=True)])
            return da.from_array(X, chunks=(self.chunks, (r,)))
        arrs = [
            da.from_delayed(p, shape=(b - a, r), dtype=dtype)
            for p, (a, b) in zip(parts, self.ranges, strict=True)
        ]
        W = da.concatenate(arrs, axis=0) if len(arrs) > 1 else arrs[0]
        if self.client is not None:
            return self.client.persist(W)
        return _dpersist(W)[0]


def _tree_sum(parts: list[Any], split_every: int = 8, local: bool = False) -> Any:
    """Sum of ``parts`` (arrays or tuples of arrays) by a tree of ``split_every``-way sums:
    delayed, or evaluated at once when ``local`` (the same tree, so the same rounding)."""
    parts = list(parts)
    add = _sum if local else delayed(_sum)
    while len(parts) > 1:
        parts = [add(parts[i : i + split_every]) for i in range(0, len(parts), split_every)]
    return parts[0]


def _sum(parts: Sequence[Any]) -> Any:
    if isinstance(parts[0], tuple):
        return tuple(_sum([p[i] for p in parts]) for i in range(len(parts[0])))
    acc = np.array(parts[0], dtype=np.float64, copy=True)
    for p in parts[1:]:
        acc += p
    return acc


# ---------------------------------------------------------------------- block kernels
def _cols(op: SketchOperator, a: int, b: int) -> Any:
    return op.columns(a, b, np.float64)


def _gram_block(op: SketchOperator, a: int, b: int) -> np.ndarray:
    P = _cols(op, a, b)
    G = P @ P.T
    return np.asarray(G.toarray() if sp.issparse(G) else G)


def _power_block(op: SketchOperator, a: int, b: int, v: np.ndarray) -> np.ndarray:
    P = _cols(op, a, b)
    return np.asarray(P @ (P.T @ v))


def _rmatvec_stats(op: SketchOperator, a: int, b: int, Y: np.ndarray, nonneg: bool) -> np.ndarray:
    """Column-wise max of (Pᵀ Y)_+ (or |Pᵀ Y|) and the squared column norms of this block of P."""
    P = _cols(op, a, b)
    C = np.asarray(P.T @ Y)
    C = np.maximum(C, 0) if nonneg else np.abs(C)
    return C.max(axis=0) if C.size else np.zeros(Y.shape[1])


_LIP: dict[Any, float] = {}


def _lipschitz(op: SketchOperator, blocks: _Blocks) -> float:
    """``‖P‖₂²``, the Lipschitz constant of the gradient of ``½‖P x − y‖²`` (cached per spec)."""
    key = op
    if key in _LIP:
        return _LIP[key]
    d = op.n_components
    if d <= 2048:
        G = blocks.compute(_tree_sum([delayed(_gram_block)(op, a, b) for a, b in blocks.ranges]))
        L = float(np.linalg.eigvalsh(G)[-1]) * (1 + 1e-6)
    else:
        v = np.ones(d) / math.sqrt(d)
        lam = 0.0
        for _ in range(30):
            w = blocks.compute(
                _tree_sum([delayed(_power_block)(op, a, b, v) for a, b in blocks.ranges])
            )
            lam = float(np.linalg.norm(w))
            v = w / lam
        L = lam * 1.1
    _LIP[key] = L
    return L


def _fista_update(
    P: Any,
    state: tuple[np.ndarray, ...],
    G: np.ndarray,
    beta: np.ndarray,
    step: float,
    thresh: np.ndarray,
    nonneg: bool,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One FISTA step on a row block with columns ``P`` of the operator:
    y = x + β(x − x_prev); x⁺ = prox(y − step·Pᵀ G).

    ``weights`` (block rows x r, optional) scale the threshold entry by entry (reweighted ℓ1).
    Returns ``(x⁺, x, P x⁺, stats)`` with stats rows ``‖x⁺ − x‖², ‖x⁺‖², Σ w|x⁺|`` per column.
    The one kernel of both the dask tasks (:func:`_fista_block`) and the in-process loop.
    """
    x, x_prev = state[0], state[1]
    y = x + beta * (x - x_prev) if np.any(beta) else x
    v = y - step * np.asarray(P.T @ G)
    th = thresh if weights is None else thresh * weights
    if nonneg:
        xn = np.maximum(v - th, 0.0)
    else:
        xn = np.sign(v) * np.maximum(np.abs(v) - th, 0.0)
    Px = np.asarray(P @ xn)
    dx = xn - x
    ax = np.abs(xn) if weights is None else np.abs(xn) * weights
    stats = np.stack([(dx * dx).sum(axis=0), (xn * xn).sum(axis=0), ax.sum(axis=0)])
    return xn, x, Px, stats


def _fista_block(
    op: SketchOperator,
    a: int,
    b: int,
    state: tuple[np.ndarray, np.ndarray],
    G: np.ndarray,
    beta: np.ndarray,
    step: float,
    thresh: np.ndarray,
    nonneg: bool,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_fista_update` on rows ``a:b``, regenerating their columns of ``P`` (a dask task)."""
    return _fista_update(_cols(op, a, b), state, G, beta, step, thresh, nonneg, weights)


def _init_block(a: int, b: int, r: int, x0: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.zeros((b - a, r)) if x0 is None else np.array(x0, dtype=np.float64)
    return x, x.copy()


def _matvec_block(op: SketchOperator, a: int, b: int, x: np.ndarray) -> np.ndarray:
    return np.asarray(_cols(op, a, b) @ x)


def _first(state: tuple[Any, ...]) -> Any:
    return state[0]


class _DaskSweep:
    """FISTA's pass over the row blocks as dask tasks: each block's state ``(x, x_prev)`` stays
    persisted where it was computed and its task regenerates its columns of ``P``; only the
    d x r partials ``P_b x_b`` and 3 x r statistics travel to the client, tree-summed."""

    def __init__(self, blocks: _Blocks, r: int, weights: list[Any] | None) -> None:
        self.blocks, self.r = blocks, r
        self.weights = weights if weights is not None else [None] * len(blocks.ranges)
        self.states: list[Any] = []

    def start(self, x0: list[Any] | None, Wt: np.ndarray) -> np.ndarray:
        """Set the state to ``x0`` (zeros when None); returns ``P x0``."""
        blocks, op, r = self.blocks, self.blocks.op, self.r
        if x0 is None:
            states = [delayed(_init_block)(a, b, r, None) for a, b in blocks.ranges]
            Px = np.zeros_like(Wt)
        else:
            states = [
                delayed(_init_block)(a, b, r, x)
                for (a, b), x in zip(blocks.ranges, x0, strict=True)
            ]
            Px = blocks.compute(
                _tree_sum(
                    [
                        delayed(_matvec_block)(op, a, b, delayed(_first)(s))
                        for (a, b), s in zip(blocks.ranges, states, strict=True)
                    ]
                )
            )
        self.states = blocks.persist(states)
        return Px

    def step(
        self, G: np.ndarray, beta: np.ndarray, step: float, thresh: np.ndarray, nonneg: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """One FISTA step on every block; returns ``(P x⁺, stats)`` summed over the blocks."""
        blocks, op = self.blocks, self.blocks.op
        Gd = delayed(G, pure=True)
        new = [
            delayed(_fista_block, pure=True, nout=4)(op, a, b, s, Gd, beta, step, thresh, nonneg, w)
            for (a, b), s, w in zip(blocks.ranges, self.states, self.weights, strict=True)
        ]
        # persist the whole step (x, x_prev, partials) so that reducing the partials does not
        # run the step again; the next step reads only x and x_prev
        self.states = blocks.persist(new)
        del new
        return blocks.compute(_tree_sum([delayed(tuple)([n[2], n[3]]) for n in self.states]))

    def result(self) -> list[Any]:
        return [delayed(_first)(s) for s in self.states]

    def close(self) -> None:
        pass


class _LocalSweep:
    """The same pass as :class:`_DaskSweep`, in this process on numpy blocks.

    The kernels (:func:`_init_block`, :func:`_fista_update`, ``P_b @ x``), the blocks, and the
    tree of the partial sums are those of the dask pass, so every iteration produces the same
    numbers; only the scheduling is gone, and the columns of ``P`` are generated once per
    recovery instead of once per task (when they are small, see :meth:`_Blocks.block_cols`).
    """

    def __init__(self, blocks: _Blocks, r: int, weights: list[Any] | None) -> None:
        self.blocks, self.r = blocks, r
        self.weights = weights if weights is not None else [None] * len(blocks.ranges)
        self.states: list[tuple[np.ndarray, ...]] = []
        # a large W: the blocks' steps in threads (sparse products and ufuncs release the GIL);
        # each block's result is the same, and the partials are summed in the same order
        self._pool: Any = None
        workers = min(len(blocks.ranges), os.cpu_count() or 1)
        if workers > 1 and blocks.op.n_features * r >= _LOCAL_THREADS_MIN_ENTRIES:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(workers, thread_name_prefix="cfact-recover")

    def _map(self, fn: Callable[..., Any], *its: Any) -> list[Any]:
        return list(self._pool.map(fn, *its) if self._pool is not None else map(fn, *its))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def start(self, x0: list[Any] | None, Wt: np.ndarray) -> np.ndarray:
        ranges = self.blocks.ranges
        if x0 is None:
            self.states = [_init_block(a, b, self.r, None) for a, b in ranges]
            return np.zeros_like(Wt)
        self.states = [_init_block(a, b, self.r, x) for (a, b), x in zip(ranges, x0, strict=True)]
        cols = self.blocks.block_cols
        return _tree_sum(
            [np.asarray(cols(i) @ s[0]) for i, s in enumerate(self.states)], local=True
        )

    def step(
        self, G: np.ndarray, beta: np.ndarray, step: float, thresh: np.ndarray, nonneg: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        cols = self.blocks.block_cols

        def block(i: int, s: tuple[np.ndarray, ...], w: Any) -> tuple[np.ndarray, ...]:
            return _fista_update(cols(i), s, G, beta, step, thresh, nonneg, w)

        new = self._map(block, range(len(self.states)), self.states, self.weights)
        self.states = [(n[0], n[1]) for n in new]
        return _tree_sum([(n[2], n[3]) for n in new], local=True)

    def result(self) -> list[Any]:
        return [s[0] for s in self.states]


def _fista(
    blocks: _Blocks,
    Wt: np.ndarray,
    lam: np.ndarray,
    nonneg: bool,
    max_iter: int,
    tol: float,
    x0: list[Any] | None,
    callback: Callable[[dict[str, Any]], bool | None] | None,
    weights: list[Any] | None = None,
) -> tuple[list[Any], np.ndarray, int, dict[str, list[float]], bool]:
    """FISTA with per-column function-value restart over the row blocks.

    The pass over the blocks is a :class:`_LocalSweep` for an in-process recovery
    (``blocks.local``), else a :class:`_DaskSweep` (state persisted per row block); the
    iteration logic (:func:`_fista_loop`: momentum, restarts, stopping rules) is shared.

    ``weights``: per-block arrays of entry weights of the ℓ1 term (reweighted ℓ1), or None.
    """
    op = blocks.op
    r = Wt.shape[1]
    L = _lipschitz(op, blocks)
    step = 1.0 / L
    thresh = step * lam
    sweep = (_LocalSweep if blocks.local else _DaskSweep)(blocks, r, weights)
    with contextlib.closing(sweep):
        return _fista_loop(sweep, Wt, lam, step, thresh, nonneg, max_iter, tol, x0, callback)


def _fista_loop(
    sweep: _LocalSweep | _DaskSweep,
    Wt: np.ndarray,
    lam: np.ndarray,
    step: float,
    thresh: np.ndarray,
    nonneg: bool,
    max_iter: int,
    tol: float,
    x0: list[Any] | None,
    callback: Callable[[dict[str, Any]], bool | None] | None,
) -> tuple[list[Any], np.ndarray, int, dict[str, list[float]], bool]:
    """The iterations of :func:`_fista` over either sweep."""
    r = Wt.shape[1]
    Px = sweep.start(x0, Wt)
    Px_prev = Px.copy()
    t = np.ones(r)
    beta = np.zeros(r)
    F_prev = np.full(r, np.inf)
    F_win: list[np.ndarray] = []  # the last _OBJ_WINDOW + 1 objectives per column
    obj_tol = tol * _OBJ_TOL_FACTOR
    hist: dict[str, list[float]] = {"objective": [], "rel_change": []}
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        G = Px + beta * (Px - Px_prev) - Wt
        Px_new, stats = sweep.step(G, beta, step, thresh, nonneg)
        Px_prev, Px = Px, Px_new
        res = Px - Wt
        F = 0.5 * (res * res).sum(axis=0) + lam * stats[2]
        rel = np.sqrt(stats[0]) / np.maximum(np.sqrt(stats[1]), np.finfo(float).tiny)
        hist["objective"].append(float(F.sum()))
        hist["rel_change"].append(float(rel.max()))
        # restart the momentum of a column whose objective went up (O'Donoghue & Candès)
        up = F > F_prev
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        beta = np.where(up, 0.0, (t - 1) / t_next)
        t = np.where(up, 1.0, t_next)
        F_prev = F
        if callback is not None and callback({"iteration": it, "objective": F, "rel_change": rel}):
            converged = True  # stopped by the user: no convergence warning
            break
        if it > 1 and rel.max() < tol:
            converged = True
            break
        # ... or when the objective has stopped decreasing: over the last _OBJ_WINDOW steps every
        # column gained less than obj_tol of its objective (slowly converging dense solutions
        # keep moving tiny entries long after the objective has settled)
        F_win.append(F)
        if len(F_win) > _OBJ_WINDOW:
            gain = F_win.pop(0) - F
            if np.all(gain <= obj_tol * np.abs(F)):
                converged = True
                break
    return sweep.result(), Px, it, hist, converged


# ---------------------------------------------------------------------- working set
def _ws_scan(
    op: SketchOperator, a: int, b: int, R: np.ndarray, lam: np.ndarray, nonneg: bool,
    w: np.ndarray | None, m: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimality check of rows a:b: ``g = P_bᵀ R``; score = how much an entry violates the
    LASSO conditions (``g − λw`` for nonnegative, ``|g| − λw``); the best ``m`` per column as
    (global index, score, weight), each m x r."""
    P = _cols(op, a, b)
    g = np.asarray(P.T @ R)
    wb = np.ones_like(g) if w is None else np.asarray(w)
    score = (g if nonneg else np.abs(g)) - lam[None, :] * wb
    kk = min(m, g.shape[0])
    top = np.argpartition(-score, kk - 1, axis=0)[:kk]
    return (top + a, np.take_along_axis(score, top, axis=0), np.take_along_axis(wb, top, axis=0))


def _ws_merge(parts: list[tuple[np.ndarray, ...]], m: int) -> tuple[np.ndarray, ...]:
    idx = np.concatenate([p[0] for p in parts])
    sc = np.concatenate([p[1] for p in parts])
    wt = np.concatenate([p[2] for p in parts])
    kk = min(m, idx.shape[0])
    top = np.argpartition(-sc, kk - 1, axis=0)[:kk]
    return tuple(np.take_along_axis(x, top, axis=0) for x in (idx, sc, wt))


def _small_lasso(A: np.ndarray, y: np.ndarray, lam_w: np.ndarray, z0: np.ndarray, nonneg: bool,
                 max_iter: int = 20000, tol: float = 1e-12) -> np.ndarray:
    """FISTA on a small dense problem min ½‖y − A z‖² + Σ lam_w |z| (z ≥ 0 if nonneg)."""
    if A.shape[1] == 0:
        return z0
    L = float(np.linalg.norm(A, 2)) ** 2 or 1.0
    AtA, Aty = A.T @ A, A.T @ y
    z, zp, t = z0.copy(), z0.copy(), 1.0
    for _ in range(max_iter):
        t_next = (1 + np.sqrt(1 + 4 * t * t)) / 2
        v = z + ((t - 1) / t_next) * (z - zp)
        u = v - (AtA @ v - Aty) / L
        zn = np.maximum(u - lam_w / L, 0) if nonneg else np.sign(u) * np.maximum(
            np.abs(u) - lam_w / L, 0)
        done = np.linalg.norm(zn - z) <= tol * max(np.linalg.norm(zn), 1e-300)
        zp, z, t = z, zn, t_next
        if done:
            break
    return z


def _fista_ws(
    blocks: _Blocks,
    Wt: np.ndarray,
    lam: np.ndarray,
    nonneg: bool,
    max_iter: int,
    tol: float,
    x0: list[Any] | None,
    callback: Callable[[dict[str, Any]], bool | None] | None,
    weights: list[Any] | None = None,
) -> tuple[list[Any], np.ndarray, int, dict[str, list[float]], bool]:
    """The same LASSO as :func:`_fista`, solved by a working set (for n ≫ d).

    Each outer step is one pass over P's tiles that checks the optimality conditions of every
    entry and returns the worst violators per column (a tree of small lists); the problem
    restricted to the current support plus those violators (a few hundred columns of P) is then
    solved exactly in memory. It stops when no entry violates the conditions, typically after a
    handful of passes — where FISTA on all n entries needs steps of 1/‖P‖², about d/(s n) of
    what each entry's own curvature allows.
    """
    op = blocks.op
    d, r = Wt.shape
    lam = np.asarray(lam, dtype=np.float64)
    support = [np.zeros(0, np.int64) for _ in range(r)]
    coef = [np.zeros(0) for _ in range(r)]
    wsup = [np.zeros(0) for _ in range(r)]
    if x0 is not None:
        found = blocks.compute(delayed(list)([
            delayed(_nonzeros_block)(a, x) for (a, b), x in zip(blocks.ranges, x0, strict=True)
        ]))
        for rows, cols, vals in found:
            for j in range(r):
                sel = cols == j
                support[j] = np.concatenate([support[j], rows[sel]])
                coef[j] = np.concatenate([coef[j], vals[sel]])
        wsup = [np.ones(sj.size) for sj in support]
    R = Wt.copy()
    for j in range(r):
        if support[j].size:
            R[:, j] -= _support_columns(op, support[j]) @ coef[j]
    hist: dict[str, list[float]] = {"objective": [], "rel_change": []}
    converged = False
    m = 64
    it = 0
    wts = weights if weights is not None else [None] * len(blocks.ranges)
    for it in range(1, max(max_iter, 1) + 1):
        idx, score, wt = blocks.compute(delayed(_ws_merge)(
            [delayed(_ws_scan)(op, a, b, R, lam, nonneg, w, m)
             for (a, b), w in zip(blocks.ranges, wts, strict=True)], m,
        ))
        slack = 1e-6 * np.maximum(lam, 1e-300) + 1e-12 * np.linalg.norm(Wt, axis=0)
        viol = score > slack[None, :]
        if not viol.any():
            converged = True
            break
        change = np.zeros(r)
        added = 0
        for j in range(r):
            new = ~np.isin(idx[:, j], support[j]) & viol[:, j]
            if not new.any():
                continue
            added += int(new.sum())
            ws = np.concatenate([support[j], idx[new, j]])
            ww = np.concatenate([wsup[j], wt[new, j]])
            z0 = np.concatenate([coef[j], np.zeros(int(new.sum()))])
            A = _support_columns(op, ws)
            z = _small_lasso(A, Wt[:, j], lam[j] * ww, z0, nonneg)
            keep = z != 0
            change[j] = np.linalg.norm(z - z0) / max(np.linalg.norm(z), 1e-300)
            support[j], coef[j], wsup[j] = ws[keep], z[keep], ww[keep]
            R[:, j] = Wt[:, j] - A[:, keep] @ z[keep]
        F = 0.5 * (R * R).sum(axis=0) + lam * np.array(
            [float(np.sum(w * np.abs(c))) for w, c in zip(wsup, coef, strict=True)])
        hist["objective"].append(float(F.sum()))
        hist["rel_change"].append(float(change.max()))
        if callback is not None and callback({"iteration": it, "objective": F,
                                              "rel_change": change}):
            converged = True
            break
        if added == 0 or change.max() < tol:
            # what still violates is within the restricted solver's accuracy
            converged = True
            break
        m = min(2 * m, 4096)
    rows = np.concatenate(support) if r else np.zeros(0, np.int64)
    cols = np.concatenate([np.full(sj.size, j) for j, sj in enumerate(support)])
    vals = np.concatenate(coef)
    xs = _sparse_to_blocks(blocks, rows, cols, vals, r)
    return xs, Wt - R, it, hist, converged


def _use_working_set(op: SketchOperator) -> bool:
    """FISTA for moderate n / d (the paper's regime), the working set when n ≫ d."""
    ratio = config.get("recover.working-set-ratio", 50)
    return ratio is not None and op.n_features > float(ratio) * op.n_components


def _nonzeros_block(a: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(x)
    return rows + a, cols, x[rows, cols]


def _support_columns(op: SketchOperator, idx: np.ndarray) -> np.ndarray:
    """Dense d x len(idx) matrix of the columns ``idx`` of P (tile by tile)."""
    idx = np.asarray(idx, dtype=np.int64)
    out = np.zeros((op.n_components, idx.size))
    T = op.tile_size
    for t in np.unique(idx // T):
        sel = np.flatnonzero(idx // T == t)
        cols = op.tile(int(t), np.float64)[:, idx[sel] - t * T]
        out[:, sel] = cols.toarray() if sp.issparse(cols) else cols
    return out


# ---------------------------------------------------------------------- debias
def _support_block(op: SketchOperator, a: int, b: int, x: np.ndarray, thr: np.ndarray) -> tuple:
    """Rows (global) in the support of some column, their columns of P, and the mask."""
    mask = (np.abs(x) > thr) & (x != 0)
    rows = np.flatnonzero(mask.any(axis=1))
    P = _cols(op, a, b)
    Pc = P[:, rows] if sp.issparse(P) else sp.csc_matrix(P[:, rows])
    return rows + a, sp.csc_matrix(Pc), mask[rows]


def _absmax_block(x: np.ndarray) -> np.ndarray:
    return np.abs(x).max(axis=0) if x.size else np.zeros(x.shape[1])


def _gather_support(blocks: _Blocks, xs: list[Any], rel: float) -> tuple:
    """The support (entries above ``rel`` x the column's largest) and its columns of ``P``."""
    colmax = blocks.compute(
        delayed(np.max)(delayed(np.stack)([delayed(_absmax_block)(x) for x in xs]), axis=0)
    )
    thr = rel * np.asarray(colmax)
    parts = blocks.compute(
        [
            delayed(_support_block)(blocks.op, a, b, x, thr)
            for (a, b), x in zip(blocks.ranges, xs, strict=True)
        ]
    )
    rows = np.concatenate([p[0] for p in parts])
    P = sp.hstack([p[1] for p in parts], format="csc") if rows.size else None
    mask = np.concatenate([p[2] for p in parts]) if rows.size else np.zeros((0, 0), bool)
    return rows, P, mask


def _nnls(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    try:
        return nnls(A, y, maxiter=50 * max(A.shape[1], 1))[0]
    except RuntimeError:  # rare: iteration limit; fall back to projected lstsq
        return np.maximum(np.linalg.lstsq(A, y, rcond=None)[0], 0)


#: a Cholesky solve of the normal equations on a support is used only when LAPACK's estimate of
#: the reciprocal condition number of ``A_Fᵀ A_F`` is above this (κ(A_F) below 10⁴, so the
#: solve is accurate to ~1e-8 relative at worst); else the reference solvers decide
_CHOL_RCOND = 1e-8
#: KKT check of a candidate NNLS solution: a zero entry j violates it when ``aⱼᵀ(y − A x)``
#: exceeds this x ``max|Aᵀ y|`` (the gradient would push it up)
_KKT_TOL = 1e-10
#: projected-gradient steps (at most) to find the NNLS support, and the number of consecutive
#: steps with an unchanged support after which it is taken as found
_PG_MAX_ITER = 2000
_PG_STABLE = 30
#: rounds of support exchange (drop x_F ≤ 0, add KKT violators) before giving up
_POLISH_ROUNDS = 10


def _chol_ls(As: sp.csc_matrix, AT: sp.csr_matrix, b: np.ndarray, F: np.ndarray) -> Any:
    """``argmin ‖A_F x − y‖`` by Cholesky of ``A_Fᵀ A_F`` (built from the sparse columns; ``b``
    is ``Aᵀ y``), or None when that Gram matrix is not safely positive definite: ``A_F``
    rank-deficient (the least-squares solution is then not unique, and which one is returned
    is the reference solver's business) or too ill-conditioned for the normal equations."""
    from scipy.linalg import cho_factor, cho_solve, lapack

    if F.size == 0:
        return np.zeros(0)
    G = (AT[F] @ As[:, F]).toarray()
    anorm = float(np.abs(G).sum(axis=0).max())
    try:
        c = cho_factor(G, lower=False, overwrite_a=True, check_finite=False)
    except np.linalg.LinAlgError:
        return None
    rcond, info = lapack.dpocon(c[0], anorm)
    if info != 0 or not rcond > _CHOL_RCOND:
        return None
    x = cho_solve(c, b[F], check_finite=False)
    return x if np.all(np.isfinite(x)) else None


def _lstsq_support(A: sp.csc_matrix, y: np.ndarray) -> tuple[np.ndarray, str]:
    """Least squares of ``y`` on the columns ``A`` (d x k, sparse) of ``P``: ``(x, route)``.

    Full column rank and well conditioned (the usual case: a sparse support of an expander)
    -> the normal equations by Cholesky (``route="cholesky"``), from the sparse ``Aᵀ A``; the
    unique solution, as ``np.linalg.lstsq`` gives it up to rounding, without its SVD of the
    dense d x k matrix (25-450 ms at k = 350-1500, d = 2000). Otherwise ``np.linalg.lstsq``
    on the dense columns as before (``route="lstsq"``, the minimum-norm solution).
    """
    A = sp.csc_matrix(A)
    AT = A.T.tocsr()
    x = _chol_ls(A, AT, AT @ y, np.arange(A.shape[1]))
    if x is not None:
        return x, "cholesky"
    return np.linalg.lstsq(A.toarray(), y, rcond=None)[0], "lstsq"


def _nnls_support(A: sp.csc_matrix, y: np.ndarray) -> tuple[np.ndarray, str]:
    """``argmin_{x ≥ 0} ‖A x − y‖`` for the columns ``A`` (d x k, sparse) of ``P`` on a
    support: ``(x, route)``. The same solution as :func:`_nnls` (scipy's Lawson–Hanson), found
    faster: Lawson–Hanson adds one variable per iteration with a Householder update of the
    d x k matrix (0.3 s per column at k ≈ 1000, d = 2000) where here the work is a few sparse
    products and one or two Cholesky factorizations of ``A_Fᵀ A_F``.

    1. ``route="lstsq"``: the unconstrained least-squares solution. When it is entrywise ≥ 0
       it satisfies the KKT conditions of the NNLS with zero multipliers, so it IS the NNLS
       solution (unique: ``A`` has full column rank, checked by the condition estimate).
    2. ``route="active-set"``: otherwise, projected-gradient steps (FISTA with restart on the
       sparse ``A``, from the clipped least-squares solution) until the set of positive
       entries ``F`` stops changing; then the exact least squares on ``F`` and the KKT check
       (``x_F > 0``; ``aⱼᵀ(y − A x) ≤ tol`` off ``F``), exchanging violators for a few
       rounds. A point passing the check with ``A_F`` of full column rank is the NNLS
       solution (unique: every minimiser has the same gradient, so is zero off ``F`` and
       solves the same full-rank least squares on ``F``); Lawson–Hanson finds the same.
    3. ``route="scipy"``: when no candidate passes (``A_F`` rank-deficient or ill-conditioned,
       where the NNLS solution may not be unique, or the support was not found), scipy's
       ``nnls`` on the dense columns exactly as before.
    """
    A = sp.csc_matrix(A)
    k = A.shape[1]
    if k == 0:
        return np.zeros(0), "lstsq"
    AT = A.T.tocsr()
    b = AT @ y
    tol = _KKT_TOL * float(np.abs(b).max())
    xF = _chol_ls(A, AT, b, np.arange(k))
    if xF is not None and np.all(xF > 0):
        return xF, "lstsq"
    # find the support: FISTA with function-value restart on ½‖A x − y‖², x ≥ 0, step 1/L with
    # L the largest Gershgorin bound of AᵀA (≥ its largest eigenvalue)
    L = float(abs(AT @ A).sum(axis=1).max()) or 1.0
    x = np.zeros(k) if xF is None else np.maximum(xF, 0.0)
    z, t, f_prev = x, 1.0, math.inf
    pos_prev, stable = x > 0, 0
    for _ in range(_PG_MAX_ITER):
        xn = np.maximum(z - (AT @ (A @ z) - b) / L, 0.0)
        res = A @ xn - y
        f = float(res @ res)
        if f > f_prev:  # restart the momentum from the last iterate
            z, t, f_prev = x, 1.0, math.inf
            continue
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = xn + ((t - 1) / t_next) * (xn - x)
        pos = xn > 0
        stable = stable + 1 if np.array_equal(pos, pos_prev) else 0
        x, t, f_prev, pos_prev = xn, t_next, f, pos
        if stable >= _PG_STABLE:
            break
    # exact least squares on the found support, then the KKT check; exchange the violators
    inF = x > 0
    for _ in range(_POLISH_ROUNDS):
        F = np.flatnonzero(inF)
        xF = _chol_ls(A, AT, b, F)
        if xF is None:
            break
        x = np.zeros(k)
        x[F] = xF
        w = b - AT @ (A @ x)  # −gradient: ≤ tol off F at the solution
        add = ~inF & (w > tol)
        drop = xF <= 0
        if not add.any() and not drop.any():
            return x, "active-set"
        inF[F[drop]] = False
        inF[add] = True
    return _nnls(A.toarray(), y), "scipy"


def _debias(
    blocks: _Blocks, xs: list[Any], Wt: np.ndarray, nonneg: bool
) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Least squares (NNLS when nonneg) of each column on its support.

    The support is the entries above ``_DEBIAS_SUPPORT`` x the column's largest (FISTA leaves
    tiny entries that it would take many more passes to zero). Columns whose support has ``d``
    or more entries keep their LASSO values (least squares would interpolate the noise).
    The solves (:func:`_nnls_support`, :func:`_lstsq_support`) work on the support's sparse
    columns of ``P`` and fall back to scipy's ``nnls`` / numpy's ``lstsq`` on the dense ones.
    Returns the new blocks, ``P Ŵ`` and the support size per column.
    """
    d, r = Wt.shape
    rows, P, mask = _gather_support(blocks, xs, _DEBIAS_SUPPORT)
    sizes = mask.sum(axis=0) if rows.size else np.zeros(r, dtype=int)
    if not rows.size:
        return xs, np.zeros_like(Wt), sizes
    vals = np.zeros((rows.size, r))
    done = np.zeros(r, dtype=bool)
    routes: list[str] = []
    for j in range(r):
        sel = np.flatnonzero(mask[:, j])
        if sel.size >= d:
            continue
        done[j] = True
        if sel.size == 0:
            continue
        A = P[:, sel]
        coef, route = _nnls_support(A, Wt[:, j]) if nonneg else _lstsq_support(A, Wt[:, j])
        routes.append(route)
        vals[sel, j] = coef
    logger.debug("recover: debias solves by %s", routes)
    out = []
    for (a, b), x in zip(blocks.ranges, xs, strict=True):
        lo, hi = np.searchsorted(rows, [a, b])
        out.append(delayed(_set_rows)(x, rows[lo:hi] - a, vals[lo:hi], done))
    out = blocks.persist(out)
    PW = blocks.compute(
        _tree_sum(
            [
                delayed(_matvec_block)(blocks.op, a, b, x)
                for (a, b), x in zip(blocks.ranges, out, strict=True)
            ]
        )
    )
    return out, PW, sizes


def _set_rows(x: np.ndarray, rows: np.ndarray, vals: np.ndarray, done: np.ndarray) -> np.ndarray:
    """Replace the debiased columns of this block by their least-squares values."""
    x = np.array(x, copy=True)
    x[:, done] = 0.0
    if rows.size:
        x[np.ix_(rows, np.flatnonzero(done))] = vals[:, done]
    return x


# ---------------------------------------------------------------------- LASSO front end
def _lam_max(blocks: _Blocks, Wt: np.ndarray, nonneg: bool) -> np.ndarray:
    parts = [delayed(_rmatvec_stats)(blocks.op, a, b, Wt, nonneg) for a, b in blocks.ranges]
    return np.asarray(blocks.compute(delayed(np.max)(delayed(np.stack)(parts), axis=0)))


def _column_norm(op: SketchOperator) -> float:
    return op.column_norm  # per kind: SKETCH_KINDS


def _absmax(blocks: _Blocks, xs: list[Any]) -> np.ndarray:
    return np.asarray(
        blocks.compute(
            delayed(np.max)(delayed(np.stack)([delayed(_absmax_block)(x) for x in xs]), axis=0)
        )
    )


def _weights_block(x: np.ndarray, eps: np.ndarray) -> np.ndarray:
    return eps / (np.abs(x) + eps)


def _reweight(blocks: _Blocks, xs: list[Any]) -> list[Any]:
    """Entry weights ``ε / (|x| + ε)`` with ``ε = _REWEIGHT_EPS`` x the column's largest
    (Candès, Wakin & Boyd 2008): large entries are barely penalised, zeros keep the full λ."""
    eps = np.maximum(_REWEIGHT_EPS * _absmax(blocks, xs), np.finfo(float).tiny)
    return blocks.persist([delayed(_weights_block)(x, eps) for x in xs])


def _holdout_estimate(
    blocks: _Blocks, xs: list[Any], QM: np.ndarray, Qop: SketchOperator, H: np.ndarray
) -> float:
    """``‖Q M − (Q Ŵ) H‖ / ‖Q M‖`` for ``Ŵ`` given as row blocks (see :func:`holdout_error`)."""
    QW = blocks.compute(
        _tree_sum(
            [
                delayed(_matvec_block)(Qop, a, b, x)
                for (a, b), x in zip(blocks.ranges, xs, strict=True)
            ]
        )
    )
    den = float(np.linalg.norm(QM))
    return float(np.linalg.norm(QM - np.asarray(QW) @ H)) / den if den > 0 else math.inf


def _lasso(
    blocks: _Blocks,
    Wt: np.ndarray,
    nonneg: bool,
    lam: Any,
    debias: bool,
    max_iter: int,
    tol: float,
    callback: Any,
    reweight: int | None = None,
    holdout: tuple[np.ndarray, SketchOperator, np.ndarray] | None = None,
) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray | None, int, dict[str, list[float]], dict]:
    op = blocks.op
    d, r = Wt.shape
    auto = isinstance(lam, str)
    if auto and lam != "auto":
        raise InputError(f"lam must be 'auto' or a number >= 0, got {lam!r}")
    if reweight is None:
        reweight = 1 if auto else 0
    lmax = _lam_max(blocks, Wt, nonneg)
    total_it = 0
    hist: dict[str, list[float]] = {"objective": [], "rel_change": []}
    info: dict[str, Any] = {"reweight": int(reweight)}
    stopped = False

    def cb(state: dict[str, Any]) -> bool:
        nonlocal stopped
        if callback is not None and callback(state):
            stopped = True
        return stopped

    def run(
        lam_vec: np.ndarray, x0: list[Any] | None, tol_: float, weights: list[Any] | None = None
    ) -> tuple[list[Any], np.ndarray, bool]:
        nonlocal total_it
        solver = _fista_ws if _use_working_set(op) else _fista
        xs, Px, it, h, conv = solver(
            blocks, Wt, lam_vec, nonneg, max_iter, tol_, x0, cb, weights=weights
        )
        total_it += it
        for k in hist:
            hist[k] += h[k]
        return xs, Px, conv

    def solve(
        lam_vec: np.ndarray, x0: list[Any] | None, tol_: float
    ) -> tuple[list[Any], list[Any], np.ndarray, bool]:
        """LASSO at ``lam_vec`` then ``reweight`` rounds of reweighted ℓ1 from its solution.
        Returns (the plain LASSO solution, the final one, its ``P x``, converged)."""
        xs, Px, conv = run(lam_vec, x0, tol_)
        plain = xs
        for _ in range(int(reweight)):
            if stopped:
                break
            xs, Px, c2 = run(lam_vec, xs, tol_, _reweight(blocks, xs))
            conv = conv and c2
        return plain, xs, Px, conv

    def finish(xs: list[Any], Px: np.ndarray) -> tuple[list[Any], np.ndarray, Any]:
        if debias:
            return _debias(blocks, xs, Wt, nonneg)
        return xs, Px, None

    if auto:
        # the LASSO solves only choose supports when the debias refits the values on them: a
        # looser relative-change test loses nothing (measured) and saves most of the passes
        tol_in = max(tol, _AUTO_TOL) if debias else tol
        # scaled LASSO: σ from the residual of a debiased first solve, then λ = σ √(2 log n) ‖p‖
        lam1 = _ALPHA0 * lmax
        xs1, Px1, _ = run(lam1, None, tol_in)
        xs_d, Px_d, sizes = _debias(blocks, xs1, Wt, nonneg)
        dof = np.maximum(d - sizes, 1)
        sigma = np.linalg.norm(Px_d - Wt, axis=0) / np.sqrt(dof)
        lam0 = sigma * math.sqrt(2 * math.log(max(op.n_features, 2))) * _column_norm(op)
        lam0 = np.clip(lam0, _ALPHA_MIN * lmax, lam1)
        info["lam_noise"] = lam0.tolist()
        # a summary, not the arrays: r values each (all of them are in info["lam_noise"])
        logger.debug("recover: noise level per column %s -> lambda %s", _span(sigma),
                     _span(lam0))
        if holdout is None or stopped:
            _, xs, Px, conv = solve(lam0, xs_d, tol_in)
            lam_vec = lam0
            xs, Px, sizes = finish(xs, Px)
            info["lam_multiple"] = 1.0
        else:
            # λ path chosen by the held-out sketch (rows the factorization never saw): from the
            # largest multiple down, each warm-started from the previous plain LASSO solution
            QM, Qop, Hh = holdout
            best = None
            path = []
            x_warm = xs1
            for mult in _LAM_PATH:
                lam_m = mult * lam0
                plain, xr, Pxr, conv_m = solve(lam_m, x_warm, tol_in)
                x_warm = plain
                xr, Pxr, sz = finish(xr, Pxr)
                est = _holdout_estimate(blocks, xr, QM, Qop, Hh)
                path.append({"multiple": float(mult), "holdout_error": est})
                logger.debug("recover: lambda x %g -> held-out error %.4f", mult, est)
                if best is None or est < best[0]:
                    best = (est, mult, lam_m, xr, Pxr, sz, conv_m)
                if stopped:
                    break
            assert best is not None
            _, mult, lam_vec, xs, Px, sizes, conv = best
            info["lam_path"] = path
            info["lam_multiple"] = float(mult)
    else:
        lam_arr = np.broadcast_to(np.asarray(lam, dtype=float), (r,)).copy()
        if np.any(lam_arr < 0) or not np.all(np.isfinite(lam_arr)):
            raise InputError(f"lam must be >= 0 and finite, got {lam!r}")
        lam_vec = lam_arr
        _, xs, Px, conv = solve(lam_vec, None, tol)
        xs, Px, sizes = finish(xs, Px)
    if not conv and not stopped:
        tol_used = tol_in if auto else tol
        warnings.warn(
            f"FISTA stopped at max_iter={max_iter} before the relative change fell below "
            f"tol={tol_used:g} (last {hist['rel_change'][-1]:.2e}) or the objective settled; "
            f"raise max_iter, or loosen tol",
            ConvergenceWarning,
            stacklevel=3,
        )
    return xs, Px, lam_vec, sizes, total_it, hist, info


# ---------------------------------------------------------------------- OMP
def _omp_select(
    op: SketchOperator, a: int, b: int, R: np.ndarray, chosen: list[np.ndarray], nonneg: bool
) -> np.ndarray:
    """Best new atom per column in rows a:b: (score, global index) as a 2 x r array."""
    P = _cols(op, a, b)
    C = np.asarray(P.T @ R)
    S = np.maximum(C, 0) if nonneg else np.abs(C)
    for j, idx in enumerate(chosen):
        loc = idx[(idx >= a) & (idx < b)] - a
        S[loc, j] = -np.inf
    best = S.argmax(axis=0) if S.shape[0] else np.zeros(R.shape[1], int)
    score = S[best, np.arange(R.shape[1])] if S.shape[0] else np.full(R.shape[1], -np.inf)
    return np.stack([score, best + a])


def _best(parts: list[np.ndarray]) -> np.ndarray:
    A = np.stack(parts)  # blocks x 2 x r
    k = A[:, 0, :].argmax(axis=0)
    return A[k, :, np.arange(A.shape[2])].T


def _omp(blocks: _Blocks, Wt: np.ndarray, k: int, nonneg: bool, tol: float) -> tuple:
    op = blocks.op
    d, r = Wt.shape
    chosen = [np.zeros(0, dtype=np.int64) for _ in range(r)]
    atoms: list[list[np.ndarray]] = [[] for _ in range(r)]
    coefs = [np.zeros(0) for _ in range(r)]
    R = Wt.copy()
    active = np.linalg.norm(Wt, axis=0) > 0
    norms = np.linalg.norm(Wt, axis=0)
    it = 0
    for it in range(1, min(k, d) + 1):
        if not active.any():
            it -= 1
            break
        Ra = R * active
        best = blocks.compute(
            delayed(_best)(
                [delayed(_omp_select)(op, a, b, Ra, chosen, nonneg) for a, b in blocks.ranges]
            )
        )
        for j in np.flatnonzero(active):
            score, idx = best[0, j], int(best[1, j])
            if not score > 0:
                active[j] = False
                continue
            col = op.columns(idx, idx + 1, np.float64)
            col = np.asarray(col.toarray() if sp.issparse(col) else col).ravel()
            atoms[j].append(col)
            chosen[j] = np.append(chosen[j], idx)
            A = np.stack(atoms[j], axis=1)
            coefs[j] = _nnls(A, Wt[:, j]) if nonneg else np.linalg.lstsq(A, Wt[:, j], rcond=None)[0]
            R[:, j] = Wt[:, j] - A @ coefs[j]
            if np.linalg.norm(R[:, j]) <= tol * norms[j]:
                active[j] = False
    rows = np.concatenate(chosen) if r else np.zeros(0, int)
    cols = np.concatenate([np.full(c.size, j) for j, c in enumerate(chosen)])
    vals = np.concatenate(coefs)
    return _sparse_to_blocks(blocks, rows, cols, vals, r), Wt - R, it


def _entries_block(
    a: int, b: int, r: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray
) -> np.ndarray:
    x = np.zeros((b - a, r))
    np.add.at(x, (rows - a, cols), vals)
    return x


def _sparse_to_blocks(
    blocks: _Blocks, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, r: int
) -> list[Any]:
    order = np.argsort(rows, kind="stable")
    rows, cols, vals = rows[order], cols[order], vals[order]
    out = []
    for a, b in blocks.ranges:
        lo, hi = np.searchsorted(rows, [a, b])
        out.append(delayed(_entries_block)(a, b, r, rows[lo:hi], cols[lo:hi], vals[lo:hi]))
    return blocks.persist(out)


# ---------------------------------------------------------------------- basis pursuit
def _bp(op: SketchOperator, Wt: np.ndarray, nonneg: bool) -> np.ndarray:
    from scipy.optimize import linprog

    limit = int(config.get("recover.bp-max-features", BP_MAX_FEATURES))
    n = op.n_features
    if n > limit:
        raise InputError(
            f"method='bp' solves one linear program over all n={n} features per column, above "
            f"the limit of {limit} (cfact.recover.bp-max-features); use method='nnlasso' (or "
            f"'lasso'), which works blockwise at any n, or 'lstsq-data' if the data is available"
        )
    P = sp.csc_matrix(op.columns(0, n, np.float64))
    d, r = Wt.shape
    # project onto range(P) so that P x = y stays feasible under noise
    G = P @ P.T
    G = G.toarray() if sp.issparse(G) else np.asarray(G)
    Y = G @ np.linalg.lstsq(G, Wt, rcond=None)[0]
    A = sp.hstack([P, -P], format="csc")
    c = np.ones(2 * n)
    X = np.zeros((n, r))
    for j in range(r):
        if not np.any(Y[:, j]):
            continue
        res = linprog(c, A_eq=A, b_eq=Y[:, j], bounds=(0, None), method="highs")
        if res.status != 0:
            raise InputError(
                f"basis pursuit failed on column {j}: {res.message}; use method='nnlasso'"
            )
        X[:, j] = res.x[:n] - res.x[n:]
    if nonneg:
        X = np.maximum(X, 0)  # the authors clamp negatives after BP
    return X


# ---------------------------------------------------------------------- lstsq-data
def _lstsq_block(
    B: np.ndarray, sq: np.ndarray, Rinv_T: np.ndarray, Rh: np.ndarray, G: np.ndarray, nonneg: bool
) -> np.ndarray:
    """Rows of ``W = argmin ‖M − W H‖`` from ``B = M Q`` (``Hᵀ = Q R``): ``w = R⁻¹ Qᵀ m``, or
    ``NNLS(R, Qᵀ m)`` (the same problem, r x r) for rows with negatives when nonnegative.

    Returns ``[W | ‖m − Hᵀw‖² | ‖m‖²]`` per row (squared residual by ``‖m‖² − 2 wᵀHm + wᵀHHᵀw``).
    """
    B = np.asarray(B, dtype=np.float64)
    W = B @ Rinv_T
    if nonneg:
        for i in np.flatnonzero((W < 0).any(axis=1)):
            W[i] = _nnls(Rh, B[i])
    HM = B @ Rh  # rows (H m_i)^T = (R^T Q^T m_i)^T
    err = sq - 2 * (W * HM).sum(axis=1) + ((W @ G) * W).sum(axis=1)
    return np.concatenate([W, np.maximum(err, 0)[:, None], sq[:, None]], axis=1)


def _lstsq_data(
    data: Any, H: np.ndarray, nonneg: bool, client: Any, chunks: Any
) -> tuple[da.Array, float]:
    from ..io import InputArray, open_array

    inp = data if isinstance(data, InputArray) else open_array(data)
    X = inp.data
    if X.ndim != 2:
        raise InputError(f"lstsq-data needs the data as a matrix; {inp.source} has shape {X.shape}")
    if inp.feature_axis == 1:
        X = X.T
    n, m = X.shape
    if H.shape[1] != m:
        raise InputError(
            f"H has {H.shape[1]} columns but {inp.source} has {m} samples; pass the data the "
            f"factorization was computed from"
        )
    r = H.shape[0]
    Qh, Rh = np.linalg.qr(H.T)  # H^T = Q R: m x r and r x r
    Rinv_T = np.linalg.pinv(Rh).T
    G = H @ H.T
    Xf = X.astype(np.float64) if X.dtype != np.float64 else X
    # one pass over the data: B = M Q (tree-summed over sample chunks) and the row norms
    B = da.matmul(Xf, da.from_array(Qh, chunks=(X.chunks[1], r))).rechunk({1: r})
    sq = (Xf * Xf).sum(axis=1)
    out = da.blockwise(
        _lstsq_block,
        "ij",
        B,
        "ij",
        sq,
        "i",
        Rinv_T,
        None,
        Rh,
        None,
        G,
        None,
        nonneg,
        None,
        adjust_chunks={"j": r + 2},
        dtype=np.float64,
        meta=np.empty((0, 0)),
    )
    if client is not None:
        out = client.persist(out)
        num, den = client.gather(client.compute([out[:, r].sum(), out[:, r + 1].sum()]))
    else:
        (out,) = _dpersist(out)
        num, den = _dcompute(out[:, r].sum(), out[:, r + 1].sum())
    W = out[:, :r]
    if chunks is not None:
        W = W.rechunk((chunks, r))
    exact = math.sqrt(float(num) / float(den)) if den > 0 else math.inf
    return W, exact


# ---------------------------------------------------------------------- held-out certificate
def holdout_error(
    W_hat: Any,
    H: Any,
    holdout_sketch: Any,
    holdout_operator: SketchOperator,
    *,
    client: Any = None,
) -> tuple[float, float]:
    """Estimate ``‖M − Ŵ H‖_F / ‖M‖_F`` from a held-out sketch ``Q M``.

    ``Q`` (d_h x n) is an independent operator (another seed; Gaussian with N(0, 1/d_h) entries
    makes ``E‖Q v‖² = ‖v‖²`` for every ``v``, a Johnson–Lindenstrauss projection), applied to the
    data in the same pass as the sketch and never seen by the factorization. Then
    ``‖Q M − (Q Ŵ) H‖ / ‖Q M‖`` estimates the relative error, with relative spread about
    ``√(2 / d_h)`` or better.

    Parameters
    ----------
    W_hat : array-like (n, r)
        The recovered factor (numpy or dask; applied blockwise).
    H : array-like (r, m)
    holdout_sketch : array-like (d_h, m)
        ``Q M``.
    holdout_operator : SketchOperator
        ``Q``'s spec (``n_features`` must equal n).

    Returns
    -------
    error : float
        The estimate of ``‖M − Ŵ H‖/‖M‖``.
    baseline : float
        The estimate of the best error reachable with this ``H`` (``‖Q M (I − H⁺ H)‖/‖Q M‖``):
        what ``lstsq-data`` would give. A good recovery has ``error`` close to ``baseline``.

    References
    ----------
    .. [1] W. B. Johnson, J. Lindenstrauss. "Extensions of Lipschitz mappings into a Hilbert
       space". Contemp. Math. 26, 1984.
    """
    H = np.asarray(H, dtype=np.float64)
    QM = holdout_sketch
    if hasattr(QM, "matrix") and hasattr(QM, "operator"):  # a Sketch
        QM = QM.matrix
    if not isinstance(holdout_operator, SketchOperator):
        raise InputError(
            f"holdout_operator must be a SketchOperator, got {type(holdout_operator).__name__}"
        )
    if W_hat.shape[0] != holdout_operator.n_features:
        raise InputError(
            f"W has {W_hat.shape[0]} rows but the held-out operator covers "
            f"{holdout_operator.n_features} features"
        )
    if QM.shape != (holdout_operator.n_components, H.shape[1]):
        raise InputError(
            f"held-out sketch has shape {QM.shape}; expected ({holdout_operator.n_components}, "
            f"{H.shape[1]}) = (held-out rows, samples of H)"
        )
    QW = holdout_operator.matvec(W_hat)
    with client_context(client, nbytes=0) as c:
        if c is not None:
            QW, QM = c.gather(c.compute([QW, da.asarray(QM)]))
        else:
            QW, QM = _dcompute(QW, QM)
    QM = np.asarray(QM, dtype=np.float64)
    QW = np.asarray(QW, dtype=np.float64)
    den = float(np.linalg.norm(QM))
    if den == 0:
        return math.inf, math.inf
    err = float(np.linalg.norm(QM - QW @ H)) / den
    base = float(np.linalg.norm(QM - (QM @ np.linalg.pinv(H)) @ H)) / den
    return err, base


# ---------------------------------------------------------------------- the entry point
def _holdout_inputs(
    holdout: Any, H: np.ndarray, n: int, client: Any
) -> tuple[np.ndarray, SketchOperator, np.ndarray]:
    """``(Q M, Q, H)`` in memory and checked, for the held-out choice of λ."""
    try:
        QM, Qop = holdout
    except (TypeError, ValueError):
        raise InputError("holdout= must be a pair (Q M, Q operator)") from None
    if hasattr(QM, "matrix") and hasattr(QM, "operator"):  # a Sketch
        QM = QM.matrix
    if not isinstance(Qop, SketchOperator):
        raise InputError(f"holdout operator must be a SketchOperator, got {type(Qop).__name__}")
    if Qop.n_features != n:
        raise InputError(
            f"the held-out operator covers {Qop.n_features} features but W has {n} rows"
        )
    if hasattr(QM, "compute"):
        QM = client.gather(client.compute(QM)) if client is not None else _dcompute(QM)[0]
    QM = np.asarray(QM, dtype=np.float64)
    if QM.shape != (Qop.n_components, H.shape[1]):
        raise InputError(
            f"held-out sketch has shape {QM.shape}; expected ({Qop.n_components}, "
            f"{H.shape[1]}) = (held-out rows, samples of H)"
        )
    return QM, Qop, H


def _unpack(result_or_Wtilde: Any, H: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    Wt = result_or_Wtilde
    if Wt is not None and hasattr(Wt, "W") and hasattr(Wt, "H"):
        if H is None:
            H = Wt.H
        Wt = Wt.W
    if Wt is not None:
        Wt = np.asarray(Wt.compute() if hasattr(Wt, "compute") else Wt, dtype=np.float64)
        if Wt.ndim == 1:
            Wt = Wt[:, None]
    if H is not None:
        H = np.asarray(H.compute() if hasattr(H, "compute") else H, dtype=np.float64)
        if H.ndim == 1:
            H = H[None, :]
    return Wt, H


def recover(
    result_or_Wtilde: Any,
    operator: SketchOperator | None,
    method: Method = "nnlasso",
    *,
    lam: float | Sequence[float] | Literal["auto"] = "auto",
    debias: bool = True,
    reweight: int | None = None,
    max_iter: int = 500,
    tol: float = 1e-4,
    sparsity: int | None = None,
    data: Any = None,
    H: Any = None,
    nonnegative: bool | None = None,
    holdout: tuple[Any, SketchOperator] | None = None,
    chunks: int | Sequence[int] | None = None,
    callback: Callable[[dict[str, Any]], bool | None] | None = None,
    client: Any = None,
) -> Recovery:
    """Recover ``W`` (n x r) from ``W̃ = P W`` (d x r), with a certificate.

    Parameters
    ----------
    result_or_Wtilde : ndarray (d, r) or factorization result
        ``W̃``, or any object with ``.W`` (d x r) and ``.H`` (r x m), e.g. the result of
        :func:`cfact_dask.nmf` on a sketch. May be None for ``lstsq-data`` with ``H=``.
    operator : SketchOperator
        The sketch's ``P`` (``sketch.operator``). Optional for ``lstsq-data``.
    method : {"nnlasso", "lasso", "bp", "omp", "lstsq-data"}
        See the module docstring. ``nnlasso`` (default) scales to any n; ``bp`` is the paper's
        choice for moderate n; ``omp`` needs ``sparsity``; ``lstsq-data`` needs ``data``.
    lam : "auto", float or sequence of floats
        LASSO penalty, per column or shared. ``"auto"`` estimates the noise level σ of the fit
        and takes ``λ₀ = σ √(2 log n) ‖p_col‖`` (scaled LASSO); with a ``holdout`` it then tries
        λ = {2, 1, 0.5} x λ₀ (warm-started) and keeps the one whose recovery has the smallest
        held-out error estimate (rows the factorization never saw: an honest criterion).
    debias : bool
        Refit each column by least squares (NNLS for nonnegative) on its support.
    reweight : int, optional
        Rounds of reweighted ℓ1 after each LASSO solve: weights ``ε / (|x| + ε)`` with ε 10 %
        of the column's largest entry (Candès, Wakin & Boyd 2008), which removes most false
        positives of the plain LASSO near the phase transition. Default 1 for ``lam="auto"``,
        0 for a given λ (the plain LASSO).
    max_iter, tol : int, float
        FISTA stops when the largest relative change of a column falls below ``tol`` (each
        solve). With ``lam="auto"`` and ``debias`` the LASSO solves only choose the supports,
        and stop at ``max(tol, 1e-3)``.
    sparsity : int, optional
        ``k``, nonzeros per column (OMP: the number of atoms).
    data : optional
        The original data (anything :func:`cfact_dask.open_array` takes, features on its feature
        axis) for ``lstsq-data``: one extra pass.
    H : array-like (r, m), optional
        Overrides ``result.H`` (needed by ``lstsq-data`` and the held-out certificate).
    nonnegative : bool, optional
        Constrain ``W ≥ 0``. Default: True for ``nnlasso``, False for ``lasso``; for the other
        methods, True when ``W̃`` and ``H`` are both nonnegative (an NMF result).
    holdout : (Q M, Q operator), optional
        A held-out sketch taken in the same pass (see :func:`holdout_error`); gives the
        certificate's estimated reconstruction error.
    chunks : int or sequence, optional
        Row chunks of the returned ``W`` (e.g. the data's feature chunks).
    callback : callable, optional
        ``callback(state) -> bool | None`` after each FISTA iteration; True stops.
    client : distributed.Client, optional

    Returns
    -------
    Recovery
        ``W`` (persisted dask array, n x r), ``certificate``, ``lam``, ``n_iter_``, ``history``.

    Warns
    -----
    RecoveryWarning
        When the certificate says the recovery is unreliable (figures and fix in the message).
    ConvergenceWarning
        When FISTA stops at ``max_iter``.

    References
    ----------
    .. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization: fast and
       accurate low-rank factorization of compressively-sensed data". ICML 2019,
       arXiv:1706.08146.
    .. [2] A. Beck, M. Teboulle. "A fast iterative shrinkage-thresholding algorithm for linear
       inverse problems". SIAM J. Imaging Sci. 2(1), 2009.
    .. [3] T. Sun, C.-H. Zhang. "Scaled sparse linear regression". Biometrika 99(4), 2012.
    .. [4] J. A. Tropp, A. C. Gilbert. "Signal recovery from random measurements via orthogonal
       matching pursuit". IEEE Trans. Inf. Theory 53(12), 2007.

    Examples
    --------
    >>> import numpy as np, cfact_dask as cf
    >>> from cfact_dask.recovery._recover import recover
    >>> op = cf.make_operator("expander", 200, 2000, seed=0)
    >>> w = np.zeros((2000, 1)); w[[3, 500, 1700]] = [1.0, 2.0, 0.5]
    >>> rec = recover(op.matvec(w).compute(), op, "nnlasso")
    >>> np.flatnonzero(rec.compute()[:, 0] > 1e-6)
    array([   3,  500, 1700])
    """
    if method not in METHODS:
        raise InputError(f"unknown recovery method {method!r}; choose one of {', '.join(METHODS)}")
    Wt, Hm = _unpack(result_or_Wtilde, H)
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise InputError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if not tol > 0:
        raise InputError(f"tol must be > 0, got {tol!r}")
    if reweight is not None and (
        isinstance(reweight, bool) or not isinstance(reweight, (int, np.integer)) or reweight < 0
    ):
        raise InputError(f"reweight must be None or an int >= 0, got {reweight!r}")
    if operator is not None and not isinstance(operator, SketchOperator):
        raise InputError(
            f"operator must be a SketchOperator (sketch.operator), got {type(operator).__name__}"
        )
    spec = getattr(result_or_Wtilde, "operator", None)
    if operator is not None and isinstance(spec, Mapping) and spec:
        from .._runtime.outputs import check_spec_match

        check_spec_match(
            dict(spec), operator.to_dict(),
            "the factorization result (the sketch operator it records) and operator=",
            "pass the operator of the sketch the factorization was computed from "
            "(sketch.operator, or Sketch.from_zarr(store, 'sketch').operator)",
        )
    if method != "lstsq-data":
        if operator is None or Wt is None:
            raise InputError(f"method={method!r} needs W̃ (d x r) and the sketch's operator")
        if Wt.shape[0] != operator.n_components:
            raise InputError(
                f"W̃ has {Wt.shape[0]} rows but the operator has n_components="
                f"{operator.n_components}; pass the operator of the sketch W̃ was computed from"
            )
        if not np.all(np.isfinite(Wt)):
            raise InputError("W̃ holds NaN or Inf; the factorization diverged, rerun it")
    if Hm is not None and Wt is not None and Hm.shape[0] != Wt.shape[1]:
        raise InputError(f"H has {Hm.shape[0]} rows but W̃ has {Wt.shape[1]} columns (the rank)")
    if nonnegative is None:
        if method in ("nnlasso", "lasso"):
            nonnegative = method == "nnlasso"
        else:
            nonnegative = bool((Wt is None or np.all(Wt >= 0)) and (Hm is None or np.all(Hm >= 0)))
    elif method == "lasso" and nonnegative:
        method = "nnlasso"
    elif method == "nnlasso" and not nonnegative:
        method = "lasso"

    params = {
        "method": method,
        "lam": lam if isinstance(lam, str) else np.asarray(lam).tolist(),
        "debias": debias,
        "reweight": reweight,
        "max_iter": int(max_iter),
        "tol": float(tol),
        "sparsity": sparsity,
        "nonnegative": bool(nonnegative),
    }
    lam_vec = None
    n_iter = 0
    hist: dict[str, list[float]] = {}
    sizes = None
    exact = None
    PW = None

    if method == "lstsq-data":
        if data is None:
            raise InputError(
                "method='lstsq-data' needs the original data: pass data=<the input> (one extra "
                "pass), or choose a sparse-recovery method"
            )
        if Hm is None:
            raise InputError("method='lstsq-data' needs H (the factorization result, or H=...)")
        from ..io import InputArray, open_array

        data = data if isinstance(data, InputArray) else open_array(data)
        nbytes = data.nbytes
    else:
        if operator is None or Wt is None:  # checked above; for type checkers
            raise InputError(f"method={method!r} needs W̃ and the operator")
        nbytes = operator.n_features * Wt.shape[1] * 8

    local = method != "lstsq-data" and nbytes <= int(
        config.get("recover.local-max-bytes", 2**26)
    )
    if local:
        # a small W (n x r): iterate in this process on numpy blocks (_Blocks(local=True)),
        # where a FISTA step costs no scheduling at all instead of a dask round trip; the
        # kernels and the order of the sums are the same. The hold-out sketch (d_h x m,
        # small) may live on the cluster: bring it here first.
        ctx: Any = _local_threads()
        if holdout is not None:
            QM = holdout[0].matrix if hasattr(holdout[0], "matrix") else holdout[0]
            if isinstance(QM, da.Array):
                QM = (np.asarray(client.compute(QM).result()) if client is not None and
                      not isinstance(client, str) else np.asarray(QM.compute()))
            holdout = (QM, holdout[1])
    else:
        ctx = client_context(client, nbytes=nbytes)
    with ctx as c:
        if method == "lstsq-data":
            W, exact = _lstsq_data(data, Hm, bool(nonnegative), c, chunks)
            n_feat = W.shape[0]
            if operator is not None and operator.n_features != n_feat:
                raise InputError(
                    f"the data has {n_feat} features but the operator covers {operator.n_features}"
                )
        else:
            n_feat = operator.n_features
            blocks = _Blocks(operator, c, chunks, local=local)
            if method in ("nnlasso", "lasso"):
                ho = None
                if holdout is not None and Hm is not None and isinstance(lam, str):
                    ho = _holdout_inputs(holdout, Hm, n_feat, c)
                xs, PW, lam_vec, sizes, n_iter, hist, info = _lasso(
                    blocks,
                    Wt,
                    bool(nonnegative),
                    lam,
                    debias,
                    int(max_iter),
                    float(tol),
                    callback,
                    reweight,
                    ho,
                )
                params.update(info)
            elif method == "omp":
                if sparsity is None or int(sparsity) < 1:
                    raise InputError(
                        "method='omp' needs sparsity=k (nonzeros per column); without it use "
                        "method='nnlasso'"
                    )
                xs, PW, n_iter = _omp(blocks, Wt, int(sparsity), bool(nonnegative), 1e-10)
            else:  # bp
                X = _bp(operator, Wt, bool(nonnegative))
                xs = blocks.persist([delayed(np.array)(X[a:b]) for a, b in blocks.ranges])
                PW = None
            W = blocks.to_array(xs, Wt.shape[1])
        Wabs = da.abs(W)
        mx = Wabs.max(axis=0)
        todo = [(Wabs > 1e-9 * mx).sum(axis=0), (Wabs > _SIGNIFICANT * mx).sum(axis=0)]
        if method != "lstsq-data" and PW is None:
            todo.append(operator.matvec(W))
        got = c.gather(c.compute(todo)) if c is not None else _dcompute(*todo)
        if sizes is None:
            sizes = np.asarray(got[0])
        eff = np.asarray(got[1])
        if len(got) > 2:
            PW = np.asarray(got[2])
        cert = _certificate(W, Wt, PW, Hm, holdout, sizes, eff, exact, operator, n_feat, method, c)
        W = detach(W, c, "the recovered W")
    for msg in cert.messages:
        warnings.warn(msg, RecoveryWarning, stacklevel=2)
    return Recovery(
        W=W,
        H=Hm,
        method=method,
        certificate=cert,
        lam=lam_vec,
        n_iter_=n_iter,
        history=hist,
        params=params,
    )


#: the scheduler of an in-process recovery; a context variable, not ``dask.config``, because
#: dask.config.set is process-global and concurrent recoveries in threads would race on it
_LOCAL_SCHEDULER: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cfact_recover_scheduler", default=None
)


@contextlib.contextmanager
def _local_threads() -> Any:
    token = _LOCAL_SCHEDULER.set("threads")
    try:
        yield None
    finally:
        _LOCAL_SCHEDULER.reset(token)


def _sched() -> dict[str, Any]:
    s = _LOCAL_SCHEDULER.get()
    return {"scheduler": s} if s else {}


def _dpersist(*objs: Any) -> tuple[Any, ...]:
    return dask.persist(*objs, **_sched())


def _dcompute(*objs: Any) -> tuple[Any, ...]:
    return dask.compute(*objs, **_sched())


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _span(x: Any) -> str:
    """An array for a log line: its range and size, never its values one by one."""
    a = np.asarray(x, dtype=float).ravel()
    if a.size == 0:
        return "[]"
    if a.size == 1:
        return f"{a[0]:.3g}"
    return f"{a.min():.3g}..{a.max():.3g} ({a.size} columns)"


def _certificate(
    W: da.Array,
    Wt: np.ndarray | None,
    PW: np.ndarray | None,
    H: np.ndarray | None,
    holdout: Any,
    sizes: np.ndarray | None,
    eff: np.ndarray,
    exact: float | None,
    op: SketchOperator | None,
    n: int,
    method: str,
    client: Any,
) -> Certificate:
    msgs: list[str] = []
    fit = fit_cols = None
    d = op.n_components if op is not None else None
    if Wt is not None and PW is not None:
        nt = np.linalg.norm(Wt, axis=0)
        fit_cols = np.linalg.norm(PW - Wt, axis=0) / np.maximum(nt, np.finfo(float).tiny)
        fit = float(np.linalg.norm(PW - Wt) / max(np.linalg.norm(Wt), np.finfo(float).tiny))
    h_err = h_base = None
    notes: list[str] = []
    if holdout is not None:
        if H is None:
            raise InputError("the held-out certificate needs H (pass a result with .H, or H=)")
        QM, Qop = holdout
        h_err, h_base = holdout_error(W, H, QM, Qop, client=client)
        bound = HOLDOUT_RATIO * h_base + HOLDOUT_SLACK
        if method == "lstsq-data":
            # the exact solve given H is the reference the check compares against: a gap to the
            # (signed, unconstrained) baseline is H's doing, not the recovery's
            if not h_err <= bound:
                notes.append(
                    f"lstsq-data is the exact solve given H (error {_fmt(exact)}); the held-out "
                    f"estimate {h_err:.3f} against {h_base:.3f} for an unconstrained W says H "
                    f"itself fits poorly: the factorization of the d={d} sketch is the weak "
                    f"stage (less compression, or another rank)"
                )
                logger.info("recover: %s", notes[-1])
        elif not h_err <= bound:
            msgs.append(
                f"recovery ({method}) looks unreliable: the held-out sketch estimates a relative "
                f"reconstruction error of {h_err:.3f}, against {h_base:.3f} for an exact solve "
                f"with the same H (limit {HOLDOUT_RATIO:g} x {h_base:.3f} + {HOLDOUT_SLACK:g} = "
                f"{bound:.3f}). The factors are probably not sparse enough for d={d} "
                f"measurements of n={n} features. Fix: use less compression (a larger "
                f"n_components), or recover='lstsq-data' with the original data (one extra pass)"
            )
    if d is not None and method != "lstsq-data":
        worst = int(np.max(eff)) if eff.size else 0
        if worst >= d // 2:
            k_need = 2 * worst * math.log(max(n / max(worst, 1), 2.0))
            dense = (
                f"recovered columns are dense: up to {worst} significant entries (above "
                f"{_SIGNIFICANT:g} x the column's largest) from d={d} measurements "
                f"(sparse recovery needs roughly d >= 2 k log(n/k) = {k_need:.0f})"
            )
            if h_err is None:
                # no held-out sketch: the heuristic is the only evidence, so it decides
                msgs.append(
                    f"{dense}; the data is probably too dense for this compression. Fix: a "
                    f"larger n_components, or recover='lstsq-data' with the original data"
                )
            else:
                # the held-out estimate measures the error itself: the heuristic only informs
                notes.append(
                    f"{dense}; the held-out estimate ({h_err:.3f} against {h_base:.3f} for an "
                    f"exact solve) decides the verdict"
                )
                logger.info("recover: %s", notes[-1])
    if holdout is None and exact is None:
        logger.info(
            "recover: no held-out sketch given; the certificate has only the fit residual %s",
            _fmt(fit),
        )
    return Certificate(
        fit_residual=fit,
        fit_residual_per_column=fit_cols,
        holdout_error=h_err,
        holdout_baseline=h_base,
        exact_error=exact,
        support_sizes=None if sizes is None else np.asarray(sizes),
        effective_support=np.asarray(eff),
        n_measurements=d,
        n_features=n,
        ok=not msgs,
        messages=tuple(msgs),
        notes=tuple(notes),
    )
