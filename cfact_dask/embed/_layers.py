"""The factors of a compressed embedding and the arrays of its two-layer replacement.

:class:`LowRankFactors` (SVD / ℓp: ``A ≈ U Vᵀ``) and :class:`MessiFactors` (projective
clustering) hold a factorization, lazily; :func:`factorized_embedding` turns either into the
in-memory arrays of the replacement layer (:class:`EmbeddingLayers`), which the PyTorch modules
(:mod:`cfact_dask.embed._torch_layers`) are built from.

References
----------
.. [1] M. Tukan, A. Maalouf, M. Weksler, D. Feldman. "Compressed deep networks: goodbye SVD, hello
   robust low-rank approximation". arXiv:2009.05647, 2020.
.. [2] A. Maalouf, H. Lang, D. Rus, D. Feldman. "Deep learning meets projective clustering".
   ICLR 2021, arXiv:2010.04290.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np

from .._runtime.cluster import client_context, compute
from ..errors import InputError
from .budget import compression_rate, lowrank_params, messi_params

__all__ = ["EmbeddingLayers", "LowRankFactors", "MessiFactors", "as_factors",
           "factorized_embedding"]

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


def as_factors(obj: Any) -> LowRankFactors | MessiFactors:
    """Any factorization result as :class:`LowRankFactors` / :class:`MessiFactors`."""
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
    f = as_factors(factors)
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

