"""One output-safety policy for every writer: the user's data is never lost.

Every command and entry point that writes (sketch, factor, factor-dgd, recover, reconstruct, run,
compress-embedding, the results' ``to_zarr``, checkpoints, plots) goes through this module
*before* it computes anything:

1. **Locations are resolved** to one form: local paths and ``file://`` URLs to their real path
   (symlinks, ``..`` and ``~`` resolved), other URLs to ``protocol://bucket/key`` without a
   trailing slash, so no spelling bypasses a check (:func:`resolve`).
2. **Outputs never overlap inputs**: an output that equals, contains or lies inside an input
   is refused, naming both (:func:`check_no_overlap`).
3. **The allowed root** (``cfact.run.allowed-root``), when set, holds every path read or written
   (:func:`check_allowed`).
4. **Overwrite replaces only what cfact wrote**: a store or group that carries cfact's own
   attributes. A plain file, a folder of other files, a Zarr store written by someone else, or a
   cfact store with files beside its groups is refused, saying what is there
   (:func:`prepare_store`, :func:`prepare_group`). Nothing is removed recursively that cfact did
   not create.
5. **No half-written output blocks a rerun or passes for data**: a group is written under a
   temporary name (``<group>.cfact-tmp-<id>``, invisible to readers that open ``<group>``) and
   renamed into place when complete; on object storage, where there is no rename, the group
   carries ``cfact.complete = false`` (and a ``cfact_incomplete`` attribute plain xarray readers
   see) until its last write. A cfact group left incomplete by a killed run is replaced by the
   rerun without ``overwrite``; temporaries of killed runs are removed by the next write.
6. **Nothing goes stale silently**: each finished group records an ``id`` and the ids of the
   groups it was computed from (``upstream``); replacing a group removes the groups computed from
   it, and readers refuse pieces whose recorded ids disagree (:func:`check_upstream`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, OutputError, StoreExistsError, StoreNotFoundError
from .consolidation import consolidate, deferred_consolidation, unconsolidate  # noqa: F401 (re-exported)
from .jsonattrs import to_json as _jsonable

__all__ = [
    "TMP_TAG",
    "GroupWriter",
    "Target",
    "check_allowed",
    "check_no_overlap",
    "check_upstream",
    "input_location",
    "prepare_group",
    "prepare_store",
    "resolve",
    "store_path",
    "sweep_temporaries",
]

logger = logging.getLogger(__name__)

#: tag of temporary names (groups and stores being written); only cfact creates such names
TMP_TAG = ".cfact-tmp-"
#: attribute plain xarray / zarr readers see on a group that is not complete
INCOMPLETE_ATTR = "cfact_incomplete"
INCOMPLETE_TEXT = ("written by cfact_dask and NOT complete (interrupted or still being written); "
                   "do not use: rerun the cfact command that writes it")

_ZARR_META = {"zarr.json", ".zgroup", ".zattrs", ".zarray", ".zmetadata"}
_V2_CHUNK = re.compile(r"^\d+([./]\d+)*$")


# ---------------------------------------------------------------------------- locations
def is_url(path: str) -> bool:
    return "://" in path


def resolve(path: str | os.PathLike[str]) -> str:
    """One canonical spelling of a location: a real local path, or a normalised URL.

    ``file://`` URLs become local paths; other URLs keep their protocol, lose repeated and
    trailing slashes.
    """
    p = os.fspath(path)
    if p.startswith("file://"):
        p = p[len("file://"):]
        if p.startswith("localhost/"):
            p = p[len("localhost"):]
    if is_url(p):
        proto, rest = p.split("://", 1)
        rest = re.sub(r"/+", "/", rest).strip("/")
        return f"{proto.lower()}://{rest}"
    return os.path.realpath(os.path.expanduser(p))


def store_path(path: str | os.PathLike[str]) -> str:
    """What to hand to zarr / xarray for ``path``: ``file://`` URLs as plain local paths (zarr's
    fsspec route would skip the local checks), other URLs and local paths as given."""
    p = os.fspath(path)
    if p.startswith("file://"):
        return resolve(p)
    return p


def join(store: str, group: str | None) -> str:
    if not group:
        return store
    group = group.strip("/")
    return f"{store}/{group}" if is_url(store) else os.path.join(store, group)


def _inside(child: str, parent: str) -> bool:
    """True when ``child`` equals ``parent`` or lies inside it (both resolved)."""
    if is_url(child) != is_url(parent):
        return False
    if child == parent:
        return True
    sep = "/" if is_url(parent) else os.sep
    return child.startswith(parent.rstrip(sep) + sep)


def check_allowed(path: str | os.PathLike[str], what: str) -> None:
    """Refuse a location outside ``cfact.run.allowed-root`` (when that setting is given)."""
    from .. import config

    root = config.get("run.allowed-root", None)
    if not root:
        return
    real, base = resolve(path), resolve(str(root))
    if not _inside(real, base):
        raise ConfigError(
            f"{what} {os.fspath(path)!r} resolves to {real!r}, outside the allowed root {base!r} "
            f"(cfact.run.allowed-root); use a location under it, or change the setting"
        )


def input_location(obj: Any) -> str | None:
    """The resolved location of an input's data, when it comes from a store (else None).

    Accepts a path / URL, an :class:`~cfact_dask.io.InputArray`, a ``zarr.Array`` or ``Group``,
    a :class:`~cfact_dask.Sketch` read from a store, an xarray object opened from Zarr, or a dask
    array built from a Zarr array (found in its graph).
    """
    if obj is None:
        return None
    if isinstance(obj, str | os.PathLike):
        return resolve(obj)
    loc = getattr(obj, "location", None)
    if isinstance(loc, str):
        return resolve(loc)
    z = _zarr_node_location(obj)
    if z is not None:
        return z
    enc = getattr(obj, "encoding", None)
    if isinstance(enc, Mapping) and isinstance(enc.get("source"), str):
        return resolve(enc["source"])
    data = getattr(obj, "data", None)
    if data is not None and data is not obj:
        found = input_location(data) if not hasattr(data, "__dask_graph__") else None
        if found:
            return found
        obj = data
    if hasattr(obj, "__dask_graph__"):
        return _graph_location(obj)
    return None


def _zarr_node_location(z: Any) -> str | None:
    try:
        import zarr
    except ImportError:  # pragma: no cover - zarr is a dependency
        return None
    if not isinstance(z, zarr.Array | zarr.Group):
        return None
    store = z.store
    root = getattr(store, "root", None)
    if root is not None:
        base = str(root)
    else:
        fs, path = getattr(store, "fs", None), getattr(store, "path", None)
        if fs is None or path is None:
            return None
        proto = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
        base = f"{proto}://{path}" if proto not in ("file", "local") else path
    return resolve(join(base, z.path) if z.path else base)


def _graph_location(x: Any) -> str | None:
    """A Zarr array found among the small layers of a dask graph (``da.from_zarr`` keeps it in
    an ``original-array`` layer), unwrapping xarray's lazy wrappers."""
    try:
        graph = x.__dask_graph__()
        layers = getattr(graph, "layers", {"": graph})
    except Exception:  # noqa: BLE001 - not a dask collection after all
        return None
    for layer in layers.values():
        try:
            if len(layer) > 4:
                continue
            values = list(layer.values())
        except Exception:  # noqa: BLE001 - a layer that cannot be listed cheaply
            continue
        for v in values:
            for _ in range(6):
                loc = _zarr_node_location(v)
                if loc is not None:
                    return loc
                nxt = None
                for attr in ("array", "_array", "z", "value"):
                    cand = getattr(v, attr, None)
                    if cand is not None and cand is not v:
                        nxt = cand
                        break
                if nxt is None:
                    break
                v = nxt
    return None


