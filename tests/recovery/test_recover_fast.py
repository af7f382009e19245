"""The fast paths of sparse recovery compute what the reference paths compute.

* In-process FISTA (``recover.local-max-bytes``): the per-iteration pass runs the block kernels
  directly on numpy blocks (``_LocalSweep``) instead of as dask tasks (``_DaskSweep``). The
  kernels, the blocks and the tree of partial sums are shared, so the two must agree to the
  last bit: same W, same λ, same iterations, same certificate.
* Debias: the NNLS on a support is solved by an exact least-squares shortcut / a certified
  active set (``_nnls_support``), the signed least squares by Cholesky (``_lstsq_support``);
  both must give scipy's ``nnls`` / numpy's ``lstsq`` results, and fall back to them where
  the solution is not unique.
"""

from __future__ import annotations

import importlib
import math

import dask
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import nnls

import cfact_dask as cf
from cfact_dask.datasets import planted_nmf

B = importlib.import_module("cfact_dask.recovery._blocks")  # row blocks, kernels, tree sums
L = importlib.import_module("cfact_dask.recovery._lsq")  # debias / NNLS solvers
LS = importlib.import_module("cfact_dask.recovery.lasso")  # FISTA sweeps


# ---------------------------------------------------------------------- helpers
def _count_calls(monkeypatch, cls, name):
    calls = []
    orig = getattr(cls, name)

    def wrapped(self, *a, **kw):
        calls.append(1)
        return orig(self, *a, **kw)

    monkeypatch.setattr(cls, name, wrapped)
    return calls


def _assert_same_recovery(a, b, *, exact=True):
    """Same W (bit for bit when ``exact``, else to rtol 1e-6), same λ choice and verdict."""
    Wa, Wb = a.compute(), b.compute()
    if exact:
        np.testing.assert_array_equal(Wa, Wb)
        np.testing.assert_array_equal(a.lam, b.lam)
        assert a.n_iter_ == b.n_iter_ and a.history == b.history
    else:
        np.testing.assert_allclose(Wb, Wa, rtol=1e-6, atol=1e-9 * np.abs(Wa).max())
        np.testing.assert_allclose(b.lam, a.lam, rtol=1e-9)
    assert a.W.chunks == b.W.chunks
    assert a.params.get("lam_multiple") == b.params.get("lam_multiple")
    ca, cb = a.certificate, b.certificate
    assert ca.ok == cb.ok and ca.messages == cb.messages and ca.notes == cb.notes
    np.testing.assert_array_equal(ca.support_sizes, cb.support_sizes)
    np.testing.assert_array_equal(ca.effective_support, cb.effective_support)
    for f in ("fit_residual", "holdout_error", "holdout_baseline"):
        va, vb = getattr(ca, f), getattr(cb, f)
        assert (va is None) == (vb is None)
        if va is not None:
            assert vb == pytest.approx(va, rel=1e-9, abs=1e-15)


@pytest.fixture(scope="module")
def planted():
    n, m, r, d = 1500, 150, 3, 300
    M, W, H = planted_nmf(n, m, r, density=0.04, noise=0.1, random_state=3)
    op = cf.make_operator("expander", d, n, seed=1)
    Q = cf.make_operator("gaussian", 40, n, seed=99)
    Wt = (op.to_dense() @ M) @ np.linalg.pinv(H)  # what a compressed factorization finds
    return dict(H=H, op=op, Q=Q, Wt=Wt, QM=Q.to_dense() @ M)


# ---------------------------------------------------------------------- local == dask FISTA
def _watch_threads(monkeypatch):
    """Whether each in-process step ran its blocks in the thread pool."""
    used = []
    orig = LS._LocalSweep._map

    def wrapped(self, *a):
        used.append(self._pool is not None)
        return orig(self, *a)

    monkeypatch.setattr(LS._LocalSweep, "_map", wrapped)
    return used


