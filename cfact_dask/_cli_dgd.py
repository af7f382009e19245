"""``cfact factor --method dgd-local``: decentralised factorization of a Zarr store from the shell.

The click command :data:`factor_dgd` is registered by the main CLI (``cfact_dask.cli``).

References
----------
.. [1] Z. Zhu, Q. Li, X. Yang, G. Tang, M. B. Wakin. "Distributed low-rank matrix factorization
   with exact consensus". NeurIPS 2019, arXiv:1811.03129.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click
import numpy as np

__all__ = ["factor_dgd", "write_result"]


def write_result(res: Any, store: str, group: str = "dgd", *, overwrite: bool = False) -> str:
    """Write a :class:`~cfact_dask.dgd.DGDResult` to ``store/group`` (marked complete last)."""
    from ._runtime.outputs import GroupWriter, prepare_group

    target = prepare_group(store, group, overwrite=overwrite, what="DGD+LOCAL output",
                           flag="--overwrite")
    with GroupWriter(target) as w:
        g = w.create("dgd-result")
        arrays = {
            "U": res.U, "V": res.V, "U_nodes": np.stack(res.U_nodes),
            "cost_history": res.cost_history, "consensus_history": res.consensus_history,
            "history_iters": res.history_iters,
        }
        for k, v in arrays.items():
            v = np.asarray(v)
            a = g.create_array(k, shape=v.shape, dtype=v.dtype, chunks=v.shape)
            a[...] = v
        return w.finish({
            "type": "dgd-result", "method": res.method, "n_iter": res.n_iter,
            "converged": res.converged, "step": res.step, "objective": res.objective,
            "relative_error": res.relative_error, "bytes_per_iter": res.bytes_per_iter,
            "col_ranges": [list(r) for r in res.col_ranges], "polished": res.polished,
            "topology": res.topology.to_dict() if res.topology is not None else None,
        })


def _summary(res: Any) -> dict[str, Any]:
    return {
        "method": res.method, "rank": res.rank, "n_nodes": res.n_nodes, "n_iter": res.n_iter,
        "converged": res.converged, "step": res.step, "objective": res.objective,
        "relative_error": res.relative_error, "final_cost": res.cost,
        "consensus_error": res.consensus_error, "bytes_per_iter": res.bytes_per_iter,
        "bytes_cross_worker_per_iter": res.bytes_cross_worker_per_iter,
        "n_restarts": res.n_restarts,
        "topology": res.topology.name if res.topology is not None else None,
    }


@click.command("factor-dgd")
@click.argument("input", type=click.Path())
@click.option("--method", type=click.Choice(["dgd-local", "dgd", "centralized-svd",
                                             "centralized-gd"]), default="dgd-local",
              show_default=True, help="DGD+LOCAL, or a baseline.")
@click.option("--rank", "-r", type=int, required=True, help="Rank r of the factorization.")
@click.option("--nodes", "-J", "n_nodes", type=int, default=8, show_default=True,
              help="Number of nodes J (column blocks of the data).")
@click.option("--topology", default="ring", show_default=True,
              help="ring | torus2d | star | complete | erdos-renyi, or a .npy J×J matrix.")
@click.option("--weights", type=click.Choice(["max-degree", "metropolis"]), default="max-degree",
              show_default=True, help="Mixing-weight rule.")
@click.option("--lazy/--no-lazy", default=None, help="Use (I + W)/2 (default: only if needed).")
@click.option("--p", "p", type=float, default=0.3, show_default=True,
              help="Erdős–Rényi edge probability.")
@click.option("--graph-seed", type=int, default=0, show_default=True)
@click.option("--step", default="auto", show_default=True,
              help="Step μ of the gradient solver, or 'auto' (0.1/σ₁).")
@click.option("--solver", type=click.Choice(["auto", "als", "gradient"]), default="auto",
              show_default=True,
              help="dgd-local node update: exact local solves (als) or the paper's gradient "
                   "steps; auto = als unless --step is a number.")
@click.option("--schedule", type=click.Choice(["constant", "inverse", "inverse-sqrt"]),
              default="constant", show_default=True, help="Step schedule.")
@click.option("--max-iter", type=int, default=3000, show_default=True)
@click.option("--tol", type=float, default=1e-10, show_default=True)
@click.option("--polish/--no-polish", default=False, show_default=True,
              help="Average U and refit every V_j by least squares at the end.")
@click.option("--report-every", type=int, default=10, show_default=True)
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Zarr store for checkpoints (resumes from it if present).")
@click.option("--checkpoint-every", type=int, default=100, show_default=True)
@click.option("--output", "-o", type=click.Path(), default=None,
              help="Zarr store to write U, V and the histories to (group 'dgd').")
@click.option("--overwrite", is_flag=True, help="Replace an existing output group.")
@click.option("--variable", default=None, help="Array of a Zarr group to factorize.")
@click.option("--feature-axis", type=int, default=0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Initialisation seed.")
@click.option("--scheduler", default=None, help="Scheduler address (default: local/embedded).")
@click.option("--scheduler-file", default=None, type=click.Path())
@click.option("--quiet", "-q", is_flag=True, help="No per-iteration progress lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def factor_dgd(input: str, method: str, rank: int, n_nodes: int, topology: str, weights: str,
               lazy: bool | None, p: float, graph_seed: int, step: str, solver: str,
               schedule: str,
               max_iter: int, tol: float, polish: bool, report_every: int,
               checkpoint: str | None, checkpoint_every: int, output: str | None,
               overwrite: bool, variable: str | None, feature_axis: int, seed: int,
               scheduler: str | None, scheduler_file: str | None, quiet: bool,
               as_json: bool) -> None:
    """Factorize the matrix in the Zarr store INPUT as U Vᵀ with DGD+LOCAL (Zhu et al. 2019).

    Example: cfact factor --method dgd-local --nodes 8 --topology ring --rank 10 data.zarr
    """
    from .cluster import connect
    from .dgd import centralized, dgd, dgd_local
    from .errors import CfactError
    from .io import open_array

    if not quiet:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        lg = logging.getLogger("cfact_dask.dgd")
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    try:
        X = open_array(input, feature_axis=feature_axis, variable=variable)
        if output:  # checked before any compute (cfact_dask._runtime.outputs)
            from ._runtime.outputs import prepare_group

            prepare_group(output, "dgd", overwrite=overwrite, inputs=[X],
                          what="DGD+LOCAL output", flag="--overwrite")
        topo: Any = topology
        if topology.endswith(".npy"):
            topo = np.load(topology)
        step_v: Any = step if step == "auto" else float(step)
        client = connect(scheduler=scheduler, scheduler_file=scheduler_file)
        if method == "dgd-local":
            ck = dict(store=checkpoint, every=checkpoint_every) if checkpoint else None
            res = dgd_local(X, rank, n_nodes, topo, weights=weights, lazy=lazy, p=p,
                            graph_seed=graph_seed, step=step_v, step_schedule=schedule,  # type: ignore[arg-type]
                            max_iter=max_iter, tol=tol, polish=polish,
                            report_every=report_every, checkpoint=ck, client=client,
                            random_state=seed, solver=solver)  # type: ignore[arg-type]
        elif method == "dgd":
            res = dgd(X, rank, n_nodes, topo, weights=weights, lazy=bool(lazy), p=p,
                      graph_seed=graph_seed, step=step_v, max_iter=max_iter,
                      report_every=report_every, random_state=seed)
        else:
            res = centralized(X, rank, method=method.split("-")[1],  # type: ignore[arg-type]
                              step=step_v, max_iter=max_iter, tol=tol, random_state=seed)
        if output:
            write_result(res, output, overwrite=overwrite)
    except (CfactError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    summary = _summary(res)
    if output:
        summary["output"] = f"{output}/dgd"
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        for k, v in summary.items():
            click.echo(f"{k:28s} {v}")
