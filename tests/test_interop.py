"""Interop with the ecosystem: xarray reads our stores, scikit-learn pipelines take our
estimators, and cfact_dask objects pickle and tokenize deterministically (in any process)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
import warnings
from dataclasses import replace

import dask
import dask.array as da
import numpy as np
import pytest
from dask.base import tokenize

import cfact_dask as cf
from cfact_dask.errors import ConvergenceWarning, RecoveryWarning

xr = pytest.importorskip("xarray")


# ---------------------------------------------------------------------- xarray.open_zarr
@pytest.fixture(scope="module")
def run_store(tmp_path_factory):
    """A complete Factorize-Recover run store (sketch, factors, recovered, reconstruction)."""
    rng = np.random.default_rng(7)
    n, m, r = 300, 80, 4
    W = rng.random((n, r)) * (rng.random((n, r)) < 0.08)
    W[rng.integers(0, n, r), np.arange(r)] = 1.0
    M = W @ rng.random((r, m))
    store = str(tmp_path_factory.mktemp("interop") / "run.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RecoveryWarning)
        run = cf.factorize_recover(
            da.from_array(M, chunks=(100, 40)), r, sketch=dict(n_components=150, seed=0),
            factor=dict(max_iter=200), out=store, reconstruct=True, progress=False,
        )
    return store, run, M


def _open(store: str, group: str):
    return xr.open_zarr(store, group=group, consolidated=False)


def test_sketch_group_opens_with_xarray(run_store):
    store, run, _ = run_store
    ds = _open(store, "sketch")
    assert "sketch" in ds.data_vars
    assert ds["sketch"].dims[0] == "sketch_row"
    assert ds["sketch"].shape == run.sketch.shape
    np.testing.assert_allclose(ds["sketch"].values, run.sketch.compute(), rtol=1e-12)


def test_reconstruction_group_opens_with_xarray(run_store):
    store, run, M = run_store
    ds = _open(store, "reconstruction")
    (name,) = list(ds.data_vars)
    assert ds[name].shape == M.shape
    W, H = np.asarray(run.W.compute()), np.asarray(run.H)
    np.testing.assert_allclose(ds[name].values, W @ H, rtol=1e-6, atol=1e-9)


def test_factors_group_opens_with_xarray(run_store):
    store, run, _ = run_store
    ds = _open(store, "factors")
    # the factor of the sketch is P W: its own name and row dimension (it does not clash with
    # the recovered W, feature x component)
    assert ds["W_sketch"].dims == ("sketch_row", "component")
    assert ds["H"].dims == ("component", "sample")
    np.testing.assert_allclose(ds["W_sketch"].values, np.asarray(run.factors.W))
    np.testing.assert_allclose(ds["H"].values, np.asarray(run.factors.H))


def test_recovered_group_opens_with_xarray(run_store):
    store, run, _ = run_store
    ds = _open(store, "recovered")
    np.testing.assert_allclose(ds["W"].values, np.asarray(run.W.compute()))


def test_run_store_groups_are_complete(run_store):
    import zarr

    store, _, _ = run_store
    root = zarr.open_group(store, mode="r")
    assert {"sketch", "factors", "recovered", "reconstruction"} <= set(root.group_keys())
    assert root.attrs["cfact"]["complete"] is True


# ---------------------------------------------------------------------- scikit-learn
def test_compressed_nmf_in_a_sklearn_pipeline():
    sklearn = pytest.importorskip("sklearn")
    from sklearn.base import clone
    from sklearn.datasets import load_digits
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler

    assert sklearn.__version__
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    pipe = make_pipeline(
        MinMaxScaler(),
        cf.CompressedNMF(n_components=16, sketch_dim=40, recover_method="lstsq-data",
                         max_iter=100, tol=1e-4, random_state=0),
        LogisticRegression(max_iter=2000),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe.fit(Xtr, ytr)
    nmf_step = pipe.named_steps["compressednmf"]
    assert nmf_step.components_.shape == (16, 64)
    assert list(pipe[:-1].get_feature_names_out())[:2] == ["compressednmf0", "compressednmf1"]
    acc = pipe.score(Xte, yte)
    # reference: the same pipeline with scikit-learn's own (uncompressed) NMF
    ref = make_pipeline(MinMaxScaler(), NMF(16, init="nndsvda", max_iter=100, tol=1e-4,
                                            random_state=0), LogisticRegression(max_iter=2000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkConvergenceWarning)
        ref_acc = ref.fit(Xtr, ytr).score(Xte, yte)
    assert acc > 0.6 and acc > ref_acc - 0.1, (acc, ref_acc)  # chance is 0.1
    # the pipeline's parameter routing reaches the estimator; clones are unfitted copies
    pipe2 = clone(pipe).set_params(compressednmf__n_components=8)
    assert pipe2.named_steps["compressednmf"].n_components == 8
    assert not hasattr(pipe2.named_steps["compressednmf"], "components_")
    # a fitted pipeline pickles and predicts the same afterwards
    again = pickle.loads(pickle.dumps(pipe))
    np.testing.assert_array_equal(again.predict(Xte), pipe.predict(Xte))


# ---------------------------------------------------------------------- pickle and tokenize
# Built the same way in this process and in a fresh interpreter: equal objects, equal tokens.
BUILD = textwrap.dedent("""
    import os
    import numpy as np, dask.array as da, zarr, cfact_dask as cf
    from cfact_dask.factor._nmf import NMFResult

    def build(tmp):
        rng = np.random.default_rng(3)
        M = rng.random((120, 30))
        op = cf.make_operator("expander", 40, 120, seed=5)
        X = da.from_array(M, chunks=(50, 15))
        path = os.path.join(tmp, "input.zarr")
        if not os.path.exists(path):
            z = zarr.create_array(path, shape=M.shape, chunks=(50, 15), dtype=M.dtype)
            z[...] = M
        return {
            "InputArray(zarr store)": cf.open_array(path),
            "Sketch(zarr store)": cf.sketch(path, 40, seed=5),
            "SketchOperator": op,
            "SketchOperator(gaussian)": cf.make_operator("gaussian", 10, 120, seed=1),
            "Sketch": cf.sketch(X, 40, seed=5),
            "InputArray": cf.open_array(X),
            "InputArray(xarray)": cf.open_array(__import__("xarray").DataArray(
                M, dims=("gene", "cell"), coords={"gene": [f"g{i}" for i in range(120)]})),
            "NMFResult": NMFResult(W=M[:, :3], H=M[:3].T.copy(), n_iter_=7,
                                   history=(0.5, 0.25), reconstruction_err_=0.25,
                                   operator=op.to_dict(), is_sketch=True,
                                   params={"rank": 3, "solver": "hals"}),
            "Topology": cf.make_topology("erdos-renyi", 8, p=0.4, seed=3),
            "Checkpoint": cf.Checkpoint(tmp + "/ck.zarr", 5, {"method": "nmf", "rank": 3}),
        }
