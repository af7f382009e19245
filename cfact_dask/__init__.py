"""cfact_dask: compressed low-rank factorization of chunked out-of-core data with Dask.

Data flow: :func:`open_array` → :func:`sketch` (one pass, chunking-invariant) → factorize
(:func:`nmf`, :func:`svd`, :func:`sparse_pca`, :func:`cp`, :func:`dgd_local`, :func:`lp_lowrank`,
:func:`projective_clustering`) → :func:`recover` → :func:`reconstruct` into chunked Zarr, or all
of it with :func:`factorize_recover`. See the README and ``DESIGN.md``.

The scikit-learn style estimators (``CompressedNMF`` ...) need scikit-learn and are imported on
first use.
"""

from __future__ import annotations

import importlib
import sys as _sys
from typing import Any

from . import config as _config  # noqa: F401  (registers the cfact.* dask.config defaults)
from . import datasets, metrics, plots
from . import reconstruction as _reconstruction
from ._runtime import aliases as _aliases
from ._runtime.checkpoint import Checkpoint
from ._runtime.cluster import client_context, connect
from ._version import __version__
from .embed import (
    LpLowRankResult,
    ProjectiveClusteringResult,
    budget_choices,
    choose_budget,
    factorized_embedding,
    load_factors,
    lp_lowrank,
    lp_objective,
    nn,
    projective_clustering,
    save_factors,
)
from .errors import (
    CfactError,
    ConfigError,
    ConvergenceWarning,
    DivergenceError,
    InputError,
    NegativeDataError,
    NonFiniteError,
    OutputError,
    RankError,
    RecoveryWarning,
    ResumeError,
    StoreAccessError,
    StoreExistsError,
    StoreNotFoundError,
    StoreUnavailableError,
)
from .factor import (
    CPResult,
    DGDResult,
    DGDState,
    NMFResult,
    SparsePCAResult,
    SVDResult,
    Topology,
    centralized,
    cp,
    dgd,
    dgd_local,
    make_topology,
    nmf,
    refit_components,
    refit_mode,
    sparse_pca,
    svd,
)
from .io import InputArray, open_array
from .metrics import match_factors, relative_error, support_recovery
from .pipeline import Plan, RunResult, factorize_recover, plan, run_job, run_method
from .reconstruction import ReconstructionStats, open_reconstruction, reconstruct
from .recovery import Certificate, Recovery, holdout_error, recover
from .sketching import KINDS, Sketch, SketchOperator, make_operator, sketch, sketch_with

_aliases.install()
# the module was cfact_dask/reconstruct.py: `from cfact_dask.reconstruct import ...` keeps
# working without rebinding the function cfact_dask.reconstruct over the module
_sys.modules.setdefault(f"{__name__}.reconstruct", _reconstruction)

_LAZY = {
    "CompressedNMF": "estimators",
    "CompressedSVD": "estimators",
    "CompressedSparsePCA": "estimators",
    "CompressedCP": "estimators",
}

__all__ = [
    "save_factors",
    "projective_clustering",
    "nn",
    "lp_objective",
    "lp_lowrank",
    "load_factors",
    "factorized_embedding",
    "choose_budget",
    "budget_choices",
    "ProjectiveClusteringResult",
    "LpLowRankResult",
    "svd",
    "sparse_pca",
    "refit_mode",
    "refit_components",
    "cp",
    "SparsePCAResult",
    "SVDResult",
    "CompressedSparsePCA",
    "CompressedSVD",
    "CompressedCP",
    "CPResult",
    "KINDS",
    "Certificate",
    "CfactError",
    "Checkpoint",
    "CompressedNMF",
    "ConfigError",
    "ConvergenceWarning",
    "DGDResult",
    "DGDState",
    "DivergenceError",
    "InputArray",
    "InputError",
    "NMFResult",
    "NegativeDataError",
    "NonFiniteError",
    "OutputError",
    "Plan",
    "RankError",
    "ReconstructionStats",
    "Recovery",
    "RecoveryWarning",
    "ResumeError",
    "RunResult",
    "Sketch",
    "SketchOperator",
    "StoreAccessError",
    "StoreExistsError",
    "StoreNotFoundError",
    "StoreUnavailableError",
    "Topology",
    "__version__",
    "centralized",
    "client_context",
    "connect",
    "datasets",
    "dgd",
    "dgd_local",
    "factorize_recover",
    "holdout_error",
    "make_operator",
    "make_topology",
    "match_factors",
    "metrics",
    "plots",
    "nmf",
    "open_array",
    "open_reconstruction",
    "plan",
    "reconstruct",
    "recover",
    "relative_error",
    "run_job",
    "run_method",
    "sketch",
    "sketch_with",
    "support_recovery",
]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'cfact_dask' has no attribute {name!r}")
    try:
        module = importlib.import_module(f".{mod}", __name__)
    except ImportError as e:
        raise ImportError(
            f"cfact_dask.{name} needs scikit-learn: pip install 'cfact_dask[test]' or scikit-learn"
        ) from e
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
