"""Tests of cfact_dask.factor._sparse_pca against scikit-learn's SparsePCA."""

from __future__ import annotations

import importlib

import dask.array as da
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import SparsePCA

spca_mod = importlib.import_module("cfact_dask.factor._sparse_pca")  # the module, not cf.sparse_pca
from cfact_dask.errors import ConvergenceWarning, InputError, NonFiniteError, RankError
from cfact_dask.factor._sparse_pca import refit_components, sparse_pca, sparse_pca_transform
from cfact_dask.sketching._sketch import sketch


def _planted(rng, n_samples=60, n_features=30, r=3, nnz=6, noise=0.1):
    V = np.zeros((r, n_features))
    support = rng.permutation(n_features)[: r * nnz].reshape(r, nnz)  # disjoint supports
    for k in range(r):
        V[k, support[k]] = rng.standard_normal(nnz)
    X = 3 * rng.standard_normal((n_samples, r)) @ V + noise * rng.standard_normal(
        (n_samples, n_features))
    return X, V


def _match(C, D):
    C = np.asarray(C)
    cor = np.abs(C @ D.T) / np.outer(np.linalg.norm(C, axis=1), np.linalg.norm(D, axis=1))
    ri, ci = linear_sum_assignment(-cor)
    return ri, ci, cor[ri, ci]


@pytest.fixture(params=["numpy", "dask"])
def path(request, monkeypatch):
    if request.param == "dask":  # force the chunked code path on small data
        monkeypatch.setattr(spca_mod, "_IN_MEMORY_ENTRIES", 0)
    return request.param


@pytest.mark.parametrize("alpha", [1.0, pytest.param(0.5, marks=pytest.mark.slow)])
def test_matches_sklearn(rng, path, alpha):
    X, _ = _planted(rng)
    ref = SparsePCA(n_components=3, alpha=alpha, random_state=0).fit(X)
    M = X.T if path == "numpy" else da.from_array(X.T, chunks=(10, 25))
    res = sparse_pca(M, 3, alpha=alpha)
    C = res.components
    C = C.compute() if hasattr(C, "compute") else C
    ri, ci, cor = _match(C, ref.components_)
    assert np.all(cor > 1 - 1e-8)
    np.testing.assert_allclose(C[ri], ref.components_[ci], atol=1e-8)  # same signs too
    np.testing.assert_allclose(res.errors[-1], ref.error_[-1], rtol=1e-9)
    assert res.n_iter == ref.n_iter_
    mean = np.asarray(res.mean.compute() if hasattr(res.mean, "compute") else res.mean)
    codes = sparse_pca_transform(X.T, C, mean, 0.01)
    np.testing.assert_allclose(codes[:, ri], ref.transform(X)[:, ci], atol=1e-7)


def test_recovers_planted_support(rng):
    X, V = _planted(rng, noise=0.01)
    res = sparse_pca(X.T, 3, alpha=0.5)
    ri, ci, cor = _match(res.components, V)
    assert np.all(cor > 0.99)
    assert np.all((np.abs(res.components[ri]) > 1e-8) == (V[ci] != 0))


def test_compressed_then_refit(rng):
    X, V = _planted(rng, n_samples=200, n_features=400, r=3, nnz=10, noise=0.01)
    sk = sketch(X.T, n_components=120, kind="gaussian", seed=0)
    res = sparse_pca(sk, 3, alpha=0.5, tol=1e-6, max_iter=500)
    assert res.operator is sk.operator and res.W.shape == (120, 3)
    W = refit_components(X.T, res.H, alpha=1.0).compute()
    assert W.shape == (400, 3)
    # the recovered components span the planted ones (principal angles ~ 0) ...
    q1, _ = np.linalg.qr(W)
    q2, _ = np.linalg.qr(V.T)
    assert np.linalg.svd(q1.T @ q2, compute_uv=False).min() > 0.99
    # ... and are sparse: the features used are the planted ones (a few small spills allowed)
    used = np.abs(W).sum(axis=1) > 1e-10
    planted = (V != 0).any(axis=0)
    assert used[planted].all() and used.sum() <= planted.sum() + 5


def test_on_cluster(cluster_client, rng):
    X, _ = _planted(rng)
    ref = SparsePCA(n_components=3, alpha=1.0, random_state=0).fit(X)
    res = sparse_pca(da.from_array(X.T, chunks=(15, 20)), 3, alpha=1.0, client=cluster_client)
    C = cluster_client.compute(res.components).result()
    ri, ci, cor = _match(C, ref.components_)
    assert np.all(cor > 1 - 1e-8)


def test_callback_and_convergence_warning(rng):
    X, _ = _planted(rng)
    seen = []
    res = sparse_pca(X.T, 3, alpha=1.0, callback=lambda s: seen.append(s["iteration"]) or
                     s["iteration"] >= 3)
    assert seen == [1, 2, 3] and res.n_iter == 3
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        sparse_pca(X.T, 3, alpha=1.0, max_iter=2, tol=1e-30)


def test_bad_input(rng):
    X, _ = _planted(rng)
    for rank in (0, 30, 31):
        with pytest.raises(RankError):
            sparse_pca(X.T, rank)
    Xn = X.copy()
    Xn[2, 3] = np.nan
    with pytest.raises(NonFiniteError):
        sparse_pca(Xn.T, 2)
    with pytest.raises(InputError, match="empty"):
        sparse_pca(np.ones((0, 4)), 1)
    with pytest.raises(InputError, match="alpha"):
        sparse_pca(X.T, 2, alpha=-1)
    with pytest.raises(InputError):
        sparse_pca(np.ones((3, 4, 5)), 1)
