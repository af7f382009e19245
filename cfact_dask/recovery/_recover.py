"""Recover the high-dimensional factor ``W`` (n x r) from its compression ``W̃ = P W`` (d x r).

Methods
-------
``nnlasso`` / ``lasso``
    (Nonnegative) LASSO by FISTA with function-value restart, matrix-free: every iteration is one
    pass over the row blocks of ``W`` in which each task regenerates its columns of ``P`` from the
    operator spec and computes both ``P_bᵀ G`` and ``P_b x_b``; only d x r partials travel to the
    client. A small ``W`` (``cfact.recover.local-max-bytes``) runs the same block kernels, with the
    same order of the partial sums, in this process on numpy blocks: no scheduling per iteration,
    the same numbers. All r columns at once, each with its own λ. λ is set from the noise level of
    the fit (a scaled-LASSO step: a first solve at ``λ = α₀ λ_max``, the residual of the
    least-squares debias on its support estimates σ, then λ₀ = σ √(2 log n) ‖P_col‖); given a
    held-out sketch, λ ∈ {2, 1, 0.5} x λ₀ is chosen by the smallest held-out error estimate (largest
    first, stopping once it rises, or once it is over 10x what the certificate accepts, 2x under
    the pipeline's ``recover: auto``: a gap no smaller λ closes). Each LASSO solve is followed
    by one round of reweighted ℓ1 [8] (fewer false positives near the phase transition).
    Optional debias: least squares (nonnegative for ``nnlasso``) on the found support, with the
    support's columns of ``P`` gathered (they are few: the support is sparse) and kept sparse:
    Cholesky of the normal equations, and for the NNLS an exact shortcut (a nonnegative
    least-squares solution is the NNLS solution) or a KKT-certified active set; scipy's
    ``nnls`` / numpy's ``lstsq`` where the solution may not be unique.
``bp``
    Basis pursuit ``min ‖x‖₁ s.t. P x = y`` after projecting ``y`` onto range(P), by HiGHS; the
    authors' method (negatives clamped after for NMF). Moderate n only.
``omp``
    Orthogonal matching pursuit with known sparsity ``k``: one pass over ``P`` per atom.
``lstsq-data``
    One extra pass over the data: ``W = argmin ‖M − W H‖`` (row-wise NNLS when nonnegative),
    exact, with the exact reconstruction error computed in the same pass. The reference.

Each method is a :class:`RecoveryMethod` of :data:`RECOVERY_METHODS`; :func:`recover` checks
the inputs, chooses where the work runs (in this process for a small ``W``) and calls the
method's ``solve`` with a :class:`RecoveryProblem`. A new method is one module plus one entry
there: ``recover``, ``cfact recover --method``, the job schema and the planner read the registry.

Every recovery carries a :class:`Certificate`: the fit residual ``‖P Ŵ − W̃‖/‖W̃‖`` and, given a
held-out sketch ``(Q M, Q)`` taken in the same pass as the sketch (an independent Gaussian ``Q``
the factorization never saw), an estimate of ``‖M − Ŵ H‖/‖M‖`` and of the best error any ``W``
could reach with this ``H``. When the estimate is much worse than that baseline, or the recovered
columns are too dense for the compression, a :class:`~cfact_dask.errors.RecoveryWarning` says so
with the figures and the fix. The held-out estimate, when there is one, decides the verdict
(``ok``); the density of the recovered columns is then only a note (it decides without one).

References
----------
.. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization: fast and accurate
   low-rank factorization of compressively-sensed data". ICML 2019, arXiv:1706.08146.
.. [2] A. Beck, M. Teboulle. "A fast iterative shrinkage-thresholding algorithm for linear
   inverse problems". SIAM J. Imaging Sci. 2(1), 2009.
.. [3] B. O'Donoghue, E. Candès. "Adaptive restart for accelerated gradient schemes". Found.
   Comput. Math. 15, 2015.
.. [4] T. Sun, C.-H. Zhang. "Scaled sparse linear regression". Biometrika 99(4), 2012.
.. [5] R. Berinde, A. C. Gilbert, P. Indyk, H. Karloff, M. J. Strauss. "Combining geometry and
   combinatorics: a unified approach to sparse signal recovery". Allerton 2008.
.. [6] J. A. Tropp, A. C. Gilbert. "Signal recovery from random measurements via orthogonal
   matching pursuit". IEEE Trans. Inf. Theory 53(12), 2007.
.. [7] W. B. Johnson, J. Lindenstrauss. "Extensions of Lipschitz mappings into a Hilbert space".
   Contemp. Math. 26, 1984 (the held-out estimate is a JL projection of the residual).
.. [8] E. J. Candès, M. B. Wakin, S. P. Boyd. "Enhancing sparsity by reweighted ℓ1
   minimization". J. Fourier Anal. Appl. 14(5-6), 2008.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import dask.array as da
import numpy as np

from .. import config
from .._runtime import cluster
from .._runtime.cluster import client_context, detach
from .._runtime.display import SKIP, summary_html, summary_repr
from .._runtime.registry import Registry
from ..errors import InputError, RecoveryWarning
from ..sketching.operators import SketchOperator
from ._blocks import Blocks, local_threads
from .bp import basis_pursuit
from .certificate import Certificate, certify, holdout_inputs
from .exact import lstsq_data
from .lasso import solve_lasso
from .omp import solve_omp

__all__ = [
    "METHODS", "RECOVERY_METHODS", "Recovery", "RecoveryMethod", "RecoveryProblem",
    "RecoverySolution", "load_recovery", "recover", "save_recovery",
]

Method = Literal["nnlasso", "lasso", "bp", "omp", "lstsq-data"]


# ---------------------------------------------------------------------- the method registry
@dataclass(frozen=True)
class RecoveryProblem:
    """What :func:`recover` hands a method's ``solve``: the checked inputs and options.

    Attributes
    ----------
    Wt : ndarray (d, r) or None
        ``W̃ = P W`` (None only for a method that reads the data, called without it).
    H : ndarray (r, m) or None
        The factorization's ``H``, if known.
    operator : SketchOperator or None
        The sketch's ``P``.
    blocks : Blocks or None
        Row blocks of ``W`` (aligned to the operator's tiles) and the scheduler running their
        tasks, in process for a small ``W``; None for a method that reads the data.
    nonnegative : bool
        Constrain ``W ≥ 0``.
    lam, debias, reweight, max_iter, tol, sparsity, callback
        The options of :func:`recover`.
    data : InputArray or None
        The original data, opened (methods that read it).
    holdout : (Q M, Q) or None
        The held-out sketch (``Q M`` in memory for an in-process recovery).
    client : distributed.Client or None
        Where the work runs (None: dask's local scheduler, or in process).
    chunks : int, sequence or None
        The requested row chunks of ``W``.
    refine : int
        Rounds of alternating refinement against the data (``lstsq-data``).
    """

    Wt: np.ndarray | None
    H: np.ndarray | None
    operator: SketchOperator | None
    blocks: Blocks | None
    nonnegative: bool
    lam: Any = "auto"
    debias: bool = True
    reweight: int | None = None
    max_iter: int = 500
    tol: float = 1e-4
    sparsity: int | None = None
    callback: Callable[[dict[str, Any]], bool | None] | None = None
    data: Any = None
    holdout: Any = None
    client: Any = None
    chunks: Any = None
    refine: int = 0


@dataclass
class RecoverySolution:
    """What a method's ``solve`` returns.

    Attributes
    ----------
    W : list, ndarray or dask.array.Array
        The recovered ``W``: its row blocks (one per ``problem.blocks.ranges``, as
        :meth:`Blocks.persist` returns them), or the whole n x r array.
    PW : ndarray or None
        ``P Ŵ`` when the method knows it (else computed with the certificate).
    lam : ndarray or None
        λ per column (LASSO methods).
    support_sizes : ndarray or None
        Nonzeros per column when the method knows them (else counted).
    n_iter : int
        Iterations or atoms.
    history : dict
        Per-iteration records (``objective``, ``rel_change``).
    params : dict
        What the method chose, recorded in :attr:`Recovery.params` (e.g. the λ path).
    exact_error : float or None
        ``‖M − Ŵ H‖/‖M‖`` computed exactly (methods that read the data).
    H : ndarray or None
        A refitted ``H`` that goes with ``W`` (``lstsq-data`` with ``refine``), else None: the
        problem's ``H`` stands.
    """

    W: Any
    PW: np.ndarray | None = None
    lam: np.ndarray | None = None
    support_sizes: np.ndarray | None = None
    n_iter: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    exact_error: float | None = None
    H: np.ndarray | None = None


@dataclass(frozen=True)
class RecoveryMethod:
    """One entry of :data:`RECOVERY_METHODS`.

    Attributes
    ----------
    name : str
        What ``recover(method=...)``, ``cfact recover --method`` and the job file's
        ``recover.method`` take.
    solve : callable
        ``solve(RecoveryProblem) -> RecoverySolution``.
    help : str
        One line for ``--help`` and the docs.
    nonnegative : bool or None
        True: the method is the nonnegative one (``W ≥ 0`` unless ``nonnegative=False`` is
        passed, which selects ``counterpart``); False: the signed one; None: ``W ≥ 0`` when
        ``W̃`` and ``H`` are both nonnegative (an NMF result).
    reads_data : bool
        One extra pass over the original data (needs ``data=`` and ``H``; the planner counts the
        pass); the recovery is then exact given ``H``.
    counterpart : str, optional
        The method ``nonnegative=`` switches to when it contradicts ``nonnegative``
        (``lasso`` <-> ``nnlasso``).
    """

    name: str
    solve: Callable[[RecoveryProblem], RecoverySolution]
    help: str = ""
    nonnegative: bool | None = None
    reads_data: bool = False
    counterpart: str | None = None


#: the recovery methods, by name: ``recover``, the CLI's ``--method`` choices, the job schema
#: and the planner read it, so a method registered here is accepted everywhere
RECOVERY_METHODS: Registry[RecoveryMethod] = Registry("recovery method")


class _Names(Sequence[str]):
    """A live, read-only tuple-like view of the registered names (what :data:`METHODS` was)."""

    def __init__(self, registry: Registry[Any]) -> None:
        self._registry = registry

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[str, ...]: ...
    def __getitem__(self, i: int | slice) -> str | tuple[str, ...]:
        return self._registry.names()[i]

    def __len__(self) -> int:
        return len(self._registry)

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry.names())

    def __contains__(self, name: object) -> bool:
        return name in self._registry

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (tuple, list, _Names)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __add__(self, other: Sequence[str]) -> tuple[str, ...]:
        return tuple(self) + tuple(other)

    def __repr__(self) -> str:
        return repr(self._registry.names())


#: the names of :data:`RECOVERY_METHODS` (a live view: registered methods appear in it)
METHODS: Sequence[str] = _Names(RECOVERY_METHODS)


# ---------------------------------------------------------------------- the result
@dataclass(frozen=True)
class Recovery:
    """A recovered factor with its certificate.

    Attributes
    ----------
    W : dask.array.Array
        n x r, chunked along the features, persisted.
    H : ndarray or None
        The r x m factor it goes with (from the factorization result), if known.
    method : str
    certificate : Certificate
    lam : ndarray or None
        λ per column (LASSO methods).
    n_iter_ : int
        Iterations (FISTA) or atoms (OMP) used.
    history : dict
        ``objective`` and ``rel_change`` per FISTA iteration.
    params : dict
        The options of the call and what the method chose (e.g. ``lam_path``).
    reconstruction_err_ : float or None
        The certificate's estimate of ``‖M − Ŵ H‖/‖M‖`` (exact for ``lstsq-data``, else from the
        held-out sketch; None without one).
    """

    W: da.Array
    H: np.ndarray | None
    method: str
    certificate: Certificate
    lam: np.ndarray | None = None
    n_iter_: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def _summary(self) -> tuple[str, list[tuple[str, Any]]]:
        c = self.certificate
        lam = None if self.lam is None else np.asarray(self.lam, dtype=float)
        return "cfact Recovery", [
            ("W", self.W), ("method", self.method), ("iterations", self.n_iter_),
            ("certificate", "ok" if c.ok else "NOT OK"),
            ("relative error (exact)" if c.exact_error is not None
             else "estimated relative error (held-out)", c.estimated_error),
            ("best reachable with this H (held-out)",
             c.holdout_baseline if c.exact_error is None else SKIP),
            ("sketch fit residual", c.fit_residual if c.fit_residual is not None else SKIP),
            ("lambda", SKIP if lam is None or lam.size == 0 else
             f"{lam.min():.3g}..{lam.max():.3g} over {lam.size} columns"),
            ("H and W refitted against the data", _refined_text(self.params)),
            ("problem", c.messages[0] if c.messages else SKIP),
        ]

    # short summaries for the terminal and notebooks (not the arrays: see _runtime.display)
    __repr__ = summary_repr
    _repr_html_ = summary_html

    @property
    def reconstruction_err_(self) -> float | None:
        """The certificate's estimate of ``‖M − Ŵ H‖/‖M‖`` (exact, else held-out, else None)."""
        return self.certificate.estimated_error

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.W.shape)  # type: ignore[return-value]

    def compute(self) -> np.ndarray:
        """``W`` in memory (n x r): only for n that fits on the client."""
        return np.asarray(self.W.compute())

    def to_zarr(self, store: str | os.PathLike, group: str = "recovered", *,
                overwrite: bool = False, upstream: Mapping[str, Any] | None = None,
                labels: Any = None) -> str:
        """Write ``W`` and the certificate to ``store/group``; see :func:`save_recovery`."""
        return save_recovery(store, self, overwrite=overwrite, upstream=upstream, group=group,
                             labels=labels)

    @classmethod
    def from_zarr(cls, store: str | os.PathLike, group: str = "recovered", *,
                  H: Any = None) -> Recovery:
        """Open a recovery written by :meth:`to_zarr` (``W`` lazy); see :func:`load_recovery`.

        ``H`` (r x m) is the factors group's: pass it to have it on the result. A recovery
        refined against the data (``lstsq-data`` with ``refine``) stores its own refitted ``H``,
        which is returned instead.
        """
        from .._runtime.outputs import open_complete_group, store_path
        from ..io import checked_dask, checked_numpy

        path = store_path(store)
        g, meta = open_complete_group(path, group, "recovered", fix="run recover (again)")
        cert_d = dict(meta["certificate"])
        for k in ("fit_residual_per_column", "support_sizes", "effective_support"):
            if cert_d.get(k) is not None:
                cert_d[k] = np.asarray(cert_d[k])
        cert_d["messages"] = tuple(cert_d.get("messages", ()))
        W = checked_dask(g["W"], f"{path}/{group}/W")  # a corrupt chunk is a ChunkError naming it
        params: dict[str, Any] = {}
        if "H" in g:  # refitted with W against the data: the pair goes together
            H = checked_numpy(g["H"], f"{path}/{group}/H")
            params["refined"] = meta.get("refined")
        return cls(W=W, H=None if H is None else np.asarray(H), method=meta["method"],
                   certificate=Certificate(**cert_d), n_iter_=int(meta.get("n_iter", 0)),
                   params=params)


