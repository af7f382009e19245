"""Communication graphs and mixing matrices for decentralised (consensus) solvers.

A :class:`Topology` is an undirected graph on ``J`` nodes plus a symmetric, doubly stochastic
mixing matrix ``W`` supported on it (``w_ij > 0`` only for ``i == j`` or an edge ``i — j``). Node
``j`` of a decentralised solver talks only to the nodes ``i`` with ``w_ij != 0``.

Graphs: :func:`ring`, :func:`torus2d`, :func:`star`, :func:`complete`, :func:`erdos_renyi`, or a
user adjacency / weight matrix (:func:`make_topology`). Weights: ``"max-degree"`` (the choice of
Zhu et al. [1]_: ``w_kj = 1/max(deg_k, deg_j)``), ``"metropolis"``
(``w_kj = 1/(1 + max(deg_k, deg_j))``), optionally lazy ``(I + W)/2``.

Validation (:func:`validate_weights`) checks the shape, symmetry, nonnegativity, that rows sum to
one (doubly stochastic), the support, and connectivity through the second-smallest eigenvalue
``λ₂`` of the graph Laplacian; every failure raises :class:`~cfact_dask.errors.ConfigError` naming
the value and the fix.

References
----------
.. [1] Z. Zhu, Q. Li, X. Yang, G. Tang, M. B. Wakin. "Distributed low-rank matrix factorization
   with exact consensus". NeurIPS 2019, arXiv:1811.03129.
.. [2] L. Xiao, S. Boyd, S. Lall. "A scheme for robust distributed sensor fusion based on average
   consensus". IPSN 2005 (Metropolis weights).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..._runtime.random import SeedLike, generator, normalize_seed
from ...errors import ConfigError

__all__ = [
    "GRAPHS",
    "Topology",
    "WeightRule",
    "complete",
    "erdos_renyi",
    "lazy_weights",
    "laplacian_lambda2",
    "make_topology",
    "max_degree_weights",
    "metropolis_weights",
    "ring",
    "star",
    "torus2d",
    "validate_weights",
]

WeightRule = Literal["max-degree", "metropolis"]
GRAPHS: tuple[str, ...] = ("ring", "torus2d", "star", "complete", "erdos-renyi")

_TOL = 1e-10
#: purpose key of the Erdős–Rényi random stream (see ``_random.generator``)
_ER_STREAM = 0x7E5


# ---------------------------------------------------------------------------------------- graphs
def _check_n(n_nodes: Any, what: str, minimum: int = 1) -> int:
    if isinstance(n_nodes, bool) or not isinstance(n_nodes, (int, np.integer)):
        raise ConfigError(f"n_nodes for a {what} graph must be an int, got {n_nodes!r}")
    if n_nodes < minimum:
        raise ConfigError(
            f"a {what} graph needs n_nodes >= {minimum}, got {n_nodes}; use more nodes"
        )
    return int(n_nodes)


def ring(n_nodes: int) -> np.ndarray:
    """Adjacency (bool, no self loops) of the cycle ``0 — 1 — … — (J-1) — 0``."""
    n = _check_n(n_nodes, "ring")
    a = np.zeros((n, n), dtype=bool)
    for j in range(n):
        if n > 1:
            a[j, (j + 1) % n] = a[(j + 1) % n, j] = True
    np.fill_diagonal(a, False)
    return a


def _grid_shape(n: int) -> tuple[int, int]:
    r = int(math.isqrt(n))
    while n % r:
        r -= 1
    return r, n // r


def torus2d(n_nodes: int, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Adjacency of a 2-D torus (grid with wrap-around), ``rows × cols = n_nodes``.

    ``shape`` defaults to the most square factorisation of ``n_nodes`` (a prime ``n_nodes``
    gives a ``1 × J`` torus, i.e. a ring).
    """
    n = _check_n(n_nodes, "torus2d")
    rows, cols = shape if shape is not None else _grid_shape(n)
    if rows * cols != n or rows < 1 or cols < 1:
        raise ConfigError(
            f"torus2d shape {shape!r} does not multiply to n_nodes={n}; pass shape=(rows, cols) "
            f"with rows * cols == {n}"
        )
    a = np.zeros((n, n), dtype=bool)
    for r in range(rows):
        for c in range(cols):
            k = r * cols + c
            for dr, dc in ((0, 1), (1, 0)):
                i = ((r + dr) % rows) * cols + (c + dc) % cols
                a[k, i] = a[i, k] = True
    np.fill_diagonal(a, False)
    return a


