"""The pipeline of every method other than NMF (issue 16): job validation per method, the run
store's records and the report, shown with ``svd`` (each method has its own test file)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

import cfact_dask as cf
from cfact_dask.errors import ConfigError, ResumeError
from cfact_dask.pipeline._methods import job_methods, method_options
from cfact_dask.pipeline.job import validate_job


def _store(tmp_path, shape=(300, 120), chunks=(100, 60), rank=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((shape[0], rank)) @ rng.standard_normal((rank, shape[1]))
    X += 0.01 * rng.standard_normal(shape)
    p = str(tmp_path / "in.zarr")
    z = zarr.create_array(p, shape=shape, chunks=chunks, dtype="f8")
    z[:] = X
    return p, X


def _job(src, out, **factor):
    return {"cfact": {"input": {"path": src}, "factor": {"method": "svd", "rank": 4, **factor},
                      "output": {"path": out, "reconstruct": True}}}


def test_factor_section_is_validated_per_method(tmp_path):
    job = _job("in.zarr", "run.zarr")
    # a key of another method (NMF's solver) is refused for svd, naming svd's own keys
    job["cfact"]["factor"]["solver"] = "hals"
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['solver'\].*svd.*passes"):
        validate_job(job, check_paths=False)
    # svd does not iterate: no max_iter
    with pytest.raises(ConfigError, match="max_iter"):
        validate_job(_job("in.zarr", "run.zarr", max_iter=5), check_paths=False)
    # a sketch / recover section belongs to the methods that have those stages
    for section in ("sketch", "recover"):
        job = _job("in.zarr", "run.zarr")
        job["cfact"][section] = {"method": "auto"} if section == "recover" else {
            "n_components": 10}
        with pytest.raises(ConfigError, match=f"'cfact.{section}' does not apply.*'svd'"):
            validate_job(job, check_paths=False)
    with pytest.raises(ConfigError, match="passes' must be 1 or 2"):
        validate_job(_job("in.zarr", "run.zarr", passes=3), check_paths=False)
    ok = validate_job(_job("in.zarr", "run.zarr"), check_paths=False)
    assert ok["sketch"] is None and ok["recover"] is None
    assert set(ok["factor"]) == set(method_options("svd"))
    # NMF's job keeps its sections and defaults
    nmf = validate_job({"cfact": {"input": {"path": "a.zarr"}, "sketch": {"n_components": 9},
                                  "factor": {"rank": 2}, "output": {"path": "b.zarr"}}},
                       check_paths=False)
    assert nmf["factor"]["solver"] == "hals" and nmf["sketch"]["kind"] == "expander"
    with pytest.raises(ConfigError, match="n_components' is required"):
        validate_job({"cfact": {"input": {"path": "a.zarr"}, "factor": {"rank": 2},
                                "output": {"path": "b.zarr"}}}, check_paths=False)


def test_every_job_method_runs_through_a_pipeline():
    from cfact_dask.pipeline._generic import stages_of
    from cfact_dask.pipeline._methods import get

    assert set(job_methods()) >= {"nmf", "semi-nmf", "svd", "sparse-pca", "cp", "dgd-local", "lp",
                                  "messi"}
    for m in job_methods():
        spec = get(m)
        assert spec.pipeline or stages_of(m) is not None, m


def test_run_store_records_report_and_resume(tmp_path):
    src, X = _store(tmp_path)
    out = str(tmp_path / "run.zarr")
    res = cf.run_job(_job(src, out))
    meta = zarr.open_group(out, mode="r").attrs["cfact"]
    assert meta["complete"] and meta["stages"] == ["factor", "reconstruct"]
    assert meta["params"]["factor"]["method"] == "svd"
    cert = res.report["certificate"]
    assert cert["ok"] and cert["basis"]
    R = zarr.open_array(out, path="reconstruction/reconstruction")[...]
    exact = np.linalg.norm(X - R) / np.linalg.norm(X)
    assert res.report["reconstruction"]["relative_error"] == pytest.approx(exact, rel=1e-6)
    assert abs(cert["estimated_relative_error"] - exact) <= cert["tolerance"] * exact
    # W H view and labels
    ds = res.to_xarray()
    np.testing.assert_allclose((ds.W.values @ ds.H.values), R, atol=1e-8)
    assert "svd" in repr(res) and "certificate" in res._repr_html_()
    # a resume of the finished run with other parameters is refused; with the same, it is a
    # no-op that returns the same report
    with pytest.raises(ResumeError, match="different parameters"):
        cf.run_job(_job(src, out, passes=2), resume=True)
    again = cf.run_job(_job(src, out), resume=True)
    assert again.report["certificate"] == cert


def test_run_method_python_entry_point(tmp_path):
    src, X = _store(tmp_path)
    res = cf.run_method(src, 4, {"method": "svd", "n_test": 32})
    assert res.out is None and res.report["certificate"]["ok"]
    with pytest.raises(ConfigError, match="needs out="):
        cf.run_method(src, 4, {"method": "svd"}, reconstruct=True)
    with pytest.raises(ConfigError, match="unknown key"):
        cf.run_method(src, 4, {"method": "svd", "alpha": 1.0})


@pytest.mark.parametrize("method", ["svd", "sparse-pca"])
def test_cli_run_with_plots_and_json_for_other_methods(tmp_path, method):
    """`cfact run --plots DIR --json` for a method of the generic pipeline: the figures its
    result has (sparse PCA's convergence history, a heatmap of W) and one JSON report."""
    import json

    import yaml
    from click.testing import CliRunner

    from cfact_dask.cli import cli

    src, _ = _store(tmp_path)
    job = _job(src, str(tmp_path / "run.zarr"))
    job["cfact"]["factor"] = {"method": method, "rank": 4}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    r = CliRunner().invoke(cli, ["run", str(tmp_path / "job.yaml"), "--plots",
                                 str(tmp_path / "plots"), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output[r.output.index("{"):])
    assert rep["factor"]["method"] == method and rep["certificate"]["ok"]
    assert rep["plots"] and all(os.path.exists(p) for p in rep["plots"])
    assert any(p.endswith("factors.png") for p in rep["plots"])
    # sparse PCA iterates: its objective's history is plotted too
    assert any(p.endswith("convergence.png") for p in rep["plots"]) == (method == "sparse-pca")
