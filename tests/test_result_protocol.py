"""Every result type shares one small protocol: n_iter_, reconstruction_err_, to_zarr / from_zarr,
a short __repr__ and _repr_html_ (cfact_dask._runtime.resultstore.ResultProtocol)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

import cfact_dask as cf
from cfact_dask._runtime.display import MAX_ROWS
from cfact_dask._runtime.resultstore import ResultProtocol


def _matrix():
    rng = np.random.default_rng(0)
    return rng.random((40, 3)) @ rng.random((3, 30)) + 0.01 * rng.random((40, 30))


def _nmf():
    return cf.nmf(da.from_array(_matrix(), chunks=(20, 15)), 3, max_iter=20), ("W", "H")


def _svd():
    return cf.svd(da.from_array(_matrix(), chunks=(20, 15)), 3), ("U", "s", "Vt")


def _sparse_pca():
    res = cf.sparse_pca(_matrix(), 3, alpha=0.01, max_iter=10)
    return res, ("W", "H", "mean")


def _cp():
    rng = np.random.default_rng(1)
    T = np.einsum("ir,jr,kr->ijk", rng.random((8, 2)), rng.random((7, 2)), rng.random((6, 2)))
    res = cf.cp(T, 2, max_iter=10, sketch=dict(n_components=5, mode=0))
    return res, ("weights", "factors")


def _lp():
    rng = np.random.default_rng(2)
    A = da.from_array(rng.standard_normal((60, 6)), chunks=(20, 6))
    return cf.lp_lowrank(A, 2, p=1.0, max_iter=5), ("basis", "coefficients")


def _lp_ellipsoid():
    rng = np.random.default_rng(2)
    A = rng.standard_normal((60, 6))
    return (cf.lp_lowrank(A, 2, p=1.0, method="ellipsoid", max_iter=5),
            ("basis", "coefficients", "ellipsoid"))


def _clustering():
    rng = np.random.default_rng(3)
    A = da.from_array(rng.standard_normal((60, 6)), chunks=(25, 6))
    res = cf.projective_clustering(A, 2, 2, n_init=2, max_iter=4, random_state=0)
    return res, ("labels", "coefficients", "bases", "counts")


CASES = {"nmf": _nmf, "svd": _svd, "sparse_pca": _sparse_pca, "cp": _cp, "lp": _lp,
         "lp-ellipsoid": _lp_ellipsoid, "projective_clustering": _clustering}


def _equal(a, b):
    if isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _equal(x, y)
        return
    a = a.compute() if isinstance(a, da.Array) else a
    b = b.compute() if isinstance(b, da.Array) else b
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.filterwarnings("ignore::cfact_dask.errors.ConvergenceWarning")
@pytest.mark.parametrize("name", sorted(CASES))
def test_protocol_and_round_trip(name, tmp_path):
    res, fields = CASES[name]()
    assert isinstance(res, ResultProtocol)
    assert res.n_iter_ is None or isinstance(res.n_iter_, int)
    err = res.reconstruction_err_
    assert err is None or isinstance(err, float)
    text = repr(res)
    assert text.startswith("<cfact ") and len(text.splitlines()) <= MAX_ROWS + 1
    assert "<table>" in res._repr_html_()

    store = tmp_path / "r.zarr"
    where = res.to_zarr(store)
    assert str(where).startswith(str(store))
    back = type(res).from_zarr(store)
    assert type(back) is type(res)
    for f in fields:
        _equal(getattr(res, f), getattr(back, f))
    assert back.n_iter_ == res.n_iter_
    if err is None:
        assert back.reconstruction_err_ is None
    else:
        assert back.reconstruction_err_ == pytest.approx(err, rel=0, abs=0)
    # an existing finished result is replaced only on request
    with pytest.raises(cf.StoreExistsError):
        res.to_zarr(store)
    res.to_zarr(store, overwrite=True)
