"""``cfact sketch`` (one pass over a Zarr input) and ``cfact inspect`` (what a store holds)."""

from __future__ import annotations

import json
from typing import Any

import click

from ..sketching.operators import SKETCH_KINDS
from ._session import (
    RegistryChoice,
    Session,
    json_default,
    parse_storage_options,
    session_options,
    storage_option,
    with_session,
)

__all__ = ["inspect_cmd", "sketch_cmd"]


@click.command("sketch")
@click.argument("input_path")
@click.argument("output")
@click.option("--n-components", "-d", type=click.IntRange(min=1), required=True,
              help="Sketch size d.")
@click.option("--kind", type=RegistryChoice(SKETCH_KINDS), default="expander", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--axis", default="0", show_default=True,
              help="Feature axis: an int, or a dim name for labelled stores.")
@click.option("--variable", default=None, help="Variable of an xarray-layout Zarr group.")
@click.option("--group", default="sketch", show_default=True, help="Group in OUTPUT.")
@click.option("--s", "s", type=click.IntRange(min=1), default=None,
              help="Nonzeros per column (sparse kinds).")
@click.option("--no-check-finite", is_flag=True, help="Do not stop at NaN / Inf.")
@click.option("--holdout", type=click.IntRange(min=0), default=32, show_default=True,
              help="Rows of the independent hold-out sketch taken in the same pass (group "
                   "'holdout'); `cfact recover` certifies its result on it. 0: none.")
@click.option("--overwrite", is_flag=True, help="Replace an existing sketch group.")
@session_options
@with_session
def sketch_cmd(session: Session, input_path: str, output: str, n_components: int, kind: str,
               seed: int, axis: str, variable: str | None, group: str, s: int | None,
               holdout: int, no_check_finite: bool, overwrite: bool) -> None:
    """Sketch the feature axis of INPUT_PATH (a Zarr store) into OUTPUT, in one pass."""
    import time

    from .._runtime.cluster import client_context
    from .._runtime.labels import Labels
    from ..io import open_array
    from ..pipeline._run import sketch_with_holdout

    ax: int | str = int(axis) if axis.lstrip("-").isdigit() else axis
    t0 = time.perf_counter()
    inp = open_array(input_path, feature_axis=ax, variable=variable)
    hold_group = "holdout" if group == "sketch" else f"{group}_holdout"
    with client_context(session.client, nbytes=int(inp.nbytes)) as c:
        sk, hold = sketch_with_holdout(
            inp, n_components, kind=kind, seed=seed, s=s, holdout=holdout,
            check_finite=False if no_check_finite else None, client=c,
            progress=not session.quiet)
        where = sk.to_zarr(output, group=group, overwrite=overwrite, client=c, progress=False,
                           labels=Labels.from_input(inp))
        if hold is not None:
            hold.to_zarr(output, group=hold_group, overwrite=overwrite, client=c, progress=False,
                         name="holdout")
    dt = time.perf_counter() - t0
    payload = {
        "command": "sketch", "input": input_path, "output": where,
        "input_shape": list(inp.shape), "sketch_shape": list(sk.shape),
        "holdout_shape": list(hold.shape) if hold is not None else None,
        "compression": inp.n_features / n_components, "operator": sk.operator.to_dict(),
        "seconds": dt,
    }
    session.report(payload, f"wrote sketch {sk.shape} ({kind}, d={n_components}, "
                            f"{inp.n_features / n_components:.1f}x compression)"
                            + (f" and hold-out sketch {hold.shape}" if hold is not None else "")
                            + f" to {where} in {dt:.1f} s")


@click.command("inspect")
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@storage_option
def inspect_cmd(store: str, as_json: bool, storage_option: tuple[str, ...] = ()) -> None:
    """Print shape, chunks, dtype and cfact specs of every array and group in STORE."""
    from .._runtime import storage
    from ..errors import CfactError
    from ..io import describe_store

    try:
        with storage.cli_scope(parse_storage_options(storage_option)):
            info = describe_store(store)
    except (FileNotFoundError, CfactError) as e:
        raise click.ClickException(storage.redact(str(e))) from e
    if as_json:
        click.echo(json.dumps(info, indent=2, default=json_default))
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
            click.echo(f"    cfact {meta.get('type')}: " + json.dumps(shown, default=json_default))


def _shorten(v: Any, keep: int = 4) -> Any:
    """Long lists (iteration histories) as their ends and their length, for reading."""
    if isinstance(v, list) and len(v) > 2 * keep:
        return v[:keep] + [f"... {len(v)} items ..."] + v[-keep:]
    if isinstance(v, dict):
        return {k: _shorten(x, keep) for k, x in v.items()}
    return v
