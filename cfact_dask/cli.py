"""The ``cfact`` command line (also ``dask cfact ...`` through the ``dask_cli`` entry point)."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from . import __version__

__all__ = ["cli", "main"]


# ---------------------------------------------------------------------------- shared options
def storage_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--storage-option KEY=VALUE`` (repeatable): fsspec options for every remote URL."""
    return click.option(
        "--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
        help="fsspec option for remote stores (s3://...), e.g. endpoint_url=https://s3.example"
             ".org or profile=lab; repeatable; values are read as YAML scalars. Credentials are "
             "better left to the environment (AWS_ACCESS_KEY_ID ...).")(f)


def parse_storage_options(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``("a=1", "b.c=x")`` -> ``{"a": 1, "b": {"c": "x"}}`` (dotted keys nest)."""
    import yaml

    from .errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--storage-option {key.strip() or item!r}: expected KEY=VALUE, e.g. "
                f"--storage-option endpoint_url=https://s3.example.org"
            )
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed = value
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = parsed
    return out


def with_storage(f: Callable[..., Any]) -> Callable[..., Any]:
    """For commands without a :class:`Session`: apply ``--storage-option`` (and the retries
    and the environment's endpoint) to every remote URL the command opens."""

    @functools.wraps(f)
    def wrapper(*args: Any, storage_option: tuple[str, ...] = (), **kwargs: Any) -> Any:
        from ._runtime import storage
        from .errors import CfactError

        try:
            options = parse_storage_options(storage_option)
        except CfactError as e:
            raise click.ClickException(str(e)) from e
        with storage.cli_scope(options):
            return f(*args, **kwargs)

    return storage_option(wrapper)


def cluster_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--scheduler`` / ``--scheduler-file`` / ``--quiet`` / ``--json`` /
    ``--storage-option`` for commands that compute."""
    f = storage_option(f)
    f = click.option("--json", "as_json", is_flag=True,
                     help="Print a machine-readable JSON report on stdout (implies --quiet).")(f)
    f = click.option("--quiet", "-q", is_flag=True, help="No progress bars or log lines.")(f)
    f = click.option("--scheduler-file", type=click.Path(), default=None,
                     help="Scheduler file of a running Dask cluster.")(f)
    f = click.option("--scheduler", default=None,
                     help="Address of a running Dask scheduler (tcp://host:8786, tls://...).")(f)
    return f


class Session:
    """What a command needs to run: the client (if any), output mode and a report printer."""

    def __init__(self, scheduler: str | None, scheduler_file: str | None, quiet: bool,
                 as_json: bool, storage_options: dict[str, Any] | None = None) -> None:
        import dask.config

        from ._runtime import storage
        from .cluster import connect

        self.quiet = quiet or as_json
        self.as_json = as_json
        level = logging.WARNING if self.quiet else logging.INFO
        logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s",
                            stream=sys.stderr)
        logging.getLogger("cfact_dask").setLevel(level)
        if self.quiet:
            import distributed  # noqa: F401  (configures its loggers on import: do that first)

            logging.getLogger("distributed").setLevel(logging.ERROR)
        dask.config.set({"cfact.progress": not self.quiet})
        if scheduler is None and scheduler_file is None:
            # set by the dask-kubernetes operator for DaskJob runners, and by many batch setups
            scheduler = os.environ.get("DASK_SCHEDULER_ADDRESS") or None
        self.client = connect(scheduler=scheduler, scheduler_file=scheduler_file)
        if self.client is not None and not self.quiet:
            click.echo(f"connected to {self.client.scheduler.address}; dashboard: "
                       f"{self.client.dashboard_link}", err=True)
        # last, so that nothing above can fail with the scope entered (close() leaves it)
        self._storage_scope = storage.cli_scope(storage_options)
        self._storage_scope.__enter__()

    def report(self, payload: dict[str, Any], text: str) -> None:
        if self.as_json:
            click.echo(json.dumps(payload, indent=2, default=_json_default))
        else:
            click.echo(text)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self._storage_scope.__exit__(None, None, None)


def _json_default(o: Any) -> Any:
    from ._jsonattrs import json_default

    return json_default(o)


def with_session(f: Callable[..., Any]) -> Callable[..., Any]:
    """Open a :class:`Session` from the cluster options; turn cfact errors into clean exits."""

    @functools.wraps(f)
    def wrapper(scheduler: str | None, scheduler_file: str | None, quiet: bool, as_json: bool,
                storage_option: tuple[str, ...] = (), **kwargs: Any) -> Any:
        from ._runtime.storage import redact
        from .errors import CfactError

        try:
            session = Session(scheduler, scheduler_file, quiet, as_json,
                              parse_storage_options(storage_option))
        except CfactError as e:
            raise click.ClickException(redact(str(e))) from e
        try:
            return f(session, **kwargs)
        except CfactError as e:
            raise click.ClickException(redact(f"{type(e).__name__}: {e}")) from e
        except OSError as e:
            # disk full, permissions, a vanished mount: the message already says where and what
            # to do (see pipeline._stage); a traceback would bury it
            raise click.ClickException(redact(f"{type(e).__name__}: {e}")) from e
        finally:
            session.close()

    return wrapper


# ---------------------------------------------------------------------------- commands
@click.group(name="cfact")
@click.version_option(__version__, prog_name="cfact")
def cli() -> None:
    """cfact: compressed low-rank factorization of chunked data with Dask."""


@cli.command("sketch")
@click.argument("input_path")
@click.argument("output")
@click.option("--n-components", "-d", type=int, required=True, help="Sketch size d.")
@click.option("--kind", type=click.Choice(["expander", "sparse_sign", "countsketch", "gaussian"]),
              default="expander", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--axis", default="0", show_default=True,
              help="Feature axis: an int, or a dim name for labelled stores.")
@click.option("--variable", default=None, help="Variable of an xarray-layout Zarr group.")
@click.option("--group", default="sketch", show_default=True, help="Group in OUTPUT.")
@click.option("--s", "s", type=int, default=None, help="Nonzeros per column (sparse kinds).")
@click.option("--no-check-finite", is_flag=True, help="Do not stop at NaN / Inf.")
@click.option("--overwrite", is_flag=True, help="Replace an existing sketch group.")
@cluster_options
@with_session
def sketch_cmd(session: Session, input_path: str, output: str, n_components: int, kind: str,
               seed: int, axis: str, variable: str | None, group: str, s: int | None,
               no_check_finite: bool, overwrite: bool) -> None:
    """Sketch the feature axis of INPUT_PATH (a Zarr store) into OUTPUT, in one pass."""
    import time

    from .io import open_array
    from .sketch import sketch

    ax: int | str = int(axis) if axis.lstrip("-").isdigit() else axis
    t0 = time.perf_counter()
    inp = open_array(input_path, feature_axis=ax, variable=variable)
    sk = sketch(inp, n_components, kind=kind, seed=seed, s=s,
                check_finite=False if no_check_finite else None)
    where = sk.to_zarr(output, group=group, overwrite=overwrite, client=session.client,
                       progress=not session.quiet)
    dt = time.perf_counter() - t0
    payload = {
        "command": "sketch", "input": input_path, "output": where,
        "input_shape": list(inp.shape), "sketch_shape": list(sk.shape),
        "compression": inp.n_features / n_components, "operator": sk.operator.to_dict(),
        "seconds": dt,
    }
    session.report(payload, f"wrote sketch {sk.shape} ({kind}, d={n_components}, "
                            f"{inp.n_features / n_components:.1f}x compression) to {where} "
                            f"in {dt:.1f} s")


@cli.command("inspect")
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@storage_option
def inspect_cmd(store: str, as_json: bool, storage_option: tuple[str, ...] = ()) -> None:
    """Print shape, chunks, dtype and cfact specs of every array and group in STORE."""
    from ._runtime import storage
    from .errors import CfactError
    from .inspect import describe_store

    try:
        with storage.cli_scope(parse_storage_options(storage_option)):
            info = describe_store(store)
    except (FileNotFoundError, CfactError) as e:
        raise click.ClickException(storage.redact(str(e))) from e
    if as_json:
        click.echo(json.dumps(info, indent=2, default=_json_default))
        return
    for item in info["nodes"]:
        if item["kind"] == "array":
            click.echo(f"{item['path'] or '/'}: array shape={tuple(item['shape'])} "
                       f"chunks={tuple(item['chunks'])} dtype={item['dtype']}"
                       + (f" shards={tuple(item['shards'])}" if item.get("shards") else ""))
        else:
            click.echo(f"{item['path'] or '/'}: group")
        if item.get("cfact"):
            meta = item["cfact"]
            shown = {k: _shorten(v) for k, v in meta.items() if k != "type"}
            click.echo(f"    cfact {meta.get('type')}: " + json.dumps(shown, default=_json_default))


def _shorten(v: Any, keep: int = 4) -> Any:
    """Long lists (iteration histories) as their ends and their length, for reading."""
    if isinstance(v, list) and len(v) > 2 * keep:
        return v[:keep] + [f"... {len(v)} items ..."] + v[-keep:]
    if isinstance(v, dict):
        return {k: _shorten(x, keep) for k, x in v.items()}
    return v


def _register_optional() -> None:
    """Commands that live next to their stage (each module owns its command)."""
    import importlib

    for mod, attr in _COMMANDS:
        try:
            module = importlib.import_module(f"cfact_dask.{mod}")
        except ImportError as e:  # an optional extra missing must not break the rest of the CLI
            logging.getLogger(__name__).debug("command module %s not loaded: %s", mod, e)
            continue
        cmd = getattr(module, attr, None)
        if cmd is not None:
            cli.add_command(cmd)


_COMMANDS: list[tuple[str, str]] = [
    ("_cli_factor", "factor"),
    ("_cli_dgd", "factor_dgd"),
    ("_cli_embed", "compress_embedding"),
    ("_cli_pipeline", "run"),
    ("_cli_pipeline", "demo"),
    ("_cli_pipeline", "plan_cmd"),
    ("_cli_pipeline", "recover_cmd"),
    ("_cli_pipeline", "reconstruct_cmd"),
]

_register_optional()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    cli.main(args=argv, prog_name="cfact")


if __name__ == "__main__":  # python -m cfact_dask.cli
    main()
