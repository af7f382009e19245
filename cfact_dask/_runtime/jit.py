"""Compiled inner loops: numba, on first use, where numpy's per-call overhead is the cost.

A few loops run hundreds of times on blocks too small for numpy to amortise its calls: FISTA's
step on a 5 000 x 20 block of ``W`` is ~25 element-wise passes plus two sparse products (1 ms
at r = 20, of which the arithmetic is a fraction), HALS's sweep over the r components of a
sketch's factor is r x 5 numpy calls on rows of a few thousand entries, and the NNLS's
projected-gradient loop of the debias is two sparse products and a handful of vector calls per
step on a support of a few hundred. Each such loop is written once as plain Python loops,
decorated with :func:`kernel`, and compiled by numba the first time it is called
(``cache=True``: compiled once per installation, then loaded from numba's on-disk cache; no
GIL held). The numpy formulation stays beside each kernel: it is the reference the tests
compare with, and the path taken when ``cfact.jit.enabled`` is false or numba cannot be
imported.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from ..config import get

__all__ = ["enabled", "kernel"]

logger = logging.getLogger(__name__)

_LOCK = threading.Lock()


@functools.cache
def _njit() -> Any:
    """numba's ``njit``, imported on first use (None without numba)."""
    try:
        from numba import njit
    except ImportError:  # pragma: no cover - numba is a dependency
        return None
    return njit


def enabled() -> bool:
    """Whether compiled kernels are used: ``cfact.jit.enabled`` and numba importable."""
    return bool(get("jit.enabled", True)) and _njit() is not None


def kernel(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (plain Python loops over numpy arrays, module level) compiled by numba on its
    first call (``nopython``, ``nogil``, ``cache=True``). The plain function stays reachable
    as ``.py`` (slow: for tests on tiny inputs only). Call it only when :func:`enabled`."""
    compiled: list[Any] = []

    @functools.wraps(fn)
    def run(*args: Any) -> Any:
        if not compiled:
            with _LOCK:
                if not compiled:
                    compiled.append(_compile(fn))
        return compiled[0](*args)

    run.py = fn  # type: ignore[attr-defined]
    return run


def _compile(fn: Callable[..., Any]) -> Any:
    """numba's dispatcher for ``fn``, cached on disk; without the cache when numba finds no
    writable place for it (a read-only installation and no writable user cache directory:
    numba refuses ``cache=True`` there), compiled again in each process instead of failing."""
    njit = _njit()
    try:
        return njit(cache=True, nogil=True)(fn)
    except RuntimeError as exc:  # "cannot cache function ...: no locator available"
        logger.debug("jit: %s compiled without numba's on-disk cache (%s)", fn.__name__, exc)
        return njit(cache=False, nogil=True)(fn)
