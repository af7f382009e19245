"""DGD+LOCAL (Zhu et al. 2019, arXiv:1811.03129) and its baselines: cfact_dask.factor.consensus."""

from __future__ import annotations

import logging
import os
import signal

import numpy as np
import pytest
import scipy.linalg

import cfact_dask as cf
from cfact_dask.errors import (
    ConfigError,
    ConvergenceWarning,
    DivergenceError,
    InputError,
    RankError,
    ResumeError,
)
from cfact_dask.factor.consensus import (
    DGDState,
    centralized,
    dgd,
    dgd_local,
    split_columns,
)

DEMO = dict(n_nodes=10, topology="erdos-renyi", p=0.3, weights="max-degree", step=1e-3,
            init_scale=1.0, tol=0.0)


def demo_data(seed: int, n: int = 50, m: int = 200, r: int = 10) -> np.ndarray:
    """The paper's demo data: Y = randn(n, r) randn(r, m), exactly rank r."""
    rng = np.random.default_rng(1000 + seed)
    return rng.standard_normal((n, r)) @ rng.standard_normal((r, m))


def exact(state: DGDState) -> bool:
    return state.cost < 1e-16 and state.consensus_error < 1e-16


def noisy_data(seed: int = 0, n: int = 40, m: int = 160, r: int = 5, noise: float = 0.3):
    rng = np.random.default_rng(seed)
    Y = rng.standard_normal((n, r)) @ rng.standard_normal((r, m))
    return Y + noise * rng.standard_normal((n, m))


# ------------------------------------------------------------------------- the paper's demo
@pytest.mark.parametrize("seed", [0, 1])
def test_demo_exact_consensus_cheap(seed):
    res = dgd_local(demo_data(seed), 10, max_iter=6000, callback=exact, random_state=seed,
                    **DEMO)
    assert res.cost_history[-1] < 1e-16
    assert res.consensus_history[-1] < 1e-16
    assert res.n_iter < 6000
    # and the consensus factorization reproduces Y
    assert res.relative_error < 1e-8
    # the topology is the paper's: Erdős–Rényi(0.3) on 10 nodes with max-degree weights
    assert res.topology.n_nodes == 10 and res.topology.spec["weights"] == "max-degree"


def test_demo_ring_cheap():
    res = dgd_local(demo_data(0), 10, max_iter=6000, callback=exact, random_state=0,
                    **{**DEMO, "topology": "ring", "weights": "metropolis"})
    assert res.cost < 1e-16 and res.consensus_error < 1e-16


@pytest.mark.slow
@pytest.mark.parametrize("topology,weights", [("erdos-renyi", "max-degree"),
                                              ("ring", "metropolis")])
def test_demo_full_five_seeds(topology, weights):
    iters = []
    for seed in range(5):
        res = dgd_local(demo_data(seed), 10, max_iter=10_000, callback=exact,
                        random_state=seed, **{**DEMO, "topology": topology, "weights": weights})
        assert res.cost < 1e-16 and res.consensus_error < 1e-16, (seed, res.n_iter)
        iters.append(res.n_iter)
    assert max(iters) <= 10_000


def exact20(state: DGDState) -> bool:
    return state.cost < 1e-20 and state.consensus_error < 1e-20


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("topology,weights", [("erdos-renyi", "max-degree"),
                                              ("ring", "metropolis")])
def test_demo_als_exact_consensus_below_1e20(seed, topology, weights):
    """solver="als" (the default without a step) on the paper's demo: cost and consensus
    below 1e-20, as the paper reports for its gradient iteration, in far fewer iterations."""
    Y = demo_data(seed)
    kw = {**DEMO, "topology": topology, "weights": weights}
    del kw["step"]
    res = dgd_local(Y, 10, max_iter=1000, callback=exact20, random_state=seed, **kw)
    assert res.solver == "als" and res.step == 0.0 and res.consensus_weight == 4.0
    assert res.cost < 1e-20 and res.consensus_error < 1e-20, (res.cost, res.consensus_error)
    assert res.n_iter <= 400          # measured 130-150; the gradient iteration needs ~2400
    assert res.relative_error < 1e-10
    # the gradient iteration with the paper's step on the same data, for the record
    grad = dgd_local(Y, 10, max_iter=res.n_iter, random_state=seed, **{**kw, "step": 1e-3})
    assert grad.solver == "gradient" and grad.cost > 1e6 * res.cost


