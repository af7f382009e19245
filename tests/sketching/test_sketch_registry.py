"""A sketch kind registered in one place (here: in the test only) reaches every face of the
package: the operator and ``cf.sketch``, ``cfact sketch --kind``, the job schema and the planner."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from click.testing import CliRunner

import cfact_dask as cf
from cfact_dask.cli import cli
from cfact_dask.errors import ConfigError, InputError
from cfact_dask.pipeline import validate_job
from cfact_dask.sketching.operators import (
    KINDS,
    SKETCH_KINDS,
    SketchKind,
    SketchOperator,
    tile_generator,
)

SCALE = 2.0


def _toy_tile(op, t, width, dtype):
    """A scaled dense Rademacher tile: entries ±SCALE/√d."""
    rng = tile_generator(op, t)
    d = op.n_components
    out = ((2.0 * rng.integers(0, 2, size=(d, width)) - 1.0) * (SCALE / math.sqrt(d)))
    out = out.astype(dtype)
    out.setflags(write=False)
    return out


TOY = SketchKind("toy", _toy_tile, dense=True, s="none", column_norm=lambda op: SCALE,
                 description="scaled dense Rademacher (test only)")


@pytest.fixture
def toy():
    SKETCH_KINDS.register("toy", TOY)
    try:
        yield TOY
    finally:
        SKETCH_KINDS.unregister("toy")


def _explicit_P(op: SketchOperator) -> np.ndarray:
    """P built tile by tile from the kind's generator alone (not through the operator)."""
    T = op.tile_size
    return np.hstack([_toy_tile(op, t, min(T, op.n_features - t * T), "<f8")
                      for t in range(op.n_tiles)])


def _store(path, shape=(300, 40), chunks=(70, 15)):
    X = np.random.default_rng(3).standard_normal(shape)
    z = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="f8")
    z[...] = X
    return X


def test_registered_kind_is_a_kind_everywhere(toy, tmp_path):
    assert "toy" in KINDS and list(KINDS)[-1] == "toy" and KINDS[-1] == "toy"
    assert "toy" in cf.KINDS  # the public name is the same live view
    op = cf.make_operator("toy", 16, 300, seed=5, tile_size=64)
    assert op.s == 0 and not op.nonnegative and op.column_norm == SCALE
    assert SketchOperator.from_dict(op.to_dict()) == op
    P = _explicit_P(op)
    np.testing.assert_array_equal(op.to_dense(), P)
    np.testing.assert_allclose(np.linalg.norm(P, axis=0), SCALE)
    with pytest.raises(InputError, match="dense"):
        cf.make_operator("toy", 16, 300, s=3)

    X = _store(tmp_path / "x.zarr")
    sk = cf.sketch(cf.open_array(str(tmp_path / "x.zarr")), 16, kind="toy", seed=5,
                   tile_size=64)
    assert sk.operator == op
    np.testing.assert_allclose(sk.compute(progress=False), P @ X, rtol=1e-12, atol=1e-12)
    # a dense kind's columns are dense, a sparse kind's sparse
    assert isinstance(op.columns(3, 9), np.ndarray)
    assert sp.issparse(cf.make_operator("expander", 16, 300).columns(3, 9))


def test_cli_job_and_plan_read_the_registry(toy, tmp_path):
    r = CliRunner().invoke(cli, ["sketch", "--help"])
    assert r.exit_code == 0 and "toy" in r.output

    X = _store(tmp_path / "x.zarr")
    out = str(tmp_path / "s.zarr")
    r = CliRunner().invoke(cli, ["sketch", str(tmp_path / "x.zarr"), out, "-d", "12",
                                 "--kind", "toy", "--seed", "2", "--holdout", "0", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["operator"]["kind"] == "toy" and rep["sketch_shape"] == [12, 40]
    sk = cf.Sketch.from_zarr(out)
    np.testing.assert_allclose(sk.data.compute(), _explicit_P(sk.operator) @ X, rtol=1e-10,
                               atol=1e-10)

    job = {"cfact": {"input": {"path": str(tmp_path / "x.zarr")},
                     "sketch": {"n_components": 12, "kind": "toy"},
                     "factor": {"rank": 3}, "output": {"path": str(tmp_path / "run.zarr")}}}
    assert validate_job(job)["sketch"]["kind"] == "toy"
    p = cf.plan(job, n_workers=1, threads_per_worker=1, memory_limit=2**30)
    assert p.passes["sketch"] == 1 and p.task_peak["sketch"] > 0
    # the dense memory model: the task holds a d x tile block of P
    dense = cf.plan({**job, "cfact": {**job["cfact"], "sketch": {"n_components": 12,
                                                                  "kind": "gaussian"}}},
                    n_workers=1, threads_per_worker=1, memory_limit=2**30)
    assert p.task_peak == dense.task_peak


def test_unregistered_kind_is_gone(tmp_path):
    assert "toy" not in KINDS
    job = {"cfact": {"input": {"path": "x.zarr"}, "sketch": {"n_components": 4, "kind": "toy"},
                     "factor": {"rank": 2}, "output": {"path": "o.zarr"}}}
    with pytest.raises(ConfigError, match="toy"):
        validate_job(job)
    r = CliRunner().invoke(cli, ["sketch", "--help"])
    assert "toy" not in r.output
    with pytest.raises(InputError, match="unknown sketch kind"):
        cf.make_operator("toy", 4, 10)
