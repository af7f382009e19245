"""The shared row pass of the embedding factorizations: one blockwise read, a fixed-order sum.

``A`` (n × D, rows = points) is opened on its native row chunks (:func:`prepare_rows`); a pass
applies a kernel to every row chunk and sums the small flattened partials by a fixed-order tree
(:func:`row_reduction`, :func:`reduce_rows`), so the result is bitwise the same for a given
chunking whatever the scheduler. Used by :mod:`.lp` (ℓp low-rank) and :mod:`.clustering`
(MESSI), which also share the deterministic sign of eigenvectors (:func:`fix_signs`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from .. import config
from .._runtime.cluster import compute
from .._runtime.trees import sum_list as _sum_list
from .._runtime.trees import tree_sums
from ..errors import InputError, NonFiniteError
from ..io import open_array

__all__ = ["PROFILE_BINS", "fix_signs", "one_blas_thread", "prepare_rows", "profile_quantile",
           "reduce_rows", "residual_profile", "row_reduction"]

logger = logging.getLogger(__name__)


def prepare_rows(A: Any, func: str) -> tuple[da.Array, str, bool]:
    """Open ``A`` as an n × D dask array with whole rows per chunk (float32 / float64).

    Returns the array, a description for messages and whether the data lives in client memory
    (then it is persisted on a distributed cluster once instead of being shipped every pass).
    """
    in_memory = isinstance(A, np.ndarray)
    inp = open_array(A, feature_axis=0)
    x = inp.data
    if x.ndim != 2:
        raise InputError(
            f"{inp.source} has shape {x.shape}; {func} needs a matrix n × D (rows = points, "
            f"e.g. embedding rows); reshape it to 2-D"
        )
    if x.dtype.kind in "biu" or (x.dtype.kind == "f" and x.dtype.itemsize < 4):
        x = x.astype(np.float64 if x.dtype.itemsize > 2 else np.float32)
    if x.numblocks[1] > 1:
        # whole rows per task; merging column chunks of one row block moves no data across rows
        logger.debug("%s: merging %d column chunks into whole rows", inp.source, x.numblocks[1])
        x = x.rechunk({1: -1})
    return x, inp.source, in_memory


def _raise_nonfinite(block: np.ndarray, info: dict[str, Any] | None, source: str) -> None:
    r0, r1 = info["array-location"][0] if info else (0, block.shape[0])
    idx = info["chunk-location"][0] if info else 0
    bad = np.nonzero(~np.isfinite(block).all(axis=1))[0]
    n_nan = int(np.isnan(block).sum())
    n_inf = int(np.isinf(block).sum())
    raise NonFiniteError(
        f"row chunk {idx} (rows {r0}:{r1}) of {source} holds {n_nan} NaN and {n_inf} Inf values "
        f"(first in row {r0 + int(bad[0])}); drop or impute those rows (e.g. np.nan_to_num) "
        f"before the factorization"
    )


def _partial(
    block: np.ndarray,
    func: Callable[..., np.ndarray],
    args: tuple[Any, ...],
    check_finite: bool,
    source: str,
    info: dict[str, Any],
    with_offset: bool = False,
    rows: tuple[int, int] | None = None,
) -> np.ndarray:
    if rows is not None:
        block = block[rows[0] : rows[1]]
    if check_finite and not np.isfinite(block).all():
        _raise_nonfinite(block, info, source)
    with one_blas_thread():
        if with_offset:
            out = func(block, info["array-location"][0][0], *args)
        else:
            out = func(block, *args)
    return np.asarray(out, dtype=np.float64).ravel()


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """One BLAS thread inside a chunk task: dask already runs one task per core, and a
    multithreaded BLAS on top of that oversubscribes the cores (small per-cluster GEMMs become
    orders of magnitude slower on a busy machine). No-op without threadpoolctl."""
    global _CONTROLLER
    if _CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
            _CONTROLLER = False
        else:
            _CONTROLLER = ThreadpoolController()
    if _CONTROLLER is False:  # pragma: no cover
        yield
        return
    with _CONTROLLER.limit(limits=1, user_api="blas"):
        yield


_CONTROLLER: Any = None


#: a pass over fewer row chunks than this splits them into row slices (tasks) of at least
#: :data:`_MIN_SLICE_ROWS` rows, so an in-memory matrix of one chunk still keeps every core
#: busy; a fixed rule (not the machine's cores) keeps the sum bitwise the same everywhere
_MIN_TASKS = 4
_MIN_SLICE_ROWS = 4096


def _slices(m: int, n_chunks: int) -> list[tuple[int, int]] | None:
    """Row slices of a chunk of ``m`` rows when the pass has too few chunks (else None)."""
    if n_chunks >= _MIN_TASKS:
        return None
    pieces = min(-(-_MIN_TASKS // n_chunks), m // _MIN_SLICE_ROWS)
    if pieces <= 1:
        return None
    edges = np.linspace(0, m, pieces + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def row_reduction(
    x: da.Array,
    func: Callable[..., np.ndarray],
    args: tuple[Any, ...] = (),
    *,
    check_finite: bool = False,
    source: str = "the input",
    split_every: int | None = None,
    with_offset: bool = False,
) -> Delayed:
    """``Σ_chunks func(chunk, *args)`` (the flattened partials) as a dask ``Delayed``.

    One task per row chunk (a pass over fewer than four chunks splits them into row slices of at
    least 4096 rows, so one in-memory chunk still uses several cores), then a fixed-order tree sum
    (fan-in ``split_every``), so the result is bitwise the same for a given chunking whatever the
    scheduler or number of workers. With ``with_offset`` the kernel is called as
    ``func(chunk, first_row, *args)``.
    """
    split_every = int(split_every or config.get("sketch.split-every", 8))
    tok = tokenize(x.name, func, args, check_finite, split_every, with_offset)
    pname = "cfact-rows-partial-" + tok
    name = "cfact-rows-sum-" + tok
    bounds = np.concatenate([[0], np.cumsum(x.chunks[0])]).astype(int)
    dsk: dict[Any, Any] = {}
    keys = []
    for i in range(x.numblocks[0]):
        r0, r1 = int(bounds[i]), int(bounds[i + 1])
        info = {"array-location": [(r0, r1)], "chunk-location": (i,)}
        pieces = _slices(r1 - r0, x.numblocks[0])
        if pieces is None:
            dsk[(pname, i)] = (_partial, (x.name, i, 0), func, args, check_finite, source, info,
                               with_offset)
            keys.append((pname, i))
            continue
        for s_, (a, b) in enumerate(pieces):
            info_s = {"array-location": [(r0 + a, r0 + b)], "chunk-location": (i,)}
            dsk[(pname, i, s_)] = (_partial, (x.name, i, 0), func, args, check_finite, source,
                                   info_s, with_offset, (a, b))
            keys.append((pname, i, s_))
    keys = tree_sums(dsk, keys, f"{pname}-tree", split_every)
    dsk[name] = (_sum_list, keys)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[x])
    return Delayed(name, graph)


def reduce_rows(x: da.Array, func: Callable[..., np.ndarray], args: tuple[Any, ...],
                client: Any, *, check_finite: bool = False, source: str = "the input",
                with_offset: bool = False) -> np.ndarray:
    """:func:`row_reduction` computed (on ``client``): the summed partials as numpy."""
    arr = row_reduction(x, func, args, check_finite=check_finite, source=source,
                        with_offset=with_offset)
    # the limit is held around the whole pass too: the tasks' own limits are entered and left
    # concurrently by the scheduler's threads, and the first to leave would otherwise restore
    # the multithreaded pools under the tasks still running
    with one_blas_thread():
        return np.asarray(compute(arr, client=client, progress=False)[0])


def fix_signs(V: np.ndarray) -> np.ndarray:
    """``V`` with each column's largest-magnitude entry positive (deterministic eigenvectors)."""
    idx = np.argmax(np.abs(V), axis=0)
    s = np.sign(V[idx, np.arange(V.shape[1])])
    s[s == 0] = 1
    return V * s




