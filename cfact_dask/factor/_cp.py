"""CP (CANDECOMP/PARAFAC) decomposition of chunked N-way tensors by alternating least squares.

Each ALS step for mode ``n`` needs the MTTKRP ``M_n = X_(n) (⊙_{k≠n} A_k)`` (``I_n × r``): it is
computed blockwise over the tensor's chunks (one ``einsum`` per chunk with the matching row slices
of the small factors) and summed by a tree reduction; the factors themselves are small numpy
arrays. Optionally one mode is first compressed with a random operator,
``T̃ = T ×_k P`` (:func:`cfact_dask.sketch`), and the CP of the small ``T̃`` is computed instead:
by Kruskal uniqueness it is ``(P A_k, A_others)``, so the other modes' factors come out directly
and ``A_k`` can be recovered later from ``P A_k`` (sparse recovery with the kept ``operator``) or
exactly with one more read of ``T`` (:func:`refit_mode`).

References
----------
.. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization: fast and accurate
   low-rank factorization of compressively-sensed data". ICML 2019, arXiv:1706.08146.
.. [2] T. G. Kolda, B. W. Bader. "Tensor decompositions and applications". SIAM Review 51(3),
   2009.
.. [3] A. Cichocki, A.-H. Phan. "Fast local algorithms for large scale nonnegative matrix and
   tensor factorizations". IEICE Trans. 92-A(3), 2009 (HALS, used for ``nonnegative=True``).
"""

from __future__ import annotations

import logging
import math
import os
import string
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import dask.array as da
import numpy as np

from .._runtime.checkpoint import as_checkpoint
from .._runtime.checks import check_rank
from .._runtime.cluster import client_context, compute, persist
from .._runtime.display import SKIP, summary_html, summary_repr
from .._runtime.jsonattrs import to_json
from .._runtime.random import SeedLike, generator, normalize_seed
from .._runtime.resultstore import read_result, write_result
from ..errors import (
    ConvergenceWarning,
    DivergenceError,
    InputError,
    NonFiniteError,
    RankError,
)
from ..io import InputArray, open_array
from ..sketching._sketch import Sketch
from ..sketching._sketch import sketch as _sketch
from ..sketching.operators import SketchOperator

__all__ = ["CPResult", "cp", "refit_mode", "with_mode"]

logger = logging.getLogger(__name__)

#: tensors with at most this many entries are decomposed in memory (no dask graph per step)
_IN_MEMORY_ENTRIES = 2_000_000
#: modes up to this size are initialised from the exact Gram of their unfolding
_GRAM_INIT_MAX = 2048
#: raw tensors up to this many bytes are persisted on the workers between ALS steps
_PERSIST_BYTES = 512 * 2**20