def _refined_text(params: Mapping[str, Any] | None) -> Any:
    """The refinement's rounds and errors for a summary line (``SKIP`` without one)."""
    ref = (params or {}).get("refined")
    if not ref:
        return SKIP
    errs = ref["errors"]
    where = "in memory" if ref.get("in_memory") else f"{ref['passes']} pass(es)"
    return f"{ref['rounds']} round(s) {where}: relative error {errs[0]:.4g} -> {errs[-1]:.4g}"


def save_recovery(store: str | os.PathLike, rec: Recovery, *, overwrite: bool = False,
                  upstream: Mapping[str, Any] | None = None, group: str = "recovered",
                  labels: Any = None) -> str:
    """Write a :class:`Recovery` to ``store/group`` under the output policy.

    The target is checked first, the group staged under a temporary name and marked complete
    last; downstream groups of a replaced one are removed (see
    :func:`~cfact_dask._runtime.resultstore.write_result`). ``W`` is written blockwise from the
    workers, chunked along the features, with the input's feature dimension and coordinates
    (``labels``); the attributes hold the method, the certificate and the iterations.

    Parameters
    ----------
    store : str or path
    rec : Recovery
    overwrite : bool
        Replace a finished recovered group (only one cfact wrote).
    upstream : mapping, optional
        Group ids the recovery was computed from (factors, sketch, holdout).
    group : str
    labels : Labels, optional
        The input's labels (feature dimension name and coordinates).

    Returns
    -------
    str
        The location written.
    """
    from .._runtime.labels import COMPONENT, Labels
    from .._runtime.resultstore import write_result

    W = rec.W if isinstance(rec.W, da.Array) else da.asarray(rec.W)
    refined = (rec.params or {}).get("refined")
    H = rec.H if refined and rec.H is not None else None
    lab = (labels or Labels()).sized(int(W.shape[0]), None if H is None else int(H.shape[1]))
    attrs = {"type": "recovered", "method": rec.method, "certificate": rec.certificate.to_dict(),
             "n_iter": int(rec.n_iter_)}
    arrays, dims = {"W": W}, {"W": (lab.feature_dim, COMPONENT)}
    coords = dict(lab.along(lab.feature_dim))
    if H is not None:
        # the H refitted with W against the data (lstsq-data's refine): it replaces the
        # factors group's H for this W, so it is stored beside it
        arrays["H"], dims["H"] = np.asarray(H), (COMPONENT, lab.sample_dim)
        coords.update(lab.along(lab.sample_dim))
        attrs["refined"] = refined
    return write_result(
        store, group, arrays, attrs, overwrite=overwrite, dims=dims, coords=coords,
        upstream=upstream, chunk_axis={"W": 0}, what="recovered output",
    )


