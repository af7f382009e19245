"""Projective clustering (MESSI): the toy of Maalouf et al., restarts, guards, distributed."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from cfact_dask.embed.clustering import _init_labels, projective_clustering
from cfact_dask.embed.lp import lp_lowrank
from cfact_dask.embed.nn import budget_choices, lowrank_params, messi_params
from cfact_dask.errors import ConfigError, ConvergenceWarning, NonFiniteError, RankError


def _toy(seed=1, n=3000, D=50, k=5, j=5, noise=0.05):
    """3000 points on 5 random 5-dim subspaces of R^50, Gaussian noise 0.05 (PAPERS.md §4)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    bases = [np.linalg.qr(rng.standard_normal((D, j)))[0] for _ in range(k)]
    A = np.stack([bases[t] @ rng.standard_normal(j) for t in truth])
    A += noise * rng.standard_normal((n, D))
    return A, truth


@pytest.fixture(scope="module")
def toy():
    A, truth = _toy()
    return A, truth, da.from_array(A, chunks=(512, A.shape[1]))


@pytest.fixture(scope="module")
def toy_result(toy):
    return projective_clustering(toy[2], n_subspaces=5, dim=5, n_init=5, max_iter=30,
                                 random_state=0)


def test_messi_toy_beats_svd_at_same_budget(toy, toy_result):
    A, truth, X = toy
    res = toy_result
    n, D = A.shape
    assert res.converged
    assert res.relative_error <= 0.2
    rec = res.reconstruct().compute()
    assert res.relative_error == pytest.approx(np.linalg.norm(A - rec) / np.linalg.norm(A))
    assert adjusted_rand_score(truth, res.labels.compute()) >= 0.9
    # SVD with at most the same number of parameters
    budget = messi_params(n, D, 5, n_subspaces=5)
    rank = max(r for r in range(1, D) if lowrank_params(n, D, r) <= budget)
    assert rank == 5
    svd = lp_lowrank(X, rank, p=2.0)
    assert svd.relative_error >= 0.7
    # the budget helper gives the same shapes
    rate = 1 - budget / (n * D)
    assert budget_choices(n, D, rate, "svd")[0].rank == rank
    assert budget_choices(n, D, rate, "messi", n_subspaces=5)[0].dim == 5


def test_result_shapes_and_coefficients(toy, toy_result):
    A, _, X = toy
    res = toy_result
    assert res.bases.shape == (5, 5, 50)
    for B in res.bases:
        np.testing.assert_allclose(B @ B.T, np.eye(5), atol=1e-10)
    lab = res.labels.compute()
    coef = res.coefficients.compute()
    assert res.labels.chunks[0] == X.chunks[0] and res.coefficients.shape == (3000, 5)
    np.testing.assert_allclose(coef, np.einsum("nd,njd->nj", A, res.bases[lab]), atol=1e-10)
    np.testing.assert_array_equal(np.bincount(lab, minlength=5), res.counts)
    # labels are the closest subspace
    d2 = np.stack([np.sum((A - A @ B.T @ B) ** 2, axis=1) for B in res.bases], axis=1)
    np.testing.assert_array_equal(lab, d2.argmin(axis=1))
    assert res.cost == pytest.approx(d2.min(axis=1).sum(), rel=1e-9)
    assert res.cost == min(res.restart_costs)
    h = res.cost_history
    assert all(b >= a - 1e-9 for a, b in zip(h[1:], h[:-1], strict=True))


@pytest.mark.parametrize("loss", ["lp", "huber", "cauchy"])
def test_robust_losses(toy, loss):
    A, truth, X = toy
    res = projective_clustering(X, 5, 5, n_init=3, max_iter=30, loss=loss, random_state=0)
    assert adjusted_rand_score(truth, res.labels.compute()) >= 0.9
    assert res.relative_error <= 0.2


def test_nonuniform_dims(toy):
    A, _, X = toy
    res = projective_clustering(X, 5, [5, 5, 3, 5, 4], n_init=3, max_iter=30, random_state=0)
    assert res.dims == (5, 5, 3, 5, 4)
    for B, d in zip(res.bases, res.dims, strict=True):
        np.testing.assert_allclose(B[:d] @ B[:d].T, np.eye(d), atol=1e-10)
        assert not B[d:].any()
    rec = res.reconstruct().compute()
    assert np.linalg.norm(A - rec) / np.linalg.norm(A) == pytest.approx(res.relative_error)


def test_initial_split_is_chunking_invariant():
    a = _init_labels(0, 10000, 5, 42, 0)
    b = np.concatenate([_init_labels(s, min(s + 777, 10000), 5, 42, 0)
                        for s in range(0, 10000, 777)])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, _init_labels(0, 10000, 5, 42, 1))
    counts = np.bincount(a, minlength=5)
    assert counts.min() > 1800  # roughly equal split


