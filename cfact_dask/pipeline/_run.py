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

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np

from .._runtime import storage
from .._runtime import workers as _workers
from .._runtime.cluster import client_context, persist, use_client
from .._runtime.display import SKIP, fmt_value, summary_html, summary_repr
from .._runtime.jsonattrs import to_json
from .._runtime.labels import Labels
from .._runtime.random import normalize_seed
from .._version import __version__
from ..errors import (
    CfactError,
    ConfigError,
    InputError,
    RecoveryWarning,
    ResumeError,
    StoreExistsError,
)
from ..io import InputArray, open_array
from ..sketching._sketch import Sketch, sketch, sketch_with
from ..sketching.operators import make_operator
from . import _methods
from .job import defaults as stage_defaults

__all__ = ["RunResult", "factorize_recover", "run_job"]

logger = logging.getLogger(__name__)

#: salt of the hold-out operator's seed: independent of the main operator for the same seed
_HOLDOUT_KEY = 0x5EED_0F_C0DE


@dataclass
class RunResult:
    """What :func:`factorize_recover` produced (lazy where the data is big).

    Attributes
    ----------
    W : dask.array.Array
        The recovered n × r factor (chunked along the features).
    H : numpy or dask array
        The r × m factor.
    sketch : Sketch
    factors : NMFResult
    recovery : Recovery
    reconstruction : ReconstructionStats or None
    report : dict
        Errors, certificate, timings per stage, compression; also stored in the run's attrs.
    out : str or None
        The run's Zarr store.
    """

    W: Any
    H: Any
    sketch: Sketch
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


# ---------------------------------------------------------------------------- run store
class _RunStore:
    """The run's Zarr store: checked by the output-safety policy before any compute.

    A finished run store is replaced only with ``overwrite``; one left incomplete by an
    interrupted run is replaced by a plain rerun, or continued with ``resume`` (refused when the
    parameters or the input's content changed, unless ``resume="force"``).
    """

    def __init__(self, path: str | None, params: dict[str, Any], resume: bool | str,
                 overwrite: bool, inputs: tuple[Any, ...] = (),
                 fingerprint: dict[str, Any] | None = None,
                 storage_options: Mapping[str, Any] | None = None):
        from .._runtime.fingerprints import compare
        from .._runtime.outputs import clear_store, prepare_store, store_path, sweep_temporaries

        self.path = None if path is None else store_path(path)
        self.options = dict(storage_options or {})
        self.params = params
        self.stages: list[str] = []
        self.meta: dict[str, Any] = {}
        self.options = dict(storage_options or {})
        if self.path is None:
            return
        import zarr

        if resume not in (True, False, "force"):
            raise ConfigError(f"resume must be True, False or 'force', got {resume!r}")
        target = prepare_store(path, overwrite=overwrite, inputs=inputs, what="run store",
                               flag="overwrite=True (--overwrite)", allow_complete=bool(resume),
                               storage_options=self.options)
        meta = target.meta
        if (not resume and not overwrite and target.state == "incomplete"
                and meta.get("type") == "run" and meta.get("params") == params
                and compare(meta.get("input_fingerprint"), fingerprint) is None):
            # a plain rerun of an interrupted run with the same parameters and unchanged input:
            # continue it (its completed stages are exactly what this run would compute)
            logger.warning("continuing the interrupted run in %s from its completed stages %s "
                           "(pass overwrite=True / --overwrite to start afresh)",
                           self.path, meta.get("stages", []))
            resume = True
        if resume and target.state != "absent":
            if meta.get("type") != "run":
                if not overwrite:
                    raise StoreExistsError(
                        f"{self.path!r} is a cfact {meta.get('type')!r} store, not a run store, so "
                        f"there is nothing to resume; choose another output, or pass "
                        f"overwrite=True (--overwrite) to replace it"
                    )
            else:
                if meta.get("params") != params:
                    saved = meta.get("params", {})
                    diff = sorted(k for k in set(saved) | set(params)
                                  if saved.get(k) != params.get(k))
                    detail = "; ".join(f"{k}: {saved.get(k)!r} -> {params.get(k)!r}"
                                       for k in diff)
                    raise ResumeError(
                        f"cannot resume {self.path!r}: it was started with different parameters "
                        f"({detail}); rerun with the original parameters, or pass overwrite "
                        f"(--overwrite) to start afresh"
                    )
                changed = compare(meta.get("input_fingerprint"), fingerprint)
                if changed and resume != "force":
                    raise ResumeError(
                        f"cannot resume {self.path!r}: the input changed since the run started "
                        f"({changed}); its completed stages were computed from the old data. "
                        f"Start afresh with overwrite (--overwrite), or, if the change is known "
                        f"to be harmless, force the resume with resume='force' (--force-resume)"
                    )
                if changed:
                    logger.warning("resuming %s over a changed input (%s), as forced",
                                   self.path, changed)
                sweep_temporaries(self.path)
                self.stages = list(meta.get("stages", []))
                self.meta = meta
                if fingerprint is not None and changed:
                    self.meta["input_fingerprint"] = fingerprint
                logger.info("resuming %s after stages %s", self.path, self.stages or "none")
                return
        if target.state == "incomplete" and not overwrite:
            logger.warning("replacing the incomplete run store %s left by an interrupted run "
                           "with other parameters or input", self.path)
        try:
            clear_store(target, self.options)
        except Exception as e:
            err = storage.storage_error(e, self.path, "replacing the run store", self.options,
                                        write=True)
            if err is None:
                raise
            raise err from e
        self.meta = {"type": "run", "params": params, "stages": [], "metrics": {},
                     "cfact_dask": __version__, "complete": False,
                     "input_fingerprint": fingerprint}
        if storage.is_remote(self.path):
            # how the store was reached (endpoint, region), never the credentials
            self.meta["storage"] = storage.public_options(self.path, self.options)
        try:
            root = zarr.open_group(self.path, mode="w", zarr_format=3)
            root.attrs["cfact"] = _json(self.meta)
        except Exception as e:
            err = storage.storage_error(e, self.path, "creating the run store", self.options,
                                        write=True)
            if err is not None:
                raise err from e
            if not isinstance(e, OSError):
                raise
            raise _os_error(
                e, f"cannot create the run store {self.path!r}: {e.strerror or e}; choose a "
                   f"writable location for the output (output.path / out=)"
            ) from e

    def group_id(self, group: str) -> str | None:
        from .._runtime.outputs import group_id

        return None if self.path is None else group_id(self.path, group)

    def done(self, stage: str) -> bool:
        return stage in self.stages

    def commit(self, stage: str, metrics: Mapping[str, Any] | None = None) -> None:
        if self.path is None:
            return
        import zarr

        self.stages.append(stage)
        self.meta["stages"] = list(self.stages)
        if metrics:
            self.meta.setdefault("metrics", {})[stage] = _json(metrics)
        root = zarr.open_group(self.path, mode="r+")
        root.attrs["cfact"] = self.meta

    def finish(self, report: Mapping[str, Any]) -> None:
        if self.path is None:
            return
        import zarr

        # the completion marker goes last: on object storage (no rename) this attribute is
        # what makes the store complete
        self.meta["report"] = _json(storage.scrub(report))
        self.meta["complete"] = True
        zarr.open_group(self.path, mode="r+").attrs["cfact"] = self.meta
        from .._runtime.outputs import consolidate

        # the whole run is written: one consolidated listing (xr.open_zarr / open_datatree)
        consolidate(self.path, force=True)


