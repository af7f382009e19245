"""The Factorize-Recover pipeline: sketch → factorize → recover → (reconstruct), resumable.

All stages go into one Zarr group::

    out.zarr/
      sketch/          the sketch P M (xarray layout, operator spec in attrs)
      holdout/         a small independent Gaussian sketch Q M taken in the same pass (certificate)
      checkpoint/      solver checkpoints (while the factorization runs)
      factors/         W̃ (d × r), H (r × m) and the iteration record
      recovered/       W (n × r) with the recovery certificate in attrs
      reconstruction/  optional W H on the input's chunk grid, with error statistics
    attrs["cfact"] = {"type": "run", "params": ..., "stages": [...], "metrics": ..., ...}

A stage is listed in ``stages`` only after its group is complete, so ``resume=True`` continues
from the last completed stage (and the factorization from its last checkpoint). Resuming with
different parameters is refused.

References
----------
.. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization: fast and accurate
   low-rank factorization of compressively-sensed data". ICML 2019, arXiv:1706.08146.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np

from .._runtime import storage
from .._runtime.cluster import client_context, persist, use_client
from .._runtime.display import SKIP, fmt_value, summary_html, summary_repr
from .._runtime.jsonattrs import to_json
from .._runtime.labels import Labels
from .._runtime.random import normalize_seed
from .._version import __version__
from ..errors import (
    ConfigError,
    InputError,
    RecoveryWarning,
)
from ..io import InputArray, open_array
from ..sketching._sketch import Sketch, sketch, sketch_with
from ..sketching.operators import make_operator
from . import _methods
from ._runstore import RunStore, input_record, open_run, run_stage
from .job import defaults as stage_defaults

__all__ = ["RunResult", "RunStore", "factorize_recover", "run_job", "run_stage"]

logger = logging.getLogger(__name__)

#: salt of the hold-out operator's seed: independent of the main operator for the same seed
_HOLDOUT_KEY = 0x5EED_0F_C0DE


@dataclass
class RunResult:
    """What :func:`factorize_recover` produced (lazy where the data is big).

    Attributes
    ----------
    W : dask.array.Array or None
        The recovered n × r factor (chunked along the features); for other methods a two-factor
        view where the model has one (SVD: ``U diag(s)``), else None.
    H : numpy or dask array or None
        The r × m factor.
    sketch : Sketch or None
        The sketch (Factorize-Recover only).
    factors : NMFResult or the method's result
    recovery : Recovery or None
    reconstruction : ReconstructionStats or None
    report : dict
        Errors, certificate, timings per stage, compression; also stored in the run's attrs.
    out : str or None
        The run's Zarr store.
    """

    W: Any
    H: Any
    sketch: Sketch | None
    factors: Any
    recovery: Any
    reconstruction: Any = None
    report: dict[str, Any] = field(default_factory=dict)
    out: str | None = None
    labels: Labels | None = None

    def to_xarray(self) -> Any:
        """``W`` (feature × component) and ``H`` (component × sample) as one lazy
        ``xarray.Dataset`` with the input's dimension names, coordinates and attributes."""
        import xarray as xr

        from .._runtime.labels import COMPONENT

        if self.W is None:
            raise InputError("this run recovered no W (recover='none'); nothing to label")
        lab = (self.labels or Labels()).sized(int(self.W.shape[0]), int(self.H.shape[1]))
        ds = xr.Dataset(
            {"W": ((lab.feature_dim, COMPONENT), self.W),
             "H": ((COMPONENT, lab.sample_dim), self.H)},
            coords=lab.dataset_coords(),
        )
        ds.attrs = dict(lab.attrs)
        return ds

    def _summary(self) -> tuple[str, list[tuple[str, Any]]]:
        r = self.report or {}
        if "certificate" in r:  # a method of the generic pipeline (pipeline._generic)
            fac, cert = r.get("factor") or {}, r.get("certificate") or {}
            recon = r.get("reconstruction") or {}
            rows: list[tuple[str, Any]] = [
                ("input", f"{r.get('input', SKIP)}, shape {fmt_value(tuple(r.get('shape', ())))}"),
                ("factor", f"{fac.get('method')}, rank {r.get('rank')}"
                           + (f", {fac['n_iter']} iterations" if fac.get("n_iter") else "")),
                ("estimated relative error", cert.get("estimated_relative_error")),
                ("certificate", "ok" if cert.get("ok", True) else
                 "NOT OK: " + "; ".join(cert.get("messages") or [])),
            ]
            if recon:
                rows.append(("reconstruction relative error", recon.get("relative_error")))
            rows.append(("store", self.out if self.out else SKIP))
            return "cfact RunResult", rows
        sk, fac, rec = r.get("sketch") or {}, r.get("factor") or {}, r.get("recover") or {}
        recon = r.get("reconstruction") or {}
        rows: list[tuple[str, Any]] = [
            ("input", f"{r.get('input', SKIP)}, shape {fmt_value(tuple(r.get('shape', ())))}"
             if r else SKIP),
            ("W", self.W), ("H", self.H),
            ("sketch", f"{sk.get('kind')}, d = {sk.get('n_components')} "
                       f"({sk.get('compression', float('nan')):.1f}x compression)" if sk
             else self.sketch.shape),
            ("factor", f"{fac.get('method')}, rank {r.get('rank')}, {fac.get('n_iter')} "
                       f"iterations" if fac else SKIP),
            ("relative error of the sketch", fac.get("sketch_relative_error", SKIP)),
        ]
        if rec:
            exact = rec.get("method") == "lstsq-data"
            rows += [
                ("recovery", f"{rec.get('method')}: "
                             f"{'ok' if rec.get('ok', True) else 'NOT OK'}"),
                ("relative error (exact)" if exact else "estimated relative error (held-out)",
                 rec.get("estimated_relative_error")),
            ]
        if recon:
            rows.append(("reconstruction relative error", recon.get("relative_error")))
        secs = r.get("seconds") or {}
        if secs:
            rows.append(("seconds", ", ".join(f"{k} {v:.1f}" for k, v in secs.items())))
        rows.append(("store", self.out if self.out else SKIP))
        return "cfact RunResult", rows

    # short summaries for the terminal and notebooks (not the arrays: see _runtime.display)
    __repr__ = summary_repr
    _repr_html_ = summary_html


