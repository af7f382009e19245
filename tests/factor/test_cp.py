"""Tests of cfact_dask.factor._cp against TensorLy's parafac, compression, checkpoints, bad input."""

from __future__ import annotations

import importlib

import dask.array as da
import numpy as np
import pytest
import tensorly as tl
from scipy.optimize import linear_sum_assignment
from tensorly.decomposition import parafac

cp_mod = importlib.import_module("cfact_dask.factor._cp")  # the module, not cf.cp
from cfact_dask.errors import (
    ConvergenceWarning,
    InputError,
    NonFiniteError,
    RankError,
    ResumeError,
    StoreExistsError,
)
from cfact_dask.factor._cp import CPResult, cp, refit_mode, with_mode


def congruence(F, G):
    """Smallest matched congruence (product over modes of |cos|), Hungarian matching."""
    tot = np.ones((F[0].shape[1], G[0].shape[1]))
    for a, b in zip(F, G, strict=True):
        a = a / np.linalg.norm(a, axis=0)
        b = b / np.linalg.norm(b, axis=0)
        tot = tot * np.abs(a.T @ b)
    r, c = linear_sum_assignment(-tot)
    return tot[r, c].min()


def planted(rng, shape=(30, 25, 20), r=4, noise=0.01, nonneg=False):
    F = [rng.standard_normal((s, r)) for s in shape]
    if nonneg:
        F = [np.abs(f) for f in F]
    letters = "abcdefg"[: len(shape)]
    T = np.einsum(",".join(f"{c}z" for c in letters) + "->" + letters, *F)
    T = T + noise * np.linalg.norm(T) / np.sqrt(T.size) * rng.standard_normal(T.shape)
    return T, F


@pytest.fixture(params=["numpy", "dask"])
def path(request, monkeypatch):
    if request.param == "dask":  # force the chunked code path on small data
        monkeypatch.setattr(cp_mod, "_IN_MEMORY_ENTRIES", 0)
    return request.param


def test_matches_tensorly(rng, path):
    T, F = planted(rng)
    w, fs = parafac(tl.tensor(T), 4, init="svd", n_iter_max=200, tol=1e-10)
    X = T if path == "numpy" else da.from_array(T, chunks=(7, 10, 20))
    res = cp(X, 4, max_iter=200, tol=1e-10)
    assert congruence(res.factors, F) > 0.99
    assert congruence(res.factors, fs) > 0.99
    tl_err = np.linalg.norm(tl.cp_to_tensor((w, fs)) - T) / np.linalg.norm(T)
    our = np.linalg.norm(tl.cp_to_tensor(res.to_tensorly()) - T) / np.linalg.norm(T)
    assert our <= tl_err * (1 + 1e-6)
    assert abs(our - res.errors[-1]) < 1e-8
    assert np.all(np.diff(res.weights) <= 0)
    w2, f2 = res  # TensorLy-style unpacking
    assert w2 is res.weights and len(f2) == 3


def test_four_way_and_nonnegative(rng):
    T, F = planted(rng, shape=(12, 10, 8, 6), r=3, noise=0.0, nonneg=True)
    res = cp(T, 3, nonnegative=True, max_iter=500, tol=1e-12)
    assert congruence(res.factors, F) > 0.99
    assert all(f.min() >= 0 for f in res.factors)
    assert res.errors[-1] < 1e-3


def test_compressed_mode_recovers_other_factors(rng):
    T, F = planted(rng, shape=(300, 20, 15), r=4)
    X = da.from_array(T, chunks=(100, 20, 15))
    res = cp(X, 4, sketch=dict(n_components=40, mode=0, kind="gaussian"), max_iter=200, tol=1e-9)
    assert res.factors[0].shape == (40, 4) and res.mode == 0 and res.operator is not None
    assert congruence(res.factors[1:], F[1:]) > 0.99
    # the compressed factor is P A (up to scale / permutation)
    P = res.operator.to_dense()
    assert congruence([res.factors[0]], [P @ F[0]]) > 0.99
    # exact recovery of A with one more read of T
    full = refit_mode(X, res)
    assert full.factors[0].shape == (300, 4)
    assert congruence(full.factors, F) > 0.99


@pytest.mark.slow
def test_compressed_nonnegative_expander(rng):
    T, F = planted(rng, shape=(200, 15, 12), r=3, noise=0.0, nonneg=True)
    res = cp(T, 3, nonnegative=True, sketch=dict(n_components=50, mode=0), max_iter=3000,
             tol=1e-10)
    assert res.operator.kind == "expander"
    assert congruence(res.factors[1:], F[1:]) > 0.99


def test_on_cluster(cluster_client, rng):
    T, F = planted(rng)
    res = cp(da.from_array(T, chunks=(10, 25, 10)), 4, max_iter=100, tol=1e-9,
             client=cluster_client)
    assert congruence(res.factors, F) > 0.99


