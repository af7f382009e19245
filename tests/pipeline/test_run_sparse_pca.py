"""``factor.method: sparse-pca`` through the resumable pipeline (issue 16): `cfact run` /
`run_job`, the error certificate against numpy's exact error and scikit-learn, SIGKILL after the
2nd checkpoint then rerun / resume, refused resumes, job validation and the example job file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import xarray as xr
import yaml
import zarr
from click.testing import CliRunner
from sklearn.decomposition import SparsePCA

import cfact_dask as cf
from cfact_dask.cli import cli
from cfact_dask.errors import ConfigError, ResumeError
from cfact_dask.pipeline.job import load_job, validate_job

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_SAMPLES, N_FEATURES, PLANTED, MEAN = 200, 60, 3, 10.0


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Three sparse components (8 features each, disjoint) plus noise and a mean of 10, stored
    features × samples (60 × 200) in 20 × 50 chunks."""
    rng = np.random.default_rng(16)
    V = np.zeros((PLANTED, N_FEATURES))
    support = rng.permutation(N_FEATURES)[: PLANTED * 8].reshape(PLANTED, 8)
    for k in range(PLANTED):
        V[k, support[k]] = rng.standard_normal(8)
    X = (3 * rng.standard_normal((N_SAMPLES, PLANTED)) @ V
         + 0.05 * rng.standard_normal((N_SAMPLES, N_FEATURES)) + MEAN)
    M = np.ascontiguousarray(X.T)
    path = str(tmp_path_factory.mktemp("spca-data") / "in.zarr")
    z = zarr.open_array(path, mode="w", shape=M.shape, chunks=(20, 50), dtype="f8")
    z[...] = M
    return path, M


def _job(src, out, rank=PLANTED, **factor):
    return {"cfact": {"input": {"path": src},
                      "factor": {"method": "sparse-pca", "rank": rank, "alpha": 0.5, **factor},
                      "output": {"path": out, "reconstruct": True}}}


def _read(out, path):
    return np.asarray(zarr.open_array(out, path=path, mode="r")[...])


def _exact(M, out):
    R = _read(out, "reconstruction/reconstruction")
    return np.linalg.norm(M - R) / np.linalg.norm(M), R


def test_run_job_reports_the_exact_error_of_mean_plus_w_h(planted, tmp_path):
    src, M = planted
    out = str(tmp_path / "run.zarr")
    res = cf.run_job(_job(src, out), progress=False)
    meta = zarr.open_group(out, mode="r").attrs["cfact"]
    assert meta["complete"] and meta["stages"] == ["factor", "reconstruct"]
    ds = xr.open_zarr(out, group="reconstruction", consolidated=False)
    assert ds["reconstruction"].shape == (N_FEATURES, N_SAMPLES)
    exact, R = _exact(M, out)
    W, H, mean = _read(out, "factors/W"), _read(out, "factors/H"), _read(out, "factors/mean")
    # the model is mean 1ᵀ + W H: the mean (10) is in the reconstruction
    np.testing.assert_allclose(R, mean[:, None] + W @ H, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mean, M.mean(axis=1), rtol=1e-12)
    cert = res.report["certificate"]
    assert cert["ok"] and not cert["messages"] and cert["zero_components"] == 0
    assert 0 < cert["tolerance"] < 1e-6
    assert abs(cert["estimated_relative_error"] - exact) <= cert["tolerance"] * exact
    np.testing.assert_allclose(res.report["reconstruction"]["relative_error"], exact, rtol=1e-9)
    # the same components as scikit-learn's SparsePCA on samples × features (up to its tol)
    ref = SparsePCA(n_components=PLANTED, alpha=0.5, random_state=0, tol=1e-6).fit(M.T)
    C = W.T / np.linalg.norm(W, axis=0)[:, None]
    cor = np.abs(C @ ref.components_.T).max(axis=1)
    assert np.all(cor > 0.999)
    assert res.report["factor"]["alpha"] == 0.5 and res.report["factor"]["n_iter"] > 1