@pytest.mark.parametrize(
    "method, kw, threads",
    [
        ("nnlasso", {}, False),  # λ by scaled LASSO + held-out path, reweighting, NNLS debias
        ("lasso", {}, False),  # signed: lstsq debias
        ("nnlasso", {"lam": 0.05, "debias": False}, True),  # plain LASSO, blocks in threads
    ],
)
def test_local_fista_matches_the_dask_path(planted, monkeypatch, method, kw, threads):
    """10 row blocks (a two-level tree of partial sums): the in-process loop and the dask tasks
    must produce the same numbers, and each run must really have taken its path."""
    p = planted
    if threads:  # the pool of a large W, forced on this small one
        monkeypatch.setattr(LS, "_LOCAL_THREADS_MIN_ENTRIES", 0)
    pooled = _watch_threads(monkeypatch)
    local_steps = _count_calls(monkeypatch, LS._LocalSweep, "step")
    dask_steps = _count_calls(monkeypatch, LS._DaskSweep, "step")
    graphs = []  # every dask graph computed, whatever the scheduler
    dask_compute = dask.compute
    monkeypatch.setattr(dask, "compute", lambda *a, **k: graphs.append(1) or dask_compute(*a, **k))
    args = (p["Wt"], p["op"], method)
    opts = dict(H=p["H"], holdout=(p["QM"], p["Q"]), chunks=150, **kw)
    fast = cf.recover(*args, **opts)
    assert local_steps and not dask_steps
    # in-process, the one-off steps (λ_max, supports, debias, reweighting, held-out estimates)
    # run as plain calls too: the only dask graph left is the certificate's one pass over W
    assert len(graphs) == 1
    graphs.clear()
    assert pooled and set(pooled) == {threads}
    local_steps.clear()
    with dask.config.set({"cfact.recover.local-max-bytes": 0}):
        ref = cf.recover(*args, **opts)
    assert dask_steps and not local_steps
    assert len(graphs) > 10
    assert fast.W.numblocks[0] == 10
    _assert_same_recovery(fast, ref, exact=True)
    if "lam" not in kw:
        assert [q["multiple"] for q in fast.params["lam_path"]] == [2.0, 1.0, 0.5]
        assert fast.params["lam_path"] == ref.params["lam_path"]


def test_tree_sum_local_is_the_delayed_tree():
    rng = np.random.default_rng(0)
    parts = [(rng.standard_normal((50, 3)), rng.standard_normal((3, 3))) for _ in range(19)]
    got = B.tree_sum(parts, local=True)
    want = dask.compute(B.tree_sum(parts), scheduler="sync")[0]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


# ---------------------------------------------------------------------- debias solvers
def _expander_columns(d, k, seed, s=5):
    op = cf.make_operator("expander", d, k, seed=seed, s=s)
    return sp.csc_matrix(op.columns(0, k))


def _scipy_nnls(A, y):
    return nnls(A.toarray(), y, maxiter=50 * A.shape[1])[0]


def test_nnls_lstsq_shortcut_is_scipys_nnls():
    """When the unconstrained least squares is ≥ 0 it is the NNLS solution (KKT with zero
    multipliers): returned as is, and equal to scipy's Lawson–Hanson."""
    rng = np.random.default_rng(1)
    A = _expander_columns(400, 60, seed=2)
    y = A @ (1.0 + rng.random(60)) + 0.01 * rng.standard_normal(400)
    ls = np.linalg.lstsq(A.toarray(), y, rcond=None)[0]
    assert ls.min() > 0  # the shortcut applies
    x, route = L._nnls_support(A, y)
    assert route == "lstsq"
    np.testing.assert_allclose(x, ls, rtol=1e-10)
    np.testing.assert_allclose(x, _scipy_nnls(A, y), rtol=1e-10)


@pytest.mark.parametrize("search", ["projected-gradient", "exchange-only"])
@pytest.mark.parametrize("seed", range(6))
def test_nnls_active_set_when_least_squares_goes_negative(seed, search, monkeypatch):
    """False positives in the support: the unconstrained solution has negative entries, the
    shortcut does not apply; the active set must land on scipy's solution and zeros. Without
    the projected-gradient search (``exchange-only``: from the clipped least squares) the KKT
    check and the exchange rounds alone must find it."""
    if search == "exchange-only":
        monkeypatch.setattr(L, "_PG_MAX_ITER", 0)
        monkeypatch.setattr(L, "_POLISH_ROUNDS", 50)
    rng = np.random.default_rng(seed)
    d, k = 300, [80, 150, 250][seed % 3]
    A = _expander_columns(d, k, seed=seed)
    xt = np.where(rng.random(k) < 0.6, np.abs(rng.standard_normal(k)), 0.0)
    y = A @ xt + 0.3 * rng.standard_normal(d)
    ls = np.linalg.lstsq(A.toarray(), y, rcond=None)[0]
    assert ls.min() < 0  # the shortcut does not apply
    x, route = L._nnls_support(A, y)
    ref = _scipy_nnls(A, y)
    assert route == "active-set"
    assert x.min() >= 0
    np.testing.assert_array_equal(x > 0, ref > 0)
    np.testing.assert_allclose(x, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())


