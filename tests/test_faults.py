"""Faults survived for real (issue 14): worker processes SIGKILLed *inside* ``factorize_recover``
and ``cfact run`` are restarted by their nannies and the run ends bitwise equal to the
uninterrupted one; without nannies, the run stops with :class:`NoWorkersError` naming the stage
after ``cfact.cluster.no-workers-timeout`` instead of waiting forever.

Every cluster here is real: ``LocalCluster(processes=True)`` or ``python -m dask scheduler`` /
``python -m dask worker`` subprocesses on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
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
from conftest import process_cluster

import cfact_dask as cf
from cfact_dask.datasets import planted_nmf_zarr
from cfact_dask.errors import NoWorkersError
from cfact_dask.nmf import NMFResult

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
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


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
