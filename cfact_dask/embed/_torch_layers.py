"""The PyTorch modules of compressed embeddings, defined on first use (torch is optional).

:class:`FactorizedEmbedding` (an ``n × r`` table then a linear ``r → D``) and
:class:`MessiEmbedding` (k tables and one shared linear map) exist when torch is installed
(``pip install 'cfact_dask[nn]'``). Importing this module never imports torch: the classes are
created by :func:`to_module` or on first attribute access (module ``__getattr__``).

References
----------
.. [1] M. Tukan, A. Maalouf, M. Weksler, D. Feldman. "Compressed deep networks: goodbye SVD, hello
   robust low-rank approximation". arXiv:2009.05647, 2020.
.. [2] A. Maalouf, H. Lang, D. Rus, D. Feldman. "Deep learning meets projective clustering".
   ICLR 2021, arXiv:2010.04290.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from ._layers import EmbeddingLayers, factorized_embedding

__all__ = ["TORCH_NAMES", "to_module"]

#: the names this module resolves lazily (they need torch)
TORCH_NAMES = ("FactorizedEmbedding", "MessiEmbedding")
#: where users find the classes (their ``__module__``: pickles and reprs name it)
_HOME = "cfact_dask.embed.nn"

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
        c.__module__ = _HOME
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
    if name in TORCH_NAMES:
        return _torch_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
