"""cf.nmf: oracle tests against scikit-learn, sketches, bad input, cluster, checkpoints."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import Crash, crash_at
from sklearn.decomposition import NMF

import cfact_dask as cf
from cfact_dask.errors import (
    ConvergenceWarning,
    InputError,
    NegativeDataError,
    NonFiniteError,
    RankError,
)
from cfact_dask.factor._nmf import NMFResult, nmf


def _planted(rng, p=60, m=80, r=4, noise=0.0):
    X = rng.random((p, r)) @ rng.random((r, m))
    return X + noise * rng.standard_normal((p, m)) * X.std()


def _paper_data(rng, n=600, m=300, r=5, k=30, noise=0.1):
    """Sharan et al.'s synthetic setting at small scale: sparse W, |N(0,1)| H, 10 % noise."""
    W = np.zeros((n, r))
    for j in range(r):
        W[rng.choice(n, k, replace=False), j] = np.abs(rng.standard_normal(k))
    H = np.abs(rng.standard_normal((r, m)))
    H /= np.linalg.norm(H, axis=1, keepdims=True)
    M = W @ H
    E = rng.standard_normal(M.shape)
    return M + E * (noise * np.linalg.norm(M) / np.linalg.norm(E))


def _sk_objective(X, W, H):
    return 0.5 * np.linalg.norm(X - W @ H) ** 2


# ---------------------------------------------------------------------- oracles
@pytest.mark.parametrize("alpha_W,alpha_H,l1_ratio", [(0, 0, 0), (0.01, 0, 0.5), (0, 0.01, 1.0),
                                                      (0.02, 0.01, 0.0)])
def test_hals_follows_sklearn_cd_from_the_same_init(rng, alpha_W, alpha_H, l1_ratio):
    X = _planted(rng, noise=0.05).clip(0)
    W0, H0 = rng.random((60, 4)), rng.random((4, 80))
    # scikit-learn is samples × features: its W is our Hᵀ; its alpha_W penalises our H
    sk = NMF(4, init="custom", solver="cd", max_iter=40, tol=0, alpha_W=alpha_H,
             alpha_H=alpha_W, l1_ratio=l1_ratio)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Hs = sk.fit_transform(X.T, W=H0.T.copy(), H=W0.T.copy())
    with pytest.warns(ConvergenceWarning):
        res = nmf(X, 4, init=(W0, H0), max_iter=40, tol=0, alpha_W=alpha_W, alpha_H=alpha_H,
                  l1_ratio=l1_ratio, hals_sweeps=1)
    np.testing.assert_allclose(res.W, sk.components_.T, atol=1e-9)
    np.testing.assert_allclose(res.H, Hs.T, atol=1e-9)
    assert res.reconstruction_err_ == pytest.approx(
        np.linalg.norm(X - res.W @ res.H) / np.linalg.norm(X), rel=1e-9)


def test_accelerated_hals_needs_fewer_passes(rng):
    """Several HALS sweeps per product (Gillis & Glineur 2012) reach a lower error in fewer
    iterations (= passes over X) than scikit-learn's one sweep, from the same init."""
    n, m, r = 400, 600, 6
    W = rng.random((n, r)) * (rng.random((n, r)) < 0.3)
    X = W @ rng.random((r, m)) + 0.01 * rng.random((n, m))
    W0, H0 = rng.random((n, r)), rng.random((r, m))
    runs = {}
    for sweeps in (1, 5):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            runs[sweeps] = nmf(X, r, init=(W0, H0), tol=1e-6, max_iter=2000,
                               hals_sweeps=sweeps)
    assert runs[5].n_iter_ < 0.7 * runs[1].n_iter_
    assert runs[5].reconstruction_err_ <= runs[1].reconstruction_err_ * (1 + 1e-3)
    # a fixed number of sweeps: the chunked (distributed-path) run gives the same factors
    Xd = da.from_array(X, chunks=(100, 150))
    with dask.config.set({"cfact.als.local-max-bytes": 0}), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        chunked = nmf(Xd, r, init=(W0, H0), tol=0, max_iter=20, hals_sweeps=5)
        local = nmf(X, r, init=(W0, H0), tol=0, max_iter=20, hals_sweeps=5)
    np.testing.assert_allclose(np.asarray(chunked.W), local.W, rtol=1e-8, atol=1e-10)
    with pytest.raises(InputError, match="hals_sweeps"):
        nmf(X, r, hals_sweeps=0)


