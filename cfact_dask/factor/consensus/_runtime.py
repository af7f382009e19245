"""Where the DGD+LOCAL nodes run: in-process (:class:`Local`) or pinned to the workers of a
distributed client (:class:`Remote`), and how a lost worker is noticed.

A node's data block ``Y_j`` is loaded (or sketched) on its worker and stays there; only small
results travel. A worker that leaves the cluster is seen twice before it counts as lost
(:func:`lost`); the engines then raise :class:`WorkerLost` and replay from their last anchor
after :meth:`Remote.reload` moved the dead worker's nodes to the survivors.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import dask.array as da
import numpy as np

from ..._runtime.random import generator
from ..._runtime.workers import live_workers
from ...errors import ConfigError, InputError, WorkerLostError
from ...io import InputArray, open_array
from ...sketching._sketch import Sketch
from ._kernels import POWER_ITERS, STREAM_POWER, gram_apply, load_block

__all__ = [
    "MAX_LOSSES", "Local", "Remote", "WorkerLost", "as_matrix", "auto_step", "gather_checked",
    "lost", "lost_error", "note_worker_loss", "power_sigma1", "split_columns",
]

logger = logging.getLogger(__name__)

#: worker losses in a row survived while restoring one anchor before the run gives up
MAX_LOSSES = 10


def lost_error(engine_or_rt: Any, what: str) -> WorkerLostError:
    """The error of a run that lost its workers ``MAX_LOSSES`` times in a row during ``what``."""
    rt = getattr(engine_or_rt, "rt", engine_or_rt)
    return WorkerLostError(
        f"DGD+LOCAL lost the workers holding its nodes during {what} ({MAX_LOSSES} losses in "
        f"a row, or before the first restore point existed); live workers now: "
        f"{', '.join(rt.alive()) or 'none'}. Check the workers' logs (killed for memory? give "
        f"them more), make sure they are restarted (run them with a nanny), and rerun; with "
        f"checkpoint= the run continues from its last checkpoint."
    )


def note_worker_loss(engine: Any) -> Any:
    """Count and log a worker loss of a distributed engine; return its runtime."""
    rt = engine.rt
    assert isinstance(rt, Remote)
    dead = sorted(set(rt.node_worker) - set(rt.alive()))
    engine.n_restarts += 1
    logger.warning(
        "worker(s) %s died; reassigning their nodes and replaying from iteration %d",
        ", ".join(dead) or "?", engine.anchor_t)
    return rt


def as_matrix(Y: Any) -> tuple[da.Array | None, list[Any] | None, str]:
    """Return (a features × samples dask array, or a list of per-node blocks), and a label."""
    if isinstance(Y, Sketch):
        return Y.matrix, None, "the sketch"
    if isinstance(Y, (list, tuple)) and Y and all(hasattr(b, "shape") for b in Y):
        blocks = list(Y)
        for i, b in enumerate(blocks):
            if len(b.shape) != 2:
                raise InputError(f"node block {i} has shape {b.shape}; every block must be 2-D")
        ns = {int(b.shape[0]) for b in blocks}
        if len(ns) != 1:
            raise InputError(
                f"node blocks have different numbers of rows {sorted(ns)}; every node must hold "
                f"columns of the same n features"
            )
        return None, blocks, "the node blocks"
    inp = Y if isinstance(Y, InputArray) else open_array(Y)
    if inp.ndim != 2:
        raise InputError(
            f"{inp.source} has {inp.ndim} dimensions; DGD+LOCAL factorizes a matrix (features × "
            f"samples)"
        )
    x = inp.data if inp.feature_axis == 0 else inp.data.T
    return x, None, inp.source


def split_columns(chunks: Sequence[int], n_nodes: int) -> tuple[tuple[int, int], ...]:
    """Split ``sum(chunks)`` columns into ``n_nodes`` contiguous ranges.

    Boundaries fall on chunk boundaries when there are at least ``n_nodes`` chunks (each node then
    reads whole chunks); otherwise the columns are split evenly.
    """
    m = int(sum(chunks))
    if n_nodes > m:
        raise ConfigError(
            f"n_nodes={n_nodes} is larger than the number of sample columns {m}; every node needs "
            f"at least one column: use n_nodes <= {m}"
        )
    ideal = [round(k * m / n_nodes) for k in range(n_nodes + 1)]
    if len(chunks) >= n_nodes:
        edges = np.concatenate([[0], np.cumsum(chunks)]).astype(int)
        picked = [0]
        for k in range(1, n_nodes):
            # nearest chunk edge to the ideal split that keeps every node non-empty
            lo = picked[-1] + 1
            hi = m - (n_nodes - k)
            cand = edges[(edges >= lo) & (edges <= hi)]
            # leave enough edges for the remaining nodes
            remaining = n_nodes - k
            cand = [c for c in cand if np.sum(edges > c) >= remaining]
            if not cand:
                picked = []
                break
            picked.append(int(min(cand, key=lambda c: (abs(c - ideal[k]), c))))
        if picked:
            picked.append(m)
            return tuple((picked[k], picked[k + 1]) for k in range(n_nodes))
    return tuple((ideal[k], ideal[k + 1]) for k in range(n_nodes))


class Local:
    """Runs the node kernels in-process (numpy)."""

    distributed = False

    def __init__(self, blocks: list[np.ndarray]) -> None:
        self.Y = blocks
        self.workers: tuple[str, ...] = ()

    def map_nodes(self, fn: Callable[..., Any], *args: Any, per_node: Sequence[Sequence[Any]] = ()
                  ) -> list[Any]:
        J = len(self.Y)
        return [fn(self.Y[j], *(p[j] for p in per_node), *args) for j in range(J)]


class Remote:
    """Holds the node blocks on pinned workers of a distributed client."""

    distributed = True

    def __init__(self, client: Any, sources: list[Any], dtype: np.dtype, run_id: str) -> None:
        self.client = client
        self.sources = sources
        self.dtype = dtype
        self.run_id = run_id
        self.generation = 0
        self.assign()
        self.Y = [self._load(j) for j in range(len(sources))]

    def alive(self) -> list[str]:
        # asked of the scheduler: Client.scheduler_info() returns a cache that the client's
        # periodic update overwrites with a copy listing no workers (a live cluster seen empty)
        return sorted(live_workers(self.client))

    def assign(self) -> None:
        workers = self.alive()
        if not workers:
            raise ConfigError("the distributed client has no workers; start some workers first")
        J = len(self.sources)
        # contiguous node ranges per worker: ring / torus neighbours mostly share a worker
        self.node_worker = [workers[j * len(workers) // J] for j in range(J)]
        self.workers = tuple(self.node_worker)

    def _load(self, j: int) -> Any:
        src = self.sources[j]
        w = [self.node_worker[j]]
        if isinstance(src, da.Array):
            fut = self.client.compute(src.astype(self.dtype), workers=w)
            return self.client.submit(load_block, fut, self.dtype, workers=w, pure=False)
        return self.client.scatter(load_block(src, self.dtype), workers=w, hash=False)

    def reload(self) -> None:
        """Move the nodes of dead workers to live ones and reload their data blocks there."""
        self.generation += 1
        alive = self.alive()
        if not alive:
            raise ConfigError("every worker of the distributed client has died; cannot continue")
        moved = [j for j, w in enumerate(self.node_worker) if w not in alive]
        for k, j in enumerate(moved):
            self.node_worker[j] = alive[k % len(alive)]
        self.workers = tuple(self.node_worker)
        for j in moved:
            self.Y[j] = self._load(j)

    def submit(self, fn: Callable[..., Any], *args: Any, j: int, name: str) -> Any:
        return self.client.submit(
            fn, *args, workers=[self.node_worker[j]], allow_other_workers=False, pure=False,
            key=f"{name}-{self.run_id}-g{self.generation}-{uuid.uuid4().hex[:8]}",
        )

    def map_nodes(self, fn: Callable[..., Any], *args: Any, per_node: Sequence[Sequence[Any]] = ()
                  ) -> list[Any]:
        J = len(self.Y)
        futs = [self.submit(fn, self.Y[j], *(p[j] for p in per_node), *args, j=j,
                            name=fn.__name__.strip("_")) for j in range(J)]
        return self.gather(futs)

    def gather(self, futs: Any) -> Any:
        """Wait for ``futs`` (raising :class:`WorkerLost` on a lost worker) and fetch them."""
        _wait_alive(self, futs)
        return gather_checked(self, futs)

    def fetch(self, futs: Any) -> Any:
        """Fetch finished ``futs`` (:func:`gather_checked`, looked up here at call time)."""
        return gather_checked(self, futs)


class WorkerLost(Exception):
    """A worker holding nodes left the cluster: the run replays from its last anchor."""


def _flatten(futs: Any) -> list[Any]:
    out: list[Any] = []
    if isinstance(futs, (list, tuple)):
        for f in futs:
            out.extend(_flatten(f))
    elif futs is not None:
        out.append(futs)
    return out


def _wait_alive(rt: Remote, futs: Any, poll: float = 0.5) -> None:
    """Wait for ``futs``; raise WorkerLost when a worker holding a node has gone.

    Polls ``Future.done()`` (``distributed.wait`` would need a default client) and checks the
    workers every ``poll`` seconds.
    """
    flat = _flatten(futs)
    nap = 1e-4
    last_check = time.perf_counter()
    while not all(f.done() for f in flat):
        time.sleep(nap)
        nap = min(2 * nap, 0.01)
        now = time.perf_counter()
        if now - last_check > poll:
            last_check = now
            if lost(rt):
                raise WorkerLost()
    for f in flat:
        if f.status == "error":
            f.result()  # re-raises the task's exception (DivergenceError...)
        elif f.status in ("cancelled", "lost"):
            if lost(rt):
                raise WorkerLost()
            f.result()


def gather_checked(rt: Remote, futs: Any, poll: float = 0.5) -> Any:
    """``client.gather(futs)`` for finished futures that cannot hang on a worker lost meanwhile.

    A worker may die between its futures finishing and their results being fetched; distributed
    then reschedules the lost keys and ``gather`` waits for their recomputation, which for a
    workers-mode period waits for peers that have moved on (seen as a 300 s hang in CI). Fetch
    with a bounded wait instead and turn a loss into :class:`WorkerLost` (the run replays from
    its last anchor).
    """
    client = rt.client
    # client.gather as a coroutine on the client's loop, so that the wait can be bounded
    fetch = functools.partial(client.gather, asynchronous=True)
    while True:
        try:
            return client.sync(fetch, futs, callback_timeout=poll)
        except TimeoutError:
            if lost(rt):
                raise WorkerLost() from None


def lost(rt: Remote, confirm_after: float = 0.2) -> bool:
    """True when a worker holding a node has left the scheduler, seen twice ``confirm_after``
    seconds apart (a loss replays the run from its last anchor: never on a single look)."""
    if set(rt.node_worker) <= set(rt.alive()):
        return False
    time.sleep(confirm_after)
    return not set(rt.node_worker) <= set(rt.alive())


def power_sigma1(rt: Local | Remote, n: int, seed: int, dtype: np.dtype) -> float:
    """σ₁(Y) from power iterations on ``Y Yᵀ = Σ_j Y_j Y_jᵀ`` (n-vectors only)."""
    u = generator(seed, STREAM_POWER).standard_normal(n).astype(dtype)
    u /= np.linalg.norm(u)
    lam = 0.0
    for _ in range(POWER_ITERS):
        parts = rt.map_nodes(gram_apply, u)
        z = np.zeros_like(u)
        for part in parts:
            z += part
        lam = float(np.linalg.norm(z))
        if lam == 0.0:
            return 0.0
        u = z / lam
    return math.sqrt(lam)


def auto_step(rt: Local | Remote, n: int, seed: int, dtype: np.dtype, source: str) -> float:
    """``step="auto"`` of the gradient iterations: ``0.1/σ₁(Y)``, σ₁ from
    :data:`~._kernels.POWER_ITERS` power iterations on the nodes (:func:`power_sigma1`).

    Raises
    ------
    InputError
        ``Y`` is all zeros (σ₁ = 0): there is nothing to factorize.
    """
    sigma1 = power_sigma1(rt, n, seed, dtype)
    if sigma1 <= 0:
        raise InputError(f"{source} is all zeros; there is nothing to factorize")
    return 0.1 / sigma1
