"""(Nonnegative) LASSO recovery: FISTA over the row blocks of ``W``, or a working set for n ≫ d.

``min ½‖P x − w̃‖² + λ Σ wᵢ|xᵢ|`` (``x ≥ 0`` for ``nnlasso``), all r columns at once, each with
its own λ. FISTA with function-value restart is matrix-free: every iteration is one pass over the
row blocks of ``W`` in which each block regenerates its columns of ``P`` from the operator spec
and computes both ``P_bᵀ G`` and ``P_b x_b``; only d x r partials travel to the client.

There is ONE FISTA iteration (``_fista_loop``: momentum, per-column restarts, stopping rules),
parametrised by the sweep that runs a step over the blocks: ``_DaskSweep`` (dask tasks, state
persisted per block) or ``_LocalSweep`` (a small ``W``, in this process on numpy blocks, the
same kernels and the same tree of partial sums, so the same numbers). The restricted problems
of the working set (for n ≫ d) are not solved by FISTA: ``_lsq.lasso_active_set`` solves them
exactly by an active set, whatever their conditioning.

λ is set from the noise level of the fit (scaled LASSO [4]_): a first solve at ``λ = α₀ λ_max``,
the residual of the least-squares debias on its support estimates σ, then
``λ₀ = σ √(2 log n) ‖P_col‖``; given a held-out sketch, λ ∈ {2, 1, 0.5} x λ₀ is chosen by the
smallest held-out error estimate (largest first; the path stops at the first λ whose held-out
error is above the best one's, or is over 10x what the certificate accepts; 2x when an exact
fallback follows, ``recover: auto``, which also skips the path when the debiased first solve is
over 2x). Each LASSO solve is followed by one round of reweighted ℓ1 [5]_.

References
----------
.. [1] A. Beck, M. Teboulle. "A fast iterative shrinkage-thresholding algorithm for linear
   inverse problems". SIAM J. Imaging Sci. 2(1), 2009.
.. [2] B. O'Donoghue, E. Candès. "Adaptive restart for accelerated gradient schemes". Found.
   Comput. Math. 15, 2015.
.. [3] R. Berinde, A. C. Gilbert, P. Indyk, H. Karloff, M. J. Strauss. "Combining geometry and
   combinatorics: a unified approach to sparse signal recovery". Allerton 2008.
.. [4] T. Sun, C.-H. Zhang. "Scaled sparse linear regression". Biometrika 99(4), 2012.
.. [5] E. J. Candès, M. B. Wakin, S. P. Boyd. "Enhancing sparsity by reweighted ℓ1
   minimization". J. Fourier Anal. Appl. 14(5-6), 2008.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp
from dask import delayed

from .. import config
from .._runtime import jit
from .._runtime.blas import blas_threads
from ..errors import ConvergenceWarning, InputError
from ..sketching.operators import SketchOperator
from ._blocks import (
    Blocks,
    absmax,
    cols,
    lipschitz,
    matvec_block,
    rmatvec_stats,
    sparse_to_blocks,
    tree_sum,
)
from ._kernels import fista_point, fista_residual, fista_step
from ._lsq import debias_support, lasso_active_set
from .certificate import holdout_baseline, holdout_estimate, holdout_limit

__all__ = ["fallback_follows", "solve_lasso"]

logger = logging.getLogger(__name__)

#: first-stage λ of the automatic choice, relative to λ_max (the λ at which the solution is 0)
_ALPHA0 = 0.05
#: smallest λ the automatic choice goes to, relative to λ_max (noiseless data)
_ALPHA_MIN = 1e-4
#: reweighted ℓ1: ε of the weights ε / (|x| + ε), relative to the column's largest entry
_REWEIGHT_EPS = 0.1
#: multiples of the noise-based λ tried (largest first, warm-started) when a hold-out is given
_LAM_PATH = (2.0, 1.0, 0.5)
#: the λ path stops when a recovery's held-out error is this many times the largest the
#: certificate accepts and an exact fallback follows (:func:`fallback_follows`, ``recover:
#: auto``): no smaller λ closes such a gap, and the certificate will reject the recovery
#: anyway (measured over 180 cells of the phase-transition grid, ranks 5/10/20, two seeds: a
#: halving of λ lowered the held-out error by at most 14 %, so the two halvings left after
#: the first λ reach at most 0.74x; no accepted cell started above 1.12x the limit). The
#: debiased first solve is held to the same factor (every cell whose first solve was over 2x
#: was rejected; no accepted cell's was above 1.26x): the path is then not walked at all
_HOPELESS = 2.0
#: ... and when the sparse recovery is the result whatever its verdict (``nnlasso`` asked for
#: by name): the path is walked further, for the best recovery it can give (a rejected cell's
#: error ratio was 1.5x walking on where the first solve had 4.3x)
_HOPELESS_FINAL = 10.0
#: set inside :func:`fallback_follows`
_FALLBACK: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "cfact_recover_fallback", default=False)
#: relative-change tolerance of the automatic λ's LASSO solves when they are debiased
_AUTO_TOL = 1e-3
#: the in-process FISTA runs the blocks' steps in threads when W has at least this many entries
#: (n r); the columns of P it keeps or regenerates: see ``_blocks._LOCAL_P_MAX_BYTES``
_LOCAL_THREADS_MIN_ENTRIES = 2**20
#: FISTA also stops when no column's objective fell by more than tol x this factor (relative)
#: over the last _OBJ_WINDOW iterations
_OBJ_TOL_FACTOR = 0.2
_OBJ_WINDOW = 10


@contextlib.contextmanager
def fallback_follows() -> Iterator[None]:
    """Inside: an exact recovery follows when the certificate rejects this one (``recover:
    auto``), so the λ path gives up as soon as sparse recovery cannot fit (:data:`_HOPELESS`)."""
    token = _FALLBACK.set(True)
    try:
        yield None
    finally:
        _FALLBACK.reset(token)


def _shrink(v: np.ndarray, th: Any, nonneg: bool) -> np.ndarray:
    """The proximal step of the (weighted) ℓ1 penalty: soft threshold at ``th`` (``v − th``
    clipped at 0 for a nonnegative x). The one prox of every FISTA here."""
    if nonneg:
        return np.maximum(v - th, 0.0)
    return np.sign(v) * np.maximum(np.abs(v) - th, 0.0)


def _next_momentum(t: Any) -> Any:
    """FISTA's ``t_{k+1} = (1 + √(1 + 4 t_k²)) / 2`` (scalar or per column)."""
    return (1 + np.sqrt(1 + 4 * t * t)) / 2


