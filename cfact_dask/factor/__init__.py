"""Factorizations of a matrix, a sketch or an N-way tensor: NMF / semi-NMF (ALS), one-pass SVD,
sparse PCA, CP, and the decentralised DGD+LOCAL consensus method (:mod:`.consensus`)."""

from ._cp import CPResult, cp, refit_mode
from ._nmf import NMFResult, nmf
from ._sparse_pca import SparsePCAResult, refit_components, sparse_pca, sparse_pca_transform
from ._svd import SVDResult, svd
from .consensus import DGDResult, DGDState, Topology, centralized, dgd, dgd_local, make_topology

__all__ = [
    "CPResult", "DGDResult", "DGDState", "NMFResult", "SVDResult", "SparsePCAResult", "Topology",
    "centralized", "cp", "dgd", "dgd_local", "make_topology", "nmf", "refit_components",
    "refit_mode", "sparse_pca", "sparse_pca_transform", "svd",
]
