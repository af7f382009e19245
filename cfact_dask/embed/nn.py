"""Compressed embedding layers: parameter accounting, budgets, factor export and PyTorch modules.

An embedding matrix ``A`` (n × D) is replaced by

* a **factored** layer (SVD or robust ℓp): ``n × r`` table then an ``r × D`` linear map,
  ``r (n + D)`` parameters;
* a **MESSI** layer (projective clustering): rows split into k clusters, cluster ``l`` gets its own
  ``n_l × j_l`` table, and one shared ``(Σ j_l) × D`` linear map stacks the k bases,
  ``Σ_l n_l j_l + D Σ_l j_l`` parameters (``n j + k j D`` for equal ``j``) plus one small cluster
  id per row (an index, not a trained parameter; reported separately).

The PyTorch modules :class:`FactorizedEmbedding` and :class:`MessiEmbedding` exist when torch is
installed (``pip install 'cfact_dask[nn]'``; CPU build ``torch==2.13.0``); ``import cfact_dask.nn``
itself never imports torch (the two classes are resolved on first access, so they are not in
``__all__``: a star import works without torch).

References
----------
.. [1] M. Tukan, A. Maalouf, M. Weksler, D. Feldman. "Compressed deep networks: goodbye SVD, hello
   robust low-rank approximation". arXiv:2009.05647, 2020.
.. [2] A. Maalouf, H. Lang, D. Rus, D. Feldman. "Deep learning meets projective clustering".
   ICLR 2021, arXiv:2010.04290.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dask.array as da
import numpy as np

from .._runtime.cluster import client_context, compute
from .._runtime.codecs import array_kwargs
from .._runtime.jsonattrs import to_json
from .._runtime.random import SeedLike
from ..errors import ConfigError, InputError, StoreNotFoundError

__all__ = [
    "EmbeddingLayers",
    "LowRankFactors",
    "MessiFactors",
    "ParamBudget",
    "budget_choices",
    "choose_budget",
    "compress_embedding",
    "compression_rate",
    "dense_params",
    "factorized_embedding",
    "load_factors",
    "lowrank_params",
    "messi_index_bytes",
    "messi_params",
    "save_factors",
    "to_module",
]

logger = logging.getLogger(__name__)

EmbedMethod = Literal["svd", "lp", "messi"]
METHODS: tuple[str, ...] = ("svd", "lp", "messi")


# ====================================================================== parameter accounting
def dense_params(n: int, D: int) -> int:
    """Parameters of the dense n × D embedding."""
    return int(n) * int(D)


def lowrank_params(n: int, D: int, rank: int) -> int:
    """Parameters of the factored layer ``(n × r)(r × D)``: ``r (n + D)`` (SVD and ℓp alike)."""
    return int(rank) * (int(n) + int(D))


def messi_params(n: int, D: int, dims: int | Sequence[int], *, n_subspaces: int | None = None,
                 counts: Sequence[int] | np.ndarray | None = None) -> int:
    """Parameters of a MESSI layer.

    ``n j + k j D`` for k subspaces of equal dimension j; with per-cluster dimensions the tables
    hold ``Σ_l n_l j_l`` (pass ``counts``) and the shared layer ``D Σ_l j_l``. The per-row cluster
    id is an index and is not counted (see :func:`messi_index_bytes`).
    """
    if isinstance(dims, (int, np.integer)):
        if n_subspaces is None:
            raise ConfigError("messi_params needs n_subspaces when dims is a single int")
        return int(n) * int(dims) + int(n_subspaces) * int(dims) * int(D)
    dims = [int(d) for d in dims]
    if counts is None:
        if len(set(dims)) > 1:
            raise ConfigError("per-cluster dims need counts= (rows per cluster) to be counted")
        return int(n) * dims[0] + len(dims) * dims[0] * int(D)
    if len(counts) != len(dims):
        raise ConfigError(
            f"counts has {len(counts)} entries, dims {len(dims)}; give one per cluster"
        )
    return int(sum(int(c) * d for c, d in zip(counts, dims, strict=True)) + sum(dims) * int(D))


def messi_index_bytes(n: int, n_subspaces: int) -> int:
    """Bytes of the per-row cluster ids (uint8 up to 256 clusters, then uint16 / uint32)."""
    width = 1 if n_subspaces <= 256 else 2 if n_subspaces <= 65536 else 4
    return int(n) * width


def compression_rate(n_params: int, n: int, D: int) -> float:
    """Parameter reduction ``1 − n_params / (n D)`` (0.4 = 40 % fewer parameters)."""
    return 1.0 - float(n_params) / float(dense_params(n, D))


@dataclass(frozen=True)
class ParamBudget:
    """One factorization shape and its parameter count.

    Attributes
    ----------
    method : {"svd", "lp", "messi"}
    rank : int or None
        For svd / lp.
    n_subspaces, dim : int or None
        For messi (k, j).
    n_params : int
    rate : float
        Achieved parameter reduction.
    """

    method: str
    n: int
    D: int
    n_params: int
    rate: float
    rank: int | None = None
    n_subspaces: int | None = None
    dim: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("method", "n", "D", "n_params", "rate", "rank",
                                              "n_subspaces", "dim")}


def _check_rate(rate: Any) -> float:
    try:
        r = float(rate)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"rate must be a number in (0, 1), got {rate!r}") from e
    if not 0.0 < r < 1.0:
        raise ConfigError(
            f"rate={rate!r} is not a parameter reduction in (0, 1); e.g. rate=0.4 keeps 60 % of "
            f"the dense layer's parameters"
        )
    return r


def budget_choices(
    n: int, D: int, rate: float, method: EmbedMethod = "svd",
    n_subspaces: int | Sequence[int] = (2, 3, 5, 8, 10, 16),
) -> list[ParamBudget]:
    """The largest rank (svd / lp) or, for each k, the largest j (messi) meeting ``rate``.

    A choice meets the target when its parameter count is at most ``(1 − rate) n D``. Choices
    that would need rank / j < 1 or >= D are left out.

    Raises
    ------
    ConfigError
        ``rate`` outside (0, 1), unknown ``method``, or no shape meets the target.
    """
    r = _check_rate(rate)
    if method not in METHODS:
        raise ConfigError(f"method={method!r} is unknown; use one of {METHODS}")
    n, D = int(n), int(D)
    cap = (1.0 - r) * n * D
    out: list[ParamBudget] = []
    if method in ("svd", "lp"):
        rank = min(int(math.floor(cap / (n + D))), D - 1)
        if rank >= 1:
            p = lowrank_params(n, D, rank)
            out.append(ParamBudget(method, n, D, p, compression_rate(p, n, D), rank=rank))
    else:
        ks = [n_subspaces] if isinstance(n_subspaces, (int, np.integer)) else list(n_subspaces)
        for k in ks:
            k = int(k)
            j = min(int(math.floor(cap / (n + k * D))), D - 1)
            if j >= 1 and k <= n:
                p = messi_params(n, D, j, n_subspaces=k)
                out.append(ParamBudget(method, n, D, p, compression_rate(p, n, D),
                                       n_subspaces=k, dim=j))
    if not out:
        raise ConfigError(
            f"no {method} shape reaches a {r:.0%} parameter reduction of a {n} × {D} matrix "
            f"(even rank / dim 1 is too large); lower the rate"
            + (" or n_subspaces" if method == "messi" else "")
        )
    return out


def choose_budget(n: int, D: int, rate: float, method: EmbedMethod = "svd",
                  n_subspaces: int = 5) -> ParamBudget:
    """The single shape :func:`compress_embedding` uses: the largest rank, or for messi the
    largest j with the given k."""
    return budget_choices(n, D, rate, method, n_subspaces=int(n_subspaces))[0]


# ====================================================================== factors
@dataclass(frozen=True)
class LowRankFactors:
    """``A ≈ coefficients @ basis.T`` (n × r times r × D), from SVD or ℓp.

    ``coefficients`` may be a lazy dask array (then nothing n-sized is in client memory until a
    layer is built or :func:`save_factors` streams it to Zarr).
    """

    coefficients: Any
    basis: np.ndarray
    method: str = "svd"
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.coefficients.shape[0]), int(self.basis.shape[0]))

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    @property
    def n_params(self) -> int:
        return lowrank_params(*self.shape, self.rank)

    @property
    def rate(self) -> float:
        return compression_rate(self.n_params, *self.shape)

    def reconstruct(self, index: Any = None) -> np.ndarray:
        """Rows ``index`` (all when None) of the reconstruction, in memory."""
        U = self.coefficients if index is None else self.coefficients[np.asarray(index)]
        U = np.asarray(U.compute() if isinstance(U, da.Array) else U)
        return U @ self.basis.T.astype(U.dtype, copy=False)


@dataclass(frozen=True)
class MessiFactors:
    """Row ``i`` ≈ ``coefficients[i, :dims[l]] @ bases[l, :dims[l]]`` with ``l = labels[i]``."""

    labels: Any
    coefficients: Any
    bases: np.ndarray
    dims: tuple[int, ...]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.labels.shape[0]), int(self.bases.shape[2]))

    @property
    def n_subspaces(self) -> int:
        return int(self.bases.shape[0])

    def counts(self) -> np.ndarray:
        lab = self.labels.compute() if isinstance(self.labels, da.Array) else self.labels
        return np.bincount(np.asarray(lab), minlength=self.n_subspaces)

    @property
    def n_params(self) -> int:
        n, D = self.shape
        if len(set(self.dims)) == 1:
            return messi_params(n, D, self.dims[0], n_subspaces=self.n_subspaces)
        return messi_params(n, D, self.dims, counts=self.counts())

    @property
    def rate(self) -> float:
        return compression_rate(self.n_params, *self.shape)

    def reconstruct(self, index: Any = None) -> np.ndarray:
        lab, coef = self.labels, self.coefficients
        if index is not None:
            lab, coef = lab[np.asarray(index)], coef[np.asarray(index)]
        if isinstance(lab, da.Array) or isinstance(coef, da.Array):
            lab, coef = da.compute(lab, coef)
        lab, coef = np.asarray(lab), np.asarray(coef)
        return np.einsum("nj,njd->nd", coef, self.bases[lab].astype(coef.dtype, copy=False))


def _as_factors(obj: Any) -> LowRankFactors | MessiFactors:
    from .clustering import ProjectiveClusteringResult
    from .lp import LpLowRankResult

    if isinstance(obj, (LowRankFactors, MessiFactors)):
        return obj
    if isinstance(obj, LpLowRankResult):
        method = "svd" if obj.p == 2.0 else "lp"
        return LowRankFactors(obj.coefficients, obj.basis, method,
                              {"p": obj.p, "relative_error": obj.relative_error,
                               "objective": obj.objective, "solver": obj.method})
    if isinstance(obj, ProjectiveClusteringResult):
        return MessiFactors(obj.labels, obj.coefficients, obj.bases, obj.dims,
                            {"relative_error": obj.relative_error, "cost": obj.cost,
                             "loss": obj.loss})
    raise InputError(
        f"expected an lp_lowrank / projective_clustering result or LowRankFactors / MessiFactors, "
        f"got {type(obj).__name__}"
    )


# ====================================================================== the two-layer arrays
@dataclass(frozen=True)
class EmbeddingLayers:
    """The arrays of the replacement layer, in memory.

    Attributes
    ----------
    kind : {"lowrank", "messi"}
    tables : list of numpy.ndarray
        One ``n × r`` table (lowrank) or k tables ``n_l × j_l`` (messi).
    shared : numpy.ndarray
        ``r × D`` (lowrank) or ``(Σ j_l) × D`` stacking the k bases (messi): the second layer.
    row_cluster, row_position : numpy.ndarray or None
        For messi: the table of each row and its position in it.
    """

    kind: str
    tables: list[np.ndarray]
    shared: np.ndarray
    row_cluster: np.ndarray | None = None
    row_position: np.ndarray | None = None

    @property
    def n_params(self) -> int:
        return int(sum(t.size for t in self.tables) + self.shared.size)

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([t.shape[1] for t in self.tables])]).astype(int)

    def lookup(self, index: Any) -> np.ndarray:
        """The layer's output for integer row ids (numpy reference of the torch modules)."""
        idx = np.asarray(index)
        flat = idx.reshape(-1)
        if self.kind == "lowrank":
            h = self.tables[0][flat]
        else:
            assert self.row_cluster is not None and self.row_position is not None
            cl, pos = self.row_cluster[flat], self.row_position[flat]
            off = self.offsets
            h = np.zeros((flat.size, int(off[-1])), dtype=self.shared.dtype)
            for c_, t in enumerate(self.tables):
                m = cl == c_
                h[m, off[c_] : off[c_ + 1]] = t[pos[m]]
        return (h @ self.shared).reshape(idx.shape + (self.shared.shape[1],))


