"""``cf.plan`` / ``cfact plan``: passes, bytes and memory of a job, before any compute.

Only metadata is read (shape, chunks, dtype of the input store). The memory model per task is the
sum of what one task holds at once: its input chunk (decompressed), the columns of ``P`` it touches
(sparse kinds: ``s`` entries per column; dense: one tile at a time), its d × m_chunk partial and the
tree-sum operands; per worker it is ``threads × task`` plus the per-process tile cache and the
persisted share of the small factorization state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .. import config
from ..errors import ConfigError, InsufficientMemoryError
from ..io import open_array
from ..recovery.exact import fits_in_memory
from ..sketching.operators import kind_spec
from .job import load_job

__all__ = ["CLIENT_BYTES_PER_TASK", "CLIENT_WARN_BYTES", "REMOTE_CLIENT_BYTES",
           "TERMINATE_FRACTION", "WORKER_BASE_BYTES", "Plan", "adapt_rows", "check_memory",
           "fmt_bytes", "memory_check_mode", "plan"]

#: what an S3 client's connection pool and buffers add to a worker reading object storage
#: (measured: benchmarks/bench_s3.py, botocore / aiohttp on Linux)
REMOTE_CLIENT_BYTES = 16 * 2**20

#: a worker process before any task: python, numpy, dask, distributed, zarr and cfact_dask
#: imported (measured: 191 MiB RSS per worker of a LocalCluster, Linux, Python 3.11)
WORKER_BASE_BYTES = 192 * 2**20

#: scheduler tasks per input chunk of each pass (a task-stream count of a 128-chunk run and
#: benchmarks/bench_scaling.py: the sketch pass is 2.15-2.19 tasks per chunk from 64 to 16 384
#: chunks; an exact recovery pass 7, a reconstruction pass 5)
_TASKS_PER_CHUNK = {"sketch": 2.2, "recover": 7.0, "reconstruct": 5.0}

#: what the client holds per task of a pass it submits (graph and its serialisation; measured
#: with benchmarks/bench_scaling.py: 9.4, 6.6 and 5.7 KiB per task at 2 192, 8 800 and 35 136
#: tasks): the client's memory grows with the number of chunks, never with their bytes
CLIENT_BYTES_PER_TASK = 6 * 2**10

#: a plan warns when the client would hold more task graph than this
CLIENT_WARN_BYTES = 2 * 2**30

#: the nanny kills a worker above this fraction of its memory limit (distributed's default)
TERMINATE_FRACTION = 0.95


def _reads_data(method: str) -> bool:
    """A recovery method that makes one extra pass over the data (from its registry entry)."""
    from ..recovery import RECOVERY_METHODS

    return method in RECOVERY_METHODS and RECOVERY_METHODS.get(method).reads_data


def fmt_bytes(b: float) -> str:
    """``b`` bytes in B / KiB / MiB / GiB / TiB, one decimal."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(b) < 1024 or unit == "TiB":
            return f"{b:.1f} {unit}" if unit != "B" else f"{int(b)} B"
        b /= 1024
    return f"{b:.1f} TiB"


