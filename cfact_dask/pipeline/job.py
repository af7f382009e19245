"""YAML job files for ``cfact run``: schema, defaults and validation with clear errors.

A job file::

    cfact:
      input:   {path: data.zarr, feature_axis: 0, variable: null}
      sketch:  {n_components: 400, kind: expander, seed: 0}
      factor:  {method: nmf, rank: 10, max_iter: 200, tol: 1.0e-4}
      recover: {method: auto}
      output:  {path: run.zarr, reconstruct: false, overwrite: false}

``input`` and ``output`` take ``storage_options`` for remote URLs (``s3://bucket/data.zarr``): the
fsspec options of that store, e.g. ``{endpoint_url: "https://s3.example.org", profile: lab}``.
Credentials may go there but are better left to the environment (``AWS_ACCESS_KEY_ID`` ...);
either way they are never recorded in the run store, reports or logs.

Unknown keys, wrong types and missing required keys are :class:`ConfigError` naming the key and
the fix. When ``cfact.run.allowed-root`` is set (dask config or ``DASK_CFACT__RUN__ALLOWED_ROOT``),
input and output paths must lie inside it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

import yaml

from .. import config
from ..errors import ConfigError
from ..sketching.operators import SKETCH_KINDS
from ._methods import REQUIRED, Option, job_methods, job_options, method_options, pipeline_defaults
from ._methods import get as get_method
from ._methods import validate_options as _validate_factor

__all__ = ["SCHEMA", "defaults", "load_job", "schema", "validate_factor", "validate_job"]

_REQ = REQUIRED  # marker: required key

#: section -> key -> (accepted types, default or _REQ); ``factor`` comes from the factorization
#: registry (``_methods.FACTORIZATIONS``) when the schema is read
_SECTIONS: dict[str, dict[str, Option] | None] = {
    "input": {
        "path": ((str,), _REQ),
        "feature_axis": ((int, str), 0),
        "variable": ((str, type(None)), None),
        "storage_options": ((dict, type(None)), None),
    },
    "sketch": {
        "n_components": ((int,), _REQ),
        "kind": ((str,), "expander"),
        "seed": ((int,), 0),
        "s": ((int, type(None)), None),
        "holdout": ((int,), 32),
        "check_finite": ((bool,), True),
    },
    "factor": None,
    "recover": {
        "method": ((str,), "auto"),
        "lam": ((float, int, str), "auto"),
        "max_iter": ((int,), 300),
        "warn_above": ((float, int), 0.25),
        "refine": ((int,), 2),
    },
    "output": {
        "path": ((str,), _REQ),
        "reconstruct": ((bool,), False),
        "overwrite": ((bool,), False),
        "storage_options": ((dict, type(None)), None),
    },
}

def schema() -> dict[str, dict[str, Option]]:
    """The job schema now: section -> key -> (accepted types, default or ``REQUIRED``), with
    the ``factor`` section generated from the registered factorizations."""
    return {sec: (job_options() if keys is None else dict(keys))
            for sec, keys in _SECTIONS.items()}


def _choices() -> dict[tuple[str, str], tuple[str, ...]]:
    """The allowed values of the keys with a fixed set of values, read from the registries."""
    return {
        ("sketch", "kind"): SKETCH_KINDS.names(),
        ("factor", "method"): job_methods(),
        # a registered recovery method is accepted (read at validation time)
        ("recover", "method"): ("auto", *_recovery_methods(), "none"),
    }


def defaults(section: str) -> dict[str, Any]:
    """The defaults of a section (``None`` for required keys): what the pipeline's Python
    entry point fills in, so the job file and :func:`~cfact_dask.factorize_recover` share them.
    ``factor`` holds the pipeline methods' options only (see ``pipeline_defaults``)."""
    if section == "factor":
        return pipeline_defaults()
    return {k: (None if d is _REQ else copy.deepcopy(d)) for k, (_, d) in schema()[section].items()}