def test_same_result_for_any_chunking(toy):
    A = toy[0]
    r1 = projective_clustering(da.from_array(A, chunks=(300, 50)), 5, 5, n_init=2, max_iter=30,
                               random_state=3)
    r2 = projective_clustering(da.from_array(A, chunks=(1000, 50)), 5, 5, n_init=2, max_iter=30,
                               random_state=3)
    np.testing.assert_array_equal(r1.labels.compute(), r2.labels.compute())
    np.testing.assert_allclose(r1.bases, r2.bases, atol=1e-8)


def test_small_clusters_are_reseeded(caplog):
    # 2 true subspaces but k=4 with j=3: some clusters lose their rows and must be re-seeded
    rng = np.random.default_rng(0)
    D, j = 12, 3
    B = [np.linalg.qr(rng.standard_normal((D, j)))[0] for _ in range(2)]
    A = np.concatenate([rng.standard_normal((200, j)) @ B[0].T,
                        rng.standard_normal((6, j)) @ B[1].T])
    A += 1e-3 * rng.standard_normal(A.shape)
    with caplog.at_level("INFO", logger="cfact_dask.embed.clustering"):
        res = projective_clustering(A, 4, j, n_init=2, max_iter=30, random_state=0)
    assert "re-seeded" in caplog.text
    for Bl in res.bases:
        np.testing.assert_allclose(Bl @ Bl.T, np.eye(j), atol=1e-8)  # no degenerate basis
    assert res.relative_error < 0.05


def test_max_iter_warns(toy):
    with pytest.warns(ConvergenceWarning, match="max_iter=1"):
        projective_clustering(toy[2], 5, 5, n_init=2, max_iter=1, tol=0.0, random_state=0)


def test_one_pass_per_step_for_all_restarts(toy):
    A = toy[0]
    reads = []

    def counted(block):
        if block.size:
            reads.append(1)
        return block

    X = da.from_array(A, chunks=(600, 50)).map_blocks(counted, dtype=A.dtype)
    with pytest.warns(ConvergenceWarning):
        res = projective_clustering(X, 5, 5, n_init=4, max_iter=3, tol=0.0, random_state=0)
    assert res.n_passes == 4
    assert len(reads) == 5 * 4


def test_bad_input():
    A = np.ones((20, 6))
    with pytest.raises(RankError, match="1 <= dim < 6"):
        projective_clustering(A, 2, 6)
    with pytest.raises(ConfigError, match="one dimension per"):
        projective_clustering(A, 2, [2, 2, 2])
    with pytest.raises(ConfigError, match="loss"):
        projective_clustering(A, 2, 2, loss="tukey")
    with pytest.raises(ConfigError, match=r"outside \[1, 2\]"):
        projective_clustering(A, 2, 2, loss="lp", p=3.0)
    with pytest.raises(ConfigError, match="n_subspaces"):
        projective_clustering(A, 0, 2)
    B = np.random.default_rng(0).standard_normal((20, 6))
    B[3, 1] = np.inf
    with pytest.raises(NonFiniteError, match=r"rows 0:10"):
        projective_clustering(da.from_array(B, chunks=(10, 6)), 2, 2)


def test_distributed_equals_local(toy, cluster_client):
    A, _, X = toy
    local = projective_clustering(X, 5, 5, n_init=2, max_iter=30, random_state=7)
    dist = projective_clustering(X, 5, 5, n_init=2, max_iter=30, random_state=7,
                                 client=cluster_client)
    np.testing.assert_array_equal(dist.bases, local.bases)
    assert dist.cost_history == local.cost_history
    lab = cluster_client.compute(dist.labels).result()
    np.testing.assert_array_equal(lab, local.labels.compute())


def test_refit_eigenvectors_match_the_subset_driver():
    """The refit's full divide-and-conquer eigh (one BLAS thread) gives the top-j eigenvectors
    of the subset driver it replaced, with the same sign convention."""
    import scipy.linalg

    from cfact_dask.embed._rows import fix_signs
    from cfact_dask.embed.clustering import _top

    rng = np.random.default_rng(3)
    A = rng.standard_normal((300, 40)) * np.linspace(3, 0.1, 40)
    S = A.T @ A
    for j in (1, 7, 40):
        _, V = scipy.linalg.eigh(S, subset_by_index=[40 - j, 39])
        ref = fix_signs(V[:, ::-1]).T
        np.testing.assert_allclose(_top(S, j), ref, atol=1e-9)
