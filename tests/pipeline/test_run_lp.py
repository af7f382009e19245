"""``factor.method: lp`` through the resumable pipeline (issue 16's acceptance points 1-5)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr
from click.testing import CliRunner
from conftest import tree_hash

from cfact_dask.cli import cli
from cfact_dask.embed.lp import LpLowRankResult
from cfact_dask.errors import ConfigError, ResumeError
from cfact_dask.pipeline._run import run_job
from cfact_dask.pipeline.job import load_job

ROOT = Path(__file__).resolve().parents[2]


def _rank6(path, n=1500, D=20, outliers=0.0, seed=0):
    """Rows on a rank-6 subspace plus small noise (and optionally 5 % outlier rows, 10x the
    inliers' norm, in random directions)."""
    rng = np.random.default_rng(seed)
    B = np.linalg.qr(rng.standard_normal((D, 6)))[0]
    A = rng.standard_normal((n, 6)) @ B.T + 0.01 * rng.standard_normal((n, D))
    if outliers:
        idx = rng.choice(n, int(outliers * n), replace=False)
        R = rng.standard_normal((idx.size, D))
        A[idx] = 10 * np.sqrt(6) * R / np.linalg.norm(R, axis=1, keepdims=True)
    z = zarr.create_array(str(path), shape=A.shape, chunks=(300, D), dtype="f8")
    z[...] = A
    return str(path), A


def _job(src, out, **factor):
    return {"cfact": {"input": {"path": src},
                      "factor": {"method": "lp", "rank": 6, **factor},
                      "output": {"path": out, "reconstruct": True}}}


def _run(job, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_job(job, progress=False, **kw)


def test_cfact_run_writes_the_model_and_its_certified_error(tmp_path):
    src, A = _rank6(tmp_path / "in.zarr")
    before = tree_hash(src)
    out = str(tmp_path / "run.zarr")
    jf = tmp_path / "job.yaml"
    jf.write_text(yaml.safe_dump(_job(src, out, p=1.0, checkpoint_every=5)))
    r = CliRunner().invoke(cli, ["run", str(jf), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert tree_hash(src) == before
    meta = zarr.open_group(out, mode="r").attrs["cfact"]
    assert meta["complete"] and meta["stages"] == ["factor", "reconstruct"]
    R = xr.open_zarr(out, group="reconstruction", consolidated=False)["reconstruction"].values
    V = LpLowRankResult.from_zarr(out, "factors").basis
    np.testing.assert_allclose(R, A @ V @ V.T, rtol=1e-10, atol=1e-12)  # the model A V Vᵀ
    exact = np.linalg.norm(A - R) / np.linalg.norm(A)
    cert = report["certificate"]
    assert cert["ok"] and cert["estimated_relative_error"] < 0.05
    assert abs(cert["estimated_relative_error"] - exact) <= cert["tolerance"] * exact
    np.testing.assert_allclose(report["reconstruction"]["relative_error"], exact, rtol=1e-10)
    # the method's own objective, against numpy
    d = np.linalg.norm(A - A @ V @ V.T, axis=1)
    np.testing.assert_allclose(cert["objective"], d.sum(), rtol=1e-8)


_KILL = textwrap.dedent("""
    import json, os, signal, sys, warnings
    from cfact_dask._runtime import checkpoint
    from cfact_dask.pipeline._run import run_job
    real = checkpoint.Checkpoint.save
    n = {"saves": 0}
    def save(self, *a, **kw):
        real(self, *a, **kw)
        n["saves"] += 1
        if sys.argv[3] == "kill" and n["saves"] == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # the 2nd checkpoint is committed
    checkpoint.Checkpoint.save = save
    warnings.simplefilter("ignore")
    job = {"cfact": {"input": {"path": sys.argv[1]},
                     "factor": {"method": "lp", "rank": 6, "p": 1.0, "solver": sys.argv[4],
                                "max_iter": 9, "tol": 0.0, "checkpoint_every": 2},
                     "output": {"path": sys.argv[2], "reconstruct": True}}}
    run_job(job, progress=False, resume=sys.argv[3] == "resume")
""")


def _child(src, out, mode, solver):
    return subprocess.run([sys.executable, "-c", _KILL, src, out, mode, solver],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("solver", ["irls", "ellipsoid"])
def test_sigkill_after_the_second_checkpoint_then_resume_equals_an_uninterrupted_run(
        tmp_path, solver):
    src, _ = _rank6(tmp_path / "in.zarr", outliers=0.05)
    ref, run = str(tmp_path / "ref.zarr"), str(tmp_path / "run.zarr")
    assert _child(src, ref, "plain", solver).returncode == 0
    r = _child(src, run, "kill", solver)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert not zarr.open_group(run, mode="r").attrs["cfact"]["complete"]
    r = _child(src, run, "resume", solver)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = LpLowRankResult.from_zarr(run, "factors"), LpLowRankResult.from_zarr(ref, "factors")
    assert a.info["resumed_from"] == 4 and b.info["resumed_from"] == 0  # continued there
    assert a.n_iter == b.n_iter > 4 and a.n_passes == b.n_passes
    np.testing.assert_array_equal(a.basis, b.basis)  # bitwise
    assert a.objective_history == b.objective_history
    for arr in ("factors/coefficients", "reconstruction/reconstruction"):
        np.testing.assert_array_equal(zarr.open_array(run, path=arr)[...],
                                      zarr.open_array(ref, path=arr)[...], err_msg=arr)
    ra = zarr.open_group(run, mode="r").attrs["cfact"]["report"]["certificate"]
    rb = zarr.open_group(ref, mode="r").attrs["cfact"]["report"]["certificate"]
    assert ra == rb


def test_certificate_flags_a_rank_too_low_and_not_outliers(tmp_path):
    src, A = _rank6(tmp_path / "in.zarr")
    low = _run(_job(src, str(tmp_path / "low.zarr"), rank=1)).report["certificate"]
    assert not low["ok"] and low["estimated_relative_error"] > 0.5
    assert "factor.rank" in low["fix"] and low["messages"]
    good = _run(_job(src, str(tmp_path / "good.zarr"))).report["certificate"]
    assert good["ok"] and not good["messages"] and good["fix"] is None
    # a robust fit of rank-6 data with 5 % huge outlier rows: the Frobenius error is dominated
    # by the outliers (far above warn_above), but the typical row is fitted: not flagged
    osrc, _ = _rank6(tmp_path / "out.zarr", outliers=0.05)
    rob = _run(_job(osrc, str(tmp_path / "rob.zarr"), p=1.0)).report["certificate"]
    assert rob["estimated_relative_error"] > 0.5
    assert rob["ok"] and rob["row_residual_q90"] <= 0.1 and "outlier" in rob["note"]


def test_resume_with_changed_parameters_is_refused(tmp_path):
    src, _ = _rank6(tmp_path / "in.zarr")
    out = str(tmp_path / "run.zarr")
    _run(_job(src, out, p=1.0, max_iter=3))
    with pytest.raises(ResumeError):
        _run(_job(src, out, p=1.5, max_iter=3), resume=True)


def test_job_file_validates_and_bad_options_are_refused():
    job = load_job(ROOT / "deploy" / "config" / "job-lp.yaml")
    f = job["factor"]
    assert f["method"] == "lp" and f["solver"] == "irls" and f["p"] == 1.0
    base = {"input": {"path": "in.zarr"}, "output": {"path": "run.zarr"}}
    for bad, match in (({"solver": "newton"}, "solver"), ({"p": 3.0}, r"\[1, 2\]"),
                       ({"n_subspaces": 3}, "unknown key"),
                       ({"solver": "ellipsoid", "entrywise": True}, "entrywise")):
        with pytest.raises(ConfigError, match=match):
            load_job({"cfact": {**base, "factor": {"method": "lp", "rank": 2, **bad}}})
