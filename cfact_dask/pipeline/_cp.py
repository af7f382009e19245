"""``factor.method: cp`` in the pipeline: CP (CANDECOMP/PARAFAC) of an N-way tensor by ALS.

Without a sketched mode, :func:`~cfact_dask.cp` runs ALS on the tensor itself; every sweep
already computes the relative error of its factors from ``‖T‖² − 2⟨T, T̂⟩ + ‖T̂‖²`` (the inner
product from the sweep's last MTTKRP), so the certificate is that exact error of the returned
factors at no extra cost. With ``sketch_mode: k`` the tensor's mode ``k`` is compressed first
(``T ×_k P``, ``sketch_size`` rows of a ``sketch_kind`` operator), the CP of the small tensor gives
the other modes' factors and ``P A_k``, and ``A_k`` is recovered:

``recovery: refit``
    One more read of ``T`` (the least-squares ``A_k`` given the other factors); the same read sums
    ``‖T‖²``, so the error is again exact (:func:`~cfact_dask.refit_mode`).
``recovery: nnlasso | lasso | bp | omp``
    Sparse recovery of each column of ``A_k`` from ``P A_k`` (:func:`cfact_dask.recover`; no
    further read of ``T``). A hold-out sketch ``T ×_k Q`` (``holdout`` rows of an independent
    Gaussian ``Q``) is taken in the same pass as the main sketch; the recovery's certificate
    estimates ``‖T − T̂‖/‖T‖`` on it and compares it with the best any ``A_k`` could reach with
    these other factors. Too much compression for the sparsity of ``A_k`` is flagged, with the fix.

The reconstruction ``Σ_j w_j a_j ∘ b_j ∘ …`` is built blockwise on the input's chunk grid (one
task per output chunk: the einsum of the factors' rows of that chunk).
"""

from __future__ import annotations

import math
import string
import warnings
from collections.abc import Mapping
from typing import Any

import dask.array as da
import numpy as np

from ..errors import ConfigError, InputError, RankError, RecoveryWarning
from ..factor._cp import CPResult, cp, refit_mode, with_mode
from ._generic import Certificate, MethodStages, StageContext
from ._svd import estimate_tolerance

__all__ = ["RECOVERIES", "STAGES", "cp_model", "exact_tolerance", "validate"]

#: how the sketched mode's factor may be recovered: ``refit`` (one more read, exact) or a sparse
#: recovery method of :data:`cfact_dask.recovery.RECOVERY_METHODS` that does not read the data
RECOVERIES = ("refit",)


def _sparse_methods() -> tuple[str, ...]:
    from ..recovery import RECOVERY_METHODS

    return tuple(n for n, m in RECOVERY_METHODS.items() if not m.reads_data)


def validate(o: Mapping[str, Any], source: str) -> None:
    """The checks of a ``factor`` section with ``method: cp`` that need no input (the sketched
    mode against the tensor's order is :data:`STAGES`' ``check``)."""
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: 'cfact.factor.{key}' {why}")

    if o["init"] not in ("svd", "random"):
        raise bad("init", f"is {o['init']!r}; choose 'svd' or 'random' for method cp")
    if float(o["warn_above"]) <= 0:
        raise bad("warn_above", f"must be > 0, got {o['warn_above']!r}")
    recoveries = RECOVERIES + _sparse_methods()
    if o["sketch_mode"] is None:
        for key, default in (("sketch_size", None), ("recovery", "refit"), ("sparsity", None)):
            if o[key] != default:
                raise bad(key, f"is {o[key]!r} but 'cfact.factor.sketch_mode' is null (no mode "
                               f"is compressed); set sketch_mode to the mode to compress, or "
                               f"remove {key}")
        return
    if o["sketch_size"] is None or o["sketch_size"] < 1:
        raise bad("sketch_size", f"must be an int >= 1 when sketch_mode is set (the compressed "
                                 f"mode's rows), got {o['sketch_size']!r}")
    from ..sketching.operators import SKETCH_KINDS

    if o["sketch_kind"] not in SKETCH_KINDS:
        raise bad("sketch_kind", f"is {o['sketch_kind']!r}; choose one of "
                                 f"{list(SKETCH_KINDS.names())}")
    if o["recovery"] not in recoveries:
        hint = (" (lstsq-data, the exact solve with the data, is recovery: refit for CP)"
                if o["recovery"] == "lstsq-data" else "")
        raise bad("recovery", f"is {o['recovery']!r}; choose one of {list(recoveries)}{hint}")
    if o["holdout"] < 0:
        raise bad("holdout", f"must be >= 0 (rows of the hold-out sketch), got {o['holdout']}")
    if o["recovery"] == "omp" and (o["sparsity"] is None or o["sparsity"] < 1):
        raise bad("sparsity", "must be an int >= 1 for recovery: omp (nonzeros per column)")