def _nonneg_lowrank(n: int, m: int, r: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((n, r)) @ rng.random((r, m))


def test_als_converges_on_ill_conditioned_nonnegative_data():
    """The issue's case, scaled down: nonnegative rank-r data (σ₁/σ_r in the hundreds), ring
    of 8 nodes, σ₁/σ_r ≈ 37 here. The gradient iteration with its automatic step crawls
    (relative cost still ~1e-2 after 200 iterations); solver="als" is below 1e-6 by iteration 40."""
    Y = _nonneg_lowrank(2000, 240, 10)
    s = np.linalg.svd(Y, compute_uv=False)
    assert s[0] / s[9] > 30
    nY2 = float(np.vdot(Y, Y))
    rel = {}

    def record(state):
        rel[state.iteration] = state.cost / nY2
        return state.cost / nY2 < 1e-12

    res = dgd_local(Y, 10, n_nodes=8, topology="ring", tol=0, max_iter=300, callback=record)
    assert res.solver == "als"
    assert min(v for k, v in rel.items() if k <= 40) < 1e-6
    assert res.relative_error ** 2 < 1e-10
    grad = dgd_local(Y, 10, n_nodes=8, topology="ring", tol=0, max_iter=200, solver="gradient")
    assert grad.cost_history[-1] / nY2 > 1e-3


@pytest.mark.slow
def test_als_issue_size_reaches_1e6():
    """The issue's size: 20 000 × 600, rank 10, 8 nodes on a ring."""
    Y = _nonneg_lowrank(20_000, 600, 10)
    nY2 = float(np.vdot(Y, Y))
    res = dgd_local(Y, 10, n_nodes=8, topology="ring", tol=0, max_iter=60,
                    callback=lambda st: st.cost / nY2 < 1e-8)
    assert res.n_iter <= 40
    assert res.relative_error ** 2 < 1e-6


def test_blas_threads_limited_in_process_solver_loop():
    """In-process, the node kernels run with cfact.blas.solver-threads BLAS threads (1); the
    limit is lifted afterwards."""
    import dask
    from threadpoolctl import threadpool_info

    def blas_max():
        return max(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")

    seen = []
    before = blas_max()

    def cb(state):
        seen.append(blas_max())

    Y = demo_data(0, n=30, m=80, r=4)
    res = dgd_local(Y, 4, n_nodes=4, max_iter=20, tol=0, report_every=10, callback=cb)
    assert seen and set(seen) == {1} and res.blas_threads == 1
    assert blas_max() == before
    with dask.config.set({"cfact.blas.solver-threads": 2}):
        res2 = dgd_local(Y, 4, n_nodes=4, max_iter=20, tol=0, report_every=10, callback=cb)
    # 2, or fewer when the process started with fewer (the environment's setting wins)
    assert 1 <= res2.blas_threads <= 2 and seen[-1] == res2.blas_threads
    np.testing.assert_allclose(res2.U, res.U, rtol=1e-9, atol=1e-9)


def test_classical_dgd_stuck_at_inexact_consensus():
    Y = demo_data(0)
    kw = dict(n_nodes=10, topology="erdos-renyi", p=0.3, step=1e-3, init_scale=1.0,
              random_state=0)
    local = dgd_local(Y, 10, max_iter=4000, tol=0.0, report_every=100, **kw)
    classic = dgd(Y, 10, max_iter=4000, report_every=100, **kw)
    assert local.consensus_history[-1] < 1e-14
    # DGD stalls: its consensus error and cost stay many orders of magnitude above
    assert classic.consensus_history[-1] > 1e-6
    assert classic.consensus_history[-1] > 1e6 * local.consensus_history[-1]
    assert classic.cost_history[-1] > 1e-6
    assert classic.cost_history[-1] > 1e6 * local.cost_history[-1]
    # and it moves the full V along every edge
    assert classic.bytes_per_iter > local.bytes_per_iter * 4


def test_same_init_as_classical():
    Y = demo_data(3)
    a = dgd_local(Y, 4, n_nodes=5, topology="complete", max_iter=0, tol=0, random_state=3,
                  solver="gradient")
    b = dgd(Y, 4, n_nodes=5, topology="complete", max_iter=0, random_state=3)
    assert a.cost_history[0] == pytest.approx(b.cost_history[0], rel=1e-12)


# -------------------------------------------------------------------------- noisy data / polish
@pytest.mark.parametrize("solver,iters,bound", [("gradient", 3000, 1.005), ("als", 300, 1.02)])
def test_noisy_polish_close_to_svd(solver, iters, bound):
    """Noisy full-rank data: the paper's gradient iteration ends within 0.5 % of the optimum
    after 3000 iterations; solver="als" within 2 % after 300 (its per-node metric biases the
    consensus point by ~1-1.5 % on these 20-column node blocks, see dgd_local's Notes)."""
    Y = noisy_data()
    opt = centralized(Y, 5, method="svd")
    assert opt.objective == pytest.approx(
        np.sum(np.linalg.svd(Y, compute_uv=False)[5:] ** 2), rel=1e-10)
    kw = dict(n_nodes=8, topology="ring", weights="metropolis", max_iter=iters, tol=0,
              random_state=0, solver=solver)
    # with noise the copies drift apart slowly (O(mu) disagreement): run a fixed budget
    res = dgd_local(Y, 5, polish=True, **kw)
    assert res.polished and res.solver == solver
    assert res.objective <= bound * opt.objective
    # without the polish the copies keep an O(mu) disagreement
    raw = dgd_local(Y, 5, **kw)
    assert raw.consensus_error > 1e-12
    assert res.objective <= raw.objective * (1 + 1e-12)
    # subspace of U equals the top-5 left singular subspace
    angles = scipy.linalg.subspace_angles(res.U, opt.U)
    assert np.max(angles) < 0.05


def test_decaying_step_shrinks_disagreement():
    Y = noisy_data(1)
    kw = dict(n_nodes=6, topology="ring", weights="metropolis", max_iter=2000, tol=0.0,
              random_state=1)
    const = dgd_local(Y, 5, **kw)
    decay = dgd_local(Y, 5, step_schedule="inverse", step_decay=5e-3, **kw)
    assert decay.consensus_error < 0.5 * const.consensus_error


def test_centralized_gd_reaches_svd_optimum():
    Y = noisy_data(2, n=30, m=60, r=3, noise=0.05)
    opt = centralized(Y, 3)
    gd = centralized(Y, 3, method="gd", max_iter=20000, tol=1e-8)
    assert gd.converged
    assert gd.objective == pytest.approx(opt.objective, rel=1e-4)


# ------------------------------------------------------------------------------------- sketch
def test_sketch_matches_centralized_compressed():
    rng = np.random.default_rng(5)
    n, m, r = 600, 120, 4
    X = rng.standard_normal((n, r)) @ rng.standard_normal((r, m)) + 0.05 * rng.standard_normal(
        (n, m))
    import dask.array as da

    sk = cf.sketch(da.from_array(X, chunks=(200, 30)), n_components=60, kind="gaussian", seed=3)
    ref = centralized(sk, r)                      # truncated SVD of the sketch
    res = dgd_local(sk, r, n_nodes=4, topology="complete", weights="metropolis", max_iter=4000,
                    tol=0, polish=True, random_state=0)
    # node blocks are the sketch's column chunks: each node sketched its own 30 samples
    assert res.col_ranges == ((0, 30), (30, 60), (60, 90), (90, 120))
    assert res.objective <= 1.005 * ref.objective
    assert np.max(scipy.linalg.subspace_angles(res.U, ref.U)) < 1e-2
    # and the recovered V spans the same sample subspace as the compressed SVD's
    assert np.max(scipy.linalg.subspace_angles(res.V, ref.V)) < 1e-2


# -------------------------------------------------------------------------- distributed path
def _assert_bitwise(remote, local):
    """The distributed run gave exactly the in-process numbers."""
    np.testing.assert_array_equal(remote.cost_history, local.cost_history)
    np.testing.assert_array_equal(remote.consensus_history, local.consensus_history)
    np.testing.assert_array_equal(remote.history_iters, local.history_iters)
    np.testing.assert_array_equal(remote.U, local.U)
    np.testing.assert_array_equal(remote.V, local.V)
    for a, b in zip(remote.U_nodes, local.U_nodes, strict=True):
        np.testing.assert_array_equal(a, b)
    assert remote.objective == local.objective
    assert remote.n_iter == local.n_iter and remote.converged == local.converged


@pytest.mark.parametrize("mode", ["workers", "tasks"])
def test_cluster_same_numbers_as_in_process(cluster_client, mode):
    Y = demo_data(2)
    kw = dict(n_nodes=6, topology="erdos-renyi", p=0.4, max_iter=120, tol=0.0,
              report_every=20, anchor_every=60, random_state=2)
    local = dgd_local(Y, 6, client=None, **kw)
    remote = dgd_local(Y, 6, client=cluster_client, mode=mode, **kw)
    workers = set(cluster_client.scheduler_info(n_workers=-1)["workers"])
    assert set(remote.workers) <= workers and len(set(remote.workers)) == 2
    assert remote.step == local.step
    if mode == "tasks":
        # solver="als" in one task per node: equal to float rounding (the copies arrive
        # deserialized; the small LAPACK solves are not bitwise across that)
        np.testing.assert_allclose(remote.cost_history, local.cost_history, rtol=1e-12)
        np.testing.assert_allclose(remote.U, local.U, rtol=1e-10, atol=1e-12)
        # the gradient solver (the paper's iteration) stays bitwise
        kw = {**kw, "solver": "gradient"}
        local = dgd_local(Y, 6, client=None, **kw)
        remote = dgd_local(Y, 6, client=cluster_client, mode=mode, **kw)
        assert remote.step == local.step              # the power iteration gave the same mu
    _assert_bitwise(remote, local)
    assert remote.bytes_cross_worker_per_iter > 0
    assert remote.bytes_cross_worker_per_iter < remote.bytes_per_iter
    if mode == "workers":
        # polish on the cluster
        pol = dgd_local(Y, 6, client=cluster_client, polish=True, mode=mode, **kw)
        pol_local = dgd_local(Y, 6, client=None, polish=True, **kw)
        _assert_bitwise(pol, pol_local)


def test_cluster_blas_threads_limited_inside_worker_tasks():
    """mode="workers": inside the period tasks BLAS is limited to cores // worker threads,
    whatever the worker process had before (here 2 BLAS threads set in the worker, with two
    task threads per worker, so each task owns one core on a 2-core machine)."""
    import dask
    import threadpoolctl
    from distributed import Client, LocalCluster
    from threadpoolctl import ThreadpoolController, threadpool_info

    from cfact_dask._runtime.blas import owned_cores

    with dask.config.set({"distributed.worker.daemon": False}), \
            LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                         dashboard_address=None) as cl, Client(cl) as c:

        def probe(set_to=None):
            if set_to is not None:  # what a worker environment of 2 BLAS threads would give
                ThreadpoolController().limit(limits=set_to, user_api="blas")
                release = getattr(threadpoolctl.OpenBLASController,
                                  "clear_controlling_thread", None)
                if release is not None:  # threadpoolctl >= 3.6: let other threads set it
                    release()
            blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
            return max(blas), owned_cores()

        before, owned = c.submit(probe, 2, pure=False).result()
        assert before == 2
        Y = demo_data(0, n=30, m=80, r=4)
        res = dgd_local(Y, 4, n_nodes=4, max_iter=20, tol=0, report_every=10, client=c)
        assert res.blas_threads == owned == max(1, (os.cpu_count() or 1) // 2)
        assert c.submit(probe, pure=False).result()[0] == owned   # and it stays in the worker
        local = dgd_local(Y, 4, n_nodes=4, max_iter=20, tol=0, report_every=10)
        np.testing.assert_allclose(res.U, local.U, rtol=1e-9, atol=1e-9)


def test_cluster_workers_mode_stop_diverge_resume(cluster_client, tmp_path):
    """mode="workers": a stop between anchors (a queued period is dropped), convergence by
    tol, divergence (the peers' waits are aborted, the cluster stays usable) and a checkpoint
    resume all give the in-process numbers bitwise."""
    Y = demo_data(0, n=30, m=80, r=4)
    c = cluster_client
    # callback stop at 30: the period 30..40 is already queued and gets dropped
    kw = dict(n_nodes=5, topology="star", max_iter=500, tol=0, report_every=10, random_state=0)

    def stop_at_30(state):
        return state.iteration >= 30

    _assert_bitwise(dgd_local(Y, 4, client=c, callback=stop_at_30, **kw),
                    dgd_local(Y, 4, callback=stop_at_30, **kw))
    # convergence by tol
    kw = dict(n_nodes=4, topology="complete", weights="metropolis", max_iter=2000, tol=1e-12,
              random_state=0)
    remote = dgd_local(Y, 4, client=c, **kw)
    assert remote.converged and remote.n_iter < 2000
    _assert_bitwise(remote, dgd_local(Y, 4, **kw))
    # divergence: an error, never NaN results; the workers are free again afterwards
    with pytest.raises(DivergenceError, match="smaller step"):
        dgd_local(Y, 4, n_nodes=4, topology="ring", weights="metropolis", step=1.0, tol=0,
                  max_iter=200, client=c)
    # checkpoint on the cluster, resume on the cluster == uninterrupted in-process run
    kw = dict(n_nodes=4, topology="ring", weights="metropolis", tol=0.0, report_every=10,
              random_state=6)
    full = dgd_local(Y, 4, max_iter=120, **kw)
    store = str(tmp_path / "ck.zarr")
    dgd_local(Y, 4, max_iter=50, checkpoint=dict(store=store, every=30), client=c, **kw)
    _assert_bitwise(dgd_local(Y, 4, max_iter=120, checkpoint=dict(store=store, every=30),
                              client=c, **kw), full)
    # nothing is left behind on the workers
    def leftovers(dask_worker):
        ex = dask_worker.plugins["cfact-dgd-exchange"].exchange
        return len(ex.groups) + len(ex.boxes)

    assert set(c.run(leftovers).values()) == {0}


def test_cluster_zarr_input_chunk_aligned(cluster_client, tmp_path):
    import zarr

    Y = demo_data(4, n=30, m=90, r=3)
    z = zarr.create_array(str(tmp_path / "y.zarr"), shape=Y.shape, chunks=(30, 15),
                          dtype="f8")
    z[...] = Y
    res = dgd_local(str(tmp_path / "y.zarr"), 3, n_nodes=3, topology="ring",
                    weights="metropolis", max_iter=50, tol=0, client=cluster_client,
                    random_state=0)
    assert res.col_ranges == ((0, 30), (30, 60), (60, 90))
    local = dgd_local(Y, 3, n_nodes=3, topology="ring", weights="metropolis", max_iter=50,
                      tol=0, random_state=0)
    np.testing.assert_allclose(res.cost_history, local.cost_history, rtol=1e-12)


def _kill_one_worker_at(client, iteration):
    done = []

    def cb(state):
        if state.iteration >= iteration and not done:
            pids = client.run(os.getpid)
            victim = sorted(pids)[-1]
            os.kill(pids[victim], signal.SIGKILL)
            done.append(victim)
        return False

    return cb, done


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["workers", "tasks"])
def test_killed_worker_run_continues_and_converges(mode):
    from distributed import Client, LocalCluster

    Y = demo_data(1, n=30, m=120, r=4)
    # tasks mode is bitwise for the gradient solver only (see
    # test_cluster_same_numbers_as_in_process); the replay is what is tested here
    kw = dict(n_nodes=4, topology="ring", weights="metropolis", max_iter=200, tol=0.0,
              report_every=10, anchor_every=50, random_state=1,
              solver="gradient" if mode == "tasks" else "als")
    ref = dgd_local(Y, 4, client=None, **kw)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit="1GiB") as cluster, \
            Client(cluster, set_as_default=False) as client:
        cb, killed = _kill_one_worker_at(client, 120)
        res = dgd_local(Y, 4, client=client, callback=cb, mode=mode, **kw)
    assert killed, "the callback never killed a worker"
    assert res.n_restarts >= 1
    assert killed[0] not in res.workers
    _assert_bitwise(res, ref)


