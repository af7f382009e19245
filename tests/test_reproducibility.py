"""Reproducibility (issue 8, item 7): the same job on 1 vs 2 workers, threads vs processes and two
input chunkings gives the same result, and the provenance attrs make a run repeatable.

What the invariants promise (DESIGN.md, invariant 4): the sketch is bitwise repeatable for the
same chunking whatever the scheduler or the number of workers, and equal to float rounding across
chunkings. Everything downstream of the sketch runs the same arithmetic on the same numbers, so
the whole run is compared bitwise for the same chunking, and to a rounding-level tolerance across
chunkings.
"""

from __future__ import annotations

import warnings

import dask
import numpy as np
import pytest
import zarr
from conftest import process_cluster

import cfact_dask as cf
from cfact_dask.datasets import planted_nmf_zarr

N, M, R, D = 300, 200, 3, 90


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same matrix in two chunkings (A: 60 x 50, B: 40 x 75 with a ragged last block)."""
    base = tmp_path_factory.mktemp("repro")
    a = str(base / "a.zarr")
    planted_nmf_zarr(a, N, M, R, density=0.1, noise=0.05, random_state=5, chunks=(60, 50),
                     progress=False)
    values = np.asarray(zarr.open_array(a, path="M")[...])
    b = str(base / "b.zarr")
    z = zarr.create_array(b, shape=values.shape, chunks=(40, 75), dtype=values.dtype)
    z[...] = values
    return {"A": a, "B": b}


@pytest.fixture(scope="module")
def one_worker():
    with process_cluster(1, memory_limit="1GiB") as client:
        yield client


def _open(stores, which):
    return cf.open_array(stores[which], variable="M") if which == "A" else cf.open_array(
        stores[which])


def _run(X, client, out=None, **params):
    kw = dict(sketch=dict(n_components=D, kind="expander", seed=11),
              factor=dict(max_iter=150, random_state=4), recover="lstsq-data")
    kw.update(params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cf.ConvergenceWarning)
        warnings.simplefilter("ignore", cf.RecoveryWarning)
        with dask.config.set(scheduler="threads") if client is None else _null():
            res = cf.factorize_recover(X, R, client=client, out=out, progress=False, **kw)
    get = (lambda a: a.compute(scheduler="threads")) if client is None else (
        lambda a: client.compute(a).result())
    W = get(res.W)
    H = res.H if isinstance(res.H, np.ndarray) else get(res.H)
    return res, np.asarray(W), np.asarray(H)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _sketch(X, client):
    sk = cf.sketch(X, D, kind="expander", seed=11)
    if client is None:
        return sk.data.compute(scheduler="threads")
    return client.compute(sk.data).result()


def test_sketch_bitwise_across_schedulers_and_workers(stores, one_worker, cluster_client):
    X = _open(stores, "A")
    threads = _sketch(X, None)
    sync = cf.sketch(X, D, kind="expander", seed=11).data.compute(scheduler="sync")
    w1 = _sketch(X, one_worker)
    w2 = _sketch(X, cluster_client)
    for other in (sync, w1, w2):
        np.testing.assert_array_equal(other, threads)


def test_sketch_across_chunkings_to_rounding(stores):
    a = _sketch(_open(stores, "A"), None)
    b = _sketch(_open(stores, "B"), None)
    assert not np.shares_memory(a, b)
    # float32 data gives a float32 sketch: partial sums in a different order differ by a few ulp
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 * np.abs(a).max())


@pytest.mark.timeout(240)
def test_pipeline_same_on_1_vs_2_workers_threads_vs_processes(stores, one_worker,
                                                              cluster_client, tmp_path):
    X = _open(stores, "A")
    res_t, W_t, H_t = _run(X, None, out=str(tmp_path / "t.zarr"))
    res_1, W_1, H_1 = _run(X, one_worker, out=str(tmp_path / "w1.zarr"))
    res_2, W_2, H_2 = _run(X, cluster_client, out=str(tmp_path / "w2.zarr"))
    for W, H, res in ((W_1, H_1, res_1), (W_2, H_2, res_2)):
        np.testing.assert_array_equal(res.factors.W, res_t.factors.W)  # W̃ on the sketch
        np.testing.assert_array_equal(H, H_t)
        np.testing.assert_array_equal(W, W_t)
        assert res.factors.history == res_t.factors.history
    # the stored sketches too
    for name in ("w1", "w2"):
        np.testing.assert_array_equal(
            cf.Sketch.from_zarr(str(tmp_path / f"{name}.zarr")).compute(progress=False),
            cf.Sketch.from_zarr(str(tmp_path / "t.zarr")).compute(progress=False))


@pytest.mark.timeout(240)
def test_pipeline_same_across_input_chunkings(stores):
    _, W_a, H_a = _run(_open(stores, "A"), None)
    _, W_b, H_b = _run(_open(stores, "B"), None)
    # 150 solver iterations from float32 sketches that differ in the last bits
    np.testing.assert_allclose(H_b, H_a, rtol=1e-5, atol=1e-5 * np.abs(H_a).max())
    np.testing.assert_allclose(W_b, W_a, rtol=1e-5, atol=1e-5 * np.abs(W_a).max())


def test_provenance_attrs_make_the_run_repeatable(stores, tmp_path):
    X = _open(stores, "A")
    out = str(tmp_path / "run.zarr")
    res, W, H = _run(X, None, out=out)
    root = zarr.open_group(out, mode="r")
    meta = root.attrs["cfact"]
    assert meta["type"] == "run" and meta["complete"]
    assert meta["cfact_dask"] == cf.__version__
    params = meta["params"]
    assert params["rank"] == R
    assert params["sketch"]["seed"] == 11 and params["sketch"]["n_components"] == D
    assert params["sketch"]["kind"] == "expander"
    assert params["factor"]["random_state"] == 4 and params["factor"]["max_iter"] == 150
    assert params["recover"]["method"] == "lstsq-data"
    assert params["input"]["shape"] == [N, M]
    assert params["input"]["chunks"] == [[60] * 5, [50] * 4]
    assert meta["report"]["dask"] == dask.__version__
    prov = root["sketch"].attrs["cfact"]["provenance"]
    for key in ("cfact_dask", "dask", "zarr", "numpy", "seed", "source", "created"):
        assert key in prov, key
    assert prov["seed"] == 11
    op = root["sketch"].attrs["cfact"]["operator"]
    assert op["seed"] == 11 and op["n_components"] == D
    fparams = root["factors"].attrs["cfact"]["params"]
    assert fparams["random_state"] == 4 and fparams["rank"] == R
    # a second run built only from the recorded parameters gives the same numbers
    again, W2, H2 = _run(X, None, sketch=params["sketch"], factor=params["factor"],
                         recover=params["recover"])
    np.testing.assert_array_equal(W2, W)
    np.testing.assert_array_equal(H2, H)
