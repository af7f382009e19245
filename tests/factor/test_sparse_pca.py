"""Tests of cfact_dask.factor._sparse_pca against scikit-learn's SparsePCA."""

from __future__ import annotations

import importlib
import warnings

import dask.array as da
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import SparsePCA

spca_mod = importlib.import_module("cfact_dask.factor._sparse_pca")  # the module, not cf.sparse_pca
from cfact_dask.errors import ConvergenceWarning, InputError, NonFiniteError, RankError, ResumeError
from cfact_dask.factor._sparse_pca import (
    refit_components,
    relative_error_tolerance,
    sparse_pca,
    sparse_pca_transform,
)
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


def _dense(a):
    return np.asarray(a.compute() if hasattr(a, "compute") else a)


def test_relative_error_is_that_of_the_returned_factors(rng, path):
    """The error from the last pass's Gram quantities is ‖X − (mean 1ᵀ + W H)‖ / ‖X‖ of the
    factors returned (not of the previous iterate), to the stated tolerance."""
    X, _ = _planted(rng, noise=0.05)
    X = X + 5.0  # a mean that matters: it must be in the model
    M = X.T if path == "numpy" else da.from_array(X.T, chunks=(10, 25))

    def exact(res):
        W, H, mean = _dense(res.W), _dense(res.H), _dense(res.mean)
        return np.linalg.norm(X.T - mean[:, None] - W @ H) / np.linalg.norm(X)

    runs = {}
    for it in (3, 4, 200):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            runs[it] = sparse_pca(M, 3, alpha=0.5, max_iter=it)
        e = exact(runs[it])
        assert runs[it].reconstruction_err_ == runs[it].relative_error
        assert relative_error_tolerance(e) < 1e-6
        assert abs(runs[it].relative_error - e) <= relative_error_tolerance(e) * e
    # the previous iterate's error is far outside that tolerance: the figure is the 4th's
    e3, e4 = exact(runs[3]), exact(runs[4])
    assert abs(e3 - e4) > 1e3 * relative_error_tolerance(e4) * e4


@pytest.mark.filterwarnings("ignore::cfact_dask.errors.ConvergenceWarning")
def test_checkpoint_resume_equals_uninterrupted(rng, path, tmp_path):
    X, _ = _planted(rng)
    M = X.T if path == "numpy" else da.from_array(X.T, chunks=(10, 25))
    ref = sparse_pca(M, 3, alpha=1.0, max_iter=12, tol=0)
    ck = {"store": str(tmp_path / "ck.zarr"), "every": 3}

    class Stop(Exception):
        pass

    def stop_at_8(state):
        if state["iteration"] == 8:
            raise Stop

    with pytest.raises(Stop):
        sparse_pca(M, 3, alpha=1.0, max_iter=12, tol=0, checkpoint=ck, callback=stop_at_8)
    seen = []
    res = sparse_pca(M, 3, alpha=1.0, max_iter=12, tol=0, checkpoint=ck,
                     callback=lambda s: seen.append(s["iteration"]))
    assert seen == [7, 8, 9, 10, 11, 12]  # continued from the checkpoint of iteration 6
    for a in ("W", "H", "mean"):
        np.testing.assert_array_equal(_dense(getattr(res, a)), _dense(getattr(ref, a)))
    assert res.errors == ref.errors and res.n_iter == ref.n_iter == 12
    assert res.relative_error == ref.relative_error
    with pytest.raises(ResumeError, match="alpha"):
        sparse_pca(M, 3, alpha=0.5, max_iter=12, tol=0, checkpoint=ck)


def test_checkpoint_of_the_converged_iteration_does_not_iterate_again(rng, tmp_path):
    X, _ = _planted(rng)
    ck = {"store": str(tmp_path / "ck.zarr"), "every": 1}
    ref = sparse_pca(X.T, 3, alpha=1.0, checkpoint=ck)
    seen = []
    again = sparse_pca(X.T, 3, alpha=1.0, checkpoint=ck, callback=lambda s: seen.append(1))
    assert seen == [] and again.n_iter == ref.n_iter and again.errors == ref.errors
    np.testing.assert_array_equal(again.W, ref.W)
    assert again.relative_error == ref.relative_error
