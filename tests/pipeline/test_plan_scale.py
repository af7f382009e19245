"""`cfact plan` at scale (issue #18): passes, bytes per worker, scheduler tasks per pass and the
client's memory for an input far larger than this machine, planned from its metadata alone."""

from __future__ import annotations

import warnings

import dask
import numpy as np
import pytest
import zarr

import cfact_dask as cf


def _job(path, out, **recover):
    return {"cfact": {"input": {"path": str(path)}, "sketch": {"n_components": 2000},
                      "factor": {"rank": 20}, "recover": {"method": "lstsq-data", **recover},
                      "output": {"path": str(out), "reconstruct": True}}}


def test_plan_of_a_10_tb_input_on_1000_workers(tmp_path):
    # 11 TB of float32, metadata only: planning reads no chunk
    z = zarr.create_array(tmp_path / "big.zarr", shape=(2**31, 1280), chunks=(2**15, 1024),
                          dtype="float32")
    assert z.nbytes > 10e12
    p = cf.plan(_job(tmp_path / "big.zarr", tmp_path / "run.zarr"), n_workers=1000,
                threads_per_worker=4, memory_limit=16 * 2**30)
    n_chunks = 2**16 * 2
    assert p.n_chunks == n_chunks
    assert p.passes == {"sketch": 1, "recover": 1, "reconstruct": 1}
    assert p.bytes_read == 3 * z.nbytes
    assert p.bytes_per_worker == 3 * z.nbytes // 1000
    # tasks grow linearly with the chunks, a few per chunk
    assert set(p.tasks) == {"sketch", "recover", "reconstruct"}
    assert 2 * n_chunks <= p.tasks["sketch"] <= 3 * n_chunks
    assert p.client_peak == max(p.tasks.values()) * 6 * 2**10
    # ~5 GiB of graph on the client at 131 072 chunks of 128 MiB: said, with the fix
    assert any("larger input chunks" in w for w in p.warnings)
    text = str(p)
    assert "per worker" in text and "scheduler tasks per pass" in text
    d = p.to_dict()
    assert d["tasks_per_pass"] == p.tasks and d["client_peak_bytes"] == p.client_peak


def test_client_memory_does_not_grow_with_chunk_bytes(tmp_path):
    """The same chunk count with 8x larger chunks: same tasks, same client memory."""
    small = zarr.create_array(tmp_path / "s.zarr", shape=(2**20, 512), chunks=(2**14, 512),
                              dtype="float32")
    large = zarr.create_array(tmp_path / "l.zarr", shape=(2**23, 512), chunks=(2**17, 512),
                              dtype="float32")
    ps, pl = (cf.plan(_job(z.store_path.store.root, tmp_path / "o.zarr"), n_workers=8,
                      threads_per_worker=1, memory_limit=64 * 2**30) for z in (small, large))
    assert ps.n_chunks == pl.n_chunks == 64
    assert ps.tasks == pl.tasks and ps.client_peak == pl.client_peak
    assert pl.bytes_read == 8 * ps.bytes_read


@pytest.mark.parametrize("rows", [64, 16])
def test_planned_sketch_tasks_match_the_real_graph(tmp_path, rows):
    X = np.random.default_rng(0).random((1024, 256), dtype=np.float32)
    z = zarr.create_array(tmp_path / "x.zarr", shape=X.shape, chunks=(rows, 64),
                          dtype="float32")
    z[...] = X
    p = cf.plan(_job(tmp_path / "x.zarr", tmp_path / "o.zarr"), n_workers=2,
                threads_per_worker=1, memory_limit=2**30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = cf.sketch(cf.open_array(str(tmp_path / "x.zarr")), 64, seed=0)
    (opt,) = dask.optimize(sk.data)
    real = len(opt.__dask_graph__())
    assert p.n_chunks == (1024 // rows) * 4
    assert 0.8 * real <= p.tasks["sketch"] <= 1.25 * real
