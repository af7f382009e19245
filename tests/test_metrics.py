"""Factor matching, relative errors and support recovery against direct numpy computations."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from cfact_dask.datasets import planted_nmf
from cfact_dask.errors import InputError
from cfact_dask.metrics import match_factors, relative_error, support_recovery


def test_match_factors_finds_permutation_scale_and_sign(rng):
    W = rng.standard_normal((80, 4))
    H = rng.standard_normal((4, 30))
    perm = np.array([2, 0, 3, 1])
    signs = np.array([1.0, -1.0, 1.0, -1.0])
    We = W[:, perm] * signs * np.array([3.0, 0.5, 2.0, 7.0]) + 0.01 * rng.standard_normal((80, 4))
    He = H[perm] * signs[:, None]
    m = match_factors(W, We, H, He)
    # true component i is estimated component perm^{-1}[i]
    np.testing.assert_array_equal(m.permutation, np.argsort(perm))
    np.testing.assert_array_equal(m.signs, signs[np.argsort(perm)])
    assert m.mean_corr_W > 0.999 and m.mean_corr_H == pytest.approx(1.0)
    Wa, Ha = m.align(We, He)
    assert np.all(np.sum(Wa * W, axis=0) > 0)
    np.testing.assert_allclose(Ha, H)
    # dask input gives the same, reduced blockwise
    md = match_factors(da.from_array(W, chunks=17), da.from_array(We, chunks=23))
    np.testing.assert_array_equal(md.permutation, m.permutation)
    np.testing.assert_allclose(md.corr_W, m.corr_W)


def test_match_factors_rectangular_and_constant_columns(rng):
    W = rng.random((50, 3))
    m = match_factors(W, np.c_[W[:, :2], np.zeros(50)])
    assert m.corr_W[2] == 0.0 and m.mean_corr_W == pytest.approx(2 / 3)
    m = match_factors(W, W[:, :2])
    assert m.permutation[2] == -1 and m.corr_W[2] == 0
    with pytest.raises(InputError):
        match_factors(W, W[:10])
    with pytest.raises(InputError):
        match_factors(W, W, H_true=np.ones((3, 4)))


def test_relative_error_matches_numpy():
    M, W, H = planted_nmf(120, 90, 3, random_state=0)
    ref = np.linalg.norm(M - W @ H) / np.linalg.norm(M)
    assert relative_error(M, W, H) == pytest.approx(ref, rel=1e-12)
    assert relative_error(da.from_array(M, chunks=(25, 40)), W, H) == pytest.approx(ref, rel=1e-12)
    assert relative_error(da.from_array(M, chunks=(25, 40)), da.from_array(W, chunks=50), H) == (
        pytest.approx(ref, rel=1e-12)
    )


def test_support_recovery():
    W = np.zeros((10, 2))
    W[[0, 1, 2], 0] = 1.0
    W[[5, 6], 1] = 2.0
    We = np.zeros((10, 2))
    We[[5, 6, 7], 0] = [1.0, 1.0, 1e-6]  # matched to column 1; 1e-6 is below the threshold
    We[[0, 1, 9], 1] = 1.0
    s = support_recovery(W, We)
    assert s.precision == pytest.approx(4 / 5) and s.recall == pytest.approx(4 / 5)
    np.testing.assert_allclose(s.per_column, [[2 / 3, 2 / 3], [1.0, 1.0]])
    s2 = support_recovery(W, We, match=False)
    assert s2.precision == 0.0 and s2.recall == 0.0
