"""Run every example in ``examples/`` as a script, at small scale, the way CI runs notebooks.

Each example runs in a subprocess with ``CFACT_EXAMPLES_SMALL=1`` and ``CFACT_EXAMPLES_OUT`` set to
a temporary folder; the test checks the exit code, that the expected PNGs exist and are non-empty,
and the key figures the example prints (a final ``RESULT {json}`` line, or its text lines for the
examples that predate that convention). Real data comes only from installed packages.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TIMEOUT = 240  # per example, seconds; each is expected to take < 60 s at small scale


def _result(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"the example printed no RESULT line:\n{stdout[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def _number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not found in the output:\n{text[-3000:]}"
    return float(m.group(1))


# ------------------------------------------------------------------ per-example checks
def _check_nmf_faces(out: str) -> None:
    r = _result(out)
    assert r["n"] == 625 and r["m"] == 200  # lfw_subset: 200 faces of 25 x 25
    assert 0.1 < r["err_uncompressed"] < 0.35
    assert r["error_ratio"] < 1.3  # compressed (d=300 of 625, lstsq-data) vs uncompressed
    assert r["mean_abs_corr_W"] > 0.6 and r["mean_abs_corr_H"] > 0.6
    # faces' NMF parts are not sparse in pixels: nnlasso is worse and its certificate says so
    assert r["error_ratio_nnlasso"] > r["error_ratio"]
    assert r["nnlasso_certificate_ok"] is False


def _check_cp_indian_pines(out: str) -> None:
    r = _result(out)
    assert r["shape"][2] == 200 and r["d"] == 40
    assert r["err_uncompressed"] < 0.15
    assert r["error_ratio"] < 1.3  # 5x compression of the spectral mode, lstsq-data recovery
    assert abs(r["err_refit_mode"] - r["err_lstsq"]) < 1e-6  # the two exact recoveries agree
    assert r["mean_abs_corr_spectra"] > 0.9
    assert r["lasso_certificate_ok"] is False  # dense spectra: flagged, not silently wrong


def _check_connect_cluster_skipped(out: str) -> None:
    assert "skipped" in out
    assert _result(out) == {"example": "connect_cluster", "skipped": True}


def _check_dgd_local(out: str) -> None:
    cons_local = _number(r"DGD\+LOCAL: cost \S+, consensus (\S+),", out)
    cost_local = _number(r"DGD\+LOCAL: cost (\S+),", out)
    cost_dgd = _number(r"DGD: +cost (\S+),", out)
    assert cons_local < 1e-8 and cost_local < 1e-8  # exact consensus on exactly low-rank data
    assert cost_dgd > 1e3 * cost_local  # classical DGD stalls at an inexact consensus


def _check_embedding_glove(out: str) -> None:
    assert _number(r"dense Spearman: WS-353 (\S+),", out) > 0.3
    errors = [float(x) for x in re.findall(r"error (\d\.\d+)", out)]
    assert len(errors) == 9 and all(0 < e < 1 for e in errors)


# name -> (expected PNGs, extra environment, check of stdout)
SPECS: dict[str, tuple[tuple[str, ...], dict[str, str], object]] = {
    "nmf_faces": (
        ("nmf_faces_uncompressed.png", "nmf_faces_compressed.png", "nmf_faces_convergence.png",
         "nmf_faces_error_vs_compression.png"),
        {}, _check_nmf_faces,
    ),
    "cp_indian_pines": (
        ("cp_indian_pines_spectra.png", "cp_indian_pines_convergence.png"),
        {}, _check_cp_indian_pines,
    ),
    "connect_cluster": ((), {}, _check_connect_cluster_skipped),
    "dgd_local": (("dgd_local_convergence.png",), {}, _check_dgd_local),
    "embedding_glove": (("embedding_glove.png",), {"CFACT_EXAMPLE_N": "5000"},
                        _check_embedding_glove),
}
#: examples that take longer than 60 s at small scale (run with the slow tests)
SLOW: set[str] = set()


def _env(out_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CFACT_SCHEDULER", "DASK_SCHEDULER_ADDRESS", "DASK_SCHEDULER")}
    env.update(CFACT_EXAMPLES_SMALL="1", CFACT_EXAMPLES_OUT=str(out_dir), MPLBACKEND="Agg",
               PYTHONWARNINGS="ignore::DeprecationWarning")
    env.update(extra)
    return env


def _run(name: str, out_dir: Path, extra: dict[str, str]) -> tuple[str, float]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py")], cwd=out_dir,
                       env=_env(out_dir, extra), capture_output=True, text=True, timeout=TIMEOUT)
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, (
        f"examples/{name}.py exited with {r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n"
        f"--- stderr\n{r.stderr[-5000:]}"
    )
    return r.stdout, seconds


def _params() -> list:
    names = sorted(p.stem for p in EXAMPLES.glob("*.py"))
    return [pytest.param(n, id=n, marks=[pytest.mark.slow] if n in SLOW else []) for n in names]


def test_every_example_has_a_spec():
    """A new example must say which PNGs it writes and which figures to check."""
    names = {p.stem for p in EXAMPLES.glob("*.py")}
    assert names == set(SPECS), f"add to SPECS: {sorted(names - set(SPECS))}; " \
                                f"stale: {sorted(set(SPECS) - names)}"


@pytest.mark.parametrize("name", _params())
def test_example_runs(name, tmp_path):
    pngs, extra, check = SPECS[name]
    out, seconds = _run(name, tmp_path, extra)
    for png in pngs:
        p = tmp_path / png
        assert p.is_file() and p.stat().st_size > 1000, f"{name} did not write {png}"
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
    check(out)
    print(f"examples/{name}.py: {seconds:.1f}s")


def _start_cluster(tmp_path: Path) -> tuple[list[subprocess.Popen], str]:
    sfile = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs: list[subprocess.Popen] = []

    def start(args: list[str], log: str) -> None:
        # output to a file: an unread pipe could fill up and block the process
        with open(tmp_path / log, "w") as f:
            procs.append(subprocess.Popen([sys.executable, "-m", "dask", *args], env=env,
                                          cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=f))

    start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0",
           "--scheduler-file", str(sfile)], "scheduler.log")
    for i in range(2):
        start(["worker", "--scheduler-file", str(sfile), "--nthreads", "1", "--host",
               "127.0.0.1", "--no-dashboard", "--memory-limit", "1GiB", "--local-directory",
               str(tmp_path)], f"worker{i}.log")
    t0 = time.time()
    while not sfile.exists() or not sfile.read_text().strip():
        if time.time() - t0 > 60 or procs[0].poll() is not None:
            raise RuntimeError("the scheduler did not start: "
                               + (tmp_path / "scheduler.log").read_text()[-2000:])
        time.sleep(0.2)
    from distributed import Client

    with Client(scheduler_file=str(sfile), timeout=30, set_as_default=False) as c:
        c.wait_for_workers(2, timeout=60)
    return procs, json.loads(sfile.read_text())["address"]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def test_connect_cluster_runs_on_a_real_cluster(tmp_path):
    """`python -m dask scheduler` + two workers; the example finds them through the env var."""
    procs, address = _start_cluster(tmp_path)
    try:
        out, _ = _run("connect_cluster", tmp_path, {"DASK_SCHEDULER_ADDRESS": address})
    finally:
        _stop(procs)
    r = _result(out)
    assert r["skipped"] is False and r["n_workers"] == 2
    assert r["n_tasks"] > 0 and r["workers_used"] >= 1  # the work ran on the cluster's workers
    assert r["error_ratio"] < 1.5  # digits: d=32 of 64 pixels vs scikit-learn's uncompressed NMF
    if r["recover_method"] == "lstsq-data":  # "auto" fell back: the certificate's error is exact
        assert abs(r["estimated_error"] - r["relative_error"]) < 1e-6
