"""The Recovery result: the shared result protocol, and its store round trip."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import cfact_dask as cf
from cfact_dask._runtime.display import MAX_ROWS
from cfact_dask._runtime.resultstore import ResultProtocol
from cfact_dask.errors import StoreExistsError
from cfact_dask.recovery import Recovery, load_recovery, save_recovery


@pytest.fixture(scope="module")
def rec():
    rng = np.random.default_rng(0)
    op = cf.make_operator("expander", 80, 400, seed=1)
    W = np.zeros((400, 2))
    for j in range(2):
        W[rng.choice(400, 5, replace=False), j] = 1.0 + rng.random(5)
    M = W @ rng.random((2, 30))
    Q = cf.make_operator("gaussian", 20, 400, seed=7)
    H = np.linalg.lstsq(W, M, rcond=None)[0]
    return cf.recover(op.matvec(W).compute(), op, "nnlasso", H=H, chunks=100,
                      holdout=(Q.to_dense() @ M, Q))


def test_protocol(rec):
    assert isinstance(rec, ResultProtocol)
    assert rec.n_iter_ > 0
    assert rec.reconstruction_err_ == rec.certificate.estimated_error
    assert rec.reconstruction_err_ is not None and rec.reconstruction_err_ < 0.05
    text = repr(rec)
    assert text.startswith("<cfact Recovery>") and len(text.splitlines()) <= MAX_ROWS + 1
    assert "nnlasso" in text and "400 × 2" in text
    assert rec._repr_html_().startswith("<div") and "nnlasso" in rec._repr_html_()


def test_zarr_round_trip(rec, tmp_path):
    store = str(tmp_path / "run.zarr")
    where = rec.to_zarr(store, upstream={"factors": "f0"})
    assert where.endswith("recovered")
    g = zarr.open_group(store, path="recovered", mode="r")
    meta = g.attrs["cfact"]
    assert meta["type"] == "recovered" and meta["method"] == "nnlasso"
    assert meta["n_iter"] == rec.n_iter_ and meta["complete"]
    assert set(meta["certificate"]) == set(rec.certificate.to_dict())
    assert g["W"].chunks == (100, 2)
    back = Recovery.from_zarr(store, H=rec.H)
    np.testing.assert_array_equal(back.compute(), rec.compute())
    np.testing.assert_array_equal(back.H, rec.H)
    assert back.method == rec.method and back.n_iter_ == rec.n_iter_
    assert back.reconstruction_err_ == pytest.approx(rec.reconstruction_err_)
    np.testing.assert_array_equal(back.certificate.support_sizes, rec.certificate.support_sizes)
    # the functions are the same thing; an existing group needs overwrite
    with pytest.raises(StoreExistsError):
        save_recovery(store, rec)
    save_recovery(store, rec, overwrite=True)
    assert load_recovery(store).H is None
