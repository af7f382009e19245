"""``factor.method: lp`` and ``factor.method: messi`` in the pipeline: the embedding factorizations.

The input is an n × D matrix whose **rows are the points** (an embedding layer's rows: tokens,
neurons), read on its native row chunks (axis 0 of the stored array, whatever
``input.feature_axis`` says).

- ``lp`` (:func:`~cfact_dask.embed.lp.lp_lowrank`): a rank-``rank`` subspace minimising
  ``Σ_i dist(a_i, S)^p``; the model is ``A V Vᵀ`` (no centring: the solver fits a linear
  subspace through the origin), or ``U Vᵀ`` with the per-row robust coefficients for
  ``entrywise: true``.
- ``messi`` (:func:`~cfact_dask.embed.clustering.projective_clustering`): ``n_subspaces`` (k)
  linear subspaces of dimension ``rank`` (j); each row's model is its projection onto its
  cluster's subspace (the ``labels`` and ``bases`` of ``factors/``).

Both iterate one pass per step and checkpoint to the run store (``checkpoint/``) every
``checkpoint_every`` steps, so ``--resume`` continues there.

The certificate is the exact relative Frobenius error of the returned model, summed in the pass
the solver made to evaluate (ℓp) or assign (MESSI) it — no extra read — with the method's own
objective beside it. The same pass histograms the rows' relative residuals, so the verdict can
tell a rank too low (the typical row is poorly fitted) from a few outlier rows carrying the
Frobenius error of a robust fit (the typical row is fitted; the verdict stays ok).
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from ..embed._lp_kernels import model_block
from ..embed._rows import prepare_rows, profile_quantile
from ..embed.clustering import ProjectiveClusteringResult, projective_clustering
from ..embed.lp import LpLowRankResult, lp_lowrank
from ..errors import InputError, RankError
from ._generic import Certificate, MethodStages, StageContext

__all__ = ["LP_STAGES", "MESSI_STAGES", "estimate_tolerance", "project_labeled"]


def estimate_tolerance(est: float, dtype: Any, D: int, cancels: bool) -> float:
    """Relative tolerance of a residual summed in a solver pass against the exact error.

    The sums are float64 over per-row residuals computed in the data's precision ``eps``
    (``D`` terms each) and the reconstruction is stored in that precision, which moves the
    measured error by about ``eps / est``. Where the residual comes from a difference of squared
    norms (``‖a‖² − ‖Vᵀa‖²``: MESSI's distances, the p = 2 shortcut's trace) it loses
    ``eps · D / est²`` to cancellation. Ten times those, and never below 1e-6.
    """
    eps = float(np.finfo(np.dtype(dtype) if np.dtype(dtype).kind == "f" else np.float64).eps)
    e = max(float(est), np.sqrt(eps))
    tol = D * eps / e + (D * eps / (e * e) if cancels else 0.0)
    return float(min(1.0, max(1e-6, 10.0 * tol)))


def _verdict(est: float, prof: Any, warn: float, robust: bool, basis: str, tol: float,
             details: dict[str, Any], what: str, fix: str) -> Certificate:
    """OK when the relative error is at most ``warn``; for a robust fit also when 90 % of the
    rows are fitted to within ``warn`` of their norm (the error is then carried by at most 10 %
    of the rows: outliers the fit discounts)."""
    med = profile_quantile(prof, 0.5) if prof is not None else None
    q90 = profile_quantile(prof, 0.9) if prof is not None else None
    details = {**details, "warn_above": warn, "median_row_residual": med,
               "row_residual_q90": q90}
    if est <= warn:
        return Certificate(est, True, basis, tol, (), None, details)
    if robust and q90 is not None and q90 <= warn:
        details["note"] = (f"the relative error {est:.3g} is carried by at most 10 % of the "
                           f"rows: 90 % are fitted to within {q90:.2g} of their norm (outlier "
                           f"rows, which the robust fit discounts)")
        return Certificate(est, True, basis, tol, (), None, details)
    msg = f"relative error {est:.3g} is above factor.warn_above = {warn:g}"
    if med is not None and med > warn:
        msg += (f"; the median row keeps up to {med:.2g} of its norm off {what} (the typical "
                f"row is poorly fitted, not a few outliers)")
    elif q90 is not None:
        msg += (f"; the median row is fitted to within {med:.2g} of its norm but 10 % of the "
                f"rows keep more than {q90:.2g} off {what}")
    return Certificate(est, False, basis, tol, (msg,), fix, details)


# ====================================================================== lp
def _lp_fit(ctx: StageContext) -> LpLowRankResult:
    o = ctx.options
    return lp_lowrank(ctx.inp, ctx.rank, p=float(o["p"]), method=o["solver"],
                      entrywise=bool(o["entrywise"]), max_iter=o["max_iter"], tol=float(o["tol"]),
                      irls_update=o["irls_update"], select=o["select"], client=ctx.client,
                      callback=ctx.callback, checkpoint=ctx.checkpoint)


def _lp_certificate(res: LpLowRankResult, ctx: StageContext) -> Certificate:
    est = float(res.relative_error)
    prof = res.info.get("profile")
    shortcut = prof is None  # p = 2: the residual is trace(AᵀA) − Σ top-k eigenvalues
    basis = ("trace(AᵀA) minus its top eigenvalues, from the one pass of the p = 2 solution"
             if shortcut else "the exact residual of the returned basis, summed in the "
             "solver pass that evaluated it")
    x = ctx.inp.data
    tol = estimate_tolerance(est, x.dtype, int(x.shape[1]), cancels=shortcut)
    details = {"objective": float(res.objective), "p": float(res.p), "solver": res.method,
               "entrywise": bool(res.entrywise), "converged": bool(res.converged),
               "n_passes": int(res.n_passes)}
    fix = ("raise factor.rank (the rows span more directions than the subspace holds), or, if "
           "the data is noise beyond this rank, raise factor.warn_above")
    if not res.converged:
        fix += "; the solver also stopped at factor.max_iter: raise it"
    return _verdict(est, prof, float(ctx.options["warn_above"]), res.p < 2.0, basis, tol,
                    details, f"the rank-{res.rank} subspace", fix)


def _lp_reconstruction(res: LpLowRankResult, ctx: StageContext) -> da.Array:
    x, _, _ = prepare_rows(ctx.inp, "the lp reconstruction")
    delta = float(res.info.get("delta", 0.0))
    n_inner = int(res.info.get("n_inner", 0))
    return x.map_blocks(model_block, res.basis, res.p, delta, n_inner, bool(res.entrywise),
                        chunks=x.chunks, dtype=x.dtype)


def _matrix(inp: Any, method: str) -> tuple[int, int]:
    if inp.ndim != 2:
        raise InputError(f"factor.method {method} factorizes an n × D matrix (rows = points); "
                         f"{inp.source} has shape {inp.shape}: reshape it to 2-D")
    return int(inp.shape[0]), int(inp.shape[1])


def _lp_check(inp: Any, rank: int, options: Any) -> None:
    n, D = _matrix(inp, "lp")
    if not 1 <= rank < D or rank > n:
        raise RankError(f"factor.rank = {rank} is impossible for {inp.source} with n={n} rows "
                        f"and D={D} columns; factor.method lp needs 1 <= rank < D and "
                        f"rank <= n")


#: the pipeline stages of ``factor.method: lp``
LP_STAGES = MethodStages(
    fit=_lp_fit,
    load=LpLowRankResult.from_zarr,
    certificate=_lp_certificate,
    reconstruction=_lp_reconstruction,
    check=_lp_check,
    factors=lambda res: (res.coefficients, res.basis.T),
    summary=lambda res: {"p": float(res.p), "solver": res.method,
                         "entrywise": bool(res.entrywise), "objective": float(res.objective),
                         "converged": bool(res.converged), "n_passes": int(res.n_passes)},
)


# ====================================================================== messi
def _messi_fit(ctx: StageContext) -> ProjectiveClusteringResult:
    o = ctx.options
    return projective_clustering(
        ctx.inp, int(o["n_subspaces"]), ctx.rank, n_init=int(o["n_init"]),
        max_iter=int(o["max_iter"]), tol=float(o["tol"]), loss=o["loss"], p=float(o["p"]),
        scale=None if o["scale"] is None else float(o["scale"]),
        random_state=o["random_state"], client=ctx.client, callback=ctx.callback,
        checkpoint=ctx.checkpoint)


def _messi_certificate(res: ProjectiveClusteringResult, ctx: StageContext) -> Certificate:
    est = float(res.relative_error)
    prof = res.info.get("profile")
    x = ctx.inp.data
    tol = estimate_tolerance(est, x.dtype, int(x.shape[1]), cancels=True)
    details = {"cost": float(res.cost), "loss": res.loss, "n_subspaces": res.n_subspaces,
               "dims": list(res.dims), "counts": [int(c) for c in np.asarray(res.counts)],
               "restart_costs": [float(c) for c in res.restart_costs],
               "converged": bool(res.converged), "n_passes": int(res.n_passes)}
    fix = ("raise factor.n_subspaces (the rows lie on more subspaces than k) or factor.rank "
           "(each subspace has more dimensions than j)")
    costs = sorted(float(c) for c in res.restart_costs)
    if len(costs) == 1 or costs[-1] > 1.01 * costs[0]:
        # the restarts disagree (or there is one): the EM may have stopped in a local minimum
        fix += ("; the EM can also stop in a local minimum from its random splits (restart "
                f"costs {[round(c, 4) for c in costs]}): raise factor.n_init or try another "
                "factor.random_state")
    fix += "; if the data is noise at this size, raise factor.warn_above"
    if not res.converged:
        fix += "; the EM also stopped at factor.max_iter: raise it"
    return _verdict(est, prof, float(ctx.options["warn_above"]), res.loss != "l2",
                    "the exact residual of the kept subspaces, summed in the pass that "
                    "assigned the rows to them", tol, details,
                    "its cluster's subspace", fix)


def project_labeled(X: np.ndarray, labels: np.ndarray, bases: np.ndarray) -> np.ndarray:
    """Every row of ``X`` projected onto the subspace of its label (``bases``: k × j × D with
    orthonormal rows, zero rows beyond a subspace's own dimension)."""
    lab = np.asarray(labels).reshape(-1)
    out = np.zeros_like(X)
    for c in np.unique(lab):
        rows = lab == c
        B = bases[int(c)].astype(X.dtype, copy=False)
        out[rows] = (X[rows] @ B.T) @ B
    return out


def _messi_reconstruction(res: ProjectiveClusteringResult, ctx: StageContext) -> da.Array:
    x, _, _ = prepare_rows(ctx.inp, "the messi reconstruction")
    labels = res.labels
    if ctx.store is not None:  # the stored labels: the model as written, not assigned again
        labels = ProjectiveClusteringResult.from_zarr(ctx.store, "factors").labels
    labels = labels.rechunk((x.chunks[0],))[:, None]
    return da.map_blocks(project_labeled, x, labels, res.bases, chunks=x.chunks,
                         dtype=x.dtype)


def _messi_check(inp: Any, rank: int, options: Any) -> None:
    n, D = _matrix(inp, "messi")
    if not 1 <= rank < D:
        raise RankError(f"factor.rank = {rank} (the dimension j of every subspace) is "
                        f"impossible for {inp.source} with D={D} columns; factor.method messi "
                        f"needs 1 <= rank < D")
    if int(options["n_subspaces"]) > n:
        raise RankError(f"factor.n_subspaces = {options['n_subspaces']} exceeds the n={n} rows "
                        f"of {inp.source}; lower it")


#: the pipeline stages of ``factor.method: messi`` (``rank`` is j, the subspaces' dimension)
MESSI_STAGES = MethodStages(
    fit=_messi_fit,
    load=ProjectiveClusteringResult.from_zarr,
    certificate=_messi_certificate,
    reconstruction=_messi_reconstruction,
    check=_messi_check,
    summary=lambda res: {"n_subspaces": res.n_subspaces, "dims": list(res.dims),
                         "loss": res.loss, "cost": float(res.cost),
                         "counts": [int(c) for c in np.asarray(res.counts)],
                         "converged": bool(res.converged), "n_passes": int(res.n_passes)},
)
