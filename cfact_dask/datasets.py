"""Seeded synthetic data with planted sparse factors: matrices for NMF, tensors for CP.

Every random stream is keyed by what it is for (support and values of each column of the sparse
factor, the dense factors, and each fixed *tile* of the noise along the global index), so a
dataset depends only on its parameters and seed: not on the chunking, the number of workers or
the scheduler. The Zarr writers build each chunk from the seed alone and never hold the data.

References
----------
.. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization: fast and accurate
   low-rank factorization of compressively-sensed data". ICML 2019, arXiv:1706.08146
   (section 5: the synthetic experiment reproduced by :func:`planted_nmf`).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from ._runtime.checks import check_rank
from ._runtime.codecs import array_kwargs
from ._runtime.random import SeedLike, generator, normalize_seed
from .errors import InputError

__all__ = ["planted_cp", "planted_cp_zarr", "planted_nmf", "planted_nmf_zarr"]

logger = logging.getLogger(__name__)

# stream purposes (part of the key of every generator: changing them changes the data)
_SUPPORT, _VALUES, _DENSE, _NOISE = 1, 2, 3, 4
#: elements per noise tile; the tile edge along each axis is ``round(_TILE_VOLUME ** (1/ndim))``
_TILE_VOLUME = 65536


# ---------------------------------------------------------------------- validation
def _check_rank(shape: Sequence[int], rank: int) -> None:
    check_rank(rank, None, source=f"planted data of shape {tuple(shape)}",
               need="a planted factorization")
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
            raise InputError(f"every dimension must be a positive int, got shape {tuple(shape)}")


def _n_nonzeros(length: int, density: float) -> int:
    if not 0.0 < float(density) <= 1.0:
        raise InputError(
            f"density must be in (0, 1] (the fraction of nonzeros per column), got {density!r}"
        )
    return max(1, min(length, round(float(density) * length)))


def _check_noise(noise: float) -> float:
    noise = float(noise)
    if not (noise >= 0.0 and math.isfinite(noise)):
        raise InputError(
            f"noise must be a finite number >= 0 (relative to ||signal||), got {noise}"
        )
    return noise


# ---------------------------------------------------------------------- factor streams
@functools.lru_cache(maxsize=16)
def _sparse_entries(seed: int, mode: int, length: int, rank: int, k: int) -> tuple[np.ndarray, ...]:
    """Rows, columns and values of the k-sparse factor: per column, ``k`` distinct random rows
    with ``|N(0, 1)|`` values (Sharan et al.'s generator). Small: ``rank * k`` entries."""
    rows, cols, vals = [], [], []
    for j in range(rank):
        rng = generator(seed, mode, _SUPPORT, j)
        idx = np.sort(rng.choice(length, size=k, replace=False))
        rows.append(idx)
        cols.append(np.full(k, j, dtype=np.int64))
        vals.append(np.abs(generator(seed, mode, _VALUES, j).standard_normal(k)))
    out = (np.concatenate(rows), np.concatenate(cols), np.concatenate(vals))
    for a in out:
        a.setflags(write=False)
    return out


def _sparse_rows(
    seed: int, mode: int, length: int, rank: int, k: int, r0: int, r1: int
) -> np.ndarray:
    rows, cols, vals = _sparse_entries(seed, mode, length, rank, k)
    sel = (rows >= r0) & (rows < r1)
    out = np.zeros((r1 - r0, rank))
    out[rows[sel] - r0, cols[sel]] = vals[sel]
    return out


@functools.lru_cache(maxsize=16)
def _dense_factor(seed: int, mode: int, length: int, rank: int, nonnegative: bool) -> np.ndarray:
    """``length x rank`` factor, ``|N(0,1)|`` (or N(0,1)) columns scaled to unit norm."""
    A = generator(seed, mode, _DENSE).standard_normal((length, rank))
    if nonnegative:
        A = np.abs(A)
    A /= np.maximum(np.linalg.norm(A, axis=0, keepdims=True), np.finfo(float).tiny)
    A.setflags(write=False)
    return A


def _tile_edge(ndim: int) -> int:
    return max(8, round(_TILE_VOLUME ** (1.0 / ndim)))


def _noise(seed: int, shape: Sequence[int], ranges: Sequence[tuple[int, int]]) -> np.ndarray:
    """Standard normal noise on the index box ``ranges`` of a global array of ``shape``, built from
    fixed tiles keyed by ``(seed, tile index)`` so any chunking sees the same numbers."""
    ndim = len(shape)
    T = _tile_edge(ndim)
    out = np.empty(tuple(b - a for a, b in ranges))
    tiles = [range(a // T, -(-b // T)) for a, b in ranges]
    for tidx in itertools.product(*tiles):
        lo = [t * T for t in tidx]
        hi = [min((t + 1) * T, s) for t, s in zip(tidx, shape, strict=True)]
        block = generator(seed, _NOISE, *tidx).standard_normal(
            tuple(h - l_ for l_, h in zip(lo, hi, strict=True))
        )
        src, dst = [], []
        for (a, b), l_, h in zip(ranges, lo, hi, strict=True):
            s0, s1 = max(a, l_), min(b, h)
            src.append(slice(s0 - l_, s1 - l_))
            dst.append(slice(s0 - a, s1 - a))
        out[tuple(dst)] = block[tuple(src)]
    return out


# ---------------------------------------------------------------------- matrices
def _nmf_factors(seed: int, n: int, m: int, rank: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    W = _sparse_rows(seed, 0, n, rank, k, 0, n)
    H = np.ascontiguousarray(_dense_factor(seed, 1, m, rank, True).T)
    return W, H


def _signal_norm(W: np.ndarray, H: np.ndarray) -> float:
    # ||W H||_F^2 = <W^T W, H H^T>: exact without forming W H
    return float(math.sqrt(max(float(np.sum((W.T @ W) * (H @ H.T))), 0.0)))


def planted_nmf(
    n: int,
    m: int,
    rank: int,
    density: float = 0.05,
    noise: float = 0.1,
    random_state: SeedLike = None,
    *,
    dtype: Any = np.float64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A matrix ``M = W H + E`` with sparse nonnegative ``W``, in memory (the paper's generator).

    Each column of ``W`` (n x rank) has ``k = round(density * n)`` nonzeros at distinct random rows
    with ``|N(0, 1)|`` values; ``H`` (rank x m) is ``|N(0, 1)|`` with rows scaled to unit norm;
    ``E`` is Gaussian, zero mean, scaled so that ``||E||_F = noise * ||W H||_F`` exactly (so ``M``
    has small negative entries when ``noise > 0``).

    Parameters
    ----------
    n, m : int
        Features (rows) and samples (columns).
    rank : int
        Number of planted components.
    density : float
        Fraction of nonzeros per column of ``W`` (0.05 in the paper).
    noise : float
        ``||E||_F / ||W H||_F`` (0.1 in the paper).
    random_state : int, SeedSequence, Generator or None
        Seed. The same seed gives the same ``W``, ``H`` and noise pattern as
        :func:`planted_nmf_zarr` (whose noise is scaled by its expected, not its exact, norm).
    dtype : dtype
        Of ``M`` (``W`` and ``H`` are float64).

    Returns
    -------
    M : ndarray (n, m)
    W : ndarray (n, rank)
    H : ndarray (rank, m)

    References
    ----------
    .. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization: fast and
       accurate low-rank factorization of compressively-sensed data". ICML 2019,
       arXiv:1706.08146.

    Examples
    --------
    >>> from cfact_dask.datasets import planted_nmf
    >>> M, W, H = planted_nmf(2000, 2000, 10, random_state=0)
    >>> M.shape, W.shape, H.shape, int((W[:, 0] != 0).sum())
    ((2000, 2000), (2000, 10), (10, 2000), 100)
    """
    _check_rank((n, m), rank)
    noise = _check_noise(noise)
    k = _n_nonzeros(n, density)
    seed = normalize_seed(random_state)
    W, H = _nmf_factors(seed, n, m, rank, k)
    M = W @ H
    if noise > 0:
        E = _noise(seed, (n, m), ((0, n), (0, m)))
        M += E * (noise * _signal_norm(W, H) / np.linalg.norm(E))
    return M.astype(dtype, copy=False), W, H


def _nmf_block(
    seed: int,
    n: int,
    m: int,
    rank: int,
    k: int,
    sigma: float,
    dtype: str,
    r0: int,
    r1: int,
    c0: int,
    c1: int,
) -> np.ndarray:
    W = _sparse_rows(seed, 0, n, rank, k, r0, r1)
    H = _dense_factor(seed, 1, m, rank, True)[c0:c1].T
    out = W @ H
    if sigma > 0:
        out += sigma * _noise(seed, (n, m), ((r0, r1), (c0, c1)))
    return out.astype(dtype, copy=False)


def _grid_graph(
    name: str, shape: tuple[int, ...], chunks: tuple[tuple[int, ...], ...], func: Any, *args: Any
) -> dict[Any, Any]:
    bounds = [np.concatenate([[0], np.cumsum(c)]).astype(int) for c in chunks]
    dsk: dict[Any, Any] = {}
    for idx in itertools.product(*(range(len(c)) for c in chunks)):
        ranges = []
        for b, i in zip(bounds, idx, strict=True):
            ranges += [int(b[i]), int(b[i + 1])]
        dsk[(name,) + idx] = (func, *args, *ranges)
    return dsk


def _planted_nmf_dask(
    seed: int, n: int, m: int, rank: int, k: int, sigma: float, dtype: np.dtype, chunks: Any
) -> da.Array:
    chunks = da.core.normalize_chunks(chunks, (n, m), dtype=dtype)
    name = "cfact-planted-nmf-" + tokenize(seed, n, m, rank, k, sigma, dtype.str, chunks)
    dsk = _grid_graph(name, (n, m), chunks, _nmf_block, seed, n, m, rank, k, sigma, dtype.str)
    return da.Array(HighLevelGraph.from_collections(name, dsk), name, chunks=chunks, dtype=dtype)


def _prepare_store(path: str, overwrite: bool) -> None:
    """Check the output (only a store cfact wrote is ever replaced) and clear it if allowed."""
    from ._runtime.outputs import clear_store, prepare_store

    clear_store(prepare_store(path, overwrite=overwrite, what="dataset store"))


def _write_group(
    path: str,
    arrays: dict[str, tuple[tuple[str, ...], Any, Any]],
    attrs: dict[str, Any],
    client: Any,
    progress: bool | None,
) -> None:
    """Write arrays (dims, data, zarr chunks) into a new group in xarray's layout; mark complete
    only after every chunk is written."""
    import zarr

    from ._runtime.cluster import client_context, compute
    from ._runtime.outputs import INCOMPLETE_ATTR, INCOMPLETE_TEXT

    g = zarr.open_group(path, mode="w", zarr_format=3)
    g.attrs.put({"cfact": {**attrs, "complete": False}, INCOMPLETE_ATTR: INCOMPLETE_TEXT})
    lazy = []
    nbytes = 0
    for name, (dims, data, chunks) in arrays.items():
        arr = g.create_array(
            name,
            shape=data.shape,
            dtype=data.dtype,
            chunks=chunks,
            dimension_names=dims,
            fill_value=0,
            **array_kwargs(),
        )
        if isinstance(data, da.Array):
            lazy.append(da.store(data, arr, lock=False, compute=False))
            nbytes += int(data.nbytes)
        else:
            arr[...] = data
    if lazy:
        with client_context(client, nbytes=nbytes) as c:
            compute(*lazy, client=c, progress=progress, desc=f"writing {path}")
    g.attrs.put({"cfact": {**attrs, "complete": True}})


def _zarr_chunks(chunks: tuple[tuple[int, ...], ...]) -> tuple[int, ...]:
    return tuple(c[0] for c in chunks)


def planted_nmf_zarr(
    path: str | os.PathLike,
    n: int,
    m: int,
    rank: int,
    density: float = 0.05,
    noise: float = 0.1,
    random_state: SeedLike = 0,
    *,
    chunks: Any = None,
    dtype: Any = np.float32,
    overwrite: bool = False,
    client: Any = None,
    progress: bool | None = None,
) -> tuple[da.Array, np.ndarray, np.ndarray]:
    """Write a planted sparse NMF matrix to a Zarr group, blockwise, at any size.

    Same generator as :func:`planted_nmf`; each chunk of ``M`` is built by its own task from the
    seed (the sparse ``W`` and small ``H`` are regenerated per task, the noise from fixed tiles),
    so memory per task is one chunk and the data never exists whole. The noise is scaled by its
    expected norm, ``sigma = noise * ||W H||_F / sqrt(n m)`` (exact in expectation; relative
    deviation ``O(1 / sqrt(n m))``).

    The group holds ``M`` (dims ``feature, sample``), the truth ``W`` (``feature, component``) and
    ``H`` (``component, sample``), readable with ``xarray.open_zarr`` and
    ``open_array(path, variable="M")``; attribute ``cfact`` records the parameters and is marked
    ``complete`` only after the last chunk is written.

    Parameters
    ----------
    path : str or path
        The new Zarr store.
    n, m, rank, density, noise, random_state
        As :func:`planted_nmf`.
    chunks : optional
        Chunks of ``M`` (dask syntax; default about 64 MiB, whole rows when possible).
    dtype : dtype
        Of ``M`` (default float32).
    overwrite : bool
        Replace an existing store (otherwise :class:`~cfact_dask.errors.StoreExistsError`).
    client : distributed.Client, optional
        Where to compute (default: see :func:`cfact_dask.client_context`).

    Returns
    -------
    M : dask.array.Array
        ``M`` read back lazily from the store.
    W, H : ndarray
        The planted factors.

    References
    ----------
    .. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization". ICML 2019,
       arXiv:1706.08146.
    """
    import zarr

    _check_rank((n, m), rank)
    noise = _check_noise(noise)
    k = _n_nonzeros(n, density)
    seed = normalize_seed(random_state)
    dtype = np.dtype(dtype)
    path = os.fspath(path)
    W, H = _nmf_factors(seed, n, m, rank, k)
    sigma = noise * _signal_norm(W, H) / math.sqrt(n * m)
    if chunks is None:
        rows = max(1, min(n, (64 * 2**20) // (dtype.itemsize * m)))
        chunks = (rows, m)
    M = _planted_nmf_dask(seed, n, m, rank, k, sigma, dtype, chunks)
    _prepare_store(path, overwrite)
    attrs = {
        "type": "planted_nmf",
        "n": n,
        "m": m,
        "rank": rank,
        "density": float(density),
        "nonzeros_per_column": k,
        "noise": noise,
        "noise_std": sigma,
        "seed": seed,
    }
    _write_group(
        path,
        {
            "M": (("feature", "sample"), M, _zarr_chunks(M.chunks)),
            "W": (("feature", "component"), W, (min(n, 65536), rank)),
            "H": (("component", "sample"), H, (rank, min(m, 65536))),
        },
        attrs,
        client,
        progress,
    )
    z = zarr.open_array(path, path="M", mode="r")
    return da.from_zarr(z), W, H


# ---------------------------------------------------------------------- tensors
def _cp_factors(
    seed: int, shape: tuple[int, ...], rank: int, sparse_mode: int, k: int, nonnegative: bool
) -> list[np.ndarray]:
    out = []
    for mode, length in enumerate(shape):
        if mode == sparse_mode:
            A = _sparse_rows(seed, mode, length, rank, k, 0, length)
            if not nonnegative:
                A = A * np.where(generator(seed, mode, _DENSE).random(A.shape) < 0.5, -1.0, 1.0)
        else:
            A = np.array(_dense_factor(seed, mode, length, rank, nonnegative))
        out.append(A)
    return out


def _cp_full(factors: Sequence[np.ndarray]) -> np.ndarray:
    letters = "abcdefghijklmnopq"
    spec = ",".join(f"{letters[i]}z" for i in range(len(factors)))
    return np.einsum(f"{spec}->{letters[: len(factors)]}", *factors)


def _check_cp(shape: Sequence[int], rank: int, sparse_mode: int) -> tuple[int, ...]:
    shape = tuple(shape)
    if len(shape) < 2:
        raise InputError(f"a CP tensor needs at least 2 modes, got shape {shape}")
    _check_rank(shape, rank)
    if not -len(shape) <= sparse_mode < len(shape):
        raise InputError(f"sparse_mode={sparse_mode} is not a mode of a {len(shape)}-way tensor")
    return tuple(int(s) for s in shape)


def planted_cp(
    shape: Sequence[int],
    rank: int,
    sparse_mode: int = 0,
    density: float = 0.05,
    noise: float = 0.1,
    random_state: SeedLike = None,
    *,
    nonnegative: bool = True,
    dtype: Any = np.float64,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """A CP tensor ``T = [[A_0, A_1, ...]] + E`` whose ``sparse_mode`` factor is sparse.

    The factor of ``sparse_mode`` has ``round(density * shape[sparse_mode])`` nonzeros per column
    at random rows with ``|N(0, 1)|`` values (random signs when ``nonnegative=False``); the other
    factors have ``|N(0, 1)|`` (or N(0, 1)) columns of unit norm. ``||E||_F = noise * ||T_0||_F``.
    This is the tensor version of Sharan et al.'s experiment: sketching the sparse mode and taking
    CP of ``T x_mode P`` gives ``(P A, B, C)``; the sparse factor is then recovered.

    Returns
    -------
    T : ndarray of ``shape``
    factors : list of ndarray
        ``factors[i]`` is ``shape[i] x rank``.

    References
    ----------
    .. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization". ICML 2019,
       arXiv:1706.08146 (section 4, tensors).
    """
    shape = _check_cp(shape, rank, sparse_mode)
    sparse_mode %= len(shape)
    noise = _check_noise(noise)
    k = _n_nonzeros(shape[sparse_mode], density)
    seed = normalize_seed(random_state)
    factors = _cp_factors(seed, shape, rank, sparse_mode, k, nonnegative)
    T = _cp_full(factors)
    if noise > 0:
        E = _noise(seed, shape, tuple((0, s) for s in shape))
        T += E * (noise * np.linalg.norm(T) / np.linalg.norm(E))
    return T.astype(dtype, copy=False), factors


def _cp_block(
    seed: int,
    shape: tuple[int, ...],
    rank: int,
    sparse_mode: int,
    k: int,
    nonnegative: bool,
    sigma: float,
    dtype: str,
    *bounds: int,
) -> np.ndarray:
    ranges = [(bounds[2 * i], bounds[2 * i + 1]) for i in range(len(shape))]
    factors = _cp_factors_cached(seed, shape, rank, sparse_mode, k, nonnegative)
    out = _cp_full([A[a:b] for A, (a, b) in zip(factors, ranges, strict=True)])
    if sigma > 0:
        out += sigma * _noise(seed, shape, ranges)
    return out.astype(dtype, copy=False)


@functools.lru_cache(maxsize=4)
def _cp_factors_cached(
    seed: int, shape: tuple[int, ...], rank: int, sparse_mode: int, k: int, nonnegative: bool
) -> list[np.ndarray]:
    return _cp_factors(seed, shape, rank, sparse_mode, k, nonnegative)


def _cp_norm(factors: Sequence[np.ndarray]) -> float:
    G = np.ones((factors[0].shape[1],) * 2)
    for A in factors:
        G = G * (A.T @ A)
    return float(math.sqrt(max(float(G.sum()), 0.0)))


def planted_cp_zarr(
    path: str | os.PathLike,
    shape: Sequence[int],
    rank: int,
    sparse_mode: int = 0,
    density: float = 0.05,
    noise: float = 0.1,
    random_state: SeedLike = 0,
    *,
    nonnegative: bool = True,
    chunks: Any = None,
    dtype: Any = np.float32,
    overwrite: bool = False,
    client: Any = None,
    progress: bool | None = None,
) -> tuple[da.Array, list[np.ndarray]]:
    """Write a planted sparse-mode CP tensor to a Zarr group blockwise (see :func:`planted_cp`).

    The group holds ``T`` (dims ``mode_0, mode_1, ...``) and the factors ``factor_0, ...``
    (dims ``mode_i, component``); the noise is scaled by its expected norm. Marked complete last.

    Returns
    -------
    T : dask.array.Array
        Read back lazily from the store.
    factors : list of ndarray

    References
    ----------
    .. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization". ICML 2019,
       arXiv:1706.08146.
    """
    import zarr

    shape = _check_cp(shape, rank, sparse_mode)
    sparse_mode %= len(shape)
    noise = _check_noise(noise)
    k = _n_nonzeros(shape[sparse_mode], density)
    seed = normalize_seed(random_state)
    dtype = np.dtype(dtype)
    path = os.fspath(path)
    factors = _cp_factors(seed, shape, rank, sparse_mode, k, nonnegative)
    sigma = noise * _cp_norm(factors) / math.sqrt(math.prod(shape))
    chunks = da.core.normalize_chunks(chunks or "auto", shape, dtype=dtype)
    name = "cfact-planted-cp-" + tokenize(
        seed, shape, rank, sparse_mode, k, nonnegative, sigma, dtype.str, chunks
    )
    dsk = _grid_graph(
        name,
        shape,
        chunks,
        _cp_block,
        seed,
        shape,
        rank,
        sparse_mode,
        k,
        nonnegative,
        sigma,
        dtype.str,
    )
    T = da.Array(HighLevelGraph.from_collections(name, dsk), name, chunks=chunks, dtype=dtype)
    _prepare_store(path, overwrite)
    dims = tuple(f"mode_{i}" for i in range(len(shape)))
    arrays: dict[str, Any] = {"T": (dims, T, _zarr_chunks(T.chunks))}
    for i, A in enumerate(factors):
        arrays[f"factor_{i}"] = ((f"mode_{i}", "component"), A, A.shape)
    attrs = {
        "type": "planted_cp",
        "shape": list(shape),
        "rank": rank,
        "sparse_mode": sparse_mode,
        "density": float(density),
        "nonzeros_per_column": k,
        "noise": noise,
        "noise_std": sigma,
        "seed": seed,
        "nonnegative": bool(nonnegative),
    }
    _write_group(path, arrays, attrs, client, progress)
    z = zarr.open_array(path, path="T", mode="r")
    return da.from_zarr(z), factors
