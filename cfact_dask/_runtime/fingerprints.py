"""Fingerprints of inputs: what a stage was computed from, so a resume notices changed data.

For data in a store, the fingerprint is cheap and sound: the listing of the array's objects with
their sizes and modification stamps (any rewrite of a chunk changes its stamp), plus a hash of the
bytes of a few sampled chunks (evenly spaced over the listing, at most 1 MiB read from each). For
data in memory it is dask's content token. Nothing here reads whole chunks of a large store.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

from .outputs import input_location, is_url

__all__ = ["compare", "fingerprint"]

_SAMPLE = 16
_SAMPLE_BYTES = 1 << 20


def fingerprint(inp: Any, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A small JSON-able record of ``inp``'s content (see the module docstring)."""
    loc = input_location(inp)
    if loc is not None:
        try:
            if is_url(loc):
                return _remote(loc, storage_options)
            if os.path.isdir(loc):
                return _local(loc)
        except OSError:
            pass
    from dask.base import tokenize

    data = getattr(inp, "data", inp)
    return {"kind": "token", "token": tokenize(data)}


def _digest(rows: list[tuple[str, int, Any]]) -> str:
    h = hashlib.sha256()
    for name, size, stamp in rows:
        h.update(f"{name}\0{size}\0{stamp}\n".encode())
    return h.hexdigest()


def _sample(rows: list[tuple[str, int, Any]]) -> list[str]:
    data = [r[0] for r in rows if os.path.basename(r[0]) not in ("zarr.json", ".zarray",
                                                                    ".zattrs", ".zgroup")]
    if len(data) <= _SAMPLE:
        return data
    step = len(data) / _SAMPLE
    return [data[int(i * step)] for i in range(_SAMPLE)]


def _local(path: str) -> dict[str, Any]:
    rows: list[tuple[str, int, Any]] = []
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            full = os.path.join(dirpath, f)
            st = os.stat(full)
            rows.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    rows.sort()
    h = hashlib.sha256()
    for rel in _sample(rows):
        with open(os.path.join(path, rel), "rb") as fh:
            h.update(rel.encode() + b"\0" + fh.read(_SAMPLE_BYTES))
    return {"kind": "listing", "objects": len(rows), "bytes": sum(r[1] for r in rows),
            "listing": _digest(rows), "sample": h.hexdigest()}


def _remote(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    import fsspec

    fs, p = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    found = fs.find(p, detail=True)
    rows = []
    for name, info in found.items():
        stamp = (info.get("ETag") or info.get("etag") or info.get("LastModified")
                 or info.get("mtime") or info.get("created") or "")
        rows.append((name[len(p):].lstrip("/"), int(info.get("size") or 0), str(stamp)))
    rows.sort()
    h = hashlib.sha256()
    for rel in _sample(rows):
        h.update(rel.encode() + b"\0" + fs.cat_file(f"{p}/{rel}", start=0, end=_SAMPLE_BYTES))
    return {"kind": "listing", "objects": len(rows), "bytes": sum(r[1] for r in rows),
            "listing": _digest(rows), "sample": h.hexdigest()}


def compare(saved: Mapping[str, Any] | None, now: Mapping[str, Any] | None) -> str | None:
    """None when the two fingerprints agree (or one is missing), else what differs."""
    if not saved or not now:
        return None
    if saved.get("kind") != now.get("kind"):
        return f"it was read as {saved.get('kind')} and is now {now.get('kind')}"
    if saved.get("kind") == "token":
        return None if saved.get("token") == now.get("token") else "its content token changed"
    parts = []
    if saved.get("objects") != now.get("objects"):
        parts.append(f"{saved.get('objects')} -> {now.get('objects')} chunk objects")
    if saved.get("bytes") != now.get("bytes"):
        parts.append(f"{saved.get('bytes')} -> {now.get('bytes')} bytes")
    if saved.get("sample") != now.get("sample"):
        parts.append("sampled chunk bytes differ")
    if not parts and saved.get("listing") != now.get("listing"):
        parts.append("chunk objects were rewritten (modification stamps changed)")
    return "; ".join(parts) or None
