"""Reliability (issue 8): worker failures, whole-job interruption and resume, atomic outputs.

* Item 1 — a worker process of a real multi-process ``LocalCluster`` is SIGKILLed (by pid, from
  the test) in the middle of (a) a sketch pass, (b) an iterative NMF on raw chunked data, (d) a
  streamed reconstruction write; each job completes and equals the uninterrupted run. (c) DGD+LOCAL
  with a killed worker is ``tests/test_dgd.py::test_killed_worker_run_continues_and_converges``.
* Item 2 — ``python -m cfact_dask.cli run job.yaml`` is SIGKILLed mid-factorization and rerun
  with ``--resume``; a resume with changed parameters is refused.
* Item 3 — the input is never written; an interrupted output never looks complete; nothing is
  overwritten without ``--overwrite``; disk-full and permission errors end with a clear error and
  leave earlier stages intact.

The clusters here are our own (workers get killed), not the shared ``cluster_client`` fixture.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings

import cloudpickle
import dask
import dask.array as da
import numpy as np
import pytest
import yaml
import zarr
from conftest import process_cluster, tree_hash

import cfact_dask as cf
from cfact_dask.datasets import planted_nmf_zarr
from cfact_dask.errors import StoreExistsError, StoreNotFoundError
from cfact_dask.factor._nmf import NMFResult
from cfact_dask.reconstruction import is_complete, open_reconstruction

# the slow block functions below run on worker processes, which cannot import this test module
cloudpickle.register_pickle_by_value(sys.modules[__name__])

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "DASK_CFACT__CLUSTER__EMBEDDED": "never"}


# ------------------------------------------------------------------------------ helpers
_tree_hash = tree_hash


def _slow_block(block, marker_dir, delay):
    """Identity that leaves a marker file per call (progress seen from the test) and sleeps."""
    open(os.path.join(marker_dir, f"{os.getpid()}-{uuid.uuid4().hex}"), "w").close()
    time.sleep(delay)
    return block


def _slow(x: da.Array, marker_dir: str, delay: float) -> da.Array:
    return x.map_blocks(_slow_block, marker_dir, delay, dtype=x.dtype, meta=np.empty((0,) * x.ndim,
                                                                                    x.dtype))


def _markers(marker_dir: str) -> int:
    return len(os.listdir(marker_dir))


def _kill_a_worker_when(client, marker_dir: str, count: int, timeout: float = 120.0):
    """SIGKILL one worker process (by pid) from a thread once ``count`` markers exist, at the
    moment it starts a task (a new marker of its own): its running task is then lost for sure
    and must run again. Killed between tasks, a worker may hold nothing the graph still needs
    (its results already summed elsewhere), and nothing would be recomputed."""
    pids = client.run(os.getpid)
    pid = pids[sorted(pids)[-1]]
    killed: list[int] = []

    def own() -> set[str]:
        return {f for f in os.listdir(marker_dir) if f.startswith(f"{pid}-")}

    def watch():
        t0 = time.time()
        seen = None
        while time.time() - t0 < timeout:
            if seen is None and _markers(marker_dir) >= count:
                seen = own()
            if seen is not None and own() - seen:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.002)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t, killed


@pytest.fixture(scope="module")
def killable():
    """Our own 2-worker process cluster; the nannies restart killed workers."""
    with process_cluster(2, memory_limit="1GiB") as client:
        yield client


@pytest.fixture
def client(killable):
    killable.wait_for_workers(2, timeout=60)
    return killable


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("rel") / "input.zarr"
    planted_nmf_zarr(str(path), 240, 200, 3, density=0.1, noise=0.05, random_state=2,
                     chunks=(20, 50), progress=False)
    return str(path)


# ------------------------------------------------------------------------------ 1. worker failure
@pytest.mark.timeout(180)
def test_killed_worker_mid_sketch_bitwise_equal(client, store, tmp_path):
    X = cf.open_array(store, variable="M")
    ref = cf.sketch(X, 60, kind="expander", seed=3).compute(progress=False)  # threads, no kill
    marker = str(tmp_path / "m")
    os.mkdir(marker)
    n_chunks = X.data.npartitions  # 48
    slow = cf.open_array(_slow(X.data, marker, 0.08))
    watcher, killed = _kill_a_worker_when(client, marker, n_chunks // 3)
    got = cf.sketch(slow, 60, kind="expander", seed=3).compute(client=client, progress=False)
    watcher.join(5)
    assert killed, "no worker was killed"
    assert _markers(marker) > n_chunks, "the killed worker's chunks were not recomputed"
    np.testing.assert_array_equal(got, ref)  # bitwise


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_killed_worker_mid_nmf_on_raw_chunked_data(client, tmp_path):
    # coarse chunks: an iteration on the cluster costs a few scheduler round trips per chunk
    path = str(tmp_path / "coarse.zarr")
    planted_nmf_zarr(path, 240, 200, 3, density=0.1, noise=0.05, random_state=2,
                     chunks=(80, 100), progress=False)
    X = cf.open_array(path, variable="M")
    kw = dict(max_iter=16, tol=0.0, random_state=0, client=client)
    with dask.config.set({"cfact.als.local-max-bytes": 0}), \
            pytest.warns(cf.ConvergenceWarning):
        ref = cf.nmf(X, 3, **kw)
    pids = client.run(os.getpid)
    killed: list[int] = []

    def cb(state):
        if state["iteration"] == 6 and not killed:
            # kill from another thread while the next iteration's tasks run
            pid = pids[sorted(pids)[0]]
            threading.Timer(0.02, os.kill, (pid, signal.SIGKILL)).start()
            killed.append(pid)

    with dask.config.set({"cfact.als.local-max-bytes": 0}), \
            pytest.warns(cf.ConvergenceWarning):
        got = cf.nmf(X, 3, callback=cb, **kw)
    assert killed
    deadline = time.time() + 30
    while any(p in killed for p in client.run(os.getpid).values()) and time.time() < deadline:
        time.sleep(0.2)
    assert not set(client.run(os.getpid).values()) & set(killed), "the worker did not die"
    assert got.n_iter_ == ref.n_iter_ == 16
    np.testing.assert_allclose(got.history, ref.history, rtol=1e-10)
    np.testing.assert_allclose(got.W, ref.W, rtol=1e-8, atol=1e-10)
    Hg, Hr = client.gather(client.compute([got.H, ref.H]))  # H stays on the cluster
    np.testing.assert_allclose(Hg, Hr, rtol=1e-8, atol=1e-10)


@pytest.mark.timeout(180)
def test_killed_worker_mid_reconstruction_write_bitwise_equal(client, store, tmp_path):
    X = cf.open_array(store, variable="M")
    rng = np.random.default_rng(0)
    W = rng.random((240, 3))
    H = rng.random((3, 200))
    ref = cf.reconstruct(W, H, str(tmp_path / "ref.zarr"), like=X, compare_to=X,
                         client=client, progress=False)
    marker = str(tmp_path / "m")
    os.mkdir(marker)
    Wslow = _slow(da.from_array(W, chunks=(20, 3)), marker, 0.15)  # one per row block of R
    watcher, killed = _kill_a_worker_when(client, marker, 5)
    out = str(tmp_path / "out.zarr")
    got = cf.reconstruct(Wslow, H, out, like=X, compare_to=X, client=client, progress=False)
    watcher.join(5)
    assert killed
    assert is_complete(out)
    a = open_reconstruction(out).values
    b = open_reconstruction(str(tmp_path / "ref.zarr")).values
    np.testing.assert_array_equal(a, b)  # bitwise
    assert got.relative_error == ref.relative_error
    np.testing.assert_array_equal(got.chunk_relative_error, ref.chunk_relative_error)
    assert not [p for p in os.listdir(tmp_path) if ".cfact-tmp-" in p]  # no temp sibling left


# (c) DGD+LOCAL with a killed worker:
#     tests/test_dgd.py::test_killed_worker_run_continues_and_converges


# ------------------------------------------------------------------------------ 2. whole-job kill
def _job(src, out, **over):
    job = {"cfact": {
        "input": {"path": src, "variable": "M"},
        "sketch": {"n_components": 60, "kind": "expander", "seed": 0},
        "factor": {"method": "nmf", "rank": 3, "max_iter": 400, "tol": 0.0,
                   "checkpoint_every": 5},
        "recover": {"method": "nnlasso"},
        "output": {"path": out, "reconstruct": True},
    }}
    for k, v in over.items():
        job["cfact"][k].update(v)
    return job


def _latest_checkpoint(out: str) -> int:
    try:
        g = zarr.open_group(out, path="checkpoint", mode="r")
        return int((dict(g.attrs).get("cfact") or {}).get("latest") or 0)
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def _cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "cfact_dask.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=ENV)


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("resume_flag", [True, False], ids=["resume", "plain-rerun"])
def test_cli_run_killed_mid_factorization_resumes_to_the_same_result(store, tmp_path,
                                                                     resume_flag):
    before = _tree_hash(store)
    env = {**ENV, "DASK_CFACT__ALS__LOCAL_MAX_BYTES": "0"}  # slow iterations: time to kill
    # the uninterrupted run
    ref_job = tmp_path / "ref.yaml"
    ref_job.write_text(yaml.safe_dump(_job(store, "ref.zarr")))
    r = subprocess.run([sys.executable, "-m", "cfact_dask.cli", "run", str(ref_job), "--json"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    # the same job, SIGKILLed once the factorization has committed a few checkpoints
    out = str(tmp_path / "run.zarr")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_job(store, "run.zarr")))
    p = subprocess.Popen([sys.executable, "-m", "cfact_dask.cli", "run", str(job), "--quiet"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    t0 = time.time()
    while _latest_checkpoint(out) < 30 and p.poll() is None and time.time() - t0 < 200:
        time.sleep(0.02)
    assert p.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(p.pid, signal.SIGKILL)
    p.wait(30)
    killed_at = _latest_checkpoint(out)
    assert 30 <= killed_at < 400
    # the interrupted store does not look complete, and the sketch stage is kept
    meta = zarr.open_group(out, mode="r").attrs["cfact"]
    assert not meta["complete"] and meta["stages"] == ["sketch"]
    with pytest.raises(StoreNotFoundError):
        NMFResult.from_zarr(out, "factors")
    # without --resume or --overwrite the store is refused and left as it is
    h = _tree_hash(out)
    # a resume with changed parameters is refused, naming the parameter
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(_job(store, "run.zarr", factor={"rank": 4})))
    r = subprocess.run([sys.executable, "-m", "cfact_dask.cli", "run", str(changed), "--resume"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode != 0
    assert "ResumeError" in r.stderr and "rank" in r.stderr and "Traceback" not in r.stderr
    assert _tree_hash(out) == h
    # the resume (explicit, or a plain rerun with the same job, which continues an interrupted
    # run) goes on from the last checkpoint and ends equal to the uninterrupted run
    r = subprocess.run([sys.executable, "-m", "cfact_dask.cli", "run", str(job)]
                       + (["--resume"] if resume_flag else []),
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"at iteration {killed_at}" in r.stderr  # logged by the checkpoint
    assert "resuming" in r.stderr
    got_meta = zarr.open_group(out, mode="r").attrs["cfact"]
    assert got_meta["complete"]
    assert got_meta["stages"] == ["sketch", "factor", "recover", "reconstruct"]
    ref = NMFResult.from_zarr(str(tmp_path / "ref.zarr"), "factors", lazy=False)
    got = NMFResult.from_zarr(out, "factors", lazy=False)
    assert got.n_iter_ == ref.n_iter_ == 400
    np.testing.assert_allclose(got.history, ref.history, rtol=1e-12)
    np.testing.assert_allclose(got.W, ref.W, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.H, ref.H, rtol=1e-10, atol=1e-12)
    Wr = zarr.open_array(str(tmp_path / "ref.zarr"), path="recovered/W")[...]
    Wg = zarr.open_array(out, path="recovered/W")[...]
    np.testing.assert_allclose(Wg, Wr, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(open_reconstruction(out, "reconstruction").values,
                               open_reconstruction(str(tmp_path / "ref.zarr"),
                                                   "reconstruction").values,
                               rtol=1e-6, atol=1e-8)
    assert _tree_hash(store) == before  # the input was never written


# ------------------------------------------------------------------------------ 3. atomic outputs
def _small_run(src, out, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cf.ConvergenceWarning)
        warnings.simplefilter("ignore", cf.RecoveryWarning)  # few iterations: not the point here
        return cf.factorize_recover(src, 3, sketch=dict(n_components=60),
                                    factor=dict(max_iter=40, checkpoint_every=10),
                                    recover="lstsq-data", out=out, progress=False, **kw)


@pytest.fixture
def failing_writes(monkeypatch):
    """Make Zarr writes of keys under a prefix fail with a given OSError (disk full etc.)."""
    from zarr.storage import LocalStore

    real = LocalStore.set

    def install(prefix: str, err: OSError):
        async def set_(self, key, value, *a, **k):
            # a group is written under a temporary name first ("factors.cfact-tmp-<id>/...")
            if key.startswith(prefix) or key.startswith(prefix.rstrip("/") + ".cfact-tmp-"):
                raise err
            return await real(self, key, value, *a, **k)

        monkeypatch.setattr(LocalStore, "set", set_)

    yield install
    monkeypatch.setattr(LocalStore, "set", real)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("prefix, err, stage, kept", [
    ("factors/", OSError(errno.ENOSPC, "No space left on device"), "factor", ["sketch"]),
    ("recovered/", OSError(errno.EACCES, "Permission denied"), "recover", ["sketch", "factor"]),
], ids=["disk-full-in-factor", "permission-in-recover"])
def test_write_errors_are_clear_and_keep_earlier_stages(store, tmp_path, failing_writes, prefix,
                                                        err, stage, kept):
    before = _tree_hash(store)
    X = cf.open_array(store, variable="M")
    out = str(tmp_path / "run.zarr")
    failing_writes(prefix, err)
    with pytest.raises(OSError) as info:
        _small_run(X, out)
    e = info.value
    assert e.errno == err.errno
    msg = str(e)
    assert f"stage {stage!r}" in msg and out in msg and "resume" in msg
    assert err.strerror in msg
    # the earlier stages are intact and readable; the store does not claim to be complete
    meta = zarr.open_group(out, mode="r").attrs["cfact"]
    assert meta["stages"] == kept and not meta["complete"]
    # the failed stage left nothing behind (no temporary, no half-written group)
    assert not [p for p in os.listdir(out) if ".cfact-tmp-" in p or p == prefix.rstrip("/")]
    sk = cf.Sketch.from_zarr(out, "sketch")
    assert sk.shape == (60, 200)
    if "factor" in kept:
        assert NMFResult.from_zarr(out, "factors").rank == 3
    assert _tree_hash(store) == before
    # once the disk has room again, --resume finishes the run from there
    failing_writes("\0never", err)
    res = _small_run(X, out, resume=True)
    assert zarr.open_group(out, mode="r").attrs["cfact"]["complete"]
    assert res.W.shape == (240, 3)


@pytest.mark.timeout(60)
def test_output_under_a_regular_file_is_a_clear_error(store, tmp_path):
    """Tests run as root, where chmod does not block writes: a file where a directory should be
    makes the output location unwritable for everyone."""
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    out = str(blocker / "run.zarr")
    with pytest.raises(OSError) as info:
        _small_run(cf.open_array(store, variable="M"), out)
    msg = str(info.value)
    assert out in msg and "writable" in msg
    assert blocker.read_text() == "x"


@pytest.mark.timeout(60)
def test_read_only_directory_is_a_clear_error(store, tmp_path):
    """chmod a-w on the parent; skipped where it does not block writes (root)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        probe = ro / "probe"
        try:
            probe.write_text("x")
            probe.unlink()
            pytest.skip("running as root: chmod does not block writes here")
        except PermissionError:
            pass
        out = str(ro / "run.zarr")
        with pytest.raises(PermissionError) as info:
            _small_run(cf.open_array(store, variable="M"), out)
        assert out in str(info.value)
    finally:
        os.chmod(ro, 0o755)