def _check(inp: Any, rank: int, o: Mapping[str, Any]) -> None:
    if inp.ndim < 3:
        raise InputError(f"factor.method cp decomposes tensors of order >= 3; {inp.source} has "
                         f"shape {tuple(inp.shape)} (for a matrix use factor.method svd or nmf)")
    shape = [int(s) for s in inp.shape]
    mode = o["sketch_mode"]
    if mode is not None:
        if not -inp.ndim <= mode < inp.ndim:
            raise ConfigError(f"'cfact.factor.sketch_mode' is {mode} but {inp.source} has "
                              f"{inp.ndim} modes (shape {tuple(shape)}); choose 0..{inp.ndim - 1}")
        mode %= inp.ndim
        if not 1 <= o["sketch_size"] < shape[mode]:
            raise ConfigError(f"'cfact.factor.sketch_size' = {o['sketch_size']} must be below the "
                              f"size {shape[mode]} of mode {mode} of {inp.source} (it compresses "
                              f"that mode); lower it, or set sketch_mode: null")
        shape[mode] = int(o["sketch_size"])
    for i, s in enumerate(shape):
        rest = math.prod(shape) // s
        if rank > 1 and rank >= rest:
            raise RankError(f"factor.rank = {rank} is impossible for CP of {inp.source} "
                            f"(decomposed shape {tuple(shape)}): for mode {i} it must be below "
                            f"the product of the other modes' sizes ({rest}); lower the rank"
                            + (" or raise sketch_size" if mode is not None else ""))


def _fit(ctx: StageContext) -> CPResult:
    o = ctx.options
    common = dict(nonnegative=bool(o["nonnegative"]), max_iter=int(o["max_iter"]),
                  tol=float(o["tol"]), init=o["init"], random_state=o["random_state"],
                  callback=ctx.callback, checkpoint=ctx.checkpoint, client=ctx.client)
    if o["sketch_mode"] is None:
        return cp(ctx.inp, ctx.rank, **common)
    from ._run import sketch_with_holdout

    mode = int(o["sketch_mode"]) % ctx.inp.ndim
    sparse = o["recovery"] != "refit"
    # the main sketch and (for a sparse recovery) the hold-out sketch in one read of T
    main, hold = sketch_with_holdout(
        ctx.inp.with_feature_axis(mode), int(o["sketch_size"]), kind=o["sketch_kind"],
        seed=o["random_state"], holdout=int(o["holdout"]) if sparse else 0, client=ctx.client,
        progress=ctx.progress)
    res = cp(main, ctx.rank, **common)
    rec_p: dict[str, Any] = {"method": o["recovery"], "mode": mode,
                             "sketch_size": int(o["sketch_size"]), "kind": o["sketch_kind"],
                             "sketch_relative_error": float(res.errors[-1]) if res.errors
                             else None}
    if not sparse:
        full = refit_mode(ctx.inp, res, client=ctx.client)
        return CPResult(weights=full.weights, factors=full.factors, errors=full.errors,
                        n_iter=full.n_iter, params={**res.params, "recovery": rec_p},
                        error=full.error)
    return _sparse_recovery(ctx, res, hold, mode, rec_p)


def _unfold_others(factors: list[np.ndarray], weights: np.ndarray, mode: int) -> np.ndarray:
    """``H`` (r × ∏ other sizes) with ``T_(mode) = A_mode H`` (C order of the other modes)."""
    letters = string.ascii_lowercase[: len(factors)]
    others = [i for i in range(len(factors)) if i != mode]
    spec = ",".join(f"{letters[i]}z" for i in others) + ",z->z" + "".join(letters[i]
                                                                          for i in others)
    H = np.einsum(spec, *[factors[i] for i in others], weights)
    return H.reshape(H.shape[0], -1)


