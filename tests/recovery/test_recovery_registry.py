"""The recovery-method registry: one entry makes a method known to ``recover``, the CLI, the job
schema and the planner, with no other file edited."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import cfact_dask as cf
from cfact_dask.cli import cli
from cfact_dask.datasets import planted_nmf_zarr
from cfact_dask.errors import ConfigError, InputError, RecoveryWarning
from cfact_dask.pipeline.job import validate_job
from cfact_dask.recovery import (
    METHODS,
    RECOVERY_METHODS,
    RecoveryMethod,
    RecoveryProblem,
    RecoverySolution,
)


def _toy_solve(p: RecoveryProblem) -> RecoverySolution:
    """Plain (minimum-norm) least squares on the sketch: ``W = P⁺ W̃``."""
    X = np.linalg.lstsq(p.operator.to_dense(), p.Wt, rcond=None)[0]
    return RecoverySolution(W=X)


def _job(src: str, out: str, method: str) -> dict:
    return {"cfact": {
        "input": {"path": src, "variable": "M"},
        "sketch": {"n_components": 40, "kind": "expander", "seed": 0},
        "factor": {"method": "nmf", "rank": 3},
        "recover": {"method": method},
        "output": {"path": out},
    }}


@pytest.fixture
def toy():
    RECOVERY_METHODS.register("toy", RecoveryMethod(
        "toy", _toy_solve, help="plain least squares on the sketch (a test method)"))
    RECOVERY_METHODS.register("toy-data", RecoveryMethod(
        "toy-data", _toy_solve, reads_data=True, help="a test method that reads the data"))
    try:
        yield "toy"
    finally:
        RECOVERY_METHODS.unregister("toy")
        RECOVERY_METHODS.unregister("toy-data")


def test_builtin_methods_in_order():
    assert RECOVERY_METHODS.names() == ("nnlasso", "lasso", "bp", "omp", "lstsq-data")
    assert tuple(METHODS) == RECOVERY_METHODS.names() and METHODS == RECOVERY_METHODS.names()
    spec = RECOVERY_METHODS.get("lstsq-data")
    assert spec.reads_data and not RECOVERY_METHODS.get("nnlasso").reads_data
    assert RECOVERY_METHODS.get("nnlasso").nonnegative is True
    assert RECOVERY_METHODS.get("lasso").counterpart == "nnlasso"


def test_unknown_method_is_refused_everywhere(tmp_path):
    assert "toy" not in METHODS
    with pytest.raises(InputError, match="unknown recovery method 'toy'"):
        cf.recover(np.ones((10, 1)), cf.make_operator("expander", 10, 50, seed=0), "toy")
    with pytest.raises(ConfigError, match="recover.method"):
        validate_job(_job("in.zarr", "out.zarr", "toy"), check_paths=False)
    r = CliRunner().invoke(cli, ["recover", str(tmp_path / "run.zarr"), "--method", "toy"])
    assert r.exit_code == 2 and "toy" in r.output


def test_registered_method_is_accepted_everywhere(toy, tmp_path):
    assert "toy" in METHODS and METHODS[-2:] == ("toy", "toy-data")
    # the CLI: listed in --help, and accepted when the command line is parsed
    r = CliRunner().invoke(cli, ["recover", "--help"])
    assert r.exit_code == 0 and "toy" in r.output.replace("\n", "")
    r = CliRunner().invoke(cli, ["recover", str(tmp_path / "missing.zarr"), "--method", "toy"])
    assert "Invalid value" not in r.output
    # the job schema
    job = validate_job(_job("in.zarr", "out.zarr", "toy"), check_paths=False)
    assert job["recover"]["method"] == "toy"
    # recover()
    rng = np.random.default_rng(0)
    op = cf.make_operator("expander", 60, 300, seed=1)
    Wt = rng.random((60, 2))
    with pytest.warns(RecoveryWarning, match="dense"):  # least squares is not sparse
        rec = cf.recover(Wt, op, method="toy", chunks=100)
    assert isinstance(rec, cf.Recovery) and rec.method == "toy"
    assert rec.W.shape == (300, 2) and rec.W.chunks[0] == (100, 100, 100)
    np.testing.assert_allclose(op.to_dense() @ rec.compute(), Wt, atol=1e-8)
    assert rec.certificate.fit_residual < 1e-8
    assert rec.reconstruction_err_ is None  # no held-out sketch, no data
    # the planner: a method that reads the data costs one more pass
    src = str(tmp_path / "in.zarr")
    planted_nmf_zarr(src, 300, 50, 3, random_state=0, chunks=(100, 50), progress=False)
    out = str(tmp_path / "out.zarr")
    plain = cf.plan(_job(src, out, "toy"), n_workers=1)
    reads = cf.plan(_job(src, out, "toy-data"), n_workers=1)
    assert reads.total_passes == plain.total_passes + 1
