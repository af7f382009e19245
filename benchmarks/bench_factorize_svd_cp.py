"""Single-pass SVD vs dask's svd_compressed, and compressed CP vs TensorLy, side by side.

(b) ``cf.svd(X, r, passes=1)`` vs ``dask.array.linalg.svd_compressed(X, r, n_power_iter=0)`` on
    the same Zarr store (low-rank + noise float32, zstd, chunks ``chunk_rows × chunk_cols``),
    run interleaved A, B, A, B on one LocalCluster. Both results are persisted on the workers
    (nothing n-sized goes to the client). The error ``‖A − U S Vᵀ‖_F / ‖A‖_F`` of each is
    measured afterwards with one extra (untimed) pass. Target: time ratio ≤ 0.6 at error ratio
    ≤ 1.1.
(c) ``cf.cp(T, r, sketch=dict(n_components=d, mode=0))`` (read the tensor once, CP of the sketch)
    vs ``tensorly.decomposition.parafac`` on the uncompressed in-memory tensor, on a planted CP
    tensor with a sparse mode-0 factor and 1 % noise. Reports time ratio, congruence of the
    uncompressed modes with the planted factors, and the error of tensorly vs the error of the
    compressed model after the exact refit of mode 0 (``cf.cp.refit_mode``, one more read).

Caching: a warm-up read pass runs first, so all timed passes read the store from the OS page
cache (the point is compute and pass count, not disk).

Usage::

    python benchmarks/bench_factorize_svd_cp.py            # full: 262 144 x 1 024 float32 (1 GiB)
    python benchmarks/bench_factorize_svd_cp.py --small    # quick: 65 536 x 512 (128 MiB)
    # out of core: a 4 GiB store on 2 workers x 1.5 GiB (svd_compressed must spill what it
    # holds between its two products; the single pass streams)
    python benchmarks/bench_factorize_svd_cp.py --skip cp --rows 1048576 --memory-limit 1.5GiB \
        --repeats 2 --tag _out-of-core
    # accuracy only, in memory (threads, no cluster, no store): error ratio of cf.svd(passes=1)
    # over svd_compressed(n_power_iter=0) at the same rank and seed, per seed, on the noisy
    # 3 000 x 400 rank-6 matrices (uniform noise, centred and nonnegative) and on the README's
    # (b) data (its generator, fewer rows), plus the in-memory time ratio
    python benchmarks/bench_factorize_svd_cp.py --accuracy [--seeds 5]

A read pass (``open_array(p).data.sum()``) is timed alongside: in one graph dask reads each chunk
once and keeps it in memory for its second product when the data fits, so on data that fits no
method that reads the data can beat it by more than (its time − a read pass).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time

import dask
import dask.array as da
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import WorkerPeakRSS, gib, machine, median, write_results  # noqa: E402

import cfact_dask as cf  # noqa: E402
from cfact_dask.factor._cp import cp, refit_mode  # noqa: E402
from cfact_dask.factor._svd import svd  # noqa: E402

logger = logging.getLogger("bench_factorize_svd_cp")


# ---------------------------------------------------------------------- data
def _block(block_id, chunks, rank, seed):
    i, j = block_id
    rng_w = np.random.default_rng([seed, 0, i])
    rng_h = np.random.default_rng([seed, 1, j])
    rng_e = np.random.default_rng([seed, 2, i, j])
    decay = 0.7 ** np.arange(rank)
    W = rng_w.standard_normal((chunks[0][i], rank)) * decay
    H = rng_h.standard_normal((rank, chunks[1][j]))
    E = rng_e.standard_normal((chunks[0][i], chunks[1][j]))
    return (W @ H + 0.3 * E).astype(np.float32)


def make_store(path: str, n: int, m: int, chunks: tuple[int, int], rank: int) -> None:
    if os.path.exists(os.path.join(path, "zarr.json")):
        return
    norm = da.core.normalize_chunks(chunks, (n, m))
    x = da.map_blocks(lambda block_id=None: _block(block_id, norm, rank, 0), chunks=norm,
                      dtype=np.float32, meta=np.empty((0, 0), np.float32))
    x.to_zarr(path, overwrite=True)


def svd_error(client, A: da.Array, U: da.Array, s: np.ndarray, Vt: da.Array, norm2: float) -> float:
    """‖A − U S Vt‖_F / ‖A‖_F with one pass (U, V orthonormal)."""
    U = U.rechunk({0: A.chunks[0]}).astype(np.float64)
    Vt = Vt.rechunk({1: A.chunks[1]}).astype(np.float64)
    C = (U.T @ A.astype(np.float64)) @ Vt.T
    C = np.asarray(client.compute(C).result())
    err2 = norm2 - 2 * float(np.sum(s * np.diag(C))) + float(np.sum(s**2))
    return math.sqrt(max(err2, 0.0) / norm2)


def bench_svd(client, args) -> dict:
    n, m = args.n, args.m
    store = os.path.join(args.data_dir, f"svd_{n}x{m}_{args.chunk_rows}x{args.chunk_cols}.zarr")
    t0 = time.perf_counter()
    make_store(store, n, m, (args.chunk_rows, args.chunk_cols), args.planted_rank)
    logger.info("store %s ready (%.1fs)", store, time.perf_counter() - t0)
    X = cf.open_array(store)
    A = X.data
    norm2 = float(client.compute((A.astype(np.float64) ** 2).sum()).result())  # warm-up read
    k = args.rank

    def ours(kind, co_kind=None):
        def run():
            res = svd(X, k, passes=1, kind=kind, co_range_kind=co_kind, random_state=0,
                      client=client, progress=False)
            return res.U, res.s, res.Vt
        return run

    def theirs():
        u, s, v = da.linalg.svd_compressed(A, k, n_power_iter=0, seed=0, compute=False)
        u, s, v = client.persist([u, s, v])
        s = client.compute(s).result()
        from distributed import wait

        wait([u, v])
        return u, s, v

    def read_pass():
        # the floor of any method that reads the data: one pass, nothing computed
        client.compute(A.sum()).result()
        return None

    cases = {"read pass (open_array(p).data.sum())": read_pass,
             # the default: Gaussian range map, CountSketch co-range (l = 8k + 1)
             "cf.svd(passes=1)": ours("gaussian"),
             # the setting of Tropp et al.'s theory: Gaussian maps, l = 4k + 1
             "cf.svd(passes=1, all-Gaussian)": ours("gaussian", "gaussian"),
             "dask svd_compressed(n_power_iter=0)": theirs}
    times: dict[str, list[float]] = {c: [] for c in cases}
    peaks: dict[str, int] = {c: 0 for c in cases}
    errs: dict[str, float] = {}
    for rep in range(args.repeats):
        for name, fn in cases.items():
            client.run(lambda: __import__("gc").collect())
            with WorkerPeakRSS(client) as mon:
                t = time.perf_counter()
                got = fn()
                times[name].append(time.perf_counter() - t)
            peaks[name] = max(peaks[name], mon.max_bytes)
            if got is None:
                continue
            U, s, Vt = got
            if rep == 0:
                errs[name] = svd_error(client, A, U, np.asarray(s), Vt, norm2)
            del U, Vt, got
            logger.info("%s: %.2fs", name, times[name][-1])
    ref = "dask svd_compressed(n_power_iter=0)"
    out = {"store": store, "shape": [n, m], "chunks": [args.chunk_rows, args.chunk_cols],
           "dtype": "float32", "codec": "zarr v3 default (zstd)", "rank": k,
           "nbytes": int(A.nbytes), "times": times, "errors": errs, "peak_worker_rss": peaks,
           }
    out["ratios"] = {
        name: {"time": median(times[name]) / median(times[ref]),
               "error": errs[name] / errs[ref] if name in errs else None}
        for name in cases if name != ref
    }
    out["fits_in_cluster_memory"] = bool(A.nbytes < 0.6 * args.workers * _bytes(args.memory_limit))
    return out


# ---------------------------------------------------------------------- accuracy (in memory)
def noisy_lowrank(seed: int, centred: bool = True, n: int = 3_000, m: int = 400,
                  rank: int = 6) -> np.ndarray:
    """Rank ``rank`` plus uniform noise: ``G H + U(-1, 1)`` (Gaussian factors) or, nonnegative,
    ``W H + U(0, 1)`` (uniform factors)."""
    rng = np.random.default_rng(100 + seed)
    if centred:
        return (rng.standard_normal((n, rank)) @ rng.standard_normal((rank, m))
                + rng.uniform(-1, 1, (n, m)))
    return rng.random((n, rank)) @ rng.random((rank, m)) + rng.random((n, m))


def readme_case(n: int, m: int = 1_024, chunk_rows: int = 16_384) -> np.ndarray:
    """The (b) data in memory: the store's generator (planted rank 20, decay 0.7, noise 0.3)."""
    norm = da.core.normalize_chunks((chunk_rows, 512), (n, m))
    return da.map_blocks(lambda block_id=None: _block(block_id, norm, 20, 0), chunks=norm,
                         dtype=np.float32).compute(scheduler="threads")