def load_recovery(store: str | os.PathLike, res: Any = None, group: str = "recovered") -> Recovery:
    """Open the recovery at ``store/group`` (``W`` lazy, read through the checked reader).

    Refuses a missing, incomplete or stale group (computed from an older factors group) with
    the fix. ``res``: the factorization result whose ``H`` goes with it, or None.
    """
    return Recovery.from_zarr(store, group, H=None if res is None else res.H)


# ---------------------------------------------------------------------- the methods
def _solve_lasso(p: RecoveryProblem) -> RecoverySolution:
    assert p.blocks is not None and p.Wt is not None and p.operator is not None
    ho = None
    if p.holdout is not None and p.H is not None and isinstance(p.lam, str):
        ho = holdout_inputs(p.holdout, p.H, p.operator.n_features, p.client)
    xs, PW, lam_vec, sizes, n_iter, hist, info = solve_lasso(
        p.blocks, p.Wt, p.nonnegative, p.lam, p.debias, p.max_iter, p.tol, p.callback,
        p.reweight, ho,
    )
    return RecoverySolution(W=xs, PW=PW, lam=lam_vec, support_sizes=sizes, n_iter=n_iter,
                            history=hist, params=info)


def _solve_omp(p: RecoveryProblem) -> RecoverySolution:
    assert p.blocks is not None and p.Wt is not None
    if p.sparsity is None or int(p.sparsity) < 1:
        raise InputError(
            "method='omp' needs sparsity=k (nonzeros per column); without it use "
            "method='nnlasso'"
        )
    xs, PW, n_iter = solve_omp(p.blocks, p.Wt, int(p.sparsity), p.nonnegative, 1e-10)
    return RecoverySolution(W=xs, PW=PW, n_iter=n_iter)