def star(n_nodes: int) -> np.ndarray:
    """Adjacency of a star: node 0 is the hub, every other node talks only to it."""
    n = _check_n(n_nodes, "star")
    a = np.zeros((n, n), dtype=bool)
    a[0, 1:] = a[1:, 0] = True
    return a


def complete(n_nodes: int) -> np.ndarray:
    """Adjacency of the complete graph (every pair of nodes connected)."""
    n = _check_n(n_nodes, "complete")
    a = np.ones((n, n), dtype=bool)
    np.fill_diagonal(a, False)
    return a


def erdos_renyi(n_nodes: int, p: float = 0.3, seed: SeedLike = 0, *, max_tries: int = 1000
                ) -> np.ndarray:
    """Adjacency of a *connected* Erdős–Rényi graph G(J, p).

    Each pair is an edge with probability ``p``; a disconnected draw is rejected and the next
    stream of the seed tried (so the result is a deterministic function of ``(n_nodes, p, seed)``),
    up to ``max_tries`` draws.
    """
    n = _check_n(n_nodes, "erdos-renyi")
    if not isinstance(p, (int, float, np.floating)) or not 0.0 < float(p) <= 1.0:
        raise ConfigError(f"Erdős–Rényi edge probability p must be in (0, 1], got {p!r}")
    s = normalize_seed(seed)
    iu = np.triu_indices(n, 1)
    for attempt in range(max_tries):
        rng = generator(s, _ER_STREAM, attempt)
        upper = rng.random(len(iu[0])) < float(p)
        a = np.zeros((n, n), dtype=bool)
        a[iu] = upper
        a = a | a.T
        if n == 1 or laplacian_lambda2(a) > _TOL:
            return a
    raise ConfigError(
        f"no connected Erdős–Rényi graph with n_nodes={n}, p={p} in {max_tries} draws; raise p "
        f"(connectivity needs p well above log(J)/J = {math.log(max(n, 2)) / n:.3f})"
    )


# --------------------------------------------------------------------------------------- weights
def _degrees(adjacency: np.ndarray) -> np.ndarray:
    return adjacency.sum(axis=1).astype(np.int64)


def max_degree_weights(adjacency: np.ndarray) -> np.ndarray:
    """``w_kj = 1/max(deg_k, deg_j)`` on edges, ``w_kk = 1 − Σ_{j≠k} w_kj`` (Zhu et al. 2019)."""
    a = _as_adjacency(adjacency)
    deg = _degrees(a)
    w = np.zeros(a.shape, dtype=np.float64)
    i, j = np.nonzero(a)
    w[i, j] = 1.0 / np.maximum(deg[i], deg[j])
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


def metropolis_weights(adjacency: np.ndarray) -> np.ndarray:
    """Metropolis–Hastings weights ``w_kj = 1/(1 + max(deg_k, deg_j))``, ``w_kk = 1 − Σ w_kj``."""
    a = _as_adjacency(adjacency)
    deg = _degrees(a)
    w = np.zeros(a.shape, dtype=np.float64)
    i, j = np.nonzero(a)
    w[i, j] = 1.0 / (1.0 + np.maximum(deg[i], deg[j]))
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


def lazy_weights(weights: np.ndarray) -> np.ndarray:
    """``(I + W)/2``: same support, eigenvalues moved into ``[0, 1]`` (W ⪰ 0)."""
    w = np.asarray(weights, dtype=np.float64)
    return 0.5 * (np.eye(w.shape[0]) + w)


_RULES = {"max-degree": max_degree_weights, "metropolis": metropolis_weights}


