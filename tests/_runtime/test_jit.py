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


def test_no_writable_cache_compiles_without_it(monkeypatch):
    """A read-only installation without a writable user cache: numba refuses ``cache=True``
    (no cache locator); the kernel is then compiled without the cache instead of failing."""
    from numba.core import caching

    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # renamed in numba 0.6x
    monkeypatch.setattr(impl, "_locator_classes", [])
    import numba
    import pytest

    with pytest.raises(RuntimeError, match="no locator"):  # what numba does there
        numba.njit(cache=True)(lambda x: x)

    @jit.kernel
    def _scale(a, x):  # pragma: no cover - compiled
        for i in range(x.size):
            x[i] *= a

    x = np.ones(3)
    _scale(3.0, x)
    np.testing.assert_array_equal(x, [3.0, 3.0, 3.0])
