"""The peer-to-peer exchange of ``mode="workers"``: boundary copies ``U^i`` sent worker to worker.

One task per *worker* per report period runs all iterations of the period for the nodes pinned
to that worker. Nodes on the same worker mix in memory; the boundary copies ``U^i`` needed by
nodes on other workers are sent worker to worker, once per iteration and peer, by a one-way
message (``reply=False``) on the workers' own comms (the scheduler is not involved). The node
states stay in the worker's memory between periods (keyed by the run's tag, one snapshot per
period end), so the scheduler only sees one small task per worker per period.

The worker side is a distributed worker extension: :class:`Exchange` holds one worker's
mailboxes and snapshots, and :class:`~._worker_plugin.ExchangePlugin` (a
``distributed.WorkerPlugin``, registered by :func:`~._worker_plugin.install` with
``Client.register_plugin``) creates it on every worker, present and future, and adds its comm
handler. Nothing here imports distributed at module level (``import cfact_dask`` stays light).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..._runtime.blas import blas_threads, blas_threads_now
from ._kernels import (
    STEPS,
    node_check,
    node_cost_with,
    node_from_arrays,
    node_init,
    node_state_arrays,
)

__all__ = [
    "EXCHANGE_TIMEOUT", "HANDLER", "LOOKAHEAD", "PLUGIN_NAME", "Exchange", "ExchangeAborted",
    "Plan", "abort", "group_final", "group_init", "group_pull", "group_segment",
]

logger = logging.getLogger(__name__)

#: seconds a worker waits for a peer's boundary copies before giving up (a dead peer is normally
#: detected by the client much sooner, which then aborts the survivors' waits)
EXCHANGE_TIMEOUT = 300.0
#: the name of the worker plugin, and of the comm handler it adds to every worker
PLUGIN_NAME = "cfact-dgd-exchange"
HANDLER = "cfact_dgd_put"
#: aborted / finished tags a worker remembers (late messages for them are dropped)
_DEAD_MAX = 4096
#: period-end snapshots a worker keeps per run (the client may read reports up to
#: LOOKAHEAD + 1 periods behind the workers and then asks for the state at that report)
LOOKAHEAD = 2
_KEEP_SNAPSHOTS = LOOKAHEAD + 2


class ExchangeAborted(RuntimeError):
    """The run this exchange belongs to was aborted by the client (worker loss, error, end)."""


@dataclass(frozen=True)
class Plan:
    """What one worker does in ``mode="workers"``: its nodes and whom it talks to."""

    nodes: tuple[int, ...]                       # the worker's nodes, increasing
    nbrs: tuple[tuple[int, ...], ...]            # per node: graph neighbours (node indices)
    orders: tuple[tuple[int, ...], ...]          # per node: mixing order (see node_step)
    wts: tuple[tuple[float, ...], ...]           # per node: mixing weights
    send: tuple[tuple[str, tuple[int, ...]], ...]  # (peer address, own nodes it needs)
    recv: tuple[int, ...]                        # nodes of other workers this worker needs
    timeout: float = EXCHANGE_TIMEOUT
    solver: str = "gradient"                     # the node kernel: a key of STEPS


class _Box:
    """Boundary copies received for one run: iteration -> {node: U^i}."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.msgs: dict[int, dict[int, np.ndarray]] = {}
        self.aborted = False

    def put(self, t: int, got: dict[int, np.ndarray]) -> None:
        with self.cond:
            if not self.aborted:
                self.msgs.setdefault(t, {}).update(got)
                self.cond.notify_all()

    def abort(self) -> None:
        with self.cond:
            self.aborted = True
            self.msgs.clear()
            self.cond.notify_all()

    def take(self, t: int, need: Sequence[int], timeout: float, tag: str
             ) -> dict[int, np.ndarray]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if self.aborted:
                    raise ExchangeAborted(f"DGD+LOCAL run {tag} was aborted")
                got = self.msgs.get(t)
                if got is not None and all(i in got for i in need):
                    return self.msgs.pop(t)
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(set(need) - set(got or ()))
                    raise TimeoutError(
                        f"DGD+LOCAL ({tag}): waited {timeout:.0f}s at iteration {t} for the "
                        f"copies U^i of nodes {missing} from other workers; is a worker stuck?"
                    )
                self.cond.wait(min(left, 5.0))


