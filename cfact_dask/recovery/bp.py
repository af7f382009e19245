"""Basis pursuit ``min ‖x‖₁ s.t. P x = y`` by HiGHS: the authors' method [1]_, moderate n only.

``y`` is first projected onto range(P) so that ``P x = y`` stays feasible under noise; the LP is
``min 1ᵀ(x⁺ + x⁻)`` over ``[P, −P]``, one per column. For NMF the negatives are clamped after,
as the authors do.

References
----------
.. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization: fast and accurate
   low-rank factorization of compressively-sensed data". ICML 2019, arXiv:1706.08146.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .. import config
from ..errors import InputError
from ..sketching.operators import SketchOperator

__all__ = ["BP_MAX_FEATURES", "basis_pursuit"]

#: basis pursuit builds P whole (sparse) and one LP per column: refuse above this many features
BP_MAX_FEATURES = 200_000


def basis_pursuit(op: SketchOperator, Wt: np.ndarray, nonneg: bool) -> np.ndarray:
    """``argmin ‖x‖₁ s.t. P x = ŷ`` per column of ``W̃`` (``ŷ`` its projection onto range(P)).

    Returns the n x r ``W`` in memory (negatives clamped when ``nonneg``).

    Raises
    ------
    InputError
        Above ``cfact.recover.bp-max-features`` features (``P`` is built whole), or when HiGHS
        fails on a column; both name the method to use instead.
    """
    from scipy.optimize import linprog

    limit = int(config.get("recover.bp-max-features", BP_MAX_FEATURES))
    n = op.n_features
    if n > limit:
        raise InputError(
            f"method='bp' solves one linear program over all n={n} features per column, above "
            f"the limit of {limit} (cfact.recover.bp-max-features); use method='nnlasso' (or "
            f"'lasso'), which works blockwise at any n, or 'lstsq-data' if the data is available"
        )
    P = sp.csc_matrix(op.columns(0, n, np.float64))
    d, r = Wt.shape
    # project onto range(P) so that P x = y stays feasible under noise
    G = P @ P.T
    G = G.toarray() if sp.issparse(G) else np.asarray(G)
    Y = G @ np.linalg.lstsq(G, Wt, rcond=None)[0]
    A = sp.hstack([P, -P], format="csc")
    c = np.ones(2 * n)
    X = np.zeros((n, r))
    for j in range(r):
        if not np.any(Y[:, j]):
            continue
        res = linprog(c, A_eq=A, b_eq=Y[:, j], bounds=(0, None), method="highs")
        if res.status != 0:
            raise InputError(
                f"basis pursuit failed on column {j}: {res.message}; use method='nnlasso'"
            )
        X[:, j] = res.x[:n] - res.x[n:]
    if nonneg:
        X = np.maximum(X, 0)  # the authors clamp negatives after BP
    return X
