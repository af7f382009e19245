"""``cfact compress-embedding``: factor an embedding matrix to a parameter budget, write Zarr.

The click command object :data:`compress_embedding` is registered in the main ``cfact`` CLI.

References
----------
.. [1] M. Tukan, A. Maalouf, M. Weksler, D. Feldman. arXiv:2009.05647 (ℓp low-rank layers).
.. [2] A. Maalouf, H. Lang, D. Rus, D. Feldman. ICLR 2021, arXiv:2010.04290 (MESSI layers).
"""

from __future__ import annotations

import logging
import os
from typing import Any, get_args

import click
import numpy as np

from ..embed.lp import Method as LpMethod
from ..embed.nn import EmbedMethod
from ._session import Session, session_options, with_session

__all__ = ["compress_embedding"]

logger = logging.getLogger(__name__)


def _open_input(path: str, variable: str | None) -> Any:
    """A Zarr store / group, or a ``.npy`` file (memory-mapped, chunked by rows)."""
    import dask.array as da

    from ..errors import StoreNotFoundError

    if path.endswith(".npy"):
        if not os.path.exists(path):
            raise StoreNotFoundError(f"no such file {path!r}")
        arr = np.load(path, mmap_mode="r")
        rows = max(1, min(arr.shape[0], (64 * 2**20) // max(1, arr[:1].nbytes)))
        return da.from_array(arr, chunks=(rows,) + arr.shape[1:])
    from ..io import open_array

    return open_array(path, feature_axis=0, variable=variable)


@click.command("compress-embedding")
@click.argument("input_path", metavar="INPUT")
@click.option("--rate", type=float, required=True,
              help="Target parameter reduction in (0, 1), e.g. 0.4 = 40 % fewer parameters.")
@click.option("--method", type=click.Choice(get_args(EmbedMethod)), default="messi",
              show_default=True, help="MESSI projective clustering, truncated SVD or robust ℓp.")
@click.option("--out", "out", required=True, help="Output Zarr store for the factors.")
@click.option("--variable", default=None, help="Array inside a Zarr group.")
@click.option("--n-subspaces", "-k", type=int, default=5, show_default=True,
              help="k for --method messi.")
@click.option("--p", "p", type=float, default=1.0, show_default=True, help="p for --method lp.")
@click.option("--lp-method", type=click.Choice(get_args(LpMethod)), default="irls",
              show_default=True)
@click.option("--n-init", type=int, default=5, show_default=True, help="MESSI restarts.")
@click.option("--max-iter", type=int, default=None, help="Iterations (passes over INPUT).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out store.")
@session_options
@with_session
def compress_embedding(
    session: Session, input_path: str, rate: float, method: str, out: str,
    variable: str | None, n_subspaces: int, p: float, lp_method: str, n_init: int,
    max_iter: int | None, seed: int, overwrite: bool,
) -> None:
    """Compress the n × D embedding INPUT (Zarr or .npy) by --rate and write the factors to --out.

    \b
    Example:
      cfact compress-embedding emb.zarr --rate 0.4 --method messi --out emb_messi.zarr
    """
    from .._runtime.outputs import prepare_store
    from ..embed import nn

    # the output is checked before any compute: exit 1 with the fix, like every command
    prepare_store(out, overwrite=overwrite, inputs=[input_path], what="factor store",
                  flag="--overwrite")
    data = _open_input(input_path, variable)
    f = nn.compress_embedding(
        data, rate, method, n_subspaces=n_subspaces, p=p,  # type: ignore[arg-type]
        lp_method=lp_method,  # type: ignore[arg-type]
        n_init=n_init, max_iter=max_iter, random_state=seed, client=session.client,
    )
    nn.save_factors(f, out, overwrite=overwrite, client=session.client, inputs=[input_path])
    n, D = f.shape
    summary: dict[str, Any] = {
        "input": input_path, "out": out, "method": method, "shape": [n, D],
        "n_params": int(f.n_params), "dense_params": nn.dense_params(n, D),
        "rate": round(float(f.rate), 6), "target_rate": rate,
        "relative_error": f.info.get("relative_error"), "budget": f.info.get("budget"),
    }
    b = summary["budget"] or {}
    shape = (f"rank {b.get('rank')}" if method != "messi"
             else f"k={b.get('n_subspaces')}, j={b.get('dim')}")
    err = summary["relative_error"]
    session.report(summary, (
        f"{method}: {n} x {D} -> {shape}; {summary['n_params']} of {summary['dense_params']} "
        f"parameters ({summary['rate']:.1%} reduction, target {rate:.0%}); relative error "
        f"{'n/a' if err is None else f'{err:.4f}'}; factors in {out}"
    ))