@dataclass
class Plan:
    """What a job will do; ``str(plan)`` is the human report, ``to_dict`` the JSON one."""

    input_shape: tuple[int, ...]
    input_chunks: tuple[int, ...]
    itemsize: int
    #: reads of the input by stage (DGD+LOCAL's nodes that share an input chunk each read it:
    #: a fraction then)
    passes: dict[str, float]
    bytes_read: int
    task_peak: dict[str, int]
    worker_peak: dict[str, int]
    outputs: dict[str, int]
    n_workers: int
    threads_per_worker: int
    worker_limit: int | None
    warnings: list[str] = field(default_factory=list)
    #: passes that happen only in some runs (``recover: auto`` reads the data once more when
    #: the sparse recovery's certificate fails), by stage
    conditional_passes: dict[str, int] = field(default_factory=dict)
    #: the worker process itself (interpreter and libraries), included in ``worker_peak``
    worker_base: int = WORKER_BASE_BYTES
    #: scheduler tasks of each pass over the input (by stage)
    tasks: dict[str, int] = field(default_factory=dict)
    #: input chunks
    n_chunks: int = 0
    #: the job's ``factor.method``
    method: str = "nmf"
    #: iterative stages: the most iterations they run (``max_iter``; ``passes`` counts them all)
    iterations: dict[str, int] = field(default_factory=dict)
    #: passes over the data each iteration makes, by stage
    passes_per_iteration: dict[str, int] = field(default_factory=dict)
    #: passes over a copy of the data persisted on the workers (they read no storage), by stage
    memory_passes: dict[str, int] = field(default_factory=dict)
    #: method-specific figures (DGD+LOCAL's bytes per node and nodes per worker, the partials
    #: of a row pass...), printed one per line
    details: dict[str, Any] = field(default_factory=dict)
    #: what to do when a stage does not fit the workers, by stage (the refusal's advice)
    fixes: dict[str, str] = field(default_factory=dict)

    @property
    def bytes_per_worker(self) -> int:
        """Bytes each worker reads over the run (the input's passes spread evenly)."""
        return self.bytes_read // max(self.n_workers, 1)

    @property
    def client_peak(self) -> int:
        """What the client holds while it submits the largest pass: its graph (the data never
        goes through the client)."""
        return int(max(self.tasks.values(), default=0) * CLIENT_BYTES_PER_TASK)

    @property
    def total_passes(self) -> int:
        """Passes every run makes."""
        return sum(self.passes.values())

    @property
    def max_passes(self) -> int:
        """Passes in the worst case (with every conditional pass)."""
        return self.total_passes + sum(self.conditional_passes.values())

    @property
    def max_worker_peak(self) -> int:
        return max(self.worker_peak.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape), "input_chunks": list(self.input_chunks),
            "passes": self.passes, "total_passes": self.total_passes,
            "conditional_passes": self.conditional_passes, "max_passes": self.max_passes,
            "bytes_read": self.bytes_read, "task_peak_bytes": self.task_peak,
            "worker_peak_bytes": self.worker_peak, "outputs_bytes": self.outputs,
            "n_workers": self.n_workers, "threads_per_worker": self.threads_per_worker,
            "worker_limit_bytes": self.worker_limit, "warnings": self.warnings,
            "worker_base_bytes": self.worker_base, "n_chunks": self.n_chunks,
            "tasks_per_pass": self.tasks, "bytes_per_worker": self.bytes_per_worker,
            "client_peak_bytes": self.client_peak, "method": self.method,
            "iterations": self.iterations, "passes_per_iteration": self.passes_per_iteration,
            "memory_passes": self.memory_passes, "details": self.details,
        }

    def __str__(self) -> str:
        lines = [
            f"input {self.input_shape} in chunks of {self.input_chunks} "
            f"({fmt_bytes(math.prod(self.input_chunks) * self.itemsize)} per chunk)",
            f"passes over the input: {self.total_passes} ("
            + ", ".join(f"{k}: {v}" for k, v in self.passes.items() if v) + ")"
            + "".join(f", + {v} if {k}" for k, v in self.conditional_passes.items() if v),
            *([f"method: {self.method}"] if self.method not in ("nmf", "semi-nmf") else []),
            *[f"  {k}: at most {v} iterations x {self.passes_per_iteration.get(k, 1)} pass(es)"
              for k, v in self.iterations.items()],
            *([("passes over the copy persisted on the workers (no storage read): "
                + ", ".join(f"{k}: {v}" for k, v in self.memory_passes.items() if v))]
              if any(self.memory_passes.values()) else []),
            f"bytes read: {fmt_bytes(self.bytes_read)} "
            f"({fmt_bytes(self.bytes_per_worker)} per worker)",
            f"workers: {self.n_workers} x {self.threads_per_worker} thread(s), limit "
            f"{fmt_bytes(self.worker_limit) if self.worker_limit else 'none'}",
            f"scheduler tasks per pass over the {self.n_chunks} chunks: "
            + ", ".join(f"{k}: {v:,}" for k, v in self.tasks.items())
            + f"; the client holds about {fmt_bytes(self.client_peak)} while it submits a pass",
            "peak memory per task / per worker:",
        ]
        for stage in self.task_peak:
            lines.append(f"  {stage:<12} {fmt_bytes(self.task_peak[stage]):>11} / "
                         f"{fmt_bytes(self.worker_peak[stage]):>11}")
        for name, v in self.details.items():
            lines.append(f"  {name}: {fmt_bytes(v) if name.endswith('bytes') else v}")
        lines.append("outputs:")
        for name, b in self.outputs.items():
            lines.append(f"  {name:<12} {fmt_bytes(b):>11}")
        for w in self.warnings:
            lines.append(f"WARNING: {w}")
        return "\n".join(lines)


