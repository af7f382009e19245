"""scikit-learn style estimators (need scikit-learn): :class:`CompressedNMF` over the
Factorize-Recover pipeline, and :class:`CompressedSVD` / :class:`CompressedSparsePCA` /
:class:`CompressedCP` over the other factorizations."""

from ._decomposition import CompressedCP, CompressedSparsePCA, CompressedSVD
from ._nmf import CompressedNMF

__all__ = ["CompressedCP", "CompressedNMF", "CompressedSVD", "CompressedSparsePCA"]