def _sparse_recovery(ctx: StageContext, res: CPResult, hold: Any, mode: int,
                     rec_p: dict[str, Any]) -> CPResult:
    from .._runtime.cluster import compute
    from ..recovery import recover

    o = ctx.options
    Wt = np.array(res.factors[mode], dtype=np.float64)
    others = [np.asarray(f, dtype=np.float64) for f in res.factors]
    # CP's signs are free in pairs: make each compressed column mostly positive (flipping the
    # same column of another mode), so a nonnegative recovery sees P A_k, not −P A_k
    flip = np.where(Wt.sum(axis=0) < 0, -1.0, 1.0)
    Wt = Wt * flip
    other = 1 if mode == 0 else 0
    others[other] = others[other] * flip
    H = _unfold_others(others, np.asarray(res.weights, dtype=np.float64), mode)
    holdout = None
    if hold is not None:
        QT = hold.data
        QT = np.asarray(compute(QT, client=ctx.client, progress=False)[0], dtype=np.float64)
        holdout = (np.moveaxis(QT, mode, 0).reshape(QT.shape[mode], -1), hold.operator)
    kw: dict[str, Any] = {}
    if o["nonnegative"]:
        kw["nonnegative"] = True
    with warnings.catch_warnings():
        # the recovery's own warning names NMF's job keys (n_components, recover=...); the
        # stage's certificate repeats its verdict with CP's (factor.sketch_size, recovery: refit)
        warnings.simplefilter("ignore", RecoveryWarning)
        rec = recover(Wt, res.operator, o["recovery"], H=H, holdout=holdout,
                      sparsity=o["sparsity"], client=ctx.client, **kw)
    A = np.asarray(rec.compute(), dtype=np.float64)
    cert = rec.certificate
    rec_p.update(method=rec.method, holdout=0 if hold is None else int(hold.shape[mode]),
                 certificate=cert.to_dict())
    base = CPResult(weights=np.asarray(res.weights), factors=[
        others[i] if i != mode else Wt for i in range(len(others))], errors=list(res.errors),
        n_iter=res.n_iter, operator=res.operator, mode=mode, params=dict(res.params))
    return with_mode(base, A, mode, error=cert.holdout_error,
                     params={**res.params, "recovery": rec_p})


def exact_tolerance(err: float | None, numel: int, out_dtype: Any) -> float | None:
    """Relative tolerance of an error computed exactly as ``‖T‖² − 2⟨T, T̂⟩ + ‖T̂‖²``.

    Two roundings separate it from ``‖T − R‖_F / ‖T‖_F`` measured on the written reconstruction
    ``R``: the expansion's cancellation (float64 sums over ``numel`` entries, at most
    ``4 ε √numel`` of ``‖T‖²`` in practice) and ``R``'s rounding to ``out_dtype`` when it is
    written (at most ``u ‖T̂‖ ≤ u (1 + e) ‖T‖``). Relative to the error ``e``::

        tol = 2 ε √numel / e² + u (1 + e) / e + 1e-9
    """
    if err is None or not err > 0:
        return None
    eps = float(np.finfo(np.float64).eps)
    dt = np.dtype(out_dtype)
    u = float(np.finfo(dt).eps) / 2 if dt.kind == "f" else eps / 2
    return 2 * eps * math.sqrt(numel) / err**2 + u * (1 + err) / err + 1e-9


def _out_dtype(inp: Any) -> np.dtype:
    return inp.dtype if inp.dtype.kind == "f" else np.dtype(np.float64)


