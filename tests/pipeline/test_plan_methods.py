"""`cfact plan` for every method (issue 16): passes, bytes and peaks per task / worker from the
method's own model (pipeline._plan_methods), the memory check before a run, and the CLI.

Planning reads metadata only: the inputs here are empty Zarr arrays of the right shape and
chunks (no chunk is ever written or read)."""

from __future__ import annotations

import json
import math

import dask
import pytest
import yaml
import zarr

import cfact_dask as cf
from cfact_dask.pipeline._methods import FACTORIZATIONS, Factorization, method_options
from cfact_dask.pipeline._plan import WORKER_BASE_BYTES
from cfact_dask.pipeline._plan_methods import METHOD_MODELS, plan_method

MiB = 2**20
METHODS = ("svd", "sparse-pca", "cp", "dgd-local", "lp", "messi")

@pytest.fixture
def job_methods():
    """Every method the tests plan is a job method of the registry (issue 16)."""
    missing = [m for m in METHODS if m not in FACTORIZATIONS or not FACTORIZATIONS.get(m).job]
    assert not missing, missing
    yield


def _array(path, shape, chunks):
    zarr.create_array(path, shape=shape, chunks=chunks, dtype="float32")
    return str(path)


@pytest.fixture
def inputs(tmp_path):
    return {
        "matrix": _array(tmp_path / "m.zarr", (65536, 1024), (4096, 1024)),  # 256 MiB, 16 MiB
        "rows": _array(tmp_path / "r.zarr", (262144, 256), (16384, 256)),
        "tensor": _array(tmp_path / "t.zarr", (256, 256, 1024), (16, 256, 1024)),
    }


def _input_of(method):
    return {"cp": "tensor", "lp": "rows", "messi": "rows"}.get(method, "matrix")


_OPTIONS = {
    "svd": {}, "sparse-pca": {"max_iter": 3}, "cp": {"max_iter": 5},
    "dgd-local": {"n_nodes": 4, "max_iter": 50}, "lp": {"max_iter": 5},
    "messi": {"n_subspaces": 4, "n_init": 2, "max_iter": 5},
}


def _job(path, out, method, rank=8, reconstruct=True, **opts):
    """A job with the options the method's registry entry takes (others are dropped)."""
    keys = method_options(method)
    factor = {"method": method, "rank": rank, **{k: v for k, v in opts.items() if k in keys}}
    return {"cfact": {"input": {"path": path}, "factor": factor,
                      "output": {"path": str(out), "reconstruct": reconstruct}}}


def _model(path, method, rank=8, *, nw=2, th=1, limit=8 * 2**30, reconstruct=False, **opts):
    """The method's model on an unvalidated job (options read by the functions' names)."""
    job = {"input": {"path": path}, "factor": {"method": method, "rank": rank, **opts},
           "output": {"reconstruct": reconstruct}}
    return plan_method(job, cf.open_array(path), nw, th, limit)


# ---------------------------------------------------------------------------- every method
@pytest.mark.parametrize("method", METHODS)
def test_a_plan_of_every_method_validates_and_prints(job_methods, inputs, tmp_path, method):
    path = inputs[_input_of(method)]
    job = _job(path, tmp_path / "o.zarr", method, **_OPTIONS[method])
    p = cf.plan(job, n_workers=2, threads_per_worker=1, memory_limit=8 * 2**30)
    assert p.method == method
    assert set(p.worker_peak) == set(p.task_peak) == {"factor", "reconstruct"}
    # ℓp's and MESSI's models read the input themselves: the error statistics read it again
    assert p.passes["reconstruct"] == (2 if method in ("lp", "messi") else 1)
    assert p.passes["factor"] >= 1
    nbytes = math.prod(cf.open_array(path).shape) * 4
    assert p.bytes_read == int(sum(p.passes.values()) * nbytes)
    for stage, peak in p.worker_peak.items():
        # one thread: the worker holds at least its task and its own process
        assert peak >= p.task_peak[stage] + WORKER_BASE_BYTES - 1
        assert peak < 8 * 2**30 and not p.warnings
    text = str(p)
    assert f"method: {method}" in text and "per task / per worker" in text
    json.dumps(p.to_dict())  # the JSON report of `cfact plan --json`
    # the same plan when the input is read on more workers: no stage needs more per worker
    q = cf.plan(job, n_workers=4, threads_per_worker=1, memory_limit=8 * 2**30)
    assert all(q.worker_peak[k] <= v for k, v in p.worker_peak.items())


