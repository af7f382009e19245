"""``cfact plan`` for every method that is not Factorize-Recover: passes, bytes, peaks per worker.

:func:`plan_method` dispatches on ``factor.method`` to one model per method; each returns the
same :class:`~._plan.Plan` as NMF's, from the input's metadata and the job's options alone (its
``factor`` keys as the registry declares them, ``pipeline._methods``; an option left out is taken
at its default, so an unvalidated job plans too).

A model counts what the method's code holds. **Per task**: the input chunk as read (its stored,
compressed bytes and the decoded array, ``2 × chunk``), the float64 copies and temporaries of the
kernel, the factor blocks it multiplies with, and its output partial. **Per worker**: ``threads ×
task``, the partials a tree sum gathers on one worker (``split_every`` of them plus the sum),
whatever the method persists on the workers (its share of it), and the worker process itself
(:data:`~._plan.WORKER_BASE_BYTES`). The stages are the pipeline's (``run_method``): ``factor``
(the fit, its certificate and the factors written into ``factors/``: its largest phase, and every
read of the input it makes, the write's included) and ``reconstruct`` (the model streamed into
Zarr with error statistics). The constants below were fitted to
``benchmarks/bench_plan_methods.py``, which runs every method through ``run_job`` (2 workers ×
1 thread, 256 MiB float32 inputs in 16 MiB chunks): every measured / planned peak lies within
1.5×, and the planned passes are the measured ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .. import config
from ..factor._svd import sketch_sizes
from ..sketching.operators import kind_spec
from ._plan import (
    CLIENT_BYTES_PER_TASK,
    CLIENT_WARN_BYTES,
    REMOTE_CLIENT_BYTES,
    WORKER_BASE_BYTES,
    Plan,
    fmt_bytes,
)

__all__ = ["METHOD_MODELS", "plan_method"]

#: scheduler tasks per input chunk of one pass (the chunk read, its kernel, a share of the
#: tree sum); NMF's measured sketch pass is 2.2 (``_plan``), a row reduction about the same
_TASKS_PER_CHUNK = 2.5
#: bytes of the last tall-skinny QR level per byte of its stacked R blocks (sparse PCA's initial
#: SVD: the stack, its Q and R, LAPACK's work copies; bench_plan_methods)
_TSQR_TREE = 4.5

# cf.cp's thresholds (factor/_cp.py; tests/pipeline/test_plan_methods.py checks they agree):
#: a (sketched) tensor up to this many entries is gathered and decomposed in the client
_CP_IN_MEMORY_ENTRIES = 2_000_000
#: a raw tensor up to this many bytes is persisted on the workers for the sweeps
_CP_PERSIST_BYTES = 512 * 2**20
#: modes up to this size start from the Gram of their unfolding (else a 2-pass range finder)
_CP_GRAM_INIT_MAX = 2048


class _In:
    """The input's facts a model needs (the largest chunk along every axis)."""

    def __init__(self, job: dict[str, Any], inp: Any) -> None:
        self.shape = tuple(int(s) for s in inp.shape)
        self.chunks = tuple(max(c) for c in inp.chunks)
        self.numblocks = tuple(len(c) for c in inp.chunks)
        self.dim_chunks = tuple(tuple(int(x) for x in c) for c in inp.chunks)
        self.isz = int(inp.dtype.itemsize)
        #: the dtype of sketches / products (float32 input: float32 results, else float64)
        self.osz = 4 if self.isz <= 4 and inp.dtype.kind == "f" else 8
        self.nbytes = int(inp.nbytes)
        self.ax = int(getattr(inp, "feature_axis", 0) or 0)
        self.elems = math.prod(self.chunks)
        self.chunk_bytes = self.elems * self.isz
        self.n_chunks = math.prod(self.numblocks)
        path = job["input"]["path"]
        self.remote = "://" in path and not path.startswith("file://")

    @property
    def read(self) -> int:
        """One chunk as a task holds it while reading: the stored bytes and the decoded array
        (object storage: the HTTP body as well)."""
        return self.chunk_bytes * (3 if self.remote else 2)


