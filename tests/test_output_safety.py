"""The output-safety policy (issue: nothing a user owns is ever lost).

A table over every writing entry point x where the output points (the input, inside it, around
it, the input's parent folder, a folder of other files, a plain file, a foreign Zarr store, an
incomplete cfact store) x how it is spelled (plain path, ``file://`` URL) x with and without
overwrite: each case is refused before anything is written, or (the incomplete cfact store)
handled, and the input and every foreign file hash the same afterwards.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import cfact_dask as cf
from cfact_dask.cli import cli
from cfact_dask.errors import CfactError, OutputError, ResumeError, StoreExistsError

N, M = 120, 40


def _tree_hash(path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            full = os.path.join(dirpath, f)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _world(tmp_path):
    """tmp/data/in.zarr (the input), tmp/data/notes.txt beside it, a folder of the user's files,
    a plain file, a foreign Zarr store and an incomplete cfact run store."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    X = np.abs(rng.standard_normal((N, M))).astype(np.float64)
    z = zarr.create_array(str(data / "in.zarr"), shape=X.shape, chunks=(40, 20), dtype=X.dtype)
    z[...] = X
    (data / "notes.txt").write_text("my notes")
    thesis = tmp_path / "thesis"
    (thesis / "sub").mkdir(parents=True)
    (thesis / "thesis.tex").write_text("\\documentclass{article}")
    (thesis / "sub" / "data.csv").write_text("a,b\n1,2\n")
    (tmp_path / "file.txt").write_text("a plain file")
    g = zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w")
    g.create_array("x", shape=(3,), dtype="f8")[...] = [1, 2, 3]
    inc = zarr.open_group(str(tmp_path / "incomplete.zarr"), mode="w", zarr_format=3)
    inc.attrs["cfact"] = {"type": "run", "params": {}, "stages": [], "complete": False}
    tmpg = inc.create_group("sketch.cfact-tmp-0123456789ab")
    tmpg.attrs["cfact"] = {"type": "sketch", "complete": False}
    return X


CASES = {
    "output-is-input": lambda t: t / "data" / "in.zarr",
    "output-inside-input": lambda t: t / "data" / "in.zarr" / "sub.zarr",
    "input-inside-output": lambda t: t,
    "output-is-inputs-parent": lambda t: t / "data",
    "non-zarr-folder": lambda t: t / "thesis",
    "plain-file": lambda t: t / "file.txt",
    "foreign-zarr": lambda t: t / "foreign.zarr",
    "incomplete-cfact-store": lambda t: t / "incomplete.zarr",
}


def _quiet():
    warnings.simplefilter("ignore", cf.ConvergenceWarning)
    warnings.simplefilter("ignore", cf.RecoveryWarning)


# each writer: (out, input path, overwrite) -> None; raises (API) or returns an exit code (CLI)
def _w_sketch(out, src, ow):
    cf.sketch(cf.open_array(src), 30, seed=1).to_zarr(out, "sketch", overwrite=ow, progress=False)


def _w_run(out, src, ow):
    with warnings.catch_warnings():
        _quiet()
        cf.factorize_recover(cf.open_array(src), 3, sketch=dict(n_components=40, holdout=8),
                             factor=dict(max_iter=5), recover="lstsq-data", out=out,
                             overwrite=ow, progress=False)


def _w_reconstruct(out, src, ow):
    rng = np.random.default_rng(1)
    cf.reconstruct(rng.random((N, 3)), rng.random((3, M)), out, like=src, overwrite=ow,
                   progress=False)


def _w_nmf_to_zarr(out, src, ow):
    with warnings.catch_warnings():
        _quiet()
        res = cf.nmf(cf.open_array(src), 3, max_iter=3)
    res.to_zarr(out, "factors", overwrite=ow)


def _w_save_factors(out, src, ow):
    f = cf.nn.compress_embedding(np.asarray(zarr.open_array(src)[...]), 0.5, "svd")
    cf.save_factors(f, out, overwrite=ow, inputs=[src])