class _Schema(Mapping):
    """:data:`SCHEMA`: the schema as a read-only mapping, read afresh on every access (so
    registered sketch kinds and factorizations are part of it)."""

    def __getitem__(self, section: str) -> dict[str, Option]:
        return schema()[section]

    def __iter__(self) -> Any:
        return iter(_SECTIONS)

    def __len__(self) -> int:
        return len(_SECTIONS)

    def __repr__(self) -> str:
        return repr(schema())


#: section -> key -> (accepted types, default or required marker): a live view of the schema
SCHEMA: Mapping[str, dict[str, Option]] = _Schema()


def _recovery_methods() -> tuple[str, ...]:
    from ..recovery import RECOVERY_METHODS  # lazy: validating a job needs no solver imports

    return RECOVERY_METHODS.names()


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def validate_job(
    job: Mapping[str, Any], *, source: str = "the job", check_paths: bool = True
) -> dict[str, Any]:
    """Return the job with defaults filled in; raise :class:`ConfigError` on any problem."""
    if not isinstance(job, Mapping):
        raise ConfigError(
            f"{source} must be a mapping with a 'cfact:' section, got {type(job).__name__}")
    if "cfact" in job:
        extra = sorted(set(job) - {"cfact"})
        if extra:
            raise ConfigError(
                f"{source}: unknown top-level keys {extra}; everything goes under 'cfact:'")
        job = job["cfact"]
        if not isinstance(job, Mapping):
            raise ConfigError(f"{source}: 'cfact' must be a mapping of sections")
    sections = schema()
    choices_of = _choices()
    unknown = sorted(set(job) - set(sections))
    if unknown:
        raise ConfigError(
            f"{source}: unknown section(s) {unknown} under 'cfact'; valid sections are "
            f"{sorted(sections)}"
        )
    given_factor = job.get("factor", {}) or {}
    method = given_factor.get("method", "nmf") if isinstance(given_factor, Mapping) else "nmf"
    if method not in choices_of[("factor", "method")]:
        raise ConfigError(
            f"{source}: 'cfact.factor.method' is {method!r}; choose one of "
            f"{list(choices_of[('factor', 'method')])}"
        )
    spec = get_method(method)
    out: dict[str, Any] = {}
    for section, fields in sections.items():
        given = job.get(section, {}) or {}
        if section == "factor":
            fields = method_options(method)
        elif section in ("sketch", "recover") and not getattr(spec, section):
            if given:
                raise ConfigError(
                    f"{source}: 'cfact.{section}' does not apply to factor.method {method!r} "
                    f"(it has no {section} stage); remove the section, or choose one of "
                    f"{[m for m in job_methods() if getattr(get_method(m), section)]}"
                )
            out[section] = None
            continue
        out[section] = _section(section, given, fields, choices_of, source,
                                f" for factor.method {method!r}" if section == "factor" else "")
    for section in ("input", "output"):
        so = out[section]["storage_options"]
        if so is not None:
            bad_keys = [k for k in so if not isinstance(k, str)]
            if bad_keys:
                raise ConfigError(
                    f"{source}: 'cfact.{section}.storage_options' keys must be option names "
                    f"(strings), got {bad_keys!r}"
                )
            if "://" not in out[section]["path"]:
                raise ConfigError(
                    f"{source}: 'cfact.{section}.storage_options' is given but "
                    f"'cfact.{section}.path' = {out[section]['path']!r} is a local path; "
                    f"storage options apply to URLs such as s3://bucket/data.zarr: drop them or "
                    f"use a URL"
                )
    for section, key in (("sketch", "n_components"), ("factor", "rank")):
        if out[section] is not None and out[section][key] < 1:
            raise ConfigError(
                f"{source}: 'cfact.{section}.{key}' must be >= 1, got {out[section][key]}")
    if out["recover"] is not None and out["recover"]["refine"] < 0:
        raise ConfigError(
            f"{source}: 'cfact.recover.refine' must be >= 0 (rounds refitting H and W against "
            f"the data after an exact lstsq-data pass; 0 = none), got {out['recover']['refine']}")
    _validate_factor(out["factor"], source)
    if check_paths:
        _check_paths(out, source)
    return out


