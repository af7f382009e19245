"""The speed-up map: the Factorize-Recover pipeline against scikit-learn NMF over a grid of cases.

Each cell is a planted sparse NMF matrix as in benchmark (a) (``bench_factorize.py``; Sharan et
al. 2019): W (n × r) with a fraction ``density`` of nonzeros |N(0,1)| per column, H = |N(0,1)|
rows scaled to unit norm, Gaussian noise with ‖E‖ = ``noise`` ‖WH‖, stored in Zarr (float64,
features on axis 0). The grid runs over W density, rank, noise level, compression (n / d) and
size (n × m).

A = ``cf.factorize_recover(store, r, sketch=dict(n_components=n // compression,
kind="expander"), factor=dict(randomized=True), recover="auto")`` on a 2-worker LocalCluster
started once (not timed), exactly benchmark (a)'s ``cfact`` variant (``run_cfact``): its error
is measured against the noisy data. B = ``sklearn.decomposition.NMF(init="nndsvda",
solver="cd")`` on the matrix in memory (the load not counted). Per cell: the time ratio B / A
(the speed-up), the error ratio A / B, and the certificate's verdict: the recovery method that
produced W (``nnlasso`` = the sparse recovery was accepted; ``lstsq-data`` = ``auto`` fell back
to the exact pass) and the certificate's estimated error. A cell where the sparse recovery was
accepted and the error ratio is above 1.15 is flagged ``auto picked badly``.

Writes ``benchmarks/results/bench_speedup_map[_quick].json``, a markdown table next to it and a
plot (speed-up and error ratio per cell, coloured by the recovery used).

    python benchmarks/bench_speedup_map.py --quick        # a handful of small cells, minutes
    python benchmarks/bench_speedup_map.py                # the full grid (72 cells, hours)
    python benchmarks/bench_speedup_map.py --sizes 5000x2000 --ranks 10 --noises 0.1
    python benchmarks/bench_speedup_map.py --plot-sizes   # speed-up against size, every size run
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, planted_factors  # noqa: E402
from bench_factorize import PeakRSS, run_cfact, run_sklearn  # noqa: E402

logger = logging.getLogger("bench_speedup_map")

FULL = dict(sizes=["5000x2000", "20000x8000"], densities=[0.01, 0.02, 0.05],
            ranks=[5, 10, 20], noises=[0.01, 0.1], compressions=[5, 10])
QUICK = dict(sizes=["3000x1000"], densities=[0.02, 0.05], ranks=[10], noises=[0.01, 0.1],
             compressions=[10])
#: the error ratio above which an accepted sparse recovery counts as a bad pick of ``auto``
BAD_ERROR_RATIO = 1.15


def make_store(path: str, n: int, m: int, r: int, density: float, noise: float,
               seed: int = 0) -> None:
    """Benchmark (a)'s generator (``bench_factorize.make_store``) with a noise level."""
    import zarr

    if os.path.exists(os.path.join(path, "zarr.json")):
        z = zarr.open_array(path, mode="r")
        if z.shape == (n, m):
            return
    rng = np.random.default_rng(seed)
    W, H, sig = planted_factors(n, m, r, density, rng)
    sd = noise * sig / np.sqrt(n * m)
    chunk_m = 1000 if m >= 4000 else 500
    z = zarr.create_array(path, shape=(n, m), chunks=(n, chunk_m), dtype="float64",
                          overwrite=True)
    for j0 in range(0, m, chunk_m):
        j1 = min(m, j0 + chunk_m)
        z[:, j0:j1] = W @ H[:, j0:j1] + sd * rng.standard_normal((n, j1 - j0))