class Exchange:
    """One worker's side of the exchange: mailboxes and node-state snapshots, per run tag.

    Created by the worker plugin's ``setup`` (on the worker's event loop); the comm handler
    :meth:`put` runs on that loop, the period tasks (:func:`group_segment`...) in task threads.

    Parameters
    ----------
    worker : distributed.Worker
        The worker it belongs to (its ``address`` and ``rpc`` pool are used).
    loop : asyncio.AbstractEventLoop
        The worker's event loop, where outgoing messages are sent from.
    """

    def __init__(self, worker: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.worker = worker
        self.address = str(worker.address)
        self.loop = loop
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)  # a snapshot was stored or a run aborted
        self.boxes: dict[str, _Box] = {}
        self.groups: dict[str, dict[int, list[Any]]] = {}
        self.dead: dict[str, None] = {}       # aborted / finished tags (insertion-ordered)
        self.running: set[tuple[str, int]] = set()  # (tag, t0) of the periods running now

    # -- mailboxes
    def box(self, tag: str) -> _Box:
        with self.lock:
            box = self.boxes.get(tag)
            if box is None:
                box = self.boxes[tag] = _Box()
                if tag in self.dead:
                    box.aborted = True
            return box

    def put(self, tag: str, t: int, data: bytes) -> None:
        """The comm handler (on the worker's event loop): file a peer's boundary copies for
        iteration ``t`` of run ``tag``."""
        if tag not in self.dead:
            self.box(tag).put(t, pickle.loads(data))

    def post(self, addr: str, tag: str, t: int, data: bytes) -> None:
        """Send ``data`` to ``addr``'s mailbox of ``tag`` (fire and forget, from a task thread)."""
        rpc = self.worker.rpc

        async def send() -> None:
            try:
                await getattr(rpc(addr), HANDLER)(tag=tag, t=t, data=data, reply=False)
            except Exception as e:  # the peer died: the client notices and restarts the run
                logger.debug("dgd-local: sending to %s failed: %s", addr, e)

        asyncio.run_coroutine_threadsafe(send(), self.loop)

    def abort(self, tags: Sequence[str]) -> None:
        """Wake and fail the waits of ``tags`` and drop their state."""
        with self.lock:
            for tag in tags:
                self.dead[tag] = None
                self.groups.pop(tag, None)
                box = self.boxes.pop(tag, None)
                if box is not None:
                    box.abort()
            while len(self.dead) > _DEAD_MAX:
                del self.dead[next(iter(self.dead))]
            self.cond.notify_all()

    # -- snapshots
    def snapshot(self, tag: str, t: int, timeout: float = EXCHANGE_TIMEOUT) -> list[Any]:
        """The states of this worker's nodes at iteration ``t``; waits until the task that ends
        there (started earlier on this worker) has stored them."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if tag in self.dead:
                    raise ExchangeAborted(f"DGD+LOCAL run {tag} was aborted")
                snaps = self.groups.get(tag, {})
                if t in snaps:
                    return snaps[t]
                if snaps and t < min(snaps):
                    raise RuntimeError(
                        f"DGD+LOCAL run {tag}: the state at iteration {t} is gone from this "
                        f"worker (have {sorted(snaps)})")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"DGD+LOCAL run {tag}: waited {timeout:.0f}s for the "
                                       f"state at iteration {t}")
                self.cond.wait(min(left, 5.0))

    def store(self, tag: str, t: int, states: list[Any]) -> None:
        with self.lock:
            if tag in self.dead:
                raise ExchangeAborted(f"DGD+LOCAL run {tag} was aborted")
            snaps = self.groups.setdefault(tag, {})
            snaps[t] = states
            for k in sorted(snaps)[:-_KEEP_SNAPSHOTS]:
                del snaps[k]
            self.cond.notify_all()


def _here() -> Exchange:
    """The :class:`Exchange` of the worker running the current task."""
    from distributed import get_worker

    worker = get_worker()
    plugin = worker.plugins.get(PLUGIN_NAME)
    if plugin is None or getattr(plugin, "exchange", None) is None:
        raise RuntimeError(
            f"the DGD+LOCAL exchange is not installed on worker {worker.address}: the worker "
            f"plugin {PLUGIN_NAME!r} is registered by the client before a workers-mode run "
            f"(cfact_dask.factor.consensus._worker_plugin.install); was it removed?")
    return plugin.exchange


# ------------------------------------------------------------------------ period tasks (worker)
def _group_report(plan: Plan, Ys: Sequence[np.ndarray], states: list[Any], t: int,
                  with_V: bool) -> dict[str, Any]:
    return {"t": t, "nodes": plan.nodes,
            "checks": [node_check(Ys[k], states[k]) for k in range(len(plan.nodes))],
            "U": [s[0] for s in states], "V": [s[1][0] for s in states] if with_V else None}


def group_init(tag: str, t: int, plan: Plan, rank: int, seed: int, scale: float,
               dtype: np.dtype, arrays: list[tuple[np.ndarray, np.ndarray]] | None,
               *Ys: np.ndarray) -> dict[str, Any]:
    """The start (or restored) states of this worker's nodes, stored as the snapshot at ``t``."""
    if arrays is None:
        states = [node_init(Ys[k], rank, seed, j, scale, dtype, plan.solver == "als")
                  for k, j in enumerate(plan.nodes)]
    else:
        states = [node_from_arrays(*a) for a in arrays]
    _here().store(tag, t, states)
    return _group_report(plan, Ys, states, t, True)