def _cli(args):
    with warnings.catch_warnings():
        _quiet()
        r = CliRunner().invoke(cli, args, catch_exceptions=True)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r


def _w_cli_sketch(out, src, ow):
    return _cli(["sketch", src, out, "-d", "30", "-q"] + (["--overwrite"] if ow else []))


def _w_cli_factor(out, src, ow):
    return _cli(["factor", src, "--method", "nmf", "--rank", "3", "--max-iter", "3", "--out",
                 out, "-q"] + (["--overwrite"] if ow else []))


def _w_cli_dgd(out, src, ow):
    return _cli(["factor-dgd", src, "--rank", "2", "--nodes", "2", "--max-iter", "3", "-o", out,
                 "-q"] + (["--overwrite"] if ow else []))


def _w_cli_embed(out, src, ow):
    return _cli(["compress-embedding", src, "--rate", "0.5", "--method", "svd", "--out", out,
                 "-q"] + (["--overwrite"] if ow else []))


_RECON_RUN: dict[str, str] = {}


def _w_cli_reconstruct(out, src, ow):
    return _cli(["reconstruct", _RECON_RUN["store"], "--like", src, "--out", out, "-q"]
                + (["--overwrite"] if ow else []))


def _w_cli_run(out, src, ow):
    import tempfile

    import yaml

    job = os.path.join(tempfile.mkdtemp(prefix="cfact-job-"), "job.yaml")  # outside the tree

    with open(job, "w") as f:
        yaml.safe_dump({"cfact": {"input": {"path": src},
                                  "sketch": {"n_components": 40, "holdout": 8},
                                  "factor": {"rank": 3, "max_iter": 5},
                                  "recover": {"method": "lstsq-data"},
                                  "output": {"path": out}}}, f)
    with warnings.catch_warnings():
        _quiet()
        return _cli(["run", job, "-q"] + (["--overwrite"] if ow else []))


WRITERS = {
    "sketch.to_zarr": _w_sketch,
    "factorize_recover": _w_run,
    "reconstruct": _w_reconstruct,
    "NMFResult.to_zarr": _w_nmf_to_zarr,
    "save_factors": _w_save_factors,
    "cfact sketch": _w_cli_sketch,
    "cfact factor": _w_cli_factor,
    "cfact factor-dgd": _w_cli_dgd,
    "cfact compress-embedding": _w_cli_embed,
    "cfact reconstruct --out": _w_cli_reconstruct,
    "cfact run": _w_cli_run,
}


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("url", [False, True], ids=["path", "file-url"])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_every_writer_refuses_unsafe_outputs(tmp_path, writer, url, overwrite):
    _world(tmp_path)
    src = str(tmp_path / "data" / "in.zarr")
    if writer == "cfact reconstruct --out":
        store = str(tmp_path / "runs" / "r.zarr")
        os.makedirs(os.path.dirname(store))
        _w_run(store, src, False)
        _RECON_RUN["store"] = store
    fn = WRITERS[writer]
    for case, where in CASES.items():
        target = where(tmp_path)
        spelled = f"file://{target}" if url else str(target)
        before = _tree_hash(tmp_path)
        incomplete = case == "incomplete-cfact-store"
        try:
            r = fn(spelled, src, overwrite)
            code = 0 if r is None else r.exit_code
            text = "" if r is None else r.output
        except CfactError as e:
            code, text = 1, str(e)
        after = _tree_hash(tmp_path)
        if incomplete:
            assert code == 0, f"{writer} / {case}: {text}"
            # the foreign files and the input are untouched; the temporaries are gone
            for k, v in before.items():
                if not k.startswith("incomplete.zarr"):
                    assert after.get(k) == v, f"{writer} / {case} changed {k}"
            # a run (or a writer of the whole store, or of the same group) removes what the
            # killed write left; writers of another group leave other groups' temporaries alone
            if writer not in ("NMFResult.to_zarr", "cfact factor", "cfact factor-dgd"):
                assert not any(".cfact-tmp-" in k for k in after), f"{writer} left temporaries"
            continue
        assert code == 1, f"{writer} / {case} / {spelled}: not refused (exit {code}): {text}"
        assert after == before, f"{writer} / {case} changed files: " + str(
            sorted(set(before) ^ set(after)) or [k for k in before if before[k] != after[k]])
        assert "Traceback" not in text
        # one paragraph naming the place and the fix
        assert "\n" not in text.strip().replace("Error: ", "", 1).strip()
        assert str(target) in text or os.path.realpath(target) in text or spelled in text, text


