"""Tests of CompressedSVD, CompressedSparsePCA, CompressedCP: sklearn contract and forwarding."""

from __future__ import annotations

import inspect

import dask.array as da
import numpy as np
import pytest
from sklearn.decomposition import SparsePCA, TruncatedSVD
from sklearn.utils.estimator_checks import parametrize_with_checks

import cfact_dask.estimators._decomposition as est_mod
from cfact_dask.errors import RankError, StoreExistsError
from cfact_dask.estimators._decomposition import CompressedCP, CompressedSparsePCA, CompressedSVD
from cfact_dask.factor._cp import CPResult
from cfact_dask.factor._sparse_pca import SparsePCAResult
from cfact_dask.factor._svd import SVDResult

# The checks' data often has 2 features, and n_components must be < min(shape): 1 component.
_CHECKED = [
    CompressedSVD(n_components=1, random_state=0),
    CompressedSVD(n_components=1, passes=2, random_state=0),
    CompressedSparsePCA(n_components=1, max_iter=100, tol=1e-6, random_state=0),
]

#: no expected failures for the in-memory path; CompressedCP takes tensors, which the checks
#: (2-D data) do not cover, so it is tested separately below
EXPECTED_FAILED: dict[str, str] = {}


@pytest.mark.filterwarnings("ignore::cfact_dask.errors.ConvergenceWarning")
@parametrize_with_checks(_CHECKED, expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_svd_estimator_matches_truncated_svd(rng):
    X = rng.standard_normal((80, 6)) @ rng.standard_normal((6, 40))
    ours = CompressedSVD(n_components=4, passes=4, random_state=0)
    Xt = ours.fit_transform(X)
    ref = TruncatedSVD(n_components=4, algorithm="arpack").fit(X)
    np.testing.assert_allclose(ours.singular_values_, ref.singular_values_, rtol=1e-8)
    np.testing.assert_allclose(np.abs(ours.components_), np.abs(ref.components_), atol=1e-8)
    np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-6)
    np.testing.assert_allclose(ours.transform(X), Xt, atol=1e-8)
    np.testing.assert_allclose(ours.inverse_transform(Xt),
                               ref.inverse_transform(ref.transform(X)), atol=1e-8)
    # chunked input stays chunked
    Xd = da.from_array(X, chunks=(20, 40))
    out = CompressedSVD(n_components=4, random_state=0).fit_transform(Xd)
    assert isinstance(out, da.Array) and out.chunks[0] == (20, 20, 20, 20)


def test_sparse_pca_estimator_matches_sklearn(rng):
    V = np.zeros((2, 20))
    V[0, :5] = 1.0
    V[1, 10:14] = -1.0
    X = rng.standard_normal((50, 2)) @ V * 2 + 0.05 * rng.standard_normal((50, 20))
    ours = CompressedSparsePCA(n_components=2, alpha=0.5, random_state=0).fit(X)
    ref = SparsePCA(n_components=2, alpha=0.5, random_state=0).fit(X)
    np.testing.assert_allclose(ours.components_, ref.components_, atol=1e-8)
    np.testing.assert_allclose(ours.mean_, ref.mean_)
    np.testing.assert_allclose(ours.transform(X), ref.transform(X), atol=1e-7)
    np.testing.assert_allclose(ours.inverse_transform(ours.transform(X)),
                               ref.inverse_transform(ref.transform(X)), atol=1e-6)
    assert ours.n_iter_ == ref.n_iter_


def test_sparse_pca_estimator_compressed(rng):
    V = np.zeros((2, 300))
    V[0, :8] = 1.0
    V[1, 100:108] = 1.0
    X = rng.standard_normal((120, 2)) @ V * 2 + 0.01 * rng.standard_normal((120, 300))
    est = CompressedSparsePCA(n_components=2, alpha=0.2, sketch_dim=60, tol=1e-6,
                              random_state=0).fit(X)
    assert est.components_.shape == (2, 300) and est.operator_.shape == (60, 300)
    used = np.abs(est.components_).sum(axis=0) > 1e-10
    assert used[:8].all() and used[100:108].all() and used.sum() <= 20


def test_cp_estimator(rng):
    F = [rng.random((s, 2)) for s in (15, 10, 8)]
    T = np.einsum("ir,jr,kr->ijk", *F)
    est = CompressedCP(rank=2, random_state=0, tol=1e-10, max_iter=500)
    cpt = est.fit_transform(T)
    assert est.reconstruction_err_ < 1e-6 and est.n_iter_ >= 1
    np.testing.assert_allclose(est.to_tensor(), T, atol=1e-5)
    import tensorly as tl

    np.testing.assert_allclose(tl.cp_to_tensor(cpt), T, atol=1e-5)
    comp = CompressedCP(rank=2, sketch_dim=6, sketch_mode=0, kind="gaussian", tol=1e-6,
                        max_iter=500, random_state=0).fit(T)
    assert comp.factors_[0].shape == (6, 2) and comp.operator_ is not None


