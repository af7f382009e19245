"""Out-of-core bound: a Zarr array several times larger than the workers' total memory limit goes
through sketch → factor → recover → reconstruct (``cf.factorize_recover``) with no worker over its
limit.

A planted sparse NMF matrix (float32, zstd) of ``--gb`` GiB is written blockwise with
``cfact_dask.datasets.planted_nmf_zarr`` (once; reused when present), then the whole pipeline runs
on a ``LocalCluster`` of ``--workers`` processes with ``--memory-limit`` each. The RSS of every
worker process is sampled every 50 ms; per-stage peaks come from the sample times and the
pipeline's own per-stage timings. Worker restarts (a pid that changes) and bytes spilled to disk
are reported too.

Usage::

    df -h benchmarks/data                                      # needs ~2.2 x --gb free
    python benchmarks/bench_out_of_core.py                     # 16 GiB, 2 workers x 2 GiB
    python benchmarks/bench_out_of_core.py --gb 1 --keep-data  # quick

Writes ``benchmarks/results/bench_out_of_core[_<gb>gb].json``. The input and the run store are
deleted at the end unless ``--keep-data``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
import warnings

sys.path.insert(0, os.path.dirname(__file__))
from _common import gib, machine, write_results  # noqa: E402

import cfact_dask as cf  # noqa: E402
from cfact_dask.datasets import planted_nmf_zarr  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class RSSTrace:
    """RSS of each worker process over time (pids re-read every second: workers may restart)."""

    def __init__(self, client, interval: float = 0.05) -> None:
        self.client = client
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (time, pid, rss)
        self.pids_seen: set[int] = set()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _procs(self):
        import psutil

        out = []
        for pid in self.client.run(os.getpid).values():
            self.pids_seen.add(pid)
            try:
                out.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        return out

    def _loop(self) -> None:
        procs = self._procs()
        last = time.time()
        while not self._stop.is_set():
            now = time.time()
            for p in procs:
                try:
                    self.samples.append((now, p.pid, p.memory_info().rss))
                except Exception:  # noqa: BLE001 - a worker died / restarted
                    pass
            if now - last > 1.0:
                try:
                    procs = self._procs()
                except Exception:  # noqa: BLE001
                    pass
                last = now
            time.sleep(self.interval)

    def __enter__(self) -> RSSTrace:
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()

    def peak(self, t0: float = 0.0, t1: float = float("inf")) -> dict[int, int]:
        out: dict[int, int] = {}
        for t, pid, rss in self.samples:
            if t0 <= t <= t1:
                out[pid] = max(out.get(pid, 0), rss)
        return out


def _spilled(client) -> dict[str, int]:
    def f(dask_worker):
        data = dask_worker.data
        tot = getattr(data, "spilled_total", None)
        return int(getattr(tot, "disk", 0) or 0) if tot is not None else 0

    try:
        return {k: int(v) for k, v in client.run(f).items()}
    except Exception:  # noqa: BLE001 - not available in this version
        return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gb", type=float, default=16.0, help="input size in GiB (float32)")
    ap.add_argument("--m", type=int, default=2048, help="samples (columns)")
    ap.add_argument("--chunk-mib", type=float, default=64.0, help="input chunk size")
    ap.add_argument("--rank", type=int, default=10)
    ap.add_argument("--d", type=int, default=400, help="sketch size")
    ap.add_argument("--max-iter", type=int, default=200)
    ap.add_argument("--recover", default="lstsq-data",
                    help="recovery method (lstsq-data: exact, one extra pass)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory-limit", default="2GiB")
    ap.add_argument("--data-dir", default=os.path.join(HERE, "data"))
    ap.add_argument("--keep-data", action="store_true")
    ap.add_argument("--n", type=int, default=None, help="features (default: from --gb)")
    ap.add_argument("--density", type=float, default=0.05,
                    help="nonzeros per column of the planted W / n (the paper: 0.05)")
    ap.add_argument("--out", default="bench_out_of_core", help="results file name")
    args = ap.parse_args()

    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster

    limit = parse_bytes(args.memory_limit)
    n = args.n or int(args.gb * 2**30 / (4 * args.m))
    rows = max(1, int(args.chunk_mib * 2**20 / (4 * args.m)))
    tag = f"{args.gb:g}gb"
    data_tag = tag if args.n is None and args.density == 0.05 else f"{n}x{args.m}_{args.density:g}"
    src = os.path.join(args.data_dir, f"ooc_{data_tag}.zarr")
    out = os.path.join(args.data_dir, f"ooc_{data_tag}_run.zarr")
    os.makedirs(args.data_dir, exist_ok=True)
    free = shutil.disk_usage(args.data_dir).free
    need = 2.3 * args.gb * 2**30
    if free < need and not os.path.exists(src):
        raise SystemExit(f"{args.data_dir} has {gib(free)} free; this run needs about {gib(need)}")
    print(f"input {n} x {args.m} float32 = {gib(4 * n * args.m)} in chunks of {rows} x {args.m} "
          f"({rows * args.m * 4 / 2**20:.0f} MiB); workers {args.workers} x {gib(limit)} "
          f"= {gib(args.workers * limit)} ({4 * n * args.m / (args.workers * limit):.1f}x)",
          flush=True)

    with LocalCluster(n_workers=args.workers, threads_per_worker=args.threads, processes=True,
                      memory_limit=limit, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        t0 = time.perf_counter()
        generated = False
        if not os.path.exists(os.path.join(src, "zarr.json")):
            planted_nmf_zarr(src, n, args.m, args.rank, density=args.density, noise=0.1,
                             random_state=0,
                             chunks=(rows, args.m), client=client, progress=False,
                             overwrite=True)
            generated = True
        gen_s = time.perf_counter() - t0
        print(f"input {'generated' if generated else 'reused'} in {gen_s:.1f} s", flush=True)
        X = cf.open_array(src, variable="M")
        if os.path.exists(out):
            shutil.rmtree(out)
        pids_before = set(client.run(os.getpid).values())
        # the planner's prediction for the same job on this cluster, made before the run
        job = {"cfact": {
            "input": {"path": src, "variable": "M"},
            "sketch": {"n_components": args.d, "seed": 0},
            "factor": {"rank": args.rank, "max_iter": args.max_iter, "random_state": 0},
            "recover": {"method": args.recover},
            "output": {"path": out, "reconstruct": True},
        }}
        predicted = cf.plan(job, client=client)
        with RSSTrace(client) as trace:
            t_start = time.time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = cf.factorize_recover(
                    X, args.rank, sketch=dict(n_components=args.d, seed=0),
                    factor=dict(max_iter=args.max_iter, random_state=0),
                    recover=args.recover, out=out, reconstruct=True, client=client,
                    progress=False,
                )
            t_end = time.time()
        pids_after = set(client.run(os.getpid).values())
        spilled = _spilled(client)
        report = res.report
    # per-stage peaks from the sample times
    stages = {}
    t = t_start
    for name, secs in report["seconds"].items():
        peaks = trace.peak(t, t + secs)
        stages[name] = {"seconds": secs, "peak_rss_bytes": max(peaks.values(), default=0)}
        t += secs
    for name, st in stages.items():
        pred = predicted.worker_peak.get(name)
        st["planned_worker_bytes"] = pred
        st["measured_over_planned"] = (st["peak_rss_bytes"] / pred) if pred else None
    overall = trace.peak(t_start, t_end)
    peak = max(overall.values(), default=0)
    restarts = len(trace.pids_seen | pids_after) - len(pids_before)
    payload = {
        "machine": machine(),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "args": vars(args),
        "input": {"shape": [n, args.m], "dtype": "float32", "codec": "zstd (zarr default)",
                  "chunks": [rows, args.m], "bytes": 4 * n * args.m,
                  "generated_seconds": gen_s if generated else None},
        "workers": args.workers, "memory_limit_bytes": limit,
        "input_over_total_limit": 4 * n * args.m / (args.workers * limit),
        "stages": stages,
        "total_seconds": t_end - t_start,
        "worker_peak_rss_bytes": overall,
        "max_worker_peak_rss_bytes": peak,
        "max_peak_over_limit": peak / limit,
        "worker_restarts": restarts,
        "spilled_to_disk_bytes": spilled,
        "report": report,
        "plan": predicted.to_dict(),
    }
    name = args.out if args.out != "bench_out_of_core" else (
        "bench_out_of_core" + ("" if args.gb == 16 else f"_{tag}"))
    path = write_results(name, payload)
    print(f"{'stage':<12}{'seconds':>10}{'peak worker RSS':>18}{'planned':>12}{'ratio':>8}")
    for name, s in stages.items():
        ratio = s["measured_over_planned"]
        print(f"{name:<12}{s['seconds']:>10.1f}{gib(s['peak_rss_bytes']):>18}"
              f"{gib(s['planned_worker_bytes'] or 0):>12}"
              f"{'' if ratio is None else f'{ratio:.2f}':>8}")
    print(f"total {t_end - t_start:.1f} s; max worker RSS {gib(peak)} = {peak / limit:.0%} of the "
          f"{gib(limit)} limit; worker restarts {restarts}; spilled {spilled}")
    rec = report.get("reconstruction") or {}
    print(f"reconstruction relative error {rec.get('relative_error')}; results -> {path}")
    if not args.keep_data:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)
    if peak > limit or restarts:
        raise SystemExit("a worker went over its memory limit or restarted")


if __name__ == "__main__":
    main()
