"""The run store: one Zarr group per run, its stage records, resume and completion marker.

Shared by the Factorize-Recover pipeline (:mod:`._run`) and every other method's pipeline
(:mod:`._generic`): a stage is listed in ``attrs["cfact"]["stages"]`` only after its group is
complete, so a resume continues after the last completed stage; a resume with other parameters or
over a changed input is refused.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from .._runtime import storage
from .._runtime import workers as _workers
from .._runtime.jsonattrs import to_json
from .._version import __version__
from ..errors import CfactError, ConfigError, ResumeError, StoreExistsError

__all__ = ["RunStore", "input_record", "open_run", "run_stage"]

logger = logging.getLogger(__name__)


class RunStore:
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
def run_stage(rs: RunStore, stage: str) -> Iterator[None]:
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


def input_record(inp: Any) -> dict[str, Any]:
    """The input's entry of a run's recorded parameters (a resume must match it)."""
    return {"source": inp.source, "shape": list(inp.shape),
            "chunks": [list(c) for c in inp.chunks], "dtype": str(inp.dtype),
            "feature_axis": inp.feature_axis}


def open_run(out: Any, inp: Any, params: dict[str, Any], resume: bool | str, overwrite: bool,
             storage_options: Mapping[str, Any] | None) -> RunStore:
    """The run store of a run reading ``inp`` (checked, created or resumed before any compute),
    with the input's fingerprint recorded, and its consolidated listing dropped while stages
    write (a resumed store: no listing goes stale)."""
    from .._runtime.consolidation import unconsolidate

    fp = None
    if out is not None:
        from .._runtime.fingerprints import fingerprint

        fp = fingerprint(inp)
    rs = RunStore(out, params, resume, overwrite, inputs=(inp,), fingerprint=fp,
                  storage_options=storage_options)
    if rs.path is not None:
        unconsolidate(rs.path)
    return rs