def run_cell(cell: dict[str, Any], args: argparse.Namespace, client: Any,
             warmup: bool = False) -> dict[str, Any]:
    n, m = cell["n"], cell["m"]
    store = os.path.join(args.store, f"map_{n}x{m}_r{cell['rank']}_k{cell['density']:g}"
                                     f"_e{cell['noise']:g}.zarr")
    make_store(store, n, m, cell["rank"], cell["density"], cell["noise"])
    import zarr

    np.asarray(zarr.open_array(store, mode="r")[...]).sum()  # warm the page cache for both
    d = n // cell["compression"]
    if warmup:  # the first run on a fresh cluster pays its imports and start-up: not timed
        run_cfact(store, cell["rank"], d, args.max_iter, args.tol, "auto", client,
                  randomized=True)
    runs: dict[str, list[dict[str, Any]]] = {"cfact": [], "sklearn": []}
    for _ in range(args.repeats):
        with PeakRSS() as mem:
            a = run_cfact(store, cell["rank"], d, args.max_iter, args.tol, "auto", client,
                          randomized=True)
        a["peak_rss_bytes"] = mem.peak
        a.pop("history", None)
        runs["cfact"].append(a)
        with PeakRSS() as mem:
            b = run_sklearn(store, cell["rank"], args.max_iter, args.sklearn_tol)
        b["peak_rss_bytes"] = mem.peak
        runs["sklearn"].append(b)
    t = {k: statistics.median(r["time"] for r in v) for k, v in runs.items()}
    e = {k: statistics.median(r["error"] for r in v) for k, v in runs.items()}
    last = runs["cfact"][-1]
    method = last["recover"]
    out = dict(cell, d=d, speedup=t["sklearn"] / t["cfact"], error_ratio=e["cfact"] / e["sklearn"],
               time=t, error=e, recover_method=method, fallback=method == "lstsq-data",
               certificate_ok=last["certificate_ok"], estimated_error=last["estimated_error"],
               stage_seconds=last["seconds"], runs=runs)
    out["bad_pick"] = (not out["fallback"]) and out["error_ratio"] > BAD_ERROR_RATIO
    if args.no_store_keep:
        import shutil

        shutil.rmtree(store, ignore_errors=True)
    return out


