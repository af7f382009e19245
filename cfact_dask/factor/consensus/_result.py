"""What DGD+LOCAL and its baselines return: :class:`DGDResult` (and its Zarr group), and the
:class:`DGDState` a ``callback`` receives.

References
----------
.. [1] Z. Zhu, Q. Li, X. Yang, G. Tang, M. B. Wakin. "Distributed low-rank matrix factorization
   with exact consensus". NeurIPS 2019, arXiv:1811.03129.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..._runtime.display import SKIP, summary_html, summary_repr
from .topology import Topology

__all__ = ["DGDResult", "DGDState", "write_result"]


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
        Iterations run (also ``n_iter_``, the name every result shares).
    converged : bool
        ``tol`` was met (False when stopped by ``max_iter`` or the callback).
    step : float
        The base step μ (0 for ``solver="als"``, which takes no step).
    objective : float
        ``Σ_j ‖U V_jᵀ − Y_j‖²`` with the returned consensus ``U`` (after polish if any).
    norm_Y2 : float
        ``‖Y‖_F²``. ``relative_error`` (also ``reconstruction_err_``) is
        ``sqrt(objective / norm_Y2)``.
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
        """Iterations run (:attr:`n_iter`, the name every result shares)."""
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

    @property
    def reconstruction_err_(self) -> float:
        """``‖Y − U Vᵀ‖_F / ‖Y‖_F`` (:attr:`relative_error`, the name every result shares)."""
        return self.relative_error

    def to_zarr(self, store: str | os.PathLike, group: str = "dgd", *, overwrite: bool = False,
                **kwargs: Any) -> str:
        """Write ``U``, ``V``, the node copies and the histories to ``store/group``.

        The group (type ``"dgd-result"``) is the one ``cfact factor-dgd --output`` writes: it
        is checked first, written under a temporary name and marked complete last
        (:func:`cfact_dask._runtime.resultstore.write_result`). ``kwargs`` go to that function
        (``upstream``, ``inputs``).

        Returns
        -------
        str
            ``store/group``.
        """
        return write_result(self, store, group, overwrite=overwrite, **kwargs)

    @classmethod
    def from_zarr(cls, store: str | os.PathLike, group: str = "dgd") -> DGDResult:
        """Read a result written by :meth:`to_zarr` (or by ``cfact factor-dgd --output``).

        ``norm_Y2`` is not stored; it is recovered from ``objective`` and ``relative_error``
        (to rounding), so :attr:`relative_error` reads back as written.

        Raises
        ------
        StoreNotFoundError
            ``store/group`` is missing, incomplete or not a DGD+LOCAL result.
        OutputError
            The group is stale (an input it was computed from was replaced).
        """
        from ..._runtime.resultstore import read_result

        arrays, meta = read_result(store, group, _KIND, fix="run cfact factor-dgd --output again")
        col_ranges = tuple((int(a), int(b)) for a, b in meta["col_ranges"])
        V = np.asarray(arrays["V"])
        objective = float(meta["objective"])
        rel = float(meta.get("relative_error", 0.0))
        norm_Y2 = objective / rel ** 2 if rel > 0 else 1.0
        topo = meta.get("topology")
        return cls(
            U=np.asarray(arrays["U"]), V_blocks=tuple(V[a:b] for a, b in col_ranges),
            U_nodes=tuple(np.asarray(arrays["U_nodes"])), col_ranges=col_ranges,
            cost_history=np.asarray(arrays["cost_history"]),
            consensus_history=np.asarray(arrays["consensus_history"]),
            history_iters=np.asarray(arrays["history_iters"]), n_iter=int(meta["n_iter"]),
            converged=bool(meta["converged"]), step=float(meta["step"]), objective=objective,
            norm_Y2=norm_Y2, bytes_per_iter=int(meta["bytes_per_iter"]),
            method=str(meta["method"]), polished=bool(meta.get("polished", False)),
            topology=Topology.from_dict(topo) if topo is not None else None,
        )


#: the group type of a written DGDResult
_KIND = "dgd-result"
# Y ≈ U Vᵀ: U features × component, V samples × component, one U copy per node
_DIMS = {"U": ("feature", "component"), "V": ("sample", "component"),
         "U_nodes": ("node", "feature", "component"), "cost_history": ("iteration",),
         "consensus_history": ("record",), "history_iters": ("record",)}


def write_result(res: DGDResult, store: str | os.PathLike, group: str = "dgd", *,
                 overwrite: bool = False, **kwargs: Any) -> str:
    """Write a :class:`DGDResult` to ``store/group`` (marked complete last).

    Parameters
    ----------
    res : DGDResult
        The result (of :func:`dgd_local`, :func:`dgd` or :func:`centralized`).
    store, group : str
        Where; the output policy checks the target first and ``overwrite`` replaces only a
        group cfact wrote.
    **kwargs
        ``upstream`` / ``inputs`` of :func:`cfact_dask._runtime.resultstore.write_result`.

    Returns
    -------
    str
        ``store/group``.
    """
    from ..._runtime.resultstore import write_result as write_group

    arrays = {
        "U": res.U, "V": res.V, "U_nodes": np.stack(res.U_nodes),
        "cost_history": res.cost_history, "consensus_history": res.consensus_history,
        "history_iters": res.history_iters,
    }
    attrs = {
        "type": _KIND, "method": res.method, "n_iter": res.n_iter,
        "converged": res.converged, "step": res.step, "objective": res.objective,
        "relative_error": res.relative_error, "bytes_per_iter": res.bytes_per_iter,
        "col_ranges": [list(r) for r in res.col_ranges], "polished": res.polished,
        "topology": res.topology.to_dict() if res.topology is not None else None,
    }
    return write_group(store, group, {k: np.asarray(v) for k, v in arrays.items()}, attrs,
                       overwrite=overwrite, dims=_DIMS, what="DGD+LOCAL output", **kwargs)
