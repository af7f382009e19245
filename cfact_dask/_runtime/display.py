"""Short text and HTML summaries of result objects, for the terminal and for notebooks.

Every result type defines ``_summary()`` returning a title and ``(label, value)`` rows, and
binds :func:`summary_repr` / :func:`summary_html` as its ``__repr__`` / ``_repr_html_``. Values
are rendered by kind: arrays by shape, dtype and (for dask) chunking, never their entries; floats
to 4 significant digits; ``None`` as ``n/a``; long lists by their length and ends. A repr is at
most :data:`MAX_ROWS` + 1 lines, whatever the size of the result.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["MAX_ROWS", "fmt_value", "summary_html", "summary_repr"]

#: rows shown at most (the title line comes on top)
MAX_ROWS = 14
_MAX_CHARS = 90


def fmt_value(v: Any) -> str:
    """A value as a short string: arrays by shape, floats to 4 significant digits."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, str):
        return v
    shape = getattr(v, "shape", None)
    if shape is not None and hasattr(v, "dtype") and len(shape) > 0:
        dims = " × ".join(str(s) for s in shape)
        kind = "dask array" if hasattr(v, "dask") else "array"
        extra = ""
        chunks = getattr(v, "chunksize", None)
        if chunks is not None and tuple(chunks) != tuple(shape):
            extra = ", chunks " + " × ".join(str(c) for c in chunks)
        return f"{kind} {dims} {v.dtype}{extra}"
    if hasattr(v, "item") and getattr(v, "shape", None) == ():
        v = v.item()
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, tuple) and all(isinstance(x, int) for x in v):
        return " × ".join(str(x) for x in v) if v else "()"
    if isinstance(v, Sequence) and not isinstance(v, str):
        items = list(v)
        if len(items) > 6:
            head = ", ".join(fmt_value(x) for x in items[:3])
            return f"{len(items)} items: {head}, …, {fmt_value(items[-1])}"
        return "[" + ", ".join(fmt_value(x) for x in items) + "]"
    return str(v)


def _clip(s: str) -> str:
    s = " ".join(s.split())
    return s if len(s) <= _MAX_CHARS else s[: _MAX_CHARS - 1] + "…"


def _rows(obj: Any) -> tuple[str, list[tuple[str, str]]]:
    try:
        title, rows = obj._summary()
    except Exception as e:  # noqa: BLE001 - a repr must never raise (debuggers, notebooks)
        return type(obj).__name__, [("summary unavailable", f"{type(e).__name__}: {e}")]
    shown = [(str(k), _clip(fmt_value(v))) for k, v in rows if v is not _SKIP]
    if len(shown) > MAX_ROWS:
        shown = shown[: MAX_ROWS - 1] + [("…", f"{len(shown) - MAX_ROWS + 1} more rows")]
    return title, shown


#: a row value that is left out of the summary (e.g. a field that does not apply)
_SKIP = object()
SKIP = _SKIP


def summary_repr(obj: Any) -> str:
    """``Title`` then one ``  label: value`` line per row (bound as ``__repr__``)."""
    title, rows = _rows(obj)
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join([f"<{title}>"] + [f"  {k.ljust(width)}  {v}" for k, v in rows])


def summary_html(obj: Any) -> str:
    """The same rows as an HTML table (bound as ``_repr_html_`` for Jupyter)."""
    title, rows = _rows(obj)
    body = "".join(
        f"<tr><th style=\"text-align:left\">{html.escape(k)}</th>"
        f"<td style=\"text-align:left\">{html.escape(v)}</td></tr>" for k, v in rows
    )
    return (f"<div class=\"cfact-result\"><table><caption style=\"text-align:left\">"
            f"<b>{html.escape(title)}</b></caption><tbody>{body}</tbody></table></div>")
