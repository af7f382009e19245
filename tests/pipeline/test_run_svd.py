"""``factor.method: svd`` through the resumable pipeline (issue 16): `cfact run` / `run_job`, the
error certificate against numpy's exact error, SIGKILL then rerun / resume, refused resumes and
the example job file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr
from click.testing import CliRunner

import cfact_dask as cf
from cfact_dask.cli import cli
from cfact_dask.errors import ResumeError
from cfact_dask.pipeline._svd import estimate_tolerance
from cfact_dask.pipeline.job import load_job

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N, M, PLANTED = 300, 200, 8


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Rank 8 plus 1 % noise (of the signal's root-mean-square entry), 300 × 200, 100 × 100
    chunks: rank 8 explains it, rank 2 leaves most of it."""
    rng = np.random.default_rng(16)
    X = rng.standard_normal((N, PLANTED)) @ rng.standard_normal((PLANTED, M))
    X += 0.01 * np.sqrt(np.mean(X**2)) * rng.standard_normal((N, M))
    path = str(tmp_path_factory.mktemp("svd-data") / "in.zarr")
    z = zarr.open_array(path, mode="w", shape=X.shape, chunks=(100, 100), dtype="f8")
    z[...] = X
    return path, X


def _job(src, out, rank, **factor):
    return {"cfact": {"input": {"path": src},
                      "factor": {"method": "svd", "rank": rank, **factor},
                      "output": {"path": out, "reconstruct": True}}}


def _exact(X, out):
    R = np.asarray(zarr.open_array(out, path="reconstruction/reconstruction", mode="r")[...])
    return np.linalg.norm(X - R) / np.linalg.norm(X), R


@pytest.mark.parametrize("rank, ok", [(PLANTED, True), (2, False)])
def test_run_job_reports_an_error_within_its_tolerance_and_flags_too_low_a_rank(
        planted, tmp_path, rank, ok):
    src, X = planted
    out = str(tmp_path / "run.zarr")
    res = cf.run_job(_job(src, out, rank), progress=False)
    meta = zarr.open_group(out, mode="r").attrs["cfact"]
    assert meta["complete"] and meta["stages"] == ["factor", "reconstruct"]
    ds = xr.open_zarr(out, group="reconstruction", consolidated=False)
    assert ds["reconstruction"].shape == (N, M)
    exact, R = _exact(X, out)
    # the reconstruction is U Σ Vᵀ of the factors stored
    U = np.asarray(zarr.open_array(out, path="factors/U")[...])
    s = np.asarray(zarr.open_array(out, path="factors/s")[...])
    Vt = np.asarray(zarr.open_array(out, path="factors/Vt")[...])
    np.testing.assert_allclose(R, (U * s) @ Vt, rtol=0, atol=1e-10 * np.abs(X).max())
    np.testing.assert_allclose(res.report["reconstruction"]["relative_error"], exact, rtol=1e-9)
    cert = res.report["certificate"]
    assert cert["tolerance"] == estimate_tolerance(16)
    assert abs(cert["estimated_relative_error"] - exact) <= cert["tolerance"] * exact
    assert cert["ok"] is ok
    if ok:
        assert exact < 0.05 and not cert["messages"] and cert["fix"] is None
    else:
        # the defeat case: rank 2 of a rank-8 signal leaves most of it
        assert exact > 0.5 and "raise factor.rank" in cert["fix"]
        assert "singular values" in cert["messages"][0]
    # numpy's best rank-`rank` error bounds every rank-`rank` model from below
    sv = np.linalg.svd(X, compute_uv=False)
    assert exact >= np.sqrt(np.sum(sv[rank:] ** 2)) / np.linalg.norm(X) * (1 - 1e-12)


