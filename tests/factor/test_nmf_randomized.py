"""Randomized HALS (``nmf(randomized=...)``): the QB range finder and NMF iterating on ``Q B``.

Oracles: numpy's SVD for the QB error, exact HALS and scikit-learn for the NMF error, a counting
array for the passes over the data, the exact-iteration code path for the chunked run.
"""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import CountingArray, Crash, crash_at
from sklearn.decomposition import NMF

import cfact_dask as cf
from cfact_dask.errors import ConvergenceWarning, InputError
from cfact_dask.factor._als import Backend, LowRank, qb_decomposition, randomized_svd
from cfact_dask.factor._nmf import NMFResult, _nndsvd, nmf


def _paper_data(rng, n=600, m=400, r=5, k=40, noise=0.1):
    """Sharan et al.'s setting at small scale: sparse W, |N(0,1)| H, 10 % Gaussian noise."""
    W = np.zeros((n, r))
    for j in range(r):
        W[rng.choice(n, k, replace=False), j] = np.abs(rng.standard_normal(k))
    H = np.abs(rng.standard_normal((r, m)))
    H /= np.linalg.norm(H, axis=1, keepdims=True)
    M = W @ H
    E = rng.standard_normal(M.shape)
    return M + E * (noise * np.linalg.norm(M) / np.linalg.norm(E))


# ---------------------------------------------------------------------- the QB decomposition
@pytest.mark.parametrize("power_iter", [1, 2])
def test_qb_is_near_the_best_rank_l_approximation(rng, power_iter):
    X = _paper_data(rng)
    ll = 15
    lr = qb_decomposition(X, ll, seed=3, backend=Backend(), power_iter=power_iter)
    assert isinstance(lr, LowRank) and lr.shape == X.shape and lr.rank == ll
    np.testing.assert_allclose(lr.Q.T @ lr.Q, np.eye(ll), atol=1e-12)
    np.testing.assert_allclose(lr.B, lr.Q.T @ X, atol=1e-10)
    s = np.linalg.svd(X, compute_uv=False)
    best_r = np.sqrt(np.sum(s[5:] ** 2))  # the best rank-5 (the planted rank) error
    best_l = np.sqrt(np.sum(s[ll:] ** 2))  # the best rank-l error: a lower bound
    err = np.linalg.norm(X - lr.Q @ lr.B)
    assert best_l <= err <= best_r
    # with a spectral gap (signal rank 5 << l) the QB sits close to the optimum
    assert err <= 1.02 * best_l


def test_qb_of_exactly_low_rank_data_is_exact(rng):
    X = rng.random((120, 7)) @ rng.random((7, 90))
    lr = qb_decomposition(X, 10, seed=0, backend=Backend())
    assert np.linalg.norm(X - lr.Q @ lr.B) <= 1e-10 * np.linalg.norm(X)


def test_qb_chunked_equals_in_memory(rng):
    """Several row chunks (tall-skinny QR) and column chunks: the same subspace and Q B."""
    X = _paper_data(rng, n=300, m=200)
    local = qb_decomposition(X, 12, seed=1, backend=Backend())
    chunked = qb_decomposition(da.from_array(X, chunks=(70, 45)), 12, seed=1, backend=Backend())
    Q, B = np.asarray(chunked.Q), np.asarray(chunked.B)
    assert chunked.Q.chunks[0] == (70, 70, 70, 70, 20) and chunked.B.chunks[1][0] == 45
    np.testing.assert_allclose(Q @ Q.T, local.Q @ local.Q.T, atol=1e-10)
    np.testing.assert_allclose(Q @ B, local.Q @ local.B, atol=1e-10)


def test_randomized_svd_from_its_qb_is_the_same_svd(rng):
    X = _paper_data(rng, n=200, m=150)
    fresh = randomized_svd(X, 5, seed=4, backend=Backend())
    lr = qb_decomposition(X, 15, seed=4, backend=Backend(), power_iter=1)
    reused = randomized_svd(X, 5, seed=4, backend=Backend(), lowrank=lr)
    for a, b in zip(fresh, reused, strict=True):
        np.testing.assert_array_equal(a, b)
    # hence the nndsvd init of a randomized run is the exact run's init, bitwise
    W0, H0 = _nndsvd(X, 5, 4, "nndsvda", X.mean(), Backend())
    W1, H1 = _nndsvd(X, 5, 4, "nndsvda", X.mean(), Backend(), lowrank=lr)
    np.testing.assert_array_equal(W0, W1)
    np.testing.assert_array_equal(H0, H1)


