"""cfact_dask: compressed low-rank factorization of chunked out-of-core data with Dask.

Data flow: :func:`open_array` → :func:`sketch` (one pass, chunking-invariant) → factorize →
recover → reconstruct into chunked Zarr. See the README and ``DESIGN.md``.
"""

from __future__ import annotations

from . import config as _config  # noqa: F401  (registers the cfact.* dask.config defaults)
from ._version import __version__
from .cluster import client_context, connect
from .errors import (
    CfactError,
    ConvergenceWarning,
    InputError,
    NonFiniteError,
    RankError,
    StoreExistsError,
    StoreNotFoundError,
)
from .io import InputArray, open_array
from .operators import KINDS, SketchOperator, make_operator
from .sketch import Sketch, sketch, sketch_with

__all__ = [
    "KINDS",
    "CfactError",
    "ConvergenceWarning",
    "InputArray",
    "InputError",
    "NonFiniteError",
    "RankError",
    "Sketch",
    "SketchOperator",
    "StoreExistsError",
    "StoreNotFoundError",
    "__version__",
    "client_context",
    "connect",
    "make_operator",
    "open_array",
    "sketch",
    "sketch_with",
]
