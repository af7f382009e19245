"""The pass loops of :func:`~cfact_dask.embed.lp.lp_lowrank`: IRLS (row-wise and entrywise) and
the Löwner ellipsoid, with checkpoints.

The solver state lives on the client (a D × k basis, or the ellipsoid's D × D axes) and every
iteration reads the rows once (:func:`~._rows.reduce_rows`). With a checkpoint
(:class:`~cfact_dask._runtime.checkpoint.Checkpoint`) the state after every ``every``-th
iteration is saved — the next iterate, the best one so far and the histories, all float64, so a
resumed run continues bitwise where the interrupted one would have (the passes' sums are
bitwise reproducible for a given chunking) and skips the initial ``AᵀA`` pass.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np
import scipy.linalg

from .._runtime.checkpoint import Checkpoint, CheckpointState
from ..errors import NonFiniteError
from ._ellipsoid import apply_cuts, g_from_axes, orthogonal_axes
from ._lp_kernels import (
    HEAD,
    ellipsoid_kernel,
    entrywise_kernel,
    eval_kernel,
    irls_kernel,
    irls_subspace_kernel,
    scatter_kernel,
    top_eigvecs,
)
from ._rows import fix_signs, reduce_rows

__all__ = ["LpSolver", "ritz_step"]

logger = logging.getLogger(__name__)


def _prof(out: np.ndarray) -> np.ndarray:
    return np.asarray(out[3:HEAD], np.float64)


class LpSolver:
    """The pass loop shared by the solvers (state kept on the client, data read per pass).

    Parameters
    ----------
    x : dask.array.Array
        The rows (n × D, whole rows per chunk).
    source : str
    k : int
    p : float
    client, callback, check_finite
        As for :func:`~cfact_dask.embed.lp.lp_lowrank`.
    checkpoint : Checkpoint, optional
        Save the state every ``checkpoint.every`` iterations and resume from the last saved one.
    """

    def __init__(self, x: da.Array, source: str, k: int, p: float, client: Any,
                 callback: Callable[[dict[str, Any]], bool | None] | None,
                 check_finite: bool, checkpoint: Checkpoint | None = None) -> None:
        self.x, self.source, self.k, self.p, self.client = x, source, k, p, client
        self.callback = callback
        self.check_finite = check_finite
        self.ckpt = checkpoint
        self.passes = 0
        self.resumed_from = 0
        self._checked = False
        self.n, self.D = (int(s) for s in x.shape)

    def reduce(self, func: Callable[..., np.ndarray], *args: Any) -> np.ndarray:
        first = not self._checked
        out = reduce_rows(self.x, func, args, self.client,
                          check_finite=first and self.check_finite, source=self.source)
        self._checked = True
        self.passes += 1
        if not np.all(np.isfinite(out)):
            raise NonFiniteError(
                f"a pass over {self.source} produced non-finite sums (overflow); rescale the data "
                f"or convert it to float64"
            )
        return out

    def notify(self, it: int, obj: float, basis: np.ndarray, t0: float) -> bool:
        dt = time.perf_counter() - t0
        logger.debug("lp_lowrank pass %d: objective %.6g (%.2fs)", it, obj, dt)
        if self.callback is None:
            return False
        return bool(self.callback({"iteration": it, "objective": obj, "basis": basis,
                                   "seconds": dt}))

    def svd_pass(self) -> tuple[np.ndarray, float]:
        """``AᵀA`` and ``‖A‖_F²`` in one pass (the p = 2 solution and the IRLS start)."""
        out = self.reduce(scatter_kernel)
        return out[1:].reshape(self.D, self.D), float(out[0])

    # ------------------------------------------------------------------ checkpoints
    def _load(self) -> CheckpointState | None:
        st = self.ckpt.load() if self.ckpt is not None else None
        if st is not None:
            self.resumed_from = st.iteration
            self.passes = int(st.arrays["passes"][0])
            logger.info("lp_lowrank: resuming after iteration %d", st.iteration)
        return st

    def _save(self, it: int, arrays: dict[str, Any], history: dict[str, list[float]]) -> None:
        if self.ckpt is not None and self.ckpt.should_save(it):
            self.ckpt.save(it, {**arrays, "passes": np.array([self.passes], np.int64)}, history)

    @staticmethod
    def _best_arrays(best: tuple[Any, ...]) -> dict[str, Any]:
        return {"best_scalars": np.array([best[0], best[2]], np.float64), "best_V": best[1],
                "best_profile": np.asarray(best[3], np.float64)}

    @staticmethod
    def _best_from(a: dict[str, np.ndarray]) -> tuple[float, np.ndarray, float, np.ndarray]:
        s = a["best_scalars"]
        return float(s[0]), a["best_V"], float(s[1]), a["best_profile"]

    # ------------------------------------------------------------------ IRLS (row-wise)
    def irls(self, max_iter: int, tol: float, rel_delta: float, init: Any, select: str,
             update: str = "eigh", oversample: int = 32):
        k, p, D = self.k, self.p, self.D
        t0 = time.perf_counter()
        m = min(D, k + oversample)
        Q: np.ndarray | None = None
        st = self._load()
        if st is not None:
            a = st.arrays
            V, delta = a["V"], float(a["delta"][0])
            Q = a.get("Q") if update == "subspace" else None
            hist = [float(v) for v in st.history.get("objective", [])]
            best = self._best_from(a)
            start = st.iteration + 1
        else:
            if isinstance(init, np.ndarray):
                V = fix_signs(np.linalg.qr(np.asarray(init, np.float64))[0])
                n2 = None
                if update == "subspace":
                    # pad the start with directions orthogonal to it (deterministic)
                    Q = np.linalg.qr(np.concatenate([V, np.eye(D)[:, : m - k]], axis=1))[0]
                    Q[:, :k] = V
            else:
                S, n2 = self.svd_pass()
                w, V = top_eigvecs(S, k)
                if update == "subspace":
                    Q = top_eigvecs(S, m)[1]
                    V = Q[:, :k]
                if p == 2.0:
                    d2 = max(float(np.trace(S) - w.sum()), 0.0)
                    self.notify(0, d2, V, t0)
                    rel = math.sqrt(d2 / n2) if n2 > 0 else 0.0
                    return V, [d2], rel, 0, True, None, {"objective": d2, "delta": 0.0}
            if n2 is None:
                n2 = float(self.reduce(eval_kernel, V, p)[2])
            delta = rel_delta * math.sqrt(max(n2, 1e-300) / self.n)
            hist = []
            best = (math.inf, V, 0.0, np.zeros(HEAD - 3))
            start = 1
        converged = False
        it = start - 1
        for it in range(start, max_iter + 1):
            t0 = time.perf_counter()
            if Q is None:
                out = self.reduce(irls_kernel, V, p, delta)
            else:
                out = self.reduce(irls_subspace_kernel, Q, k, p, delta)
            best, converged = self._record(it, out, V, t0, hist, best, select, tol)
            if converged:
                break
            if Q is None:
                S = out[HEAD:].reshape(self.D, self.D)
                _, V = top_eigvecs(S, k)
            else:
                V, Q = ritz_step(Q, out[HEAD:].reshape(self.D, Q.shape[1]), k)
            state = {"V": V, "delta": np.array([delta]), **self._best_arrays(best)}
            if Q is not None:
                state["Q"] = Q
            self._save(it, state, {"objective": hist})
        obj, V, rel, prof = best
        return V, hist, rel, it, converged or max_iter == 0, None, {
            "objective": obj, "delta": delta, "update": update, "profile": prof.tolist()}

    def _record(self, it: int, out: np.ndarray, V: np.ndarray, t0: float, hist: list[float],
                best: tuple[float, np.ndarray, float, np.ndarray], select: str, tol: float
                ) -> tuple[tuple[float, np.ndarray, float, np.ndarray], bool]:
        """Book-keeping of one IRLS iteration from its reduced ``out = (objective, residual²,
        norm², profile, ...)``: history, best iterate (or the last, ``select="final"``),
        progress callback; returns ``(best, stop)`` where ``stop`` is convergence (relative
        change of the objective ≤ ``tol``) or the callback asking to stop."""
        obj, r2, n2 = float(out[0]), float(out[1]), float(out[2])
        hist.append(obj)
        rel = math.sqrt(r2 / n2) if n2 > 0 else 0.0
        if obj < best[0] or select == "final":
            best = (obj, V, rel, _prof(out))
        stop = self.notify(it, obj, V, t0)
        if len(hist) > 1 and abs(hist[-2] - obj) <= tol * max(abs(hist[-2]), 1e-300):
            return best, True
        return best, bool(stop)

    # ------------------------------------------------------------------ IRLS (entrywise)
    def entrywise(self, max_iter: int, tol: float, rel_delta: float, init: Any, select: str):
        k, p, D = self.k, self.p, self.D
        n_inner = 3
        st = self._load()
        if st is not None:
            a = st.arrays
            V, delta = a["V"], float(a["delta"][0])
            hist = [float(v) for v in st.history.get("objective", [])]
            best = self._best_from(a)
            start = st.iteration + 1
        else:
            if isinstance(init, np.ndarray):
                V = np.linalg.qr(np.asarray(init, np.float64))[0]
                n2 = float(self.reduce(eval_kernel, V, 2.0)[2])
            else:
                S, n2 = self.svd_pass()
                _, V = top_eigvecs(S, k)
            delta = rel_delta * math.sqrt(max(n2, 1e-300) / (self.n * D))
            hist = []
            best = (math.inf, V, 0.0, np.zeros(HEAD - 3))
            start = 1
        converged = False
        it = start - 1
        for it in range(start, max_iter + 1):
            t0 = time.perf_counter()
            out = self.reduce(entrywise_kernel, V, p, delta, n_inner)
            best, converged = self._record(it, out, V, t0, hist, best, select, tol)
            if converged:
                break
            N = out[HEAD : HEAD + D * k * k].reshape(D, k, k)
            b = out[HEAD + D * k * k :].reshape(D, k)
            ridge = 1e-12 * max(float(np.trace(N.sum(0))), 1e-300) / k * np.eye(k)
            Vn = np.linalg.solve(N + ridge, b[..., None])[..., 0]
            V = fix_signs(np.linalg.qr(Vn)[0])
            self._save(it, {"V": V, "delta": np.array([delta]), **self._best_arrays(best)},
                       {"objective": hist})
        obj, V, rel, prof = best
        return V, hist, rel, it, converged or max_iter == 0, None, {
            "objective": obj, "delta": delta, "n_inner": n_inner, "profile": prof.tolist()}

    # ------------------------------------------------------------------ Löwner ellipsoid
    def ellipsoid(self, max_iter: int, tol: float, select: str):
        k, p, D = self.k, self.p, self.D
        t0 = time.perf_counter()
        beta = 1.0 / math.sqrt(D + 1.0)
        st = self._load()
        if st is not None:
            a = st.arrays
            Lax, s = a["axes"], a["semi_axes"]
            hist = [float(v) for v in st.history.get("objective", [])]
            logvol = [float(v) for v in st.history.get("logvol", [])]
            best = (*self._best_from(a), a["best_axes"])
            n_cuts_total = int(a["cuts"][0])
            start = st.iteration + 1
        else:
            S, n2 = self.svd_pass()
            S = 0.5 * (S + S.T)
            lam, U = scipy.linalg.eigh(S)
            lam = lam[::-1]
            U = U[:, ::-1]
            # E0 = {x : ‖Ax‖₂ ≤ 1} ⊇ K for p ≤ 2; ridge keeps it bounded for rank-deficient A
            ridge = max(lam[0], 1e-300) * 1e-12
            s = 1.0 / np.sqrt(np.maximum(lam, 0.0) + ridge)  # semi-axes, ascending
            Lax = U * s  # columns: the axis vectors of E (E = {L z : ‖z‖ ≤ 1})
            V0 = fix_signs(U[:, :k].copy())
            d2 = max(float(np.sum(lam) - np.sum(lam[:k])), 0.0)
            rel0 = math.sqrt(d2 / n2) if n2 > 0 else 0.0
            logvol = [float(np.sum(np.log(s)))]
            if p == 2.0:
                # K is E0 itself: no axis point can violate; the answer is the SVD
                self.notify(0, d2, V0, t0)
                return V0, [d2], rel0, 0, True, g_from_axes(Lax), {
                    "objective": d2, "cuts": 0, "logvol": logvol, "certified": True}
            hist = []
            best = (math.inf, V0, rel0, np.zeros(HEAD - 3), Lax)
            n_cuts_total = 0
            Lax, s = orthogonal_axes(Lax)
            start = 1
        converged = certified = False
        it = start - 1
        for it in range(start, max_iter + 1):
            t0 = time.perf_counter()
            # Lax holds E's orthogonal semi-axes (set before the loop and after every cut)
            order = np.argsort(s)  # shortest axes first: the candidate top-k of G
            V = fix_signs(Lax[:, order[:k]] / s[order[:k]])
            out = self.reduce(ellipsoid_kernel, Lax, V, p)
            fp = out[:D]
            Gr = out[D : D + D * D].reshape(D, D)
            obj, dd2, nn2 = (float(v) for v in out[D + D * D : D + D * D + 3])
            hist.append(obj)
            rel = math.sqrt(dd2 / nn2) if nn2 > 0 else 0.0
            if obj < best[0] or select == "final":
                best = (obj, V, rel, np.asarray(out[D + D * D + 3:]), Lax.copy())
            stop = self.notify(it, obj, V, t0)
            f = fp ** (1.0 / p)  # ‖A axis_i‖_p
            if not np.any(beta * f > 1.0 + 1e-12):
                converged = certified = True  # E/√(D(D+1)) ⊆ K ⊆ E
                break
            # every gradient gives a valid slab K ⊆ {|gᵀx| ≤ 1}: apply each one deep enough to
            # shrink the volume, most violated axis first (same pass, no extra read)
            Gs = Gr / np.maximum(f, 1e-300)[None, :] ** (p - 1.0)
            Lax, n_cuts = apply_cuts(Lax, Gs, np.argsort(-f), D)
            n_cuts_total += n_cuts
            Lax, s = orthogonal_axes(Lax)
            logvol.append(float(np.sum(np.log(s))))
            if stop or n_cuts == 0:
                converged = True
                break
            if abs(logvol[-2] - logvol[-1]) <= tol * max(abs(logvol[-2]), 1.0):
                converged = True
                break
            self._save(it, {"axes": Lax, "semi_axes": s, "cuts": np.array([n_cuts_total]),
                            "best_axes": best[4], **self._best_arrays(best)},
                       {"objective": hist, "logvol": logvol})
        obj, V, rel, prof, Lbest = best
        return V, hist, rel, it, converged or max_iter == 0, g_from_axes(Lbest), {
            "objective": obj, "cuts": n_cuts_total, "logvol": logvol, "certified": certified,
            "profile": prof.tolist()}


def ritz_step(Q: np.ndarray, Y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One block power step with Rayleigh–Ritz for the top-k eigenvectors of ``S`` given
    ``Y = S Q``: the Ritz vectors of ``QᵀSQ`` become the new basis, and the next search space
    adds the dominant part of ``Y`` outside them (the power / Krylov direction)."""
    m = Q.shape[1]
    T = Q.T @ Y
    T = 0.5 * (T + T.T)
    _, U = scipy.linalg.eigh(T)
    V = fix_signs(Q @ U[:, ::-1][:, :k])
    V = np.linalg.qr(V)[0] * np.sign(np.diag(np.linalg.qr(V)[1]))[None, :]
    V = fix_signs(V)
    R = Y - V @ (V.T @ Y)
    R = R - V @ (V.T @ R)  # second Gram–Schmidt sweep for orthogonality
    Ur, _, _ = np.linalg.svd(R, full_matrices=False)
    Qn = np.concatenate([V, Ur[:, : m - k]], axis=1)
    Qn = np.linalg.qr(Qn)[0]
    Qn[:, :k] = V  # keep the basis itself as the first k columns (it defines the weights)
    return V, Qn
