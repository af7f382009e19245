"""The input of a matrix factorization as a features-first dask matrix (one coercion for all).

A :class:`~cfact_dask.Sketch` is factorized as its ``d × n`` matrix; anything
:func:`~cfact_dask.open_array` accepts is opened and, when its ``feature_axis`` is 1,
transposed lazily, so every method sees ``features × samples``.
"""

from __future__ import annotations

from typing import Any

import dask.array as da

from ..errors import InputError
from ..io import InputArray, open_array
from ..sketching._sketch import Sketch

__all__ = ["as_features_first"]


def as_features_first(X: Any, func: str, need: str = "a features × samples matrix"
                      ) -> tuple[da.Array, str, Any]:
    """``X`` as a features-first dask matrix, a description for messages, and its operator.

    Parameters
    ----------
    X : Sketch, InputArray, Zarr path, xarray / dask / numpy array
        The data (features first; an input with ``feature_axis=1`` is transposed lazily).
    func : str
        The calling method, for the message (``"svd"``, ``"sparse_pca"``).
    need : str
        What ``func`` needs, with the fix, for the message.

    Returns
    -------
    (dask.array.Array, str, SketchOperator or None)
        The matrix, its description (``"the sketch"`` or the input's source) and the sketch's
        operator (None for raw data).

    Raises
    ------
    InputError
        The input is not 2-D.
    """
    if isinstance(X, Sketch):
        return X.matrix, "the sketch", X.operator
    inp = X if isinstance(X, InputArray) else open_array(X)
    if inp.ndim != 2:
        raise InputError(
            f"{inp.source} has {inp.ndim} dimensions (shape {inp.shape}); {func} needs {need}"
        )
    A = inp.data if inp.feature_axis == 0 else inp.data.T
    return A, inp.source, None
