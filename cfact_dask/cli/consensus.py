"""``cfact factor --method dgd-local``: decentralised factorization of a Zarr store from the shell.

The click command :data:`factor_dgd` is registered by the main CLI (``cfact_dask.cli``).

References
----------
.. [1] Z. Zhu, Q. Li, X. Yang, G. Tang, M. B. Wakin. "Distributed low-rank matrix factorization
   with exact consensus". NeurIPS 2019, arXiv:1811.03129.
"""

from __future__ import annotations

from typing import Any, get_args

import click
import numpy as np

from ..factor.consensus._kernels import StepSchedule
from ..factor.consensus._result import write_result
from ..factor.consensus.topology import WeightRule
from ._session import Session, session_options, with_session
from .factor import TopologyType

# write_result: kept importable from here (cli.factor writes its dgd-local results with it)
__all__ = ["factor_dgd", "write_result"]


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
@click.option("--topology", default="ring", show_default=True, type=TopologyType(),
              help="The communication graph, or a .npy J×J adjacency matrix.")
@click.option("--weights", type=click.Choice(get_args(WeightRule)), default="max-degree",
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
@click.option("--schedule", type=click.Choice(get_args(StepSchedule)),
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
@session_options
@with_session
def factor_dgd(session: Session, input: str, method: str, rank: int, n_nodes: int,
               topology: str, weights: str, lazy: bool | None, p: float, graph_seed: int,
               step: str, solver: str, schedule: str,
               max_iter: int, tol: float, polish: bool, report_every: int,
               checkpoint: str | None, checkpoint_every: int, output: str | None,
               overwrite: bool, variable: str | None, feature_axis: int, seed: int) -> None:
    """Factorize the matrix in the Zarr store INPUT as U Vᵀ with DGD+LOCAL (Zhu et al. 2019).

    Example: cfact factor --method dgd-local --nodes 8 --topology ring --rank 10 data.zarr
    """
    from ..factor.consensus import centralized, dgd, dgd_local
    from ..io import open_array

    X = open_array(input, feature_axis=feature_axis, variable=variable)
    if output:  # checked before any compute (cfact_dask._runtime.outputs)
        from .._runtime.outputs import prepare_group

        prepare_group(output, "dgd", overwrite=overwrite, inputs=[X],
                      what="DGD+LOCAL output", flag="--overwrite")
    topo: Any = topology
    if topology.endswith(".npy"):
        topo = np.load(topology)
    step_v: Any = step if step == "auto" else _positive_float(step, "--step")
    client = session.client
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
        res.to_zarr(output, "dgd", overwrite=overwrite)
    summary = _summary(res)
    if output:
        summary["output"] = f"{output}/dgd"
    session.report(summary, "\n".join(f"{k:28s} {v}" for k, v in summary.items()))


def _positive_float(value: str, name: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither 'auto' nor a number",
                                 param_hint=name) from None
    if not v > 0:
        raise click.BadParameter(f"{value!r} must be > 0", param_hint=name)
    return v
