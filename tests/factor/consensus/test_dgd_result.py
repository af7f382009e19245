"""DGDResult follows the result protocol: n_iter_, reconstruction_err_, to_zarr / from_zarr,
a short repr; the group is the one ``cfact factor-dgd --output`` writes."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from cfact_dask._runtime.display import MAX_ROWS
from cfact_dask._runtime.resultstore import ResultProtocol
from cfact_dask.errors import StoreExistsError
from cfact_dask.factor.consensus import DGDResult, centralized, dgd_local


def _data() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.standard_normal((20, 3)) @ rng.standard_normal((3, 60))


def test_protocol_and_round_trip(tmp_path):
    res = dgd_local(_data(), 3, n_nodes=4, topology="ring", max_iter=40, tol=0)
    assert isinstance(res, ResultProtocol)
    assert res.n_iter_ == res.n_iter == 40
    assert res.reconstruction_err_ == res.relative_error
    where = res.to_zarr(tmp_path / "out.zarr")
    assert where.endswith("dgd")
    g = zarr.open_group(str(tmp_path / "out.zarr"), path="dgd", mode="r")
    assert g.attrs["cfact"]["type"] == "dgd-result" and g.attrs["cfact"]["complete"] is True
    assert tuple(g["U_nodes"].metadata.dimension_names) == ("node", "feature", "component")
    back = DGDResult.from_zarr(tmp_path / "out.zarr")
    for name in ("U", "V", "cost_history", "consensus_history", "history_iters"):
        np.testing.assert_array_equal(getattr(back, name), getattr(res, name))
    assert back.col_ranges == res.col_ranges and back.topology == res.topology
    assert back.n_iter_ == res.n_iter_ and back.method == res.method
    assert back.reconstruction_err_ == pytest.approx(res.reconstruction_err_, rel=1e-12)
    with pytest.raises(StoreExistsError, match="overwrite"):
        res.to_zarr(tmp_path / "out.zarr")
    res.to_zarr(tmp_path / "out.zarr", overwrite=True)


def test_baseline_round_trip_and_repr(tmp_path):
    res = centralized(_data(), 3)
    back = DGDResult.from_zarr(res.to_zarr(tmp_path / "c.zarr", "svd").rsplit("/", 1)[0], "svd")
    assert back.method == "centralized-svd" and back.topology is None
    text = repr(res)
    assert text.startswith("<cfact DGDResult>") and len(text.splitlines()) <= MAX_ROWS + 1
    assert "centralized-svd" in res._repr_html_()