# ------------------------------------------------------------------------------------ validation
def _as_adjacency(adjacency: Any) -> np.ndarray:
    a = np.asarray(adjacency)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ConfigError(
            f"an adjacency matrix must be square (J × J), got shape {a.shape}"
        )
    if a.dtype.kind not in "biuf":
        raise ConfigError(f"an adjacency matrix must be boolean or numeric, got dtype {a.dtype}")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise ConfigError("the adjacency matrix holds NaN or Inf")
    b = a != 0
    np.fill_diagonal(b, False)
    if not np.array_equal(b, b.T):
        i, j = np.argwhere(b != b.T)[0]
        raise ConfigError(
            f"the adjacency matrix is not symmetric: entry ({i}, {j}) is {a[i, j]!r} but "
            f"({j}, {i}) is {a[j, i]!r}; communication links must go both ways (use A | A.T)"
        )
    return b


def laplacian_lambda2(adjacency: np.ndarray) -> float:
    """Second-smallest eigenvalue of the graph Laplacian (> 0 iff the graph is connected)."""
    a = np.asarray(adjacency, dtype=np.float64)
    a = a.copy()
    np.fill_diagonal(a, 0.0)
    if a.shape[0] < 2:
        return math.inf
    lap = np.diag(a.sum(axis=1)) - a
    ev = np.linalg.eigvalsh(lap)
    return float(ev[1])


def validate_weights(weights: Any, adjacency: Any | None = None, *, tol: float = _TOL
                     ) -> np.ndarray:
    """Check that ``weights`` is a valid mixing matrix and return it as float64.

    Checks, in order: square, finite, symmetric, nonnegative, rows (hence columns) sum to 1
    (doubly stochastic), off-diagonal support inside ``adjacency`` when given, and the support
    graph connected (Laplacian λ₂ > ``tol``). Each failure raises
    :class:`~cfact_dask.errors.ConfigError` naming the offending entry and the fix.
    """
    w = np.asarray(weights)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ConfigError(f"a mixing matrix must be square (J × J), got shape {w.shape}")
    if w.dtype.kind not in "biuf":
        raise ConfigError(f"a mixing matrix must be numeric, got dtype {w.dtype}")
    w = w.astype(np.float64)
    if not np.all(np.isfinite(w)):
        raise ConfigError("the mixing matrix holds NaN or Inf")
    n = w.shape[0]
    asym = np.abs(w - w.T)
    if asym.max(initial=0.0) > tol:
        i, j = np.unravel_index(int(np.argmax(asym)), asym.shape)
        raise ConfigError(
            f"the mixing matrix is not symmetric: w[{i},{j}] = {w[i, j]:.6g} but "
            f"w[{j},{i}] = {w[j, i]:.6g}; use (W + W.T)/2 or build it with "
            f"weights='metropolis' / 'max-degree'"
        )
    if w.min(initial=0.0) < -tol:
        i, j = np.unravel_index(int(np.argmin(w)), w.shape)
        raise ConfigError(
            f"the mixing matrix has a negative entry w[{i},{j}] = {w[i, j]:.6g}; mixing weights "
            f"must be >= 0 (use weights='metropolis' or 'max-degree')"
        )
    rows = w.sum(axis=1)
    bad = np.abs(rows - 1.0)
    if bad.max(initial=0.0) > 1e3 * tol:
        i = int(np.argmax(bad))
        raise ConfigError(
            f"the mixing matrix is not doubly stochastic: row {i} sums to {rows[i]:.12g}, not 1; "
            f"set the diagonal to w_ii = 1 - sum_(j != i) w_ij"
        )
    support = w > tol
    np.fill_diagonal(support, False)
    if adjacency is not None:
        a = _as_adjacency(adjacency)
        if a.shape != w.shape:
            raise ConfigError(
                f"the adjacency matrix has shape {a.shape} but the mixing matrix {w.shape}"
            )
        outside = support & ~a
        if outside.any():
            i, j = np.argwhere(outside)[0]
            raise ConfigError(
                f"w[{i},{j}] = {w[i, j]:.6g} but nodes {i} and {j} are not neighbours in the "
                f"graph; weights must be zero off the graph's edges"
            )
    if n > 1:
        lam2 = laplacian_lambda2(support)
        if lam2 <= tol:
            comp = _components(support)
            raise ConfigError(
                f"the communication graph is not connected (Laplacian lambda_2 = {lam2:.3g}); it "
                f"splits into {len(comp)} components, e.g. nodes {comp[0][:10]} and "
                f"{comp[1][:10]}; add edges (raise p for erdos-renyi) so every node can reach "
                f"every other"
            )
    return w


