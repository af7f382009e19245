"""CLI hook for ``cfact factor --method svd | sparse-pca | cp``: run one method, write its result.

``run_factor`` takes what the CLI has (a :class:`~cfact_dask.Sketch`, an input path / array) and
plain options, calls the functional core and, with ``out=``, writes the factors to a Zarr group
(chunked factors stay chunked; the group is marked complete last).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import dask.array as da
import numpy as np

from .._runtime.codecs import array_kwargs
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
        arrays = {"U": res.U, "s": res.s, "Vt": res.Vt}
        attrs = {"passes": res.passes, "error_estimate": res.error_estimate,
                 "params": res.params}
    elif m == "sparse-pca":
        from ..factor._sparse_pca import sparse_pca

        res = sparse_pca(sketch_or_input, rank, client=client, **opts)
        arrays = {"W": res.W, "H": res.H, "mean": res.mean}
        attrs = {"errors": res.errors, "n_iter": res.n_iter, "params": res.params,
                 "operator": res.operator.to_dict() if res.operator is not None else None}
    elif m == "cp":
        from ..factor._cp import cp

        res = cp(sketch_or_input, rank, client=client, **opts)
        if out is not None:
            res.to_zarr(out, group or "cp", overwrite=overwrite)
        return res
    else:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if out is not None:
        row, col = _dims(sketch_or_input)
        dims = {"U": (row, "component"), "s": ("component",), "Vt": ("component", col),
                "W": (row, "component"), "H": ("component", col), "mean": (row,)}
        _write(os.fspath(out), group or m, arrays, {"type": m, **attrs}, overwrite,
               dims={k: dims[k] for k in arrays})
    return res


def _dims(sketch_or_input: Any) -> tuple[str, str]:
    """Names of the row and column dimensions of what was factorized."""
    from ..sketching._sketch import Sketch

    return ("sketch_row" if isinstance(sketch_or_input, Sketch) else "feature"), "sample"


def _write(store: str, group: str, arrays: dict[str, Any], attrs: dict[str, Any],
           overwrite: bool, dims: dict[str, tuple[str, ...]] | None = None) -> None:
    import json

    from .._runtime.outputs import GroupWriter, prepare_group

    target = prepare_group(store, group, overwrite=overwrite, what=f"{attrs.get('type')} output")
    with GroupWriter(target) as w:
        g = w.create(str(attrs.get("type")))
        for name, v in arrays.items():
            names = (dims or {}).get(name)
            if isinstance(v, da.Array):
                v = v.rechunk(tuple(max(c) for c in v.chunks))
                v.to_zarr(target.store, component=f"{w.write_group}/{name}", overwrite=True,
                          zarr_format=3, dimension_names=names, **array_kwargs())
            else:
                v = np.asarray(v)
                a = g.create_array(name, shape=v.shape, dtype=v.dtype, chunks=v.shape or None,
                                   dimension_names=names, **array_kwargs())
                a[...] = v
        meta = json.loads(json.dumps(attrs, default=lambda o: o.tolist() if hasattr(o, "tolist")
                                     else repr(o)))
        w.finish(meta)
    logger.debug("wrote %s result to %s/%s", attrs.get("type"), store, group)