def test_overwrite_replaces_only_cfact_stores_and_never_user_files_inside_them(tmp_path):
    _world(tmp_path)
    src = str(tmp_path / "data" / "in.zarr")
    out = str(tmp_path / "run.zarr")
    _w_run(out, src, False)
    with pytest.raises(StoreExistsError, match="--overwrite"):
        _w_run(out, src, False)
    _w_run(out, src, True)  # cfact's own finished store: replaced
    (tmp_path / "run.zarr" / "readme.txt").write_text("the user's")
    h = _tree_hash(tmp_path)
    with pytest.raises(OutputError, match="readme.txt"):
        _w_run(out, src, True)
    assert _tree_hash(tmp_path) == h


def test_debris_of_a_killed_write_inside_a_cfact_store_is_not_taken_for_user_files(tmp_path):
    """A SIGKILL while zarr deletes or writes a node leaves a folder of chunk files without
    metadata (zarr deletes the metadata first): the store is still cfact's, and a rerun or
    --overwrite may proceed; a file with another name is still the user's."""
    _world(tmp_path)
    src = str(tmp_path / "data" / "in.zarr")
    out = tmp_path / "run.zarr"
    _w_run(str(out), src, False)
    debris = out / "checkpoint" / "factors" / "iter_00000025" / "W" / "c" / "0"
    debris.mkdir(parents=True)
    (debris / "0").write_bytes(b"chunk")
    (out / "factors" / "half").mkdir()  # an empty folder: a node whose metadata never came
    _w_run(str(out), src, True)  # accepted (the debris goes with the store it belongs to)
    (out / "factors" / "notes").mkdir()
    (out / "factors" / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(OutputError, match="todo.txt|notes"):
        _w_run(str(out), src, True)


def test_incomplete_groups_are_invisible_to_plain_readers_and_replaced(tmp_path):
    import xarray as xr

    _world(tmp_path)
    src = str(tmp_path / "data" / "in.zarr")
    out = str(tmp_path / "o.zarr")
    # a sketch group left by a killed write (as the writer lays it out before the rename)
    root = zarr.open_group(out, mode="w", zarr_format=3)
    root.attrs["cfact"] = {"type": "store"}
    left = root.create_group("sketch.cfact-tmp-deadbeef0000")
    left.attrs.update({"cfact": {"type": "sketch", "complete": False},
                       "cfact_incomplete": "NOT complete"})
    with pytest.raises(Exception):  # noqa: B017 - plain xarray: there is no 'sketch' yet
        xr.open_zarr(out, group="sketch", consolidated=False)
    _w_sketch(out, src, False)  # no --overwrite needed; the temporary is removed
    assert sorted(zarr.open_group(out, mode="r").group_keys()) == ["sketch"]
    ds = xr.open_zarr(out, group="sketch", consolidated=False)
    assert "cfact_incomplete" not in ds.attrs and ds.attrs["cfact"]["complete"]


def test_replacing_an_upstream_group_removes_what_was_computed_from_it(tmp_path):
    _world(tmp_path)
    src = str(tmp_path / "data" / "in.zarr")
    out = str(tmp_path / "run.zarr")
    with warnings.catch_warnings():
        _quiet()
        cf.factorize_recover(src, 3, sketch=dict(n_components=40, holdout=8),
                             factor=dict(max_iter=5), recover="lstsq-data", out=out,
                             reconstruct=True, progress=False)
    groups = set(zarr.open_group(out, mode="r").group_keys())
    assert {"sketch", "factors", "recovered", "reconstruction"} <= groups
    # recover without --overwrite: refused, exit 1, nothing changed
    h = _tree_hash(out)
    r = _cli(["recover", out, "--method", "lstsq-data", "--data", src, "-q"])
    assert r.exit_code == 1 and "--overwrite" in r.output, r.output
    assert _tree_hash(out) == h
    # with --overwrite: replaced, and the reconstruction computed from the old W is removed
    r = _cli(["recover", out, "--method", "lstsq-data", "--data", src, "-q",
                                 "--overwrite"])
    assert r.exit_code == 0, r.output
    assert "reconstruction" not in set(zarr.open_group(out, mode="r").group_keys())
    # a recovered group whose recorded factors id no longer matches is refused as stale
    g = zarr.open_group(out, path="factors", mode="r+")
    meta = dict(g.attrs["cfact"])
    meta["id"] = "0" * 32
    g.attrs["cfact"] = meta
    r = _cli(["reconstruct", out, "--like", src, "-q"])
    assert r.exit_code == 1 and "stale" in r.output, r.output


def test_factor_refuses_an_existing_output_before_computing(tmp_path):
    _world(tmp_path)
    src = str(tmp_path / "data" / "in.zarr")
    out = str(tmp_path / "s.zarr")
    _w_sketch(out, src, False)
    r = _cli(["factor", out, "--rank", "3", "--out", out, "--out-group",
                                 "factors", "--max-iter", "3", "-q"])
    assert r.exit_code == 0, r.output
    calls = []
    import cfact_dask.cli.factor as cfm

    real = cfm.METHODS["nmf"]
    cfm.METHODS["nmf"] = lambda *a: calls.append(a) or real(*a)
    try:
        r = _cli(["factor", out, "--rank", "3", "--out", out,
                                     "--out-group", "factors", "-q"])
    finally:
        cfm.METHODS["nmf"] = real
    assert r.exit_code == 1 and "--overwrite" in r.output and not calls


def test_recover_refuses_an_operator_from_another_sketch(tmp_path):
    _world(tmp_path)
    X = cf.open_array(str(tmp_path / "data" / "in.zarr"))
    a, b = cf.sketch(X, 40, seed=1), cf.sketch(X, 40, seed=2)
    with warnings.catch_warnings():
        _quiet()
        res = cf.nmf(a, 3, max_iter=5)
    with pytest.raises(cf.InputError, match="seed"):
        cf.recover(res, b.operator)
    with warnings.catch_warnings():
        _quiet()
        assert cf.recover(res, a.operator).W.shape == (N, 3)


def test_resume_checks_the_inputs_content(tmp_path):
    X = _world(tmp_path)
    src = str(tmp_path / "data" / "in.zarr")
    out = str(tmp_path / "run.zarr")
    kw = dict(sketch=dict(n_components=40, holdout=8), factor=dict(max_iter=5),
              recover="lstsq-data", out=out, progress=False)
    with warnings.catch_warnings():
        _quiet()
        ref = cf.factorize_recover(src, 3, **kw)
        # an unchanged input: the resume is accepted (everything done: same result)
        again = cf.factorize_recover(src, 3, resume=True, **kw)
    np.testing.assert_array_equal(np.asarray(again.W), np.asarray(ref.W))
    z = zarr.open_array(src, mode="r+")
    z[...] = X[::-1]  # same path, shape, chunks and dtype; other content
    with pytest.raises(ResumeError, match="input changed"):
        cf.factorize_recover(src, 3, resume=True, **kw)
    with warnings.catch_warnings():
        _quiet()
        cf.factorize_recover(src, 3, resume="force", **kw)


def test_allowed_root_holds_urls_inputs_and_plots(tmp_path, monkeypatch):
    import dask

    _world(tmp_path)
    inside = tmp_path / "jail"
    inside.mkdir()
    src = str(tmp_path / "data" / "in.zarr")
    with dask.config.set({"cfact.run.allowed-root": str(inside)}):
        with pytest.raises(cf.ConfigError, match="allowed root"):
            cf.open_array(f"file://{src}")
        with pytest.raises(cf.ConfigError, match="allowed root"):
            cf.sketch(np.ones((N, M)), 10).to_zarr(f"file://{tmp_path}/o.zarr", progress=False)
        shutil.copytree(src, inside / "in.zarr")
        job = inside / "job.yaml"
        job.write_text(textwrap.dedent(f"""
            cfact:
              input: {{path: {inside / 'in.zarr'}}}
              sketch: {{n_components: 40}}
              factor: {{rank: 3, max_iter: 3}}
              output: {{path: {inside / 'run.zarr'}}}
        """))
        r = _cli(["run", str(job), "-q", "--plots", str(tmp_path / "plots")])
        assert r.exit_code == 1 and "allowed root" in r.output, r.output
        assert not (tmp_path / "plots").exists() and not (inside / "run.zarr").exists()


# ------------------------------------------------------------------ SIGKILL inside each stage
_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, warnings
    import cfact_dask as cf
    from cfact_dask._runtime import outputs
    stage = sys.argv[3]
    real = outputs.GroupWriter.finish
    def finish(self, meta, upstream=None):
        if stage and self.group == stage:
            os.kill(os.getpid(), signal.SIGKILL)  # the data is written, not yet committed
        return real(self, meta, upstream)
    outputs.GroupWriter.finish = finish
    warnings.simplefilter("ignore")
    cf.factorize_recover(sys.argv[1], 3, sketch=dict(n_components=40, holdout=8),
                         factor=dict(max_iter=20, checkpoint_every=5), recover="lstsq-data",
                         out=sys.argv[2], reconstruct=True, progress=False,
                         resume=sys.argv[4] == "resume")
""")


def _run_child(src, out, stage, mode):
    return subprocess.run([sys.executable, "-c", _KILL_SCRIPT, src, out, stage, mode],
                          capture_output=True, text=True, timeout=180)


@pytest.mark.timeout(400)
@pytest.mark.parametrize("stage", ["sketch", "factors", "recovered", "reconstruction"])
def test_sigkill_inside_each_stage_then_rerun_or_resume_equals_an_uninterrupted_run(
        tmp_path, stage):
    _world(tmp_path)
    src = str(tmp_path / "data" / "in.zarr")
    before = _tree_hash(tmp_path / "data")
    ref = str(tmp_path / "ref.zarr")
    assert _run_child(src, ref, "", "plain").returncode == 0
    killed = str(tmp_path / "killed.zarr")
    r = _run_child(src, killed, stage, "plain")
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert not zarr.open_group(killed, mode="r").attrs["cfact"]["complete"]
    assert stage not in set(zarr.open_group(killed, mode="r").group_keys())
    copy = str(tmp_path / "killed2.zarr")
    shutil.copytree(killed, copy)
    for store, mode in ((killed, "plain"), (copy, "resume")):
        r = _run_child(src, store, "", mode)
        assert r.returncode == 0, r.stderr[-3000:]
        assert not [p for p in os.listdir(store) if ".cfact-tmp-" in p]
        assert zarr.open_group(store, mode="r").attrs["cfact"]["complete"]
        # factors/W_sketch: the factor of the sketch, P W (issue 17: distinct from recovered/W)
        for arr in ("factors/W_sketch", "factors/H", "recovered/W",
                    "reconstruction/reconstruction"):
            np.testing.assert_array_equal(zarr.open_array(store, path=arr)[...],
                                          zarr.open_array(ref, path=arr)[...], err_msg=arr)
    assert _tree_hash(tmp_path / "data") == before
