"""``factor.method: svd`` in the pipeline: the single-pass (or two-pass) randomized SVD.

The fit reads the input once (``passes: 1``) and takes a small CountSketch test sketch ``Θ A`` and
the exact ``‖A‖_F`` in the same read; its error certificate is ``‖Θ (A − U Σ Vᵀ)‖_F / ‖A‖_F``
(:attr:`~cfact_dask.SVDResult.error_estimate`), so it costs no extra pass. The reconstruction is
``(U Σ) Vᵀ`` streamed on the input's chunk grid.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._runtime.checks import check_rank
from ..factor._svd import SVDResult, svd
from ..reconstruction import product
from ._generic import Certificate, MethodStages, StageContext

__all__ = ["STAGES", "estimate_tolerance"]


def estimate_tolerance(n_test: int) -> float:
    """Relative tolerance of the test-sketch estimate of ‖E‖_F with ``n_test`` rows.

    The squared norm of a CountSketch / Gaussian sketch of ``E`` is unbiased with relative
    standard deviation at most ``sqrt(2 / n_test)`` (the worst case, ``E`` of rank one); the norm's
    is half of that. The denominator ``‖A‖_F`` is exact (summed in the same read), so this is the
    estimate's only randomness. Three standard deviations: the estimate lies within this fraction
    of the exact error except with probability ~ 0.3 %, and far closer when ``E`` is noise (high
    stable rank).
    """
    return 3.0 * 0.5 * math.sqrt(2.0 / max(1, int(n_test)))


def _fit(ctx: StageContext) -> SVDResult:
    o = ctx.options
    return svd(ctx.inp, ctx.rank, passes=int(o["passes"]), oversample=o["oversample"],
               co_range=o["co_range"], kind=o["kind"], n_test=int(o["n_test"]),
               random_state=o["random_state"], client=ctx.client, progress=ctx.progress)


def _certificate(res: SVDResult, ctx: StageContext) -> Certificate:
    est = res.reconstruction_err_
    warn = float(ctx.options["warn_above"])
    s = np.asarray(res.s, dtype=np.float64)
    tol = estimate_tolerance(int(ctx.options["n_test"]))
    details: dict[str, Any] = {"singular_values": [float(v) for v in s],
                               "warn_above": warn, "passes": int(res.passes)}
    if est is None:
        return Certificate(None, True, "no test sketch (n_test: 0)", None,
                           ("no error estimate was taken (n_test: 0)",), None, details)
    basis = (f"a {int(ctx.options['n_test'])}-row CountSketch of the residual over the exact "
             f"‖A‖_F, both from the fit's first read")
    if est <= warn:
        return Certificate(est, True, basis, tol, (), None, details)
    # the spectrum says whether more components would help: a last singular value still a
    # sizeable fraction of the first means the rank is too low for this data
    ratio = float(s[-1] / s[0]) if s.size and s[0] > 0 else 0.0
    msg = (f"estimated relative error {est:.3g} is above factor.warn_above = {warn:g}; the "
           f"last of the {s.size} singular values is {ratio:.2g} of the first")
    fix = ("raise factor.rank (the spectrum has not decayed at this rank), or, if the data is "
           "noise beyond this rank, raise factor.warn_above")
    return Certificate(est, False, basis, tol, (msg,), fix, details)


def _reconstruction(res: SVDResult, ctx: StageContext) -> Any:
    return product(res.U * np.asarray(res.s)[None, :], res.Vt, ctx.inp)


def _check(inp: Any, rank: int, options: Any) -> None:
    if inp.ndim != 2:
        from ..errors import InputError

        raise InputError(f"factor.method svd factorizes matrices; {inp.source} has shape "
                         f"{inp.shape} (use factor.method cp for tensors)")
    # before the run store is made: a rank the SVD cannot take is refused without a trace
    check_rank(rank, min(inp.shape), source=f"{inp.source} of shape {tuple(inp.shape)}")


#: the pipeline stages of ``factor.method: svd``
STAGES = MethodStages(
    fit=_fit,
    load=SVDResult.from_zarr,
    certificate=_certificate,
    reconstruction=_reconstruction,
    check=_check,
    factors=lambda res: (res.U * np.asarray(res.s)[None, :], res.Vt),
    summary=lambda res: {"passes": int(res.passes),
                         "singular_values": [float(v) for v in np.asarray(res.s)]},
)
