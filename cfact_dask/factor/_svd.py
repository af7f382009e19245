"""Randomized truncated SVD of chunked matrices: single-pass (Tropp et al.) or range finder.

``passes=1`` collects a *range* sketch ``Y = A Ω`` and a *co-range* sketch ``W = Ψ A`` in the same
read of ``A`` (one graph, the chunk-read tasks are shared), then recovers a low-rank
approximation from the two sketches alone: ``Q = orth(Y)``, ``X = (Ψ Q)⁺ W``, ``A ≈ Q X``, and the
SVD of the small ``X`` gives the factors. ``passes = 2 + 2q`` is the classic randomized range
finder with ``q`` power iterations. The test matrices ``Ω``, ``Ψ`` are
:class:`~cfact_dask.SketchOperator` specs generated tile-wise from
``(seed, purpose, global tile index)``, so the answer does not depend on the input's chunking.

No task holds an ``n``- or ``m``-sized object except the chunked factors: ``Y`` / ``U`` stay chunked
along the rows of ``A``, ``W`` / ``Vᵀ`` along its columns, and every reduction is a tree over small
blocks.

References
----------
.. [1] J. A. Tropp, A. Yurtsever, M. Udell, V. Cevher. "Practical sketching algorithms for low-rank
   matrix approximation". SIAM J. Matrix Anal. Appl. 38(4), 2017, arXiv:1609.00048.
.. [2] N. Halko, P.-G. Martinsson, J. A. Tropp. "Finding structure with randomness: probabilistic
   algorithms for constructing approximate matrix decompositions". SIAM Review 53(2), 2011.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
from dask import delayed

from .._runtime.blas import aligned_gram, blas_threads
from .._runtime.checks import check_rank
from .._runtime.cluster import client_context, compute, detach, persist
from .._runtime.display import summary_html, summary_repr
from .._runtime.random import SeedLike, normalize_seed
from .._runtime.trees import tree_sum
from ..errors import InputError
from ..sketching._project import project_many
from ..sketching.operators import Kind, SketchOperator, make_operator, project
from ._input import as_features_first
from ._signs import sign_stats, sign_vector

__all__ = ["SVDResult", "sketch_sizes", "svd"]

logger = logging.getLogger(__name__)

# spawn keys of the independent test matrices (stage code, purpose)
_KEY_OMEGA = (0x5D, 1)
_KEY_PSI = (0x5D, 2)
_KEY_THETA = (0x5D, 3)

# one pass: the range sketch has at least rank + 20 columns (dask's svd_compressed: rank + 10)
_MIN_OVERSAMPLE_1PASS = 20
# bytes the default co-range sketch W = Ψ A (l × m) may take (float64 counted)
_CO_RANGE_BUDGET = 64 * 2**20


@dataclass(frozen=True)
class SVDResult:
    """A truncated SVD ``A ≈ U diag(s) Vt``.

    Attributes
    ----------
    U : dask.array.Array
        ``n × r`` left singular vectors, chunked along the rows of ``A`` (persisted).
    s : numpy.ndarray
        The ``r`` singular values, in decreasing order.
    Vt : dask.array.Array
        ``r × m`` right singular vectors, chunked along the columns of ``A`` (persisted).
    passes : int
        Reads of the input the computation made.
    error_estimate : float
        Estimate of ``‖A − U diag(s) Vt‖_F / ‖A‖_F``: ``‖Θ (A − U diag(s) Vt)‖_F`` from a
        small CountSketch test sketch ``Θ A`` over the exact ``‖A‖_F``, both taken in the first
        read (``nan`` when ``n_test=0``). Its squared numerator is unbiased; with ``t`` test
        rows it lies within about ``1.5 sqrt(2 / t)`` of the exact error (relative, three
        standard deviations of the worst case, a rank-one residual), far closer when the
        residual is noise.
    params : dict
        The arguments of the run (rank, oversampling, sketch sizes, seed).

    Notes
    -----
    Signs are normalised: the largest-magnitude entry of each column of ``U`` is positive.
    """

    U: da.Array
    s: np.ndarray
    Vt: da.Array
    passes: int
    error_estimate: float = float("nan")
    params: dict[str, Any] = field(default_factory=dict)

    def _summary(self) -> tuple[str, list[tuple[str, Any]]]:
        s = np.asarray(self.s)
        return "cfact SVDResult", [
            ("U", self.U), ("s", f"{s.size} values, {s[0]:.4g} … {s[-1]:.4g}" if s.size
                              else "none"),
            ("Vt", self.Vt), ("passes over the input", self.passes),
            ("estimated relative error", self.error_estimate),
        ]

    # short summaries for the terminal and notebooks (not the arrays: see _runtime.display)
    __repr__ = summary_repr
    _repr_html_ = summary_html

    @property
    def rank(self) -> int:
        return int(self.s.shape[0])

    @property
    def n_iter_(self) -> None:
        """None: the SVD is not iterative (``passes`` counts its reads of the input)."""
        return None

    @property
    def reconstruction_err_(self) -> float | None:
        """The estimated relative error ``error_estimate`` (None when none was taken)."""
        e = float(self.error_estimate)
        return None if math.isnan(e) else e

    def to_zarr(self, store: str | os.PathLike, group: str = "svd", *, overwrite: bool = False,
                upstream: Mapping[str, str] | None = None, row_dim: str = "feature") -> str:
        """Write ``U``, ``s``, ``Vt`` and the metadata to ``store/group`` (``U`` and ``Vt``
        blockwise from the workers); complete only when done (see
        :func:`~cfact_dask._runtime.resultstore.write_result`).

        ``row_dim`` names the rows of ``U``: ``"feature"``, or ``"sketch_row"`` for the SVD of
        a sketch. The layout is the one ``cfact factor --method svd`` writes.
        """
        from .._runtime.resultstore import write_result

        return write_result(
            store, group, {"U": self.U, "s": self.s, "Vt": self.Vt},
            {"type": "svd", "passes": self.passes, "error_estimate": self.error_estimate,
             "params": self.params},
            overwrite=overwrite, upstream=upstream,
            dims={"U": (row_dim, "component"), "s": ("component",),
                  "Vt": ("component", "sample")})

    @classmethod
    def from_zarr(cls, store: str | os.PathLike, group: str = "svd") -> SVDResult:
        """Open a result written by :meth:`to_zarr` (``U`` and ``Vt`` lazily, as dask arrays)."""
        from .._runtime.resultstore import read_result

        arrays, meta = read_result(store, group, "svd", lazy=True)
        err = meta.get("error_estimate")
        return cls(U=arrays["U"], s=np.asarray(arrays["s"]), Vt=arrays["Vt"],
                   passes=int(meta["passes"]),
                   error_estimate=float("nan") if err is None else float(err),
                   params=dict(meta.get("params") or {}))

    def __iter__(self):  # ``U, s, Vt = svd(...)``
        return iter((self.U, self.s, self.Vt))

    def reconstruct(self) -> da.Array:
        """``U diag(s) Vt`` as a lazy dask array (chunked like ``U`` × ``Vt``)."""
        return (self.U * self.s[None, :]) @ self.Vt


def _check_rank(rank: Any, shape: tuple[int, ...], source: str, what: str = "rank") -> int:
    """``1 <= rank < min(shape)`` (a truncated factorization), or a :class:`RankError`."""
    return check_rank(rank, min(shape), source=f"{source} of shape {tuple(shape)}", what=what)


def _op(kind: Kind, d: int, n: int, seed: int, key: tuple[int, ...]) -> SketchOperator:
    op = make_operator(kind, d, n, seed)
    return dataclasses.replace(op, spawn_key=key)


def _orth(Y: da.Array) -> da.Array:
    """Orthonormal basis of the columns of a tall chunked matrix (TSQR, tree of k × k blocks)."""
    Y = Y.rechunk({1: -1})
    Q, _ = da.linalg.tsqr(Y)
    return Q


def _times(Y: da.Array, M: np.ndarray) -> da.Array:
    """``Y M`` blockwise in float64 (``Y`` tall, chunked along its rows; ``M`` small)."""
    return Y.map_blocks(lambda y, M=M: y.astype(np.float64) @ M, dtype=np.float64,
                        chunks=(Y.chunks[0], (M.shape[1],)))


def _gram(Y: da.Array) -> da.Array:
    """``Yᵀ Y`` (k × k, float64): one fixed-order tree over the row chunks, each
    block's product on a fresh copy (:func:`_row_gram`), so a rerun adds the same numbers."""
    return _row_gram(Y.T)


