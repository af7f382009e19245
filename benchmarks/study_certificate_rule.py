"""The recovery certificate's acceptance rule, measured (errors only; nothing here is timed).

For planted sparse NMF cases (``bench_speedup_map``'s generator: W with a fraction ``density``
of |N(0,1)| nonzeros per column, unit-norm |N(0,1)| rows of H, Gaussian noise with
‖E‖ = ``noise`` ‖WH‖) the pipeline runs ``factorize_recover(X, r, sketch=n // compression
(expander), factor=dict(randomized=True), recover="nnlasso")`` in process and records

- the certificate's held-out estimate ``est`` and baseline ``base`` (32 Gaussian rows, the
  pipeline's own hold-out, also used to pick λ);
- the true relative errors of the sparse recovery (``true_sp``), of the best W for this H
  (``true_base``, unconstrained) and of ``lstsq-data`` with the same H (``true_ls``: the exact
  pass ``recover: auto`` falls back on, the reachable error), and scikit-learn NMF's;
- ``est`` and ``base`` for ``--n-q`` further independent 32-row Gaussian hold-outs of the same
  data and factors (numpy), which measure the spread of ``est / base`` around
  ``true_sp / true_base``.

Then every candidate rule is scored: a recovery is *bad* when ``true_sp > 1.15 x true_ls``
(or x scikit-learn's error); false-accept and false-reject rates over the independent hold-outs,
and counts with the pipeline's own hold-out. Writes ``results/certificate_rule.json`` and
``.md``.

    python benchmarks/study_certificate_rule.py                 # the grid below, ~20 min
    python benchmarks/study_certificate_rule.py --analyse results/certificate_rule.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import planted_factors  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")
#: (n, m, rank, density, noise, compression) x seeds 0-3: the speed-up map's quick grid widened
GRID = [(3000, 1000, 10, d, e, c) for d in (0.01, 0.02, 0.05) for e in (0.01, 0.03, 0.1)
        for c in (10, 5)]
#: the paper's case (tests/test_paper_fr.py's sizes), benchmark (a)'s regime at 10 000 rows,
#: other ranks (seeds 0-3, 0-2, 0-1)
EXTRA = ([(2000, 2000, 10, 0.05, 0.1, 5, s) for s in range(4)]
         + [(10000, 2000, 10, 0.02, 0.1, 10, s) for s in range(3)]
         + [(3000, 1000, r, 0.02, e, 10, s) for r in (5, 20) for e in (0.01, 0.1)
            for s in range(2)])
BAD = 1.15


def make(n: int, m: int, r: int, density: float, noise: float, seed: int) -> np.ndarray:
    """``bench_speedup_map.make_store``'s generator, in memory."""
    rng = np.random.default_rng(seed)
    W, H, sig = planted_factors(n, m, r, density, rng)
    return W @ H + noise * sig / np.sqrt(n * m) * rng.standard_normal((n, m))


def sklearn_error(X: np.ndarray, r: int) -> float:
    from sklearn.decomposition import NMF

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = NMF(r, init="nndsvda", solver="cd", max_iter=500, tol=1e-4, random_state=0)
        Z = est.fit_transform(np.maximum(X.T, 0))
    return float(np.linalg.norm(X.T - Z @ est.components_) / np.linalg.norm(X))