def _merge(defaults: Mapping[str, Any], given: Any, name: str) -> dict[str, Any]:
    if given is None:
        given = {}
    if isinstance(given, (int, np.integer)) and name == "sketch":
        given = {"n_components": int(given)}
    if isinstance(given, str) and name in ("factor", "recover"):
        given = {"method": given}
    if not isinstance(given, Mapping):
        raise ConfigError(f"{name}= must be a dict of options, got {given!r}")
    unknown = sorted(set(given) - set(defaults) - ({"rank"} if name == "factor" else set()))
    if unknown and name != "factor":
        raise ConfigError(f"unknown {name} option(s) {unknown}; valid: {sorted(defaults)}")
    out = dict(defaults)
    out.update(given)
    return out


# ---------------------------------------------------------------------------- stages
def _holdout_operator(n: int, d_h: int, seed: int) -> Any:
    return make_operator("gaussian", d_h, n,
                         seed=np.random.SeedSequence(seed, spawn_key=(_HOLDOUT_KEY,)))


def sketch_with_holdout(
    inp: InputArray, n_components: int, *, kind: str = "expander", seed: Any = 0,
    s: int | None = None, check_finite: bool | None = None, holdout: int = 32,
    client: Any = None, progress: bool | None = None,
) -> tuple[Sketch, Sketch | None]:
    """The sketch and its hold-out sketch, computed in one pass and persisted.

    The hold-out sketch has ``holdout`` rows of an independent Gaussian operator (seeded from
    ``seed``); recovery measures its certificate on it. ``holdout=0`` takes none.
    """
    n = inp.n_features
    main = sketch(inp, n_components, kind=kind, seed=seed, s=s,  # type: ignore[arg-type]
                  check_finite=check_finite)
    hold = None
    d_h = min(int(holdout), n - 1)
    if d_h > 0:
        hold = sketch_with(inp, _holdout_operator(n, d_h, normalize_seed(seed)),
                           check_finite=False)
    # one pass: both sketches are persisted together, so they share the chunk-read tasks of the
    # input graph; they stay on the workers (d x m is small but m may be large)
    from dataclasses import replace

    arrays = [main.data] + ([hold.data] if hold is not None else [])
    # wait: a failed task of the pass surfaces here, not at a later use of the sketch
    persisted = persist(*arrays, client=client, progress=progress, wait=True,
                        desc="sketching (one pass over the input)")
    main = replace(main, data=persisted[0])
    if hold is not None:
        hold = replace(hold, data=persisted[1])
    return main, hold


