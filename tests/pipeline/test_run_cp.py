"""``factor.method: cp`` through the resumable pipeline (issue 16's acceptance for CP).

A planted N-way tensor in a real Zarr store; the run store's reconstruction is checked against
numpy (and the fit against TensorLy's ``parafac``), the certificate against the error measured
on the written reconstruction, a SIGKILL after the 2nd checkpoint against an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import yaml
import zarr
from click.testing import CliRunner
from conftest import tree_hash

import cfact_dask as cf
from cfact_dask.cli import cli
from cfact_dask.datasets import planted_cp_zarr
from cfact_dask.errors import ConfigError, InputError, ResumeError
from cfact_dask.pipeline._cp import cp_model
from cfact_dask.pipeline._generic import run_method
from cfact_dask.pipeline.job import load_job, validate_job
from cfact_dask.reconstruction import write_reconstruction

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def dense_store(tmp_path_factory):
    """A 3-way rank-3 tensor with 5 % noise, chunked on all three modes."""
    path = str(tmp_path_factory.mktemp("data") / "tensor.zarr")
    planted_cp_zarr(path, (60, 24, 18), 3, sparse_mode=0, density=0.5, noise=0.05,
                    random_state=2, chunks=(20, 12, 9), progress=False)
    return path


@pytest.fixture(scope="module")
def sparse_store(tmp_path_factory):
    """Mode 0 is long (600 rows) and sparse (2 % nonzeros per column): compressible."""
    path = str(tmp_path_factory.mktemp("data") / "sparse.zarr")
    planted_cp_zarr(path, (600, 20, 15), 3, sparse_mode=0, density=0.02, noise=0.02,
                    random_state=0, chunks=(200, 10, 15), progress=False)
    return path


@pytest.fixture(scope="module")
def dense_mode_store(tmp_path_factory):
    """The same shape, but mode 0 is 30 % dense: far too many nonzeros for 12 rows."""
    path = str(tmp_path_factory.mktemp("data") / "dense_mode.zarr")
    planted_cp_zarr(path, (600, 20, 15), 3, sparse_mode=0, density=0.3, noise=0.02,
                    random_state=0, chunks=(200, 10, 15), progress=False)
    return path


def _job(src, out, **factor):
    return {"cfact": {"input": {"path": src, "variable": "T"},
                      "factor": {"method": "cp", "rank": 3, **factor},
                      "output": {"path": out, "reconstruct": True}}}


def _measured(src, out):
    X = zarr.open_array(src, path="T")[...].astype(np.float64)
    R = xr.open_zarr(out, group="reconstruction")["reconstruction"].values
    return X, R, float(np.linalg.norm(X - R) / np.linalg.norm(X))


# --------------------------------------------------------------------------- 1. run + error
def test_cli_run_reconstruction_matches_numpy_within_the_certificate_tolerance(dense_store,
                                                                               tmp_path):
    before = tree_hash(dense_store)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_job(dense_store, "run.zarr", tol=1e-10, max_iter=200)))
    r = CliRunner().invoke(cli, ["run", str(job), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    out = str(tmp_path / "run.zarr")
    assert report["out"] == out and tree_hash(dense_store) == before
    meta = zarr.open_group(out, mode="r").attrs["cfact"]
    assert meta["complete"] and meta["stages"] == ["factor", "reconstruct"]
    # the run store's params record the N-way input
    assert meta["params"]["input"]["shape"] == [60, 24, 18]
    assert meta["params"]["input"]["chunks"] == [[20] * 3, [12] * 2, [9] * 2]
    X, R, measured = _measured(dense_store, out)
    cert = report["certificate"]
    assert cert["ok"] and 0 < cert["tolerance"] < 1e-4
    assert abs(cert["estimated_relative_error"] - measured) <= cert["tolerance"] * measured
    # the reconstruction's own statistics (same pass as the write) agree with numpy
    assert report["reconstruction"]["relative_error"] == pytest.approx(measured, rel=1e-9)
    # the stored factors are the model that was written
    res = cf.CPResult.from_zarr(out, "factors")
    np.testing.assert_allclose(res.to_tensor(), R, rtol=1e-5, atol=1e-6)
    # as good a fit as TensorLy's parafac (the noise floor is ~0.05)
    import tensorly as tl
    from tensorly.decomposition import parafac

    cp_tl = parafac(tl.tensor(X), 3, n_iter_max=500, tol=1e-10, init="svd")
    tl_err = np.linalg.norm(tl.cp_to_tensor(cp_tl) - X) / np.linalg.norm(X)
    assert measured <= tl_err * (1 + 1e-4)
    assert 0.03 < measured < 0.08


def test_sketched_mode_refit_error_is_exact_and_run_job_goes_through_run_method(sparse_store,
                                                                               tmp_path):
    out = str(tmp_path / "run.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cf.run_job(_job(sparse_store, out, sketch_mode=0, sketch_size=60,
                              nonnegative=True), progress=False)
    assert res.report["factor"]["recovery"] == "refit" and res.factors.mode is None
    assert [f.shape for f in res.factors.factors] == [(600, 3), (20, 3), (15, 3)]
    _, _, measured = _measured(sparse_store, out)
    cert = res.report["certificate"]
    assert cert["ok"] and "refit" in cert["basis"]
    assert res.report["factor"]["relative_error"] == cert["estimated_relative_error"]
    assert abs(cert["estimated_relative_error"] - measured) <= cert["tolerance"] * measured
    # the error of the sketched tensor's fit is not the full tensor's: both are reported
    assert cert["sketch_relative_error"] != pytest.approx(measured, rel=1e-3)


# --------------------------------------------------------------------------- 3. certificate
def test_sparse_recovery_certificate_quiet_when_it_works(sparse_store, tmp_path):
    out = str(tmp_path / "run.zarr")
    # sketch_size 90: measured 0.0206 against 0.0201 for the exact refit. At 60 the nnlasso
    # recovery measures 0.028, 1.41x the refit's error: the held-out rule of issue 18 (within
    # ~1.19x of the best reachable with the other factors) flags it; the former absolute slack
    # (1.5 x baseline + 0.05) did not
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cf.run_job(_job(sparse_store, out, sketch_mode=0, sketch_size=90,
                              nonnegative=True, recovery="nnlasso"), progress=False)
    cert = res.report["certificate"]
    _, _, measured = _measured(sparse_store, out)
    assert cert["ok"] and not cert["messages"] and cert["fix"] is None
    assert "hold-out" in cert["basis"]
    assert abs(cert["estimated_relative_error"] - measured) <= cert["tolerance"] * measured
    assert measured < 1.15 * 0.02  # the recovery is good: close to the 2 % noise


def test_sparse_recovery_certificate_flags_too_much_compression(dense_mode_store, tmp_path):
    out = str(tmp_path / "run.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cf.run_job(_job(dense_mode_store, out, sketch_mode=0, sketch_size=12,
                              nonnegative=True, recovery="nnlasso"), progress=False)
    cert = res.report["certificate"]
    _, _, measured = _measured(dense_mode_store, out)
    assert measured > 0.5  # the recovery really is poor
    assert not cert["ok"]
    assert "sketch_size = 12" in cert["messages"][0]
    assert "sketch_size" in cert["fix"] and "recovery: refit" in cert["fix"]
    assert abs(cert["estimated_relative_error"] - measured) <= cert["tolerance"] * measured
    # without a hold-out sketch the recovery's density check decides, and no error is claimed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        blind = cf.run_job(_job(dense_mode_store, str(tmp_path / "blind.zarr"), sketch_mode=0,
                                sketch_size=12, nonnegative=True, recovery="nnlasso",
                                holdout=0), progress=False)
    c = blind.report["certificate"]
    assert not c["ok"] and c["estimated_relative_error"] is None and c["tolerance"] is None
    assert "dense" in c["messages"][0] and blind.report["factor"]["relative_error"] is None
    # and the fix works: the same tensor and sketch, refit instead
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        good = cf.run_job(_job(dense_mode_store, str(tmp_path / "refit.zarr"), sketch_mode=0,
                               sketch_size=12, nonnegative=True), progress=False)
    assert good.report["certificate"]["ok"]
    assert good.report["certificate"]["estimated_relative_error"] < 0.2  # 0.8 above


def test_unsketched_certificate_flags_a_rank_too_low(dense_store, tmp_path):
    job = _job(dense_store, str(tmp_path / "r.zarr"), warn_above=0.1)
    job["cfact"]["factor"]["rank"] = 1
    res = cf.run_job(job, progress=False)
    cert = res.report["certificate"]
    assert not cert["ok"] and cert["estimated_relative_error"] > 0.1
    assert "factor.rank" in cert["fix"]


# --------------------------------------------------------------------------- 2. kill + resume
_KILL_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys, warnings
    import cfact_dask as cf
    from cfact_dask._runtime import checkpoint
    from cfact_dask.factor import _cp
    kill, src, out, mode, extra = sys.argv[1] == "kill", sys.argv[2], sys.argv[3], sys.argv[4], \\
        json.loads(sys.argv[5])
    saved, loaded, calls = [], [], [0]
    real_save, real_load, real_mttkrp = (checkpoint.Checkpoint.save, checkpoint.Checkpoint.load,
                                         _cp._Backend.mttkrp)
    def save(self, it, arrays, history=None):
        real_save(self, it, arrays, history)
        saved.append(it)
        if kill and len(saved) == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # the 2nd checkpoint is committed
    def load(self):
        st = real_load(self)
        loaded.append(None if st is None else st.iteration)
        return st
    def mttkrp(self, factors, m):
        calls[0] += 1
        return real_mttkrp(self, factors, m)
    checkpoint.Checkpoint.save, checkpoint.Checkpoint.load = save, load
    _cp._Backend.mttkrp = mttkrp
    warnings.simplefilter("ignore")
    job = {"cfact": {"input": {"path": src, "variable": "T"},
                     "factor": {"method": "cp", "rank": 3, "max_iter": 20, "tol": 0.0,
                                "checkpoint_every": 3, **extra},
                     "output": {"path": out, "reconstruct": True}}}
    cf.run_job(job, resume=mode == "resume", progress=False)
    print(json.dumps({"loaded": loaded, "mttkrp": calls[0]}))
""")


