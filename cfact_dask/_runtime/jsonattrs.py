"""Plain-JSON values for Zarr attributes, checkpoint parameters and ``--json`` reports."""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np

__all__ = ["json_default", "to_json"]


def json_default(o: Any, arrays: Literal["list", "summary"] = "list") -> Any:
    """``json.dumps(default=...)``: numpy scalars and arrays, spec objects, else ``repr``.

    ``arrays="summary"`` stores an array as its shape and sum (for parameters compared on
    resume, where the array itself would be too big to keep in attributes).
    """
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        if arrays == "summary":
            return {"ndarray": list(o.shape), "sum": float(np.asarray(o, float).sum())}
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return repr(o)


def to_json(obj: Any, *, arrays: Literal["list", "summary"] = "list",
            sort_keys: bool = False) -> Any:
    """``obj`` turned into plain JSON types (a round trip through ``json``)."""
    return json.loads(json.dumps(obj, default=lambda o: json_default(o, arrays),
                                 sort_keys=sort_keys))
