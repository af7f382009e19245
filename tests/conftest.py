"""Shared fixtures: a real multi-process LocalCluster, small planted data."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest


@contextlib.contextmanager
def process_cluster(n_workers: int = 2, memory_limit: str = "2GiB") -> Iterator[Any]:
    """A real process-based LocalCluster (1 thread per worker) and a non-default client."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
        memory_limit=memory_limit,
    )
    client = Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def tree_hash(path: str | os.PathLike) -> str:
    """SHA-256 over every file name and content below ``path`` (to prove a store unchanged)."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(os.path.relpath(p, path).encode())
            with open(p, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


class CountingArray:
    """Array-like whose reads are counted per slice (what a store would see); wrap it with
    ``da.from_array(CountingArray(a), chunks=..., asarray=False)``."""

    def __init__(self, a: np.ndarray) -> None:
        self.a, self.shape, self.dtype, self.ndim = a, a.shape, a.dtype, a.ndim
        self.reads: dict[tuple, int] = {}
        self.lock = threading.Lock()

    def __getitem__(self, idx: Any) -> np.ndarray:
        out = self.a[idx]
        if out.size:
            key = tuple((s.start, s.stop) for s in idx)
            with self.lock:
                self.reads[key] = self.reads.get(key, 0) + 1
        return out


class Crash(Exception):
    """Raised by :func:`crash_at` to interrupt a run."""


def crash_at(iteration: int) -> Any:
    """An iteration callback that interrupts the run (raises :class:`Crash`) at ``iteration``."""

    def callback(state: dict[str, Any]) -> None:
        if state["iteration"] == iteration:
            raise Crash

    return callback


@pytest.fixture(scope="session")
def cluster_client():
    """A real 2-worker, process-based distributed cluster shared by the whole session."""
    with process_cluster(2) as client:
        yield client


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def stop_processes(procs) -> None:
    """Terminate subprocesses (a scheduler and its workers) in reverse order, killing any that
    do not stop within 20 s."""
    for p in procs[::-1]:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
