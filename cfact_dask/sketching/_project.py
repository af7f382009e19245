"""The blockwise kernel of a sketch: ``x ×_axis P`` as a dask graph of one task per input chunk
and a fixed-order tree sum, so the result is bitwise repeatable for a given chunking."""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from .. import config
from .._runtime.trees import sum_list as _sum_list
from .._runtime.trees import tree_sums
from ..errors import InputError, NonFiniteError
from .operators import SketchOperator, result_dtype, tile_cache_budget

__all__ = ["project", "project_many"]


def _partial(
    op: SketchOperator,
    block: np.ndarray,
    start: int,
    axis: int,
    check_finite: bool,
    where: tuple[Any, ...],
) -> np.ndarray:
    with tile_cache_budget(getattr(block, "nbytes", 0)):
        out = op.apply_block(block, start, axis)
    if check_finite and not np.isfinite(out).all():
        _raise_nonfinite(block, where)
    return out


def _raise_nonfinite(block: np.ndarray, where: tuple[Any, ...]) -> None:
    source, idx, ranges = where
    block = np.asarray(block)
    n_nan = int(np.isnan(block).sum()) if block.dtype.kind == "f" else 0
    n_inf = int(np.isinf(block).sum()) if block.dtype.kind == "f" else 0
    span = ", ".join(f"{a}:{b}" for a, b in ranges)
    if n_nan or n_inf:
        first = np.argwhere(~np.isfinite(block))[0]
        pos = tuple(int(r[0] + f) for r, f in zip(ranges, first, strict=True))
        raise NonFiniteError(
            f"chunk {idx} (index [{span}]) of {source} holds {n_nan} NaN and {n_inf} Inf "
            f"values (first at index {pos}); clean or impute the data, or pass "
            f"check_finite=False to sketch it anyway"
        )
    raise NonFiniteError(
        f"sketching chunk {idx} (index [{span}]) of {source} overflowed to Inf although the chunk "
        f"is finite; rescale the data or use float64"
    )


def _take_copy(a: np.ndarray, sl: tuple[slice, ...]) -> np.ndarray:
    return np.array(a[sl], copy=True)


def _sample_groups(
    chunks: tuple[tuple[int, ...], ...], axis: int, bytes_per_col: int, limit: int
) -> tuple[int, list[range]] | None:
    """Consecutive chunks of the last non-feature axis with several chunks, grouped so that each
    group's partial (d × its columns) stays within ``limit`` bytes (at least one chunk per group).

    ``None`` when there is nothing to group (a single chunk, or other axes split too: grouping
    follows one axis only, and N-way tensors keep one tree per output block).
    """
    others = [a for a in range(len(chunks)) if a != axis and len(chunks[a]) > 1]
    if len(others) != 1:
        return None
    g = others[0]
    rest = math.prod(max(c) for a, c in enumerate(chunks) if a not in (axis, g))
    per_col = bytes_per_col * rest
    limit = min(int(limit), int(config.get("sketch.group-bytes", 16 * 2**20)))
    groups: list[range] = []
    start, used = 0, 0
    for j, w in enumerate(chunks[g]):
        if j > start and used + w * per_col > limit:
            groups.append(range(start, j))
            start, used = j, 0
        used += w * per_col
    groups.append(range(start, len(chunks[g])))
    if len(groups) == len(chunks[g]):
        return None
    return g, groups


def project(
    x: da.Array,
    op: SketchOperator,
    axis: int = 0,
    *,
    offset: int = 0,
    check_finite: bool = True,
    split_every: int | None = None,
    source: str = "the input",
) -> da.Array:
    """``x ×_axis P[:, offset:offset + x.shape[axis]]`` as a dask graph: one task per input chunk,
    then a fixed-order tree sum of the d-sized partials over the chunks along ``axis``.

    When one other axis is split, the partials of consecutive chunks along it are concatenated
    per feature row (groups of at most chunk bytes / ``split_every`` of partials, capped by
    ``cfact.sketch.group-bytes``) before the tree sum, and the summed groups are cut back into
    the output chunks: the scheduler then runs the chunks of a feature row back to back and they
    reuse the cached tiles of ``P``. Elementwise the same additions in the same order, so the
    result is bitwise that of one tree per output chunk.

    The graph depends only on the chunking, so the result is bitwise repeatable for a given
    chunking whatever the scheduler or number of workers.
    """
    split_every = _check_inputs(x, split_every, source)
    dtype = result_dtype(x.dtype)
    tok = tokenize(x, op, axis, offset, check_finite, split_every)
    pname = "cfact-sketch-partial-" + tok
    offsets = np.concatenate([[0], np.cumsum(x.chunks[axis])]).astype(int) + offset
    dsk: dict[Any, Any] = {}
    for idx, where in _blocks(x, source):
        dsk[(pname,) + idx] = (
            _partial, op, (x.name,) + idx, int(offsets[idx[axis]]), axis, check_finite, where
        )
    return _reduce(x, dsk, pname, "cfact-sketch-" + tok, axis, op.n_components, dtype,
                   split_every)


