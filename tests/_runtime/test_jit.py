"""The compiled-kernel helper (``cfact_dask._runtime.jit``): switched by ``cfact.jit.enabled``,
compiles on first call, keeps the plain function."""

from __future__ import annotations

import dask
import numpy as np

from cfact_dask._runtime import jit


@jit.kernel
def _axpy(a, x, y):  # pragma: no cover - compiled
    for i in range(x.size):
        y[i] += a * x[i]


def test_kernel_compiles_and_keeps_the_plain_function():
    x, y = np.arange(5.0), np.ones(5)
    _axpy(2.0, x, y)
    np.testing.assert_array_equal(y, 1 + 2 * np.arange(5.0))
    assert type(_axpy.__wrapped__) is type(_axpy.py)  # functools.wraps: the plain function
    y2 = np.ones(5)
    _axpy.py(2.0, x, y2)  # the uncompiled loop, same numbers
    np.testing.assert_array_equal(y, y2)
    assert _axpy.__name__ == "_axpy"


def test_switched_by_the_config():
    assert jit.enabled()
    with dask.config.set({"cfact.jit.enabled": False}):
        assert not jit.enabled()
    assert jit.enabled()