def _certificate(res: CPResult, ctx: StageContext) -> Certificate:
    o = ctx.options
    warn = float(o["warn_above"])
    rec = res.params.get("recovery") or None
    est = res.reconstruction_err_
    details: dict[str, Any] = {"weights": [float(w) for w in res.weights], "warn_above": warn,
                               "recovery": None if rec is None else rec["method"]}
    msgs: list[str] = []
    fix = None
    if rec is None or rec["method"] == "refit":
        numel = int(np.prod(ctx.inp.shape))
        tol = exact_tolerance(est, numel, _out_dtype(ctx.inp))
        basis = ("the last ALS sweep's ‖T‖² − 2⟨T, T̂⟩ + ‖T̂‖² (exact for the returned factors)"
                 if rec is None else
                 f"the refit's read of T (mode {rec['mode']} refit exactly; ‖T‖² and ⟨T, T̂⟩ "
                 f"from the same pass)")
        if rec is not None:
            details["sketch_relative_error"] = rec.get("sketch_relative_error")
    else:
        c = rec["certificate"]
        est = c.get("holdout_error")  # None without a hold-out sketch (holdout: 0)
        d, n = int(rec["sketch_size"]), int(ctx.inp.shape[rec["mode"]])
        details.update(sketch_relative_error=rec.get("sketch_relative_error"),
                       holdout_baseline=c.get("holdout_baseline"),
                       fit_residual=c.get("fit_residual"), sketch_size=d,
                       effective_support=c.get("effective_support"))
        h = int(rec.get("holdout") or 0)
        tol = estimate_tolerance(h) if h else None
        basis = (f"a {h}-row hold-out sketch of mode {rec['mode']} taken in the sketch's pass"
                 if h else f"the {rec['method']} recovery's density check (holdout: 0)")
        if not c.get("ok", True):
            base = c.get("holdout_baseline")
            how = (f"the hold-out sketch estimates a relative error of {est:.3g} against "
                   f"{base:.3g} for the exact refit" if est is not None and base is not None
                   else "the recovered columns are too dense for the compression")
            msgs.append(f"the {rec['method']} recovery of mode {rec['mode']} ({n} rows) from "
                        f"sketch_size = {d} measurements looks unreliable: {how}; the factor is "
                        f"probably not sparse enough for this compression")
            fix = ("raise factor.sketch_size (sparse recovery of k nonzeros per column needs "
                   "roughly 2 k log(n/k) rows), or set factor.recovery: refit (one more read of "
                   "the tensor, exact)")
    if est is not None and est > warn:
        msgs.append(f"relative error {est:.3g} is above factor.warn_above = {warn:g}")
        fix = fix or ("raise factor.rank (or, if the data is noise beyond this rank, raise "
                      "factor.warn_above)")
    return Certificate(None if est is None or est != est else float(est), not msgs, basis, tol,
                       tuple(msgs), fix, details)


def _cp_block(*blocks: np.ndarray, spec: str, out: str) -> np.ndarray:
    return np.einsum(spec, *blocks).astype(out, copy=False)


def cp_model(res: CPResult, like: Any, *, dtype: Any = None) -> da.Array:
    """``Σ_j w_j a_j ∘ b_j ∘ …`` as a lazy array on ``like``'s chunk grid: one task per output
    chunk, the einsum of the factors' rows of that chunk (the weights folded into mode 0)."""
    from ..io import InputArray, open_array

    inp = like if isinstance(like, InputArray) else open_array(like)
    if res.mode is not None or tuple(f.shape[0] for f in res.factors) != tuple(inp.shape):
        raise InputError(f"the CP factors {[f.shape for f in res.factors]} do not match "
                         f"{inp.source} of shape {tuple(inp.shape)} (a compressed mode must be "
                         f"recovered first)")
    dtype = np.dtype(dtype) if dtype is not None else _out_dtype(inp)
    letters = string.ascii_lowercase[: inp.ndim]
    r = res.rank
    args: list[Any] = []
    for i, f in enumerate(res.factors):
        f = np.asarray(f, dtype=np.float64) * (np.asarray(res.weights)[None, :] if i == 0 else 1)
        args += [da.from_array(f, chunks=(inp.chunks[i], r)), letters[i] + "z"]
    spec = ",".join(f"{c}z" for c in letters) + "->" + letters
    return da.blockwise(_cp_block, letters, *args, concatenate=True, dtype=dtype,
                        meta=np.empty((0,) * inp.ndim, dtype), spec=spec, out=dtype.str)


def _summary(res: CPResult) -> dict[str, Any]:
    rec = res.params.get("recovery") or {}
    out: dict[str, Any] = {}
    if rec:
        # the full tensor's error (exact after a refit, the hold-out estimate after a sparse
        # recovery, None without one), not the sketched tensor's last sweep
        out["relative_error"] = None if res.error is None else float(res.error)
    return {**out, "weights": [float(w) for w in res.weights],
            "nonnegative": bool(res.params.get("nonnegative")),
            "sketch_mode": rec.get("mode"), "recovery": rec.get("method"),
            "sketch_relative_error": rec.get("sketch_relative_error")}


#: the pipeline stages of ``factor.method: cp``
STAGES = MethodStages(
    fit=_fit,
    load=CPResult.from_zarr,
    certificate=_certificate,
    reconstruction=lambda res, ctx: cp_model(res, ctx.inp),
    check=_check,
    summary=_summary,
)