def factorized_embedding(factors: Any, *, client: Any = None) -> EmbeddingLayers:
    """The arrays of the two-layer replacement of an embedding, computed into memory.

    Parameters
    ----------
    factors : LpLowRankResult, ProjectiveClusteringResult, LowRankFactors or MessiFactors
        A factorization of the n × D embedding (lazy coefficients are computed here).
    client : distributed.Client, optional
        Where to compute the coefficients.

    Returns
    -------
    EmbeddingLayers
        ``lookup(ids)`` equals the factorization's reconstruction of those rows.

    References
    ----------
    .. [1] M. Tukan, A. Maalouf, M. Weksler, D. Feldman. arXiv:2009.05647 (factored layer).
    .. [2] A. Maalouf, H. Lang, D. Rus, D. Feldman. ICLR 2021, arXiv:2010.04290 (MESSI layer).
    """
    f = _as_factors(factors)
    if isinstance(f, LowRankFactors):
        U = f.coefficients
        if isinstance(U, da.Array):
            with client_context(client, nbytes=int(U.nbytes)) as c:
                U = compute(U, client=c, progress=False)[0]
        U = np.asarray(U)
        return EmbeddingLayers("lowrank", [U], np.ascontiguousarray(f.basis.T.astype(U.dtype)))
    lab, coef = f.labels, f.coefficients
    if isinstance(lab, da.Array) or isinstance(coef, da.Array):
        with client_context(client, nbytes=int(getattr(coef, "nbytes", 0))) as c:
            lab, coef = compute(lab, coef, client=c, progress=False)
    lab = np.asarray(lab).astype(np.int64)
    coef = np.asarray(coef)
    k = f.n_subspaces
    order = np.argsort(lab, kind="stable")
    counts = np.bincount(lab, minlength=k)
    starts = np.concatenate([[0], np.cumsum(counts)])
    position = np.empty_like(lab)
    position[order] = np.arange(lab.size) - starts[lab[order]]
    tables = [np.ascontiguousarray(coef[order[starts[c_] : starts[c_ + 1]], : f.dims[c_]])
              for c_ in range(k)]
    shared = np.concatenate([f.bases[c_, : f.dims[c_]] for c_ in range(k)], axis=0)
    shared = shared.astype(coef.dtype)
    return EmbeddingLayers("messi", tables, shared, lab, position)


