"""``cfact factor``: factorize a sketch (or raw matrix) stored in Zarr and write the factors.

Methods are entries of the factorization registry
(:data:`cfact_dask.pipeline.FACTORIZATIONS`): the command's ``--method`` choices are the entries
with a runner, read when the command line is parsed, and :data:`METHODS` is a live name ->
runner view of them. :func:`run_factor` runs svd / sparse-pca / cp and writes their results.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, get_args

import click

from ..errors import ConfigError
from ..factor._als import Solver
from ..factor._nmf import Init
from ..pipeline._methods import FACTORIZATIONS, cli_runners
from ._session import RegistryChoice, Session, session_options, with_session

__all__ = ["METHODS", "TopologyType", "factor", "factor_cmd", "register_method", "run_cp",
           "run_dgd_local", "run_factor", "run_nmf", "run_sparse_pca", "run_svd"]

logger = logging.getLogger(__name__)


def run_nmf(data: Any, rank: int, opts: dict[str, Any], client: Any) -> Any:
    """``cfact factor --method nmf``: :func:`cfact_dask.nmf` with the command's options."""
    from ..factor._nmf import nmf

    semi = {"auto": None, "yes": True, "no": False}[opts["semi"]]
    return nmf(
        data, rank, solver=opts["solver"], init=opts["init"], n_init=opts["n_init"],
        max_iter=opts["max_iter"], tol=opts["tol"], semi=semi, negative=opts["negative"],
        random_state=opts["seed"], checkpoint=opts["checkpoint"], verbose=not opts["quiet"],
        randomized=opts.get("randomized", False), client=client,
    )


class _DGDOutput:
    """Adapter giving a :class:`~cfact_dask.DGDResult` the ``to_zarr`` the command calls."""

    def __init__(self, res: Any) -> None:
        self.res = res
        self.n_iter_ = res.n_iter
        self.reconstruction_err_ = res.relative_error

    def to_zarr(self, store: str, group: str = "factors", *, overwrite: bool = False) -> str:
        from .consensus import write_result

        return write_result(self.res, store, group=group, overwrite=overwrite)


def run_dgd_local(data: Any, rank: int, opts: dict[str, Any], client: Any) -> Any:
    """``cfact factor --method dgd-local``: :func:`cfact_dask.dgd_local` (3000 iterations and
    tol 1e-10 unless --max-iter / --tol are given)."""
    from ..factor.consensus._dgd_local import dgd_local

    res = dgd_local(
        data, rank, n_nodes=opts["nodes"], topology=opts["topology"],
        max_iter=opts["max_iter"] if opts["max_iter_given"] else 3000,
        tol=opts["tol"] if opts["tol_given"] else 1e-10,
        checkpoint=opts["checkpoint"], random_state=opts["seed"], client=client,
    )
    return _DGDOutput(res)


class _Written:
    """Adapter for results that :func:`run_factor` writes itself."""

    def __init__(self, method: str, data: Any, rank: int, opts: dict[str, Any], client: Any):
        self.method, self.data, self.rank, self.opts, self.client = method, data, rank, opts, client
        self.n_iter_: int | None = None
        self.reconstruction_err_ = float("nan")
        self.error_label = "relative error"

    def to_zarr(self, store: str, group: str = "factors", *, overwrite: bool = False) -> str:
        kw: dict[str, Any] = {"random_state": self.opts["seed"]}
        if self.method != "svd":
            kw.update(max_iter=self.opts["max_iter"], tol=self.opts["tol"])
        res = run_factor(self.method, self.data, self.rank, out=store, group=group,
                         overwrite=overwrite, client=self.client, **kw)
        on = " of the sketch" if _is_sketch(self.data) else ""
        if self.method == "svd":
            # measured on a held-out test sketch taken in the same pass
            self.n_iter_ = None
            self.reconstruction_err_ = float(res.error_estimate)
            self.error_label = f"estimated relative error{on}"
        elif self.method == "sparse-pca":
            # sparse PCA minimises ½‖M − W H‖² + α‖W‖₁: its history is that objective
            self.n_iter_ = int(res.n_iter)
            self.reconstruction_err_ = float(res.errors[-1]) if res.errors else float("nan")
            self.error_label = "objective"
        else:
            self.n_iter_ = int(getattr(res, "n_iter_", getattr(res, "n_iter", 0)))
            self.reconstruction_err_ = float(res.reconstruction_err_)
            self.error_label = f"relative error{on}"
        return f"{store}/{group}"


