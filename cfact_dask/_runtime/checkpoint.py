"""Checkpoints of iterative solvers in Zarr: save every k iterations, resume where a run stopped.

Layout of a checkpoint store (a Zarr group)::

    <store>/<group>/iter_000040/<array name>   the state after iteration 40
    <store>/<group>  attrs["cfact"] = {"type": "checkpoint", "params": {...}, "latest": 40,
                                       "history": {...}}

A state is written in full into a new ``iter_*`` group first; only then is ``latest`` moved to it
(the commit point) and the previous state deleted. A run killed at any moment leaves the last
committed state readable. Resuming with different parameters is refused (:class:`ResumeError`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, ResumeError
from ..io import checked_numpy
from .codecs import array_kwargs
from .jsonattrs import to_json

__all__ = ["Checkpoint", "CheckpointState", "as_checkpoint"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointState:
    iteration: int
    arrays: dict[str, np.ndarray]
    history: dict[str, list[float]]


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    return to_json(dict(params), arrays="summary", sort_keys=True)


class Checkpoint:
    """Periodic solver state in a Zarr group.

    Parameters
    ----------
    store : str or path
        Zarr store (directory) holding the checkpoint group.
    every : int
        Save every ``every`` iterations (``should_save``).
    params : mapping
        Everything that determines the run (method, rank, seeds, data token...). A resume with
        different params raises :class:`ResumeError` naming the keys that differ.
    group : str
        Group inside the store (default ``"checkpoint"``).
    """

    def __init__(self, store: str | os.PathLike, every: int = 10,
                 params: Mapping[str, Any] | None = None, group: str = "checkpoint") -> None:
        if not isinstance(every, int) or every < 1:
            raise ConfigError(f"checkpoint 'every' must be an int >= 1, got {every!r}")
        from .outputs import prepare_group, store_path, unconsolidate

        self.store = store_path(store)
        self.every = every
        self.group = group
        self.params = _jsonable(params or {})
        # the checkpoint is cfact's own group: the store must be new or cfact's (never a user's
        # folder or input store), and a group of that name must be a cfact group
        prepare_group(self.store, group, overwrite=True, what="checkpoint")
        # checkpoints look their groups up through the root: a consolidated listing from an
        # earlier write would hide the ones they add
        unconsolidate(self.store)

    def should_save(self, iteration: int) -> bool:
        return iteration % self.every == 0

    def _root(self, mode: str) -> Any:
        import zarr

        from .outputs import mark_root

        mark_root(self.store, None)  # a store cfact creates says so (it may replace it later)
        return zarr.open_group(self.store, path=self.group, mode=mode, zarr_format=3)

    def load(self) -> CheckpointState | None:
        """The last committed state, or None when there is no checkpoint yet."""
        import zarr

        if "://" not in self.store and not os.path.exists(self.store):
            return None
        try:
            g = zarr.open_group(self.store, path=self.group, mode="r")
        except Exception:  # noqa: BLE001 - no such group yet
            return None
        meta = dict(g.attrs).get("cfact")
        if not meta or meta.get("type") != "checkpoint" or meta.get("latest") is None:
            return None
        saved = meta.get("params", {})
        if saved != self.params:
            keys = sorted(k for k in set(saved) | set(self.params)
                          if saved.get(k) != self.params.get(k))
            diff = ", ".join(f"{k}: {saved.get(k)!r} -> {self.params.get(k)!r}" for k in keys)
            raise ResumeError(
                f"the checkpoint in {self.store!r}/{self.group} was made with different parameters "
                f"({diff}); rerun with the original parameters, or remove the checkpoint / use "
                f"another store to start afresh"
            )
        it = int(meta["latest"])
        sub = g[f"iter_{it:08d}"]
        # through the checked reader: a corrupt or missing chunk is a ChunkError naming it
        arrays = {k: checked_numpy(v, f"checkpoint {self.store}/{self.group}/iter_{it:08d}/{k}")
                  if v.ndim else np.asarray(v[...]) for k, v in sub.arrays()}
        hist = {k: list(v) for k, v in meta.get("history", {}).items()}
        logger.info("resuming from checkpoint %s/%s at iteration %d", self.store, self.group, it)
        return CheckpointState(it, arrays, hist)

    def save(self, iteration: int, arrays: Mapping[str, Any],
             history: Mapping[str, list[float]] | None = None) -> None:
        """Write ``arrays`` (numpy or dask) as the state after ``iteration``, then commit it."""
        import dask.array as da

        g = self._root("a")
        name = f"iter_{iteration:08d}"
        if name in g:
            del g[name]
        sub = g.create_group(name)
        for k, v in arrays.items():
            if isinstance(v, da.Array):
                v = v.compute()
            v = np.asarray(v)
            # dimension names only so that xarray opens the store as a tree (DataTree)
            a = sub.create_array(k, shape=v.shape, dtype=v.dtype,
                                 chunks=v.shape if v.ndim else None,
                                 dimension_names=[f"{k}_dim_{i}" for i in range(v.ndim)],
                                 **array_kwargs())
            a[...] = v
        meta = dict(g.attrs).get("cfact") or {}
        previous = meta.get("latest")
        g.attrs["cfact"] = {
            "type": "checkpoint",
            "params": self.params,
            "latest": int(iteration),
            "history": {k: [float(x) for x in v] for k, v in (history or {}).items()},
        }
        if previous is not None and int(previous) != iteration:
            old = f"iter_{int(previous):08d}"
            if old in g:
                del g[old]


def as_checkpoint(spec: Any, params: Mapping[str, Any]) -> Checkpoint | None:
    """Normalise a ``checkpoint=`` argument: None, a store path, a dict(store=..., every=...)."""
    if spec is None or spec is False:
        return None
    if isinstance(spec, Checkpoint):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        return Checkpoint(spec, params=params)
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"store", "every", "group"}
        if unknown or "store" not in spec:
            raise ConfigError(
                f"checkpoint must be dict(store=..., every=k[, group=...]); got keys {sorted(spec)}"
            )
        return Checkpoint(spec["store"], int(spec.get("every", 10)), params,
                          spec.get("group", "checkpoint"))
    raise ConfigError(f"checkpoint must be None, a store path or a dict, not {type(spec).__name__}")
