"""Object storage end to end (issue 19), against a real S3 server: moto's standalone server as a
subprocess on 127.0.0.1 (``tests/s3server.py``), with the standard AWS environment variables.

* the whole pipeline on ``s3://`` equals the same pipeline on a local copy, bitwise, on a
  multi-process cluster whose workers have no AWS variables (the job file's storage_options
  must reach them), and the input objects are left unchanged;
* an interrupted remote run store is never opened as complete, by any reader; resuming it ends
  equal to the uninterrupted run; a `cfact run` SIGKILLed mid-factorization resumes on s3:// (slow);
* credentials appear nowhere: not in any object of the run store, the reports, `--json`, the
  logs or the error messages;
* permanent failures (no such bucket, access denied by a bucket policy, unreachable endpoint)
  are one clear error naming the URL and the fix; a server paused for seconds mid-run is
  survived by retries; a server killed and restarted (losing its buckets) mid-run ends in a clear
  error, not a hang (slow).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
import zarr
from click.testing import CliRunner
from conftest import Crash, crash_at, process_cluster
from s3server import ACCESS_KEY, SECRET_KEY, FaultProxy, MotoServer, free_port

import cfact_dask as cf
from cfact_dask._runtime import storage
from cfact_dask.cli import cli, parse_storage_options
from cfact_dask.datasets import planted_nmf_zarr
from cfact_dask.errors import (
    ConfigError,
    StoreAccessError,
    StoreExistsError,
    StoreNotFoundError,
    StoreUnavailableError,
)
from cfact_dask.factor._nmf import NMFResult
from cfact_dask.pipeline.job import validate_job
from cfact_dask.reconstruction import is_complete, open_reconstruction
from cfact_dask.sketching._sketch import Sketch

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto")

# the runs use tol=0 (a fixed number of iterations, so resumed and uninterrupted runs compare)
pytestmark = pytest.mark.filterwarnings("ignore::cfact_dask.errors.ConvergenceWarning")

#: a credential given only in job files / keywords (the environment has SECRET_KEY)
JOB_SECRET = "cfact-job-secret-0f8e2c41a9b7"


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = MotoServer(str(tmp_path_factory.mktemp("moto")))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module", autouse=True)
def aws_env(moto):
    """The standard AWS variables point at the test server for the whole module."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in moto.env().items():
            mp.setenv(k, v)
        s3fs.S3FileSystem.clear_instance_cache()
        yield
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def fs(moto):
    return s3fs.S3FileSystem(endpoint_url=moto.endpoint, key=ACCESS_KEY, secret=SECRET_KEY,
                             skip_instance_cache=True)


_n_buckets = [0]


@pytest.fixture
def bucket(moto):
    _n_buckets[0] += 1
    name = f"cfact-{os.getpid()}-{_n_buckets[0]}"
    moto.client().create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def local_input(tmp_path_factory):
    path = tmp_path_factory.mktemp("s3data") / "input.zarr"
    planted_nmf_zarr(str(path), 240, 200, 3, density=0.1, noise=0.05, random_state=2,
                     chunks=(60, 50), progress=False)
    return str(path)


def _upload(fs, local: str, url: str) -> str:
    fs.put(local, url.split("://", 1)[1], recursive=True)
    return url


@pytest.fixture
def s3_input(fs, bucket, local_input):
    return _upload(fs, local_input, f"s3://{bucket}/input.zarr")


