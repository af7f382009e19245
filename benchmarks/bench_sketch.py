"""Sketch throughput vs a plain read pass, side by side in one run.

Generates (once) a Zarr array of low-rank + noise float32 data, then times, interleaved:
a plain read pass (``da.from_zarr(p).sum()``), ``cf.sketch`` with each kind at d = 400, and a
``dask.array.linalg.compression_matrix``-style Gaussian GEMM (dask random Ω, ``Ω @ X``).
Prints each time as a ratio to the read pass and the peak RSS of the worker processes.

Usage::

    python benchmarks/bench_sketch.py                 # 250 000 x 2 000 float32 (2 GB)
    python benchmarks/bench_sketch.py --n 50000 --m 1000 --repeats 1   # quick

The read pass runs first as a warm-up, so every timed pass reads from the OS page cache
(the machine has 24 GiB; the store is 2 GB): the ratios compare compute overhead, not disk.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import dask.array as da
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import WorkerPeakRSS, gib, interleave, machine, median, write_results  # noqa: E402

import cfact_dask as cf  # noqa: E402


def _block(block_id, chunks, rank, seed):
    i, j = block_id
    r0 = sum(chunks[0][:i])
    c0 = sum(chunks[1][:j])
    rng_w = np.random.default_rng([seed, 0, i])
    rng_h = np.random.default_rng([seed, 1, j])
    rng_e = np.random.default_rng([seed, 2, i, j])
    W = np.abs(rng_w.standard_normal((chunks[0][i], rank)))
    H = np.abs(rng_h.standard_normal((rank, chunks[1][j])))
    del r0, c0
    return (W @ H + 0.1 * rng_e.standard_normal((chunks[0][i], chunks[1][j]))).astype(np.float32)


def make_store(path: str, n: int, m: int, chunks: tuple[int, int], rank: int = 10) -> None:
    if os.path.exists(os.path.join(path, "zarr.json")):
        return
    norm = da.core.normalize_chunks(chunks, (n, m))
    x = da.map_blocks(
        lambda block_id=None: _block(block_id, norm, rank, 0),
        chunks=norm, dtype=np.float32, meta=np.empty((0, 0), np.float32),
    )
    x.to_zarr(path, overwrite=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=250_000)
    ap.add_argument("--m", type=int, default=2_000)
    ap.add_argument("--chunk-rows", type=int, default=25_000)
    ap.add_argument("--chunk-cols", type=int, default=500)
    ap.add_argument("--d", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="4GiB")
    ap.add_argument("--store", default=None)
    args = ap.parse_args()

    from distributed import Client, LocalCluster

    store = args.store or os.path.join(
        os.path.dirname(__file__), "data", f"sketch_{args.n}x{args.m}.zarr"
    )
    os.makedirs(os.path.dirname(store), exist_ok=True)
    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                           memory_limit=args.memory_limit, dashboard_address=None)
    client = Client(cluster)
    t0 = time.perf_counter()
    make_store(store, args.n, args.m, (args.chunk_rows, args.chunk_cols))
    gen_s = time.perf_counter() - t0
    X = da.from_zarr(store)
    chunk_bytes = args.chunk_rows * args.chunk_cols * 4
    print(f"store {store}: shape {X.shape} chunks {X.chunksize} float32 "
          f"({gib(X.nbytes)}; default zarr codec), generated/checked in {gen_s:.1f} s")

    def read():
        da.from_zarr(store).sum().compute()

    def make_sketch(kind):
        def run():
            cf.sketch(store, args.d, kind=kind, seed=0).data.compute()
        return run

    def gaussian_gemm():
        Xz = da.from_zarr(store)
        omega = da.random.default_rng(0).standard_normal(
            size=(args.d, Xz.shape[0]), chunks=(args.d, Xz.chunks[0])
        ).astype(np.float32)
        (omega @ Xz).compute()

    cases = {"read pass": read}
    for kind in cf.KINDS:
        cases[f"cf.sketch {kind}"] = make_sketch(kind)
    cases["dask Gaussian GEMM (compression_matrix style)"] = gaussian_gemm

    read()  # warm the page cache
    import psutil

    idle = max(psutil.Process(pid).memory_info().rss for pid in client.run(os.getpid).values())
    peaks: dict[str, int] = {}
    times: dict[str, list[float]] = {k: [] for k in cases}
    sampler = WorkerPeakRSS(client)
    for _ in range(args.repeats):
        for name, fn in cases.items():
            with sampler:
                t = interleave({name: fn}, 1)[name][0]
            times[name].append(t)
            peaks[name] = max(peaks.get(name, 0), sampler.max_bytes)

    # memory: RSS never shrinks back, so each case gets fresh workers, warmed up (imports, one
    # chunk read), and its peak is measured above that baseline
    above_idle: dict[str, int] = {}
    for name, fn in cases.items():
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                          memory_limit=args.memory_limit, dashboard_address=None) as fresh, \
                Client(fresh) as fc:
            fc.run(lambda: __import__("cfact_dask") and None)
            da.from_zarr(store)[: args.chunk_rows, : args.chunk_cols].sum().compute()
            base_rss = max(psutil.Process(pid).memory_info().rss
                           for pid in fc.run(os.getpid).values())
            fresh_sampler = WorkerPeakRSS(fc)
            with fresh_sampler:
                fn()
            above_idle[name] = fresh_sampler.max_bytes - base_rss
    client.close()
    client = Client(cluster)
    base = median(times["read pass"])
    # the planner's prediction of the sketch pass's memory per worker above the worker process
    # itself (the plan's worker_peak includes the process, worker_base), against the measured
    # peak above the workers' idle RSS
    plans = {}
    for kind in cf.KINDS:
        job = {"cfact": {"input": {"path": store}, "sketch": {"n_components": args.d,
                                                              "kind": kind, "holdout": 0},
                         "factor": {"rank": 10}, "output": {"path": store + ".run"}}}
        p = cf.plan(job, n_workers=args.workers, threads_per_worker=1)
        plans[f"cf.sketch {kind}"] = p.worker_peak["sketch"] - p.worker_base
    budget = 3 * (chunk_bytes + args.d * args.chunk_cols * 4)
    rows = []
    print(f"\nidle worker RSS {gib(idle)}")
    print("\n| case | median s | ratio to read | peak worker RSS | above idle | planned | "
          "measured / planned | target |")
    print("|---|---|---|---|---|---|---|---|")
    for name in cases:
        med = median(times[name])
        target = ""
        if name.startswith("cf.sketch"):
            target = "<= 2.5x" if "gaussian" in name else "<= 1.3x"
        above = above_idle[name]
        planned = plans.get(name)
        rows.append({"case": name, "median_s": med, "ratio": med / base,
                     "peak_worker_rss": peaks[name], "above_idle": above,
                     "planned_worker_bytes": planned, "times": times[name], "target": target})
        pl = f"{gib(planned)} | {above / planned:.2f}" if planned else " | "
        print(f"| {name} | {med:.2f} | {med / base:.2f} | {gib(peaks[name])} | {gib(above)} | "
              f"{pl} | {target} |")
    print(f"\nper-worker memory budget 3 x (chunk + d x m_chunk) = {gib(budget)} above the "
          f"worker's RSS after a warm-up (workers restarted before each case)")
    path = write_results("bench_sketch", {
        "command": "python " + " ".join(sys.argv),
        "machine": machine(),
        "shape": list(X.shape), "chunks": list(X.chunksize), "d": args.d,
        "workers": args.workers, "threads_per_worker": 1, "idle_worker_rss": idle,
        "note": "page cache warm (read pass run first)",
        "rows": rows,
    })
    print(f"results: {path}")
    client.close()
    cluster.close()


if __name__ == "__main__":
    main()
