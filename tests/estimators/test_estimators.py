"""CompressedNMF: scikit-learn's estimator checks, parameter forwarding, orientation, sketches."""

from __future__ import annotations

import inspect
import warnings

import dask.array as da
import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from cfact_dask.errors import ConvergenceWarning
from cfact_dask.estimators import _nmf as estimators
from cfact_dask.estimators._nmf import CompressedNMF


@pytest.mark.filterwarnings("ignore::cfact_dask.errors.ConvergenceWarning")
@parametrize_with_checks([CompressedNMF(max_iter=100, tol=1e-3, random_state=0)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_forwards_every_parameter(monkeypatch, rng):
    """Every __init__ parameter reaches the functional core: nmf for a raw fit, the library's
    Factorize-Recover pipeline (sketch / factor / recover options) for a sketched fit."""
    from types import SimpleNamespace

    from cfact_dask import pipeline
    from cfact_dask.factor._nmf import NMFResult

    seen: dict = {}

    def fake_nmf(X, rank, **kw):
        seen["nmf"] = dict(kw, rank=rank, X=X)
        p, m = X.shape
        return NMFResult(W=np.ones((p, rank)), H=np.ones((rank, m)), n_iter_=1, history=(0.1,),
                         reconstruction_err_=0.1, params={"semi": False})

    def fake_pipeline(X, rank, **kw):
        seen["pipeline"] = dict(kw, rank=rank, X=X)
        n = X.shape[kw["feature_axis"]]
        m = X.shape[1 - kw["feature_axis"]]
        res = NMFResult(W=np.ones((kw["sketch"]["n_components"], rank)), H=np.ones((rank, m)),
                        n_iter_=1, history=(0.1,), reconstruction_err_=0.1,
                        params={"semi": True})
        rec = SimpleNamespace(method="omp", certificate=None)
        return SimpleNamespace(W=da.ones((n, rank)), H=res.H, factors=res, recovery=rec,
                               report={"recover": {"method": "omp"}})

    monkeypatch.setattr(estimators, "nmf", fake_nmf)
    monkeypatch.setattr(pipeline, "factorize_recover", fake_pipeline)
    client = object()
    values = dict(n_components=3, sketch_dim=7, sketch_kind="gaussian", recover_method="omp",
                  solver="anls", init="random", n_init=2, max_iter=11, tol=0.5,
                  randomized={"power_iter": 2}, l1_ratio=0.25,
                  alpha_W=0.1, alpha_H=0.2, semi=True, negative="clip", random_state=5,
                  verbose=True, client=client)
    assert set(values) == set(inspect.signature(CompressedNMF).parameters)
    X = np.abs(rng.random((30, 20)))

    # sketched: one call of the pipeline, which gets everything
    est = CompressedNMF(**values).fit(X)
    assert "nmf" not in seen
    kw = seen["pipeline"]
    assert kw["rank"] == 3 and kw["feature_axis"] == 1 and kw["X"].shape == (30, 20)
    assert kw["client"] is client and kw["progress"] is True
    assert kw["sketch"] == dict(n_components=7, kind="gaussian", seed=5)
    assert kw["recover"] == dict(method="omp")
    factor = kw["factor"]
    for k in ("solver", "init", "n_init", "max_iter", "tol", "randomized", "l1_ratio",
              "negative", "verbose"):
        assert factor[k] == values[k], k
    assert factor["random_state"] == 5 and factor["method"] == "semi-nmf"  # semi=True
    # scikit-learn's alpha_W penalises the samples side = the core's H, alpha_H the components
    assert factor["alpha_H"] == 0.1 and factor["alpha_W"] == 0.2
    assert est.components_.shape == (3, 20)
    assert est.recovery_.method == "omp" and est.report_["recover"]["method"] == "omp"

    # raw: nmf gets every factorization option (semi and client included)
    est = CompressedNMF(**dict(values, sketch_dim=None)).fit(X)
    kw = seen["nmf"]
    assert kw["rank"] == 3
    for k in ("solver", "init", "n_init", "max_iter", "tol", "randomized", "l1_ratio", "semi",
              "negative", "verbose"):
        assert kw[k] == values[k], k
    assert kw["client"] is client and kw["random_state"] == 5
    assert kw["alpha_H"] == 0.1 and kw["alpha_W"] == 0.2
    assert est.components_.shape == (3, 20) and est.recovery_ is None


def test_sketched_fit_is_the_pipeline(rng):
    """The estimator and cf.factorize_recover share one code path: same factors, same
    recovery and certificate (hold-out included) for the same seed."""
    from cfact_dask.datasets import planted_nmf
    from cfact_dask.pipeline._run import factorize_recover

    M, W, H = planted_nmf(600, 200, 3, density=0.05, noise=0.05, random_state=3)
    est = CompressedNMF(3, sketch_dim=150, random_state=2).fit(M.T)
    run = factorize_recover(M.T, 3, feature_axis=1, sketch=dict(n_components=150, seed=2),
                            factor=dict(random_state=2), recover="auto", progress=False)
    np.testing.assert_allclose(est.components_, np.asarray(run.W).T, atol=1e-10)
    np.testing.assert_allclose(np.asarray(est.result_.H), np.asarray(run.H), atol=1e-10)
    assert est.recovery_.method == run.recovery.method == "nnlasso"
    c = est.recovery_.certificate
    assert c.ok and c.holdout_error is not None
    assert c.holdout_error == pytest.approx(run.recovery.certificate.holdout_error)
    assert est.report_["recover"]["ok"] and est.report_["sketch"]["n_components"] == 150


def test_orientation_and_round_trip(rng):
    W = rng.random((100, 3))  # samples × r
    C = rng.random((3, 40))  # r × features
    X = W @ C
    est = CompressedNMF(3, max_iter=500, tol=1e-6, random_state=0)
    Z = est.fit_transform(X)
    assert Z.shape == (100, 3) and est.components_.shape == (3, 40)
    assert est.n_features_in_ == 40
    assert np.linalg.norm(est.inverse_transform(Z) - X) / np.linalg.norm(X) < 0.02
    assert est.reconstruction_err_ < 0.02  # relative, unlike scikit-learn's absolute norm
    np.testing.assert_allclose(est.transform(X[:7]), Z[:7], atol=1e-6)


def test_sketched_fit_and_dask_input(rng):
    n, m, r = 400, 120, 3
    Wt = np.zeros((n, r))
    for j in range(r):
        Wt[rng.choice(n, 20, replace=False), j] = rng.random(20) + 0.5
    X = (rng.random((m, r)) @ Wt.T)  # samples × features, sparse components
    Xd = da.from_array(X, chunks=(40, n))
    est = CompressedNMF(r, sketch_dim=120, random_state=0, max_iter=300, tol=1e-6,
                        recover_method="lstsq-data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        Z = est.fit_transform(Xd)
    assert est.result_.is_sketch and est.result_.W.shape == (120, r)
    assert est.components_.shape == (r, n)
    assert isinstance(Z, da.Array) and Z.shape == (m, r)
    rel = np.linalg.norm(np.asarray(Z) @ est.components_ - X) / np.linalg.norm(X)
    assert rel < 0.1
    assert isinstance(est.transform(Xd), da.Array)


def test_negative_data_message_for_sklearn_users(rng):
    from cfact_dask.errors import NegativeDataError

    with pytest.raises(NegativeDataError, match="Negative values in data passed to CompressedNMF"):
        CompressedNMF(2).fit(rng.standard_normal((20, 10)))
