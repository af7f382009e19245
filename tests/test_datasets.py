"""Synthetic generators: the paper's exact generator, seeding, chunking invariance, Zarr writers."""

from __future__ import annotations

import numpy as np
import pytest

import cfact_dask as cf
from cfact_dask.datasets import planted_cp, planted_cp_zarr, planted_nmf, planted_nmf_zarr
from cfact_dask.errors import InputError, RankError, StoreExistsError


def test_planted_nmf_is_the_papers_generator():
    M, W, H = planted_nmf(400, 300, 5, density=0.05, noise=0.1, random_state=3)
    assert M.shape == (400, 300) and W.shape == (400, 5) and H.shape == (5, 300)
    assert ((W != 0).sum(axis=0) == 20).all()  # k = 5 % of n nonzeros per column
    assert (W >= 0).all() and (H >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(H, axis=1), 1.0)
    E = M - W @ H
    np.testing.assert_allclose(np.linalg.norm(E), 0.1 * np.linalg.norm(W @ H), rtol=1e-12)
    assert (M < 0).any()  # noise makes small negative entries, as in the paper
    assert abs(E.mean()) < 0.05 * E.std()


def test_planted_nmf_seeding():
    a = planted_nmf(100, 50, 3, random_state=1)
    b = planted_nmf(100, 50, 3, random_state=1)
    c = planted_nmf(100, 50, 3, random_state=2)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])
    M0, _, _ = planted_nmf(100, 50, 3, noise=0.0, random_state=1)
    np.testing.assert_allclose(M0, a[1] @ a[2])


@pytest.mark.parametrize("kw", [dict(density=0.0), dict(density=1.5), dict(noise=-1.0)])
def test_planted_nmf_bad_parameters(kw):
    with pytest.raises(InputError):
        planted_nmf(50, 40, 2, **kw)
    with pytest.raises(RankError):
        planted_nmf(50, 40, 0)


def test_planted_nmf_zarr_chunking_invariant(tmp_path):
    M, W, H = planted_nmf(230, 170, 4, random_state=5)
    a, Wa, Ha = planted_nmf_zarr(
        tmp_path / "a.zarr",
        230,
        170,
        4,
        random_state=5,
        chunks=(64, 170),
        dtype="f8",
        progress=False,
    )
    b, _, _ = planted_nmf_zarr(
        tmp_path / "b.zarr",
        230,
        170,
        4,
        random_state=5,
        chunks=(37, 50),
        dtype="f8",
        progress=False,
    )
    np.testing.assert_array_equal(Wa, W)
    np.testing.assert_array_equal(Ha, H)
    np.testing.assert_array_equal(a.compute(), b.compute())
    # same noise pattern as the in-memory generator, scaled by the expected instead of exact norm
    Ea, E = a.compute() - W @ H, M - W @ H
    scale = np.linalg.norm(Ea) / np.linalg.norm(E)
    assert abs(scale - 1) < 0.05
    np.testing.assert_allclose(Ea, E * scale, atol=1e-12)
    inp = cf.open_array(str(tmp_path / "b.zarr"), variable="M")
    assert inp.dims == ("feature", "sample") and inp.chunks[0][0] == 37
    with pytest.raises(StoreExistsError):
        planted_nmf_zarr(tmp_path / "a.zarr", 230, 170, 4, progress=False)


def test_planted_cp_and_zarr(tmp_path):
    T, f = planted_cp((40, 12, 9), 3, sparse_mode=0, density=0.1, noise=0.05, random_state=2)
    assert T.shape == (40, 12, 9) and [a.shape for a in f] == [(40, 3), (12, 3), (9, 3)]
    assert ((f[0] != 0).sum(axis=0) == 4).all()
    T0 = np.einsum("ir,jr,kr->ijk", *f)
    np.testing.assert_allclose(np.linalg.norm(T - T0), 0.05 * np.linalg.norm(T0), rtol=1e-12)
    a, fa = planted_cp_zarr(
        tmp_path / "a.zarr",
        (40, 12, 9),
        3,
        density=0.1,
        noise=0.05,
        random_state=2,
        chunks=(16, 5, 9),
        dtype="f8",
        progress=False,
    )
    b, _ = planted_cp_zarr(
        tmp_path / "b.zarr",
        (40, 12, 9),
        3,
        density=0.1,
        noise=0.05,
        random_state=2,
        chunks=(7, 12, 4),
        dtype="f8",
        progress=False,
    )
    np.testing.assert_array_equal(a.compute(), b.compute())
    for x, y in zip(fa, f, strict=True):
        np.testing.assert_array_equal(x, y)
    Ts, fs = planted_cp((20, 6, 5), 2, sparse_mode=-1, nonnegative=False, random_state=0)
    assert ((fs[2] != 0).sum(axis=0) == 1).all() and (fs[0] < 0).any()
