"""How cfact encodes the arrays it writes: checksummed, so corruption fails to decode.

Every store cfact writes (sketches, factors, recovered W, reconstructions, checkpoints, generated
data sets) takes its codecs from :func:`array_kwargs` (``zarr.Group.create_array`` /
``dask.array.to_zarr``) or :func:`xarray_encoding` (``xarray.Dataset.to_zarr``). Zstd compresses
(level 0, zarr's default) and a CRC-32C of the compressed bytes follows, so a flipped or truncated
byte in a chunk file fails its checksum when the chunk is read back, instead of decoding to wrong
numbers; cfact's readers turn that into a ChunkError naming the chunk. Chunks equal to the fill
value are written too, so a chunk missing from a cfact store always means damage
(``cfact.io.missing-chunks``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["array_kwargs", "compressors", "xarray_encoding"]


def compressors() -> tuple[Any, ...]:
    """Zstd, then a CRC-32C checksum of the compressed bytes (zarr v3 bytes-to-bytes codecs)."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return (ZstdCodec(level=0, checksum=False), Crc32cCodec())


def array_kwargs() -> dict[str, Any]:
    """Keyword arguments for ``create_array`` / ``da.to_zarr``: checksummed, complete chunks."""
    return {"compressors": compressors(), "config": {"write_empty_chunks": True}}


def xarray_encoding(ds: Any) -> dict[str, dict[str, Any]]:
    """``encoding=`` for ``Dataset.to_zarr`` (zarr v3): checksummed codecs for every variable
    (pass ``write_empty_chunks=True`` to ``to_zarr`` as well)."""
    return {str(name): {"compressors": compressors()} for name in ds.variables}