@dataclass(frozen=True)
class CPResult:
    """A CP decomposition ``T ≈ Σ_j w_j a_j^(1) ∘ … ∘ a_j^(N)`` (TensorLy's ``CPTensor`` layout).

    Attributes
    ----------
    weights : numpy.ndarray
        ``(r,)``, in decreasing order; the factors have unit-norm columns.
    factors : list of numpy.ndarray
        ``I_k × r`` per mode. With a compressed mode ``k``, ``factors[k]`` is ``P A_k``
        (``d × r``).
    errors : list of float
        Relative reconstruction error ``‖T − T̂‖_F / ‖T‖_F`` after each iteration (of the
        compressed tensor when a mode was sketched).
    n_iter : int
    operator : SketchOperator or None
        The operator that compressed ``mode`` (None without compression).
    mode : int or None
        The compressed mode.
    params : dict
        The call's parameters (and, after a recovery of the compressed mode, how it was done).
    error : float or None
        The relative error ``‖T − T̂‖_F / ‖T‖_F`` of these factors against the full tensor when
        it is not ``errors[-1]``: after :func:`refit_mode` the exact error measured in the
        refit's pass; after a sparse recovery of the compressed mode, its estimate.
    """

    weights: np.ndarray
    factors: list[np.ndarray]
    errors: list[float] = field(default_factory=list)
    n_iter: int = 0
    operator: SketchOperator | None = None
    mode: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    error: float | None = None

    # TensorLy-style unpacking: ``weights, factors = result``
    def _summary(self) -> tuple[str, list[tuple[str, Any]]]:
        on = f" (of the tensor compressed in mode {self.mode})" if self.mode is not None else ""
        return "cfact CPResult", [
            ("rank", self.rank),
            ("factors", ", ".join(" × ".join(map(str, f.shape)) for f in self.factors)),
            ("weights", f"{self.weights.size} values, {self.weights[0]:.4g} … "
                        f"{self.weights[-1]:.4g}" if self.weights.size else "none"),
            ("iterations", self.n_iter),
            (f"relative error{on}", self.reconstruction_err_),
            ("sketch operator", self.operator.kind if self.operator is not None else SKIP),
        ]

    # short summaries for the terminal and notebooks (not the arrays: see _runtime.display)
    __repr__ = summary_repr
    _repr_html_ = summary_html

    def __iter__(self):
        return iter((self.weights, self.factors))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> Any:
        return (self.weights, self.factors)[i]

    @property
    def rank(self) -> int:
        return int(self.weights.shape[0])

    @property
    def n_iter_(self) -> int:
        return self.n_iter

    @property
    def reconstruction_err_(self) -> float:
        """Relative error against the full tensor (:attr:`error`) when known, else the last
        sweep's (of the compressed tensor when a mode was sketched)."""
        if self.error is not None:
            return float(self.error)
        return self.errors[-1] if self.errors else float("nan")

    def to_tensorly(self) -> Any:
        """The result as ``tensorly.cp_tensor.CPTensor((weights, factors))``."""
        from tensorly.cp_tensor import CPTensor

        return CPTensor((self.weights, list(self.factors)))

    def to_tensor(self) -> np.ndarray:
        """The dense reconstruction (small tensors only)."""
        letters = string.ascii_lowercase[: len(self.factors)]
        spec = ",".join(f"{c}z" for c in letters) + ",z->" + letters
        return np.einsum(spec, *self.factors, self.weights)

    def to_zarr(self, store: str | os.PathLike, group: str = "cp", *,
                overwrite: bool = False, upstream: Any = None) -> str:
        """Write weights, factors and history to ``store/group``; checked first, written under
        a temporary name and moved into place complete (see :mod:`cfact_dask._runtime.outputs`)."""
        arrays = {"weights": self.weights, **{f"factor_{i}": f for i, f in
                                               enumerate(self.factors)}}
        # mode_i × component (the compressed mode: sketch_row); xarray reads the names
        dims = {"weights": ("component",), **{
            f"factor_{i}": ("sketch_row" if i == self.mode else f"mode_{i}", "component")
            for i in range(len(self.factors))}}
        return write_result(store, group, {k: np.asarray(v) for k, v in arrays.items()}, {
            "type": "cp",
            "n_factors": len(self.factors),
            "errors": [float(e) for e in self.errors],
            "n_iter": int(self.n_iter),
            "mode": self.mode,
            "operator": self.operator.to_dict() if self.operator is not None else None,
            "params": _jsonable(self.params),
            "error": None if self.error is None else float(self.error),
        }, overwrite=overwrite, dims=dims, upstream=upstream, what="CP output")

    @classmethod
    def from_zarr(cls, store: str | os.PathLike, group: str = "cp") -> CPResult:
        """Read a result written by :meth:`to_zarr`."""
        arrays, meta = read_result(store, group, "cp")
        factors = [np.asarray(arrays[f"factor_{i}"]) for i in range(int(meta["n_factors"]))]
        op = meta.get("operator")
        return cls(
            weights=np.asarray(arrays["weights"]), factors=factors,
            errors=list(meta.get("errors", [])), n_iter=int(meta.get("n_iter", 0)),
            operator=SketchOperator.from_dict(op) if op else None, mode=meta.get("mode"),
            params=dict(meta.get("params", {})), error=meta.get("error"),
        )


