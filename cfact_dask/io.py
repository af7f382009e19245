"""Input: open Zarr / xarray / dask / numpy data read-only, on its native chunk grid."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import warnings
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np

from . import config
from ._runtime.outputs import check_allowed, input_location, store_path
from .errors import CfactError, ChunkError, InputError, MissingChunksWarning, StoreNotFoundError

__all__ = ["InputArray", "describe_store", "open_array"]


@dataclass(frozen=True)
class InputArray:
    """A validated chunked input: a dask array plus the metadata the pipeline keeps.

    Attributes
    ----------
    data : dask.array.Array
        The data on its native chunks (never rechunked by cfact_dask).
    feature_axis : int
        The axis of the ``n`` features (the one that gets compressed).
    dims : tuple of str or None
        Dimension names (from xarray or Zarr ``dimension_names``).
    coords : dict
        Coordinate arrays keyed by dimension name (1-D, small; kept through the pipeline).
    source : str
        Where the data came from, used in error messages.
    attrs : dict
        Attributes of the source array.
    location : str or None
        The resolved path / URL of the array in its store, when it comes from one (what the
        output-safety checks compare outputs against); None for in-memory data.
    aux_coords : dict
        Non-index 1-D coordinates (``batch`` along ``cell``): ``name -> (dim, values)``;
        carried onto the results along the same dimension.
    """

    data: da.Array
    feature_axis: int = 0
    dims: tuple[str, ...] | None = None
    coords: Mapping[str, np.ndarray] = field(default_factory=dict)
    source: str = "the input"
    attrs: Mapping[str, Any] = field(default_factory=dict)
    location: str | None = None
    aux_coords: Mapping[str, tuple[str, np.ndarray]] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def chunks(self) -> tuple[tuple[int, ...], ...]:
        return self.data.chunks

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    @property
    def n_features(self) -> int:
        return int(self.shape[self.feature_axis])

    def with_feature_axis(self, axis: int | str | None) -> InputArray:
        if axis is None:
            return self
        ax = _resolve_axis(axis, self.ndim, self.dims, self.source)
        return InputArray(self.data, ax, self.dims, self.coords, self.source, self.attrs,
                          self.location, self.aux_coords)

    def to_xarray(self) -> Any:
        """The data as an ``xarray.DataArray`` (dims and coords kept, still lazy)."""
        import xarray as xr

        dims = self.dims or tuple(f"dim_{i}" for i in range(self.ndim))
        coords: dict[str, Any] = dict(self.coords)
        coords.update({k: (d, v) for k, (d, v) in self.aux_coords.items() if d in dims})
        return xr.DataArray(self.data, dims=dims, coords=coords, attrs=dict(self.attrs))

    def __dask_tokenize__(self) -> Any:
        from dask.base import tokenize

        return ("cfact.InputArray", self.data.name, self.feature_axis, self.dims,
                tokenize(dict(self.coords)))


def open_array(
    source: Any,
    feature_axis: int | str = 0,
    *,
    variable: str | None = None,
    chunks: Any = None,
    storage_options: dict[str, Any] | None = None,
    check_dtype: bool = True,
) -> InputArray:
    """Open data for cfact_dask, keeping its native chunks and any dims / coords.

    Parameters
    ----------
    source : str, os.PathLike, zarr.Array, xarray.DataArray, dask.array.Array or numpy.ndarray
        A Zarr path or fsspec URL (opened read-only), an open Zarr array, a labelled xarray
        ``DataArray``, a dask array, or an in-memory array (wrapped in one chunk per axis unless
        ``chunks`` is given).
    feature_axis : int or str
        The axis of the features ``n`` (the one a sketch compresses). A dimension name is
        accepted for labelled inputs.
    variable : str, optional
        For a Zarr *group* written by xarray: which data variable to open.
    chunks : optional
        Only for numpy input: the chunking to wrap it with. Chunked inputs keep their own.
    storage_options : dict, optional
        For remote URLs (``s3://bucket/data.zarr``, ``gs://...``): fsspec options such as
        ``endpoint_url``, ``key`` / ``secret``, ``profile``, ``client_kwargs={"region_name":
        ...}``. Without them the environment is used (``AWS_ENDPOINT_URL``,
        ``AWS_ACCESS_KEY_ID`` ...). S3 requests are retried with backoff
        (``cfact.storage.retries``). Whole chunks are fetched and decoded directly on remote
        stores too, one request per chunk, issued concurrently by the tasks.
    check_dtype : bool
        Refuse non-numeric and complex dtypes (default True).

    Returns
    -------
    InputArray
    """
    if isinstance(source, InputArray):
        out = source.with_feature_axis(feature_axis)
    elif isinstance(source, (str, os.PathLike)):
        out = _open_store(os.fspath(source), variable, storage_options)
        out = out.with_feature_axis(feature_axis)
    else:
        out = _wrap_object(source, chunks)
        out = out.with_feature_axis(feature_axis)
    _validate(out, check_dtype)
    return out


def _wrap_object(source: Any, chunks: Any) -> InputArray:
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover - xarray is a dependency
        xr = None
    import zarr

    if xr is not None and isinstance(source, xr.Dataset):
        raise InputError(
            "got an xarray Dataset; pass one of its variables, e.g. ds['expression'], or a Zarr "
            "path with variable='expression'"
        )
    if xr is not None and isinstance(source, xr.DataArray):
        data = source.data
        if not isinstance(data, da.Array):
            data = da.from_array(np.asarray(data), chunks=chunks or -1)
        coords = {
            str(k): np.asarray(v.values)
            for k, v in source.coords.items()
            if v.ndim == 1 and v.dims[0] == k
        }
        aux = {
            str(k): (str(v.dims[0]), np.asarray(v.values))
            for k, v in source.coords.items()
            if v.ndim == 1 and v.dims[0] != k
        }
        return InputArray(
            data,
            0,
            tuple(str(d) for d in source.dims),
            coords,
            f"DataArray {source.name!r}" if source.name is not None else "the DataArray",
            dict(source.attrs),
            input_location(source),
            aux,
        )
    if isinstance(source, zarr.Array):
        return _from_zarr_array(source, _describe_zarr(source))
    if isinstance(source, da.Array):
        return InputArray(source, 0, None, {}, "the dask array", {}, input_location(source))
    if isinstance(source, (np.ndarray, list, tuple)) or hasattr(source, "__array__"):
        arr = np.asarray(source)
        return InputArray(da.from_array(arr, chunks=chunks or -1), 0, None, {}, "the numpy array")
    raise InputError(
        f"unsupported input type {type(source).__module__}.{type(source).__name__}; pass a Zarr "
        f"path or URL, a zarr.Array, an xarray.DataArray, a dask array or a numpy array"
    )


def _describe_zarr(z: Any) -> str:
    store = getattr(z, "store", None)
    root = getattr(store, "root", None)
    loc = str(root) if root is not None else str(store)
    path = getattr(z, "path", "")
    return f"Zarr array {loc}{'/' + path if path else ''}"


logger = logging.getLogger(__name__)

def _scalar(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x


def _join(path: str, key: str) -> str:
    return f"{path}/{key}" if path else key


def missing_chunks_policy() -> str:
    """``cfact.io.missing-chunks``: what a chunk missing from an input store reads as."""
    from .errors import ConfigError

    policy = str(config.get("io.missing-chunks", "error")).lower()
    if policy not in ("error", "warn", "fill"):
        raise ConfigError(
            f"cfact.io.missing-chunks must be 'error', 'warn' or 'fill', got {policy!r}"
        )
    return policy


def _warn_missing_chunks(z: Any, source: str) -> None:
    """Under ``missing-chunks: warn``: one line per opened input naming how many chunks of the
    grid have no object in the store (listed once, here on the client)."""
    grid = tuple(getattr(z, "shards", None) or z.chunks)
    counts = [-(-n // g) for n, g in zip(z.shape, grid, strict=True)]
    total = math.prod(counts)
    path = getattr(z, "path", "")
    prefix = f"{path}/" if path else ""

    async def listing() -> set[str]:
        return {k async for k in z.store.list_prefix(prefix)}

    try:
        present = _zarr_sync(listing())
    except Exception:  # noqa: BLE001 - a store that cannot list: the reads still log
        logger.debug("cannot list %s", source, exc_info=True)
        return
    missing = [c for c in itertools.product(*map(range, counts))
               if prefix + z.metadata.encode_chunk_key(c) not in present]
    if missing:
        warnings.warn(
            f"{len(missing)} of {total} chunks of {source} are missing from the store (first: "
            f"{missing[0]}) and read as the fill value {_scalar(z.fill_value)!r} "
            f"(cfact.io.missing-chunks: warn)", MissingChunksWarning, stacklevel=4,
        )


class _CheckedZarr:
    """A Zarr array whose reads raise :class:`ChunkError` naming the store, chunk and fix.

    A truncated or garbage chunk file otherwise surfaces as a codec error from deep inside
    zarr / numcodecs (``RuntimeError: Zstd decompression error``) with no hint of which chunk of
    which store is broken. Picklable (it only holds the zarr array), so it works on workers.
    """

    def __init__(self, z: Any, source: str) -> None:
        self.z = z
        self.source = source
        self.shape = tuple(z.shape)
        self.ndim = len(self.shape)
        self.dtype = z.dtype
        self.grid = tuple(getattr(z, "shards", None) or z.chunks)

    def __dask_tokenize__(self) -> Any:
        from dask.base import tokenize

        return ("cfact._CheckedZarr", tokenize(self.z), self.source)

    def __getitem__(self, key: Any) -> Any:
        try:
            whole = self._whole_chunk(key)
            if whole is not None:
                out = _read_chunk(self.z, *whole)
                if out is None:  # no object for this chunk in the store
                    self._on_missing(whole[0], key)
                    out = np.full(whole[1], self.z.fill_value, dtype=self.z.dtype)
                return out
            out = self.z[key]
            self._check_fill_regions(key, out)
            return out
        except (MemoryError, ChunkError):
            raise
        except Exception as e:  # noqa: BLE001 - codecs and stores raise many types
            raise ChunkError(self._message(key, e)) from e

    # -- chunks that are not in the store (zarr reads them as the fill value, silently)
    def _chunk_file(self, coords: tuple[int, ...]) -> str:
        root = getattr(self.z.store, "root", None)
        base = str(root) if root is not None else str(self.z.store)
        path = getattr(self.z, "path", "")
        return f"{base}/{path + '/' if path else ''}{self.z.metadata.encode_chunk_key(coords)}"

    def _on_missing(self, coords: tuple[int, ...], key: Any) -> None:
        """A chunk (or shard) of the grid has no object in the store: an error naming it, or
        (``cfact.io.missing-chunks``: warn / fill) read as the fill value. A directory where the
        chunk file should be is always an error."""
        where = self._chunk_file(coords)
        root = getattr(self.z.store, "root", None)
        if root is not None and os.path.isdir(where):
            raise ChunkError(
                f"chunk {coords} of {self.source} is a directory ({where}), not a chunk file; "
                f"the store is damaged: restore it from a backup or write it again"
            )
        policy = missing_chunks_policy()
        if policy == "fill":
            return
        if policy == "warn":  # the one line per run is MissingChunksWarning, at open
            logger.debug("chunk %s of %s is missing (%s); read as the fill value", coords,
                         self.source, where)
            return
        raise ChunkError(
            f"chunk {coords} of {self.source} is missing: no chunk file {where}, although the "
            f"array's metadata (shape {self.shape}, chunks {tuple(self.z.chunks)}) says it "
            f"exists; zarr would read it as the fill value {_scalar(self.z.fill_value)!r}, which "
            f"would "
            f"silently change the result. Restore the chunk (or the store) from a backup; if "
            f"the store leaves chunks equal to the fill value unwritten on purpose (zarr's "
            f"write_empty_chunks=False), set cfact.io.missing-chunks to 'fill' (or 'warn'), "
            f"e.g. DASK_CFACT__IO__MISSING_CHUNKS=fill"
        )

    def _check_fill_regions(self, key: Any, out: Any) -> None:
        """After a read through zarr: every chunk (shard) region of the block that holds only
        the fill value is looked up in the store (a missing one is what reads like that)."""
        if not isinstance(key, tuple) or len(key) != self.ndim or not isinstance(out, np.ndarray):
            return
        if any(not isinstance(k, slice) or k.step not in (None, 1) for k in key):
            return
        fill = self.z.fill_value
        starts = [k.indices(n)[0] for k, n in zip(key, self.shape, strict=True)]
        stops = [k.indices(n)[1] for k, n in zip(key, self.shape, strict=True)]
        ranges = [range(a // g, -(-b // g)) for a, b, g in zip(starts, stops, self.grid,
                                                             strict=True)]
        for coords in itertools.product(*ranges):
            region = tuple(slice(max(c * g, a) - a, min((c + 1) * g, b) - a)
                           for c, g, a, b in zip(coords, self.grid, starts, stops, strict=True))
            block = out[region]
            if block.size == 0:
                continue
            same = np.isnan(block) if isinstance(fill, float) and np.isnan(fill) else block == fill
            if not np.all(same):
                continue
            exists = _zarr_sync(self.z.store.exists(
                _join(getattr(self.z, "path", ""), self.z.metadata.encode_chunk_key(coords))))
            if not exists:
                self._on_missing(tuple(coords), key)

    def _whole_chunk(self, key: Any) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """The chunk coordinates and the block's shape when ``key`` selects exactly one whole
        (or edge) chunk of an unsharded array and direct reads are on, else None (read through
        ``z[key]``)."""
        if not _DIRECT_OK or getattr(self.z, "shards", None) is not None:
            return None
        if not config.get("io.direct-chunk-reads", True):
            return None
        if not isinstance(key, tuple) or len(key) != self.ndim:
            return None
        coords, shape = [], []
        for k, n, c in zip(key, self.shape, self.z.chunks, strict=True):
            if not isinstance(k, slice) or k.step not in (None, 1):
                return None
            start, stop = k.start or 0, n if k.stop is None else k.stop
            if start % c or stop != min(start + c, n):
                return None
            coords.append(start // c)
            shape.append(stop - start)
        return tuple(coords), tuple(shape)

    def _message(self, key: Any, e: Exception) -> str:
        key = key if isinstance(key, tuple) else (key,)
        starts, spans = [], []
        for k, n in zip(key, self.shape, strict=False):
            start, stop = (k.indices(n)[:2] if isinstance(k, slice) else (int(k), int(k) + 1))
            starts.append(start)
            spans.append(f"{start}:{stop}")
        idx = tuple(s // g for s, g in zip(starts, self.grid, strict=False))
        try:
            first = tuple(s // c for s, c in zip(starts, self.z.chunks, strict=False))
            root = getattr(self.z.store, "root", None)
            base = str(root) if root is not None else str(self.z.store)
            path = getattr(self.z, "path", "")
            where = (f"; chunk file {base}/{path + '/' if path else ''}"
                     f"{self.z.metadata.encode_chunk_key(first)}")
        except Exception:  # noqa: BLE001 - building the message must not fail
            where = ""
        if isinstance(e, FileNotFoundError | PermissionError):
            fix = "check that the store is complete and readable by the workers"
        else:
            fix = ("the chunk file is corrupt or truncated, or the metadata (zarr.json) does not "
                   "match the data: restore the store from a backup or write it again")
        from ._runtime.storage import redact

        return redact(
            f"could not read chunk {idx} (index [{', '.join(spans)}]) of {self.source}"
            f"{where}: {type(e).__name__}: {e}; {fix}"
        )


try:  # zarr >= 3.1 internals for whole-chunk reads (see _read_chunk); fall back when absent
    from zarr.core.buffer import default_buffer_prototype as _default_prototype
    from zarr.core.sync import sync as _zarr_sync

    _DIRECT_OK = True
except ImportError:  # pragma: no cover - other zarr versions
    _DIRECT_OK = False


def _read_chunk(z: Any, coords: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray | None:
    """Read one whole chunk: fetch its bytes and decode them, without zarr's output copy.

    ``z[key]`` allocates the output, then decodes into a temporary and copies it over: three
    chunk-sized buffers at once and a memcpy. Decoding the stored bytes directly peaks at the
    compressed plus the decoded chunk and is about twice as fast on a warm page cache (see the
    README's sketch benchmark). The result may be read-only; dask chunks are never written to.
    Edge chunks are stored full-size and cut to the array's bounds here. None when the store
    has no object for the chunk.
    """
    aa = z._async_array
    proto = _default_prototype()
    cfg = aa.config
    if aa.metadata.zarr_format == 2:  # v2 stores its memory order in the metadata (as zarr reads)
        cfg = dataclasses.replace(cfg, order=aa.metadata.order)
    spec = aa.metadata.get_chunk_spec(coords, cfg, prototype=proto)
    buf = _zarr_sync((aa.store_path / aa.metadata.encode_chunk_key(coords)).get(prototype=proto))
    if buf is None:  # no chunk object: the caller decides (zarr would read the fill value)
        return None
    (arr,) = _zarr_sync(aa.codec_pipeline.decode([(buf, spec)]))
    out = arr.as_numpy_array()
    if out.shape != shape:
        out = out[tuple(slice(0, w) for w in shape)]
    return out


def checked_dask(z: Any, source: str) -> da.Array:
    """A zarr array as a dask array (on its chunk grid) whose reads raise :class:`ChunkError`
    naming the chunk: a checksum mismatch, a missing chunk, a corrupt chunk file. For reading
    back what cfact wrote (sketches, factors), like inputs."""
    from dask.base import tokenize

    grid = getattr(z, "shards", None) or z.chunks
    return da.from_array(
        _CheckedZarr(z, source), chunks=grid, name="checked-zarr-" + tokenize(z, grid),
        lock=False, fancy=False, meta=np.empty((0,) * len(z.shape), dtype=z.dtype),
    )


def checked_numpy(z: Any, source: str) -> np.ndarray:
    """:func:`checked_dask`, read into memory in this process."""
    return np.asarray(checked_dask(z, source).compute(scheduler="sync"))


def _from_zarr_array(z: Any, source: str) -> InputArray:
    from dask.base import tokenize

    # native grid: shards when the array is sharded (lock-free, one object read per task)
    grid = getattr(z, "shards", None) or z.chunks
    if missing_chunks_policy() == "warn":
        _warn_missing_chunks(z, source)
    checked = _CheckedZarr(z, source)
    data = da.from_array(
        checked, chunks=grid, name="from-zarr-" + tokenize(z, grid), lock=False, fancy=False,
        meta=np.empty((0,) * len(z.shape), dtype=z.dtype),
    )
    dims = None
    names = getattr(getattr(z, "metadata", None), "dimension_names", None)
    if names and all(n is not None for n in names):
        dims = tuple(str(n) for n in names)
    elif "_ARRAY_DIMENSIONS" in z.attrs:
        dims = tuple(z.attrs["_ARRAY_DIMENSIONS"])
    return InputArray(data, 0, dims, {}, source, dict(z.attrs), input_location(z))


def _open_store(path: str, variable: str | None,
                storage_options: dict[str, Any] | None) -> InputArray:
    import zarr

    from ._runtime import storage

    check_allowed(path, "input")
    path = store_path(path)  # file:// URLs as local paths: one spelling, the local checks apply
    is_url = "://" in path
    if is_url:
        storage_options = storage.resolve_options(path, storage_options)
    if not is_url and not os.path.exists(path):
        raise StoreNotFoundError(
            f"no Zarr store at {path!r}; check the path (relative paths are taken from "
            f"{os.getcwd()!r})"
        )
    try:
        node = zarr.open(path, mode="r", storage_options=storage_options) if is_url else zarr.open(
            path, mode="r"
        )
    except FileNotFoundError as e:
        if not is_url:
            # the path exists (checked above) but holds no Zarr metadata
            raise StoreNotFoundError(
                f"{path!r} exists but is not a readable Zarr store (no zarr.json / .zarray / "
                f".zgroup metadata); point to a Zarr array, or a group with variable=..."
            ) from e
        raise _remote_open_error(path, storage_options, e) from e
    except Exception as e:  # noqa: BLE001 - zarr raises many types for unreadable metadata
        if is_url:
            raise _remote_open_error(path, storage_options, e) from e
        raise StoreNotFoundError(
            f"{path!r} is not a readable Zarr store ({type(e).__name__}: {e}); point to a Zarr "
            f"array, or a group with variable=..."
        ) from e
    if isinstance(node, zarr.Array):
        if variable is not None:
            raise InputError(f"{path!r} is a Zarr array, not a group; drop variable={variable!r}")
        return _from_zarr_array(node, f"Zarr array {path!r}")
    # a group: xarray layout (coords kept) when a variable is named
    members = sorted(k for k, v in node.members() if isinstance(v, zarr.Array))
    if variable is None:
        data_vars = [m for m in members if not _is_coord(node, m)]
        if len(data_vars) == 1:
            variable = data_vars[0]
        else:
            raise InputError(
                f"{path!r} is a Zarr group with arrays {members}; choose one with "
                f"variable=<name> (CLI: --variable)"
            )
    if variable not in members:
        raise StoreNotFoundError(
            f"Zarr group {path!r} has no array {variable!r}; it holds {members}"
        )
    arr = node[variable]
    if "_ARRAY_DIMENSIONS" in arr.attrs or getattr(arr.metadata, "dimension_names", None):
        import xarray as xr

        ds = xr.open_zarr(path, consolidated=False, chunks={}, storage_options=storage_options)
        xa = ds[variable]
        inp = _wrap_object(xa, None)
        source = f"variable {variable!r} of {path!r}"
        data = inp.data
        if _undecoded(xa, arr):
            # same values as xarray's lazy array, but chunk reads that fail name the chunk
            data = _from_zarr_array(arr, source).data
        return InputArray(data, 0, inp.dims, inp.coords, source, inp.attrs,
                          input_location(arr), inp.aux_coords)
    return _from_zarr_array(arr, f"Zarr array {path!r}/{variable}")


def _remote_open_error(url: str, options: dict[str, Any] | None, e: Exception) -> Exception:
    """Why a remote store could not be opened: a missing bucket, denied access, an endpoint
    that does not answer, or no Zarr metadata under an existing prefix."""
    from ._runtime import storage

    err = storage.storage_error(e, url, "opening the input", options)
    if err is None:
        # zarr reports a missing bucket or a denied listing as "no node found": ask the store
        try:
            storage.check_bucket(url, options)
            found = storage.exists(url, options)
        except CfactError as probe:
            return probe
        what = "holds objects but no readable Zarr metadata" if found else "has no objects"
        err = StoreNotFoundError(
            f"no Zarr store at {url!r}: the location {what} ({type(e).__name__}: "
            f"{storage.redact(str(e))}); check the URL (a Zarr array, or a group with "
            f"variable=...) and the endpoint (storage_options endpoint_url / AWS_ENDPOINT_URL)"
        )
    return err


def _undecoded(xa: Any, arr: Any) -> bool:
    """True when xarray reads ``arr`` as it is stored (no scaling, masking or time decoding)."""
    enc = xa.encoding
    if any(k in enc for k in ("scale_factor", "add_offset", "units", "calendar")):
        return False
    fill = enc.get("_FillValue", None)
    if fill is not None and not (isinstance(fill, float | np.floating) and np.isnan(fill)):
        return False
    return xa.dtype == arr.dtype and tuple(xa.shape) == tuple(arr.shape)


def _is_coord(group: Any, name: str) -> bool:
    arr = group[name]
    dims = arr.attrs.get("_ARRAY_DIMENSIONS") or getattr(arr.metadata, "dimension_names", None)
    return bool(dims) and len(dims) == 1 and dims[0] == name


def _resolve_axis(axis: int | str | Hashable, ndim: int, dims: tuple[str, ...] | None,
                  source: str) -> int:
    if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
        if not -ndim <= axis < ndim:
            raise InputError(
                f"feature axis {axis} is out of range for {source} with {ndim} dimensions; "
                f"use 0..{ndim - 1}"
            )
        return int(axis) % ndim
    if dims is None:
        raise InputError(
            f"feature axis {axis!r} is a name but {source} has no dimension names; pass an int"
        )
    if axis not in dims:
        raise InputError(f"feature axis {axis!r} is not a dimension of {source}; dims are {dims}")
    return dims.index(axis)


def _validate(inp: InputArray, check_dtype: bool) -> None:
    x = inp.data
    if check_dtype:
        kind = x.dtype.kind
        if kind == "c":
            raise InputError(
                f"{inp.source} has complex dtype {x.dtype}; split it into real and imaginary parts"
            )
        if kind not in "fiub":
            raise InputError(
                f"{inp.source} has non-numeric dtype {x.dtype}; convert it to float32 or float64 "
                f"(e.g. x.astype('float32'))"
            )
    if x.ndim < 1:
        raise InputError(f"{inp.source} is a scalar; cfact_dask needs a matrix or tensor")
    if any(math.isnan(c) for cs in x.chunks for c in cs):
        raise InputError(
            f"{inp.source} has unknown chunk sizes; call .compute_chunk_sizes() on the dask array"
        )
    if 0 in x.shape:
        raise InputError(f"{inp.source} is empty (shape {x.shape}); nothing to factorize")


# ------------------------------------------------------------------ describing a store
def describe_store(store: str | os.PathLike) -> dict[str, Any]:
    """Return ``{"store": ..., "nodes": [...]}`` with one entry per group / array, depth first."""
    import zarr

    store = os.fspath(store)
    if "://" not in store and not os.path.exists(store):
        raise StoreNotFoundError(f"no Zarr store at {store!r}")
    try:
        root = zarr.open(store, mode="r")
    except Exception as e:  # noqa: BLE001
        raise StoreNotFoundError(f"{store!r} is not a readable Zarr store: {e}") from e
    nodes: list[dict[str, Any]] = []

    def visit(node: Any, path: str) -> None:
        entry: dict[str, Any] = {"path": path}
        meta = dict(node.attrs).get("cfact")
        if meta:
            entry["cfact"] = meta
        if isinstance(node, zarr.Array):
            entry.update(kind="array", shape=list(node.shape), chunks=list(node.chunks),
                         dtype=str(node.dtype))
            shards = getattr(node, "shards", None)
            if shards:
                entry["shards"] = list(shards)
            nodes.append(entry)
            return
        entry["kind"] = "group"
        nodes.append(entry)
        for name, child in sorted(node.members(), key=lambda kv: kv[0]):
            visit(child, f"{path}/{name}" if path else name)

    visit(root, "")
    return {"store": store, "nodes": nodes}
