"""scikit-learn style estimators: thin classes that store parameters and call the functional core.

Orientation
-----------
scikit-learn estimators take ``X`` as **samples × features** (``n_samples × n_features``), so here
the features are axis 1 of ``X``. The functional core works on features × samples; the estimators
transpose (lazily, no data copy for dask inputs) and return scikit-learn shapes:

* ``components_`` is ``r × n_features`` (the core's ``Wᵀ``),
* ``transform(X)`` / ``fit_transform(X)`` return ``n_samples × r`` (the core's ``Hᵀ``),
* ``inverse_transform(Z)`` returns ``Z @ components_``.

References
----------
.. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization: fast and accurate
   low-rank factorization of compressively-sensed data". ICML 2019, arXiv:1706.08146.
.. [2] A. Cichocki, A.-H. Phan. "Fast local algorithms for large scale nonnegative matrix and tensor
   factorizations". IEICE Trans. Fundamentals E92-A(3), 2009.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from .als import ALSSpec, solve_factor
from .errors import NegativeDataError
from .nmf import NMFResult, nmf

__all__ = ["CompressedNMF"]

logger = logging.getLogger(__name__)


def _is_chunked(X: Any) -> bool:
    from .io import InputArray

    return isinstance(X, (da.Array, InputArray, str)) or hasattr(X, "chunks") and not isinstance(
        X, np.ndarray
    )


class CompressedNMF(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """NMF of ``X`` (samples × features), optionally in the compressed domain (Factorize-Recover).

    With ``sketch_dim=None`` this is plain distributed NMF (:func:`cfact_dask.nmf`). With
    ``sketch_dim=d`` the features are first compressed by a ``d × n_features`` random operator
    (one pass), NMF runs on the ``d × n_samples`` sketch, and ``components_`` are recovered from the
    compressed ones by :func:`cfact_dask.recover.recover` (``recover_method``).

    Parameters
    ----------
    n_components : int, optional
        Rank ``r``. Default ``min(n_samples, n_features) - 1``.
    sketch_dim : int, optional
        Sketch size ``d`` (``1 <= d < n_features``); None factorizes the raw data.
    sketch_kind : {"expander", "sparse_sign", "countsketch", "gaussian"}
        Measurement matrix. Signed kinds make the compressed problem a semi-NMF.
    recover_method : str
        Passed to :func:`cfact_dask.recover.recover` (e.g. ``"nnlasso"``, ``"lstsq-data"``).
    solver, init, n_init, max_iter, tol, l1_ratio, semi, negative, verbose :
        As in :func:`cfact_dask.nmf`.
    alpha_W, alpha_H : float or "same"
        scikit-learn's meaning: ``alpha_W`` penalises the *transformed data* (samples side, the
        core's ``H``), ``alpha_H`` the ``components_`` (the core's ``W``); ``"same"`` copies
        ``alpha_W``.
    random_state : int, SeedSequence, Generator or None
        Seeds the sketch operator and the initialisation.
    client : distributed.Client or str, optional
        Where to compute.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
    n_components_ : int
    n_iter_ : int
    reconstruction_err_ : float
        **Relative** Frobenius error ``‖X − WH‖_F / ‖X‖_F`` of the factorized data (the sketch
        when compressed). Note: scikit-learn's ``NMF.reconstruction_err_`` is the absolute norm.
    result_ : NMFResult
        The functional core's result (``W`` compressed when sketched).
    n_features_in_ : int

    Notes
    -----
    Until :mod:`cfact_dask.recover` is available, a sketched fit recovers ``components_`` by an
    exact nonnegative least-squares refit on the data (``min_{W≥0} ‖X − W H‖``; one extra pass),
    logged at WARNING. This fallback is temporary.

    References
    ----------
    .. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization: fast and
       accurate low-rank factorization of compressively-sensed data". ICML 2019, arXiv:1706.08146.

    Examples
    --------
    >>> import numpy as np
    >>> from cfact_dask import CompressedNMF
    >>> X = np.random.default_rng(0).random((100, 40))
    >>> est = CompressedNMF(n_components=3, random_state=0, max_iter=50, tol=1e-3)
    >>> est.fit_transform(X).shape, est.components_.shape
    ((100, 3), (3, 40))
    """

    def __init__(
        self,
        n_components: int | None = None,
        *,
        sketch_dim: int | None = None,
        sketch_kind: str = "expander",
        recover_method: str = "nnlasso",
        solver: Literal["hals", "anls"] = "hals",
        init: str | tuple[Any, Any] = "nndsvda",
        n_init: int = 1,
        max_iter: int = 500,
        tol: float = 1e-6,
        l1_ratio: float = 0.0,
        alpha_W: float = 0.0,
        alpha_H: float | str = "same",
        semi: bool | None = None,
        negative: str = "error",
        random_state: Any = None,
        verbose: bool = False,
        client: Any = None,
    ) -> None:
        self.n_components = n_components
        self.sketch_dim = sketch_dim
        self.sketch_kind = sketch_kind
        self.recover_method = recover_method
        self.solver = solver
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.l1_ratio = l1_ratio
        self.alpha_W = alpha_W
        self.alpha_H = alpha_H
        self.semi = semi
        self.negative = negative
        self.random_state = random_state
        self.verbose = verbose
        self.client = client

    # ------------------------------------------------------------------ helpers
    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = self.semi is not True
        return tags

    def _core_alphas(self) -> tuple[float, float]:
        """(core alpha_W on components, core alpha_H on the samples side) from sklearn's names."""
        on_samples = float(self.alpha_W)
        on_components = float(self.alpha_W if self.alpha_H == "same" else self.alpha_H)
        return on_components, on_samples

    def _validate(self, X: Any, reset: bool) -> tuple[Any, bool]:
        if _is_chunked(X):
            from .io import open_array

            inp = open_array(X, feature_axis=1)
            if reset:
                self.n_features_in_ = int(inp.shape[1])
            elif inp.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X has {inp.shape[1]} features, but {type(self).__name__} is expecting "
                    f"{self.n_features_in_} features as input"
                )
            return inp.data, True
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=reset)
        return np.asarray(X, dtype=np.float64), False

    def _seed(self) -> int:
        from ._random import normalize_seed

        return normalize_seed(self.random_state)

    # ------------------------------------------------------------------ sklearn API
    def fit(self, X: Any, y: Any = None) -> CompressedNMF:
        """Factorize ``X`` (samples × features). Returns ``self``."""
        self._fit(X)
        return self

    def fit_transform(self, X: Any, y: Any = None, **params: Any) -> Any:
        """Fit and return the samples' coefficients (``n_samples × n_components``).

        For in-memory data these are ``transform(X)`` with the final ``components_`` (consistent
        with ``fit(X).transform(X)``); for chunked data the factorization's own ``H`` (lazy).
        """
        H = self._fit(X)
        if isinstance(H, np.ndarray):
            return self.transform(X)
        return H.T

    def _fit(self, X: Any) -> Any:
        data, lazy = self._validate(X, reset=True)
        Xf = data.T  # features × samples
        n_features, n_samples = Xf.shape
        rank = self.n_components
        if rank is None:
            rank = min(n_samples, n_features) - 1
        seed = self._seed()
        a_W, a_H = self._core_alphas()
        common = dict(
            solver=self.solver, init=self.init, n_init=self.n_init, max_iter=self.max_iter,
            tol=self.tol, l1_ratio=self.l1_ratio, alpha_W=a_W, alpha_H=a_H, semi=self.semi,
            negative=self.negative, random_state=seed, verbose=self.verbose, client=self.client,
        )
        if isinstance(self.init, tuple):
            # sklearn orientation (W: samples × r, H: r × features) -> core (W: features × r, H)
            Ws, Hs = self.init
            common["init"] = (np.asarray(Hs).T, np.asarray(Ws).T)
        try:
            if self.sketch_dim is None:
                res = nmf(Xf, rank, **common)
                W = res.W
            else:
                from .sketch import sketch

                sk = sketch(Xf, n_components=int(self.sketch_dim), kind=self.sketch_kind,
                            seed=seed)
                res = nmf(sk, rank, **common)
                W = self._recover(res, sk, Xf)
        except NegativeDataError as e:
            # the phrase scikit-learn's checks and users grep for
            raise NegativeDataError(f"Negative values in data passed to {type(self).__name__}: "
                                    f"{e}") from e
        W = W.compute() if isinstance(W, da.Array) else W
        self.result_: NMFResult = res
        self.components_ = np.asarray(W, dtype=np.float64).T
        self.n_components_ = int(rank)
        self.n_iter_ = int(res.n_iter_)
        self.reconstruction_err_ = float(res.reconstruction_err_)
        H = res.H
        if not lazy and isinstance(H, da.Array):
            H = H.compute()
        return H

    def _recover(self, res: NMFResult, sk: Any, Xf: Any) -> Any:
        try:
            from .recover import recover
        except ImportError:
            recover = None
        if recover is not None:
            out = recover(res, sk.operator, method=self.recover_method, data=Xf)
            W = getattr(out, "W", out)
            return W
        logger.warning(
            "cfact_dask.recover is not available yet: recovering components_ by a nonnegative "
            "least-squares refit on the data (one extra pass; temporary fallback)"
        )
        spec = ALSSpec(solver="hals", nonneg_W=not res.semi)
        H = res.H
        if isinstance(Xf, np.ndarray) and isinstance(H, da.Array):
            H = H.compute()
        W = solve_factor(Xf, H, "W", spec, n_iter=max(50, int(self.max_iter)))
        return W

    def transform(self, X: Any) -> Any:
        """Coefficients ``Z ≥ 0`` (``n_samples × r``) minimising ``‖X − Z components_‖_F``."""
        check_is_fitted(self, "components_")
        data, lazy = self._validate(X, reset=False)
        spec = ALSSpec(solver="hals")
        H = solve_factor(data.T, self.components_.T, "H", spec, n_iter=int(self.max_iter))
        return H.T

    def inverse_transform(self, X: Any) -> Any:
        """Map coefficients back to feature space: ``X @ components_``."""
        check_is_fitted(self, "components_")
        if isinstance(X, da.Array):
            return X @ self.components_
        from sklearn.utils import check_array

        X = check_array(X, dtype=[np.float64, np.float32])
        return X @ self.components_

    @property
    def _n_features_out(self) -> int:
        return int(self.components_.shape[0])
