"""The row-chunk kernels of :mod:`.lp` (one per pass) and the blockwise products of its model.

Each kernel maps one row chunk ``X`` to a flat float64 partial that the pass sums over chunks
(:func:`~._rows.reduce_rows`). The IRLS / evaluation partials start with
``[objective, Σ residual², Σ ‖a‖², residual profile (PROFILE_BINS)]`` (the profile: a histogram
of the rows' relative residuals, see :func:`~._rows.residual_profile`); the IRLS scatters follow.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from ._rows import PROFILE_BINS, fix_signs, residual_profile

__all__ = ["HEAD", "SLAB_ROWS", "ellipsoid_kernel", "entrywise_coef_block", "entrywise_kernel",
           "eval_kernel", "irls_kernel", "irls_subspace_kernel", "lowrank_block", "model_block",
           "project_block", "residual_stats", "robust_rows", "scatter_kernel", "top_eigvecs"]

#: length of the common head of the IRLS / evaluation partials (3 scalars and the profile)
HEAD = 3 + PROFILE_BINS


def top_eigvecs(S: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k eigenpairs of a symmetric matrix, descending, with a deterministic sign."""
    S = 0.5 * (S + S.T)
    D = S.shape[0]
    w, V = scipy.linalg.eigh(S, subset_by_index=[D - k, D - 1])
    w, V = w[::-1], V[:, ::-1]
    return w, fix_signs(V)


def project_block(block: np.ndarray, V: np.ndarray) -> np.ndarray:
    return block @ V.astype(block.dtype, copy=False)