# --------------------------------------------------------------------------- checkpoint/resume
def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    Y = demo_data(6, n=30, m=80, r=4)
    kw = dict(n_nodes=4, topology="ring", weights="metropolis", tol=0.0, report_every=10,
              random_state=6)
    full = dgd_local(Y, 4, max_iter=200, **kw)
    store = str(tmp_path / "ck.zarr")
    first = dgd_local(Y, 4, max_iter=90, checkpoint=dict(store=store, every=30), **kw)
    assert first.n_iter == 90
    resumed = dgd_local(Y, 4, max_iter=200, checkpoint=dict(store=store, every=30), **kw)
    assert resumed.n_iter == 200
    np.testing.assert_array_equal(resumed.U, full.U)
    np.testing.assert_array_equal(resumed.V, full.V)
    np.testing.assert_array_equal(resumed.cost_history, full.cost_history)
    np.testing.assert_array_equal(resumed.history_iters, full.history_iters)
    np.testing.assert_array_equal(resumed.consensus_history, full.consensus_history)
    with pytest.raises(ResumeError, match="rank"):
        dgd_local(Y, 3, max_iter=200, checkpoint=dict(store=store, every=30), **kw)


# ------------------------------------------------------------------------ steps, errors, misc
def test_auto_step_is_tenth_of_sigma1():
    Y = demo_data(0)
    res = dgd_local(Y, 10, n_nodes=5, topology="complete", max_iter=0, tol=0, solver="gradient")
    assert res.step == pytest.approx(0.1 / np.linalg.norm(Y, 2), rel=1e-2)
    assert res.step >= 0.1 / np.linalg.norm(Y, 2) * (1 - 1e-12)   # power iteration: sigma <= s1