def _child(*args):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-c", _KILL_SCRIPT, *args], capture_output=True,
                          text=True, timeout=180, env=env)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("extra", [{}, {"sketch_mode": 0, "sketch_size": 60}],
                         ids=["full", "sketched-refit"])
def test_sigkill_after_second_checkpoint_then_resume_equals_uninterrupted(
        dense_store, sparse_store, tmp_path, extra):
    src = sparse_store if extra else dense_store
    ref, killed = str(tmp_path / "ref.zarr"), str(tmp_path / "killed.zarr")
    r = _child("plain", src, ref, "plain", json.dumps(extra))
    assert r.returncode == 0, r.stderr[-3000:]
    r = _child("kill", src, killed, "plain", json.dumps(extra))
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    meta = zarr.open_group(killed, mode="r").attrs["cfact"]
    assert not meta["complete"] and "factors" not in zarr.open_group(killed, mode="r")
    # 4. a resume with changed parameters is refused (the run store checks them)
    job = _job(src, killed, max_iter=20, tol=0.0, checkpoint_every=3, **extra)
    job["cfact"]["factor"]["rank"] = 2
    with pytest.raises(ResumeError, match="rank"):
        cf.run_job(job, resume=True, progress=False)
    r = _child("plain", src, killed, "resume", json.dumps(extra))
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    # it continued from the 2nd checkpoint (iteration 6): 14 of the 20 sweeps, 3 MTTKRPs each
    assert info["loaded"] == [6]
    assert info["mttkrp"] == 14 * 3
    assert zarr.open_group(killed, mode="r").attrs["cfact"]["complete"]
    # bitwise equal: the ALS state is saved in full (float64) and the small tensor (or its
    # sketch) is decomposed in memory in the same order of operations
    for arr in ["factors/weights", "factors/factor_0", "factors/factor_1", "factors/factor_2",
                "reconstruction/reconstruction"]:
        np.testing.assert_array_equal(zarr.open_array(killed, path=arr)[...],
                                      zarr.open_array(ref, path=arr)[...], err_msg=arr)
    a = zarr.open_group(killed, mode="r")["factors"].attrs["cfact"]
    b = zarr.open_group(ref, mode="r")["factors"].attrs["cfact"]
    assert a["errors"] == b["errors"] and len(a["errors"]) == 20


