"""``factor.method: dgd-local`` in the pipeline: decentralised DGD+LOCAL over column blocks.

The input's sample columns are split into ``n_nodes`` contiguous blocks (on chunk boundaries when
there are enough chunks); on a distributed client the nodes are grouped into one contiguous group
per worker (``mode: workers``: one task per worker per report period, the copies ``U^i`` sent
worker to worker), each worker reading its own blocks. Every node keeps its copy ``U^j`` of the
consensus factor and its local ``V_j``; see :func:`~cfact_dask.dgd_local`.

Certificate, from what the run already computed (no extra pass):

* **fit**: ``‖Y − Ū Vᵀ‖_F / ‖Y‖_F`` of the consensus model the pipeline writes, summed over the
  nodes' blocks in the run's final step (exact, not an estimate: its tolerance is rounding);
* **consensus**: ``δ = sqrt(Σ_j ‖U^j − Ū‖² / (J ‖Ū‖²))``, how far the nodes' final copies are from
  their mean. The nodes are taken to agree when ``δ <= max(consensus_tol, fit)``: copies that
  differ by less than the model's own relative error change the model by less than it misses
  anyway (on noisy data the consensus iteration leaves a disagreement of that order, ~0.2–0.5 of
  the fit at the default consensus weight, which the polished consensus model does not feel).

A disconnected topology is refused before anything is computed (:func:`check_topology`): its
components can never agree, and the solver's graph validation refuses it anyway, so the job is
stopped before the input is read rather than after.

The reconstruction is ``Ū Vᵀ`` streamed on the input's chunk grid.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError
from ..factor.consensus import DGDResult, dgd_local
from ..factor.consensus.topology import GRAPHS, Topology, make_topology
from ..reconstruction import product
from ._generic import Certificate, MethodStages, StageContext

__all__ = ["STAGES", "check_topology", "consensus_distance", "fit_tolerance",
           "validate"]

_WEIGHTS = ("max-degree", "metropolis")
_SCHEDULES = ("constant", "inverse", "inverse-sqrt")


def validate(o: Mapping[str, Any], source: str) -> None:
    """The value checks of a ``factor`` section with ``method: dgd-local`` (no data read)."""
    def bad(key: str, need: str) -> ConfigError:
        return ConfigError(f"{source}: 'cfact.factor.{key}' {need}, got {o[key]!r}")

    if o["n_nodes"] < 1:
        raise bad("n_nodes", "must be >= 1 (the number of column blocks)")
    topo = o["topology"]
    if topo not in GRAPHS and not topo.endswith(".npy"):
        raise bad("topology", f"must be one of {list(GRAPHS)} or a .npy file holding a J × J "
                              f"adjacency (or mixing) matrix")
    choices = {"weights": _WEIGHTS, "solver": ("auto", "als", "gradient"),
               "mode": ("workers", "tasks"), "step_schedule": _SCHEDULES}
    for key, allowed in choices.items():
        if o[key] not in allowed:
            raise bad(key, f"must be one of {list(allowed)}")
    step = o["step"]
    if isinstance(step, str):
        if step != "auto":
            raise bad("step", "must be 'auto' or a positive number")
    elif not (math.isfinite(step) and step > 0):
        raise bad("step", "must be 'auto' or a positive number")
    if o["solver"] == "als" and not isinstance(step, str):
        raise ConfigError(f"{source}: 'cfact.factor.step' = {step!r} is the step of solver "
                          f"'gradient'; solver 'als' takes no step: drop step, or set solver: "
                          f"gradient")
    positive = {"consensus_weight": o["consensus_weight"], "warn_above": o["warn_above"]}
    for key, v in positive.items():
        if not (math.isfinite(v) and v > 0):
            raise bad(key, "must be a positive number")
    if not 0 < o["edge_probability"] <= 1:
        raise bad("edge_probability", "must be in (0, 1] (erdos-renyi's edge probability)")
    for key in ("step_decay", "tol", "consensus_tol"):
        if not (math.isfinite(o[key]) and o[key] >= 0):
            raise bad(key, "must be a number >= 0")
    for key in ("max_iter", "checkpoint_every"):
        if o[key] < 1:
            raise bad(key, "must be >= 1")


def _graph(options: Mapping[str, Any]) -> Any:
    """The ``topology`` argument of :func:`dgd_local`: a graph name, or the loaded .npy."""
    topo = options["topology"]
    if topo in GRAPHS:
        return topo
    if not os.path.exists(topo):
        raise ConfigError(f"'cfact.factor.topology' = {topo!r}: no such file; give a graph name "
                          f"({', '.join(GRAPHS)}) or the path of a .npy J × J adjacency matrix "
                          f"(relative to the job file)")
    try:
        return np.load(topo, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"'cfact.factor.topology' = {topo!r} is not a readable .npy array "
                          f"({e}); save the adjacency with numpy.save") from e


def check_topology(options: Mapping[str, Any]) -> Topology:
    """Build the communication graph of a ``dgd-local`` section, refusing it before any compute.

    Raises
    ------
    ConfigError
        The graph is disconnected (its components could never agree on ``U``), its size differs
        from ``n_nodes``, or its weights are invalid; the message names the key and the fix.
    """
    try:
        return make_topology(_graph(options), int(options["n_nodes"]),
                             weights=options["weights"], lazy=bool(options["lazy"]),
                             p=float(options["edge_probability"]),
                             seed=int(options["graph_seed"]))
    except ConfigError as e:
        if str(e).startswith("'cfact.factor.topology'"):
            raise
        raise ConfigError(
            f"'cfact.factor.topology' = {options['topology']!r} with n_nodes = "
            f"{options['n_nodes']} cannot run DGD+LOCAL: {e}. Nothing was computed; fix the "
            f"graph (every node must reach every other, so the nodes can agree on U)") from e


def _check(inp: Any, rank: int, options: Mapping[str, Any]) -> None:
    if inp.ndim != 2:
        raise InputError(f"factor.method dgd-local factorizes matrices; {inp.source} has shape "
                         f"{inp.shape}")
    n = int(inp.shape[inp.feature_axis])
    m = int(inp.shape[1 - inp.feature_axis])
    if options["n_nodes"] > m:
        raise ConfigError(f"'cfact.factor.n_nodes' = {options['n_nodes']} but {inp.source} has "
                          f"only {m} sample columns; every node needs at least one: use "
                          f"n_nodes <= {m}")
    if rank > min(n, m):
        raise ConfigError(f"'cfact.factor.rank' = {rank} exceeds min(n, m) = {min(n, m)} of "
                          f"{inp.source} ({n} × {m}); lower the rank")
    topo = check_topology(options)
    if options["lazy"] is False and topo.n_nodes > 1 and topo.eigenvalues[0] <= -1.0 + 1e-6:
        raise ConfigError(
            f"'cfact.factor.lazy' is false but the mixing matrix of {topo.name!r} on "
            f"{topo.n_nodes} nodes has eigenvalue -1 (a bipartite graph with zero self-weights), "
            f"so the copies of U would oscillate forever; drop lazy (it is then used only where "
            f"needed) or set weights: metropolis")


def _fit(ctx: StageContext) -> DGDResult:
    o = ctx.options
    step = o["step"] if isinstance(o["step"], str) else float(o["step"])
    return dgd_local(
        ctx.inp, ctx.rank, int(o["n_nodes"]), _graph(o), weights=o["weights"], lazy=o["lazy"],
        p=float(o["edge_probability"]), graph_seed=int(o["graph_seed"]), step=step,
        step_schedule=o["step_schedule"], step_decay=float(o["step_decay"]),
        max_iter=int(o["max_iter"]), tol=float(o["tol"]), polish=bool(o["polish"]),
        checkpoint=ctx.checkpoint, callback=ctx.callback, client=ctx.client, mode=o["mode"],
        random_state=o["random_state"], solver=o["solver"],
        consensus_weight=float(o["consensus_weight"]))


def consensus_distance(res: DGDResult) -> float:
    """``sqrt(Σ_j ‖U^j − Ū‖² / (J ‖Ū‖²))``: the nodes' relative disagreement on ``U``."""
    Un = np.stack([np.asarray(u, dtype=np.float64) for u in res.U_nodes])
    Ub = Un.mean(axis=0)
    den = len(Un) * float(np.vdot(Ub, Ub))
    return math.sqrt(float(np.vdot(Un - Ub, Un - Ub)) / den) if den > 0 else 0.0


