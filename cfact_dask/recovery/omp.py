"""Orthogonal matching pursuit [1]_ with known sparsity ``k``: one pass over ``P`` per atom.

Each pass scores every column of ``P`` against the current residuals, block by block (the best
atom per block, then the best of those), and adds one atom per recovered column; the
coefficients are refitted by least squares (NNLS for a nonnegative ``W``) on the chosen atoms.

References
----------
.. [1] J. A. Tropp, A. C. Gilbert. "Signal recovery from random measurements via orthogonal
   matching pursuit". IEEE Trans. Inf. Theory 53(12), 2007.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..sketching.operators import SketchOperator
from ._blocks import Blocks, cols, sparse_to_blocks
from ._lsq import nnls

__all__ = ["solve_omp"]

def _omp_select(
    op: SketchOperator, a: int, b: int, R: np.ndarray, chosen: list[np.ndarray], nonneg: bool
) -> np.ndarray:
    """Best new atom per column in rows a:b: (score, global index) as a 2 x r array."""
    P = cols(op, a, b)
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


def solve_omp(blocks: Blocks, Wt: np.ndarray, k: int, nonneg: bool, tol: float) -> tuple:
    """OMP of every column of ``W̃`` (d x r) on the columns of ``P``, at most ``k`` atoms each.

    A column stops when its residual falls below ``tol`` x its norm, or when no atom improves it
    (for a nonnegative ``W``: no positive correlation left).

    Returns
    -------
    xs : list
        The row blocks of ``W`` (persisted).
    PW : ndarray
        ``P Ŵ`` (d x r).
    n_iter : int
        Atoms added (passes over ``P``).
    """
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
            blocks.task(_best)(
                [blocks.task(_omp_select)(op, a, b, Ra, chosen, nonneg) for a, b in blocks.ranges]
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
            coefs[j] = nnls(A, Wt[:, j]) if nonneg else np.linalg.lstsq(A, Wt[:, j], rcond=None)[0]
            R[:, j] = Wt[:, j] - A @ coefs[j]
            if np.linalg.norm(R[:, j]) <= tol * norms[j]:
                active[j] = False
    rows = np.concatenate(chosen) if r else np.zeros(0, int)
    cols = np.concatenate([np.full(c.size, j) for j, c in enumerate(chosen)])
    vals = np.concatenate(coefs)
    return sparse_to_blocks(blocks, rows, cols, vals, r), Wt - R, it
