"""Offline checks of deploy/: files parse, commands and images agree, job scripts render, TLS works.

No Docker engine or Kubernetes API exists on the CI machines, so the deployment files are checked
statically (parsed, cross-checked against each other and against the CRD / chart fields they use),
dask-jobqueue renders the real SLURM / PBS job scripts, the SLURMRunner script runs with a
simulated SLURM environment, and the TLS setup runs for real on local processes.
"""

from __future__ import annotations

import copy
import json
import os
import py_compile
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import yaml

import cfact_dask as cf

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
IMAGE = f"cfact-dask:{cf.__version__}"
HYPHENATED = {"dask-scheduler", "dask-worker"}


def _load(rel: str) -> Any:
    with open(DEPLOY / rel) as f:
        return yaml.safe_load(f)


def _env() -> dict[str, str]:
    """Environment for subprocesses: this interpreter's bin first, no inherited dask config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _containers(pod_spec: dict) -> list[dict]:
    return list(pod_spec.get("containers", []))


def _parse_k8s_quantity(q: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|K|M|G|T)?", str(q))
    assert m, f"bad quantity {q!r}"
    mult = {None: 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[m.group(2)]
    return int(float(m.group(1)) * mult)


# --------------------------------------------------------------------------- every file parses
def test_every_yaml_parses_and_no_tabs():
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 9, files
    for p in files:
        text = p.read_text()
        assert "\t" not in text, f"{p} contains a tab"
        docs = list(yaml.safe_load_all(text))
        assert docs and all(d is not None for d in docs), p


def test_example_job_file_shape():
    job = _load("config/job.yaml")["cfact"]
    assert set(job) == {"input", "sketch", "factor", "recover", "output"}
    assert job["input"]["path"].startswith("/data/")
    assert job["output"]["path"].startswith("/data/")
    assert job["output"]["overwrite"] is False
    assert isinstance(job["sketch"]["n_components"], int)
    assert isinstance(job["factor"]["rank"], int)
    assert isinstance(job["factor"]["tol"], float)  # 1.0e-4, not the string "1e-4"


def test_one_job_file_per_method_and_each_validates():
    """deploy/config/ holds a job file for every factorization a job accepts (issue 16), each
    validates against the schema of its method, and uses the /data paths the recipes mount."""
    from cfact_dask.pipeline._methods import job_methods
    from cfact_dask.pipeline.job import validate_job

    for method in job_methods():
        rel = "config/job.yaml" if method == "nmf" else f"config/job-{method}.yaml"
        assert (DEPLOY / rel).is_file(), f"no job file for factor.method {method!r}: {rel}"
        raw = _load(rel)
        job = validate_job(raw, source=rel, check_paths=False)
        assert job["factor"]["method"] == method, rel
        assert job["input"]["path"].startswith("/data/"), rel
        assert job["output"]["path"].startswith("/data/"), rel
        readme = (DEPLOY / "README.md").read_text()
        assert f"`{rel}`" in readme, f"{rel} is not listed in deploy/README.md"


# --------------------------------------------------------------------------- Docker
def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "docker/Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_pinned_base_and_installs_package():
    ins = _dockerfile_instructions()
    froms = [r for op, r in ins if op == "FROM"]
    assert len(froms) == 1
    # version-pinned: python:<major>.<minor>.<patch>-slim-<debian release>, never latest
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?",
                        froms[0]), froms[0]
    copies = [r.split() for op, r in ins if op == "COPY"]
    srcs = [s for c in copies for s in c[:-1] if not s.startswith("--")]
    for s in srcs:
        assert (ROOT / s).exists(), f"Dockerfile copies {s}, which is not in the repository"
    assert "cfact_dask" in srcs and "pyproject.toml" in srcs
    runs = " ".join(r for op, r in ins if op == "RUN")
    assert re.search(r"pip install \"?\.(\[[a-z,]+\])?\"?", runs), runs
    assert "dask scheduler --help" in runs and "dask worker --help" in runs
    entry = json.loads(next(r for op, r in ins if op == "ENTRYPOINT"))
    assert entry[-1] == "/usr/local/bin/cfact-entrypoint"
    # every COPY source survives the .dockerignore next to the Dockerfile
    ignore = (DEPLOY / "docker/Dockerfile.dockerignore").read_text().split()
    assert "*" in ignore
    for s in srcs:
        assert f"!{s}" in ignore, f"{s} is excluded from the build context"


def test_entrypoint_translates_legacy_commands(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "dask").write_text('#!/bin/sh\necho "dask $*"\n')
    (fake / "dask").chmod(0o755)
    env = {"PATH": f"{fake}{os.pathsep}/usr/bin:/bin"}
    ep = str(DEPLOY / "docker/entrypoint.sh")

    def run(*args: str) -> str:
        return subprocess.run(["sh", ep, *args], env=env, capture_output=True, text=True,
                              check=True).stdout.strip()

    assert run("dask-worker", "tcp://s:8786", "--nthreads", "2") == (
        "dask worker tcp://s:8786 --nthreads 2")
    assert run("dask-scheduler", "--port", "8786") == "dask scheduler --port 8786"
    assert run("dask", "worker", "x") == "dask worker x"
    assert run("echo", "cfact", "run") == "cfact run"


def _compose() -> dict:
    return _load("docker/compose.yaml")


def test_compose_services_commands_and_volumes():
    c = _compose()
    s = c["services"]
    assert {"scheduler", "worker", "job"} <= set(s)
    sched, worker, job = s["scheduler"]["command"], s["worker"]["command"], s["job"]["command"]
    for cmd in (sched, worker, job):
        assert all(isinstance(a, str) for a in cmd), cmd
        assert not HYPHENATED & set(cmd), cmd
    assert sched[:2] == ["dask", "scheduler"]
    port = sched[sched.index("--port") + 1]
    assert worker[:3] == ["dask", "worker", f"tcp://scheduler:{port}"]
    assert job[:3] == ["cfact", "run", "/config/job.yaml"]
    assert job[job.index("--scheduler") + 1] == f"tcp://scheduler:{port}"
    assert f"{port}:{port}" in s["scheduler"]["ports"]
    assert s["worker"]["deploy"]["replicas"] >= 2
    # the worker's memory limit fits in the container's (compose sizes are binary: 4G = 4 GiB)
    lim = s["worker"]["deploy"]["resources"]["limits"]
    m = re.fullmatch(r"(\d+)([kmg])b?", str(lim["memory"]).lower())
    assert m, lim
    container_bytes = int(m.group(1)) * 1024 ** " kmg".index(m.group(2))
    mem = worker[worker.index("--memory-limit") + 1]
    assert dask.utils.parse_bytes(mem) <= container_bytes
    assert int(worker[worker.index("--nthreads") + 1]) <= float(lim["cpus"])
    # no fixed container name (it would forbid replicas)
    assert all("container_name" not in v for v in s.values())
    # one image, built from the repository with the Dockerfile
    for name in ("scheduler", "worker", "job"):
        assert s[name]["image"] == IMAGE
        b = s[name]["build"]
        assert (DEPLOY / "docker" / b["context"] / b["dockerfile"]).resolve() == (
            DEPLOY / "docker/Dockerfile").resolve()
        assert (DEPLOY / "docker" / b["context"]).resolve() == ROOT
    # the shared named volume is mounted at /data by workers and job, where the job file points
    mounts = {n: {v.split(":")[1]: v.split(":")[0] for v in s[n].get("volumes", [])}
              for n in ("worker", "job")}
    assert mounts["worker"]["/data"] == mounts["job"]["/data"] in c["volumes"]
    cfg_src = mounts["job"]["/config/job.yaml"]
    assert (DEPLOY / "docker" / cfg_src).resolve() == (DEPLOY / "config/job.yaml").resolve()
    job_cfg = _load("config/job.yaml")["cfact"]
    for key in ("input", "output"):
        assert job_cfg[key]["path"].startswith("/data/")
    # the job waits for a healthy scheduler
    assert s["job"]["depends_on"]["scheduler"]["condition"] == "service_healthy"
    assert "/health" in " ".join(s["scheduler"]["healthcheck"]["test"])


def test_compose_tls_override_consistent():
    base = _compose()["services"]
    over = _load("tls/compose.tls.yaml")["services"]
    assert set(over) <= set(base)
    w, j = over["worker"]["command"], over["job"]["command"]
    assert w[:3] == ["dask", "worker", "tls://scheduler:8786"]
    # apart from the address, the worker runs with the base file's options
    assert w[3:] == base["worker"]["command"][3:]
    assert j[j.index("--scheduler") + 1] == "tls://scheduler:8786"
    for name, svc in over.items():
        targets = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        assert targets["/etc/dask/tls"] == "../tls/certs"
        # relative to deploy/docker, the directory of the first compose file
        assert (DEPLOY / "docker" / targets["/etc/dask/dask-tls.yaml"]).resolve() == (
            DEPLOY / "tls/dask-tls.yaml").resolve(), name


# --------------------------------------------------------------------------- Kubernetes
def _check_pod_spec(spec: dict, where: str) -> None:
    assert _containers(spec), where
    for c in _containers(spec):
        assert c["name"] and c["image"] == IMAGE, where
        # Kubernetes rejects non-string args (e.g. an unquoted port number)
        assert all(isinstance(a, str) for a in c.get("args", [])), (where, c.get("args"))
        assert not HYPHENATED & set(c.get("args", [])), where
        for p in c.get("ports", []):
            assert isinstance(p["containerPort"], int), where
        names = {v["name"] for v in spec.get("volumes", [])}
        for m in c.get("volumeMounts", []):
            assert m["name"] in names, (where, m)


def test_daskcluster_manifest():
    doc = _load("kubernetes/daskcluster.yaml")
    assert doc["apiVersion"] == "kubernetes.dask.org/v1"
    assert doc["kind"] == "DaskCluster"
    spec = doc["spec"]
    # required by the DaskCluster CRD: spec.worker.spec, spec.scheduler.spec and .service
    assert {"worker", "scheduler"} <= set(spec)
    assert {"spec", "service"} <= set(spec["scheduler"])
    assert isinstance(spec["worker"]["replicas"], int) and spec["worker"]["replicas"] >= 1
    _check_pod_spec(spec["worker"]["spec"], "worker")
    _check_pod_spec(spec["scheduler"]["spec"], "scheduler")
    (sc,) = _containers(spec["scheduler"]["spec"])
    (wc,) = _containers(spec["worker"]["spec"])
    assert sc["args"][:2] == ["dask", "scheduler"]
    assert wc["args"][:2] == ["dask", "worker"]
    assert "$(DASK_WORKER_NAME)" in wc["args"]
    # the worker's memory limit fits in the container's limit
    mem = wc["args"][wc["args"].index("--memory-limit") + 1]
    assert dask.utils.parse_bytes(mem) <= _parse_k8s_quantity(wc["resources"]["limits"]["memory"])
    nthreads = int(wc["args"][wc["args"].index("--nthreads") + 1])
    assert nthreads <= _parse_k8s_quantity(wc["resources"]["limits"]["cpu"])
    # the Service selects this cluster's scheduler and exposes the comm port
    svc = spec["scheduler"]["service"]
    assert svc["selector"] == {"dask.org/cluster-name": doc["metadata"]["name"],
                               "dask.org/component": "scheduler"}
    ports = {p["name"]: p for p in svc["ports"]}
    assert ports["tcp-comm"]["port"] == 8786
    sports = {p["name"]: p["containerPort"] for p in sc["ports"]}
    assert sports["tcp-comm"] == 8786
    # the shared volume is the ReadWriteMany claim of storage.yaml, mounted at /data
    pvc = _load("kubernetes/storage.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in pvc["spec"]["accessModes"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in spec["worker"]["spec"]["volumes"]]
    assert claims == [pvc["metadata"]["name"]]
    assert {"name": "data", "mountPath": "/data"} in wc["volumeMounts"]


def test_daskjob_manifest_matches_cluster():
    job = _load("kubernetes/daskjob.yaml")
    cl = _load("kubernetes/daskcluster.yaml")
    assert job["apiVersion"] == "kubernetes.dask.org/v1"
    assert job["kind"] == "DaskJob"
    assert {"job", "cluster"} <= set(job["spec"])  # required by the DaskJob CRD
    pod = job["spec"]["job"]["spec"]
    _check_pod_spec(pod, "job")
    (jc,) = _containers(pod)
    assert jc["args"][:3] == ["cfact", "run", "/config/job.yaml"]
    assert jc["args"][jc["args"].index("--scheduler") + 1] == "$(DASK_SCHEDULER_ADDRESS)"
    mounts = {m["mountPath"]: m["name"] for m in jc["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert "configMap" in vols[mounts["/config"]]
    assert vols[mounts["/data"]]["persistentVolumeClaim"]["claimName"] == "cfact-data"
    # the job's cluster is daskcluster.yaml's, its Service selecting the job's cluster name
    expected = copy.deepcopy(cl["spec"])
    expected["scheduler"]["service"]["selector"]["dask.org/cluster-name"] = (
        job["metadata"]["name"])
    assert job["spec"]["cluster"]["spec"] == expected


def test_helm_values_and_job():
    v = _load("helm/values.yaml")
    for role in ("scheduler", "worker"):
        img = v[role]["image"]
        assert isinstance(img["tag"], str), "quote the tag: YAML would read 0.10 as a float"
        assert f"{img['repository']}:{img['tag']}" == IMAGE
    assert isinstance(v["worker"]["replicas"], int)
    # keys used here exist in the dask/dask chart's values
    assert set(v) <= {"fullnameOverride", "nameOverride", "scheduler", "webUI", "worker",
                      "additional_worker_groups", "jupyter"}
    assert set(v["worker"]) <= {"name", "image", "replicas", "strategy", "custom_scheduler_url",
                                "default_resources", "env", "extraArgs", "resources", "mounts",
                                "annotations", "tolerations", "affinity", "nodeSelector",
                                "securityContext", "serviceAccountName", "port", "portDashboard",
                                "threads_per_worker", "metrics", "livenessProbe",
                                "readinessProbe"}
    assert not HYPHENATED & set(v["worker"].get("extraArgs", []))
    assert all(isinstance(a, str) for a in v["worker"].get("extraArgs", []))
    assert v["worker"]["mounts"]["volumeMounts"][0]["mountPath"] == "/data"
    assert v["jupyter"]["enabled"] is False
    job = _load("helm/job.yaml")
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    pod = job["spec"]["template"]["spec"]
    _check_pod_spec(pod, "helm job")
    (jc,) = _containers(pod)
    addr = f"tcp://{v['fullnameOverride']}-scheduler:{v['scheduler']['servicePort']}"
    assert jc["args"][:3] == ["cfact", "run", "/config/job.yaml"]
    assert jc["args"][jc["args"].index("--scheduler") + 1] == addr


def test_configmap_name_is_documented():
    """The DaskJob / Helm Job mount the ConfigMap that the README tells users to create."""
    readme = (DEPLOY / "README.md").read_text()
    for rel in ("kubernetes/daskjob.yaml", "helm/job.yaml"):
        doc = _load(rel)
        pod = doc["spec"]["job"]["spec"] if doc["kind"] == "DaskJob" else (
            doc["spec"]["template"]["spec"])
        (cm,) = [v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v]
        assert f"kubectl create configmap {cm} --from-file=job.yaml=" in readme


# --------------------------------------------------------------------------- HPC
def _jobqueue_config() -> dict:
    new = dask.config.collect(paths=[str(DEPLOY / "hpc")], env={})
    return dask.config.update(copy.deepcopy(dask.config.config), new)


def test_slurm_job_script_renders(tmp_path, monkeypatch):
    jq = pytest.importorskip("dask_jobqueue")
    monkeypatch.chdir(tmp_path)  # the cluster creates its log-directory (logs/dask) here
    with dask.config.set(_jobqueue_config()):
        with jq.SLURMCluster(scheduler_options={"dashboard_address": ":0"}) as cluster:
            script = cluster.job_script()
    lines = script.splitlines()
    for expected in ("#SBATCH -J cfact-worker", "#SBATCH -p compute", "#SBATCH -n 1",
                     "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32G", "#SBATCH -t 02:00:00",
                     "#SBATCH --hint=nomultithread"):
        assert expected in lines, (expected, script)
    assert "source $HOME/venvs/cfact/bin/activate" in lines
    (cmd,) = [ln for ln in lines if "distributed.cli.dask_worker" in ln]
    args = shlex.split(cmd)
    assert args[0] == "python"
    assert args[args.index("--nworkers") + 1] == "2"
    assert args[args.index("--nthreads") + 1] == "4"
    assert args[args.index("--local-directory") + 1] == "$TMPDIR"
    assert "--lifetime" in args


def test_pbs_job_script_renders(tmp_path, monkeypatch):
    jq = pytest.importorskip("dask_jobqueue")
    monkeypatch.chdir(tmp_path)  # the cluster creates its log-directory (logs/dask) here
    with dask.config.set(_jobqueue_config()):
        with jq.PBSCluster(scheduler_options={"dashboard_address": ":0"}) as cluster:
            script = cluster.job_script()
    lines = script.splitlines()
    for expected in ("#PBS -N cfact-worker", "#PBS -q workq",
                     "#PBS -l select=1:ncpus=8:mem=32GB", "#PBS -l walltime=02:00:00",
                     "#PBS -j oe"):
        assert expected in lines, (expected, script)
    assert any("distributed.cli.dask_worker" in ln and "--nworkers 2" in ln for ln in lines)


def test_hpc_scripts_compile_and_batch_script_is_valid(tmp_path):
    for name in ("slurm_runner.py", "jobqueue_run.py"):
        py_compile.compile(str(DEPLOY / "hpc" / name), cfile=str(tmp_path / f"{name}c"),
                           doraise=True)
    sb = DEPLOY / "hpc/submit.sbatch"
    if shutil.which("bash"):
        subprocess.run(["bash", "-n", str(sb)], check=True)
    text = sb.read_text()
    directives = dict(
        re.match(r"#SBATCH --([\w-]+)=(\S+)", ln).groups()
        for ln in text.splitlines() if ln.startswith("#SBATCH --")
    )
    assert int(directives["ntasks"]) >= 3  # scheduler + client + at least one worker
    srun = [ln for ln in text.splitlines() if ln.startswith("srun ")]
    assert len(srun) == 1 and "$RUNNER" in srun[0]
    assert "deploy/hpc/slurm_runner.py" in text


def _simulate_slurm(tmp_path: Path, args: list[str], n_tasks: int = 3, job_id: str = "777",
                    timeout: float = 90) -> tuple[list[int], list[str], list[str]]:
    """Run slurm_runner.py as ``n_tasks`` local processes with the SLURM variables srun sets.

    Returns exit codes, stdouts and stderrs (through files: unread pipes could fill and block).
    """
    script = str(DEPLOY / "hpc/slurm_runner.py")
    procs, files = [], []
    try:
        for rank in range(n_tasks):
            env = _env()
            env.update(SLURM_PROCID=str(rank), SLURM_NTASKS=str(n_tasks), SLURM_JOB_ID=job_id,
                       SLURM_CPUS_PER_TASK="1", TMPDIR=str(tmp_path))
            out, err = tmp_path / f"task{rank}.out", tmp_path / f"task{rank}.err"
            files.append((out, err))
            with open(out, "w") as fo, open(err, "w") as fe:
                procs.append(subprocess.Popen(
                    [sys.executable, script, *args, "--dashboard-address", ":0",
                     "--memory-limit", "1GiB",
                     "--scheduler-file", str(tmp_path / "sched-{job_id}.json")],
                    env=env, cwd=tmp_path, stdout=fo, stderr=fe,
                ))
        deadline = time.monotonic() + timeout
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return ([p.returncode for p in procs], [o.read_text() for o, _ in files],
            [e.read_text() for _, e in files])


def test_slurm_runner_simulated_allocation(tmp_path):
    """Run the SLURMRunner script as 3 'SLURM tasks' on this machine (scheduler, client, worker)."""
    pytest.importorskip("dask_jobqueue")
    codes, outs, errs = _simulate_slurm(tmp_path, ["--check", "--worker-timeout", "60"])
    assert codes == [0, 0, 0], [(c, e[-2000:]) for c, e in zip(codes, errs, strict=True)]
    summary = json.loads(outs[1].strip().splitlines()[-1])  # task 1 is the client
    assert summary == {"check": {"ok": True, "n_workers": 1,
                                 "scheduler": summary["check"]["scheduler"]}}
    assert not outs[0].strip() and not outs[2].strip()  # only the client prints


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(cf, "run_job"), reason="cfact_dask.run_job not exported yet")
def test_slurm_runner_runs_a_job(tmp_path):
    """The whole pipeline of a job file through the SLURMRunner script (3 simulated tasks)."""
    pytest.importorskip("dask_jobqueue")
    import zarr

    rng = np.random.default_rng(0)
    W = np.abs(rng.standard_normal((600, 3))) * (rng.random((600, 3)) < 0.1)
    H = np.abs(rng.standard_normal((3, 40)))
    z = zarr.create_array(str(tmp_path / "input.zarr"), shape=(600, 40), chunks=(150, 20),
                          dtype="f8")
    z[:] = W @ H
    job = _load("config/job.yaml")
    job["cfact"]["input"]["path"] = str(tmp_path / "input.zarr")
    job["cfact"]["output"]["path"] = str(tmp_path / "run.zarr")
    job["cfact"]["sketch"]["n_components"] = 120
    job["cfact"]["factor"].update(rank=3, max_iter=30)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    codes, outs, errs = _simulate_slurm(tmp_path, [str(tmp_path / "job.yaml"), "--check"],
                                        job_id="778", timeout=280)
    assert codes == [0, 0, 0], [(c, e[-3000:]) for c, e in zip(codes, errs, strict=True)]
    summary = json.loads(outs[1].strip().splitlines()[-1])
    assert summary["check"]["ok"] is True
    assert summary["report"]["rank"] == 3
    assert summary["report"]["out"] == str(tmp_path / "run.zarr")
    assert (tmp_path / "run.zarr").is_dir()


@pytest.mark.slow
def test_slurm_runner_runs_a_dgd_local_job_file(tmp_path):
    """deploy/config/job-dgd-local.yaml (issue 16: a non-NMF method as a SLURM batch job)
    through the SLURMRunner script: 4 simulated tasks, so DGD's nodes spread over 2 workers."""
    pytest.importorskip("dask_jobqueue")
    import zarr

    rng = np.random.default_rng(0)
    Y = np.abs(rng.standard_normal((400, 4))) @ np.abs(rng.standard_normal((4, 160)))
    z = zarr.create_array(str(tmp_path / "input.zarr"), shape=Y.shape, chunks=(200, 20),
                          dtype="f8")
    z[:] = Y
    job = _load("config/job-dgd-local.yaml")
    job["cfact"]["input"]["path"] = str(tmp_path / "input.zarr")
    job["cfact"]["output"]["path"] = str(tmp_path / "run.zarr")
    job["cfact"]["factor"].update(rank=4, max_iter=200)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    codes, outs, errs = _simulate_slurm(tmp_path, [str(tmp_path / "job.yaml"), "--check"],
                                        n_tasks=4, job_id="779", timeout=280)
    assert codes == [0, 0, 0, 0], [(c, e[-3000:]) for c, e in zip(codes, errs, strict=True)]
    summary = json.loads(outs[1].strip().splitlines()[-1])
    assert summary["check"]["ok"] is True and summary["check"]["n_workers"] == 2
    rep = summary["report"]
    assert rep["factor"]["method"] == "dgd-local" and rep["certificate"]["ok"] is True
    meta = zarr.open_group(str(tmp_path / "run.zarr"), mode="r").attrs["cfact"]
    assert meta["complete"] and "factor" in meta["stages"]


