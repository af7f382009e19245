"""scikit-learn style estimators over :func:`svd`, :func:`sparse_pca` and :func:`cp`.

Thin shells: ``__init__`` only stores parameters, ``fit`` validates them and forwards every one to
the functional core, learned attributes end in ``_``. Matrices follow scikit-learn's layout
(``n_samples × n_features``); numpy input is validated with scikit-learn's ``validate_data``,
chunked input (dask / Zarr / xarray) goes to the distributed core as it is.

References
----------
.. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization: fast and accurate
   low-rank factorization of compressively-sensed data". ICML 2019, arXiv:1706.08146.
.. [2] J. A. Tropp, A. Yurtsever, M. Udell, V. Cevher. "Practical sketching algorithms for
   low-rank matrix approximation". SIAM J. Matrix Anal. Appl. 38(4), 2017.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ..factor import _cp, _svd
from ..factor import _sparse_pca as _spca
from ..sketching._sketch import sketch as _sketch
from ._validation import check_n_components, is_chunked, resolve_seed, to_numpy

__all__ = ["CompressedCP", "CompressedSVD", "CompressedSparsePCA"]


class CompressedSVD(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Truncated SVD in one read of the data (Tropp et al.) or with power iterations.

    Like ``sklearn.decomposition.TruncatedSVD`` (no centring), on chunked data.

    Parameters
    ----------
    n_components : int
        Number of singular triplets (``< min(n_samples, n_features)``).
    passes : int
        ``1`` (single pass) or ``2 + 2q``.
    oversample : int, optional
        Extra range-sketch columns (see :func:`cfact_dask.svd`).
    kind : str
        Kind of the random test matrices.
    random_state : int, Generator, RandomState or None

    Attributes
    ----------
    components_ : ndarray (n_components, n_features)
    singular_values_ : ndarray (n_components,)
    explained_variance_ : ndarray (n_components,)
        Variance over the samples of each column of the transformed training data.
    error_estimate_ : float
        Sketch-based estimate of the relative Frobenius error.
    n_features_in_ : int

    References
    ----------
    .. [1] J. A. Tropp, A. Yurtsever, M. Udell, V. Cevher. "Practical sketching algorithms for
       low-rank matrix approximation". SIAM J. Matrix Anal. Appl. 38(4), 2017.
    """

    def __init__(self, n_components: int = 2, *, passes: int = 1, oversample: int | None = None,
                 kind: str = "gaussian", random_state: Any = None) -> None:
        self.n_components = n_components
        self.passes = passes
        self.oversample = oversample
        self.kind = kind
        self.random_state = random_state

    def _fit(self, X: Any) -> Any:
        if not is_chunked(X):
            X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
            shape = X.shape
        else:
            from ..io import open_array

            X = open_array(X)
            shape = X.shape
            self.n_features_in_ = int(shape[1])
        k = check_n_components(self.n_components, shape, 2)
        res = _svd.svd(X, k, passes=self.passes, oversample=self.oversample, kind=self.kind,
                       random_state=resolve_seed(self.random_state), progress=False)
        self.svd_ = res
        self.components_ = to_numpy(res.Vt)
        self.singular_values_ = np.asarray(res.s)
        self.error_estimate_ = float(res.error_estimate)
        Xt = res.U * res.s[None, :]
        self.explained_variance_ = to_numpy(Xt.var(axis=0))
        self._n_features_out = self.components_.shape[0]
        return Xt

    def fit(self, X: Any, y: Any = None) -> CompressedSVD:
        """Compute the truncated SVD of ``X`` (n_samples × n_features)."""
        self._fit(X)
        return self

    def fit_transform(self, X: Any, y: Any = None) -> Any:
        """Fit and return ``U diag(s)`` (numpy for in-memory input, dask for chunked input)."""
        Xt = self._fit(X)
        return Xt if is_chunked(X) else to_numpy(Xt)

    def transform(self, X: Any) -> Any:
        """Project ``X`` on the components: ``X @ components_.T``."""
        check_is_fitted(self)
        if is_chunked(X):
            from ..io import open_array

            return open_array(X).data @ self.components_.T
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return X @ self.components_.T

    def inverse_transform(self, X: Any) -> Any:
        """Map transformed data back: ``X @ components_``."""
        check_is_fitted(self)
        if isinstance(X, da.Array):
            return X @ self.components_
        return np.asarray(X) @ self.components_