def check_not_inside_zarr(path: str, what: str) -> None:
    """Refuse a new store inside an existing Zarr node (a user's store, an array's folder): it
    would add entries to data cfact does not own."""
    if is_url(path):
        return
    p = os.path.dirname(resolve(path))
    while True:
        if any(os.path.exists(os.path.join(p, m)) for m in ("zarr.json", ".zgroup", ".zarray")):
            raise OutputError(
                f"the {what} {path!r} would lie inside the Zarr store {p!r}; cfact never writes "
                f"into or beside data in another store: choose a location outside it"
            )
        parent = os.path.dirname(p)
        if parent == p:
            return
        p = parent


def check_no_overlap(output: str, inputs: Iterable[Any], what: str = "output",
                     fix: str = "choose an output location outside the input") -> None:
    """Refuse an output that equals, contains or lies inside one of ``inputs``."""
    out = resolve(output)
    for item in inputs:
        loc = input_location(item)
        if loc is None:
            continue
        if out == loc:
            rel = "is the input"
        elif _inside(loc, out):
            rel = "contains the input"
        elif _inside(out, loc):
            rel = "lies inside the input"
        else:
            continue
        raise OutputError(
            f"the {what} {output!r} (resolved {out!r}) {rel} {loc!r}; cfact never writes into, "
            f"over or around its inputs: {fix}"
        )