def _sketch_stage(inp: InputArray, opts: dict[str, Any], rs: RunStore, client: Any,
                  progress: bool | None) -> tuple[Sketch, Sketch | None]:
    if rs.done("sketch"):
        main = Sketch.from_zarr(rs.path, "sketch")
        hold = Sketch.from_zarr(rs.path, "holdout") if opts["holdout"] else None
        return main, hold
    main, hold = sketch_with_holdout(
        inp, opts["n_components"], kind=opts["kind"], seed=opts["seed"], s=opts["s"],
        check_finite=opts["check_finite"], holdout=int(opts["holdout"] or 0), client=client,
        progress=progress)
    if rs.path is not None:
        labels = Labels.from_input(inp)
        main.to_zarr(rs.path, "sketch", overwrite=True, client=client, progress=False,
                     labels=labels)
        if hold is not None:
            hold.to_zarr(rs.path, "holdout", overwrite=True, client=client, progress=False,
                         name="holdout")
        rs.commit("sketch", {"shape": list(main.shape), "kind": opts["kind"]})
    return main, hold


def _factor_stage(sk: Sketch, rank: int, opts: dict[str, Any], rs: RunStore, client: Any,
                  callback: Any, labels: Labels | None = None) -> Any:
    from ..factor._nmf import NMFResult, nmf

    if rs.done("factor"):
        return NMFResult.from_zarr(rs.path, "factors", lazy=False)
    method = opts["method"]
    spec = _methods.get(method)
    if not spec.pipeline:
        runs = " or ".join(repr(m) for m in _methods.pipeline_methods())
        raise ConfigError(
            f"factor method {method!r} is not available in the Factorize-Recover pipeline yet; "
            f"use {runs} (svd / sparse PCA / DGD+LOCAL run with `cfact factor`)"
        )
    ckpt = None
    if rs.path is not None and opts.get("checkpoint_every"):
        ckpt = {"store": rs.path, "every": int(opts["checkpoint_every"]), "group": "checkpoint"}
    extra = {k: v for k, v in opts.items()
             if k not in _methods.pipeline_defaults() and k not in ("rank", "semi")}
    semi = opts.get("semi")
    if spec.semi is not None:
        semi = spec.semi
    res = nmf(
        sk, rank, solver=opts["solver"], init=opts["init"], max_iter=int(opts["max_iter"]),
        tol=float(opts["tol"]), random_state=opts["random_state"], semi=semi,
        checkpoint=ckpt, callback=callback, client=client, **extra,
    )
    if rs.path is not None:
        res.to_zarr(rs.path, "factors", overwrite=True,
                    upstream={"sketch": rs.group_id("sketch")}, labels=labels)
        rs.commit("factor", {"n_iter": res.n_iter_, "sketch_error": res.reconstruction_err_})
    return res