# --------------------------------------------------------------------------- N-way pieces
def test_write_reconstruction_three_way_on_an_irregular_chunk_grid(tmp_path):
    rng = np.random.default_rng(0)
    fs = [rng.standard_normal((s, 2)) for s in (30, 11, 7)]
    T = np.einsum("az,bz,cz->abc", *fs) + 0.01 * rng.standard_normal((30, 11, 7))
    inp = cf.open_array(da.from_array(T, chunks=((12, 18), (4, 7), (7,))))
    res = cf.cp(T, 2, tol=1e-10, max_iter=200)
    R = cp_model(res, inp)
    assert R.chunks == inp.chunks and R.dtype == np.float64
    # one task per output chunk (beside the factors' own row blocks)
    assert len([k for k in dict(R.__dask_graph__()) if k[0] == R.name]) == 4
    st = write_reconstruction(R, str(tmp_path / "r.zarr"), inp, inp)
    back = zarr.open_group(str(tmp_path / "r.zarr"), mode="r")["reconstruction"][...]
    np.testing.assert_allclose(back, res.to_tensor(), rtol=1e-12, atol=1e-12)
    assert st.relative_error == pytest.approx(
        np.linalg.norm(T - back) / np.linalg.norm(T), rel=1e-10)
    assert st.relative_error == pytest.approx(res.errors[-1], rel=1e-6)
    assert st.chunk_relative_error.shape == (2, 2, 1)