@pytest.mark.parametrize("solver", ["hals", "anls"])
def test_same_or_lower_objective_than_sklearn(rng, solver):
    X = _planted(rng, noise=0.05).clip(0)
    W0, H0 = rng.random((60, 4)), rng.random((4, 80))
    sk = NMF(4, init="custom", solver="cd", max_iter=1000, tol=1e-6)
    Hs = sk.fit_transform(X.T, W=H0.T.copy(), H=W0.T.copy())
    ref = _sk_objective(X.T, Hs, sk.components_)
    if solver == "hals":  # the same update as scikit-learn's cd: run as many iterations
        with pytest.warns(ConvergenceWarning):
            res = nmf(X, 4, init=(W0, H0), solver=solver, max_iter=sk.n_iter_, tol=0)
    else:
        res = nmf(X, 4, init=(W0, H0), solver=solver, max_iter=1000, tol=1e-7, inner_iter=20)
    assert _sk_objective(X, res.W, res.H) <= ref * (1 + 1e-4)
    assert (res.W >= 0).all() and (res.H >= 0).all()


def test_default_init_as_good_as_sklearn_nndsvda(rng):
    X = _planted(rng, noise=0.1).clip(0)
    sk = NMF(4, init="nndsvda", solver="cd", max_iter=500, tol=1e-5, random_state=0)
    Hs = sk.fit_transform(X.T)
    sk_err = np.linalg.norm(X.T - Hs @ sk.components_) / np.linalg.norm(X)
    res = nmf(X, 4, max_iter=500, tol=1e-5, random_state=0)
    assert res.reconstruction_err_ <= sk_err * 1.01


def test_n_init_keeps_the_best_and_random_init_is_seeded(rng):
    X = _planted(rng, noise=0.1).clip(0)
    kw = dict(init="random", max_iter=30, tol=0)
    with pytest.warns(ConvergenceWarning):
        a = nmf(X, 4, random_state=1, **kw)
    with pytest.warns(ConvergenceWarning):
        b = nmf(X, 4, random_state=1, **kw)
    np.testing.assert_array_equal(a.W, b.W)
    with pytest.warns(ConvergenceWarning):
        best = nmf(X, 4, random_state=1, n_init=3, **kw)
    assert best.reconstruction_err_ <= a.reconstruction_err_


def test_l1_on_W_makes_it_sparser(rng):
    X = _paper_data(rng, n=300, m=200).clip(0)
    plain = nmf(X, 5, max_iter=500, tol=1e-4)
    sparse = nmf(X, 5, max_iter=500, tol=1e-4, alpha_W=0.002, l1_ratio=1.0)
    assert (sparse.W == 0).mean() > (plain.W == 0).mean()


# ---------------------------------------------------------------------- sketches
def test_expander_sketch_of_noisy_nonnegative_data_is_taken_as_is(rng):
    X = _paper_data(rng)
    assert (X < 0).any()
    sk = cf.sketch(X, n_components=150, kind="expander", seed=0)
    assert (sk.compute() < 0).any(), "the sketch of noisy data has small negatives"
    res = nmf(sk, 5, max_iter=300, tol=1e-5, random_state=0)
    assert res.is_sketch and not res.semi and res.operator["kind"] == "expander"
    assert (res.W >= 0).all()
    assert res.reconstruction_err_ < 0.2  # ≈ the 10 % noise level
    # raw noisy data is accepted too
    raw = nmf(X, 5, max_iter=300, tol=1e-5)
    assert raw.reconstruction_err_ < 0.2


def test_semi_nmf_on_a_gaussian_sketch(rng):
    X = _paper_data(rng, noise=0.05)
    sk = cf.sketch(X, n_components=60, kind="gaussian", seed=0)
    with pytest.warns(ConvergenceWarning):
        auto = nmf(sk, 5, max_iter=3, tol=1e-12, random_state=0)
    assert auto.semi and auto.params["semi"]  # chosen from the signed operator
    # semi-NMF is nonconvex with poor local minima: restarts (in memory, for speed) find the
    # planted one (error ≈ the 5 % noise)
    res = nmf(sk.compute(), 5, semi=True, n_init=5, max_iter=1000, tol=1e-8, random_state=0)
    H = np.asarray(res.H)
    assert (H >= 0).all() and (res.W < 0).any()
    assert res.reconstruction_err_ < 0.1
    # forcing plain NMF on a signed sketch is refused with the fix in the message
    with pytest.raises(NegativeDataError, match="semi=True"):
        nmf(sk, 5, semi=False)


