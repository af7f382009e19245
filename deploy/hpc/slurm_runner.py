#!/usr/bin/env python
"""Run a cfact job inside one SLURM allocation with dask-jobqueue's ``SLURMRunner``.

Launch it with ``srun`` (see ``submit.sbatch``): every SLURM task runs this script, and
``SLURMRunner`` gives each task a role from its ``SLURM_PROCID``: task 0 runs the Dask scheduler,
task 1 runs the client (the body of this script: the cfact pipeline), every other task runs a
worker. The tasks find each other through a scheduler file on the shared file system, so nothing
needs a fixed host or port. When the pipeline returns, the client shuts the scheduler down and the
workers exit, which ends the ``srun`` step.

Usage (inside an allocation; at least 3 tasks)::

    srun python deploy/hpc/slurm_runner.py job.yaml [--resume] [--overwrite] [--check]
    srun python deploy/hpc/slurm_runner.py --check     # start the cluster, run a tiny sketch, exit

The job file is the one ``cfact run`` reads (see ``deploy/config/job.yaml``); its input and output
paths must be on a file system that every node sees.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger("cfact_dask.slurm_runner")


def default_scheduler_file() -> str:
    """Scheduler file on the shared file system (``{job_id}`` is filled in by ``SLURMRunner``).

    ``$CFACT_SCHEDULER_DIR``, else ``$SCRATCH``, else the current directory: all must be visible
    from every node of the allocation.
    """
    base = os.environ.get("CFACT_SCHEDULER_DIR") or os.environ.get("SCRATCH") or os.getcwd()
    return os.path.join(base, "cfact-scheduler-{job_id}.json")


def default_nthreads() -> int:
    """Threads per worker: the task's ``--cpus-per-task`` (1 when SLURM does not say)."""
    return max(1, int(os.environ.get("SLURM_CPUS_PER_TASK", "1")))


def default_memory_limit() -> str:
    """Memory limit per worker from the SLURM request, or ``"auto"``.

    ``--mem-per-cpu`` gives it directly (times the task's CPUs); ``--mem`` (per node) is split
    between the tasks of the node. Without either, dask's ``auto`` (the cgroup / machine memory).
    """
    cpus = default_nthreads()
    per_cpu = os.environ.get("SLURM_MEM_PER_CPU")
    if per_cpu:
        return f"{int(per_cpu) * cpus}MiB"
    per_node = os.environ.get("SLURM_MEM_PER_NODE")
    tasks = os.environ.get("SLURM_NTASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE", "")
    m = re.match(r"\d+", tasks)
    if per_node and m and int(m.group()) > 0:
        return f"{int(per_node) // int(m.group())}MiB"
    return "auto"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    p = argparse.ArgumentParser(
        description="Run `cfact run JOB.yaml` on a Dask cluster made of this SLURM allocation.",
    )
    p.add_argument("job", nargs="?", help="the cfact job file (YAML)")
    p.add_argument("--resume", action="store_true", help="continue from the last complete stage")
    p.add_argument("--overwrite", action="store_true", help="replace existing output stores")
    p.add_argument(
        "--check", action="store_true",
        help="check the cluster first: run a small sketch on the workers and compare it with a "
             "local computation (exit non-zero on mismatch); without a job file, only check",
    )
    p.add_argument("--scheduler-file", default=default_scheduler_file(),
                   help="on the shared file system; {job_id} becomes $SLURM_JOB_ID "
                        "(default: %(default)s)")
    p.add_argument("--nthreads", type=int, default=default_nthreads(),
                   help="threads per worker (default: $SLURM_CPUS_PER_TASK = %(default)s)")
    p.add_argument("--memory-limit", default=default_memory_limit(),
                   help="memory per worker (default from the SLURM request: %(default)s)")
    p.add_argument("--local-directory", default=os.environ.get("TMPDIR"),
                   help="node-local scratch for spilling (default: $TMPDIR)")
    p.add_argument("--interface", default=None,
                   help="network interface for Dask traffic, e.g. ib0")
    p.add_argument("--dashboard-address", default=":8787",
                   help="scheduler dashboard (default: %(default)s)")
    p.add_argument("--worker-timeout", type=float, default=600.0,
                   help="seconds to wait for all workers to connect (default: %(default)s)")
    args = p.parse_args(argv)
    if not args.check and not args.job:
        p.error("give a job file (or --check to only test the cluster)")
    return args


def check_cluster(client: Any) -> dict[str, Any]:
    """Sketch a small random matrix on the workers and compare with a local computation.

    Returns
    -------
    dict
        ``ok`` (bool), the number of workers and the scheduler address.
    """
    import dask.array as da
    import numpy as np

    import cfact_dask as cf

    rng = np.random.default_rng(0)
    X = da.from_array(rng.random((4000, 64)), chunks=(1000, 16))
    sk = cf.sketch(X, 64, kind="expander", seed=0)
    remote = sk.compute(client=client, progress=False)
    local = sk.data.compute(scheduler="sync")
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return {
        "ok": bool(np.array_equal(remote, local)),
        "n_workers": len(workers),
        "scheduler": client.scheduler.address,
    }


def report_dict(result: Any) -> dict[str, Any]:
    """A JSON-able summary of what ``cf.run_job`` returned (its ``report``, plus the store)."""
    if isinstance(result, dict):
        return result
    report = getattr(result, "report", None)
    if isinstance(report, dict):
        out = dict(report)
        if getattr(result, "out", None):
            out.setdefault("out", result.out)
        return out
    if hasattr(result, "to_dict"):
        return dict(result.to_dict())
    return {"result": repr(result)}


def run(args: argparse.Namespace, client: Any) -> dict[str, Any]:
    """The client's work: the cluster check (``--check``), then the pipeline of ``args.job``."""
    summary: dict[str, Any] = {}
    if args.check:
        summary["check"] = check_cluster(client)
        if not summary["check"]["ok"] or not args.job:
            return summary
    import cfact_dask as cf

    result = cf.run_job(args.job, client=client, resume=args.resume, overwrite=args.overwrite)
    summary["report"] = report_dict(result)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Start the SLURMRunner cluster; on the client task run the job and return an exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from dask.distributed import Client
    from dask_jobqueue.slurm import SLURMRunner

    worker_options: dict[str, Any] = {
        "nthreads": args.nthreads,
        "memory_limit": args.memory_limit,
    }
    if args.local_directory:
        worker_options["local_directory"] = args.local_directory
    scheduler_options: dict[str, Any] = {"dashboard_address": args.dashboard_address}
    if args.interface:
        worker_options["interface"] = args.interface
        scheduler_options["interface"] = args.interface

    # Only the client task gets past this `with` line: the scheduler and worker tasks serve
    # inside SLURMRunner until the client closes the cluster, then exit.
    with SLURMRunner(
        scheduler_file=args.scheduler_file,
        scheduler_options=scheduler_options,
        worker_options=worker_options,
    ) as runner:
        with Client(runner) as client:
            logger.info("waiting for %d workers (dashboard: %s)", runner.n_workers,
                        client.dashboard_link)
            client.wait_for_workers(runner.n_workers, timeout=args.worker_timeout)
            report = run(args, client)
    print(json.dumps(report, default=str), flush=True)
    return 0 if report.get("check", {}).get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