def test_divergence_raises_with_advice():
    with pytest.raises(DivergenceError, match="smaller step"):
        dgd_local(demo_data(0), 10, max_iter=3000, **{**DEMO, "step": 1e-1})


def test_max_iter_warns():
    with pytest.warns(ConvergenceWarning, match="max_iter=20"):
        res = dgd_local(demo_data(0), 10, n_nodes=5, topology="complete", max_iter=20,
                        tol=1e-14)
    assert not res.converged and res.n_iter == 20
    assert np.all(np.isfinite(res.U))


def test_callback_stops_and_progress_is_logged(caplog):
    calls = []

    def cb(state):
        calls.append(state.iteration)
        return state.iteration >= 30

    with caplog.at_level(logging.DEBUG, logger="cfact_dask.factor.consensus._engine"):
        res = dgd_local(demo_data(0), 5, n_nodes=5, topology="star", max_iter=500, tol=0,
                        report_every=10, callback=cb)
    assert calls == [10, 20, 30]
    assert res.n_iter == 30 and len(res.cost_history) == 31
    lines = [r.getMessage() for r in caplog.records if "dgd-local iter" in r.getMessage()]
    assert len(lines) == 3 and "consensus" in lines[-1]


def test_node_blocks_list_input():
    Y = demo_data(0, n=20, m=60, r=3)
    blocks = [Y[:, :10], Y[:, 10:35], Y[:, 35:]]
    res = dgd_local(blocks, 3, topology="complete", max_iter=30, tol=0)
    assert res.col_ranges == ((0, 10), (10, 35), (35, 60))
    assert [v.shape for v in res.V_blocks] == [(10, 3), (25, 3), (25, 3)]
    whole = dgd_local(Y, 3, n_nodes=3, topology="complete", max_iter=30, tol=0)
    assert whole.col_ranges != res.col_ranges        # even split differs; data the same


