"""Settings under the ``cfact`` namespace of ``dask.config``.

Defaults live in ``cfact.yaml`` next to this file and are registered with
``dask.config.update_defaults`` at import, so they can be changed with ``dask.config.set``
(``dask.config.set({"cfact.sketch.tile-size": 8192})``), a YAML file in ``~/.config/dask/`` or the
``DASK_CFACT__SKETCH__TILE_SIZE`` environment variable.  Values are read at call time.
"""

from __future__ import annotations

import os
from typing import Any

import dask.config
import yaml

__all__ = ["get"]

_fn = os.path.join(os.path.dirname(__file__), "cfact.yaml")
with open(_fn) as _f:
    _defaults = yaml.safe_load(_f)

dask.config.update_defaults(_defaults)


def get(key: str, default: Any = None) -> Any:
    """Return ``cfact.<key>`` from ``dask.config`` (read at call time)."""
    return dask.config.get(f"cfact.{key}", default=default)
