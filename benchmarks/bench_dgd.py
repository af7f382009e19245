"""DGD+LOCAL on a local distributed cluster: wall time per iteration vs J, bytes per iteration.

For J in {2, 4, 8, 16} nodes (ring, Metropolis weights), on the paper's demo shape per node
(n = 50 features, 20 samples per node, r = 10), this runs the same number of iterations

* in-process (numpy, the pure compute time), and
* on a ``LocalCluster(processes=True)`` (one task per node per iteration, pinned),

alternating A, B, A, B (``--repeats``) and reporting medians; the difference is the scheduling
overhead per iteration. Bytes per iteration: DGD+LOCAL sends each node's ``U^j`` (n × r) to each
neighbour (``bytes_per_iter``; ``cross_worker`` is the part that crosses processes), against a
centralised distributed ALS that per iteration broadcasts ``U`` (n × r) and ``UᵀU`` (r × r) to
every node and reduces ``Σ Y_j V_j`` (n × r) and ``Σ V_jᵀ V_j`` (r × r): ``J·(2nr + 2r²)``
numbers. Results: a table on stdout and JSON in ``benchmarks/results/bench_dgd.json``.

Usage::

    python benchmarks/bench_dgd.py [--iters 200] [--repeats 2] [--workers 2] [--nodes 2 4 8 16]

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


def _per_iter_seconds(Y: np.ndarray, J: int, iters: int, client, report_every: int) -> float:
    from cfact_dask.dgd import dgd_local

    marks: list[tuple[int, float]] = []

    def cb(state):
        marks.append((state.iteration, time.perf_counter()))
        return False

    dgd_local(Y, 10, n_nodes=J, topology="ring", weights="metropolis", step=1e-3,
              init_scale=1.0, max_iter=iters, tol=0.0, report_every=report_every,
              anchor_every=iters, callback=cb, client=client, random_state=0)
    # from the first check to the last: excludes setup (data load, power iteration, init)
    (i0, t0), (i1, t1) = marks[0], marks[-1]
    return (t1 - t0) / (i1 - i0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--report-every", type=int, default=20)
    ap.add_argument("--nodes", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "bench_dgd.json"))
    args = ap.parse_args(argv)

    import dask
    import distributed
    import psutil
    from distributed import Client, LocalCluster

    from cfact_dask.topology import make_topology

    n, r, m_j = 50, 10, 20
    rows = []
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False) as client:
        for J in args.nodes:
            rng = np.random.default_rng(J)
            Y = rng.standard_normal((n, r)) @ rng.standard_normal((r, m_j * J))
            local_t, dist_t = [], []
            for _ in range(args.repeats):                  # A, B, A, B ...
                local_t.append(_per_iter_seconds(Y, J, args.iters, None, args.report_every))
                dist_t.append(_per_iter_seconds(Y, J, args.iters, client, args.report_every))
            topo = make_topology("ring", J, weights="metropolis")
            deg = int(topo.degrees.sum())
            dgd_bytes = deg * n * r * 8
            # nodes are placed on workers in contiguous ranges: ring edges that cross workers
            workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
            place = [workers[j * len(workers) // J] for j in range(J)]
            cross = sum(1 for j in range(J) for i in topo.neighbors(j) if place[i] != place[j])
            als_bytes = J * (2 * n * r + 2 * r * r) * 8
            row = {
                "J": J, "n": n, "m": m_j * J, "r": r, "iters": args.iters,
                "in_process_ms_per_iter": 1e3 * statistics.median(local_t),
                "distributed_ms_per_iter": 1e3 * statistics.median(dist_t),
                "overhead_ms_per_iter": 1e3 * (statistics.median(dist_t)
                                               - statistics.median(local_t)),
                "tasks_per_iter": 2 * J,
                "dgd_local_bytes_per_iter": dgd_bytes,
                "dgd_local_cross_worker_bytes_per_iter": cross * n * r * 8,
                "central_als_bytes_per_iter": als_bytes,
                "raw_in_process_s": local_t, "raw_distributed_s": dist_t,
            }
            rows.append(row)
            print(f"J={J:3d}  in-process {row['in_process_ms_per_iter']:7.2f} ms/it  "
                  f"distributed {row['distributed_ms_per_iter']:7.2f} ms/it  "
                  f"bytes/it dgd-local {dgd_bytes:8d} (cross-worker {cross * n * r * 8:7d})  "
                  f"central ALS {als_bytes:8d}", flush=True)
    header = ("| J | in-process ms/it | distributed ms/it | overhead ms/it | tasks/it | "
              "DGD+LOCAL B/it | cross-worker B/it | central ALS B/it |")
    print()
    print(header)
    print("|" + "---|" * 8)
    for row in rows:
        print(f"| {row['J']} | {row['in_process_ms_per_iter']:.2f} | "
              f"{row['distributed_ms_per_iter']:.2f} | {row['overhead_ms_per_iter']:.2f} | "
              f"{row['tasks_per_iter']} | {row['dgd_local_bytes_per_iter']} | "
              f"{row['dgd_local_cross_worker_bytes_per_iter']} | "
              f"{row['central_als_bytes_per_iter']} |")
    result = {
        "benchmark": "bench_dgd",
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "machine": {"cores": os.cpu_count(),
                    "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "platform": platform.platform(), "python": platform.python_version()},
        "versions": {"numpy": np.__version__, "dask": dask.__version__,
                     "distributed": distributed.__version__},
        "cluster": {"kind": "LocalCluster(processes=True)", "workers": args.workers,
                    "threads_per_worker": 1},
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
