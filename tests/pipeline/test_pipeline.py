"""The Factorize-Recover pipeline, job files, resume, the planner and the pipeline CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings

import dask
import numpy as np
import pytest
import xarray as xr
import yaml
import zarr
from click.testing import CliRunner
from conftest import stop_processes, tree_hash

import cfact_dask as cf
from cfact_dask.cli import cli
from cfact_dask.datasets import planted_nmf, planted_nmf_zarr
from cfact_dask.errors import ConfigError, ResumeError, StoreExistsError
from cfact_dask.metrics import match_factors
from cfact_dask.pipeline.job import validate_job

_tree_hash = tree_hash


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "input.zarr"
    planted_nmf_zarr(str(path), 600, 300, 4, density=0.05, noise=0.05, random_state=1,
                     chunks=(150, 100), progress=False)
    return str(path)


def _job(src, out, **over):
    job = {"cfact": {
        "input": {"path": src, "variable": "M"},
        "sketch": {"n_components": 150, "kind": "expander", "seed": 0},
        "factor": {"method": "nmf", "rank": 4, "max_iter": 300},
        "recover": {"method": "auto"},
        "output": {"path": out, "reconstruct": True},
    }}
    for k, v in over.items():
        job["cfact"][k].update(v)
    return job


def test_pipeline_end_to_end_store_layout_and_input_untouched(planted_store, tmp_path):
    before = _tree_hash(planted_store)
    out = str(tmp_path / "run.zarr")
    res = cf.run_job(_job(planted_store, out), progress=False)
    assert _tree_hash(planted_store) == before  # the input is never written
    root = zarr.open_group(out, mode="r")
    meta = root.attrs["cfact"]
    assert meta["type"] == "run" and meta["complete"]
    assert meta["stages"] == ["sketch", "factor", "recover", "reconstruct"]
    for g in ("sketch", "holdout", "factors", "recovered", "reconstruction"):
        assert g in root
    # every stage is readable with xarray
    ds = xr.open_zarr(out, group="reconstruction", consolidated=False)
    assert ds["reconstruction"].shape == (600, 300)
    sk = xr.open_zarr(out, group="sketch", consolidated=False)
    assert sk["sketch"].shape == (150, 300)
    # against the planted truth
    g = zarr.open_group(planted_store, mode="r")
    match = match_factors(np.asarray(g["W"][...]), res.W.compute(), np.asarray(g["H"][...]),
                          np.asarray(res.H))
    assert match.mean_corr_W > 0.95 and match.mean_corr_H > 0.95
    M = np.asarray(g["M"][...])
    rel = res.report["reconstruction"]["relative_error"]
    np.testing.assert_allclose(
        rel, np.linalg.norm(M - res.W.compute() @ np.asarray(res.H)) / np.linalg.norm(M),
        rtol=1e-4,
    )
    assert rel < 0.1


def test_resume_skips_done_stages_and_refuses_changed_params(planted_store, tmp_path,
                                                             monkeypatch):
    out = str(tmp_path / "run.zarr")
    job = _job(planted_store, out, output={"reconstruct": False})
    first = cf.run_job(job, progress=False)
    with pytest.raises(StoreExistsError, match="resume"):
        cf.run_job(job, progress=False)
    # a resumed run must not sketch or factorize again
    import cfact_dask.pipeline._run as pl

    def boom(*a, **k):
        raise AssertionError("stage ran again")

    monkeypatch.setattr(pl, "sketch", boom)
    monkeypatch.setattr(sys.modules["cfact_dask.factor._nmf"], "nmf", boom)
    again = cf.run_job(job, resume=True, progress=False)
    np.testing.assert_allclose(again.W.compute(), first.W.compute())
    changed = _job(planted_store, out, output={"reconstruct": False},
                   factor={"rank": 3})
    with pytest.raises(ResumeError, match="rank"):
        cf.run_job(changed, resume=True, progress=False)


def test_resume_after_interrupted_factorization_equals_uninterrupted(planted_store, tmp_path):
    """Stop the factorization half-way (as a wall-time kill would), then resume from the store."""
    with pytest.warns(cf.ConvergenceWarning):
        ref = cf.factorize_recover(cf.open_array(planted_store, variable="M"), 4,
                                   sketch=dict(n_components=150),
                                   factor=dict(tol=0, max_iter=60), recover="none",
                                   out=str(tmp_path / "ref.zarr"), progress=False)
    out = str(tmp_path / "run.zarr")

    class Stop(Exception):
        pass

    def stop_at_35(state):
        if state["iteration"] == 35:
            raise Stop

    kw = dict(sketch=dict(n_components=150), factor=dict(tol=0, max_iter=60,
                                                         checkpoint_every=10),
              recover="none", out=out, progress=False)
    with pytest.raises(Stop), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cf.factorize_recover(cf.open_array(planted_store, variable="M"), 4,
                             callback=stop_at_35, **kw)
    assert zarr.open_group(out, mode="r").attrs["cfact"]["stages"] == ["sketch"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = cf.factorize_recover(cf.open_array(planted_store, variable="M"), 4, resume=True,
                                   **kw)
    np.testing.assert_allclose(res.factors.W, ref.factors.W, rtol=1e-10, atol=1e-12)
    assert res.factors.n_iter_ == ref.factors.n_iter_ == 60


def test_auto_recovery_falls_back_when_data_too_dense(tmp_path):
    M, W, H = planted_nmf(400, 200, 4, density=0.5, noise=0.05, random_state=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cf.ConvergenceWarning)
        res = cf.factorize_recover(M, 4, sketch=dict(n_components=60), recover="auto",
                                   progress=False)
    assert res.recovery.method == "lstsq-data"
    # the exact pass: its error is measured, not estimated, and beats the sparse attempt
    cert = res.recovery.certificate
    assert cert.exact_error is not None
    assert cert.exact_error < 0.3


def test_progress_is_shown_on_a_real_cluster(cluster_client, planted_store, capsys, caplog,
                                             monkeypatch):
    import logging

    from cfact_dask._runtime import cluster as cl

    # stderr a file or a pipe (as under pytest): one plain line per stage, no bar, no stdout
    with caplog.at_level(logging.INFO, logger="cfact_dask"):
        res = cf.factorize_recover(cf.open_array(planted_store, variable="M"), 4,
                                   sketch=dict(n_components=150), recover="none",
                                   client=cluster_client, progress=True)
    assert res.sketch.shape == (150, 300)
    captured = capsys.readouterr()
    assert captured.out == "" and "Completed" not in captured.err
    assert "sketching (one pass over the input)" in caplog.text
    # stderr a terminal: the bar, on stderr only (the report owns stdout)
    monkeypatch.setattr(cl, "_bars", lambda: True)
    for client in (cluster_client, None):
        cf.factorize_recover(cf.open_array(planted_store, variable="M"), 4,
                             sketch=dict(n_components=150), recover="none",
                             client=client, progress=True)
        captured = capsys.readouterr()
        assert "Completed" not in captured.out
        if client is not None:  # dask's local bar shows only passes longer than 1 s
            assert "100% Completed" in captured.err


# ---------------------------------------------------------------------------- job files
GOOD = {"cfact": {"input": {"path": "in.zarr"}, "sketch": {"n_components": 10},
                  "factor": {"rank": 2}, "output": {"path": "out.zarr"}}}


def _bad(mutate):
    job = json.loads(json.dumps(GOOD))
    mutate(job["cfact"])
    return job


@pytest.mark.parametrize("mutate, match", [
    (lambda j: j.update(extra={}), r"unknown section\(s\) \['extra'\]"),
    (lambda j: j["sketch"].update(n_component=5), r"unknown key\(s\) \['n_component'\] in 'cfact.sketch'"),
    (lambda j: j["sketch"].update(n_components="400"), r"'cfact.sketch.n_components' must be int"),
    (lambda j: j["factor"].update(rank=2.5), r"'cfact.factor.rank' must be int"),
    (lambda j: j["factor"].update(rank=0), r"must be >= 1"),
    (lambda j: j["sketch"].update(kind="hadamard"), r"choose one of"),
    (lambda j: j["output"].update(reconstruct="yes"), r"must be bool"),
    (lambda j: j.pop("input"), r"'cfact.input.path' is required"),
    (lambda j: j["recover"].update(method="magic") if "recover" in j else
     j.update(recover={"method": "magic"}), r"choose one of"),
    (lambda j: j.update(sketch=[1, 2]), r"must be a mapping"),
])
def test_job_validation_table(mutate, match):
    with pytest.raises(ConfigError, match=match):
        validate_job(_bad(mutate))


def test_job_paths_outside_allowed_root(tmp_path):
    job = json.loads(json.dumps(GOOD))
    job["cfact"]["input"]["path"] = "/etc/passwd"
    with dask.config.set({"cfact.run.allowed-root": str(tmp_path)}):
        with pytest.raises(ConfigError, match="outside the allowed root"):
            validate_job(job)
        job["cfact"]["input"]["path"] = str(tmp_path / "in.zarr")
        job["cfact"]["output"]["path"] = str(tmp_path / "sub" / ".." / ".." / "escape.zarr")
        with pytest.raises(ConfigError, match="'cfact.output.path'"):
            validate_job(job)


def test_cli_run_json_and_bad_job(planted_store, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_job(planted_store, "run.zarr",
                                       output={"reconstruct": False})))
    r = CliRunner().invoke(cli, ["run", str(job), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["out"] == str(tmp_path / "run.zarr")  # relative to the job file
    assert report["sketch"]["compression"] == 4.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("cfact:\n  input: {path: x.zarr}\n  sketch: {n_components: 5, colour: red}\n")
    r = CliRunner().invoke(cli, ["run", str(bad)])
    assert r.exit_code != 0 and "colour" in r.output


def test_plan_predicts_and_warns(planted_store, tmp_path):
    job = _job(planted_store, str(tmp_path / "o.zarr"))
    p = cf.plan(job, n_workers=2, threads_per_worker=1, memory_limit=2**30)
    assert p.total_passes == 2  # the sketch, and the reconstruction's comparison pass
    # recover: auto reads the data once more when it falls back to lstsq-data, then refits H
    # and W against it: data this small is read once, and the exact pass and the refinement
    # run in memory on that read ...
    assert p.max_passes == 3 and "+ 1 if recover: auto falls back" in str(p)
    plain = cf.plan(_job(planted_store, str(tmp_path / "o.zarr"), recover={"refine": 0}),
                    n_workers=2, threads_per_worker=1, memory_limit=2**30)
    assert plain.max_passes == 3 and "+ 1 if recover: auto falls back" in str(plain)
    # ... larger data takes up to recover.refine (2) rounds, each one read for data chunked
    # along the samples only, two otherwise (here: both axes)
    with dask.config.set({"cfact.als.local-max-bytes": 0}):
        big = cf.plan(job, n_workers=2, threads_per_worker=1, memory_limit=2**30)
        by_samples = str(tmp_path / "by_samples.zarr")
        planted_nmf_zarr(by_samples, 600, 300, 4, density=0.05, noise=0.05, random_state=1,
                         chunks=(600, 100), progress=False)
        one_read = cf.plan(_job(by_samples, str(tmp_path / "o.zarr")),
                           n_workers=2, threads_per_worker=1, memory_limit=2**30)
    assert big.max_passes == 7 and "+ 5 if recover: auto falls back" in str(big)
    assert one_read.max_passes == 5 and "+ 3 if recover: auto falls back" in str(one_read)
    exact = cf.plan(_job(planted_store, str(tmp_path / "o.zarr"),
                         recover={"method": "nnlasso"}), n_workers=2)
    assert exact.max_passes == exact.total_passes == 2
    assert p.bytes_read == 2 * 600 * 300 * 4
    assert p.outputs["reconstruction"] == 600 * 300 * 4
    assert not p.warnings
    tiny = cf.plan(job, n_workers=2, threads_per_worker=1, memory_limit=100_000)
    assert tiny.warnings and "limit" in tiny.warnings[0]
    jf = tmp_path / "job.yaml"
    jf.write_text(yaml.safe_dump(job))
    r = CliRunner().invoke(cli, ["plan", str(jf), "--memory-limit", "100kB"])
    assert r.exit_code == 0 and "WARNING" in r.output and "passes over the input: 2" in r.output


# ---------------------------------------------------------------------------- a real cluster
def _wait_workers(sched_file, n, timeout=60):
    from distributed import Client

    t0 = time.time()
    while not os.path.exists(sched_file):
        if time.time() - t0 > timeout:
            raise TimeoutError("scheduler did not start")
        time.sleep(0.2)
    with Client(scheduler_file=sched_file, timeout=30) as c:
        c.wait_for_workers(n, timeout=timeout)


def test_cfact_run_on_subprocess_cluster(planted_store, tmp_path):
    """`python -m dask scheduler` + two `python -m dask worker` processes, `cfact run` on them."""
    sched_file = str(tmp_path / "scheduler.json")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
         "--dashboard-address", ":0", "--scheduler-file", sched_file],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    try:
        time.sleep(0.5)
        for _ in range(2):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "dask", "worker", "--scheduler-file", sched_file,
                 "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard",
                 "--memory-limit", "1GiB"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        _wait_workers(sched_file, 2)
        job = tmp_path / "job.yaml"
        job.write_text(yaml.safe_dump(_job(planted_store, "run.zarr")))
        r = subprocess.run(
            [sys.executable, "-m", "cfact_dask.cli", "run", str(job), "--scheduler-file",
             sched_file, "--json"], capture_output=True, text=True, timeout=240, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        report = json.loads(r.stdout)
        assert report["reconstruction"]["relative_error"] < 0.1
        root = zarr.open_group(str(tmp_path / "run.zarr"), mode="r")
        assert root.attrs["cfact"]["complete"]
        assert root["reconstruction"]["reconstruction"].shape == (600, 300)
    finally:
        stop_processes(procs)


def test_cli_run_writes_plots(planted_store, tmp_path):
    pytest.importorskip("matplotlib")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_job(planted_store, "run.zarr",
                                       output={"reconstruct": False})))
    plots = tmp_path / "plots"
    r = CliRunner().invoke(cli, ["run", str(job), "--json", "--plots", str(plots)])
    assert r.exit_code == 0, r.output
    files = json.loads(r.output)["plots"]
    assert {os.path.basename(f) for f in files} == {"convergence.png", "factors.png"}
    for f in files:
        with open(f, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
