"""Phase transition of Factorize-Recover: compression n/d × sparsity of W (Sharan et al. §1).

For each (compression, density) cell: planted data with the paper's generator (n features,
m samples, rank r, each column of W with density·n nonzeros, 10 % noise), an expander sketch of
size d = n / compression, compressed NMF, sparse recovery of W (nonnegative LASSO, no access to
the data), and the true relative error ‖M − Ŵ Ĥ‖/‖M‖ against the uncompressed NMF's (scikit-learn
NMF of max(M, 0)). A cell "succeeds" when the ratio is ≤ 1.15 and the mean |corr| of W ≥ 0.99.
The hold-out certificate's estimate is recorded next to the truth, to show it tracks the failure.

Usage::

    python benchmarks/bench_phase_transition.py            # n = 2000, m = 500, r = 10
    python benchmarks/bench_phase_transition.py --quick    # a 3 x 3 grid

Writes ``benchmarks/results/phase_transition.{json,png}`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import RESULTS, machine, write_results  # noqa: E402

import cfact_dask as cf  # noqa: E402
from cfact_dask.datasets import planted_nmf  # noqa: E402


def _uncompressed_error(M: np.ndarray, r: int, seed: int) -> float:
    from sklearn.decomposition import NMF

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = NMF(r, init="nndsvda", max_iter=1000, tol=1e-5, random_state=seed)
        W = model.fit_transform(np.maximum(M, 0))
    return float(np.linalg.norm(M - W @ model.components_) / np.linalg.norm(M))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--m", type=int, default=500)
    ap.add_argument("--rank", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compression", type=float, nargs="*", default=[2, 3, 5, 8, 12, 20])
    ap.add_argument("--density", type=float, nargs="*", default=[0.01, 0.02, 0.05, 0.1, 0.2])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.compression, args.density = [2, 5, 12], [0.01, 0.05, 0.2]
    rows = []
    corr = np.zeros((len(args.compression), len(args.density)))
    ratio = np.zeros_like(corr)
    est = np.zeros_like(corr)
    t_start = time.perf_counter()
    for j, dens in enumerate(args.density):
        M, W, H = planted_nmf(args.n, args.m, args.rank, density=dens, noise=0.1,
                              random_state=args.seed)
        ref = _uncompressed_error(M, args.rank, args.seed)
        for i, comp in enumerate(args.compression):
            d = max(args.rank + 1, int(round(args.n / comp)))
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = cf.factorize_recover(
                    M, args.rank, sketch=dict(n_components=d, seed=args.seed),
                    factor=dict(random_state=args.seed), recover="nnlasso", progress=False,
                )
            What = np.asarray(res.W.compute())
            err = float(np.linalg.norm(M - What @ np.asarray(res.H)) / np.linalg.norm(M))
            match = cf.match_factors(W, What, H, np.asarray(res.H))
            corr[i, j] = match.mean_corr_W
            ratio[i, j] = err / ref
            e = res.recovery.certificate.estimated_error
            est[i, j] = np.nan if e is None else e
            rows.append({"compression": comp, "d": d, "density": dens,
                         "k": int(round(dens * args.n)), "error": err, "uncompressed": ref,
                         "ratio": ratio[i, j], "mean_corr_W": corr[i, j],
                         "mean_corr_H": match.mean_corr_H, "estimated_error": est[i, j],
                         "seconds": time.perf_counter() - t0})
            print(f"compression {comp:5.1f} (d={d:4d}) density {dens:.2f}: error {err:.3f} "
                  f"(uncompressed {ref:.3f}, ratio {ratio[i, j]:.2f}, estimate {est[i, j]:.3f})"
                  f", |corr| W {corr[i, j]:.3f}", flush=True)
    success = ((ratio <= 1.15) & (corr >= 0.99)).astype(float)
    print("\nsuccess (error ≤ 1.15× uncompressed and mean |corr| W ≥ 0.99):\n")
    print("| n/d \\ density | " + " | ".join(f"{x:g}" for x in args.density) + " |")
    print("|---" * (len(args.density) + 1) + "|")
    for i, comp in enumerate(args.compression):
        cells = [f"{'✔' if success[i, j] else '✘'} {ratio[i, j]:.2f}"
                 for j in range(len(args.density))]
        print(f"| {comp:g} | " + " | ".join(cells) + " |")
    os.makedirs(RESULTS, exist_ok=True)
    png = os.path.join(RESULTS, "phase_transition.png")
    cf.plots.plot_phase_transition(
        np.minimum(ratio, 3.0), args.compression, args.density, path=png, level=1.15,
        xlabel="compression n / d", ylabel="density of W (nonzeros / n)",
        value_label="error / uncompressed NMF error (capped at 3)",
        title=f"Factorize-Recover, n={args.n}, m={args.m}, r={args.rank}, expander s=5",
        cmap="viridis_r",
    )
    path = write_results("phase_transition", {
        "command": "python " + " ".join(sys.argv), "machine": machine(),
        "n": args.n, "m": args.m, "rank": args.rank, "rows": rows,
        "seconds": time.perf_counter() - t_start,
    })
    print(f"\n{path}\n{png}")


if __name__ == "__main__":
    main()