@pytest.mark.parametrize("method", METHODS)
def test_cfact_plan_of_a_job_of_every_method_exits_0(job_methods, inputs, tmp_path, method):
    from click.testing import CliRunner

    from cfact_dask.cli import cli

    jf = tmp_path / "job.yaml"
    jf.write_text(yaml.safe_dump(_job(inputs[_input_of(method)], tmp_path / "o.zarr", method,
                                      **_OPTIONS[method])))
    r = CliRunner().invoke(cli, ["plan", str(jf), "--workers", "2", "--threads", "1",
                                 "--memory-limit", "4GiB"])
    assert r.exit_code == 0, r.output
    assert "per worker" in r.output and method in r.output
    r = CliRunner().invoke(cli, ["plan", str(jf), "--workers", "2", "--memory-limit", "64MiB"])
    assert r.exit_code == 0 and "WARNING" in r.output  # too small: said, with the fix


# ---------------------------------------------------------------------------- scaling
def test_svd_one_pass_reads_once_and_scales_with_chunks_and_threads(tmp_path):
    a = _array(tmp_path / "a.zarr", (65536, 1024), (4096, 1024))
    b = _array(tmp_path / "b.zarr", (131072, 1024), (8192, 1024))  # twice the rows and chunk
    pa, pb = _model(a, "svd"), _model(b, "svd")
    assert pa.passes == {"factor": 1} and _model(a, "svd", passes=2).passes == {"factor": 2}
    assert pb.bytes_read == 2 * pa.bytes_read
    assert pb.task_peak["factor"] > 1.8 * pa.task_peak["factor"]
    two = _model(a, "svd", th=2)
    assert two.worker_peak["factor"] - pa.worker_peak["factor"] == pa.task_peak["factor"]
    assert pa.details["range sketch k"] == 8 + 20 and pa.details["co-range sketch l"] > 8 * 28


def test_sparse_pca_passes_and_its_initial_svd_held_across_the_workers(tmp_path):
    a = _array(tmp_path / "a.zarr", (65536, 1024), (4096, 1024))
    p3, p6 = _model(a, "sparse-pca", max_iter=3), _model(a, "sparse-pca", max_iter=6)
    # the squared norm, the initial tall-skinny QR, one shared read per iteration, and the
    # mean kept for the factors
    assert p3.passes == {"factor": 1 + 1 + 3 + 1} and p6.passes == {"factor": 1 + 1 + 6 + 1}
    assert p3.iterations == {"factor": 3} and p3.passes_per_iteration == {"factor": 1}
    # not centred: the code and dictionary steps read the data each, and no mean
    raw = _model(a, "sparse-pca", max_iter=3, center=False)
    assert raw.passes == {"factor": 1 + 1 + 2 * 3} and raw.passes_per_iteration == {"factor": 2}
    # the first-level Q of the QR is the matrix in float64, spread over the workers
    init = p3.details["initial SVD per worker bytes"]
    assert init > 65536 * 1024 * 8 / 2
    four = _model(a, "sparse-pca", max_iter=3, nw=4)
    assert four.details["initial SVD per worker bytes"] < init - 65536 * 1024 * 8 / 8
    # samples in several chunks: a randomized SVD with power iterations (6 passes) instead
    c = _array(tmp_path / "c.zarr", (65536, 1024), (4096, 256))
    assert _model(c, "sparse-pca", max_iter=3).passes == {"factor": 1 + 6 + 3 + 1}