def project_many(
    x: da.Array,
    specs: Sequence[tuple[SketchOperator, int]],
    *,
    extras: Sequence[Callable[[np.ndarray], np.ndarray]] = (),
    check_finite: bool = True,
    split_every: int | None = None,
    source: str = "the input",
    sum_extras: bool = False,
) -> list[da.Array]:
    """Several sketches ``x ×_axis P`` of ``x``, one ``(P, axis)`` per entry of ``specs``, with
    one task per input chunk computing every partial back to back.

    Each result is bitwise that of :func:`project` (the same kernel on the same block, the same
    tree of partial sums); what changes is that a chunk's kernels run in one task, while the
    chunk is hot in the cache, not as separate tasks the scheduler may interleave with other
    chunks' reads (a 16 384 x 512 float32 chunk: its three sketches and its norm took 42 ms as
    four tasks and 32 ms as one, in a 2-worker cluster's task stream).

    ``extras``: functions of a block returning a ``(1,) * ndim`` array (a per-chunk statistic,
    e.g. its squared norm); each comes back as a dask array of one entry per chunk, for the
    caller to reduce, or (``sum_extras``) as their sum, a one-entry array summed by a fixed tree.
    Returns the sketches, then the extras, in order.

    The reductions read each chunk's partial straight out of its task's tuple (an inline
    ``getitem`` in the first sum), so the graph has no task per partial: on a 128-chunk pass
    that was ~500 tasks of a few microseconds, each costing the scheduler a round trip.
    """
    split_every = _check_inputs(x, split_every, source)
    dtype = result_dtype(x.dtype)
    specs = [(op, int(axis) % x.ndim) for op, axis in specs]
    tok = tokenize(x, specs, list(extras), check_finite, split_every)
    # one blockwise task per chunk: dask fuses it with the chunk's read (as it fuses a read
    # with a reduction's first step), so each chunk is one root task, like a plain read pass
    starts = [tuple(int(v) for v in np.cumsum((0,) + tuple(c))[:-1]) for c in x.chunks]
    fused = x.map_blocks(
        _partials_of_block, specs=specs, extras=list(extras), check_finite=check_finite,
        starts=starts, source=source, name="cfact-sketches-" + tok, dtype=np.float64,
        meta=np.empty((0,) * x.ndim, dtype=np.float64),
    )
    fname = fused.name
    out = []
    for i, (op, axis) in enumerate(specs):
        pname = f"cfact-sketch-partial-{i}-{tok}"
        out.append(_reduce(x, {}, pname, f"cfact-sketch-{i}-{tok}", axis, op.n_components,
                           dtype, split_every, dependency=fused,
                           ref=lambda idx, i=i: (operator.getitem, (fname,) + idx, i)))
    for j in range(len(extras)):
        ename = f"cfact-sketch-extra-{j}-{tok}"
        refs = [(operator.getitem, (fname,) + idx, len(specs) + j) for idx, _ in _blocks(x)]
        if sum_extras:
            dsk: dict[Any, Any] = {}
            top = tree_sums(dsk, refs, f"{ename}-tree", split_every)
            dsk[(ename,) + (0,) * x.ndim] = (_sum_list, top)
            chunks: tuple[tuple[int, ...], ...] = ((1,),) * x.ndim
        else:
            dsk = {(ename,) + idx: r for (idx, _), r in zip(_blocks(x), refs, strict=True)}
            chunks = tuple((1,) * n for n in x.numblocks)
        graph = HighLevelGraph.from_collections(ename, dsk, dependencies=[fused])
        out.append(da.Array(graph, ename, chunks=chunks, dtype=np.float64))
    return out


def _check_inputs(x: da.Array, split_every: int | None, source: str) -> int:
    if any(math.isnan(c) for cs in x.chunks for c in cs):
        raise InputError(
            f"{source} has unknown chunk sizes {x.chunks}; call x.compute_chunk_sizes() first"
        )
    split_every = int(split_every or config.get("sketch.split-every", 8))
    if split_every < 2:
        raise InputError(f"split_every must be >= 2, got {split_every}")
    return split_every