def test_nnls_falls_back_to_scipy_when_not_unique(monkeypatch):
    """A duplicated column (rank-deficient support): the NNLS solution is not unique, so the
    choice is left to scipy, exactly as before. Also when no certified candidate is found."""
    rng = np.random.default_rng(5)
    A = _expander_columns(200, 40, seed=5)
    A = sp.hstack([A, A[:, [7]]], format="csc")
    y = A @ np.abs(rng.standard_normal(41)) + 0.05 * rng.standard_normal(200)
    x, route = L._nnls_support(A, y)
    assert route == "scipy"
    np.testing.assert_array_equal(x, L.nnls(A.toarray(), y))
    # a unique problem whose support search is cut short: the same fallback
    A = _expander_columns(300, 150, seed=0)
    xt = np.where(rng.random(150) < 0.6, 1.0, 0.0)
    y = A @ xt + 0.3 * rng.standard_normal(300)
    monkeypatch.setattr(L, "_POLISH_ROUNDS", 0)
    x, route = L._nnls_support(A, y)
    assert route == "scipy"
    np.testing.assert_array_equal(x, L.nnls(A.toarray(), y))


def test_nnls_trivial_cases():
    A = _expander_columns(100, 20, seed=1)
    for y in (np.zeros(100), -np.ones(100)):  # Aᵀy ≤ 0: x = 0
        x, _ = L._nnls_support(A, y)
        np.testing.assert_array_equal(x, np.zeros(20))
    x, _ = L._nnls_support(A[:, :0], np.ones(100))
    assert x.shape == (0,)


def test_lstsq_support_matches_numpy():
    rng = np.random.default_rng(2)
    A = _expander_columns(300, 120, seed=3)
    y = rng.standard_normal(300)
    x, route = L._lstsq_support(A, y)
    assert route == "cholesky"
    np.testing.assert_allclose(x, np.linalg.lstsq(A.toarray(), y, rcond=None)[0], rtol=1e-9)
    # rank-deficient: the minimum-norm solution, by numpy as before
    A2 = sp.hstack([A, A[:, [0, 5]]], format="csc")
    x, route = L._lstsq_support(A2, y)
    assert route == "lstsq"
    np.testing.assert_array_equal(x, np.linalg.lstsq(A2.toarray(), y, rcond=None)[0])


@pytest.mark.parametrize("method", ["nnlasso", "lasso"])
def test_debias_solvers_do_not_change_the_recovery(planted, monkeypatch, method):
    """End to end: the recovery with the fast debias solvers equals the one with scipy's nnls /
    numpy's lstsq on the dense support columns (the previous implementation)."""
    p = planted
    args = (p["Wt"], p["op"], method)
    opts = dict(H=p["H"], holdout=(p["QM"], p["Q"]))
    routes = []
    fast_nnls, fast_ls = L._nnls_support, L._lstsq_support
    monkeypatch.setattr(L, "_nnls_support", lambda A, y: routes.append(
        fast_nnls(A, y)[1]) or fast_nnls(A, y))
    monkeypatch.setattr(L, "_lstsq_support", lambda A, y: routes.append(
        fast_ls(A, y)[1]) or fast_ls(A, y))
    fast = cf.recover(*args, **opts)
    # both NNLS routes occur here (the shortcut, and false positives handled by the active set)
    assert set(routes) == ({"lstsq", "active-set"} if method == "nnlasso" else {"cholesky"})
    monkeypatch.setattr(L, "_nnls_support", lambda A, y: (L.nnls(A.toarray(), y), "scipy"))
    monkeypatch.setattr(L, "_lstsq_support", lambda A, y: (
        np.linalg.lstsq(A.toarray(), y, rcond=None)[0], "lstsq"))
    ref = cf.recover(*args, **opts)
    _assert_same_recovery(ref, fast, exact=False)
    assert fast.n_iter_ == ref.n_iter_
    assert math.isfinite(fast.certificate.holdout_error)


