"""Stream ``W H`` into a Zarr store chunk by chunk, with error statistics from the same pass.

Each output chunk is computed by one task from its rows of ``W`` and columns of ``H`` (small) and
written straight to Zarr on the input's chunk grid, aligned with the Zarr chunks so writes need no
lock. When ``compare_to`` is given, the same task graph also reads each chunk of the reference and
reduces ``‖X_c − R_c‖²``, ``‖X_c‖²`` and ``max|X_c − R_c|`` per chunk: one ``dask.compute`` for the
write and the statistics.

The store is atomic: a local target is written under a temporary sibling path and renamed into
place at the end; a remote one gets its completion marker (attribute ``cfact.complete``) last. A
store that was interrupted never claims to be complete.

References
----------
.. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization: fast and accurate
   low-rank factorization of compressively-sensed data". ICML 2019, arXiv:1706.08146.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np

from ._runtime.cluster import client_context, compute
from ._runtime.codecs import xarray_encoding
from ._runtime.display import SKIP, fmt_value, summary_html, summary_repr
from .errors import InputError, StoreExistsError, StoreNotFoundError

__all__ = ["ReconstructionStats", "is_complete", "open_reconstruction", "product", "reconstruct",
           "write_reconstruction"]

logger = logging.getLogger(__name__)

_TMP_TAG = ".cfact-tmp-"


@dataclass(frozen=True)
class ReconstructionStats:
    """Error statistics of a streamed reconstruction against ``compare_to``.

    Attributes
    ----------
    path : str
        Where the reconstruction was written (``store`` or ``store/group``).
    relative_error : float or None
        ``‖X − W H‖_F / ‖X‖_F`` (None without ``compare_to``).
    chunk_relative_error : ndarray or None
        The same per chunk, on the chunk grid (shape = number of chunks per axis).
    chunk_max_abs_error : ndarray or None
        ``max |X − W H|`` per chunk.
    max_abs_error : float or None
    worst_chunk : tuple of int or None
        Index of the chunk with the largest squared error.
    shape, chunks : the written array's shape and Zarr chunk shape.
    """

    path: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    relative_error: float | None = None
    chunk_relative_error: np.ndarray | None = None
    chunk_max_abs_error: np.ndarray | None = None
    max_abs_error: float | None = None
    worst_chunk: tuple[int, ...] | None = None

    def _summary(self) -> tuple[str, list[tuple[str, Any]]]:
        return "cfact ReconstructionStats", [
            ("path", self.path), ("shape", tuple(self.shape)), ("chunks", tuple(self.chunks)),
            ("relative error", self.relative_error),
            ("max |error|", self.max_abs_error),
            ("worst chunk", fmt_value(tuple(self.worst_chunk)) if self.worst_chunk is not None
             else SKIP),
            ("worst chunk relative error",
             float(np.nanmax(self.chunk_relative_error))
             if self.chunk_relative_error is not None and np.size(self.chunk_relative_error)
             else SKIP),
        ]

    # short summaries for the terminal and notebooks (not the arrays: see _runtime.display)
    __repr__ = summary_repr
    _repr_html_ = summary_html

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "shape": list(self.shape),
            "chunks": list(self.chunks),
            "relative_error": self.relative_error,
            "max_abs_error": self.max_abs_error,
            "worst_chunk": None if self.worst_chunk is None else list(self.worst_chunk),
        }


def _regular(chunks: tuple[int, ...]) -> bool:
    return len(set(chunks[:-1])) <= 1 and (len(chunks) == 1 or chunks[-1] <= chunks[0])


def _zarr_chunk(chunks: tuple[int, ...]) -> int:
    """A Zarr chunk size such that every dask chunk covers whole Zarr chunks (lock-free)."""
    if _regular(chunks):
        return int(chunks[0])
    return int(math.gcd(*chunks[:-1])) if len(chunks) > 1 else int(chunks[0])


def _factor(x: Any, name: str) -> da.Array:
    if hasattr(x, "W") and hasattr(x, "certificate"):  # a Recovery
        x = x.W
    if hasattr(x, "dims") and hasattr(x, "data") and not isinstance(x, np.ndarray):
        x = x.data
    x = x if isinstance(x, da.Array) else da.from_array(np.asarray(x))
    if x.ndim != 2:
        raise InputError(f"{name} must be a matrix, got shape {x.shape}")
    return x


def _block_stats(X: np.ndarray, R: np.ndarray) -> np.ndarray:
    # one float64 temporary per chunk (D, reused in place) instead of four: with 64 MiB float32
    # chunks this task otherwise peaks at ~0.6 GiB and a 1-2 GiB worker pauses on it
    X = np.asarray(X)
    D = np.subtract(X, R, dtype=np.float64)
    ssd = float(np.vdot(D, D))
    # einsum accumulates float32 input in float64 without a full copy (any number of dims)
    ix = "abcdefghij"[:X.ndim]
    ssx = float(np.einsum(f"{ix},{ix}->", X, X, dtype=np.float64))
    mx = float(np.abs(D, out=D).max()) if D.size else 0.0
    return np.array([ssd, ssx, mx]).reshape((1,) * X.ndim + (3,))


def _product_block(W: np.ndarray, H: np.ndarray, dtype: str, transpose: bool) -> np.ndarray:
    out = np.asarray(W, dtype=np.float64) @ np.asarray(H, dtype=np.float64)
    return (out.T if transpose else out).astype(dtype, copy=False)


def is_complete(store: str | os.PathLike, group: str | None = None) -> bool:
    """True when ``store[/group]`` holds a reconstruction whose write finished."""
    import zarr

    store = os.fspath(store)
    if "://" not in store and not os.path.exists(store):
        return False
    try:
        g = zarr.open_group(store, path=group or "", mode="r")
    except Exception:  # noqa: BLE001 - not a group / unreadable: not complete
        return False
    meta = dict(g.attrs).get("cfact") or {}
    return meta.get("type") == "reconstruction" and bool(meta.get("complete"))


def reconstruct(
    W: Any,
    H: Any,
    target: str | os.PathLike,
    like: Any,
    compare_to: Any = None,
    *,
    overwrite: bool = False,
    group: str | None = None,
    name: str = "reconstruction",
    dtype: Any = None,
    client: Any = None,
    progress: bool | None = None,
    upstream: Any = None,
) -> ReconstructionStats:
    """Write ``W H`` into a Zarr store on ``like``'s chunk grid, with error statistics.

    Parameters
    ----------
    W : array-like (n, r) or Recovery
        The feature factor (dask arrays stay lazy; only the rows of each chunk are used per task).
    H : array-like (r, m)
        The sample factor.
    target : str or path
        Output Zarr store (local path or fsspec URL).
    like : array-like
        Anything :func:`cfact_dask.open_array` takes: its shape (features on its feature axis),
        chunk grid, dims and coords are given to the output.
    compare_to : array-like, optional
        Reference data (usually the input itself): relative Frobenius error and per-chunk
        statistics are computed in the same pass as the write.
    overwrite : bool
        Replace an existing target that cfact wrote (otherwise
        :class:`~cfact_dask.errors.StoreExistsError`). The target is checked before any compute:
        one that is, contains or lies inside ``like`` / ``compare_to`` / the factors' stores, or
        that holds anything cfact did not write, is refused
        (:class:`~cfact_dask.errors.OutputError`).
    group : str, optional
        Write into this group of ``target`` (other groups are left alone).
    name : str
        Name of the data variable (default ``"reconstruction"``).
    dtype : dtype, optional
        Output dtype (default: ``like``'s when floating, else float64).
    client : distributed.Client, optional

    Returns
    -------
    ReconstructionStats

    References
    ----------
    .. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization". ICML 2019,
       arXiv:1706.08146.
    """

    from .io import InputArray, open_array

    store = os.fspath(target)
    inp = like if isinstance(like, InputArray) else open_array(like)
    R = product(W, H, inp, dtype=dtype)
    return write_reconstruction(
        R, store, inp, compare_to, overwrite=overwrite, group=group, name=name, client=client,
        progress=progress, upstream=upstream, rank=int(_factor(W, "W").shape[1]),
        inputs=[W, H])


def product(W: Any, H: Any, like: Any, *, dtype: Any = None) -> da.Array:
    """``W H`` as a lazy dask array in ``like``'s axis order, on ``like``'s chunk grid made
    Zarr-compatible: one task per output chunk from its rows of ``W`` and columns of ``H``.

    ``W`` is features × r, ``H`` r × samples (a Recovery or xarray objects are taken too);
    ``like`` is anything :func:`~cfact_dask.open_array` takes (a matrix).
    """
    from .io import InputArray, open_array

    inp = like if isinstance(like, InputArray) else open_array(like)
    if inp.ndim != 2:
        raise InputError(
            f"W H is a matrix; like={inp.source} has shape {inp.shape}"
        )
    Wd, Hd = _factor(W, "W"), _factor(H, "H")
    fa = inp.feature_axis
    n, m = inp.shape[fa], inp.shape[1 - fa]
    if Wd.shape[0] != n or Hd.shape[1] != m or Wd.shape[1] != Hd.shape[0]:
        raise InputError(
            f"W {Wd.shape} and H {Hd.shape} do not fit like={inp.source} with {n} features "
            f"(axis {fa}) and {m} samples"
        )
    if dtype is None:
        dtype = inp.dtype if inp.dtype.kind == "f" else np.dtype(np.float64)
    dtype = np.dtype(dtype)
    # the output grid: the input's chunks, made Zarr-compatible (regular) without moving data
    out_chunks = _out_chunks(inp.chunks)
    f_chunks, s_chunks = out_chunks[fa], out_chunks[1 - fa]
    Wd = Wd.rechunk((f_chunks, Wd.shape[1]))
    Hd = Hd.rechunk((Hd.shape[0], s_chunks))
    transpose = fa == 1
    R = da.blockwise(
        _product_block,
        "ji" if transpose else "ij",
        Wd,
        "ik",
        Hd,
        "kj",
        dtype.str,
        None,
        transpose,
        None,
        concatenate=True,
        dtype=dtype,
        meta=np.empty((0, 0), dtype),
    )
    return R


def _out_chunks(grid: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
    """The input's chunk grid made Zarr-compatible (regular) without moving data."""
    return tuple(c if _regular(c) else da.core.normalize_chunks((_zarr_chunk(c),), (sum(c),))[0]
                 for c in grid)


def write_reconstruction(
    R: Any,
    target: str | os.PathLike,
    like: Any,
    compare_to: Any = None,
    *,
    overwrite: bool = False,
    group: str | None = None,
    name: str = "reconstruction",
    client: Any = None,
    progress: bool | None = None,
    upstream: Any = None,
    rank: int | None = None,
    inputs: Any = (),
) -> ReconstructionStats:
    """Stream a lazy reconstruction ``R`` (a dask array of ``like``'s shape, in ``like``'s axis
    order) into Zarr on ``like``'s chunk grid, with error statistics against ``compare_to`` from
    the same pass.

    This is what :func:`reconstruct` does after building ``R = W H``; methods whose model is not
    a product of two factors (CP's N-way sum of outer products, MESSI's per-row subspaces, the ℓp
    projection ``A V Vᵀ``) build their own ``R`` blockwise and write it here. The write and the
    statistics are one ``compute``, but dask optimizes the Zarr write's graph on its own (fusing
    each chunk's read into it), so a model that reads the input itself (ℓp, MESSI) reads each
    chunk twice: once for the write and once for the statistics (the planner counts both). A
    model built from factors only (``W H``, CP) reads the input once. Any number of dimensions.

    Parameters
    ----------
    R : dask.array.Array
        The reconstruction, same shape as ``like`` (feature axis where ``like`` has it).
    target, like, compare_to, overwrite, group, name, client, progress
        As for :func:`reconstruct`.
    upstream : dict, optional
        Group ids this reconstruction was computed from (recorded; see the output policy).
    rank : int, optional
        Recorded in the group's attributes.
    inputs : sequence, optional
        Further stores the output must not touch (the factors' stores), beside ``like`` and
        ``compare_to``.

    Returns
    -------
    ReconstructionStats
    """
    import xarray as xr
    import zarr

    from .io import InputArray, open_array

    store = os.fspath(target)
    inp = like if isinstance(like, InputArray) else open_array(like)
    fa = inp.feature_axis
    if not isinstance(R, da.Array):
        R = da.from_array(np.asarray(R))
    if tuple(R.shape) != tuple(inp.shape):
        raise InputError(
            f"the reconstruction has shape {tuple(R.shape)}, like={inp.source} {tuple(inp.shape)}"
        )
    from ._runtime.outputs import prepare_group, prepare_store

    ins = [inp, *inputs] + ([compare_to] if compare_to is not None else [])
    if group is None:
        tgt = prepare_store(store, overwrite=overwrite, inputs=ins, what="reconstruction output")
    else:
        tgt = prepare_group(store, group, overwrite=overwrite, inputs=ins,
                            what="reconstruction output")
    store = tgt.store
    if group is None and not tgt.remote:
        parent = os.path.dirname(os.path.abspath(store)) or "."
        for e in os.scandir(parent):  # temporaries of an interrupted write of this target
            if e.name.startswith(os.path.basename(store) + _TMP_TAG) and e.is_dir():
                _cleanup(e.path)
    out_chunks = _out_chunks(inp.chunks)
    zchunks = tuple(int(c[0]) for c in out_chunks)
    if R.chunks != out_chunks and compare_to is None:
        R = R.rechunk(out_chunks)

    stats_arr = None
    if compare_to is not None:
        ref = compare_to if isinstance(compare_to, InputArray) else open_array(compare_to)
        X = ref.data
        if ref.feature_axis != fa:
            X = X.T
        if X.shape != R.shape:
            raise InputError(
                f"compare_to={ref.source} has shape {X.shape}, the reconstruction {R.shape}"
            )
        if X.chunks != R.chunks:
            # only when the grids differ (irregular input); R is generated, so follow X's grid
            R = R.rechunk(X.chunks)
        ix = "abcdefghij"[:R.ndim]
        stats_arr = da.blockwise(
            _block_stats,
            ix + "z",
            X,
            ix,
            R,
            ix,
            new_axes={"z": 3},
            dtype=np.float64,
            meta=np.empty((0,) * (R.ndim + 1)),
        )
        if R.chunks != out_chunks:
            R = R.rechunk(out_chunks)

    if inp.dims is not None:
        dims = tuple(inp.dims)
    elif R.ndim == 2:
        dims = ("feature", "sample") if fa == 0 else ("sample", "feature")
    else:
        dims = tuple(f"mode_{i}" for i in range(R.ndim))
    coords: dict[str, Any] = {k: v for k, v in inp.coords.items() if k in dims}
    # non-index coordinates (``batch`` along ``cell``) and the input's attributes come along
    coords.update({k: (d, v) for k, (d, v) in getattr(inp, "aux_coords", {}).items()
                   if d in dims and k not in coords})
    from ._runtime.labels import vlen_text

    ds = xr.Dataset({name: (dims, R)}, coords=coords)
    ds = ds.assign_coords({k: (c.dims, vlen_text(c.values)) for k, c in ds.coords.items()
                           if c.dtype.kind in "US"})
    if inp.attrs:
        from ._runtime.jsonattrs import to_json

        # xarray's encoding keys in raw Zarr attributes (_FillValue, scale_factor, ...) belong
        # to how the input was stored, not to the values
        enc = {"coordinates", "missing_value", "scale_factor", "add_offset", "dtype", "cfact"}
        ds[name].attrs = {k: v for k, v in to_json(dict(inp.attrs)).items()
                          if not k.startswith("_") and k not in enc}
    ds[name].encoding = {"chunks": zchunks}
    for c in ds.coords:
        ds[c].encoding = {}

    from ._runtime.outputs import INCOMPLETE_ATTR, INCOMPLETE_TEXT, GroupWriter, remove_late

    remote = tgt.remote
    final = store if group is None else f"{store}/{group}"
    writer = GroupWriter(tgt) if group is not None else None
    if writer is not None:
        writer.__enter__()
        write_store, write_group = store, writer.write_group
    elif remote:
        write_store, write_group = store, None
    else:
        parent = os.path.dirname(os.path.abspath(store)) or "."
        write_store = os.path.join(parent, os.path.basename(store) + _TMP_TAG + uuid.uuid4().hex)
        write_group = None
    attrs = {
        "type": "reconstruction",
        "complete": False,
        "shape": list(R.shape),
        "feature_axis": fa,
        "rank": None if rank is None else int(rank),
    }
    ds.attrs = {"cfact": attrs, INCOMPLETE_ATTR: INCOMPLETE_TEXT}
    try:
        if remote and group is None and tgt.state != "absent":
            from ._runtime.outputs import clear_store

            clear_store(tgt)
        delayed_write = ds.to_zarr(
            write_store,
            group=write_group,
            mode="w",
            compute=False,
            consolidated=False,
            zarr_format=3,
            encoding=xarray_encoding(ds),
            write_empty_chunks=True,
        )
        todo: list[Any] = [delayed_write]
        if stats_arr is not None:
            todo.append(stats_arr)
        with client_context(client, nbytes=int(R.nbytes)) as c:
            results = compute(
                *todo, client=c, progress=progress, desc=f"writing the reconstruction to {final}"
            )
        stats = np.asarray(results[1]) if stats_arr is not None else None
        out = _summarise(final, R.shape, zchunks, stats)
        done = {**attrs, "complete": True}
        if out.relative_error is not None:
            done.update(relative_error=out.relative_error, max_abs_error=out.max_abs_error)
        if writer is not None:
            writer.finish(done, upstream=upstream)
        else:
            import uuid as _uuid

            g = zarr.open_group(write_store, mode="r+")
            a = dict(g.attrs)
            a.pop(INCOMPLETE_ATTR, None)
            a["cfact"] = {**done, "id": _uuid.uuid4().hex}
            g.attrs.put(a)
            if not remote:
                _move_into_place(write_store, None, store, None, tgt.state != "absent")
            from ._runtime.outputs import consolidate

            consolidate(store)
    except BaseException:
        if writer is not None:
            writer.__exit__(None, None, None)
        elif not remote:
            remove_late(write_store, settle=1.0)
        raise
    logger.debug("reconstruction written to %s (relative error %s)", final,
                 "n/a" if out.relative_error is None else f"{out.relative_error:.4g}")
    return out


def _cleanup(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _move_into_place(
    write_store: str, write_group: str | None, store: str, group: str | None, overwrite: bool
) -> None:
    """Rename the finished temporary store / group onto the target (replacing it if allowed)."""
    src = write_store if group is None else os.path.join(write_store, write_group or "")
    dst = store if group is None else os.path.join(store, group)
    trash = None
    if os.path.isdir(dst) and not os.listdir(dst):
        os.rmdir(dst)  # an empty folder the user made for the output
    if os.path.exists(dst):
        if not overwrite:  # appeared while we were writing
            raise StoreExistsError(f"{dst!r} appeared during the write; it was left untouched")
        trash = dst + _TMP_TAG + "old-" + uuid.uuid4().hex
        os.rename(dst, trash)
    os.rename(src, dst)
    if trash is not None:
        _cleanup(trash)


def _summarise(
    path: str, shape: tuple[int, ...], zchunks: tuple[int, ...], stats: np.ndarray | None
) -> ReconstructionStats:
    if stats is None:
        return ReconstructionStats(path=path, shape=tuple(shape), chunks=zchunks)
    num, den, mx = stats[..., 0], stats[..., 1], stats[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        chunk_rel = np.where(den > 0, np.sqrt(num / np.where(den > 0, den, 1)), np.inf)
    total = float(den.sum())
    rel = math.sqrt(float(num.sum()) / total) if total > 0 else math.inf
    worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(num)), num.shape))
    return ReconstructionStats(
        path=path,
        shape=tuple(shape),
        chunks=zchunks,
        relative_error=rel,
        chunk_relative_error=chunk_rel,
        chunk_max_abs_error=mx,
        max_abs_error=float(mx.max()),
        worst_chunk=worst,
    )


def open_reconstruction(
    store: str | os.PathLike, group: str | None = None, name: str = "reconstruction"
) -> Any:
    """Open a finished reconstruction as an ``xarray.DataArray`` (refuses incomplete stores)."""
    import xarray as xr

    store = os.fspath(store)
    if not is_complete(store, group):
        raise StoreNotFoundError(
            f"{store!r}{'' if group is None else f' group {group!r}'} is not a complete "
            f"reconstruction (missing, or its write was interrupted); run reconstruct again"
        )
    return xr.open_zarr(store, group=group, consolidated=False)[name]
