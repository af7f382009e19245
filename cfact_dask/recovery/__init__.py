"""Recovery: the high-dimensional factor ``W`` from its sketch ``P W`` by sparse recovery
(lasso / nonnegative lasso, OMP, basis pursuit, exact least squares), with the hold-out
certificate of the result's error."""

from ._recover import Certificate, Recovery, holdout_error, recover

__all__ = ["Certificate", "Recovery", "holdout_error", "recover"]
