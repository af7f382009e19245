"""``factor.method: messi`` through the resumable pipeline (issue 16's acceptance points 1-5)."""

from __future__ import annotations

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
import zarr
from conftest import tree_hash

from cfact_dask.embed.clustering import ProjectiveClusteringResult
from cfact_dask.errors import ConfigError, ResumeError
from cfact_dask.pipeline._run import run_job
from cfact_dask.pipeline.job import load_job

ROOT = Path(__file__).resolve().parents[2]


def _five_subspaces(path, n=2000, D=20, j=2, k=5, seed=0):
    """Rows from 5 random 2-dimensional subspaces of R^20 (well separated: random planes in
    20 dimensions are nearly orthogonal) plus small noise."""
    rng = np.random.default_rng(seed)
    bases = [np.linalg.qr(rng.standard_normal((D, j)))[0] for _ in range(k)]
    lab = rng.integers(0, k, n)
    A = np.stack([bases[c] @ rng.standard_normal(j) for c in lab])
    A += 0.01 * rng.standard_normal((n, D))
    z = zarr.create_array(str(path), shape=A.shape, chunks=(400, D), dtype="f8")
    z[...] = A
    return str(path), A


def _job(src, out, **factor):
    return {"cfact": {"input": {"path": src},
                      "factor": {"method": "messi", "rank": 2, "n_subspaces": 5, **factor},
                      "output": {"path": out, "reconstruct": True}}}


def _run(job, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_job(job, progress=False, **kw)


def test_run_writes_the_projections_and_their_certified_error(tmp_path):
    src, A = _five_subspaces(tmp_path / "in.zarr")
    before = tree_hash(src)
    out = str(tmp_path / "run.zarr")
    res = _run(_job(src, out, n_init=4, random_state=0))
    assert tree_hash(src) == before
    assert zarr.open_group(out, mode="r").attrs["cfact"]["complete"]
    R = xr.open_zarr(out, group="reconstruction", consolidated=False)["reconstruction"].values
    f = ProjectiveClusteringResult.from_zarr(out, "factors")
    lab, B = f.labels.compute(), f.bases
    ref = np.stack([B[c].T @ (B[c] @ a) for a, c in zip(A, lab, strict=True)])
    np.testing.assert_allclose(R, ref, rtol=1e-10, atol=1e-12)  # each row on its subspace
    # every row is on its closest subspace (the assignment the certificate's pass made)
    d = np.stack([np.linalg.norm(A - A @ B[c].T @ B[c], axis=1) for c in range(5)], axis=1)
    np.testing.assert_array_equal(lab, d.argmin(axis=1))
    exact = np.linalg.norm(A - R) / np.linalg.norm(A)
    cert = res.report["certificate"]
    assert cert["ok"] and exact < 0.05
    assert abs(cert["estimated_relative_error"] - exact) <= cert["tolerance"] * exact
    np.testing.assert_allclose(cert["cost"], (d.min(axis=1) ** 2).sum(), rtol=1e-8)
    assert sorted(cert["counts"]) == sorted(np.bincount(lab, minlength=5).tolist())


_KILL = textwrap.dedent("""
    import os, signal, sys, warnings
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
                     "factor": {"method": "messi", "rank": 2, "n_subspaces": 5, "n_init": 3,
                                "max_iter": 8, "tol": 0.0, "checkpoint_every": 2,
                                "loss": "huber", "random_state": 2},
                     "output": {"path": sys.argv[2], "reconstruct": True}}}
    run_job(job, progress=False, resume=sys.argv[3] == "resume")
""")


def _child(src, out, mode):
    return subprocess.run([sys.executable, "-c", _KILL, src, out, mode], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_sigkill_after_the_second_checkpoint_then_resume_equals_an_uninterrupted_run(tmp_path):
    src, _ = _five_subspaces(tmp_path / "in.zarr")
    ref, run = str(tmp_path / "ref.zarr"), str(tmp_path / "run.zarr")
    assert _child(src, ref, "plain").returncode == 0
    r = _child(src, run, "kill")
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert not zarr.open_group(run, mode="r").attrs["cfact"]["complete"]
    r = _child(src, run, "resume")
    assert r.returncode == 0, r.stderr[-3000:]
    a = ProjectiveClusteringResult.from_zarr(run, "factors")
    b = ProjectiveClusteringResult.from_zarr(ref, "factors")
    assert a.info["resumed_from"] == 4 and b.info["resumed_from"] == 0  # continued there
    assert a.n_iter == b.n_iter > 4 and a.n_passes == b.n_passes
    np.testing.assert_array_equal(a.bases, b.bases)  # bitwise
    assert a.cost_history == b.cost_history and a.restart_costs == b.restart_costs
    for arr in ("factors/labels", "factors/coefficients", "reconstruction/reconstruction"):
        np.testing.assert_array_equal(zarr.open_array(run, path=arr)[...],
                                      zarr.open_array(ref, path=arr)[...], err_msg=arr)
    ra = zarr.open_group(run, mode="r").attrs["cfact"]["report"]["certificate"]
    rb = zarr.open_group(ref, mode="r").attrs["cfact"]["report"]["certificate"]
    assert ra == rb


def test_certificate_flags_one_subspace_for_five(tmp_path):
    src, _ = _five_subspaces(tmp_path / "in.zarr")
    one = _run(_job(src, str(tmp_path / "one.zarr"), n_subspaces=1)).report["certificate"]
    assert not one["ok"] and one["estimated_relative_error"] > 0.5
    assert "factor.n_subspaces" in one["fix"] and one["messages"]
    five = _run(_job(src, str(tmp_path / "five.zarr"), n_init=4,
                     random_state=0)).report["certificate"]
    assert five["ok"] and not five["messages"] and five["fix"] is None
    # the EM stuck in a local minimum (random_state 2: two subspaces merged) is flagged too,
    # pointing to the restarts
    stuck = _run(_job(src, str(tmp_path / "stuck.zarr"), n_init=4,
                      random_state=2)).report["certificate"]
    assert not stuck["ok"] and "factor.n_init" in stuck["fix"]


def test_resume_with_changed_parameters_is_refused(tmp_path):
    src, _ = _five_subspaces(tmp_path / "in.zarr")
    out = str(tmp_path / "run.zarr")
    _run(_job(src, out, n_init=1, max_iter=2))
    with pytest.raises(ResumeError):
        _run(_job(src, out, n_init=1, max_iter=2, n_subspaces=4), resume=True)


def test_job_file_validates_and_bad_options_are_refused():
    job = load_job(ROOT / "deploy" / "config" / "job-messi.yaml")
    f = job["factor"]
    assert f["method"] == "messi" and f["n_subspaces"] == 5 and f["rank"] == 8
    base = {"input": {"path": "in.zarr"}, "output": {"path": "run.zarr"}}
    for bad, match in (({"loss": "tukey"}, "loss"), ({"n_init": 0}, "n_init"),
                       ({"solver": "irls"}, "unknown key"), ({"scale": -1.0}, "scale")):
        with pytest.raises(ConfigError, match=match):
            load_job({"cfact": {**base, "factor": {"method": "messi", "rank": 2, **bad}}})