def _opt(job: dict[str, Any], *names: str, default: Any = None) -> Any:
    """The first of ``names`` the job's factor section has (not None), else ``default``."""
    f = job["factor"]
    for n in names:
        v = f.get(n)
        if v is not None:
            return v
    return default


def _split() -> int:
    return int(config.get("sketch.split-every", 8))


def _reconstruct_rows(X: _In, model: int) -> int:
    """Task bytes of the reconstruction pass of a model that reads the input (ℓp's A V Vᵀ,
    MESSI's projections). Its write and its error statistics run as separate tasks (each reads
    the chunk): the larger is the statistics' (the chunk as read, the model block in the input's
    dtype, the float64 difference, ``reconstruction._block_stats``), plus ``model``: the model's
    own temporaries (measured: 0.96 and 0.92 of the per-worker peak)."""
    merge = X.chunk_bytes if X.numblocks[1] > 1 else 0  # column chunks merged into rows
    return X.read + merge + X.elems * (X.isz + 8) + model


def _reconstruct(X: _In, r: int, extra_task: int = 0) -> tuple[int, int]:
    """Task bytes of the reconstruction pass of a matrix model ``W H`` (or ``A V Vᵀ``): the
    chunk as read, ``W_b H`` in float64, the difference and its squares for the error statistics,
    the output block (NMF's model, measured 35 bytes per float32 element above the worker's own
    memory: ``_plan``), plus the factor rows."""
    rows = X.chunks[X.ax] if len(X.chunks) == 2 else max(X.chunks)
    return X.elems * (X.isz + X.osz + 24) + X.read - X.chunk_bytes + rows * r * 8 + extra_task, \
        X.elems * X.osz


# ----------------------------------------------------------------------------- the models
# A model returns a dict: "passes" (reads of the input store, by stage), "memory_passes" (passes
# over a copy persisted on the workers), "iterations" / "per_iteration" (iterative stages),
# "task" / "worker" (peak bytes per task / per worker by stage, the worker process excluded),
# "outputs", "details" and "fixes" (advice when a stage does not fit); optionally "recon_task"
# (the reconstruction's task bytes, else :func:`_reconstruct`'s) and "recon_passes" (its reads of
# the input, else 1).
Model = Callable[[dict[str, Any], _In, int, int], dict[str, Any]]


def _matrix(X: _In) -> tuple[int, int, int, int, int, int]:
    """``n, m`` (features, samples), the chunk's ``rows, cols`` and the chunk counts along
    them, features first (as the matrix methods read the input)."""
    a, b = X.ax, 1 - X.ax
    return (X.shape[a], X.shape[b], X.chunks[a], X.chunks[b], X.numblocks[a], X.numblocks[b])


def _cache(X: _In) -> int:
    """The tile cache of a sketch task (capped at a fraction of a chunk: ``operators``)."""
    return min(int(config.get("sketch.tile-cache-bytes", 128 * 2**20)),
               max(int(float(config.get("sketch.tile-cache-chunk-fraction", 0.6))
                       * X.chunk_bytes), 8 * 2**20))


def _svd(job: dict[str, Any], X: _In, nw: int, th: int) -> dict[str, Any]:
    n, m, rows, cols, _, _ = _matrix(X)
    r = int(job["factor"]["rank"])
    npass = int(_opt(job, "passes", default=1))
    k, lco = sketch_sizes(n, m, r, npass, _opt(job, "oversample"), _opt(job, "co_range"))
    n_test = int(_opt(job, "n_test", default=16))
    kind = kind_spec(_opt(job, "kind", default="gaussian"))
    tile = int(config.get("sketch.tile-size", 4096))
    o = X.osz
    split = _split()
    if npass == 1:
        # the single read: Y = A Ωᵀ (rows × k), W = Ψ A (l × cols, CountSketch) and Θ A
        # (t × cols) from one chunk task; Ω's tiles (k × tile) are generated per chunk
        parts = rows * k * o + (lco + n_test) * cols * o
        omega = kind.block_bytes(k, max(kind.default_s(), 1), tile, 8)
        task = X.read + parts + omega + rows * (8 + o)
        # persisted: Y (n × k), W and Θ A (l × m) spread over the workers; W's tree sum
        persisted = (n * k * o + (lco + n_test) * m * o) / nw
        worker = th * task + _cache(X) + split * (lco + n_test) * cols * o + persisted
        # then U = Y (M u) (n × r) formed and persisted beside Y
        worker = max(worker, persisted + 2 * n * r * 8 / nw + th * rows * (k + r) * 8)
    else:
        # range finder: Aᵀ Q and A Z upcast each chunk to float64
        task = X.read + X.elems * 8 + (rows + cols) * k * 8
        worker = th * task + 2 * (n + m) * k * 8 / nw + split * k * cols * 8
    return {
        "passes": {"factor": npass}, "task": {"factor": task}, "worker": {"factor": worker},
        "outputs": {"factors": (n + m + 1) * r * 8},
        "details": {"range sketch k": k, **({"co-range sketch l": lco} if npass == 1 else {})},
        "fixes": {"factor": "use smaller input chunks or fewer threads per worker"},
        "rank": r,
    }