@pytest.mark.parametrize("factor, why", [
    ({"rank": 1}, "unexplained"),                # too low a rank for three components
    ({"alpha": 1e4}, "all zero"),                # an ℓ1 penalty that zeroes every component
])
def test_certificate_flags_what_defeats_it(planted, tmp_path, factor, why):
    src, M = planted
    out = str(tmp_path / "run.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cf.ConvergenceWarning)
        res = cf.run_job(_job(src, out, **factor), progress=False)
    exact, _ = _exact(M, out)
    cert = res.report["certificate"]
    assert abs(cert["estimated_relative_error"] - exact) <= cert["tolerance"] * exact
    # the mean alone keeps the relative error below warn_above: the verdict looks at the
    # variation about the mean the model leaves out
    assert exact < 0.25
    assert cert["ok"] is False and any(why in m for m in cert["messages"])
    assert cert["unexplained_variation"] > 0.5
    assert ("lower factor.alpha" if "alpha" in factor else "raise factor.rank") in cert["fix"]


_KILL = textwrap.dedent("""
    import json, os, signal, sys, warnings
    import cfact_dask as cf
    from cfact_dask._runtime import checkpoint
    job, kill, resume = json.loads(sys.argv[1]), sys.argv[2] == "kill", sys.argv[3] == "resume"
    real_save, real_load = checkpoint.Checkpoint.save, checkpoint.Checkpoint.load
    saved, loaded = [], []
    def save(self, iteration, arrays, history=None):
        real_save(self, iteration, arrays, history)
        saved.append(iteration)
        if kill and len(saved) == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # after the 2nd checkpoint is committed
    def load(self):
        st = real_load(self)
        loaded.append(None if st is None else st.iteration)
        return st
    checkpoint.Checkpoint.save, checkpoint.Checkpoint.load = save, load
    warnings.simplefilter("ignore")
    res = cf.run_job(job, resume=resume, progress=False)
    print(json.dumps({"loaded": loaded, "saved": saved, "n_iter": res.factors.n_iter}))
""")


def _child(job, kill, mode):
    return subprocess.run([sys.executable, "-c", _KILL, json.dumps(job), kill, mode],
                          capture_output=True, text=True, timeout=300)


def test_sigkill_after_the_second_checkpoint_then_rerun_or_resume_equals_uninterrupted(
        planted, tmp_path):
    src, _ = planted
    kw = dict(max_iter=20, tol=0.0, checkpoint_every=3)
    ref = str(tmp_path / "ref.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cf.ConvergenceWarning)
        cf.run_job(_job(src, ref, **kw), progress=False)
    killed = str(tmp_path / "killed.zarr")
    r = _child(_job(src, killed, **kw), "kill", "plain")
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    meta = zarr.open_group(killed, mode="r").attrs["cfact"]
    assert not meta["complete"] and "factor" not in meta["stages"]
    assert zarr.open_group(killed, path="checkpoint", mode="r").attrs["cfact"]["latest"] == 6
    copy = str(tmp_path / "killed2.zarr")
    shutil.copytree(killed, copy)
    for store, mode in ((killed, "plain"), (copy, "resume")):
        r = _child(_job(src, store, **kw), "", mode)
        assert r.returncode == 0, r.stderr[-3000:]
        seen = json.loads(r.stdout.strip().splitlines()[-1])
        # it continued from the checkpoint of iteration 6: 14 of the 20 iterations ran again
        assert seen["loaded"] == [6] and seen["saved"] == [9, 12, 15, 18]
        assert seen["n_iter"] == 20
        meta = zarr.open_group(store, mode="r").attrs["cfact"]
        assert meta["complete"] and meta["stages"] == ["factor", "reconstruct"]
        for arr in ("factors/W", "factors/H", "factors/mean", "reconstruction/reconstruction"):
            np.testing.assert_array_equal(_read(store, arr), _read(ref, arr), err_msg=arr)
        assert (meta["report"]["certificate"]
                == zarr.open_group(ref, mode="r").attrs["cfact"]["report"]["certificate"])


def test_resume_with_another_alpha_is_refused(planted, tmp_path):
    src, _ = planted
    out = str(tmp_path / "run.zarr")
    cf.run_job(_job(src, out), progress=False)
    with pytest.raises(ResumeError, match="alpha"):
        cf.run_job(_job(src, out, alpha=0.1), resume=True, progress=False)


@pytest.mark.parametrize("factor, match", [
    ({"alpha": -1.0}, "alpha"),
    ({"ridge_alpha": -0.5}, "ridge_alpha"),
    ({"warn_above": 0}, "warn_above"),
    ({"center": "yes"}, "center"),
    ({"passes": 2}, "passes"),              # svd's key: not one of sparse-pca's
    ({"solver": "hals"}, "solver"),          # nmf's key
])
def test_job_section_is_validated_per_method(planted, tmp_path, factor, match):
    src, _ = planted
    with pytest.raises(ConfigError, match=match):
        validate_job(_job(src, str(tmp_path / "o.zarr"), **factor))


def test_cfact_run_prints_the_certificate(planted, tmp_path):
    src, M = planted
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_job(os.path.relpath(src, tmp_path), "run.zarr", rank=1)))
    r = CliRunner().invoke(cli, ["run", str(job)])
    assert r.exit_code == 0, r.output
    exact, _ = _exact(M, str(tmp_path / "run.zarr"))
    assert "factor     sparse-pca, rank 1" in r.stdout and "iterations" in r.stdout
    assert f"estimated relative error {exact:.4f}" in r.stdout
    assert "[certificate: NOT OK]" in r.stdout and "fix: raise factor.rank" in r.stdout
    assert f"reconstruct relative error {exact:.4f}" in r.stdout


def test_example_job_file_validates():
    path = os.path.join(ROOT, "deploy", "config", "job-sparse-pca.yaml")
    job = load_job(path)
    f = job["factor"]
    assert f["method"] == "sparse-pca" and isinstance(f["rank"], int)
    assert isinstance(f["alpha"], float) and f["center"] is True
    assert job["output"]["reconstruct"] is True