@pytest.fixture(scope="module")
def bare_cluster():
    """A real 2-process cluster started with no AWS variables: its workers can reach the test
    server only with what the job's storage_options carry."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("AWS_")}
    try:
        with process_cluster(2, memory_limit="1GiB") as client:
            os.environ.update(saved)
            yield client
    finally:
        os.environ.update(saved)


def _job(src, out, *, in_opts=None, out_opts=None, **over):
    job = {"cfact": {
        "input": {"path": src, "variable": "M"},
        "sketch": {"n_components": 60, "kind": "sparse_sign", "seed": 0},
        "factor": {"method": "nmf", "rank": 3, "max_iter": 60, "tol": 0.0,
                   "checkpoint_every": 5},
        "recover": {"method": "lstsq-data"},  # a second pass over the remote input
        "output": {"path": out, "reconstruct": True},
    }}
    if in_opts is not None:
        job["cfact"]["input"]["storage_options"] = in_opts
    if out_opts is not None:
        job["cfact"]["output"]["storage_options"] = out_opts
    for k, v in over.items():
        job["cfact"][k].update(v)
    return job


def _arrays(store: str, options=None) -> dict[str, np.ndarray]:
    """Every array of a Zarr hierarchy, by path."""
    root = zarr.open_group(store, mode="r", storage_options=options) if "://" in store else \
        zarr.open_group(store, mode="r")
    out = {}

    def visit(g, prefix):
        for name, node in g.members():
            p = f"{prefix}{name}"
            if isinstance(node, zarr.Array):
                out[p] = np.asarray(node[...])
            else:
                visit(node, p + "/")

    visit(root, "")
    return out


def _objects(fs, url: str) -> dict[str, bytes]:
    prefix = url.split("://", 1)[1]
    fs.invalidate_cache()
    return {p: fs.cat_file(p) for p in fs.find(prefix)}


def _opts(moto, secret=JOB_SECRET):
    return {"endpoint_url": moto.endpoint, "key": ACCESS_KEY, "secret": secret}


# --------------------------------------------------------------------- options, schema, scrub
def test_job_schema_and_cli_storage_options():
    base = {"cfact": {"input": {"path": "s3://b/in.zarr", "storage_options": {"anon": True}},
                      "sketch": {"n_components": 10}, "factor": {"rank": 2},
                      "output": {"path": "s3://b/run.zarr",
                                 "storage_options": {"endpoint_url": "http://x"}}}}
    job = validate_job(base)
    assert job["input"]["storage_options"] == {"anon": True}
    assert job["output"]["storage_options"] == {"endpoint_url": "http://x"}
    assert validate_job({"cfact": {**base["cfact"], "input": {"path": "in.zarr"}}})[
        "input"]["storage_options"] is None
    with pytest.raises(ConfigError, match="storage_options' must be"):
        validate_job({"cfact": {**base["cfact"], "input": {"path": "s3://b/x",
                                                          "storage_options": "anon"}}})
    with pytest.raises(ConfigError, match="local path"):
        validate_job({"cfact": {**base["cfact"], "output": {"path": "run.zarr",
                                                           "storage_options": {"anon": True}}}})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['storage'\]"):
        validate_job({"cfact": {**base["cfact"], "output": {"path": "s3://b/r", "storage": {}}}})
    assert parse_storage_options(["endpoint_url=http://h:9000", "anon=false",
                                  "client_kwargs.region_name=eu-west-1"]) == {
        "endpoint_url": "http://h:9000", "anon": False,
        "client_kwargs": {"region_name": "eu-west-1"}}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_storage_options(["endpoint_url"])


def test_resolved_options_retry_and_scrub(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    opts = storage.resolve_options("s3://b/x.zarr", {"secret": JOB_SECRET, "key": "AKIAX"})
    assert opts["config_kwargs"]["retries"]["max_attempts"] == 10
    assert opts["endpoint_url"] == "http://127.0.0.1:1"
    given = storage.resolve_options("s3://b/x", {"config_kwargs": {"retries": {
        "max_attempts": 3}}, "endpoint_url": "http://e"})
    assert given["config_kwargs"]["retries"] == {"max_attempts": 3}
    assert given["endpoint_url"] == "http://e"
    assert storage.resolve_options("local.zarr", {"anon": True}) == {}
    assert storage.public_options("s3://b/x", opts) == {"protocol": "s3",
                                                        "endpoint_url": "http://127.0.0.1:1"}
    rec = storage.scrub({"a": {"secret": JOB_SECRET, "client_kwargs": {
        "aws_secret_access_key": "zzzz1"}}, "msg": f"failed with {JOB_SECRET} and {SECRET_KEY}"})
    assert JOB_SECRET not in json.dumps(rec) and SECRET_KEY not in json.dumps(rec)
    assert rec["a"] == {"client_kwargs": {}}


# ---------------------------------------------------------------------------- the pipeline
def test_pipeline_on_s3_equals_local_bitwise(moto, fs, bucket, s3_input, local_input,
                                             bare_cluster, tmp_path):
    before = _objects(fs, s3_input)
    local = cf.run_job(_job(local_input, str(tmp_path / "run.zarr")), client=bare_cluster,
                       progress=False)
    out = f"s3://{bucket}/run.zarr"
    # the workers have no AWS variables: endpoint and credentials come from the job file
    remote = cf.run_job(_job(s3_input, out, in_opts=_opts(moto), out_opts=_opts(moto)),
                        client=bare_cluster, progress=False)
    a, b = _arrays(str(tmp_path / "run.zarr")), _arrays(out, _opts(moto))
    assert set(a) == set(b) and {"sketch/sketch", "factors/H", "recovered/W",
                                 "reconstruction/reconstruction"} <= set(a)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # bitwise
    assert remote.report["reconstruction"]["relative_error"] == \
        local.report["reconstruction"]["relative_error"]
    meta = zarr.open_group(out, mode="r").attrs["cfact"]
    assert meta["complete"] and meta["stages"] == ["sketch", "factor", "recover", "reconstruct"]
    assert meta["storage"] == {"protocol": "s3", "endpoint_url": moto.endpoint}
    assert _objects(fs, s3_input) == before  # the input is read-only
    # a second run into the same store is refused without --overwrite / --resume
    with pytest.raises(StoreExistsError, match=out):
        cf.run_job(_job(s3_input, out), progress=False)


def test_open_array_remote_reads_whole_chunks_directly(s3_input, local_input):
    X = cf.open_array(s3_input, variable="M")
    Y = cf.open_array(local_input, variable="M")
    checked = next(v for v in X.data.dask.values()
                   if type(v).__name__ == "_CheckedZarr")
    assert checked._whole_chunk((slice(60, 120), slice(0, 50))) is not None  # direct path on
    np.testing.assert_array_equal(X.data.compute(), Y.data.compute())
    sk = cf.sketch(X, 40, kind="sparse_sign", seed=1).compute(progress=False)
    np.testing.assert_array_equal(sk, cf.sketch(Y, 40, kind="sparse_sign", seed=1)
                                  .compute(progress=False))


def test_plan_counts_the_http_body_and_client_on_object_storage(s3_input, local_input,
                                                                tmp_path):
    """The planner adds, for a remote input, one chunk per task (the response body held while it
    is decoded) and the S3 client's buffers per worker (both measured by bench_s3.py)."""
    from cfact_dask.pipeline._plan import REMOTE_CLIENT_BYTES

    kw = dict(n_workers=2, threads_per_worker=1)
    remote = cf.plan(_job(s3_input, f"{s3_input}.run"), **kw)
    local = cf.plan(_job(local_input, str(tmp_path / "run.zarr")), **kw)
    chunk = 60 * 50 * 4  # the inputs' chunks: (60, 50) float32
    assert remote.task_peak["sketch"] == local.task_peak["sketch"] + chunk
    assert remote.worker_peak["sketch"] == \
        local.worker_peak["sketch"] + chunk + REMOTE_CLIENT_BYTES
    assert remote.bytes_read == local.bytes_read


