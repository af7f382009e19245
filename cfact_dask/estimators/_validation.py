"""Validation shared by the scikit-learn style estimators: input kind, seeds, component counts.

One place for what :class:`CompressedNMF` and the decomposition estimators
(:class:`CompressedSVD`, :class:`CompressedSparsePCA`, :class:`CompressedCP`) decide the same way:
whether ``X`` goes to the distributed core as it is (chunked) or through scikit-learn's
``validate_data`` (in memory), how ``random_state`` becomes the core's seed, and the bound on
``n_components``.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from .._runtime.checks import check_rank, is_int
from .._runtime.random import normalize_seed
from ..errors import RankError

__all__ = ["check_n_components", "is_chunked", "resolve_seed", "to_numpy"]


def is_chunked(X: Any) -> bool:
    """True for inputs the distributed core opens itself: dask, Zarr, xarray and cfact objects,
    paths, and any other array that has ``chunks``; False for in-memory data (numpy, lists,
    data frames), which scikit-learn validates."""
    if isinstance(X, (da.Array, str)):
        return True
    if type(X).__module__.startswith(("zarr", "xarray", "cfact_dask")):
        return True
    return hasattr(X, "chunks") and not isinstance(X, np.ndarray)


def resolve_seed(random_state: Any) -> int:
    """The core's seed for ``random_state``: an int, ``SeedSequence``, ``Generator``, ``None``
    or a legacy ``RandomState`` (one int drawn from it, as scikit-learn does)."""
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    return normalize_seed(random_state)


def check_n_components(n_components: Any, shape: tuple[int, ...], default: int) -> int:
    """``n_components`` (``default`` for None) with ``1 <= n_components < min(shape)``, for
    data of scikit-learn's shape ``(n_samples, n_features)``; else a :class:`RankError`."""
    k = default if n_components is None else n_components
    if not is_int(k):
        raise RankError(f"n_components must be an int or None, got {n_components!r}")
    return check_rank(k, min(shape), what="n_components",
                      source=f"data of shape {tuple(shape)} (n_samples={shape[0]}, "
                             f"n_features={shape[1]})")


def to_numpy(x: Any) -> np.ndarray:
    """``x`` in memory as a numpy array (computed when it is lazy)."""
    return np.asarray(x.compute() if hasattr(x, "compute") else x)
