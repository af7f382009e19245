"""The fixed-order tree sums shared by the recovery's blocks, the SVD's Grams and the sketch."""

from __future__ import annotations

import dask
import numpy as np

from cfact_dask._runtime.trees import sum_list, tree_sum


def _in_order(parts):
    acc = np.array(parts[0], dtype=np.float64, copy=True)
    for p in parts[1:]:
        acc += p
    return acc


def test_tree_sum_is_the_fixed_tree_of_eight_way_sums_in_float64():
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((7, 5)).astype(np.float32) * 10.0**k for k in range(19)]
    want = _in_order([_in_order(parts[0:8]), _in_order(parts[8:16]), _in_order(parts[16:])])
    got = tree_sum(parts, local=True)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)
    # delayed: the same tree, the same numbers
    np.testing.assert_array_equal(dask.compute(tree_sum(parts), scheduler="sync")[0], want)
    # ... and not the flat sum, whose rounding differs for these magnitudes
    assert not np.array_equal(got, _in_order(parts))


def test_sum_list_keeps_the_dtype_unless_told_and_sums_tuples_entrywise():
    a = np.ones((2, 2), np.float32)
    assert sum_list([a, a]).dtype == np.float32
    assert sum_list([a, a], np.float64).dtype == np.float64
    s, t = sum_list([(a, 2 * a), (a, a)])
    np.testing.assert_array_equal(s, 2 * a)
    np.testing.assert_array_equal(t, 3 * a)
    assert sum_list([a])[0, 0] == 1 and sum_list([a]) is not a  # a fresh array


def test_sparse_parts_are_summed_as_sparse_matrices():
    import scipy.sparse as sp

    parts = [sp.random(30, 30, density=0.1, random_state=k, format="csr") for k in range(11)]
    got = tree_sum(parts, local=True)
    assert sp.issparse(got) and got.dtype == np.float64
    np.testing.assert_allclose(got.toarray(), sum(p.toarray() for p in parts), rtol=1e-14)
