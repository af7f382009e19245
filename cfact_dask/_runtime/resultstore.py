"""One writer and one reader of result groups, and the small protocol every result shares.

Every result a stage produces (factors, a recovery, a DGD+LOCAL consensus, an embedding's
factors) is written by :func:`write_result`: the target is checked by the output policy first
(:func:`~cfact_dask._runtime.outputs.prepare_group`), the group is written under a temporary name
(checksummed codecs), linked to its coordinates, and marked complete only at the end
(:class:`~cfact_dask._runtime.outputs.GroupWriter`). :func:`read_result` opens a finished group
of a given type and returns its arrays (lazily, as dask arrays, or eagerly as numpy) and its
``cfact`` attributes.

:class:`ResultProtocol` is the protocol of result objects: ``n_iter_``,
``reconstruction_err_``, ``to_zarr`` / ``from_zarr``, a short ``__repr__`` and
``_repr_html_`` (from :mod:`~cfact_dask._runtime.display`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import dask.array as da
import numpy as np

from .codecs import array_kwargs

__all__ = ["ResultProtocol", "read_result", "write_result"]

logger = logging.getLogger(__name__)


@runtime_checkable
class ResultProtocol(Protocol):
    """What every result object offers (checked by the tests for every result type)."""

    n_iter_: int | None
    reconstruction_err_: float | None

    def to_zarr(self, store: str | os.PathLike, group: str = ..., *, overwrite: bool = False,
                **kwargs: Any) -> str: ...

    @classmethod
    def from_zarr(cls, store: str | os.PathLike, group: str = ...) -> Any: ...

    def _repr_html_(self) -> str: ...


def _jsonable_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(attrs), default=lambda o: o.tolist() if hasattr(o, "tolist")
                                 else repr(o)))


def write_result(
    store: str | os.PathLike,
    group: str | None,
    arrays: Mapping[str, Any],
    attrs: Mapping[str, Any],
    *,
    overwrite: bool = False,
    dims: Mapping[str, tuple[str, ...]] | None = None,
    coords: Mapping[str, tuple[str, np.ndarray]] | None = None,
    upstream: Mapping[str, str] | None = None,
    chunk_axis: Mapping[str, int] | None = None,
    inputs: Any = (),
    what: str | None = None,
    client: Any = None,
) -> str:
    """Write ``arrays`` and ``attrs`` (the group's ``cfact`` attributes) to ``store/group``.

    Parameters
    ----------
    store, group : str
        Where. The output policy checks the target before anything is written; ``overwrite``
        replaces only a group cfact wrote. ``group=None`` writes the whole store (its root
        group is the result, as :func:`~cfact_dask.save_factors` stores are): the store is
        replaced, marked incomplete until its attributes are written last, and the dask arrays
        are written in one pass (on ``client``, see :func:`~cfact_dask.client_context`),
        chunked along their first axis like their first chunk.
    arrays : mapping
        Name -> numpy or dask array. Dask arrays are written blockwise from the workers, chunked
        along ``chunk_axis[name]`` (default: their largest chunks) and whole along the others.
    attrs : mapping
        The ``cfact`` attributes; must hold ``"type"``. Values are made JSON-able.
    dims : mapping, optional
        Name -> dimension names of each array (xarray reads them).
    coords : mapping, optional
        Coordinate name -> ``(dim, values)`` (the input's labels), linked to the arrays.
    upstream : mapping, optional
        Group ids this result was computed from (a replaced upstream invalidates it).
    inputs : sequence, optional
        What was read to compute it (the output may not overlap it).
    what : str, optional
        The output's name in messages (default: ``"<type> output"``).

    Returns
    -------
    str
        ``store/group``, the location written.
    """
    from .labels import write_coords
    from .outputs import GroupWriter, check_no_overlap, join, prepare_group, resolve

    kind = str(attrs["type"])
    what = what or f"{kind} output"
    if group is None:
        return _write_store(store, arrays, attrs, overwrite=overwrite, dims=dims,
                            inputs=inputs, what=what, client=client)
    if inputs:
        check_no_overlap(join(resolve(store), group), inputs, what)
    target = prepare_group(store, group, overwrite=overwrite, what=what)
    with GroupWriter(target) as w:
        g = w.create(kind)
        for name, v in arrays.items():
            names = (dims or {}).get(name)
            if isinstance(v, da.Array):
                ax = (chunk_axis or {}).get(name)
                if ax is None:
                    v = v.rechunk(tuple(max(c) for c in v.chunks))
                else:
                    v = v.rechunk({i: (max(v.chunks[i]) if i == ax else -1)
                                   for i in range(v.ndim)})
                da.to_zarr(v, target.store, component=f"{w.write_group}/{name}", overwrite=True,
                           zarr_format=3, dimension_names=names, **array_kwargs())
            else:
                v = np.asarray(v)
                a = g.create_array(name, shape=v.shape, dtype=v.dtype, chunks=v.shape or None,
                                   dimension_names=names, **array_kwargs())
                a[...] = v
        if coords:
            g = w.open()
            write_coords(g, dict(coords), {k: g[k] for k in arrays})
        where = w.finish(_jsonable_attrs(attrs), upstream=upstream)
    logger.debug("wrote %s result to %s", kind, where)
    return where


def _write_store(store: str | os.PathLike, arrays: Mapping[str, Any], attrs: Mapping[str, Any],
                 *, overwrite: bool, dims: Mapping[str, tuple[str, ...]] | None, inputs: Any,
                 what: str, client: Any) -> str:
    """:func:`write_result` of a whole store (``group=None``)."""
    import zarr

    from .cluster import client_context, compute
    from .outputs import INCOMPLETE_ATTR, INCOMPLETE_TEXT, clear_store, consolidate, prepare_store

    target = prepare_store(store, overwrite=overwrite, inputs=inputs, what=what)
    path = target.store
    clear_store(target)
    g = zarr.open_group(path, mode="w", zarr_format=3)
    g.attrs.put({"cfact": {"type": str(attrs["type"]), "complete": False},
                 INCOMPLETE_ATTR: INCOMPLETE_TEXT})
    lazy: list[tuple[da.Array, Any]] = []
    for name, v in arrays.items():
        names = (dims or {}).get(name)
        if isinstance(v, da.Array):
            c0 = int(v.chunks[0][0])
            if np.any(np.cumsum(v.chunks[0])[:-1] % c0):
                v = v.rechunk({0: c0})  # lock-free writes need chunk-aligned blocks
            z = g.create_array(name, shape=v.shape, dtype=v.dtype, chunks=(c0,) + v.shape[1:],
                               dimension_names=names, **array_kwargs())
            lazy.append((v, z))
        else:
            a = np.asarray(v)
            z = g.create_array(name, shape=a.shape, dtype=a.dtype, chunks=a.shape or None,
                               dimension_names=names, **array_kwargs())
            z[...] = a
    if lazy:
        srcs = [a for a, _ in lazy]
        with client_context(client, nbytes=int(sum(a.nbytes for a in srcs))) as c:
            # one graph: arrays computed from the same data (MESSI's labels and coefficients)
            # share its read. da.store returns one Delayed per source when there are several
            jobs = da.store(srcs, [z for _, z in lazy], lock=False, compute=False)
            compute(*(jobs if isinstance(jobs, tuple) else (jobs,)), client=c, progress=False)
    meta = _jsonable_attrs(attrs)
    meta["complete"] = True
    g.attrs.put({"cfact": meta})
    consolidate(path)
    logger.debug("wrote %s result to %s", meta["type"], path)
    return path


def read_result(store: str | os.PathLike, group: str, kind: str, *, lazy: bool = False,
                fix: str = "write it again") -> tuple[dict[str, Any], dict[str, Any]]:
    """Open the finished ``kind`` group ``store/group``: its arrays and ``cfact`` attributes.

    Refuses a missing, incomplete, stale or other-type group with the reason and ``fix``
    (see :func:`~cfact_dask._runtime.outputs.open_complete_group`). Arrays are numpy, or dask
    arrays on the stored chunks with ``lazy``; coordinate arrays (1-d, named like a dimension or
    listed in a ``coordinates`` attribute) are left out.
    """
    from .outputs import open_complete_group

    g, meta = open_complete_group(os.fspath(store), group, kind, fix=fix)
    coord_names: set[str] = set()
    arrays = dict(g.arrays())
    for a in arrays.values():
        coord_names.update(str(a.attrs.get("coordinates", "")).split())
        dims = tuple(getattr(a.metadata, "dimension_names", None) or ())
        if len(dims) == 1 and dims[0] == a.basename:
            coord_names.add(a.basename)
    out: dict[str, Any] = {}
    for name, a in arrays.items():
        if name in coord_names:
            continue
        out[name] = da.from_zarr(a) if lazy else a[...]
    return out, dict(meta)
