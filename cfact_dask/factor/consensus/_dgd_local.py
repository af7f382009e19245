"""DGD+LOCAL: decentralised low-rank factorization with exact consensus, on dask.distributed.

The sample columns of ``Y`` (n × m) are split over ``J`` nodes, ``Y = [Y_1 … Y_J]``. Node ``j``
keeps its data block ``Y_j``, its **local** factor block ``V_j`` (never sent anywhere) and its own
copy ``U^j`` of the **consensus** factor ``U``. Every iteration all nodes take, at once (Jacobi),

.. code-block:: text

    R_j       = U^j V_jᵀ − Y_j
    U^j(t+1)  = Σ_i w_ji U^i(t) − 2μ R_j V_j          (mix neighbours' copies + local gradient)
    V_j(t+1)  = V_j(t)          − 2μ R_jᵀ U^j(t)       (purely local)

which is gradient descent with step μ on
``Σ_j ‖U^j V_jᵀ − Y_j‖² + (1/(4μ)) Σ_ij w_ij ‖U^i − U^j‖²`` [1]_. With exactly low-rank data it
reaches exact consensus at a global minimiser of the centralised problem; classical DGD
(:func:`dgd`, every variable a consensus variable) does not.

That gradient iteration (``solver="gradient"``) needs a step below ~1/σ₁(Y), so the number of
iterations grows with the conditioning σ₁/σ_r of the data (on a 20 000 × 600 nonnegative rank-10
matrix it still had relative cost 2.6e-2 after 1 250 iterations). The default
``solver="als"`` keeps the same data layout, messages and exact-consensus fixed point but
replaces both gradient steps by exact local solves (see :func:`_node_step_als`)::

    V_j ← argmin_V ‖U^j Vᵀ − Y_j‖²                                  (an r × r solve)
    U^j ← argmin_U ‖U V_jᵀ − Y_j‖² + ρ ‖(U − Σ_i w_ji U^i) (V_jᵀV_j)^{1/2}‖²
        = (LS_j + ρ Σ_i w_ji U^i) / (1 + ρ),     LS_j = Y_j V_j (V_jᵀV_j)⁻¹

so every node moves to a convex combination of its own least-squares factor and its
neighbours' mix: no step size, nothing that depends on the scale or conditioning of ``Y``, and
the consensus contracts at the rate ``(1 + ρ λ₂(W))/(1 + ρ)`` of the graph (ρ = 4). All nodes
start from the same ``U`` (one shared seeded stream; the gradient solver keeps the paper's
independent starts), which removes the gauge disagreement the nodes would otherwise have to
average away. Exactly low-rank data: 130 iterations to cost and consensus < 1e-20 on the
paper's demo (the gradient iteration: ~2 400), ~20 to relative cost 1e-6 on the 20 000 × 600
case.

Execution
---------
*On a distributed client* each node is pinned to one worker (``workers=[addr]``, no stealing):
``Y_j`` is loaded (or sketched) there and ``V_j`` is created there; only the ``n × r`` copies
``U^i`` move. There is no all-reduce and no client round trip per iteration: every
``report_every`` iterations the client reads a few numbers (the nodes' costs, and the copies
``U^j`` for the consensus error) while the next period of iterations is already queued. Two
ways to run the iterations (``mode=``):

* ``"workers"`` (default): the nodes are grouped by worker and one task per worker runs a whole
  period of iterations for its nodes. Nodes on the same worker mix in memory; every iteration
  each worker sends the boundary copies its neighbouring workers need in one direct
  worker-to-worker message per peer (a comm handler on the worker, no scheduler involved) and
  waits for theirs. The node states stay in the worker's memory between periods (a snapshot at
  each period end). About 1 ms per iteration at J = 8 on a 2-worker local cluster.
* ``"tasks"``: one dask task per node per iteration (a period's tasks sent as one graph), each
  consuming the node's previous state and its neighbours' ``U^i`` futures. Fully managed by the
  scheduler, but every iteration costs it 2·J tasks (30–45 ms per iteration at J = 8).

Every ``anchor_every`` iterations (and at checkpoints) the small states (``U^j``, ``V_j``) are
copied to the client; this is what a run restores from when a worker dies: the dead worker's
nodes are reassigned to the survivors (whose waits for the dead peer are aborted) and the
iterations since the anchor are replayed. The algorithm is deterministic, so the result equals an
uninterrupted run.

*Without a distributed client* the same node functions run in-process with numpy in the same
order, giving the same numbers.

References
----------
.. [1] Z. Zhu, Q. Li, X. Yang, G. Tang, M. B. Wakin. "Distributed low-rank matrix factorization
   with exact consensus". NeurIPS 2019, arXiv:1811.03129.
.. [2] T. Ye, S. S. Du. "Global convergence of gradient descent for asymmetric low-rank matrix
   factorization". NeurIPS 2021 (the centralised gradient baseline, small random init).
"""

from __future__ import annotations

import contextlib
import logging
import math
import pickle
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dask.array as da
import numpy as np

from ..._runtime.blas import blas_threads, blas_threads_now
from ..._runtime.checkpoint import Checkpoint, as_checkpoint
from ..._runtime.cluster import client_context
from ..._runtime.display import SKIP, summary_html, summary_repr
from ..._runtime.random import SeedLike, generator, normalize_seed
from ..._runtime.workers import live_workers
from ...errors import (
    ConfigError,
    ConvergenceWarning,
    DivergenceError,
    InputError,
    RankError,
    WorkerLostError,
)
from ...io import InputArray, open_array
from ...sketching._sketch import Sketch
from .topology import Topology, WeightRule, make_topology

__all__ = ["DGDResult", "DGDState", "centralized", "dgd", "dgd_local", "split_columns"]

logger = logging.getLogger(__name__)

StepSchedule = Literal["constant", "inverse", "inverse-sqrt"]

# purpose keys of the random streams (see _random.generator)
_STREAM_U = 11
_STREAM_V = 12
_STREAM_POWER = 13
_STREAM_GD = 14
_STREAM_U_SHARED = 15
#: a cost this many times above max(initial cost, ||Y||²) counts as divergence
_EXPLODE = 1e4
_POWER_ITERS = 20
#: smallest eigenvalue of W allowed: at -1 the mixing keeps an undamped oscillation
_MIN_EIG = -1.0 + 1e-6
#: solver="als": default consensus weight ρ, and the relative proximal terms of its solves
_ALS_RHO = 4.0
_ALS_PROX = 1e-10
_TINY = 1e-300


# ================================================================================== result types
@dataclass(frozen=True)
class DGDState:
    """What ``callback`` receives every ``report_every`` iterations.

    Attributes
    ----------
    iteration : int
        Iterations done so far.
    cost : float
        ``Σ_j ‖U^j V_jᵀ − Y_j‖²`` at this iteration.
    consensus_error : float
        ``Σ_j ‖U^j − Ū‖²`` (0 for centralised solvers).
    step : float
        The step μ used by the last iteration (the consensus weight ρ_t for ``solver="als"``).
    elapsed : float
        Seconds since the iterations started.
    """

    iteration: int
    cost: float
    consensus_error: float
    step: float
    elapsed: float


@dataclass(frozen=True)
class DGDResult:
    """A decentralised (or baseline) factorization ``Y ≈ U Vᵀ``.

    Attributes
    ----------
    U : numpy.ndarray
        The consensus factor (n × r): the average ``Ū`` of the node copies.
    V_blocks : tuple of numpy.ndarray
        The local factors ``V_j`` (m_j × r), in node order; ``V`` stacks them.
    U_nodes : tuple of numpy.ndarray
        Every node's final copy ``U^j``.
    col_ranges : tuple of (start, stop)
        The columns of ``Y`` each node holds.
    cost_history : numpy.ndarray
        ``Σ_j ‖U^j V_jᵀ − Y_j‖²`` after every iteration ``t = 0 … n_iter`` (before polish).
    consensus_history : numpy.ndarray
        ``Σ_j ‖U^j − Ū‖²`` at the iterations ``history_iters`` (every ``report_every``).
    history_iters : numpy.ndarray
        Iterations at which ``consensus_history`` was recorded.
    n_iter : int
        Iterations run.
    converged : bool
        ``tol`` was met (False when stopped by ``max_iter`` or the callback).
    step : float
        The base step μ (0 for ``solver="als"``, which takes no step).
    objective : float
        ``Σ_j ‖U V_jᵀ − Y_j‖²`` with the returned consensus ``U`` (after polish if any).
    norm_Y2 : float
        ``‖Y‖_F²``.
    bytes_per_iter : int
        Bytes of factor copies sent between nodes per iteration (each node sends its ``U^j`` to
        every neighbour; for :func:`dgd` also ``V``).
    bytes_cross_worker_per_iter : int
        The part of ``bytes_per_iter`` that crosses between distinct workers (0 in-process).
    method : str
        ``"dgd-local"``, ``"dgd"``, ``"centralized-svd"`` or ``"centralized-gd"``.
    topology : Topology or None
    polished : bool
        ``U`` is the average of the copies and each ``V_j`` was refit by least squares.
    n_restarts : int
        Times the run was restored from an anchor after a worker died.
    workers : tuple of str
        The worker each node ran on at the end (empty in-process).
    solver : str
        ``"gradient"`` (the paper's iteration) or ``"als"`` (see :func:`dgd_local`).
    consensus_weight : float
        The consensus weight ρ of ``solver="als"`` (0 for the gradient solver).
    blas_threads : int or None
        The BLAS threads in force while the node kernels ran (the largest over the workers in
        ``mode="workers"``; None when not recorded), see ``cfact.blas`` in ``cfact.yaml``.

    References
    ----------
    .. [1] Z. Zhu, Q. Li, X. Yang, G. Tang, M. B. Wakin. "Distributed low-rank matrix
       factorization with exact consensus". NeurIPS 2019, arXiv:1811.03129.
    """

    U: np.ndarray
    V_blocks: tuple[np.ndarray, ...]
    U_nodes: tuple[np.ndarray, ...]
    col_ranges: tuple[tuple[int, int], ...]
    cost_history: np.ndarray
    consensus_history: np.ndarray
    history_iters: np.ndarray
    n_iter: int
    converged: bool
    step: float
    objective: float
    norm_Y2: float
    bytes_per_iter: int
    bytes_cross_worker_per_iter: int = 0
    method: str = "dgd-local"
    topology: Topology | None = None
    polished: bool = False
    n_restarts: int = 0
    workers: tuple[str, ...] = field(default_factory=tuple)
    solver: str = "gradient"
    consensus_weight: float = 0.0
    blas_threads: int | None = None

    def _summary(self) -> tuple[str, list[tuple[str, Any]]]:
        return "cfact DGDResult", [
            ("method", self.method), ("U", self.U),
            ("V", f"{sum(b.shape[0] for b in self.V_blocks)} × {self.rank} in "
                  f"{self.n_nodes} node blocks"),
            ("topology", self.topology.name if self.topology is not None else SKIP),
            ("iterations", self.n_iter), ("converged", self.converged),
            ("relative error", self.relative_error),
            ("consensus error", self.consensus_error),
            ("step", self.step), ("restarts", self.n_restarts or SKIP),
            ("bytes exchanged per iteration", self.bytes_per_iter),
        ]

    # short summaries for the terminal and notebooks (not the arrays: see _runtime.display)
    __repr__ = summary_repr
    _repr_html_ = summary_html

    @property
    def V(self) -> np.ndarray:
        """All local factors stacked (m × r)."""
        return np.vstack(self.V_blocks)

    @property
    def n_iter_(self) -> int:
        return self.n_iter

    @property
    def rank(self) -> int:
        return int(self.U.shape[1])

    @property
    def n_nodes(self) -> int:
        return len(self.V_blocks)

    @property
    def relative_error(self) -> float:
        """``‖Y − U Vᵀ‖_F / ‖Y‖_F`` with the returned factors."""
        return math.sqrt(max(self.objective, 0.0) / self.norm_Y2) if self.norm_Y2 > 0 else 0.0

    @property
    def consensus_error(self) -> float:
        """The last recorded ``Σ_j ‖U^j − Ū‖²``."""
        return float(self.consensus_history[-1]) if len(self.consensus_history) else 0.0

    @property
    def cost(self) -> float:
        """The last ``Σ_j ‖U^j V_jᵀ − Y_j‖²`` of the iterations."""
        return float(self.cost_history[-1]) if len(self.cost_history) else self.objective