def _sparse_pca(job: dict[str, Any], X: _In, nw: int, th: int) -> dict[str, Any]:
    n, m, rows, cols, nb_rows, nb_cols = _matrix(X)
    r = int(job["factor"]["rank"])
    iters = int(_opt(job, "max_iter", default=1000))
    split = _split()
    # a task of an iteration: the chunk as read, M − mean in float64 (the mean is recomputed in
    # the same graph: with the samples in several chunks a task waits for a feature row's mean,
    # holding that row's chunks), the products with H / W
    band = (nb_cols - 1) * X.chunk_bytes if nb_cols > 1 else 0
    task = X.read + 2 * X.elems * 8 + (rows + cols) * r * 8 + band
    factors = 2 * (n + m) * r * 8 / nw  # W and H persisted (old and new)
    worker = th * task + split * r * cols * 8 + factors
    if nb_rows == 1 or nb_cols == 1:
        # initial SVD by dask's tall-skinny QR (the matrix's short side in one chunk): every
        # chunk's first-level Q (float64, chunk rows × short) stays in memory until the tree of
        # R factors is done, so the workers hold the whole matrix in float64. dask stacks the
        # R factors (short × short) into blocks of at most a chunk's rows and recurses while
        # that reduces them (chunks of at least twice the short side; each level's Q held too),
        # else it stacks them all; the last stack is factored in one task (its input, Q, R and
        # LAPACK's copies: _TSQR_TREE times the stack, measured)
        tall, short, tall_chunk, nb = (n, m, rows, nb_rows) if nb_cols == 1 else \
            (m, n, cols, nb_cols)
        r_rows = nb * min(short, tall_chunk)
        held = tall * short * 8
        while tall_chunk >= 2 * short and r_rows > tall_chunk:
            held += r_rows * short * 8
            r_rows = math.ceil(r_rows / tall_chunk) * short
        init_passes = 1
        init_task = X.read + 3 * X.elems * 8
        init = held / nw + _TSQR_TREE * r_rows * short * 8 + th * init_task
    else:
        init_passes = 6  # randomized SVD with two power iterations
        init_task = X.read + X.elems * 8 * 2 + (rows + cols) * (r + 10) * 8
        init = th * init_task + 2 * (n + m) * (r + 10) * 8 / nw
    # centred (the default), an iteration reads the data once: the code step's and the
    # dictionary step's products share the chunk tasks of M − mean, and the mean is read once
    # more at the end, when it is kept for the factors (measured: 3 + iterations). Not centred,
    # the two steps read the data each (measured: 2 + 2 x iterations)
    center = bool(_opt(job, "center", default=True))
    per_iter = 1 if center else 2
    return {
        "passes": {"factor": 1 + init_passes + per_iter * iters + (1 if center else 0)},
        "iterations": {"factor": iters}, "per_iteration": {"factor": per_iter},
        "task": {"factor": max(task, init_task)}, "worker": {"factor": max(worker, init)},
        "outputs": {"factors": (n + m + 1) * r * 8},
        "details": {"initial SVD per worker bytes": int(init),
                    "iteration per worker bytes": int(worker)},
        "fixes": {"factor": "use more workers (the initial SVD holds the matrix in float64 "
                            "across them) or smaller input chunks"},
        "rank": r,
    }