def run_case(n: int, m: int, r: int, density: float, noise: float, comp: int, seed: int,
             n_q: int = 40, d_h: int = 32) -> dict[str, Any]:
    import cfact_dask as cf

    X = make(n, m, r, density, noise, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cf.factorize_recover(
            X, r, sketch=dict(n_components=n // comp, kind="expander", seed=seed),
            factor=dict(max_iter=500, tol=1e-6, random_state=seed, randomized=True),
            recover="nnlasso", progress=False)
        H, Wsp = np.asarray(res.H), np.asarray(res.W)
        ls = cf.recover(res.factors, res.sketch.operator, "lstsq-data", data=X,
                        nonnegative=True)
        Wls = np.asarray(ls.W)
    cert = res.recovery.certificate
    nx = np.linalg.norm(X)
    Hp = np.linalg.pinv(H)
    rng = np.random.default_rng(1000 + seed)
    qs = []
    for _ in range(n_q):
        Q = rng.standard_normal((d_h, n)) / math.sqrt(d_h)
        QM = Q @ X
        den = np.linalg.norm(QM)
        qs.append((round(float(np.linalg.norm(QM - (Q @ Wsp) @ H) / den), 6),
                   round(float(np.linalg.norm(QM - (QM @ Hp) @ H) / den), 6)))
    return dict(n=n, m=m, r=r, density=density, noise=noise, comp=comp, seed=seed,
                est=cert.holdout_error, base=cert.holdout_baseline,
                true_sp=float(np.linalg.norm(X - Wsp @ H) / nx),
                true_base=float(np.linalg.norm(X - (X @ Hp) @ H) / nx),
                true_ls=float(np.linalg.norm(X - Wls @ H) / nx), sklearn=sklearn_error(X, r),
                qs=qs)


def rules(d_h: int = 32) -> list[tuple[str, Any]]:
    """(name, accept(est, base)) for the former rule and relative ones."""
    se = math.sqrt(2 / d_h)
    out: list[tuple[str, Any]] = [("former: est <= 1.5 base + 0.05",
                                   lambda e, b: e <= 1.5 * b + 0.05)]
    for R in (1.10, 1.15, 1.20):
        for z in (0, 1, 2):
            lim = R + z * se * (R * R - 1) / (2 * R)
            out.append((f"R = {R:.2f}, z = {z} (est <= {lim:.3f} base)",
                        lambda e, b, lim=lim: e <= lim * b))
    return out


CHOSEN = """Chosen (cfact_dask/recovery/certificate.py, `holdout_limit`): accept when
`est <= base x (HOLDOUT_RATIO + HOLDOUT_SLACK x sqrt(2/d_h) x (R² − 1)/(2R))` with R =
HOLDOUT_RATIO = 1.15 and HOLDOUT_SLACK = 1 standard error: 1.185 x base for d_h = 32 (row
"R = 1.15, z = 1" below). Why relative: `est² = base² + ‖Q E‖²/‖Q M‖²` exactly (E = (M H⁺ − Ŵ) H
lies in H's row space, the baseline's residual in its complement), so est/base moves only with
the projection of the rank ≤ r matrix E: its spread around the true ratio is 0.5 % at a ratio of
1.03, ~2 % at 1.12, 4–6 % at 1.3, ~10 % above 1.7, against 8–14 % for est alone. The true ratio
sp/base bounds sp/ls from above (lstsq-data, nonnegative, is at or above the unconstrained
baseline), so a limit near 1.15 on it is the issue's 1.15x target, slightly conservative.
Measured: false-accept 0.4 %, false-reject 0.6 % over independent hold-outs; 0/52 false accepts
and 0/35 false rejects with the pipeline's own hold-out (the former rule: 77 % and 40/52 false
accepts). Every 1 %-noise sparse recovery here is 1.6x the exact pass or worse: all rejected, so
at low noise `recover: auto` now falls back. At 3 % noise the four runs at 1.10–1.12x (1 % dense
W, 5x compression) are accepted, the rest (1.23x and worse) rejected. At 10 % noise every run at
1.03–1.15x is accepted: the speed-up map's cells, the paper's case (2000 × 2000, 5 % dense, 5x:
est/base 1.05–1.09), 10 000 × 2 000 (benchmark (a)'s regime: 1.04–1.07), ranks 5 and 20.

"""


def analyse(rows: list[dict[str, Any]]) -> str:
    lines = ["## Rates per rule", "",
             "bad := true error of the sparse recovery > 1.15 x the reference. Independent: "
             "over 40 further 32-row Gaussian hold-outs per run; pipeline: the run's own "
             "hold-out (which also picked λ).", ""]
    for ref, what in (("true_ls", "lstsq-data with the same H"),
                      ("sklearn", "scikit-learn NMF")):
        n_bad = sum(r["true_sp"] > BAD * r[ref] for r in rows)
        lines += [f"reference: {what} ({n_bad} bad, {len(rows) - n_bad} good runs)", "",
                  "| rule | false-accept (indep.) | false-reject (indep.) | "
                  "false-accept (pipeline) | false-reject (pipeline) |", "|---|---|---|---|---|"]
        for name, acc in rules():
            fa = fr = pfa = pfr = 0.0
            for r in rows:
                bad = r["true_sp"] > BAD * r[ref]
                a = np.mean([acc(e, b) for e, b in r["qs"]])
                p = acc(r["est"], r["base"])
                if bad:
                    fa += a
                    pfa += p
                else:
                    fr += 1 - a
                    pfr += not p
            ng = max(len(rows) - n_bad, 1)
            lines.append(f"| {name} | {fa / max(n_bad, 1):.3f} | {fr / ng:.3f} | "
                         f"{int(pfa)}/{n_bad} | {int(pfr)}/{len(rows) - n_bad} |")
        lines.append("")
    lines += ["## Runs", "",
              "ratio = true_sp / true_base; spread = sd of (est/base) / ratio over the "
              "independent hold-outs; est sd = sd of est / true_sp.", "",
              "| n × m | k | r | noise | n/d | seed | est | base | est/base | true_sp | true_base |"
              " true_ls | sklearn | ratio | sp / ls | sp / sklearn | spread | est sd |",
              "|" + "---|" * 18]
    for r in rows:
        q = np.asarray(r["qs"])
        ratio = r["true_sp"] / r["true_base"]
        lines.append(
            f"| {r['n']} × {r['m']} | {r['density']:g} | {r['r']} | {r['noise']:g} | "
            f"{r['comp']} | {r['seed']} | {r['est']:.4f} | {r['base']:.4f} | "
            f"{r['est'] / r['base']:.3f} | {r['true_sp']:.4f} | {r['true_base']:.4f} | "
            f"{r['true_ls']:.4f} | {r['sklearn']:.4f} | {ratio:.3f} | "
            f"{r['true_sp'] / r['true_ls']:.3f} | {r['true_sp'] / r['sklearn']:.3f} | "
            f"{np.std(q[:, 0] / q[:, 1] / ratio):.3f} | {np.std(q[:, 0] / r['true_sp']):.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--analyse", default=None, help="only analyse this JSON of runs")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args()
    if args.analyse:
        with open(args.analyse) as f:
            rows = json.load(f)["runs"]
    else:
        import dask

        dask.config.set({"cfact.progress": False})
        cases = [c + (s,) for c in GRID for s in range(args.seeds)] + EXTRA
        rows = []
        for c in cases:
            rows.append(run_case(*c))
            print({k: v for k, v in rows[-1].items() if k != "qs"}, flush=True)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "certificate_rule.json"), "w") as f:
            json.dump({"study": __doc__.splitlines()[0], "runs": rows}, f)
    md = analyse(rows)
    with open(os.path.join(args.out, "certificate_rule.md"), "w") as f:
        f.write("<!-- python benchmarks/study_certificate_rule.py -->\n"
                "# The recovery certificate's acceptance rule (errors only)\n\n" + CHOSEN + md)
    print(md)


if __name__ == "__main__":
    main()