def group_segment(tag: str, t0: int, t1: int, mus: Sequence[float], plan: Plan,
                  *Ys: np.ndarray) -> dict[str, Any]:
    """Iterations ``t0 … t1−1`` of this worker's nodes; the report at ``t1``.

    The task has no dask dependency on the previous period's task: it is sent to the worker
    while that one still runs, secedes, and waits (in the worker) for the snapshot at ``t0``, so
    no scheduler round trip separates two periods. Runs the same :func:`node_step` calls on the
    same inputs as the in-process path, so the numbers are bitwise the same.
    """
    from distributed import secede

    ex = _here()
    secede()  # waits on peers and on the previous period: free the worker's thread slot
    me = (tag, t0)
    with ex.lock:
        if me in ex.running:  # two copies would steal each other's messages
            raise RuntimeError(f"DGD+LOCAL run {tag}: period {t0}..{t1} is already running here")
        ex.running.add(me)
    try:
        with blas_threads():  # the cores this task owns (cores // worker threads)
            rep = _group_iterate(ex, tag, t0, t1, mus, plan, Ys)
            rep["blas_threads"] = blas_threads_now()
        return rep
    except ExchangeAborted:
        # the client aborted the run (a stop with periods queued past it, a failed peer, a
        # lost worker): end quietly, no error traceback in the worker's log; the client
        # drops this report, and a real failure is raised from the task that failed
        return {"aborted": True, "t": t0}
    finally:
        with ex.lock:
            ex.running.discard(me)


def _group_iterate(ex: Exchange, tag: str, t0: int, t1: int, mus: Sequence[float], plan: Plan,
                   Ys: Sequence[np.ndarray]) -> dict[str, Any]:
    states = ex.snapshot(tag, t0, plan.timeout)
    box = ex.box(tag) if plan.recv else None
    step = STEPS[plan.solver]
    pos = {j: k for k, j in enumerate(plan.nodes)}
    for t in range(t0, t1):
        for addr, nodes in plan.send:
            ex.post(addr, tag, t, pickle.dumps({j: states[pos[j]][0] for j in nodes}, protocol=5))
        remote = box.take(t, plan.recv, plan.timeout, tag) if box is not None else {}
        Us = [s[0] for s in states]
        mu_t = mus[t - t0]
        states = [
            step(Ys[k], states[k],
                 [Us[pos[i]] if i in pos else remote[i] for i in plan.nbrs[k]],
                 plan.orders[k], plan.wts[k], mu_t, j, t, t == t0)
            for k, j in enumerate(plan.nodes)]
    ex.store(tag, t1, states)
    return _group_report(plan, Ys, states, t1, False)


def group_pull(tag: str, t: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(U^j, V_j)`` of this worker's nodes at iteration ``t`` (an anchor)."""
    return [node_state_arrays(s) for s in _here().snapshot(tag, t)]


def group_final(tag: str, t: int, Ubar: np.ndarray, *Ys: np.ndarray
                ) -> list[tuple[np.ndarray, float]]:
    """``V_j`` and the cost with the consensus ``Ū`` of this worker's nodes at ``t``."""
    states = _here().snapshot(tag, t)
    return [node_cost_with(Ys[k], Ubar, s) for k, s in enumerate(states)]


# --------------------------------------------------------------------------------- client side
def _abort_on_worker(tags: Sequence[str], dask_worker: Any = None) -> None:
    """Run on the workers (``Client.run``): abort ``tags`` in the worker's :class:`Exchange`."""
    plugin = dask_worker.plugins.get(PLUGIN_NAME) if dask_worker is not None else None
    ex = getattr(plugin, "exchange", None)
    if ex is not None:
        ex.abort(tags)


def abort(client: Any, tags: Sequence[str], workers: Sequence[str]) -> None:
    """Abort the runs ``tags`` on ``workers``: their waits fail, their state is dropped."""
    client.run(_abort_on_worker, list(tags), workers=list(workers))