def _worker_setup(client: Any, n_workers: int | None, threads: int | None,
                  memory_limit: int | None) -> tuple[int, int, int | None]:
    if client is not None:
        from .._runtime.workers import live_workers

        # asked of the scheduler: the client's cached scheduler_info() can list no worker
        info = live_workers(client)
        if info:
            ws = list(info.values())
            return (len(ws), int(ws[0].get("nthreads", 1)),
                    int(min(w.get("memory_limit") or 0 for w in ws)) or None)
    nw = n_workers or int(config.get("cluster.n-workers", 2))
    th = threads or int(config.get("cluster.threads-per-worker", 1))
    if memory_limit is None:
        lim = config.get("cluster.memory-limit", "auto")
        if lim in ("auto", None):
            try:
                import psutil

                memory_limit = int(psutil.virtual_memory().total / nw)
            except ImportError:  # pragma: no cover
                memory_limit = None
        else:
            from dask.utils import parse_bytes

            memory_limit = parse_bytes(lim) if isinstance(lim, str) else int(lim)
    return nw, th, memory_limit


def plan(
    job: Any,
    *,
    client: Any = None,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: int | None = None,
) -> Plan:
    """Estimate passes, bytes read, memory per task / worker and output sizes of a job.

    Parameters
    ----------
    job : str, path or mapping
        A YAML job file or an equivalent dict (see :mod:`cfact_dask.pipeline.job`).
    client : distributed.Client, optional
        Take the worker count, threads and memory limit from a running cluster.
    n_workers, threads_per_worker, memory_limit : optional
        The cluster to plan for when no client is given (defaults: ``cfact.cluster.*``).
    """
    job = load_job(job)
    inp = open_array(job["input"]["path"], feature_axis=job["input"]["feature_axis"],
                     variable=job["input"]["variable"],
                     storage_options=job["input"]["storage_options"])
    nw, th, limit = _worker_setup(client, n_workers, threads_per_worker, memory_limit)
    from ._methods import get as get_method

    if not get_method(job["factor"]["method"]).pipeline:
        # every method but NMF / semi-NMF: its own model (sketch-free, or sketching itself)
        from ._plan_methods import plan_method

        return plan_method(job, inp, nw, th, limit)
    return _plan_input(job, inp, nw, th, limit)