# ---------------------------------------------------------------------------- what is there
@dataclass
class Target:
    """A checked output location and what was found there.

    ``state`` is "absent", "complete" (a finished cfact store / group, replaced only with
    overwrite), or "incomplete" (cfact's own, left by an interrupted write; replaced freely).
    """

    store: str
    group: str | None
    state: str
    remote: bool
    what: str = "output"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return join(self.store, self.group)


def _cfact_meta(node: Any) -> dict[str, Any] | None:
    try:
        meta = dict(node.attrs).get("cfact")
    except Exception:  # noqa: BLE001
        return None
    return dict(meta) if isinstance(meta, Mapping) else None


def _is_complete(meta: Mapping[str, Any] | None) -> bool:
    if not meta:
        return False
    if meta.get("type") in ("store", "checkpoint"):
        return True
    return bool(meta.get("complete", True))


def _open_node(path: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    import zarr

    kw = {"storage_options": dict(storage_options)} if storage_options and is_url(path) else {}
    return zarr.open(store_path(path), mode="r", **kw)


def _listing(path: str, limit: int = 5) -> str:
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return ""
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f" (it holds {shown}{more})" if names else " (empty)"


def _foreign_entries(path: str) -> list[str]:
    """Entries of a local cfact store that are not Zarr nodes / metadata (a user's files)."""
    found: list[str] = []

    def walk(d: str, rel: str, depth: int) -> None:
        try:
            entries = list(os.scandir(d))
        except OSError:
            return
        names = {e.name for e in entries}
        is_array = "zarr.json" in names and _node_kind(d) == "array" or ".zarray" in names
        for e in entries:
            r = f"{rel}/{e.name}" if rel else e.name
            if e.name in _ZARR_META or TMP_TAG in e.name:
                continue
            if is_array:
                if e.name == "c" or _V2_CHUNK.match(e.name):
                    continue
                found.append(r)
                continue
            if e.is_dir(follow_symlinks=False):
                sub = set(os.listdir(e.path)) if depth < 64 else set()
                if sub & _ZARR_META:
                    walk(e.path, r, depth + 1)
                    continue
                if _zarr_debris(e.path):
                    continue  # what a killed write or delete of a cfact node left
            found.append(r)

    walk(path, "", 0)
    return found


def _zarr_debris(d: str) -> bool:
    """True for a folder holding nothing but Zarr keys (metadata and chunk files, named as zarr
    names them), possibly empty: what a write or delete of a Zarr node killed halfway leaves
    (zarr deletes a node's metadata before its chunks). A user's file has another name."""
    for _dirpath, _dirs, files in os.walk(d):
        for f in files:
            if f not in _ZARR_META and not _V2_CHUNK.match(f):
                return False
    return True


def _node_kind(d: str) -> str | None:
    import json

    try:
        with open(os.path.join(d, "zarr.json")) as f:
            return json.load(f).get("node_type")
    except (OSError, ValueError):
        return None


def _store_is_cfact(root: Any) -> bool:
    """A store cfact wrote: its root carries cfact attributes, or (stores written before roots
    were marked) every member group does."""
    import zarr

    if _cfact_meta(root) is not None:
        return True
    if not isinstance(root, zarr.Group):
        return False
    members = [v for k, v in root.members() if TMP_TAG not in k]
    return bool(members) and all(
        isinstance(v, zarr.Group) and _cfact_meta(v) is not None for v in members
    )


def _describe_foreign(path: str, node: Any) -> str:
    import zarr

    if node is None:
        if not is_url(path) and os.path.isfile(path):
            return "a file that cfact did not write"
        if not is_url(path) and os.path.isdir(path):
            return "a folder that is not a Zarr store" + _listing(path)
        return "data that is not a Zarr store"
    kind = "array" if isinstance(node, zarr.Array) else "group"
    return f"a Zarr {kind} that cfact did not write (no 'cfact' attributes)"


def prepare_store(
    store: str | os.PathLike[str],
    *,
    overwrite: bool,
    inputs: Iterable[Any] = (),
    what: str = "output store",
    flag: str = "overwrite=True (CLI: --overwrite)",
    storage_options: Mapping[str, Any] | None = None,
    allow_complete: bool = False,
) -> Target:
    """Check a whole-store output before any compute; see the module docstring.

    Returns a :class:`Target` whose ``state`` tells the caller what it found. Nothing is removed
    here: :func:`clear_store` does that, for a target this function accepted.
    """
    given = os.fspath(store)
    path = store_path(given)
    check_allowed(given, what)
    check_no_overlap(given, inputs, what)
    check_not_inside_zarr(path, what)
    remote = is_url(path)
    exists = _exists(path, storage_options)
    if not exists:
        return Target(path, None, "absent", remote, what)
    if not remote and os.path.isdir(path) and not os.listdir(path):
        return Target(path, None, "absent", remote, what)
    try:
        node = _open_node(path, storage_options)
    except Exception:  # noqa: BLE001 - not a Zarr store
        node = None
    if node is None or not _store_is_cfact(node):
        raise OutputError(
            f"the {what} {given!r} already exists and holds {_describe_foreign(path, node)}; "
            f"cfact replaces only stores it wrote itself, so nothing was changed: choose a new "
            f"path (or remove it yourself if it is really not needed)"
        )
    if not remote:
        foreign = _foreign_entries(path)
        if foreign:
            shown = ", ".join(repr(f) for f in foreign[:5])
            raise OutputError(
                f"the {what} {given!r} is a cfact store, but it also holds {shown}"
                f"{' and more' if len(foreign) > 5 else ''}, which cfact did not write; nothing "
                f"was changed: move those files elsewhere, or choose a new path"
            )
    meta = _cfact_meta(node) or {}
    state = "complete" if _is_complete(meta) else "incomplete"
    if state == "complete" and not overwrite and not allow_complete:
        raise StoreExistsError(
            f"the {what} {given!r} already exists (a finished cfact store); pass {flag} to "
            f"replace it, or choose another path"
        )
    return Target(path, None, state, remote, what, meta)


def clear_store(target: Target, storage_options: Mapping[str, Any] | None = None) -> None:
    """Remove a store :func:`prepare_store` accepted (cfact's own, checked for foreign files)."""
    if target.state == "absent":
        return
    if target.remote:
        import fsspec

        fs, p = fsspec.core.url_to_fs(target.store, **dict(storage_options or {}))
        if fs.exists(p):
            fs.rm(p, recursive=True)
        return
    if os.path.isdir(target.store):
        # one more look: nothing foreign appeared since the check
        if _foreign_entries(target.store):
            raise OutputError(f"{target.store!r} changed while cfact was preparing to replace it; "
                              f"nothing was removed")
        shutil.rmtree(target.store)


def _exists(path: str, storage_options: Mapping[str, Any] | None) -> bool:
    if not is_url(path):
        return os.path.lexists(path)
    try:
        import fsspec

        fs, p = fsspec.core.url_to_fs(path, **dict(storage_options or {}))
        return bool(fs.exists(p))
    except Exception:  # noqa: BLE001 - let the writer report an unreachable store
        return False


def prepare_group(
    store: str | os.PathLike[str],
    group: str,
    *,
    overwrite: bool,
    inputs: Iterable[Any] = (),
    what: str = "output",
    flag: str = "overwrite=True (CLI: --overwrite)",
    storage_options: Mapping[str, Any] | None = None,
) -> Target:
    """Check an output group ``store/group`` before any compute; see the module docstring.

    The store must be absent, empty, or a store cfact wrote; the group absent, a cfact group
    left incomplete (replaced freely), or a finished cfact group (replaced only with
    ``overwrite``). Temporaries of killed writes of this group are removed.
    """
    import zarr

    given = os.fspath(store)
    path = store_path(given)
    group = group.strip("/")
    if not group:
        raise ConfigError(f"the {what} group name is empty; name a group inside {given!r}")
    check_allowed(given, what)
    check_no_overlap(join(given, group), inputs, what)
    check_not_inside_zarr(path, what)
    remote = is_url(path)
    if not _exists(path, storage_options) or (
        not remote and os.path.isdir(path) and not os.listdir(path)
    ):
        return Target(path, group, "absent", remote, what)
    try:
        root = _open_node(path, storage_options)
    except Exception:  # noqa: BLE001
        root = None
    if root is None or not isinstance(root, zarr.Group) or not _store_is_cfact(root):
        raise OutputError(
            f"cannot write the {what} into {given!r}: it holds {_describe_foreign(path, root)}; "
            f"cfact writes groups only into new stores or stores it wrote itself, so nothing was "
            f"changed: choose a new store path"
        )
    sweep_temporaries(path, group, storage_options)
    if group not in root:
        return Target(path, group, "absent", remote, what)
    node = root[group]
    meta = _cfact_meta(node)
    if meta is None:
        raise OutputError(
            f"{given!r} already holds {group!r}, which cfact did not write (no 'cfact' "
            f"attributes); nothing was changed: choose another group or store"
        )
    if not _is_complete(meta):
        return Target(path, group, "incomplete", remote, what, meta)
    if not overwrite:
        raise StoreExistsError(
            f"{given!r} already holds a finished {meta.get('type', 'cfact')} group {group!r}; "
            f"pass {flag} to replace it (groups computed from it are removed too), or choose "
            f"another group or store"
        )
    return Target(path, group, "complete", remote, what, meta)


def sweep_temporaries(store: str, group: str | None = None,
                      storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Remove what killed writes left under cfact's temporary names (of ``group``, or all)."""
    removed: list[str] = []
    if is_url(store):
        return removed  # no temporary names on object storage (incomplete markers instead)
    parent, prefix = store, (group.strip("/") + TMP_TAG if group else None)
    if group and "/" in group.strip("/"):
        head, tail = group.strip("/").rsplit("/", 1)
        parent, prefix = os.path.join(store, head), tail + TMP_TAG
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for e in entries:
        if TMP_TAG in e.name and (prefix is None or e.name.startswith(prefix)) and e.is_dir(
            follow_symlinks=False
        ):
            shutil.rmtree(e.path, ignore_errors=True)
            removed.append(e.path)
    if removed:
        logger.info("removed %d temporary group(s) left by an interrupted write: %s",
                    len(removed), removed)
    return removed


# ---------------------------------------------------------------------------- writing a group
def mark_root(store: str, storage_options: Mapping[str, Any] | None) -> None:
    """Give a store cfact creates a root that says so (so overwrite can recognise it later)."""
    import zarr

    from .._version import __version__

    kw = {"storage_options": dict(storage_options)} if storage_options and is_url(store) else {}
    # a consolidated listing is left as it is: a group is written under a temporary name that no
    # listing needs to show, a failed write leaves the store byte for byte as it was, and
    # finish() consolidates again once the group is in place
    root = zarr.open_group(store, mode="a", zarr_format=3, **kw)
    if _cfact_meta(root) is None:
        root.attrs["cfact"] = {"type": "store", "cfact_dask": __version__}


class GroupWriter:
    """Write one group safely: under a temporary name (local) or with an incomplete marker
    (object storage), moved into place and marked complete by :meth:`finish`.

    Use as a context manager; on an exception the temporary is removed (local) and the target
    left as it was. ``write_group`` is the group name to write the arrays into.
    """

    def __init__(self, target: Target, storage_options: Mapping[str, Any] | None = None) -> None:
        if target.group is None:
            raise ValueError("GroupWriter needs a group target")
        self.target = target
        self.store = target.store
        self.group = target.group
        self.storage_options = storage_options
        if target.remote:
            self.write_group = target.group
        else:
            self.write_group = f"{target.group}{TMP_TAG}{uuid.uuid4().hex[:12]}"
        self.done = False

    def __enter__(self) -> GroupWriter:
        mark_root(self.store, self.storage_options)
        if self.target.remote and self.target.state != "absent":
            self._remove(self.group)
            if self.target.state == "complete":
                invalidate_downstream(self.store, self.group, self.storage_options)
        return self

    def incomplete_attrs(self, kind: str) -> dict[str, Any]:
        """Attributes a group carries while it is written (for writers that set attrs first)."""
        return {"cfact": {"type": kind, "complete": False}, INCOMPLETE_ATTR: INCOMPLETE_TEXT}

    def open(self) -> Any:
        import zarr

        kw = ({"storage_options": dict(self.storage_options)}
              if self.storage_options and self.target.remote else {})
        return zarr.open_group(self.store, path=self.write_group, mode="a", zarr_format=3, **kw)

    def create(self, kind: str) -> Any:
        """Create the (empty) group being written, marked incomplete."""
        import zarr

        kw = ({"storage_options": dict(self.storage_options)}
              if self.storage_options and self.target.remote else {})
        root = zarr.open_group(self.store, mode="a", zarr_format=3, **kw)
        g = root.create_group(self.write_group, overwrite=True)
        g.attrs.update(self.incomplete_attrs(kind))
        return g

    def finish(self, meta: Mapping[str, Any], upstream: Mapping[str, str] | None = None) -> str:
        """Mark the group complete with ``meta`` (its ``cfact`` attributes) and move it into
        place; replace the old group (and remove the groups computed from it)."""
        import zarr

        meta = dict(meta)
        meta["complete"] = True
        meta["id"] = uuid.uuid4().hex
        if upstream:
            meta["upstream"] = {k: v for k, v in upstream.items() if v}
        g = self.open()
        attrs = dict(g.attrs)
        attrs.pop(INCOMPLETE_ATTR, None)
        attrs["cfact"] = _jsonable(meta)
        g.attrs.put(attrs)
        if not self.target.remote:
            final = os.path.join(self.store, self.group)
            src = os.path.join(self.store, self.write_group)
            trash = None
            if os.path.lexists(final):
                check = zarr.open_group(self.store, mode="r")
                node_meta = _cfact_meta(check[self.group]) if self.group in check else None
                if node_meta is None:
                    raise OutputError(
                        f"{final!r} appeared while cfact was writing and is not cfact's; it was "
                        f"left untouched and the new result is in {src!r}"
                    )
                trash = f"{final}{TMP_TAG}old-{uuid.uuid4().hex[:12]}"
                os.rename(final, trash)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.rename(src, final)
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
                invalidate_downstream(self.store, self.group, self.storage_options)
        self.done = True
        consolidate(self.store, self.storage_options)
        return join(self.store, self.group)

    def _remove(self, name: str) -> None:
        import zarr

        kw = ({"storage_options": dict(self.storage_options)}
              if self.storage_options and self.target.remote else {})
        root = zarr.open_group(self.store, mode="a", **kw)
        if name in root:
            del root[name]

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        if self.done or self.target.remote:
            return  # a remote group stays marked incomplete: the rerun replaces it
        remove_late(os.path.join(self.store, self.write_group))


def remove_late(path: str, settle: float = 0.5, limit: float = 30.0) -> None:
    """Remove a failed write's temporary path, also what tasks still in flight write late.

    When one task fails, the scheduler reports it at once while other threads / workers may
    still finish their current chunk write, recreating files under the temporary path; keep
    removing until the path has stayed absent for ``settle`` seconds.
    """
    import time

    deadline = time.monotonic() + limit
    quiet_since = None
    while time.monotonic() < deadline:
        if os.path.lexists(path):
            shutil.rmtree(path, ignore_errors=True)
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= settle:
            return
        time.sleep(0.05)


# ---------------------------------------------------------------------------- staleness
def group_id(store: str, group: str, storage_options: Mapping[str, Any] | None = None
             ) -> str | None:
    """The recorded id of a finished cfact group (None for stores written before ids)."""
    try:
        node = _open_node(join(store_path(store), group), storage_options)
    except Exception:  # noqa: BLE001
        return None
    meta = _cfact_meta(node) or {}
    return meta.get("id")


def invalidate_downstream(store: str, group: str,
                          storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """Remove every group of ``store`` recorded as computed from ``group`` (transitively)."""
    import zarr

    kw = {"storage_options": dict(storage_options)} if storage_options and is_url(store) else {}
    try:
        root = zarr.open_group(store, mode="a", **kw)
    except Exception:  # noqa: BLE001
        return []
    removed: list[str] = []
    todo = [group.strip("/")]
    while todo:
        up = todo.pop()
        for name, node in list(root.members()):
            if not isinstance(node, zarr.Group) or name in removed:
                continue
            meta = _cfact_meta(node) or {}
            if up in (meta.get("upstream") or {}):
                del root[name]
                removed.append(name)
                todo.append(name)
    if removed:
        logger.warning("removed %s from %s: computed from the replaced group %r",
                       ", ".join(repr(r) for r in removed), store, group)
    return removed


def check_upstream(store: str, group: str, meta: Mapping[str, Any]) -> None:
    """Refuse a group whose recorded upstream ids no longer match the groups in the store."""
    for up, rid in (meta.get("upstream") or {}).items():
        cur = group_id(store, up)
        if cur is not None and rid is not None and cur != rid:
            raise OutputError(
                f"{store!r} group {group!r} was computed from an earlier {up!r} than the one now "
                f"in the store (recorded id {rid[:8]}, now {cur[:8]}); it is stale: recompute "
                f"{group!r} (e.g. rerun its command with --overwrite)"
            )


def open_complete_group(store: str, group: str, kind: str, fix: str = "write it again"
                        ) -> tuple[Any, dict[str, Any]]:
    """Open ``store/group`` for reading as a finished cfact group of type ``kind``: the group
    and its ``cfact`` attributes. Refuses (:class:`StoreNotFoundError`) a missing store or
    group, another type, an incomplete group, and (:class:`OutputError`) a stale one, computed
    from an earlier version of a group it records as upstream. ``fix`` ends the messages."""
    import zarr

    store = store_path(store)
    if not is_url(store) and not os.path.exists(store):
        raise StoreNotFoundError(f"no Zarr store at {store!r}")
    try:
        g = zarr.open_group(store, path=group, mode="r")
    except Exception as e:  # noqa: BLE001 - zarr raises several types for a missing group
        raise StoreNotFoundError(f"{store!r} has no group {group!r} ({e}); {fix}") from e
    meta = _cfact_meta(g) or {}
    if meta.get("type") != kind:
        raise StoreNotFoundError(
            f"{store!r}/{group} is not a cfact {kind} group (attribute 'cfact.type' is "
            f"{meta.get('type')!r}); {fix}"
        )
    if not meta.get("complete"):
        raise StoreNotFoundError(
            f"{store!r}/{group} is not a complete {kind} group: it is incomplete (its write "
            f"was interrupted, or is still running); {fix}"
        )
    check_upstream(store, group, meta)
    return g, meta


def require_exists(path: str, what: str) -> None:
    if not is_url(path) and not os.path.exists(path):
        raise StoreNotFoundError(f"no {what} at {path!r}")