_KILL = textwrap.dedent("""
    import json, os, signal, sys, warnings
    import cfact_dask as cf
    from cfact_dask._runtime import outputs
    job, kill, resume = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3] == "resume"
    real = outputs.GroupWriter.finish
    def finish(self, meta, upstream=None):
        if kill and self.group == kill:
            os.kill(os.getpid(), signal.SIGKILL)  # the factors are written, not yet committed
        return real(self, meta, upstream)
    outputs.GroupWriter.finish = finish
    warnings.simplefilter("ignore")
    cf.run_job(job, resume=resume, progress=False)
""")


def _child(job, kill, mode):
    return subprocess.run([sys.executable, "-c", _KILL, json.dumps(job), kill, mode],
                          capture_output=True, text=True, timeout=300)


def test_sigkill_inside_the_factors_write_then_rerun_or_resume_equals_uninterrupted(
        planted, tmp_path):
    src, _ = planted
    ref = str(tmp_path / "ref.zarr")
    cf.run_job(_job(src, ref, 4), progress=False)
    killed = str(tmp_path / "killed.zarr")
    r = _child(_job(src, killed, 4), "factors", "plain")
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    meta = zarr.open_group(killed, mode="r").attrs["cfact"]
    assert not meta["complete"] and "factor" not in meta["stages"]
    assert "factors" not in set(zarr.open_group(killed, mode="r").group_keys())
    copy = str(tmp_path / "killed2.zarr")
    shutil.copytree(killed, copy)
    for store, mode in ((killed, "plain"), (copy, "resume")):
        r = _child(_job(src, store, 4), "", mode)
        assert r.returncode == 0, r.stderr[-3000:]
        meta = zarr.open_group(store, mode="r").attrs["cfact"]
        assert meta["complete"] and meta["stages"] == ["factor", "reconstruct"]
        assert not [p for p in os.listdir(store) if ".cfact-tmp-" in p]
        # the same seeds and chunking: bitwise the uninterrupted run
        for arr in ("factors/U", "factors/s", "factors/Vt", "reconstruction/reconstruction"):
            np.testing.assert_array_equal(zarr.open_array(store, path=arr)[...],
                                          zarr.open_array(ref, path=arr)[...], err_msg=arr)
        assert (meta["report"]["certificate"]
                == zarr.open_group(ref, mode="r").attrs["cfact"]["report"]["certificate"])


def test_resume_with_another_rank_is_refused(planted, tmp_path):
    src, _ = planted
    out = str(tmp_path / "run.zarr")
    cf.run_job(_job(src, out, 4), progress=False)
    with pytest.raises(ResumeError, match="rank"):
        cf.run_job(_job(src, out, 5), resume=True, progress=False)
    with pytest.raises(ResumeError, match="n_test"):
        cf.run_job(_job(src, out, 4, n_test=32), resume=True, progress=False)


def test_cfact_run_prints_the_certificate(planted, tmp_path):
    src, X = planted
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_job(os.path.relpath(src, tmp_path), "run.zarr", 2)))
    r = CliRunner().invoke(cli, ["run", str(job)])
    assert r.exit_code == 0, r.output
    exact, _ = _exact(X, str(tmp_path / "run.zarr"))
    assert "factor     svd, rank 2" in r.output
    assert "estimated relative error" in r.output and "CountSketch" in r.output
    assert "[certificate: NOT OK]" in r.output and "fix: raise factor.rank" in r.output
    assert f"reconstruct relative error {exact:.4f}" in r.output
    r = CliRunner().invoke(cli, ["run", str(job), "--resume", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)  # the certificate's warning is logged to stderr
    assert report["certificate"]["ok"] is False and report["out"] == str(tmp_path / "run.zarr")


def test_example_job_file_validates():
    path = os.path.join(ROOT, "deploy", "config", "job-svd.yaml")
    job = load_job(path)
    assert job["factor"]["method"] == "svd" and isinstance(job["factor"]["rank"], int)
    assert job["output"]["reconstruct"] is True
    with open(path) as f:
        raw = yaml.safe_load(f)["cfact"]
    # everything the file sets is a key of svd's factor section (no stray nmf keys)
    assert set(raw["factor"]) <= set(job["factor"]) and "sketch" not in raw
