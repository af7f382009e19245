"""Benchmark (a): compressed NMF (expander sketch, d = 10 % of n) vs scikit-learn NMF in memory.

Planted sparse NMF data as in Sharan et al. 2019 (PAPERS.md §1): W (n × r) with a fraction
``--density`` of nonzeros |N(0,1)| per column, H = |N(0,1)| rows scaled to unit norm, Gaussian
noise with ‖E‖ = 0.1 ‖WH‖. Stored in Zarr (float64, chunks n × 1000 samples, zstd default codec),
features on axis 0.

The paper's experiment compresses 5× (d = 400 of n = 2 000) with k = 5 % nonzeros, i.e.
d ≈ 1.33 k log(n/k); the issue asks for 10× compression. The default density 2 % keeps that
ratio at 10× (n = 20 000, d = 2 000, k = 400: d ≈ 1.28 k log(n/k)), the regime where W is
recoverable from P W by sparse recovery, which is the method. ``--density 0.05`` is beyond it:
there the pipeline's ``recover="auto"`` sees the hold-out certificate fail and falls back to an
exact pass over the data (``lstsq-data``).

A = cfact_dask on a 2-worker LocalCluster (started before, not timed), the public pipeline
``factorize_recover(store, r, sketch=d, factor=dict(randomized=True), recover=...)``: one pass
computing the expander sketch and its Gaussian hold-out sketch, randomized accelerated HALS of the
sketch (iterations on its rank-(r + 10) QB approximation; ``cfact_exact`` is the same pipeline
with exact iterations, also timed), then sparse recovery of W (``--recover auto``: nonnegative
LASSO, λ from the hold-out, with the exact-pass fallback). Its error is measured against the
noisy data, blockwise (not timed).
B = ``sklearn.decomposition.NMF(init="nndsvda", solver="cd")`` on the matrix loaded in memory
(the load is timed separately and not counted).

Runs A, B, A, B ... (``--repeats``), reports median wall times, the ratio B/A (target >= 10) and the
error ratio A/B (target <= 1.15), the peak RSS of this process sampled every 50 ms during each run,
and writes JSON to ``benchmarks/results/``.

    python benchmarks/bench_factorize.py --small          # ~64 MB, a minute
    python benchmarks/bench_factorize.py                  # >= 1 GB (n=20000, m=8000)
    python benchmarks/bench_factorize.py --density 0.05   # beyond sparse recovery at 10x
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import planted_factors  # noqa: E402

logger = logging.getLogger("bench_factorize")


class PeakRSS:
    """Peak resident memory of this process, sampled in a thread (the threaded scheduler runs
    the dask work in this process)."""

    def __init__(self, every: float = 0.05) -> None:
        import psutil

        self.proc = psutil.Process()
        self.every = every
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:
        self.peak = self.proc.memory_info().rss
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.every)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()


def make_store(path: str, n: int, m: int, r: int, seed: int, chunk_m: int,
               density: float) -> None:
    import zarr

    if os.path.exists(os.path.join(path, "zarr.json")):
        z = zarr.open_array(path, mode="r")
        if z.shape == (n, m):
            return
    rng = np.random.default_rng(seed)
    W, H, sig = planted_factors(n, m, r, density, rng)
    sd = 0.1 * sig / np.sqrt(n * m)
    z = zarr.create_array(path, shape=(n, m), chunks=(n, chunk_m), dtype="float64",
                          overwrite=True)
    for j0 in range(0, m, chunk_m):
        j1 = min(m, j0 + chunk_m)
        z[:, j0:j1] = W @ H[:, j0:j1] + sd * rng.standard_normal((n, j1 - j0))


def run_cfact(path: str, r: int, d: int, max_iter: int, tol: float, method: str,
              client: Any = None, randomized: bool = False) -> dict[str, Any]:
    import dask.array as da

    import cfact_dask as cf

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cf.ConvergenceWarning)
        res = cf.factorize_recover(
            path, r, sketch=dict(n_components=d, kind="expander", seed=0),
            factor=dict(max_iter=max_iter, tol=tol, random_state=0, randomized=randomized),
            recover=dict(method=method), client=client)
        W = np.asarray(res.W)  # W is lazy: the recovery runs here
        H = np.asarray(res.H)
    t_total = time.perf_counter() - t0
    X = cf.open_array(path).data
    diff = ((X - da.from_array(W, chunks=(X.chunks[0], r)) @ H) ** 2).sum()
    e2, x2 = da.compute(diff, (X**2).sum())
    rep = res.report["recover"] or {}
    return dict(time=t_total, seconds={k: float(v) for k, v in res.report["seconds"].items()},
                n_iter=int(res.factors.n_iter_), sketch_error=res.factors.reconstruction_err_,
                qb_error=res.factors.qb_err_, history=list(res.factors.history),
                error=float(np.sqrt(e2 / x2)), recover=rep.get("method"),
                certificate_ok=rep.get("ok"),
                estimated_error=rep.get("estimated_relative_error"))


def run_sklearn(path: str, r: int, max_iter: int, tol: float) -> dict[str, Any]:
    import zarr
    from sklearn.decomposition import NMF

    t0 = time.perf_counter()
    X = np.asarray(zarr.open_array(path, mode="r")[...])
    t_load = time.perf_counter() - t0
    Xs = X.T  # scikit-learn: samples × features
    neg = float((Xs < 0).mean())
    Xs = np.maximum(Xs, 0)  # scikit-learn refuses any negative entry
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = NMF(r, init="nndsvda", solver="cd", max_iter=max_iter, tol=tol, random_state=0)
        Z = est.fit_transform(Xs)
    t = time.perf_counter() - t0
    err = float(np.linalg.norm(X.T - Z @ est.components_) / np.linalg.norm(X))
    return dict(time=t, time_load=t_load, n_iter=int(est.n_iter_), error=err,
                clipped_fraction=neg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="n=4000, m=2000 (64 MB)")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--m", type=int, default=None)
    ap.add_argument("--rank", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--max-iter", type=int, default=500)
    ap.add_argument("--tol", type=float, default=1e-6,
                    help="cfact's tol (criterion: relative decrease of the error; its default)")
    ap.add_argument("--sklearn-tol", type=float, default=1e-4,
                    help="scikit-learn's tol (its own criterion and default)")
    ap.add_argument("--density", type=float, default=0.02,
                    help="nonzeros per column of W (0.02: the paper's d / k log(n/k) at 10x)")
    ap.add_argument("--recover", default="auto",
                    help="recovery method of the pipeline (auto | nnlasso | lstsq-data ...)")
    ap.add_argument("--no-exact", action="store_true",
                    help="skip the exact-HALS variant of the pipeline")
    ap.add_argument("--store", default=None, help="where to keep the data (default /tmp)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    n = args.n or (4000 if args.small else 20000)
    m = args.m or (2000 if args.small else 8000)
    repeats = args.repeats or (2 if args.small else 1)
    d = n // 10
    store = args.store or f"/tmp/cfact_bench_a_{n}x{m}_{args.density:g}.zarr"
    make_store(store, n, m, args.rank, 0, chunk_m=1000 if m >= 4000 else 500,
               density=args.density)
    import dask

    dask.config.set({"cfact.progress": False})
    # warm the page cache so both sides read cached data
    import zarr

    np.asarray(zarr.open_array(store, mode="r")[...]).sum()
    # cfact runs on a LocalCluster started once (2 workers x 1 thread), as a user's job would
    # on its cluster; its start-up is not timed (nor is scikit-learn's load of the data)
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           memory_limit="6GiB", dashboard_address=None)
    client = Client(cluster)
    variants = {
        # the headline: randomized HALS on the sketch (iterations on its rank-(r+10) QB)
        "cfact": lambda: run_cfact(store, args.rank, d, args.max_iter, args.tol, args.recover,
                                   client, randomized=True),
        # the same pipeline with exact HALS iterations on the sketch
        "cfact_exact": lambda: run_cfact(store, args.rank, d, args.max_iter, args.tol,
                                         args.recover, client, randomized=False),
        "sklearn": lambda: run_sklearn(store, args.rank, args.max_iter, args.sklearn_tol),
    }
    if args.no_exact:
        del variants["cfact_exact"]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in variants}
    for i in range(repeats):
        for name, fn in variants.items():
            with PeakRSS() as mem:
                out = fn()
            out["peak_rss_bytes"] = mem.peak
            runs[name].append(out)
            logger.info("run %d %s: %s", i, name, {k: (round(v, 4) if isinstance(v, float) else v)
                                                   for k, v in out.items()})
    client.close()
    cluster.close()
    med = {k: statistics.median(r["time"] for r in v) for k, v in runs.items()}
    err = {k: statistics.median(r["error"] for r in v) for k, v in runs.items()}
    speedup = med["sklearn"] / med["cfact"]
    err_ratio = err["cfact"] / err["sklearn"]
    exact = ({"speedup": med["sklearn"] / med["cfact_exact"],
              "error_ratio": err["cfact_exact"] / err["sklearn"]}
             if "cfact_exact" in med else None)
    import dask as _d
    import psutil
    import sklearn

    summary = dict(
        benchmark="a: compressed NMF vs sklearn NMF",
        command="python " + " ".join(__import__("sys").argv),
        n=n, m=m, rank=args.rank, d=d, density=args.density, recover=args.recover,
        data_bytes=n * m * 8, chunks=[n, 1000 if m >= 4000 else 500],
        codec="zarr v3 default (zstd)", cache="page cache warm for both (read once before)",
        speedup=speedup, error_ratio=err_ratio, exact_hals=exact, median_time=med,
        median_error=err,
        peak_rss_bytes={k: max(r["peak_rss_bytes"] for r in v) for k, v in runs.items()},
        targets={"speedup": ">= 10", "error_ratio": "<= 1.15"}, runs=runs,
        machine=dict(cores=os.cpu_count(), ram=psutil.virtual_memory().total,
                     platform=platform.platform()),
        versions=dict(dask=_d.__version__, numpy=np.__version__, sklearn=sklearn.__version__),
    )
    os.makedirs(args.out, exist_ok=True)
    fn = os.path.join(args.out, f"bench_factorize_a_{'small' if args.small else 'full'}"
                      f"{'' if args.density == 0.02 else f'_density{args.density:g}'}.json")
    with open(fn, "w") as f:
        json.dump(summary, f, indent=2, default=float)
    logger.info("speedup (sklearn / cfact wall time): %.2fx  (target >= 10x)", speedup)
    logger.info("error ratio (cfact / sklearn): %.3f  (target <= 1.15); errors %s", err_ratio,
                err)
    if exact is not None:
        logger.info("with exact HALS iterations on the sketch: speedup %.2fx, error ratio %.3f",
                    exact["speedup"], exact["error_ratio"])
    logger.info("peak RSS: %s", {k: f"{v / 2**20:.0f} MiB"
                                 for k, v in summary["peak_rss_bytes"].items()})
    logger.info("wrote %s", fn)
    png = fn[: -len(".json")] + ".png"
    plot(runs, summary, png)
    logger.info("wrote %s", png)


def plot(runs: dict[str, list[dict[str, Any]]], summary: dict[str, Any], path: str) -> None:
    """Left: the NMF's error on the sketch per iteration, exact vs randomized HALS (first run),
    with the QB approximation's own error. Right: median wall time per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cfact_dask.plots import plot_convergence

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.2))
    hist = {}
    if "cfact_exact" in runs:
        hist["exact HALS on the sketch"] = runs["cfact_exact"][0]["history"]
    hist["randomized HALS (QB of rank r + 10)"] = runs["cfact"][0]["history"]
    plot_convergence(hist, ylabel="relative error on the sketch", ax=ax0,
                     title=f"NMF of the {summary['d']} x {summary['m']} sketch")
    qb = runs["cfact"][0].get("qb_error")
    if qb:
        ax0.axhline(qb, ls="--", c="gray", lw=1, label="QB approximation alone")
        ax0.legend(fontsize="small")
    names = [k for k in ("cfact", "cfact_exact") if k in runs]
    stages = ("sketch", "factor", "recover")
    bottom = np.zeros(len(names) + 1)
    for st in stages:
        vals = [statistics.median(r["seconds"][st] for r in runs[k]) for k in names] + [0.0]
        ax1.bar(range(len(names) + 1), vals, bottom=bottom, label=st)
        bottom += vals
    ax1.bar([len(names)], [summary["median_time"]["sklearn"]], color="gray",
            label="scikit-learn NMF")
    ax1.set_xticks(range(len(names) + 1),
                   ["cfact (randomized)", "cfact (exact HALS)"][: len(names)] + ["scikit-learn"])
    ax1.set_ylabel("median wall time (s)")
    ax1.set_title(f"{summary['speedup']:.1f}x faster at {summary['error_ratio']:.3f}x the error")
    ax1.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