def _section(section: str, given: Any, fields: Mapping[str, Option],
             choices_of: Mapping[tuple[str, str], tuple[str, ...]], source: str,
             what: str = "") -> dict[str, Any]:
    """One validated section with defaults filled in."""
    if not isinstance(given, Mapping):
        raise ConfigError(f"{source}: 'cfact.{section}' must be a mapping, got {given!r}")
    bad = sorted(set(given) - set(fields))
    if bad:
        raise ConfigError(
            f"{source}: unknown key(s) {bad} in 'cfact.{section}'{what}; valid keys are "
            f"{sorted(fields)}"
        )
    sec: dict[str, Any] = {}
    for key, (types, default) in fields.items():
        if key in given:
            val = given[key]
            ok = isinstance(val, types) and not (isinstance(val, bool) and bool not in types)
            if not ok:
                raise ConfigError(
                    f"{source}: 'cfact.{section}.{key}' must be {_type_names(types)}, got "
                    f"{val!r} ({type(val).__name__})"
                )
            choices = choices_of.get((section, key))
            if choices and val not in choices:
                raise ConfigError(
                    f"{source}: 'cfact.{section}.{key}' is {val!r}; choose one of "
                    f"{list(choices)}"
                )
            sec[key] = val
        elif default is _REQ:
            raise ConfigError(f"{source}: 'cfact.{section}.{key}' is required")
        else:
            sec[key] = copy.deepcopy(default)
    return sec


def validate_factor(section: Mapping[str, Any], source: str = "factor=") -> dict[str, Any]:
    """A ``factor`` section (``method``, ``rank`` and the method's options) validated and
    completed with the method's defaults, as a job file's is: unknown keys, wrong types and bad
    values are :class:`ConfigError` naming the key."""
    method = section.get("method", "nmf")
    methods = job_methods()
    if method not in methods:
        raise ConfigError(f"{source}: factor method is {method!r}; choose one of {list(methods)}")
    out = _section("factor", section, method_options(method), _choices(), source,
                   f" for factor.method {method!r}")
    if out["rank"] < 1:
        raise ConfigError(f"{source}: 'cfact.factor.rank' must be >= 1, got {out['rank']}")
    _validate_factor(out, source)
    return out


def _check_paths(job: dict[str, Any], source: str) -> None:
    root = config.get("run.allowed-root", None)
    if not root:
        return
    root = os.path.realpath(os.path.expanduser(str(root)))
    for section in ("input", "output"):
        p = job[section]["path"]
        if "://" in p:
            continue
        real = os.path.realpath(os.path.expanduser(p))
        if os.path.commonpath([root, real]) != root:
            raise ConfigError(
                f"{source}: 'cfact.{section}.path' = {p!r} resolves to {real!r}, outside the "
                f"allowed root {root!r} (cfact.run.allowed-root); move the data under it or "
                f"change the setting"
            )


def load_job(path: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Read and validate a YAML job file (or validate a dict); relative paths are taken from the
    file's directory."""
    if isinstance(path, Mapping):
        return validate_job(path)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConfigError(f"job file {path!r} does not exist")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"job file {path!r} is not valid YAML: {e}") from e
    job = validate_job(raw, source=f"job file {path!r}", check_paths=False)
    base = os.path.dirname(os.path.abspath(path))
    for section in ("input", "output"):
        p = job[section]["path"]
        if "://" not in p and not os.path.isabs(p):
            job[section]["path"] = os.path.join(base, p)
    # a factor option naming a file (dgd-local's .npy topology) is taken from there too
    topo = job["factor"].get("topology")
    if isinstance(topo, str) and topo.endswith(".npy") and not os.path.isabs(topo):
        job["factor"]["topology"] = os.path.join(base, topo)
    _check_paths(job, f"job file {path!r}")
    return job