def _components(a: np.ndarray) -> list[list[int]]:
    n = a.shape[0]
    seen = np.zeros(n, dtype=bool)
    out: list[list[int]] = []
    for s in range(n):
        if seen[s]:
            continue
        stack, comp = [s], []
        seen[s] = True
        while stack:
            k = stack.pop()
            comp.append(k)
            for i in np.nonzero(a[k])[0]:
                if not seen[i]:
                    seen[i] = True
                    stack.append(int(i))
        out.append(sorted(comp))
    return out


# ---------------------------------------------------------------------------------------- object
@dataclass(frozen=True)
class Topology:
    """A validated communication graph with its mixing matrix.

    Attributes
    ----------
    weights : numpy.ndarray
        The J × J symmetric doubly stochastic mixing matrix ``W``.
    name : str
        How it was made (``"ring"``, ``"erdos-renyi(p=0.3, seed=0)"``, ``"user"``...).
    spec : dict
        Parameters that rebuild it (JSON-able; stored with checkpoints and results).

    References
    ----------
    .. [1] Z. Zhu, Q. Li, X. Yang, G. Tang, M. B. Wakin. "Distributed low-rank matrix
       factorization with exact consensus". NeurIPS 2019, arXiv:1811.03129.
    """

    weights: np.ndarray
    name: str = "user"
    spec: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        w = validate_weights(self.weights)
        w.setflags(write=False)
        object.__setattr__(self, "weights", w)

    @property
    def n_nodes(self) -> int:
        return int(self.weights.shape[0])

    @property
    def adjacency(self) -> np.ndarray:
        a = self.weights > _TOL
        np.fill_diagonal(a, False)
        return a

    @property
    def degrees(self) -> np.ndarray:
        return _degrees(self.adjacency)

    @property
    def n_edges(self) -> int:
        return int(self.adjacency.sum() // 2)

    def neighbors(self, j: int) -> tuple[int, ...]:
        """Nodes ``i != j`` with ``w_ji != 0``, in increasing order."""
        return tuple(int(i) for i in np.nonzero(self.adjacency[j])[0])

    @property
    def lambda2(self) -> float:
        """Algebraic connectivity (Laplacian λ₂ of the support graph)."""
        return laplacian_lambda2(self.adjacency)

    @property
    def eigenvalues(self) -> np.ndarray:
        """Eigenvalues of ``W`` in increasing order (the largest is 1)."""
        return np.linalg.eigvalsh(self.weights)

    @property
    def spectral_gap(self) -> float:
        """``1 − max(|λ₂(W)|, |λ_min(W)|)``: how fast plain averaging mixes."""
        ev = self.eigenvalues
        if len(ev) < 2:
            return 1.0
        return float(1.0 - max(abs(ev[-2]), abs(ev[0])))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "spec": dict(self.spec),
                "weights": [[float(x) for x in row] for row in self.weights]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Topology:
        return cls(np.asarray(d["weights"], dtype=np.float64), d.get("name", "user"),
                   dict(d.get("spec", {})))

    def __dask_tokenize__(self) -> Any:
        return ("cfact.Topology", self.name, self.weights.tobytes())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Topology) and np.array_equal(self.weights, other.weights)

    def __hash__(self) -> int:
        return hash(self.weights.tobytes())

    def __repr__(self) -> str:
        return (f"Topology({self.name!r}, n_nodes={self.n_nodes}, n_edges={self.n_edges}, "
                f"lambda2={self.lambda2:.3g})")


