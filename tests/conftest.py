"""Shared fixtures: a real multi-process LocalCluster, small planted data."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def cluster_client():
    """A real 2-worker, process-based distributed cluster shared by the whole session."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        memory_limit="2GiB",
    )
    client = Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