def _cp_sketch(job: dict[str, Any], N: int) -> tuple[int, int, str] | None:
    """(mode, size, kind) of CP's sketched mode, from whichever keys the job uses."""
    f = job["factor"]
    spec = f.get("sketch") if isinstance(f.get("sketch"), dict) else None
    sec = job.get("sketch") if isinstance(job.get("sketch"), dict) else None
    mode = _opt(job, "sketch_mode", "mode")
    size = _opt(job, "sketch_size", "n_components")
    kind = _opt(job, "sketch_kind", default=None)
    for d in (spec, sec):
        if d:
            mode = d.get("mode", mode)
            size = d.get("n_components", size)
            kind = d.get("kind", kind)
    if size is None:
        return None
    return int(mode or 0) % N, int(size), kind or "expander"


def _cp(job: dict[str, Any], X: _In, nw: int, th: int) -> dict[str, Any]:
    N = len(X.shape)
    r = int(job["factor"]["rank"])
    iters = int(_opt(job, "max_iter", default=100))
    sk = _cp_sketch(job, N)
    split = _split()
    o = X.osz
    shape = list(X.shape)
    details: dict[str, Any] = {}
    if sk is not None:
        mode, d, kind_name = sk
        kind = kind_spec(kind_name)
        s = kind.resolve_s(None, d)
        rest = X.elems // X.chunks[mode]
        partial = d * rest * o
        task = X.read + partial * 2 + kind.block_bytes(d, s, X.chunks[mode], o)
        worker = th * task + _cache(X) + split * partial
        shape[mode] = d
        entries = math.prod(shape)
        if entries > _CP_IN_MEMORY_ENTRIES:
            worker += entries * o / nw  # the sketched tensor stays on the workers
            memory = 1 + N * (1 + iters)
        else:
            memory = 0  # gathered: the sweeps run in the client's memory
        details["sketched tensor bytes"] = entries * o
        # recovery: refit (the default) reads the tensor once more for the least-squares factor
        # of the sketched mode (factor._cp.refit_mode): an MTTKRP task per chunk (the chunk as
        # read and the float64 copies einsum and ‖T‖² make of it, as in the unsketched sweeps);
        # a sparse recovery works on the sketches alone
        refit = str(_opt(job, "recovery", default="refit")) == "refit"
        if refit:
            refit_task = X.read + X.chunk_bytes + 2 * X.elems * 8 + sum(X.chunks) * r * 8
            task = max(task, refit_task)
            worker = max(worker, th * refit_task + split * X.chunks[mode] * r * 8)
        details["recovery"] = "refit (one more read)" if refit else "sparse (no read)"
        passes = {"factor": 2 if refit else 1}
        mem = {"factor": memory}
        fix = "use smaller input chunks or a smaller sketch"
    else:
        persist = X.nbytes <= _CP_PERSIST_BYTES
        # init: the Gram of each mode's unfolding (modes up to 2048), else a Khatri-Rao range
        # finder (two passes)
        init = sum(1 if size <= _CP_GRAM_INIT_MAX else 2 for size in shape)
        sweep = 1 + init + N * iters
        # the worker's share of the chunks (the scheduler spreads them unevenly by a chunk)
        share = math.ceil(X.n_chunks / nw) * X.chunk_bytes
        held = share if persist else 0
        read = 0 if persist else X.read
        # an MTTKRP task: the chunk and the float64 copies einsum makes of float32 data with
        # float64 factors (measured: two), the factor rows
        task = read + X.chunk_bytes + 2 * X.elems * 8 + sum(X.chunks) * r * 8
        phases = [held + th * task]
        if persist:
            phases.append(held + th * X.read)  # the persist pass: chunks on their way in
        for i, size in enumerate(shape):
            if size > _CP_GRAM_INIT_MAX:
                continue
            if X.numblocks[i] > 1:
                # Gram of a mode split in chunks: a task per pair of chunks, so each worker
                # fetches the chunks it lacks and holds about the whole tensor
                phases.append(X.nbytes + th * (read + X.chunk_bytes))
            else:
                # contraction over the chunks: one size × size partial per chunk, tree-summed
                phases.append(held + X.n_chunks * size * size * 8 / nw
                              + th * (read + X.chunk_bytes + size * size * 8))
        worker = max(phases)
        passes = {"factor": 1 if persist else sweep}
        mem = {"factor": sweep if persist else 0}
        details["tensor persisted on the workers"] = persist
        fix = "use more workers (the tensor is persisted across them) or smaller chunks"
    return {
        "passes": passes, "memory_passes": mem,
        "iterations": {"factor": iters}, "per_iteration": {"factor": N},
        "task": {"factor": task}, "worker": {"factor": worker},
        "outputs": {"factors": (sum(shape) + 1) * r * 8}, "details": details,
        "fixes": {"factor": fix}, "rank": r,
    }