def _load_script(name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_deploy_{name}", DEPLOY / "hpc" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_slurm_runner_defaults_from_slurm_environment(monkeypatch, capsys):
    mod = _load_script("slurm_runner")
    for k in ("SLURM_MEM_PER_CPU", "SLURM_MEM_PER_NODE", "SLURM_NTASKS_PER_NODE",
              "SLURM_TASKS_PER_NODE", "SLURM_CPUS_PER_TASK", "CFACT_SCHEDULER_DIR", "SCRATCH"):
        monkeypatch.delenv(k, raising=False)
    assert mod.default_nthreads() == 1 and mod.default_memory_limit() == "auto"
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    monkeypatch.setenv("SLURM_MEM_PER_CPU", "2048")
    assert mod.default_nthreads() == 4 and mod.default_memory_limit() == "8192MiB"
    monkeypatch.delenv("SLURM_MEM_PER_CPU")
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "64000")
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "4(x3)")
    assert mod.default_memory_limit() == "16000MiB"
    monkeypatch.setenv("SCRATCH", "/scratch/me")
    assert mod.default_scheduler_file() == "/scratch/me/cfact-scheduler-{job_id}.json"
    args = mod.parse_args(["job.yaml", "--resume"])
    assert args.job == "job.yaml" and args.resume and not args.check and args.nthreads == 4
    with pytest.raises(SystemExit):
        mod.parse_args([])  # neither a job file nor --check
    assert "give a job file" in capsys.readouterr().err


