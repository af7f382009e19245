"""CLI hook for ``cfact factor --method svd | sparse-pca | cp``: run one method, write its result.

``run_factor`` takes what the CLI has (a :class:`~cfact_dask.Sketch`, an input path / array) and
plain options, calls the functional core and, with ``out=``, writes the factors to a Zarr group
with the result's ``to_zarr`` (one writer: :func:`cfact_dask._runtime.resultstore.write_result`;
chunked factors stay chunked; the group is marked complete last).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..errors import ConfigError

__all__ = ["METHODS", "run_factor"]

logger = logging.getLogger(__name__)

METHODS = ("svd", "sparse-pca", "cp")


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
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return res


def _dims(sketch_or_input: Any) -> tuple[str, str]:
    """Names of the row and column dimensions of what was factorized."""
    from ..sketching._sketch import Sketch

    return ("sketch_row" if isinstance(sketch_or_input, Sketch) else "feature"), "sample"
