"""Object storage: the sketch pass vs a plain read of the same S3 store, and the pipeline's peak
worker memory vs the planner's prediction, against a local S3 server (moto's standalone server).

Starts ``python -m moto.server`` on 127.0.0.1 (a free port), uploads a generated low-rank +
noise float32 Zarr array (default zarr codec, no sharding) into a bucket, then on a 2-worker
process cluster times, interleaved A B A B: a plain read pass ``da.from_zarr(url).sum()`` and
``cf.sketch(url, d, kind)`` for each sparse kind. The read pass runs first as a warm-up; every
pass fetches every chunk from the server over HTTP (moto keeps the objects in memory, so this
compares the client side: requests, decoding, compute), one request per chunk.

Then the whole pipeline (``cf.run_job``: sketch + hold-out, NMF, nnlasso recovery, the run
store on ``s3://``) runs on fresh workers while their RSS is sampled; the peak above the
workers' warmed-up idle RSS is compared with ``cf.plan(job).max_worker_peak``.

Usage::

    python benchmarks/bench_s3.py                       # 100 000 x 1 000 float32 (400 MB)
    python benchmarks/bench_s3.py --n 20000 --repeats 1  # quick
    python benchmarks/bench_s3.py --recover none          # the README figures (no recovery)
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings

import dask.array as da

sys.path.insert(0, os.path.dirname(__file__))
from _common import WorkerPeakRSS, gib, machine, median, write_results  # noqa: E402
from bench_sketch import make_store  # noqa: E402

import cfact_dask as cf  # noqa: E402

SPARSE = ("expander", "sparse_sign", "countsketch")


def start_moto(log: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with open(log, "ab") as f:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                                 str(port)], stdout=f, stderr=f, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "/moto-api/", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto server did not start")


def pipeline_memory(args: argparse.Namespace, src: str, out: str) -> dict:
    """Run the pipeline on fresh workers; their peak RSS above the warmed-up idle vs the plan."""
    import psutil
    from distributed import Client, LocalCluster

    recover = {"method": args.recover}
    if args.recover != "none":
        recover["max_iter"] = args.recover_max_iter
    job = {"cfact": {
        "input": {"path": src},
        "sketch": {"n_components": args.d, "kind": "sparse_sign"},
        "factor": {"rank": args.rank, "max_iter": 100},
        "recover": recover,
        "output": {"path": out, "overwrite": True},
    }}
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      memory_limit=args.memory_limit, dashboard_address=None) as fresh, \
            Client(fresh) as fc:
        fc.run(lambda: __import__("cfact_dask") and None)
        # warm-up through cfact's own opening (the same S3 options, so the same S3 client per
        # worker as the pipeline: a botocore client costs ~20 MB once per process)
        cf.open_array(src).data[: args.chunk_rows, : args.chunk_cols].sum().compute()
        idle = max(psutil.Process(pid).memory_info().rss for pid in fc.run(os.getpid).values())
        p = cf.plan(job, client=fc)
        sampler = WorkerPeakRSS(fc)
        t0 = time.perf_counter()
        with sampler, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = cf.run_job(job, client=fc, progress=False)
        seconds = time.perf_counter() - t0
    above = sampler.max_bytes - idle
    return {"seconds": seconds, "stage_seconds": res.report["seconds"],
            "peak_worker_rss": sampler.max_bytes, "idle_worker_rss": idle, "above_idle": above,
            "planned_worker_peak": p.max_worker_peak, "planned_by_stage": p.worker_peak,
            "ratio": above / p.max_worker_peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--m", type=int, default=1_000)
    ap.add_argument("--chunk-rows", type=int, default=12_500)
    ap.add_argument("--chunk-cols", type=int, default=250)
    ap.add_argument("--d", type=int, default=400)
    ap.add_argument("--rank", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="3GiB")
    ap.add_argument("--recover", default="nnlasso",
                    help="recovery method of the pipeline run ('none': sketch and factor only)")
    ap.add_argument("--recover-max-iter", type=int, default=100)
    args = ap.parse_args()

    from distributed import Client, LocalCluster

    tmp = tempfile.mkdtemp(prefix="bench_s3_")
    proc, endpoint = start_moto(os.path.join(tmp, "moto.log"))
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint})
    try:
        import s3fs

        fs = s3fs.S3FileSystem()
        fs.mkdir("bench")
        local = os.path.join(tmp, "x.zarr")
        t0 = time.perf_counter()
        make_store(local, args.n, args.m, (args.chunk_rows, args.chunk_cols), args.rank)
        fs.put(local, "bench/x.zarr", recursive=True)
        url = "s3://bench/x.zarr"
        X = da.from_zarr(url)
        print(f"store {url} at {endpoint}: shape {X.shape} chunks {X.chunksize} float32 "
              f"({gib(X.nbytes)}, default zarr codec, {X.npartitions} objects), generated and "
              f"uploaded in {time.perf_counter() - t0:.1f} s")

        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                               memory_limit=args.memory_limit, dashboard_address=None)
        client = Client(cluster)

        def read():
            da.from_zarr(url).sum().compute()

        def make_sketch(kind):
            def run():
                cf.sketch(url, args.d, kind=kind, seed=0).data.compute()
            return run

        cases = {"read pass": read}
        for kind in SPARSE:
            cases[f"cf.sketch {kind}"] = make_sketch(kind)
        read()  # warm-up: imports, connections
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.repeats):  # A B C D, A B C D, ...
            for name, fn in cases.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        base = median(times["read pass"])
        rows = []
        print("\n| case | median s | ratio to read | target |\n|---|---|---|---|")
        for name, ts in times.items():
            target = "" if name == "read pass" else "<= 1.3x"
            rows.append({"case": name, "median_s": median(ts), "ratio": median(ts) / base,
                         "times": ts, "target": target})
            print(f"| {name} | {median(ts):.2f} | {median(ts) / base:.2f} | {target} |")
        client.close()
        cluster.close()

        # the pipeline on fresh workers: peak RSS above their warmed-up idle vs the plan, on
        # the S3 store and on the same store on local disk (what S3 adds)
        pipelines = {}
        for where, src, out in (("s3", url, "s3://bench/run.zarr"),
                                ("local", local, os.path.join(tmp, "run.zarr"))):
            pipelines[where] = pipeline_memory(args, src, out)
            r = pipelines[where]
            print(f"\npipeline on {where} in {r['seconds']:.1f} s (stages "
                  f"{ {k: round(v, 1) for k, v in r['stage_seconds'].items()} }); peak worker "
                  f"RSS {gib(r['peak_worker_rss'])}, {gib(r['above_idle'])} above the idle "
                  f"{gib(r['idle_worker_rss'])}; planned per worker "
                  f"{gib(r['planned_worker_peak'])} ({r['planned_by_stage']}); measured / "
                  f"planned {r['ratio']:.2f}")
        path = write_results("bench_s3", {
            "command": "python " + " ".join(sys.argv),
            "machine": machine(),
            "server": "moto standalone server on 127.0.0.1 (objects in its memory)",
            "shape": list(X.shape), "chunks": list(X.chunksize), "dtype": "float32",
            "codec": "zarr default (zstd)", "d": args.d, "workers": args.workers,
            "threads_per_worker": 1,
            "note": ("read pass run first as a warm-up; interleaved A B A B; the pipeline's "
                     "workers are fresh, warmed up by one chunk read through cf.open_array, and "
                     "their peak RSS is taken above that"),
            "rows": rows,
            "recover": args.recover,
            "pipelines": pipelines,
        })
        print(f"results: {path}")
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
