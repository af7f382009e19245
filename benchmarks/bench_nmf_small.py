"""NMF on small in-memory matrices: per-iteration cost against plain numpy, and the BLAS limit.

Issue #18: a HALS iteration of ``cf.nmf`` on a 12 000 × 128 raw matrix and on a 1 200 × 128
sketch (rank 10) should cost at most 2× the same HALS iteration in plain numpy. Per size, in one
process and interleaved (A, B, C, D, A, B, ...; ``--repeats`` rounds, medians reported):

* ``numpy_1t``: the same iteration in plain numpy (``WᵀX``, ``hals_sweeps`` Gauss-Seidel sweeps
  over the rows of H, ``XHᵀ``, the same sweeps over W, the Grams and the cross term for the
  error, as :func:`cfact_dask.factor._als.als_step` does), BLAS limited to one thread;
* ``numpy_default``: the same with the process's default BLAS threads;
* ``cfact``: ``cf.nmf`` seconds per iteration (first callback to last), default settings (the
  in-memory loop runs with ``cfact.blas.solver-threads`` = 1 BLAS thread);
* ``cfact_blas_unlimited``: ``cf.nmf`` with ``cfact.blas.enabled: false``.

``--end-to-end`` adds ``CompressedNMF(sketch_dim=n/10)`` against scikit-learn's ``NMF`` on the
12 000-feature dense matrix (128 samples): wall time, relative error and the recovery
certificate's verdict (the fallback to the exact pass included).

Usage::

    python benchmarks/bench_nmf_small.py [--repeats 5] [--iters 30] [--end-to-end]

JSON in ``benchmarks/results/bench_nmf_small.json``. Timings on a shared machine are noisy:
compare the ratios of the same round, not absolute times.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, median, write_results  # noqa: E402


def _hals_sweeps(F: np.ndarray, C: np.ndarray, G: np.ndarray, sweeps: int) -> None:
    for _ in range(sweeps):
        for k in range(F.shape[0]):
            if G[k, k] > 0:
                F[k] = np.maximum(F[k] + (C[k] - G[k] @ F) / G[k, k], 0.0)


def numpy_iteration(X: np.ndarray, W: np.ndarray, H: np.ndarray, sweeps: int) -> float:
    """One HALS iteration (H then W) as cf.nmf does it; returns the squared error."""
    WtW = W.T @ W
    _hals_sweeps(H, W.T @ X, WtW, sweeps)
    HHt = H @ H.T
    XHt = X @ H.T
    Wt = np.ascontiguousarray(W.T)
    _hals_sweeps(Wt, XHt.T, HHt, sweeps)
    W[:] = Wt.T
    WtW = W.T @ W
    cross = float((W * XHt).sum())
    return float(np.vdot(X, X)) - 2 * cross + float(np.vdot(WtW, HHt))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--sweeps", type=int, default=5, help="hals_sweeps (cf.nmf's default 5)")
    ap.add_argument("--end-to-end", action="store_true")
    args = ap.parse_args(argv)

    import dask
    from threadpoolctl import threadpool_limits

    import cfact_dask as cf
    from cfact_dask.errors import ConvergenceWarning

    warnings.simplefilter("ignore", ConvergenceWarning)
    rng = np.random.default_rng(0)
    r = 10
    rows = []
    for p in (12_000, 1_200):
        m = 128
        X = (rng.random((p, r)) * (rng.random((p, r)) < 0.3)) @ rng.random((r, m))
        X += 0.05 * rng.random((p, m))
        W0, H0 = rng.random((p, r)), rng.random((r, m))

        def np_run(limit, X=X, W0=W0, H0=H0):
            W, H = W0.copy(), H0.copy()
            with threadpool_limits(limits=limit, user_api="blas"):
                t0 = time.perf_counter()
                for _ in range(args.iters):
                    numpy_iteration(X, W, H, args.sweeps)
                return (time.perf_counter() - t0) / args.iters

        def cf_run(X=X, W0=W0, H0=H0, **cfg):
            marks: list[float] = []
            with dask.config.set(cfg):
                cf.nmf(X, r, init=(W0, H0), max_iter=args.iters + 1, tol=0,
                       hals_sweeps=args.sweeps,
                       callback=lambda s: marks.append(time.perf_counter()))
            return (marks[-1] - marks[0]) / (len(marks) - 1)

        cases = {"numpy_1t": lambda: np_run(1), "numpy_default": lambda: np_run(None),
                 "cfact": lambda: cf_run(),
                 "cfact_blas_unlimited": lambda: cf_run(**{"cfact.blas.enabled": False})}
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.repeats):
            for k, fn in cases.items():
                times[k].append(fn())
        row = {"shape": [p, m], "rank": r, "sweeps": args.sweeps,
               **{f"{k}_ms": 1e3 * median(v) for k, v in times.items()},
               "raw_s": times}
        row["cfact_over_numpy_1t"] = row["cfact_ms"] / row["numpy_1t_ms"]
        row["cfact_over_numpy_default"] = row["cfact_ms"] / row["numpy_default_ms"]
        rows.append(row)
        print(f"{p} x {m}: numpy 1 thread {row['numpy_1t_ms']:.2f} ms, numpy default "
              f"{row['numpy_default_ms']:.2f} ms, cf.nmf {row['cfact_ms']:.2f} ms "
              f"(x{row['cfact_over_numpy_1t']:.2f} of numpy 1 thread), cf.nmf BLAS unlimited "
              f"{row['cfact_blas_unlimited_ms']:.2f} ms", flush=True)

    e2e = None
    if args.end_to_end:
        from sklearn.decomposition import NMF

        p, m = 12_000, 128
        Wt = rng.random((p, r)) * (rng.random((p, r)) < 0.3)
        Xs = (Wt @ rng.random((r, m)) + 0.05 * rng.random((p, m))).T.copy()  # samples x feat
        e2e = {"sklearn_s": [], "cfact_s": []}
        for _ in range(max(1, args.repeats // 2)):
            t0 = time.perf_counter()
            sk = NMF(r, init="nndsvda", max_iter=500, random_state=0).fit(Xs)
            e2e["sklearn_s"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            est = cf.CompressedNMF(n_components=r, sketch_dim=p // 10, random_state=0).fit(Xs)
            e2e["cfact_s"].append(time.perf_counter() - t0)
        Hs = sk.transform(Xs)
        e2e["sklearn_error"] = float(np.linalg.norm(Xs - Hs @ sk.components_)
                                     / np.linalg.norm(Xs))
        # both on the data itself (est.reconstruction_err_ is the sketch's factorization error)
        Hc = est.transform(Xs)
        e2e["cfact_error"] = float(np.linalg.norm(Xs - Hc @ est.components_)
                                   / np.linalg.norm(Xs))
        e2e["cfact_sketch_error"] = float(est.reconstruction_err_)
        e2e["refined"] = (est.report_ or {}).get("recover", {}).get("refined")
        e2e["cfact_n_iter"] = int(est.n_iter_)
        rec = est.recovery_
        e2e["recovery_method"] = getattr(rec, "method", None)
        cert = getattr(rec, "certificate", None)
        e2e["certificate_ok"] = getattr(cert, "ok", None)
        e2e["time_ratio"] = median(e2e["cfact_s"]) / median(e2e["sklearn_s"])
        print(f"end to end: CompressedNMF {median(e2e['cfact_s']):.2f}s (error "
              f"{e2e['cfact_error']:.4f}, {e2e['cfact_n_iter']} iterations, recovery "
              f"{e2e['recovery_method']}) vs scikit-learn {median(e2e['sklearn_s']):.2f}s "
              f"(error {e2e['sklearn_error']:.4f})", flush=True)

    payload = {"benchmark": "bench_nmf_small", "command": " ".join(sys.argv),
               "machine": machine(), "load_average_at_end": list(os.getloadavg()),
               "settings": vars(args), "rows": rows, "end_to_end": e2e}
    print("wrote", write_results("bench_nmf_small", payload))
    return payload


if __name__ == "__main__":
    main()
