"""Deterministic signs of chunked factors: the largest-magnitude entry of each column positive.

Computed from one small reduction over the row blocks (no block is gathered): every block
reports, per column, its largest ``|entry|`` and that entry (:func:`sign_stats`); the client
picks the overall largest and its sign (:func:`sign_vector`). Used by the SVD and sparse PCA.
"""

from __future__ import annotations

import dask.array as da
import numpy as np

__all__ = ["sign_stats", "sign_vector"]


def _maxabs_block(b: np.ndarray) -> np.ndarray:
    idx = np.argmax(np.abs(b), axis=0)
    vals = b[idx, np.arange(b.shape[1])]
    return np.stack([np.abs(vals), vals])[None]


def sign_stats(U: da.Array) -> da.Array:
    """Per row block: max |entry| and the entry itself, per column (a 2·nblocks × r array)."""
    return U.map_blocks(
        lambda b: _maxabs_block(b)[0], chunks=((2,) * U.numblocks[0], U.chunks[1]), dtype=U.dtype
    )


def sign_vector(stats: np.ndarray) -> np.ndarray:
    """The ``±1`` per column that makes its largest-magnitude entry positive (``stats`` from
    :func:`sign_stats`, computed)."""
    stats = stats.reshape(-1, 2, stats.shape[-1])
    best = np.argmax(stats[:, 0, :], axis=0)
    vals = stats[best, 1, np.arange(stats.shape[2])]
    sg = np.sign(vals)
    sg[sg == 0] = 1.0
    return sg