def _solve_bp(p: RecoveryProblem) -> RecoverySolution:
    assert p.operator is not None and p.Wt is not None
    return RecoverySolution(W=basis_pursuit(p.operator, p.Wt, p.nonnegative))


def _solve_lstsq_data(p: RecoveryProblem) -> RecoverySolution:
    assert p.H is not None
    W, exact, H, record = lstsq_data(p.data, p.H, p.nonnegative, p.client, p.chunks,
                                     refine=p.refine)
    return RecoverySolution(W=W, exact_error=exact, H=H,
                            params={"refined": record} if record else {})


for _m in (
    RecoveryMethod("nnlasso", _solve_lasso, nonnegative=True, counterpart="lasso",
                   help="nonnegative LASSO by FISTA (λ from the noise level; any n)"),
    RecoveryMethod("lasso", _solve_lasso, nonnegative=False, counterpart="nnlasso",
                   help="signed LASSO by FISTA (λ from the noise level; any n)"),
    RecoveryMethod("bp", _solve_bp,
                   help="basis pursuit by HiGHS, the paper's method (moderate n)"),
    RecoveryMethod("omp", _solve_omp,
                   help="orthogonal matching pursuit with known sparsity k (--sparsity)"),
    RecoveryMethod("lstsq-data", _solve_lstsq_data, reads_data=True,
                   help="exact least squares against the data (one extra pass; --data)"),
):
    RECOVERY_METHODS.register(_m.name, _m)
