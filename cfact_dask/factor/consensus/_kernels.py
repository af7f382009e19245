"""The node math of DGD+LOCAL: one node's start, step, checks, refit, and the step schedule.

These functions run inside dask tasks (pinned to the node's worker) *and* in-process; sharing
them is what makes both paths give the same numbers, bitwise. A node's state is
``(U^j, (V_j, costs))``: its copy of the consensus factor, its local factor and the costs
recorded since the last check.

References
----------
.. [1] Z. Zhu, Q. Li, X. Yang, G. Tang, M. B. Wakin. "Distributed low-rank matrix factorization
   with exact consensus". NeurIPS 2019, arXiv:1811.03129.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from ..._runtime.blas import blas_threads
from ..._runtime.random import generator
from ...errors import ConfigError, DivergenceError

__all__ = [
    "ALS_RHO", "EXPLODE", "POWER_ITERS", "STEPS", "STREAM_GD", "STREAM_POWER", "STREAM_U",
    "STREAM_U_SHARED", "STREAM_V", "StepSchedule", "auto_init_scale", "consensus",
    "consensus_err", "gram_apply", "load_block", "node_U", "node_check", "node_cost_with",
    "node_from_arrays", "node_init", "node_refit", "node_state_arrays", "node_step",
    "node_step_als", "node_step_task", "schedule_factor", "sq_norm",
]

StepSchedule = Literal["constant", "inverse", "inverse-sqrt"]

# purpose keys of the random streams (see _random.generator)
STREAM_U = 11
STREAM_V = 12
STREAM_POWER = 13
STREAM_GD = 14
STREAM_U_SHARED = 15
#: a cost this many times above max(initial cost, ||Y||²) counts as divergence
EXPLODE = 1e4
POWER_ITERS = 20
#: solver="als": default consensus weight ρ, and the relative proximal terms of its solves
ALS_RHO = 4.0
_ALS_PROX = 1e-10
_TINY = 1e-300


def node_init(Y_j: np.ndarray, rank: int, seed: int, j: int, scale: float,
              dtype: np.dtype, shared_U: bool = False
              ) -> tuple[np.ndarray, tuple[np.ndarray, tuple[float, ...]]]:
    """Node ``j``'s start: ``U^j`` from its own stream (the paper's independent starts) or,
    with ``shared_U``, from one stream every node generates alike (consensus from the start,
    without a message)."""
    n, m_j = Y_j.shape
    gen_U = generator(seed, STREAM_U_SHARED) if shared_U else generator(seed, STREAM_U, j)
    U = gen_U.standard_normal((n, rank)).astype(dtype, copy=False)
    V = generator(seed, STREAM_V, j).standard_normal((m_j, rank)).astype(dtype, copy=False)
    if scale != 1.0:
        U *= scale
        V *= scale
    return U, (V, ())


def node_from_arrays(U: np.ndarray, V: np.ndarray
                     ) -> tuple[np.ndarray, tuple[np.ndarray, tuple[float, ...]]]:
    return np.array(U, copy=True), (np.array(V, copy=True), ())


def node_step(Y_j: np.ndarray, prev: tuple[np.ndarray, tuple[np.ndarray, tuple[float, ...]]],
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


def node_step_als(Y_j: np.ndarray, prev: tuple[np.ndarray, tuple[np.ndarray, tuple[float, ...]]],
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


#: the node update of each solver (see :func:`cfact_dask.dgd_local`)
STEPS: dict[str, Callable[..., Any]] = {"gradient": node_step, "als": node_step_als}


def node_U(state: tuple[np.ndarray, Any]) -> np.ndarray:
    return state[0]


def node_step_task(solver: str, *args: Any) -> Any:
    """``mode="tasks"``: one node step as a dask task, BLAS limited to the task's cores."""
    with blas_threads():
        return STEPS[solver](*args)


def node_check(Y_j: np.ndarray, state: tuple[np.ndarray, tuple[np.ndarray, tuple[float, ...]]]
               ) -> tuple[tuple[float, ...], float]:
    """The costs recorded since the last check, and the cost of the current state."""
    U_j, (V_j, costs) = state
    R = U_j @ V_j.T
    R -= Y_j
    return costs, float(np.vdot(R, R))


def consensus(*Us: np.ndarray) -> tuple[float, np.ndarray]:
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


def consensus_err(*Us: np.ndarray) -> float:
    return consensus(*Us)[0]


def node_refit(Y_j: np.ndarray, Ubar: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares ``V_j = argmin ‖Ū V_jᵀ − Y_j‖`` and its cost (the polish step)."""
    Vt, *_ = np.linalg.lstsq(Ubar, Y_j, rcond=None)
    V = np.ascontiguousarray(Vt.T)
    R = Ubar @ Vt
    R -= Y_j
    return V, float(np.vdot(R, R))


def node_cost_with(Y_j: np.ndarray, U: np.ndarray, state: tuple[np.ndarray, Any]
                   ) -> tuple[np.ndarray, float]:
    V_j = state[1][0]
    R = U @ V_j.T
    R -= Y_j
    return V_j, float(np.vdot(R, R))


def node_state_arrays(state: tuple[np.ndarray, Any]) -> tuple[np.ndarray, np.ndarray]:
    return state[0], state[1][0]


def gram_apply(Y_j: np.ndarray, u: np.ndarray) -> np.ndarray:
    return Y_j @ (Y_j.T @ u)


def sq_norm(Y_j: np.ndarray) -> float:
    return float(np.vdot(Y_j, Y_j))


def load_block(x: Any, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=dtype))


def schedule_factor(schedule: StepSchedule | Callable[[int], float], decay: float, t: int
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


def auto_init_scale(norm_Y2: float, n: int, m: int, rank: int) -> float:
    """``init_scale="auto"``: ``sqrt(rms(Y)/sqrt(r))``, so that ``U Vᵀ`` starts at the data's
    scale (1 for the paper's ``randn(n,r)·randn(r,m)`` data); 1 for all-zero data."""
    rms = math.sqrt(norm_Y2 / (n * m))
    return math.sqrt(rms / math.sqrt(rank)) if rms > 0 else 1.0
