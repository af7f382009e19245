"""Load: many small Factorize-Recover pipelines submitted at once to one cluster.

Starts one ``LocalCluster`` (processes), runs ``--jobs`` small pipelines one after the other
(the serial reference, also its throughput), then all of them at once from ``--jobs`` client
threads, each calling ``cf.factorize_recover(..., client=client)``. Checks that every concurrent
result equals its serial result, and measures the scheduler's responsiveness during the load by
timing a trivial ``client.submit(lambda: 1).result()`` every ``--probe-every`` seconds.

Usage::

    python benchmarks/bench_load.py                       # 20 jobs of 2000 x 400
    python benchmarks/bench_load.py --jobs 8 --n 800      # quick

Writes ``benchmarks/results/bench_load.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import WorkerPeakRSS, gib, machine, write_results  # noqa: E402

import cfact_dask as cf  # noqa: E402
from cfact_dask.datasets import planted_nmf  # noqa: E402


def _job(i: int, args: argparse.Namespace, client) -> tuple[np.ndarray, np.ndarray, float]:
    M, _, _ = planted_nmf(args.n, args.m, args.rank, density=0.05, noise=0.05, random_state=i)
    X = cf.open_array(M.astype(np.float32), chunks=(args.n // 4, args.m // 2))
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cf.factorize_recover(X, args.rank, sketch=dict(n_components=args.d, seed=i),
                                   factor=dict(max_iter=args.max_iter, random_state=i),
                                   recover="nnlasso", client=client, progress=False)
    W = client.compute(res.W).result() if hasattr(res.W, "dask") else np.asarray(res.W)
    H = client.compute(res.H).result() if hasattr(res.H, "dask") else np.asarray(res.H)
    return np.asarray(W), np.asarray(H), time.perf_counter() - t0


class Probe:
    """Time a trivial task round trip every ``every`` seconds while the load runs."""

    def __init__(self, client, every: float) -> None:
        self.client = client
        self.every = every
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            assert self.client.submit(lambda: 1, pure=False).result(timeout=120) == 1
            self.latencies.append(time.perf_counter() - t0)
            self._stop.wait(self.every)

    def __enter__(self) -> Probe:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()

    def summary(self) -> dict[str, float]:
        xs = sorted(self.latencies)
        if not xs:
            return {}
        return {"n": len(xs), "median_s": statistics.median(xs),
                "p95_s": xs[int(0.95 * (len(xs) - 1))], "max_s": xs[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--n", type=int, default=2000, help="features per job")
    ap.add_argument("--m", type=int, default=400, help="samples per job")
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--d", type=int, default=300, help="sketch size")
    ap.add_argument("--max-iter", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory-limit", default="2GiB")
    ap.add_argument("--probe-every", type=float, default=0.25)
    ap.add_argument("--out", default="bench_load")
    args = ap.parse_args()

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=args.workers, threads_per_worker=args.threads, processes=True,
                      memory_limit=args.memory_limit, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        # idle responsiveness, for reference
        with Probe(client, args.probe_every) as idle:
            time.sleep(3)
        # the serial reference
        t0 = time.perf_counter()
        serial = [_job(i, args, client) for i in range(args.jobs)]
        serial_s = time.perf_counter() - t0
        print(f"serial: {args.jobs} jobs in {serial_s:.1f} s", flush=True)
        # all at once
        with WorkerPeakRSS(client) as rss, Probe(client, args.probe_every) as loaded:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                conc = list(pool.map(lambda i: _job(i, args, client), range(args.jobs)))
            conc_s = time.perf_counter() - t0
        print(f"concurrent: {args.jobs} jobs in {conc_s:.1f} s", flush=True)
        mismatches = []
        max_diff = 0.0
        for i, ((Ws, Hs, _), (Wc, Hc, _)) in enumerate(zip(serial, conc, strict=True)):
            d = max(float(np.max(np.abs(Ws - Wc))), float(np.max(np.abs(Hs - Hc))))
            max_diff = max(max_diff, d)
            if not (np.allclose(Wc, Ws, rtol=1e-10, atol=1e-12)
                    and np.allclose(Hc, Hs, rtol=1e-10, atol=1e-12)):
                mismatches.append(i)
        payload = {
            "machine": machine(),
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
            "args": vars(args),
            "serial_seconds": serial_s,
            "concurrent_seconds": conc_s,
            "throughput_serial_jobs_per_min": 60 * args.jobs / serial_s,
            "throughput_concurrent_jobs_per_min": 60 * args.jobs / conc_s,
            "job_seconds_serial_median": statistics.median(s for _, _, s in serial),
            "job_seconds_concurrent_median": statistics.median(s for _, _, s in conc),
            "job_seconds_concurrent_max": max(s for _, _, s in conc),
            "all_equal_to_serial": not mismatches,
            "mismatched_jobs": mismatches,
            "max_abs_difference": max_diff,
            "probe_idle": idle.summary(),
            "probe_under_load": loaded.summary(),
            "worker_peak_rss_bytes": rss.peak,
        }
    path = write_results(args.out, payload)
    print(f"all {args.jobs} concurrent results equal the serial ones: {not mismatches} "
          f"(max |diff| {max_diff:.3g})")
    print(f"throughput: serial {payload['throughput_serial_jobs_per_min']:.1f} jobs/min, "
          f"concurrent {payload['throughput_concurrent_jobs_per_min']:.1f} jobs/min")
    pi, pl = payload["probe_idle"], payload["probe_under_load"]
    print(f"trivial task round trip: idle median {pi['median_s'] * 1e3:.1f} ms; under load "
          f"median {pl['median_s'] * 1e3:.1f} ms, p95 {pl['p95_s'] * 1e3:.1f} ms, max "
          f"{pl['max_s'] * 1e3:.1f} ms ({pl['n']} probes)")
    print(f"worker peak RSS {gib(max(rss.peak.values(), default=0))}; results -> {path}")
    if mismatches:
        raise SystemExit(f"jobs {mismatches} differ from their serial results")


if __name__ == "__main__":
    main()