def _jsonable(d: Mapping[str, Any]) -> dict[str, Any]:
    return to_json(dict(d))


# ---------------------------------------------------------------------- MTTKRP
def _spec(ndim: int, mode: int) -> str:
    letters = string.ascii_lowercase[:ndim]
    ins = [f"{c}z" for i, c in enumerate(letters) if i != mode]
    return letters + "," + ",".join(ins) + "->" + letters[mode] + "z"


def _mttkrp_np(X: np.ndarray, factors: list[np.ndarray], mode: int) -> np.ndarray:
    others = [f for i, f in enumerate(factors) if i != mode]
    return np.einsum(_spec(X.ndim, mode), X, *others, optimize=True)


def _mttkrp_da(X: da.Array, factors: list[np.ndarray], mode: int) -> da.Array:
    ops = []
    for i, f in enumerate(factors):
        if i != mode:
            ops.append(da.from_array(f, chunks=(X.chunks[i], f.shape[1])))
    return da.einsum(_spec(X.ndim, mode), X, *ops, optimize=False)


class _Backend:
    def __init__(self, X: Any, client: Any) -> None:
        self.X = X
        self.client = client
        self.is_dask = isinstance(X, da.Array)

    def compute(self, *xs: Any) -> list[Any]:
        return compute(*xs, client=self.client, progress=False)

    def mttkrp(self, factors: list[np.ndarray], mode: int) -> np.ndarray:
        if self.is_dask:
            return np.asarray(self.compute(_mttkrp_da(self.X, factors, mode))[0])
        return _mttkrp_np(self.X, factors, mode)

    def norm2(self) -> float:
        if self.is_dask:
            return float(self.compute((self.X.astype(np.float64) ** 2).sum())[0])
        return float(np.sum(self.X.astype(np.float64) ** 2))

    def gram(self, mode: int) -> np.ndarray:
        axes = [i for i in range(self.X.ndim) if i != mode]
        if self.is_dask:
            return np.asarray(self.compute(da.tensordot(self.X, self.X, axes=(axes, axes)))[0])
        return np.tensordot(self.X, self.X, axes=(axes, axes))


# ---------------------------------------------------------------------- helpers
def _as_tensor(T: Any) -> tuple[Any, str]:
    if isinstance(T, Sketch):
        return T.data, "the sketch"
    inp = T if isinstance(T, InputArray) else open_array(T)
    return inp.data, inp.source


def _hadamard_grams(grams: list[np.ndarray], skip: int | None) -> np.ndarray:
    out = np.ones_like(grams[0])
    for i, g in enumerate(grams):
        if i != skip:
            out = out * g
    return out