# ====================================================================== high-level compress
def compress_embedding(
    A: Any,
    rate: float,
    method: EmbedMethod = "messi",
    *,
    n_subspaces: int = 5,
    p: float = 1.0,
    lp_method: Literal["irls", "ellipsoid"] = "irls",
    n_init: int = 5,
    max_iter: int | None = None,
    random_state: SeedLike = 0,
    client: Any = None,
) -> LowRankFactors | MessiFactors:
    """Factor an n × D embedding to reach a parameter reduction ``rate`` (lazy coefficients).

    The shape comes from :func:`choose_budget`: the largest rank (svd, lp) or, for messi, the
    largest j with ``n_subspaces`` clusters such that the layer has at most ``(1 − rate) n D``
    parameters.

    References
    ----------
    .. [1] M. Tukan, A. Maalouf, M. Weksler, D. Feldman. arXiv:2009.05647.
    .. [2] A. Maalouf, H. Lang, D. Rus, D. Feldman. ICLR 2021, arXiv:2010.04290.
    """
    from ..io import open_array
    from .clustering import projective_clustering
    from .lp import lp_lowrank

    inp = open_array(A, feature_axis=0)
    if inp.ndim != 2:
        raise InputError(f"{inp.source} has shape {inp.shape}; an embedding is a matrix n × D")
    n, D = (int(s) for s in inp.shape)
    b = choose_budget(n, D, rate, method, n_subspaces)
    logger.info("compress_embedding: %s with %s (%d params, rate %.3f)", method, b.to_dict(),
                b.n_params, b.rate)
    res: Any
    if method == "messi":
        assert b.n_subspaces is not None and b.dim is not None
        res = projective_clustering(inp, b.n_subspaces, b.dim, n_init=n_init,
                                    max_iter=20 if max_iter is None else max_iter,
                                    random_state=random_state, client=client)
    else:
        assert b.rank is not None
        res = lp_lowrank(inp, b.rank, p=2.0 if method == "svd" else p, method=lp_method,
                         max_iter=max_iter, random_state=random_state, client=client)
    f = _as_factors(res)
    info = dict(f.info)
    info["budget"] = b.to_dict()
    if isinstance(f, LowRankFactors):
        return LowRankFactors(f.coefficients, f.basis, method, info)
    return MessiFactors(f.labels, f.coefficients, f.bases, f.dims, info)