def test_existing_outputs_are_never_overwritten_without_the_flag(store, tmp_path):
    X = cf.open_array(store, variable="M")
    out = str(tmp_path / "run.zarr")
    _small_run(X, out)
    h = _tree_hash(out)
    with pytest.raises(StoreExistsError, match="overwrite"):
        _small_run(X, out)
    sk = cf.sketch(X, 10)
    with pytest.raises(StoreExistsError, match="overwrite"):
        sk.to_zarr(out, "sketch")
    with pytest.raises(StoreExistsError, match="overwrite"):
        cf.reconstruct(np.ones((240, 3)), np.ones((3, 200)), out, like=X, group="recovered")
    assert _tree_hash(out) == h
    # with the flag it is replaced
    res = _small_run(X, out, overwrite=True)
    assert res.out == out and zarr.open_group(out, mode="r").attrs["cfact"]["complete"]


class _Boom(Exception):
    pass


def _fail_on_block(block, block_info=None):
    if block_info[None]["chunk-location"][0] == 7:
        raise _Boom("simulated failure in the middle of the write")
    return block


def test_interrupted_reconstruction_never_looks_complete(store, tmp_path):
    X = cf.open_array(store, variable="M")
    W = da.from_array(np.random.default_rng(0).random((240, 3)), chunks=(20, 3))
    W = W.map_blocks(_fail_on_block, dtype=W.dtype)
    # a new store, and a group of an existing store
    out = str(tmp_path / "r.zarr")
    with pytest.raises(_Boom):
        cf.reconstruct(W, np.ones((3, 200)), out, like=X, progress=False)
    assert not os.path.exists(out) and not is_complete(out)
    assert not [p for p in os.listdir(tmp_path) if ".cfact-tmp-" in p]
    run = str(tmp_path / "run.zarr")
    _small_run(X, run)
    h = _tree_hash(run)
    with pytest.raises(_Boom):
        cf.reconstruct(W, np.ones((3, 200)), run, like=X, group="reconstruction",
                       progress=False)
    assert not is_complete(run, "reconstruction")
    assert "reconstruction" not in zarr.open_group(run, mode="r")
    assert _tree_hash(run) == h


