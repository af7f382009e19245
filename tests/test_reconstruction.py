"""Streamed reconstruction: round trip with coords, stats equal numpy's, atomic writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import cfact_dask as cf
from cfact_dask.datasets import planted_nmf
from cfact_dask.errors import InputError, StoreExistsError, StoreNotFoundError
from cfact_dask.reconstruction import is_complete, open_reconstruction, reconstruct


@pytest.fixture(scope="module")
def data():
    M, W, H = planted_nmf(300, 200, 4, random_state=0)
    X = xr.DataArray(
        da.from_array(M, chunks=(70, 64)),
        dims=("gene", "cell"),
        coords={"gene": np.arange(300) * 10, "cell": np.arange(200) + 0.5},
        name="expr",
    )
    return M, W, H, X


def _chunk_stats(M, R, chunks):
    rows = np.cumsum((0,) + chunks[0])
    cols = np.cumsum((0,) + chunks[1])
    out = np.zeros((len(chunks[0]), len(chunks[1])))
    for i in range(len(chunks[0])):
        for j in range(len(chunks[1])):
            a, b = (
                M[rows[i] : rows[i + 1], cols[j] : cols[j + 1]],
                R[rows[i] : rows[i + 1], cols[j] : cols[j + 1]],
            )
            out[i, j] = np.linalg.norm(a - b) / np.linalg.norm(a)
    return out


def test_round_trip_with_coords_and_stats(tmp_path, data):
    M, W, H, X = data
    target = tmp_path / "rec.zarr"
    st = reconstruct(da.from_array(W, chunks=100), H, target, like=X, compare_to=X, progress=False)
    R = W @ H
    assert st.relative_error == pytest.approx(np.linalg.norm(M - R) / np.linalg.norm(M), rel=1e-12)
    np.testing.assert_allclose(st.chunk_relative_error, _chunk_stats(M, R, X.chunks), rtol=1e-10)
    assert st.max_abs_error == pytest.approx(np.abs(M - R).max())
    assert st.chunk_relative_error.shape == (5, 4) and st.chunks == (70, 64)
    ds = xr.open_zarr(target, consolidated=False)
    out = ds["reconstruction"]
    assert out.dims == ("gene", "cell")
    np.testing.assert_array_equal(out["gene"].values, X["gene"].values)
    np.testing.assert_array_equal(out["cell"].values, X["cell"].values)
    np.testing.assert_allclose(out.values, R, rtol=1e-12)
    assert out.encoding["chunks"] == (70, 64)  # the input's grid, aligned with Zarr chunks
    assert is_complete(target) and ds.attrs["cfact"]["relative_error"] == st.relative_error
    assert open_reconstruction(target).shape == (300, 200)
    assert not [p for p in os.listdir(tmp_path) if "cfact-tmp" in p]


def test_refuses_overwrite_and_replaces_when_asked(tmp_path, data):
    M, W, H, X = data
    target = tmp_path / "rec.zarr"
    reconstruct(W, H, target, like=X, progress=False)
    with pytest.raises(StoreExistsError, match="overwrite=True"):
        reconstruct(W, H, target, like=X, progress=False)
    reconstruct(2 * W, H, target, like=X, overwrite=True, progress=False)
    np.testing.assert_allclose(open_reconstruction(target).values, 2 * W @ H)
    # a second group in the same store leaves the first alone
    reconstruct(W, H, target, like=X, group="again", progress=False)
    assert is_complete(target) and is_complete(target, "again")
    with pytest.raises(StoreExistsError):
        reconstruct(W, H, target, like=X, group="again", progress=False)
    with pytest.raises(StoreNotFoundError):
        open_reconstruction(tmp_path / "missing.zarr")


def test_feature_axis_1_and_irregular_chunks(tmp_path, data):
    M, W, H, _ = data
    X = da.from_array(M.T, chunks=((50, 50, 100), (120, 90, 90)))  # samples x features
    inp = cf.open_array(X, feature_axis=1)
    st = reconstruct(W, H, tmp_path / "t.zarr", like=inp, compare_to=inp, progress=False)
    assert st.relative_error == pytest.approx(np.linalg.norm(M - W @ H) / np.linalg.norm(M))
    assert st.chunk_relative_error.shape == (3, 3)
    out = xr.open_zarr(tmp_path / "t.zarr", consolidated=False)["reconstruction"]
    assert out.dims == ("sample", "feature") and out.encoding["chunks"] == (50, 30)
    np.testing.assert_allclose(out.values, (W @ H).T)
    with pytest.raises(InputError, match="do not fit"):
        reconstruct(W[:10], H, tmp_path / "u.zarr", like=inp)


def test_interrupted_write_never_looks_complete(tmp_path):
    target = tmp_path / "big.zarr"
    script = textwrap.dedent(f"""
        import time, numpy as np, dask.array as da
        from cfact_dask.reconstruction import reconstruct
        def slow(b):
            time.sleep(0.05)
            return b
        X = da.ones((400, 400), chunks=(20, 400)).map_blocks(slow, dtype=float)
        W = np.ones((400, 1)); H = np.ones((1, 400))
        import dask
        with dask.config.set(scheduler="threads", num_workers=1):
            reconstruct(W, H, {str(target)!r}, like=X, compare_to=X, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        started = False
        while time.monotonic() < deadline and not started:
            tmps = [p for p in os.listdir(tmp_path) if "cfact-tmp" in p]
            started = any(
                os.path.exists(os.path.join(tmp_path, p, "reconstruction", "c")) for p in tmps
            )
            time.sleep(0.05)
        assert started, "the writer never started writing chunks"
        assert proc.poll() is None, "the writer finished before it could be interrupted"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not target.exists()
    assert not is_complete(target)
    for p in os.listdir(tmp_path):
        assert not is_complete(tmp_path / p)
    with pytest.raises(StoreNotFoundError):
        open_reconstruction(target)
    # the leftover temporary store does not block a new run
    reconstruct(np.ones((40, 1)), np.ones((1, 30)), target, like=np.ones((40, 30)), progress=False)
    assert is_complete(target)


def test_reconstruct_on_cluster(tmp_path, data, cluster_client):
    M, W, H, X = data
    st = reconstruct(
        W, H, tmp_path / "c.zarr", like=X, compare_to=X, client=cluster_client, progress=False
    )
    assert st.relative_error == pytest.approx(np.linalg.norm(M - W @ H) / np.linalg.norm(M))
    np.testing.assert_allclose(open_reconstruction(tmp_path / "c.zarr").values, W @ H)
