"""The engines of DGD+LOCAL: the iteration loop (:func:`drive`) and what runs the iterations.

:class:`Engine` steps the node states in-process (numpy) or as one dask task per node per
iteration (``mode="tasks"``); :class:`GroupEngine` runs one task per worker per report period
with the boundary copies exchanged worker to worker (``mode="workers"``, :mod:`._exchange`).
Both keep anchors (restore points on the client) and replay from the last one when a worker
is lost; the algorithm is deterministic, so a replayed run equals an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..._runtime.blas import blas_threads_now
from ..._runtime.checkpoint import Checkpoint
from ...errors import ConvergenceWarning, DivergenceError
from ._exchange import (
    EXCHANGE_TIMEOUT,
    LOOKAHEAD,
    ExchangeAborted,
    Plan,
    abort,
    group_final,
    group_init,
    group_pull,
    group_segment,
)
from ._kernels import (
    EXPLODE,
    STEPS,
    consensus,
    consensus_err,
    node_check,
    node_cost_with,
    node_from_arrays,
    node_init,
    node_refit,
    node_state_arrays,
    node_step_task,
    node_U,
    schedule_factor,
)
from ._result import DGDResult, DGDState
from ._runtime import MAX_LOSSES, Local, Remote, WorkerLost, lost, lost_error, note_worker_loss
from .topology import Topology

__all__ = ["Engine", "GroupEngine", "drive"]

logger = logging.getLogger(__name__)


def _restore(engine: Any) -> int:
    """Move the nodes of lost workers and re-seat the last anchor; return its iteration."""
    for _ in range(MAX_LOSSES):
        try:
            engine.restore_after_loss()
            return int(engine.anchor_t)
        except WorkerLost:  # another worker lost while restoring: look again
            continue
    raise lost_error(engine, f"the replay from iteration {engine.anchor_t}")


def drive(engine: Engine, rt: Local | Remote, topo: Topology, ckpt: Checkpoint | None,
          loaded: Any, init_args: Any, t0: int, cost_hist: list[float], cons_hist: list[float],
          hist_iters: list[int], *, n: int, rank: int,
          col_ranges: tuple[tuple[int, int], ...], mu: float, step_schedule: Any,
          step_decay: float, max_iter: int, tol: float, polish: bool, report_every: int,
          anchor_every: int, callback: Callable[[DGDState], bool | None] | None,
          norm_Y2: float, bytes_per_iter: int, cross: int, dtype: np.dtype) -> DGDResult:
    """The iteration loop of :func:`dgd_local` (reports, stopping, anchors, checkpoints)."""
    engine.init(init_args, t0)

    def boundary_after(t: int) -> int:
        b = (t // report_every + 1) * report_every
        if ckpt is not None:
            b = min(b, (t // ckpt.every + 1) * ckpt.every)
        b = min(b, (t // anchor_every + 1) * anchor_every)
        return min(b, max_iter)

    def is_anchor(t: int) -> bool:
        return t % anchor_every == 0 or (ckpt is not None and ckpt.should_save(t)) or t == max_iter

    converged = False
    stop = False
    start = time.perf_counter()
    t = t0
    # the state at t0 is an anchor (initial or restored)
    engine.anchor(t)
    first_check = engine.check_now()  # (costs since last check [], cost(t0), consensus(t0))
    cost0 = first_check[1]
    prev_L = first_check[1] + first_check[2]
    hist_iters.append(t)
    cons_hist.append(first_check[2])
    if loaded is not None and cost_hist:
        cost0 = cost_hist[0]
    explode_at = EXPLODE * max(cost0, norm_Y2)
    last_mu = mu
    while t < max_iter and not stop:
        t_end = boundary_after(t)
        t_next = boundary_after(t_end) if t_end < max_iter and not is_anchor(t_end) else None
        try:
            if isinstance(engine, GroupEngine):
                more = []
                b = t_next
                while (b is not None and b < max_iter and not is_anchor(b)
                       and len(more) < LOOKAHEAD - 1):
                    b = boundary_after(b)
                    more.append(b)
                batch_costs, cost_t, cons_t = engine.run(t, t_end, t_next, more)
            else:
                batch_costs, cost_t, cons_t = engine.run(t, t_end, t_next)
        except WorkerLost:
            t = _restore(engine)
            del cost_hist[t:]
            keep = [k for k, i in enumerate(hist_iters) if i <= t]
            cons_hist = [cons_hist[k] for k in keep]
            hist_iters = [hist_iters[k] for k in keep]
            continue
        cost_hist.extend(batch_costs)
        t = t_end
        hist_iters.append(t)
        cons_hist.append(cons_t)
        last_mu = engine.param(t - 1)
        L = cost_t + cons_t
        if not (math.isfinite(L)) or cost_t > explode_at:
            engine.cancel()
            raise DivergenceError(
                f"DGD+LOCAL diverged by iteration {t}: cost {cost_t:.3g} (initial "
                f"{cost0:.3g}, ||Y||^2 = {norm_Y2:.3g}) with step mu={mu:.3g}; rerun with a "
                f"smaller step, e.g. step={mu / 10:.3g}, or step='auto'"
            )
        elapsed = time.perf_counter() - start
        if t % report_every == 0 or t == max_iter:
            logger.debug("dgd-local iter %d  cost %.6e  consensus %.6e  step %.3g  (%.2fs)",
                        t, cost_t, cons_t, last_mu, elapsed)
        if tol > 0 and (L <= tol * norm_Y2 or abs(prev_L - L) <= tol * prev_L):
            converged = True
            stop = True
        prev_L = L
        if callback is not None and callback(DGDState(t, cost_t, cons_t, last_mu, elapsed)):
            stop = True
        if is_anchor(t) or stop:
            try:
                engine.anchor(t)
            except WorkerLost:  # replay from the previous anchor, like a loss in the period
                t = _restore(engine)
                del cost_hist[t:]
                keep = [k for k, i in enumerate(hist_iters) if i <= t]
                cons_hist = [cons_hist[k] for k in keep]
                hist_iters = [hist_iters[k] for k in keep]
                stop = converged = False
                continue
            if ckpt is not None and (ckpt.should_save(t) or stop or t == max_iter):
                U_nodes, V_blocks = engine.anchor_arrays()
                ckpt.save(t, {"U_nodes": np.stack(U_nodes), "V": np.vstack(V_blocks)},
                          {"cost": [*cost_hist, cost_t], "consensus": cons_hist,
                           "iters": [float(i) for i in hist_iters]})
    n_iter = t
    # the cost of the final state (from the last check)
    final_cost = engine.last_cost
    cost_hist = [*cost_hist[:n_iter], final_cost]
    if not converged and tol > 0 and n_iter >= max_iter and not stop:
        warnings.warn(
            f"DGD+LOCAL stopped at max_iter={max_iter} before reaching tol={tol:g} (last cost "
            f"{final_cost:.3g}, consensus error {cons_hist[-1]:.3g}); raise max_iter"
            + (f", or raise the step (now {mu:.3g}) if the cost is still falling steadily"
               if engine.solver == "gradient" else ""),
            ConvergenceWarning, stacklevel=4,
        )
    for _ in range(MAX_LOSSES):
        try:
            U_nodes, V_blocks, Ubar, objective = engine.finish(polish)
            break
        except WorkerLost:  # the anchor is the final state: move the nodes and finish again
            _restore(engine)
    else:
        raise lost_error(engine, "the final refit")
    if isinstance(engine, GroupEngine):
        # what really crosses: each boundary copy once per neighbouring worker
        cross = engine.cross_nodes * n * rank * dtype.itemsize
    return DGDResult(
        U=Ubar, V_blocks=tuple(V_blocks), U_nodes=tuple(U_nodes), col_ranges=col_ranges,
        cost_history=np.asarray(cost_hist, dtype=np.float64),
        consensus_history=np.asarray(cons_hist, dtype=np.float64),
        history_iters=np.asarray(hist_iters, dtype=np.int64), n_iter=n_iter,
        converged=converged, step=mu if engine.solver == "gradient" else 0.0,
        objective=objective, norm_Y2=norm_Y2,
        bytes_per_iter=bytes_per_iter, bytes_cross_worker_per_iter=cross, method="dgd-local",
        topology=topo, polished=polish, n_restarts=engine.n_restarts, workers=rt.workers,
        solver=engine.solver, consensus_weight=mu if engine.solver == "als" else 0.0,
        blas_threads=engine.blas_seen,
    )


class _Batch:
    """Futures of iterations ``t0 … t1−1`` and of the check at ``t1`` (distributed)."""

    __slots__ = ("cons", "checks", "rng", "states", "Us")

    def __init__(self, rng: tuple[int, int], states: list[Any], Us: list[Any],
                 checks: list[Any], cons: Any) -> None:
        self.rng, self.states, self.Us, self.checks, self.cons = rng, states, Us, checks, cons


class Engine:
    """Drives the node states (in-process lists, or futures pinned to workers)."""

    def __init__(self, rt: Local | Remote, topo: Topology, orders: list[tuple[int, ...]],
                 wts: list[tuple[float, ...]], nbrs: list[tuple[int, ...]], rank: int, seed: int,
                 scale: float, dtype: np.dtype, mu: float, schedule: Any, decay: float,
                 solver: str = "gradient") -> None:
        self.rt = rt
        self.J = topo.n_nodes
        self.orders, self.wts, self.nbrs = orders, wts, nbrs
        self.rank, self.seed, self.scale, self.dtype = rank, seed, scale, dtype
        self.mu, self.schedule, self.decay = mu, schedule, decay
        self.solver = solver
        self.step_fn = STEPS[solver]
        self.states: list[Any] = []
        self.Us: list[Any] = []
        self.anchor_t = 0
        self.anchor_states: list[tuple[np.ndarray, np.ndarray]] = []
        self.last_cost = math.nan
        self.blas_seen: int | None = None
        self.n_restarts = 0
        self.pending: _Batch | None = None

    def param(self, t: int) -> float:
        """The step ``μ_t`` (``"gradient"``) or the consensus weight ``ρ_t`` (``"als"``; a
        decaying step schedule makes it grow, which shrinks the disagreement the same way)."""
        f = schedule_factor(self.schedule, self.decay, t)
        return self.mu * f if self.solver == "gradient" else self.mu / f

    # -- state creation
    def init(self, arrays: list[tuple[np.ndarray, np.ndarray]] | None, t: int = 0) -> None:
        rt = self.rt
        if isinstance(rt, Local):
            if arrays is None:
                self.states = [node_init(rt.Y[j], self.rank, self.seed, j, self.scale,
                                         self.dtype, self.solver == "als")
                               for j in range(self.J)]
            else:
                self.states = [node_from_arrays(*arrays[j]) for j in range(self.J)]
            return
        if arrays is None:
            self.states = [rt.submit(node_init, rt.Y[j], self.rank, self.seed, j,
                                     self.scale, self.dtype, self.solver == "als", j=j,
                                     name="dgd-init")
                           for j in range(self.J)]
        else:
            # straight to the node's worker (not through the scheduler); no lineage behind it
            self.states = [rt.client.scatter([(arrays[j][0], (arrays[j][1], ()))],
                                             workers=[rt.node_worker[j]], hash=False)[0]
                           for j in range(self.J)]
        self.Us = [rt.submit(node_U, self.states[j], j=j, name="dgd-U") for j in range(self.J)]

    # -- iterations
    def _submit_batch(self, t0: int, t1: int, states: list[Any], Us: list[Any]) -> _Batch:
        """Queue iterations ``t0 … t1−1`` and the check at ``t1`` as *one* graph.

        One ``update-graph`` message per batch (not one per task) keeps the client and scheduler
        overhead per iteration low; every key is pinned to its node's worker by a per-key
        ``workers`` annotation.
        """
        import dask

        rt = self.rt
        assert isinstance(rt, Remote)
        J = self.J
        tag = f"{rt.run_id}-g{rt.generation}"
        dsk: dict[str, Any] = {}
        where: dict[str, list[str]] = {}
        cur_s: list[Any] = list(states)
        cur_u: list[Any] = list(Us)
        for t in range(t0, t1):
            mu_t = self.param(t)
            new_s, new_u = [], []
            for j in range(J):
                ks, ku = f"dgd-step-{tag}-{t}-{j}", f"dgd-U-{tag}-{t}-{j}"
                dsk[ks] = (node_step_task, self.solver, rt.Y[j], cur_s[j],
                           [cur_u[i] for i in self.nbrs[j]],
                           self.orders[j], self.wts[j], mu_t, j, t, t == t0)
                dsk[ku] = (node_U, ks)
                where[ks] = where[ku] = [rt.node_worker[j]]
                new_s.append(ks)
                new_u.append(ku)
            cur_s, cur_u = new_s, new_u
        checks = []
        for j in range(J):
            kc = f"dgd-check-{tag}-{t1}-{j}"
            dsk[kc] = (node_check, rt.Y[j], cur_s[j])
            where[kc] = [rt.node_worker[j]]
            checks.append(kc)
        kcons = f"dgd-consensus-{tag}-{t1}"
        dsk[kcons] = (consensus_err, *cur_u)
        where[kcons] = sorted(set(rt.node_worker))
        keys = [*cur_s, *cur_u, *checks, kcons]
        with dask.annotate(workers=where.get):
            futs = rt.client.get(dsk, keys, sync=False)
        futs = list(futs)
        return _Batch((t0, t1), futs[:J], futs[J:2 * J], futs[2 * J:3 * J], futs[3 * J])

    def _submit_check(self, states: list[Any], Us: list[Any]) -> tuple[list[Any], Any]:
        rt = self.rt
        assert isinstance(rt, Remote)
        checks = [rt.submit(node_check, rt.Y[j], states[j], j=j, name="dgd-check")
                  for j in range(self.J)]
        cons = rt.client.submit(consensus_err, *Us, pure=False,
                                key=f"dgd-consensus-{rt.run_id}-{uuid.uuid4().hex[:8]}")
        return checks, cons

    def check_now(self) -> tuple[list[float], float, float]:
        rt = self.rt
        if isinstance(rt, Local):
            res = [node_check(rt.Y[j], self.states[j]) for j in range(self.J)]
            cons = consensus_err(*[s[0] for s in self.states])
        else:
            checks, cons_f = self._submit_check(self.states, self.Us)
            res, cons = rt.gather([checks, cons_f])
        return self._combine(res, cons)

    def _combine(self, res: list[tuple[tuple[float, ...], float]], cons: float
                 ) -> tuple[list[float], float, float]:
        n = len(res[0][0])
        batch = [float(sum(r[0][k] for r in res)) for k in range(n)]
        cost = float(sum(r[1] for r in res))
        self.last_cost = cost
        return batch, cost, float(cons)

    def run(self, t0: int, t1: int, t2: int | None = None) -> tuple[list[float], float, float]:
        """Iterations ``t0 … t1−1``; return their costs and the cost / consensus at ``t1``.

        Distributed: when ``t2`` is given, the iterations ``t1 … t2−1`` are queued before the
        client waits for this batch's scalars, so the workers never idle on the client.
        """
        rt = self.rt
        if isinstance(rt, Local):
            if self.blas_seen is None:
                self.blas_seen = blas_threads_now()
            for t in range(t0, t1):
                mu_t = self.param(t)
                Us = [s[0] for s in self.states]
                self.states = [
                    self.step_fn(rt.Y[j], self.states[j], [Us[i] for i in self.nbrs[j]],
                               self.orders[j], self.wts[j], mu_t, j, t, t == t0)
                    for j in range(self.J)]
            return self.check_now()
        pend = self.pending
        batch = pend if pend is not None and pend.rng == (t0, t1) else self._submit_batch(
            t0, t1, self.states, self.Us)
        self.pending = (self._submit_batch(t1, t2, batch.states, batch.Us)
                        if t2 is not None and t2 > t1 else None)
        res, c = rt.gather([batch.checks, batch.cons])
        self.states, self.Us = batch.states, batch.Us
        return self._combine(res, c)

    def cancel(self) -> None:
        """Drop queued iterations (their futures are released, so the scheduler forgets them)."""
        self.pending = None

    # -- anchors (restore points)
    def anchor(self, t: int) -> None:
        rt = self.rt
        if isinstance(rt, Local):
            self.anchor_states = [(s[0], s[1][0]) for s in self.states]
            self.anchor_t = t
            return
        self.cancel()
        # a worker lost while pulling leaves the previous anchor (state and iteration) in place
        self.anchor_states = rt.gather([
            rt.submit(node_state_arrays, self.states[j], j=j, name="dgd-pull")
            for j in range(self.J)])
        self.anchor_t = t
        # re-seat the states from the copies: cuts the lineage of the past iterations
        self.init(self.anchor_states)

    def anchor_arrays(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return [a[0] for a in self.anchor_states], [a[1] for a in self.anchor_states]

    def restore_after_loss(self) -> None:
        rt = note_worker_loss(self)
        self.pending = None
        rt.reload()
        self.init(self.anchor_states)

    # -- finish
    def finish(self, polish: bool) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray,
                                            float]:
        rt = self.rt
        U_nodes, _ = self.anchor_arrays()
        _, Ubar = consensus(*U_nodes)
        if polish:
            out = rt.map_nodes(node_refit, Ubar)
        elif isinstance(rt, Local):
            out = [node_cost_with(rt.Y[j], Ubar, self.states[j]) for j in range(self.J)]
        else:
            out = rt.gather([rt.submit(node_cost_with, rt.Y[j], Ubar, self.states[j], j=j,
                                       name="dgd-final") for j in range(self.J)])
        V_blocks = [o[0] for o in out]
        objective = float(sum(o[1] for o in out))
        return list(U_nodes), V_blocks, Ubar, objective

    def close(self) -> None:
        self.cancel()


class GroupEngine(Engine):
    """``mode="workers"``: one task per worker per report period; peers exchange U^i directly.

    Per period ``[t0, t1)`` the client submits one :func:`group_segment` per worker (pinned;
    the next period is queued, and already waiting inside the worker for this one's end, while
    the client reads this one's report: the workers wait neither for the client nor for the
    scheduler). Each worker iterates its nodes,
    posting every iteration the boundary copies its peers need and waiting for theirs. Reports
    carry the nodes' costs and their ``U^j`` at ``t1`` (the consensus error is computed on the
    client, in node order); anchors pull ``(U^j, V_j)`` from the workers' snapshots.
    """

    def __init__(self, *args: Any, timeout: float = EXCHANGE_TIMEOUT, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.timeout = timeout
        self.plans: dict[str, Plan] = {}
        self.current: dict[str, Any] | None = None
        self.pending_g: list[tuple[tuple[int, int], dict[str, Any]]] = []
        self.report_t = -1
        self.checks: list[Any] = [None] * self.J
        self.U_cur: list[Any] = [None] * self.J
        self.V_cur: list[Any] = [None] * self.J
        self.tags: list[str] = []

    @property
    def tag(self) -> str:
        rt = self.rt
        assert isinstance(rt, Remote)
        return f"cfact-dgd-{rt.run_id}-g{rt.generation}"

    @property
    def cross_nodes(self) -> int:
        """Copies ``U^i`` sent between workers per iteration (one per node and peer worker)."""
        return sum(len(nodes) for p in self.plans.values() for _, nodes in p.send)

    def _make_plans(self) -> None:
        rt = self.rt
        assert isinstance(rt, Remote)
        by_w: dict[str, list[int]] = {}
        for j, w in enumerate(rt.node_worker):
            by_w.setdefault(w, []).append(j)
        plans = {}
        for w, nodes in by_w.items():
            mine = set(nodes)
            recv = sorted({i for j in nodes for i in self.nbrs[j] if i not in mine})
            send = []
            for p, pn in sorted(by_w.items()):
                if p != w:
                    need = sorted({i for k in pn for i in self.nbrs[k] if i in mine})
                    if need:
                        send.append((p, tuple(need)))
            plans[w] = Plan(
                nodes=tuple(nodes), nbrs=tuple(tuple(self.nbrs[j]) for j in nodes),
                orders=tuple(self.orders[j] for j in nodes),
                wts=tuple(self.wts[j] for j in nodes), send=tuple(send), recv=tuple(recv),
                timeout=self.timeout, solver=self.solver)
        self.plans = plans

    def _submit(self, fn: Callable[..., Any], w: str, *args: Any, name: str) -> Any:
        rt = self.rt
        assert isinstance(rt, Remote)
        return rt.client.submit(
            fn, *args, workers=[w], allow_other_workers=False, pure=False,
            key=f"{name}-{rt.run_id}-g{rt.generation}-{uuid.uuid4().hex[:8]}")

    def _Ys(self, w: str) -> list[Any]:
        rt = self.rt
        assert isinstance(rt, Remote)
        return [rt.Y[j] for j in self.plans[w].nodes]

    def _abort(self, tags: Sequence[str] | None = None) -> None:
        rt = self.rt
        assert isinstance(rt, Remote)
        tags = list(self.tags if tags is None else tags)
        if not tags:
            return
        try:
            abort(rt.client, tags, rt.alive())
        except Exception as e:  # pragma: no cover - best effort (workers going away)
            logger.debug("dgd-local: aborting %s failed: %s", tags, e)

    def _wait(self, futs: dict[str, Any]) -> list[Any]:
        """Gather ``futs``; a failed task aborts the run's exchanges (so its peers stop
        waiting) and re-raises; a lost worker raises :class:`WorkerLost`."""
        rt = self.rt
        assert isinstance(rt, Remote)
        flat = list(futs.values())
        last_check = time.perf_counter()
        failed = False
        while True:
            st = [f.status for f in flat]
            if all(s == "finished" for s in st):
                break
            if not failed and any(s in ("error", "cancelled", "lost") for s in st):
                if lost(rt):
                    raise WorkerLost()
                failed = True
                self._abort([self.tag])  # the peers of the failed task stop waiting for it
            if failed and all(s != "pending" for s in st):
                errs = [f.exception() for f in flat if f.status == "error"]
                # the original error (DivergenceError...), not the peers' aborted waits
                errs.sort(key=lambda e: isinstance(e, ExchangeAborted))
                if errs:
                    raise errs[0]
                for f in flat:
                    f.result()  # cancelled / lost
            # block (no polling) on the first unfinished future, at most until the next check
            for f in flat:
                if f.status == "pending":
                    try:
                        f.exception(timeout=0.25 if failed else 0.5)
                    except Exception:  # timeout / cancelled: looked at in the next round
                        pass
                    break
            now = time.perf_counter()
            if now - last_check > 0.5:
                last_check = now
                if lost(rt):
                    raise WorkerLost()
        return rt.fetch(flat)

    def _absorb(self, reports: list[dict[str, Any]]) -> None:
        if any(rep.get("aborted") for rep in reports):
            raise ExchangeAborted(f"DGD+LOCAL run {self.tag}: a period was aborted")
        for rep in reports:
            for k, j in enumerate(rep["nodes"]):
                self.checks[j] = rep["checks"][k]
                self.U_cur[j] = rep["U"][k]
                self.V_cur[j] = rep["V"][k] if rep["V"] is not None else None
            self.report_t = rep["t"]
            if rep.get("blas_threads") is not None:
                self.blas_seen = max(self.blas_seen or 0, int(rep["blas_threads"]))

    def _result(self) -> tuple[list[float], float, float]:
        return self._combine(list(self.checks), consensus_err(*self.U_cur))

    # -- state creation
    def init(self, arrays: list[tuple[np.ndarray, np.ndarray]] | None, t: int = 0) -> None:
        rt = self.rt
        assert isinstance(rt, Remote)
        from ._worker_plugin import install

        install(rt.client)
        self._make_plans()
        self.tags.append(self.tag)
        futs = {}
        for w, plan in self.plans.items():
            arr = None
            if arrays is not None:
                # straight to the worker; not embedded in the task
                arr = rt.client.scatter([[arrays[j] for j in plan.nodes]], workers=[w],
                                        hash=False)[0]
            futs[w] = self._submit(group_init, w, self.tag, t, plan, self.rank, self.seed,
                                   self.scale, self.dtype, arr, *self._Ys(w), name="dgd-ginit")
        self._absorb(self._wait(futs))
        self.current = futs
        self.pending_g = []

    # -- iterations
    def _submit_period(self, t0: int, t1: int) -> dict[str, Any]:
        mus = tuple(self.param(t) for t in range(t0, t1))
        return {w: self._submit(group_segment, w, self.tag, t0, t1, mus, plan,
                                *self._Ys(w), name="dgd-period")
                for w, plan in self.plans.items()}

    def check_now(self) -> tuple[list[float], float, float]:
        return self._result()

    def run(self, t0: int, t1: int, t2: int | None = None, more: Sequence[int] = ()
            ) -> tuple[list[float], float, float]:
        """Period ``[t0, t1)``; the following periods ending at ``t2`` and ``more`` (up to
        ``LOOKAHEAD``) are queued first, so that the workers never wait for the client."""
        assert self.current is not None
        pend = self.pending_g
        if pend and pend[0][0] == (t0, t1):
            futs = pend.pop(0)[1]
        else:
            self.cancel()
            futs = self._submit_period(t0, t1)
            pend = self.pending_g
        last = pend[-1][0][1] if pend else t1
        ahead = [b for b in ([t2] if t2 is not None else []) + list(more) if b is not None]
        for b in ahead[:LOOKAHEAD]:
            if b > last:
                pend.append(((last, b), self._submit_period(last, b)))
                last = b
        self._absorb(self._wait(futs))
        self.current = futs
        return self._result()

    def cancel(self) -> None:
        """Let the queued periods finish (their peers are already exchanging) and drop them;
        the snapshots at their starts stay on the workers."""
        pend, self.pending_g = self.pending_g, []
        for rng, futs in pend:
            try:
                self._wait(futs)
            except Exception as e:  # DivergenceError past the stop: not ours to report
                logger.debug("dgd-local: dropped period %s ended with %r", rng, e)

    # -- anchors
    def anchor(self, t: int) -> None:
        if self.report_t == t and all(v is not None for v in self.V_cur):
            self.anchor_states = list(zip(self.U_cur, self.V_cur, strict=True))
            self.anchor_t = t
            return
        # no cancel(): the snapshot at t stays on the workers while queued periods run (at most
        # LOOKAHEAD past a report, _KEEP_SNAPSHOTS kept), so a stop does not first wait for
        # them (measured: +20 iterations, ~16 s, after the stop on the 20 000 × 600 case)
        assert self.current is not None
        futs = {w: self._submit(group_pull, w, self.tag, t, name="dgd-gpull")
                for w in self.plans}
        out: list[Any] = [None] * self.J
        for w, arrs in zip(futs, self._wait(futs), strict=True):
            for j, a in zip(self.plans[w].nodes, arrs, strict=True):
                out[j] = a
        self.anchor_states = out
        self.anchor_t = t

    def restore_after_loss(self) -> None:
        rt = note_worker_loss(self)
        self.pending_g = []
        self.current = None
        self._abort([self.tag])
        rt.reload()
        self.init(self.anchor_states, self.anchor_t)

    # -- finish
    def finish(self, polish: bool) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray,
                                            float]:
        rt = self.rt
        assert isinstance(rt, Remote)
        U_nodes, _ = self.anchor_arrays()
        _, Ubar = consensus(*U_nodes)
        if polish:
            out = rt.map_nodes(node_refit, Ubar)
        else:
            assert self.current is not None
            futs = {w: self._submit(group_final, w, self.tag, self.anchor_t, Ubar,
                                    *self._Ys(w), name="dgd-gfinal")
                    for w in self.plans}
            out = [None] * self.J
            for w, res in zip(futs, self._wait(futs), strict=True):
                for j, o in zip(self.plans[w].nodes, res, strict=True):
                    out[j] = o
        V_blocks = [o[0] for o in out]
        objective = float(sum(o[1] for o in out))
        return list(U_nodes), V_blocks, Ubar, objective

    def close(self) -> None:
        # abort first: periods queued past a stop end at their next exchange instead of
        # running to their ends (the result is final by now)
        self._abort()
        self.cancel()
