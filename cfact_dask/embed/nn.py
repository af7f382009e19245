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

This module is the public face (``cfact_dask.nn``): the parameter accounting lives in
:mod:`.budget`, the factor containers and layer arrays in :mod:`._layers`, the torch modules in
:mod:`._torch_layers`; compressing an embedding and the Zarr round trip of its factors live here.

References
----------
.. [1] M. Tukan, A. Maalouf, M. Weksler, D. Feldman. "Compressed deep networks: goodbye SVD, hello
   robust low-rank approximation". arXiv:2009.05647, 2020.
.. [2] A. Maalouf, H. Lang, D. Rus, D. Feldman. "Deep learning meets projective clustering".
   ICLR 2021, arXiv:2010.04290.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import dask.array as da
import numpy as np

from .._runtime.jsonattrs import to_json
from .._runtime.random import SeedLike
from .._runtime.resultstore import write_result
from ..errors import InputError, StoreNotFoundError
from ._layers import (
    EmbeddingLayers,
    LowRankFactors,
    MessiFactors,
    as_factors,
    factorized_embedding,
)
from ._torch_layers import TORCH_NAMES, to_module
from .budget import (
    METHODS,  # noqa: F401  (cfact_dask.nn offers it)
    EmbedMethod,
    ParamBudget,
    budget_choices,
    choose_budget,
    compression_rate,
    dense_params,
    lowrank_params,
    messi_index_bytes,
    messi_params,
)

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
    f = as_factors(res)
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
    f = as_factors(factors)
    # dimension names so that xarray.open_zarr reads the store: rows of the embedding (token),
    # its columns (embedding_dim), the rank / subspace dimension and the subspaces
    dims = {"coefficients": ("token", "component"), "basis": ("embedding_dim", "component"),
            "labels": ("token",), "bases": ("subspace", "component", "embedding_dim")}
    arrays: dict[str, Any]
    if isinstance(f, LowRankFactors):
        arrays = {"coefficients": f.coefficients, "basis": np.asarray(f.basis)}
        meta: dict[str, Any] = {"type": "factors", "kind": "lowrank", "method": f.method}
    else:
        arrays = {"labels": f.labels, "coefficients": f.coefficients,
                  "bases": np.asarray(f.bases)}
        meta = {"type": "factors", "kind": "messi", "method": "messi", "dims": list(f.dims)}
    meta["n_params"] = int(f.n_params)
    meta["rate"] = float(f.rate)
    meta["info"] = _jsonable(f.info)
    return write_result(store, None, arrays, meta, overwrite=overwrite,
                        dims={k: dims[k] for k in arrays}, inputs=inputs,
                        what="factor store", client=client)


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


def __getattr__(name: str) -> Any:
    # the PyTorch names resolve on first use, so importing cfact_dask.nn never imports torch
    if name in TORCH_NAMES:
        from . import _torch_layers

        return getattr(_torch_layers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