def _recover_stage(res: Any, sk: Sketch, hold: Sketch | None, inp: InputArray,
                   opts: dict[str, Any], rs: RunStore, client: Any,
                   labels: Labels | None = None) -> Any:
    from ..recovery import load_recovery, recover, save_recovery
    from ..recovery.lasso import fallback_follows

    if rs.done("recover"):
        return load_recovery(rs.path, res)
    method = opts["method"]
    op = sk.operator
    holdout = (hold.matrix, hold.operator) if hold is not None else None
    nonneg = not res.semi
    common = dict(lam=opts["lam"], max_iter=int(opts["max_iter"]), holdout=holdout,
                  client=client, nonnegative=nonneg)
    if method == "auto":
        first = "nnlasso" if nonneg else "lasso"
        with warnings.catch_warnings(record=True) as caught, fallback_follows():
            warnings.simplefilter("always", RecoveryWarning)
            rec = recover(res, op, first, **common)
        cert = rec.certificate
        est = cert.estimated_error
        poor = (not cert.ok) or (est is not None and est > float(opts["warn_above"]))
        if poor:
            logger.warning(
                "sparse recovery (%s) looks unreliable (estimated error %s, fit residual %s): "
                "falling back to lstsq-data, one extra pass over the data (and up to %d rounds "
                "refitting H and W against it: recover.refine)",
                first, _fmt(est), _fmt(cert.fit_residual), int(opts["refine"]),
            )
            rec = recover(res, op, "lstsq-data", data=inp, holdout=holdout, client=client,
                          nonnegative=nonneg, refine=int(opts["refine"]))
        else:
            for w in caught:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    elif method == "none":
        return None
    elif method == "lstsq-data":
        rec = recover(res, op, "lstsq-data", data=inp, holdout=holdout, client=client,
                      nonnegative=nonneg, refine=int(opts["refine"]))
    else:
        rec = recover(res, op, method, **common)
        est = rec.certificate.estimated_error
        if _above(rec, opts):
            # the same threshold recover: auto falls back on, so the two never disagree
            logger.warning(
                "sparse recovery (%s): estimated relative error %s is above recover.warn_above "
                "= %g (recover: auto would fall back to lstsq-data, one extra pass)",
                method, _fmt(est), float(opts["warn_above"]),
            )
    if rs.path is not None:
        save_recovery(rs.path, rec, overwrite=True,
                      upstream={g: rs.group_id(g) for g in ("factors", "sketch", "holdout")},
                      labels=labels)
        rs.commit("recover", {"method": rec.method, **rec.certificate.to_dict()})
    return rec


def _above(rec: Any, opts: Mapping[str, Any]) -> bool:
    """A sparse recovery whose estimated error is above ``recover.warn_above``."""
    est = rec.certificate.estimated_error
    return (rec.method != "lstsq-data" and est is not None
            and est > float(opts["warn_above"]))


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3g}"


