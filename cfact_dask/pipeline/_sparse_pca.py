"""``factor.method: sparse-pca`` in the pipeline: scikit-learn's sparse PCA, checkpointed.

:func:`~cfact_dask.sparse_pca` takes the input features first (a features × samples matrix
``M``; an input with ``feature_axis: 1`` is transposed lazily) and fits
``M ≈ mean 1ᵀ + W H`` with ``W`` (features × r) the sparse components, ``H`` (r × samples) the
dictionary and ``mean`` the per-feature mean over the samples (zeros with ``center: false``).

Its error certificate is the relative error of the returned factors against the full input,
``‖M − (mean 1ᵀ + W H)‖_F / ‖M‖_F``, from the Gram quantities the objective already needs in
the last iteration's pass (:attr:`~cfact_dask.SparsePCAResult.relative_error`): exact up to
float64 cancellation (:func:`~cfact_dask.factor._sparse_pca.relative_error_tolerance`). The
verdict looks at the share of the variation about the mean the model leaves out
(``‖M_c − W H‖ / ‖M_c‖``: the mean alone can make the relative error small) and at components
the ℓ1 penalty zeroed out. The reconstruction is ``[W | mean] [H; 1ᵀ]`` streamed on the input's
chunk grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import dask.array as da
import numpy as np

from .._runtime.checks import check_rank
from ..errors import ConfigError, InputError
from ..factor._sparse_pca import SparsePCAResult, relative_error_tolerance, sparse_pca
from ..reconstruction import product
from ._generic import Certificate, MethodStages, StageContext

__all__ = ["STAGES", "validate"]


def _fit(ctx: StageContext) -> SparsePCAResult:
    o = ctx.options
    return sparse_pca(ctx.inp, ctx.rank, alpha=float(o["alpha"]),
                      ridge_alpha=float(o["ridge_alpha"]), max_iter=int(o["max_iter"]),
                      tol=float(o["tol"]), center=bool(o["center"]),
                      random_state=o["random_state"], callback=ctx.callback, client=ctx.client,
                      checkpoint=ctx.checkpoint)


def _zero_components(res: SparsePCAResult) -> int:
    col = abs(res.W).sum(axis=0)
    col = np.asarray(col.compute() if isinstance(col, da.Array) else col)
    return int(np.sum(col == 0))


def _certificate(res: SparsePCAResult, ctx: StageContext) -> Certificate:
    o = ctx.options
    warn = float(o["warn_above"])
    est = res.reconstruction_err_
    norms = dict(res.norms)
    zero = _zero_components(res)
    centred = (norms["residual"] / norms["centred"]
               if norms.get("residual") is not None and norms.get("centred") else None)
    details: dict[str, Any] = {
        "alpha": float(o["alpha"]), "warn_above": warn, "zero_components": zero,
        "unexplained_variation": centred, "norms": norms,
        "objective": res.errors[-1] if res.errors else None}
    if est is None:
        return Certificate(None, False, "no iteration ran (max_iter: 0)", None,
                           ("sparse PCA ran no iteration, so its factors are the SVD "
                            "initialisation and no error was measured",), "raise factor.max_iter",
                           details)
    basis = ("the returned factors' exact residual, from the Gram quantities of the last "
             "iteration's pass over the input")
    tol = relative_error_tolerance(est)
    messages = []
    fixes = []
    if zero:
        messages.append(f"{zero} of the {ctx.rank} components are all zero: factor.alpha = "
                        f"{float(o['alpha']):g} leaves them no feature")
        fixes.append("lower factor.alpha")
    if centred is not None and centred > warn:
        what = "the variation about the mean" if o["center"] else "the input"
        messages.append(f"the model leaves {centred:.3g} of {what} unexplained (relative error "
                        f"{est:.3g} against the input), above factor.warn_above = {warn:g}")
        if not zero:
            fixes.append("raise factor.rank (too few components for this data) or lower "
                         "factor.alpha (the ℓ1 penalty shrinks the components); if the data "
                         "is noise beyond this rank, raise factor.warn_above")
    if not messages:
        return Certificate(est, True, basis, tol, (), None, details)
    return Certificate(est, False, basis, tol, tuple(messages), "; ".join(fixes), details)


def _reconstruction(res: SparsePCAResult, ctx: StageContext) -> Any:
    W, H = da.asarray(res.W), da.asarray(res.H)
    if res.params.get("center", True):
        # the mean is part of the model: [W | mean] [H; 1ᵀ] = W H + mean 1ᵀ
        mean = da.asarray(res.mean).astype(np.float64).reshape((-1, 1)).rechunk((W.chunks[0], 1))
        W = da.concatenate([W.astype(np.float64), mean], axis=1)
        H = da.concatenate([H.astype(np.float64),
                            da.ones((1, H.shape[1]), chunks=(1, H.chunks[1]))], axis=0)
    return product(W, H, ctx.inp)


def _check(inp: Any, rank: int, options: Any) -> None:
    if inp.ndim != 2:
        raise InputError(f"factor.method sparse-pca factorizes matrices; {inp.source} has shape "
                         f"{inp.shape} (use factor.method cp for tensors)")
    # before the run store is made: a rank sparse PCA cannot take is refused without a trace
    check_rank(rank, min(inp.shape), source=f"{inp.source} of shape {tuple(inp.shape)}")


def validate(o: Mapping[str, Any], source: str) -> None:
    """Values of a ``factor`` section with ``method: sparse-pca`` (types are checked already)."""
    bad = []
    for key in ("alpha", "ridge_alpha"):
        v = float(o[key])
        if not math.isfinite(v) or v < 0:
            bad.append(f"'cfact.factor.{key}' must be a finite number >= 0, got {o[key]!r}")
    if not float(o["warn_above"]) > 0:
        bad.append(f"'cfact.factor.warn_above' must be > 0, got {o['warn_above']!r}")
    if o["max_iter"] < 1:
        bad.append(f"'cfact.factor.max_iter' must be >= 1, got {o['max_iter']!r}")
    if not float(o["tol"]) >= 0:
        bad.append(f"'cfact.factor.tol' must be >= 0, got {o['tol']!r}")
    if o["checkpoint_every"] < 0:
        bad.append(f"'cfact.factor.checkpoint_every' must be >= 0 (0: no checkpoints), got "
                   f"{o['checkpoint_every']!r}")
    if bad:
        raise ConfigError(f"{source}: " + "; ".join(bad))


#: the pipeline stages of ``factor.method: sparse-pca``
STAGES = MethodStages(
    fit=_fit,
    load=SparsePCAResult.from_zarr,
    certificate=_certificate,
    reconstruction=_reconstruction,
    check=_check,
    factors=lambda res: (res.W, res.H),
    summary=lambda res: {"alpha": float(res.alpha),
                         "objective": res.errors[-1] if res.errors else None},
)
