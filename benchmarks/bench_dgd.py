"""DGD+LOCAL on a local distributed cluster: wall time per iteration vs J, bytes per iteration.

For J in {2, 4, 8, 16} nodes (ring, Metropolis weights), on the paper's demo shape per node
(n = 50 features, 20 samples per node, r = 10), this runs the same number of iterations

* in-process (numpy, the pure compute time),
* on a ``LocalCluster(processes=True)`` with ``mode="workers"`` (one task per worker per report
  period, boundary copies ``U^i`` sent worker to worker every iteration), and
* on the same cluster with ``mode="tasks"`` (one task per node per iteration, pinned),

interleaved (in-process, workers, tasks, in-process, ...; ``--repeats`` rounds) and reporting
medians; distributed minus in-process is the scheduling / communication overhead per iteration.
The time per iteration is measured from the first progress report to the last (setup excluded).

Bytes per iteration: DGD+LOCAL sends each node's ``U^j`` (n × r) to each neighbour
(``dgd_local_bytes_per_iter``, the algorithm's volume); the part that crosses worker processes is
what the run reports (``bytes_cross_worker_per_iter``: in ``"workers"`` mode each boundary copy
once per neighbouring worker, in ``"tasks"`` mode counted per cross-worker edge), against a
centralised distributed ALS that per iteration broadcasts ``U`` (n × r) and ``UᵀU`` (r × r) to
every node and reduces ``Σ Y_j V_j`` (n × r) and ``Σ V_jᵀ V_j`` (r × r): ``J·(2nr + 2r²)``
numbers. Results: a table on stdout and JSON in ``benchmarks/results/bench_dgd.json``.

Usage::

    python benchmarks/bench_dgd.py [--iters 200] [--repeats 2] [--workers 2] [--nodes 2 4 8 16]
                                   [--modes workers tasks]

``--real-size`` runs the issue's case instead (issue #18): a nonnegative rank-10 matrix of
20 000 × 600 (``--n``, ``--m``), 8 nodes on a ring, default settings (``solver="als"``),
interleaved per round: in-process (numpy, BLAS limited to one thread, the default), on the
2-worker cluster (``mode="workers"``), and in-process with the BLAS limit switched off
(``cfact.blas.enabled: false``: the effect of :mod:`cfact_dask._runtime.blas`). It reports the
iterations and wall seconds to a relative cost ``‖Y − U Vᵀ‖²/‖Y‖² <= 1e-6``, the time per
iteration (first report to last) and the cluster / in-process ratio, and runs the paper's
gradient iteration (``solver="gradient"``, automatic step) for ``--grad-iters`` iterations for
comparison. JSON in ``benchmarks/results/bench_dgd_real.json`` and, with matplotlib, the
convergence plot ``benchmarks/results/bench_dgd_real.png``::

    python benchmarks/bench_dgd.py --real-size [--repeats 2] [--grad-iters 300]

References
----------
.. [1] Z. Zhu, Q. Li, X. Yang, G. Tang, M. B. Wakin. "Distributed low-rank matrix factorization
   with exact consensus". NeurIPS 2019, arXiv:1811.03129.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np


def _machine_and_versions() -> dict:
    """What every result of this benchmark records about the machine and the libraries."""
    import dask
    import distributed
    import psutil

    return {
        "machine": {"cores": os.cpu_count(),
                    "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "platform": platform.platform(), "python": platform.python_version()},
        "versions": {"numpy": np.__version__, "dask": dask.__version__,
                     "distributed": distributed.__version__},
    }

def _per_iter_seconds(Y: np.ndarray, J: int, iters: int, client, report_every: int,
                      mode: str = "workers"):
    """Seconds per iteration (first report to last) and the result."""
    from cfact_dask.factor.consensus._dgd_local import dgd_local

    marks: list[tuple[int, float]] = []

    def cb(state):
        marks.append((state.iteration, time.perf_counter()))
        return False

    res = dgd_local(Y, 10, n_nodes=J, topology="ring", weights="metropolis", step=1e-3,
                    init_scale=1.0, max_iter=iters, tol=0.0, report_every=report_every,
                    anchor_every=iters, callback=cb, client=client, mode=mode, random_state=0)
    # from the first check to the last: excludes setup (data load, power iteration, init)
    (i0, t0), (i1, t1) = marks[0], marks[-1]
    return (t1 - t0) / (i1 - i0), res


def _converge(Y: np.ndarray, client, target: float, max_iter: int, report_every: int = 5,
              **kw):
    """One default DGD+LOCAL run to ``target`` relative cost; its trace and timings."""
    from cfact_dask.factor.consensus._dgd_local import dgd_local

    nY2 = float(np.vdot(Y, Y))
    trace: list[tuple[int, float, float, float]] = []
    t0 = time.perf_counter()

    def cb(state):
        trace.append((state.iteration, state.cost / nY2, state.consensus_error,
                      time.perf_counter() - t0))
        return state.cost / nY2 <= target

    res = dgd_local(Y, 10, n_nodes=8, topology="ring", tol=0, max_iter=max_iter,
                    report_every=report_every, callback=cb, client=client, random_state=0,
                    **kw)
    wall = time.perf_counter() - t0
    (i0, _, _, s0), (i1, _, _, s1) = trace[0], trace[-1]
    hit = next((t for t in trace if t[1] <= 1e-6), None)
    return {
        "solver": res.solver, "n_iter": res.n_iter, "wall_s": wall,
        "s_per_iter": (s1 - s0) / max(i1 - i0, 1),
        "iters_to_1e-6": hit[0] if hit else None, "wall_to_1e-6_s": hit[3] if hit else None,
        "final_relative_cost": res.relative_error ** 2, "blas_threads": res.blas_threads,
        "trace": trace,
    }


def real_size(args) -> dict:
    """The issue's case (see the module docstring, ``--real-size``)."""
    import dask
    from distributed import Client, LocalCluster

    rng = np.random.default_rng(0)
    Y = rng.random((args.n, 10)) @ rng.random((10, args.m))
    runs: dict[str, list[dict]] = {"in_process": [], "cluster": [], "in_process_blas_unlimited": []}
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        for _ in range(args.repeats):                           # A, B, C, A, B, C ...
            runs["in_process"].append(_converge(Y, None, 1e-8, 200))
            runs["cluster"].append(_converge(Y, client, 1e-8, 200))
            with dask.config.set({"cfact.blas.enabled": False}):
                runs["in_process_blas_unlimited"].append(_converge(Y, None, 1e-8, 200))
            for key, rr in runs.items():
                r = rr[-1]
                print(f"{key:28s} iters to 1e-6 {r['iters_to_1e-6']}  wall to 1e-6 "
                      f"{r['wall_to_1e-6_s']:.1f}s  {1e3 * r['s_per_iter']:.0f} ms/it  "
                      f"BLAS threads {r['blas_threads']}", flush=True)
    grad = _converge(Y, None, 1e-8, args.grad_iters, report_every=10, solver="gradient")
    print(f"gradient (paper, auto step): relative cost {grad['final_relative_cost']:.2e} after "
          f"{grad['n_iter']} iterations, {grad['wall_s']:.1f}s", flush=True)

    def med(key: str, field: str) -> float:
        return statistics.median(r[field] for r in runs[key] if r[field] is not None)

    summary = {
        "in_process_ms_per_iter": 1e3 * med("in_process", "s_per_iter"),
        "cluster_ms_per_iter": 1e3 * med("cluster", "s_per_iter"),
        "in_process_blas_unlimited_ms_per_iter":
            1e3 * med("in_process_blas_unlimited", "s_per_iter"),
        "cluster_wall_to_1e-6_s": med("cluster", "wall_to_1e-6_s"),
        "iters_to_1e-6": med("cluster", "iters_to_1e-6"),
        "gradient_relative_cost_after": [grad["n_iter"], grad["final_relative_cost"]],
    }
    summary["cluster_over_in_process"] = (summary["cluster_ms_per_iter"]
                                          / summary["in_process_ms_per_iter"])
    summary["blas_unlimited_over_limited"] = (summary["in_process_blas_unlimited_ms_per_iter"]
                                              / summary["in_process_ms_per_iter"])
    print(json.dumps(summary, indent=1))
    result = {
        "benchmark": "bench_dgd --real-size",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        **_machine_and_versions(),
        "data": {"n": args.n, "m": args.m, "rank": 10, "kind": "rand(n,10) @ rand(10,m)",
                 "nodes": 8, "topology": "ring"},
        "load_average_at_end": list(os.getloadavg()),
        "summary": summary, "runs": runs, "gradient": grad,
    }
    out = args.out.replace("bench_dgd.json", "bench_dgd_real.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {out}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return result
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, r in [("als, 2 workers", runs["cluster"][0]),
                     ("als, in-process", runs["in_process"][0]),
                     ("gradient (paper), in-process", grad)]:
        it, rel = zip(*[(t[0], t[1]) for t in r["trace"]], strict=True)
        ax.semilogy(it, rel, label=label)
    ax.axhline(1e-6, color="grey", lw=0.5)
    ax.set_xlabel("iteration")
    ax.set_ylabel("Σ_j ‖U^j V_jᵀ − Y_j‖² / ‖Y‖²")
    ax.set_title(f"DGD+LOCAL, {args.n} × {args.m}, rank 10, ring of 8")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.replace(".json", ".png"), dpi=120)
    print(f"wrote {out.replace('.json', '.png')}")
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--report-every", type=int, default=20)
    ap.add_argument("--nodes", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--modes", nargs="+", default=["workers", "tasks"],
                    choices=["workers", "tasks"])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "bench_dgd.json"))
    ap.add_argument("--real-size", action="store_true",
                    help="the issue's 20 000 x 600 rank-10 case instead (see the docstring)")
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--m", type=int, default=600)
    ap.add_argument("--grad-iters", type=int, default=300)
    args = ap.parse_args(argv)
    if args.real_size:
        return real_size(args)

    from distributed import Client, LocalCluster

    from cfact_dask.factor.consensus.topology import make_topology

    n, r, m_j = 50, 10, 20
    rows = []
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        for J in args.nodes:
            rng = np.random.default_rng(J)
            Y = rng.standard_normal((n, r)) @ rng.standard_normal((r, m_j * J))
            local_t: list[float] = []
            dist_t: dict[str, list[float]] = {mode: [] for mode in args.modes}
            cross: dict[str, int] = {}
            ref = None
            for _ in range(args.repeats):                  # A, B, C, A, B, C ...
                sec, ref = _per_iter_seconds(Y, J, args.iters, None, args.report_every)
                local_t.append(sec)
                for mode in args.modes:
                    sec, res = _per_iter_seconds(Y, J, args.iters, client, args.report_every,
                                                 mode)
                    dist_t[mode].append(sec)
                    cross[mode] = res.bytes_cross_worker_per_iter
                    # the distributed run gives the in-process numbers bitwise
                    assert np.array_equal(res.U, ref.U) and np.array_equal(res.V, ref.V), mode
            topo = make_topology("ring", J, weights="metropolis")
            dgd_bytes = int(topo.degrees.sum()) * n * r * 8
            als_bytes = J * (2 * n * r + 2 * r * r) * 8
            loc = statistics.median(local_t)
            workers_used = min(args.workers, J)
            row = {
                "J": J, "n": n, "m": m_j * J, "r": r, "iters": args.iters,
                "in_process_ms_per_iter": 1e3 * loc,
                "dgd_local_bytes_per_iter": dgd_bytes,
                "central_als_bytes_per_iter": als_bytes,
                "raw_in_process_s": local_t,
            }
            for mode in args.modes:
                med = statistics.median(dist_t[mode])
                row[f"{mode}_ms_per_iter"] = 1e3 * med
                row[f"{mode}_overhead_ms_per_iter"] = 1e3 * (med - loc)
                row[f"{mode}_cross_worker_bytes_per_iter"] = cross[mode]
                row[f"{mode}_demo_3000_iters_s"] = 3000 * med
                row[f"raw_{mode}_s"] = dist_t[mode]
            if "tasks" in args.modes:
                row["tasks_tasks_per_iter"] = 2 * J
            if "workers" in args.modes:
                row["workers_tasks_per_iter"] = workers_used / args.report_every
            rows.append(row)
            print(f"J={J:3d}  in-process {row['in_process_ms_per_iter']:7.2f} ms/it  " + "  ".join(
                f"{mode} {row[f'{mode}_ms_per_iter']:7.2f} ms/it" for mode in args.modes)
                + f"  bytes/it dgd-local {dgd_bytes:8d} (cross-worker "
                + ", ".join(f"{mode} {cross[mode]}" for mode in args.modes)
                + f")  central ALS {als_bytes:8d}", flush=True)
    cols = ["J", "in-process ms/it"]
    for mode in args.modes:
        cols += [f"{mode} ms/it", f"{mode} overhead ms/it", f"{mode} cross-worker B/it"]
    cols += ["DGD+LOCAL B/it (all edges)", "central ALS B/it"]
    print()
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        cells = [str(row["J"]), f"{row['in_process_ms_per_iter']:.2f}"]
        for mode in args.modes:
            cells += [f"{row[f'{mode}_ms_per_iter']:.2f}",
                      f"{row[f'{mode}_overhead_ms_per_iter']:.2f}",
                      str(row[f"{mode}_cross_worker_bytes_per_iter"])]
        cells += [str(row["dgd_local_bytes_per_iter"]), str(row["central_als_bytes_per_iter"])]
        print("| " + " | ".join(cells) + " |")
    result = {
        "benchmark": "bench_dgd",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        **_machine_and_versions(),
        "cluster": {"kind": "LocalCluster(processes=True)", "workers": args.workers,
                    "threads_per_worker": 1},
        "load_average_at_end": list(os.getloadavg()),
        "settings": vars(args),
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