_KILL_SCRIPT = """
import sys, time, numpy as np, dask, dask.array as da
import cfact_dask as cf
def slow(b):
    time.sleep(0.2)
    return b
X = cf.open_array(sys.argv[1], variable="M")
W = da.from_array(np.ones((240, 3)), chunks=(20, 3)).map_blocks(slow, dtype=float)
print("start", flush=True)
with dask.config.set(scheduler="threads", num_workers=1):
    cf.reconstruct(W, np.ones((3, 200)), sys.argv[2], like=X, progress=False)
"""


@pytest.mark.timeout(120)
def test_sigkilled_reconstruction_leaves_no_complete_store(store, tmp_path):
    """A reconstruction whose process is SIGKILLed mid-write: the target never appears."""
    out = str(tmp_path / "r.zarr")
    p = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, store, out], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert p.stdout.readline().strip() == "start"
    t0 = time.time()
    while time.time() - t0 < 60:  # wait until chunks are being written into the temp sibling
        tmp = [d for d in os.listdir(tmp_path) if ".cfact-tmp-" in d]
        if tmp and os.path.isdir(tmp_path / tmp[0] / "reconstruction" / "c"):
            break
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(30)
    assert not os.path.exists(out) and not is_complete(out)
    with pytest.raises(StoreNotFoundError, match="not a complete"):
        open_reconstruction(out)
    # the leftover temp sibling is not complete either
    for d in os.listdir(tmp_path):
        if ".cfact-tmp-" in d:
            assert not is_complete(str(tmp_path / d))


def test_json_report_of_a_refused_run(store, tmp_path):
    """--json keeps stdout clean on failure: nothing half-written there either."""
    job = tmp_path / "job.yaml"
    out = tmp_path / "run.zarr"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    job.write_text(yaml.safe_dump(_job(store, "run.zarr")))
    r = _cli("run", str(job), "--json")
    assert r.returncode != 0 and r.stdout == ""
    assert "already exists" in r.stderr
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.stdout)
