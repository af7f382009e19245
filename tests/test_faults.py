"""Faults survived for real (issue 14): worker processes SIGKILLed *inside* ``factorize_recover``
and ``cfact run`` are restarted by their nannies and the run ends bitwise equal to the
uninterrupted one; without nannies, the run stops with :class:`NoWorkersError` naming the stage
after ``cfact.cluster.no-workers-timeout`` instead of waiting forever.

Every cluster here is real: ``LocalCluster(processes=True)`` or ``python -m dask scheduler`` /
``python -m dask worker`` subprocesses on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
import time
import warnings

import dask
import numpy as np
import pytest
import yaml
import zarr
from conftest import process_cluster, stop_processes

import cfact_dask as cf
from cfact_dask.datasets import planted_nmf_zarr
from cfact_dask.errors import NoWorkersError
from cfact_dask.factor._nmf import NMFResult
from cfact_dask.factor.consensus import dgd_local

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "DASK_CFACT__CLUSTER__EMBEDDED": "never"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "input.zarr"
    planted_nmf_zarr(str(path), 240, 200, 3, density=0.1, noise=0.05, random_state=2,
                     chunks=(20, 50), progress=False)
    return str(path)


def _run(src, client, callback=None, max_iter=30, on_cluster=False):
    """factorize_recover; ``on_cluster``: every NMF iteration on the cluster too (a small sketch
    is iterated in the client's memory otherwise)."""
    local_max = 0 if on_cluster else 2**28
    with warnings.catch_warnings(), dask.config.set({"cfact.als.local-max-bytes": local_max}):
        warnings.simplefilter("ignore", cf.ConvergenceWarning)
        warnings.simplefilter("ignore", cf.RecoveryWarning)
        return cf.factorize_recover(cf.open_array(src, variable="M"), 3,
                                    sketch=dict(n_components=60),
                                    factor=dict(max_iter=max_iter, tol=0.0),
                                    recover="lstsq-data", callback=callback, client=client,
                                    progress=False)


def _np(x, client):
    return np.asarray(x.compute(scheduler=client) if hasattr(x, "dask") else x)


def _restarted_pids(client, n, dead, timeout=60.0):
    """The pids of ``n`` live worker processes, none of them in ``dead`` (waits for restarts)."""
    t0 = time.time()
    while True:
        pids = [p for p in client.run(os.getpid, on_error="return").values()
                if isinstance(p, int)]
        if len(pids) == n and not set(pids) & set(dead):
            return pids
        assert time.time() - t0 < timeout, f"workers not restarted: {pids}, killed {dead}"
        time.sleep(0.2)


def _kill(pids):
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("on_cluster", [
    False,
    pytest.param(True, marks=pytest.mark.slow),
])
def test_workers_killed_inside_factorize_recover_are_restarted(store, on_cluster):
    """One worker killed at iteration 5, then every worker at iteration 15: the nannies restart
    them, the lost sketch is recomputed, and the run ends equal to the uninterrupted one (bitwise
    when the factorization iterates in the client's memory, as small sketches do)."""
    with process_cluster(2, memory_limit="1GiB") as client:
        ref = _run(store, client, on_cluster=on_cluster)
        first = client.run(os.getpid)
        killed: dict[int, list[int]] = {}

        def callback(state):
            if state["iteration"] == 5:  # one worker
                killed[5] = [first[sorted(first)[0]]]
            elif state["iteration"] == 15:  # then every worker (the restarted one too)
                killed[15] = _restarted_pids(client, 2, killed[5])
            else:
                return
            _kill(killed[state["iteration"]])

        got = _run(store, client, callback, on_cluster=on_cluster)
        assert sorted(killed) == [5, 15] and len(killed[15]) == 2
        # the nannies restarted every killed worker (before the fix they could not, and the
        # recover stage waited forever for a worker)
        now = set(_restarted_pids(client, 2, killed[5] + killed[15]))
        assert len(now) == 2 and not now & (set(killed[5]) | set(killed[15]))
        assert got.factors.n_iter_ == ref.factors.n_iter_ == 30
        # H and W may live on the cluster: compare before it closes
        for a, b in ((got.factors.W, ref.factors.W), (got.H, ref.H), (got.W, ref.W)):
            if on_cluster:  # sums on the cluster are not bitwise repeatable, faults or not
                np.testing.assert_allclose(_np(a, client), _np(b, client), rtol=1e-10,
                                           atol=1e-13)
            else:
                np.testing.assert_array_equal(_np(a, client), _np(b, client))


# ------------------------------------------------------------------------ subprocess clusters
@contextlib.contextmanager
def subprocess_cluster(tmp_path, n_workers, nanny=True, env=None):
    """``python -m dask scheduler`` + ``python -m dask worker`` processes; yields (scheduler file,
    a non-default client, the worker Popen objects)."""
    from distributed import Client

    env = env or ENV
    sched_file = str(tmp_path / "scheduler.json")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
         "--dashboard-address", ":0", "--scheduler-file", sched_file],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    client = None
    try:
        t0 = time.time()
        while not os.path.exists(sched_file):
            assert time.time() - t0 < 60, "the scheduler did not start"
            time.sleep(0.1)
        workers = [subprocess.Popen(
            [sys.executable, "-m", "dask", "worker", "--scheduler-file", sched_file,
             "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard", "--memory-limit",
             "1GiB", *([] if nanny else ["--no-nanny"])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            for _ in range(n_workers)]
        procs += workers
        client = Client(scheduler_file=sched_file, timeout=30, set_as_default=False)
        client.wait_for_workers(n_workers, timeout=60)
        yield sched_file, client, workers
    finally:
        if client is not None:
            client.close()
        stop_processes(procs)


@pytest.mark.timeout(120)
def test_workers_gone_for_good_stop_with_a_clear_error(store, tmp_path):
    """Workers without a nanny are not restarted: the run stops after the grace period."""
    with subprocess_cluster(tmp_path, 1, nanny=False) as (_, client, workers), \
            dask.config.set({"cfact.cluster.no-workers-timeout": "2s"}):
        def callback(state):
            if state["iteration"] == 3:
                workers[0].kill()

        address = client.scheduler.address
        with pytest.raises(NoWorkersError) as e:
            _run(store, client, callback, on_cluster=True)
    msg = str(e.value)
    assert "stage 'factor'" in msg and "no-workers-timeout" in msg and "nanny" in msg
    assert address in msg


def test_no_workers_timeout_setting_is_checked():
    from cfact_dask._runtime.workers import no_workers_timeout

    with dask.config.set({"cfact.cluster.no-workers-timeout": "90s"}):
        assert no_workers_timeout() == 90.0
    with dask.config.set({"cfact.cluster.no-workers-timeout": None}):
        assert no_workers_timeout() is None
    for bad in ("soon", "-3s", 0):
        with dask.config.set({"cfact.cluster.no-workers-timeout": bad}), \
                pytest.raises(cf.ConfigError, match="no-workers-timeout"):
            no_workers_timeout()


# ------------------------------------------------------------------------ cfact run (the CLI)
def _job(src, out):
    return {"cfact": {
        "input": {"path": src, "variable": "M"},
        "sketch": {"n_components": 60, "kind": "expander", "seed": 0},
        "factor": {"method": "nmf", "rank": 3, "max_iter": 300, "tol": 0.0,
                   "checkpoint_every": 5},
        "recover": {"method": "lstsq-data"},
        "output": {"path": out, "reconstruct": True},
    }}


def _checkpoint(out: str) -> int:
    try:
        g = zarr.open_group(out, path="checkpoint", mode="r")
        return int((dict(g.attrs).get("cfact") or {}).get("latest") or 0)
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def _cli_run(tmp_path, store, name, env, *args, kill=None):
    """``python -m cfact_dask.cli run``; ``kill(out)`` runs in this process while it works."""
    job = tmp_path / f"{name}.yaml"
    job.write_text(yaml.safe_dump(_job(store, f"{name}.zarr")))
    p = subprocess.Popen([sys.executable, "-m", "cfact_dask.cli", "run", str(job), "--quiet",
                          *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, cwd=tmp_path)
    try:
        if kill is not None:
            kill(str(tmp_path / f"{name}.zarr"), p)
        out, err = p.communicate(timeout=400)
    finally:
        if p.poll() is None:
            p.kill()
    return p.returncode, err, str(tmp_path / f"{name}.zarr")


def _wait_checkpoint(out, at, p, timeout=200):
    t0 = time.time()
    while _checkpoint(out) < at:
        assert p.poll() is None, "the run ended before the workers could be killed"
        assert time.time() - t0 < timeout, "no progress"
        time.sleep(0.02)


def _assert_same_run(got: str, ref: str):
    a, b = (NMFResult.from_zarr(x, "factors", lazy=False) for x in (got, ref))
    assert a.n_iter_ == b.n_iter_ == 300
    # the iterations ran on the cluster, where sums are not bitwise repeatable even without
    # faults (differences of 1e-15); the sketch is bitwise
    np.testing.assert_allclose(a.W, b.W, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(a.H, b.H, rtol=1e-10, atol=1e-13)
    np.testing.assert_array_equal(zarr.open_array(got, path="sketch/sketch")[...],
                                  zarr.open_array(ref, path="sketch/sketch")[...])
    np.testing.assert_allclose(zarr.open_array(got, path="recovered/W")[...],
                               zarr.open_array(ref, path="recovered/W")[...], rtol=1e-8,
                               atol=1e-11)
    assert zarr.open_group(got, mode="r").attrs["cfact"]["complete"]


SLOW_ITER = {**ENV, "DASK_CFACT__ALS__LOCAL_MAX_BYTES": "0"}  # iterations on the cluster


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cli_run_on_external_cluster_survives_killed_workers(store, tmp_path):
    with subprocess_cluster(tmp_path, 2, env=SLOW_ITER) as (sched_file, client, _):
        rc, err, ref = _cli_run(tmp_path, store, "ref", SLOW_ITER, "--scheduler-file",
                                sched_file)
        assert rc == 0, err[-3000:]
        killed: list[int] = []

        def kill(out, p):
            _wait_checkpoint(out, 20, p)
            first = _restarted_pids(client, 2, [])
            killed.append(first[0])
            _kill(killed)  # one worker
            _wait_checkpoint(out, 60, p)
            every = _restarted_pids(client, 2, killed)
            killed.extend(every)
            _kill(every)  # then every worker

        rc, err, got = _cli_run(tmp_path, store, "run", SLOW_ITER, "--scheduler-file",
                                sched_file, kill=kill)
        assert len(killed) == 3
        assert rc == 0, err[-3000:]
        _restarted_pids(client, 2, killed)  # the nannies restarted them
    _assert_same_run(got, ref)


def _worker_children(pid: int) -> list[int]:
    """The worker processes an embedded LocalCluster spawned below the process ``pid``."""
    psutil = pytest.importorskip("psutil")
    out = []
    for c in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(c.cmdline())
            if "spawn_main" in cmd or "forkserver" in cmd:
                if "resource_tracker" not in cmd:
                    out.append(c.pid)
    return out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cli_run_on_embedded_cluster_survives_killed_workers(store, tmp_path):
    env = {**SLOW_ITER, "DASK_CFACT__CLUSTER__EMBEDDED": "always"}
    rc, err, ref = _cli_run(tmp_path, store, "ref", env)
    assert rc == 0, err[-3000:]
    killed: list[int] = []

    def kill(out, p):
        _wait_checkpoint(out, 20, p)
        first = _worker_children(p.pid)
        assert len(first) == 2, first
        killed.append(first[0])
        _kill(killed)  # one worker
        _wait_checkpoint(out, 60, p)
        t0 = time.time()
        while len(every := [w for w in _worker_children(p.pid) if w not in killed]) < 2:
            assert time.time() - t0 < 60, "the killed worker was not restarted"
            time.sleep(0.2)
        killed.extend(every)
        _kill(every)  # then every worker

    rc, err, got = _cli_run(tmp_path, store, "run", env, kill=kill)
    assert len(killed) == 3
    assert rc == 0, err[-3000:]
    _assert_same_run(got, ref)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_run_without_nannies_stops_with_a_clear_error(store, tmp_path):
    env = {**SLOW_ITER, "DASK_CFACT__CLUSTER__NO_WORKERS_TIMEOUT": "3s"}
    with subprocess_cluster(tmp_path, 2, nanny=False, env=env) as (sched_file, _, workers):
        def kill(out, p):
            _wait_checkpoint(out, 20, p)
            for w in workers:
                w.kill()

        rc, err, out = _cli_run(tmp_path, store, "run", env, "--scheduler-file", sched_file,
                                kill=kill)
    assert rc != 0
    assert "NoWorkersError" in err and "stage 'factor'" in err and "Traceback" not in err
    assert "--resume" in err
    meta = zarr.open_group(out, mode="r").attrs["cfact"]
    assert not meta["complete"] and meta["stages"] == ["sketch"]


# ------------------------------------------------------------------------ DGD+LOCAL liveness
def test_dgd_liveness_soak_never_sees_live_workers_dead(cluster_client):
    """Thousands of liveness checks on a live cluster while other threads keep refreshing the
    client's cached scheduler info (the race that once showed 0 workers): none reports a loss."""
    import threading

    dgd = importlib.import_module("cfact_dask.factor.consensus._runtime")

    rng = np.random.default_rng(0)
    rt = dgd.Remote(cluster_client, [rng.random((5, 4)) for _ in range(4)], np.dtype("f8"),
                    "soak")
    assert len(set(rt.node_worker)) == 2
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            cluster_client.scheduler_info()

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        lost = sum(dgd.lost(rt) for _ in range(3000))
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert lost == 0


def test_dgd_loss_needs_a_confirmed_second_look(cluster_client, monkeypatch):
    dgd = importlib.import_module("cfact_dask.factor.consensus._runtime")

    rng = np.random.default_rng(0)
    rt = dgd.Remote(cluster_client, [rng.random((5, 4)) for _ in range(4)], np.dtype("f8"),
                    "confirm")
    real = dgd.live_workers
    calls = [0]

    def flaky(client):  # every 7th answer lists no worker
        calls[0] += 1
        return {} if calls[0] % 7 == 0 else real(client)

    monkeypatch.setattr(dgd, "live_workers", flaky)
    assert not any(dgd.lost(rt, confirm_after=0.0) for _ in range(2000))
    assert calls[0] > 2000  # the empty answers were seen and looked at again
    gone = rt.node_worker[0]

    def one_gone(client):  # a worker that really left stays gone on the second look
        return {w: v for w, v in real(client).items() if w != gone}

    monkeypatch.setattr(dgd, "live_workers", one_gone)
    assert dgd.lost(rt, confirm_after=0.0)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["workers", "tasks"])
def test_dgd_worker_loss_at_any_point_is_replayed_and_never_leaks(cluster_client, monkeypatch,
                                                                    mode):
    """A worker loss detected at any fetch of the run (setup, first state, periods, anchors,
    final refit) is replayed from the last anchor, or before the first anchor started again:
    bitwise the in-process run, and the internal _WorkerLost never escapes."""
    dgd = importlib.import_module("cfact_dask.factor.consensus._runtime")
    from cfact_dask.errors import WorkerLostError

    rng = np.random.default_rng(3)
    Y = rng.random((30, 4)) @ rng.random((4, 80))
    # the gradient solver: bitwise equal to in-process in both modes (the als solver matches
    # in-process only to rounding in tasks mode; its replay is checked below and in the slow
    # worker-kill tests)
    kw = dict(n_nodes=4, topology="ring", weights="metropolis", max_iter=60, tol=0.0,
              report_every=10, anchor_every=20, random_state=1, solver="gradient")
    ref = dgd_local(Y, 4, client=None, **kw)
    real = dgd.gather_checked
    calls = [0]

    def counting(rt, futs, *a, **k):
        calls[0] += 1
        return real(rt, futs, *a, **k)

    monkeypatch.setattr(dgd, "gather_checked", counting)
    dgd_local(Y, 4, client=cluster_client, mode=mode, **kw)
    n = calls[0]
    assert n >= 4
    outcomes = {}
    for k in sorted({1, 3, n // 2, n}):
        seen = [0]

        def lose_once(rt, futs, *a, _k=k, _seen=seen, **kw_):
            _seen[0] += 1
            if _seen[0] == _k:
                raise dgd.WorkerLost()
            return real(rt, futs, *a, **kw_)

        monkeypatch.setattr(dgd, "gather_checked", lose_once)
        try:
            res = dgd_local(Y, 4, client=cluster_client, mode=mode, **kw)
        except WorkerLostError as e:
            assert "DGD+LOCAL lost the workers" in str(e)
            outcomes[k] = "error: " + str(e)[:300]
            continue
        assert res.n_restarts <= 1  # 0: lost before the first anchor, and started again
        _assert_dgd_bitwise(res, ref)
        outcomes[k] = "replayed"
    assert all(v == "replayed" for v in outcomes.values()), outcomes
    # the default (als) solver: a loss in the middle of the run is replayed too, and ends at
    # the uninterrupted run to rounding
    kw_als = {**kw, "solver": "als"}
    ref_als = dgd_local(Y, 4, client=None, **kw_als)
    seen = [0]

    def lose_mid(rt, futs, *a, _seen=seen, **kw_):
        _seen[0] += 1
        if _seen[0] == n // 2:
            raise dgd.WorkerLost()
        return real(rt, futs, *a, **kw_)

    monkeypatch.setattr(dgd, "gather_checked", lose_mid)
    res = dgd_local(Y, 4, client=cluster_client, mode=mode, **kw_als)
    np.testing.assert_allclose(res.cost_history, ref_als.cost_history, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.U, ref_als.U, rtol=1e-8, atol=1e-10)


def _assert_dgd_bitwise(remote, local):
    np.testing.assert_array_equal(remote.cost_history, local.cost_history)
    np.testing.assert_array_equal(remote.U, local.U)
    np.testing.assert_array_equal(remote.V, local.V)
    assert remote.objective == local.objective and remote.n_iter == local.n_iter


# ------------------------------------------------------------------------ corruption
def _input_store(path, data, chunks=(20, 20), **kw):
    z = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype, **kw)
    z[...] = data
    return str(path)


def _flip_byte(path):
    b = bytearray(open(path, "rb").read())
    b[len(b) // 2] ^= 0x10
    with open(path, "wb") as fh:
        fh.write(bytes(b))


@pytest.fixture
def damaged(tmp_path):
    """A 60 x 40 input with chunk (1, 1) deleted (chunk files c/<i>/<j>)."""
    rng = np.random.default_rng(0)
    src = _input_store(tmp_path / "in.zarr", rng.random((60, 40)) + 0.5)
    os.remove(os.path.join(src, "c", "1", "1"))
    return src


@pytest.mark.parametrize("direct", [True, False])
def test_missing_input_chunk_is_an_error_naming_it(damaged, direct):
    with dask.config.set({"cfact.io.direct-chunk-reads": direct}), \
            pytest.raises(cf.errors.ChunkError) as e:
        cf.sketch(cf.open_array(damaged), 10, seed=0).compute(progress=False)
    msg = str(e.value)
    assert "chunk (1, 1)" in msg and "is missing" in msg
    assert os.path.join(damaged, "c", "1", "1").replace(os.sep, "/") in msg.replace(os.sep, "/")
    assert "cfact.io.missing-chunks" in msg  # the fix for stores that rely on fill values


def test_missing_input_chunk_stops_the_pipeline(damaged, tmp_path):
    with pytest.raises(cf.errors.ChunkError, match=r"chunk \(1, 1\) .* is missing"):
        cf.factorize_recover(damaged, 2, sketch=dict(n_components=10), factor=dict(max_iter=5),
                             out=str(tmp_path / "run.zarr"), progress=False)


def test_missing_chunks_policy_warn_and_fill(damaged):
    from cfact_dask.errors import MissingChunksWarning

    whole = zarr.open_array(damaged)[...]  # zarr reads the missing chunk as 0
    with dask.config.set({"cfact.io.missing-chunks": "warn"}):
        with pytest.warns(MissingChunksWarning, match=r"1 of 6 chunks .* missing") as rec:
            X = cf.open_array(damaged)
        assert len(rec) == 1  # one line per run, not one per chunk read
        np.testing.assert_array_equal(X.data.compute(scheduler="sync"), whole)
    with dask.config.set({"cfact.io.missing-chunks": "fill"}), warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(cf.open_array(damaged).data.compute(scheduler="sync"),
                                      whole)
    with dask.config.set({"cfact.io.missing-chunks": "sometimes"}), \
            pytest.raises(cf.ConfigError, match="missing-chunks"):
        cf.open_array(damaged)


@pytest.mark.parametrize("policy", ["error", "warn", "fill"])
def test_chunk_replaced_by_a_directory_is_always_an_error(damaged, policy):
    os.mkdir(os.path.join(damaged, "c", "1", "1"))
    with dask.config.set({"cfact.io.missing-chunks": policy}), warnings.catch_warnings():
        warnings.simplefilter("ignore", cf.errors.CfactWarning)
        with pytest.raises(cf.errors.ChunkError, match=r"chunk \(1, 1\) .* is a directory"):
            cf.open_array(damaged).data.compute(scheduler="sync")


def test_flipped_byte_in_a_checksummed_input_is_a_chunk_error(tmp_path):
    """A foreign store written with a checksum codec: corruption fails to decode."""
    from cfact_dask._runtime.codecs import compressors

    rng = np.random.default_rng(1)
    src = _input_store(tmp_path / "in.zarr", rng.random((40, 40)), compressors=compressors())
    _flip_byte(os.path.join(src, "c", "1", "0"))
    with pytest.raises(cf.errors.ChunkError, match=r"chunk \(1, 0\).*c/1/0.*checksum"):
        cf.open_array(src).data.compute(scheduler="sync")


@pytest.fixture(scope="module")
def run_store(store, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("out") / "run.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cf.ConvergenceWarning)
        warnings.simplefilter("ignore", cf.RecoveryWarning)
        cf.factorize_recover(cf.open_array(store, variable="M"), 3, sketch=dict(n_components=60),
                             factor=dict(max_iter=20, checkpoint_every=10),
                             recover="lstsq-data", out=out, reconstruct=True, progress=False)
    return out


def _arrays(path):
    out = {}

    def walk(g, prefix):
        for name, a in g.arrays():
            out[prefix + name] = a
        for name, sub in g.groups():
            walk(sub, prefix + name + "/")

    walk(zarr.open_group(path, mode="r"), "")
    return out


def test_every_store_cfact_writes_is_checksummed(store, run_store, tmp_path):
    from zarr.codecs import Crc32cCodec

    from cfact_dask.embed.nn import save_factors

    arrays = {**{f"input/{k}": v for k, v in _arrays(store).items()},  # planted data set
              **{f"run/{k}": v for k, v in _arrays(run_store).items()}}
    A = np.random.default_rng(0).random((60, 8))
    with pytest.warns(cf.ConvergenceWarning):
        f = cf.lp_lowrank(A, rank=2, p=1.0, max_iter=3)
    save_factors(f, str(tmp_path / "f.zarr"))
    arrays.update({f"nn/{k}": v for k, v in _arrays(str(tmp_path / "f.zarr")).items()})
    groups = {k.split("/")[1] for k in arrays if k.startswith("run/")}
    assert {"sketch", "holdout", "factors", "recovered", "reconstruction"} <= groups
    plain = [k for k, a in arrays.items()
             if not any(isinstance(c, Crc32cCodec) for c in a.compressors)]
    assert not plain, f"written without a checksum: {plain}"


@pytest.mark.parametrize("what", ["sketch", "factors", "recovered", "reconstruction"])
def test_flipped_byte_in_a_cfact_output_is_detected_on_read(run_store, tmp_path, what):
    import shutil

    from cfact_dask.reconstruction import open_reconstruction

    out = str(tmp_path / "copy.zarr")
    shutil.copytree(run_store, out)
    path = {"sketch": "sketch/sketch", "factors": "factors/H", "recovered": "recovered/W",
            "reconstruction": "reconstruction/reconstruction"}[what]
    chunk = os.path.join(out, *path.split("/"), "c", "0", "0")
    _flip_byte(chunk)
    read = {
        "sketch": lambda: np.asarray(cf.Sketch.from_zarr(out, "sketch").data),
        "factors": lambda: NMFResult.from_zarr(out, "factors", lazy=False),
        "recovered": lambda: cf.open_array(out + "/recovered", variable="W").data.compute(),
        "reconstruction": lambda: np.asarray(open_reconstruction(out, "reconstruction").values),
    }[what]
    with pytest.raises((cf.errors.ChunkError, ValueError)) as e:
        read()
    msg = str(e.value)
    assert "checksum" in msg.lower()
    if what != "reconstruction":  # read by cfact's checked reader: the chunk is named
        assert isinstance(e.value, cf.errors.ChunkError)
        assert "chunk (0, 0)" in msg and "/".join([path, "c", "0", "0"]) in msg


# ------------------------------------------------------------------------ workers that keep dying
def _dies_on_a_worker(block):
    """Kills the worker process running it (what an out-of-memory kill looks like)."""
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:  # not on a worker
        return block
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.timeout(180)
def test_a_task_whose_workers_keep_dying_stops_the_run_with_advice(store, tmp_path):
    import cloudpickle
    import dask.array as da

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    X = cf.open_array(store, variable="M").data
    deadly = X.map_blocks(_dies_on_a_worker, dtype=X.dtype, meta=np.empty((0, 0), X.dtype))
    deadly = da.concatenate([X[:20], deadly[20:40], X[40:]])  # one row block kills
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        cluster = process_cluster(2, memory_limit="1GiB")
        with cluster as client, pytest.raises(cf.errors.WorkerLostError) as e:
            _run(deadly, client)
    msg = str(e.value)
    # distributed gives up on the task (allowed-failures), or, on a loaded machine where the
    # nanny restarts lag behind, cfact's own guard (cfact.cluster.max-worker-losses) stops the
    # stage first: both name the stage and give the same advice
    assert "stage 'sketch' of the run" in msg
    assert "died while running" in msg or "workers were lost during" in msg
    assert "memory" in msg and "cfact plan" in msg


# ------------------------------------------------------------------ memory that holds
def _small_job(src, out, **recover):
    return {"cfact": {
        "input": {"path": src, "variable": "M"},
        "sketch": {"n_components": 60},
        "factor": {"rank": 3, "max_iter": 5},
        "recover": {"method": "lstsq-data", **recover},
        "output": {"path": out, "reconstruct": True},
    }}


def test_planner_counts_the_worker_process_itself(store):
    """Every stage's per-worker peak includes the worker process (interpreter + libraries)."""
    from cfact_dask.pipeline._plan import WORKER_BASE_BYTES

    p = cf.plan(_small_job(store, "unused.zarr"), n_workers=2, threads_per_worker=1,
                memory_limit=2**30)
    assert p.worker_base == WORKER_BASE_BYTES > 100 * 2**20
    assert all(v > WORKER_BASE_BYTES for v in p.worker_peak.values())
    assert p.to_dict()["worker_base_bytes"] == WORKER_BASE_BYTES


def test_run_on_workers_too_small_for_the_plan_is_refused_before_compute(store, tmp_path):
    out = tmp_path / "run.zarr"
    with process_cluster(1, memory_limit="150MiB") as client:
        with pytest.raises(cf.errors.InsufficientMemoryError) as e:
            cf.run_job(_small_job(store, str(out)), client=client)
        assert client.run(lambda: 1)  # nothing was lost on the way
    msg = str(e.value)
    assert "per worker" in msg and "150" in msg and "memory-check" in msg
    assert not out.exists()  # refused before anything was written


def test_memory_check_warn_and_off_do_not_refuse(store, caplog):
    import logging

    from cfact_dask.pipeline._plan import check_memory

    p = cf.plan(_small_job(store, "unused.zarr"), n_workers=1, threads_per_worker=1,
                memory_limit=150 * 2**20)
    with pytest.raises(cf.errors.InsufficientMemoryError):
        check_memory(p, mode="refuse")
    with caplog.at_level(logging.WARNING, logger="cfact_dask.pipeline._plan"):
        check_memory(p, mode="warn")
    assert any("per worker" in r.getMessage() for r in caplog.records)
    check_memory(p, mode="off")
    big = cf.plan(_small_job(store, "unused.zarr"), n_workers=1, threads_per_worker=1,
                  memory_limit=4 * 2**30)
    check_memory(big, mode="refuse")  # fits: nothing said


def test_memory_check_setting_is_validated(store, tmp_path):
    with process_cluster(1, memory_limit="150MiB") as client, \
            dask.config.set({"cfact.run.memory-check": "sometimes"}), \
            pytest.raises(cf.ConfigError, match="memory-check"):
        cf.run_job(_small_job(store, str(tmp_path / "r.zarr")), client=client)


def test_cli_run_refuses_too_small_workers_in_one_paragraph(store, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_small_job(store, str(tmp_path / "run.zarr"))))
    env = {**ENV, "DASK_CFACT__CLUSTER__EMBEDDED": "always",
           "DASK_CFACT__CLUSTER__MEMORY_LIMIT": "150MiB", "DASK_CFACT__CLUSTER__N_WORKERS": "1"}
    r = subprocess.run([sys.executable, "-m", "cfact_dask.cli", "run", str(job), "--quiet"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert "embedded cluster" in r.stderr and "memory-check" in r.stderr
    assert not (tmp_path / "run.zarr").exists()


def _slow_block(block):
    time.sleep(0.3)
    return block


@pytest.mark.timeout(180)
def test_workers_that_keep_dying_stop_the_stage_with_advice(store):
    """Workers killed again and again (as for memory, where no single task reaches distributed's
    allowed-failures) stop the stage after cfact.cluster.max-worker-losses, not loop."""
    import threading

    import cloudpickle
    import dask.array as da

    from cfact_dask._runtime.workers import stage, watch_workers

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    X = da.ones((400, 10), chunks=(1, 10)).map_blocks(_slow_block, dtype=float)
    with dask.config.set({"distributed.scheduler.allowed-failures": 1000,
                          "cfact.cluster.max-worker-losses": 3}):
        cluster = process_cluster(2, memory_limit="1GiB")
        with cluster as client:
            stop = threading.Event()

            def killer():
                while not stop.wait(1.0):
                    with contextlib.suppress(Exception):
                        pids = list(client.run(os.getpid).values())
                        os.kill(pids[0], signal.SIGKILL)

            t = threading.Thread(target=killer, daemon=True)
            t0 = time.monotonic()
            try:
                with pytest.raises(cf.errors.WorkerLostError) as e, \
                        watch_workers(client, "the test"), stage("stage 'sketch' of the run"):
                    t.start()
                    client.compute(X.sum()).result()
            finally:
                stop.set()
                t.join()
    assert time.monotonic() - t0 < 120
    msg = str(e.value)
    assert "workers were lost during stage 'sketch' of the run" in msg
    assert "max-worker-losses" in msg and "cfact plan" in msg


# ------------------------------------------------------------------ no "different run_spec"
def _record_scheduler_warnings(dask_scheduler=None):
    import logging

    class _Keep(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    handler = _Keep()
    logging.getLogger("distributed.scheduler").addHandler(handler)
    dask_scheduler.cfact_test_log = handler


def _scheduler_warnings(dask_scheduler=None):
    import logging

    handler = dask_scheduler.cfact_test_log
    logging.getLogger("distributed.scheduler").removeHandler(handler)
    return handler.messages


@pytest.mark.timeout(240)
def test_repeated_runs_on_one_client_submit_every_key_once(store):
    """Two ``factorize_recover`` runs iterating on the cluster and two raw-data ``nmf`` calls on
    one client: no key reaches the scheduler as two different tasks (distributed's "Detected
    different `run_spec`" warning, which it says can cause failures and deadlocks). The
    NNDSVD init's U / Vt were computed unfused inside its norms, then persisted fused in W0 / H0."""
    with process_cluster(2, memory_limit="1GiB") as client:
        client.run_on_scheduler(_record_scheduler_warnings)
        kept = [_run(store, client, max_iter=5, on_cluster=True) for _ in range(2)]
        X = cf.open_array(store, variable="M")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", cf.ConvergenceWarning)
            kept += [cf.nmf(X, 3, max_iter=5, client=client) for _ in range(2)]
        logged = client.run_on_scheduler(_scheduler_warnings)
        assert len(kept) == 4
    assert not [m for m in logged if "run_spec" in m], logged[:1]


@pytest.fixture(scope="module")
def big_chunks(tmp_path_factory):
    """A 4000 x 2000 float32 input stored as one 30.5 MiB chunk."""
    path = tmp_path_factory.mktemp("adapt") / "input.zarr"
    planted_nmf_zarr(str(path), 4000, 2000, 3, density=0.1, noise=0.05, random_state=3,
                     chunks=(4000, 2000), progress=False)
    return str(path)


def _adapt_job(src, out):
    job = _small_job(src, out)
    job["cfact"]["factor"]["max_iter"] = 20
    return job


@pytest.mark.timeout(180)
@pytest.mark.filterwarnings("ignore::cfact_dask.ConvergenceWarning")
@pytest.mark.filterwarnings("ignore::cfact_dask.RecoveryWarning")
def test_memory_check_adapt_reads_smaller_blocks_that_fit(big_chunks, tmp_path, caplog):
    """Workers too small for the input's chunks: ``refuse`` refuses the job; ``adapt`` reads the
    input in row blocks the plan fits, logs that in one line, and finishes without a worker
    killed, equal (to float rounding: the sketch's sums over row blocks are ordered
    differently) to the run on the input's own chunks with ample memory."""
    import logging

    with process_cluster(2, memory_limit="2GiB") as client:
        ref = cf.run_job(_adapt_job(big_chunks, str(tmp_path / "ref.zarr")), client=client)
        ref_W, ref_H = _np(ref.W, client), _np(ref.H, client)
        ref_Y = _np(ref.sketch.data, client)
    with process_cluster(2, memory_limit="400MiB") as client:
        with pytest.raises(cf.errors.InsufficientMemoryError):
            cf.run_job(_adapt_job(big_chunks, str(tmp_path / "refused.zarr")), client=client)
        pids = sorted(client.run(os.getpid).values())
        with dask.config.set({"cfact.run.memory-check": "adapt"}), \
                caplog.at_level(logging.WARNING, logger="cfact_dask.pipeline._run"):
            got = cf.run_job(_adapt_job(big_chunks, str(tmp_path / "adapted.zarr")),
                             client=client)
        W, H, Y = _np(got.W, client), _np(got.H, client), _np(got.sketch.data, client)
        assert sorted(client.run(os.getpid).values()) == pids  # no worker was restarted
    said = [r.getMessage() for r in caplog.records if "memory-check adapt" in r.getMessage()]
    assert len(said) == 1 and "blocks of" in said[0] and "4000" in said[0]
    assert got.factors.n_iter_ == ref.factors.n_iter_
    # the float32 sketch: its sums over 2 row blocks instead of 1 differ in the last bits only
    assert Y.dtype == ref_Y.dtype == np.float32 and not np.array_equal(Y, ref_Y)
    np.testing.assert_allclose(Y, ref_Y, rtol=0, atol=64 * np.finfo(np.float32).eps
                               * np.abs(ref_Y).max())
    # ... which the factorization carries into W and H at that relative size
    for a, b in ((W, ref_W), (H, ref_H)):
        assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(b)


def test_memory_check_adapt_refuses_when_no_block_fits(store, tmp_path):
    """The worker process alone is above 150 MiB: no block size helps, adapt refuses."""
    with process_cluster(1, memory_limit="150MiB") as client, \
            dask.config.set({"cfact.run.memory-check": "adapt"}), \
            pytest.raises(cf.errors.InsufficientMemoryError, match="per worker"):
        cf.run_job(_small_job(store, str(tmp_path / "r.zarr")), client=client)
    assert not (tmp_path / "r.zarr").exists()
