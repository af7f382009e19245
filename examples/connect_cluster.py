# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Running on an existing Dask cluster
#
# cfact_dask never starts a cluster behind your back when you give it one: every entry point
# takes `client=` (a `distributed.Client`, a scheduler address or — through `cf.connect` — a
# scheduler file). This notebook connects to the cluster named by an environment variable and
# runs a small Factorize-Recover pipeline there:
#
# * `CFACT_SCHEDULER`: a scheduler address (`tcp://10.0.0.5:8786`, `tls://...`) or the path of a
#   scheduler file written by `dask scheduler --scheduler-file F` (e.g. on a shared filesystem
#   under SLURM);
# * otherwise `DASK_SCHEDULER_ADDRESS`, dask's own variable.
#
# With neither set the notebook says it is skipped and stops (exit code 0), so it can run in CI
# unconditionally. To try it locally:
#
# ```bash
# python -m dask scheduler --port 8786 &
# python -m dask worker tcp://127.0.0.1:8786 --nworkers 2 --nthreads 1 &
# CFACT_SCHEDULER=tcp://127.0.0.1:8786 python examples/connect_cluster.py
# ```
#
# The data here are scikit-learn's digits (1797 images of 8 × 8 pixels, shipped in its wheel) as
# a pixel × image matrix, sent to the workers inside the task graph. For real data the input and
# any `out=` store must be somewhere every worker can read and write: a shared filesystem or an
# object-store URL (`s3://...`, `gs://...` via fsspec), never a path only the client sees.

# %%
from __future__ import annotations

import json
import os
import sys
import time
import warnings

SCHEDULER = os.environ.get("CFACT_SCHEDULER") or os.environ.get("DASK_SCHEDULER_ADDRESS")
if not SCHEDULER:
    print("connect_cluster: skipped (set CFACT_SCHEDULER or DASK_SCHEDULER_ADDRESS to a scheduler "
          "address or scheduler file to run it)")
    print("RESULT " + json.dumps({"example": "connect_cluster", "skipped": True}))
    sys.exit(0)

# %%
import numpy as np  # noqa: E402
from distributed import get_task_stream  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.decomposition import NMF  # noqa: E402
from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning  # noqa: E402

import cfact_dask as cf  # noqa: E402
from cfact_dask.errors import ConvergenceWarning  # noqa: E402

SMALL = os.environ.get("CFACT_EXAMPLES_SMALL", "") not in ("", "0")
ITERS = 100 if SMALL else 300
if os.path.isfile(SCHEDULER):
    client = cf.connect(scheduler_file=SCHEDULER)
else:
    client = cf.connect(scheduler=SCHEDULER)
info = client.scheduler_info()
workers = info.get("workers", {})
print(f"connected to {client.scheduler.address}: {len(workers)} workers, "
      f"{sum(w.get('nthreads', 0) for w in workers.values())} threads; dashboard "
      f"{client.dashboard_link}")

# %% [markdown]
# ## Factorize-Recover on the cluster
# One pass sketches the 64 pixels down to `d = 32` measurements (plus a small Gaussian hold-out
# sketch for the certificate), NMF runs on the sketch, and `recover="auto"` tries sparse recovery
# and falls back to an exact extra pass when the certificate says the parts are too dense.

# %%
digits = load_digits()
M = digits.data.T.astype(np.float64)  # 64 pixels × 1797 images
RANK, D = 10, 32
t0 = time.perf_counter()
with get_task_stream(client) as stream, warnings.catch_warnings():  # worker of every task
    warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed iteration budget
    run = cf.factorize_recover(
        M, RANK, sketch=dict(n_components=D, seed=0),
        factor=dict(max_iter=ITERS, tol=1e-5), recover="auto", client=client, progress=False,
    )
seconds = time.perf_counter() - t0
W = np.asarray(run.W.compute())
H = np.asarray(run.H.compute() if hasattr(run.H, "compute") else run.H)
err = cf.relative_error(M, W, H)
# reference: scikit-learn's NMF of the uncompressed matrix, here on the client
with warnings.catch_warnings():
    warnings.simplefilter("ignore", SkConvergenceWarning)
    sk_nmf = NMF(RANK, init="nndsvda", max_iter=ITERS, random_state=0)
    W_ref = sk_nmf.fit_transform(M)
err_ref = cf.relative_error(M, W_ref, sk_nmf.components_)
rep = run.report
print(f"factorize_recover on the cluster: {M.shape[0]} → {D} rows, rank {RANK}, "
      f"{rep['factor']['n_iter']} NMF iterations, recovery {rep['recover']['method']}, relative "
      f"error {err:.4f} (held-out estimate {rep['recover']['estimated_relative_error']:.4f}), "
      f"{seconds:.1f}s; uncompressed NMF (scikit-learn) {err_ref:.4f}, ratio {err / err_ref:.3f}")

# the work really ran on the cluster: tasks per worker, from the scheduler's task stream
per_worker: dict[str, int] = {}
for task in stream.data:
    per_worker[task["worker"]] = per_worker.get(task["worker"], 0) + 1
print(f"{len(stream.data)} tasks ran on {len(per_worker)} workers: {per_worker}")
client.close()

# %%
print("RESULT " + json.dumps({
    "example": "connect_cluster", "skipped": False, "scheduler": SCHEDULER,
    "n_workers": len(workers), "rank": RANK, "d": D, "recover_method": rep["recover"]["method"],
    "relative_error": err, "err_uncompressed": err_ref, "error_ratio": err / err_ref,
    "estimated_error": rep["recover"]["estimated_relative_error"],
    "n_tasks": len(stream.data), "workers_used": len(per_worker), "seconds": seconds,
}))