# ---------------------------------------------------------------------- NMF on Q B
def test_randomized_matches_exact_hals_and_sklearn(rng):
    X = _paper_data(rng).clip(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        exact = nmf(X, 5, random_state=0)
        fast = nmf(X, 5, random_state=0, randomized=True)
        sk = NMF(5, init="nndsvda", solver="cd", max_iter=2000, tol=1e-6, random_state=0)
        Hs = sk.fit_transform(X.T)
    sk_err = np.linalg.norm(X.T - Hs @ sk.components_) / np.linalg.norm(X)
    # reconstruction_err_ is the exact error of the returned factors, not the surrogate
    true = np.linalg.norm(X - fast.W @ fast.H) / np.linalg.norm(X)
    assert fast.reconstruction_err_ == pytest.approx(true, rel=1e-9)
    assert fast.reconstruction_err_ <= exact.reconstruction_err_ * 1.002
    assert fast.reconstruction_err_ <= sk_err * 1.002
    # feasible factors and the QB's own error reported
    assert fast.W.min() >= 0 and fast.H.min() >= 0
    assert exact.qb_err_ is None
    ll = 5 + 10
    lr = qb_decomposition(X, ll, seed=0, backend=Backend())
    assert fast.qb_err_ == pytest.approx(
        np.linalg.norm(X - lr.Q @ lr.B) / np.linalg.norm(X), rel=1e-9)
    # the history is the error the iterations see, ‖X − QB‖² + ‖QB − WH‖², ≥ the QB error
    assert min(fast.history) >= fast.qb_err_
    assert fast.history[-1] == pytest.approx(fast.reconstruction_err_, rel=1e-3)
    assert fast.params["randomized"] == {"oversample": 10, "power_iter": 1}


def test_randomized_semi_nmf_of_a_signed_sketch(rng):
    X = _paper_data(rng, n=800, m=300).clip(0)
    sk = cf.sketch(X, n_components=200, kind="gaussian", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        exact = nmf(sk, 5, random_state=0)
        fast = nmf(sk, 5, random_state=0, randomized=dict(oversample=15, power_iter=2))
    assert fast.semi and fast.W.min() < 0 <= fast.H.min()
    assert fast.reconstruction_err_ <= exact.reconstruction_err_ * 1.002


def test_iterations_read_nothing(rng):
    """QB (3 passes), the data checks (1) and the final exact error (1): 5 reads of every chunk,
    however many iterations run; the exact path reads every chunk once per iteration."""
    X = _paper_data(rng, n=200, m=160).clip(0)
    counts = {}
    for randomized in (True, False):
        src = CountingArray(X)
        Xd = da.from_array(src, chunks=(100, 40), asarray=False)
        with dask.config.set({"cfact.als.local-max-bytes": 0, "scheduler": "threads"}), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = nmf(Xd, 4, randomized=randomized, persist_data=False, tol=0, max_iter=25)
        assert res.n_iter_ == 25
        assert len(src.reads) == Xd.npartitions
        counts[randomized] = set(src.reads.values())
    assert counts[True] == {5}
    assert counts[False] == {1 + 3 + 25}  # checks, nndsvd's randomized SVD, iterations


def test_chunked_run_equals_in_memory_run(rng):
    X = _paper_data(rng, n=300, m=240).clip(0)
    Xd = da.from_array(X, chunks=(100, 60))
    kw = dict(random_state=0, tol=0, max_iter=30, randomized=True)
    with dask.config.set({"cfact.als.local-max-bytes": 0}), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        chunked = nmf(Xd, 4, **kw)
        local = nmf(X, 4, **kw)
    np.testing.assert_allclose(np.asarray(chunked.W), local.W, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.asarray(chunked.H), local.H, rtol=1e-6, atol=1e-9)
    assert chunked.reconstruction_err_ == pytest.approx(local.reconstruction_err_, rel=1e-9)


def test_on_cluster(cluster_client, rng):
    X = _paper_data(rng, n=300, m=240).clip(0)
    Xd = da.from_array(X, chunks=(300, 60))
    kw = dict(random_state=0, tol=0, max_iter=15, randomized=True)
    with dask.config.set({"cfact.als.local-max-bytes": 0}), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = nmf(Xd, 4, client=cluster_client, **kw)
        local = nmf(X, 4, **kw)
    H = cluster_client.compute(res.H).result() if isinstance(res.H, da.Array) else res.H
    np.testing.assert_allclose(H, local.H, rtol=1e-6, atol=1e-9)


def test_checkpoint_resume_equals_uninterrupted(rng, tmp_path):
    X = da.from_array(_paper_data(rng, n=200, m=120).clip(0), chunks=(200, 40))
    kw = dict(max_iter=12, tol=0, random_state=0, randomized=True)
    with pytest.warns(ConvergenceWarning):
        ref = nmf(X, 4, **kw)

    store = tmp_path / "ckpt.zarr"
    with pytest.raises(Crash):
        nmf(X, 4, checkpoint=dict(store=store, every=3), callback=crash_at(8), **kw)
    with pytest.warns(ConvergenceWarning):
        res = nmf(X, 4, checkpoint=dict(store=store, every=3), **kw)
    np.testing.assert_array_equal(np.asarray(res.W), np.asarray(ref.W))
    np.testing.assert_array_equal(np.asarray(res.H), np.asarray(ref.H))
    assert res.history == ref.history
    # an exact run is a different computation: it refuses the randomized run's checkpoint
    from cfact_dask.errors import ResumeError

    with pytest.raises(ResumeError, match="randomized"):
        nmf(X, 4, checkpoint=dict(store=store, every=3), max_iter=12, tol=0, random_state=0)


def test_result_round_trip_keeps_qb_error(rng, tmp_path):
    X = _paper_data(rng, n=100, m=80).clip(0)
    res = nmf(X, 3, randomized=True, tol=1e-4)
    res.to_zarr(tmp_path / "f.zarr")
    back = NMFResult.from_zarr(tmp_path / "f.zarr")
    assert back.qb_err_ == res.qb_err_ and back.params["randomized"]["oversample"] == 10


@pytest.mark.parametrize("bad", ["yes", 3, dict(oversample=-1), dict(power_iter=0),
                                 dict(power_iter=1.5), dict(extra=1)])
def test_bad_options(rng, bad):
    with pytest.raises(InputError, match="randomized"):
        nmf(rng.random((20, 30)), 2, randomized=bad)


def test_estimator_pipeline_and_cli(rng, tmp_path):
    from click.testing import CliRunner

    from cfact_dask.cli import cli
    from cfact_dask.estimators._nmf import CompressedNMF

    X = _paper_data(rng, n=400, m=200).clip(0)
    est = CompressedNMF(5, randomized=True, random_state=0, tol=1e-5, max_iter=300)
    Z = est.fit_transform(X.T)
    ref = CompressedNMF(5, random_state=0, tol=1e-5, max_iter=300)
    Zr = ref.fit_transform(X.T)
    assert est.get_params()["randomized"] is True
    assert est.result_.qb_err_ is not None and ref.result_.qb_err_ is None
    err = np.linalg.norm(X.T - Z @ est.components_) / np.linalg.norm(X)
    assert err <= 1.002 * np.linalg.norm(X.T - Zr @ ref.components_) / np.linalg.norm(X)
    with warnings.catch_warnings():
        # this test is about the randomized factor's plumbing; on this dense-ish W the
        # certificate rightly rates nnlasso at 1.36x the reachable error (a RecoveryWarning)
        warnings.simplefilter("ignore", cf.errors.RecoveryWarning)
        run = cf.factorize_recover(X, 5, sketch=dict(n_components=200, seed=0),
                                   factor=dict(randomized=True, tol=1e-5), recover="nnlasso")
    assert run.factors.qb_err_ is not None and run.factors.params["randomized"]
    import zarr

    zarr.save_array(str(tmp_path / "x.zarr"), X)
    out = CliRunner().invoke(cli, ["factor", str(tmp_path / "x.zarr"), "--rank", "5",
                                    "--out", str(tmp_path / "f.zarr"), "--randomized", "-q"])
    assert out.exit_code == 0, out.output
    back = NMFResult.from_zarr(tmp_path / "f.zarr")
    assert back.qb_err_ is not None and back.reconstruction_err_ < 0.12