def test_interrupted_remote_store_is_never_complete_and_resumes(fs, bucket, s3_input,
                                                                local_input, tmp_path):
    out = f"s3://{bucket}/run.zarr"
    kw = dict(sketch=dict(n_components=60, kind="sparse_sign"), recover="lstsq-data",
              reconstruct=True, progress=False)
    fkw = dict(max_iter=40, tol=0.0, checkpoint_every=5)
    X = cf.open_array(s3_input, variable="M")
    with pytest.raises(Crash):
        cf.factorize_recover(X, 3, factor=fkw, out=out, callback=crash_at(23), **kw)
    meta = zarr.open_group(out, mode="r").attrs["cfact"]
    assert meta["complete"] is False and meta["stages"] == ["sketch"]
    with pytest.raises(StoreNotFoundError, match="factors"):
        NMFResult.from_zarr(out, "factors")
    r = CliRunner().invoke(cli, ["reconstruct", out, "--like", s3_input, "--quiet"])
    assert r.exit_code != 0 and "Traceback" not in r.output
    # a sketch / recovery / reconstruction group whose write was cut short is refused too
    sk = Sketch.from_zarr(out, "sketch")
    sk.to_zarr(out, "sketch2", progress=False)
    g = zarr.open_group(out, path="sketch2", mode="r+")
    g.attrs["cfact"] = {**g.attrs["cfact"], "complete": False}
    with pytest.raises(StoreNotFoundError, match="incomplete"):
        Sketch.from_zarr(out, "sketch2")
    zarr.open_group(out, mode="a").create_group("recovered").attrs["cfact"] = {
        "type": "recovered", "complete": False}
    from cfact_dask.recovery import load_recovery as _load_recovery

    with pytest.raises(StoreNotFoundError, match="not a complete recovered"):
        _load_recovery(out, None)
    del zarr.open_group(out, mode="a")["recovered"]
    del zarr.open_group(out, mode="a")["sketch2"]
    assert not is_complete(out, "reconstruction")
    with pytest.raises(StoreNotFoundError):
        open_reconstruction(out, "reconstruction")
    # resumed from the checkpoint at 20, equal to an uninterrupted run
    res = cf.factorize_recover(X, 3, factor=fkw, out=out, resume=True, **kw)
    ref = cf.factorize_recover(cf.open_array(local_input, variable="M"), 3, factor=fkw,
                               out=str(tmp_path / "ref.zarr"), **kw)
    assert res.factors.n_iter_ == ref.factors.n_iter_ == 40
    a, b = _arrays(out), _arrays(str(tmp_path / "ref.zarr"))
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert zarr.open_group(out, mode="r").attrs["cfact"]["complete"] is True
    # `cfact reconstruct` reads recovered/W only when its group is marked complete
    g = zarr.open_group(out, path="recovered", mode="r+")
    g.attrs["cfact"] = {**g.attrs["cfact"], "complete": False}
    r = CliRunner().invoke(cli, ["reconstruct", out, "--like", s3_input + "/M", "--out",
                                 out.replace("run.zarr", "rec.zarr"), "--quiet"])
    assert r.exit_code != 0 and "not a complete recovered" in r.output, r.output