def _plan_input(job: dict[str, Any], inp: Any, nw: int, th: int, limit: int | None,
                rows: int | None = None) -> Plan:
    """:func:`plan` of a loaded job and its opened input; ``rows``: as if the input were read
    in blocks of that many rows along its feature axis (the peaks scale with them)."""
    ax = inp.feature_axis
    shape = inp.shape
    n = shape[ax]
    m = math.prod(shape) // n
    out_isz = 4 if inp.dtype.itemsize <= 4 and inp.dtype.kind == "f" else 8
    chunk = tuple(max(c) for c in inp.chunks)
    if rows is not None:
        chunk = tuple(min(rows, c) if i == ax else c for i, c in enumerate(chunk))
    chunk_elems = math.prod(chunk)
    n_chunks = math.prod(-(-size // c) for size, c in zip(shape, chunk, strict=True))
    rows = chunk[ax]
    m_chunk = chunk_elems // rows
    d = job["sketch"]["n_components"]
    dh = job["sketch"]["holdout"]
    kind = kind_spec(job["sketch"]["kind"])  # every per-kind fact: sketching.SKETCH_KINDS
    s = job["sketch"]["s"] or kind.default_s()
    r = job["factor"]["rank"]
    tile = int(config.get("sketch.tile-size", 4096))
    cache = int(config.get("sketch.tile-cache-bytes", 128 * 2**20))
    split = int(config.get("sketch.split-every", 8))

    # --- sketch pass: chunk + P columns + partials (main and hold-out) + one tree-sum group
    p_cols = kind.block_bytes(d, s, tile if kind.dense else rows, out_isz)
    p_hold = dh * tile * out_isz
    partial = (d + dh) * m_chunk * out_isz
    sketch_task = chunk_elems * inp.dtype.itemsize * 2 + p_cols + p_hold + partial * 2
    # object storage: the HTTP response body of a chunk is held whole while it is decoded (one
    # more chunk-sized buffer per task), and each worker's S3 client keeps connection buffers;
    # measured with benchmarks/bench_s3.py (+1.3 to 2 chunks above a local store's peak)
    remote = "://" in job["input"]["path"] and not job["input"]["path"].startswith("file://")
    remote_task = chunk_elems * inp.dtype.itemsize if remote else 0
    remote_worker = REMOTE_CLIENT_BYTES if remote else 0
    sketch_task += remote_task
    # the tile cache is capped at a fraction of a chunk while sketching (operators._cache_limit)
    frac = float(config.get("sketch.tile-cache-chunk-fraction", 0.6))
    cache = min(cache, max(int(frac * chunk_elems * inp.dtype.itemsize), 8 * 2**20))
    # all of P cached (sparse tiles are cached as float32 values + int64 rows)
    p_all = kind.block_bytes(d, s, n, out_isz if kind.dense else 4)
    sketch_worker = th * sketch_task + min(cache, p_all + dh * n * out_isz) \
        + split * partial + remote_worker
    # --- factorization on the sketch: persisted sketch + H, spread over workers
    sk_bytes = d * m * out_isz
    h_bytes = r * m * 8
    factor_task = (d + 2 * r) * m_chunk * 8 + d * r * 8 * 3
    factor_worker = (sk_bytes + 2 * h_bytes) // nw + th * factor_task
    # --- recovery: W (n x r) iterate, its gradient and one P tile per task
    w_bytes = n * r * 8
    rec_task = 4 * tile * r * 8 + kind.block_bytes(d, s, tile, 8)
    rec_worker = 4 * w_bytes // nw + th * rec_task
    passes = {"sketch": 1, "recover": 0, "reconstruct": 0}
    task_peak = {"sketch": sketch_task, "factor": factor_task, "recover": rec_task}
    worker_peak = {"sketch": sketch_worker, "factor": factor_worker, "recover": rec_worker}
    method = job["recover"]["method"]
    conditional = {}
    # lstsq-data's refinement (recover.refine rounds, fewer when a round gains < 1 %): a
    # round reads data chunked along the samples only once, other layouts twice (exact.py)
    semi = job["factor"]["method"] == "semi-nmf" or bool(job["factor"].get("semi"))
    refine = 0 if semi else int(job["recover"].get("refine", 0) or 0)
    refine_passes = refine * (1 if chunk[ax] >= n else 2)
    if refine and fits_in_memory((n, m)):
        # small data: read once, the exact pass and the refinement in memory on that read
        refine_passes = 0
    if method == "auto":
        # the fallback when the sparse recovery's certificate fails: one exact pass, then the
        # refinement's
        conditional["recover: auto falls back to lstsq-data"] = 1 + refine_passes
    if _reads_data(method):
        passes["recover"] = 1
        if refine_passes:
            conditional["recover: lstsq-data refines H and W (up to)"] = refine_passes
        # the chunk as read and as float64, the residual and the product (bench_out_of_core:
        # 1.07x of the measured per-worker peak above the worker's own memory)
        task_peak["recover"] = (chunk_elems * (2 * inp.dtype.itemsize + 16) + rows * r * 8
                                + remote_task)
        worker_peak["recover"] = th * task_peak["recover"] + remote_worker
    outputs = {"sketch": sk_bytes + dh * m * out_isz, "factors": d * r * 8 + h_bytes,
               "recovered W": w_bytes}
    if job["output"]["reconstruct"]:
        passes["reconstruct"] = 1
        # the chunk as read (compressed and decoded), W_b H in float64, the difference and its
        # squares for the error statistics, the output block (bench_out_of_core: measured 35
        # bytes per element of a float32 chunk above the worker's own memory)
        task_peak["reconstruct"] = (chunk_elems * (2 * inp.dtype.itemsize + out_isz + 24)
                                    + rows * r * 8 + remote_task)
        worker_peak["reconstruct"] = th * task_peak["reconstruct"] + remote_worker
        outputs["reconstruction"] = n * m * out_isz
    worker_peak = {k: v + WORKER_BASE_BYTES for k, v in worker_peak.items()}
    warnings = []
    if limit:
        for stage, b in worker_peak.items():
            if b > 0.8 * limit:
                fix = {
                    "sketch": "use smaller input chunks (rechunk the store once) or fewer threads "
                              "per worker",
                    "factor": "use more workers or a smaller n_components",
                    "recover": "use more workers, or recover with lstsq-data",
                    "reconstruct": "use smaller input chunks or fewer threads per worker",
                }[stage]
                warnings.append(
                    f"stage {stage!r} needs about {fmt_bytes(b)} per worker, above 80% of the "
                    f"{fmt_bytes(limit)} limit: {fix}"
                )
    client_graph = max(_TASKS_PER_CHUNK[k] * n_chunks for k, v in passes.items() if v) \
        * CLIENT_BYTES_PER_TASK
    if client_graph > CLIENT_WARN_BYTES:
        warnings.append(
            f"the client holds about {fmt_bytes(client_graph)} of task graph while it submits a "
            f"pass over the {n_chunks:,} input chunks (the client's memory grows with the number "
            f"of chunks, not their bytes): use larger input chunks (rechunk the store once) or run "
            f"the client where it has that memory"
        )
    return Plan(
        input_shape=tuple(shape), input_chunks=chunk, itemsize=inp.dtype.itemsize,
        passes=passes, bytes_read=int(sum(passes.values()) * inp.nbytes),
        task_peak={k: int(v) for k, v in task_peak.items()},
        worker_peak={k: int(v) for k, v in worker_peak.items()},
        outputs={k: int(v) for k, v in outputs.items()},
        n_workers=nw, threads_per_worker=th, worker_limit=limit, warnings=warnings,
        conditional_passes=conditional,
        tasks={k: int(math.ceil(_TASKS_PER_CHUNK[k] * n_chunks)) for k, v in passes.items()
               if v},
        n_chunks=n_chunks,
    )


_MEMORY_CHECK_MODES = ("refuse", "warn", "adapt", "off")


def memory_check_mode(mode: str | None = None) -> str:
    """``mode``, or ``cfact.run.memory-check`` when None, checked against the known modes."""
    mode = str(mode if mode is not None else config.get("run.memory-check", "refuse")).lower()
    if mode not in _MEMORY_CHECK_MODES:
        raise ConfigError(
            f"cfact.run.memory-check must be refuse, warn, adapt or off, got {mode!r}")
    return mode


def _over(p: Plan, extra: dict[str, int] | None = None) -> dict[str, int]:
    """The stages whose planned peak (plus ``extra``) is above the nanny's kill threshold."""
    if not p.worker_limit:
        return {}
    extra = extra or {}
    return {k: v + extra.get(k, 0) for k, v in p.worker_peak.items()
            if v + extra.get(k, 0) > TERMINATE_FRACTION * p.worker_limit}


def adapt_rows(job: Any, p: Plan) -> int | None:
    """``memory-check: adapt``: the largest block of rows (along the input's feature axis) to
    read the input in so that every stage's planned per-worker peak fits the workers.

    Returns None when the plan fits as it is, or when no block size helps (even one-row
    blocks, or a stage that does not scale with the input's chunks, such as ``factor``); then
    :func:`check_memory` decides. A stored chunk is still read whole before it is split into
    blocks (held while its blocks are worked on), so one stored chunk per thread is counted on
    top of the block-sized plan of every stage that reads the input.
    """
    if not _over(p):
        return None
    job = load_job(job)
    inp = open_array(job["input"]["path"], feature_axis=job["input"]["feature_axis"],
                     variable=job["input"]["variable"],
                     storage_options=job["input"]["storage_options"])
    native = max(inp.chunks[inp.feature_axis])
    held = p.threads_per_worker * math.prod(p.input_chunks) * p.itemsize
    reads = {"sketch", "reconstruct"} | ({"recover"} if p.passes.get("recover") else set())
    extra = {k: held for k in reads}

    def fits(rows: int) -> bool:
        q = _plan_input(job, inp, p.n_workers, p.threads_per_worker, p.worker_limit, rows)
        return not _over(q, extra)

    if native <= 1 or not fits(1):
        return None
    lo, hi = 1, native - 1  # fits(lo); the native rows do not fit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def check_memory(p: Plan, *, mode: str | None = None, where: str = "the cluster") -> None:
    """Refuse (or warn about) a job whose planned peak per worker exceeds the workers' limit.

    ``mode`` is ``cfact.run.memory-check``: ``"refuse"`` raises
    :class:`~cfact_dask.errors.InsufficientMemoryError` naming the stage, the need, the limit and
    the fix, before anything is computed; ``"warn"`` logs the same as a warning; ``"off"`` does
    nothing; ``"adapt"`` (after :func:`adapt_rows` found no block size that fits) refuses as
    ``"refuse"`` does. A stage needs more than the limit when its planned peak is above the
    fraction at which the nanny kills a worker (95 %): such a run would loop on restarted
    workers.
    """
    import logging

    mode = memory_check_mode(mode)
    if mode == "off" or not p.worker_limit:
        return
    over = _over(p)
    if not over:
        return
    stage, need = max(over.items(), key=lambda kv: kv[1])
    if p.method not in ("nmf", "semi-nmf"):
        fix = p.fixes.get(stage) or "use more workers or give them more memory"
        msg = (
            f"the job ({p.method}) needs about {fmt_bytes(need)} per worker in stage {stage!r} "
            f"(the planner's estimate, `cfact plan`), more than the "
            f"{fmt_bytes(TERMINATE_FRACTION * p.worker_limit)} at which a worker of {where} is "
            f"killed ({TERMINATE_FRACTION:.0%} of its {fmt_bytes(p.worker_limit)} limit), so the "
            f"run would loop on killed workers. Give the workers at least "
            f"{fmt_bytes(need / TERMINATE_FRACTION)} each (dask worker --memory-limit, "
            f"cfact.cluster.memory-limit for the embedded cluster), or {fix}; set "
            f"cfact.run.memory-check to 'warn' to run anyway."
        )
        if mode == "warn":
            logging.getLogger(__name__).warning("%s", msg)
            return
        raise InsufficientMemoryError(msg)
    msg = (
        f"the job needs about {fmt_bytes(need)} per worker in stage {stage!r} (the planner's "
        f"estimate, `cfact plan`), more than the {fmt_bytes(TERMINATE_FRACTION * p.worker_limit)} "
        f"at which a worker of {where} is killed ({TERMINATE_FRACTION:.0%} of its "
        f"{fmt_bytes(p.worker_limit)} limit), so the run would loop on killed workers. Give the "
        f"workers at least {fmt_bytes(need / TERMINATE_FRACTION)} each (dask worker "
        f"--memory-limit, cfact.cluster.memory-limit for the embedded cluster), use smaller "
        f"input chunks (rechunk the store once) or fewer threads per worker; set "
        f"cfact.run.memory-check to "
        + ("'warn' to run anyway (no block size of the input fits under 'adapt')."
           if mode == "adapt" else
           "'adapt' to read the input in smaller blocks, or 'warn' to run anyway.")
    )
    if mode == "warn":
        logging.getLogger(__name__).warning("%s", msg)
        return
    raise InsufficientMemoryError(msg)