def _os_error(e: OSError, message: str) -> OSError:
    """The same OSError subclass and errno (callers catching PermissionError keep working),
    with a message that says which store / stage and what to do."""
    if e.errno is not None:
        return type(e)(e.errno, message)
    return type(e)(message)


@contextlib.contextmanager
def _stage(rs: _RunStore, stage: str) -> Iterator[None]:
    """Turn an OSError while a stage runs (disk full, permissions, a vanished mount) into one that
    names the stage and the store and says that the completed stages are kept."""
    try:
        with _workers.stage(f"stage {stage!r} of the run"):
            yield
    except CfactError:
        raise  # already clear (StoreNotFoundError / StoreExistsError are OSErrors too)
    except Exception as e:
        if rs.path is None:
            raise
        err = storage.storage_error(e, rs.path, f"stage {stage!r} writing the run in", rs.options,
                                    write=True)
        if err is None and storage.is_remote(rs.path):
            # zarr reports a bucket that vanished (or became unreadable) as a missing key or
            # node: ask the store itself what is wrong before showing a stack trace
            try:
                storage.check_bucket(rs.path, rs.options)
            except CfactError as probe:
                err = probe
        if err is not None:
            raise type(err)(
                f"stage {stage!r} stopped: {err}; the completed stages {rs.stages} are kept if "
                f"the store still exists"
            ) from e
        if not isinstance(e, OSError):
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        raise _os_error(
            e, f"{e.strerror or e}{where} while running stage {stage!r} of the run in "
               f"{rs.path!r}; the completed stages {rs.stages} are intact: free disk space or fix "
               f"the permissions, then rerun with resume=True (CLI: --resume)"
        ) from e