def test_every_stage_command_on_s3(moto, fs, bucket, s3_input, monkeypatch):
    """sketch -> factor -> recover -> reconstruct -> inspect, each a command on s3:// URLs, with
    the endpoint from --storage-option only (not from the environment)."""
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    s3fs.S3FileSystem.clear_instance_cache()
    so = ["--storage-option", f"endpoint_url={moto.endpoint}"]
    run = f"s3://{bucket}/steps.zarr"
    cr = CliRunner()
    steps = [
        # d = 150: the planted W has 24 nonzeros per column (density 0.1 of 240), so sparse
        # recovery needs d >~ 2 k log(n/k) = 110; at d = 80 the certificate rightly rejects it
        # (held-out error 1.5x the reachable one)
        ["sketch", s3_input, run, "-d", "150", "--variable", "M", "--quiet", *so],
        ["factor", run, "--rank", "3", "--out", run, "--max-iter", "30", "--quiet", *so],
        ["recover", run, "--method", "nnlasso", "--json", *so],
        ["reconstruct", run, "--like", s3_input + "/M", "--json", *so],
    ]
    for args in steps:
        r = cr.invoke(cli, args)
        assert r.exit_code == 0, (args[0], r.output)
    assert json.loads(r.output)["relative_error"] < 0.2
    r = cr.invoke(cli, ["inspect", run, "--json", *so])
    assert r.exit_code == 0, r.output
    paths = {n["path"] for n in json.loads(r.output)["nodes"]}
    assert {"sketch", "factors", "recovered", "reconstruction"} <= paths
    # the sketch command refuses to replace the group it wrote, on object storage too
    r = cr.invoke(cli, steps[0])
    assert r.exit_code != 0 and "StoreExistsError" in r.output and "--overwrite" in r.output
    # and without the endpoint nothing is reachable: the option really was what was used
    r = cr.invoke(cli, ["inspect", run, "--storage-option", "endpoint_url=http://127.0.0.1:1",
                        "--storage-option", "config_kwargs.retries.max_attempts=1"])
    assert r.exit_code != 0 and "Traceback" not in r.output
    # a command's options end with it (commands also run in-process)
    assert storage.resolve_options("s3://b/x").get("endpoint_url") is None


