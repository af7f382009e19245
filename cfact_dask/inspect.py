"""Describe a Zarr store: arrays (shape, chunks, shards, dtype) and cfact specs in attrs."""

from __future__ import annotations

import os
from typing import Any

from .errors import StoreNotFoundError

__all__ = ["describe_store"]


def describe_store(store: str | os.PathLike) -> dict[str, Any]:
    """Return ``{"store": ..., "nodes": [...]}`` with one entry per group / array, depth first."""
    import zarr

    store = os.fspath(store)
    if "://" not in store and not os.path.exists(store):
        raise StoreNotFoundError(f"no Zarr store at {store!r}")
    try:
        root = zarr.open(store, mode="r")
    except Exception as e:  # noqa: BLE001
        raise StoreNotFoundError(f"{store!r} is not a readable Zarr store: {e}") from e
    nodes: list[dict[str, Any]] = []

    def visit(node: Any, path: str) -> None:
        entry: dict[str, Any] = {"path": path}
        meta = dict(node.attrs).get("cfact")
        if meta:
            entry["cfact"] = meta
        if isinstance(node, zarr.Array):
            entry.update(kind="array", shape=list(node.shape), chunks=list(node.chunks),
                         dtype=str(node.dtype))
            shards = getattr(node, "shards", None)
            if shards:
                entry["shards"] = list(shards)
            nodes.append(entry)
            return
        entry["kind"] = "group"
        nodes.append(entry)
        for name, child in sorted(node.members(), key=lambda kv: kv[0]):
            visit(child, f"{path}/{name}" if path else name)

    visit(root, "")
    return {"store": store, "nodes": nodes}
