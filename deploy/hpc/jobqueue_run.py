#!/usr/bin/env python
"""Run a cfact job on workers submitted as SLURM or PBS batch jobs (dask-jobqueue).

Run this on a login node (or in a small batch job): the scheduler and the pipeline's client run
here; ``SLURMCluster`` / ``PBSCluster`` submit ``--jobs`` batch jobs of workers with the settings of
``jobqueue.yaml`` (``~/.config/dask/jobqueue.yaml``, or this directory via ``DASK_CONFIG``)::

    export DASK_CONFIG=$PWD/deploy/hpc
    python deploy/hpc/jobqueue_run.py slurm --print-script        # check the job script first
    python deploy/hpc/jobqueue_run.py slurm job.yaml --jobs 4
    python deploy/hpc/jobqueue_run.py pbs job.yaml --jobs 4 --resume

For a run that lives entirely inside one allocation, use ``slurm_runner.py`` instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any, Literal

logger = logging.getLogger("cfact_dask.jobqueue_run")


def make_cluster(system: Literal["slurm", "pbs"], **kwargs: Any) -> Any:
    """A ``SLURMCluster`` or ``PBSCluster`` configured from ``jobqueue.<system>`` in dask.config."""
    if system == "slurm":
        from dask_jobqueue import SLURMCluster

        return SLURMCluster(**kwargs)
    if system == "pbs":
        from dask_jobqueue import PBSCluster

        return PBSCluster(**kwargs)
    raise ValueError(f"system must be 'slurm' or 'pbs', got {system!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, start the cluster, run the job; return the exit code."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("system", choices=["slurm", "pbs"])
    p.add_argument("job", nargs="?", help="the cfact job file (YAML)")
    p.add_argument("--jobs", type=int, default=2, help="batch jobs of workers (default: 2)")
    p.add_argument("--print-script", action="store_true",
                   help="print the batch script that would be submitted and exit")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--worker-timeout", type=float, default=3600.0,
                   help="seconds to wait for the first worker (queue time; default: 3600)")
    args = p.parse_args(argv)
    if not args.print_script and not args.job:
        p.error("give a job file (or --print-script)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from dask.distributed import Client

    with make_cluster(args.system) as cluster:
        if args.print_script:
            print(cluster.job_script())
            return 0
        import cfact_dask as cf

        cluster.scale(jobs=args.jobs)
        with Client(cluster) as client:
            logger.info("submitted %d %s jobs; dashboard: %s", args.jobs, args.system,
                        client.dashboard_link)
            # start as soon as one worker is up; the others join as their jobs start
            client.wait_for_workers(1, timeout=args.worker_timeout)
            report = cf.run_job(args.job, client=client, resume=args.resume,
                                overwrite=args.overwrite)
    report = getattr(report, "report", report)  # RunResult.report: errors, timings, certificate
    print(json.dumps(report, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