@pytest.mark.parametrize("call,exc,match", [
    (lambda Y: dgd_local(Y, 0, n_nodes=4), RankError, "rank=0"),
    (lambda Y: dgd_local(Y, 30, n_nodes=4), RankError, "1 <= rank <= 20"),
    (lambda Y: dgd_local(Y, 2, n_nodes=100), ConfigError, "n_nodes=100"),
    (lambda Y: dgd_local(Y, 2, n_nodes=10, topology="ring", lazy=False), ConfigError,
     "lazy=True"),
    (lambda Y: dgd_local(Y, 2, n_nodes=4, step=-1.0), ConfigError, "positive float"),
    (lambda Y: dgd_local(Y, 2, n_nodes=4, step="big"), ConfigError, "'auto'"),
    (lambda Y: dgd_local(Y, 2, n_nodes=4, step_schedule="cosine"), ConfigError, "schedule"),
    (lambda Y: dgd_local(Y, 2, n_nodes=4, dtype=int), ConfigError, "float dtype"),
    (lambda Y: dgd_local(Y, 2, n_nodes=4, tol=-1), ConfigError, "tol"),
    (lambda Y: dgd_local(np.zeros((3, 4, 5)), 2), InputError, "3 dimensions"),
    (lambda Y: dgd_local([Y[:5], Y[:6]], 2), InputError, "different numbers of rows"),
    (lambda Y: centralized(Y, 2, method="als"), ConfigError, "'svd' or 'gd'"),
    (lambda Y: dgd_local(Y, 2, n_nodes=4, solver="newton"), ConfigError, "solver must be"),
    (lambda Y: dgd_local(Y, 2, n_nodes=4, solver="als", step=1e-3), ConfigError,
     "solver='als' takes no step"),
    (lambda Y: dgd_local(Y, 2, n_nodes=4, consensus_weight=0.0), ConfigError,
     "consensus_weight"),
])
def test_errors(call, exc, match):
    Y = demo_data(0, n=20, m=60, r=3)
    with pytest.raises(exc, match=match):
        call(Y)


