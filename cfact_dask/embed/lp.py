"""Robust ℓp low-rank approximation of a tall, row-chunked matrix (IRLS and Löwner ellipsoid).

The matrix ``A`` (n × D, rows = points / tokens / neurons) is read on its native row chunks. Every
iteration is **one pass** over ``A``: each row chunk returns a small partial (a D × D scatter, a few
scalars), the partials are summed by a fixed-order tree, and the D × D problem is solved on the
client. Nothing n-sized is gathered; the coefficients ``A V`` come back as a lazy chunked array.

References
----------
.. [1] M. Tukan, A. Maalouf, M. Weksler, D. Feldman. "Compressed deep networks: goodbye SVD, hello
   robust low-rank approximation". arXiv:2009.05647, 2020.
.. [2] A. Maalouf, H. Lang, D. Rus, D. Feldman. "Deep learning meets projective clustering".
   ICLR 2021, arXiv:2010.04290.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import dask.array as da
import numpy as np

from .._runtime.blas import blas_threads
from .._runtime.checkpoint import as_checkpoint
from .._runtime.checks import check_rank
from .._runtime.cluster import client_context, persist
from .._runtime.display import summary_html, summary_repr
from .._runtime.random import SeedLike
from ..errors import ConfigError, ConvergenceWarning, InputError
from ._lp_kernels import entrywise_coef_block, eval_kernel, lowrank_block, project_block
from ._lp_solver import LpSolver
from ._rows import prepare_rows, reduce_rows

__all__ = ["LpLowRankResult", "lp_lowrank", "lp_objective"]

logger = logging.getLogger(__name__)

Method = Literal["irls", "ellipsoid"]


def _check_rank(rank: Any, n: int, D: int, source: str, name: str = "rank") -> int:
    """``1 <= rank < D`` (a low-rank approximation) and ``rank <= n`` (no more than the rows)."""
    rank = check_rank(rank, D, source=f"{source} with D={D} columns", what=name,
                      need="a low-rank approximation")
    return check_rank(rank, n, source=f"{source} with n={n} rows", what=name, inclusive=True,
                      need="a basis of the rows")




# ====================================================================== result
@dataclass(frozen=True)
class LpLowRankResult:
    """A rank-k ℓp approximation ``A ≈ coefficients @ basis.T``.

    Attributes
    ----------
    basis : numpy.ndarray
        ``V``, D × k with orthonormal columns (the subspace; ``components_ = basis.T``).
    coefficients : dask.array.Array
        n × k, chunked like the rows of ``A``, lazy. ``A V`` for the row-wise objective; the
        per-row robust fit for ``entrywise=True``.
    objective : float
        ``Σ_i dist(a_i, S)^p`` (row-wise) or ``Σ_ij |A − U Vᵀ|_ij^p`` (entrywise) of ``basis``.
    objective_history : list of float
        The objective of every evaluated iterate (one pass over ``A`` each).
    relative_error : float
        ``‖A − coefficients basisᵀ‖_F / ‖A‖_F`` of the returned factors.
    p, method, entrywise, rank, n_iter, converged
        The settings and how the solver stopped. ``n_passes`` counts the reads of ``A``.
    ellipsoid : numpy.ndarray or None
        For ``method="ellipsoid"``: ``G`` (D × D) with ``E = {x : ‖G x‖₂ ≤ 1} ⊇ K``.
    """

    basis: np.ndarray
    coefficients: da.Array
    objective: float
    objective_history: list[float]
    relative_error: float
    p: float
    method: str
    entrywise: bool
    rank: int
    n_iter: int
    n_passes: int
    converged: bool
    ellipsoid: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def _summary(self) -> tuple[str, list[tuple[str, Any]]]:
        return "cfact LpLowRankResult", [
            ("shape", self.shape), ("rank", self.rank), ("basis", self.basis),
            ("coefficients", self.coefficients),
            ("p", f"{self.p:g} ({'entrywise' if self.entrywise else 'row-wise'})"),
            ("method", self.method), ("objective", self.objective),
            ("relative error (Frobenius)", self.relative_error),
            ("iterations / passes", f"{self.n_iter} / {self.n_passes}"),
            ("converged", self.converged),
        ]

    # short summaries for the terminal and notebooks (not the arrays: see _runtime.display)
    __repr__ = summary_repr
    _repr_html_ = summary_html

    @property
    def n_iter_(self) -> int:
        """Iterations run (``n_iter``)."""
        return self.n_iter

    @property
    def reconstruction_err_(self) -> float:
        """``relative_error``: ``‖A − coefficients basisᵀ‖_F / ‖A‖_F``."""
        return self.relative_error

    def to_zarr(self, store: str | os.PathLike, group: str = "lp-lowrank", *,
                overwrite: bool = False, upstream: Mapping[str, str] | None = None) -> str:
        """Write the basis, the coefficients (blockwise, one pass over ``A``) and the record to
        ``store/group``; complete only when done (see
        :func:`~cfact_dask._runtime.resultstore.write_result`)."""
        from .._runtime.resultstore import write_result

        arrays: dict[str, Any] = {"basis": self.basis, "coefficients": self.coefficients}
        dims = {"basis": ("embedding_dim", "component"), "coefficients": ("token", "component")}
        if self.ellipsoid is not None:
            arrays["ellipsoid"] = self.ellipsoid
            dims["ellipsoid"] = ("ellipsoid_row", "embedding_dim")
        return write_result(store, group, arrays, {
            "type": "lp-lowrank", "objective": self.objective,
            "objective_history": list(self.objective_history),
            "relative_error": self.relative_error, "p": self.p, "method": self.method,
            "entrywise": self.entrywise, "rank": self.rank, "n_iter": self.n_iter,
            "n_passes": self.n_passes, "converged": self.converged, "info": self.info,
        }, overwrite=overwrite, dims=dims, upstream=upstream, chunk_axis={"coefficients": 0})

    @classmethod
    def from_zarr(cls, store: str | os.PathLike, group: str = "lp-lowrank") -> LpLowRankResult:
        """Open a result written by :meth:`to_zarr` (the coefficients lazily)."""
        from .._runtime.resultstore import read_result

        arrays, meta = read_result(store, group, "lp-lowrank", lazy=True)
        ell = arrays.get("ellipsoid")
        return cls(
            basis=np.asarray(arrays["basis"]), coefficients=arrays["coefficients"],
            objective=float(meta["objective"]),
            objective_history=[float(v) for v in meta["objective_history"]],
            relative_error=float(meta["relative_error"]), p=float(meta["p"]),
            method=str(meta["method"]), entrywise=bool(meta["entrywise"]),
            rank=int(meta["rank"]), n_iter=int(meta["n_iter"]), n_passes=int(meta["n_passes"]),
            converged=bool(meta["converged"]),
            ellipsoid=None if ell is None else np.asarray(ell), info=dict(meta.get("info") or {}),
        )

    @property
    def V(self) -> np.ndarray:
        """The basis (D × k)."""
        return self.basis

    @property
    def components_(self) -> np.ndarray:
        """The basis as k × D rows (scikit-learn naming)."""
        return self.basis.T

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.coefficients.shape[0]), int(self.basis.shape[0]))

    def reconstruct(self) -> da.Array:
        """``coefficients @ basis.T`` as a lazy n × D array on the row chunks of ``A``."""
        U = self.coefficients
        D = self.basis.shape[0]
        return U.map_blocks(lowrank_block, self.basis, chunks=(U.chunks[0], (D,)), dtype=U.dtype)


# ====================================================================== public API
def lp_objective(A: Any, basis: np.ndarray, p: float = 1.0, *, client: Any = None) -> float:
    """``Σ_i dist(a_i, span(basis))^p`` in one blockwise pass (``basis`` D × k, any columns).

    The basis is orthonormalised first. Useful to compare subspaces from different methods on the
    same objective.
    """
    x, source, _ = prepare_rows(A, "lp_objective")
    B = np.asarray(basis, dtype=np.float64)
    if B.ndim != 2 or B.shape[0] != x.shape[1]:
        raise InputError(
            f"basis has shape {B.shape}; expected D × k with D={x.shape[1]} (the columns of "
            f"{source})"
        )
    Q = np.linalg.qr(B)[0]
    with client_context(client, nbytes=int(x.nbytes)) as c:
        out = reduce_rows(x, eval_kernel, (Q, float(p)), c, check_finite=True, source=source)
    return float(out[0])


def lp_lowrank(
    A: Any,
    rank: int,
    p: float = 1.0,
    method: Method = "irls",
    *,
    entrywise: bool = False,
    max_iter: int | None = None,
    tol: float = 1e-5,
    random_state: SeedLike = None,
    client: Any = None,
    init: Literal["svd"] | np.ndarray = "svd",
    irls_delta: float = 1e-6,
    irls_update: Literal["eigh", "subspace"] = "eigh",
    oversample: int = 32,
    select: Literal["best", "final"] = "best",
    callback: Callable[[dict[str, Any]], bool | None] | None = None,
    check_finite: bool = True,
    checkpoint: Any = None,
) -> LpLowRankResult:
    """Robust rank-k ℓp approximation ``A ≈ (A V) Vᵀ`` of a tall row-chunked matrix.

    Minimises ``Σ_i dist(a_i, S)^p`` over k-dimensional subspaces ``S`` (rows of ``A`` are the
    points), p ∈ [1, 2]. For p < 2 outlier rows pull the subspace far less than in the SVD
    (p = 2), which is what makes the factored layer robust [1]_.

    Parameters
    ----------
    A : array-like, dask array, zarr array, xarray DataArray or Zarr path
        n × D matrix, chunked by rows (its native chunks are kept; column chunks of one row block
        are merged).
    rank : int
        k, with 1 <= k < D.
    p : float
        The exponent, 1 <= p <= 2. ``p = 2`` is the truncated SVD (one pass).
    method : {"irls", "ellipsoid"}
        ``"irls"``: iteratively reweighted least squares, row weights
        ``max(dist(a_i, S), δ)^{p−2}``, S ← top-k eigenvectors of the weighted D × D scatter, one
        pass over ``A`` per iteration. ``"ellipsoid"``: the Löwner-ellipsoid route of [1]_: the
        ellipsoid method with shallow symmetric cuts finds ``E = {x : ‖G x‖₂ ≤ 1}`` with
        ``E / √(D(D+1)) ⊆ K ⊆ E`` for ``K = {x : ‖A x‖_p ≤ 1}``, then ``V`` = top-k right singular
        vectors of ``G``. Each pass evaluates ``‖A y‖_p`` and its analytic gradient
        ``Aᵀ(sign(Ay)|Ay|^{p−1}) / ‖Ay‖_p^{p−1}`` at the D axis points of the current ellipsoid;
        each gradient bounds K by the slab ``|gᵀx| ≤ 1`` and is applied as a symmetric shallow
        cut when it is deep enough to shrink the volume. Updates act on a square-root factor
        (re-orthogonalised every pass), so the ellipsoid stays positive definite. The run stops
        when every axis point scaled by ``1/√(D+1)`` lies in K (``info["certified"]``), when no
        cut shrinks E, or when the log-volume stalls.
    entrywise : bool
        Minimise the entrywise ``Σ_ij |A − U Vᵀ|_ij^p`` instead (only with ``method="irls"``):
        alternating IRLS, per-row robust fits of ``U`` inside each chunk and a per-column
        ``D × k × k`` normal-equation reduction for ``V``; still one pass per iteration. The
        coefficients are then the robust row fits, not ``A V``.
    max_iter : int, optional
        Iterations after the initial SVD pass (default 50 for IRLS, 100 for the ellipsoid).
    tol : float
        Stop when the relative decrease of the objective (IRLS) or of the ellipsoid's log-volume
        per pass (ellipsoid) falls below ``tol``.
    random_state : int, SeedSequence, Generator or None
        Accepted for API symmetry; both solvers are deterministic (SVD initialisation).
    client : distributed.Client, str or None
        Where to compute; see :func:`cfact_dask.client_context`.
    init : "svd" or ndarray
        Starting basis (D × k) for IRLS; ``"svd"`` costs one extra pass.
    irls_delta : float
        δ relative to the root-mean-square row norm; caps the IRLS weights of rows (entries) that
        sit on the subspace.
    irls_update : {"eigh", "subspace"}
        ``"eigh"``: each pass reduces the full weighted D × D scatter and takes its top-k
        eigenvectors (the exact IRLS step). ``"subspace"``: each pass reduces only
        ``S_w Q`` for a D × (k + ``oversample``) search space and does one block power step with
        Rayleigh–Ritz, warm-started across iterations: O(n D (k + oversample)) flops per pass
        instead of O(n D²), for D well above k (wide embeddings), at the price of an inexact
        eigen-step (a few more passes).
    oversample : int
        Extra search directions for ``irls_update="subspace"``.
    select : {"best", "final"}
        Return the evaluated iterate with the lowest objective (default) or the last one.
    callback : callable, optional
        ``callback(state) -> bool | None`` after each pass; returning True stops.
        ``state`` has ``iteration``, ``objective``, ``basis``, ``seconds``.
    check_finite : bool
        Raise :class:`~cfact_dask.errors.NonFiniteError` naming the chunk for NaN / Inf (checked in
        the first pass, at no extra read).
    checkpoint : str, dict or Checkpoint, optional
        Save the solver state (the next iterate, the best so far, the histories; the
        ellipsoid's axes) every ``every`` iterations into a Zarr store and resume from the last
        saved state when one is there: ``dict(store=..., every=10, group="checkpoint")`` or a
        store path (see :mod:`cfact_dask._runtime.checkpoint`). A resume continues bitwise as
        the uninterrupted run would have (for the same chunking) and skips the initial pass;
        one with other settings or data is refused
        (:class:`~cfact_dask.errors.ResumeError`). ``info["resumed_from"]`` says where it
        continued.

    Returns
    -------
    LpLowRankResult
        ``info["profile"]`` is the histogram of the rows' relative residuals
        ``‖a_i − â_i‖ / ‖a_i‖`` of the returned basis (20 bins of [0, 1]) from the pass that
        evaluated it.

    Raises
    ------
    RankError
        ``rank`` not in ``[1, D)``.
    ConfigError
        ``p`` outside ``[1, 2]``, unknown ``method`` / ``select``, ``entrywise`` with the ellipsoid.
    NonFiniteError
        A chunk holds NaN / Inf.

    Warns
    -----
    ConvergenceWarning
        ``max_iter`` was reached before ``tol``.

    Notes
    -----
    The initial pass computes ``AᵀA`` (the SVD solution); for p = 2 both methods stop there, so
    they equal the truncated SVD exactly. The ellipsoid starts from ``{x : ‖Ax‖₂ ≤ 1} ⊇ K`` (valid
    for p ≤ 2). With ``select="best"`` the returned subspace is never worse than the SVD's on the
    ℓp objective. The reported ``relative_error`` is the Frobenius one of the returned factors.

    References
    ----------
    .. [1] M. Tukan, A. Maalouf, M. Weksler, D. Feldman. "Compressed deep networks: goodbye SVD,
       hello robust low-rank approximation". arXiv:2009.05647, 2020.
    .. [2] A. Maalouf, H. Lang, D. Rus, D. Feldman. "Deep learning meets projective clustering".
       ICLR 2021, arXiv:2010.04290 (the same embedding-layer setting, for k subspaces).

    Examples
    --------
    >>> res = lp_lowrank(A, rank=8, p=1.0)            # doctest: +SKIP
    >>> res.basis.shape, res.coefficients.shape       # doctest: +SKIP
    ((64, 8), (100000, 8))
    """
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) or not (
        1.0 <= float(p) <= 2.0
    ):
        raise ConfigError(
            f"p={p!r} is outside [1, 2]; ℓp low-rank approximation here supports 1 <= p <= 2 "
            f"(p=1 most robust, p=2 the SVD)"
        )
    p = float(p)
    if method not in ("irls", "ellipsoid"):
        raise ConfigError(f"method={method!r} is unknown; use 'irls' or 'ellipsoid'")
    if irls_update not in ("eigh", "subspace"):
        raise ConfigError(f"irls_update={irls_update!r} is unknown; use 'eigh' or 'subspace'")
    if isinstance(oversample, bool) or not isinstance(oversample, (int, np.integer)) or (
        oversample < 0
    ):
        raise ConfigError(f"oversample must be an int >= 0, got {oversample!r}")
    if select not in ("best", "final"):
        raise ConfigError(f"select={select!r} is unknown; use 'best' or 'final'")
    if entrywise and method != "irls":
        raise ConfigError(
            "entrywise=True is solved by IRLS only; pass method='irls' (the ellipsoid route is "
            "for the row-wise objective)"
        )
    if not (isinstance(tol, (int, float)) and tol >= 0):
        raise ConfigError(f"tol must be a number >= 0, got {tol!r}")
    if max_iter is None:
        max_iter = 50 if method == "irls" else 100
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ConfigError(f"max_iter must be an int >= 0, got {max_iter!r}")
    x, source, in_memory = prepare_rows(A, "lp_lowrank")
    n, D = (int(s) for s in x.shape)
    k = _check_rank(rank, n, D, source)
    if isinstance(init, np.ndarray):
        if init.shape != (D, k):
            raise InputError(f"init has shape {init.shape}; expected (D, k) = ({D}, {k})")
    elif init != "svd":
        raise ConfigError(f"init={init!r} is unknown; use 'svd' or a D × k array")

    ckpt = as_checkpoint(checkpoint, {
        "method": "lp", "solver": method, "p": p, "rank": k, "entrywise": bool(entrywise),
        "irls_delta": float(irls_delta), "irls_update": irls_update,
        "oversample": int(oversample), "select": select,
        "init": "svd" if isinstance(init, str) else float(np.asarray(init).sum()),
        "shape": [n, D], "dtype": str(x.dtype), "chunks": [list(c_) for c_ in x.chunks],
        "source": source,
    })
    with client_context(client, nbytes=int(x.nbytes)) as c:
        if c is not None and in_memory:
            (x,) = persist(x, client=c)  # ship in-memory data once, not once per pass
        solver = LpSolver(x, source, k, p, c, callback, check_finite, ckpt)
        if method == "ellipsoid":
            # its D × D SVDs / cuts run here, in the client: one BLAS thread (cfact.blas; on a
            # busy 2-core machine the default pools made each 384 × 384 SVD ~5x slower)
            with blas_threads():
                out = solver.ellipsoid(max_iter, tol, select)
        elif entrywise:
            out = solver.entrywise(max_iter, tol, irls_delta, init, select)
        else:
            out = solver.irls(max_iter, tol, irls_delta, init, select, irls_update,
                              int(oversample))
    basis, hist, rel, n_iter, converged, G, extra = out
    if entrywise:
        delta = extra["delta"]
        coef = x.map_blocks(entrywise_coef_block, basis, p, delta, extra["n_inner"],
                            chunks=(x.chunks[0], (k,)), dtype=x.dtype)
    else:
        coef = x.map_blocks(project_block, basis, chunks=(x.chunks[0], (k,)), dtype=x.dtype)
    if not converged and max_iter > 0:
        warnings.warn(
            f"lp_lowrank({method}, p={p}) stopped at max_iter={max_iter} before the relative "
            f"change fell below tol={tol:g} (last objectives {[f'{h:.6g}' for h in hist[-3:]]}); "
            f"raise max_iter or tol",
            ConvergenceWarning,
            stacklevel=2,
        )
    best = extra["objective"]
    return LpLowRankResult(
        basis=basis, coefficients=coef, objective=float(best), objective_history=hist,
        relative_error=float(rel), p=p, method=method, entrywise=bool(entrywise), rank=k,
        n_iter=n_iter, n_passes=solver.passes, converged=bool(converged), ellipsoid=G,
        info={**{k_: v for k_, v in extra.items() if k_ != "objective"},
              "resumed_from": solver.resumed_from},
    )