class CompressedSparsePCA(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Sparse PCA (scikit-learn's ``SparsePCA`` objective) on the data or on a sketch of it.

    With ``sketch_dim`` set, the features are compressed to ``sketch_dim`` rows with a random
    operator in one read, sparse PCA runs on the sketch, and the sparse components in the original
    feature space are refit with one more read of the data (an exact ℓ1 step with the learnt
    dictionary), as in the factorize-recover scheme of Sharan et al.

    Parameters
    ----------
    n_components : int or None
        Number of components (default ``min(n_samples, n_features) − 1``).
    alpha : float
        ℓ1 penalty on the components.
    ridge_alpha : float
        Ridge penalty of ``transform``.
    max_iter, tol : int, float
    sketch_dim : int or None
        Compressed feature dimension (None: no compression).
    kind : str
        Kind of the sketch operator.
    random_state : int, Generator, RandomState or None

    Attributes
    ----------
    components_ : ndarray (n_components, n_features)
        Unit-norm sparse components.
    mean_ : ndarray (n_features,)
    n_iter_ : int
    error_ : list of float
    operator_ : SketchOperator or None

    References
    ----------
    .. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization". ICML 2019.
    """

    def __init__(self, n_components: int | None = None, *, alpha: float = 1.0,
                 ridge_alpha: float = 0.01, max_iter: int = 1000, tol: float = 1e-8,
                 sketch_dim: int | None = None, kind: str = "gaussian",
                 random_state: Any = None) -> None:
        self.n_components = n_components
        self.alpha = alpha
        self.ridge_alpha = ridge_alpha
        self.max_iter = max_iter
        self.tol = tol
        self.sketch_dim = sketch_dim
        self.kind = kind
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> CompressedSparsePCA:
        """Learn sparse components from ``X`` (n_samples × n_features)."""
        chunked = is_chunked(X)
        if not chunked:
            X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
            M = X.T
        else:
            from ..io import open_array

            inp = open_array(X)
            self.n_features_in_ = int(inp.shape[1])
            M = inp.data.T
        shape = (M.shape[1], M.shape[0])
        k = check_n_components(self.n_components, shape, min(shape) - 1)
        seed = resolve_seed(self.random_state)
        if self.sketch_dim is not None:
            sk = _sketch(M, n_components=self.sketch_dim, kind=self.kind, seed=seed, axis=0)
            res = _spca.sparse_pca(sk, k, self.alpha, ridge_alpha=self.ridge_alpha,
                                   max_iter=self.max_iter, tol=self.tol, random_state=seed)
            mean = M.mean(axis=1)
            W = _spca.refit_components(M, res.H, self.alpha, mean=mean)
            self.operator_ = res.operator
            self.mean_ = to_numpy(mean)
            Wn = to_numpy(W)
            nrm = np.linalg.norm(Wn, axis=0)
            self.components_ = (Wn / np.where(nrm == 0, 1.0, nrm)).T
        else:
            res = _spca.sparse_pca(M, k, self.alpha, ridge_alpha=self.ridge_alpha,
                                   max_iter=self.max_iter, tol=self.tol, random_state=seed)
            self.operator_ = None
            self.mean_ = to_numpy(res.mean)
            self.components_ = to_numpy(res.components)
        self.result_ = res
        self.n_components_ = k
        self.n_iter_ = int(res.n_iter)
        self.error_ = list(res.errors)
        self._n_features_out = k
        return self

    def transform(self, X: Any) -> Any:
        """Least-squares codes with ridge penalty (scikit-learn's ``SparsePCA.transform``)."""
        check_is_fitted(self)
        if is_chunked(X):
            from ..io import open_array

            M = open_array(X).data.T
        else:
            M = validate_data(self, X, dtype=[np.float64, np.float32], reset=False).T
        return _spca.sparse_pca_transform(M, self.components_, self.mean_, self.ridge_alpha)

    def inverse_transform(self, X: Any) -> Any:
        """``X @ components_ + mean_``."""
        check_is_fitted(self)
        if isinstance(X, da.Array):
            return X @ self.components_ + self.mean_
        return np.asarray(X) @ self.components_ + self.mean_


class CompressedCP(BaseEstimator):
    """CP decomposition of a tensor, optionally of a one-mode sketch of it (TensorLy's ``CP``).

    Parameters
    ----------
    rank : int
        Number of components.
    nonnegative : bool
    sketch_dim : int or None
        Compress mode ``sketch_mode`` to this many rows first (None: no compression).
    sketch_mode : int
    kind : str
        Kind of the sketch operator.
    max_iter, tol : int, float
    init : {"svd", "random"}
    random_state : int, Generator, RandomState or None
    checkpoint : str, dict or None
        See :func:`cfact_dask.cp`.

    Attributes
    ----------
    weights_, factors_ : the decomposition (``factors_[sketch_mode]`` is compressed when
        ``sketch_dim`` is set)
    errors_ : list of float
    reconstruction_err_ : float
    n_iter_ : int
    operator_ : SketchOperator or None
    decomposition_ : CPResult

    References
    ----------
    .. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization". ICML 2019.
    """

    def __init__(self, rank: int = 1, *, nonnegative: bool = False, sketch_dim: int | None = None,
                 sketch_mode: int = 0, kind: str = "expander", max_iter: int = 100,
                 tol: float = 1e-8, init: str = "svd", random_state: Any = None,
                 checkpoint: Any = None) -> None:
        self.rank = rank
        self.nonnegative = nonnegative
        self.sketch_dim = sketch_dim
        self.sketch_mode = sketch_mode
        self.kind = kind
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.random_state = random_state
        self.checkpoint = checkpoint

    def fit(self, X: Any, y: Any = None) -> CompressedCP:
        """Decompose the tensor ``X``."""
        seed = resolve_seed(self.random_state)
        sketch = None
        if self.sketch_dim is not None:
            sketch = dict(n_components=self.sketch_dim, mode=self.sketch_mode, kind=self.kind,
                          seed=seed)
        res = _cp.cp(X, self.rank, nonnegative=self.nonnegative, sketch=sketch,
                     max_iter=self.max_iter, tol=self.tol, init=self.init, random_state=seed,
                     checkpoint=self.checkpoint)
        self.decomposition_ = res
        self.weights_ = res.weights
        self.factors_ = res.factors
        self.errors_ = list(res.errors)
        self.reconstruction_err_ = res.reconstruction_err_
        self.n_iter_ = res.n_iter
        self.operator_ = res.operator
        return self

    def fit_transform(self, X: Any, y: Any = None) -> Any:
        """Fit and return the decomposition as a TensorLy ``CPTensor``."""
        return self.fit(X).decomposition_.to_tensorly()

    def to_tensor(self) -> np.ndarray:
        """Dense reconstruction from the fitted factors (small tensors)."""
        check_is_fitted(self)
        return self.decomposition_.to_tensor()
