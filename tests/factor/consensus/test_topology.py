"""Graphs, mixing weights and their validation (cfact_dask.factor.consensus.topology)."""

from __future__ import annotations

import numpy as np
import pytest

from cfact_dask.errors import ConfigError
from cfact_dask.factor.consensus.topology import (
    Topology,
    complete,
    erdos_renyi,
    laplacian_lambda2,
    lazy_weights,
    make_topology,
    max_degree_weights,
    metropolis_weights,
    ring,
    star,
    torus2d,
    validate_weights,
)


def _is_doubly_stochastic(w: np.ndarray) -> bool:
    return (np.allclose(w, w.T) and np.allclose(w.sum(0), 1) and np.allclose(w.sum(1), 1)
            and (w >= -1e-15).all())


@pytest.mark.parametrize("graph,n,edges,degrees", [
    ("ring", 10, 10, {2}),
    ("ring", 2, 1, {1}),
    ("torus2d", 12, 24, {4}),      # 3 x 4 torus
    ("torus2d", 9, 18, {4}),       # 3 x 3 torus
    ("star", 6, 5, {1, 5}),
    ("complete", 5, 10, {4}),
])
def test_named_graphs(graph, n, edges, degrees):
    for rule in ("max-degree", "metropolis"):
        t = make_topology(graph, n, weights=rule)
        assert t.n_nodes == n
        assert t.n_edges == edges
        assert set(t.degrees.tolist()) == degrees
        assert _is_doubly_stochastic(t.weights)
        assert t.lambda2 > 0
        assert abs(t.eigenvalues[-1] - 1) < 1e-12


def test_max_degree_matches_paper_formula():
    a = erdos_renyi(10, 0.3, seed=0)
    w = max_degree_weights(a)
    deg = a.sum(1)
    for k in range(10):
        for j in range(10):
            if k != j:
                expect = 1 / max(deg[k], deg[j]) if a[k, j] else 0.0
                assert w[k, j] == pytest.approx(expect)
        assert w[k, k] == pytest.approx(1 - sum(w[k, j] for j in range(10) if j != k))
    m = metropolis_weights(a)
    i, j = np.argwhere(a)[0]
    assert m[i, j] == pytest.approx(1 / (1 + max(deg[i], deg[j])))


def test_erdos_renyi_deterministic_and_connected():
    a1 = erdos_renyi(10, 0.3, seed=7)
    a2 = erdos_renyi(10, 0.3, seed=7)
    a3 = erdos_renyi(10, 0.3, seed=8)
    assert np.array_equal(a1, a2)
    assert not np.array_equal(a1, a3)
    for s in range(20):
        assert laplacian_lambda2(erdos_renyi(10, 0.3, seed=s)) > 0
    # a sparse p still yields a connected graph (rejection) or a clear error
    assert laplacian_lambda2(erdos_renyi(12, 0.15, seed=1)) > 0
    with pytest.raises(ConfigError, match="raise p"):
        erdos_renyi(30, 0.001, seed=0, max_tries=5)


def test_lazy_weights_are_psd_and_same_support():
    t = make_topology("ring", 10)           # max-degree on an even ring: eigenvalue -1
    assert t.eigenvalues[0] == pytest.approx(-1.0)
    tl = make_topology("ring", 10, lazy=True)
    assert tl.eigenvalues[0] >= -1e-12
    assert np.array_equal(tl.adjacency, t.adjacency)
    assert np.allclose(tl.weights, lazy_weights(t.weights))
    assert "lazy" in tl.name


def test_user_adjacency_and_weights():
    a = ring(6) | star(6)
    t = make_topology(a.astype(int), weights="metropolis")
    assert np.array_equal(t.adjacency, a)
    w = metropolis_weights(a)
    t2 = make_topology(w)                     # a float matrix with a diagonal = weights
    assert np.allclose(t2.weights, w)
    t3 = make_topology(a, weights=w)
    assert t3 == t2
    assert Topology.from_dict(t3.to_dict()) == t3


def _disconnected() -> np.ndarray:
    a = np.zeros((4, 4), dtype=bool)
    a[0, 1] = a[1, 0] = a[2, 3] = a[3, 2] = True
    return a


def _asym() -> np.ndarray:
    w = metropolis_weights(ring(4))
    w[0, 1] += 0.1
    w[0, 0] -= 0.1
    return w


def _not_stochastic() -> np.ndarray:
    w = metropolis_weights(ring(4))
    w[0, 0] += 0.2
    return w


def _negative() -> np.ndarray:
    w = metropolis_weights(ring(4))
    w[0, 2] = w[2, 0] = -0.1
    w[0, 0] += 0.1
    w[2, 2] += 0.1
    return w


def _off_graph() -> tuple[np.ndarray, np.ndarray]:
    return metropolis_weights(complete(4)), ring(4)


@pytest.mark.parametrize("make,match", [
    (lambda: validate_weights(np.ones((3, 4)) / 4), "square"),
    (lambda: validate_weights(np.full((3, 3), np.nan)), "NaN"),
    (lambda: validate_weights(_asym()), r"not symmetric: w\[0,1\]"),
    (lambda: validate_weights(_not_stochastic()), "row 0 sums to"),
    (lambda: validate_weights(_negative()), "negative entry"),
    (lambda: validate_weights(*_off_graph()), "not neighbours"),
    (lambda: validate_weights(metropolis_weights(_disconnected())), "not connected"),
    (lambda: validate_weights(np.eye(3)), "not connected"),
    (lambda: make_topology(_disconnected()), "not connected"),
    (lambda: make_topology("hypercube", 8), "unknown topology"),
    (lambda: make_topology("ring"), "needs n_nodes"),
    (lambda: make_topology("ring", 0), "n_nodes >= 1"),
    (lambda: make_topology("ring", 4, weights="uniform"), "unknown weight rule"),
    (lambda: make_topology("torus2d", 12, shape=(5, 3)), "does not multiply"),
    (lambda: make_topology("erdos-renyi", 10, p=1.5), "edge probability"),
    (lambda: make_topology(np.array([[0, 1], [0, 0]])), "not symmetric"),
    (lambda: make_topology(ring(4), 5), "n_nodes=5"),
    (lambda: make_topology(make_topology("ring", 4), 6), "n_nodes=6"),
])
def test_validation_table(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_torus_prime_is_ring_and_single_node():
    assert np.array_equal(torus2d(7), ring(7))
    t = make_topology("complete", 1)
    assert t.n_nodes == 1 and t.weights[0, 0] == 1.0