def _json(x: Any) -> Any:
    return to_json(x)


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


def _sketch_stage(inp: InputArray, opts: dict[str, Any], rs: _RunStore, client: Any,
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


def _factor_stage(sk: Sketch, rank: int, opts: dict[str, Any], rs: _RunStore, client: Any,
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
                   opts: dict[str, Any], rs: _RunStore, client: Any,
                   labels: Labels | None = None) -> Any:
    from ..recovery import load_recovery, recover, save_recovery

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
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RecoveryWarning)
            rec = recover(res, op, first, **common)
        cert = rec.certificate
        est = cert.estimated_error
        poor = (not cert.ok) or (est is not None and est > float(opts["warn_above"]))
        if poor:
            logger.warning(
                "sparse recovery (%s) looks unreliable (estimated error %s, fit residual %s): "
                "falling back to lstsq-data, one extra pass over the data",
                first, _fmt(est), _fmt(cert.fit_residual),
            )
            rec = recover(res, op, "lstsq-data", data=inp, holdout=holdout, client=client,
                          nonnegative=nonneg)
        else:
            for w in caught:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    elif method == "none":
        return None
    elif method == "lstsq-data":
        rec = recover(res, op, "lstsq-data", data=inp, holdout=holdout, client=client,
                      nonnegative=nonneg)
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
    params = _json({
        "input": {"source": inp.source, "shape": list(inp.shape), "chunks": [list(c) for c in
                                                                             inp.chunks],
                  "dtype": str(inp.dtype), "feature_axis": inp.feature_axis},
        "rank": int(rank), "sketch": sk_opts, "factor": f_opts, "recover": r_opts,
        "reconstruct": bool(reconstruct),
    })
    fp = None
    if out is not None:
        from .._runtime.fingerprints import fingerprint

        fp = fingerprint(inp)
    rs = _RunStore(out, params, resume, overwrite, inputs=(inp,), fingerprint=fp,
                   storage_options=storage_options)
    timings: dict[str, float] = {}
    from .._runtime.consolidation import deferred_consolidation, unconsolidate

    if rs.path is not None:
        unconsolidate(rs.path)  # a resumed store: no listing goes stale while stages write
    with client_context(client, nbytes=inp.nbytes, stage="factorize_recover") as c, \
            deferred_consolidation(), use_client(c):
        # every write below (sketch, factors, recovered W) computes on the run's client, also
        # when it was given as client= without being the default client: graphs that hold its
        # persisted futures cannot run on a local scheduler ("Missing dependency")
        t0 = time.perf_counter()
        with _stage(rs, "sketch"):
            sk, hold = _sketch_stage(inp, sk_opts, rs, c, progress)
        timings["sketch"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with _stage(rs, "factor"):
            res = _factor_stage(sk, int(rank), f_opts, rs, c, callback,
                                labels=Labels.from_input(inp))
        timings["factor"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with _stage(rs, "recover"):
            rec = _recover_stage(res, sk, hold, inp, r_opts, rs, c,
                                 labels=Labels.from_input(inp))
        timings["recover"] = time.perf_counter() - t0
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
                with _stage(rs, "reconstruct"):
                    stats = _reconstruct(rec.W, res.H, target, like=inp, compare_to=inp,
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
        },
        "reconstruction": None if stats is None else (
            stats if isinstance(stats, dict) else stats.to_dict()),
        "seconds": timings,
        "out": rs.path,
        "cfact_dask": __version__, "dask": dask.__version__,
    }
    with _stage(rs, "finish"):
        rs.finish(report)
    return RunResult(W=None if rec is None else rec.W, H=res.H, sketch=sk, factors=res,
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
    # a resumed run was checked when it started; under adapt it is adapted again (the same
    # blocks on the same cluster: the run store's recorded chunks must match)
    if not resume or mode == "adapt":
        inp = _check_memory(cfg, inp, client, mode)
    factor = dict(cfg["factor"])
    rank = factor.pop("rank")
    # options of the job's other methods (dgd-local's n_nodes, topology) are not nmf keywords
    for k in set(factor) - set(stage_defaults("factor")):
        factor.pop(k)
    return factorize_recover(
        inp, rank, sketch=cfg["sketch"], factor=factor, recover=cfg["recover"],
        out=cfg["output"]["path"], reconstruct=cfg["output"]["reconstruct"],
        resume=resume, overwrite=overwrite or cfg["output"]["overwrite"], client=client,
        progress=progress, storage_options=cfg["output"]["storage_options"],
    )
