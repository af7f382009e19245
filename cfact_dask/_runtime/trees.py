"""Fixed-order tree sums: in hand-built dask graphs (the sketch passes and the row reductions),
of delayed parts (the recovery's blocks, the SVD's Grams), or evaluated in place.

A tree of ``split_every``-way sums whose shape depends only on the number of parts, so a rerun
adds the same numbers in the same order wherever the tasks run (dask's own reductions do too;
these are for graphs built key by key or part by part, where a leaf may be an inline task).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["sum_list", "tree_sum", "tree_sums"]


def sum_list(parts: list[Any], dtype: Any = None) -> Any:
    """``parts[0] + parts[1] + ...`` in order, into a fresh array (as ``dtype`` when given);
    parts that are tuples of arrays are summed entry by entry, scipy sparse matrices as sparse
    matrices."""
    if isinstance(parts[0], tuple):
        return tuple(sum_list([p[i] for p in parts], dtype) for i in range(len(parts[0])))
    if hasattr(parts[0], "tocsr"):  # scipy.sparse
        acc = parts[0].astype(dtype or parts[0].dtype, copy=True)
        for p in parts[1:]:
            acc = acc + p
        return acc
    acc = np.array(parts[0], dtype=dtype, copy=True)
    for p in parts[1:]:
        acc += p
    return acc


def tree_sum(parts: list[Any], split_every: int = 8, local: bool = False) -> Any:
    """The float64 sum of ``parts`` (arrays or tuples of arrays; delayed, or values when
    ``local``) by a tree of ``split_every``-way :func:`sum_list` sums: delayed, or evaluated
    at once when ``local`` (the same tree, so the same rounding)."""
    from dask import delayed

    parts = list(parts)
    add = sum_list if local else delayed(sum_list)
    while len(parts) > 1:
        parts = [add(parts[i : i + split_every], np.float64)
                 for i in range(0, len(parts), split_every)]
    return parts[0]


def tree_sums(dsk: dict[Any, Any], keys: list[Any], name: str, split_every: int,
              prefix: tuple[Any, ...] = ()) -> list[Any]:
    """Add ``split_every``-way :func:`sum_list` tasks over ``keys`` (keys, or inline tasks) to
    ``dsk``, level by level (keys ``(f"{name}{level}", *prefix, group)``), until at most
    ``split_every`` are left; returns those, for the caller's last sum."""
    level = 0
    while len(keys) > split_every:
        nxt = []
        for g in range(0, len(keys), split_every):
            k = (f"{name}{level}",) + tuple(prefix) + (g // split_every,)
            dsk[k] = (sum_list, keys[g : g + split_every])
            nxt.append(k)
        keys = nxt
        level += 1
    return keys
