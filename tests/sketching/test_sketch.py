"""Sketch operators and one-pass sketching: oracles, invariants, round trips, errors."""

from __future__ import annotations

import threading

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import cfact_dask as cf
from cfact_dask.errors import (
    InputError,
    NonFiniteError,
    RankError,
    StoreExistsError,
    StoreNotFoundError,
)
from cfact_dask.sketching.operators import make_operator

KINDS = list(cf.KINDS)


def _data(n=300, m=40, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return np.abs(rng.standard_normal((n, m))).astype(dtype)


# ---------------------------------------------------------------------------- operators
@pytest.mark.parametrize("kind", KINDS)
def test_sketch_equals_dense_product(kind):
    X = _data()
    sk = cf.sketch(X, 50, kind=kind, seed=3)
    P = sk.operator.to_dense()
    np.testing.assert_allclose(sk.compute(progress=False), P @ X, rtol=1e-12, atol=1e-12)


def test_expander_has_exactly_s_distinct_ones_per_column():
    op = make_operator("expander", 64, 10_000, seed=1, s=5, tile_size=999)
    P = op.to_dense()
    assert set(np.unique(P)) == {0.0, 1.0}
    assert (P.sum(axis=0) == 5).all()
    # rows are spread uniformly: each row gets about n*s/d ones
    per_row = P.sum(axis=1)
    expected = 10_000 * 5 / 64
    assert abs(per_row.mean() - expected) < 1e-9
    assert per_row.std() < 4 * np.sqrt(expected)


def test_sparse_sign_and_countsketch_entries():
    op = make_operator("sparse_sign", 32, 2000, seed=2, s=4)
    P = op.to_dense()
    assert ((P != 0).sum(axis=0) == 4).all()
    assert np.allclose(np.abs(P[P != 0]), 0.5)
    assert 0.4 < (P > 0).sum() / (P != 0).sum() < 0.6
    C = make_operator("countsketch", 32, 2000, seed=2).to_dense()
    assert ((C != 0).sum(axis=0) == 1).all() and set(np.unique(C)) == {-1.0, 0.0, 1.0}


def test_gaussian_variance():
    P = make_operator("gaussian", 200, 3000, seed=4).to_dense()
    assert abs(P.var() - 1 / 200) < 0.05 / 200
    assert abs(P.mean()) < 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_adjointness(kind):
    rng = np.random.default_rng(0)
    op = make_operator(kind, 30, 1234, seed=5, tile_size=100)
    x = rng.standard_normal((1234, 3))
    y = rng.standard_normal((30, 3))
    Px = op.matvec(da.from_array(x, chunks=(77, 3))).compute()
    Pty = op.rmatvec(y, chunks=200).compute()
    assert Pty.shape == (1234, 3) and Pty.chunks if hasattr(Pty, "chunks") else True
    np.testing.assert_allclose(np.sum(Px * y), np.sum(x * Pty), rtol=1e-10)
    np.testing.assert_allclose(op.rmatvec(y).compute(), op.to_dense().T @ y, atol=1e-12)


def test_operator_spec_round_trip_and_tokenize():
    from dask.base import tokenize

    op = make_operator("sparse_sign", 16, 500, seed=9)
    op2 = cf.SketchOperator.from_dict(op.to_dict())
    assert op2 == op and tokenize(op2) == tokenize(op)
    assert tokenize(make_operator("sparse_sign", 16, 500, seed=10)) != tokenize(op)
    np.testing.assert_array_equal(op2.to_dense(), op.to_dense())


def test_seed_kinds_accepted():
    a = make_operator("gaussian", 5, 50, seed=np.random.default_rng(0)).to_dense()
    b = make_operator("gaussian", 5, 50, seed=np.random.default_rng(0)).to_dense()
    np.testing.assert_array_equal(a, b)
    make_operator("gaussian", 5, 50, seed=np.random.SeedSequence(3))
    with pytest.raises(TypeError, match="seed must be"):
        make_operator("gaussian", 5, 50, seed="zero")


# ---------------------------------------------------------------------------- invariance
@settings(max_examples=25, deadline=None)
@given(
    rows=st.lists(st.integers(1, 120), min_size=1, max_size=6),
    cols=st.lists(st.integers(1, 17), min_size=1, max_size=4),
    kind=st.sampled_from(KINDS),
)
def test_chunking_invariance(rows, cols, kind):
    n, m = sum(rows), sum(cols)
    if n < 3:
        return
    X = _data(n, m, seed=n * 31 + m)
    d = max(1, min(10, n - 1))
    ref = cf.sketch(X, d, kind=kind, seed=7, tile_size=37).compute(progress=False)
    got = cf.sketch(
        da.from_array(X, chunks=(tuple(rows), tuple(cols))), d, kind=kind, seed=7, tile_size=37
    )
    assert got.data.chunks[1] == tuple(cols)  # sample chunks kept
    np.testing.assert_allclose(got.compute(progress=False), ref, rtol=1e-11, atol=1e-11)


def test_bitwise_repeatable_same_chunking_any_scheduler():
    X = da.from_array(_data(2000, 30, dtype=np.float32), chunks=(300, 10))
    sk = cf.sketch(X, 64, kind="gaussian", seed=1)
    a = sk.data.compute(scheduler="sync")
    b = sk.data.compute(scheduler="threads", num_workers=2)
    assert a.dtype == np.float32
    assert a.tobytes() == b.tobytes()


def test_multiprocess_cluster_bitwise(cluster_client):
    X = da.from_array(_data(3000, 24), chunks=(250, 8))
    sk = cf.sketch(X, 40, kind="expander", seed=2)
    local = sk.data.compute(scheduler="sync")
    dist = sk.compute(client=cluster_client, progress=False)
    assert local.tobytes() == dist.tobytes()
    # same answer when tasks are spread over both worker processes
    who = cluster_client.run(lambda: 1)
    assert len(who) == 2


def test_float32_in_float32_out_and_ints_to_float64():
    X32 = _data(dtype=np.float32)
    for kind in KINDS:
        assert cf.sketch(X32, 10, kind=kind).data.dtype == np.float32
    Xi = (X32 * 10).astype(np.int32)
    sk = cf.sketch(Xi, 10)
    assert sk.data.dtype == np.float64
    np.testing.assert_allclose(sk.compute(progress=False), sk.operator.to_dense() @ Xi)


# ---------------------------------------------------------------------------- single pass
class _CountingArray:
    """Array-like that counts the chunk reads dask makes."""

    def __init__(self, x):
        self.x = x
        self.shape = x.shape
        self.dtype = x.dtype
        self.ndim = x.ndim
        self.reads = 0
        self._lock = threading.Lock()

    def __getitem__(self, item):
        with self._lock:
            self.reads += 1
        return self.x[item]


def test_sketch_reads_each_chunk_once():
    src = _CountingArray(_data(1000, 60))
    X = da.from_array(src, chunks=(100, 20), fancy=False)
    n_chunks = X.npartitions
    sk = cf.sketch(X, 25, kind="sparse_sign", seed=0)
    src.reads = 0  # from_array may peek at a 0-size slice for its meta
    with dask.config.set(scheduler="threads"):
        sk.data.compute(optimize_graph=False)
    assert src.reads == n_chunks == 30


# ---------------------------------------------------------------------------- tensors
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_tensor_mode_sketch(mode):
    rng = np.random.default_rng(1)
    T = rng.standard_normal((40, 30, 20))
    Td = da.from_array(T, chunks=(15, 10, 7))
    sk = cf.sketch(Td, 8, kind="gaussian", seed=4, axis=mode)
    P = sk.operator.to_dense()
    expected = np.moveaxis(np.tensordot(P, T, axes=(1, mode)), 0, mode)
    np.testing.assert_allclose(sk.compute(progress=False), expected, atol=1e-12)
    for ax in range(3):
        if ax != mode:
            assert sk.data.chunks[ax] == Td.chunks[ax]


# ---------------------------------------------------------------------------- linearity
def test_merge_of_feature_blocks_equals_whole():
    X = _data(500, 30)
    whole = cf.sketch(X, 40, kind="sparse_sign", seed=11).compute(progress=False)
    a = cf.sketch(X[:180], 40, kind="sparse_sign", seed=11, n_features=500)
    b = cf.sketch(X[180:], 40, kind="sparse_sign", seed=11, n_features=500, feature_offset=180)
    assert not a.complete
    ab = a.merge(b)
    assert ab.complete
    np.testing.assert_allclose(ab.compute(progress=False), whole, atol=1e-12)
    with pytest.raises(InputError, match="overlap"):
        ab.merge(b)
    c = cf.sketch(X[180:], 40, kind="sparse_sign", seed=12, n_features=500, feature_offset=180)
    with pytest.raises(InputError, match="different operators"):
        a.merge(c)


def test_append_samples_equals_whole():
    X = _data(400, 50)
    whole = cf.sketch(X, 30, seed=1).compute(progress=False)
    sk = cf.sketch(X[:, :35], 30, seed=1).append_samples(X[:, 35:])
    assert sk.shape == (30, 50)
    np.testing.assert_allclose(sk.compute(progress=False), whole, atol=1e-12)


# ---------------------------------------------------------------------------- input + zarr
def test_open_zarr_read_only_native_chunks(tmp_path):
    path = tmp_path / "x.zarr"
    X = _data(600, 40, dtype=np.float32)
    z = zarr.create_array(str(path), shape=X.shape, chunks=(128, 16), dtype="float32")
    z[...] = X
    inp = cf.open_array(str(path))
    assert inp.chunks == ((128,) * 4 + (88,), (16, 16, 8))
    assert "x.zarr" in inp.source
    sk = cf.sketch(str(path), 20, seed=0)
    np.testing.assert_allclose(sk.compute(progress=False), sk.operator.to_dense() @ X, rtol=1e-5)
    z_ro = zarr.open_array(str(path), mode="r")
    assert cf.open_array(z_ro).shape == X.shape


def test_xarray_dims_coords_and_named_axis(tmp_path):
    X = _data(200, 12)
    xa = xr.DataArray(
        X, dims=("gene", "cell"),
        coords={"gene": [f"g{i}" for i in range(200)], "cell": np.arange(12) * 10},
        name="expr",
    ).chunk({"gene": 50, "cell": 5})
    sk = cf.sketch(xa, 16, seed=0, axis="gene")
    assert sk.dims == ("sketch_row", "cell") and sk.feature_dim == "gene"
    np.testing.assert_array_equal(sk.coords["cell"], np.arange(12) * 10)
    out = sk.to_zarr(tmp_path / "run.zarr", group="sketch")
    back = cf.Sketch.from_zarr(tmp_path / "run.zarr", group="sketch")
    assert out.endswith("run.zarr/sketch")
    assert back.operator == sk.operator and back.dims == sk.dims
    np.testing.assert_array_equal(back.coords["cell"], np.arange(12) * 10)
    np.testing.assert_array_equal(back.data.compute(), sk.compute(progress=False))
    ds = xr.open_zarr(tmp_path / "run.zarr", group="sketch", consolidated=False)
    assert ds["sketch"].dims == ("sketch_row", "cell")
    # features on axis 1, by name
    sk_t = cf.sketch(xa.T, 16, seed=0, axis="gene")
    np.testing.assert_allclose(sk_t.matrix.compute(), sk.compute(progress=False), atol=1e-12)


def test_xarray_zarr_group_variable(tmp_path):
    X = _data(100, 8)
    ds = xr.Dataset({"expr": (("gene", "cell"), X)}, coords={"cell": np.arange(8)})
    ds.to_zarr(tmp_path / "d.zarr", consolidated=False, zarr_format=3)
    inp = cf.open_array(str(tmp_path / "d.zarr"), feature_axis="gene")
    assert inp.dims == ("gene", "cell") and inp.feature_axis == 0
    np.testing.assert_array_equal(inp.coords["cell"], np.arange(8))


def test_to_zarr_refuses_overwrite_and_incomplete_is_refused(tmp_path):
    sk = cf.sketch(_data(), 10)
    sk.to_zarr(tmp_path / "s.zarr")
    with pytest.raises(StoreExistsError, match="overwrite=True"):
        sk.to_zarr(tmp_path / "s.zarr")
    sk.to_zarr(tmp_path / "s.zarr", overwrite=True)
    g = zarr.open_group(str(tmp_path / "s.zarr"), path="sketch", mode="r+")
    meta = dict(g.attrs["cfact"])
    meta["complete"] = False
    g.attrs["cfact"] = meta
    with pytest.raises(StoreNotFoundError, match="incomplete"):
        cf.Sketch.from_zarr(tmp_path / "s.zarr")


# ---------------------------------------------------------------------------- errors
def test_errors_are_clear(tmp_path):
    X = _data(100, 10)
    with pytest.raises(StoreNotFoundError, match="no Zarr store"):
        cf.open_array(str(tmp_path / "missing.zarr"))
    with pytest.raises(InputError, match="non-numeric"):
        cf.open_array(np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(InputError, match="out of range"):
        cf.sketch(X, 10, axis=2)
    with pytest.raises(RankError, match="1 <= n_components < 100"):
        cf.sketch(X, 100)
    with pytest.raises(RankError):
        cf.sketch(X, 0)
    with pytest.raises(InputError, match="unknown sketch kind"):
        cf.sketch(X, 10, kind="hadamard")
    with pytest.raises(InputError, match="unsupported input type"):
        cf.open_array({"a": 1})
    with pytest.raises(InputError, match="unknown chunk sizes"):
        xd = da.from_array(X, chunks=(50, 5))
        cf.sketch(xd[xd[:, 0] > 0.5], 10)
    with pytest.raises(InputError, match="empty"):
        cf.open_array(np.zeros((0, 4)))
    with pytest.raises(InputError, match="no dimension names"):
        cf.sketch(X, 10, axis="gene")


def test_nonfinite_names_the_chunk_and_opt_out():
    X = _data(400, 40)
    X[250, 33] = np.nan
    X[10, 1] = np.inf
    xd = da.from_array(X, chunks=(100, 20))
    with pytest.raises(NonFiniteError) as ei:
        cf.sketch(xd, 10).compute(progress=False)
    msg = str(ei.value)
    assert "check_finite=False" in msg
    assert "(2, 1)" in msg or "(0, 0)" in msg
    out = cf.sketch(xd, 10, check_finite=False).compute(progress=False)
    assert not np.isfinite(out).all()


def test_nonfinite_error_crosses_processes(cluster_client):
    X = _data(400, 40)
    X[250, 33] = np.nan
    xd = da.from_array(X, chunks=(100, 20))
    with pytest.raises(NonFiniteError, match=r"chunk \(2, 1\).*index \(250, 33\)"):
        cf.sketch(xd, 10).compute(client=cluster_client, progress=False)