def test_checkpoint_resume_gives_same_result(rng, tmp_path):
    T, _ = planted(rng, r=3, noise=0.1)
    kw = dict(max_iter=12, tol=0, init="random", random_state=3)
    ref = cp(T, 3, **kw)
    store = tmp_path / "ck.zarr"
    ck = dict(store=str(store), every=4)
    part = cp(T, 3, checkpoint=ck, callback=lambda s: s["iteration"] >= 6, **kw)
    assert part.n_iter == 6
    resumed = cp(T, 3, checkpoint=ck, **kw)  # restarts from iteration 4
    assert resumed.n_iter == 12
    np.testing.assert_allclose(resumed.errors, ref.errors, rtol=1e-12)
    for a, b in zip(resumed.factors, ref.factors, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(ResumeError, match="rank"):
        cp(T, 2, checkpoint=ck, **kw)


def test_zarr_round_trip(rng, tmp_path):
    T, _ = planted(rng, r=2)
    res = cp(T, 2, sketch=dict(n_components=10, mode=1, kind="gaussian"), max_iter=50, tol=1e-8)
    path = tmp_path / "res.zarr"
    res.to_zarr(path)
    back = CPResult.from_zarr(path)
    np.testing.assert_array_equal(back.weights, res.weights)
    for a, b in zip(back.factors, res.factors, strict=True):
        np.testing.assert_array_equal(a, b)
    assert back.operator == res.operator and back.mode == 1 and back.errors == res.errors
    with pytest.raises(StoreExistsError):
        res.to_zarr(path)


def test_convergence_warning_and_callback(rng):
    T, _ = planted(rng, r=3, noise=0.3)
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        cp(T, 3, max_iter=2, tol=1e-15)
    seen = []
    cp(T, 3, max_iter=50, tol=0, callback=lambda s: seen.append(s["error"]) or len(seen) == 3)
    assert len(seen) == 3 and seen[0] >= seen[-1]


def test_bad_input(rng):
    T, _ = planted(rng, shape=(5, 4, 3), r=2)
    with pytest.raises(InputError, match="order >= 3"):
        cp(np.ones((5, 4)), 2)
    with pytest.raises(InputError, match="empty"):
        cp(np.ones((5, 0, 3)), 1)
    for rank in (0, -2, 1.5):
        with pytest.raises(RankError):
            cp(T, rank)
    with pytest.raises(RankError, match="mode"):
        cp(T, 12)
    Tn = T.copy()
    Tn[1, 1, 1] = np.nan
    with pytest.raises(NonFiniteError):
        cp(Tn, 2)
    with pytest.raises(NonFiniteError, match="chunk"):
        cp(Tn, 2, sketch=dict(n_components=3, mode=0))
    with pytest.raises(InputError, match="sketch"):
        cp(T, 2, sketch=dict(d=3))
    with pytest.raises(InputError, match="init"):
        cp(T, 2, init="nope")


def test_reported_error_is_the_true_error_for_float32_data():
    """The error from the expansion ‖T‖² − 2⟨T, T̂⟩ + ‖T̂‖² cancels to noise in float32."""
    rng = np.random.default_rng(0)
    A = [rng.random((s, 5)) for s in (60, 50, 40)]
    T = np.einsum("ir,jr,kr->ijk", *A)
    T = (T + 1e-3 * T.mean() * rng.standard_normal(T.shape)).astype(np.float32)
    res = cp(T, 5, max_iter=300, tol=1e-7)
    T64 = T.astype(np.float64)
    true = np.linalg.norm(T64 - res.to_tensor()) / np.linalg.norm(T64)
    assert 1e-4 < true < 1e-2
    assert res.reconstruction_err_ == pytest.approx(true, rel=1e-3)
    # and as good as on the same data in float64
    res64 = cp(T64, 5, max_iter=300, tol=1e-7)
    assert res.reconstruction_err_ == pytest.approx(res64.reconstruction_err_, rel=1e-3)


def test_refit_reports_its_exact_error_from_the_same_pass(rng, tmp_path):
    T, F = planted(rng, shape=(120, 15, 10), r=3, noise=0.05)
    X = da.from_array(T, chunks=(40, 15, 5))
    res = cp(X, 3, sketch=dict(n_components=30, mode=0, kind="gaussian"), max_iter=100,
             tol=1e-9)
    assert res.error is None and res.reconstruction_err_ == res.errors[-1]
    from conftest import CountingArray

    counted = CountingArray(T)
    full = refit_mode(da.from_array(counted, chunks=(40, 15, 5), asarray=False), res)
    # one read of T: the MTTKRP and ‖T‖² share the chunk reads
    assert len(counted.reads) == 6 and set(counted.reads.values()) == {1}
    exact = np.linalg.norm(T - full.to_tensor()) / np.linalg.norm(T)
    assert full.error == pytest.approx(exact, rel=1e-9)
    assert full.reconstruction_err_ == full.error != res.errors[-1]
    full.to_zarr(tmp_path / "r.zarr")
    assert CPResult.from_zarr(tmp_path / "r.zarr").error == full.error


def test_cp_of_a_tensor_sketch_records_operator_and_mode(rng):
    import cfact_dask as cf

    T, F = planted(rng, shape=(80, 12, 10), r=3)
    X = da.from_array(T, chunks=(40, 12, 10))
    kw = dict(max_iter=60, tol=1e-10)
    a = cp(X, 3, sketch=dict(n_components=20, mode=0, kind="gaussian", seed=5), **kw)
    sk = cf.sketch(X, 20, kind="gaussian", seed=5, axis=0)
    b = cp(sk, 3, **kw)
    assert b.mode == 0 and b.operator == a.operator
    for x, y in zip(a.factors, b.factors, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-8, atol=1e-10)
    # with_mode puts a full-size factor back: the model is the one with A in that mode
    A = rng.random((80, 3))
    c = with_mode(b, A, error=0.5)
    assert c.mode is None and c.operator is None and c.error == 0.5
    want = np.einsum("az,bz,cz,z->abc", A, b.factors[1], b.factors[2], b.weights)
    np.testing.assert_allclose(c.to_tensor(), want, rtol=1e-12)
    with pytest.raises(InputError, match="columns"):
        with_mode(b, A[:, :2])