#: bins of :func:`residual_profile` (relative row residuals in [0, 1], width 0.05)
PROFILE_BINS = 20


def residual_profile(n2: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """Histogram of the rows' relative residuals ``‖a_i − â_i‖ / ‖a_i‖`` (``d2``, ``n2``: the
    squared residual and row norms) in :data:`PROFILE_BINS` equal bins of [0, 1] (float64
    counts, so chunk partials add up in the same tree sum as the other statistics; a residual
    above the row's norm, possible for robust entrywise fits, lands in the last bin, a zero
    row in the first).

    A certificate reads a quantile off it (:func:`profile_quantile`): whether the typical row
    is fitted, which the Frobenius error does not say when a few outlier rows carry it."""
    n2 = np.asarray(n2, np.float64)
    rho = np.sqrt(np.divide(np.asarray(d2, np.float64), n2, out=np.zeros_like(n2),
                            where=n2 > 0))
    idx = np.minimum((rho * PROFILE_BINS).astype(np.int64), PROFILE_BINS - 1)
    return np.bincount(idx, minlength=PROFILE_BINS).astype(np.float64)


def profile_quantile(hist: Any, q: float) -> float | None:
    """Upper bound of the ``q``-quantile of the relative row residuals of a
    :func:`residual_profile` (the upper edge of the bin where the cumulative count reaches
    ``q``; ``None`` for an empty profile)."""
    h = np.asarray(hist, np.float64).ravel()
    total = float(h.sum())
    if h.size == 0 or total <= 0:
        return None
    i = int(np.searchsorted(np.cumsum(h), q * total - 1e-9 * total))
    return min(1.0, (min(i, h.size - 1) + 1) / h.size)