def test_bad_n_components():
    with pytest.raises(RankError, match="n_features=3"):
        CompressedSVD(n_components=3).fit(np.ones((10, 3)))
    with pytest.raises(RankError):
        CompressedSparsePCA(n_components=0).fit(np.ones((10, 3)))


# ------------------------------------------------------------------ parameter forwarding
def _spy(monkeypatch, module, name, result):
    calls = {}

    def fake(*args, **kwargs):
        calls["args"], calls["kwargs"] = args, kwargs
        return result

    monkeypatch.setattr(module, name, fake)
    return calls


def _nondefault(cls, values):
    """Every __init__ parameter set to a non-default value."""
    params = inspect.signature(cls.__init__).parameters
    assert set(values) == set(params) - {"self"}, "update the forwarding test for new parameters"
    for k, v in values.items():
        assert v != params[k].default, k
    return cls(**values)


def test_svd_forwards_every_parameter(monkeypatch):
    X = np.random.default_rng(0).standard_normal((30, 8))
    fake = SVDResult(U=da.zeros((30, 3), chunks=30), s=np.ones(3), Vt=da.zeros((3, 8), chunks=8),
                     passes=2)
    calls = _spy(monkeypatch, est_mod._svd, "svd", fake)
    est = _nondefault(CompressedSVD, dict(n_components=3, passes=4, oversample=7,
                                          kind="sparse_sign", random_state=11))
    est.fit(X)
    assert calls["args"][1] == 3
    kw = calls["kwargs"]
    assert (kw["passes"], kw["oversample"], kw["kind"], kw["random_state"]) == (
        4, 7, "sparse_sign", 11)


def test_sparse_pca_forwards_every_parameter(monkeypatch):
    X = np.random.default_rng(0).standard_normal((30, 8))
    fake = SparsePCAResult(W=np.ones((8, 3)), H=np.ones((3, 30)), mean=np.zeros(8),
                           errors=[1.0], n_iter=1, operator="op")
    calls = _spy(monkeypatch, est_mod._spca, "sparse_pca", fake)
    refit = _spy(monkeypatch, est_mod._spca, "refit_components", np.ones((8, 3)))
    sk_calls = _spy(monkeypatch, est_mod, "_sketch", "SKETCH")
    est = _nondefault(CompressedSparsePCA, dict(
        n_components=3, alpha=0.3, ridge_alpha=0.2, max_iter=17, tol=1e-3, sketch_dim=5,
        kind="countsketch", random_state=11))
    est.fit(X)
    assert calls["args"][:3] == ("SKETCH", 3, 0.3)
    kw = calls["kwargs"]
    assert (kw["ridge_alpha"], kw["max_iter"], kw["tol"], kw["random_state"]) == (
        0.2, 17, 1e-3, 11)
    assert sk_calls["kwargs"] == dict(n_components=5, kind="countsketch", seed=11, axis=0)
    assert refit["args"][2] == 0.3


def test_cp_forwards_every_parameter(monkeypatch):
    T = np.ones((4, 5, 6))
    fake = CPResult(weights=np.ones(2), factors=[np.ones((s, 2)) for s in (4, 5, 6)],
                    errors=[0.1], n_iter=3)
    calls = _spy(monkeypatch, est_mod._cp, "cp", fake)
    est = _nondefault(CompressedCP, dict(
        rank=2, nonnegative=True, sketch_dim=3, sketch_mode=1, kind="gaussian", max_iter=9,
        tol=1e-2, init="random", random_state=11, checkpoint="ck.zarr"))
    est.fit(T)
    assert calls["args"][1] == 2
    kw = calls["kwargs"]
    assert kw == dict(nonnegative=True, sketch=dict(n_components=3, mode=1, kind="gaussian",
                                                     seed=11),
                      max_iter=9, tol=1e-2, init="random", random_state=11,
                      checkpoint="ck.zarr")
    assert est.n_iter_ == 3 and est.reconstruction_err_ == 0.1


def test_run_factor_hook(tmp_path, rng):
    import zarr

    from cfact_dask.cli.factor import run_factor
    from cfact_dask.errors import ConfigError

    A = rng.standard_normal((120, 30))
    out = tmp_path / "f.zarr"
    res = run_factor("svd", A, 3, out=out, progress=False)
    g = zarr.open_group(str(out), path="svd", mode="r")
    np.testing.assert_allclose(g["U"][...], res.U.compute())
    assert g.attrs["cfact"]["complete"] is True
    with pytest.raises(StoreExistsError):
        run_factor("svd", A, 3, out=out, progress=False)
    cpres = run_factor("cp", rng.random((8, 7, 6)), 2, out=out, max_iter=5, tol=0)
    assert CPResult.from_zarr(out, "cp").n_iter == cpres.n_iter
    with pytest.raises(ConfigError, match="unknown method"):
        run_factor("pca", A, 3)
