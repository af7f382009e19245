"""The distributed ALS core: kernels against scikit-learn, chunking invariance, no m-sized task."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from dask.callbacks import Callback

from cfact_dask.factor._als import (
    ALSSpec,
    Backend,
    _hals_rows,
    als_step,
    random_factor,
    randomized_svd,
    run_als,
    solve_factor,
)
from cfact_dask.factor._nmf import nmf


def _planted(rng, p, m, r, noise=0.0):
    X = rng.random((p, r)) @ rng.random((r, m))
    return X + noise * rng.standard_normal((p, m)) * X.std()


@pytest.mark.parametrize("jit", [True, False], ids=["compiled", "numpy"])
@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.2), (0.3, 0.2)])
def test_hals_kernel_equals_sklearn_coordinate_descent(rng, l1, l2, jit):
    from sklearn.decomposition._nmf import _update_coordinate_descent

    X = _planted(rng, 30, 40, 4)
    W0, H0 = rng.random((30, 4)), rng.random((4, 40))
    Ws = H0.T.copy()
    _update_coordinate_descent(X.T, Ws, W0.copy(), l1, l2, False, None)
    with dask.config.set({"cfact.jit.enabled": jit}):
        mine = _hals_rows(H0, W0.T @ X, W0.T @ W0, l1, l2, True)
    np.testing.assert_allclose(mine, Ws.T, atol=1e-12)


@pytest.mark.parametrize("nonneg,l1", [(True, 0.0), (True, 0.5), (False, 0.0), (False, 0.5)])
def test_hals_compiled_sweep_equals_numpy_sweep(rng, nonneg, l1):
    """The compiled sweep (cfact.jit) and the numpy one agree to rounding, signed and
    nonnegative, with and without the l1 term, on a sketch-sized factor (r = 20); an empty
    component (zero Gram diagonal) is left as it is by both."""
    r, m = 20, 700
    A = rng.standard_normal((r, 3 * r))
    G = A @ A.T
    G[5, :] = G[:, 5] = 0.0  # an empty component
    F = rng.standard_normal((r, m)) if not nonneg else rng.random((r, m))
    C = rng.standard_normal((r, m)) * 10
    out = {}
    for jit in (True, False):
        with dask.config.set({"cfact.jit.enabled": jit}):
            out[jit] = _hals_rows(F, C.T.copy().T, G, l1, 0.0, nonneg)  # C F-ordered
    np.testing.assert_allclose(out[True], out[False], rtol=1e-11, atol=1e-12)
    np.testing.assert_array_equal(out[True][5], F[5])
    assert np.any(out[True] != F)


@pytest.mark.parametrize("jit", [True, False], ids=["compiled", "numpy"])
def test_hals_sweep_keeps_the_factor_layout(rng, jit):
    """The sweep returns the factor in its input's memory layout (W enters as Wᵀ, an F-ordered
    view): the factors keep their layouts across iterations, as those a resumed run reads back
    from its checkpoint do, so BLAS multiplies the same layouts and the resumed run ends bitwise
    equal to an uninterrupted one (tests/test_s3.py::test_cli_run_killed_mid_factorization...)."""
    W = rng.random((50, 4))
    C, G = rng.random((4, 50)) * 10, W.T @ W
    with dask.config.set({"cfact.jit.enabled": jit}):
        out_f = _hals_rows(W.T, C, G, 0.0, 0.0, True)
        out_c = _hals_rows(np.ascontiguousarray(W.T), C, G, 0.0, 0.0, True)
    assert out_f.flags.f_contiguous and not out_f.flags.c_contiguous
    assert out_c.flags.c_contiguous
    np.testing.assert_array_equal(out_f, out_c)


@pytest.mark.parametrize("jit", [True, False], ids=["compiled", "numpy"])
def test_hals_several_sweeps_are_successive_sweeps(rng, jit):
    """``sweeps=k`` (one copy of the factor for all k, as an iteration's hals_sweeps runs) is
    bit for bit k single sweeps, each from the previous one's result; the layout is kept."""
    W = rng.random((300, 6))
    C, G = rng.random((6, 300)) * 10, W.T @ W + np.eye(6)
    with dask.config.set({"cfact.jit.enabled": jit}):
        for F0 in (W.T, np.ascontiguousarray(W.T)):
            one = F0
            for _ in range(5):
                one = _hals_rows(one, C, G, 0.1, 0.0, True)
            five = _hals_rows(F0, C, G, 0.1, 0.0, True, sweeps=5)
            np.testing.assert_array_equal(five, one)
            assert five.flags.f_contiguous == F0.flags.f_contiguous
            assert not np.shares_memory(five, F0)


def test_semi_update_is_exact_least_squares(rng):
    X = rng.standard_normal((20, 30))
    H = rng.random((3, 30))
    W = solve_factor(X, H, "W", ALSSpec(nonneg_W=False), n_iter=1)
    np.testing.assert_allclose(W, np.linalg.lstsq(H.T, X.T, rcond=None)[0].T, atol=1e-10)


@pytest.mark.parametrize("chunks", [(40, 25), (40, 60), (15, 25)])
def test_step_is_chunking_invariant(rng, chunks):
    """numpy, a single feature chunk (broadcast W) and tall chunked W give the same iterates."""
    X = _planted(rng, 40, 120, 3, 0.05)
    W, H = rng.random((40, 3)), rng.random((3, 120))
    spec = ALSSpec(l1_W=0.1, l2_H=0.05)
    ref = als_step(X, W, H, spec)
    Xd = da.from_array(X, chunks=chunks)
    Wd = da.from_array(W, chunks=(chunks[0], 3))
    Hd = da.from_array(H, chunks=(3, chunks[1]))
    got = dask.compute(*als_step(Xd, Wd, Hd, spec), scheduler="sync")
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-10, atol=1e-12)


