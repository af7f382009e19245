"""The Factorize-Recover pipeline: its stages (sketch, factor, recover, reconstruct) with stage
records and resume, the job-file schema (:mod:`.job`), the factorization registry
(:data:`FACTORIZATIONS`) and the resource planner."""

from ._generic import run_method
from ._methods import FACTORIZATIONS, Factorization
from ._plan import Plan, plan
from ._run import RunResult, factorize_recover, run_job
from .job import load_job, validate_job

__all__ = ["FACTORIZATIONS", "Factorization", "Plan", "RunResult", "factorize_recover",
           "load_job", "plan", "run_job", "run_method", "validate_job"]