# --------------------------------------------------------------------------- TLS
def _small_input() -> da.Array:
    rng = np.random.default_rng(7)
    return da.from_array(rng.random((1200, 30)), chunks=(300, 10))


def _connect_error(addr: str, security: Any = None) -> BaseException:
    """Try to connect a Client; return the exception that refused it (fail if it connected).

    Asynchronous so that the refused Client is closed right away (a synchronous one that failed
    to start would wait for its close timeout when garbage-collected).
    """
    import asyncio

    from distributed import Client

    async def attempt() -> BaseException:
        kw = {} if security is None else {"security": security}
        client = Client(addr, asynchronous=True, timeout="5s", set_as_default=False, **kw)
        try:
            await client
        except Exception as e:  # noqa: BLE001 - returned for the caller's assertions
            return e
        finally:
            await client.close()
        raise AssertionError(f"a client with security={security!r} connected to {addr}")

    return asyncio.run(attempt())


def test_tls_local_cluster_runs_sketch_and_refuses_plain_clients():
    pytest.importorskip("cryptography")
    from distributed import Client, LocalCluster
    from distributed.security import Security

    sec = Security.temporary()
    assert sec.require_encryption
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, security=sec,
                      dashboard_address=":0", memory_limit="1GiB") as cluster:
        addr = cluster.scheduler_address
        assert addr.startswith("tls://")
        with Client(cluster, security=sec, set_as_default=False) as client:
            assert all(w.startswith("tls://") for w in client.scheduler_info()["workers"])
            sk = cf.sketch(_small_input(), 40, kind="expander", seed=3)
            remote = sk.compute(client=client, progress=False)
            # the whole Factorize-Recover pipeline over the encrypted cluster
            M, _, _ = cf.datasets.planted_nmf(400, 120, 3, density=0.05, noise=0.05,
                                              random_state=2)
            run = cf.factorize_recover(M, 3, sketch=dict(n_components=100), client=client,
                                       progress=False)
            W_tls = run.W.compute(scheduler=client)
        local = sk.data.compute(scheduler="sync")
        assert remote.tobytes() == local.tobytes()
        ref = cf.factorize_recover(M, 3, sketch=dict(n_components=100), progress=False)
        np.testing.assert_allclose(W_tls, ref.W.compute(), rtol=1e-10, atol=1e-12)
        assert run.report["recover"]["estimated_relative_error"] < 0.2

        # without the certificates: no TLS context at all
        e = _connect_error(addr)
        assert isinstance(e, TypeError) and "TLS expects" in str(e), repr(e)
        # plain TCP to the TLS listener: the scheduler drops the connection
        e = _connect_error(addr.replace("tls://", "tcp://"))
        assert isinstance(e, OSError), repr(e)
        # valid TLS, but a certificate from another CA
        e = _connect_error(addr, Security.temporary())
        assert isinstance(e, OSError) and "certificate" in str(e), repr(e)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config -> dotted keys, so dask.config.set merges instead of replacing sections."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _wait_for_file(path: Path, procs: list, logs: list[Path], timeout: float = 60) -> None:
    t0 = time.monotonic()
    while not path.exists():
        for p, log in zip(procs, logs, strict=False):  # logs of the started ones
            if p.poll() is not None:
                tail = log.read_text()[-3000:]
                raise AssertionError(f"process exited early: {p.args}\n{tail}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{path} did not appear in {timeout}s")
        time.sleep(0.1)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_readme_recipe_with_scheduler_and_worker_processes(tmp_path):
    """make-certs.sh + dask-tls.yaml as documented, with `dask scheduler` / `dask worker`."""
    pytest.importorskip("cryptography")  # Security.temporary() makes the foreign certificate
    from distributed import Client
    from distributed.security import Security

    certs = tmp_path / "certs"
    # ECDSA keys: the same recipe as the RSA default, generated in milliseconds
    subprocess.run(["sh", str(DEPLOY / "tls/make-certs.sh"), str(certs), "scheduler"],
                   check=True, capture_output=True, env={**_env(), "CFACT_TLS_KEY": "ec"})
    for role in ("ca", "scheduler", "worker", "client"):
        assert (certs / f"{role}.pem").stat().st_size > 0
    # dask-tls.yaml with its /etc/dask/tls paths pointing at the new certificates
    text = (DEPLOY / "tls/dask-tls.yaml").read_text().replace("/etc/dask/tls", str(certs))
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "dask-tls.yaml").write_text(text)
    env = _env()
    env["DASK_CONFIG"] = str(conf)
    sfile = tmp_path / "scheduler.json"
    procs: list[subprocess.Popen] = []
    logs = [tmp_path / "scheduler.log", tmp_path / "worker.log"]

    def start(args: list[str]) -> None:
        # stderr to a file: an unread pipe could fill up and block the process
        with open(logs[len(procs)], "w") as err:
            procs.append(subprocess.Popen([sys.executable, "-m", "dask", *args], env=env,
                                          cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err))

    try:
        start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0",
               "--scheduler-file", str(sfile)])
        # started together (the worker waits for the scheduler file): one start-up latency
        start(["worker", "--scheduler-file", str(sfile), "--nthreads", "1", "--no-nanny",
               "--no-dashboard", "--memory-limit", "1GiB", "--local-directory", str(tmp_path)])
        _wait_for_file(sfile, procs, logs)
        addr = json.loads(sfile.read_text())["address"]
        assert addr.startswith("tls://")  # from distributed.comm.default-scheme alone
        with dask.config.set(_flatten(yaml.safe_load(text))):
            sec = Security()  # what every client gets from the same config file
        assert sec.require_encryption and sec.tls_client_cert == str(certs / "client.pem")
        with Client(addr, security=sec, set_as_default=False, timeout="20s") as client:
            client.wait_for_workers(1, timeout=30)
            sk = cf.sketch(_small_input(), 25, kind="sparse_sign", seed=5)
            remote = sk.compute(client=client, progress=False)
        assert remote.tobytes() == sk.data.compute(scheduler="sync").tobytes()
        # a client with certificates from another CA, or without TLS, is refused
        e = _connect_error(addr, Security.temporary())
        assert isinstance(e, OSError) and "certificate" in str(e), repr(e)
        e = _connect_error(addr.replace("tls://", "tcp://"), Security())
        assert isinstance(e, OSError), repr(e)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