# ============================================================================ node-level kernels
# These run inside dask tasks (pinned to the node's worker) *and* in-process; sharing them is what
# makes both paths give the same numbers.


def _node_init(Y_j: np.ndarray, rank: int, seed: int, j: int, scale: float,
               dtype: np.dtype, shared_U: bool = False
               ) -> tuple[np.ndarray, tuple[np.ndarray, tuple[float, ...]]]:
    """Node ``j``'s start: ``U^j`` from its own stream (the paper's independent starts) or,
    with ``shared_U``, from one stream every node generates alike (consensus from the start,
    without a message)."""
    n, m_j = Y_j.shape
    gen_U = generator(seed, _STREAM_U_SHARED) if shared_U else generator(seed, _STREAM_U, j)
    U = gen_U.standard_normal((n, rank)).astype(dtype, copy=False)
    V = generator(seed, _STREAM_V, j).standard_normal((m_j, rank)).astype(dtype, copy=False)
    if scale != 1.0:
        U *= scale
        V *= scale
    return U, (V, ())


def _node_from_arrays(U: np.ndarray, V: np.ndarray
                      ) -> tuple[np.ndarray, tuple[np.ndarray, tuple[float, ...]]]:
    return np.array(U, copy=True), (np.array(V, copy=True), ())


def _node_step(Y_j: np.ndarray, prev: tuple[np.ndarray, tuple[np.ndarray, tuple[float, ...]]],
               neigh_U: Sequence[np.ndarray], order: Sequence[int], weights: Sequence[float],
               mu: float, j: int, t: int, reset: bool
               ) -> tuple[np.ndarray, tuple[np.ndarray, tuple[float, ...]]]:
    """One DGD+LOCAL iteration of node ``j`` (Zhu et al. 2019, eq. (5), Jacobi form).

    ``order`` lists the mixing terms in increasing node index; ``-1`` marks the node's own copy,
    ``k >= 0`` the k-th entry of ``neigh_U``.
    """
    U_j, (V_j, costs) = prev
    R = U_j @ V_j.T
    R -= Y_j
    cost = float(np.vdot(R, R))
    if not math.isfinite(cost):
        raise DivergenceError(
            f"DGD+LOCAL diverged at iteration {t} on node {j}: the local cost is {cost} with "
            f"step mu={mu:.3g}; rerun with a smaller step, e.g. step={mu / 10:.3g}"
        )
    U_new = np.zeros_like(U_j)
    for k, w in zip(order, weights, strict=True):
        U_new += w * (U_j if k < 0 else neigh_U[k])
    U_new -= (2.0 * mu) * (R @ V_j)
    V_new = V_j - (2.0 * mu) * (R.T @ U_j)
    new_costs = (cost,) if reset else (*costs, cost)
    return U_new, (V_new, new_costs)


def _node_step_als(Y_j: np.ndarray, prev: tuple[np.ndarray, tuple[np.ndarray, tuple[float, ...]]],
                   neigh_U: Sequence[np.ndarray], order: Sequence[int], weights: Sequence[float],
                   rho: float, j: int, t: int, reset: bool
                   ) -> tuple[np.ndarray, tuple[np.ndarray, tuple[float, ...]]]:
    """One ``solver="als"`` iteration of node ``j``: exact local solves, scale-free consensus.

    With ``R = U^j V_jᵀ − Y_j`` (the cost recorded for this iteration)::

        V_j ← argmin_V ‖U^j Vᵀ − Y_j‖²                       (r × r solve; purely local)
        U^j ← argmin_U ‖U V_jᵀ − Y_j‖² + ρ ‖(U − Σ_i w_ji U^i) M_j^{1/2}‖²,  M_j = V_jᵀV_j

    i.e. ``U^j ← (LS_j + ρ·mix_j)/(1 + ρ)`` with ``LS_j`` the local least-squares ``U``: a
    convex combination that does not depend on the scale or conditioning of ``Y_j`` (the
    penalty is measured in the metric ``V_jᵀV_j`` of the local fit). Both updates are written
    as corrections driven by ``R``, so their rounding error shrinks with the residual and the
    exact-consensus fixed point is reached to float rounding (not to ``eps·cond²``). Tiny
    proximal terms (``1e-10·tr/r``) keep the solves defined when ``m_j < r``; they vanish at
    the fixed point.
    """
    U_j, (V_j, costs) = prev
    r = U_j.shape[1]
    R = U_j @ V_j.T
    R -= Y_j
    cost = float(np.vdot(R, R))
    if not math.isfinite(cost):
        raise DivergenceError(
            f"DGD+LOCAL (solver='als') broke down at iteration {t} on node {j}: the local cost "
            f"is {cost}; the data or the initialisation holds NaN/Inf or overflows the dtype"
        )
    eye = np.eye(r, dtype=U_j.dtype)
    G = U_j.T @ U_j
    G += (_ALS_PROX * float(np.trace(G)) / r + _TINY) * eye
    dV = -_spd_solve(G, U_j.T @ R).T                    # V_j + dV = argmin (+ prox)
    V_new = V_j + dV
    RV = R @ V_new
    RV += U_j @ (dV.T @ V_new)                          # (U V_newᵀ − Y) V_new without n×m work
    K = V_new.T @ V_new
    M = K + (_ALS_PROX * float(np.trace(K)) / r + _TINY) * eye
    mix = np.zeros_like(U_j)
    for k, w in zip(order, weights, strict=True):
        mix += w * (U_j if k < 0 else neigh_U[k])
    rhs = rho * ((mix - U_j) @ M)
    rhs -= RV
    U_new = U_j + _spd_solve(K + rho * M, rhs.T).T
    new_costs = (cost,) if reset else (*costs, cost)
    return U_new, (V_new, new_costs)