def make_topology(
    topology: str | np.ndarray | Topology = "ring",
    n_nodes: int | None = None,
    *,
    weights: WeightRule | np.ndarray = "max-degree",
    lazy: bool = False,
    p: float = 0.3,
    seed: SeedLike = 0,
    shape: tuple[int, int] | None = None,
) -> Topology:
    """Build and validate a communication graph with its mixing matrix.

    Parameters
    ----------
    topology : {"ring", "torus2d", "star", "complete", "erdos-renyi"}, array or Topology
        A named graph, a J × J boolean/0-1 adjacency matrix, or an existing :class:`Topology`
        (returned as is, after checking ``n_nodes``). A float J × J matrix with a unit
        diagonal-inclusive row sum is taken as a mixing matrix.
    n_nodes : int, optional
        ``J``; needed for named graphs.
    weights : {"max-degree", "metropolis"} or array
        The weight rule, or an explicit J × J mixing matrix (validated against the graph).
    lazy : bool
        Use ``(I + W)/2`` (keeps the support, makes ``W ⪰ 0``).
    p, seed : float, int
        Edge probability and seed of ``"erdos-renyi"``.
    shape : (int, int), optional
        Grid of ``"torus2d"``.

    Returns
    -------
    Topology

    Raises
    ------
    ConfigError
        Unknown graph name, bad sizes, asymmetric / not doubly stochastic / disconnected weights.

    References
    ----------
    .. [1] Z. Zhu, Q. Li, X. Yang, G. Tang, M. B. Wakin. "Distributed low-rank matrix
       factorization with exact consensus". NeurIPS 2019, arXiv:1811.03129.
    """
    if isinstance(topology, Topology):
        if n_nodes is not None and n_nodes != topology.n_nodes:
            raise ConfigError(
                f"the topology has {topology.n_nodes} nodes but n_nodes={n_nodes}; make them equal"
            )
        return Topology(lazy_weights(topology.weights), topology.name + "+lazy",
                        {**topology.spec, "lazy": True}) if lazy else topology
    spec: dict[str, Any] = {}
    if isinstance(topology, str):
        name = topology.lower().replace("_", "-")
        if name in ("erdos-renyi", "er"):
            name = "erdos-renyi"
        if name not in GRAPHS:
            raise ConfigError(
                f"unknown topology {topology!r}; choose one of {', '.join(GRAPHS)}, or pass a "
                f"J × J adjacency or mixing matrix"
            )
        if n_nodes is None:
            raise ConfigError(f"topology={topology!r} needs n_nodes (the number of nodes J)")
        if name == "ring":
            adj = ring(n_nodes)
        elif name == "torus2d":
            adj = torus2d(n_nodes, shape)
            spec["shape"] = list(shape) if shape is not None else list(_grid_shape(int(n_nodes)))
        elif name == "star":
            adj = star(n_nodes)
        elif name == "complete":
            adj = complete(n_nodes)
        else:
            s = normalize_seed(seed)
            adj = erdos_renyi(n_nodes, p, s)
            spec.update(p=float(p), seed=s)
        label = name if name != "erdos-renyi" else f"erdos-renyi(p={p}, seed={spec['seed']})"
    else:
        m = np.asarray(topology)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ConfigError(
                f"topology must be a graph name or a square J × J matrix, got shape {m.shape}"
            )
        if n_nodes is not None and m.shape[0] != n_nodes:
            raise ConfigError(
                f"the topology matrix is {m.shape[0]} × {m.shape[0]} but n_nodes={n_nodes}; make "
                f"them equal"
            )
        is_weights = m.dtype.kind == "f" and np.any(np.diag(m) != 0)
        if is_weights:
            if not isinstance(weights, str) and weights is not None:
                raise ConfigError("pass a mixing matrix either as topology= or weights=, not both")
            w = validate_weights(m)
            if lazy:
                w = lazy_weights(w)
            return Topology(w, "user-weights" + ("+lazy" if lazy else ""), {"lazy": lazy})
        adj = _as_adjacency(m)
        label = "user"
    if isinstance(weights, str):
        rule = weights.lower().replace("_", "-")
        if rule not in _RULES:
            raise ConfigError(
                f"unknown weight rule {weights!r}; choose 'max-degree' or 'metropolis', or pass "
                f"a J × J mixing matrix"
            )
        w = _RULES[rule](adj)
        spec["weights"] = rule
    else:
        w = validate_weights(weights, adj)
        spec["weights"] = "user"
    if adj.shape[0] > 1 and laplacian_lambda2(adj) <= _TOL:
        comp = _components(adj)
        raise ConfigError(
            f"the {label} graph on {adj.shape[0]} nodes is not connected (Laplacian lambda_2 = "
            f"{laplacian_lambda2(adj):.3g}, {len(comp)} components such as {comp[0][:10]} and "
            f"{comp[1][:10]}); add edges so every node can reach every other"
        )
    if lazy:
        w = lazy_weights(w)
    spec["lazy"] = bool(lazy)
    return Topology(w, label + ("+lazy" if lazy else ""), spec)
