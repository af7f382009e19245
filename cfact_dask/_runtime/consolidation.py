"""Consolidated metadata of the stores cfact writes (what ``xr.open_zarr`` reads first).

A store's listing is consolidated when a group cfact writes is finished, dropped before cfact
writes into a store again (no stale listing while stages write), and consolidated once at the end
of a run (:func:`deferred_consolidation`).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["consolidate", "deferred_consolidation", "unconsolidate"]

logger = logging.getLogger(__name__)


def is_url(path: str) -> bool:
    """Object storage (same rule as :func:`cfact_dask._runtime.outputs.is_url`)."""
    return "://" in path


#: set while a run writes several groups of one store: they are consolidated once, at its end
_DEFER_CONSOLIDATION: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "cfact_defer_consolidation", default=False)


@contextlib.contextmanager
def deferred_consolidation() -> Iterator[None]:
    """Inside the block, finished groups do not consolidate their store (the caller does, once,
    when the whole store is finished): a consolidated listing taken between two stages would be
    stale for the next stage's writes (a checkpoint group invisible to ``name in root``)."""
    token = _DEFER_CONSOLIDATION.set(True)
    try:
        yield
    finally:
        _DEFER_CONSOLIDATION.reset(token)


def unconsolidate(store: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Drop a store's consolidated metadata before cfact writes into it (no stale listing)."""
    import zarr

    kw = {"storage_options": dict(storage_options)} if storage_options and is_url(store) else {}
    try:
        if zarr.open_group(store, mode="r", **kw).metadata.consolidated_metadata is None:
            return
        root = zarr.open_group(store, mode="r+", use_consolidated=False, **kw)
    except Exception:  # noqa: BLE001 - no store (yet), or not a group: nothing to drop
        return
    # rewriting the attributes from a group opened without it drops the consolidated listing
    root.attrs.put(dict(root.attrs))


def consolidate(store: str, storage_options: Mapping[str, Any] | None = None, *,
                force: bool = False) -> None:
    """Consolidate the metadata of a finished store (what ``xr.open_zarr`` reads first).

    Called when a group cfact writes is finished (unless inside
    :func:`deferred_consolidation`, whose caller consolidates at its end with ``force``).
    Writers that look groups up through the root while they work (a run's stages, checkpoints)
    drop the listing first (:func:`unconsolidate`), so it is never stale for them. A failure
    only costs readers the listing, never the written data.
    """
    import warnings

    import zarr

    if _DEFER_CONSOLIDATION.get() and not force:
        return
    kw = {"storage_options": dict(storage_options)} if storage_options and is_url(store) else {}
    try:
        root = zarr.open_group(store, mode="r+", use_consolidated=False, **kw)
        with warnings.catch_warnings():
            # zarr: "Consolidated metadata is currently not part in the Zarr format 3
            # specification"; xarray and zarr-python read it, and it is what they look for
            warnings.filterwarnings("ignore", message="Consolidated metadata")
            zarr.consolidate_metadata(root.store, path=root.path or None)
    except Exception:  # noqa: BLE001
        logger.debug("could not consolidate the metadata of %s", store, exc_info=True)