def test_nan_input_is_refused():
    Y = demo_data(0, n=20, m=60, r=3)
    Y[3, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        dgd_local(Y, 2, n_nodes=4, topology="complete")


@pytest.mark.parametrize("chunks,J,expect", [
    ((10, 10, 10, 10), 2, ((0, 20), (20, 40))),
    ((10, 10, 10, 10), 4, ((0, 10), (10, 20), (20, 30), (30, 40))),
    ((25, 5, 5, 5), 2, ((0, 25), (25, 40))),
    ((40,), 4, ((0, 10), (10, 20), (20, 30), (30, 40))),
    ((7, 7, 7), 3, ((0, 7), (7, 14), (14, 21))),
])
def test_split_columns(chunks, J, expect):
    assert split_columns(chunks, J) == expect


def test_float32_runs():
    res = dgd_local(demo_data(0, n=20, m=40, r=2), 2, n_nodes=4, topology="complete",
                    max_iter=50, tol=0, dtype=np.float32)
    assert res.U.dtype == np.float32 and res.V.dtype == np.float32


# ---------------------------------------------------------------------------------------- CLI
def test_cli_factor_dgd(tmp_path):
    import json

    import zarr
    from click.testing import CliRunner

    from cfact_dask.cli.consensus import factor_dgd

    Y = demo_data(0, n=20, m=60, r=3)
    z = zarr.create_array(str(tmp_path / "in.zarr"), shape=Y.shape, chunks=(20, 15), dtype="f8")
    z[...] = Y
    out = str(tmp_path / "out.zarr")
    args = [str(tmp_path / "in.zarr"), "--method", "dgd-local", "--nodes", "4", "--topology",
            "ring", "--rank", "3", "--max-iter", "3000", "--tol", "1e-12", "--output", out,
            "--json", "--quiet"]
    r = CliRunner().invoke(factor_dgd, args)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["n_nodes"] == 4 and summary["relative_error"] < 1e-4
    g = zarr.open_group(out, path="dgd", mode="r")
    assert g["U"].shape == (20, 3) and g["V"].shape == (60, 3)
    assert g.attrs["cfact"]["complete"] is True
    # a second run refuses to overwrite; a bad rank is a clean error, not a traceback
    r2 = CliRunner().invoke(factor_dgd, args)
    assert r2.exit_code != 0 and "--overwrite" in r2.output
    r3 = CliRunner().invoke(factor_dgd, [str(tmp_path / "in.zarr"), "--rank", "99"])
    assert r3.exit_code != 0 and "rank=99" in r3.output
    # --solver: the paper's gradient iteration on request; als refuses a numeric step
    out2 = str(tmp_path / "out2.zarr")
    r4 = CliRunner().invoke(factor_dgd, [*args[:-4], "--output", out2, "--json", "--quiet",
                                         "--solver", "gradient", "--max-iter", "50", "--tol", "0"])
    assert r4.exit_code == 0, r4.output
    assert json.loads(r4.output)["step"] > 0           # the gradient solver's auto step
    r5 = CliRunner().invoke(factor_dgd, [str(tmp_path / "in.zarr"), "--rank", "3",
                                         "--solver", "als", "--step", "0.001"])
    assert r5.exit_code != 0 and "takes no step" in r5.output


def test_gather_of_a_result_whose_worker_died_does_not_hang():
    """A worker dying after its task finished but before the client fetched the result makes
    distributed reschedule the key; pinned to the dead worker it would never run again and a
    plain ``client.gather`` would wait forever. The engine's gather turns it into a worker loss
    (the run then replays from its anchor)."""
    import time
    from types import SimpleNamespace

    from distributed import Client, LocalCluster

    from cfact_dask.factor.consensus._runtime import WorkerLost as _WorkerLost
    from cfact_dask.factor.consensus._runtime import gather_checked as _gather_checked

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit="1GiB") as cluster, \
            Client(cluster, set_as_default=False) as client:
        addr = sorted(client.scheduler_info()["workers"])[0]
        fut = client.submit(np.ones, 3, workers=[addr], allow_other_workers=False, pure=False)
        fut.result()
        pid = client.run(os.getpid, workers=[addr])[addr]
        rt = SimpleNamespace(client=client, node_worker=[addr], alive=lambda: list(
            client.scheduler_info(n_workers=-1)["workers"]))
        (got,) = _gather_checked(rt, [fut])
        np.testing.assert_array_equal(got, np.ones(3))
        os.kill(pid, signal.SIGKILL)
        t0 = time.perf_counter()
        with pytest.raises(_WorkerLost):
            _gather_checked(rt, [fut], poll=0.2)
        assert time.perf_counter() - t0 < 60
