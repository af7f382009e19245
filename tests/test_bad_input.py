"""Corrupt and hostile input (issue 8, item 4): one table of cases.

Every case must end with an error of the right cfact class whose message names what is wrong
(the store, the chunk or the key) and the fix; never a hang (per-test timeout), never a raw
zarr / numcodecs traceback, and never a run store that looks complete.

Decisions recorded here:

* A store whose ``zarr.json`` claims a *larger* shape than the data has: the missing chunks read
  as the array's ``fill_value`` (Zarr semantics; zarr >= 3 does not write all-fill chunks, so a
  missing chunk is legitimate). With a NaN fill value that is caught as a
  :class:`NonFiniteError` naming the missing chunk; with a 0 fill value it is indistinguishable
  from sparse data and is read as zeros.
* A metadata lie that makes a read fail (chunk shape or dtype changed) is a :class:`ChunkError`
  naming the chunk index, its index range and the chunk file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import dask
import numpy as np
import pytest
import xarray as xr
import yaml
import zarr

import cfact_dask as cf
from cfact_dask.errors import (
    CfactError,
    ChunkError,
    ConfigError,
    InputError,
    NegativeDataError,
    NonFiniteError,
    RankError,
    StoreNotFoundError,
)

N, M, C = 40, 30, 10  # shape and chunk edge of the small stores


def _data(seed: int = 0) -> np.ndarray:
    return np.abs(np.random.default_rng(seed).standard_normal((N, M))) + 0.1


def _store(tmp_path, data=None, *, fill=0.0, name="in.zarr", chunks=(C, C)) -> str:
    path = str(tmp_path / name)
    data = _data() if data is None else data
    z = zarr.create_array(path, shape=data.shape, chunks=chunks, dtype=data.dtype,
                          fill_value=fill)
    z[...] = data
    return path


def _edit_meta(path: str, **changes) -> None:
    f = os.path.join(path, "zarr.json")
    with open(f) as fh:
        meta = json.load(fh)
    for k, v in changes.items():
        if k == "chunk_shape":
            meta["chunk_grid"]["configuration"]["chunk_shape"] = v
        else:
            meta[k] = v
    with open(f, "w") as fh:
        json.dump(meta, fh)


def _pipeline(src, rank=2, d=8, **kw):
    """A run of the whole pipeline into ``out`` (the table checks ``out`` afterwards)."""

    def run(out):
        return cf.factorize_recover(src, rank, sketch=dict(n_components=d),
                                    factor=dict(max_iter=30), recover="none", out=str(out),
                                    progress=False, **kw)

    return run


def _yaml_job(tmp_path, text: str) -> str:
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return str(p)


def _good_job(tmp_path, **over) -> dict:
    src = str(tmp_path / "in.zarr")
    if not os.path.exists(src):
        _store(tmp_path)
    job = {"cfact": {"input": {"path": src}, "sketch": {"n_components": 8},
                     "factor": {"rank": 2, "max_iter": 30}, "recover": {"method": "none"},
                     "output": {"path": str(tmp_path / "run.zarr")}}}
    for k, v in over.items():
        job["cfact"].setdefault(k, {}).update(v)
    return job


# ------------------------------------------------------------------------------ the cases
# each builder takes tmp_path and returns (run(out), literal strings the message must contain)
def truncated_chunk(tmp_path):
    src = _store(tmp_path)
    f = os.path.join(src, "c", "1", "2")
    raw = open(f, "rb").read()
    open(f, "wb").write(raw[: len(raw) // 2])
    return _pipeline(src), [src, "chunk (1, 2)", "c/1/2", "restore"]


def garbage_chunk(tmp_path):
    src = _store(tmp_path)
    open(os.path.join(src, "c", "3", "0"), "wb").write(os.urandom(700))
    return _pipeline(src), [src, "chunk (3, 0)", "corrupt"]


def empty_chunk_file(tmp_path):
    src = _store(tmp_path)
    open(os.path.join(src, "c", "0", "0"), "wb").close()
    return _pipeline(src), [src, "chunk (0, 0)"]


def chunk_of_nan(tmp_path):
    x = _data()
    x[10:20, 0:10] = np.nan
    src = _store(tmp_path, x)
    return _pipeline(src), [src, "chunk (1, 0)", "100 NaN", "impute"]


def one_inf(tmp_path):
    x = _data()
    x[33, 27] = np.inf
    src = _store(tmp_path, x)
    return _pipeline(src), [src, "chunk (3, 2)", "1 Inf", "(33, 27)"]


def meta_shape_larger_nan_fill(tmp_path):
    src = _store(tmp_path, fill=float("nan"))
    _edit_meta(src, shape=[N + 20, M])
    # which missing chunk is met first depends on the scheduler: any chunk of rows 40:60; they
    # are missing from the store (not NaN data), which cfact.io.missing-chunks: error says
    return _pipeline(src), [src, re.compile(r"chunk \([45], \d\)"), "is missing",
                            "missing-chunks"]


def meta_chunk_shape_lies(tmp_path):
    src = _store(tmp_path)
    _edit_meta(src, chunk_shape=[2 * C, 2 * C])
    return _pipeline(src), [src, re.compile(r"chunk \(\d, \d\) \(index \["), "zarr.json"]


def meta_dtype_lies(tmp_path):
    src = _store(tmp_path)
    _edit_meta(src, data_type="float32")
    return _pipeline(src), [src, "could not read chunk", "zarr.json"]


def string_dtype(tmp_path):
    path = str(tmp_path / "s.zarr")
    z = zarr.create_array(path, shape=(4, 3), chunks=(2, 3), dtype=str)
    z[...] = np.array([["a", "b", "c"]] * 4)
    return _pipeline(path), [path, "non-numeric dtype", "astype('float32')"]


def complex_dtype(tmp_path):
    x = (_data() + 1j * _data(1)).astype(np.complex128)
    src = _store(tmp_path, x, fill=0j)
    return _pipeline(src), [src, "complex", "real and imaginary"]


def zero_size(tmp_path):
    path = str(tmp_path / "e.zarr")
    zarr.create_array(path, shape=(0, 5), chunks=(1, 5), dtype="f8")
    return _pipeline(path), [path, "empty", "(0, 5)"]


def object_xarray(tmp_path):
    xa = xr.DataArray(np.array([[1, "a"], [2.0, None]], dtype=object), dims=("f", "s"),
                      name="obj")
    return _pipeline(xa), ["'obj'", "non-numeric dtype object", "float32"]


def xarray_dataset(tmp_path):
    ds = xr.Dataset({"expression": (("f", "s"), _data())})
    return _pipeline(ds), ["Dataset", "ds['expression']"]


def tensor_to_nmf(tmp_path):
    x = np.abs(np.random.default_rng(0).standard_normal((8, 6, 5)))
    return (lambda out: cf.nmf(x, 2)), ["(8, 6, 5)", "cf.cp"]


def tensor_store_to_pipeline(tmp_path):
    src = _store(tmp_path, np.ones((6, 5, 4)), chunks=(3, 5, 4))
    return _pipeline(src), [src, "(6, 5, 4)", "cf.cp"]


def negative_data_nmf(tmp_path):
    x = np.random.default_rng(1).standard_normal((N, M))
    src = _store(tmp_path, x)
    return (lambda out: cf.nmf(src, 2, max_iter=5)), [
        src, "genuinely signed", "semi=True", "negative='clip'"]


def all_zero_nmf(tmp_path):
    src = _store(tmp_path, np.zeros((N, M)))
    # zarr writes no chunk equal to the fill value: a complete all-zero store has them all
    z = zarr.create_array(src, shape=(N, M), chunks=(C, C), dtype="f8", fill_value=0.0,
                          config={"write_empty_chunks": True}, overwrite=True)
    z[...] = 0.0
    return (lambda out: cf.nmf(src, 2, max_iter=5)), [src, "all zeros"]


def inf_in_raw_nmf(tmp_path):
    x = _data()
    x[5, 25] = -np.inf
    src = _store(tmp_path, x)
    return (lambda out: cf.nmf(src, 2, max_iter=5)), [src, "chunk (0, 2)", "NaN/Inf",
                                                      "impute"]


def rank_too_big(tmp_path):
    src = _store(tmp_path)
    return (lambda out: cf.nmf(src, 30, max_iter=5)), [src, "rank=30", "1 <= rank < 30"]


def n_components_ge_n(tmp_path):
    src = _store(tmp_path)
    return _pipeline(src, d=N), [src, "n_components=40", "1 <= n_components < 40"]


def feature_axis_out_of_range(tmp_path):
    src = _store(tmp_path)
    return (lambda out: cf.sketch(src, 5, axis=2)), [src, "feature axis 2", "0..1"]


def missing_store(tmp_path):
    path = str(tmp_path / "nope.zarr")
    return _pipeline(path), [path, "no Zarr store", "check the path"]


def not_a_store(tmp_path):
    path = tmp_path / "file.zarr"
    path.write_text("hello")
    return _pipeline(str(path)), [str(path), "not a readable Zarr store"]


def group_without_variable(tmp_path):
    path = str(tmp_path / "g.zarr")
    xr.Dataset({"M": (("f", "s"), _data())}).to_zarr(path, zarr_format=3, consolidated=False)
    return (lambda out: cf.open_array(path, variable="X")), [path, "'X'", "['M']"]


def group_several_arrays(tmp_path):
    path = str(tmp_path / "g2.zarr")
    g = zarr.open_group(path, mode="w")
    for name in ("A", "B"):
        g.create_array(name, shape=(4, 4), dtype="f8")
    return _pipeline(path), [path, "variable=<name>", "--variable"]


def yaml_unknown_key(tmp_path):
    job = _good_job(tmp_path)
    job["cfact"]["sketch"]["colour"] = "red"
    p = _yaml_job(tmp_path, yaml.safe_dump(job))
    return (lambda out: cf.run_job(p, progress=False)), [p, "['colour']", "cfact.sketch",
                                                         "valid keys"]


def yaml_wrong_type(tmp_path):
    job = _good_job(tmp_path)
    job["cfact"]["factor"]["rank"] = "ten"
    p = _yaml_job(tmp_path, yaml.safe_dump(job))
    return (lambda out: cf.run_job(p, progress=False)), [p, "cfact.factor.rank", "must be int",
                                                         "'ten'"]


def yaml_bool_for_int(tmp_path):
    job = _good_job(tmp_path)
    job["cfact"]["sketch"]["n_components"] = True
    p = _yaml_job(tmp_path, yaml.safe_dump(job))
    return (lambda out: cf.run_job(p, progress=False)), ["cfact.sketch.n_components",
                                                         "must be int"]


def yaml_path_outside_root(tmp_path):
    root = tmp_path / "allowed"
    root.mkdir()
    job = _good_job(tmp_path)  # the input is in tmp_path, outside tmp_path/allowed
    job["cfact"]["output"]["path"] = str(root / "run.zarr")
    p = _yaml_job(root, yaml.safe_dump(job))

    def run(out):
        with dask.config.set({"cfact.run.allowed-root": str(root)}):
            return cf.run_job(p, progress=False)

    return run, ["cfact.input.path", "outside the allowed root", str(root)]


def yaml_relative_escape(tmp_path):
    root = tmp_path / "allowed"
    root.mkdir()
    _store(root)
    job = _good_job(root)
    job["cfact"]["output"]["path"] = "../../escape.zarr"
    p = _yaml_job(root, yaml.safe_dump(job))

    def run(out):
        with dask.config.set({"cfact.run.allowed-root": str(root)}):
            return cf.run_job(p, progress=False)

    return run, ["cfact.output.path", "outside the allowed root"]


def yaml_missing_file(tmp_path):
    p = str(tmp_path / "absent.yaml")
    return (lambda out: cf.run_job(p, progress=False)), [p, "does not exist"]


def yaml_invalid(tmp_path):
    p = _yaml_job(tmp_path, "cfact:\n  input: {path: [unclosed\n  sketch: : :\n")
    return (lambda out: cf.run_job(p, progress=False)), [p, "not valid YAML"]


def yaml_not_a_mapping(tmp_path):
    p = _yaml_job(tmp_path, "- just\n- a list\n")
    return (lambda out: cf.run_job(p, progress=False)), [p, "must be a mapping"]


def yaml_missing_required(tmp_path):
    job = _good_job(tmp_path)
    del job["cfact"]["factor"]["rank"]
    p = _yaml_job(tmp_path, yaml.safe_dump(job))
    return (lambda out: cf.run_job(p, progress=False)), [p, "'cfact.factor.rank' is required"]


def yaml_input_store_missing(tmp_path):
    job = _good_job(tmp_path)
    job["cfact"]["input"]["path"] = "missing.zarr"
    p = _yaml_job(tmp_path, yaml.safe_dump(job))
    return (lambda out: cf.run_job(p, progress=False)), [str(tmp_path / "missing.zarr"),
                                                         "no Zarr store"]


CASES = [
    # (builder, error class)
    (truncated_chunk, ChunkError),
    (garbage_chunk, ChunkError),
    (empty_chunk_file, ChunkError),
    (chunk_of_nan, NonFiniteError),
    (one_inf, NonFiniteError),
    (meta_shape_larger_nan_fill, ChunkError),
    (meta_chunk_shape_lies, ChunkError),
    (meta_dtype_lies, ChunkError),
    (string_dtype, InputError),
    (complex_dtype, InputError),
    (zero_size, InputError),
    (object_xarray, InputError),
    (xarray_dataset, InputError),
    (tensor_to_nmf, InputError),
    (tensor_store_to_pipeline, InputError),
    (negative_data_nmf, NegativeDataError),
    (all_zero_nmf, InputError),
    (inf_in_raw_nmf, NonFiniteError),
    (rank_too_big, RankError),
    (n_components_ge_n, RankError),
    (feature_axis_out_of_range, InputError),
    (missing_store, StoreNotFoundError),
    (not_a_store, StoreNotFoundError),
    (group_without_variable, StoreNotFoundError),
    (group_several_arrays, InputError),
    (yaml_unknown_key, ConfigError),
    (yaml_wrong_type, ConfigError),
    (yaml_bool_for_int, ConfigError),
    (yaml_path_outside_root, ConfigError),
    (yaml_relative_escape, ConfigError),
    (yaml_missing_file, ConfigError),
    (yaml_invalid, ConfigError),
    (yaml_not_a_mapping, ConfigError),
    (yaml_missing_required, ConfigError),
    (yaml_input_store_missing, StoreNotFoundError),
]


def _assert_no_valid_output(out: str) -> None:
    """An output left behind by a failed run must not claim to be complete."""
    if not os.path.exists(out):
        return
    meta = dict(zarr.open_group(out, mode="r").attrs).get("cfact") or {}
    assert not meta.get("complete"), f"{out} claims to be complete after a failure"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("build, exc", [pytest.param(b, e, id=b.__name__) for b, e in CASES])
def test_bad_input_table(build, exc, tmp_path):
    run, needles = build(tmp_path)
    out = str(tmp_path / "run.zarr")
    with pytest.raises(exc) as info:
        run(out)
    err = info.value
    assert isinstance(err, CfactError)
    msg = str(err)
    for needle in needles:
        if isinstance(needle, re.Pattern):
            assert needle.search(msg), f"{needle.pattern!r} not found in message: {msg}"
        else:
            assert needle in msg, f"{needle!r} not in message: {msg}"
    # a message, not a traceback from deep inside a library
    assert "Traceback" not in msg and len(msg) < 2000
    _assert_no_valid_output(out)


def test_table_has_at_least_twenty_cases():
    assert len(CASES) >= 20


def test_missing_chunks_with_zero_fill_read_as_zeros(tmp_path):
    """The documented decision: a shape lie over a 0-filled store is an error naming a missing
    chunk by default; with cfact.io.missing-chunks=fill the gap reads as zeros."""
    src = _store(tmp_path)
    _edit_meta(src, shape=[N + 20, M])
    X = cf.open_array(src)
    assert X.shape == (N + 20, M)
    with pytest.raises(ChunkError, match=r"chunk \([45], \d\) .* is missing"):
        X.data[N:].compute()
    with dask.config.set({"cfact.io.missing-chunks": "fill"}):
        np.testing.assert_array_equal(cf.open_array(src).data[N:].compute(), 0.0)


@pytest.mark.timeout(120)
def test_corrupt_chunk_on_a_cluster_names_the_chunk(cluster_client, tmp_path):
    """The ChunkError crosses process boundaries intact (raised on a worker, seen by the client)."""
    run, needles = truncated_chunk(tmp_path)
    src = needles[0]
    with pytest.raises(ChunkError, match=re.escape("chunk (1, 2)")):
        cf.sketch(src, 8).compute(client=cluster_client)


@pytest.mark.timeout(120)
def test_cli_bad_input_exits_nonzero_with_the_message(tmp_path):
    """Through the command line: exit code != 0, the message on stderr, no traceback."""
    run, needles = truncated_chunk(tmp_path)
    src = needles[0]
    job = {"cfact": {"input": {"path": src}, "sketch": {"n_components": 8},
                     "factor": {"rank": 2, "max_iter": 30}, "recover": {"method": "none"},
                     "output": {"path": str(tmp_path / "run.zarr")}}}
    p = _yaml_job(tmp_path, yaml.safe_dump(job))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "DASK_CFACT__CLUSTER__EMBEDDED": "never"}
    r = subprocess.run([sys.executable, "-m", "cfact_dask.cli", "run", p, "--quiet"],
                       capture_output=True, text=True, timeout=110, env=env)
    assert r.returncode != 0
    assert "ChunkError" in r.stderr and "chunk (1, 2)" in r.stderr
    assert "Traceback" not in r.stderr
    _assert_no_valid_output(str(tmp_path / "run.zarr"))


def test_a_vector_is_refused_before_it_is_sketched(tmp_path):
    """A 1-D input names the fix at once, instead of a sketch later called 'a tensor'."""
    path = str(tmp_path / "vec.zarr")
    z = zarr.create_array(path, shape=(1000,), chunks=(250,), dtype="f8")
    z[:] = np.arange(1000.0)
    for x in (np.arange(1000.0), path):
        with pytest.raises(cf.InputError, match=r"reshape\(-1, 1\)"):
            cf.sketch(x, 10)
