"""What a user's terminal shows: the report on stdout, little else on stderr, one CLI contract.

Every command runs as a real subprocess (``python -m cfact_dask.cli``) with stderr redirected to
a file, the way a user running ``cfact demo 2>err.txt`` or a batch job sees it: no
``distributed.*`` log lines, no tracebacks, no ``\\r`` redraws or escape codes, a few lines at
most; ``--json`` prints one JSON document on stdout for every computing command; errors are one
paragraph with exit code 1 (2 for usage).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from cfact_dask.datasets import planted_nmf_zarr

ROOT = Path(__file__).resolve().parents[2]
MAX_STDERR_LINES = 25


def _cfact(args: list[str], tmp: Path, name: str, timeout: float = 240) -> tuple[int, str, str]:
    """Run ``cfact ARGS`` with stdout and stderr redirected to files (not a terminal)."""
    out, err = tmp / f"{name}.out", tmp / f"{name}.err"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    with open(out, "w") as fo, open(err, "w") as fe:
        rc = subprocess.run([sys.executable, "-m", "cfact_dask.cli", *args], stdout=fo,
                            stderr=fe, stdin=subprocess.DEVNULL, cwd=tmp, env=env,
                            timeout=timeout).returncode
    return rc, out.read_text(), err.read_text()


def _assert_quiet_stderr(err: str, what: str) -> None:
    lines = err.splitlines()
    assert len(lines) <= MAX_STDERR_LINES, f"{what}: {len(lines)} stderr lines:\n{err}"
    assert "distributed." not in err, f"{what}: distributed's logs on stderr:\n{err}"
    assert "Traceback" not in err, f"{what}: a traceback on stderr:\n{err}"
    assert "\r" not in err and "\x1b" not in err, f"{what}: bar redraws in a file:\n{err!r}"
    for ln in lines:  # warnings are one line, without the Python source that raised them
        assert not re.match(r"\s+warnings\.warn\(", ln), f"{what}: {ln!r}"
        assert not re.search(r"\[\s*[-\d.e]+(\s+[-\d.e]+){5,}", ln), f"{what}: array dump {ln!r}"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("terminal")
    src = tmp / "input.zarr"
    planted_nmf_zarr(str(src), 600, 200, 4, density=0.05, noise=0.05, random_state=2,
                     chunks=(150, 100), progress=False)
    job = {"cfact": {
        "input": {"path": str(src), "variable": "M"},
        "sketch": {"n_components": 150, "seed": 0},
        "factor": {"method": "nmf", "rank": 4, "max_iter": 200},
        "recover": {"method": "nnlasso"},
        "output": {"path": str(tmp / "run.zarr"), "reconstruct": True},
    }}
    (tmp / "job.yaml").write_text(yaml.safe_dump(job))
    return tmp


def test_demo_run_and_factor_keep_stderr_quiet(work):
    rc, out, err = _cfact(["demo", "--n", "600", "--m", "400", "--d", "200", "--rank", "4",
                           "--dir", str(work / "demo")], work, "demo")
    assert rc == 0, err
    _assert_quiet_stderr(err, "cfact demo")
    assert "relative error" in out and "vs truth" in out  # the report is on stdout
    assert "started an embedded LocalCluster" not in out  # progress is not

    rc, out, err = _cfact(["run", "job.yaml", "--overwrite"], work, "run")
    assert rc == 0, err
    _assert_quiet_stderr(err, "cfact run")
    assert out.startswith("input ") and "Completed" not in out

    # per-iteration lines only with -v (nmf logs one per iteration at DEBUG)
    rc, out, err = _cfact(["factor", "run.zarr", "--rank", "4", "--out", "f.zarr",
                           "--max-iter", "80"], work, "factor")
    assert rc == 0, err
    _assert_quiet_stderr(err, "cfact factor")
    assert "iteration" not in err
    assert re.match(r"nmf: rank 4, \d+ iterations, relative error of the sketch \d", out), out
    rc, out, err = _cfact(["factor", "run.zarr", "--rank", "4", "--out", "f.zarr",
                           "--overwrite", "--max-iter", "30", "-v"], work, "factor_v")
    assert rc == 0, err
    assert len(re.findall(r"nmf iteration \d+", err)) >= 10


def test_json_on_stdout_for_every_computing_command(work):
    src = str(work / "input.zarr")
    run = str(work / "jrun.zarr")
    emb = work / "emb.npy"
    np.save(emb, np.random.default_rng(0).standard_normal((300, 16)).astype("f4"))
    job = yaml.safe_load((work / "job.yaml").read_text())
    job["cfact"]["output"]["path"] = str(work / "jrun_job.zarr")
    (work / "jjob.yaml").write_text(yaml.safe_dump(job))
    commands = {
        "sketch": ["sketch", src, run, "-d", "150", "--variable", "M"],
        "factor": ["factor", run, "--rank", "4", "--out", run, "--max-iter", "50"],
        "recover": ["recover", run],
        "reconstruct": ["reconstruct", run, "--like", src + "/M"],
        "factor-dgd": ["factor-dgd", src, "--variable", "M", "--rank", "4", "--max-iter", "30",
                       "--nodes", "4"],
        "run": ["run", "jjob.yaml"],
        "plan": ["plan", "jjob.yaml"],
        "demo": ["demo", "--n", "400", "--m", "300", "--d", "150", "--rank", "3", "--dir",
                 str(work / "jdemo")],
        "compress-embedding": ["compress-embedding", str(emb), "--rate", "0.5", "--method",
                               "svd", "--out", str(work / "emb.zarr")],
    }
    for name, args in commands.items():
        rc, out, err = _cfact([*args, "--json"], work, f"json_{name}")
        assert rc == 0, f"{name}: {err}"
        doc = json.loads(out)  # stdout is exactly one JSON document
        assert isinstance(doc, dict) and doc, name
        # --json implies --quiet: no progress lines, at most warnings
        assert all(ln.startswith("warning: ") for ln in err.splitlines()), f"{name}: {err}"
    rec = json.loads((work / "json_recover.out").read_text())
    # the standalone sketch took a hold-out sketch in the same pass: recover certifies
    assert rec["certificate"]["holdout_error"] is not None
    fac = json.loads((work / "json_factor.out").read_text())
    assert fac["error_label"] == "relative error of the sketch" and 0 < fac["error"] < 1


def test_errors_are_one_paragraph(work):
    t0 = time.monotonic()
    rc, out, err = _cfact(["sketch", str(work / "input.zarr"), str(work / "x.zarr"), "-d", "10",
                           "--variable", "M", "--scheduler", "tcp://127.0.0.1:1"], work, "conn")
    assert rc == 1 and out == ""
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "tcp://127.0.0.1:1" in err and "--scheduler" in err  # the address and the fix
    assert time.monotonic() - t0 < 30  # distributed alone waits 30 s, then prints 68 lines

    rc, out, err = _cfact(["recover", "run.zarr", "--lam", "abc"], work, "lam")
    assert rc == 2 and "Traceback" not in err and "'abc'" in err
    rc, out, err = _cfact(["factor", "run.zarr", "--rank", "2", "--out", "t.zarr", "--method",
                           "dgd-local", "--topology", "torus"], work, "topo")
    assert rc == 2 and "torus2d" in err and "Traceback" not in err
    rc, out, err = _cfact(["factor", str(work / "missing.zarr"), "--rank", "2", "--out",
                           "t.zarr"], work, "missing")
    assert rc == 1 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "missing.zarr" in err, err


def test_help_lists_what_the_code_accepts():
    from click.testing import CliRunner

    from cfact_dask.cli import cli
    from cfact_dask.factor.consensus.topology import GRAPHS
    from cfact_dask.recovery._recover import METHODS
    from cfact_dask.sketching.operators import KINDS

    r = CliRunner().invoke(cli, ["factor", "--help"])
    assert all(g in r.output for g in GRAPHS) and "torus]" not in r.output.replace("\n", "")
    r = CliRunner().invoke(cli, ["recover", "--help"])
    assert all(m in r.output for m in METHODS)
    r = CliRunner().invoke(cli, ["sketch", "--help"])
    assert all(k in r.output for k in KINDS)
    for cmd in ("sketch", "factor", "factor-dgd", "recover", "reconstruct", "run", "demo",
                "plan", "compress-embedding"):
        r = CliRunner().invoke(cli, [cmd, "--help"])
        for opt in ("--scheduler ", "--scheduler-file", "--json", "--quiet", "--verbose"):
            assert opt in r.output, f"cfact {cmd} has no {opt}"


def test_unguarded_script_runs_threaded_with_one_warning(tmp_path):
    """A plain script without a __main__ guard: worker processes would re-run it."""
    script = tmp_path / "plain.py"
    script.write_text(
        "import dask, dask.array as da\n"
        "import cfact_dask as cf\n"
        "dask.config.set({'cfact.cluster.embedded': 'always'})\n"
        "X = da.random.default_rng(0).random((400, 300), chunks=(100, 300))\n"
        "est = cf.CompressedNMF(n_components=3, sketch_dim=120, max_iter=20, random_state=0)\n"
        "import warnings; warnings.simplefilter('ignore')\n"
        "W = est.fit_transform(X)\n"
        "print('shape', W.shape)\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "shape" in r.stdout
    assert "Traceback" not in r.stderr and "Nanny failed" not in r.stderr
    assert "__main__" in r.stderr and "threaded scheduler" in r.stderr