# ------------------------------------------------------------------------------- credentials
def test_credentials_are_never_recorded_or_logged(moto, fs, bucket, s3_input, tmp_path):
    out = f"s3://{bucket}/run.zarr"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_job(s3_input, out, in_opts=_opts(moto),
                                       out_opts=_opts(moto))))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    runs = [subprocess.run([sys.executable, "-m", "cfact_dask.cli", "run", str(job), "-v"],
                           capture_output=True, text=True, timeout=240, env=env)]
    runs.append(subprocess.run(
        [sys.executable, "-m", "cfact_dask.cli", "run", str(job), "--json", "--overwrite",
         "--storage-option", f"secret={JOB_SECRET}"],
        capture_output=True, text=True, timeout=240, env=env))
    for r in runs:
        assert r.returncode == 0, r.stderr[-3000:]
    inspected = CliRunner().invoke(cli, ["inspect", out, "--json"])
    assert inspected.exit_code == 0 and '"storage"' in inspected.output
    # -v: every log line cfact writes was on (per iteration too), and none holds a secret
    assert "resuming" not in runs[0].stderr and "nmf iteration" in runs[0].stderr
    report = json.loads(runs[1].stdout)
    assert report["out"] == out
    objects = _objects(fs, out)
    assert any(p.endswith("zarr.json") for p in objects) and len(objects) > 10
    for secret in (JOB_SECRET, SECRET_KEY):
        for p, data in objects.items():
            assert secret.encode() not in data, p
        for r in runs:
            assert secret not in r.stdout and secret not in r.stderr
        assert secret not in inspected.output
    # errors do not repeat them either: a denied write with the job's credentials
    moto.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*",
                                                "Action": "s3:PutObject",
                                                "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
    r = subprocess.run([sys.executable, "-m", "cfact_dask.cli", "run", str(job), "--overwrite"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode != 0 and "StoreAccessError" in r.stderr
    assert JOB_SECRET not in r.stderr and SECRET_KEY not in r.stderr


# --------------------------------------------------------------------------- permanent errors
def _cli(job, *extra, timeout=120):
    return subprocess.run([sys.executable, "-m", "cfact_dask.cli", "run", str(job), "--quiet",
                           *extra], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _one_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def test_missing_bucket_and_denied_write_are_one_clear_error(moto, fs, bucket, s3_input,
                                                             tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_job(s3_input, "s3://no-such-bucket-cfact/run.zarr")))
    msg = _one_error(_cli(job).stderr)
    assert "StoreNotFoundError" in msg and "s3://no-such-bucket-cfact/run.zarr" in msg
    assert "does not exist" in msg and "create the bucket" in msg and moto.endpoint in msg
    job.write_text(yaml.safe_dump(_job("s3://no-such-bucket-cfact/in.zarr",
                                       f"s3://{bucket}/run.zarr")))
    msg = _one_error(_cli(job).stderr)
    assert "bucket 'no-such-bucket-cfact' does not exist" in msg
    assert not fs.exists(f"{bucket}/run.zarr")
    # a bucket whose policy denies writes: refused before any compute, nothing written
    ro = bucket + "-ro"
    moto.client().create_bucket(Bucket=ro)
    moto.client().put_bucket_policy(Bucket=ro, Policy=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*",
                                                "Action": ["s3:PutObject", "s3:DeleteObject"],
                                                "Resource": f"arn:aws:s3:::{ro}/*"}]}))
    job.write_text(yaml.safe_dump(_job(s3_input, f"s3://{ro}/run.zarr")))
    msg = _one_error(_cli(job).stderr)
    assert "StoreAccessError" in msg and f"s3://{ro}/run.zarr" in msg
    assert "access denied" in msg and "s3:PutObject" in msg and "bucket policy" in msg
    assert fs.ls(ro, refresh=True) == []
    # the API raises the same classes (PermissionError / FileNotFoundError subclasses)
    with pytest.raises(StoreAccessError):
        cf.factorize_recover(cf.open_array(s3_input, variable="M"), 3, sketch=40,
                             out=f"s3://{ro}/run.zarr", progress=False)
    with pytest.raises(StoreNotFoundError, match="no-such-bucket-cfact"):
        cf.open_array("s3://no-such-bucket-cfact/x.zarr")


