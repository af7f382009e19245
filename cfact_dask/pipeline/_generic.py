"""One resumable pipeline for every factorization that is not Factorize-Recover.

NMF / semi-NMF run sketch → factor → recover → reconstruct (:mod:`._run`). Every other method
(SVD, sparse PCA, CP, DGD+LOCAL, ℓp, MESSI) runs here, in the same run store layout::

    out.zarr/
      checkpoint/      solver checkpoints while an iterative method runs (resume continues there)
      factors/         the method's result (its own ``to_zarr`` layout)
      reconstruction/  optional: the model streamed on the input's chunk grid, with error
                       statistics against the input from the same pass
    attrs["cfact"] = {"type": "run", "params": ..., "stages": [...], "metrics": ..., "report": ...}

A method is one :class:`MethodStages` (named by its registry entry,
:attr:`~cfact_dask.pipeline.Factorization.stages`): how to fit it, how to load its result back,
its error certificate, and its reconstruction as a lazy dask array. Stage records, resume (refused
with changed parameters or input), output safety, the client, progress and the report are the
pipeline's, shared with NMF (the same :class:`~._run.RunStore`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dask

from .._runtime import storage
from .._runtime.cluster import client_context, use_client
from .._runtime.labels import Labels
from .._version import __version__
from ..errors import ConfigError
from ..io import InputArray, open_array

__all__ = ["Certificate", "MethodStages", "StageContext", "run_method", "stages_of"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageContext:
    """What a method's stages see.

    Attributes
    ----------
    inp : InputArray
        The input (features on ``inp.feature_axis``; N-way for CP).
    rank : int
    options : dict
        The job's ``factor`` section for this method (``method`` and ``rank`` included), with
        defaults filled in.
    sketch : dict or None
        The job's ``sketch`` section when the method takes one.
    client : distributed.Client or None
    progress : bool or None
    callback : callable or None
        Per-iteration callback of iterative methods (as the Python functions take it).
    checkpoint : dict or None
        ``{"store", "every", "group"}`` for methods that checkpoint (``None`` without a store).
    store : str or None
        The run store.
    labels : Labels
        The input's dims / coords (matrices).
    """

    inp: InputArray
    rank: int
    options: dict[str, Any]
    sketch: dict[str, Any] | None = None
    client: Any = None
    progress: bool | None = None
    callback: Any = None
    checkpoint: dict[str, Any] | None = None
    store: str | None = None
    labels: Labels = field(default_factory=Labels)


@dataclass(frozen=True)
class Certificate:
    """A result's error estimate against the full input, and its verdict.

    Attributes
    ----------
    estimated_relative_error : float or None
        ``‖X − X̂‖_F / ‖X‖_F`` estimated (or measured) without an extra pass.
    ok : bool
        The verdict.
    basis : str
        How the estimate was made ("a held-out test sketch of the same pass", "the last
        iteration's exact residual", ...).
    tolerance : float or None
        How far the estimate may be from the exact error (relative to it), when known.
    messages : tuple of str
        What is wrong when ``ok`` is false.
    fix : str or None
        What to do about it.
    details : dict
        Method-specific figures (consensus error, ℓp objective, ...).
    """

    estimated_relative_error: float | None
    ok: bool = True
    basis: str = ""
    tolerance: float | None = None
    messages: tuple[str, ...] = ()
    fix: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"estimated_relative_error": self.estimated_relative_error, "ok": bool(self.ok),
                "basis": self.basis, "tolerance": self.tolerance,
                "messages": list(self.messages), "fix": self.fix, **dict(self.details)}


@dataclass(frozen=True)
class MethodStages:
    """A factorization's stages in the pipeline.

    Parameters
    ----------
    fit : callable ``(ctx) -> result``
        Run the method (checkpointing to ``ctx.checkpoint`` when iterative). The result follows
        the result protocol (``to_zarr(store, group, overwrite=...)``, ``n_iter_``,
        ``reconstruction_err_``).
    load : callable ``(store, group) -> result``
        Read a finished result back (a resumed run).
    certificate : callable ``(result, ctx) -> Certificate``
        The result's error estimate against the full input and its verdict.
    reconstruction : callable ``(result, ctx) -> dask.array.Array``
        The model as a lazy array of the input's shape and axis order, built blockwise (from the
        input's own chunks where it needs them; see
        :func:`~cfact_dask.reconstruction.write_reconstruction` for the reads it costs).
    check : callable ``(inp, rank, options) -> None``, optional
        Refuse an input the method cannot take, before anything is computed.
    factors : callable ``(result) -> (W, H)``, optional
        A two-factor view of the result for :attr:`RunResult.W` / ``H`` (``None``: none).
    summary : callable ``(result) -> dict``, optional
        Extra entries of the report's ``factor`` section.

    Notes
    -----
    ``cfact plan`` and the memory check before a run plan a method by its model in
    :data:`cfact_dask.pipeline._plan_methods.METHOD_MODELS`.
    """

    fit: Callable[[StageContext], Any]
    load: Callable[[str, str], Any]
    certificate: Callable[[Any, StageContext], Certificate]
    reconstruction: Callable[[Any, StageContext], Any]
    check: Callable[[InputArray, int, Mapping[str, Any]], None] | None = None
    factors: Callable[[Any], tuple[Any, Any] | None] | None = None
    summary: Callable[[Any], dict[str, Any]] | None = None


def stages_of(method: str) -> MethodStages:
    """The :class:`MethodStages` of a registered factorization (imported when asked)."""
    import importlib

    from ._methods import get

    spec = get(method)
    if spec.stages is None:
        raise ConfigError(f"factor method {method!r} has no pipeline stages")
    if isinstance(spec.stages, MethodStages):
        return spec.stages
    module, _, attr = spec.stages.partition(":")
    return getattr(importlib.import_module(module), attr)


def _f(x: Any) -> Any:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if v != v else v


def run_method(
    X: Any,
    rank: int,
    factor: Mapping[str, Any],
    *,
    sketch: Mapping[str, Any] | None = None,
    out: str | os.PathLike | None = None,
    reconstruct: bool = False,
    resume: bool | str = False,
    overwrite: bool = False,
    feature_axis: int | str | None = None,
    callback: Any = None,
    client: Any = None,
    progress: bool | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """Run one factorization through the resumable pipeline: factor → (reconstruct).

    Parameters
    ----------
    X : array-like
        Anything :func:`~cfact_dask.open_array` takes.
    rank : int
    factor : dict
        The job's ``factor`` section: ``method`` and the method's options (validated and
        completed with defaults by :func:`~cfact_dask.pipeline.job.validate_factor`).
    sketch : dict, optional
        The job's ``sketch`` section, for methods that take one.
    out, reconstruct, resume, overwrite, feature_axis, callback, client, progress,
    storage_options
        As for :func:`~cfact_dask.factorize_recover`.

    Returns
    -------
    RunResult
        ``factors`` is the method's result, ``report["certificate"]`` its error certificate.
    """
    if out is not None and storage.is_remote(os.fspath(out)):
        out = os.fspath(out)
        opts = storage.resolve_options(out, storage_options)
        with storage.scope(out, opts):
            return _run_method(X, rank, factor, sketch, out, reconstruct, resume, overwrite,
                               feature_axis, callback, client, progress, opts)
    return _run_method(X, rank, factor, sketch, out, reconstruct, resume, overwrite,
                       feature_axis, callback, client, progress, None)


def _run_method(X: Any, rank: int, factor: Mapping[str, Any], sketch: Mapping[str, Any] | None,
                out: Any, reconstruct: bool, resume: bool | str, overwrite: bool,
                feature_axis: Any, callback: Any, client: Any, progress: bool | None,
                storage_options: Mapping[str, Any] | None) -> Any:
    from .._runtime.consolidation import deferred_consolidation
    from ._run import RunResult
    from ._runstore import input_record, open_run, run_stage
    from .job import validate_factor

    inp = X if isinstance(X, InputArray) else open_array(X)
    inp = inp.with_feature_axis(feature_axis)
    opts = validate_factor({**dict(factor), "rank": int(rank)}, "factor=")
    method = opts["method"]
    stages = stages_of(method)
    if stages.check is not None:
        stages.check(inp, int(rank), opts)
    if reconstruct and out is None:
        raise ConfigError("reconstruct=True needs out= (the store to write the reconstruction "
                          "into)")
    from .._runtime.jsonattrs import to_json

    params = to_json({
        "input": input_record(inp),
        "rank": int(rank), "factor": opts, "sketch": None if sketch is None else dict(sketch),
        "reconstruct": bool(reconstruct),
    })
    rs = open_run(out, inp, params, resume, overwrite, storage_options)
    labels = Labels.from_input(inp) if inp.ndim == 2 else Labels()
    timings: dict[str, float] = {}
    with client_context(client, nbytes=inp.nbytes, stage=f"{method} run") as c, \
            deferred_consolidation(), use_client(c):
        ckpt = None
        if rs.path is not None and opts.get("checkpoint_every"):
            ckpt = {"store": rs.path, "every": int(opts["checkpoint_every"]),
                    "group": "checkpoint"}
        ctx = StageContext(inp=inp, rank=int(rank), options=opts,
                           sketch=None if sketch is None else dict(sketch), client=c,
                           progress=progress, callback=callback, checkpoint=ckpt,
                           store=rs.path, labels=labels)
        t0 = time.perf_counter()
        with run_stage(rs, "factor"):
            if rs.done("factor"):
                res = stages.load(rs.path, "factors")
                cert_d = dict(rs.meta.get("metrics", {}).get("factor", {}).get("certificate")
                              or {})
            else:
                res = stages.fit(ctx)
                cert_d = stages.certificate(res, ctx).to_dict()
                if rs.path is not None:
                    res.to_zarr(rs.path, "factors", overwrite=True)
                    rs.commit("factor", {"n_iter": res.n_iter_,
                                         "error": _f(res.reconstruction_err_),
                                         "certificate": cert_d})
        timings["factor"] = time.perf_counter() - t0
        if not cert_d.get("ok", True):
            logger.warning("%s: the result looks poor: %s%s", method,
                           "; ".join(cert_d.get("messages") or ["(no detail)"]),
                           f"; {cert_d['fix']}" if cert_d.get("fix") else "")
        stats = None
        if reconstruct:
            t0 = time.perf_counter()
            if rs.done("reconstruct"):
                stats = rs.meta.get("metrics", {}).get("reconstruct")
            else:
                from ..reconstruction import write_reconstruction

                with run_stage(rs, "reconstruct"):
                    R = stages.reconstruction(res, ctx)
                    st = write_reconstruction(
                        R, rs.path, inp, inp, group="reconstruction", overwrite=True, client=c,
                        progress=progress, rank=int(rank),
                        upstream={"factors": rs.group_id("factors")})
                    stats = st.to_dict()
                    rs.commit("reconstruct", stats)
            timings["reconstruct"] = time.perf_counter() - t0
    summary = {"method": method, "n_iter": res.n_iter_,
               "relative_error": _f(res.reconstruction_err_)}
    if stages.summary is not None:
        summary.update(stages.summary(res))
    report = {
        "input": inp.source, "shape": list(inp.shape), "rank": int(rank),
        "factor": summary,
        "certificate": cert_d,
        "reconstruction": stats,
        "seconds": timings,
        "out": rs.path,
        "cfact_dask": __version__, "dask": dask.__version__,
    }
    with run_stage(rs, "finish"):
        rs.finish(report)
    wh = stages.factors(res) if stages.factors is not None else None
    return RunResult(W=None if wh is None else wh[0], H=None if wh is None else wh[1],
                     sketch=None, factors=res, recovery=None, reconstruction=stats,
                     report=report, out=rs.path, labels=labels)