def _row_gram(W: da.Array, split_every: int = 8) -> da.Array:
    """``W Wᵀ`` (l × l, float64, one chunk) of a wide ``W`` chunked along its columns, as a
    fixed-order tree of per-chunk products on aligned copies: the same sums wherever the
    tasks run."""
    parts = [delayed(aligned_gram)(b) for b in W.rechunk({0: -1}).to_delayed().ravel()]
    n = W.shape[0]
    return da.from_delayed(tree_sum(parts, split_every), shape=(n, n), dtype=np.float64,
                           meta=np.empty((0, 0)))


def _basis_from_gram(G: np.ndarray) -> tuple[np.ndarray, float]:
    """``M = V Λ^{-1/2}`` such that ``Y M`` has orthonormal columns, given ``G = Yᵀ Y``, and
    the condition number ``λ_max / λ_min`` of ``G`` (``inf`` when ``Y`` is rank-deficient)."""
    lam, V = np.linalg.eigh(np.asarray(G, dtype=np.float64))
    lam, V = lam[::-1], V[:, ::-1]
    if not lam[-1] > 0:
        return V, math.inf
    return V / np.sqrt(lam), float(lam[0] / lam[-1])


def svd(
    X: Any,
    rank: int,
    passes: int = 1,
    *,
    oversample: int | None = None,
    co_range: int | None = None,
    kind: Kind = "gaussian",
    co_range_kind: Kind | None = None,
    n_test: int = 16,
    random_state: SeedLike = 0,
    client: Any = None,
    progress: bool | None = None,
) -> SVDResult:
    """Randomized truncated SVD of a chunked matrix, in one read or with power iterations.

    Parameters
    ----------
    X : array-like, InputArray or Sketch
        A matrix accepted by :func:`~cfact_dask.open_array` (features first: when the input's
        ``feature_axis`` is 1 it is transposed lazily), or a :class:`~cfact_dask.Sketch`.
    rank : int
        Number of singular triplets, ``1 <= rank < min(shape)``.
    passes : int
        ``1``: the single-pass algorithm of Tropp et al. [1]_ (range and co-range sketches from
        the same read). ``2 + 2q``: randomized range finder [2]_ with ``q`` power iterations.
    oversample : int, optional
        Range sketch size ``k = rank + oversample``, capped at ``min(shape)``. Default for one
        pass ``max(rank + 1, 20)``: ``k = 2 rank + 1`` (the choice Tropp et al. [1]_ recommend
        for a rank-``rank`` truncation) but never fewer than ``rank + 20`` columns. The factor
        ``U`` of a single pass can only lie in the span of the range sketch, so on noisy data
        its error is at best that of the two-pass range finder with the same ``k``; dask's
        ``svd_compressed`` uses ``rank + 10``, and ``rank + 20`` stays below its error with a
        margin (measured in ``bench_factorize_svd_cp.py --accuracy``). ``10`` for more passes.
    co_range : int, optional
        Co-range sketch size ``l`` for ``passes=1`` (default ``16k + 1`` for a sparse co-range
        map, at least ``8k + 1`` and at most what keeps ``W = Ψ A`` (``l × m``) within
        64 MiB; ``4k + 1`` for a Gaussian one; capped at ``n``). The error of the single-pass
        reconstruction exceeds that of the range finder by a factor about
        ``sqrt(1 + k / (l - k - 1))`` ([1]_ Thm 4.3), so a generous ``l`` buys back the accuracy
        of a second pass; with a CountSketch ``Ψ`` its arithmetic per entry does not grow with
        ``l`` (only the ``l ×`` chunk-columns partial sums do).
    kind : {"gaussian", "sparse_sign", "countsketch", "expander"}
        Kind of the random test matrices (see :class:`~cfact_dask.SketchOperator`).
    co_range_kind : str, optional
        Kind of the co-range map ``Ψ``. Default ``"countsketch"``: each row of ``A`` is added,
        with a random sign, into one of the ``l`` rows of ``Ψ A``, so the co-range costs one
        addition per entry whatever ``l`` (a Gaussian ``Ψ`` costs ``2 l`` flops per entry, the
        bulk of the arithmetic of the pass), and the larger ``l`` it affords gives a lower
        error than a Gaussian ``Ψ`` with ``4k + 1`` rows. ``"gaussian"`` is the setting of the
        theory of [1]_ (the bound in the notes); ``sparse_sign`` lies between.
    n_test : int
        Rows of a CountSketch test sketch taken in the first read to estimate the relative error
        (``0`` switches it off).
    random_state : int, SeedSequence, Generator or None
        Seed of the test matrices; the result does not depend on the chunking.
    client : distributed.Client, optional
        Where to compute (default: current client, embedded cluster for big inputs, else threads).
    progress : bool, optional
        Progress bar for the data pass.

    Returns
    -------
    SVDResult
        ``U`` (chunked like the rows), ``s`` (numpy, decreasing), ``Vt`` (chunked like the
        columns), the number of passes and an error estimate.

    Raises
    ------
    RankError
        ``rank`` is not in ``[1, min(shape))``.
    NonFiniteError
        A chunk holds NaN / Inf (the message names the chunk).

    Notes
    -----
    With ``passes=1`` and Gaussian test matrices, Theorem 4.3 of [1]_ bounds the expected error
    of ``Â = Q X``::

        E ‖A − Â‖_F² ≤ (1 + f(k, l)) · min_{ϱ < k − 1} (1 + f(ϱ, k)) τ_{ϱ+1}²(A),
        f(s, t) = s / (t − s − 1),

    where ``τ_{ϱ+1}²`` is the tail energy beyond rank ϱ; truncation to ``rank`` adds at most a
    factor ``(1 + 2 …)`` (their Prop. 6.1). The tests check it with a tolerance found by
    simulation.

    Every single-pass reconstruction puts ``U`` in the span of the range sketch ``Y = A Ωᵀ``, so
    its error is at least that of ``[[Q Qᵀ A]]_rank``, the two-pass range finder with the same
    ``k``: matching dask's ``svd_compressed`` (``k = rank + 10``, exact ``Qᵀ A``) takes a
    larger ``k``, not a better reconstruction. With ``l = 16k + 1`` the least-squares ``X`` is
    within about 1 % of that floor on noisy data; the core-sketch reconstruction of Tropp et
    al. (SIAM J. Sci. Comput. 2019; ``P = orth(Wᵀ)``, CountSketch core ``Φ A Ξᵀ`` with
    ``s = 800``) measured no more accurate here (it saves storage when ``m ≫ s``).

    References
    ----------
    .. [1] J. A. Tropp, A. Yurtsever, M. Udell, V. Cevher. "Practical sketching algorithms for
       low-rank matrix approximation". SIAM J. Matrix Anal. Appl. 38(4):1454-1485, 2017.
    .. [2] N. Halko, P.-G. Martinsson, J. A. Tropp. "Finding structure with randomness".
       SIAM Review 53(2):217-288, 2011.

    Examples
    --------
    >>> import numpy as np, cfact_dask as cf
    >>> A = np.random.default_rng(0).standard_normal((200, 8)) @ np.ones((8, 100))
    >>> res = cf.svd(A, rank=3, passes=1)
    >>> res.U.shape, res.s.shape, res.Vt.shape
    ((200, 3), (3,), (3, 100))
    """
    A, source, _ = as_features_first(
        X, "svd", "a matrix. For tensors use cf.cp, or reshape to a matrix first")
    n, m = A.shape
    if 0 in A.shape:
        raise InputError(f"{source} is empty (shape {A.shape}); nothing to factorize")
    rank = _check_rank(rank, A.shape, source)
    if isinstance(passes, bool) or not isinstance(passes, (int, np.integer)) or passes < 1 or (
        passes > 1 and passes % 2
    ):
        raise InputError(
            f"passes={passes!r} is not possible: use 1 (single pass) or an even number 2 + 2q "
            f"(range finder with q power iterations)"
        )
    if oversample is not None and oversample < 0:
        raise InputError(f"oversample must be >= 0, got {oversample}")
    k, _ = sketch_sizes(n, m, rank, passes, oversample)
    seed = normalize_seed(random_state)
    # one BLAS thread for the small dense algebra in this process (eigh, pinv, the k x k and
    # l x l products) and for tasks that run here: LAPACK's results depend on the thread
    # count, which earlier work in the process may have changed, and a rerun (or a resumed
    # run in another process) must give the same numbers bitwise
    with client_context(client, nbytes=int(A.nbytes)) as c, blas_threads(1):
        if passes == 1:
            co_kind = co_range_kind or "countsketch"
            default_l = _default_co_range(k, m, co_kind)
            lco = min(int(co_range) if co_range is not None else default_l, n)
            if lco < k:
                raise InputError(
                    f"co_range={lco} must be >= the range sketch size k={k} (rank + oversample)"
                )
            res = _single_pass(A, rank, k, lco, kind, co_kind, seed, n_test,
                               source, c, progress)
        else:
            res = _range_finder(A, rank, k, (passes - 2) // 2, kind, seed, n_test, source, c,
                                progress)
        # an embedded cluster closes on return: bring the persisted factors back first
        res = dataclasses.replace(res, U=detach(res.U, c, "U"), Vt=detach(res.Vt, c, "Vt"))
    return res