def _is_sketch(data: Any) -> bool:
    from ..sketching._sketch import Sketch

    return isinstance(data, Sketch)


def run_svd(data: Any, rank: int, opts: dict[str, Any], client: Any) -> Any:
    """``cfact factor --method svd``: run and written by :func:`run_factor` at ``to_zarr``."""
    return _Written("svd", data, rank, opts, client)


def run_sparse_pca(data: Any, rank: int, opts: dict[str, Any], client: Any) -> Any:
    """``cfact factor --method sparse-pca``: run and written by :func:`run_factor`."""
    return _Written("sparse-pca", data, rank, opts, client)


def run_cp(data: Any, rank: int, opts: dict[str, Any], client: Any) -> Any:
    """``cfact factor --method cp``: run and written by :func:`run_factor` at ``to_zarr``."""
    return _Written("cp", data, rank, opts, client)


#: method name -> runner(data, rank, options, client) returning a result with ``to_zarr``: a
#: live view of the factorization registry (setting an item replaces that entry's runner)
METHODS = cli_runners()


def register_method(name: str, runner: Callable[[Any, int, dict[str, Any], Any], Any]) -> None:
    """Make ``cfact factor --method NAME`` available (call before the CLI parses arguments);
    the same as ``FACTORIZATIONS.register(name, Factorization(name, cli=runner, job=False))``
    for a new name."""
    METHODS[name] = runner


def _has_runner(entry: Any) -> bool:
    return entry.cli is not None


def _NMF_RESULT_TYPES() -> tuple[type, ...]:
    from ..factor._nmf import NMFResult

    return (NMFResult,)


def _load(store: str, group: str | None, variable: str | None, feature_axis: int) -> Any:
    import zarr

    from ..errors import StoreNotFoundError
    from ..io import open_array
    from ..sketching._sketch import Sketch

    if not os.path.exists(store) and "://" not in store:
        raise StoreNotFoundError(f"no Zarr store at {store!r}")
    node = zarr.open(store, mode="r")
    candidates = [group] if group else ["sketch"]
    if isinstance(node, zarr.Group):
        for g in candidates:
            if g in node and (dict(node[g].attrs).get("cfact") or {}).get("type") == "sketch":
                return Sketch.from_zarr(store, group=g)
    if group and isinstance(node, zarr.Group) and group in node:
        return open_array(os.path.join(store, group), feature_axis=feature_axis,
                          variable=variable)
    return open_array(store, feature_axis=feature_axis, variable=variable)


class TopologyType(click.ParamType):
    """A graph name the code accepts (:data:`cfact_dask.factor.consensus.topology.GRAPHS`) or a
    ``.npy`` matrix."""

    name = "topology"

    def get_metavar(self, param: Any, ctx: Any = None) -> str:
        from ..factor.consensus.topology import GRAPHS

        return "[" + "|".join(GRAPHS) + "|FILE.npy]"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        from ..factor.consensus.topology import GRAPHS

        v = str(value)
        if v in GRAPHS or v.endswith(".npy"):
            return v
        self.fail(f"{v!r} is not one of {', '.join(GRAPHS)} or a .npy adjacency matrix",
                  param, ctx)


def _fmt_err(x: Any) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if v != v else f"{v:.4g}"


@click.command("factor")
@click.argument("store", metavar="SKETCH_STORE", type=str)
@click.option("--method", "method", type=RegistryChoice(FACTORIZATIONS, _has_runner),
              default="nmf", show_default=True, help="Factorization to run.")
@click.option("--rank", "-r", type=click.IntRange(min=1), required=True,
              help="Number of components.")