def test_local_fista_regenerating_a_dense_operator_matches(monkeypatch):
    """A Gaussian P, not kept between steps (as when all of P is too big to keep): the
    in-process loop regenerates each block's columns (in threads) and still matches the dask
    path."""
    monkeypatch.setattr(B, "_LOCAL_P_MAX_BYTES", 0)
    monkeypatch.setattr(LS, "_LOCAL_THREADS_MIN_ENTRIES", 0)  # regenerated concurrently
    rng = np.random.default_rng(4)
    n, d = 600, 150
    op = cf.make_operator("gaussian", d, n, seed=2, tile_size=128)
    W = np.zeros((n, 2))
    for j in range(2):
        W[rng.choice(n, 10, replace=False), j] = rng.standard_normal(10)
    Wt = op.matvec(W).compute() + 0.01 * rng.standard_normal((d, 2))
    made = []
    cols = B.cols
    monkeypatch.setattr(B, "cols", lambda *a: made.append(1) or cols(*a))
    fast = cf.recover(Wt, op, "lasso", lam=0.02, chunks=128)
    assert len(made) >= fast.n_iter_ * fast.W.numblocks[0]  # regenerated at every step
    with dask.config.set({"cfact.recover.local-max-bytes": 0}):
        ref = cf.recover(Wt, op, "lasso", lam=0.02, chunks=128)
    _assert_same_recovery(fast, ref, exact=True)
    assert np.linalg.norm(fast.compute() - W) < 0.1 * np.linalg.norm(W)


def _fista_reference(A, y, lam_w, nonneg, n_iter=20000):
    """Restarted FISTA run long: the reference of the working set's small LASSO problems."""
    step = 1.0 / np.linalg.eigvalsh(A.T @ A)[-1]
    z = zp = np.zeros(A.shape[1])
    t = 1.0
    for _ in range(n_iter):
        tn = (1 + math.sqrt(1 + 4 * t * t)) / 2
        v = z + (t - 1) / tn * (z - zp)
        u = v - step * (A.T @ (A @ v - y))
        th = step * lam_w
        zn = np.maximum(u - th, 0) if nonneg else np.sign(u) * np.maximum(np.abs(u) - th, 0)
        if (v - zn) @ (zn - z) > 0:
            tn = 1.0
        zp, z, t = z, zn, tn
    return z


@pytest.mark.parametrize("nonneg", [True, False])
@pytest.mark.parametrize("shape", [(40, 25), (30, 120), (12, 90)])
def test_active_set_lasso_is_the_lasso_solution(nonneg, shape):
    """The working set's restricted problems (``lasso_active_set``): the exact minimiser, from
    any warm start, also when the support fills all d rows (the exchange of a dependent
    violator) — the objective of a long restarted FISTA, to rounding."""
    rng = np.random.default_rng(sum(shape) + nonneg)
    d, k = shape
    A = rng.standard_normal((d, k))
    y = 3 * rng.standard_normal(d)
    lam_w = 0.05 * np.abs(rng.standard_normal(k))
    ref = _fista_reference(A, y, lam_w, nonneg)

    def objective(z):
        r = y - A @ z
        return 0.5 * r @ r + np.sum(lam_w * np.abs(z))

    for z0 in (np.zeros(k), np.where(rng.random(k) < 0.3, rng.random(k), 0.0)):
        z = L.lasso_active_set(A, y, lam_w, z0, nonneg)
        if nonneg:
            assert (z >= 0).all()
        assert objective(z) <= objective(ref) * (1 + 1e-9) + 1e-12


@pytest.mark.parametrize("kind, d, n", [("expander", 300, 5000), ("sparse_sign", 200, 3000),
                                        ("gaussian", 120, 900), ("expander", 2, 50)])
def test_lipschitz_is_the_top_eigenvalue_of_p_pt(kind, d, n):
    """FISTA's step 1/L: L from Lanczos on the blocks' summed Gram (sparse for sparse kinds)
    is ‖P‖₂² (LAPACK's top eigenvalue of the dense P Pᵀ) to 1e-12, times 1 + 1e-6, never
    below it, and the same number in both modes (the blocks' tree is the same)."""
    op = cf.make_operator(kind, d, n, seed=3)
    P = op.to_dense()
    want = np.linalg.eigvalsh(P @ P.T)[-1]
    B._LIP.clear()
    local = B.lipschitz(op, B.Blocks(op, None, None, local=True))
    B._LIP.clear()
    with dask.config.set(scheduler="sync"):
        dist = B.lipschitz(op, B.Blocks(op, None, None, local=False))
    assert local == dist
    assert want * (1 + 1e-6) * (1 - 1e-12) <= local <= want * (1 + 1e-6) * (1 + 1e-12)