del _m


def _rows_to_array(blocks: Blocks, X: np.ndarray, r: int) -> da.Array:
    """An in-memory n x r ``W`` as the blocks' persisted array."""
    xs = blocks.persist([blocks.task(np.array)(X[a:b]) for a, b in blocks.ranges])
    return blocks.to_array(xs, r)


# ---------------------------------------------------------------------- the entry point
def _unpack(result_or_Wtilde: Any, H: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    Wt = result_or_Wtilde
    if Wt is not None and hasattr(Wt, "W") and hasattr(Wt, "H"):
        if H is None:
            H = Wt.H
        Wt = Wt.W
    if Wt is not None:
        Wt = np.asarray(Wt.compute() if hasattr(Wt, "compute") else Wt, dtype=np.float64)
        if Wt.ndim == 1:
            Wt = Wt[:, None]
    if H is not None:
        H = np.asarray(H.compute() if hasattr(H, "compute") else H, dtype=np.float64)
        if H.ndim == 1:
            H = H[None, :]
    return Wt, H


def recover(
    result_or_Wtilde: Any,
    operator: SketchOperator | None,
    method: Method | str = "nnlasso",
    *,
    lam: float | Sequence[float] | Literal["auto"] = "auto",
    debias: bool = True,
    reweight: int | None = None,
    max_iter: int = 500,
    tol: float = 1e-4,
    sparsity: int | None = None,
    data: Any = None,
    H: Any = None,
    nonnegative: bool | None = None,
    holdout: tuple[Any, SketchOperator] | None = None,
    chunks: int | Sequence[int] | None = None,
    callback: Callable[[dict[str, Any]], bool | None] | None = None,
    client: Any = None,
    refine: int = 0,
) -> Recovery:
    """Recover ``W`` (n x r) from ``W̃ = P W`` (d x r), with a certificate.

    Parameters
    ----------
    result_or_Wtilde : ndarray (d, r) or factorization result
        ``W̃``, or any object with ``.W`` (d x r) and ``.H`` (r x m), e.g. the result of
        :func:`cfact_dask.nmf` on a sketch. May be None for ``lstsq-data`` with ``H=``.
    operator : SketchOperator
        The sketch's ``P`` (``sketch.operator``). Optional for ``lstsq-data``.
    method : {"nnlasso", "lasso", "bp", "omp", "lstsq-data"} or a registered name
        See the module docstring. ``nnlasso`` (default) scales to any n; ``bp`` is the paper's
        choice for moderate n; ``omp`` needs ``sparsity``; ``lstsq-data`` needs ``data``.
        Further methods are added to :data:`RECOVERY_METHODS`.
    lam : "auto", float or sequence of floats
        LASSO penalty, per column or shared. ``"auto"`` estimates the noise level σ of the fit
        and takes ``λ₀ = σ √(2 log n) ‖p_col‖`` (scaled LASSO); with a ``holdout`` it then tries
        λ = {2, 1, 0.5} x λ₀ (warm-started, largest first, stopping at the first λ whose held-out
        error is above the best one's, or over 10x the certificate's limit) and keeps the one
        whose recovery has the smallest held-out error estimate (rows the factorization never
        saw: an honest criterion).
    debias : bool
        Refit each column by least squares (NNLS for nonnegative) on its support.
    reweight : int, optional
        Rounds of reweighted ℓ1 after each LASSO solve: weights ``ε / (|x| + ε)`` with ε 10 %
        of the column's largest entry (Candès, Wakin & Boyd 2008), which removes most false
        positives of the plain LASSO near the phase transition. Default 1 for ``lam="auto"``,
        0 for a given λ (the plain LASSO).
    max_iter, tol : int, float
        FISTA stops when the largest relative change of a column falls below ``tol`` (each
        solve). With ``lam="auto"`` and ``debias`` the LASSO solves only choose the supports,
        and stop at ``max(tol, 1e-3)``.
    sparsity : int, optional
        ``k``, nonzeros per column (OMP: the number of atoms).
    data : optional
        The original data (anything :func:`cfact_dask.open_array` takes, features on its feature
        axis) for ``lstsq-data``: one extra pass.
    H : array-like (r, m), optional
        Overrides ``result.H`` (needed by ``lstsq-data`` and the held-out certificate).
    nonnegative : bool, optional
        Constrain ``W ≥ 0``. Default: True for ``nnlasso``, False for ``lasso``; for the other
        methods, True when ``W̃`` and ``H`` are both nonnegative (an NMF result).
    holdout : (Q M, Q operator), optional
        A held-out sketch taken in the same pass (see :func:`holdout_error`); gives the
        certificate's estimated reconstruction error.
    chunks : int or sequence, optional
        Row chunks of the returned ``W`` (e.g. the data's feature chunks).
    callback : callable, optional
        ``callback(state) -> bool | None`` after each FISTA iteration; True stops.
    client : distributed.Client, optional
    refine : int
        ``lstsq-data`` with a nonnegative ``W`` and ``H`` only: after the exact ``W`` for ``H``,
        up to this many rounds that refit ``H`` then ``W`` against the data (HALS sweeps, the
        error never rises; stops once a round gains less than 1 %), each one more pass over
        data chunked along the samples only (two otherwise); data within
        ``cfact.als.local-max-bytes`` is read once, and the exact pass and the rounds run in
        memory on that read. Where the ``H`` of a compressed
        factorization limits the error (dense ``W``, low noise) this closes most of the gap
        to an NMF of the full data. The result's ``H`` is then the refitted one, and
        ``params["refined"]`` records the rounds, passes and exact errors. Default 0: ``W``
        for the ``H`` given.

    Returns
    -------
    Recovery
        ``W`` (persisted dask array, n x r), ``H``, ``certificate``, ``lam``, ``n_iter_``,
        ``history``.

    Warns
    -----
    RecoveryWarning
        When the certificate says the recovery is unreliable (figures and fix in the message).
    ConvergenceWarning
        When FISTA stops at ``max_iter``.

    References
    ----------
    .. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization: fast and
       accurate low-rank factorization of compressively-sensed data". ICML 2019,
       arXiv:1706.08146.
    .. [2] A. Beck, M. Teboulle. "A fast iterative shrinkage-thresholding algorithm for linear
       inverse problems". SIAM J. Imaging Sci. 2(1), 2009.
    .. [3] T. Sun, C.-H. Zhang. "Scaled sparse linear regression". Biometrika 99(4), 2012.
    .. [4] J. A. Tropp, A. C. Gilbert. "Signal recovery from random measurements via orthogonal
       matching pursuit". IEEE Trans. Inf. Theory 53(12), 2007.

    Examples
    --------
    >>> import numpy as np, cfact_dask as cf
    >>> from cfact_dask.recovery import recover
    >>> op = cf.make_operator("expander", 200, 2000, seed=0)
    >>> w = np.zeros((2000, 1)); w[[3, 500, 1700], 0] = [1.0, 2.0, 0.5]
    >>> rec = recover(op.matvec(w).compute(), op, "nnlasso")
    >>> np.flatnonzero(rec.compute()[:, 0] > 1e-6)
    array([   3,  500, 1700])
    """
    if method not in RECOVERY_METHODS:
        raise InputError(
            f"unknown recovery method {method!r}; choose one of {', '.join(RECOVERY_METHODS)}"
        )
    spec_m = RECOVERY_METHODS.get(method)
    Wt, Hm = _unpack(result_or_Wtilde, H)
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise InputError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if not tol > 0:
        raise InputError(f"tol must be > 0, got {tol!r}")
    if reweight is not None and (
        isinstance(reweight, bool) or not isinstance(reweight, (int, np.integer)) or reweight < 0
    ):
        raise InputError(f"reweight must be None or an int >= 0, got {reweight!r}")
    if isinstance(refine, bool) or not isinstance(refine, (int, np.integer)) or refine < 0:
        raise InputError(f"refine must be an int >= 0 (rounds), got {refine!r}")
    if operator is not None and not isinstance(operator, SketchOperator):
        raise InputError(
            f"operator must be a SketchOperator (sketch.operator), got {type(operator).__name__}"
        )
    spec = getattr(result_or_Wtilde, "operator", None)
    if operator is not None and isinstance(spec, Mapping) and spec:
        from .._runtime.checks import check_spec_match

        check_spec_match(
            dict(spec), operator.to_dict(),
            "the factorization result (the sketch operator it records) and operator=",
            "pass the operator of the sketch the factorization was computed from "
            "(sketch.operator, or Sketch.from_zarr(store, 'sketch').operator)",
        )
    if not spec_m.reads_data:
        if operator is None or Wt is None:
            raise InputError(f"method={method!r} needs W̃ (d x r) and the sketch's operator")
        if Wt.shape[0] != operator.n_components:
            raise InputError(
                f"W̃ has {Wt.shape[0]} rows but the operator has n_components="
                f"{operator.n_components}; pass the operator of the sketch W̃ was computed from"
            )
        if not np.all(np.isfinite(Wt)):
            raise InputError("W̃ holds NaN or Inf; the factorization diverged, rerun it")
    if Hm is not None and Wt is not None and Hm.shape[0] != Wt.shape[1]:
        raise InputError(f"H has {Hm.shape[0]} rows but W̃ has {Wt.shape[1]} columns (the rank)")
    if nonnegative is None:
        if spec_m.nonnegative is not None:
            nonnegative = spec_m.nonnegative
        else:
            nonnegative = bool((Wt is None or np.all(Wt >= 0)) and (Hm is None or np.all(Hm >= 0)))
    elif spec_m.nonnegative is not None and spec_m.counterpart is not None and (
        bool(nonnegative) != spec_m.nonnegative
    ):
        method = spec_m.counterpart  # e.g. lasso with nonnegative=True is nnlasso
        spec_m = RECOVERY_METHODS.get(method)

    params = {
        "method": method,
        "lam": lam if isinstance(lam, str) else np.asarray(lam).tolist(),
        "debias": debias,
        "reweight": reweight,
        "max_iter": int(max_iter),
        "tol": float(tol),
        "sparsity": sparsity,
        "nonnegative": bool(nonnegative),
    }
    if spec_m.reads_data:
        params["refine"] = int(refine)
    if spec_m.reads_data:
        if data is None:
            raise InputError(
                f"method={method!r} needs the original data: pass data=<the input> (one extra "
                "pass), or choose a sparse-recovery method"
            )
        if Hm is None:
            raise InputError(f"method={method!r} needs H (the factorization result, or H=...)")
        from ..io import InputArray, open_array

        data = data if isinstance(data, InputArray) else open_array(data)
        nbytes = data.nbytes
    else:
        if operator is None or Wt is None:  # checked above; for type checkers
            raise InputError(f"method={method!r} needs W̃ and the operator")
        nbytes = operator.n_features * Wt.shape[1] * 8

    local = not spec_m.reads_data and nbytes <= int(
        config.get("recover.local-max-bytes", 2**26)
    )
    if local:
        # a small W (n x r): iterate in this process on numpy blocks (Blocks(local=True)),
        # where a FISTA step costs no scheduling at all instead of a dask round trip; the
        # kernels and the order of the sums are the same. The hold-out sketch (d_h x m,
        # small) may live on the cluster: bring it here first.
        ctx: Any = local_threads()
        if holdout is not None:
            QM = holdout[0].matrix if hasattr(holdout[0], "matrix") else holdout[0]
            if isinstance(QM, da.Array):
                on = client if client is not None and not isinstance(client, str) else None
                QM = np.asarray(cluster.gather_arrays(QM, client=on)[0])
            holdout = (QM, holdout[1])
    else:
        ctx = client_context(client, nbytes=nbytes)
    with ctx as c:
        blocks = None if spec_m.reads_data else Blocks(operator, c, chunks, local=local)
        problem = RecoveryProblem(
            Wt=Wt, H=Hm, operator=operator, blocks=blocks, nonnegative=bool(nonnegative),
            lam=lam, debias=debias, reweight=reweight, max_iter=int(max_iter), tol=float(tol),
            sparsity=sparsity, callback=callback, data=data, holdout=holdout, client=c,
            chunks=chunks, refine=int(refine),
        )
        sol = spec_m.solve(problem)
        params.update(sol.params)
        if sol.H is not None:  # refitted with W (lstsq-data's refine): the pair goes together
            Hm = np.asarray(sol.H)
        if blocks is not None:
            assert Wt is not None and operator is not None
            n_feat = operator.n_features
            if isinstance(sol.W, list):
                W = blocks.to_array(sol.W, Wt.shape[1])
            elif isinstance(sol.W, da.Array):
                W = sol.W
            else:
                W = _rows_to_array(blocks, np.asarray(sol.W, dtype=np.float64), Wt.shape[1])
        else:
            W = sol.W if isinstance(sol.W, da.Array) else da.asarray(sol.W)
            n_feat = W.shape[0]
            if operator is not None and operator.n_features != n_feat:
                raise InputError(
                    f"the data has {n_feat} features but the operator covers {operator.n_features}"
                )
        cert = certify(W, Wt, sol.PW, Hm, holdout, sol.support_sizes, sol.exact_error, operator,
                       n_feat, method, c, reads_data=spec_m.reads_data)
        W = detach(W, c, "the recovered W")
    for msg in cert.messages:
        warnings.warn(msg, RecoveryWarning, stacklevel=2)
    return Recovery(
        W=W,
        H=Hm,
        method=method,
        certificate=cert,
        lam=sol.lam,
        n_iter_=sol.n_iter,
        history=sol.history,
        params=params,
    )

