"""Exceptions and warnings raised by cfact_dask.

Every exception derives from :class:`CfactError` *and* from the builtin that matches it
(``ValueError``, ``FileNotFoundError``, ...), so code that already catches the builtin keeps
working.  Messages say what failed, the value, why, and the fix.

Exceptions raised inside dask tasks travel back to the client by pickling, so every class here
keeps the plain ``Exception(message)`` constructor signature.
"""

from __future__ import annotations

__all__ = [
    "CfactError",
    "CfactWarning",
    "ChunkError",
    "ConfigError",
    "ConvergenceWarning",
    "DivergenceError",
    "InputError",
    "MissingChunksWarning",
    "NegativeDataError",
    "NoWorkersError",
    "NonFiniteError",
    "OutputError",
    "RankError",
    "RecoveryWarning",
    "ResumeError",
    "SchedulerConnectionError",
    "StoreAccessError",
    "StoreExistsError",
    "StoreNotFoundError",
    "StoreUnavailableError",
    "WorkerLostError",
]


class CfactError(Exception):
    """Base class of every error raised by cfact_dask."""


class InputError(CfactError, ValueError):
    """The input has the wrong type, shape, dtype, axis or chunking."""


class RankError(InputError):
    """A rank / ``n_components`` is impossible for the data's shape."""


class ChunkError(CfactError, ValueError):
    """Something is wrong inside one chunk of the data (the message names the chunk)."""


class NonFiniteError(ChunkError):
    """A chunk holds NaN or Inf."""


class NegativeDataError(ChunkError):
    """Genuinely signed data was given to a nonnegative method."""


class StoreNotFoundError(CfactError, FileNotFoundError):
    """A Zarr store, group or array does not exist."""


class StoreExistsError(CfactError, FileExistsError):
    """An output store exists and ``overwrite`` was not given."""


class StoreAccessError(CfactError, PermissionError):
    """A store exists but the credentials in use may not read or write it (access denied)."""


class StoreUnavailableError(CfactError, ConnectionError):
    """A remote store could not be reached, even after retrying with backoff."""


class OutputError(CfactError, ValueError):
    """An output location is unsafe: it overlaps an input, holds data cfact did not write, or a
    piece read back does not belong with the others. Nothing was changed."""


class ConfigError(CfactError, ValueError):
    """A configuration (YAML job file, ``dask.config`` key, keyword) is invalid."""


class ResumeError(CfactError, ValueError):
    """A run cannot resume from a checkpoint (different parameters, incomplete stage)."""


class SchedulerConnectionError(CfactError, ConnectionError):
    """A Dask scheduler given by address or scheduler file cannot be reached."""


class DivergenceError(CfactError, FloatingPointError):
    """An iterative solver diverged (non-finite or exploding cost)."""


class CfactWarning(UserWarning):
    """Base class of every warning emitted by cfact_dask."""


class ConvergenceWarning(CfactWarning):
    """An iterative solver stopped at ``max_iter`` before reaching ``tol``."""


class RecoveryWarning(CfactWarning):
    """A sparse recovery's certificate says the recovered factors are unreliable."""


class NoWorkersError(CfactError, RuntimeError):
    """The cluster lost every worker for longer than ``cfact.cluster.no-workers-timeout``."""


class InsufficientMemoryError(ConfigError):
    """The cluster's workers are smaller than the job's planned memory need
    (``cfact.run.memory-check: refuse``, or ``adapt`` when no block size fits); raised before
    anything is computed."""


class WorkerLostError(CfactError, RuntimeError):
    """Workers holding a distributed solver's state were lost and the run could not replay."""


class MissingChunksWarning(CfactWarning):
    """Chunks of an input store are missing and read as the fill value
    (``cfact.io.missing-chunks: warn``)."""
