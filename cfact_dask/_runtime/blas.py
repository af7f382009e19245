"""BLAS threads that match the cores a piece of work owns.

A multithreaded BLAS (OpenBLAS, MKL) starts as many threads as the machine has cores in *every*
process, whatever else runs there. Inside a dask worker that runs ``nthreads`` tasks at once, or
in an in-process iterative solver whose products are skinny (``n × m_j`` times ``m_j × r`` with a
small rank ``r``), those threads fight the scheduler's threads and each other: measured on a busy
2-core machine, in-process DGD+LOCAL ran 5–13× slower with the default BLAS threads than with one.

:func:`blas_threads` limits the BLAS pools (threadpoolctl) for the duration of a block:

* inside a dask worker task: ``cores // worker threads`` (at least 1), the cores that task owns,
  and never more than the worker process started with (a nanny starts workers with one BLAS
  thread; other workers on the same host are invisible to ``cores // threads``);
* elsewhere (an in-process solver loop): ``cfact.blas.solver-threads`` (default 1);

and in both cases never more than the process started with (its environment's setting).
``cfact.blas.threads`` (an int) overrides all of this; ``null`` leaves the pools alone. Without
threadpoolctl the helpers are no-ops.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

from ..config import get

__all__ = ["aligned_copy", "blas_threads", "blas_threads_now", "owned_cores"]

#: the BLAS threads the process started with (its environment), before any limit of ours
_START: int | None = None
_STARTED = False
_LOCK = threading.RLock()


def _threadpoolctl() -> Any:
    try:
        import threadpoolctl
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return None
    return threadpoolctl


def _note_start() -> None:
    global _START, _STARTED
    with _LOCK:
        if not _STARTED:
            _START = blas_threads_now()
            _STARTED = True


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def owned_cores() -> int:
    """The cores the calling code owns: ``cores // threads`` of the dask worker it runs in
    (at least 1), or ``cfact.blas.solver-threads`` outside a worker."""
    override = get("blas.threads", None)
    if override not in (None, "auto"):
        return max(1, int(override))
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return max(1, int(get("blas.solver-threads", 1)))
    nthreads = int(getattr(worker.state, "nthreads", None) or getattr(worker, "nthreads", 1))
    return max(1, _cores() // max(1, nthreads))


def _in_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


@contextlib.contextmanager
def blas_threads(limit: int | None = None) -> Iterator[int | None]:
    """Limit the BLAS thread pools to ``limit`` (default :func:`owned_cores`) inside the block.

    Inside a dask worker the limit is set for the whole worker process and left in place (every
    task there owns the same share of cores; the pools are process-wide, so a limit that one
    task restored on exit would lift it under a task still running in another thread). Outside
    a worker the previous limits are restored on exit. Yields the limit in force (None when
    nothing was limited: ``cfact.blas.enabled`` false or no threadpoolctl).
    """
    tpc = _threadpoolctl()
    if tpc is None or not get("blas.enabled", True):
        yield None
        return
    _note_start()
    n = owned_cores() if limit is None else max(1, int(limit))
    if _START is not None and limit is None and get("blas.threads", None) in (None, "auto"):
        # never above what the process's environment set (OPENBLAS_NUM_THREADS...): a nanny
        # starts workers with one BLAS thread (distributed.nanny.pre-spawn-environ), and
        # several workers may share the host, which cores // own threads cannot see
        n = min(n, _START)
    if _in_worker():
        with _LOCK:
            if blas_threads_now() != n:
                # a fresh scan (libraries loaded since are included); not restored: see above
                tpc.threadpool_limits(limits=n, user_api="blas")
                _release_control(tpc)
        yield n
        return
    with tpc.threadpool_limits(limits=n, user_api="blas"):
        yield n

def _release_control(tpc: Any) -> None:
    """threadpoolctl >= 3.6 lets only one "controlling" thread change a pthreads OpenBLAS pool
    (other threads' calls are silently ignored) until it is released; a limit set outside a
    ``with`` block is never released, so release it: every task thread of a worker may then
    set the (same) limit."""
    ctl = getattr(tpc, "OpenBLASController", None)
    clear = getattr(ctl, "clear_controlling_thread", None)
    if clear is not None:
        clear()


def blas_threads_now() -> int | None:
    """The largest thread count of the BLAS pools loaded in this process (None if unknown)."""
    tpc = _threadpoolctl()
    if tpc is None:  # pragma: no cover
        return None
    counts = [int(p["num_threads"]) for p in tpc.threadpool_info() if p["user_api"] == "blas"]
    return max(counts) if counts else None


def aligned_copy(a: Any, dtype: Any = None) -> Any:
    """A C-ordered copy of ``a`` (as ``dtype``) starting on a 64-byte boundary.

    OpenBLAS picks its kernel's edge handling by where the operands start, so the same product
    on the same numbers can differ in the last bit from one buffer to another (measured: an
    array received from another worker, or allocated on a different heap in another process).
    Products whose results must repeat bitwise (sums a rerun or a resumed run compares) take
    their operands through here.
    """
    import numpy as np

    src = np.asarray(a)
    dt = np.dtype(dtype or src.dtype)
    nbytes = src.size * dt.itemsize
    buf = np.empty(nbytes + 64, dtype=np.uint8)
    off = (-buf.ctypes.data) % 64
    out = buf[off : off + nbytes].view(dt).reshape(src.shape)
    out[...] = src
    return out


def aligned_gram(a: Any) -> Any:
    """``a aᵀ`` in float64, both operands one :func:`aligned_copy` of ``a``: the same numbers
    wherever ``a`` came from (the Grams that reruns compare: the SVD's, the refinement's)."""
    import numpy as np

    c = aligned_copy(a, np.float64)
    return c @ c.T
