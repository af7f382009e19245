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
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import dask.array as da
import numpy as np
import scipy.linalg

from .._runtime.blas import blas_threads
from .._runtime.checks import check_rank
from .._runtime.cluster import client_context, persist
from .._runtime.display import summary_html, summary_repr
from .._runtime.random import SeedLike
from ..errors import ConfigError, ConvergenceWarning, InputError, NonFiniteError
from ._ellipsoid import apply_cuts, g_from_axes, orthogonal_axes
from ._rows import fix_signs, prepare_rows, reduce_rows

__all__ = ["LpLowRankResult", "lp_lowrank", "lp_objective"]

logger = logging.getLogger(__name__)

Method = Literal["irls", "ellipsoid"]


def _check_rank(rank: Any, n: int, D: int, source: str, name: str = "rank") -> int:
    """``1 <= rank < D`` (a low-rank approximation) and ``rank <= n`` (no more than the rows)."""
    rank = check_rank(rank, D, source=f"{source} with D={D} columns", what=name,
                      need="a low-rank approximation")
    return check_rank(rank, n, source=f"{source} with n={n} rows", what=name, inclusive=True,
                      need="a basis of the rows")


def _top_eigvecs(S: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k eigenpairs of a symmetric matrix, descending, with a deterministic sign."""
    S = 0.5 * (S + S.T)
    D = S.shape[0]
    w, V = scipy.linalg.eigh(S, subset_by_index=[D - k, D - 1])
    w, V = w[::-1], V[:, ::-1]
    return w, fix_signs(V)


def _project_block(block: np.ndarray, V: np.ndarray) -> np.ndarray:
    return block @ V.astype(block.dtype, copy=False)


def _lowrank_block(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    return U @ V.T.astype(U.dtype, copy=False)


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
        return U.map_blocks(_lowrank_block, self.basis, chunks=(U.chunks[0], (D,)), dtype=U.dtype)


# ====================================================================== kernels (one per pass)
def _residual_stats(X: np.ndarray, XV: np.ndarray, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared row norms of ``X`` and of the residual ``X − X V Vᵀ`` (V orthonormal).

    ``‖a‖² − ‖Vᵀa‖²`` is used where it is accurate; rows close to the subspace, where that
    difference loses the digits that matter (their IRLS weights are the largest), get the residual
    computed directly. Sums of squares run in the data's precision (all terms positive, relative
    error <= D eps); einsum with a wider ``dtype=`` leaves the vectorised path.
    """
    n2 = np.einsum("ij,ij->i", X, X).astype(np.float64)
    d2 = n2 - np.einsum("ij,ij->i", XV, XV).astype(np.float64)
    cut = 1e-2 if X.dtype.itemsize <= 4 else 1e-6
    near = d2 < cut * n2
    if near.any():
        R = X[near] - XV[near] @ V.T.astype(X.dtype, copy=False)
        d2[near] = np.einsum("ij,ij->i", R, R)
    return n2, np.maximum(d2, 0.0)


def _scatter_kernel(X: np.ndarray) -> np.ndarray:
    S = X.T @ X
    n2 = float(np.einsum("ij,ij->i", X, X).astype(np.float64).sum())
    return np.concatenate([[n2], np.asarray(S, np.float64).ravel()])


def _irls_kernel(X: np.ndarray, V: np.ndarray, p: float, delta: float) -> np.ndarray:
    XV = X @ V.astype(X.dtype, copy=False)
    n2, d2 = _residual_stats(X, XV, V)
    d = np.sqrt(d2)
    obj = float(np.sum(d**p))
    w = np.maximum(d, delta) ** (p - 2.0)
    S = X.T @ (X * w[:, None].astype(X.dtype, copy=False))
    return np.concatenate([[obj, d2.sum(), n2.sum()], np.asarray(S, np.float64).ravel()])


def _irls_subspace_kernel(X: np.ndarray, Q: np.ndarray, k: int, p: float, delta: float
                          ) -> np.ndarray:
    """IRLS weights for the basis ``Q[:, :k]`` and ``S_w Q = Xᵀ(w ⊙ X Q)`` (D × m) instead of the
    D × D scatter: O(n D m) flops per chunk rather than O(n D²)."""
    Z = X @ Q.astype(X.dtype, copy=False)
    n2, d2 = _residual_stats(X, Z[:, :k], Q[:, :k])
    d = np.sqrt(d2)
    obj = float(np.sum(d**p))
    w = np.maximum(d, delta) ** (p - 2.0)
    Y = X.T @ (Z * w[:, None].astype(X.dtype, copy=False))
    return np.concatenate([[obj, d2.sum(), n2.sum()], np.asarray(Y, np.float64).ravel()])


def _eval_kernel(X: np.ndarray, V: np.ndarray, p: float) -> np.ndarray:
    XV = X @ V.astype(X.dtype, copy=False)
    n2, d2 = _residual_stats(X, XV, V)
    return np.array([float(np.sum(np.sqrt(d2) ** p)), d2.sum(), n2.sum()])


_SLAB_ROWS = 2048  # rows per slab of the ellipsoid pass (its n × D temporaries stay in cache)


def _ellipsoid_kernel(X: np.ndarray, Y: np.ndarray, V: np.ndarray, p: float) -> np.ndarray:
    """``‖X y_i‖_p^p`` and the unnormalised gradients ``Xᵀ(sign(X y)|X y|^{p−1})`` for every
    column ``y_i`` of ``Y``, plus the row-wise objective of the subspace ``V``: one read.

    Slab by slab of rows, ``X [Y | V]`` is one GEMM and its float64 sums stay in cache; the
    row-wise statistics of ``V`` come from the same product (no second GEMM against ``V``)."""
    m = Y.shape[1]
    W = np.concatenate([Y, V], axis=1).astype(X.dtype, copy=False)
    Vx = V.astype(X.dtype, copy=False)
    fp = np.zeros(m)
    Gr = np.zeros((X.shape[1], m))
    obj = r2 = n2 = 0.0
    for a in range(0, X.shape[0], _SLAB_ROWS):
        Xs = X[a : a + _SLAB_ROWS]
        ZW = Xs @ W
        Z = ZW[:, :m]
        aZ = np.abs(Z).astype(np.float64)
        if p == 1.0:
            fp += aZ.sum(axis=0)
            Gz = np.sign(Z)
        else:
            fp += np.sum(aZ**p, axis=0)
            Gz = np.sign(Z) * np.abs(Z) ** (p - 1.0)
        Gr += Xs.T @ Gz.astype(X.dtype, copy=False)
        sn2, sd2 = _residual_stats(Xs, ZW[:, m:], Vx)
        obj += float(np.sum(np.sqrt(sd2) ** p))
        r2 += float(sd2.sum())
        n2 += float(sn2.sum())
    return np.concatenate([fp, Gr.ravel(), [obj, r2, n2]])


def _robust_rows(X: np.ndarray, V: np.ndarray, p: float, delta: float, n_inner: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Entrywise ℓp fit of every row on the basis ``V``: ``u_i = argmin Σ_j |a_ij − u_i·v_j|^p``
    by a few IRLS steps from the least-squares fit. Returns ``U`` (n × k) and the weights."""
    X = np.asarray(X, np.float64)
    V = np.asarray(V, np.float64)
    k = V.shape[1]
    U = X @ V @ np.linalg.pinv(V.T @ V)
    w = np.ones_like(X)
    ridge = 1e-10 * np.eye(k)
    for _ in range(n_inner):
        R = X - U @ V.T
        w = np.maximum(np.abs(R), delta) ** (p - 2.0)
        M = np.einsum("nd,dk,dl->nkl", w, V, V, optimize=True) + ridge
        b = (w * X) @ V
        U = np.linalg.solve(M, b[..., None])[..., 0]
    R = X - U @ V.T
    w = np.maximum(np.abs(R), delta) ** (p - 2.0)
    return U, w


def _entrywise_kernel(X: np.ndarray, V: np.ndarray, p: float, delta: float, n_inner: int
                      ) -> np.ndarray:
    U, w = _robust_rows(X, V, p, delta, n_inner)
    Xd = np.asarray(X, np.float64)
    R = Xd - U @ V.T
    obj = float(np.sum(np.abs(R) ** p))
    N = np.einsum("nd,nk,nl->dkl", w, U, U, optimize=True)
    b = np.einsum("nd,nk->dk", w * Xd, U, optimize=True)
    return np.concatenate([[obj, float(np.sum(R * R)), float(np.sum(Xd * Xd))], N.ravel(),
                           b.ravel()])


def _entrywise_coef_block(X: np.ndarray, V: np.ndarray, p: float, delta: float, n_inner: int
                          ) -> np.ndarray:
    return _robust_rows(X, V, p, delta, n_inner)[0].astype(X.dtype, copy=False)


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
        out = reduce_rows(x, _eval_kernel, (Q, float(p)), c, check_finite=True, source=source)
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

    Returns
    -------
    LpLowRankResult

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

    with client_context(client, nbytes=int(x.nbytes)) as c:
        if c is not None and in_memory:
            (x,) = persist(x, client=c)  # ship in-memory data once, not once per pass
        solver = _Solver(x, source, k, p, c, callback, check_finite)
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
        coef = x.map_blocks(_entrywise_coef_block, basis, p, delta, extra["n_inner"],
                            chunks=(x.chunks[0], (k,)), dtype=x.dtype)
    else:
        coef = x.map_blocks(_project_block, basis, chunks=(x.chunks[0], (k,)), dtype=x.dtype)
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
        info={k_: v for k_, v in extra.items() if k_ != "objective"},
    )


class _Solver:
    """The pass loop shared by the solvers (state kept on the client, data read per pass)."""

    def __init__(self, x: da.Array, source: str, k: int, p: float, client: Any,
                 callback: Callable[[dict[str, Any]], bool | None] | None,
                 check_finite: bool) -> None:
        self.x, self.source, self.k, self.p, self.client = x, source, k, p, client
        self.callback = callback
        self.check_finite = check_finite
        self.passes = 0
        self.n, self.D = (int(s) for s in x.shape)

    def reduce(self, func: Callable[..., np.ndarray], *args: Any) -> np.ndarray:
        first = self.passes == 0
        out = reduce_rows(self.x, func, args, self.client,
                          check_finite=first and self.check_finite, source=self.source)
        self.passes += 1
        if not np.all(np.isfinite(out)):
            raise NonFiniteError(
                f"a pass over {self.source} produced non-finite sums (overflow); rescale the data "
                f"or convert it to float64"
            )
        return out

    def notify(self, it: int, obj: float, basis: np.ndarray, t0: float) -> bool:
        dt = time.perf_counter() - t0
        logger.debug("lp_lowrank pass %d: objective %.6g (%.2fs)", it, obj, dt)
        if self.callback is None:
            return False
        return bool(self.callback({"iteration": it, "objective": obj, "basis": basis,
                                   "seconds": dt}))

    def svd_pass(self) -> tuple[np.ndarray, float]:
        """``AᵀA`` and ``‖A‖_F²`` in one pass (the p = 2 solution and the IRLS start)."""
        out = self.reduce(_scatter_kernel)
        return out[1:].reshape(self.D, self.D), float(out[0])

    # ------------------------------------------------------------------ IRLS (row-wise)
    def irls(self, max_iter: int, tol: float, rel_delta: float, init: Any, select: str,
             update: str = "eigh", oversample: int = 32):
        k, p, D = self.k, self.p, self.D
        t0 = time.perf_counter()
        m = min(D, k + oversample)
        Q: np.ndarray | None = None
        if isinstance(init, np.ndarray):
            V = fix_signs(np.linalg.qr(np.asarray(init, np.float64))[0])
            n2 = None
            if update == "subspace":
                # pad the start with directions orthogonal to it (deterministic)
                Q = np.linalg.qr(np.concatenate([V, np.eye(D)[:, : m - k]], axis=1))[0]
                Q[:, :k] = V
        else:
            S, n2 = self.svd_pass()
            w, V = _top_eigvecs(S, k)
            if update == "subspace":
                Q = _top_eigvecs(S, m)[1]
                V = Q[:, :k]
            if p == 2.0:
                d2 = max(float(np.trace(S) - w.sum()), 0.0)
                self.notify(0, d2, V, t0)
                rel = math.sqrt(d2 / n2) if n2 > 0 else 0.0
                return V, [d2], rel, 0, True, None, {"objective": d2, "delta": 0.0}
        if n2 is None:
            n2 = float(self.reduce(_eval_kernel, V, p)[2])
        delta = rel_delta * math.sqrt(max(n2, 1e-300) / self.n)
        hist: list[float] = []
        best = (math.inf, V, 0.0)
        converged = False
        it = 0
        for it in range(1, max_iter + 1):
            t0 = time.perf_counter()
            if Q is None:
                out = self.reduce(_irls_kernel, V, p, delta)
            else:
                out = self.reduce(_irls_subspace_kernel, Q, k, p, delta)
            best, converged = self._record(it, out, V, t0, hist, best, select, tol)
            if converged:
                break
            if Q is None:
                S = out[3:].reshape(self.D, self.D)
                _, V = _top_eigvecs(S, k)
            else:
                V, Q = _ritz_step(Q, out[3:].reshape(self.D, Q.shape[1]), k)
        obj, V, rel = best
        return V, hist, rel, it, converged or max_iter == 0, None, {
            "objective": obj, "delta": delta, "update": update}

    def _record(self, it: int, out: np.ndarray, V: np.ndarray, t0: float, hist: list[float],
                best: tuple[float, np.ndarray, float], select: str, tol: float
                ) -> tuple[tuple[float, np.ndarray, float], bool]:
        """Book-keeping of one IRLS iteration from its reduced ``out = (objective, residual²,
        norm², ...)``: history, best iterate (or the last, ``select="final"``), progress
        callback; returns ``(best, stop)`` where ``stop`` is convergence (relative change of
        the objective ≤ ``tol``) or the callback asking to stop."""
        obj, r2, n2 = float(out[0]), float(out[1]), float(out[2])
        hist.append(obj)
        rel = math.sqrt(r2 / n2) if n2 > 0 else 0.0
        if obj < best[0] or select == "final":
            best = (obj, V, rel)
        stop = self.notify(it, obj, V, t0)
        if len(hist) > 1 and abs(hist[-2] - obj) <= tol * max(abs(hist[-2]), 1e-300):
            return best, True
        return best, bool(stop)

    # ------------------------------------------------------------------ IRLS (entrywise)
    def entrywise(self, max_iter: int, tol: float, rel_delta: float, init: Any, select: str):
        k, p, D = self.k, self.p, self.D
        n_inner = 3
        if isinstance(init, np.ndarray):
            V = np.linalg.qr(np.asarray(init, np.float64))[0]
            n2 = float(self.reduce(_eval_kernel, V, 2.0)[2])
        else:
            S, n2 = self.svd_pass()
            _, V = _top_eigvecs(S, k)
        delta = rel_delta * math.sqrt(max(n2, 1e-300) / (self.n * D))
        hist: list[float] = []
        best = (math.inf, V, 0.0)
        converged = False
        it = 0
        for it in range(1, max_iter + 1):
            t0 = time.perf_counter()
            out = self.reduce(_entrywise_kernel, V, p, delta, n_inner)
            best, converged = self._record(it, out, V, t0, hist, best, select, tol)
            if converged:
                break
            N = out[3 : 3 + D * k * k].reshape(D, k, k)
            b = out[3 + D * k * k :].reshape(D, k)
            ridge = 1e-12 * max(float(np.trace(N.sum(0))), 1e-300) / k * np.eye(k)
            Vn = np.linalg.solve(N + ridge, b[..., None])[..., 0]
            V = fix_signs(np.linalg.qr(Vn)[0])
        obj, V, rel = best
        return V, hist, rel, it, converged or max_iter == 0, None, {
            "objective": obj, "delta": delta, "n_inner": n_inner}

    # ------------------------------------------------------------------ Löwner ellipsoid
    def ellipsoid(self, max_iter: int, tol: float, select: str):
        k, p, D = self.k, self.p, self.D
        t0 = time.perf_counter()
        S, n2 = self.svd_pass()
        S = 0.5 * (S + S.T)
        lam, U = scipy.linalg.eigh(S)
        lam = lam[::-1]
        U = U[:, ::-1]
        # E0 = {x : ‖Ax‖₂ ≤ 1} ⊇ K for p ≤ 2; ridge keeps it bounded for rank-deficient A
        ridge = max(lam[0], 1e-300) * 1e-12
        s = 1.0 / np.sqrt(np.maximum(lam, 0.0) + ridge)  # semi-axes, ascending
        Lax = U * s  # columns: the axis vectors of E (E = {L z : ‖z‖ ≤ 1})
        V0 = fix_signs(U[:, :k].copy())
        d2 = max(float(np.sum(lam) - np.sum(lam[:k])), 0.0)
        rel0 = math.sqrt(d2 / n2) if n2 > 0 else 0.0
        beta = 1.0 / math.sqrt(D + 1.0)
        hist: list[float] = []
        logvol = [float(np.sum(np.log(s)))]
        best: tuple[float, np.ndarray, float, np.ndarray] = (math.inf, V0, rel0, Lax)
        converged = False
        it = 0
        n_cuts_total = 0
        certified = False
        if p == 2.0:
            # K is E0 itself: no axis point can violate; the answer is the SVD
            self.notify(0, d2, V0, t0)
            return V0, [d2], rel0, 0, True, g_from_axes(Lax), {
                "objective": d2, "cuts": 0, "logvol": logvol, "certified": True}
        Lax, s = orthogonal_axes(Lax)
        for it in range(1, max_iter + 1):
            t0 = time.perf_counter()
            # Lax holds E's orthogonal semi-axes (set before the loop and after every cut)
            order = np.argsort(s)  # shortest axes first: the candidate top-k of G
            V = fix_signs(Lax[:, order[:k]] / s[order[:k]])
            out = self.reduce(_ellipsoid_kernel, Lax, V, p)
            fp = out[:D]
            Gr = out[D : D + D * D].reshape(D, D)
            obj, dd2, nn2 = (float(v) for v in out[D + D * D :])
            hist.append(obj)
            rel = math.sqrt(dd2 / nn2) if nn2 > 0 else 0.0
            if obj < best[0] or select == "final":
                best = (obj, V, rel, Lax.copy())
            stop = self.notify(it, obj, V, t0)
            f = fp ** (1.0 / p)  # ‖A axis_i‖_p
            if not np.any(beta * f > 1.0 + 1e-12):
                converged = certified = True  # E/√(D(D+1)) ⊆ K ⊆ E
                break
            # every gradient gives a valid slab K ⊆ {|gᵀx| ≤ 1}: apply each one deep enough to
            # shrink the volume, most violated axis first (same pass, no extra read)
            Gs = Gr / np.maximum(f, 1e-300)[None, :] ** (p - 1.0)
            Lax, n_cuts = apply_cuts(Lax, Gs, np.argsort(-f), D)
            n_cuts_total += n_cuts
            Lax, s = orthogonal_axes(Lax)
            logvol.append(float(np.sum(np.log(s))))
            if stop or n_cuts == 0:
                converged = True
                break
            if abs(logvol[-2] - logvol[-1]) <= tol * max(abs(logvol[-2]), 1.0):
                converged = True
                break
        obj, V, rel, Lbest = best
        return V, hist, rel, it, converged or max_iter == 0, g_from_axes(Lbest), {
            "objective": obj, "cuts": n_cuts_total, "logvol": logvol, "certified": certified}


def _ritz_step(Q: np.ndarray, Y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One block power step with Rayleigh–Ritz for the top-k eigenvectors of ``S`` given
    ``Y = S Q``: the Ritz vectors of ``QᵀSQ`` become the new basis, and the next search space
    adds the dominant part of ``Y`` outside them (the power / Krylov direction)."""
    m = Q.shape[1]
    T = Q.T @ Y
    T = 0.5 * (T + T.T)
    _, U = scipy.linalg.eigh(T)
    V = fix_signs(Q @ U[:, ::-1][:, :k])
    V = np.linalg.qr(V)[0] * np.sign(np.diag(np.linalg.qr(V)[1]))[None, :]
    V = fix_signs(V)
    R = Y - V @ (V.T @ Y)
    R = R - V @ (V.T @ R)  # second Gram–Schmidt sweep for orthogonality
    Ur, _, _ = np.linalg.svd(R, full_matrices=False)
    Qn = np.concatenate([V, Ur[:, : m - k]], axis=1)
    Qn = np.linalg.qr(Qn)[0]
    Qn[:, :k] = V  # keep the basis itself as the first k columns (it defines the weights)
    return V, Qn
