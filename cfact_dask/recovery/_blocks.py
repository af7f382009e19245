"""Row blocks of ``W`` and the blockwise products of ``P`` that every recovery method shares.

:class:`Blocks` splits the n rows of ``W`` into blocks aligned to the operator's tiles and runs
their tasks: as dask tasks (a cluster's workers or dask's local scheduler) or, for a small ``W``,
in this process on numpy blocks. The kernels here (``P_bᵀ Y``, ``P_b x_b``, ``P_b P_bᵀ``) take
the operator spec and a row range and regenerate their columns of ``P``; partial sums travel to
the client through :func:`~cfact_dask._runtime.trees.tree_sum`, the one reduction of the
package's recovery, whose tree is the same delayed or evaluated in place (so both modes round
alike).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence
from typing import Any

import dask.array as da
import numpy as np
import scipy.sparse as sp
from dask import delayed

from .._runtime import cluster
from .._runtime.blas import blas_threads
from .._runtime.trees import tree_sum
from ..errors import InputError
from ..sketching.operators import SketchOperator

__all__ = [
    "Blocks", "absmax", "cols", "gram_block", "lipschitz", "local_scheduler", "local_threads",
    "matvec_block", "power_block", "rmatvec_stats", "sparse_to_blocks", "tree_sum",
]

#: the in-process FISTA keeps the operator's columns when all of P takes at most this many bytes
#: (an expander: 12 n s bytes), else regenerates them per step through the tile cache
_LOCAL_P_MAX_BYTES = 2**28


class Blocks:
    """Row blocks of ``W`` (aligned to operator tiles) and the scheduler running their tasks.

    Two modes share every kernel and every reduction order:

    * distributed (``local=False``): a block's values are dask objects persisted where they were
      computed (a cluster's workers, or dask's local scheduler); ``compute`` / ``persist`` go
      through dask. For a W too large for one process.
    * in-process (``local=True``, the ``recover.local-max-bytes`` path): a block's values are
      numpy arrays. ``compute`` / ``persist`` evaluate the (few, small) delayed graphs of the
      one-off steps synchronously, and the hot loop (FISTA) calls the block kernels directly on
      the columns of ``P`` (:meth:`block_cols`): a dask round trip per iteration costs ~20 ms of
      scheduling where the arithmetic costs ~1 ms. The kernels, the blocks and the order of
      the partial sums are the same as distributed, so both modes compute the same numbers.
    """

    def __init__(self, op: SketchOperator, client: Any, chunks: Any, local: bool = False) -> None:
        self.op = op
        self.client = client
        self.local = bool(local)
        n = op.n_features
        if chunks is None:
            T = op.tile_size
            rows = min(max(-(-n // 8), T), 2**18)
            rows = -(-rows // T) * T
            chunks = rows
        row_chunks = (
            da.core.normalize_chunks((chunks,), (n,))[0]
            if isinstance(chunks, (int, np.integer))
            else tuple(int(c) for c in chunks)
        )
        if sum(row_chunks) != n:
            raise InputError(f"chunks {chunks} do not add up to n_features={n}")
        self.chunks = row_chunks
        b = np.concatenate([[0], np.cumsum(row_chunks)]).astype(int)
        self.ranges = [(int(b[i]), int(b[i + 1])) for i in range(len(row_chunks))]
        self._P: dict[int, Any] = {}
        self._keep_cols = op.operator_bytes <= _LOCAL_P_MAX_BYTES  # per kind: SKETCH_KINDS

    def block_cols(self, i: int) -> Any:
        """Columns of ``P`` of block ``i`` for the in-process loop: generated once and kept when
        the whole ``P`` is small (sparse kinds: ``n s`` entries), else regenerated each time
        (through the tile cache) like the dask tasks do. The same matrix either way."""
        if i in self._P:
            return self._P[i]
        a, b = self.ranges[i]
        P = cols(self.op, a, b)
        if self._keep_cols:
            self._P[i] = P
        return P

    def task(self, fn: Any, **opts: Any) -> Any:
        """``dask.delayed(fn, **opts)`` to build a block's task; in-process ``fn`` itself, so the
        call runs at once on numpy values: a synchronous dask graph of two blocks cost 3-5 ms
        to tokenize (it hashes every array argument) and schedule, where its arithmetic costs
        0.1-1 ms, and a recovery runs a few dozen of them. The same functions on the same values
        in the same order either way, so the same numbers."""
        return fn if self.local else delayed(fn, **opts)

    def sum(self, parts: list[Any]) -> Any:
        """:func:`tree_sum` of the blocks' partials: delayed, or evaluated in-process (the
        same tree)."""
        return tree_sum(parts, local=self.local)

    def persist(self, objs: list[Any]) -> list[Any]:
        """``objs`` (delayed) persisted where they run; in-process: their values (numpy)."""
        if self.local:  # the values themselves (numpy), not handles to them
            return list(_evaluated(objs))
        return cluster.persist(*objs, client=self.client, scheduler=local_scheduler(),
                               progress=False)

    def compute(self, obj: Any) -> Any:
        """The value of ``obj`` (a delayed object, or a list of them) on the client."""
        many = isinstance(obj, list)
        objs = obj if many else [obj]
        if self.local:
            out = _evaluated(objs)
        else:
            out = cluster.compute(*objs, client=self.client, scheduler=local_scheduler(),
                                  progress=False)
        return out if many else out[0]

    def to_array(self, parts: Sequence[Any], r: int, dtype: Any = np.float64) -> da.Array:
        if self.local:
            X = np.concatenate([np.asarray(p, dtype=dtype).reshape(b - a, r)
                                for p, (a, b) in zip(parts, self.ranges, strict=True)])
            return da.from_array(X, chunks=(self.chunks, (r,)))
        arrs = [
            da.from_delayed(p, shape=(b - a, r), dtype=dtype)
            for p, (a, b) in zip(parts, self.ranges, strict=True)
        ]
        W = da.concatenate(arrs, axis=0) if len(arrs) > 1 else arrs[0]
        return cluster.persist(W, client=self.client, scheduler=local_scheduler(),
                               progress=False)[0]


def _evaluated(objs: list[Any]) -> list[Any]:
    """In-process: ``objs`` are values already (built by :meth:`Blocks.task`); any dask object
    among them (a caller's) is computed synchronously."""
    from dask import is_dask_collection

    if any(is_dask_collection(o) for o in objs):
        return list(cluster.compute(*objs, scheduler="sync", progress=False))
    return list(objs)


def cols(op: SketchOperator, a: int, b: int) -> Any:
    """Columns ``a:b`` of ``P`` in float64 (sparse for sparse kinds), regenerated from the spec
    through the operator's tile cache: what every block kernel works on."""
    return op.columns(a, b, np.float64)


def gram_block(op: SketchOperator, a: int, b: int) -> Any:
    """``P_b P_bᵀ`` (d x d) of the columns ``a:b``: CSR for sparse kinds (an expander's has
    ~s² entries per column, where the dense d x d took 0.07 s per block at d = 2 000), dense
    otherwise; summed over the blocks: ``P Pᵀ``."""
    P = cols(op, a, b)
    G = P @ P.T
    return G.tocsr() if sp.issparse(G) else np.asarray(G)


def power_block(op: SketchOperator, a: int, b: int, v: np.ndarray) -> np.ndarray:
    """``P_b P_bᵀ v``: a block's share of one power iteration on ``P Pᵀ``."""
    P = cols(op, a, b)
    return np.asarray(P @ (P.T @ v))


#: ‖P‖₂² per operator spec
_LIP: dict[Any, float] = {}


def lipschitz(op: SketchOperator, blocks: Blocks) -> float:
    """``‖P‖₂²``, the Lipschitz constant of the gradient of ``½‖P x − y‖²`` (FISTA's step is its
    inverse; cached per spec): the top eigenvalue of the blocks' summed ``P_b P_bᵀ`` for
    d ≤ 2048 (the same tree in both modes, so the same number), else 30 power iterations."""
    key = op
    if key in _LIP:
        return _LIP[key]
    d = op.n_components
    if d <= 2048:
        G = blocks.compute(blocks.sum([blocks.task(gram_block)(op, a, b)
                                       for a, b in blocks.ranges]))
        L = _top_eigenvalue(G) * (1 + 1e-6)
    else:
        v = np.ones(d) / math.sqrt(d)
        lam = 0.0
        for _ in range(30):
            w = blocks.compute(
                blocks.sum([blocks.task(power_block)(op, a, b, v) for a, b in blocks.ranges])
            )
            lam = float(np.linalg.norm(w))
            v = w / lam
        L = lam * 1.1
    _LIP[key] = L
    return L


def _top_eigenvalue(G: Any) -> float:
    """The largest eigenvalue of the symmetric positive semidefinite ``G`` (d x d, dense or
    sparse) by Lanczos (ARPACK, from a fixed random vector, to 1e-12 relative; in one BLAS
    thread, so every process gets the same number). The whole spectrum by LAPACK cost 0.1 s
    at d = 1 000 and 0.7 s at d = 2 000, every recovery in a fresh process; Lanczos 3-8 ms,
    the same value to 1e-15."""
    from scipy.sparse.linalg import ArpackError, eigsh

    if G.shape[0] <= 2:
        return float(np.linalg.eigvalsh(G.toarray() if sp.issparse(G) else G)[-1])
    with blas_threads(1):
        try:
            v0 = np.random.default_rng(0).standard_normal(G.shape[0])
            return float(eigsh(G, k=1, which="LA", v0=v0, tol=1e-12,
                               return_eigenvectors=False)[0])
        except ArpackError:  # pragma: no cover - not seen on a PSD Gram matrix
            return float(np.linalg.eigvalsh(G.toarray() if sp.issparse(G) else G)[-1])


def rmatvec_stats(op: SketchOperator, a: int, b: int, Y: np.ndarray, nonneg: bool) -> np.ndarray:
    """Column-wise max of (Pᵀ Y)_+ (or |Pᵀ Y|) and the squared column norms of this block of P."""
    P = cols(op, a, b)
    C = np.asarray(P.T @ Y)
    C = np.maximum(C, 0) if nonneg else np.abs(C)
    return C.max(axis=0) if C.size else np.zeros(Y.shape[1])


def matvec_block(op: SketchOperator, a: int, b: int, x: np.ndarray) -> np.ndarray:
    """``P_b x_b`` (d x r): a block's partial of ``P x``."""
    return np.asarray(cols(op, a, b) @ x)


def _absmax_block(x: np.ndarray) -> np.ndarray:
    return np.abs(x).max(axis=0) if x.size else np.zeros(x.shape[1])


def absmax(blocks: Blocks, xs: list[Any]) -> np.ndarray:
    """The largest ``|x|`` of each column of ``W`` given as row blocks ``xs``."""
    return np.asarray(
        blocks.compute(
            blocks.task(np.max)(
                blocks.task(np.stack)([blocks.task(_absmax_block)(x) for x in xs]), axis=0)
        )
    )


def _entries_block(
    a: int, b: int, r: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray
) -> np.ndarray:
    x = np.zeros((b - a, r))
    np.add.at(x, (rows - a, cols), vals)
    return x


def sparse_to_blocks(
    blocks: Blocks, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, r: int
) -> list[Any]:
    """The row blocks (persisted) of the n x r matrix with entries ``vals`` at ``(rows, cols)``
    (global row indices; repeated entries add up)."""
    order = np.argsort(rows, kind="stable")
    rows, cols, vals = rows[order], cols[order], vals[order]
    out = []
    for a, b in blocks.ranges:
        lo, hi = np.searchsorted(rows, [a, b])
        out.append(blocks.task(_entries_block)(a, b, r, rows[lo:hi], cols[lo:hi], vals[lo:hi]))
    return blocks.persist(out)


#: the scheduler of an in-process recovery; a context variable, not ``dask.config``, because
#: dask.config.set is process-global and concurrent recoveries in threads would race on it
_LOCAL_SCHEDULER: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cfact_recover_scheduler", default=None
)


@contextlib.contextmanager
def local_threads() -> Iterator[None]:
    """Run the dask graphs of an in-process recovery (one-off steps, the certificate) on dask's
    threaded scheduler, whatever the global dask config says."""
    token = _LOCAL_SCHEDULER.set("threads")
    try:
        yield None
    finally:
        _LOCAL_SCHEDULER.reset(token)


def local_scheduler() -> str | None:
    """The ``scheduler=`` for :func:`~cfact_dask._runtime.cluster.compute` / ``persist``
    without a client: ``"threads"`` inside :func:`local_threads`, else None (dask's own)."""
    return _LOCAL_SCHEDULER.get()
