"""The recovery's compiled inner loops (``cfact.jit``) compute what their numpy formulations
compute: FISTA's step on sparse columns of ``P`` (every variant: nonnegative / signed, plain /
reweighted, with and without momentum) and the NNLS's support search, each against the numpy
code taken with ``cfact.jit.enabled: false``; and a whole recovery ends at the same ``W``, λ
and verdict either way."""

from __future__ import annotations

import importlib

import dask
import numpy as np
import pytest
import scipy.sparse as sp

import cfact_dask as cf
from cfact_dask.datasets import planted_nmf

K = importlib.import_module("cfact_dask.recovery._kernels")
L = importlib.import_module("cfact_dask.recovery._lsq")
LS = importlib.import_module("cfact_dask.recovery.lasso")


def _expander(d, n, s=5, seed=0):
    op = cf.make_operator("expander", d, n, seed=seed)
    P = op.columns(0, n, np.float64)
    assert sp.issparse(P) and P.format == "csc"
    return P


@pytest.mark.parametrize("nonneg", [True, False], ids=["nonneg", "signed"])
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "reweighted"])
@pytest.mark.parametrize("momentum", [False, True], ids=["beta0", "beta"])
def test_fista_step_compiled_equals_numpy(nonneg, weighted, momentum, monkeypatch):
    rng = np.random.default_rng(7)
    d, n, r = 120, 700, 6
    P = _expander(d, n)
    x = rng.standard_normal((n, r))
    if nonneg:
        x = np.maximum(x, 0)
    x_prev = x + 0.1 * rng.standard_normal((n, r))
    G = rng.standard_normal((d, r))
    beta = rng.random(r) if momentum else np.zeros(r)
    step, thresh = 0.3, 0.05 * rng.random(r)
    w = rng.random((n, r)) if weighted else None
    out = {}
    calls = []
    name = "_fista_csc_nn" if nonneg and not weighted else "_fista_csc"  # the plain kernel
    orig = getattr(K, name)
    monkeypatch.setattr(K, name, lambda *a: calls.append(1) or orig(*a))
    for jit in (True, False):
        with dask.config.set({"cfact.jit.enabled": jit}):
            out[jit] = LS._fista_update(P, (x, x_prev), G, beta, step, thresh, nonneg, w)
    assert len(calls) == 1  # the compiled kernel ran once, the numpy path once
    (xn, xo, Px, st), (xn0, xo0, Px0, st0) = out[True], out[False]
    np.testing.assert_allclose(xn, xn0, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(xo, xo0)
    np.testing.assert_allclose(Px, Px0, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(st, st0, rtol=1e-12)
    assert (xn == 0).any() and (xn != 0).any()  # the threshold bit somewhere, not everywhere
    if nonneg:
        assert xn.min() >= 0


@pytest.mark.parametrize("seed", range(4))
def test_nnls_support_search_compiled_equals_numpy(seed):
    rng = np.random.default_rng(seed)
    d, k = 300, [80, 150, 250, 200][seed]
    A = _expander(d, k, seed=seed)
    xt = np.where(rng.random(k) < 0.6, np.abs(rng.standard_normal(k)), 0.0)
    y = A @ xt + 0.3 * rng.standard_normal(d)
    b = A.T @ y
    Lc = float(abs(A.T @ A).sum(axis=1).max())
    x0 = np.maximum(np.linalg.lstsq(A.toarray(), y, rcond=None)[0], 0)
    mine = K.nnls_pg(A, y, b, x0, Lc, L._PG_MAX_ITER, L._PG_STABLE)
    ref = L._pg_support(A, A.T.tocsr(), y, b, x0.copy(), Lc)
    np.testing.assert_array_equal(mine > 0, ref > 0)
    np.testing.assert_allclose(mine, ref, rtol=1e-9, atol=1e-12)
    # and the whole NNLS: same solution and route either way
    sol = {}
    for jit in (True, False):
        with dask.config.set({"cfact.jit.enabled": jit}):
            sol[jit] = L._nnls_support(A, y)
    assert sol[True][1] == sol[False][1] == "active-set"
    np.testing.assert_allclose(sol[True][0], sol[False][0], rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("method", ["nnlasso", "lasso"])
def test_recovery_is_the_same_compiled_or_not(method):
    """End to end (λ by the held-out path, reweighting, debias): the compiled loops change the
    rounding, not the recovery."""
    n, m, r, d = 1500, 150, 3, 300
    M, W, H = planted_nmf(n, m, r, density=0.04, noise=0.1, random_state=3)
    op = cf.make_operator("expander", d, n, seed=1)
    Q = cf.make_operator("gaussian", 40, n, seed=99)
    Wt = (op.to_dense() @ M) @ np.linalg.pinv(H)
    res = {}
    for jit in (True, False):
        with dask.config.set({"cfact.jit.enabled": jit}):
            res[jit] = cf.recover(Wt, op, method, H=H, holdout=(Q.to_dense() @ M, Q))
    a, b = res[True], res[False]
    Wa, Wb = a.compute(), b.compute()
    np.testing.assert_allclose(Wa, Wb, rtol=1e-6, atol=1e-9 * np.abs(Wb).max())
    np.testing.assert_allclose(a.lam, b.lam, rtol=1e-9)
    assert a.params.get("lam_multiple") == b.params.get("lam_multiple")
    assert a.certificate.ok == b.certificate.ok
    assert a.certificate.holdout_error == pytest.approx(b.certificate.holdout_error, rel=1e-6)
    np.testing.assert_array_equal(a.certificate.support_sizes, b.certificate.support_sizes)