# ---------------------------------------------------------------------------- entry points
def factorize_recover(
    X: Any,
    rank: int,
    *,
    sketch: Any = None,
    factor: Any = None,
    recover: Any = None,
    out: str | os.PathLike | None = None,
    reconstruct: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    feature_axis: int | str | None = None,
    callback: Any = None,
    client: Any = None,
    progress: bool | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> RunResult:
    """Factorize-Recover (Sharan et al. 2019) on chunked data, end to end.

    Parameters
    ----------
    X : array-like
        Anything :func:`open_array` takes (features on ``feature_axis``, default the input's).
    rank : int
        Number of components.
    sketch : int or dict
        ``n_components`` (required; an int is taken as it), ``kind`` ("expander"), ``seed`` (0),
        ``s``, ``holdout`` (rows of the independent Gaussian hold-out sketch taken in the same
        pass for the recovery certificate; 0 disables), ``check_finite``.
    factor : str or dict
        ``method`` ("nmf" | "semi-nmf"), ``solver``, ``init``, ``max_iter``, ``tol``,
        ``random_state``, ``checkpoint_every`` and any other :func:`cfact_dask.nmf` keyword.
    recover : str or dict
        ``method``: "auto" (nonnegative LASSO, falling back to an exact ``lstsq-data`` pass when
        the certificate says the sparse recovery is unreliable), "nnlasso", "lasso", "bp", "omp",
        "lstsq-data" or "none"; ``lam``, ``max_iter``, ``warn_above`` (estimated error above
        which "auto" falls back, default 0.25).
    out : str, optional
        Zarr store for every stage (resumable). Without it nothing is written.
    reconstruct : bool
        Also write ``W H`` to ``out/reconstruction`` with error statistics against ``X``.
    resume : bool or "force"
        Continue an interrupted run in ``out`` from its last completed stage. Refused when the
        parameters differ, or when the input's content changed since the run started (its
        fingerprint: chunk listing, sizes, stamps, sampled bytes); ``"force"`` resumes anyway.
    overwrite : bool
        Replace an existing finished run store in ``out``. Only a store cfact wrote is ever
        replaced; an output that is, contains or lies inside the input, or a path holding
        anything else, is refused before any compute (:class:`~cfact_dask.errors.OutputError`).
        A run store left incomplete by an interrupted run is replaced without it.
    client : distributed.Client, optional
    storage_options : dict, optional
        fsspec options for a remote ``out`` (``s3://bucket/run.zarr``): ``endpoint_url``,
        ``key`` / ``secret``, ``profile``... Without them the environment is used
        (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``...). Credentials are never recorded; the
        store records the endpoint only. A remote input is opened with its own options by
        :func:`open_array`.

    Returns
    -------
    RunResult
    """
    if out is not None and storage.is_remote(os.fspath(out)):
        out = os.fspath(out)
        out_opts = storage.resolve_options(out, storage_options)
        with storage.scope(out, out_opts):
            return _factorize_recover(X, rank, sketch=sketch, factor=factor, recover=recover,
                                      out=out, reconstruct=reconstruct, resume=resume,
                                      overwrite=overwrite, feature_axis=feature_axis,
                                      callback=callback, client=client, progress=progress,
                                      storage_options=out_opts)
    return _factorize_recover(X, rank, sketch=sketch, factor=factor, recover=recover, out=out,
                              reconstruct=reconstruct, resume=resume, overwrite=overwrite,
                              feature_axis=feature_axis, callback=callback, client=client,
                              progress=progress, storage_options=None)


def _factorize_recover(X: Any, rank: int, *, sketch: Any, factor: Any, recover: Any, out: Any,
                       reconstruct: bool, resume: bool, overwrite: bool, feature_axis: Any,
                       callback: Any, client: Any, progress: bool | None,
                       storage_options: Mapping[str, Any] | None) -> RunResult:
    inp = X if isinstance(X, InputArray) else open_array(X)
    inp = inp.with_feature_axis(feature_axis)
    if inp.ndim != 2:
        raise InputError(
            f"factorize_recover factorizes matrices; {inp.source} has shape {inp.shape} (use "
            f"cf.cp with sketch=dict(mode=...) for tensors)"
        )
    sk_opts = _merge(stage_defaults("sketch"), sketch, "sketch")
    if sk_opts["n_components"] is None:
        raise ConfigError("sketch=dict(n_components=...) is required (the sketch size d)")
    f_opts = _merge(stage_defaults("factor"), factor, "factor")
    r_opts = _merge(stage_defaults("recover"), recover, "recover")
    params = to_json({
        "input": input_record(inp),
        "rank": int(rank), "sketch": sk_opts, "factor": f_opts, "recover": r_opts,
        "reconstruct": bool(reconstruct),
    })
    rs = open_run(out, inp, params, resume, overwrite, storage_options)
    timings: dict[str, float] = {}
    from .._runtime.consolidation import deferred_consolidation
    with client_context(client, nbytes=inp.nbytes, stage="factorize_recover") as c, \
            deferred_consolidation(), use_client(c):
        # every write below (sketch, factors, recovered W) computes on the run's client, also
        # when it was given as client= without being the default client: graphs that hold its
        # persisted futures cannot run on a local scheduler ("Missing dependency")
        t0 = time.perf_counter()
        with run_stage(rs, "sketch"):
            sk, hold = _sketch_stage(inp, sk_opts, rs, c, progress)
        timings["sketch"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with run_stage(rs, "factor"):
            res = _factor_stage(sk, int(rank), f_opts, rs, c, callback,
                                labels=Labels.from_input(inp))
        timings["factor"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with run_stage(rs, "recover"):
            rec = _recover_stage(res, sk, hold, inp, r_opts, rs, c,
                                 labels=Labels.from_input(inp))
        timings["recover"] = time.perf_counter() - t0
        # the H that goes with W: the factorization's, or the one refitted with W against the
        # data (lstsq-data's refine)
        H = rec.H if rec is not None and (rec.params or {}).get("refined") else res.H
        stats = None
        if reconstruct and rec is not None:
            t0 = time.perf_counter()
            if rs.done("reconstruct"):
                stats = rs.meta.get("metrics", {}).get("reconstruct")
            else:
                from ..reconstruction import reconstruct as _reconstruct

                target = rs.path if rs.path is not None else None
                if target is None:
                    raise ConfigError("reconstruct=True needs out= (the store to write W H into)")
                with run_stage(rs, "reconstruct"):
                    stats = _reconstruct(rec.W, H, target, like=inp, compare_to=inp,
                                         group="reconstruction", overwrite=True, client=c,
                                         progress=progress,
                                         upstream={g: rs.group_id(g)
                                                   for g in ("recovered", "factors")})
                    rs.commit("reconstruct", stats.to_dict())
            timings["reconstruct"] = time.perf_counter() - t0
    cert = rec.certificate if rec is not None else None
    report = {
        "input": inp.source, "shape": list(inp.shape), "rank": int(rank),
        "sketch": {"kind": sk.operator.kind, "n_components": sk.n_components,
                   "compression": inp.n_features / sk.n_components},
        "factor": {"method": f_opts["method"], "semi": bool(res.semi), "n_iter": res.n_iter_,
                   "sketch_relative_error": res.reconstruction_err_},
        "recover": None if rec is None else {
            "method": rec.method, "fit_residual": cert.fit_residual,
            "estimated_relative_error": cert.estimated_error,
            "holdout_baseline": cert.holdout_baseline,
            # the certificate's verdict and the job's threshold (what recover: auto acts on)
            "ok": bool(cert.ok and not _above(rec, r_opts)), "certificate_ok": cert.ok,
            "warn_above": float(r_opts["warn_above"]),
            "messages": list(cert.messages), "notes": list(getattr(cert, "notes", ()) or ()),
            "lam_multiple": (rec.params or {}).get("lam_multiple"),
            "refined": (rec.params or {}).get("refined"),
        },
        "reconstruction": None if stats is None else (
            stats if isinstance(stats, dict) else stats.to_dict()),
        "seconds": timings,
        "out": rs.path,
        "cfact_dask": __version__, "dask": dask.__version__,
    }
    with run_stage(rs, "finish"):
        rs.finish(report)
    return RunResult(W=None if rec is None else rec.W, H=H, sketch=sk, factors=res,
                     recovery=rec, reconstruction=stats, report=report, out=rs.path,
                     labels=Labels.from_input(inp))


def _check_memory(cfg: dict[str, Any], inp: InputArray, client: Any, mode: str
                  ) -> InputArray:
    """``cfact.run.memory-check`` before a job computes: refuse / warn when a stage's planned
    peak per worker does not fit the workers; ``adapt`` reads the input in row blocks that fit
    (the sketch is chunking-invariant) and refuses when none does."""
    import dataclasses

    from .._runtime.cluster import current_client, would_embed
    from ._plan import adapt_rows, check_memory, plan

    # the cluster the run will use: the one given, the current one, or the embedded
    # LocalCluster it would start (planned from cfact.cluster.*); none on dask's threads
    c = client if client is not None and not isinstance(client, str) else current_client()
    if c is None and not (client is None and would_embed(int(inp.nbytes))):
        return inp
    p = plan(cfg, client=c)
    rows = adapt_rows(cfg, p) if mode == "adapt" else None
    if rows is None:
        check_memory(p, mode=mode, where="the cluster" if c is not None else "the embedded cluster")
        return inp
    ax = inp.feature_axis
    logger.warning(
        "memory-check adapt: reading %s in blocks of %d rows along axis %d instead of its "
        "chunks of %d (planned peak per worker %.0f MiB, above the workers' limit of %.0f MiB)",
        inp.source, rows, ax, max(inp.chunks[ax]), p.max_worker_peak / 2**20,
        (p.worker_limit or 0) / 2**20)
    # each stored chunk split on its own (no block spans two chunks), into near-equal blocks
    blocks = tuple(b for c in inp.chunks[ax] for b in _split(c, -(-c // rows)))
    return dataclasses.replace(inp, data=inp.data.rechunk({ax: blocks}))


def _split(n: int, k: int) -> tuple[int, ...]:
    """``n`` rows in ``k`` blocks whose sizes differ by at most one."""
    q, r = divmod(n, k)
    return (q + 1,) * r + (q,) * (k - r)


def run_job(job: Any, *, client: Any = None, resume: bool = False, overwrite: bool = False,
            progress: bool | None = None) -> RunResult:
    """Run a YAML job file (or the equivalent dict) through :func:`factorize_recover`."""
    from .job import load_job

    cfg = load_job(job)
    inp = open_array(cfg["input"]["path"], feature_axis=cfg["input"]["feature_axis"],
                     variable=cfg["input"]["variable"],
                     storage_options=cfg["input"]["storage_options"])
    from ._plan import memory_check_mode

    mode = memory_check_mode()
    factor = dict(cfg["factor"])
    rank = factor.pop("rank")
    if not _methods.get(factor["method"]).pipeline:
        # every other method: its own stages in the same run store layout (pipeline._generic)
        from ._generic import run_method
        from ._plan_methods import METHOD_MODELS

        # planned by the method's model (pipeline._plan_methods) and refused / warned about
        # before compute; `adapt` (reading the input in smaller row blocks) is planned for
        # Factorize-Recover's stages only, so here it warns. A resumed run was checked when it
        # started.
        if not resume and factor["method"] in METHOD_MODELS:
            inp = _check_memory(cfg, inp, client, "warn" if mode == "adapt" else mode)
        return run_method(
            inp, rank, factor, sketch=cfg["sketch"], out=cfg["output"]["path"],
            reconstruct=cfg["output"]["reconstruct"], resume=resume,
            overwrite=overwrite or cfg["output"]["overwrite"], client=client,
            progress=progress, storage_options=cfg["output"]["storage_options"])
    # a resumed run was checked when it started; under adapt it is adapted again (the same
    # blocks on the same cluster: the run store's recorded chunks must match)
    if not resume or mode == "adapt":
        inp = _check_memory(cfg, inp, client, mode)
    # options of the job's other methods (dgd-local's n_nodes, topology) are not nmf keywords
    for k in set(factor) - set(stage_defaults("factor")):
        factor.pop(k)
    return factorize_recover(
        inp, rank, sketch=cfg["sketch"], factor=factor, recover=cfg["recover"],
        out=cfg["output"]["path"], reconstruct=cfg["output"]["reconstruct"],
        resume=resume, overwrite=overwrite or cfg["output"]["overwrite"], client=client,
        progress=progress, storage_options=cfg["output"]["storage_options"],
    )