def test_cp_persists_a_small_tensor_and_reads_a_large_one_every_sweep(tmp_path):
    small = _array(tmp_path / "s.zarr", (256, 256, 1024), (16, 256, 1024))  # 256 MiB
    large = _array(tmp_path / "l.zarr", (1024, 256, 1024), (16, 256, 1024))  # 1 GiB
    ps, pl = _model(small, "cp", 5, max_iter=5), _model(large, "cp", 5, max_iter=5)
    sweep = 1 + 3 + 3 * 5  # the norm, a Gram per mode, three MTTKRPs per sweep
    assert ps.passes == {"factor": 1} and ps.memory_passes == {"factor": sweep}
    assert pl.passes == {"factor": sweep} and pl.memory_passes == {"factor": 0}
    assert ps.details["tensor persisted on the workers"] is True
    assert not pl.details["tensor persisted on the workers"]
    # the persisted share is on the workers: half the tensor each (plus a chunk of imbalance)
    assert ps.worker_peak["factor"] > WORKER_BASE_BYTES + 128 * MiB
    # a sketched mode: one read, the sweeps on the small sketch, and (recovery: refit, the
    # default) one more read for the sketched mode's factor
    sk = _model(large, "cp", 5, max_iter=5, sketch_mode=2, sketch_size=64)
    assert sk.passes == {"factor": 2} and sk.worker_peak["factor"] < pl.worker_peak["factor"]
    assert sk.details["sketched tensor bytes"] == 1024 * 256 * 64 * 4
    # a sparse recovery reads no more than the sketch pass
    sparse = _model(large, "cp", 5, max_iter=5, sketch_mode=2, sketch_size=64,
                    recovery="nnlasso")
    assert sparse.passes == {"factor": 1}
    # the job's own sketch section, the way the CP pipeline may take it, is read too
    job = {"input": {"path": large}, "factor": {"method": "cp", "rank": 5, "max_iter": 5},
           "sketch": {"n_components": 64, "mode": 2}, "output": {"reconstruct": False}}
    assert plan_method(job, cf.open_array(large), 2, 1, None).passes == {"factor": 2}


def test_cp_model_uses_the_solvers_thresholds():
    from cfact_dask.factor import _cp
    from cfact_dask.pipeline import _plan_methods as pm

    assert pm._CP_IN_MEMORY_ENTRIES == _cp._IN_MEMORY_ENTRIES
    assert pm._CP_PERSIST_BYTES == _cp._PERSIST_BYTES
    assert pm._CP_GRAM_INIT_MAX == _cp._GRAM_INIT_MAX


def test_dgd_local_memory_per_worker_grows_with_its_nodes(tmp_path):
    """Node blocks of 64 MiB (float64): 1, 2, 4 nodes per worker on 2 workers."""
    n, w = 8192, 1024
    peaks, held = [], []
    for J in (2, 4, 8):
        path = _array(tmp_path / f"d{J}.zarr", (n, J * w), (n, w))  # one chunk per node
        p = _model(path, "dgd-local", 10, n_nodes=J, max_iter=100)
        assert p.details["nodes per worker"] == J // 2
        assert p.details["per node bytes"] >= n * w * 8
        assert p.passes == {"factor": 1} and p.memory_passes == {"factor": 100}
        peaks.append(p.worker_peak["factor"])
        held.append(p.details["data held per worker bytes"])
    assert held == [n * w * 8 * k for k in (1, 2, 4)]
    # linear in the nodes per worker: each node adds its block
    d1, d2 = peaks[1] - peaks[0], peaks[2] - peaks[1]
    assert d1 >= n * w * 8 and d2 == pytest.approx(2 * d1, rel=0.05)


def test_dgd_local_nodes_sharing_an_input_chunk_each_read_it(tmp_path):
    # chunks span all columns: every node reads every chunk for its columns
    path = _array(tmp_path / "wide.zarr", (65536, 1024), (4096, 1024))
    assert _model(path, "dgd-local", 10, n_nodes=4).passes == {"factor": 4}
    # one column chunk per node: one read
    path = _array(tmp_path / "tall.zarr", (65536, 1024), (65536, 256))
    assert _model(path, "dgd-local", 10, n_nodes=4).passes == {"factor": 1}


