"""Tests of cfact_dask.factor._svd: oracle (numpy), Tropp et al. bound, one read per chunk, bad input."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import CountingArray

from cfact_dask.errors import InputError, NonFiniteError, RankError
from cfact_dask.factor._svd import SVDResult, svd, tropp_bound
from cfact_dask.sketching._sketch import sketch


def _lowrank(rng, n, m, r, decay=1e-2, noise=1e-3):
    A = rng.standard_normal((n, r)) @ np.diag(np.logspace(0, np.log10(decay), r))
    A = A @ rng.standard_normal((r, m))
    return A + noise * rng.standard_normal((n, m))


def _dense(res: SVDResult):
    return np.asarray(res.U.compute()), res.s, np.asarray(res.Vt.compute())


@pytest.mark.parametrize("passes", [1, 2, 4])
@pytest.mark.parametrize("chunks", [(300, 200), (64, 50), (97, 33)])
def test_svd_matches_numpy(rng, passes, chunks):
    A = _lowrank(rng, 300, 200, 8)
    res = svd(da.from_array(A, chunks=chunks), rank=5, passes=passes, random_state=1,
              progress=False)
    U, s, Vt = _dense(res)
    u, s0, vt = np.linalg.svd(A, full_matrices=False)
    # orthonormal factors, sorted values, sign convention
    np.testing.assert_allclose(U.T @ U, np.eye(5), atol=1e-10)
    np.testing.assert_allclose(Vt @ Vt.T, np.eye(5), atol=1e-10)
    assert np.all(np.diff(s) <= 0)
    idx = np.argmax(np.abs(U), axis=0)
    assert np.all(U[idx, np.arange(5)] > 0)
    # the leading singular values are close; the subspace too
    tol = {1: 5e-2, 2: 1e-3, 4: 1e-8}[passes]
    np.testing.assert_allclose(s, s0[:5], rtol=tol)
    opt = np.linalg.norm(s0[5:])
    err = np.linalg.norm(A - (U * s) @ Vt)
    assert err <= opt * (1 + tol)
    assert res.passes == passes


def test_chunking_invariance(rng):
    A = _lowrank(rng, 120, 90, 6)
    outs = [
        _dense(svd(da.from_array(A, chunks=c), rank=4, passes=1, random_state=3, progress=False))
        for c in [(120, 90), (40, 30), (17, 90)]
    ]
    for U, s, Vt in outs[1:]:
        np.testing.assert_allclose(U, outs[0][0], atol=1e-10)
        np.testing.assert_allclose(s, outs[0][1], rtol=1e-12)
        np.testing.assert_allclose(Vt, outs[0][2], atol=1e-10)


def test_single_pass_within_tropp_bound():
    """‖A − Â_r‖ ≤ τ_{r+1} + 2‖A − QX‖ (Tropp et al. Prop. 6.1) with E‖A − QX‖ from Thm 4.3.

    Tolerance found by simulation: over 200 seeds on this matrix the ratio of the observed error
    of the rank-r truncation to τ_{r+1} + 2·sqrt(bound) had median 0.28 and maximum 0.41; we
    allow 0.5 (a bigger ratio means the algorithm is worse than the theory allows).
    """
    rng = np.random.default_rng(7)
    n, m, r = 150, 120, 5
    sv = np.concatenate([np.ones(r), 0.1 * 0.8 ** np.arange(min(n, m) - r)])
    u, _ = np.linalg.qr(rng.standard_normal((n, n)))
    v, _ = np.linalg.qr(rng.standard_normal((m, m)))
    A = (u[:, : len(sv)] * sv) @ v[:, : len(sv)].T
    k = 2 * r + 1
    bound = tropp_bound(sv, r, k, 2 * k + 1)
    tail = np.linalg.norm(sv[r:])
    ratios = []
    for seed in range(12):
        U, s, Vt = _dense(svd(da.from_array(A, chunks=(50, 60)), rank=r, passes=1,
                              oversample=r + 1, co_range=2 * k + 1, random_state=seed,
                              progress=False))
        err = np.linalg.norm(A - (U * s) @ Vt)
        ratios.append(err / (tail + 2 * bound))
    assert max(ratios) <= 0.5
    assert np.median(ratios) < 0.36


@pytest.mark.parametrize("n_test", [0, 16])
def test_single_pass_reads_each_chunk_once(rng, n_test):
    A = _lowrank(rng, 200, 150, 6)
    src = CountingArray(A)
    X = da.from_array(src, chunks=(50, 40), asarray=False)
    with dask.config.set(scheduler="threads"):
        res = svd(X, rank=4, passes=1, n_test=n_test, random_state=0, progress=False)
        res.U.compute(), res.Vt.compute()
    assert len(src.reads) == X.npartitions == 16
    assert set(src.reads.values()) == {1}


def test_two_passes_read_twice(rng):
    A = _lowrank(rng, 100, 80, 6)
    src = CountingArray(A)
    X = da.from_array(src, chunks=(50, 40), asarray=False)
    with dask.config.set(scheduler="threads"):
        svd(X, rank=3, passes=2, random_state=0, progress=False)
    assert set(src.reads.values()) == {2}


def test_svd_of_sketch_and_float32(rng):
    A = _lowrank(rng, 400, 100, 5).astype(np.float32)
    sk = sketch(A, n_components=60, kind="gaussian", seed=0)
    res = svd(sk, rank=3, passes=2, progress=False)
    assert res.U.shape == (60, 3) and res.Vt.shape == (3, 100)
    assert res.U.dtype == np.float32
    assert np.isfinite(res.error_estimate) and res.error_estimate < 0.2


def test_error_estimate_is_close(rng):
    A = _lowrank(rng, 300, 200, 8, noise=1e-2)
    res = svd(da.from_array(A, chunks=(100, 100)), rank=4, passes=1, n_test=64,
              random_state=2, progress=False)
    U, s, Vt = _dense(res)
    true = np.linalg.norm(A - (U * s) @ Vt) / np.linalg.norm(A)
    assert 0.6 * true < res.error_estimate < 1.6 * true


def test_on_cluster(cluster_client, rng):
    A = _lowrank(rng, 200, 120, 6)
    res = svd(da.from_array(A, chunks=(50, 60)), rank=4, passes=1, random_state=0,
              client=cluster_client, progress=False)
    local = svd(da.from_array(A, chunks=(50, 60)), rank=4, passes=1, random_state=0,
                progress=False)
    np.testing.assert_allclose(res.s, local.s, rtol=1e-12)
    np.testing.assert_allclose(cluster_client.compute(res.U).result(), local.U.compute(),
                               atol=1e-10)


@pytest.mark.parametrize("rank", [0, -1, 40, 50, 2.5, True])
def test_bad_rank(rank):
    with pytest.raises(RankError, match="rank"):
        svd(np.ones((40, 60)), rank=rank)


def test_bad_input(rng):
    A = rng.standard_normal((30, 20))
    A[3, 4] = np.nan
    with pytest.raises(NonFiniteError, match=r"chunk \(0, 0\)"):
        svd(da.from_array(A, chunks=(10, 20)), rank=2, progress=False)
    with pytest.raises(InputError, match="empty"):
        svd(np.ones((0, 5)), rank=1)
    with pytest.raises(InputError, match="matrix"):
        svd(np.ones((4, 5, 6)), rank=1)
    with pytest.raises(InputError, match="passes"):
        svd(np.ones((40, 50)), rank=2, passes=3)


# ---------------------------------------------------------------------- the single pass's finish
@pytest.mark.parametrize("decades,tsqr", [(0, False), (4, False), (8, True)])
def test_ill_conditioned_range_is_still_orthonormal(rng, monkeypatch, decades, tsqr):
    """Singular values over 0, 4 and 8 decades. 4: the Gram of the range sketch has condition
    ~1e8, its first basis is orthonormal only to ~1e-8 and the second round restores it.
    8: beyond what the Gram resolves (~1e16), the tall-skinny QR takes over. Accurate in
    all three."""
    import importlib

    svd_mod = importlib.import_module("cfact_dask.factor._svd")

    calls = []
    orth = svd_mod._orth
    monkeypatch.setattr(svd_mod, "_orth", lambda Y: calls.append(1) or orth(Y))
    # rank 13 = k for rank 6 with oversample=7: the range sketch is exact and full-rank
    n, m, r = 400, 120, 13
    u, _ = np.linalg.qr(rng.standard_normal((n, r)))
    v, _ = np.linalg.qr(rng.standard_normal((m, r)))
    sv = np.logspace(0, -decades, r)
    A = (u * sv) @ v.T
    res = svd(da.from_array(A, chunks=(100, 60)), rank=6, passes=1, oversample=7,
              random_state=0, progress=False)
    U, s, Vt = _dense(res)
    assert bool(calls) == tsqr
    np.testing.assert_allclose(U.T @ U, np.eye(6), atol=1e-10)
    np.testing.assert_allclose(Vt @ Vt.T, np.eye(6), atol=1e-10)
    np.testing.assert_allclose(s, sv[:6], rtol=1e-6)


def test_data_of_lower_rank_than_asked(rng):
    """Exactly rank 3, rank 5 asked: the range sketch is rank-deficient (the TSQR fallback);
    the factors are still orthonormal and the reconstruction exact."""
    A = rng.standard_normal((200, 3)) @ rng.standard_normal((3, 90))
    res = svd(da.from_array(A, chunks=(50, 45)), rank=5, passes=1, random_state=0,
              progress=False)
    U, s, Vt = _dense(res)
    assert U.shape == (200, 5) and Vt.shape == (5, 90)
    np.testing.assert_allclose(U.T @ U, np.eye(5), atol=1e-8)
    np.testing.assert_allclose((U * s) @ Vt, A, atol=1e-9 * np.abs(A).max())
    assert s[3:].max() <= 1e-9 * s[0]


def test_countsketch_co_range_default_is_as_accurate(rng):
    """The default (CountSketch Ψ with l = 16k + 1) against the all-Gaussian setting of the
    theory (l = 4k + 1), over seeds, on a noisy matrix with a slowly decaying spectrum."""
    n, m, r = 600, 300, 5
    A = _lowrank(rng, n, m, 20, decay=0.05, noise=0.02)
    Ad = da.from_array(A, chunks=(150, 100))
    errs = {"default": [], "gaussian": []}
    for seed in range(6):
        for name, kw in (("default", {}), ("gaussian", {"co_range_kind": "gaussian"})):
            res = svd(Ad, rank=r, passes=1, random_state=seed, progress=False, **kw)
            U, s, Vt = _dense(res)
            errs[name].append(np.linalg.norm(A - (U * s) @ Vt))
    res = svd(Ad, rank=r, passes=1, progress=False)
    k = r + 20  # max(2 r + 1, r + 20)
    assert res.params["co_range_kind"] == "countsketch" and res.params["k"] == k
    assert res.params["l"] == min(16 * k + 1, n)
    assert np.mean(errs["default"]) <= 1.02 * np.mean(errs["gaussian"])


def test_countsketch_error_estimate_is_unbiased(rng):
    """The squared estimate from the CountSketch test map averages to the squared error."""
    A = _lowrank(rng, 500, 200, 10, decay=0.1, noise=0.05)
    ratios = []
    for seed in range(30):
        res = svd(da.from_array(A, chunks=(125, 100)), rank=4, passes=1, n_test=16,
                  random_state=seed, progress=False)
        U, s, Vt = _dense(res)
        true = np.linalg.norm(A - (U * s) @ Vt) / np.linalg.norm(A)
        ratios.append((res.error_estimate / true) ** 2)
    # a ratio of two estimates with 16 rows: mean within a few standard errors of 1
    assert 0.85 < np.mean(ratios) < 1.15
    assert np.std(ratios) < 0.6


@pytest.mark.parametrize("centred", [True, False])
def test_single_pass_as_accurate_as_svd_compressed_on_noise(centred):
    """Rank 6 plus uniform noise, 3 000 × 400: the single pass's error is at most that of
    dask's two-pass ``svd_compressed`` (``n_power_iter=0``) at the same rank and seed, in the
    mean over three seeds (issue #18). Measured: 0.955× (centred noise) and 0.989× (nonnegative
    data and noise) over five seeds; before the default ``k = rank + 20`` (it was ``2 rank + 1``
    with ``l = 8k + 1``) 1.18× and 1.08×."""
    ratios = []
    for seed in range(3):
        rng = np.random.default_rng(100 + seed)
        n, m, r = 3000, 400, 6
        if centred:
            A = rng.standard_normal((n, r)) @ rng.standard_normal((r, m))
            A += rng.uniform(-1, 1, (n, m))
        else:
            A = rng.random((n, r)) @ rng.random((r, m)) + rng.random((n, m))
        X = da.from_array(A, chunks=(500, 200))
        U, s, Vt = _dense(svd(X, rank=r, passes=1, random_state=seed, progress=False))
        u, s0, vt = da.linalg.svd_compressed(X, r, n_power_iter=0, seed=seed)
        u, s0, vt = dask.compute(u, s0, vt)
        ratios.append(np.linalg.norm(A - (U * s) @ Vt) / np.linalg.norm(A - (u * s0) @ vt))
    assert np.mean(ratios) <= 1.0
