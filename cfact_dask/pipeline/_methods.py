"""The factorization registry: one :class:`Factorization` entry per ``factor.method``.

An entry holds what every face of the package needs to know about a method: its options and
their defaults (the job schema's ``factor`` section is generated from them, see
:mod:`.job`), where it is available (job files, the Factorize-Recover pipeline, ``cfact factor``)
and the ``cfact factor`` runner. The CLI's ``--method`` choices, the job schema and the pipeline
read :data:`FACTORIZATIONS` when they run, so a new factorization is a module in
:mod:`cfact_dask.factor` plus one entry here (or one ``FACTORIZATIONS.register`` call)::

    from cfact_dask.pipeline import FACTORIZATIONS, Factorization
    FACTORIZATIONS.register("mine", Factorization("mine", cli=my_runner, job=False))
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from typing import Any

from .._runtime.registry import Registry
from ..errors import ConfigError

__all__ = ["COMMON_OPTIONS", "FACTORIZATIONS", "ITERATIVE_OPTIONS", "REQUIRED", "Factorization",
           "Option", "cli_runners", "get", "job_methods", "job_options", "method_options",
           "pipeline_defaults", "pipeline_methods", "validate_options"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


#: marker of a required option (no default)
REQUIRED: Any = _Required()

#: an option of a job section: (accepted types, default or :data:`REQUIRED`)
Option = tuple[tuple[type, ...], Any]

#: a ``cfact factor`` runner: ``(data, rank, options, client) -> result with to_zarr``
Runner = Callable[[Any, int, dict[str, Any], Any], Any]

#: the options every factorization of a job takes (``cfact.factor`` of a job file)
COMMON_OPTIONS: dict[str, Option] = {
    "method": ((str,), "nmf"),
    "rank": ((int,), REQUIRED),
    "max_iter": ((int,), 500),
    "tol": ((float, int), 1e-6),
    "random_state": ((int,), 0),
    "checkpoint_every": ((int,), 10),
}


@dataclass(frozen=True)
class Factorization:
    """One factorization method: its options, where it runs and its ``cfact factor`` runner.

    Parameters
    ----------
    name : str
        ``factor.method`` of a job, ``cfact factor --method``.
    options : mapping of str to (types, default)
        The method's own options of the job's ``factor`` section, beside
        :data:`COMMON_OPTIONS` (a job is validated against its own method's options, see
        :func:`method_options`, so two methods may give one key different defaults; an entry may
        also override a common default, e.g. `max_iter`).
    job : bool
        Accepted as ``factor.method`` by the job schema.
    pipeline : bool
        Runs inside :func:`~cfact_dask.factorize_recover` (else the pipeline refuses it and
        points to ``cfact factor``).
    semi : bool, optional
        Forces ``semi`` of the NMF the pipeline runs (``semi-nmf``).
    cli : callable or str, optional
        The ``cfact factor`` runner ``(data, rank, options, client)`` returning a result with
        ``to_zarr``, or ``"module:attribute"`` naming it (imported when the command runs, so
        the job schema does not import the CLI). ``None``: not a ``cfact factor`` method.
    validate : callable, optional
        ``validate(options, source)`` raising :class:`ConfigError` for a bad job section.
    summary : str
        One line for help texts.
    stages : MethodStages or str, optional
        The method's stages in the resumable pipeline of every other method
        (:func:`~cfact_dask.pipeline.run_method`), or ``"module:attribute"`` naming them.
        NMF / semi-NMF (``pipeline=True``) run Factorize-Recover instead.
    sketch : bool
        The job's ``sketch`` section applies to this method (otherwise giving one is refused).
    recover : bool
        The job's ``recover`` section applies to this method (otherwise giving one is refused).
    iterative : bool
        The method iterates: it takes ``max_iter``, ``tol`` and ``checkpoint_every``.
    """

    name: str
    options: Mapping[str, Option] = field(default_factory=dict)
    job: bool = True
    pipeline: bool = False
    semi: bool | None = None
    cli: Runner | str | None = None
    validate: Callable[[Mapping[str, Any], str], None] | None = None
    summary: str = ""
    stages: Any = None
    sketch: bool = False
    recover: bool = False
    iterative: bool = True

    def runner(self) -> Runner:
        """The ``cfact factor`` runner (imported when it is named by a string)."""
        if self.cli is None:
            raise ConfigError(f"factorization {self.name!r} has no `cfact factor` runner")
        if callable(self.cli):
            return self.cli
        module, _, attr = self.cli.partition(":")
        return getattr(importlib.import_module(module), attr)


#: factorization name -> :class:`Factorization`
FACTORIZATIONS: Registry[Factorization] = Registry("factorization method")

_NMF_OPTIONS: dict[str, Option] = {
    "solver": ((str,), "hals"),
    "init": ((str,), "nndsvda"),
}

FACTORIZATIONS.register("nmf", Factorization(
    "nmf", _NMF_OPTIONS, pipeline=True, sketch=True, recover=True,
    cli="cfact_dask.cli.factor:run_nmf", summary="compressed NMF (ALS / HALS) on the sketch"))
FACTORIZATIONS.register("semi-nmf", Factorization(
    "semi-nmf", _NMF_OPTIONS, pipeline=True, semi=True, sketch=True, recover=True,
    summary="semi-NMF (W signed, H >= 0) on a signed sketch"))
FACTORIZATIONS.register("svd", Factorization(
    "svd", {"passes": ((int,), 1), "oversample": ((int, type(None)), None),
            "co_range": ((int, type(None)), None), "kind": ((str,), "gaussian"),
            "n_test": ((int,), 16), "warn_above": ((float, int), 0.25)},
    iterative=False, stages="cfact_dask.pipeline._svd:STAGES",
    validate=lambda o, src: _svd_check(o, src),
    cli="cfact_dask.cli.factor:run_svd", summary="randomized truncated SVD (one pass)"))
FACTORIZATIONS.register("lp", Factorization(
    "lp", {"p": ((float, int), 1.0), "solver": ((str,), "irls"),
           "entrywise": ((bool,), False), "irls_update": ((str,), "eigh"),
           "select": ((str,), "best"), "max_iter": ((int, type(None)), None),
           "tol": ((float, int), 1e-5), "warn_above": ((float, int), 0.25)},
    stages="cfact_dask.pipeline._embed:LP_STAGES", validate=lambda o, src: _lp_check(o, src),
    summary="robust ℓp low-rank approximation of the rows (IRLS or Löwner ellipsoid)"))
FACTORIZATIONS.register("messi", Factorization(
    "messi", {"n_subspaces": ((int,), 5), "n_init": ((int,), 5), "loss": ((str,), "l2"),
              "p": ((float, int), 1.0), "scale": ((float, int, type(None)), None),
              "max_iter": ((int,), 20), "tol": ((float, int), 1e-4),
              "warn_above": ((float, int), 0.25)},
    stages="cfact_dask.pipeline._embed:MESSI_STAGES",
    validate=lambda o, src: _messi_check(o, src),
    summary="MESSI projective clustering: n_subspaces subspaces of dimension rank"))
FACTORIZATIONS.register("sparse-pca", Factorization(
    "sparse-pca", {"alpha": ((float, int), 1.0), "ridge_alpha": ((float, int), 0.01),
                   "center": ((bool,), True), "warn_above": ((float, int), 0.25)},
    iterative=True, stages="cfact_dask.pipeline._sparse_pca:STAGES",
    validate=lambda o, src: _sparse_pca_check(o, src),
    cli="cfact_dask.cli.factor:run_sparse_pca", summary="sparse PCA"))
FACTORIZATIONS.register("dgd-local", Factorization(
    "dgd-local", {
        "n_nodes": ((int,), 8), "topology": ((str,), "ring"),
        "weights": ((str,), "max-degree"), "lazy": ((bool, type(None)), None),
        "edge_probability": ((float, int), 0.3), "graph_seed": ((int,), 0),
        "solver": ((str,), "auto"), "step": ((float, int, str), "auto"),
        "step_schedule": ((str,), "constant"), "step_decay": ((float, int), 1e-3),
        "consensus_weight": ((float, int), 4.0), "polish": ((bool,), True),
        "mode": ((str,), "workers"),
        # a stall of 1e-6 (relative change of cost + consensus over 10 iterations) ends a run on
        # noisy data once its fit has settled; the CLI's 1e-10 runs max_iter on any noisy data
        "max_iter": ((int,), 3000), "tol": ((float, int), 1e-6),
        # a checkpoint is also an anchor (every node's state is pulled to the client)
        "checkpoint_every": ((int,), 100),
        "warn_above": ((float, int), 0.25), "consensus_tol": ((float, int), 1e-3)},
    stages="cfact_dask.pipeline._dgd:STAGES",
    validate=lambda o, src: importlib.import_module("cfact_dask.pipeline._dgd").validate(o, src),
    cli="cfact_dask.cli.factor:run_dgd_local",
    summary="decentralized DGD+LOCAL over column blocks"))
FACTORIZATIONS.register("cp", Factorization(
    "cp", {"max_iter": ((int,), 100), "tol": ((float, int), 1e-8),
           "nonnegative": ((bool,), False), "init": ((str,), "svd"),
           "sketch_mode": ((int, type(None)), None), "sketch_size": ((int, type(None)), None),
           "sketch_kind": ((str,), "expander"), "recovery": ((str,), "refit"),
           "holdout": ((int,), 32), "sparsity": ((int, type(None)), None),
           "warn_above": ((float, int), 0.25)},
    stages="cfact_dask.pipeline._cp:STAGES",
    validate=lambda o, src: importlib.import_module("cfact_dask.pipeline._cp").validate(o, src),
    cli="cfact_dask.cli.factor:run_cp", summary="CP of an N-way tensor (ALS; optionally one "
    "mode sketched and recovered)"))


def _svd_check(o: Mapping[str, Any], source: str) -> None:
    if o["passes"] not in (1, 2):
        raise ConfigError(f"{source}: 'cfact.factor.passes' must be 1 or 2, got {o['passes']!r}")
    from ..sketching.operators import SKETCH_KINDS

    if o["kind"] not in SKETCH_KINDS:
        raise ConfigError(f"{source}: 'cfact.factor.kind' is {o['kind']!r}; choose one of "
                          f"{list(SKETCH_KINDS.names())}")
    if o["n_test"] < 0 or float(o["warn_above"]) <= 0:
        raise ConfigError(f"{source}: 'cfact.factor.n_test' must be >= 0 and "
                          f"'cfact.factor.warn_above' > 0")
    if (o["oversample"] is not None and o["oversample"] < 0) or (
            o["co_range"] is not None and o["co_range"] < 1):
        raise ConfigError(f"{source}: 'cfact.factor.oversample' must be >= 0 and "
                          f"'cfact.factor.co_range' >= 1 (or null for the defaults), got "
                          f"{o['oversample']!r} and {o['co_range']!r}")


def _sparse_pca_check(o: Mapping[str, Any], source: str) -> None:
    from ._sparse_pca import validate

    validate(o, source)


def _choice(o: Mapping[str, Any], key: str, choices: tuple[str, ...], source: str) -> None:
    if o[key] not in choices:
        raise ConfigError(f"{source}: 'cfact.factor.{key}' is {o[key]!r} for factor.method "
                          f"{o['method']!r}; choose one of {list(choices)}")


def _embed_common(o: Mapping[str, Any], source: str) -> None:
    if not 1.0 <= float(o["p"]) <= 2.0:
        raise ConfigError(f"{source}: 'cfact.factor.p' is {o['p']!r}; it must lie in [1, 2] "
                          f"(1 most robust, 2 least squares)")
    if float(o["warn_above"]) <= 0 or float(o["tol"]) < 0:
        raise ConfigError(f"{source}: 'cfact.factor.warn_above' must be > 0 and "
                          f"'cfact.factor.tol' >= 0")
    if o["max_iter"] is not None and o["max_iter"] < 0:
        raise ConfigError(f"{source}: 'cfact.factor.max_iter' must be >= 0")


def _lp_check(o: Mapping[str, Any], source: str) -> None:
    _embed_common(o, source)
    _choice(o, "solver", ("irls", "ellipsoid"), source)
    _choice(o, "irls_update", ("eigh", "subspace"), source)
    _choice(o, "select", ("best", "final"), source)
    if o["entrywise"] and o["solver"] != "irls":
        raise ConfigError(f"{source}: 'cfact.factor.entrywise' is solved by solver irls only; "
                          f"set 'cfact.factor.solver: irls' or drop entrywise")


def _messi_check(o: Mapping[str, Any], source: str) -> None:
    from ..embed.clustering import LOSSES

    _embed_common(o, source)
    _choice(o, "loss", LOSSES, source)
    for key in ("n_subspaces", "n_init"):
        if o[key] < 1:
            raise ConfigError(f"{source}: 'cfact.factor.{key}' must be >= 1, got {o[key]}")
    if o["scale"] is not None and not float(o["scale"]) > 0:
        raise ConfigError(f"{source}: 'cfact.factor.scale' must be > 0 (or null for 0.1 x "
                          f"the rows' RMS norm), got {o['scale']!r}")


def get(name: str) -> Factorization:
    """The entry of ``name`` (:class:`ConfigError` naming the choices if there is none)."""
    return FACTORIZATIONS.get(name)


def job_methods() -> tuple[str, ...]:
    """The ``factor.method`` values a job file accepts."""
    return tuple(n for n, f in FACTORIZATIONS.items() if f.job)


def pipeline_methods() -> tuple[str, ...]:
    """The methods :func:`~cfact_dask.factorize_recover` runs."""
    return tuple(n for n, f in FACTORIZATIONS.items() if f.pipeline)


#: the options of :data:`COMMON_OPTIONS` that only iterative methods take
ITERATIVE_OPTIONS = ("max_iter", "tol", "checkpoint_every")


def method_options(name: str) -> dict[str, Option]:
    """The keys a job's ``factor`` section takes when ``method`` is ``name``: the common ones
    (the iteration controls only for iterative methods) and the method's own, which may set
    their own defaults."""
    spec = FACTORIZATIONS.get(name)
    out = {k: o for k, o in COMMON_OPTIONS.items()
           if spec.iterative or k not in ITERATIVE_OPTIONS}
    out.update(spec.options)
    return out


def job_options() -> dict[str, Option]:
    """The job schema's ``factor`` section: :data:`COMMON_OPTIONS` and every job method's own
    options (registration order)."""
    out = dict(COMMON_OPTIONS)
    for f in FACTORIZATIONS.names():
        spec = FACTORIZATIONS.get(f)
        if spec.job:
            for key, opt in spec.options.items():
                out.setdefault(key, opt)
    return out


def pipeline_defaults() -> dict[str, Any]:
    """The ``factor=`` defaults of :func:`~cfact_dask.factorize_recover` (they are recorded in
    a run store's parameters, so they must stay what they are for resumes to match)."""
    out = {k: d for k, (_, d) in COMMON_OPTIONS.items() if d is not REQUIRED}
    for name in pipeline_methods():
        for key, (_, d) in FACTORIZATIONS.get(name).options.items():
            out.setdefault(key, d)
    return out


def validate_options(section: Mapping[str, Any], source: str) -> None:
    """Run the chosen method's own checks on a validated ``factor`` section."""
    spec = FACTORIZATIONS.get(section["method"])
    if spec.validate is not None:
        spec.validate(section, source)


class _Runners(MutableMapping):
    """``cfact factor``'s runners by method name: a live view of :data:`FACTORIZATIONS`.

    Setting an item replaces (or registers) the entry's runner; that is how
    :func:`cfact_dask.cli.factor.register_method` and tests swap one.
    """

    def __getitem__(self, name: str) -> Runner:
        if name not in FACTORIZATIONS or FACTORIZATIONS.get(name).cli is None:
            raise KeyError(name)
        return FACTORIZATIONS.get(name).runner()

    def __setitem__(self, name: str, runner: Runner) -> None:
        if name in FACTORIZATIONS:
            FACTORIZATIONS.register(name, replace(FACTORIZATIONS.get(name), cli=runner),
                                    replace=True)
        else:
            FACTORIZATIONS.register(name, Factorization(name, cli=runner, job=False))

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        FACTORIZATIONS.unregister(name)

    def __contains__(self, name: object) -> bool:
        return name in FACTORIZATIONS and FACTORIZATIONS.get(name).cli is not None  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[str]:
        return iter([n for n, f in FACTORIZATIONS.items() if f.cli is not None])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"cli runners of {FACTORIZATIONS!r}"


def cli_runners() -> MutableMapping[str, Runner]:
    """The ``cfact factor`` runners, by method name (a live view of :data:`FACTORIZATIONS`)."""
    return _Runners()