def _spd_solve(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``A⁻¹ B`` for a small symmetric positive (semi)definite ``A`` (Cholesky, else lstsq)."""
    try:
        c = np.linalg.cholesky(A)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(A, B, rcond=None)[0]
    y = np.linalg.solve(c, B)
    return np.linalg.solve(c.T, y)


_STEPS: dict[str, Callable[..., Any]] = {}


def _node_U(state: tuple[np.ndarray, Any]) -> np.ndarray:
    return state[0]


_STEPS.update(gradient=_node_step, als=_node_step_als)


def _node_step_task(solver: str, *args: Any) -> Any:
    """``mode="tasks"``: one node step as a dask task, BLAS limited to the task's cores."""
    with blas_threads():
        return _STEPS[solver](*args)


def _node_check(Y_j: np.ndarray, state: tuple[np.ndarray, tuple[np.ndarray, tuple[float, ...]]]
                ) -> tuple[tuple[float, ...], float]:
    """The costs recorded since the last check, and the cost of the current state."""
    U_j, (V_j, costs) = state
    R = U_j @ V_j.T
    R -= Y_j
    return costs, float(np.vdot(R, R))


def _consensus(*Us: np.ndarray) -> tuple[float, np.ndarray]:
    """``Σ_j ‖U^j − Ū‖²`` and ``Ū`` (summed in node order)."""
    total = np.zeros_like(Us[0])
    for U in Us:
        total += U
    Ubar = total / len(Us)
    err = 0.0
    for U in Us:
        D = U - Ubar
        err += float(np.vdot(D, D))
    return err, Ubar


def _consensus_err(*Us: np.ndarray) -> float:
    return _consensus(*Us)[0]


def _node_refit(Y_j: np.ndarray, Ubar: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares ``V_j = argmin ‖Ū V_jᵀ − Y_j‖`` and its cost (the polish step)."""
    Vt, *_ = np.linalg.lstsq(Ubar, Y_j, rcond=None)
    V = np.ascontiguousarray(Vt.T)
    R = Ubar @ Vt
    R -= Y_j
    return V, float(np.vdot(R, R))


def _node_cost_with(Y_j: np.ndarray, U: np.ndarray, state: tuple[np.ndarray, Any]
                    ) -> tuple[np.ndarray, float]:
    V_j = state[1][0]
    R = U @ V_j.T
    R -= Y_j
    return V_j, float(np.vdot(R, R))


#: worker losses in a row survived while restoring one anchor before the run gives up
_MAX_LOSSES = 10


def _restore(engine: Any) -> int:
    """Move the nodes of lost workers and re-seat the last anchor; return its iteration."""
    for _ in range(_MAX_LOSSES):
        try:
            engine.restore_after_loss()
            return int(engine.anchor_t)
        except _WorkerLost:  # another worker lost while restoring: look again
            continue
    raise _lost_error(engine, f"the replay from iteration {engine.anchor_t}")


def _lost_error(engine_or_rt: Any, what: str) -> WorkerLostError:
    rt = getattr(engine_or_rt, "rt", engine_or_rt)
    return WorkerLostError(
        f"DGD+LOCAL lost the workers holding its nodes during {what} ({_MAX_LOSSES} losses in "
        f"a row, or before the first restore point existed); live workers now: "
        f"{', '.join(rt.alive()) or 'none'}. Check the workers' logs (killed for memory? give "
        f"them more), make sure they are restarted (run them with a nanny), and rerun; with "
        f"checkpoint= the run continues from its last checkpoint."
    )


def _note_worker_loss(engine: Any) -> Any:
    """Count and log a worker loss of a distributed engine; return its runtime."""
    rt = engine.rt
    assert isinstance(rt, _Remote)
    dead = sorted(set(rt.node_worker) - set(rt.alive()))
    engine.n_restarts += 1
    logger.warning(
        "worker(s) %s died; reassigning their nodes and replaying from iteration %d",
        ", ".join(dead) or "?", engine.anchor_t)
    return rt


def _node_state_arrays(state: tuple[np.ndarray, Any]) -> tuple[np.ndarray, np.ndarray]:
    return state[0], state[1][0]


def _gram_apply(Y_j: np.ndarray, u: np.ndarray) -> np.ndarray:
    return Y_j @ (Y_j.T @ u)


def _sq_norm(Y_j: np.ndarray) -> float:
    return float(np.vdot(Y_j, Y_j))


def _load_block(x: Any, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=dtype))


# =================================================================================== input / split
def _as_matrix(Y: Any) -> tuple[da.Array | None, list[Any] | None, str]:
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


# ================================================================================ parameter checks
def _check_rank(rank: Any, n: int, m: int) -> int:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise RankError(f"rank must be an int, got {rank!r}")
    if not 1 <= rank <= min(n, m):
        raise RankError(
            f"rank={rank} is impossible for a {n} × {m} matrix; choose 1 <= rank <= {min(n, m)}"
        )
    return int(rank)


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _schedule_factor(schedule: StepSchedule | Callable[[int], float], decay: float, t: int
                     ) -> float:
    if callable(schedule):
        return float(schedule(t))
    if schedule == "constant":
        return 1.0
    if schedule == "inverse":
        return 1.0 / (1.0 + decay * t)
    if schedule == "inverse-sqrt":
        return 1.0 / math.sqrt(1.0 + decay * t)
    raise ConfigError(
        f"step_schedule must be 'constant', 'inverse', 'inverse-sqrt' or a callable t -> factor, "
        f"got {schedule!r}"
    )


def _resolve_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise ConfigError(f"dtype must be a float dtype (float64 or float32), got {dt}")
    return dt


# ================================================================================ node runtimes
class _Local:
    """Runs the node kernels in-process (numpy)."""

    distributed = False

    def __init__(self, blocks: list[np.ndarray]) -> None:
        self.Y = blocks
        self.workers: tuple[str, ...] = ()

    def map_nodes(self, fn: Callable[..., Any], *args: Any, per_node: Sequence[Sequence[Any]] = ()
                  ) -> list[Any]:
        J = len(self.Y)
        return [fn(self.Y[j], *(p[j] for p in per_node), *args) for j in range(J)]


class _Remote:
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
            return self.client.submit(_load_block, fut, self.dtype, workers=w, pure=False)
        return self.client.scatter(_load_block(src, self.dtype), workers=w, hash=False)

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
        _wait_alive(self, futs)
        return _gather_checked(self, futs)


class _WorkerLost(Exception):
    pass


def _flatten(futs: Any) -> list[Any]:
    out: list[Any] = []
    if isinstance(futs, (list, tuple)):
        for f in futs:
            out.extend(_flatten(f))
    elif futs is not None:
        out.append(futs)
    return out


def _wait_alive(rt: _Remote, futs: Any, poll: float = 0.5) -> None:
    """Wait for ``futs``; raise _WorkerLost when a worker holding a node has gone.

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
            if _lost(rt):
                raise _WorkerLost()
    for f in flat:
        if f.status == "error":
            f.result()  # re-raises the task's exception (DivergenceError...)
        elif f.status in ("cancelled", "lost"):
            if _lost(rt):
                raise _WorkerLost()
            f.result()


def _gather_checked(rt: _Remote, futs: Any, poll: float = 0.5) -> Any:
    """``client.gather(futs)`` for finished futures that cannot hang on a worker lost meanwhile.

    A worker may die between its futures finishing and their results being fetched; distributed
    then reschedules the lost keys and ``gather`` waits for their recomputation, which for a
    workers-mode period waits for peers that have moved on (seen as a 300 s hang in CI). Fetch
    with a bounded wait instead and turn a loss into :class:`_WorkerLost` (the run replays from
    its last anchor).
    """
    client = rt.client
    while True:
        try:
            return client.sync(client._gather, futs, callback_timeout=poll)
        except TimeoutError:
            if _lost(rt):
                raise _WorkerLost() from None


def _lost(rt: _Remote, confirm_after: float = 0.2) -> bool:
    """True when a worker holding a node has left the scheduler, seen twice ``confirm_after``
    seconds apart (a loss replays the run from its last anchor: never on a single look)."""
    if set(rt.node_worker) <= set(rt.alive()):
        return False
    time.sleep(confirm_after)
    return not set(rt.node_worker) <= set(rt.alive())


# ======================================================================= workers mode (worker side)
# ``mode="workers"``: one task per *worker* per report period runs all iterations of the period for
# the nodes pinned to that worker. Nodes on the same worker mix in memory; the boundary copies
# U^i needed by nodes on other workers are sent worker-to-worker, once per iteration and peer, by
# a one-way message (``reply=False``) on the workers' own comms (the scheduler is not involved).
# The node states live in a per-process registry between periods (keyed by the run's tag, one
# snapshot per period end), so the scheduler only sees one small task per worker per period.

#: seconds a worker waits for a peer's boundary copies before giving up (a dead peer is normally
#: detected by the client much sooner, which then aborts the survivors' waits)
_EXCHANGE_TIMEOUT = 300.0
_HANDLER = "cfact_dgd_put"
_WLOCK = threading.Lock()
_WCOND = threading.Condition(_WLOCK)  # a snapshot was stored or a run aborted
# keyed by (run tag, worker address): in-process clusters share this module between workers
_BOXES: dict[tuple[str, str], _Box] = {}
_GROUPS: dict[tuple[str, str], dict[int, list[Any]]] = {}
_DEAD: dict[str, None] = {}          # aborted / finished tags (insertion-ordered, bounded)
_RUNNING: set[tuple[str, str, int]] = set()  # (tag, worker, t0) of the periods running now
_DEAD_MAX = 4096
#: period-end snapshots a worker keeps per run (the client may read reports up to
#: _LOOKAHEAD + 1 periods behind the workers and then asks for the state at that report)
_LOOKAHEAD = 2
_KEEP_SNAPSHOTS = _LOOKAHEAD + 2


class _ExchangeAborted(RuntimeError):
    """The run this exchange belongs to was aborted by the client (worker loss, error, end)."""


@dataclass(frozen=True)
class _Plan:
    """What one worker does in ``mode="workers"``: its nodes and whom it talks to."""

    nodes: tuple[int, ...]                       # the worker's nodes, increasing
    nbrs: tuple[tuple[int, ...], ...]            # per node: graph neighbours (node indices)
    orders: tuple[tuple[int, ...], ...]          # per node: mixing order (see _node_step)
    wts: tuple[tuple[float, ...], ...]           # per node: mixing weights
    send: tuple[tuple[str, tuple[int, ...]], ...]  # (peer address, own nodes it needs)
    recv: tuple[int, ...]                        # nodes of other workers this worker needs
    timeout: float = _EXCHANGE_TIMEOUT
    solver: str = "gradient"                     # the node kernel: a key of _STEPS


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
                    raise _ExchangeAborted(f"DGD+LOCAL run {tag} was aborted")
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


def _box(tag: str, addr: str) -> _Box:
    with _WLOCK:
        box = _BOXES.get((tag, addr))
        if box is None:
            box = _BOXES[tag, addr] = _Box()
            if tag in _DEAD:
                box.aborted = True
        return box


def _install_handler(dask_worker: Any) -> None:
    """Run on every worker (``client.run``) before a workers-mode run starts: the comm handler
    (on the worker's event loop) that files a peer's boundary copies for iteration ``t``."""
    addr = dask_worker.address

    def put(tag: str, t: int, data: bytes) -> None:
        if tag not in _DEAD:
            _box(tag, addr).put(t, pickle.loads(data))

    dask_worker.handlers[_HANDLER] = put


def _abort_tags(tags: Sequence[str]) -> None:
    """Run on the workers (``client.run``): wake and fail waits of ``tags``, drop their state."""
    with _WLOCK:
        for tag in tags:
            _DEAD[tag] = None
        for key in [k for k in (*_GROUPS, *_BOXES) if k[0] in tags]:
            _GROUPS.pop(key, None)
            box = _BOXES.pop(key, None)
            if box is not None:
                box.abort()
        while len(_DEAD) > _DEAD_MAX:
            del _DEAD[next(iter(_DEAD))]
        _WCOND.notify_all()


def _post(worker: Any, addr: str, tag: str, t: int, data: bytes) -> None:
    """Send ``data`` to ``addr``'s mailbox of ``tag`` (fire and forget, from a task thread)."""

    async def send() -> None:
        try:
            await getattr(worker.rpc(addr), _HANDLER)(tag=tag, t=t, data=data, reply=False)
        except Exception as e:  # the peer died: the client notices and restarts the run
            logger.debug("dgd-local: sending to %s failed: %s", addr, e)

    worker.loop.add_callback(send)


def _here() -> str:
    from distributed import get_worker

    return str(get_worker().address)


def _group_snapshot(tag: str, t: int, timeout: float = _EXCHANGE_TIMEOUT) -> list[Any]:
    """The states of this worker's nodes at iteration ``t``; waits until the task that ends
    there (started earlier on this worker) has stored them."""
    key = (tag, _here())
    deadline = time.monotonic() + timeout
    with _WCOND:
        while True:
            if tag in _DEAD:
                raise _ExchangeAborted(f"DGD+LOCAL run {tag} was aborted")
            snaps = _GROUPS.get(key, {})
            if t in snaps:
                return snaps[t]
            if snaps and t < min(snaps):
                raise RuntimeError(
                    f"DGD+LOCAL run {tag}: the state at iteration {t} is gone from this worker "
                    f"(have {sorted(snaps)})")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"DGD+LOCAL run {tag}: waited {timeout:.0f}s for the state at iteration {t}")
            _WCOND.wait(min(left, 5.0))


def _group_store(tag: str, t: int, states: list[Any]) -> None:
    key = (tag, _here())
    with _WLOCK:
        if tag in _DEAD:
            raise _ExchangeAborted(f"DGD+LOCAL run {tag} was aborted")
        snaps = _GROUPS.setdefault(key, {})
        snaps[t] = states
        for k in sorted(snaps)[:-_KEEP_SNAPSHOTS]:
            del snaps[k]
        _WCOND.notify_all()


def _group_report(plan: _Plan, Ys: Sequence[np.ndarray], states: list[Any], t: int,
                  with_V: bool) -> dict[str, Any]:
    return {"t": t, "nodes": plan.nodes,
            "checks": [_node_check(Ys[k], states[k]) for k in range(len(plan.nodes))],
            "U": [s[0] for s in states], "V": [s[1][0] for s in states] if with_V else None}


def _group_init(tag: str, t: int, plan: _Plan, rank: int, seed: int, scale: float,
                dtype: np.dtype, arrays: list[tuple[np.ndarray, np.ndarray]] | None,
                *Ys: np.ndarray) -> dict[str, Any]:
    if arrays is None:
        states = [_node_init(Ys[k], rank, seed, j, scale, dtype, plan.solver == "als")
                  for k, j in enumerate(plan.nodes)]
    else:
        states = [_node_from_arrays(*a) for a in arrays]
    _group_store(tag, t, states)
    return _group_report(plan, Ys, states, t, True)


def _group_segment(tag: str, t0: int, t1: int, mus: Sequence[float], plan: _Plan,
                   *Ys: np.ndarray) -> dict[str, Any]:
    """Iterations ``t0 … t1−1`` of this worker's nodes; the report at ``t1``.

    The task has no dask dependency on the previous period's task: it is sent to the worker
    while that one still runs, secedes, and waits (in the worker) for the snapshot at ``t0``, so
    no scheduler round trip separates two periods. Runs the same :func:`_node_step` calls on the
    same inputs as the in-process path, so the numbers are bitwise the same.
    """
    from distributed import get_worker, secede

    worker = get_worker()
    secede()  # waits on peers and on the previous period: free the worker's thread slot
    me = (tag, str(worker.address), t0)
    with _WLOCK:
        if me in _RUNNING:  # two copies would steal each other's messages
            raise RuntimeError(f"DGD+LOCAL run {tag}: period {t0}..{t1} is already running here")
        _RUNNING.add(me)
    try:
        with blas_threads():  # the cores this task owns (cores // worker threads)
            rep = _group_iterate(worker, tag, t0, t1, mus, plan, Ys)
            rep["blas_threads"] = blas_threads_now()
        return rep
    except _ExchangeAborted:
        # the client aborted the run (a stop with periods queued past it, a failed peer, a
        # lost worker): end quietly, no error traceback in the worker's log; the client
        # drops this report, and a real failure is raised from the task that failed
        return {"aborted": True, "t": t0}
    finally:
        with _WLOCK:
            _RUNNING.discard(me)


def _group_iterate(worker: Any, tag: str, t0: int, t1: int, mus: Sequence[float], plan: _Plan,
                   Ys: Sequence[np.ndarray]) -> dict[str, Any]:
    states = _group_snapshot(tag, t0, plan.timeout)
    box = _box(tag, worker.address) if plan.recv else None
    step = _STEPS[plan.solver]
    pos = {j: k for k, j in enumerate(plan.nodes)}
    for t in range(t0, t1):
        for addr, nodes in plan.send:
            _post(worker, addr, tag, t,
                  pickle.dumps({j: states[pos[j]][0] for j in nodes}, protocol=5))
        remote = box.take(t, plan.recv, plan.timeout, tag) if box is not None else {}
        Us = [s[0] for s in states]
        mu_t = mus[t - t0]
        states = [
            step(Ys[k], states[k],
                       [Us[pos[i]] if i in pos else remote[i] for i in plan.nbrs[k]],
                       plan.orders[k], plan.wts[k], mu_t, j, t, t == t0)
            for k, j in enumerate(plan.nodes)]
    _group_store(tag, t1, states)
    return _group_report(plan, Ys, states, t1, False)


def _group_pull(tag: str, t: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [_node_state_arrays(s) for s in _group_snapshot(tag, t)]


def _group_final(tag: str, t: int, Ubar: np.ndarray, *Ys: np.ndarray
                 ) -> list[tuple[np.ndarray, float]]:
    states = _group_snapshot(tag, t)
    return [_node_cost_with(Ys[k], Ubar, s) for k, s in enumerate(states)]


# ============================================================================= the public solver
def dgd_local(
    Y: Any,
    rank: int,
    n_nodes: int | None = None,
    topology: str | np.ndarray | Topology = "ring",
    *,
    weights: WeightRule | np.ndarray = "max-degree",
    lazy: bool | None = None,
    p: float = 0.3,
    graph_seed: SeedLike = 0,
    step: float | Literal["auto"] = "auto",
    step_schedule: StepSchedule | Callable[[int], float] = "constant",
    step_decay: float = 1e-3,
    max_iter: int = 3000,
    tol: float = 1e-10,
    init_scale: float | Literal["auto"] = "auto",
    polish: bool = False,
    report_every: int = 10,
    anchor_every: int = 200,
    checkpoint: Any = None,
    callback: Callable[[DGDState], bool | None] | None = None,
    client: Any = None,
    mode: Literal["workers", "tasks"] = "workers",
    random_state: SeedLike = 0,
    dtype: Any = np.float64,
    solver: Literal["auto", "als", "gradient"] = "auto",
    consensus_weight: float = _ALS_RHO,
) -> DGDResult:
    """Decentralised low-rank factorization ``Y ≈ U Vᵀ`` by DGD+LOCAL (exact consensus).

    The sample columns of ``Y`` are split into ``n_nodes`` blocks (on chunk boundaries when
    possible). Node ``j`` keeps ``Y_j``, its local ``V_j`` and its copy ``U^j``; every iteration
    it mixes only its graph neighbours' copies with the weights of ``W`` and takes the local
    gradient steps of [1]_ (Jacobi form)::

        U^j ← Σ_i w_ji U^i − 2μ (U^j V_jᵀ − Y_j) V_j
        V_j ← V_j − 2μ (U^j V_jᵀ − Y_j)ᵀ U^j

    On a distributed client every node is pinned to one worker and only the ``n × r`` copies
    ``U^i`` travel along graph edges; no all-reduce runs per iteration. Without one, the same
    kernels run in-process with numpy and give the same numbers.

    Parameters
    ----------
    Y : array-like, InputArray, Sketch or list of arrays
        The n × m data (a Zarr path, zarr / dask / numpy array, :class:`InputArray`), a
        :class:`~cfact_dask.Sketch` (its ``d × m`` matrix is factorized; each node sketches its
        own columns with the shared operator), or a list of per-node column blocks (then
        ``n_nodes`` is their number).
    rank : int
        ``r``, 1 <= r <= min(n, m).
    n_nodes : int, optional
        ``J``, the number of nodes (column blocks); default 8, or the number of given blocks.
    topology : {"ring", "torus2d", "star", "complete", "erdos-renyi"}, array or Topology
        The communication graph (see :func:`cfact_dask.make_topology`).
    weights : {"max-degree", "metropolis"} or array
        The mixing-weight rule or a J × J matrix. ``"max-degree"`` is the paper's.
    lazy : bool, optional
        Use ``(I + W)/2``. ``None`` (default) makes ``W`` lazy only when it has eigenvalue −1
        (max-degree weights on a bipartite graph such as an even ring, where DGD+LOCAL would keep
        an undamped oscillation); ``False`` then raises instead.
    p, graph_seed : float, int
        Erdős–Rényi edge probability and seed.
    step : float or "auto"
        The step μ; ``"auto"`` is ``0.1/σ₁(Y)`` with σ₁ from 20 power iterations on the nodes.
    step_schedule : {"constant", "inverse", "inverse-sqrt"} or callable
        ``μ_t = μ·factor(t)``: constant, ``1/(1 + step_decay·t)``, ``1/sqrt(1 + step_decay·t)``,
        or ``callable(t)``. Decaying μ shrinks the O(μ) disagreement left by noisy data.
    step_decay : float
        The decay rate of the built-in schedules.
    max_iter : int
        Iterations at most.
    tol : float
        Stop when ``(cost + consensus) <= tol·‖Y‖²`` (exact fit) or when ``cost + consensus``
        changed by at most ``tol`` (relative) over the last ``report_every`` iterations. 0 runs
        ``max_iter`` iterations.
    init_scale : float or "auto"
        Every ``U^j`` and ``V_j`` starts i.i.d. ``N(0, init_scale²)`` from its own seeded stream.
        ``"auto"`` = ``sqrt(rms(Y)/sqrt(r))`` so that ``U Vᵀ`` starts at the data's scale (it is
        1 for the paper's ``randn(n,r)·randn(r,m)`` data).
    polish : bool
        After the iterations, set ``U = Ū`` (average of the copies) and refit every ``V_j`` by
        least squares; recommended for noisy data.
    report_every : int
        Check convergence, call ``callback``, log a progress line and (distributed) gather the
        costs every this many iterations. With ``mode="workers"`` it is also the length of one
        worker task (each period costs the scheduler a few ms, overlapped with the previous
        period), so values >= 10 keep the overhead per iteration low.
    anchor_every : int
        Distributed only: copy the node states to the client every this many iterations (the
        restore point if a worker dies; also cuts the task lineage).
    checkpoint : str, dict or Checkpoint, optional
        Save the state every k iterations to Zarr and resume from it (``dict(store=..., every=k)``;
        a plain path saves every 10). A resumed run gives the uninterrupted run's result.
    callback : callable, optional
        ``callback(DGDState) -> bool``; True stops the run (called every ``report_every``).
    client : distributed.Client, str or None
        Where to run (see :func:`cfact_dask.client_context`); None and small data run in-process.
    mode : {"workers", "tasks"}
        How the iterations run on a distributed client (ignored in-process); both give the
        in-process numbers bitwise.

        * ``"workers"`` (default, fastest): the nodes are grouped by the worker they are pinned
          to and one task per worker runs a whole report period (``report_every`` iterations,
          the next period queued while the client reads this one's report). Nodes on the same
          worker mix in memory; the boundary copies ``U^i`` needed by nodes on other workers are
          sent worker to worker every iteration (one message per pair of neighbouring workers,
          not through the scheduler). The scheduler sees one task per worker per period: about
          1 ms per iteration at J = 8 on a 2-worker local cluster, against 30–45 ms for
          ``"tasks"``. The states stay in the workers' memory between periods; anchors copy
          them to the client.
        * ``"tasks"``: one dask task per node per iteration, every ``U^i`` a future passed
          along the graph edges (batched per period into one graph). Simple and fully managed by
          the scheduler, but every iteration costs a scheduler round of 2·J tasks.

        Both restore from the last anchor when a worker dies, and neither does an all-reduce or
        a client round trip per iteration.
    random_state : int, SeedSequence, Generator or None
        Seed of the initialisation and of the power iterations.
    dtype : float dtype
        Working precision (float64 by default).
    solver : {"auto", "als", "gradient"}
        The node update. ``"gradient"``: the paper's iteration above (step μ). ``"als"``: exact
        local solves, ``V_j ← argmin ‖U^j Vᵀ − Y_j‖`` and ``U^j ← (LS_j + ρ·mix_j)/(1 + ρ)``
        (see Notes); it takes no step. ``"auto"`` (default) is ``"als"`` unless a numeric
        ``step`` is given, so calls that set a step keep the paper's iteration and its
        numbers.
    consensus_weight : float
        ρ of ``solver="als"`` (default 4): larger pulls harder towards the neighbours' mix
        (faster consensus, slower local fit). A decaying ``step_schedule`` makes ρ grow as
        ``ρ/factor(t)``.

    Returns
    -------
    DGDResult

    Raises
    ------
    RankError, InputError, ConfigError
        Impossible rank, bad input, bad graph / weights / step.
    DivergenceError
        The cost became non-finite or exploded; the message suggests a smaller step.

    Warns
    -----
    ConvergenceWarning
        ``max_iter`` was reached before ``tol`` (when ``tol > 0``).

    Notes
    -----
    **Which update, and why** (issue #18). The gradient iteration's step must stay below
    ~1/σ₁, so its iteration count grows with σ₁/σ_r; on nonnegative data σ₁ (the mean) dwarfs
    the rest. Considered: (a) exact local solves for ``V_j`` with gradient steps on ``U`` (still
    step-limited on ``U``); (b) exact ``V_j`` and a proximal-ALS ``U`` step pulled towards the
    neighbours' mix in the Euclidean metric, ``argmin ‖U V_jᵀ − Y_j‖² + ρ‖U − mix_j‖²``
    (a descent method on the paper's penalised objective; measured: stalls at relative cost
    ~1e-2 because consensus and fit contract at ``ρ/(s + ρ)`` and ``s/(s + ρ)`` over the
    eigenvalues s of ``V_jᵀV_j``, which no single ρ serves); (c) the same in the local metric
    ``V_jᵀV_j`` (chosen): both rates become independent of s. Heavy-ball momentum on ``U`` was
    measured too: β = 0.5 is ~4× faster per decade on the 20 000 × 600 case but diverges on the
    paper's demo; β = 0.3 gains ~25 %; not adopted. Both updates are computed as corrections
    driven by the residual, so rounding shrinks with it and the fixed point is reached to
    float precision (forming ``YᵀU`` from scratch every iteration stalls at cost ~1e-19).

    **Guarantees.** Exact consensus with an exact fit is a fixed point of ``"als"``, and at any
    fixed point whose local fits are exact the copies agree exactly (``U^j = mix_j`` for all j
    means ``(I − W)U = 0`` on a connected graph). The paper's landscape theorem is proved for
    its gradient iteration, not for this one; the tests check the paper's demo (cost and
    consensus < 1e-20 over seeds and topologies) and the issue's case instead. On noisy
    full-rank data the consensus point of ``"als"`` weighs each node's gradient by its own
    metric (``Σ_j R_j V_j (V_jᵀV_j)⁻¹ = 0`` rather than ``Σ_j R_j V_j = 0``): measured 1.1–1.5 %
    above the rank-r optimum after polish on 40 × 160 data with 20 columns per node, against
    < 0.5 % for the gradient iteration after 3 000 iterations. Use ``solver="gradient"`` with
    ``polish=True`` when that last percent matters more than time.

    See Also
    --------
    dgd : classical decentralised gradient descent (inexact consensus).
    centralized : the centralised optimum (truncated SVD) or gradient descent.

    References
    ----------
    .. [1] Z. Zhu, Q. Li, X. Yang, G. Tang, M. B. Wakin. "Distributed low-rank matrix
       factorization with exact consensus". NeurIPS 2019, arXiv:1811.03129.

    Examples
    --------
    >>> import numpy as np, cfact_dask as cf
    >>> rng = np.random.default_rng(0)
    >>> Y = rng.standard_normal((30, 4)) @ rng.standard_normal((4, 80))
    >>> res = cf.dgd_local(Y, rank=4, n_nodes=4, topology="ring", weights="metropolis",
    ...                    max_iter=4000, tol=1e-12)
    >>> res.relative_error < 1e-5
    True
    """
    dt = _resolve_dtype(dtype)
    x, blocks, source = _as_matrix(Y)
    if blocks is not None:
        if n_nodes is not None and n_nodes != len(blocks):
            raise ConfigError(
                f"{len(blocks)} node blocks were given but n_nodes={n_nodes}; drop n_nodes or "
                f"make them equal"
            )
        n_nodes = len(blocks)
        n = int(blocks[0].shape[0])
        widths = [int(b.shape[1]) for b in blocks]
        col_ranges = tuple((int(a), int(b)) for a, b in zip(
            np.cumsum([0, *widths[:-1]]), np.cumsum(widths), strict=True))
        sources: list[Any] = [b if isinstance(b, da.Array) else np.asarray(b) for b in blocks]
        nbytes = sum(int(np.prod(b.shape)) * dt.itemsize for b in blocks)
    else:
        assert x is not None
        n_nodes = 8 if n_nodes is None else n_nodes
        J0 = _check_positive_int("n_nodes", n_nodes)
        n = int(x.shape[0])
        col_ranges = split_columns(x.chunks[1], J0)
        sources = [x[:, a:b] for a, b in col_ranges]
        nbytes = int(x.size) * dt.itemsize
    J = _check_positive_int("n_nodes", n_nodes)
    m = col_ranges[-1][1]
    rank = _check_rank(rank, n, m)
    max_iter = _check_positive_int("max_iter", max_iter, 0)
    report_every = _check_positive_int("report_every", report_every)
    anchor_every = _check_positive_int("anchor_every", anchor_every)
    if not (isinstance(tol, (int, float)) and tol >= 0 and math.isfinite(tol)):
        raise ConfigError(f"tol must be a finite number >= 0, got {tol!r}")
    if not callable(step_schedule):
        _schedule_factor(step_schedule, step_decay, 0)
    if mode not in ("workers", "tasks"):
        raise ConfigError(f"mode must be 'workers' or 'tasks', got {mode!r}")
    solver_, rho = _resolve_solver(solver, step, consensus_weight)
    topo = make_topology(topology, J, weights=weights, lazy=bool(lazy), p=p, seed=graph_seed)
    lam_min = float(topo.eigenvalues[0])
    if lazy is None and J > 1 and lam_min <= _MIN_EIG:
        logger.info("W of %r has eigenvalue %.3g; using the lazy weights (I + W)/2", topo.name,
                    lam_min)
        topo = make_topology(topo, J, lazy=True)
        lam_min = float(topo.eigenvalues[0])
    if J > 1 and lam_min <= _MIN_EIG:
        raise ConfigError(
            f"the mixing matrix of {topo.name!r} has eigenvalue {lam_min:.6g} (-1: the graph is "
            f"bipartite and the self-weights are zero), so DGD+LOCAL keeps an undamped "
            f"oscillation between the copies; use lazy=True (or lazy=None) or weights='metropolis'"
        )
    seed = normalize_seed(random_state)

    with client_context(client, nbytes=nbytes) as c:
        if c is None:
            local_blocks = [_load_block(s.compute() if isinstance(s, da.Array) else s, dt)
                            for s in sources]
            rt: _Local | _Remote = _Local(local_blocks)
        else:
            rt = _Remote(c, sources, dt, uuid.uuid4().hex[:10])
        # in-process: the node kernels are skinny GEMMs; BLAS threads on top of them only fight
        # (cfact.blas.solver-threads, see _runtime/blas.py). Worker tasks limit their own.
        with blas_threads() if c is None else contextlib.nullcontext():
            for _ in range(_MAX_LOSSES):
                try:
                    return _run_dgd_local(
                        rt, topo, n=n, rank=rank, col_ranges=col_ranges, step=step,
                        step_schedule=step_schedule, step_decay=step_decay, max_iter=max_iter,
                        tol=tol, init_scale=init_scale, polish=polish,
                        report_every=report_every, anchor_every=anchor_every,
                        checkpoint=checkpoint, callback=callback, seed=seed, dtype=dt,
                        source=source, data_token=_data_token(Y, sources), mode=mode,
                        solver=solver_, consensus_weight=rho,
                    )
                except _WorkerLost:
                    # lost before the first restore point (setup, first state): nothing to
                    # keep, so move the nodes to live workers and start again (same numbers)
                    logger.warning("dgd-local: a worker holding nodes was lost before the first "
                                   "restore point; starting again on the live workers")
                    rt.reload()
        raise _lost_error(rt, "the setup (before the first restore point)")


def _resolve_solver(solver: Any, step: Any, consensus_weight: Any) -> tuple[str, float]:
    """``"auto"`` is ``"als"`` unless a numeric ``step`` asks for the paper's gradient steps."""
    if solver not in ("auto", "als", "gradient"):
        raise ConfigError(f"solver must be 'auto', 'als' or 'gradient', got {solver!r}")
    if solver == "auto":
        solver = "als" if isinstance(step, str) and step == "auto" else "gradient"
    if solver == "als" and not (isinstance(step, str) and step == "auto"):
        raise ConfigError(
            f"step={step!r} is the step of solver='gradient'; solver='als' takes no step (its "
            f"updates are exact local solves): drop step, or pass solver='gradient'"
        )
    if isinstance(consensus_weight, bool) or not isinstance(
            consensus_weight, (int, float, np.floating)) or not (
            math.isfinite(consensus_weight) and consensus_weight > 0):
        raise ConfigError(
            f"consensus_weight must be a positive float, got {consensus_weight!r}")
    return str(solver), float(consensus_weight)


def _data_token(Y: Any, sources: list[Any]) -> str:
    from dask.base import tokenize

    if isinstance(Y, Sketch):
        return tokenize(Y.operator.to_dict(), Y.data.name)
    return tokenize(*[s.name if isinstance(s, da.Array) else s for s in sources])


def _power_sigma1(rt: _Local | _Remote, n: int, seed: int, dtype: np.dtype) -> float:
    """σ₁(Y) from power iterations on ``Y Yᵀ = Σ_j Y_j Y_jᵀ`` (n-vectors only)."""
    u = generator(seed, _STREAM_POWER).standard_normal(n).astype(dtype)
    u /= np.linalg.norm(u)
    lam = 0.0
    for _ in range(_POWER_ITERS):
        parts = rt.map_nodes(_gram_apply, u)
        z = np.zeros_like(u)
        for part in parts:
            z += part
        lam = float(np.linalg.norm(z))
        if lam == 0.0:
            return 0.0
        u = z / lam
    return math.sqrt(lam)


def _run_dgd_local(rt: _Local | _Remote, topo: Topology, *, n: int, rank: int,
                   col_ranges: tuple[tuple[int, int], ...], step: Any, step_schedule: Any,
                   step_decay: float, max_iter: int, tol: float, init_scale: Any, polish: bool,
                   report_every: int, anchor_every: int, checkpoint: Any,
                   callback: Callable[[DGDState], bool | None] | None, seed: int,
                   dtype: np.dtype, source: str, data_token: str,
                   mode: str = "workers", solver: str = "gradient",
                   consensus_weight: float = _ALS_RHO) -> DGDResult:
    J = topo.n_nodes
    m = col_ranges[-1][1]
    sq = rt.map_nodes(_sq_norm)
    norm_Y2 = float(sum(sq))
    if not math.isfinite(norm_Y2):
        raise InputError(f"{source} holds NaN or Inf; clean the data before factorizing it")
    # ---- step size (the consensus weight rho for solver="als": no power iteration needed)
    if solver == "als":
        if norm_Y2 <= 0:
            raise InputError(f"{source} is all zeros; there is nothing to factorize")
        mu = consensus_weight
    elif isinstance(step, str):
        if step != "auto":
            raise ConfigError(f"step must be a positive float or 'auto', got {step!r}")
        sigma1 = _power_sigma1(rt, n, seed, dtype)
        if sigma1 <= 0:
            raise InputError(f"{source} is all zeros; there is nothing to factorize")
        mu = 0.1 / sigma1
    else:
        if isinstance(step, bool) or not isinstance(step, (int, float, np.floating)) or not (
                math.isfinite(step) and step > 0):
            raise ConfigError(f"step must be a positive float or 'auto', got {step!r}")
        mu = float(step)
    if isinstance(init_scale, str):
        if init_scale != "auto":
            raise ConfigError(f"init_scale must be a positive float or 'auto', got {init_scale!r}")
        rms = math.sqrt(norm_Y2 / (n * m))
        scale = math.sqrt(rms / math.sqrt(rank)) if rms > 0 else 1.0
    else:
        scale = float(init_scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"init_scale must be a positive float or 'auto', got {init_scale!r}")

    # ---- mixing terms per node: increasing index, -1 = own copy
    nbrs = [topo.neighbors(j) for j in range(J)]
    orders, wts = [], []
    for j in range(J):
        order, ws = [], []
        for i in sorted((*nbrs[j], j)):
            w = float(topo.weights[j, i])
            if w == 0.0:
                continue
            order.append(-1 if i == j else nbrs[j].index(i))
            ws.append(w)
        orders.append(tuple(order))
        wts.append(tuple(ws))

    itemsize = dtype.itemsize
    bytes_per_iter = int(sum(len(nb) for nb in nbrs) * n * rank * itemsize)
    cross = 0
    if isinstance(rt, _Remote):
        cross = int(sum(1 for j in range(J) for i in nbrs[j]
                        if rt.node_worker[i] != rt.node_worker[j]) * n * rank * itemsize)

    # ---- checkpoint / initial state
    params = {
        "method": "dgd-local", "rank": rank, "n_nodes": J, "weights": topo.weights.tolist(),
        "step": mu,
        "step_schedule": step_schedule if isinstance(step_schedule, str) else "callable",
        "step_decay": step_decay, "init_scale": scale, "seed": seed, "dtype": str(dtype),
        "shape": [n, m], "col_ranges": [list(r) for r in col_ranges], "data": data_token,
    }
    if solver != "gradient":  # checkpoints of gradient runs stay resumable as before
        params["solver"] = solver
    ckpt: Checkpoint | None = as_checkpoint(checkpoint, params)
    loaded = ckpt.load() if ckpt is not None else None
    cost_hist: list[float] = []
    cons_hist: list[float] = []
    hist_iters: list[int] = []
    if loaded is not None:
        t0 = loaded.iteration
        U0 = loaded.arrays["U_nodes"]
        V0 = loaded.arrays["V"]
        init_args = [(U0[j], V0[a:b]) for j, (a, b) in enumerate(col_ranges)]
        cost_hist = list(loaded.history.get("cost", []))[:t0]
        cons_hist = list(loaded.history.get("consensus", []))
        hist_iters = [int(i) for i in loaded.history.get("iters", [])]
        keep = [k for k, i in enumerate(hist_iters) if i < t0]
        cons_hist = [cons_hist[k] for k in keep]
        hist_iters = [hist_iters[k] for k in keep]
        init_args = [(np.asarray(u, dtype=dtype), np.asarray(v, dtype=dtype))
                     for u, v in init_args]
    else:
        t0 = 0
        init_args = None

    engine_cls = _GroupEngine if isinstance(rt, _Remote) and mode == "workers" else _Engine
    engine = engine_cls(rt, topo, orders, wts, nbrs, rank, seed, scale, dtype, mu,
                        step_schedule, step_decay, solver=solver)
    try:
        return _drive(engine, rt, topo, ckpt, loaded, init_args, t0, cost_hist, cons_hist,
                      hist_iters, n=n, rank=rank, col_ranges=col_ranges, mu=mu,
                      step_schedule=step_schedule, step_decay=step_decay, max_iter=max_iter,
                      tol=tol, polish=polish, report_every=report_every,
                      anchor_every=anchor_every, callback=callback, norm_Y2=norm_Y2,
                      bytes_per_iter=bytes_per_iter, cross=cross, dtype=dtype)
    finally:
        engine.close()


def _drive(engine: _Engine, rt: _Local | _Remote, topo: Topology, ckpt: Checkpoint | None,
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
    explode_at = _EXPLODE * max(cost0, norm_Y2)
    last_mu = mu
    while t < max_iter and not stop:
        t_end = boundary_after(t)
        t_next = boundary_after(t_end) if t_end < max_iter and not is_anchor(t_end) else None
        try:
            if isinstance(engine, _GroupEngine):
                more = []
                b = t_next
                while (b is not None and b < max_iter and not is_anchor(b)
                       and len(more) < _LOOKAHEAD - 1):
                    b = boundary_after(b)
                    more.append(b)
                batch_costs, cost_t, cons_t = engine.run(t, t_end, t_next, more)
            else:
                batch_costs, cost_t, cons_t = engine.run(t, t_end, t_next)
        except _WorkerLost:
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
            except _WorkerLost:  # replay from the previous anchor, like a loss in the period
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
    for _ in range(_MAX_LOSSES):
        try:
            U_nodes, V_blocks, Ubar, objective = engine.finish(polish)
            break
        except _WorkerLost:  # the anchor is the final state: move the nodes and finish again
            _restore(engine)
    else:
        raise _lost_error(engine, "the final refit")
    if isinstance(engine, _GroupEngine):
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


class _Engine:
    """Drives the node states (in-process lists, or futures pinned to workers)."""

    def __init__(self, rt: _Local | _Remote, topo: Topology, orders: list[tuple[int, ...]],
                 wts: list[tuple[float, ...]], nbrs: list[tuple[int, ...]], rank: int, seed: int,
                 scale: float, dtype: np.dtype, mu: float, schedule: Any, decay: float,
                 solver: str = "gradient") -> None:
        self.rt = rt
        self.J = topo.n_nodes
        self.orders, self.wts, self.nbrs = orders, wts, nbrs
        self.rank, self.seed, self.scale, self.dtype = rank, seed, scale, dtype
        self.mu, self.schedule, self.decay = mu, schedule, decay
        self.solver = solver
        self.step_fn = _STEPS[solver]
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
        f = _schedule_factor(self.schedule, self.decay, t)
        return self.mu * f if self.solver == "gradient" else self.mu / f

    # -- state creation
    def init(self, arrays: list[tuple[np.ndarray, np.ndarray]] | None, t: int = 0) -> None:
        rt = self.rt
        if isinstance(rt, _Local):
            if arrays is None:
                self.states = [_node_init(rt.Y[j], self.rank, self.seed, j, self.scale,
                                          self.dtype, self.solver == "als")
                               for j in range(self.J)]
            else:
                self.states = [_node_from_arrays(*arrays[j]) for j in range(self.J)]
            return
        if arrays is None:
            self.states = [rt.submit(_node_init, rt.Y[j], self.rank, self.seed, j,
                                     self.scale, self.dtype, self.solver == "als", j=j,
                                     name="dgd-init")
                           for j in range(self.J)]
        else:
            # straight to the node's worker (not through the scheduler); no lineage behind it
            self.states = [rt.client.scatter([(arrays[j][0], (arrays[j][1], ()))],
                                             workers=[rt.node_worker[j]], hash=False)[0]
                           for j in range(self.J)]
        self.Us = [rt.submit(_node_U, self.states[j], j=j, name="dgd-U") for j in range(self.J)]

    # -- iterations
    def _submit_batch(self, t0: int, t1: int, states: list[Any], Us: list[Any]) -> _Batch:
        """Queue iterations ``t0 … t1−1`` and the check at ``t1`` as *one* graph.

        One ``update-graph`` message per batch (not one per task) keeps the client and scheduler
        overhead per iteration low; every key is pinned to its node's worker by a per-key
        ``workers`` annotation.
        """
        import dask

        rt = self.rt
        assert isinstance(rt, _Remote)
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
                dsk[ks] = (_node_step_task, self.solver, rt.Y[j], cur_s[j],
                           [cur_u[i] for i in self.nbrs[j]],
                           self.orders[j], self.wts[j], mu_t, j, t, t == t0)
                dsk[ku] = (_node_U, ks)
                where[ks] = where[ku] = [rt.node_worker[j]]
                new_s.append(ks)
                new_u.append(ku)
            cur_s, cur_u = new_s, new_u
        checks = []
        for j in range(J):
            kc = f"dgd-check-{tag}-{t1}-{j}"
            dsk[kc] = (_node_check, rt.Y[j], cur_s[j])
            where[kc] = [rt.node_worker[j]]
            checks.append(kc)
        kcons = f"dgd-consensus-{tag}-{t1}"
        dsk[kcons] = (_consensus_err, *cur_u)
        where[kcons] = sorted(set(rt.node_worker))
        keys = [*cur_s, *cur_u, *checks, kcons]
        with dask.annotate(workers=where.get):
            futs = rt.client.get(dsk, keys, sync=False)
        futs = list(futs)
        return _Batch((t0, t1), futs[:J], futs[J:2 * J], futs[2 * J:3 * J], futs[3 * J])

    def _submit_check(self, states: list[Any], Us: list[Any]) -> tuple[list[Any], Any]:
        rt = self.rt
        assert isinstance(rt, _Remote)
        checks = [rt.submit(_node_check, rt.Y[j], states[j], j=j, name="dgd-check")
                  for j in range(self.J)]
        cons = rt.client.submit(_consensus_err, *Us, pure=False,
                                key=f"dgd-consensus-{rt.run_id}-{uuid.uuid4().hex[:8]}")
        return checks, cons

    def check_now(self) -> tuple[list[float], float, float]:
        rt = self.rt
        if isinstance(rt, _Local):
            res = [_node_check(rt.Y[j], self.states[j]) for j in range(self.J)]
            cons = _consensus_err(*[s[0] for s in self.states])
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
        if isinstance(rt, _Local):
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
        if isinstance(rt, _Local):
            self.anchor_states = [(s[0], s[1][0]) for s in self.states]
            self.anchor_t = t
            return
        self.cancel()
        # a worker lost while pulling leaves the previous anchor (state and iteration) in place
        self.anchor_states = rt.gather([
            rt.submit(_node_state_arrays, self.states[j], j=j, name="dgd-pull")
            for j in range(self.J)])
        self.anchor_t = t
        # re-seat the states from the copies: cuts the lineage of the past iterations
        self.init(self.anchor_states)

    def anchor_arrays(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return [a[0] for a in self.anchor_states], [a[1] for a in self.anchor_states]

    def restore_after_loss(self) -> None:
        rt = _note_worker_loss(self)
        self.pending = None
        rt.reload()
        self.init(self.anchor_states)

    # -- finish
    def finish(self, polish: bool) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray,
                                            float]:
        rt = self.rt
        U_nodes, _ = self.anchor_arrays()
        _, Ubar = _consensus(*U_nodes)
        if polish:
            out = rt.map_nodes(_node_refit, Ubar)
        elif isinstance(rt, _Local):
            out = [_node_cost_with(rt.Y[j], Ubar, self.states[j]) for j in range(self.J)]
        else:
            out = rt.gather([rt.submit(_node_cost_with, rt.Y[j], Ubar, self.states[j], j=j,
                                       name="dgd-final") for j in range(self.J)])
        V_blocks = [o[0] for o in out]
        objective = float(sum(o[1] for o in out))
        return list(U_nodes), V_blocks, Ubar, objective

    def close(self) -> None:
        self.cancel()


class _GroupEngine(_Engine):
    """``mode="workers"``: one task per worker per report period; peers exchange U^i directly.

    Per period ``[t0, t1)`` the client submits one :func:`_group_segment` per worker (pinned;
    the next period is queued, and already waiting inside the worker for this one's end, while
    the client reads this one's report: the workers wait neither for the client nor for the
    scheduler). Each worker iterates its nodes,
    posting every iteration the boundary copies its peers need and waiting for theirs. Reports
    carry the nodes' costs and their ``U^j`` at ``t1`` (the consensus error is computed on the
    client, in node order); anchors pull ``(U^j, V_j)`` from the workers' snapshots.
    """

    def __init__(self, *args: Any, timeout: float = _EXCHANGE_TIMEOUT, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.timeout = timeout
        self.plans: dict[str, _Plan] = {}
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
        assert isinstance(rt, _Remote)
        return f"cfact-dgd-{rt.run_id}-g{rt.generation}"

    @property
    def cross_nodes(self) -> int:
        """Copies ``U^i`` sent between workers per iteration (one per node and peer worker)."""
        return sum(len(nodes) for p in self.plans.values() for _, nodes in p.send)

    def _make_plans(self) -> None:
        rt = self.rt
        assert isinstance(rt, _Remote)
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
            plans[w] = _Plan(
                nodes=tuple(nodes), nbrs=tuple(tuple(self.nbrs[j]) for j in nodes),
                orders=tuple(self.orders[j] for j in nodes),
                wts=tuple(self.wts[j] for j in nodes), send=tuple(send), recv=tuple(recv),
                timeout=self.timeout, solver=self.solver)
        self.plans = plans

    def _submit(self, fn: Callable[..., Any], w: str, *args: Any, name: str) -> Any:
        rt = self.rt
        assert isinstance(rt, _Remote)
        return rt.client.submit(
            fn, *args, workers=[w], allow_other_workers=False, pure=False,
            key=f"{name}-{rt.run_id}-g{rt.generation}-{uuid.uuid4().hex[:8]}")

    def _Ys(self, w: str) -> list[Any]:
        rt = self.rt
        assert isinstance(rt, _Remote)
        return [rt.Y[j] for j in self.plans[w].nodes]

    def _abort(self, tags: Sequence[str] | None = None) -> None:
        rt = self.rt
        assert isinstance(rt, _Remote)
        tags = list(self.tags if tags is None else tags)
        if not tags:
            return
        try:
            rt.client.run(_abort_tags, tags, workers=rt.alive())
        except Exception as e:  # pragma: no cover - best effort (workers going away)
            logger.debug("dgd-local: aborting %s failed: %s", tags, e)

    def _wait(self, futs: dict[str, Any]) -> list[Any]:
        """Gather ``futs``; a failed task aborts the run's exchanges (so its peers stop
        waiting) and re-raises; a lost worker raises :class:`_WorkerLost`."""
        rt = self.rt
        assert isinstance(rt, _Remote)
        flat = list(futs.values())
        last_check = time.perf_counter()
        failed = False
        while True:
            st = [f.status for f in flat]
            if all(s == "finished" for s in st):
                break
            if not failed and any(s in ("error", "cancelled", "lost") for s in st):
                if _lost(rt):
                    raise _WorkerLost()
                failed = True
                self._abort([self.tag])  # the peers of the failed task stop waiting for it
            if failed and all(s != "pending" for s in st):
                errs = [f.exception() for f in flat if f.status == "error"]
                # the original error (DivergenceError...), not the peers' aborted waits
                errs.sort(key=lambda e: isinstance(e, _ExchangeAborted))
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
                if _lost(rt):
                    raise _WorkerLost()
        return _gather_checked(rt, flat)

    def _absorb(self, reports: list[dict[str, Any]]) -> None:
        if any(rep.get("aborted") for rep in reports):
            raise _ExchangeAborted(f"DGD+LOCAL run {self.tag}: a period was aborted")
        for rep in reports:
            for k, j in enumerate(rep["nodes"]):
                self.checks[j] = rep["checks"][k]
                self.U_cur[j] = rep["U"][k]
                self.V_cur[j] = rep["V"][k] if rep["V"] is not None else None
            self.report_t = rep["t"]
            if rep.get("blas_threads") is not None:
                self.blas_seen = max(self.blas_seen or 0, int(rep["blas_threads"]))

    def _result(self) -> tuple[list[float], float, float]:
        return self._combine(list(self.checks), _consensus_err(*self.U_cur))

    # -- state creation
    def init(self, arrays: list[tuple[np.ndarray, np.ndarray]] | None, t: int = 0) -> None:
        rt = self.rt
        assert isinstance(rt, _Remote)
        rt.client.run(_install_handler, workers=sorted(set(rt.node_worker)))
        self._make_plans()
        self.tags.append(self.tag)
        futs = {}
        for w, plan in self.plans.items():
            arr = None
            if arrays is not None:
                # straight to the worker; not embedded in the task
                arr = rt.client.scatter([[arrays[j] for j in plan.nodes]], workers=[w],
                                        hash=False)[0]
            futs[w] = self._submit(_group_init, w, self.tag, t, plan, self.rank, self.seed,
                                   self.scale, self.dtype, arr, *self._Ys(w), name="dgd-ginit")
        self._absorb(self._wait(futs))
        self.current = futs
        self.pending_g = []

    # -- iterations
    def _submit_period(self, t0: int, t1: int) -> dict[str, Any]:
        mus = tuple(self.param(t) for t in range(t0, t1))
        return {w: self._submit(_group_segment, w, self.tag, t0, t1, mus, plan,
                                *self._Ys(w), name="dgd-period")
                for w, plan in self.plans.items()}

    def check_now(self) -> tuple[list[float], float, float]:
        return self._result()

    def run(self, t0: int, t1: int, t2: int | None = None, more: Sequence[int] = ()
            ) -> tuple[list[float], float, float]:
        """Period ``[t0, t1)``; the following periods ending at ``t2`` and ``more`` (up to
        ``_LOOKAHEAD``) are queued first, so that the workers never wait for the client."""
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
        for b in ahead[:_LOOKAHEAD]:
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
        # _LOOKAHEAD past a report, _KEEP_SNAPSHOTS kept), so a stop does not first wait for
        # them (measured: +20 iterations, ~16 s, after the stop on the 20 000 × 600 case)
        assert self.current is not None
        futs = {w: self._submit(_group_pull, w, self.tag, t, name="dgd-gpull")
                for w in self.plans}
        out: list[Any] = [None] * self.J
        for w, arrs in zip(futs, self._wait(futs), strict=True):
            for j, a in zip(self.plans[w].nodes, arrs, strict=True):
                out[j] = a
        self.anchor_states = out
        self.anchor_t = t

    def restore_after_loss(self) -> None:
        rt = _note_worker_loss(self)
        self.pending_g = []
        self.current = None
        self._abort([self.tag])
        rt.reload()
        self.init(self.anchor_states, self.anchor_t)

    # -- finish
    def finish(self, polish: bool) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray,
                                            float]:
        rt = self.rt
        assert isinstance(rt, _Remote)
        U_nodes, _ = self.anchor_arrays()
        _, Ubar = _consensus(*U_nodes)
        if polish:
            out = rt.map_nodes(_node_refit, Ubar)
        else:
            assert self.current is not None
            futs = {w: self._submit(_group_final, w, self.tag, self.anchor_t, Ubar,
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


# ==================================================================================== baselines
def _blocks_in_memory(Y: Any, n_nodes: int, dtype: np.dtype
                      ) -> tuple[list[np.ndarray], tuple[tuple[int, int], ...], str]:
    x, blocks, source = _as_matrix(Y)
    if blocks is not None:
        arrs = [_load_block(b.compute() if isinstance(b, da.Array) else b, dtype) for b in blocks]
        widths = [a.shape[1] for a in arrs]
        edges = np.cumsum([0, *widths])
        return arrs, tuple((int(edges[k]), int(edges[k + 1])) for k in range(len(arrs))), source
    assert x is not None
    J = _check_positive_int("n_nodes", n_nodes)
    col_ranges = split_columns(x.chunks[1], J)
    full = _load_block(x.compute(), dtype)
    return [np.ascontiguousarray(full[:, a:b]) for a, b in col_ranges], col_ranges, source


def dgd(
    Y: Any,
    rank: int,
    n_nodes: int = 8,
    topology: str | np.ndarray | Topology = "ring",
    *,
    weights: WeightRule | np.ndarray = "max-degree",
    lazy: bool = False,
    p: float = 0.3,
    graph_seed: SeedLike = 0,
    step: float | Literal["auto"] = "auto",
    max_iter: int = 3000,
    report_every: int = 10,
    init_scale: float | Literal["auto"] = "auto",
    random_state: SeedLike = 0,
    dtype: Any = np.float64,
) -> DGDResult:
    """Classical decentralised gradient descent (DGD): every variable is a consensus variable.

    Node ``j`` keeps copies ``U^j`` *and* ``V^j`` (the whole m × r factor) and iterates
    ``x^j ← Σ_i w_ji x^i − μ ∇f_j(x^j)`` with ``f_j = ‖U V_jᵀ − Y_j‖²`` (only the rows of block j
    of ``V^j`` get a gradient). With a constant step it stalls at an O(μ)-inexact consensus, which
    is what DGD+LOCAL fixes [1]_. In-process (numpy) baseline for comparisons; it moves
    ``(n + m)·r`` numbers per edge per iteration, against ``n·r`` for DGD+LOCAL.

    The initialisation, data split and mixing matrix are those of :func:`dgd_local` with the same
    arguments (node j's copy of ``V`` starts as the stack of every node's initial ``V_i``).
    ``consensus_history`` holds ``Σ_j ‖U^j − Ū‖² + Σ_j ‖V^j − V̄‖²`` (every ``report_every``).

    Returns
    -------
    DGDResult
        ``method="dgd"``; ``U`` and ``V`` are the averages of the copies.

    References
    ----------
    .. [1] Z. Zhu, Q. Li, X. Yang, G. Tang, M. B. Wakin. "Distributed low-rank matrix
       factorization with exact consensus". NeurIPS 2019, arXiv:1811.03129.
    .. [2] K. Yuan, Q. Ling, W. Yin. "On the convergence of decentralized gradient descent".
       SIAM J. Optim. 26(3), 2016.
    """
    dt = _resolve_dtype(dtype)
    Yb, col_ranges, source = _blocks_in_memory(Y, n_nodes, dt)
    J = len(Yb)
    n = Yb[0].shape[0]
    m = col_ranges[-1][1]
    rank = _check_rank(rank, n, m)
    max_iter = _check_positive_int("max_iter", max_iter, 0)
    report_every = _check_positive_int("report_every", report_every)
    topo = make_topology(topology, J, weights=weights, lazy=lazy, p=p, seed=graph_seed)
    seed = normalize_seed(random_state)
    rt = _Local(Yb)
    norm_Y2 = float(sum(_sq_norm(b) for b in Yb))
    mu = 0.1 / _power_sigma1(rt, n, seed, dt) if step == "auto" else float(step)
    if not (math.isfinite(mu) and mu > 0):
        raise ConfigError(f"step must be a positive float or 'auto', got {step!r}")
    if init_scale == "auto":
        rms = math.sqrt(norm_Y2 / (n * m))
        scale = math.sqrt(rms / math.sqrt(rank)) if rms > 0 else 1.0
    else:
        scale = float(init_scale)
    inits = [_node_init(Yb[j], rank, seed, j, scale, dt) for j in range(J)]
    U = [s[0] for s in inits]
    V0 = np.vstack([s[1][0] for s in inits])
    V = [V0.copy() for _ in range(J)]
    W = topo.weights
    nb = [[i for i in range(J) if W[j, i] != 0] for j in range(J)]
    cost_hist: list[float] = []
    cons_hist: list[float] = []
    iters: list[int] = []

    def consensus() -> float:
        eu, _ = _consensus(*U)
        ev, _ = _consensus(*V)
        return eu + ev

    cost0 = None
    for t in range(max_iter + 1):
        R = [U[j] @ V[j][a:b].T - Yb[j] for j, (a, b) in enumerate(col_ranges)]
        cost = float(sum(np.vdot(r, r) for r in R))
        cost_hist.append(cost)
        cost0 = cost if cost0 is None else cost0
        if not math.isfinite(cost) or cost > _EXPLODE * max(cost0, norm_Y2):
            raise DivergenceError(
                f"DGD diverged at iteration {t}: cost {cost:.3g} with step mu={mu:.3g}; rerun "
                f"with a smaller step, e.g. step={mu / 10:.3g}"
            )
        if t % report_every == 0 or t == max_iter:
            iters.append(t)
            cons_hist.append(consensus())
        if t == max_iter:
            break
        newU, newV = [], []
        for j, (a, b) in enumerate(col_ranges):
            u = np.zeros_like(U[j])
            v = np.zeros_like(V[j])
            for i in nb[j]:
                u += W[j, i] * U[i]
                v += W[j, i] * V[i]
            u -= (2 * mu) * (R[j] @ V[j][a:b])
            v[a:b] -= (2 * mu) * (R[j].T @ U[j])
            newU.append(u)
            newV.append(v)
        U, V = newU, newV
    _, Ubar = _consensus(*U)
    _, Vbar = _consensus(*V)
    obj = float(sum(np.vdot(Ubar @ Vbar[a:b].T - Yb[j], Ubar @ Vbar[a:b].T - Yb[j])
                    for j, (a, b) in enumerate(col_ranges)))
    per_edge = (n + m) * rank * dt.itemsize
    return DGDResult(
        U=Ubar, V_blocks=tuple(Vbar[a:b] for a, b in col_ranges), U_nodes=tuple(U),
        col_ranges=col_ranges, cost_history=np.asarray(cost_hist),
        consensus_history=np.asarray(cons_hist), history_iters=np.asarray(iters, dtype=np.int64),
        n_iter=max_iter, converged=False, step=mu, objective=obj, norm_Y2=norm_Y2,
        bytes_per_iter=int(sum(topo.degrees) * per_edge), method="dgd", topology=topo,
    )


def centralized(
    Y: Any,
    rank: int,
    method: Literal["svd", "gd"] = "svd",
    *,
    step: float | Literal["auto"] = "auto",
    max_iter: int = 3000,
    tol: float = 1e-10,
    init_scale: float | Literal["auto"] = "auto",
    random_state: SeedLike = 0,
    dtype: Any = np.float64,
) -> DGDResult:
    """The centralised solution of ``min ‖U Vᵀ − Y‖²_F``: the optimum, or gradient descent.

    ``method="svd"``: the exact truncated SVD (Eckart–Young), ``U = U_r Σ_r^{1/2}``,
    ``V = V_r Σ_r^{1/2}``; the optimum ``Σ_{k>r} σ_k²`` is ``objective``. Computed in memory
    (the baseline is meant for data that fits; ``Y`` may be a Sketch).
    ``method="gd"``: plain gradient descent ``U ← U − 2μ R V``, ``V ← V − 2μ Rᵀ U`` from a
    random init (entries ``N(0, init_scale²)``, ``"auto"`` as in :func:`dgd_local`) with
    ``μ = 0.1/σ₁`` by default [2]_: the inner solver of DGD+LOCAL with one node. Stops when the
    gradient norm falls below ``tol·‖Y‖_F`` (a plateau near a saddle does not stop it).

    Returns
    -------
    DGDResult
        With one node block, ``method="centralized-svd"`` or ``"centralized-gd"``.

    References
    ----------
    .. [1] Z. Zhu, Q. Li, X. Yang, G. Tang, M. B. Wakin. "Distributed low-rank matrix
       factorization with exact consensus". NeurIPS 2019, arXiv:1811.03129.
    .. [2] T. Ye, S. S. Du. "Global convergence of gradient descent for asymmetric low-rank
       matrix factorization". NeurIPS 2021.
    """
    dt = _resolve_dtype(dtype)
    Yb, _, source = _blocks_in_memory(Y, 1, dt)
    Ym = np.hstack(Yb) if len(Yb) > 1 else Yb[0]
    n, m = Ym.shape
    rank = _check_rank(rank, n, m)
    norm_Y2 = float(np.vdot(Ym, Ym))
    if method == "svd":
        Uf, s, Vt = np.linalg.svd(Ym, full_matrices=False)
        root = np.sqrt(s[:rank])
        U = Uf[:, :rank] * root
        V = Vt[:rank].T * root
        obj = float(np.sum(s[rank:] ** 2))
        return DGDResult(
            U=U, V_blocks=(V,), U_nodes=(U,), col_ranges=((0, m),),
            cost_history=np.asarray([obj]), consensus_history=np.zeros(1),
            history_iters=np.zeros(1, dtype=np.int64), n_iter=0, converged=True, step=0.0,
            objective=obj, norm_Y2=norm_Y2, bytes_per_iter=0, method="centralized-svd",
        )
    if method != "gd":
        raise ConfigError(f"method must be 'svd' or 'gd', got {method!r}")
    seed = normalize_seed(random_state)
    if step == "auto":
        mu = 0.1 / _power_sigma1(_Local([Ym]), n, seed, dt)
    else:
        mu = float(step)
    if init_scale == "auto":
        rms = math.sqrt(norm_Y2 / (n * m))
        scale = math.sqrt(rms / math.sqrt(rank)) if rms > 0 else 1.0
    else:
        scale = float(init_scale)
    rng = generator(seed, _STREAM_GD)
    U = scale * rng.standard_normal((n, rank))
    V = scale * rng.standard_normal((m, rank))
    hist = []
    converged = False
    gtol = tol * math.sqrt(norm_Y2)
    for t in range(max_iter + 1):
        R = U @ V.T - Ym
        cost = float(np.vdot(R, R))
        hist.append(cost)
        if not math.isfinite(cost) or cost > _EXPLODE * max(hist[0], norm_Y2):
            raise DivergenceError(
                f"centralised GD diverged at iteration {t} with step mu={mu:.3g}; rerun with a "
                f"smaller step, e.g. step={mu / 10:.3g}"
            )
        gU, gV = 2 * (R @ V), 2 * (R.T @ U)
        if tol > 0 and math.sqrt(float(np.vdot(gU, gU) + np.vdot(gV, gV))) <= gtol:
            converged = True
            break
        if t == max_iter:
            break
        U, V = U - mu * gU, V - mu * gV
    if not converged and tol > 0:
        warnings.warn(
            f"centralised GD stopped at max_iter={max_iter} before reaching tol={tol:g}; raise "
            f"max_iter", ConvergenceWarning, stacklevel=2,
        )
    return DGDResult(
        U=U, V_blocks=(V,), U_nodes=(U,), col_ranges=((0, m),), cost_history=np.asarray(hist),
        consensus_history=np.zeros(1), history_iters=np.zeros(1, dtype=np.int64),
        n_iter=len(hist) - 1, converged=converged, step=mu, objective=hist[-1], norm_Y2=norm_Y2,
        bytes_per_iter=0, method="centralized-gd",
    )