def sketch_sizes(n: int, m: int, rank: int, passes: int = 1, oversample: int | None = None,
                 co_range: int | None = None, co_range_kind: str = "countsketch"
                 ) -> tuple[int, int]:
    """The range sketch size ``k`` and co-range size ``l`` :func:`svd` uses for an ``n × m``
    matrix (``l`` is only used by ``passes=1``); the planner reads them from here."""
    if oversample is None:
        oversample = max(rank + 1, _MIN_OVERSAMPLE_1PASS) if passes == 1 else 10
    k = min(rank + int(oversample), n, m)
    lco = min(int(co_range) if co_range is not None else _default_co_range(k, m, co_range_kind),
              n)
    return k, lco


def _default_co_range(k: int, m: int, co_kind: str) -> int:
    """Default co-range size: ``4k + 1`` (Gaussian Ψ); else ``16k + 1`` (one addition per entry
    with a sparse Ψ whatever ``l``), down to ``8k + 1`` when ``W`` (``l × m``) would exceed the
    memory budget. Measured (``bench_factorize_svd_cp.py --accuracy``): ``16k + 1`` is within
    0.5–1 % of the error of ``32k + 1`` and of ``l ≈ n``; ``8k + 1`` adds 1.5–2 %."""
    if co_kind == "gaussian":
        return 4 * k + 1
    return max(8 * k + 1, min(16 * k + 1, _CO_RANGE_BUDGET // (8 * m)))


def _test_sketch(A: da.Array, n_test: int, seed: int, source: str) -> tuple[Any, Any, Any]:
    """The test map ``Θ``, the test sketch ``Θ A`` and ``‖A‖_F²`` (lazy, from the same chunk
    reads as the other sketches of the pass), or three ``None`` when ``n_test`` is 0."""
    theta = _test_map(n_test, A.shape[0], seed)
    if theta is None:
        return None, None, None
    return theta, project(A, theta, axis=0, source=source), _sq_norm(A)


def _test_map(n_test: int, n: int, seed: int) -> SketchOperator | None:
    """The test map ``Θ`` (``n_test`` × n), or None when ``n_test`` is 0."""
    if n_test <= 0:
        return None
    # CountSketch: E[ΘᵀΘ] = I, so ‖Θ E‖² estimates ‖E‖²_F without bias, with a lower variance
    # than a Gaussian Θ (no Σ‖E_i‖⁴ term), at one addition per entry instead of 2 t flops
    return _op("countsketch", int(n_test), n, seed, _KEY_THETA)


#: rows of a chunk squared and summed at a time by :func:`_sq_block` (a float64 strip of a
#: 512-column chunk: 1 MiB, cache-resident)
_SQ_STRIP_ENTRIES = 2**17


def _sq_block(b: Any) -> np.ndarray:
    """``‖b‖_F²`` of one chunk, accumulated in float64.

    A float32 chunk is converted strip by strip into one reused buffer (each strip's ``ddot``),
    not as a whole: a float64 copy of a 32 MiB chunk cost more than the chunk's three sketch
    products (21 ms against 5 ms on a 16 384 x 512 chunk in a worker, measured), and the strips
    give the same sum to float64 rounding.
    """
    if hasattr(b, "multiply") and not isinstance(b, np.ndarray):  # scipy.sparse chunk
        return np.full((1, 1), float(b.multiply(b).sum()))
    b = np.asarray(b)
    if b.ndim == 0 or b.size == 0:
        return np.full((1, 1), float(np.square(b, dtype=np.float64).sum()))
    flat = b.reshape(b.shape[0], -1)
    if flat.dtype == np.float64:
        return np.full((1, 1), float(np.einsum("ij,ij->", flat, flat)))
    rows = max(1, _SQ_STRIP_ENTRIES // max(flat.shape[1], 1))
    # one float64 buffer for every strip: a dask worker trims freed memory back to the OS
    # (MALLOC_TRIM_THRESHOLD_), so a fresh buffer per strip would page-fault every time
    buf = np.empty((min(rows, flat.shape[0]), flat.shape[1]), dtype=np.float64)
    v = 0.0
    for i in range(0, flat.shape[0], rows):
        strip = flat[i : i + rows]
        s = buf[: strip.shape[0]]
        np.copyto(s, strip)
        s = s.ravel()
        v += float(np.dot(s, s))
    return np.full((1, 1), v)


def _sq_norm(A: da.Array) -> da.Array:
    """``‖A‖_F²`` in float64 as a lazy scalar: one tiny task per chunk of ``A``, so persisted
    together with the sketches it shares their read of each chunk. The error estimate divides
    by this exact norm, not by the test sketch's estimate ``‖Θ A‖``: only the numerator
    ``‖Θ (A − Â)‖`` is then random (see :attr:`SVDResult.error_estimate`)."""
    parts = A.map_blocks(_sq_block, dtype=np.float64,
                         chunks=tuple((1,) * n for n in A.numblocks))
    return parts.sum()


#: the smallest kept singular value, relative to the largest, for which the single pass takes
#: the SVD of its small ``B`` from ``B Bᵀ`` (an eigen-decomposition squares the condition)
_GRAM_SVD_RANGE = 1e-3


def _finish(
    Q: da.Array,
    B: da.Array,
    rank: int,
    passes: int,
    theta: Any,
    TA: Any,
    norm2: Any,
    params: dict[str, Any],
    client: Any,
    Qmap: np.ndarray | None = None,
    TQ: np.ndarray | None = None,
    gram: tuple[np.ndarray, np.ndarray, da.Array] | None = None,
) -> SVDResult:
    """SVD of ``A ≈ Q B`` with ``B`` (k × m, chunked along m); sign-normalise; estimate error.

    ``Qmap``: the basis is ``Q Qmap`` (``Q`` is then the raw range sketch ``Y``; the basis is
    never stored, ``U = Y (Qmap u)`` is formed blockwise). ``TQ``: ``Θ`` times the basis, known
    already (then the test map is not applied to ``U``). ``gram``: ``(B Bᵀ, L, W)`` with
    ``B = L W`` (``L`` small, ``W`` chunked along m): the SVD of ``B`` from the eigenpairs of
    the k × k ``B Bᵀ``, known already, and ``Vᵀ = Σ⁻¹ Uᵀ L W`` formed blockwise, with no round
    trip at all, when the kept singular values are within :data:`_GRAM_SVD_RANGE` of the
    largest (squaring then costs at most ~1e-10 of their relative accuracy); else the SVD of
    ``B`` is computed.
    """
    vt_r = None
    if gram is not None:
        BBt, lhs, W = gram
        lam, ub_g = np.linalg.eigh(np.asarray(BBt, dtype=np.float64))
        lam, ub_g = lam[::-1][:rank], ub_g[:, ::-1][:, :rank]
        if lam[-1] > 0 and lam[-1] >= _GRAM_SVD_RANGE**2 * lam[0]:
            s = np.sqrt(lam)
            u_r = ub_g
            coef = ((u_r.T @ np.asarray(lhs, dtype=np.float64)) / s[:, None]).astype(W.dtype)
            vt_r = W.map_blocks(lambda w, c=coef: c @ w, dtype=W.dtype,
                                chunks=((rank,), W.chunks[1]))
    if vt_r is None:
        B = B.rechunk({0: -1})
        if B.shape[1] >= B.shape[0] and B.numblocks[1] > 1:
            ub, sb, vb = da.linalg.svd(B)
        else:
            B1 = B.rechunk({1: -1})
            ub, sb, vb = da.linalg.svd(B1)
        ub, sb, vb = persist(ub, sb, vb, client=client)
        ub_np, sb_np = compute(ub, sb, client=client, progress=False)
        order = np.argsort(-sb_np, kind="stable")[:rank]
        s = np.asarray(sb_np[order])
        u_r = np.asarray(ub_np[:, order])
        vt_r = vb[order]
    if Qmap is not None:
        U = _times(Q, Qmap @ u_r).astype(Q.dtype)
    else:
        U = Q.map_blocks(np.dot, u_r, dtype=Q.dtype, chunks=(Q.chunks[0], (rank,)))
    # formed once: the sign statistics, the error estimate and the result all read it
    (U,) = persist(U, client=client)
    Vt = vt_r
    stats = sign_stats(U)
    err_parts: list[Any] = []
    if theta is not None:
        if TQ is not None:
            TU = (np.asarray(TQ, dtype=np.float64) @ u_r).astype(U.dtype)  # no pass at all
        else:
            TU = project(U, theta, axis=0, check_finite=False)  # t × r, a pass over U only
        TAhat = da.dot(TU * s[None, :], Vt)
        err_parts = [((TA - TAhat) ** 2).sum(), norm2]
    got = compute(stats, *err_parts, client=client, progress=False)
    sg = sign_vector(np.asarray(got[0]))
    err = float("nan")
    if theta is not None:
        num, den = float(got[1]), float(got[2])
        err = math.sqrt(num / den) if den > 0 else 0.0
    U = U * sg[None, :].astype(U.dtype)
    Vt = Vt * sg[:, None].astype(Vt.dtype)
    U, Vt = persist(U, Vt, client=client)
    return SVDResult(U=U, s=s, Vt=Vt, passes=passes, error_estimate=err, params=params)


def _single_pass(
    A: da.Array, rank: int, k: int, lco: int, kind: Kind, co_kind: Kind, seed: int, n_test: int,
    source: str, client: Any, progress: bool | None,
) -> SVDResult:
    n, m = A.shape
    omega = _op(kind, k, m, seed, _KEY_OMEGA)  # Ωᵀ: k × m (applied along the columns)
    psi = _op(co_kind, lco, n, seed, _KEY_PSI)  # Ψ: l × n (applied along the rows)
    # the single read: one task per chunk computes every sketch's partial (and its squared
    # norm) while the chunk is in the cache: Y = A Ωᵀ (n × k, chunked along rows), W = Ψ A
    # (l × m, chunked along columns), the test sketch Θ A
    theta = _test_map(n_test, n, seed)
    specs = [(omega, 1), (psi, 0)] + ([(theta, 0)] if theta is not None else [])
    extras = [_sq_block] if theta is not None else []
    sketches = project_many(A, specs, extras=extras, source=source, sum_extras=True)
    Y, W = sketches[0], sketches[1]
    TA = norm2 = None
    if theta is not None:
        TA, norm2 = sketches[2], sketches[3].sum()
        Y, W, TA, norm2 = persist(Y, W, TA, norm2, client=client)
    else:
        Y, W = persist(Y, W, client=client)
    if progress:
        logger.info("single-pass sketch of %s done (k=%d, l=%d)", source, k, lco)
    # Q = Y M with M from the k × k Gram of Y (a cheap tree reduction over the small, persisted
    # Y instead of a tall-skinny QR); Q is never stored, only applied blockwise.
    # Ψ Q = (Ψ Y) M = (Ψ A Ωᵀ) M = (W Ωᵀ) M: from the co-range sketch and Ω (m-sized), so Ψ,
    # n-sized, is not generated a second time; Θ Q = (Θ A Ωᵀ) M from the test sketch likewise,
    # so the error estimate makes no pass either. One round trip for the three small products.
    small = [_gram(Y), project(W, omega, axis=1, check_finite=False)]
    if theta is not None:
        small.append(project(TA, omega, axis=1, check_finite=False))
    # W Wᵀ (l × l), in the same round trip: B = (Ψ Q)⁺ W below has B Bᵀ = (Ψ Q)⁺ W Wᵀ (Ψ Q)⁺ᵀ,
    # so the small SVD of B needs no further pass over W (see _finish's gram)
    small.append(_row_gram(W))
    got = compute(*small, client=client, progress=False)
    M, cond = _basis_from_gram(got[0])
    Qmap: np.ndarray | None = None
    TQ = None
    if cond <= 1e12:
        if cond > 1e4:
            # Y M is orthonormal to about 1e-16 · cond(Yᵀ Y): a second round (as in
            # CholeskyQR2) makes it orthonormal to float64 precision
            M2, _ = _basis_from_gram(compute(_gram(_times(Y, M)), client=client,
                                             progress=False)[0])
            M = M @ M2
        PsiQ = np.asarray(got[1], dtype=np.float64) @ M
        Q, Qmap = Y, M
        if theta is not None:
            TQ = np.asarray(got[2], dtype=np.float64) @ M
    else:
        # a range sketch (numerically) rank-deficient: the data has (nearly) lower rank than k.
        # The Gram cannot resolve its small directions; a tall-skinny QR can, and Ψ Q is then
        # taken by regenerating Ψ
        Q = persist(_orth(Y), client=client)[0]
        PsiQ = np.asarray(compute(project(Q, psi, axis=0, check_finite=False), client=client,
                                  progress=False)[0], dtype=np.float64)
    # X = (Ψ Q)⁺ W: least squares with the small l × k matrix, applied blockwise along m
    pinv64 = np.linalg.pinv(PsiQ)
    pinv = pinv64.astype(W.dtype)
    Xs = W.map_blocks(lambda w, p=pinv: p @ w, dtype=W.dtype, chunks=((k,), W.chunks[1]))
    params = dict(rank=rank, k=k, l=lco, kind=kind, co_range_kind=co_kind, seed=seed,
                  n_test=n_test, passes=1)
    WWt = np.asarray(got[-1], dtype=np.float64)
    gram = (pinv64 @ WWt @ pinv64.T, pinv64, W)
    return _finish(Q, Xs, rank, 1, theta, TA, norm2, params, client, Qmap=Qmap, TQ=TQ,
                   gram=gram)


def _range_finder(
    A: da.Array, rank: int, k: int, q: int, kind: Kind, seed: int, n_test: int, source: str,
    client: Any, progress: bool | None,
) -> SVDResult:
    n, m = A.shape
    omega = _op(kind, k, m, seed, _KEY_OMEGA)
    Y = project(A, omega, axis=1, source=source)
    theta, TA, norm2 = _test_sketch(A, n_test, seed, source)
    if theta is not None:
        Y, TA, norm2 = persist(Y, TA, norm2, client=client)
    else:
        (Y,) = persist(Y, client=client)
    Q = persist(_orth(Y), client=client)[0]
    for _ in range(q):
        Z = da.dot(A.T, Q.rechunk({0: A.chunks[0]}))  # m × k, chunked like the columns
        Zq = persist(_orth(Z), client=client)[0]
        Y = da.dot(A, Zq.rechunk({0: A.chunks[1]}))
        Q = persist(_orth(Y), client=client)[0]
    B = da.dot(Q.rechunk({0: A.chunks[0]}).T, A)  # k × m, chunked along columns
    params = dict(rank=rank, k=k, kind=kind, seed=seed, n_test=n_test, passes=2 + 2 * q)
    return _finish(Q, B, rank, 2 + 2 * q, theta, TA, norm2, params, client)


def tropp_bound(sv: np.ndarray, rank: int, k: int, lco: int) -> float:
    """Expected-error bound of Tropp et al. (2017), Thm 4.3, for ``‖A − QX‖_F`` (Gaussian maps).

    ``sv`` are the singular values of ``A``. Returns the square root of the bound on
    ``E ‖A − Q X‖_F²``; used by the tests.
    """
    sv = np.asarray(sv, dtype=np.float64)
    tail = np.concatenate([np.cumsum((sv**2)[::-1])[::-1], [0.0]])

    def f(s: int, t: int) -> float:
        return s / (t - s - 1)

    best = min((1 + f(r, k)) * tail[r] for r in range(0, k - 1))
    return math.sqrt((1 + f(k, lco)) * best)