""")
CHILD = BUILD + textwrap.dedent("""
    import json, pickle, sys, dask
    from dask.base import tokenize
    tmp = sys.argv[1]
    with dask.config.set({"tokenize.ensure-deterministic": True}):
        built = {k: tokenize(v) for k, v in build(tmp).items()}
        with open(tmp + "/objects.pkl", "rb") as f:
            loaded = {k: tokenize(v) for k, v in pickle.load(f).items()}
    print(json.dumps({"built": built, "loaded": loaded}))
""")


def _build(tmp: str) -> dict:
    ns: dict = {}
    exec(BUILD, ns)  # noqa: S102 - the same source the child process runs
    return ns["build"](tmp)


def _objects_from_a_run(store: str, run) -> dict:
    return {
        "RunResult.report": run.report,
        "Sketch(from run)": run.sketch,
        "Sketch(from_zarr)": cf.Sketch.from_zarr(store, "sketch"),
        "NMFResult(from run)": run.factors,
        "Certificate": run.recovery.certificate,
    }


def test_objects_pickle_round_trip(tmp_path, run_store):
    store, run, _ = run_store
    objs = {**_build(str(tmp_path)), **_objects_from_a_run(store, run)}
    for name, obj in objs.items():
        back = pickle.loads(pickle.dumps(obj))
        assert type(back) is type(obj), name
        assert tokenize(back) == tokenize(obj), name
    op = objs["SketchOperator"]
    assert pickle.loads(pickle.dumps(op)) == op
    sk = objs["Sketch"]
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(sk)).compute(), sk.compute())
    topo = objs["Topology"]
    assert pickle.loads(pickle.dumps(topo)) == topo
    ck = pickle.loads(pickle.dumps(objs["Checkpoint"]))
    assert (ck.store, ck.every, ck.params) == (objs["Checkpoint"].store, 5,
                                               {"method": "nmf", "rank": 3})
    res = pickle.loads(pickle.dumps(objs["NMFResult"]))
    np.testing.assert_array_equal(res.W, objs["NMFResult"].W)


def test_tokens_are_deterministic_and_content_based(tmp_path):
    with dask.config.set({"tokenize.ensure-deterministic": True}):
        a, b = _build(str(tmp_path)), _build(str(tmp_path))
        for name in a:
            assert tokenize(a[name]) == tokenize(b[name]), name
        # different content, different token
        assert tokenize(cf.make_operator("expander", 40, 120, seed=6)) != tokenize(
            a["SketchOperator"])
        assert tokenize(cf.make_topology("ring", 8)) != tokenize(a["Topology"])
        # a sketch's provenance (creation time, versions) is not part of its value
        sk = a["Sketch"]
        later = replace(sk, provenance={**sk.provenance, "created": "2099-01-01T00:00:00+00:00"})
        assert tokenize(later) == tokenize(sk)
        assert tokenize(cf.sketch(sk.data, 20, seed=5)) != tokenize(sk)


def test_tokens_agree_across_processes(tmp_path, run_store):
    store, run, _ = run_store
    objs = _build(str(tmp_path))
    with dask.config.set({"tokenize.ensure-deterministic": True}):
        here = {k: tokenize(v) for k, v in objs.items()}
        shipped = {**objs, **_objects_from_a_run(store, run)}
        here_shipped = {k: tokenize(v) for k, v in shipped.items()}
    with open(tmp_path / "objects.pkl", "wb") as f:
        pickle.dump(shipped, f)
    r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    child = json.loads(r.stdout.strip().splitlines()[-1])
    # built independently in another interpreter: the same tokens
    assert child["built"] == here
    # unpickled in another interpreter: the same tokens as the originals here
    assert child["loaded"] == here_shipped
