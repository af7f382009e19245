"""Checkpoints of the embedding solvers (ℓp IRLS / entrywise / ellipsoid, MESSI's EM with its
restarts): a run stopped after a saved iteration and resumed ends bitwise equal to an
uninterrupted run, continues from the checkpoint, and refuses other settings."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest

from cfact_dask._runtime import checkpoint as ckmod
from cfact_dask.embed.clustering import projective_clustering
from cfact_dask.embed.lp import lp_lowrank
from cfact_dask.errors import ResumeError


def _data(seed=0, n=1200, D=12, k=3, frac=0.05):
    rng = np.random.default_rng(seed)
    B = np.linalg.qr(rng.standard_normal((D, k)))[0]
    A = rng.standard_normal((n, k)) @ B.T + 0.05 * rng.standard_normal((n, D))
    out = rng.choice(n, int(frac * n), replace=False)
    A[out] = 8 * rng.standard_normal((out.size, D))
    return da.from_array(A, chunks=(300, D))


def _subspaces(seed=1, n=1500, D=10, k=4, j=2):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, k, n)
    bases = [np.linalg.qr(rng.standard_normal((D, j)))[0] for _ in range(k)]
    A = np.stack([bases[c] @ rng.standard_normal(j) for c in lab])
    return da.from_array(A + 0.01 * rng.standard_normal((n, D)), chunks=(300, D))


class _Stop(Exception):
    pass


def _interrupt_after(monkeypatch, n_saves):
    """Make Checkpoint.save raise after its n-th call (the state is committed first)."""
    real = ckmod.Checkpoint.save
    calls = {"n": 0}

    def save(self, *a, **kw):
        real(self, *a, **kw)
        calls["n"] += 1
        if calls["n"] == n_saves:
            raise _Stop

    monkeypatch.setattr(ckmod.Checkpoint, "save", save)
    return real


LP_CASES = [dict(method="irls", p=1.0), dict(method="irls", p=1.0, irls_update="subspace"),
            dict(method="irls", p=1.2, entrywise=True), dict(method="ellipsoid", p=1.0)]


@pytest.mark.parametrize("kw", LP_CASES, ids=["irls", "subspace", "entrywise", "ellipsoid"])
def test_lp_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch, kw):
    A = _data()
    opts = dict(rank=3, max_iter=12, tol=0.0, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = lp_lowrank(A, **opts)
        ck = dict(store=str(tmp_path / "ck.zarr"), every=2)
        real = _interrupt_after(monkeypatch, 2)
        with pytest.raises(_Stop):
            lp_lowrank(A, checkpoint=ck, **opts)
        monkeypatch.setattr(ckmod.Checkpoint, "save", real)
        seen = []
        res = lp_lowrank(A, checkpoint=ck, callback=lambda s: seen.append(s["iteration"]),
                         **opts)
    assert res.info["resumed_from"] == 4 and ref.info["resumed_from"] == 0
    assert seen[0] == 5  # continued from the checkpoint: iterations 1-4 were not run again
    assert res.n_iter == ref.n_iter and res.n_passes == ref.n_passes
    np.testing.assert_array_equal(res.basis, ref.basis)
    assert res.objective == ref.objective and res.relative_error == ref.relative_error
    assert res.objective_history == ref.objective_history
    assert res.info["profile"] == ref.info["profile"]
    if ref.ellipsoid is not None:
        np.testing.assert_array_equal(res.ellipsoid, ref.ellipsoid)


def test_lp_checkpoint_refuses_other_settings(tmp_path):
    A = _data()
    ck = dict(store=str(tmp_path / "ck.zarr"), every=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lp_lowrank(A, 3, p=1.0, max_iter=4, tol=0.0, checkpoint=ck)
        with pytest.raises(ResumeError, match="p: 1.0 -> 1.5"):
            lp_lowrank(A, 3, p=1.5, max_iter=4, tol=0.0, checkpoint=ck)


def test_lp_profile_counts_every_row_and_matches_numpy():
    A = _data()
    res = lp_lowrank(A, 3, p=1.0, max_iter=30)
    X = A.compute()
    V = res.basis
    rho = np.linalg.norm(X - X @ V @ V.T, axis=1) / np.linalg.norm(X, axis=1)
    ref = np.bincount(np.minimum((rho * 20).astype(int), 19), minlength=20)
    np.testing.assert_array_equal(res.info["profile"], ref)


@pytest.mark.parametrize("loss", ["l2", "huber"])
def test_messi_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch, loss):
    A = _subspaces()
    opts = dict(n_subspaces=4, dim=2, n_init=3, max_iter=10, tol=0.0, loss=loss,
                random_state=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = projective_clustering(A, **opts)
        ck = dict(store=str(tmp_path / "ck.zarr"), every=3)
        real = _interrupt_after(monkeypatch, 2)
        with pytest.raises(_Stop):
            projective_clustering(A, checkpoint=ck, **opts)
        monkeypatch.setattr(ckmod.Checkpoint, "save", real)
        seen = []
        res = projective_clustering(A, checkpoint=ck,
                                    callback=lambda s: seen.append(s["iteration"]), **opts)
    assert res.info["resumed_from"] == 6 and seen[0] == 7
    assert res.n_iter == ref.n_iter and res.n_passes == ref.n_passes
    np.testing.assert_array_equal(res.bases, ref.bases)
    np.testing.assert_array_equal(res.labels.compute(), ref.labels.compute())
    assert res.cost == ref.cost and res.restart_costs == ref.restart_costs
    assert res.cost_history == ref.cost_history and res.relative_error == ref.relative_error
    assert res.info["profile"] == ref.info["profile"]


def test_messi_checkpoint_refuses_other_settings(tmp_path):
    A = _subspaces()
    ck = dict(store=str(tmp_path / "ck.zarr"), every=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        projective_clustering(A, 4, 2, n_init=2, max_iter=2, tol=0.0, checkpoint=ck)
        with pytest.raises(ResumeError, match="n_subspaces"):
            projective_clustering(A, 3, 2, n_init=2, max_iter=2, tol=0.0, checkpoint=ck)


def test_messi_relative_error_and_profile_match_numpy():
    A = _subspaces()
    res = projective_clustering(A, 4, 2, n_init=3, max_iter=20, random_state=0)
    X = A.compute()
    R = res.reconstruct().compute()
    np.testing.assert_allclose(res.relative_error,
                               np.linalg.norm(X - R) / np.linalg.norm(X), rtol=1e-6)
    rho = np.linalg.norm(X - R, axis=1) / np.linalg.norm(X, axis=1)
    ref = np.bincount(np.minimum((rho * 20).astype(int), 19), minlength=20)
    assert np.abs(np.asarray(res.info["profile"]) - ref).sum() <= 2  # bin-edge rounding
