"""``cluster.gather_arrays``: small results wanted whole on the client, gathered block by block."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

from cfact_dask._runtime import cluster


@pytest.mark.parametrize("local", [True, False])
def test_gather_arrays_assembles_the_blocks(cluster_client, local):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 70))
    S = rng.standard_normal((4, 5, 3))
    x = da.from_array(X, chunks=((100, 150, 50), (30, 40)))
    s = da.from_array(S, chunks=(2, (2, 3), 3))
    delayed_sum = dask.delayed(np.sum)(X)
    client = None if local else cluster_client
    gx, gs, gd, plain = cluster.gather_arrays(x.T * 2, s, delayed_sum, 7, client=client)
    np.testing.assert_array_equal(gx, X.T * 2)
    np.testing.assert_array_equal(gs, S)
    assert gd == np.sum(X) and plain == 7
    # one fresh C-ordered array each, not a view on received frames
    assert gx.flags.c_contiguous and gx.flags.owndata and gs.flags.c_contiguous


def test_gather_arrays_single_block_and_numpy(cluster_client):
    X = np.arange(12.0).reshape(3, 4)
    got, same = cluster.gather_arrays(da.from_array(X, chunks=-1), X, client=cluster_client)
    np.testing.assert_array_equal(got, X)
    assert same is X
