"""Cluster handling (given / current / embedded client) and the foundation CLI commands."""

from __future__ import annotations

import json

import dask
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import cfact_dask as cf
from cfact_dask._runtime.cluster import client_context
from cfact_dask.cli import cli
from cfact_dask.errors import ConfigError


def test_embedded_cluster_is_started_and_closed():
    with dask.config.set({"cfact.cluster.embedded": "always", "cfact.cluster.n-workers": 1}):
        with client_context(None) as c:
            assert c is not None
            assert len(c.scheduler_info()["workers"]) == 1
            addr = c.scheduler.address
            X = np.abs(np.random.default_rng(0).standard_normal((300, 20)))
            got = cf.sketch(X, 10).compute(client=c, progress=False)
            np.testing.assert_allclose(got, cf.sketch(X, 10).data.compute(scheduler="sync"))
        assert c.status == "closed"
    assert addr.startswith("tcp://")


def test_small_inputs_use_local_scheduler_and_current_client_wins(cluster_client):
    with client_context(None, nbytes=10) as c:
        assert c is None  # auto policy: too small to be worth processes
    with cluster_client.as_current():
        with client_context(None, nbytes=10**12) as c:
            assert c is cluster_client
    with client_context(cluster_client) as c:
        assert c is cluster_client


def test_bad_policy_is_a_config_error():
    with dask.config.set({"cfact.cluster.embedded": "sometimes"}):
        with pytest.raises(ConfigError, match="'auto', 'always' or 'never'"):
            with client_context(None, nbytes=10**12):
                pass


def test_fsspec_url_input():
    z = zarr.create_array("memory://cfact-test/x.zarr", shape=(120, 9), chunks=(50, 4),
                          dtype="f8")
    X = np.arange(120 * 9, dtype=float).reshape(120, 9)
    z[...] = X
    inp = cf.open_array("memory://cfact-test/x.zarr")
    assert inp.chunks == ((50, 50, 20), (4, 4, 1))
    sk = cf.sketch(inp, 12, kind="sparse_sign")
    np.testing.assert_allclose(sk.compute(progress=False), sk.operator.to_dense() @ X, atol=1e-9)


def test_cli_sketch_and_inspect(tmp_path):
    X = np.abs(np.random.default_rng(1).standard_normal((900, 30))).astype(np.float32)
    z = zarr.create_array(str(tmp_path / "x.zarr"), shape=X.shape, chunks=(200, 10),
                          dtype="float32")
    z[...] = X
    out = str(tmp_path / "run.zarr")
    r = CliRunner().invoke(cli, ["sketch", str(tmp_path / "x.zarr"), out, "-d", "50",
                                 "--kind", "countsketch", "--seed", "3", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["sketch_shape"] == [50, 30] and rep["compression"] == 18.0
    sk = cf.Sketch.from_zarr(out)
    assert sk.operator.kind == "countsketch" and sk.operator.seed == 3
    np.testing.assert_allclose(sk.data.compute(), sk.operator.to_dense(np.float32) @ X,
                               rtol=1e-5, atol=1e-5)
    # refuses to overwrite, names the flag
    r = CliRunner().invoke(cli, ["sketch", str(tmp_path / "x.zarr"), out, "-d", "50"])
    assert r.exit_code != 0 and "--overwrite" in r.output
    r = CliRunner().invoke(cli, ["inspect", out])
    assert r.exit_code == 0
    assert "sketch/sketch: array shape=(50, 30)" in r.output and "countsketch" in r.output
    r = CliRunner().invoke(cli, ["inspect", out, "--json"])
    kinds = {n["path"]: n["kind"] for n in json.loads(r.output)["nodes"]}
    assert kinds["sketch"] == "group" and kinds["sketch/sketch"] == "array"
    r = CliRunner().invoke(cli, ["sketch", str(tmp_path / "nope.zarr"), out, "-d", "5"])
    assert r.exit_code != 0 and "no Zarr store" in r.output


def test_dask_cli_entry_point():
    from importlib.metadata import entry_points

    eps = {ep.name: ep for ep in entry_points(group="dask_cli")}
    assert eps["cfact"].load() is cli
    assert cli.name == "cfact"


def test_results_outlive_the_embedded_cluster():
    """Persisted results must not point at a cluster that closed when the call returned."""
    import dask.array as da

    X = da.from_array(np.abs(np.random.default_rng(0).standard_normal((1200, 120))),
                      chunks=(400, 60))
    with dask.config.set({"cfact.cluster.embedded": "always", "cfact.cluster.n-workers": 1}):
        u = cf.svd(X, 4).U
        sk = cf.sketch(X, 80)
        with pytest.warns(cf.ConvergenceWarning):
            res = cf.nmf(sk, 4, max_iter=20)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", cf.RecoveryWarning)
            w = cf.recover(res, sk.operator, "nnlasso").W
    assert u.compute().shape == (1200, 4)
    assert w.compute().shape == (1200, 4)
    assert np.isfinite(np.asarray(res.H)).all()


def test_cli_factor_dgd_local(tmp_path):
    """`cfact factor --method dgd-local --nodes 4 --topology ring` on a Zarr matrix."""
    rng = np.random.default_rng(3)
    Y = rng.standard_normal((30, 4)) @ rng.standard_normal((4, 80))
    z = zarr.create_array(str(tmp_path / "y.zarr"), shape=Y.shape, chunks=(30, 20), dtype="f8")
    z[...] = Y
    out = str(tmp_path / "dgd.zarr")
    r = CliRunner().invoke(cli, ["factor", str(tmp_path / "y.zarr"), "--method", "dgd-local",
                                 "--nodes", "4", "--topology", "ring", "--rank", "4",
                                 "--max-iter", "3000", "--out", out, "--quiet"])
    assert r.exit_code == 0, r.output
    g = zarr.open_group(out, mode="r")["factors"]
    meta = g.attrs["cfact"]
    assert meta["type"] == "dgd-result" and meta["topology"]["name"].startswith("ring")
    assert np.asarray(meta["topology"]["weights"]).shape == (4, 4)
    U, V = np.asarray(g["U"][...]), np.asarray(g["V"][...])
    assert np.linalg.norm(U @ V.T - Y) / np.linalg.norm(Y) < 1e-3
