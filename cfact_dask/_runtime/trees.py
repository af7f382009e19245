"""Fixed-order tree sums in hand-built dask graphs (the sketch passes and the row reductions).

A tree of ``split_every``-way sums whose shape depends only on the number of parts, so a rerun
adds the same numbers in the same order wherever the tasks run (dask's own reductions do too;
these are for graphs built key by key, where a leaf may be an inline task).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["sum_list", "tree_sums"]


def sum_list(parts: list[np.ndarray]) -> np.ndarray:
    """``parts[0] + parts[1] + ...`` in order, into a fresh array."""
    acc = np.array(parts[0], copy=True)
    for p in parts[1:]:
        acc += p
    return acc


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