# ---------------------------------------------------------------------- bad input
def test_signed_raw_data_names_the_chunk_and_clip_works(rng):
    X = np.abs(_planted(rng, 40, 400, 3))
    X[:, 200:300] *= -3.0
    Xd = da.from_array(X, chunks=(40, 100))
    with pytest.raises(NegativeDataError, match=r"chunk \(0, 2\) \(index \[0:40, 200:300\]\)"):
        nmf(Xd, 3)
    # samples × features input with feature_axis=1: the chunk is named in the input's indices
    with pytest.raises(NegativeDataError, match=r"chunk \(2, 0\) \(index \[200:300, 0:40\]\)"):
        nmf(Xd.T, 3, feature_axis=1)
    res = nmf(Xd, 3, negative="clip", max_iter=300, tol=1e-5)
    np.testing.assert_allclose(np.asarray(res.W @ res.H)[:, 200:300], 0, atol=1e-2)


@pytest.mark.parametrize("rank", [0, -1, 40, 100, 2.5, True])
def test_impossible_rank(rng, rank):
    with pytest.raises(RankError, match="rank"):
        nmf(np.abs(rng.random((40, 60))), rank)


def test_nan_names_the_chunk(rng):
    X = np.abs(rng.random((30, 200)))
    X[5, 130] = np.nan
    with pytest.raises(NonFiniteError, match=r"chunk \(0, 2\) \(index \[0:30, 100:150\]\)"):
        nmf(da.from_array(X, chunks=(30, 50)), 3)
    with pytest.raises(NonFiniteError):
        nmf(X, 3)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((0, 5)), "empty"),
    (np.zeros((4, 5, 6)), "cf.cp"),
    (np.zeros((10, 12)), "all zeros"),
])
def test_bad_arrays(bad, match):
    with pytest.raises(InputError, match=match):
        nmf(bad, 2)
    if bad.size:
        with pytest.raises(InputError, match=match):
            nmf(da.from_array(bad), 2)


@pytest.mark.parametrize("kw,match", [
    (dict(beta_loss="kullback-leibler"), "frobenius"),
    (dict(solver="mu"), "solver"),
    (dict(init="svd"), "init"),
    (dict(negative="shift"), "negative"),
    (dict(l1_ratio=2.0), "l1_ratio"),
    (dict(init=(np.ones((3, 2)), np.ones((2, 5)))), "expected W"),
])
def test_bad_options(rng, kw, match):
    with pytest.raises(InputError, match=match):
        nmf(np.abs(rng.random((20, 30))), 2, **kw)


# ---------------------------------------------------------------------- iterations
def test_callback_stops_and_sees_the_state(rng):
    seen = []

    def cb(state):
        seen.append((state["iteration"], state["error"]))
        return state["iteration"] == 5

    res = nmf(_planted(rng), 4, callback=cb, tol=0, max_iter=100)
    assert res.n_iter_ == 5 and len(res.history) == 5
    assert [e for _, e in seen] == list(res.history)


def test_convergence_warning_at_max_iter(rng):
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        res = nmf(_planted(rng, noise=0.1).clip(0), 4, max_iter=3, tol=1e-12)
    assert res.n_iter_ == 3 and not res.converged


def test_progress_line_is_logged(rng, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="cfact_dask.factor._als"):
        nmf(_planted(rng), 4, max_iter=200, tol=1e-3, verbose=True)
    assert "nmf iteration 1  error" in caplog.text and "elapsed" in caplog.text


@pytest.mark.parametrize("lazy", [False, True])
def test_checkpoint_resume_equals_uninterrupted(rng, tmp_path, lazy):
    X = _planted(rng, noise=0.1).clip(0)
    if lazy:
        X = da.from_array(X, chunks=(60, 30))
    kw = dict(max_iter=12, tol=0, random_state=0)
    with pytest.warns(ConvergenceWarning):
        ref = nmf(X, 4, **kw)

    store = tmp_path / "ckpt.zarr"
    with pytest.raises(Crash):
        nmf(X, 4, checkpoint=dict(store=store, every=3), callback=crash_at(8), **kw)
    seen = []
    with pytest.warns(ConvergenceWarning):
        res = nmf(X, 4, checkpoint=dict(store=store, every=3),
                  callback=lambda s: seen.append(s["iteration"]), **kw)
    assert seen[0] == 7  # resumed after the checkpoint of iteration 6
    np.testing.assert_array_equal(np.asarray(res.W), np.asarray(ref.W))
    np.testing.assert_array_equal(np.asarray(res.H), np.asarray(ref.H))
    assert res.history == ref.history and res.n_iter_ == 12
    # different parameters refuse to resume
    from cfact_dask.errors import ResumeError

    with pytest.raises(ResumeError, match="rank"):
        nmf(X, 3, checkpoint=dict(store=store, every=3), **kw)