# ====================================================================== Zarr round trip
def save_factors(factors: Any, store: str | os.PathLike, *, overwrite: bool = False,
                 client: Any = None, inputs: Any = ()) -> str:
    """Write factors to a Zarr group, streaming lazy coefficients chunk by chunk.

    Layout: ``coefficients`` (n × r or n × j), ``basis`` (D × r) or ``labels`` (n,) and ``bases``
    (k × j × D); ``attrs["cfact"]`` (type, method, dims, budget, ``complete``) is written last, so
    an interrupted write is never read back as factors (and is replaced by the next write).
    The output is checked first (:mod:`cfact_dask._runtime.outputs`): never the input (``inputs``)
    or around it, and ``overwrite`` replaces only a store cfact wrote.
    """
    import zarr

    from .._runtime.outputs import (
        INCOMPLETE_ATTR,
        INCOMPLETE_TEXT,
        clear_store,
        consolidate,
        prepare_store,
    )

    f = _as_factors(factors)
    target = prepare_store(store, overwrite=overwrite, inputs=inputs, what="factor store",
                           flag="overwrite=True (CLI: --overwrite)")
    path = target.store
    clear_store(target)
    g = zarr.open_group(path, mode="w", zarr_format=3)
    g.attrs.put({"cfact": {"type": "factors", "complete": False}, INCOMPLETE_ATTR: INCOMPLETE_TEXT})
    lazy: list[tuple[da.Array, Any]] = []

    # dimension names so that xarray.open_zarr reads the store: rows of the embedding (token),
    # its columns (embedding_dim), the rank / subspace dimension and the subspaces
    dims = {"coefficients": ["token", "component"], "basis": ["embedding_dim", "component"],
            "labels": ["token"], "bases": ["subspace", "component", "embedding_dim"]}

    def put(name: str, arr: Any) -> None:
        if isinstance(arr, da.Array):
            c0 = int(arr.chunks[0][0])
            if np.any(np.cumsum(arr.chunks[0])[:-1] % c0):
                arr = arr.rechunk({0: c0})  # lock-free writes need chunk-aligned blocks
            z = g.create_array(name, shape=arr.shape, dtype=arr.dtype,
                               chunks=(c0,) + arr.shape[1:], dimension_names=dims[name],
                               **array_kwargs())
            lazy.append((arr, z))
        else:
            a = np.asarray(arr)
            z = g.create_array(name, shape=a.shape, dtype=a.dtype, chunks=a.shape or None,
                               dimension_names=dims[name],
                               **array_kwargs())
            z[...] = a

    if isinstance(f, LowRankFactors):
        put("coefficients", f.coefficients)
        put("basis", np.asarray(f.basis))
        meta: dict[str, Any] = {"type": "factors", "kind": "lowrank", "method": f.method}
    else:
        put("labels", f.labels)
        put("coefficients", f.coefficients)
        put("bases", np.asarray(f.bases))
        meta = {"type": "factors", "kind": "messi", "method": "messi", "dims": list(f.dims)}
    if lazy:
        srcs = [a for a, _ in lazy]
        tgts = [z for _, z in lazy]
        with client_context(client, nbytes=int(sum(a.nbytes for a in srcs))) as c:
            job = da.store(srcs, tgts, lock=False, compute=False)
            compute(job, client=c, progress=False)
    meta["n_params"] = int(f.n_params)
    meta["rate"] = float(f.rate)
    meta["info"] = _jsonable(f.info)
    meta["complete"] = True
    g.attrs.put({"cfact": meta})
    consolidate(path)
    return path