def accuracy(args) -> dict:
    """Per-seed error ratio and in-memory time ratio, cf.svd(passes=1) / svd_compressed."""

    def rel_err(A, U, s, Vt):
        U, Vt = np.asarray(U, dtype=np.float64), np.asarray(Vt, dtype=np.float64)
        return float(np.linalg.norm(A - (U * np.asarray(s)) @ Vt) / np.linalg.norm(A))

    cases = {
        "noisy 3000x400 rank 6, centred uniform noise": (
            lambda s: noisy_lowrank(s, True), 6, (500, 200)),
        "noisy 3000x400 rank 6, nonnegative uniform noise": (
            lambda s: noisy_lowrank(s, False), 6, (500, 200)),
        f"README (b) data, {args.accuracy_rows} x 1024 float32, rank 10": (
            lambda s: readme_case(args.accuracy_rows), 10, (16_384, 512)),
    }
    out: dict = {}
    with dask.config.set(scheduler="threads"):
        # warm-up (imports, thread pool, tile caches) so the first timed case does not pay it
        Xw = da.from_array(noisy_lowrank(0), chunks=(500, 200))
        res_w = svd(Xw, 6, passes=1, progress=False)
        dask.compute(res_w.U, res_w.Vt)
        dask.compute(*da.linalg.svd_compressed(Xw, 6, n_power_iter=0, seed=0))
        for name, (make, rank, chunks) in cases.items():
            errs: dict[str, list[float]] = {"ours": [], "dask": []}
            times: dict[str, list[float]] = {"ours": [], "dask": []}
            params = {}
            A = None
            for seed in range(args.seeds):
                if A is None or "README" not in name:
                    A = make(seed)
                X = da.from_array(A, chunks=chunks)
                t = time.perf_counter()
                res = svd(X, rank, passes=1, random_state=seed, progress=False)
                U, Vt = dask.compute(res.U, res.Vt)
                times["ours"].append(time.perf_counter() - t)
                errs["ours"].append(rel_err(A, U, res.s, Vt))
                params = res.params
                t = time.perf_counter()
                u, s, v = da.linalg.svd_compressed(X, rank, n_power_iter=0, seed=seed)
                u, s, v = dask.compute(u, s, v)
                times["dask"].append(time.perf_counter() - t)
                errs["dask"].append(rel_err(A, u, s, v))
            ratios = [a / b for a, b in zip(errs["ours"], errs["dask"], strict=True)]
            out[name] = {"errors": errs, "error_ratios": ratios,
                         "mean_error_ratio": float(np.mean(ratios)),
                         "time_ratio_in_memory": median(times["ours"]) / median(times["dask"]),
                         "times": times, "k": params.get("k"), "l": params.get("l")}
    return out