def test_messi_memory_grows_with_its_subspaces(tmp_path):
    """Each chunk's partial holds n_init × n_subspaces D × D scatters, and the tree sum
    gathers split_every of them on a worker."""
    path = _array(tmp_path / "e.zarr", (262144, 512), (8192, 512))
    ps = [_model(path, "messi", 8, n_subspaces=k, n_init=2, max_iter=5) for k in (2, 4, 8)]
    parts = [p.details["partial per chunk bytes"] for p in ps]
    assert parts[1] == pytest.approx(2 * parts[0], rel=0.01)
    assert parts[2] == pytest.approx(4 * parts[0], rel=0.01)
    peaks = [p.worker_peak["factor"] for p in ps]
    assert peaks[0] < peaks[1] < peaks[2]
    # the growth is the partials': split_every + 1 of them on the summing worker, at least
    split = dask.config.get("cfact.sketch.split-every", 8)
    assert peaks[2] - peaks[1] >= (split + 1) * (parts[2] - parts[1])
    # the initial split, an EM pass per iteration, and the labels and the coefficients written
    # into factors/ (each from its own pass); the reconstruction reads the input twice
    assert all(p.passes == {"factor": 1 + 5 + 2} for p in ps)
    assert _model(path, "messi", 8, n_subspaces=4, n_init=2, max_iter=5,
                  reconstruct=True).passes == {"factor": 1 + 5 + 2, "reconstruct": 2}
    more = _model(path, "messi", 8, n_subspaces=4, n_init=4, max_iter=5)
    assert more.details["partial per chunk bytes"] == pytest.approx(2 * parts[1], rel=0.01)


def test_lp_passes_per_solver_and_its_scatter_partials(tmp_path):
    path = _array(tmp_path / "e.zarr", (262144, 256), (16384, 256))
    irls, ell = _model(path, "lp"), _model(path, "lp", solver="ellipsoid")
    # one pass for AᵀA, one per iteration (defaults: 50 IRLS, 100 ellipsoid cuts), and one
    # for the coefficients A V written into factors/
    assert irls.passes == {"factor": 52} and ell.passes == {"factor": 102}
    assert _model(path, "lp", p=2.0).passes == {"factor": 2}  # p = 2: the SVD pass alone
    assert _model(path, "lp", max_iter=3, reconstruct=True).passes == {
        "factor": 1 + 3 + 1, "reconstruct": 2}
    assert irls.details["partial per chunk bytes"] == (3 + 256 * 256) * 8
    wide = _array(tmp_path / "w.zarr", (65536, 1024), (4096, 1024))
    assert _model(wide, "lp").worker_peak["factor"] > irls.worker_peak["factor"]


# ---------------------------------------------------------------------------- the check
@pytest.mark.parametrize("method, limit, stage", [("svd", "300MiB", "reconstruct"),
                                                   ("dgd-local", "512MiB", "factor")])
def test_run_job_refuses_a_method_whose_plan_exceeds_the_workers_before_compute(
        inputs, tmp_path, method, limit, stage):
    """Workers whose own process fits but not the stage's planned peak: refused, naming the
    stage, before a cluster is started or anything is written."""
    from dask.utils import parse_bytes

    from cfact_dask.pipeline._plan import check_memory

    out = tmp_path / "run.zarr"
    job = _job(inputs["matrix"], out, method, **_OPTIONS[method])
    with dask.config.set({"cfact.cluster.embedded": "always", "cfact.cluster.n-workers": 2,
                          "cfact.cluster.threads-per-worker": 1,
                          "cfact.cluster.memory-limit": limit}), \
            pytest.raises(cf.errors.InsufficientMemoryError) as e:
        cf.run_job(job)
    msg = str(e.value)
    assert f"({method})" in msg and f"stage {stage!r}" in msg and "memory-check" in msg
    assert "'adapt'" not in msg  # adapt is Factorize-Recover's; not offered here
    assert not out.exists()  # refused before anything was computed or written
    p = cf.plan(job, n_workers=2, threads_per_worker=1, memory_limit=parse_bytes(limit))
    assert WORKER_BASE_BYTES < 0.95 * parse_bytes(limit) < p.worker_peak[stage]
    check_memory(p, mode="off")
    roomy = cf.plan(job, n_workers=2, threads_per_worker=1, memory_limit=4 * 2**30)
    check_memory(roomy, mode="refuse")  # fits: nothing said


def test_a_method_without_a_model_is_named(tmp_path, inputs):
    FACTORIZATIONS.register("mine", Factorization("mine", iterative=False))
    try:
        with pytest.raises(cf.errors.ConfigError, match="no model of factor.method 'mine'"):
            cf.plan(_job(inputs["matrix"], tmp_path / "o.zarr", "mine"), n_workers=2)
    finally:
        FACTORIZATIONS.unregister("mine")
    assert set(METHODS) <= set(METHOD_MODELS)
