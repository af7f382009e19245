"""Operands on a 64-byte boundary: products whose sums a rerun compares bitwise."""

from __future__ import annotations

import numpy as np

from cfact_dask._runtime.blas import aligned_copy, aligned_gram


def _at(a, offset):
    """``a`` copied into a buffer starting ``offset`` bytes past a 64-byte boundary."""
    buf = np.empty(a.nbytes + 128, dtype=np.uint8)
    start = (-buf.ctypes.data) % 64 + offset
    out = buf[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def test_aligned_copy_is_a_c_ordered_copy_on_a_64_byte_boundary():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((37, 5))
    for src in (a, a.T, _at(a, 8), _at(a, 24)[::2]):
        got = aligned_copy(src, np.float64)
        assert got.ctypes.data % 64 == 0 and got.flags.c_contiguous and got.flags.writeable
        np.testing.assert_array_equal(got, src)
        assert not np.shares_memory(got, src)
    assert aligned_copy(a, np.float32).dtype == np.float32


def test_products_of_aligned_copies_do_not_depend_on_where_the_input_sat():
    rng = np.random.default_rng(1)
    w, x = rng.standard_normal((20, 3)), rng.standard_normal((20, 50))
    ref = aligned_copy(w.T) @ x
    h = aligned_copy(x.T)
    gram = h @ h.T
    for off in (0, 8, 16, 24, 32, 40, 48, 56):
        np.testing.assert_array_equal(aligned_copy(_at(w, off).T) @ x, ref)
        g = aligned_copy(_at(x.T, off))
        np.testing.assert_array_equal(g @ g.T, gram)
        np.testing.assert_array_equal(aligned_gram(_at(x.T, off)), gram)  # the one helper
