"""The planner against measurement, every method: planned vs measured peak per worker, passes.

For each method (svd one- and two-pass, sparse PCA, CP with and without a sketched mode and
with a refit or a sparse recovery, DGD+LOCAL, ℓp IRLS and ellipsoid, MESSI) a job with the
method's real ``factor`` keys is planned with ``cf.plan`` for the cluster it runs on, then run
once through the pipeline (``run_job``: stage ``factor``, and ``reconstruct`` where the case
writes a reconstruction) on a real ``LocalCluster`` (``--workers`` processes × ``--threads``,
with ``--memory-limit``). The workers are restarted before each case; a sampler reads every
worker's RSS and its bytes read (``read_chars`` of ``/proc/<pid>/io``, page-cache hits included)
every 50 ms, and each stage's window is taken from the pipeline's own ``run_stage`` (enter to
exit). Per stage it reports the peak RSS of the busiest worker against the planned
``worker_peak`` (ratio measured / planned), and the passes over the input measured as the
workers' bytes read over the input's stored bytes against the planned ``passes`` (a persisted
copy is read once; passes over it read no storage). Reads outside the stages (the input's
fingerprint) are reported apart.

Inputs (float32, Zstd, written once into ``--data-dir`` and reused): a features × samples matrix
(low rank plus noise) for the matrix methods, a points × D matrix (D = 256) for ℓp and MESSI, and
an order-3 tensor (CP rank 5 plus noise) for CP, each ``--mib`` MiB in chunks of ``--chunk-mib``.

Usage::

    python benchmarks/bench_plan_methods.py              # 256 MiB inputs, 16 MiB chunks
    python benchmarks/bench_plan_methods.py --quick      # 32 MiB inputs, smoke run

Writes ``benchmarks/results/bench_plan_methods[_quick].json``. Times are printed but are not
targets (the machine is shared); the peaks are what the planner is held to (within 1.5×).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
import warnings
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, write_results  # noqa: E402

import cfact_dask as cf  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
#: measured / planned must lie within [1 / TOLERANCE, TOLERANCE]
TOLERANCE = 1.5


class Trace:
    """RSS and bytes read of each worker process over time (pids re-read every second)."""

    def __init__(self, client: Any, interval: float = 0.05) -> None:
        self.client = client
        self.interval = interval
        self.samples: list[tuple[float, int, int, int]] = []  # (time, pid, rss, read_chars)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _procs(self) -> list[Any]:
        import psutil

        out = []
        for pid in self.client.run(os.getpid).values():
            try:
                out.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass
        return out

    def _sample(self, procs: list[Any]) -> None:
        now = time.time()
        for p in procs:
            try:
                self.samples.append((now, p.pid, p.memory_info().rss, p.io_counters().read_chars))
            except Exception:  # noqa: BLE001 - a worker died / restarted
                pass

    def _loop(self) -> None:
        procs = self.procs = self._procs()
        last = time.time()
        while not self._stop.is_set():
            self._sample(procs)
            if time.time() - last > 1.0:
                try:
                    procs = self.procs = self._procs()
                except Exception:  # noqa: BLE001
                    pass
                last = time.time()
            time.sleep(self.interval)
        self._sample(procs)

    def sample_now(self) -> None:
        """One sample of every worker now (at a stage's start and end: its reads are counted
        from there, not from the nearest periodic sample)."""
        self._sample(getattr(self, "procs", []))

    def __enter__(self) -> Trace:
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()

    def peak(self, t0: float, t1: float) -> int:
        """The largest RSS of any worker in ``[t0, t1]``."""
        return max((rss for t, _, rss, _ in self.samples if t0 <= t <= t1), default=0)

    def read(self, t0: float, t1: float) -> int:
        """Bytes the workers read in ``[t0, t1]`` (per pid: its last sample in the window minus
        its last sample before it, so a read that starts between two samples is counted)."""
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for t, pid, _, rc in self.samples:
            if t < t0:
                first[pid] = rc
            elif t <= t1:
                first.setdefault(pid, rc)
                last[pid] = rc
        return sum(last[p] - first[p] for p in last)


# ------------------------------------------------------------------------------ inputs
def _stored_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files
                     if not f.endswith(".json"))
    return total


def _write(path: str, shape: tuple[int, ...], chunks: tuple[int, ...], block: Any,
           client: Any) -> None:
    """A float32 Zarr array of ``shape`` whose every chunk is ``block(slices, seed)``."""
    import dask.array as da
    import numpy as np

    if os.path.exists(os.path.join(path, "zarr.json")):
        return

    def make(b: Any, block_info: Any = None) -> Any:
        loc = block_info[None]["array-location"]
        seed = abs(hash(tuple(lo for lo, _ in loc))) % 2**32
        return block(tuple(slice(lo, hi) for lo, hi in loc), seed).astype(np.float32)

    X = da.zeros(shape, chunks=chunks, dtype=np.float32).map_blocks(make, dtype=np.float32)
    X.to_zarr(path, overwrite=True, compute=False).compute(**({} if client is None else
                                                               {"scheduler": client}))


def make_inputs(data_dir: str, mib: float, chunk_mib: float, client: Any) -> dict[str, str]:
    """The matrix, the points matrix and the tensor (generated once per size)."""
    import numpy as np

    tag = f"{mib:g}mib_{chunk_mib:g}"
    paths = {k: os.path.join(data_dir, f"plan_{k}_{tag}.zarr") for k in ("matrix", "rows",
                                                                         "tensor")}
    rng = np.random.default_rng(0)
    # matrix: n × 1024, rank 10 + noise
    m = 1024
    n = int(mib * 2**20 / (4 * m))
    rows = max(1, int(chunk_mib * 2**20 / (4 * m)))
    U, V = rng.standard_normal((n, 10)), rng.standard_normal((10, m))
    _write(paths["matrix"], (n, m), (rows, m),
           lambda s, seed: U[s[0]] @ V[:, s[1]] + 0.1 * np.random.default_rng(seed)
           .standard_normal((s[0].stop - s[0].start, s[1].stop - s[1].start)), client)
    # points: n × 256, a union of 4 subspaces of dimension 8 + noise
    D = 256
    n2 = int(mib * 2**20 / (4 * D))
    rows2 = max(1, int(chunk_mib * 2**20 / (4 * D)))
    B = rng.standard_normal((4, 8, D))

    def points(s: Any, seed: int) -> Any:
        g = np.random.default_rng(seed)
        k = s[0].stop - s[0].start
        lab = g.integers(0, 4, k)
        return np.einsum("nj,njd->nd", g.standard_normal((k, 8)), B[lab]) \
            + 0.05 * g.standard_normal((k, D))

    _write(paths["rows"], (n2, D), (rows2, D), points, client)
    # tensor: I × 256 × 1024, CP rank 5 + noise
    J, K = 256, 1024
    Idim = int(mib * 2**20 / (4 * J * K))
    ci = max(1, int(chunk_mib * 2**20 / (4 * J * K)))
    A, Bf, C = (rng.standard_normal((s, 5)) for s in (Idim, J, K))
    _write(paths["tensor"], (Idim, J, K), (ci, J, K),
           lambda s, seed: np.einsum("ir,jr,kr->ijk", A[s[0]], Bf[s[1]], C[s[2]])
           + 0.1 * np.random.default_rng(seed).standard_normal(
               tuple(x.stop - x.start for x in s)), client)
    return paths


# ------------------------------------------------------------------------------ cases
def cases(quick: bool) -> list[dict[str, Any]]:
    """name, input, the job's factor section (its real keys: ``_methods.FACTORIZATIONS``), and
    whether a reconstruction is written (planned and measured as its own stage).

    ``tol: 0`` makes the iterative methods run ``max_iter`` iterations (the plan's passes are
    at most that many); every other option is left at the job files' defaults.
    """
    it = 2 if quick else 3
    return [
        {"name": "svd", "input": "matrix", "factor": {"method": "svd", "rank": 10},
         "reconstruct": True},
        {"name": "svd passes=2", "input": "matrix",
         "factor": {"method": "svd", "rank": 10, "passes": 2}, "reconstruct": False},
        {"name": "sparse-pca", "input": "matrix",
         "factor": {"method": "sparse-pca", "rank": 5, "max_iter": it, "tol": 0.0,
                    "alpha": 1.0}, "reconstruct": True},
        {"name": "cp", "input": "tensor",
         "factor": {"method": "cp", "rank": 5, "max_iter": it, "tol": 0.0},
         "reconstruct": True},
        {"name": "cp sketched", "input": "tensor",
         "factor": {"method": "cp", "rank": 5, "max_iter": it, "tol": 0.0, "sketch_mode": 2,
                    "sketch_size": 64}, "reconstruct": False},
        {"name": "cp sketched nnlasso", "input": "tensor",
         "factor": {"method": "cp", "rank": 5, "max_iter": it, "tol": 0.0, "sketch_mode": 2,
                    "sketch_size": 64, "recovery": "nnlasso", "nonnegative": True},
         "reconstruct": False},
        {"name": "dgd-local", "input": "matrix",
         "factor": {"method": "dgd-local", "rank": 10, "n_nodes": 4, "topology": "ring",
                    "max_iter": 10 * it, "tol": 0.0}, "reconstruct": True},
        {"name": "dgd-local J=8", "input": "matrix",
         "factor": {"method": "dgd-local", "rank": 10, "n_nodes": 8, "topology": "ring",
                    "max_iter": 10 * it, "tol": 0.0}, "reconstruct": False},
        {"name": "lp irls", "input": "rows",
         "factor": {"method": "lp", "rank": 8, "p": 1.0, "solver": "irls", "max_iter": it,
                    "tol": 0.0}, "reconstruct": True},
        {"name": "lp ellipsoid", "input": "rows",
         "factor": {"method": "lp", "rank": 8, "p": 1.0, "solver": "ellipsoid",
                    "max_iter": it, "tol": 0.0}, "reconstruct": False},
        {"name": "messi", "input": "rows",
         "factor": {"method": "messi", "rank": 8, "n_subspaces": 4, "n_init": 2,
                    "max_iter": it, "tol": 0.0}, "reconstruct": True},
        {"name": "messi k=16", "input": "rows",
         "factor": {"method": "messi", "rank": 8, "n_subspaces": 16, "n_init": 4,
                    "max_iter": it, "tol": 0.0}, "reconstruct": False},
    ]


class StageClock:
    """The wall-clock window of every pipeline stage (``run_stage``'s enter and exit), so a
    stage's peak and bytes read are its own, whatever the run does before and between stages
    (planning, the input's fingerprint, the run store's records)."""

    def __init__(self, trace: Trace) -> None:
        self.trace = trace
        self.windows: dict[str, tuple[float, float]] = {}

    def __enter__(self) -> StageClock:
        import contextlib

        from cfact_dask.pipeline import _run

        self._module, self._orig = _run, _run.run_stage
        orig, windows, trace = self._orig, self.windows, self.trace

        @contextlib.contextmanager
        def timed(rs: Any, stage: str) -> Any:
            trace.sample_now()
            t0 = time.time()
            try:
                with orig(rs, stage):
                    yield
            finally:
                trace.sample_now()
                windows[stage] = (t0, time.time())

        _run.run_stage = timed
        return self

    def __exit__(self, *exc: Any) -> None:
        self._module.run_stage = self._orig


def run_case(case: dict[str, Any], path: str, out: str, client: Any) -> dict[str, Any]:
    from cfact_dask.pipeline._plan import WORKER_BASE_BYTES, plan
    from cfact_dask.pipeline._run import run_job

    f = dict(case["factor"])
    job = {"cfact": {"input": {"path": path}, "factor": f,
                     "output": {"path": out, "reconstruct": bool(case.get("reconstruct"))}}}
    p = plan(job, client=client)
    idle = max(client.run(lambda: __import__("psutil").Process().memory_info().rss).values())
    shutil.rmtree(out, ignore_errors=True)
    with Trace(client) as trace, StageClock(trace) as clock:
        time.sleep(0.2)
        t_start = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_job(job, client=client)
        t_end = time.time()
        time.sleep(0.2)
    stored = _stored_bytes(path)
    stages = {}
    inside = 0
    for name in p.worker_peak:
        t0, t1 = clock.windows[name]
        peak = trace.peak(t0, t1)
        read = trace.read(t0, t1)
        inside += read
        planned = p.worker_peak[name]
        stages[name] = {
            "seconds": t1 - t0, "measured_peak_bytes": peak, "planned_peak_bytes": planned,
            "ratio": peak / planned,
            # what the stage adds to the idle worker, against the plan's part above the
            # worker process (WORKER_BASE_BYTES)
            "ratio_above_idle": (peak - idle) / (planned - WORKER_BASE_BYTES),
            "measured_read_bytes": read, "measured_passes": read / stored,
            "planned_passes": p.passes.get(name, 0),
            "planned_memory_passes": p.memory_passes.get(name, 0),
        }
    return {"case": case["name"], "method": f["method"], "via": "run_job", "factor": f,
            "reconstruct": bool(case.get("reconstruct")), "idle_worker_bytes": idle,
            "stored_input_bytes": stored, "stages": stages,
            # the run's reads outside its stages (the input's fingerprint, its metadata)
            "passes_outside_stages": (trace.read(t_start, t_end) - inside) / stored,
            "seconds": t_end - t_start, "plan": p.to_dict()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="32 MiB inputs in 4 MiB chunks")
    ap.add_argument("--mib", type=float, default=256.0, help="size of each input (float32)")
    ap.add_argument("--chunk-mib", type=float, default=16.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory-limit", default="2GiB")
    ap.add_argument("--only", default=None, help="comma-separated case names")
    ap.add_argument("--data-dir", default=os.path.join(HERE, "data"))
    ap.add_argument("--keep-data", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.mib, args.chunk_mib = 32.0, 4.0

    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster

    limit = parse_bytes(args.memory_limit)
    os.makedirs(args.data_dir, exist_ok=True)
    out = os.path.join(args.data_dir, "plan_methods_run.zarr")
    results = []

    def cluster() -> Any:
        return LocalCluster(n_workers=args.workers, threads_per_worker=args.threads,
                            processes=True, memory_limit=limit, dashboard_address=None)

    with cluster() as c, Client(c) as client:
        t0 = time.perf_counter()
        paths = make_inputs(args.data_dir, args.mib, args.chunk_mib, client)
    print(f"inputs ready in {time.perf_counter() - t0:.1f} s: "
          + ", ".join(f"{k} {cf.open_array(v).shape}" for k, v in paths.items()), flush=True)
    only = set(args.only.split(",")) if args.only else None
    for case in cases(args.quick):
        if only and case["name"] not in only:
            continue
        # fresh worker processes for every case: a peak is never a previous case's leftover
        with cluster() as c, Client(c) as client:
            r = run_case(case, paths[case["input"]], out, client)
        results.append(r)
        for st, s in r["stages"].items():
            print(f"{r['case']:<19} {st:<12} planned {s['planned_peak_bytes'] / 2**20:7.0f} MiB"
                  f"  measured {s['measured_peak_bytes'] / 2**20:7.0f} MiB  ratio "
                  f"{s['ratio']:.2f} (above idle {s['ratio_above_idle']:.2f})  passes "
                  f"{s['measured_passes']:.2f} / planned "
                  f"{s['planned_passes']}  ({s['seconds']:.1f} s)", flush=True)
        print(f"{r['case']:<19} outside the stages: {r['passes_outside_stages']:.2f} passes",
              flush=True)
    shutil.rmtree(out, ignore_errors=True)
    if not args.keep_data:
        for v in paths.values():
            shutil.rmtree(v, ignore_errors=True)
    ratios = [s["ratio"] for r in results for s in r["stages"].values() if s["ratio"]]
    # a measured pass count is the planned one up to the metadata and the last partial chunk
    # reads (a few hundredths)
    passes_ok = all(abs(s["measured_passes"] - s["planned_passes"]) < 0.15
                    for r in results for s in r["stages"].values())
    payload = {
        "machine": machine(),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "args": vars(args), "workers": args.workers, "threads_per_worker": args.threads,
        "memory_limit_bytes": limit, "tolerance": TOLERANCE, "cases": results,
        "all_within_tolerance": all(1 / TOLERANCE <= x <= TOLERANCE for x in ratios),
        "passes_as_planned": passes_ok,
    }
    path = write_results("bench_plan_methods" + ("_quick" if args.quick else ""), payload)
    print()
    print(table(results))
    print(f"\nratios within [1/{TOLERANCE}, {TOLERANCE}]: {payload['all_within_tolerance']}; "
          f"passes as planned: {passes_ok}; results -> {path}")


def table(results: list[dict[str, Any]]) -> str:
    """The README's markdown table: planned vs measured peak per worker, and passes."""
    lines = ["| case | stage | planned peak / worker | measured | measured / planned "
             "| above the idle worker: measured / planned "
             "| passes planned (storage + in memory) | measured from bytes read |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        for st, s in r["stages"].items():
            mem = s["planned_memory_passes"]
            lines.append(
                f"| {r['case']} | {st} | {s['planned_peak_bytes'] / 2**20:.0f} MiB "
                f"| {s['measured_peak_bytes'] / 2**20:.0f} MiB | {s['ratio']:.2f} | "
                f"{s['ratio_above_idle']:.2f} | "
                f"{s['planned_passes']}{f' + {mem}' if mem else ''} | "
                f"{s['measured_passes']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