@click.option("--out", "out", type=str, required=True, help="Zarr store for the factors.")
@click.option("--out-group", default="factors", show_default=True)
@click.option("--group", default=None, help="Group of the sketch (default 'sketch') or array.")
@click.option("--variable", default=None, help="Array inside a group for raw data.")
@click.option("--feature-axis", default=0, show_default=True, type=int,
              help="Features axis of raw data (sketches know theirs).")
@click.option("--solver", type=click.Choice(get_args(Solver)), default="hals", show_default=True)
@click.option("--init", type=click.Choice(get_args(Init)), default="nndsvda", show_default=True)
@click.option("--n-init", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--randomized", is_flag=True,
              help="nmf: randomized HALS, iterating on a rank-(r + 10) QB approximation of the "
                   "data (3 passes, then no reads per iteration).")
@click.option("--max-iter", default=None, type=click.IntRange(min=1),
              help="Iterations at most (nmf: 500, dgd-local: 3000).")
@click.option("--tol", default=None, type=click.FloatRange(min=0),
              help="Tolerance (nmf: 1e-6, dgd-local: 1e-10).")
@click.option("--nodes", default=8, show_default=True, type=click.IntRange(min=1),
              help="dgd-local: number of nodes J (column blocks).")
@click.option("--topology", default="ring", show_default=True, type=TopologyType(),
              help="dgd-local: the communication graph.")
@click.option("--semi", type=click.Choice(["auto", "yes", "no"]), default="auto",
              show_default=True, help="Semi-NMF (W signed); auto: for signed sketches.")
@click.option("--negative", type=click.Choice(["error", "clip"]), default="error",
              show_default=True, help="Genuinely signed raw data: refuse or clip to 0.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--checkpoint", "checkpoint_store", default=None,
              help="Zarr store for checkpoints; rerunning resumes from it.")
