"""Comparing factorizations: matched correlations, relative errors, support recovery.

Factors are unique only up to permutation and scale (and sign for signed methods). Components are
matched by optimal assignment (Hungarian algorithm) on the absolute Pearson correlation of the
columns of ``W`` (and rows of ``H`` when given); correlation is invariant to the scale of each
component, so no separate normalisation is needed.

References
----------
.. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization: fast and accurate
   low-rank factorization of compressively-sensed data". ICML 2019, arXiv:1706.08146.
.. [2] H. W. Kuhn. "The Hungarian method for the assignment problem". Naval Research Logistics
   Quarterly 2 (1955).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
from scipy.optimize import linear_sum_assignment

from .errors import InputError

__all__ = ["FactorMatch", "SupportRecovery", "match_factors", "relative_error", "support_recovery"]


@dataclass(frozen=True)
class FactorMatch:
    """Result of :func:`match_factors`.

    Attributes
    ----------
    permutation : ndarray of int
        ``permutation[i]`` is the estimated component matched to true component ``i``
        (-1 when there are fewer estimated components than true ones).
    signs : ndarray
        Sign of the correlation of each matched pair (+1 / -1; 0 when unmatched); multiply the
        estimated component by it to align a signed factorization.
    corr_W, corr_H : ndarray
        Absolute correlation of each matched pair (``corr_H`` is None without ``H``).
    """

    permutation: np.ndarray
    signs: np.ndarray
    corr_W: np.ndarray
    corr_H: np.ndarray | None

    @property
    def mean_corr_W(self) -> float:
        """Mean absolute correlation of matched columns of ``W``."""
        return float(np.mean(self.corr_W))

    @property
    def mean_corr_H(self) -> float | None:
        """Mean absolute correlation of matched rows of ``H`` (None without ``H``)."""
        return None if self.corr_H is None else float(np.mean(self.corr_H))

    def align(self, W_est: Any, H_est: Any = None) -> tuple[Any, Any]:
        """Estimated factors permuted (and sign-flipped) into the order of the true ones."""
        if np.any(self.permutation < 0):
            raise InputError("cannot align: some true components have no estimated match")
        W = W_est[:, self.permutation] * self.signs
        H = None if H_est is None else H_est[self.permutation] * self.signs[:, None]
        return W, H


def _as_2d(x: Any, name: str) -> Any:
    if hasattr(x, "data") and hasattr(x, "dims") and not isinstance(x, np.ndarray):
        x = x.data  # xarray
    if not isinstance(x, da.Array):
        x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise InputError(f"{name} must be a matrix, got shape {x.shape}")
    return x


def _corr(A: Any, B: Any) -> Any:
    """|A| x |B| Pearson correlations of the columns (lazy when either is dask)."""
    a = A - A.mean(axis=0)
    b = B - B.mean(axis=0)
    num = a.T @ b
    na = (a * a).sum(axis=0) ** 0.5
    nb = (b * b).sum(axis=0) ** 0.5
    return num, na, nb


def _finish_corr(num: np.ndarray, na: np.ndarray, nb: np.ndarray) -> np.ndarray:
    den = np.outer(na, nb)
    out = np.zeros_like(num, dtype=float)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


def match_factors(W_true: Any, W_est: Any, H_true: Any = None, H_est: Any = None) -> FactorMatch:
    """Match estimated components to true ones by Hungarian assignment on |correlation|.

    Parameters
    ----------
    W_true, W_est : array-like (n, r_true), (n, r_est)
        Columns are components. Dask arrays are reduced blockwise (only r x r goes to the client).
    H_true, H_est : array-like (r_true, m), (r_est, m), optional
        Rows are components. When given, the assignment maximises the sum of |corr| of ``W`` and
        ``H``.

    Returns
    -------
    FactorMatch
        ``permutation``, ``signs``, per-pair ``corr_W`` / ``corr_H`` and their means.

    References
    ----------
    .. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization". ICML 2019,
       arXiv:1706.08146.

    Examples
    --------
    >>> import numpy as np
    >>> W = np.random.default_rng(0).random((50, 3))
    >>> match_factors(W, 2 * W[:, [2, 0, 1]]).permutation
    array([1, 2, 0])
    """
    Wt, We = _as_2d(W_true, "W_true"), _as_2d(W_est, "W_est")
    if Wt.shape[0] != We.shape[0]:
        raise InputError(f"W_true has {Wt.shape[0]} rows but W_est has {We.shape[0]}")
    if (H_true is None) != (H_est is None):
        raise InputError("give both H_true and H_est, or neither")
    parts = [_corr(Wt, We)]
    if H_true is not None:
        Ht, He = _as_2d(H_true, "H_true"), _as_2d(H_est, "H_est")
        if Ht.shape[1] != He.shape[1]:
            raise InputError(f"H_true has {Ht.shape[1]} columns but H_est has {He.shape[1]}")
        if Ht.shape[0] != Wt.shape[1] or He.shape[0] != We.shape[1]:
            raise InputError(
                f"ranks disagree: W_true {Wt.shape}, H_true {Ht.shape}, W_est {We.shape}, "
                f"H_est {He.shape}"
            )
        parts.append(_corr(Ht.T, He.T))
    (parts,) = dask.compute(parts)
    C = [_finish_corr(*(np.asarray(p, dtype=float) for p in part)) for part in parts]
    score = sum(np.abs(c) for c in C)
    rows, cols = linear_sum_assignment(score, maximize=True)
    r_true = Wt.shape[1]
    perm = np.full(r_true, -1, dtype=np.int64)
    perm[rows] = cols
    signs = np.zeros(r_true)
    corr_W = np.zeros(r_true)
    corr_H = None if len(C) == 1 else np.zeros(r_true)
    signs[rows] = np.where(C[0][rows, cols] < 0, -1.0, 1.0)
    corr_W[rows] = np.abs(C[0][rows, cols])
    if corr_H is not None:
        corr_H[rows] = np.abs(C[1][rows, cols])
    return FactorMatch(perm, signs, corr_W, corr_H)


def _rel_err_block(M: np.ndarray, W: np.ndarray, H: np.ndarray) -> np.ndarray:
    M = np.asarray(M, dtype=np.float64)
    R = M - np.asarray(W, dtype=np.float64) @ np.asarray(H, dtype=np.float64)
    return np.array([[float(np.sum(R * R)), float(np.sum(M * M))]]).reshape(1, 1, 2)


def relative_error(M: Any, W: Any, H: Any) -> float:
    """``||M - W H||_F / ||M||_F``, blockwise on ``M``'s chunks (``W H`` never formed whole).

    ``M`` may be anything :func:`cfact_dask.open_array` takes (features on axis 0), ``W`` is
    n x r and ``H`` r x m (numpy or dask).
    """
    from .io import InputArray, open_array

    if isinstance(M, np.ndarray) and not isinstance(W, da.Array) and not isinstance(H, da.Array):
        M = np.asarray(M, dtype=np.float64)
        den = np.linalg.norm(M)
        return float(np.linalg.norm(M - np.asarray(W) @ np.asarray(H)) / den) if den else math.inf
    inp = M if isinstance(M, InputArray) else open_array(M)
    X = inp.data
    if X.ndim != 2:
        raise InputError(f"relative_error needs a matrix, got shape {X.shape}")
    if inp.feature_axis == 1:
        X = X.T
    W = da.asarray(W)
    H = da.asarray(H)
    if W.shape[0] != X.shape[0] or H.shape[1] != X.shape[1] or W.shape[1] != H.shape[0]:
        raise InputError(f"shapes do not fit: M {X.shape}, W {W.shape}, H {H.shape}")
    W = W.rechunk((X.chunks[0], W.shape[1]))
    H = H.rechunk((H.shape[0], X.chunks[1]))
    parts = da.blockwise(
        _rel_err_block,
        "ijk",
        X,
        "ij",
        W,
        "il",
        H,
        "lj",
        new_axes={"k": 2},
        concatenate=True,
        dtype=np.float64,
        meta=np.empty((0, 0, 0)),
    )
    num, den = dask.compute(parts[..., 0].sum(), parts[..., 1].sum())
    return float(math.sqrt(num / den)) if den > 0 else math.inf


@dataclass(frozen=True)
class SupportRecovery:
    """Precision / recall of the nonzero pattern of an estimated sparse factor.

    Attributes
    ----------
    precision : float
        Fraction of estimated nonzeros that are true nonzeros.
    recall : float
        Fraction of true nonzeros found.
    f1 : float
    per_column : ndarray (r, 2)
        Precision and recall per component.
    """

    precision: float
    recall: float
    f1: float
    per_column: np.ndarray


def support_recovery(
    W_true: Any, W_est: Any, threshold: float = 1e-3, *, match: bool = True
) -> SupportRecovery:
    """Precision / recall of the support of ``W_est`` against ``W_true``.

    An entry of a column counts as nonzero when ``|w| > threshold * max|column|`` (relative, so
    scale does not matter). With ``match=True`` the columns of ``W_est`` are first matched to
    those of ``W_true`` with :func:`match_factors`.
    """
    Wt = np.asarray(_as_2d(W_true, "W_true"))
    We = np.asarray(_as_2d(W_est, "W_est"))
    if Wt.shape[0] != We.shape[0]:
        raise InputError(f"W_true has {Wt.shape[0]} rows but W_est has {We.shape[0]}")
    if not threshold >= 0:
        raise InputError(f"threshold must be >= 0 (relative to each column's max), got {threshold}")
    if match:
        perm = match_factors(Wt, We).permutation
        We = np.stack([We[:, p] if p >= 0 else np.zeros(We.shape[0]) for p in perm], axis=1)
    elif Wt.shape[1] != We.shape[1]:
        raise InputError(f"W_true has {Wt.shape[1]} columns but W_est has {We.shape[1]}")

    def supp(A: np.ndarray) -> np.ndarray:
        mx = np.abs(A).max(axis=0, keepdims=True)
        return (np.abs(A) > threshold * mx) & (np.abs(A) > 0)

    St, Se = supp(Wt), supp(We)
    tp = (St & Se).sum(axis=0).astype(float)
    n_est, n_true = Se.sum(axis=0), St.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.stack(
            [np.where(n_est > 0, tp / n_est, 1.0), np.where(n_true > 0, tp / n_true, 1.0)], axis=1
        )
    prec = float(tp.sum() / n_est.sum()) if n_est.sum() else 1.0
    rec = float(tp.sum() / n_true.sum()) if n_true.sum() else 1.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return SupportRecovery(prec, rec, f1, per)