def _bytes(limit: str) -> int:
    from dask.utils import parse_bytes

    return int(parse_bytes(limit))


# ---------------------------------------------------------------------- CP
def _congruence(F, G) -> float:
    from scipy.optimize import linear_sum_assignment

    tot = np.ones((F[0].shape[1], G[0].shape[1]))
    for a, b in zip(F, G, strict=True):
        tot = tot * np.abs((a / np.linalg.norm(a, axis=0)).T @ (b / np.linalg.norm(b, axis=0)))
    r, c = linear_sum_assignment(-tot)
    return float(tot[r, c].mean())


def bench_cp(client, args) -> dict:
    import tensorly as tl
    from tensorly.decomposition import parafac

    rng = np.random.default_rng(0)
    n0, J, K, r = args.cp_shape + [args.cp_rank]
    A = np.zeros((n0, r))
    for j in range(r):  # sparse mode-0 factor, as in Sharan et al.
        idx = rng.choice(n0, max(1, n0 // 20), replace=False)
        A[idx, j] = np.abs(rng.standard_normal(idx.size))
    B, C = rng.random((J, r)), rng.random((K, r))
    T = np.einsum("ir,jr,kr->ijk", A, B, C)
    T += 0.01 * np.linalg.norm(T) / math.sqrt(T.size) * rng.standard_normal(T.shape)
    # the tensor lives on the workers in 8 chunks along mode 0 (scattered, not in the graph)
    step = max(1, n0 // 8)
    parts = client.scatter([T[i:i + step] for i in range(0, n0, step)])
    Td = da.concatenate([da.from_delayed(f, shape=p.shape, dtype=T.dtype) for f, p in
                         zip(parts, [T[i:i + step] for i in range(0, n0, step)], strict=True)])
    d = args.cp_d
    times: dict[str, list[float]] = {"cf.cp(sketch mode 0)": [], "cf.cp + refit_mode": [],
                                     "tensorly.parafac": []}
    res = full = None
    tl_out = None
    for _ in range(args.cp_repeats):
        t = t0_ = time.perf_counter()
        res = cp(Td, r, sketch=dict(n_components=d, mode=0, kind="gaussian"), max_iter=100,
                 tol=1e-8, client=client)
        t1 = time.perf_counter()
        full = refit_mode(Td, res, client=client)
        t2 = time.perf_counter()
        times["cf.cp(sketch mode 0)"].append(t1 - t)
        times["cf.cp + refit_mode"].append(t2 - t)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=args.tensorly_threads):
            t = time.perf_counter()
            tl_out = parafac(tl.tensor(T), r, init="svd", n_iter_max=100, tol=1e-8)
            times["tensorly.parafac"].append(time.perf_counter() - t)
        logger.info("cp: cf %.2fs (+refit %.2fs), tensorly %.2fs", t1 - t0_, t2 - t0_,
                    times["tensorly.parafac"][-1])
    assert res is not None and full is not None and tl_out is not None
    nrm = np.linalg.norm(T)
    err_tl = float(np.linalg.norm(tl.cp_to_tensor(tl_out) - T) / nrm)
    err_ours = float(np.linalg.norm(full.to_tensor() - T) / nrm)
    return {
        "shape": [n0, J, K], "rank": r, "d": d, "times": times,
        "tensorly_blas_threads": args.tensorly_threads,
        "congruence_other_modes": {"cf": _congruence(res.factors[1:], [B, C]),
                                   "tensorly": _congruence(tl_out.factors[1:], [B, C])},
        "congruence_all_after_refit": _congruence(full.factors, [A, B, C]),
        "errors": {"tensorly": err_tl, "cf (after refit)": err_ours,
                   "cf (on the sketch)": res.errors[-1]},
        "ratios": {"time cf.cp / tensorly": median(times["cf.cp(sketch mode 0)"])
                   / median(times["tensorly.parafac"]),
                   "time cf.cp+refit / tensorly": median(times["cf.cp + refit_mode"])
                   / median(times["tensorly.parafac"]),
                   "error": err_ours / err_tl},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--small", action="store_true", help="quick run (128 MiB store, small tensor)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cp-repeats", type=int, default=2)
    ap.add_argument("--tensorly-threads", type=int, default=1,
                    help="BLAS threads for tensorly (default 1: the machine is shared and\n"
                         "oversubscribed BLAS threads made tensorly 3x slower)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="4GiB")
    ap.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "data"))
    ap.add_argument("--skip", choices=["svd", "cp"], default=None)
    ap.add_argument("--rows", type=int, default=None,
                    help="rows of the SVD store (default 262 144: 1 GiB; 1 048 576: 4 GiB,\n"
                         "more than 2 workers x 1.5 GiB hold: the out-of-core case)")
    ap.add_argument("--tag", default="", help="suffix of the results file")
    ap.add_argument("--accuracy", action="store_true",
                    help="only the in-memory error ratio of cf.svd(passes=1) over\n"
                         "svd_compressed(n_power_iter=0), per seed, on noisy rank-6 data and\n"
                         "the README's (b) data (no cluster, no store)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds of --accuracy")
    ap.add_argument("--accuracy-rows", type=int, default=32_768,
                    help="rows of the README-case matrix of --accuracy")
    args = ap.parse_args()
    if args.accuracy:
        acc = accuracy(args)
        for name, a in acc.items():
            print(f"{name} (k={a['k']}, l={a['l']})")
            print(f"  error ratio per seed {np.round(a['error_ratios'], 3).tolist()}  "
                  f"mean {a['mean_error_ratio']:.3f}x  time ratio in memory "
                  f"{a['time_ratio_in_memory']:.2f}x")
        path = write_results("bench_factorize_svd_cp_accuracy",
                             {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                              "machine": machine(), "accuracy": acc})
        print(f"\nwrote {path}")
        return
    if args.small:
        args.n, args.m, args.chunk_rows, args.chunk_cols = 65_536, 512, 8_192, 512
        args.cp_shape, args.cp_d = [2_000, 40, 30], 200
    else:
        args.n, args.m, args.chunk_rows, args.chunk_cols = 262_144, 1_024, 16_384, 512
        args.cp_shape, args.cp_d = [5_000, 40, 30], 250
    if args.rows:
        args.n = args.rows
    args.rank, args.planted_rank, args.cp_rank = 10, 20, 5
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("distributed", "cfact_dask"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.makedirs(args.data_dir, exist_ok=True)

    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                           memory_limit=args.memory_limit, dashboard_address=None)
    client = Client(cluster)
    out: dict = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv),
                 "machine": machine(), "workers": args.workers,
                 "threads_per_worker": 1, "memory_limit": args.memory_limit}
    import tensorly

    out["machine"]["tensorly"] = tensorly.__version__
    out["machine"]["cfact_dask"] = cf.__version__
    try:
        with dask.config.set({"cfact.progress": False}):
            if args.skip != "svd":
                out["svd"] = bench_svd(client, args)
                b = out["svd"]
                print(f"\n(b) SVD rank {b['rank']} of {b['shape']} float32 ({gib(b['nbytes'])}), "
                      f"median of {args.repeats}, interleaved")
                for name in b["times"]:
                    er = f"{b['errors'][name]:.5f}" if name in b["errors"] else "   -   "
                    print(f"  {name:50s} {median(b['times'][name]):7.2f}s  error {er}  "
                          f"peak worker RSS {gib(b['peak_worker_rss'][name])}")
                for name, rt in b["ratios"].items():
                    er = "" if rt["error"] is None else f"  error {rt['error']:.3f}x"
                    print(f"  ratio {name:44s} time {rt['time']:.2f}x{er}")
            if args.skip != "cp":
                out["cp"] = bench_cp(client, args)
                c = out["cp"]
                print(f"\n(c) CP rank {c['rank']} of {c['shape']} (mode 0 -> d={c['d']})")
                for name, ts in c["times"].items():
                    print(f"  {name:40s} {median(ts):7.2f}s")
                print(f"  congruence of modes 1,2: {c['congruence_other_modes']}")
                print(f"  errors: {c['errors']}")
                print(f"  ratios: {c['ratios']}")
    finally:
        client.close()
        cluster.close()
    name = "bench_factorize_svd_cp" + ("_small" if args.small else "")
    if args.skip:
        name += f"_no-{args.skip}"
    name += args.tag
    path = write_results(name, out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