def _ls_update(M: np.ndarray, V: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(V.T, M.T).T
    except np.linalg.LinAlgError:
        return M @ np.linalg.pinv(V)


def _hals_update(A: np.ndarray, M: np.ndarray, V: np.ndarray, n_inner: int = 5) -> np.ndarray:
    A = A.copy()
    vmax = float(np.max(np.diag(V))) if V.size else 0.0
    for _ in range(n_inner):
        for j in range(A.shape[1]):
            if V[j, j] <= 1e-14 * vmax or V[j, j] <= 0:
                continue
            A[:, j] = np.maximum(A[:, j] + (M[:, j] - A @ V[:, j]) / V[j, j], 0.0)
            if not A[:, j].any():
                # keep the column alive: HALS never leaves an all-zero column
                A[:, j] = 1e-3 * max(float(A.mean()), 1e-300)
    return A


def _balance(factors: list[np.ndarray]) -> list[np.ndarray]:
    """Same model, every mode's columns with equal norms (keeps HALS well scaled)."""
    norms = [np.linalg.norm(f, axis=0) for f in factors]
    if any((n == 0).any() for n in norms):
        return factors
    total = np.prod(norms, axis=0) ** (1.0 / len(factors))
    return [f * (total / n)[None, :] for f, n in zip(factors, norms, strict=True)]


def _init_factors(
    be: _Backend, shape: tuple[int, ...], rank: int, init: Any, seed: int, nonnegative: bool,
    norm_x: float,
) -> list[np.ndarray]:
    N = len(shape)
    if isinstance(init, (list, tuple)) or (hasattr(init, "factors") and hasattr(init, "weights")):
        if hasattr(init, "factors"):
            w, fs = init.weights, init.factors
        elif len(init) == 2 and np.ndim(init[0]) == 1:
            w, fs = init
        else:
            w, fs = None, list(init)
        fs = [np.array(f, dtype=np.float64) for f in fs]
        if len(fs) != N or any(f.shape != (shape[i], rank) for i, f in enumerate(fs)):
            raise InputError(
                f"init factors must have shapes {[(s, rank) for s in shape]}, got "
                f"{[np.shape(f) for f in fs]}"
            )
        if w is not None:
            fs[0] = fs[0] * np.asarray(w)[None, :]
        return fs
    if init == "random":
        rng = generator(seed, 0xC9, 1)
        fs = [rng.random((s, rank)) for s in shape]
        # scale so the initial model has the data's norm
        est = math.sqrt(float(np.sum(_hadamard_grams([f.T @ f for f in fs], None))))
        if est > 0:
            fs[0] *= norm_x / est
        return fs
    if init != "svd":
        raise InputError(f"init must be 'svd', 'random' or a list of factors, got {init!r}")
    fs = []
    for mode, s in enumerate(shape):
        k = min(rank, s)
        if s <= _GRAM_INIT_MAX:
            G = be.gram(mode)
            evals, evecs = np.linalg.eigh(G)
            order = np.argsort(evals)[::-1][:k]
            U = evecs[:, order]
            S = np.sqrt(np.maximum(evals[order], 0.0))
        else:
            U, S = _kr_range(be, shape, mode, k, seed)
        # deterministic signs: largest |entry| positive (scikit-learn / cfact convention)
        idx = np.argmax(np.abs(U), axis=0)
        sg = np.sign(U[idx, np.arange(U.shape[1])])
        sg[sg == 0] = 1
        U = U * sg
        if mode == 0:
            U = U * S[None, :]
        if k < rank:
            rng = generator(seed, 0xC9, 2, mode)
            U = np.hstack([U, rng.random((s, rank - k))])
        if nonnegative:
            U = _nonneg_part(U)
        fs.append(U)
    return fs


def _nonneg_part(U: np.ndarray) -> np.ndarray:
    """NNDSVD-style nonnegative init: per column the larger of the positive / negative parts,
    zeros lifted a little so that no HALS column starts (and stays) dead."""
    pos, neg = np.maximum(U, 0.0), np.maximum(-U, 0.0)
    take_neg = np.linalg.norm(neg, axis=0) > np.linalg.norm(pos, axis=0)
    out = np.where(take_neg[None, :], neg, pos)
    lift = 0.05 * np.abs(U).mean(axis=0, keepdims=True)
    return np.where(out == 0, lift, out)


def _kr_range(be: _Backend, shape: tuple[int, ...], mode: int, k: int,
              seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k left singular pairs of a big unfolding, from a Khatri-Rao test matrix (one read)."""
    p = k + 10
    rngs = [generator(seed, 0xC9, 3, mode, i) for i in range(len(shape))]
    omega = [r.standard_normal((s, p)) for r, s in zip(rngs, shape, strict=True)]
    Y = be.mttkrp(omega, mode)
    Q, _ = np.linalg.qr(Y)
    # small SVD of Qᵀ X_(n) through its Gram, computed blockwise on Z = X ×_n Qᵀ
    if be.is_dask:
        Qd = da.from_array(Q.T, chunks=(p, be.X.chunks[mode]))
        Z = da.tensordot(Qd, be.X, axes=([1], [mode]))
        axes = list(range(1, be.X.ndim))
        G = np.asarray(be.compute(da.tensordot(Z, Z, axes=(axes, axes)))[0])
    else:
        Z = np.tensordot(Q.T, be.X, axes=([1], [mode]))
        axes = list(range(1, be.X.ndim))
        G = np.tensordot(Z, Z, axes=(axes, axes))
    evals, evecs = np.linalg.eigh(G)
    order = np.argsort(evals)[::-1][:k]
    return Q @ evecs[:, order], np.sqrt(np.maximum(evals[order], 0.0))


def _normalise(factors: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    r = factors[0].shape[1]
    weights = np.ones(r)
    out = []
    for f in factors:
        nrm = np.linalg.norm(f, axis=0)
        safe = np.where(nrm == 0, 1.0, nrm)
        weights = weights * nrm
        out.append(f / safe)
    order = np.argsort(-weights, kind="stable")
    return weights[order], [f[:, order] for f in out]


# ---------------------------------------------------------------------- entry point
def cp(
    T: Any,
    rank: int,
    *,
    nonnegative: bool = False,
    sketch: Mapping[str, Any] | None = None,
    max_iter: int = 100,
    tol: float = 1e-8,
    init: Literal["svd", "random"] | Any = "svd",
    random_state: SeedLike = 0,
    callback: Callable[[dict[str, Any]], bool | None] | None = None,
    checkpoint: Any = None,
    client: Any = None,
) -> CPResult:
    """CP decomposition of a chunked tensor by ALS, optionally of a one-mode sketch of it.

    Parameters
    ----------
    T : array-like, InputArray or Sketch
        An N-way tensor (N >= 3): a Zarr path / array, xarray, dask or numpy array, or a sketch
        of one (:func:`cfact_dask.sketch` with ``axis=k``: the result then records its
        ``operator`` and ``mode`` as with ``sketch=``). Chunks are used as they are.
    rank : int
        Number of components, ``1 <= rank``; must be below the product of the other modes' sizes
        for every mode (otherwise the problem is trivially exact and not identifiable).
    nonnegative : bool
        Nonnegative CP (HALS updates of each factor).
    sketch : dict, optional
        ``dict(n_components=d, mode=k, kind="expander", seed=0)``: compress mode ``k`` to ``d``
        rows with :func:`cfact_dask.sketch` first (one read of ``T``), then decompose the sketch.
        ``factors[k]`` is then ``P A_k``; the result keeps ``operator`` for recovery.
    max_iter : int
        Maximum ALS sweeps.
    tol : float
        Stop when the relative error changes by less than ``tol`` between sweeps (TensorLy's rule).
        A ``ConvergenceWarning`` is emitted at ``max_iter`` when ``tol > 0``.
    init : {"svd", "random"} or (weights, factors)
        ``svd``: leading left singular vectors of each unfolding (from the Gram of the unfolding,
        or a Khatri-Rao randomized range finder for modes longer than 2048), as in TensorLy.
    random_state : int, SeedSequence, Generator or None
    callback : callable, optional
        ``callback(state) -> bool | None`` after every sweep; ``state`` holds ``iteration``,
        ``error``, ``elapsed``, ``factors``. True stops.
    checkpoint : str, dict or Checkpoint, optional
        ``dict(store=..., every=k)``: save the factors every k sweeps; a rerun with the same store
        and parameters resumes and ends with the same result as an uninterrupted run.
    client : distributed.Client, optional

    Returns
    -------
    CPResult
        ``weights`` (decreasing), unit-norm ``factors``, relative errors per sweep, ``n_iter``,
        the sketch ``operator`` and ``mode``. ``result.to_tensorly()`` is a ``CPTensor``.

    Raises
    ------
    InputError
        Order below 3, empty tensor, bad ``sketch`` spec.
    RankError
        ``rank < 1`` or ``rank >=`` the product of the other modes' sizes.
    NonFiniteError
        NaN / Inf in the data.

    References
    ----------
    .. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization: fast and
       accurate low-rank factorization of compressively-sensed data". ICML 2019.
    .. [2] T. G. Kolda, B. W. Bader. "Tensor decompositions and applications". SIAM Review
       51(3):455-500, 2009.

    Examples
    --------
    >>> import numpy as np, cfact_dask as cf
    >>> rng = np.random.default_rng(0)
    >>> A, B, C = rng.random((20, 3)), rng.random((15, 3)), rng.random((10, 3))
    >>> T = np.einsum("ir,jr,kr->ijk", A, B, C)
    >>> res = cf.cp(T, rank=3, random_state=0)
    >>> res.errors[-1] < 1e-6
    True
    """
    X, source = _as_tensor(T)
    if X.ndim < 3:
        raise InputError(
            f"{source} has {X.ndim} dimensions (shape {X.shape}); cp needs a tensor of order >= 3. "
            f"For a matrix use cf.svd, cf.nmf or cf.sparse_pca"
        )
    if 0 in X.shape:
        raise InputError(f"{source} is empty (shape {X.shape}); nothing to factorize")
    rank = check_rank(rank, None, source=f"{source} of shape {X.shape}",
                      need="a CP decomposition")
    if not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise InputError(f"max_iter must be an int >= 0, got {max_iter!r}")
    seed = normalize_seed(random_state)
    operator: SketchOperator | None = None
    mode: int | None = None
    sketch_params: dict[str, Any] | None = None
    if sketch is not None:
        sketch_params = _check_sketch_spec(sketch, X.ndim, X.shape)
        mode = sketch_params["mode"]
        sk = _sketch(
            X, n_components=sketch_params["n_components"], kind=sketch_params["kind"],
            seed=sketch_params["seed"], axis=mode,
        )
        operator = sk.operator
        X = sk.data
    elif isinstance(T, Sketch):
        # a one-mode sketch of a tensor taken beforehand (e.g. with a hold-out sketch in the
        # same pass): its factor of the sketched axis is P A_k, recoverable like the above
        operator, mode = T.operator, int(T.axis) % X.ndim
        sketch_params = {"n_components": int(operator.n_components), "mode": mode,
                         "operator": operator.to_dict()}
    shape = tuple(int(s) for s in X.shape)
    for i, s in enumerate(shape):
        rest = math.prod(shape) // s
        if rank >= rest and rank > 1:
            raise RankError(
                f"rank={rank} is impossible for a tensor of shape {shape}: for mode {i} it must be "
                f"below the product of the other modes' sizes ({rest}); choose a smaller rank"
            )
    params = dict(method="cp", rank=int(rank), nonnegative=bool(nonnegative), shape=list(shape),
                  init=init if isinstance(init, str) else "custom", seed=seed,
                  sketch=sketch_params, data=getattr(X, "name", None) if sketch is None else
                  getattr(T, "name", None))
    ck = as_checkpoint(checkpoint, params)
    t0 = time.perf_counter()
    with client_context(client, nbytes=int(X.nbytes)) as c:
        small = X.size <= _IN_MEMORY_ENTRIES
        if isinstance(X, da.Array) and small and (c is None or sketch is not None):
            # a small tensor (e.g. the d-sized sketch) is decomposed in memory: the ALS sweeps
            # then cost no scheduler round trips; the sketch pass itself ran distributed
            X = np.asarray(compute(X, client=c, progress=False)[0])
        elif isinstance(X, da.Array) and (sketch is not None or X.nbytes <= _PERSIST_BYTES):
            (X,) = persist(X, client=c)
        be = _Backend(X, c)
        norm2 = be.norm2()
        if not np.isfinite(norm2):
            raise NonFiniteError(
                f"{source} holds NaN or Inf values (its squared norm is {norm2}); clean or impute "
                f"the data first"
            )
        if norm2 == 0:
            raise InputError(f"{source} is all zeros; there is nothing to decompose")
        norm_x = math.sqrt(norm2)
        state = ck.load() if ck is not None else None
        if state is not None:
            factors = [state.arrays[f"factor_{i}"] for i in range(len(shape))]
            errors = list(state.history.get("errors", []))
            start = state.iteration
        else:
            factors = _init_factors(be, shape, int(rank), init, seed, nonnegative, norm_x)
            errors = []
            start = 0
        # the factors are small: iterate them in float64 whatever the data's dtype. With float32
        # factors the MTTKRP accumulates in float32 and the error from the expansion
        # ‖T‖² − 2⟨T, T̂⟩ + ‖T̂‖² cancels to noise (a reported 0 for a true 1e-3)
        factors = [np.asarray(f, dtype=np.float64) for f in factors]
        N = len(shape)
        it = start
        converged = False
        for it in range(start + 1, max_iter + 1):
            grams = [f.T @ f for f in factors]
            M = None
            for n in range(N):
                M = be.mttkrp(factors, n)
                V = _hadamard_grams(grams, n)
                if nonnegative:
                    factors[n] = _hals_update(factors[n], M, V)
                else:
                    factors[n] = _ls_update(M, V)
                grams[n] = factors[n].T @ factors[n]
            assert M is not None
            inner = float(np.sum(M * factors[N - 1]))
            model2 = float(np.sum(_hadamard_grams(grams, None)))
            err = math.sqrt(max(norm2 - 2 * inner + model2, 0.0)) / norm_x
            if not np.isfinite(err):
                raise DivergenceError(
                    f"cp diverged at iteration {it} (relative error {err}); try init='random', "
                    f"a smaller rank or nonnegative=True"
                )
            errors.append(err)
            logger.debug("cp iteration %d: relative error %.6g (%.1fs)", it, err,
                        time.perf_counter() - t0)
            if nonnegative:
                factors = _balance(factors)
            if ck is not None and ck.should_save(it):
                ck.save(it, {f"factor_{i}": f for i, f in enumerate(factors)},
                        {"errors": errors})
            stop = False
            if callback is not None:
                stop = bool(callback({"iteration": it, "error": err,
                                      "elapsed": time.perf_counter() - t0,
                                      "factors": factors}))
            if tol and len(errors) > 1 and abs(errors[-2] - errors[-1]) < tol:
                converged = True
                break
            if stop:
                converged = True
                break
        if not converged and tol and max_iter > start:
            warnings.warn(
                f"cp did not converge in max_iter={max_iter} sweeps (last change "
                f"{abs(errors[-2] - errors[-1]) if len(errors) > 1 else float('nan'):.3g} >= "
                f"tol={tol}); raise max_iter or tol",
                ConvergenceWarning, stacklevel=2,
            )
    weights, factors = _normalise(factors)
    return CPResult(weights=weights, factors=factors, errors=errors, n_iter=it,
                    operator=operator, mode=mode, params=params)


def _check_sketch_spec(
    spec: Mapping[str, Any], ndim: int, shape: tuple[int, ...]
) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise InputError(f"sketch must be a dict(n_components=..., mode=...), got {spec!r}")
    unknown = set(spec) - {"n_components", "mode", "kind", "seed"}
    if unknown or "n_components" not in spec:
        raise InputError(
            f"sketch must be dict(n_components=d, mode=k[, kind=..., seed=...]); got keys "
            f"{sorted(spec)}"
        )
    mode = int(spec.get("mode", 0))
    if not -ndim <= mode < ndim:
        raise InputError(f"sketch mode {mode} is out of range for a tensor with {ndim} modes")
    mode %= ndim
    return {
        "n_components": int(spec["n_components"]),
        "mode": mode,
        "kind": spec.get("kind", "expander"),
        "seed": normalize_seed(spec.get("seed", 0)),
    }


def refit_mode(T: Any, result: CPResult, mode: int | None = None, *,
               nonnegative: bool | None = None, client: Any = None) -> CPResult:
    """Recover one mode's factor exactly with one more read of the raw tensor.

    With the other factors fixed, the least-squares factor of ``mode`` is
    ``X_(mode) (⊙ A_k) (∘ A_kᵀ A_k)⁻¹``: one MTTKRP, i.e. one blockwise pass over ``T``. Use it
    after a compressed CP (``mode`` defaults to the compressed one) while the data is still there.
    The same pass also sums ``‖T‖²``, so the refit model's exact relative error against ``T``
    (``‖T‖² − 2⟨T, T̂⟩ + ‖T̂‖²`` from the MTTKRP and the factors' Gram matrices) comes for free.

    Returns
    -------
    CPResult
        The same weights / other factors, ``factors[mode]`` replaced (unit norm), no operator;
        ``error`` (and ``reconstruction_err_``) is the exact ``‖T − T̂‖_F / ‖T‖_F``.
    """
    X, source = _as_tensor(T)
    mode = result.mode if mode is None else mode
    if mode is None:
        raise InputError("refit_mode needs mode= (the result was not compressed)")
    if X.ndim != len(result.factors):
        raise InputError(
            f"{source} has {X.ndim} modes but the result has {len(result.factors)} factors"
        )
    factors = [f * (result.weights[None, :] if i == (1 if mode == 0 else 0) else 1.0)
               for i, f in enumerate(result.factors)]
    factors[mode] = np.zeros((X.shape[mode], result.rank))
    Xd = X if isinstance(X, da.Array) else da.asarray(X)
    with client_context(client, nbytes=int(X.nbytes)) as c:
        # one read of T: the MTTKRP and ‖T‖² share the chunk-read tasks
        M, norm2 = _Backend(Xd, c).compute(_mttkrp_da(Xd, factors, mode),
                                           (Xd.astype(np.float64) ** 2).sum())
    M, norm2 = np.asarray(M, dtype=np.float64), float(norm2)
    grams = [f.T @ f for f in factors]
    V = _hadamard_grams(grams, mode)
    nonneg = bool(result.params.get("nonnegative")) if nonnegative is None else nonnegative
    A = _hals_update(np.maximum(_ls_update(M, V), 0), M, V, 20) if nonneg else _ls_update(M, V)
    factors[mode] = A
    grams[mode] = A.T @ A
    inner = float(np.sum(M * A))
    model2 = float(np.sum(_hadamard_grams(grams, None)))
    err = math.sqrt(max(norm2 - 2 * inner + model2, 0.0) / norm2) if norm2 > 0 else math.nan
    weights, factors = _normalise(factors)
    return CPResult(weights=weights, factors=factors, errors=list(result.errors),
                    n_iter=result.n_iter, operator=None, mode=None, params=dict(result.params),
                    error=err)


def with_mode(result: CPResult, A: Any, mode: int | None = None, *,
              error: float | None = None, params: Mapping[str, Any] | None = None) -> CPResult:
    """The result with one mode's factor replaced by a full-size ``A`` (e.g. recovered from the
    compressed factor ``P A`` by sparse recovery), renormalised.

    ``A`` is that mode's factor in the result's model ``Σ_j w_j a_j ∘ …`` (the result's
    ``weights`` still apply); ``mode`` defaults to the compressed one. The returned result has no
    operator (its factors are all full size), ``error`` and ``params`` as given.
    """
    mode = result.mode if mode is None else mode
    if mode is None:
        raise InputError("with_mode needs mode= (the result was not compressed)")
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2 or A.shape[1] != result.rank:
        raise InputError(f"A must be a matrix with {result.rank} columns, got shape {A.shape}")
    factors = list(result.factors)
    factors[mode] = A * result.weights[None, :]
    weights, factors = _normalise(factors)
    return CPResult(weights=weights, factors=factors, errors=list(result.errors),
                    n_iter=result.n_iter, operator=None, mode=None,
                    params=dict(result.params if params is None else params), error=error)