def _dgd_local(job: dict[str, Any], X: _In, nw: int, th: int) -> dict[str, Any]:
    from ..factor.consensus._runtime import split_columns

    n, m, rows, cols, _, _ = _matrix(X)
    r = int(job["factor"]["rank"])
    J = int(_opt(job, "n_nodes", default=8))
    iters = int(_opt(job, "max_iter", default=3000))
    sz = 8 if str(_opt(job, "dtype", default="float64")) in ("float64", "f8", "d") else 4
    col_chunks = X.dim_chunks[1 - X.ax]
    ranges = split_columns(col_chunks, J)
    widths = [b - a for a, b in ranges]
    # a node reads every chunk its columns touch: input chunks wider than a node are read once
    # per node that shares them
    edges = [0]
    for c in col_chunks:
        edges.append(edges[-1] + c)
    spans = list(zip(edges, edges[1:], strict=False))
    touched = sum(sum(1 for lo, hi in spans if lo < b and hi > a) for a, b in ranges)
    passes = touched / len(col_chunks)
    passes = int(passes) if passes == int(passes) else round(passes, 2)
    # the nodes go to the workers in contiguous ranges (Remote.assign)
    per_worker: dict[int, list[int]] = {}
    for j, w in enumerate(widths):
        per_worker.setdefault(j * nw // J, []).append(w)
    held = max(sum(ws) for ws in per_worker.values()) * n * sz
    blk = max(widths) * n * sz
    k_nodes = max(len(ws) for ws in per_worker.values())
    node = blk + (n + max(widths)) * r * sz
    # loading a node: its chunks cast to the working dtype and concatenated (two copies)
    load = held + blk + X.read
    # an iteration: every node's block, and one residual U Vᵀ − Y (n × m_j) per running task
    # (mode "workers": one task per worker steps its nodes in turn)
    # (mode "workers": one task per worker steps its nodes in turn); measured about two
    # block-sized temporaries per running step
    running = th if _opt(job, "mode", default="workers") == "tasks" else 1
    step = held + 2 * running * blk + k_nodes * (n + max(widths)) * r * sz * 3
    gradient = _opt(job, "solver", default="auto") == "gradient" or \
        not isinstance(_opt(job, "step", default="auto"), str)
    return {
        "passes": {"factor": passes},
        "memory_passes": {"factor": iters + (20 if gradient else 0)},
        "iterations": {"factor": iters}, "per_iteration": {"factor": 1},
        "task": {"factor": max(blk * 2 + X.read, k_nodes * blk + blk)},
        "worker": {"factor": max(load, step)},
        "outputs": {"factors": (n + m) * r * 8},
        "details": {"nodes": J, "nodes per worker": k_nodes, "per node bytes": node,
                    "data held per worker bytes": held},
        "fixes": {"factor": "use more workers (each holds its nodes' columns in "
                            f"{'float64' if sz == 8 else 'float32'})"},
        "rank": r,
    }


def _rows(X: _In) -> tuple[int, int, int]:
    """``n, D`` and the rows of a chunk of a row-chunked matrix (whole rows per task)."""
    return X.shape[0], X.shape[1], X.chunks[0]


def _row_pass_worker(X: _In, th: int, task: int, partial: int) -> int:
    """A row pass: ``threads`` tasks, and a tree sum gathering ``split_every`` partials and their
    sum on one worker."""
    return th * task + (min(_split(), X.numblocks[0]) + 1) * partial


def _lp(job: dict[str, Any], X: _In, nw: int, th: int) -> dict[str, Any]:
    n, D, rows = _rows(X)
    k = int(job["factor"]["rank"])
    p = float(_opt(job, "p", default=1.0))
    # lp_lowrank's `method` (irls / ellipsoid): factor.method is taken, so a job names it so
    solver = str(_opt(job, "solver", "lp_method", "algorithm", default="irls"))
    iters = _opt(job, "max_iter")
    iters = int(iters if iters is not None else (50 if solver == "irls" else 100))
    if p == 2.0:
        iters = 0
    elems = rows * D
    merge = elems * X.isz if X.numblocks[1] > 1 else 0  # column chunks merged into rows
    read = X.read + merge
    if solver == "ellipsoid":
        slab = min(2048, rows)
        partial = (D + D * D + 3) * 8
        task = read + slab * (D + k) * (X.isz + 3 * 8) + D * (D + k) * X.isz \
            + 2 * D * D * 8 + partial
    else:
        partial = (3 + D * D) * 8
        # X ⊙ w (a chunk), X V, the row statistics, the D × D scatter and the partial
        task = read + elems * X.isz + rows * (k * X.isz + 6 * 8) + D * D * (X.isz + 8) + partial
    # AᵀA, one pass per iteration, and one more when the factors are written: the coefficients
    # A V are computed blockwise from the input as they are stored into factors/
    return {
        "passes": {"factor": 1 + iters + 1}, "iterations": {"factor": iters},
        "per_iteration": {"factor": 1},
        "task": {"factor": task}, "worker": {"factor": _row_pass_worker(X, th, task, partial)},
        "outputs": {"factors": D * k * 8 + n * k * X.osz},
        "details": {"partial per chunk bytes": partial, "solver": solver},
        # the model A V Vᵀ reads the input, and the error statistics read it again (the write's
        # graph and theirs are optimised apart, so they do not share the chunk reads: measured)
        "recon_passes": 2,
        "fixes": {"factor": "use smaller input chunks (fewer rows per chunk)"},
        "rank": k, "recon_task": _reconstruct_rows(X, rows * k * 8 * 2),
    }


def _messi(job: dict[str, Any], X: _In, nw: int, th: int) -> dict[str, Any]:
    n, D, rows = _rows(X)
    r = int(job["factor"]["rank"])
    # the job's rank is j, every subspace's dimension; n_subspaces is k
    k = int(_opt(job, "n_subspaces", default=5))
    j = r
    R = int(_opt(job, "n_init", default=5))
    iters = int(_opt(job, "max_iter", default=20))
    elems = rows * D
    read = X.read + (elems * X.isz if X.numblocks[1] > 1 else 0)
    scat = k * D * D * 8  # one restart's per-cluster scatters
    part_init = (1 + R * (k + k * D * D)) * 8
    part_em = (1 + R * (2 + 2 * k + k * D * D)) * 8
    # the rows sorted by cluster (a chunk copy), one restart's scatters and their syrk, the
    # list of every restart's pieces and its concatenation (the partial, twice)
    init_task = read + elems * X.isz + scat + D * D * 8 + 2 * part_init
    cols = sum(min(jj, D - jj) for jj in [j] * k)
    em_task = read + elems * X.isz + rows * R * k * 8 * 2 + min(2048, rows) * R * cols * 8 \
        + scat + D * D * 8 + 2 * part_em
    worker = max(_row_pass_worker(X, th, init_task, part_init),
                 _row_pass_worker(X, th, em_task, part_em))
    # the initial split, one EM pass per iteration, and two more when the factors are written:
    # the labels and the coefficients are each stored from their own run of the assignment
    # (a blockwise pass over the input per array)
    return {
        "passes": {"factor": 1 + iters + 2}, "iterations": {"factor": iters},
        "per_iteration": {"factor": 1},
        "task": {"factor": max(init_task, em_task)}, "worker": {"factor": worker},
        "outputs": {"factors": k * j * D * 8 + n * (j + 1) * 8},
        "details": {"partial per chunk bytes": part_em, "subspaces": k, "restarts": R},
        "fixes": {"factor": "use fewer restarts (n_init) or subspaces, or smaller input chunks "
                            "(each chunk's partial holds n_init x n_subspaces D x D scatters)"},
        # project_labeled: a cluster's rows gathered (up to a chunk) and their projections
        "rank": r, "recon_task": _reconstruct_rows(X, elems * X.isz + rows * j * 8),
        # the projections read the input, the error statistics read it again (as ℓp's)
        "recon_passes": 2,
    }


#: factor.method -> its plan model
METHOD_MODELS: dict[str, Model] = {
    "svd": _svd, "sparse-pca": _sparse_pca, "cp": _cp, "dgd-local": _dgd_local,
    "lp": _lp, "lp-lowrank": _lp, "messi": _messi, "projective-clustering": _messi,
}


def plan_method(job: dict[str, Any], inp: Any, nw: int, th: int, limit: int | None) -> Plan:
    """The :class:`~._plan.Plan` of a validated job whose method is not NMF / semi-NMF."""
    from ..errors import ConfigError

    method = job["factor"]["method"]
    if method not in METHOD_MODELS:
        raise ConfigError(
            f"`cfact plan` has no model of factor.method {method!r}; methods it plans: nmf, "
            f"semi-nmf, {', '.join(sorted(METHOD_MODELS))} (add one to "
            f"cfact_dask.pipeline._plan_methods.METHOD_MODELS)"
        )
    X = _In(job, inp)
    mdl = METHOD_MODELS[method](job, X, nw, th)
    passes = dict(mdl["passes"])
    task = dict(mdl["task"])
    worker = dict(mdl["worker"])
    outputs = dict(mdl["outputs"])
    remote = REMOTE_CLIENT_BYTES if X.remote else 0
    if job["output"]["reconstruct"]:
        rtask = mdl.get("recon_task")
        if rtask is None:
            rtask, _ = _reconstruct(X, int(mdl.get("rank", 1)), int(mdl.get("recon_extra", 0)))
        passes["reconstruct"] = int(mdl.get("recon_passes", 1))
        task["reconstruct"] = rtask
        worker["reconstruct"] = th * rtask
        outputs["reconstruction"] = math.prod(X.shape) * X.osz
    worker = {k: int(v + WORKER_BASE_BYTES + remote) for k, v in worker.items()}
    fixes = dict(mdl.get("fixes", {}))
    fixes.setdefault("reconstruct", "use smaller input chunks or fewer threads per worker")
    warnings = []
    if limit:
        for stage, b in worker.items():
            if b > 0.8 * limit:
                warnings.append(f"stage {stage!r} needs about {fmt_bytes(b)} per worker, above "
                                f"80% of the {fmt_bytes(limit)} limit: {fixes.get(stage)}")
    tasks = {k: int(math.ceil(_TASKS_PER_CHUNK * X.n_chunks)) for k, v in passes.items() if v}
    if max(tasks.values(), default=0) * CLIENT_BYTES_PER_TASK > CLIENT_WARN_BYTES:
        warnings.append(f"the client holds about "
                        f"{fmt_bytes(max(tasks.values()) * CLIENT_BYTES_PER_TASK)} of task graph "
                        f"while it submits a pass over the {X.n_chunks:,} input chunks: use "
                        f"larger input chunks (rechunk the store once)")
    return Plan(
        input_shape=X.shape, input_chunks=X.chunks, itemsize=X.isz, passes=passes,
        bytes_read=int(sum(passes.values()) * X.nbytes),
        task_peak={k: int(v) for k, v in task.items()}, worker_peak=worker,
        outputs={k: int(v) for k, v in outputs.items()}, n_workers=nw,
        threads_per_worker=th, worker_limit=limit, warnings=warnings, tasks=tasks,
        n_chunks=X.n_chunks, method=method, iterations=dict(mdl.get("iterations", {})),
        passes_per_iteration=dict(mdl.get("per_iteration", {})),
        memory_passes=dict(mdl.get("memory_passes", {})),
        details={k: (int(v) if isinstance(v, float) else v)
                 for k, v in mdl.get("details", {}).items()},
        fixes=fixes,
    )
