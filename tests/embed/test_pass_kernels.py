"""The fast pass kernels of MESSI and the ellipsoid equal their reference formulas (to rounding)."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest

from cfact_dask.embed._ellipsoid import apply_cuts, shallow_cut
from cfact_dask.embed._lp_kernels import ellipsoid_kernel as _ellipsoid_kernel
from cfact_dask.embed._lp_kernels import eval_kernel as _eval_kernel
from cfact_dask.embed._rows import reduce_rows
from cfact_dask.embed.clustering import (
    _cluster_scatters,
    _dist_operator,
    _distances,
    _sq_dists,
)


def _bases(rng, R, k, dims, D):
    """Random orthonormal bases and their complements (as the refit's eigh gives them)."""
    jmax = max(dims)
    B = np.zeros((R, k, jmax, D))
    C = [[None] * k for _ in range(R)]
    for r in range(R):
        for c, j in enumerate(dims):
            Q = np.linalg.qr(rng.standard_normal((D, D)))[0]
            B[r, c, :j], C[r][c] = Q[:, :j].T, Q[:, j:].T
    return B, C


@pytest.mark.parametrize("dims", [(3, 3, 3), (14, 14, 14), (3, 14, 9)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_complement_distances_equal_direct(dims, dtype):
    """dist² from the stacked operator (complements where j > D/2) equals ‖a‖² − ‖B a‖²."""
    rng = np.random.default_rng(0)
    D, n = 20, 5000  # more rows than one slab
    X = rng.standard_normal((n, D)).astype(dtype)
    B, C = _bases(rng, 2, 3, dims, D)
    d2, n2 = _sq_dists(X, _dist_operator(B, C, dims), 2, 3)
    Bz = B.copy()
    ref = np.stack([np.stack([np.sum((X.astype(np.float64)
                                      - X.astype(np.float64) @ Bz[r, c, :j].T @ Bz[r, c, :j]) ** 2,
                                     axis=1) for c, j in enumerate(dims)], axis=1)
                    for r in range(2)], axis=1)
    tol = 1e-10 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(d2, ref, rtol=tol, atol=tol * D)
    np.testing.assert_allclose(n2, np.sum(X.astype(np.float64) ** 2, axis=1), rtol=tol)
    if len(set(dims)) == 1:
        old, _, _ = _distances(X, B)
        np.testing.assert_allclose(d2, old, rtol=tol, atol=tol * D * 10)


@pytest.mark.parametrize("weighted", [False, True])
def test_scatters_equal_masked_products(weighted):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((700, 12))
    lab = rng.integers(0, 4, 700)
    lab[lab == 2] = 1  # an empty cluster
    w = rng.uniform(0.1, 3.0, 700) if weighted else None
    S = _cluster_scatters(X, lab, w, 4)
    for c in range(4):
        m = lab == c
        ref = X[m].T @ (X[m] * (1.0 if w is None else w[m, None]))
        np.testing.assert_allclose(S[c], ref, rtol=1e-12, atol=1e-10)


def test_compact_cuts_equal_sequential_cuts():
    rng = np.random.default_rng(2)
    D = 40
    L = np.diag(rng.uniform(0.5, 3.0, D)) @ np.linalg.qr(rng.standard_normal((D, D)))[0]
    G = 1.5 * rng.standard_normal((D, 150))  # more cuts than one compact block
    order = np.argsort(-np.linalg.norm(G, axis=0))
    ref, n_ref = L.copy(), 0
    for i in order:
        h = ref.T @ G[:, i]
        hn = float(np.linalg.norm(h))
        if (1.0 / hn) * math.sqrt(D) >= 1.0 - 1e-9:
            continue
        ref = shallow_cut(ref, h / hn, 1.0 / hn, D)
        n_ref += 1
    out, n_cuts = apply_cuts(L, G, order, D)
    assert n_cuts == n_ref > 64
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12 * np.abs(ref).max())


@pytest.mark.parametrize("p", [1.0, 1.5])
def test_ellipsoid_kernel_equals_reference(p):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((5000, 16))
    Y = rng.standard_normal((16, 16))
    V = np.linalg.qr(rng.standard_normal((16, 4)))[0]
    out = _ellipsoid_kernel(X, Y, V, p)
    Z = X @ Y
    fp = np.sum(np.abs(Z) ** p, axis=0)
    Gr = X.T @ (np.sign(Z) * np.abs(Z) ** (p - 1.0))
    ref = np.concatenate([fp, Gr.ravel(), _eval_kernel(X, V, p)])
    np.testing.assert_allclose(out, ref, rtol=1e-10)


def test_row_slices_of_one_chunk_equal_the_whole_chunk():
    """A pass over one big chunk runs as row slices (tasks for every core): same sums."""
    rng = np.random.default_rng(4)
    A = rng.standard_normal((20_000, 8))
    one = reduce_rows(da.from_array(A, chunks=(20_000, 8)), lambda b: b.T @ b, (), None)
    many = reduce_rows(da.from_array(A, chunks=(1000, 8)), lambda b: b.T @ b, (), None)
    np.testing.assert_allclose(one, (A.T @ A).ravel(), rtol=1e-12)
    np.testing.assert_allclose(one, many, rtol=1e-12)
