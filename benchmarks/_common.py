"""Shared helpers for benchmarks: worker peak-RSS sampling, machine info, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

RESULTS = os.path.join(os.path.dirname(__file__), "results")


class WorkerPeakRSS:
    """Sample the RSS of every worker process of ``client`` every ``interval`` seconds."""

    def __init__(self, client: Any, interval: float = 0.05) -> None:
        import psutil

        self.procs = [psutil.Process(pid) for pid in client.run(os.getpid).values()]
        self.interval = interval
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._t: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            for p in self.procs:
                try:
                    rss = p.memory_info().rss
                except Exception:  # noqa: BLE001 - a worker may restart
                    continue
                self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
            time.sleep(self.interval)

    def __enter__(self) -> WorkerPeakRSS:
        self.peak = {}
        self._stop.clear()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._t is not None:
            self._t.join()

    @property
    def max_bytes(self) -> int:
        return max(self.peak.values(), default=0)


def machine() -> dict[str, Any]:
    import dask
    import numpy
    import zarr

    try:
        import psutil

        mem = psutil.virtual_memory().total
    except ImportError:  # pragma: no cover
        mem = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_bytes": mem,
        "dask": dask.__version__,
        "zarr": zarr.__version__,
        "numpy": numpy.__version__,
    }


def interleave(cases: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Run the cases A, B, C, A, B, C, ... and return their wall times."""
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def write_results(name: str, payload: dict[str, Any]) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)
    return path


def gib(x: float) -> str:
    return f"{x / 2**30:.2f} GiB"


def planted_factors(n: int, m: int, r: int, density: float, rng: Any) -> tuple[Any, Any, float]:
    """The planted sparse NMF factors of benchmark (a) (Sharan et al. 2019): W (n x r) with a
    fraction ``density`` of nonzeros |N(0, 1)| per column, H = |N(0, 1)| rows scaled to unit
    norm, and ‖W H‖_F (from trace((WᵀW)(HHᵀ)), without forming W H). Draws from ``rng`` in this
    order, so a caller drawing its noise next from the same ``rng`` gets the same data as ever."""
    import numpy as np

    k = max(1, int(density * n))
    W = np.zeros((n, r))
    for j in range(r):
        W[rng.choice(n, k, replace=False), j] = np.abs(rng.standard_normal(k))
    H = np.abs(rng.standard_normal((r, m)))
    H /= np.linalg.norm(H, axis=1, keepdims=True)
    return W, H, float(np.sqrt(np.sum((W.T @ W) * (H @ H.T))))