def test_result_zarr_round_trip(rng, tmp_path):
    X = da.from_array(_planted(rng), chunks=(60, 30))
    res = nmf(X, 4, max_iter=200, tol=1e-4)
    res.to_zarr(tmp_path / "f.zarr")
    back = NMFResult.from_zarr(tmp_path / "f.zarr")
    np.testing.assert_array_equal(back.W, res.W)
    np.testing.assert_array_equal(back.H.compute(), np.asarray(res.H))
    assert back.history == res.history and back.params["rank"] == 4
    from cfact_dask.errors import StoreExistsError

    with pytest.raises(StoreExistsError):
        res.to_zarr(tmp_path / "f.zarr")


def test_on_a_real_cluster_matches_local(rng, cluster_client):
    X = da.from_array(np.abs(_planted(rng, 50, 400, 3, 0.05)), chunks=(50, 100))
    kw = dict(max_iter=12, tol=0, random_state=0)
    # the distributed path, not the in-memory one small matrices take
    with dask.config.set({"cfact.als.local-max-bytes": 0}):
        with pytest.warns(ConvergenceWarning):
            local = nmf(X, 3, **kw)
        with pytest.warns(ConvergenceWarning):
            dist = nmf(X, 3, client=cluster_client, **kw)
    np.testing.assert_allclose(dist.W, local.W, rtol=1e-9, atol=1e-12)
    # H stays on the cluster; the fixture's client is not the default one
    np.testing.assert_allclose(dist.H.compute(scheduler=cluster_client), local.H.compute(),
                               rtol=1e-9, atol=1e-12)
    assert dist.history == pytest.approx(local.history, rel=1e-9)


def test_cli_factor_writes_a_factors_group(rng, tmp_path):
    from click.testing import CliRunner

    from cfact_dask.cli.factor import factor

    X = _paper_data(rng, n=300, m=120)
    cf.sketch(X, n_components=60, seed=0).to_zarr(tmp_path / "run.zarr", progress=False)
    out = tmp_path / "out.zarr"
    args = [str(tmp_path / "run.zarr"), "--method", "nmf", "--rank", "5", "--out", str(out),
            "--tol", "1e-3", "--quiet"]
    r = CliRunner().invoke(factor, args)
    assert r.exit_code == 0, r.output
    assert "nmf: rank 5" in r.output
    res = NMFResult.from_zarr(out)
    assert res.is_sketch and res.W.shape == (60, 5) and res.H.shape == (5, 120)
    r = CliRunner().invoke(factor, args)
    assert r.exit_code != 0 and "overwrite" in r.output
    r = CliRunner().invoke(factor, args[:1] + ["--method", "nope", "--rank", "5", "--out", "x"])
    assert r.exit_code != 0 and "nmf" in r.output


def test_in_memory_iterations_run_with_limited_blas_threads(rng):
    """The in-memory NMF loop runs with cfact.blas.solver-threads BLAS threads (1), seen from
    inside the loop (the callback), and the limit is lifted afterwards; the numbers do not
    depend on it (to float rounding)."""
    from threadpoolctl import threadpool_info

    def blas_max():
        return max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")

    X = np.abs(_planted(rng, 200, 120, 4, 0.05))
    before = blas_max()
    seen = []
    kw = dict(max_iter=15, tol=0, random_state=0)
    with pytest.warns(ConvergenceWarning):
        res = nmf(X, 4, callback=lambda s: seen.append(blas_max()), **kw)
    assert seen and set(seen) == {1}
    assert blas_max() == before
    with dask.config.set({"cfact.blas.enabled": False}), pytest.warns(ConvergenceWarning):
        free = nmf(X, 4, callback=lambda s: seen.append(blas_max()), **kw)
    assert seen[-1] == before
    np.testing.assert_allclose(free.W, res.W, rtol=1e-9, atol=1e-12)
    # a small chunked matrix takes the same in-memory path (cfact.als.local-max-bytes)
    with pytest.warns(ConvergenceWarning):
        lazy = nmf(da.from_array(X, chunks=(50, 60)), 4, **kw)
    np.testing.assert_allclose(lazy.W, res.W, rtol=1e-9, atol=1e-12)
    assert lazy.history == pytest.approx(res.history, rel=1e-9)
