"""One validation of the arguments every stage shares: ranks, counts, dtypes.

Every factorization checks its rank here, so the same mistake raises the same exception
(:class:`~cfact_dask.errors.RankError`) with the same kind of message (what, the bound, the fix),
whatever the method. Methods differ only in the bound they pass: a truncated factorization
needs ``rank < min(shape)`` (``inclusive=False``), a full-rank one allows ``rank <= min(shape)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError, RankError

__all__ = ["check_positive_int", "check_rank", "check_spec_match", "is_int",
           "resolve_float_dtype"]


def is_int(value: Any) -> bool:
    """An integer (Python or numpy), not a bool."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def check_rank(rank: Any, limit: int | None, *, source: str, what: str = "rank",
               inclusive: bool = False, need: str = "a truncated factorization") -> int:
    """Return ``rank`` as an int when ``1 <= rank < limit`` (``<= limit`` when ``inclusive``).

    Parameters
    ----------
    rank : int
        The value given.
    limit : int or None
        The bound (usually ``min(shape)`` of the matrix factorized, or its columns); None for
        no upper bound (``rank >= 1`` only, e.g. the rank of planted data).
    source : str
        What is factorized, for the message (``"the sketch of shape (40, 120)"``).
    what : str
        The argument's name (``"rank"``, ``"n_components"``, ``"j"``).
    inclusive : bool
        Allow ``rank == limit``.
    need : str
        What needs the bound, for the message.

    Raises
    ------
    RankError
        Not an int, or out of range; the message names the range and the fix.
    """
    if not is_int(rank):
        raise RankError(f"{what} must be an int, got {rank!r}")
    rank = int(rank)
    if limit is None:
        if rank < 1:
            raise RankError(f"{what}={rank} is impossible for {source}: {need} needs "
                            f"{what} >= 1; pass a positive int")
        return rank
    hi = int(limit) if inclusive else int(limit) - 1
    if not 1 <= rank <= hi:
        rel = "<=" if inclusive else "<"
        fix = (f"pass {what} between 1 and {hi}" if hi >= 1
               else f"no {what} fits; {source} is too small")
        raise RankError(
            f"{what}={rank} is impossible for {source}: {need} needs 1 <= {what} {rel} {limit}; "
            f"{fix}")
    return rank


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` as an int when it is an int ``>= minimum``; :class:`ConfigError` if not."""
    if not is_int(value) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def resolve_float_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as a numpy float dtype; :class:`ConfigError` for anything else."""
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise ConfigError(f"dtype must be a float dtype (float64 or float32), got {dt}")
    return dt


def check_spec_match(expected: Mapping[str, Any] | None, given: Mapping[str, Any] | None,
                     what: str, fix: str) -> None:
    """Refuse two recorded specs (operator, input) that disagree, naming the keys."""
    if not expected or not given:
        return
    import json

    expected = json.loads(json.dumps(dict(expected), default=str))
    given = json.loads(json.dumps(dict(given), default=str))
    keys = sorted(k for k in set(expected) | set(given) if expected.get(k) != given.get(k))
    if keys:
        detail = "; ".join(f"{k}: {expected.get(k)!r} vs {given.get(k)!r}" for k in keys[:6])
        raise InputError(f"{what} do not belong together ({detail}); {fix}")