@click.option("--checkpoint-every", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--overwrite", is_flag=True, help="Replace an existing output group.")
@session_options
@with_session
def factor_cmd(session: Session, store: str, method: str, rank: int, out: str, out_group: str,
               group: str | None, variable: str | None, feature_axis: int, solver: str, init: str,
               n_init: int, randomized: bool, max_iter: int | None, tol: float | None, nodes: int,
               topology: str, semi: str, negative: str, seed: int,
               checkpoint_store: str | None, checkpoint_every: int, overwrite: bool) -> None:
    """Factorize SKETCH_STORE (a sketch written by `cfact sketch`, or a raw matrix) and write the
    factors to --out (a Zarr group; complete only once every array is written)."""
    import time

    from .._runtime.cluster import client_context
    from ..factor._nmf import NMFResult

    t0 = time.perf_counter()
    data = _load(store, group, variable, feature_axis)
    opts = dict(solver=solver, init=init, n_init=n_init, randomized=randomized,
                max_iter=500 if max_iter is None else max_iter,
                tol=1e-6 if tol is None else tol, max_iter_given=max_iter is not None,
                tol_given=tol is not None, nodes=nodes, topology=topology, semi=semi,
                negative=negative, seed=seed, quiet=not session.verbose,
                checkpoint=(dict(store=checkpoint_store, every=checkpoint_every)
                            if checkpoint_store else None))
    # the output is checked before the factorization runs (cfact_dask._runtime.outputs)
    from .._runtime.outputs import prepare_group, resolve

    src = data.provenance.get("read_from") if hasattr(data, "provenance") else None
    inputs = [resolve(os.path.join(store, group)) if group else resolve(store)]
    if src:
        inputs = [f"{src['store']}/{src['group']}" if "://" in src["store"]
                  else os.path.join(src["store"], src["group"])]
    prepare_group(out, out_group, overwrite=overwrite, inputs=inputs,
                  what="factors output", flag="--overwrite")
    upstream = ({src["group"]: src.get("id")}
                if src and resolve(out) == src["store"] and src.get("id") else None)
    nbytes = int(getattr(data, "data", data).nbytes)
    with client_context(session.client, nbytes=nbytes) as c:
        res = METHODS[method](data, rank, opts, c)
        if isinstance(res, NMFResult):
            # H keeps the sample labels the sketch (or the labelled input) carries
            path = res.to_zarr(out, group=out_group, overwrite=overwrite, upstream=upstream,
                               labels=_labels(data, store, group))
        else:
            path = res.to_zarr(out, group=out_group, overwrite=overwrite)
    label, err = _error_label(res, data)
    n_iter = getattr(res, "n_iter_", None)
    payload = {"command": "factor", "method": method, "rank": rank, "output": path,
               "n_iter": n_iter, "error": err, "error_label": label,
               "seconds": time.perf_counter() - t0}
    iters = "" if n_iter is None else f"{n_iter} iterations, "
    session.report(payload, f"{method}: rank {rank}, {iters}{label} {_fmt_err(err)} -> {path}")


#: the command's historical name (``cfact_dask.cli`` imports ``factor_cmd``, so that
#: ``cfact_dask.cli.factor`` stays this module, not the command)
factor = factor_cmd


def _labels(data: Any, store: str, group: str | None) -> Any:
    """The input's labels: stored with a sketch group, or those of a labelled raw input."""
    from .._runtime.labels import Labels, labels_of_store

    if _is_sketch(data):
        return labels_of_store(store, group or "sketch")
    return Labels.from_input(data)


def _error_label(res: Any, data: Any = None) -> tuple[str, Any]:
    """What the figure a method reports is, and its value (each method measures its own)."""
    default = "relative error of the sketch" if _is_sketch(data) else "relative error"
    label = getattr(res, "error_label", default)
    return label, getattr(res, "reconstruction_err_", None)


# ---------------------------------------------------------------------------- svd / sparse-pca / cp
#: the methods :func:`run_factor` runs and writes itself
_WRITTEN = ("svd", "sparse-pca", "cp")


def run_factor(
    method: str,
    sketch_or_input: Any,
    rank: int,
    *,
    out: str | os.PathLike | None = None,
    group: str | None = None,
    overwrite: bool = False,
    client: Any = None,
    **opts: Any,
) -> Any:
    """Run ``method`` on a sketch or input with ``rank`` and options; optionally write to Zarr.

    Parameters
    ----------
    method : {"svd", "sparse-pca", "cp"}
    sketch_or_input : Sketch, InputArray, path or array
    rank : int
    out : path, optional
        Zarr store to write the result to (group ``method`` by default).
    opts
        Keyword options of :func:`cfact_dask.svd` (``passes``, ``oversample``, ``kind``,
        ``random_state``...), :func:`cfact_dask.sparse_pca` (``alpha``,
        ``max_iter``, ``tol``...) or :func:`cfact_dask.cp` (``nonnegative``, ``sketch``,
        ``max_iter``, ``tol``, ``init``, ``checkpoint``...).

    Returns
    -------
    SVDResult, SparsePCAResult or CPResult
    """
    m = method.replace("_", "-").lower()
    if m == "svd":
        from ..factor._svd import svd

        res = svd(sketch_or_input, rank, client=client, **opts)
        if out is not None:
            res.to_zarr(out, group or m, overwrite=overwrite, row_dim=_dims(sketch_or_input)[0])
    elif m == "sparse-pca":
        from ..factor._sparse_pca import sparse_pca

        res = sparse_pca(sketch_or_input, rank, client=client, **opts)
        if out is not None:
            res.to_zarr(out, group or m, overwrite=overwrite)
    elif m == "cp":
        from ..factor._cp import cp

        res = cp(sketch_or_input, rank, client=client, **opts)
        if out is not None:
            res.to_zarr(out, group or "cp", overwrite=overwrite)
    else:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(_WRITTEN)}")
    return res


def _dims(sketch_or_input: Any) -> tuple[str, str]:
    """Names of the row and column dimensions of what was factorized."""
    from ..sketching._sketch import Sketch

    return ("sketch_row" if isinstance(sketch_or_input, Sketch) else "feature"), "sample"