def load_factors(store: str | os.PathLike, *, lazy: bool = False) -> LowRankFactors | MessiFactors:
    """Read factors written by :func:`save_factors` (numpy, or dask arrays with ``lazy=True``)."""
    import zarr

    path = os.fspath(store)
    if not os.path.exists(path):
        raise StoreNotFoundError(f"no factor store at {path!r}; write one with save_factors or "
                                 f"`cfact compress-embedding ... --out {path}`")
    g = zarr.open_group(path, mode="r")
    meta = dict(g.attrs).get("cfact") or {}
    if meta.get("type") != "factors" or not meta.get("complete"):
        raise InputError(
            f"{path!r} is not a complete factor store (attrs cfact={meta!r}); it was not written "
            f"by save_factors or the write was interrupted: write it again"
        )

    def get(name: str) -> Any:
        z = g[name]
        return da.from_zarr(z) if lazy and z.ndim >= 1 and name != "bases" and name != "basis" \
            else np.asarray(z[...])

    info = dict(meta.get("info") or {})
    if meta["kind"] == "lowrank":
        return LowRankFactors(get("coefficients"), np.asarray(g["basis"][...]), meta["method"],
                              info)
    return MessiFactors(get("labels"), get("coefficients"), np.asarray(g["bases"][...]),
                        tuple(int(d) for d in meta["dims"]), info)


