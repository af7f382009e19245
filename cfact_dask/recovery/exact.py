"""``lstsq-data``: the exact ``W = argmin ‖M − W H‖`` by one extra pass over the data.

The reference every sparse recovery is measured against: row-wise least squares (NNLS when
nonnegative) against the factorization's ``H``, with the exact relative reconstruction error
``‖M − W H‖ / ‖M‖`` computed in the same pass.
"""

from __future__ import annotations

import math
from typing import Any

import dask.array as da
import numpy as np

from .._runtime import cluster
from ..errors import InputError
from ._blocks import local_scheduler
from ._lsq import nnls

__all__ = ["lstsq_data"]

def _lstsq_block(
    B: np.ndarray, sq: np.ndarray, Rinv_T: np.ndarray, Rh: np.ndarray, G: np.ndarray, nonneg: bool
) -> np.ndarray:
    """Rows of ``W = argmin ‖M − W H‖`` from ``B = M Q`` (``Hᵀ = Q R``): ``w = R⁻¹ Qᵀ m``, or
    ``NNLS(R, Qᵀ m)`` (the same problem, r x r) for rows with negatives when nonnegative.

    Returns ``[W | ‖m − Hᵀw‖² | ‖m‖²]`` per row (squared residual by ``‖m‖² − 2 wᵀHm + wᵀHHᵀw``).
    """
    B = np.asarray(B, dtype=np.float64)
    W = B @ Rinv_T
    if nonneg:
        for i in np.flatnonzero((W < 0).any(axis=1)):
            W[i] = nnls(Rh, B[i])
    HM = B @ Rh  # rows (H m_i)^T = (R^T Q^T m_i)^T
    err = sq - 2 * (W * HM).sum(axis=1) + ((W @ G) * W).sum(axis=1)
    return np.concatenate([W, np.maximum(err, 0)[:, None], sq[:, None]], axis=1)


def lstsq_data(
    data: Any, H: np.ndarray, nonneg: bool, client: Any, chunks: Any
) -> tuple[da.Array, float]:
    """``W = argmin ‖M − W H‖`` by one pass over ``data`` (features first or last), and the
    exact relative error ``‖M − W H‖/‖M‖`` computed in the same pass.

    Rows whose least-squares solution has negatives are refitted by NNLS when ``nonneg``.
    Returns ``W`` (dask, persisted; row chunks ``chunks`` when given) and the error.
    """
    from ..io import InputArray, open_array

    inp = data if isinstance(data, InputArray) else open_array(data)
    X = inp.data
    if X.ndim != 2:
        raise InputError(f"lstsq-data needs the data as a matrix; {inp.source} has shape {X.shape}")
    if inp.feature_axis == 1:
        X = X.T
    n, m = X.shape
    if H.shape[1] != m:
        raise InputError(
            f"H has {H.shape[1]} columns but {inp.source} has {m} samples; pass the data the "
            f"factorization was computed from"
        )
    r = H.shape[0]
    Qh, Rh = np.linalg.qr(H.T)  # H^T = Q R: m x r and r x r
    Rinv_T = np.linalg.pinv(Rh).T
    G = H @ H.T
    Xf = X.astype(np.float64) if X.dtype != np.float64 else X
    # one pass over the data: B = M Q (tree-summed over sample chunks) and the row norms
    B = da.matmul(Xf, da.from_array(Qh, chunks=(X.chunks[1], r))).rechunk({1: r})
    sq = (Xf * Xf).sum(axis=1)
    out = da.blockwise(
        _lstsq_block,
        "ij",
        B,
        "ij",
        sq,
        "i",
        Rinv_T,
        None,
        Rh,
        None,
        G,
        None,
        nonneg,
        None,
        adjust_chunks={"j": r + 2},
        dtype=np.float64,
        meta=np.empty((0, 0)),
    )
    (out,) = cluster.persist(out, client=client, scheduler=local_scheduler(), progress=False)
    num, den = cluster.compute(out[:, r].sum(), out[:, r + 1].sum(), client=client,
                               scheduler=local_scheduler(), progress=False)
    W = out[:, :r]
    if chunks is not None:
        W = W.rechunk((chunks, r))
    exact = math.sqrt(float(num) / float(den)) if den > 0 else math.inf
    return W, exact
