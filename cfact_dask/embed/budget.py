"""Parameter budgets of compressed embedding layers: counts, reduction rates, feasible shapes.

An n × D embedding has ``n D`` parameters; a factored layer (SVD or robust ℓp) of rank ``r``
has ``r (n + D)``; a MESSI layer (projective clustering) with k subspaces of dimension j has
``n j + k j D`` (plus a per-row cluster id, an index, counted separately). The functions here
count them and pick the largest shape that meets a parameter-reduction target.

References
----------
.. [1] M. Tukan, A. Maalouf, M. Weksler, D. Feldman. "Compressed deep networks: goodbye SVD, hello
   robust low-rank approximation". arXiv:2009.05647, 2020.
.. [2] A. Maalouf, H. Lang, D. Rus, D. Feldman. "Deep learning meets projective clustering".
   ICLR 2021, arXiv:2010.04290.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import ConfigError

__all__ = [
    "METHODS",
    "EmbedMethod",
    "ParamBudget",
    "budget_choices",
    "check_rate",
    "choose_budget",
    "compression_rate",
    "dense_params",
    "lowrank_params",
    "messi_index_bytes",
    "messi_params",
]

EmbedMethod = Literal["svd", "lp", "messi"]
METHODS: tuple[str, ...] = ("svd", "lp", "messi")


# ====================================================================== parameter accounting
def dense_params(n: int, D: int) -> int:
    """Parameters of the dense n × D embedding."""
    return int(n) * int(D)


def lowrank_params(n: int, D: int, rank: int) -> int:
    """Parameters of the factored layer ``(n × r)(r × D)``: ``r (n + D)`` (SVD and ℓp alike)."""
    return int(rank) * (int(n) + int(D))


def messi_params(n: int, D: int, dims: int | Sequence[int], *, n_subspaces: int | None = None,
                 counts: Sequence[int] | np.ndarray | None = None) -> int:
    """Parameters of a MESSI layer.

    ``n j + k j D`` for k subspaces of equal dimension j; with per-cluster dimensions the tables
    hold ``Σ_l n_l j_l`` (pass ``counts``) and the shared layer ``D Σ_l j_l``. The per-row cluster
    id is an index and is not counted (see :func:`messi_index_bytes`).
    """
    if isinstance(dims, (int, np.integer)):
        if n_subspaces is None:
            raise ConfigError("messi_params needs n_subspaces when dims is a single int")
        return int(n) * int(dims) + int(n_subspaces) * int(dims) * int(D)
    dims = [int(d) for d in dims]
    if counts is None:
        if len(set(dims)) > 1:
            raise ConfigError("per-cluster dims need counts= (rows per cluster) to be counted")
        return int(n) * dims[0] + len(dims) * dims[0] * int(D)
    if len(counts) != len(dims):
        raise ConfigError(
            f"counts has {len(counts)} entries, dims {len(dims)}; give one per cluster"
        )
    return int(sum(int(c) * d for c, d in zip(counts, dims, strict=True)) + sum(dims) * int(D))


def messi_index_bytes(n: int, n_subspaces: int) -> int:
    """Bytes of the per-row cluster ids (uint8 up to 256 clusters, then uint16 / uint32)."""
    width = 1 if n_subspaces <= 256 else 2 if n_subspaces <= 65536 else 4
    return int(n) * width


def compression_rate(n_params: int, n: int, D: int) -> float:
    """Parameter reduction ``1 − n_params / (n D)`` (0.4 = 40 % fewer parameters)."""
    return 1.0 - float(n_params) / float(dense_params(n, D))


@dataclass(frozen=True)
class ParamBudget:
    """One factorization shape and its parameter count.

    Attributes
    ----------
    method : {"svd", "lp", "messi"}
    rank : int or None
        For svd / lp.
    n_subspaces, dim : int or None
        For messi (k, j).
    n_params : int
    rate : float
        Achieved parameter reduction.
    """

    method: str
    n: int
    D: int
    n_params: int
    rate: float
    rank: int | None = None
    n_subspaces: int | None = None
    dim: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("method", "n", "D", "n_params", "rate", "rank",
                                              "n_subspaces", "dim")}


def check_rate(rate: Any) -> float:
    """``rate`` as a float in (0, 1), or a :class:`~cfact_dask.errors.ConfigError`."""
    try:
        r = float(rate)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"rate must be a number in (0, 1), got {rate!r}") from e
    if not 0.0 < r < 1.0:
        raise ConfigError(
            f"rate={rate!r} is not a parameter reduction in (0, 1); e.g. rate=0.4 keeps 60 % of "
            f"the dense layer's parameters"
        )
    return r


def budget_choices(
    n: int, D: int, rate: float, method: EmbedMethod = "svd",
    n_subspaces: int | Sequence[int] = (2, 3, 5, 8, 10, 16),
) -> list[ParamBudget]:
    """The largest rank (svd / lp) or, for each k, the largest j (messi) meeting ``rate``.

    A choice meets the target when its parameter count is at most ``(1 − rate) n D``. Choices
    that would need rank / j < 1 or >= D are left out.

    Raises
    ------
    ConfigError
        ``rate`` outside (0, 1), unknown ``method``, or no shape meets the target.
    """
    r = check_rate(rate)
    if method not in METHODS:
        raise ConfigError(f"method={method!r} is unknown; use one of {METHODS}")
    n, D = int(n), int(D)
    cap = (1.0 - r) * n * D
    out: list[ParamBudget] = []
    if method in ("svd", "lp"):
        rank = min(int(math.floor(cap / (n + D))), D - 1)
        if rank >= 1:
            p = lowrank_params(n, D, rank)
            out.append(ParamBudget(method, n, D, p, compression_rate(p, n, D), rank=rank))
    else:
        ks = [n_subspaces] if isinstance(n_subspaces, (int, np.integer)) else list(n_subspaces)
        for k in ks:
            k = int(k)
            j = min(int(math.floor(cap / (n + k * D))), D - 1)
            if j >= 1 and k <= n:
                p = messi_params(n, D, j, n_subspaces=k)
                out.append(ParamBudget(method, n, D, p, compression_rate(p, n, D),
                                       n_subspaces=k, dim=j))
    if not out:
        raise ConfigError(
            f"no {method} shape reaches a {r:.0%} parameter reduction of a {n} × {D} matrix "
            f"(even rank / dim 1 is too large); lower the rate"
            + (" or n_subspaces" if method == "messi" else "")
        )
    return out


def choose_budget(n: int, D: int, rate: float, method: EmbedMethod = "svd",
                  n_subspaces: int = 5) -> ParamBudget:
    """The single shape :func:`compress_embedding` uses: the largest rank, or for messi the
    largest j with the given k."""
    return budget_choices(n, D, rate, method, n_subspaces=int(n_subspaces))[0]