def table(cells: list[dict[str, Any]]) -> str:
    """The map as a markdown table, one row per cell."""
    head = ("| n × m | density | rank | noise | n/d | speed-up | error ratio | recovery | "
            "est. error | cfact s | sklearn s |")
    lines = [head, "|" + "---|" * 11]
    for c in cells:
        flag = " ⚠" if c["bad_pick"] else ""
        est = c["estimated_error"]
        lines.append(
            f"| {c['n']} × {c['m']} | {c['density']:g} | {c['rank']} | {c['noise']:g} | "
            f"{c['compression']} | {c['speedup']:.1f}× | {c['error_ratio']:.3f}{flag} | "
            f"{c['recover_method']}{' (fallback)' if c['fallback'] else ''} | "
            f"{'—' if est is None else f'{est:.3f}'} | {c['time']['cfact']:.2f} | "
            f"{c['time']['sklearn']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(cells: list[dict[str, Any]], path: str) -> None:
    """Speed-up against error ratio, one point per cell, coloured by the recovery used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for fb, colour, label in ((False, "tab:blue", "sparse recovery accepted"),
                              (True, "tab:orange", "fallback to lstsq-data")):
        sel = [c for c in cells if c["fallback"] == fb]
        if not sel:
            continue
        ax.scatter([c["error_ratio"] for c in sel], [c["speedup"] for c in sel], c=colour,
                   label=label, s=[20 + 2 * c["rank"] ** 1.5 for c in sel], alpha=0.8)
        for c in sel:
            ax.annotate(f"{c['n']}·k{c['density']:g}·r{c['rank']}·σ{c['noise']:g}·"
                        f"{c['compression']}×", (c["error_ratio"], c["speedup"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    ax.axvline(BAD_ERROR_RATIO, color="gray", ls="--", lw=0.8)
    ax.axhline(5, color="gray", ls=":", lw=0.8)
    ax.axhline(1, color="black", lw=0.5)
    ax.set_yscale("log")
    _save(fig, ax, path, "error ratio (cfact / scikit-learn)",
          "speed-up (scikit-learn time / cfact time)",
          "Factorize-Recover (recover='auto') vs scikit-learn NMF")


def _save(fig: Any, ax: Any, path: str, xlabel: str, ylabel: str, title: str) -> None:
    """Label, legend and write one plot of this benchmark."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sizes(results_dir: str, path: str) -> list[str]:
    """Speed-up against the matrix's size (entries), one point per cell of every
    ``bench_speedup_map_<n>x<m>.json`` in ``results_dir``, coloured by the recovery used, with
    the 5x and 10x lines: how the speed-up grows with size. Returns the files read."""
    import glob
    import re

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = sorted(f for f in glob.glob(os.path.join(results_dir, "bench_speedup_map_*.json"))
                   if re.search(r"_\d+x\d+\.json$", f))
    cells = [c for f in files for c in json.load(open(f))["cells"]]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    rng = np.random.default_rng(0)
    for fb, colour, label in ((False, "tab:blue", "sparse recovery accepted"),
                              (True, "tab:orange", "fallback to lstsq-data")):
        sel = [c for c in cells if c["fallback"] == fb]
        x = np.array([c["n"] * c["m"] for c in sel], dtype=float)
        x *= np.exp(rng.uniform(-0.06, 0.06, x.size))  # jitter the cells of one size apart
        ax.scatter(x, [c["speedup"] for c in sel], c=colour, label=label, alpha=0.75,
                   s=[14 + 2 * c["rank"] ** 1.5 for c in sel])
    for y, ls in ((5, ":"), (10, "--")):
        ax.axhline(y, color="gray", ls=ls, lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.yaxis.set_major_locator(FixedLocator([1, 2, 3, 5, 10, 20, 30]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    _save(fig, ax, path, "matrix entries (n x m)", "speed-up over scikit-learn NMF",
          "Factorize-Recover speed-up by size (marker size: rank)")
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"a handful of small cells: {QUICK}")
    ap.add_argument("--sizes", nargs="+", default=None, help="n x m, e.g. 5000x2000")
    ap.add_argument("--densities", nargs="+", type=float, default=None)
    ap.add_argument("--ranks", nargs="+", type=int, default=None)
    ap.add_argument("--noises", nargs="+", type=float, default=None)
    ap.add_argument("--compressions", nargs="+", type=int, default=None, help="n / d")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--max-iter", type=int, default=500)
    ap.add_argument("--tol", type=float, default=1e-6, help="cfact's tol (its default)")
    ap.add_argument("--sklearn-tol", type=float, default=1e-4, help="scikit-learn's default")
    ap.add_argument("--store", default="/tmp/cfact_bench_map", help="where the data is kept")
    ap.add_argument("--no-warmup", action="store_true",
                    help="do not run the first cell's pipeline once untimed before the grid")
    ap.add_argument("--no-store-keep", action="store_true", help="delete each cell's data")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--plot-sizes", action="store_true",
                    help="only redraw the speed-up-by-size plot from the results of every size")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.plot_sizes:
        out = os.path.join(args.out, "bench_speedup_map_sizes.png")
        logger.info("read %s; wrote %s", plot_sizes(args.out, out), out)
        return
    grid = dict(QUICK if args.quick else FULL)
    for key in grid:
        if getattr(args, key) is not None:
            grid[key] = getattr(args, key)
    os.makedirs(args.store, exist_ok=True)
    import dask

    dask.config.set({"cfact.progress": False})
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           memory_limit="6GiB", dashboard_address=None)
    client = Client(cluster)
    cells = []
    t_start = time.perf_counter()
    try:
        for size, dens, rank, noise, comp in itertools.product(
                grid["sizes"], grid["densities"], grid["ranks"], grid["noises"],
                grid["compressions"]):
            n, m = (int(x) for x in size.lower().split("x"))
            cell = dict(n=n, m=m, density=dens, rank=rank, noise=noise, compression=comp)
            out = run_cell(cell, args, client, warmup=not cells and not args.no_warmup)
            cells.append(out)
            logger.info("%s: speed-up %.1fx, error ratio %.3f, recovery %s%s", cell,
                        out["speedup"], out["error_ratio"], out["recover_method"],
                        "  <- auto picked badly" if out["bad_pick"] else "")
    finally:
        client.close()
        cluster.close()
    # named after the sizes when they are given: one file per size, side by side in results/
    name = "bench_speedup_map" + ("_quick" if args.quick else "") + "".join(
        f"_{s_}" for s_ in (args.sizes or []))
    summary = dict(
        benchmark="speed-up map: factorize_recover(recover='auto') vs sklearn NMF",
        command="python " + " ".join(sys.argv), grid=grid, repeats=args.repeats,
        wall_seconds=time.perf_counter() - t_start,
        targets={"speedup": ">= 5 where the sparse recovery is accepted",
                 "error_ratio": f"<= {BAD_ERROR_RATIO}"},
        bad_picks=[{k: c[k] for k in ("n", "m", "density", "rank", "noise", "compression")}
                   for c in cells if c["bad_pick"]],
        cells=cells, machine=machine(),
    )
    os.makedirs(args.out, exist_ok=True)
    fn = os.path.join(args.out, name + ".json")
    with open(fn, "w") as f:
        json.dump(summary, f, indent=2, default=float)
    md = table(cells)
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write(f"<!-- {summary['command']} -->\n" + md)
    plot(cells, os.path.join(args.out, name + ".png"))
    print(md)
    logger.info("wrote %s (+ .md, .png)", fn)


if __name__ == "__main__":
    main()
