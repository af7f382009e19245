"""Recovery: the high-dimensional factor ``W`` from its sketch ``P W`` by sparse recovery
(lasso / nonnegative lasso, OMP, basis pursuit, exact least squares), with the hold-out
certificate of the result's error.

``_recover`` holds the entry point :func:`recover`, the result :class:`Recovery` and the method
registry :data:`RECOVERY_METHODS`; each method lives in its own module (:mod:`.lasso`,
:mod:`.omp`, :mod:`.bp`, :mod:`.exact`), on the shared row blocks of ``_blocks`` and the least
squares of ``_lsq``; :mod:`.certificate` says how far the result can be trusted.
"""

from ._recover import (
    METHODS,
    RECOVERY_METHODS,
    Recovery,
    RecoveryMethod,
    RecoveryProblem,
    RecoverySolution,
    load_recovery,
    recover,
    save_recovery,
)
from .certificate import Certificate, holdout_error, holdout_limit

__all__ = [
    "METHODS", "RECOVERY_METHODS", "Certificate", "Recovery", "RecoveryMethod",
    "RecoveryProblem", "RecoverySolution", "holdout_error", "holdout_limit", "load_recovery",
    "recover", "save_recovery",
]