def _blocks(x: da.Array, source: str = "") -> Iterator[tuple[tuple[int, ...], tuple[Any, ...]]]:
    """Each chunk's index and its ``where`` (source, index, ranges) for error messages."""
    bounds = [np.concatenate([[0], np.cumsum(c)]).astype(int) for c in x.chunks]
    for idx in itertools.product(*(range(n) for n in x.numblocks)):
        ranges = tuple((int(b[i]), int(b[i + 1])) for b, i in zip(bounds, idx, strict=True))
        yield idx, (source, idx, ranges)


def _partials_of_block(
    block: np.ndarray,
    *,
    specs: list[tuple[SketchOperator, int]],
    extras: list[Callable[[np.ndarray], np.ndarray]],
    check_finite: bool,
    starts: list[tuple[int, ...]],
    source: str,
    block_id: tuple[int, ...],
) -> tuple[Any, ...]:
    """Every partial of chunk ``block_id`` (:func:`_partial` per ``(P, axis)``), then every
    extra statistic: a tuple, read by the ``getitem`` tasks of each result (never an array)."""
    lo = [s_[i] for s_, i in zip(starts, block_id, strict=True)]
    ranges = tuple((a, a + n) for a, n in zip(lo, block.shape, strict=True))
    where = (source, tuple(block_id), ranges)
    parts = [_partial(op, block, lo[axis], axis, check_finite, where) for op, axis in specs]
    return (*parts, *(f(block) for f in extras))


def _reduce(
    x: da.Array,
    dsk: dict[Any, Any],
    pname: str,
    name: str,
    axis: int,
    d: int,
    dtype: Any,
    split_every: int,
    dependency: Any = None,
    ref: Callable[[tuple[int, ...]], Any] | None = None,
) -> da.Array:
    """The fixed-order tree sum of the partials ``(pname, *idx)`` in ``dsk`` over the chunks
    along ``axis`` (see :func:`project`), as the dask array ``name``. ``dependency``: the
    collection the partials' tasks read (default ``x``). ``ref``: the partial of chunk ``idx``
    as an inline task instead (then ``dsk`` holds no partial tasks, and a row's partials are
    concatenated inside the first sum that reads them)."""
    inline = ref is not None
    if ref is None:
        def ref(idx: tuple[int, ...]) -> Any:
            return (pname,) + idx

    nb = x.numblocks[axis]
    itemsize = np.dtype(dtype).itemsize
    block_bytes = math.prod(max(c) for c in x.chunks) * np.dtype(x.dtype).itemsize
    groups = _sample_groups(x.chunks, axis, d * itemsize, block_bytes // split_every)
    gaxis = groups[0] if groups else None
    out_numblocks = list(x.numblocks)
    out_numblocks[axis] = 1
    if gaxis is not None:
        out_numblocks[gaxis] = len(groups[1])
    gname = f"{pname}-row"
    for gidx in itertools.product(*(range(n) for n in out_numblocks)):
        # the column chunks of group g, summed together: each feature-row chunk's partials are
        # concatenated first, so the scheduler runs the chunks of one row back to back and the
        # tiles of P they share are generated once (row-major order), not once per column chunk
        members = [None] if gaxis is None else list(groups[1][gidx[gaxis]])
        keys = []
        for i in range(nb):
            parts = []
            for j in members:
                idx = list(gidx)
                idx[axis] = i
                if gaxis is not None:
                    idx[gaxis] = j
                parts.append(ref(tuple(idx)))
            if len(parts) == 1:
                keys.append(parts[0])
            elif inline:  # inside the first sum that reads them: no task of its own
                keys.append((np.concatenate, parts, gaxis))
            else:
                k = (gname,) + gidx[:axis] + (i,) + gidx[axis + 1 :]
                dsk[k] = (np.concatenate, parts, gaxis)
                keys.append(k)
        keys = tree_sums(dsk, keys, f"{pname}-tree", split_every, prefix=gidx)
        if gaxis is None or len(members) == 1:
            oidx = list(gidx)
            if gaxis is not None:
                oidx[gaxis] = members[0]
            dsk[(name,) + tuple(oidx)] = (_sum_list, keys)
            continue
        root = (f"{pname}-sum",) + gidx
        dsk[root] = (_sum_list, keys)
        lo = 0
        for j in members:
            w = x.chunks[gaxis][j]
            oidx = list(gidx)
            oidx[gaxis] = j
            sl = [slice(None)] * x.ndim
            sl[gaxis] = slice(lo, lo + w)
            dsk[(name,) + tuple(oidx)] = (_take_copy, root, tuple(sl))
            lo += w
    out_chunks = list(x.chunks)
    out_chunks[axis] = (d,)
    graph = HighLevelGraph.from_collections(
        name, dsk, dependencies=[x if dependency is None else dependency])
    return da.Array(graph, name, chunks=tuple(out_chunks), dtype=dtype)
