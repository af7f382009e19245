"""Labels survive end to end, and every store cfact writes opens with xarray.

A labelled input (``gene`` × ``cell`` with gene and cell names, a non-index ``batch`` per cell,
a ``chrom`` per gene, attributes) goes through the pipeline and through the CLI commands one by
one; the results keep the labels (``W`` the genes', ``H`` the cells'), every group opens with
``xr.open_zarr`` without a warning (dimension names, consolidated metadata), a run store opens
as one tree with ``xr.open_datatree`` and ``xr.merge`` of its groups aligns.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr
from click.testing import CliRunner

import cfact_dask as cf
from cfact_dask.cli import cli
from cfact_dask.datasets import planted_nmf

N_GENES, N_CELLS = 600, 200


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("labels")
    M, _, _ = planted_nmf(N_GENES, N_CELLS, 4, density=0.05, noise=0.05, random_state=1)
    genes = np.array([f"g{i}" for i in range(N_GENES)], dtype=object)
    cells = np.array([f"c{j}" for j in range(N_CELLS)], dtype=object)
    ds = xr.Dataset(
        {"expr": (("gene", "cell"), M, {"units": "counts"})},
        coords={"gene": genes, "cell": cells,
                "batch": ("cell", np.array(["a", "b"] * (N_CELLS // 2), dtype=object)),
                "chrom": ("gene", np.arange(N_GENES) % 3)},
        attrs={"study": "labels test"},
    )
    ds["expr"] = ds["expr"].chunk({"gene": 150, "cell": 100})
    path = str(tmp / "in.zarr")
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    return tmp, path, ds


def _open_quietly(store, group=None):
    """``xr.open_zarr`` with every warning an error (missing consolidated metadata warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return xr.open_zarr(store, group=group)


def _groups(store):
    root = zarr.open_group(store, mode="r", use_consolidated=False)
    return sorted(k for k, v in root.members() if isinstance(v, zarr.Group))


def test_factorize_recover_keeps_labels(labelled):
    tmp, path, ds = labelled
    out = str(tmp / "run.zarr")
    inp = cf.open_array(path, variable="expr", feature_axis="gene")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cf.ConvergenceWarning)
        res = cf.factorize_recover(inp, 4, sketch=dict(n_components=150), out=out,
                                   reconstruct=True, progress=False)
    x = res.to_xarray()
    assert x["W"].dims == ("gene", "component") and x["H"].dims == ("component", "cell")
    np.testing.assert_array_equal(x["gene"].values, ds["gene"].values)
    np.testing.assert_array_equal(x["cell"].values, ds["cell"].values)
    np.testing.assert_array_equal(x["batch"].values, ds["batch"].values)
    np.testing.assert_array_equal(x["chrom"].values, ds["chrom"].values)
    assert x.attrs["units"] == "counts"

    # the stored groups: each opens without a warning and keeps its side's labels
    groups = _groups(out)
    assert {"sketch", "holdout", "factors", "recovered", "reconstruction"} <= set(groups)
    W = _open_quietly(out, "recovered")["W"]
    assert W.dims == ("gene", "component")
    np.testing.assert_array_equal(W["gene"].values, ds["gene"].values)
    np.testing.assert_array_equal(W["chrom"].values, ds["chrom"].values)
    np.testing.assert_allclose(W.values, np.asarray(res.W))
    H = _open_quietly(out, "factors")["H"]
    assert H.dims == ("component", "cell")
    np.testing.assert_array_equal(H["batch"].values, ds["batch"].values)
    rec = _open_quietly(out, "reconstruction")["reconstruction"]
    assert rec.dims == ("gene", "cell") and rec.attrs["units"] == "counts"
    np.testing.assert_array_equal(rec["batch"].values, ds["batch"].values)
    for g in groups:
        _open_quietly(out, g)

    # one tree, and the groups align: merging them raises nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tree = xr.open_datatree(out, engine="zarr")
    top = [tree[g].to_dataset() for g in ("sketch", "holdout", "factors", "recovered",
                                         "reconstruction")]
    merged = xr.merge(top, compat="no_conflicts", join="outer")
    assert merged.sizes["gene"] == N_GENES and merged.sizes["cell"] == N_CELLS
    assert merged.sizes["sketch_row"] == 150 and merged.sizes["holdout_row"] == 32

    # the results read back as before
    back = cf.NMFResult.from_zarr(out, "factors", lazy=False)
    np.testing.assert_allclose(back.W, np.asarray(res.factors.W))


