"""Least squares on a support: the debias of a LASSO solution, NNLS, and their fast exact routes.

The debias refits each recovered column by least squares (nonnegative for ``nnlasso``) on its
support, with the support's columns of ``P`` gathered (they are few: the support is sparse) and
kept sparse: Cholesky of the normal equations, and for the NNLS an exact shortcut (a nonnegative
least-squares solution is the NNLS solution) or a KKT-certified active set; scipy's ``nnls`` /
numpy's ``lstsq`` where the solution may not be unique. The exact (nonnegative) LASSO of the
working set's small dense problems (:func:`lasso_active_set`) is an active set of the same kind.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from .._runtime import jit
from .._runtime.blas import blas_threads
from ..sketching.operators import SketchOperator
from ._blocks import Blocks, absmax, cols, matvec_block
from ._kernels import nnls_pg

__all__ = ["debias_support", "lasso_active_set", "nnls"]

logger = logging.getLogger(__name__)

#: the debias refits on entries above this fraction of the column's largest
_DEBIAS_SUPPORT = 1e-3
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
#: the active-set LASSO (:func:`lasso_active_set`) lets this many of the worst violators of
#: the optimality conditions enter at once
_AS_BATCH = 16
#: rounds of support exchange (drop x_F ≤ 0, add KKT violators) before giving up
_POLISH_ROUNDS = 10


def _support_block(op: SketchOperator, a: int, b: int, x: np.ndarray, thr: np.ndarray) -> tuple:
    """Rows (global) in the support of some column, their columns of P, and the mask."""
    mask = (np.abs(x) > thr) & (x != 0)
    rows = np.flatnonzero(mask.any(axis=1))
    P = cols(op, a, b)
    Pc = P[:, rows] if sp.issparse(P) else sp.csc_matrix(P[:, rows])
    return rows + a, sp.csc_matrix(Pc), mask[rows]


def _gather_support(blocks: Blocks, xs: list[Any], rel: float) -> tuple:
    """The support (entries above ``rel`` x the column's largest) and its columns of ``P``."""
    thr = rel * absmax(blocks, xs)
    parts = blocks.compute(
        [
            blocks.task(_support_block)(blocks.op, a, b, x, thr)
            for (a, b), x in zip(blocks.ranges, xs, strict=True)
        ]
    )
    rows = np.concatenate([p[0] for p in parts])
    P = sp.hstack([p[1] for p in parts], format="csc") if rows.size else None
    mask = np.concatenate([p[2] for p in parts]) if rows.size else np.zeros((0, 0), bool)
    return rows, P, mask


def nnls(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``argmin_{x ≥ 0} ‖A x − y‖`` by scipy's Lawson–Hanson (dense ``A``), the reference NNLS
    of the package (OMP, lstsq-data, and the debias where the fast routes do not apply)."""
    from scipy.optimize import nnls as lawson_hanson

    try:
        return lawson_hanson(A, y, maxiter=50 * max(A.shape[1], 1))[0]
    except RuntimeError:  # rare: iteration limit; fall back to projected lstsq
        return np.maximum(np.linalg.lstsq(A, y, rcond=None)[0], 0)


def _chol_ls(AtA: np.ndarray, b: np.ndarray, F: np.ndarray | None) -> Any:
    """``argmin ‖A_F x − y‖`` by Cholesky of ``A_Fᵀ A_F`` (the rows and columns ``F`` of the
    dense ``AtA = AᵀA``, built once per support from the sparse columns; ``b`` is ``Aᵀ y``;
    ``F=None``: all columns), or None when that Gram matrix is not safely positive definite:
    ``A_F`` rank-deficient (the least-squares solution is then not unique, and which one is
    returned is the reference solver's business) or too ill-conditioned for the normal
    equations."""
    from scipy.linalg import cho_factor, cho_solve, lapack

    if F is None:
        G, bF = AtA.copy(), b
    elif F.size == 0:
        return np.zeros(0)
    else:
        G, bF = AtA[np.ix_(F, F)], b[F]
    anorm = float(np.abs(G).sum(axis=0).max())
    try:
        c = cho_factor(G, lower=False, overwrite_a=True, check_finite=False)
    except np.linalg.LinAlgError:
        return None
    rcond, info = lapack.dpocon(c[0], anorm)
    if info != 0 or not rcond > _CHOL_RCOND:
        return None
    x = cho_solve(c, bF, check_finite=False)
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
    x = _chol_ls((AT @ A).toarray(), AT @ y, None)
    if x is not None:
        return x, "cholesky"
    return np.linalg.lstsq(A.toarray(), y, rcond=None)[0], "lstsq"


def _nnls_support(A: sp.csc_matrix, y: np.ndarray) -> tuple[np.ndarray, str]:
    """``argmin_{x ≥ 0} ‖A x − y‖`` for the columns ``A`` (d x k, sparse) of ``P`` on a
    support: ``(x, route)``. The same solution as :func:`nnls` (scipy's Lawson–Hanson), found
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
    AtA = (AT @ A).toarray()  # once: the exchanges below solve on its sub-blocks
    xF = _chol_ls(AtA, b, None)
    if xF is not None and np.all(xF > 0):
        return xF, "lstsq"
    # find the support: FISTA with function-value restart on ½‖A x − y‖², x ≥ 0, step 1/L with
    # L the largest Gershgorin bound of AᵀA (≥ its largest eigenvalue)
    L = float(np.abs(AtA).sum(axis=1).max()) or 1.0
    x = np.zeros(k) if xF is None else np.maximum(xF, 0.0)
    if jit.enabled():  # the same loop compiled (recovery._kernels)
        x = nnls_pg(A, y, b, x, L, _PG_MAX_ITER, _PG_STABLE)
    else:
        x = _pg_support(A, AT, y, b, x, L)
    # exact least squares on the found support, then the KKT check; exchange the violators
    inF = x > 0
    for _ in range(_POLISH_ROUNDS):
        F = np.flatnonzero(inF)
        xF = _chol_ls(AtA, b, F)
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
    return nnls(A.toarray(), y), "scipy"


def _pg_support(A: sp.csc_matrix, AT: sp.csr_matrix, y: np.ndarray, b: np.ndarray,
                x: np.ndarray, L: float) -> np.ndarray:
    """The NNLS's support search (numpy): FISTA with function-value restart on
    ``½‖A x − y‖²``, ``x ≥ 0``, step ``1/L``, from ``x``, until the positive set has not changed
    for ``_PG_STABLE`` steps (compiled: :func:`~cfact_dask.recovery._kernels.nnls_pg`)."""
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
    return x


def debias_support(
    blocks: Blocks, xs: list[Any], Wt: np.ndarray, nonneg: bool
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
    # small dense solves on the client, latency-bound: a multithreaded BLAS only adds
    # contention (measured ~20x slower Cholesky factorizations on a busy 2-core machine)
    with blas_threads():
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
        out.append(blocks.task(_set_rows)(x, rows[lo:hi] - a, vals[lo:hi], done))
    out = blocks.persist(out)
    PW = blocks.compute(
        blocks.sum(
            [
                blocks.task(matvec_block)(blocks.op, a, b, x)
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


def lasso_active_set(A: np.ndarray, y: np.ndarray, lam_w: np.ndarray, z0: np.ndarray, nonneg: bool,
                 max_iter: int | None = None) -> np.ndarray:
    """The exact solution of a small dense problem min ½‖y − A z‖² + Σ lam_w |z| (z ≥ 0 if
    nonneg), by an active set (Lawson & Hanson's NNLS [1]_ with the linear term ``Aᵀy − λw``;
    a signed z is split as ``z⁺ − z⁻``), warm-started from the support of ``z0``.

    The restricted problems of the working set are ill-conditioned (a support of a few hundred
    columns in d rows), where first-order steps crawl: FISTA took its 20 000 iterations per
    column at n = 131 072, d = 400 without reaching a 1e-12 relative change (minutes per outer
    step). The active set takes one step per entry entering or leaving the support whatever the
    conditioning, and ends at the solution (to rounding). Its Cholesky factor grows by one row
    per entry (O(p²)) and is refactored only when entries leave; the Gram matrix is formed only
    for the columns that enter (the working set may hold thousands of candidates).

    Parameters
    ----------
    A : ndarray (d, k)
        The candidate columns of ``P``.
    y : ndarray (d,)
    lam_w : ndarray (k,)
        The penalty per entry (λ times the entry's weight), ≥ 0.
    z0 : ndarray (k,)
        Warm start; its support is the first active set.
    nonneg : bool
    max_iter : int, optional
        Active-set steps at most (default 10 k).

    Returns
    -------
    ndarray (k,)

    References
    ----------
    .. [1] C. L. Lawson, R. J. Hanson. "Solving least squares problems". Prentice-Hall, 1974,
       chapter 23 (the NNLS active set).
    """
    k0 = A.shape[1]
    if k0 == 0:
        return z0
    if not nonneg:
        A = np.hstack([A, -A])
        lam_w = np.concatenate([lam_w, lam_w])
        z0 = np.concatenate([np.maximum(z0, 0.0), np.maximum(-z0, 0.0)])
    c = A.T @ y - lam_w
    gram = _GramColumns(A)
    z = np.maximum(np.asarray(z0, dtype=np.float64), 0.0)
    act = [int(i) for i in np.flatnonzero(z > 0)]
    chol = gram.cholesky(act)
    if chol is None:  # a warm start on dependent columns: start from zero
        z[:], act, chol = 0.0, [], gram.cholesky([])
    gtol = 1e-12 * max(float(np.abs(c + lam_w).max()), float(np.abs(lam_w).max()), 1e-300)
    max_iter = 10 * A.shape[1] if max_iter is None else int(max_iter)
    steps = 0
    solve_first = bool(act)  # the warm start's support is solved before anything enters
    while steps < max_iter:
        if not solve_first:
            g = c - A.T @ (A[:, act] @ z[act]) if act else c.copy()
            g[act] = -np.inf
            # the worst violators enter together (each through the factor's new row; one
            # gradient per batch instead of per entry); the inner loop drops what must leave
            top = np.argsort(-g)[:_AS_BATCH]
            top = top[g[top] > gtol]
            if top.size == 0:
                break
            changed = False
            for j in (int(t) for t in top):
                col = gram.column(j)
                l_ = sla.solve_triangular(chol, col[act], lower=True, check_finite=False)
                delta = float(col[j] - l_ @ l_)
                if delta <= 1e-12 * max(float(col[j]), 1e-300):
                    # column j is in the span of the support (a support of d entries): only the
                    # largest violator, from the restricted optimum, enters by an exchange
                    if changed:
                        continue
                    swapped = _exchange(gram, chol, act, z, j, l_)
                    if swapped is None:
                        continue
                    chol, act = swapped
                    changed = True
                    continue
                p = len(act)
                grown = np.zeros((p + 1, p + 1))
                grown[:p, :p], grown[p, :p], grown[p, p] = chol, l_, math.sqrt(delta)
                chol = grown
                act.append(j)
                z[j] = 0.0
                changed = True
            if not changed:
                break  # every violator is in the span of the support: nothing to gain
        solve_first = False
        while steps < max_iter:
            steps += 1
            idx = np.asarray(act, dtype=np.int64)
            s = sla.cho_solve((chol, True), c[idx], check_finite=False)
            if np.all(s > 0):
                z[:] = 0.0
                z[idx] = s
                break
            # move towards s until the first entry reaches 0; drop it (and any other at 0)
            zi = z[idx]
            neg = s <= 0
            ratio = np.full(idx.size, np.inf)
            ratio[neg] = zi[neg] / (zi[neg] - s[neg])
            b = int(np.argmin(ratio))
            zi = zi + ratio[b] * (s - zi)
            drop = neg & (zi <= 1e-15 * max(float(np.abs(zi).max()), 1e-300))
            drop[b] = True
            z[:] = 0.0
            z[idx[~drop]] = zi[~drop]
            act = [int(i) for i in idx[~drop]]
            chol = gram.cholesky_without(chol, idx, drop)
            if chol is None:  # lost definiteness to rounding: keep what was solved
                break
    return z[:k0] - z[k0:] if not nonneg else z


def _exchange(gram: _GramColumns, chol: np.ndarray, act: list[int], z: np.ndarray, j: int,
              l_: np.ndarray) -> tuple[np.ndarray, list[int]] | None:
    """Bring the dependent column ``j`` into the support ``act`` (at its restricted optimum
    ``z``, updated in place): along ``u = e_j − G_PP⁻¹ G_Pj`` (``A u = 0``, so the objective
    falls by ``g_j`` per unit) until a support entry reaches 0, which leaves. Returns the new
    factor and support, or None when no entry blocks (no exchange)."""
    w = sla.solve_triangular(chol.T, l_, lower=False, check_finite=False)
    pos = w > 0
    if not pos.any():
        return None
    idx = np.asarray(act, dtype=np.int64)
    ratio = np.full(idx.size, np.inf)
    ratio[pos] = z[idx[pos]] / w[pos]
    b = int(np.argmin(ratio))
    t = float(ratio[b])
    moved = np.maximum(z[idx] - t * w, 0.0)
    moved[b] = 0.0
    drop = np.zeros(idx.size, dtype=bool)
    drop[b] = True
    chol = gram.cholesky_without(chol, idx, drop)
    if chol is None:
        return None
    act = [int(i) for i in idx[~drop]]
    col = gram.column(j)
    l2 = sla.solve_triangular(chol, col[act], lower=True, check_finite=False)
    delta = float(col[j] - l2 @ l2)
    if delta <= 1e-12 * max(float(col[j]), 1e-300):
        return None
    p = len(act)
    grown = np.zeros((p + 1, p + 1))
    grown[:p, :p], grown[p, :p], grown[p, p] = chol, l2, math.sqrt(delta)
    z[idx] = moved
    z[j] = t
    return grown, act + [j]


class _GramColumns:
    """Columns of ``AᵀA``, computed when first needed and kept (only the entries that enter the
    active set need theirs), and the Cholesky factor of its block on a set of entries."""

    def __init__(self, A: np.ndarray) -> None:
        self.A = A
        self.slot = np.full(A.shape[1], -1, dtype=np.int64)
        self.G = np.empty((A.shape[1], min(A.shape[1], 64)))
        self.used = 0

    def _add(self, js: list[int]) -> None:
        need = self.used + len(js)
        if need > self.G.shape[1]:
            grown = np.empty((self.G.shape[0], max(need, 2 * self.G.shape[1])))
            grown[:, : self.used] = self.G[:, : self.used]
            self.G = grown
        self.G[:, self.used : need] = self.A.T @ self.A[:, js]
        self.slot[js] = np.arange(self.used, need)
        self.used = need

    def column(self, j: int) -> np.ndarray:
        if self.slot[j] < 0:
            self._add([j])
        return self.G[:, self.slot[j]]

    def cholesky(self, act: list[int]) -> np.ndarray | None:
        """Lower Cholesky factor of ``(AᵀA)[act, act]``; None if it is not positive definite."""
        if not act:
            return np.zeros((0, 0))
        idx = np.asarray(act, dtype=np.int64)
        missing = idx[self.slot[idx] < 0]
        if missing.size:
            self._add([int(j) for j in missing])
        try:
            return np.linalg.cholesky(self.G[np.ix_(idx, self.slot[idx])])
        except np.linalg.LinAlgError:
            return None

    def cholesky_without(self, chol: np.ndarray, idx: np.ndarray,
                         drop: np.ndarray) -> np.ndarray | None:
        """The factor of ``(AᵀA)[idx, idx]`` (``chol``) with the entries ``drop`` removed: the
        rows before the first removed one keep theirs; only the block after it is refactored
        (its Schur complement), which is small when recent entries leave."""
        i0 = int(np.argmax(drop))
        keep = np.flatnonzero(~drop)
        rest = keep[keep > i0]
        out = np.zeros((keep.size, keep.size))
        out[:i0, :i0] = chol[:i0, :i0]
        if rest.size == 0:
            return out
        L21 = chol[np.ix_(rest, np.arange(i0))]
        r = idx[rest]
        S = self.G[np.ix_(r, self.slot[r])] - L21 @ L21.T
        try:
            L22 = np.linalg.cholesky(S)
        except np.linalg.LinAlgError:
            return None
        out[i0:, :i0] = L21
        out[i0:, i0:] = L22
        return out