def _by_column(ufunc: Any, y: np.ndarray, v: np.ndarray) -> None:
    """``y = ufunc(y, v)`` in place for a per-column vector ``v`` (length r) of a C-ordered
    ``y`` (rows x r): through a view of several rows per line, so that numpy's inner loop runs
    over hundreds of entries instead of r (1.6x faster at r = 20; the same numbers)."""
    rows, r = y.shape
    k = 1
    while k < 64 and rows % (2 * k) == 0:
        k *= 2
    if k == 1 or not y.flags.c_contiguous:
        ufunc(y, v, out=y)
        return
    wide = y.reshape(rows // k, k * r)
    ufunc(wide, np.tile(v, k), out=wide)


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
    if sp.issparse(P) and P.format == "csc" and jit.enabled():
        # the same step in one compiled pass (recovery._kernels): 2x faster at r = 20
        return fista_step(P, x, x_prev, G, beta, step, thresh, nonneg, weights)
    # in place on one fresh buffer: every temporary of a block this size is a fresh mmap and
    # its page faults, which cost more than the arithmetic (2.5x the step, measured); the
    # per-column vectors are applied through a wide view (_by_column) and the column sums are
    # BLAS products: ~25 % of the step at r = 20 (measured)
    if np.any(beta):
        y = np.subtract(x, x_prev)
        _by_column(np.multiply, y, beta)
        y += x
    else:
        y = x.copy()
    g = np.asarray(P.T @ (G * step))  # step·Pᵀ G as Pᵀ (step·G): the d x r side is small
    y -= g
    th = thresh if weights is None else thresh * weights
    if nonneg:
        if weights is None:
            _by_column(np.subtract, y, th)
        else:
            y -= th
        xn = np.maximum(y, 0.0, out=y)
    else:
        xn = _shrink(y, th, nonneg)
    Px = np.asarray(P @ xn)
    ones = np.ones(xn.shape[0])
    dx = np.subtract(xn, x, out=g)  # g's buffer, free again
    dx *= dx
    ax = xn if nonneg else np.abs(xn)  # |x⁺| (x⁺ >= 0 when nonneg)
    l1 = ones @ ax if weights is None else np.einsum("ij,ij->j", ax, weights)
    stats = np.stack([ones @ dx, np.einsum("ij,ij->j", xn, xn), l1])
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
    return _fista_update(cols(op, a, b), state, G, beta, step, thresh, nonneg, weights)


def _init_block(a: int, b: int, r: int, x0: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.zeros((b - a, r)) if x0 is None else np.array(x0, dtype=np.float64)
    return x, x.copy()


def _first(state: tuple[Any, ...]) -> Any:
    return state[0]


class _DaskSweep:
    """FISTA's pass over the row blocks as dask tasks: each block's state ``(x, x_prev)`` stays
    persisted where it was computed and its task regenerates its columns of ``P``; only the
    d x r partials ``P_b x_b`` and 3 x r statistics travel to the client, tree-summed."""

    def __init__(self, blocks: Blocks, r: int, weights: list[Any] | None) -> None:
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
                tree_sum(
                    [
                        delayed(matvec_block)(op, a, b, delayed(_first)(s))
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
        return blocks.compute(tree_sum([delayed(tuple)([n[2], n[3]]) for n in self.states]))

    def result(self) -> list[Any]:
        return [delayed(_first)(s) for s in self.states]

    def close(self) -> None:
        pass


class _LocalSweep:
    """The same pass as :class:`_DaskSweep`, in this process on numpy blocks.

    The kernels (:func:`_init_block`, :func:`_fista_update`, ``P_b @ x``), the blocks, and the
    tree of the partial sums are those of the dask pass, so every iteration produces the same
    numbers; only the scheduling is gone, and the columns of ``P`` are generated once per
    recovery instead of once per task (when they are small, see :meth:`Blocks.block_cols`).
    """

    def __init__(self, blocks: Blocks, r: int, weights: list[Any] | None) -> None:
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
        return tree_sum(
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
        return tree_sum([(n[2], n[3]) for n in new], local=True)

    def result(self) -> list[Any]:
        return [s[0] for s in self.states]


def _fista(
    blocks: Blocks,
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
    L = lipschitz(op, blocks)
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
    fused = jit.enabled()  # the d x r terms in one pass each (recovery._kernels)
    for it in range(1, max_iter + 1):
        G = fista_point(Px, Px_prev, Wt, beta) if fused else Px + beta * (Px - Px_prev) - Wt
        Px_new, stats = sweep.step(G, beta, step, thresh, nonneg)
        Px_prev, Px = Px, Px_new
        if fused:
            F = 0.5 * fista_residual(Px, Wt) + lam * stats[2]
        else:
            res = Px - Wt
            F = 0.5 * (res * res).sum(axis=0) + lam * stats[2]
        rel = np.sqrt(stats[0]) / np.maximum(np.sqrt(stats[1]), np.finfo(float).tiny)
        hist["objective"].append(float(F.sum()))
        hist["rel_change"].append(float(rel.max()))
        # restart the momentum of a column whose objective went up (O'Donoghue & Candès)
        up = F > F_prev
        t_next = _next_momentum(t)
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


def _ws_scan(
    op: SketchOperator, a: int, b: int, R: np.ndarray, lam: np.ndarray, nonneg: bool,
    w: np.ndarray | None, m: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimality check of rows a:b: ``g = P_bᵀ R``; score = how much an entry violates the
    LASSO conditions (``g − λw`` for nonnegative, ``|g| − λw``); the best ``m`` per column as
    (global index, score, weight), each m x r."""
    P = cols(op, a, b)
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


def _fista_ws(
    blocks: Blocks,
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
        found = blocks.compute(blocks.task(list)([
            blocks.task(_nonzeros_block)(a, x) for (a, b), x in zip(blocks.ranges, x0, strict=True)
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
        idx, score, wt = blocks.compute(blocks.task(_ws_merge)(
            [blocks.task(_ws_scan)(op, a, b, R, lam, nonneg, w, m)
             for (a, b), w in zip(blocks.ranges, wts, strict=True)], m,
        ))
        slack = 1e-6 * np.maximum(lam, 1e-300) + 1e-12 * np.linalg.norm(Wt, axis=0)
        viol = score > slack[None, :]
        if not viol.any():
            converged = True
            break
        change = np.zeros(r)
        added = 0
        # the restricted problems are small dense solves, latency-bound: a multithreaded BLAS
        # only adds contention (measured 30-100x slower on a busy 2-core machine)
        with blas_threads():
            for j in range(r):
                new = ~np.isin(idx[:, j], support[j]) & viol[:, j]
                if not new.any():
                    continue
                added += int(new.sum())
                ws = np.concatenate([support[j], idx[new, j]])
                ww = np.concatenate([wsup[j], wt[new, j]])
                z0 = np.concatenate([coef[j], np.zeros(int(new.sum()))])
                A = _support_columns(op, ws)
                z = lasso_active_set(A, Wt[:, j], lam[j] * ww, z0, nonneg)
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
    xs = sparse_to_blocks(blocks, rows, cols, vals, r)
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


def _lam_max(blocks: Blocks, Wt: np.ndarray, nonneg: bool) -> np.ndarray:
    parts = [blocks.task(rmatvec_stats)(blocks.op, a, b, Wt, nonneg) for a, b in blocks.ranges]
    return np.asarray(blocks.compute(blocks.task(np.max)(blocks.task(np.stack)(parts), axis=0)))


def _column_norm(op: SketchOperator) -> float:
    return op.column_norm  # per kind: SKETCH_KINDS


def _weights_block(x: np.ndarray, eps: np.ndarray) -> np.ndarray:
    return eps / (np.abs(x) + eps)


def _reweight(blocks: Blocks, xs: list[Any]) -> list[Any]:
    """Entry weights ``ε / (|x| + ε)`` with ``ε = _REWEIGHT_EPS`` x the column's largest
    (Candès, Wakin & Boyd 2008): large entries are barely penalised, zeros keep the full λ."""
    eps = np.maximum(_REWEIGHT_EPS * absmax(blocks, xs), np.finfo(float).tiny)
    return blocks.persist([blocks.task(_weights_block)(x, eps) for x in xs])


def solve_lasso(
    blocks: Blocks,
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
    """The (nonnegative) LASSO recovery of ``W`` from ``W̃`` (d x r) over the row ``blocks``.

    Parameters
    ----------
    blocks : Blocks
    Wt : ndarray (d, r)
    nonneg : bool
    lam : "auto", float or sequence
        ``"auto"``: scaled LASSO, then (with ``holdout``) the λ path chosen by the held-out error.
    debias : bool
        Least squares (NNLS when ``nonneg``) on each column's support after each solve.
    max_iter, tol, callback
        Of each FISTA / working-set solve.
    reweight : int, optional
        Rounds of reweighted ℓ1 (default 1 for ``"auto"``, else 0).
    holdout : (Q M, Q, H), optional
        In memory, checked (:func:`~cfact_dask.recovery.certificate.holdout_inputs`).

    Returns
    -------
    xs, PW, lam, sizes, n_iter, history, info
        The row blocks of ``W``, ``P Ŵ``, λ per column, the support sizes (None without
        debias), the iterations of all solves, their history, and what was chosen (``info``:
        ``reweight``, ``lam_noise``, ``lam_multiple``, ``lam_path``; with a hold-out also
        ``first_holdout_error``, the debiased first solve's, and ``lam_path_stopped`` when the
        path stopped because sparse recovery cannot fit: then ``lam_multiple`` is None when
        even the first solve was hopeless, and that solve is returned).

    Warns
    -----
    ConvergenceWarning
        When a solve stops at ``max_iter``.
    """
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
            return debias_support(blocks, xs, Wt, nonneg)
        return xs, Px, None

    if auto:
        # the LASSO solves only choose supports when the debias refits the values on them: a
        # looser relative-change test loses nothing (measured) and saves most of the passes
        tol_in = max(tol, _AUTO_TOL) if debias else tol
        # scaled LASSO: σ from the residual of a debiased first solve, then λ = σ √(2 log n) ‖p‖
        lam1 = _ALPHA0 * lmax
        xs1, Px1, conv1 = run(lam1, None, tol_in)
        xs_d, Px_d, sizes = debias_support(blocks, xs1, Wt, nonneg)
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
            # largest multiple down, each warm-started from the previous plain LASSO solution;
            # it stops at the first multiple whose held-out error is above the best one's (the
            # held-out error is U-shaped in λ: a smaller λ only lets in more noise; the solves
            # at small λ are the longest)
            QM, Qop, Hh = holdout
            give_up = _FALLBACK.get()
            factor = _HOPELESS if give_up else _HOPELESS_FINAL
            hopeless = factor * holdout_limit(holdout_baseline(QM, Hh), QM.shape[0])
            best = None
            path = []
            x_warm = xs1
            # the debiased first solve is a recovery too: when even it is hopeless and a fallback
            # follows, no λ of the path will do (see _HOPELESS)
            first = holdout_estimate(blocks, xs_d, QM, Qop, Hh) if debias and give_up else None
            if first is not None:
                info["first_holdout_error"] = first
                logger.debug("recover: first solve -> held-out error %.4f", first)
            if first is not None and first > hopeless:
                info["lam_path_stopped"] = (
                    f"held-out error {first:.3g} of the first solve is over {factor:g}x the "
                    f"certificate's limit: sparse recovery cannot fit this factorization")
                best = (first, None, lam1, xs_d, Px_d, sizes, conv1)
            for mult in _LAM_PATH if best is None else ():  # none when the first is hopeless
                lam_m = mult * lam0
                plain, xr, Pxr, conv_m = solve(lam_m, x_warm, tol_in)
                x_warm = plain
                xr, Pxr, sz = finish(xr, Pxr)
                est = holdout_estimate(blocks, xr, QM, Qop, Hh)
                path.append({"multiple": float(mult), "holdout_error": est})
                logger.debug("recover: lambda x %g -> held-out error %.4f", mult, est)
                if best is None or est < best[0]:
                    best = (est, mult, lam_m, xr, Pxr, sz, conv_m)
                elif est > best[0]:
                    break
                if est > hopeless:
                    info["lam_path_stopped"] = (
                        f"held-out error {est:.3g} is over {factor:g}x the certificate's "
                        f"limit: sparse recovery cannot fit this factorization")
                    break
                if stopped:
                    break
            assert best is not None
            _, mult, lam_vec, xs, Px, sizes, conv = best
            info["lam_path"] = path
            info["lam_multiple"] = None if mult is None else float(mult)
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
            stacklevel=4,  # the caller of recover()
        )
    return xs, Px, lam_vec, sizes, total_it, hist, info


def _span(x: Any) -> str:
    """An array for a log line: its range and size, never its values one by one."""
    a = np.asarray(x, dtype=float).ravel()
    if a.size == 0:
        return "[]"
    if a.size == 1:
        return f"{a[0]:.3g}"
    return f"{a.min():.3g}..{a.max():.3g} ({a.size} columns)"