def test_unreachable_endpoint_is_retried_then_one_clear_error(tmp_path, s3_input):
    import dask

    dead = {"endpoint_url": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    with dask.config.set({"cfact.storage.retries": 2}):
        with pytest.raises(StoreUnavailableError, match="did not answer") as e:
            cf.open_array(s3_input, variable="M", storage_options=dead)
    assert dead["endpoint_url"] in str(e.value) and "2 attempts" in str(e.value)


def test_throttling_5xx_and_resets_are_retried_and_chunk_reads_overlap(moto, fs, bucket,
                                                                        s3_input, local_input):
    """The failures object stores really send, from a proxy in front of the real server: the
    first GET of every object is throttled (503 SlowDown), the first PUT of every object gets a
    500 InternalError or a reset connection. Every one is retried with backoff, the results are
    bitwise those of the local store, and the chunk GETs of one sketch pass overlap in time."""
    import dask

    Y = cf.open_array(local_input, variable="M")
    ref = cf.sketch(Y, 40, kind="sparse_sign", seed=1)
    with FaultProxy(moto.endpoint, {"GET": 503}, delay=0.05) as proxy, \
            dask.config.set(scheduler="threads", num_workers=4):
        opts = {"endpoint_url": proxy.endpoint}
        X = cf.open_array(s3_input, variable="M", storage_options=opts)
        sk = cf.sketch(X, 40, kind="sparse_sign", seed=1)
        np.testing.assert_array_equal(sk.compute(progress=False), ref.compute(progress=False))
    n_chunks = 16  # 240 x 200 in 60 x 50 chunks: every one was throttled once, then served
    assert proxy.injected.get("503", 0) >= n_chunks
    assert proxy.max_inflight >= 2, "the chunk requests of one pass did not overlap"
    for fault in (500, "reset"):
        out = f"s3://{bucket}/retried-{fault}.zarr"
        with FaultProxy(moto.endpoint, {"PUT": fault}) as proxy:
            opts = {"endpoint_url": proxy.endpoint}
            with storage.cli_scope(opts):  # what a command does with --storage-option
                X = cf.open_array(s3_input, variable="M", storage_options=opts)
                cf.sketch(X, 40, kind="sparse_sign", seed=1).to_zarr(out, progress=False)
        assert proxy.injected.get(str(fault), 0) >= 3  # metadata and chunk objects
        got = cf.Sketch.from_zarr(out)  # read straight from the server: complete and equal
        np.testing.assert_array_equal(got.data.compute(), ref.compute(progress=False))


# ------------------------------------------------------------------ kill, outage, restart (slow)
def _latest_checkpoint(out: str) -> int:
    try:
        g = zarr.open_group(out, path="checkpoint", mode="r")
        return int((dict(g.attrs).get("cfact") or {}).get("latest") or 0)
    except Exception:  # noqa: BLE001 - not created yet, or the server is paused
        return 0


def _served(log_path: str, upto: int | None = None) -> list[tuple[int, str]]:
    """(second of the day, "METHOD path") of each request moto logged (in the first ``upto``
    bytes of its log)."""
    import re

    out = []
    with open(log_path, errors="replace") as f:
        text = f.read() if upto is None else f.read(upto)
        for line in text.splitlines():
            m = re.search(r'\[[^\]]* (\d+):(\d+):(\d+)\] "(\w+) (\S+)', line)
            if m:
                h, mi, se = (int(x) for x in m.groups()[:3])
                out.append((h * 3600 + mi * 60 + se, f"{m.group(4)} {m.group(5)}"))
    return out


def _slow_job(src, out, **over):
    # as tests/test_reliability.py: nnlasso (lstsq-data's result depends in the last bits on
    # whether H comes from memory or from the store, which a resumed run reads)
    return _job(src, out, sketch={"kind": "expander"}, recover={"method": "nnlasso"}, **over)


def _slow_env():
    # iterations on the scheduler instead of in memory: time to interrupt the run
    return {**os.environ, "PYTHONWARNINGS": "ignore", "DASK_CFACT__ALS__LOCAL_MAX_BYTES": "0",
            "DASK_CFACT__CLUSTER__EMBEDDED": "never"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cli_run_killed_mid_factorization_resumes_on_s3(fs, bucket, s3_input, tmp_path):
    over = {"factor": {"max_iter": 200}}
    ref_job, job = tmp_path / "ref.yaml", tmp_path / "job.yaml"
    ref, out = f"s3://{bucket}/ref.zarr", f"s3://{bucket}/run.zarr"
    ref_job.write_text(yaml.safe_dump(_slow_job(s3_input, ref, **over)))
    job.write_text(yaml.safe_dump(_slow_job(s3_input, out, **over)))
    r = subprocess.run([sys.executable, "-m", "cfact_dask.cli", "run", str(ref_job), "--json"],
                       capture_output=True, text=True, timeout=300, env=_slow_env())
    assert r.returncode == 0, r.stderr[-3000:]
    p = subprocess.Popen([sys.executable, "-m", "cfact_dask.cli", "run", str(job), "--quiet"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_slow_env())
    t0 = time.time()
    while _latest_checkpoint(out) < 20 and p.poll() is None and time.time() - t0 < 200:
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(p.pid, signal.SIGKILL)
    p.wait(30)
    killed_at = _latest_checkpoint(out)
    assert 20 <= killed_at < 200
    meta = zarr.open_group(out, mode="r").attrs["cfact"]
    assert not meta["complete"] and meta["stages"] == ["sketch"]
    # a resume with changed parameters is refused and changes no object
    before = _objects(fs, out)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(_slow_job(s3_input, out, factor={"max_iter": 200,
                                                                       "rank": 4})))
    r = subprocess.run([sys.executable, "-m", "cfact_dask.cli", "run", str(changed), "--resume"],
                       capture_output=True, text=True, timeout=120, env=_slow_env())
    assert r.returncode != 0 and "ResumeError" in r.stderr and "rank" in r.stderr
    assert _objects(fs, out) == before
    r = subprocess.run([sys.executable, "-m", "cfact_dask.cli", "run", str(job), "--resume"],
                       capture_output=True, text=True, timeout=300, env=_slow_env())
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"at iteration {killed_at}" in r.stderr and "resuming" in r.stderr
    a, b = _arrays(out), _arrays(ref)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert zarr.open_group(out, mode="r").attrs["cfact"]["complete"] is True


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_server_paused_mid_run_is_survived_by_retries(moto, fs, bucket, s3_input, local_input,
                                                      tmp_path):
    out = f"s3://{bucket}/run.zarr"
    # short timeouts: a frozen server makes requests time out, and they are retried
    opts = {"config_kwargs": {"connect_timeout": 1, "read_timeout": 1}}
    job, ref_job = tmp_path / "job.yaml", tmp_path / "ref.yaml"
    job.write_text(yaml.safe_dump(_slow_job(s3_input, out, in_opts=opts, out_opts=opts,
                                            factor={"max_iter": 200})))
    ref_job.write_text(yaml.safe_dump(_slow_job(local_input, str(tmp_path / "ref.zarr"),
                                                factor={"max_iter": 200})))
    p = subprocess.Popen([sys.executable, "-m", "cfact_dask.cli", "run", str(job), "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_slow_env())
    t0 = time.time()
    while _latest_checkpoint(out) < 10 and p.poll() is None and time.time() - t0 < 200:
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before the outage"
    log_from = os.path.getsize(moto.log_path)
    moto.pause()
    try:
        time.sleep(6)
    finally:
        moto.resume()
    stdout, stderr = p.communicate(timeout=400)
    assert p.returncode == 0, stderr[-3000:]
    assert json.loads(stdout)["out"] == out
    # the server's own log shows the retries: the request in flight when it froze timed out
    # and was sent again, so right after the silence it is served more than once
    served = _served(moto.log_path)
    start = max(len(_served(moto.log_path, log_from)) - 1, 1)  # from the last one before
    gap = max(range(start, len(served)), key=lambda i: served[i][0] - served[i - 1][0])
    assert served[gap][0] - served[gap - 1][0] >= 4, "no outage seen in the server log"
    first = served[gap][1]
    assert sum(1 for t, req in served[gap:gap + 20] if req == first) >= 2, served[gap:gap + 20]
    r = subprocess.run([sys.executable, "-m", "cfact_dask.cli", "run", str(ref_job), "--json"],
                       capture_output=True, text=True, timeout=300, env=_slow_env())
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _arrays(out), _arrays(str(tmp_path / "ref.zarr"))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_server_restarted_mid_run_ends_in_one_clear_error(moto, fs, bucket, s3_input,
                                                          tmp_path):
    out = f"s3://{bucket}/run.zarr"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_slow_job(s3_input, out, factor={"max_iter": 400})))
    p = subprocess.Popen([sys.executable, "-m", "cfact_dask.cli", "run", str(job), "--quiet"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_slow_env())
    t0 = time.time()
    while _latest_checkpoint(out) < 10 and p.poll() is None and time.time() - t0 < 200:
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before the restart"
    # the server goes away (requests are refused and retried), then comes back empty: moto
    # keeps buckets in memory, so the run's bucket is gone, a permanent error
    moto.stop()
    time.sleep(2)
    moto.start()
    try:
        _, stderr = p.communicate(timeout=300)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert p.returncode != 0
    msg = _one_error(stderr)
    assert "StoreNotFoundError" in msg and out in msg and "does not exist" in msg


def test_deploy_files_for_object_storage():
    """The example s3 job validates, keeps no credential, and the Secret fills the variables the
    deploy README tells pods to read."""
    root = os.path.join(os.path.dirname(__file__), "..", "deploy")
    job = validate_job(yaml.safe_load(open(os.path.join(root, "config", "job-s3.yaml"))))
    for section in ("input", "output"):
        assert job[section]["path"].startswith("s3://")
        assert set(job[section]["storage_options"]) == {"endpoint_url"}
    secret = yaml.safe_load(open(os.path.join(root, "kubernetes", "s3-credentials.yaml")))
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "cfact-s3"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["stringData"])
    readme = open(os.path.join(root, "README.md")).read()
    assert "name: cfact-s3" in readme and "envFrom" in readme
    assert '".[plot,s3]"' in open(os.path.join(root, "docker", "Dockerfile")).read()