def lowrank_block(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    return U @ V.T.astype(U.dtype, copy=False)


def model_block(X: np.ndarray, V: np.ndarray, p: float = 2.0, delta: float = 0.0,
                n_inner: int = 0, entrywise: bool = False) -> np.ndarray:
    """The model of a row chunk: ``X V Vᵀ`` (row-wise), or ``U Vᵀ`` with the robust per-row
    coefficients of :func:`robust_rows` (entrywise), in the chunk's dtype."""
    U = (entrywise_coef_block(X, V, p, delta, n_inner) if entrywise else project_block(X, V))
    return lowrank_block(U, V)


# ====================================================================== kernels (one per pass)
def residual_stats(X: np.ndarray, XV: np.ndarray, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared row norms of ``X`` and of the residual ``X − X V Vᵀ`` (V orthonormal).

    ``‖a‖² − ‖Vᵀa‖²`` is used where it is accurate; rows close to the subspace, where that
    difference loses the digits that matter (their IRLS weights are the largest), get the residual
    computed directly. Sums of squares run in the data's precision (all terms positive, relative
    error <= D eps); einsum with a wider ``dtype=`` leaves the vectorised path.
    """
    n2 = np.einsum("ij,ij->i", X, X).astype(np.float64)
    d2 = n2 - np.einsum("ij,ij->i", XV, XV).astype(np.float64)
    cut = 1e-2 if X.dtype.itemsize <= 4 else 1e-6
    near = d2 < cut * n2
    if near.any():
        R = X[near] - XV[near] @ V.T.astype(X.dtype, copy=False)
        d2[near] = np.einsum("ij,ij->i", R, R)
    return n2, np.maximum(d2, 0.0)


def scatter_kernel(X: np.ndarray) -> np.ndarray:
    S = X.T @ X
    n2 = float(np.einsum("ij,ij->i", X, X).astype(np.float64).sum())
    return np.concatenate([[n2], np.asarray(S, np.float64).ravel()])


def irls_kernel(X: np.ndarray, V: np.ndarray, p: float, delta: float) -> np.ndarray:
    XV = X @ V.astype(X.dtype, copy=False)
    n2, d2 = residual_stats(X, XV, V)
    d = np.sqrt(d2)
    obj = float(np.sum(d**p))
    w = np.maximum(d, delta) ** (p - 2.0)
    S = X.T @ (X * w[:, None].astype(X.dtype, copy=False))
    return np.concatenate([[obj, d2.sum(), n2.sum()], residual_profile(n2, d2),
                           np.asarray(S, np.float64).ravel()])


def irls_subspace_kernel(X: np.ndarray, Q: np.ndarray, k: int, p: float, delta: float
                          ) -> np.ndarray:
    """IRLS weights for the basis ``Q[:, :k]`` and ``S_w Q = Xᵀ(w ⊙ X Q)`` (D × m) instead of the
    D × D scatter: O(n D m) flops per chunk rather than O(n D²)."""
    Z = X @ Q.astype(X.dtype, copy=False)
    n2, d2 = residual_stats(X, Z[:, :k], Q[:, :k])
    d = np.sqrt(d2)
    obj = float(np.sum(d**p))
    w = np.maximum(d, delta) ** (p - 2.0)
    Y = X.T @ (Z * w[:, None].astype(X.dtype, copy=False))
    return np.concatenate([[obj, d2.sum(), n2.sum()], residual_profile(n2, d2),
                           np.asarray(Y, np.float64).ravel()])


def eval_kernel(X: np.ndarray, V: np.ndarray, p: float) -> np.ndarray:
    XV = X @ V.astype(X.dtype, copy=False)
    n2, d2 = residual_stats(X, XV, V)
    return np.concatenate([[float(np.sum(np.sqrt(d2) ** p)), d2.sum(), n2.sum()],
                           residual_profile(n2, d2)])


SLAB_ROWS = 2048  # rows per slab of the ellipsoid pass (its n × D temporaries stay in cache)


def ellipsoid_kernel(X: np.ndarray, Y: np.ndarray, V: np.ndarray, p: float) -> np.ndarray:
    """``‖X y_i‖_p^p`` and the unnormalised gradients ``Xᵀ(sign(X y)|X y|^{p−1})`` for every
    column ``y_i`` of ``Y``, plus the row-wise objective of the subspace ``V``: one read.

    Slab by slab of rows, ``X [Y | V]`` is one GEMM and its float64 sums stay in cache; the
    row-wise statistics of ``V`` come from the same product (no second GEMM against ``V``)."""
    m = Y.shape[1]
    W = np.concatenate([Y, V], axis=1).astype(X.dtype, copy=False)
    Vx = V.astype(X.dtype, copy=False)
    fp = np.zeros(m)
    Gr = np.zeros((X.shape[1], m))
    obj = r2 = n2 = 0.0
    prof = np.zeros(PROFILE_BINS)
    for a in range(0, X.shape[0], SLAB_ROWS):
        Xs = X[a : a + SLAB_ROWS]
        ZW = Xs @ W
        Z = ZW[:, :m]
        aZ = np.abs(Z).astype(np.float64)
        if p == 1.0:
            fp += aZ.sum(axis=0)
            Gz = np.sign(Z)
        else:
            fp += np.sum(aZ**p, axis=0)
            Gz = np.sign(Z) * np.abs(Z) ** (p - 1.0)
        Gr += Xs.T @ Gz.astype(X.dtype, copy=False)
        sn2, sd2 = residual_stats(Xs, ZW[:, m:], Vx)
        obj += float(np.sum(np.sqrt(sd2) ** p))
        r2 += float(sd2.sum())
        n2 += float(sn2.sum())
        prof += residual_profile(sn2, sd2)
    return np.concatenate([fp, Gr.ravel(), [obj, r2, n2], prof])


def robust_rows(X: np.ndarray, V: np.ndarray, p: float, delta: float, n_inner: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Entrywise ℓp fit of every row on the basis ``V``: ``u_i = argmin Σ_j |a_ij − u_i·v_j|^p``
    by a few IRLS steps from the least-squares fit. Returns ``U`` (n × k) and the weights."""
    X = np.asarray(X, np.float64)
    V = np.asarray(V, np.float64)
    k = V.shape[1]
    U = X @ V @ np.linalg.pinv(V.T @ V)
    w = np.ones_like(X)
    ridge = 1e-10 * np.eye(k)
    for _ in range(n_inner):
        R = X - U @ V.T
        w = np.maximum(np.abs(R), delta) ** (p - 2.0)
        M = np.einsum("nd,dk,dl->nkl", w, V, V, optimize=True) + ridge
        b = (w * X) @ V
        U = np.linalg.solve(M, b[..., None])[..., 0]
    R = X - U @ V.T
    w = np.maximum(np.abs(R), delta) ** (p - 2.0)
    return U, w


def entrywise_kernel(X: np.ndarray, V: np.ndarray, p: float, delta: float, n_inner: int
                      ) -> np.ndarray:
    U, w = robust_rows(X, V, p, delta, n_inner)
    Xd = np.asarray(X, np.float64)
    R = Xd - U @ V.T
    obj = float(np.sum(np.abs(R) ** p))
    N = np.einsum("nd,nk,nl->dkl", w, U, U, optimize=True)
    b = np.einsum("nd,nk->dk", w * Xd, U, optimize=True)
    rr, nn = np.einsum("ij,ij->i", R, R), np.einsum("ij,ij->i", Xd, Xd)
    return np.concatenate([[obj, float(rr.sum()), float(nn.sum())], residual_profile(nn, rr),
                           N.ravel(), b.ravel()])


def entrywise_coef_block(X: np.ndarray, V: np.ndarray, p: float, delta: float, n_inner: int
                          ) -> np.ndarray:
    return robust_rows(X, V, p, delta, n_inner)[0].astype(X.dtype, copy=False)