def fit_tolerance(error: float, dtype: Any) -> float:
    """How far (relative) the reconstruction's measured error may be from the certified one.

    The fit is exact up to rounding: float64 sums (~1e-9 relative, generous) and the model's
    rounding to the output ``dtype`` when it is written, at most ``eps·‖R‖`` with ``‖R‖ ≈ ‖Y‖``,
    i.e. ``eps / error`` relative to the error.
    """
    eps = float(np.finfo(np.dtype(dtype) if np.dtype(dtype).kind == "f" else np.float64).eps)
    return 1e-9 + eps * (1.0 + error) / max(error, 1e-300)


def _certificate(res: DGDResult, ctx: StageContext) -> Certificate:
    o = ctx.options
    fit = float(res.relative_error)
    delta = consensus_distance(res)
    warn, ctol = float(o["warn_above"]), float(o["consensus_tol"])
    local = math.sqrt(max(res.cost, 0.0) / res.norm_Y2) if res.norm_Y2 > 0 else 0.0
    topo = res.topology
    details: dict[str, Any] = {
        "fit_relative_error": fit, "consensus_error": delta,
        "consensus_allowed": max(ctol, fit), "local_relative_error": local,
        "converged": bool(res.converged), "n_nodes": res.n_nodes,
        "topology": topo.name if topo is not None else None,
        "spectral_gap": float(topo.spectral_gap) if topo is not None else None,
        "warn_above": warn, "consensus_tol": ctol, "polished": bool(res.polished),
        "solver": res.solver, "workers": sorted(set(res.workers)),
    }
    messages, fixes = [], []
    if fit > warn:
        msg = (f"the consensus model leaves relative error {fit:.3g}, above factor.warn_above "
               f"= {warn:g}")
        if local < 0.5 * fit:
            msg += (f"; the nodes' own copies fit their columns far better ({local:.3g}): the "
                    f"column blocks want different U")
        messages.append(msg)
        fixes.append("raise factor.rank (or factor.warn_above, if the data is noise beyond "
                     "this rank)")
    if delta > max(ctol, fit):
        gap = f"{topo.spectral_gap:.3g}" if topo is not None else "?"
        messages.append(
            f"the nodes did not reach consensus: their copies of U differ from their mean by "
            f"{delta:.3g} (relative), more than the model's own error {fit:.3g} and "
            f"factor.consensus_tol = {ctol:g}, after {res.n_iter} iterations"
            f"{'' if res.converged else ' (max_iter reached)'} on {res.n_nodes} nodes of "
            f"{details['topology']!r} (spectral gap {gap})")
        fixes.append("raise factor.max_iter or factor.consensus_weight, or use a better "
                      "connected topology (torus2d, complete, or more edges in the .npy)")
    dtype = ctx.inp.dtype if ctx.inp.dtype.kind == "f" else np.float64
    return Certificate(
        fit, not messages,
        "exact: ‖Y − Ū Vᵀ‖ summed over the nodes' blocks in the run's final step; consensus "
        "from the nodes' final copies", fit_tolerance(fit, dtype), tuple(messages),
        "; ".join(fixes) or None, details)


def _reconstruction(res: DGDResult, ctx: StageContext) -> Any:
    return product(res.U, res.V.T, ctx.inp)


def _summary(res: DGDResult) -> dict[str, Any]:
    topo = res.topology
    return {"n_nodes": res.n_nodes, "topology": topo.name if topo is not None else None,
            "converged": bool(res.converged), "consensus_error": consensus_distance(res),
            "polished": bool(res.polished), "bytes_per_iter": int(res.bytes_per_iter)}


#: the pipeline stages of ``factor.method: dgd-local``
STAGES = MethodStages(
    fit=_fit,
    load=DGDResult.from_zarr,
    certificate=_certificate,
    reconstruction=_reconstruction,
    check=_check,
    factors=lambda res: (res.U, res.V.T),
    summary=_summary,
)
