"""The Löwner-ellipsoid geometry of :func:`~cfact_dask.embed.lp.lp_lowrank` (method "ellipsoid").

An ellipsoid is held by its axes ``E = {L z : ‖z‖ ≤ 1}`` (D × D, on the client); every pass over
the rows gives one slab ``K ⊆ {|gᵀx| ≤ 1}`` per axis, applied here as shallow cuts (the
minimum-volume ellipsoid containing ``E ∩ slab``), in compact form so a cut costs O(D m).

References
----------
.. [1] M. Tukan, A. Maalouf, M. Weksler, D. Feldman. "Compressed deep networks: goodbye SVD, hello
   robust low-rank approximation". arXiv:2009.05647, 2020.
.. [2] M. Grötschel, L. Lovász, A. Schrijver. "Geometric Algorithms and Combinatorial
   Optimization". Springer, 1988 (shallow cuts of the ellipsoid method).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["CUT_BLOCK", "apply_cuts", "g_from_axes", "orthogonal_axes", "shallow_cut"]


def orthogonal_axes(L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-express ``E = {L z : ‖z‖ ≤ 1}`` by its orthogonal semi-axes ``U diag(s)`` (SVD of L),
    which keeps the square-root factor well conditioned across many rank-one updates."""
    U, s, _ = np.linalg.svd(L, full_matrices=False)
    s = np.maximum(s, s.max() * 1e-15)
    return U * s, s


CUT_BLOCK = 64  # cuts accumulated in the compact form before they are applied to L


def apply_cuts(L: np.ndarray, G: np.ndarray, order: np.ndarray, D: int
                ) -> tuple[np.ndarray, int]:
    """Apply the slab cuts ``{|g_iᵀx| ≤ 1}`` (columns of ``G``, in ``order``) one after the other
    to ``E = {L z : ‖z‖ ≤ 1}``, each as :func:`shallow_cut` would, skipping those too shallow
    to shrink the volume. Returns the new ``L`` and the number of cuts applied.

    The rank-one updates ``L ← b L (I − c ĝĝᵀ)`` are accumulated as ``L = L₀ s (I − U Wᵀ)``
    (a compact product, applied to ``L₀`` every :data:`CUT_BLOCK` cuts), so a cut costs
    O(D m) instead of the O(D²) of forming ``L`` (m cuts since the last flush)."""
    n_cuts = 0
    sq = math.sqrt(D)
    todo = list(order)
    while todo:
        H0 = L.T @ G[:, todo]  # L₀ᵀ g for every remaining cut
        U = np.zeros((D, CUT_BLOCK))
        W = np.zeros((D, CUT_BLOCK))
        sc, m, used = 1.0, 0, 0
        for col in range(len(todo)):
            used = col + 1
            h0 = H0[:, col]
            h = sc * (h0 - W[:, :m] @ (U[:, :m].T @ h0)) if m else sc * h0
            hn = float(np.linalg.norm(h))
            if not np.isfinite(hn) or hn == 0.0:
                continue
            alpha = 1.0 / hn
            if alpha * sq >= 1.0 - 1e-9:
                continue  # cut too shallow to shrink the volume
            ghat = h / hn
            a = sq * alpha
            b = math.sqrt(D * (1.0 - alpha * alpha) / (D - 1.0))
            c = 1.0 - a / b
            u = ghat - U[:, :m] @ (W[:, :m].T @ ghat) if m else ghat.copy()
            U[:, m] = c * u
            W[:, m] = ghat
            sc *= b
            m += 1
            n_cuts += 1
            if m == CUT_BLOCK:
                break
        if m:
            L = sc * (L - (L @ U[:, :m]) @ W[:, :m].T)
        todo = todo[used:]
    return L, n_cuts


def shallow_cut(L: np.ndarray, ghat: np.ndarray, alpha: float, D: int) -> np.ndarray:
    """Minimum-volume ellipsoid containing ``E ∩ {|gᵀx| ≤ 1}`` for the symmetric slab whose
    half-width in E's normalised coordinates is ``alpha < 1/√D``. In those coordinates the new
    ellipsoid has semi-axis ``a = √D α`` along ``ĝ`` and ``b = √(D(1−α²)/(D−1))`` across it;
    applied as ``L ← b L (I − (1 − a/b) ĝ ĝᵀ)``, which stays invertible since ``a > 0``."""
    a = math.sqrt(D) * alpha
    b = math.sqrt(D * (1.0 - alpha * alpha) / (D - 1.0))
    c = 1.0 - a / b
    return b * (L - c * np.outer(L @ ghat, ghat))


def g_from_axes(L: np.ndarray) -> np.ndarray:
    """``G`` with ``E = {x : ‖G x‖₂ ≤ 1}`` for ``E = {L z : ‖z‖ ≤ 1}``: ``G = (L Lᵀ)^{-1/2}``."""
    U, s, _ = np.linalg.svd(L, full_matrices=False)
    return (U / s) @ U.T
