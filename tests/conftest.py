"""Shared fixtures: a real multi-process LocalCluster, small planted data."""

from __future__ import annotations

import contextlib
import hashlib
import os
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


@pytest.fixture(scope="session")
def cluster_client():
    """A real 2-worker, process-based distributed cluster shared by the whole session."""
    with process_cluster(2) as client:
        yield client


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