def test_matrix_input_refused_before_compute(tmp_path):
    with pytest.raises(InputError, match="tensors of order >= 3"):
        run_method(np.ones((5, 4)), 2, {"method": "cp"})


# --------------------------------------------------------------------------- 5. schema + job file
def test_factor_section_validated(dense_store, tmp_path):
    ok = validate_job(_job(dense_store, "o.zarr", sketch_mode=1, sketch_size=8,
                           recovery="lasso"))
    assert ok["factor"]["sketch_kind"] == "expander" and ok["factor"]["holdout"] == 32
    assert ok["sketch"] is None and ok["recover"] is None
    for bad, match in [({"colour": 1}, "colour"),
                       ({"sketch_size": 8}, "sketch_mode' is null"),
                       ({"sketch_mode": 0}, "sketch_size"),
                       ({"sketch_mode": 0, "sketch_size": 8, "recovery": "magic"}, "recovery"),
                       ({"sketch_mode": 0, "sketch_size": 8, "recovery": "lstsq-data"}, "refit"),
                       ({"sketch_mode": 0, "sketch_size": 8, "recovery": "omp"}, "sparsity"),
                       ({"sketch_mode": 0, "sketch_size": 8, "sketch_kind": "x"}, "sketch_kind"),
                       ({"init": "nndsvda"}, "init"),
                       ({"nonnegative": 1}, "nonnegative")]:
        with pytest.raises(ConfigError, match=match):
            validate_job(_job(dense_store, "o.zarr", **bad))
    job = _job(dense_store, "o.zarr")
    job["cfact"]["sketch"] = {"n_components": 5}
    with pytest.raises(ConfigError, match="does not apply"):
        validate_job(job)
    # the sketched mode against the tensor's order: checked before anything is computed
    out = str(tmp_path / "never.zarr")
    with pytest.raises(ConfigError, match="has 3 modes"):
        cf.run_job(_job(dense_store, out, sketch_mode=3, sketch_size=8), progress=False)
    with pytest.raises(ConfigError, match="below the size 24 of mode 1"):
        cf.run_job(_job(dense_store, out, sketch_mode=1, sketch_size=24), progress=False)
    assert not os.path.exists(out)


def test_deploy_job_file_validates():
    job = load_job(os.path.join(ROOT, "deploy", "config", "job-cp.yaml"))
    assert job["factor"]["method"] == "cp" and job["factor"]["sketch_mode"] == 0
    assert job["factor"]["recovery"] == "nnlasso" and job["output"]["reconstruct"]
