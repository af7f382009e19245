"""The baselines DGD+LOCAL is compared with: classical DGD and the centralised solution.

Both run in-process (numpy) on data that fits in memory, with the data split, initialisation,
mixing matrix and automatic step of :func:`~cfact_dask.dgd_local` for the same arguments.

References
----------
.. [1] Z. Zhu, Q. Li, X. Yang, G. Tang, M. B. Wakin. "Distributed low-rank matrix factorization
   with exact consensus". NeurIPS 2019, arXiv:1811.03129.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import dask.array as da
import numpy as np

from ..._runtime.checks import check_positive_int, check_rank, resolve_float_dtype
from ..._runtime.random import SeedLike, generator, normalize_seed
from ...errors import ConfigError, ConvergenceWarning, DivergenceError
from ._kernels import EXPLODE, STREAM_GD, auto_init_scale, consensus, load_block, node_init, sq_norm
from ._result import DGDResult
from ._runtime import Local, as_matrix, auto_step, split_columns
from .topology import Topology, WeightRule, make_topology

__all__ = ["centralized", "dgd"]


def _blocks_in_memory(Y: Any, n_nodes: int, dtype: np.dtype
                      ) -> tuple[list[np.ndarray], tuple[tuple[int, int], ...], str]:
    x, blocks, source = as_matrix(Y)
    if blocks is not None:
        arrs = [load_block(b.compute() if isinstance(b, da.Array) else b, dtype) for b in blocks]
        widths = [a.shape[1] for a in arrs]
        edges = np.cumsum([0, *widths])
        return arrs, tuple((int(edges[k]), int(edges[k + 1])) for k in range(len(arrs))), source
    assert x is not None
    J = check_positive_int("n_nodes", n_nodes)
    col_ranges = split_columns(x.chunks[1], J)
    full = load_block(x.compute(), dtype)
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
    dt = resolve_float_dtype(dtype)
    Yb, col_ranges, source = _blocks_in_memory(Y, n_nodes, dt)
    J = len(Yb)
    n = Yb[0].shape[0]
    m = col_ranges[-1][1]
    rank = check_rank(rank, min(n, m), source=f"a {n} × {m} matrix", inclusive=True,
                      need="a factorization U Vᵀ")
    max_iter = check_positive_int("max_iter", max_iter, 0)
    report_every = check_positive_int("report_every", report_every)
    topo = make_topology(topology, J, weights=weights, lazy=lazy, p=p, seed=graph_seed)
    seed = normalize_seed(random_state)
    rt = Local(Yb)
    norm_Y2 = float(sum(sq_norm(b) for b in Yb))
    mu = auto_step(rt, n, seed, dt, source) if step == "auto" else float(step)
    if not (math.isfinite(mu) and mu > 0):
        raise ConfigError(f"step must be a positive float or 'auto', got {step!r}")
    scale = (auto_init_scale(norm_Y2, n, m, rank) if init_scale == "auto"
             else float(init_scale))
    inits = [node_init(Yb[j], rank, seed, j, scale, dt) for j in range(J)]
    U = [s[0] for s in inits]
    V0 = np.vstack([s[1][0] for s in inits])
    V = [V0.copy() for _ in range(J)]
    W = topo.weights
    nb = [[i for i in range(J) if W[j, i] != 0] for j in range(J)]
    cost_hist: list[float] = []
    cons_hist: list[float] = []
    iters: list[int] = []

    def disagreement() -> float:
        eu, _ = consensus(*U)
        ev, _ = consensus(*V)
        return eu + ev

    cost0 = None
    for t in range(max_iter + 1):
        R = [U[j] @ V[j][a:b].T - Yb[j] for j, (a, b) in enumerate(col_ranges)]
        cost = float(sum(np.vdot(r, r) for r in R))
        cost_hist.append(cost)
        cost0 = cost if cost0 is None else cost0
        if not math.isfinite(cost) or cost > EXPLODE * max(cost0, norm_Y2):
            raise DivergenceError(
                f"DGD diverged at iteration {t}: cost {cost:.3g} with step mu={mu:.3g}; rerun "
                f"with a smaller step, e.g. step={mu / 10:.3g}"
            )
        if t % report_every == 0 or t == max_iter:
            iters.append(t)
            cons_hist.append(disagreement())
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
    _, Ubar = consensus(*U)
    _, Vbar = consensus(*V)
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
    dt = resolve_float_dtype(dtype)
    Yb, _, source = _blocks_in_memory(Y, 1, dt)
    Ym = np.hstack(Yb) if len(Yb) > 1 else Yb[0]
    n, m = Ym.shape
    rank = check_rank(rank, min(n, m), source=f"a {n} × {m} matrix", inclusive=True,
                      need="a factorization U Vᵀ")
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
    mu = auto_step(Local([Ym]), n, seed, dt, source) if step == "auto" else float(step)
    scale = (auto_init_scale(norm_Y2, n, m, rank) if init_scale == "auto"
             else float(init_scale))
    rng = generator(seed, STREAM_GD)
    U = scale * rng.standard_normal((n, rank))
    V = scale * rng.standard_normal((m, rank))
    hist = []
    converged = False
    gtol = tol * math.sqrt(norm_Y2)
    for t in range(max_iter + 1):
        R = U @ V.T - Ym
        cost = float(np.vdot(R, R))
        hist.append(cost)
        if not math.isfinite(cost) or cost > EXPLODE * max(hist[0], norm_Y2):
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