def test_old_factors_layout_is_still_read(labelled, tmp_path):
    """Stores written before the W_sketch name keep opening."""
    rng = np.random.default_rng(0)
    res = cf.NMFResult(W=rng.random((30, 3)), H=rng.random((3, 20)), n_iter_=5,
                       history=(0.5, 0.4), reconstruction_err_=0.4, is_sketch=True)
    store = str(tmp_path / "old.zarr")
    res.to_zarr(store, "factors")
    os.rename(os.path.join(store, "factors", "W_sketch"), os.path.join(store, "factors", "W"))
    back = cf.NMFResult.from_zarr(store, "factors", lazy=False)
    np.testing.assert_allclose(back.W, res.W)


@pytest.mark.filterwarnings("ignore::cfact_dask.errors.ConvergenceWarning")
def test_cli_stores_keep_labels_and_open_with_xarray(labelled):
    tmp, path, ds = labelled
    run = str(tmp / "cli.zarr")
    cmds = [
        ["sketch", path, run, "-d", "150", "--variable", "expr", "--axis", "gene"],
        ["factor", run, "--rank", "4", "--out", run, "--max-iter", "100"],
        ["recover", run],
        ["reconstruct", run, "--like", path + "/expr"],
    ]
    for args in cmds:
        r = CliRunner().invoke(cli, [*args, "--quiet"])
        assert r.exit_code == 0, (args, r.output)
    W = _open_quietly(run, "recovered")["W"]
    np.testing.assert_array_equal(W["gene"].values, ds["gene"].values)  # from the sketch group
    H = _open_quietly(run, "factors")["H"]
    np.testing.assert_array_equal(H["cell"].values, ds["cell"].values)
    for g in _groups(run):
        _open_quietly(run, g)

    # every other writer: factor methods and compress-embedding
    rng = np.random.default_rng(0)
    T = np.einsum("ir,jr,kr->ijk", *[rng.random((s, 3)) for s in (30, 20, 25)])
    tensor = str(tmp / "tensor.zarr")
    z = zarr.create_array(tensor, shape=T.shape, chunks=(15, 20, 25), dtype="f8")
    z[...] = T
    emb = str(tmp / "emb.npy")
    np.save(emb, rng.standard_normal((300, 16)))
    outs = {
        "svd": ["factor", run, "--method", "svd", "--rank", "3"],
        "sparse-pca": ["factor", run, "--method", "sparse-pca", "--rank", "3", "--max-iter",
                       "20"],
        "dgd-local": ["factor", path, "--variable", "expr", "--method", "dgd-local", "--rank",
                      "3", "--nodes", "4", "--max-iter", "50"],
        "cp": ["factor", tensor, "--method", "cp", "--rank", "3", "--max-iter", "30"],
        "dgd": ["factor-dgd", path, "--variable", "expr", "--rank", "3", "--nodes", "4",
                "--max-iter", "50", "--output"],
    }
    for name, args in outs.items():
        out = str(tmp / f"{name}.zarr")
        full = [*args, out] if args[-1] == "--output" else [*args, "--out", out]
        r = CliRunner().invoke(cli, [*full, "--quiet"])
        assert r.exit_code == 0, (name, r.output)
        for g in _groups(out):
            assert _open_quietly(out, g).data_vars, (name, g)
    out = str(tmp / "emb.zarr")
    r = CliRunner().invoke(cli, ["compress-embedding", emb, "--rate", "0.5", "--method", "messi",
                                 "-k", "2", "--out", out, "--quiet", "--max-iter", "5"])
    assert r.exit_code == 0, r.output
    assert set(_open_quietly(out).data_vars) == {"labels", "coefficients", "bases"}