def _jsonable(d: Any) -> Any:
    return to_json(d)


# ====================================================================== PyTorch modules
_TORCH_CLASSES: dict[str, type] = {}


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "the embedding modules need PyTorch: pip install 'cfact_dask[nn]' (CPU build: "
            "pip install torch==2.13.0)"
        ) from e
    return torch


def _torch_classes() -> dict[str, type]:
    if _TORCH_CLASSES:
        return _TORCH_CLASSES
    torch = _torch()
    nn = torch.nn

    class FactorizedEmbedding(nn.Module):
        """Embedding ``n × r`` followed by a bias-free linear ``r → D``: ``A ≈ U Vᵀ``.

        Build it with :meth:`from_factors`; the output for ids ``i`` equals rows ``i`` of the
        factorization's reconstruction. References: Tukan et al., arXiv:2009.05647.
        """

        def __init__(self, num_embeddings: int, rank: int, embedding_dim: int,
                     dtype: Any = None) -> None:
            super().__init__()
            self.embedding = nn.Embedding(num_embeddings, rank, dtype=dtype)
            self.projection = nn.Linear(rank, embedding_dim, bias=False, dtype=dtype)

        @classmethod
        def from_factors(cls, factors: Any, *, dtype: Any = None,
                         client: Any = None) -> FactorizedEmbedding:
            layers = factors if isinstance(factors, EmbeddingLayers) else factorized_embedding(
                factors, client=client)
            if layers.kind != "lowrank":
                raise InputError("FactorizedEmbedding needs low-rank factors; use MessiEmbedding")
            U, W = layers.tables[0], layers.shared
            tdt = dtype or torch.from_numpy(np.zeros(1, dtype=U.dtype)).dtype
            m = cls(U.shape[0], U.shape[1], W.shape[1], dtype=tdt)
            with torch.no_grad():
                m.embedding.weight.copy_(torch.from_numpy(np.ascontiguousarray(U)))
                m.projection.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
            return m

        def forward(self, index: Any) -> Any:
            return self.projection(self.embedding(index))

    class MessiEmbedding(nn.Module):
        """k parallel tables (cluster ``l``: ``n_l × j_l``) and one shared linear ``Σj → D``.

        Row ``i`` is looked up in the table of its cluster at its position there; the ``j_l``
        values are placed in that cluster's slot of a ``Σj`` vector and mapped by the shared
        layer, which stacks the k bases. References: Maalouf et al., arXiv:2010.04290.
        """

        def __init__(self, counts: Sequence[int], dims: Sequence[int], embedding_dim: int,
                     dtype: Any = None) -> None:
            super().__init__()
            self.dims = tuple(int(d) for d in dims)
            self.tables = nn.ModuleList(
                [nn.Embedding(max(int(c), 1), d, dtype=dtype) for c, d in
                 zip(counts, self.dims, strict=True)])
            self.shared = nn.Linear(sum(self.dims), embedding_dim, bias=False, dtype=dtype)
            n = int(sum(counts))
            self.register_buffer("row_cluster", torch.zeros(n, dtype=torch.long))
            self.register_buffer("row_position", torch.zeros(n, dtype=torch.long))
            self.offsets = [0, *np.cumsum(self.dims).tolist()]

        @classmethod
        def from_factors(cls, factors: Any, *, dtype: Any = None,
                         client: Any = None) -> MessiEmbedding:
            layers = factors if isinstance(factors, EmbeddingLayers) else factorized_embedding(
                factors, client=client)
            if layers.kind != "messi":
                raise InputError("MessiEmbedding needs MESSI factors; use FactorizedEmbedding")
            counts = [t.shape[0] for t in layers.tables]
            dims = [t.shape[1] for t in layers.tables]
            tdt = dtype or torch.from_numpy(np.zeros(1, dtype=layers.shared.dtype)).dtype
            m = cls(counts, dims, layers.shared.shape[1], dtype=tdt)
            with torch.no_grad():
                for t, emb in zip(layers.tables, m.tables, strict=True):
                    if t.shape[0]:
                        emb.weight.copy_(torch.from_numpy(np.ascontiguousarray(t)))
                m.shared.weight.copy_(torch.from_numpy(np.ascontiguousarray(layers.shared.T)))
                m.row_cluster.copy_(torch.from_numpy(layers.row_cluster.astype(np.int64)))
                m.row_position.copy_(torch.from_numpy(layers.row_position.astype(np.int64)))
            return m

        def forward(self, index: Any) -> Any:
            flat = index.reshape(-1)
            cl = self.row_cluster[flat]
            pos = self.row_position[flat]
            h = flat.new_zeros((flat.shape[0], self.shared.in_features),
                               dtype=self.shared.weight.dtype)
            for c_, emb in enumerate(self.tables):
                m = cl == c_
                if bool(m.any()):
                    h[m, self.offsets[c_] : self.offsets[c_ + 1]] = emb(pos[m])
            return self.shared(h).reshape(*index.shape, self.shared.out_features)

    for c in (FactorizedEmbedding, MessiEmbedding):
        c.__module__ = __name__
        c.__qualname__ = c.__name__
        _TORCH_CLASSES[c.__name__] = c
    return _TORCH_CLASSES


def to_module(factors: Any, *, dtype: Any = None, client: Any = None) -> Any:
    """The PyTorch module for any factorization: ``FactorizedEmbedding`` or ``MessiEmbedding``."""
    classes = _torch_classes()
    layers = factors if isinstance(factors, EmbeddingLayers) else factorized_embedding(
        factors, client=client)
    cls = classes["FactorizedEmbedding" if layers.kind == "lowrank" else "MessiEmbedding"]
    return cls.from_factors(layers, dtype=dtype)


def __getattr__(name: str) -> Any:
    if name in ("FactorizedEmbedding", "MessiEmbedding"):
        return _torch_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
