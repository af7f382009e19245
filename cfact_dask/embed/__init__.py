"""Embedding-layer compression: robust ℓp low-rank approximation (:mod:`.lp`), projective
clustering (MESSI, :mod:`.clustering`), parameter budgets (:mod:`.budget`), the factor export and
the factored layers (:mod:`.nn`, torch loaded on first use), and the word-similarity data they
are judged on (:mod:`.datasets`)."""

from . import budget, datasets, nn
from .budget import budget_choices, choose_budget
from .clustering import ProjectiveClusteringResult, projective_clustering
from .lp import LpLowRankResult, lp_lowrank, lp_objective
from .nn import factorized_embedding, load_factors, save_factors

__all__ = [
    "LpLowRankResult", "ProjectiveClusteringResult", "budget", "budget_choices", "choose_budget",
    "datasets", "factorized_embedding", "load_factors", "lp_lowrank", "lp_objective", "nn",
    "projective_clustering", "save_factors",
]