def test_random_factor_does_not_depend_on_chunks():
    a = random_factor(3, (1, 0), 4, 10_000, None)
    b = random_factor(3, (1, 0), 4, 10_000, (3000, 5000, 2000)).compute()
    np.testing.assert_array_equal(a, b)
    assert (a >= 0).all()


def test_randomized_svd_matches_numpy(rng):
    X = _planted(rng, 50, 300, 4, 0.01)
    U, s, Vt = randomized_svd(da.from_array(X, chunks=(50, 64)), 4, 0, Backend())
    s_ref = np.linalg.svd(X, compute_uv=False)[:4]
    np.testing.assert_allclose(s, s_ref, rtol=1e-6)
    err = np.linalg.norm(X - np.asarray(U) * s @ np.asarray(Vt))
    best = np.sqrt((np.linalg.svd(X, compute_uv=False)[4:] ** 2).sum())
    assert err <= 1.01 * best


class _Shapes(Callback):
    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    def _posttask(self, key, result, dsk, state, worker_id):
        for v in result if isinstance(result, (tuple, list)) else (result,):
            if hasattr(v, "shape"):
                self.shapes.append((str(key), tuple(v.shape)))


@pytest.mark.parametrize("layout", ["sketch-like", "tall"])
def test_no_task_output_is_m_or_n_sized(rng, layout):
    """Invariant 2: every task output of a whole run (checks, init, iterations) is chunk-sized."""
    if layout == "sketch-like":
        p, m, chunks = 40, 600, (40, 100)
    else:
        p, m, chunks = 500, 600, (100, 100)
    X = da.from_array(np.abs(_planted(rng, p, m, 3, 0.01)), chunks=chunks)
    spy = _Shapes()
    # tall data: keep W chunked on the workers too (no n-sized gather at the end); no in-memory
    # fast path for small matrices, so the distributed path is what runs
    with spy, dask.config.set({"scheduler": "threads", "cfact.als.max-client-bytes": 0,
                               "cfact.als.local-max-bytes": 0}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = nmf(X, 3, max_iter=4, tol=0, random_state=0, persist_data=False)
    assert res.n_iter_ == 4
    assert spy.shapes, "the callback saw no task"
    limit = min(p, m) if layout == "tall" else m
    big = [(k, s) for k, s in spy.shapes if max(s, default=0) >= limit]
    assert not big, f"task outputs of size >= {limit}: {big[:5]}"
    # the factors stay chunked like X
    assert res.H.chunks[1] == X.chunks[1]
    if layout == "tall":
        assert isinstance(res.W, da.Array) and res.W.chunks[0] == X.chunks[0]


def test_run_als_counts_one_read_of_each_chunk_per_iteration(rng):
    reads = []

    def load(block, block_id=None):
        reads.append(block_id)
        return block

    X0 = da.from_array(np.abs(_planted(rng, 30, 200, 3)), chunks=(30, 50))
    X = X0.map_blocks(load, dtype=X0.dtype)
    W, H = rng.random((30, 3)), rng.random((3, 200))
    Wd, Hd = da.from_array(W, chunks=(30, 3)), da.from_array(H, chunks=(3, 50))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with dask.config.set(scheduler="threads"):
            run_als(X, Wd, Hd, ALSSpec(), xsq=float((X0**2).sum().compute()), max_iter=3, tol=0)
    # dask calls the function once with block_id=None to infer meta: not a read
    real = [b for b in reads if isinstance(b, tuple)]
    assert len(real) == 3 * X.numblocks[1]
    assert sorted(set(real)) == [(0, j) for j in range(X.numblocks[1])]
