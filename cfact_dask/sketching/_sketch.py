"""One-pass, chunking-invariant sketches ``M̃ = P M`` and their Zarr round trip.

References
----------
.. [1] V. Sharan, K. S. Tai, P. Bailis, G. Valiant. "Compressed factorization: fast and accurate
   low-rank factorization of compressively-sensed data". ICML 2019, arXiv:1706.08146.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import dask.array as da
import numpy as np

from .._runtime.cluster import client_context, compute, persist
from .._runtime.codecs import xarray_encoding
from .._runtime.display import SKIP, summary_html, summary_repr
from .._runtime.random import SeedLike
from .._version import __version__ as _version
from ..errors import InputError, RankError
from ..io import InputArray, checked_dask, open_array
from ._project import project
from .operators import Kind, SketchOperator, make_operator

__all__ = ["Sketch", "sketch", "sketch_with"]

SKETCH_DIM = "sketch_row"
SAMPLE = "sample"


@dataclass(frozen=True)
class Sketch:
    """A sketch ``P ×_axis X``: the compressed data plus the spec of ``P`` and provenance.

    Attributes
    ----------
    data : dask.array.Array
        The input's shape with the feature axis replaced by ``n_components``; every other axis
        keeps the input's chunks (for a matrix with features on axis 0: d × m, chunked along m).
    operator : SketchOperator
        The spec that regenerates ``P``.
    axis : int
        The sketched (feature) axis.
    feature_ranges : tuple of (start, stop)
        The feature blocks of ``P``'s columns this sketch covers (several after ``merge``).
    dims, coords : labels of the input, the feature dim renamed ``sketch_row``.
    provenance : dict
        Versions, seed, source and time; written to Zarr attrs.
    """

    data: da.Array
    operator: SketchOperator
    axis: int = 0
    feature_ranges: tuple[tuple[int, int], ...] = ()
    dims: tuple[str, ...] | None = None
    coords: Mapping[str, np.ndarray] = field(default_factory=dict)
    feature_dim: str | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ views
    def _summary(self) -> tuple[str, list[tuple[str, Any]]]:
        op = self.operator
        rows = [
            ("shape", tuple(self.shape)),
            ("data", self.data),
            ("operator", f"{op.kind}, d = {op.n_components} of n = {op.n_features} features "
                         f"({op.n_features / max(op.n_components, 1):.1f}x compression)"),
            ("seed", op.seed),
            ("feature axis", f"{self.axis}" + (f" ({self.feature_dim})" if self.feature_dim
                                               else "")),
            ("dims", self.dims if self.dims else SKIP),
            ("coords", ", ".join(self.coords) if self.coords else SKIP),
            ("complete", self.complete),
        ]
        return "cfact Sketch", rows

    # short summaries for the terminal and notebooks (not the arrays: see _runtime.display)
    __repr__ = summary_repr
    _repr_html_ = summary_html

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def n_components(self) -> int:
        return self.operator.n_components

    @property
    def n_features(self) -> int:
        return self.operator.n_features

    @property
    def complete(self) -> bool:
        """True when the sketch covers every feature of ``P`` (after merges)."""
        return _covered(self.feature_ranges) == [(0, self.n_features)]

    @property
    def matrix(self) -> da.Array:
        """The sketch as a d × m matrix (features first), for a matrix input; lazy transpose."""
        if self.data.ndim != 2:
            raise InputError(
                f"the sketch has {self.data.ndim} dimensions; .matrix is for matrices (use .data "
                f"for tensors)"
            )
        return self.data if self.axis == 0 else self.data.T

    def sample_coords(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.coords.items() if k != SKETCH_DIM}

    def to_xarray(self) -> Any:
        import xarray as xr

        dims = self._dims()
        return xr.DataArray(
            self.data, dims=dims, coords=self.sample_coords(), name="sketch",
            attrs={"cfact": self._attrs()},
        )

    def __dask_tokenize__(self) -> Any:
        # provenance (creation time, versions) is a record, not part of the value: two sketches
        # of the same data with the same operator must tokenize alike in any process
        from dask.base import normalize_token

        return ("cfact.Sketch", self.data.name, self.operator.__dask_tokenize__(), self.axis,
                tuple(tuple(int(x) for x in r) for r in self.feature_ranges), self.dims,
                normalize_token(dict(self.coords)), self.feature_dim)

    def _dims(self) -> tuple[str, ...]:
        if self.dims is not None:
            return self.dims
        dims = [f"dim_{i}" for i in range(self.data.ndim)]
        dims[self.axis] = SKETCH_DIM
        return tuple(dims)

    # ------------------------------------------------------------------ linearity
    def merge(self, other: Sketch) -> Sketch:
        """Sum with the sketch of a disjoint feature block of the same data (same operator)."""
        if not isinstance(other, Sketch):
            raise InputError(f"merge expects a Sketch, got {type(other).__name__}")
        if other.operator != self.operator:
            raise InputError(
                "cannot merge sketches made with different operators: "
                f"{self.operator.to_dict()} vs {other.operator.to_dict()}; sketch both blocks with "
                "the same kind, n_components, seed and n_features"
            )
        if other.axis != self.axis or other.shape != self.shape:
            raise InputError(
                f"cannot merge a sketch of shape {other.shape} (axis {other.axis}) into one of "
                f"shape {self.shape} (axis {self.axis}); the samples must be the same"
            )
        for a in self.feature_ranges:
            for b in other.feature_ranges:
                if a[0] < b[1] and b[0] < a[1]:
                    raise InputError(
                        f"feature ranges {a} and {b} overlap; merge only sketches of disjoint "
                        f"feature blocks (pass feature_offset= when sketching a block)"
                    )
        data = self.data + other.data.rechunk(self.data.chunks)
        ranges = tuple(sorted(self.feature_ranges + other.feature_ranges))
        return replace(self, data=data, feature_ranges=ranges)

    def append_samples(self, X: Any, *, check_finite: bool | None = None) -> Sketch:
        """Sketch new samples (matrix columns) with the same operator and append them."""
        if self.data.ndim != 2:
            raise InputError("append_samples is defined for matrix sketches")
        if isinstance(X, Sketch):
            new = X
            if new.operator != self.operator:
                raise InputError("append_samples needs a sketch made with the same operator")
        else:
            new = sketch_with(X, self.operator, axis=self.axis, check_finite=check_finite)
        sample_axis = 1 - self.axis
        if new.data.ndim != 2 or new.axis != self.axis:
            raise InputError(
                f"new samples have shape {new.data.shape} with feature axis {new.axis}; expected "
                f"a matrix with features on axis {self.axis}"
            )
        data = da.concatenate([self.data, new.data], axis=sample_axis)
        coords = dict(self.coords)
        if self.dims is not None:
            sdim = self.dims[sample_axis]
            if sdim in coords and sdim in new.coords:
                coords[sdim] = np.concatenate([coords[sdim], new.coords[sdim]])
            else:
                coords.pop(sdim, None)
        return replace(self, data=data, coords=coords)

    # ------------------------------------------------------------------ compute / persist
    def persist(self, client: Any = None) -> Sketch:
        with client_context(client, nbytes=self.data.nbytes) as c:
            (data,) = persist(self.data, client=c)
        return replace(self, data=data)

    def compute(self, client: Any = None, progress: bool | None = None) -> np.ndarray:
        with client_context(client, nbytes=self.data.nbytes) as c:
            return compute(self.data, client=c, progress=progress)[0]

    # ------------------------------------------------------------------ Zarr
    def _attrs(self) -> dict[str, Any]:
        return {
            "type": "sketch",
            "operator": self.operator.to_dict(),
            "axis": self.axis,
            "feature_ranges": [list(r) for r in self.feature_ranges],
            "dims": list(self._dims()),
            "feature_dim": self.feature_dim,
            "provenance": dict(self.provenance),
        }

    def to_zarr(
        self,
        store: str | os.PathLike,
        group: str = "sketch",
        *,
        overwrite: bool = False,
        client: Any = None,
        progress: bool | None = None,
        upstream: Mapping[str, str] | None = None,
        name: str = "sketch",
        labels: Any = None,
    ) -> str:
        """Compute the sketch and write it to ``store/group`` (xarray layout, spec in attrs).

        ``name`` is the variable's name (its row dimension is ``sketch_row``, or
        ``{name}_row`` for another name, e.g. ``holdout``, so that groups of one store align);
        ``labels`` (:class:`~cfact_dask._runtime.labels.Labels` of the input) are written as
        coordinates of the group, so that later stages can label their results.

        The output is checked before anything is computed (see :mod:`cfact_dask._runtime.outputs`:
        never into or around the input, ``overwrite`` replaces only a group cfact wrote). The group
        is written under a temporary name and moved into place when every chunk is written (on
        object storage: marked incomplete until then), so an interrupted write is never taken
        for a sketch and never blocks a rerun.
        """
        import xarray as xr

        from .._runtime.labels import vlen_text
        from .._runtime.outputs import GroupWriter, prepare_group

        loc = (self.provenance or {}).get("location")
        target = prepare_group(store, group, overwrite=overwrite, inputs=[loc] if loc else [],
                               what="sketch output")
        xa = self.to_xarray()
        xa.attrs = {}
        # Zarr needs regular chunks; the sketch is small, so this touches no input data
        data = xa.data
        data = data.rechunk(tuple(max(c) for c in data.chunks)) if not _regular(data) else data
        dims = list(xa.dims)
        if name != "sketch":
            dims[self.axis] = f"{name}_row"
        ds = xr.Dataset({name: (tuple(dims), data)}, coords=xa.coords)
        meta = self._attrs()
        meta["dims"] = dims
        if labels is not None and self.data.ndim == 2:
            m = self.shape[1 - self.axis]
            for k, (d, v) in labels.sized(None, m).coords.items():
                if k in ds.coords or (d in ds.dims and ds.sizes[d] != len(v)):
                    continue
                if d != labels.feature_dim and d not in ds.dims:
                    continue
                ds = ds.assign_coords({k: (d, v)})
            meta["labels"] = labels.to_meta()
        ds = ds.assign_coords({k: (c.dims, vlen_text(c.values)) for k, c in ds.coords.items()
                               if c.dtype.kind in "US"})
        for v in ds.variables.values():
            v.encoding = {}
        with GroupWriter(target) as w:
            # the group says it is incomplete from its first byte until finish()
            ds.attrs = w.incomplete_attrs("sketch")
            with client_context(client, nbytes=self.data.nbytes) as c:
                delayed = ds.to_zarr(target.store, group=w.write_group, mode="w", compute=False,
                                     consolidated=False, zarr_format=3,
                                     encoding=xarray_encoding(ds), write_empty_chunks=True)
                compute(delayed, client=c, progress=progress, desc=f"writing sketch to {store}")
            return w.finish(meta, upstream=upstream)

    @classmethod
    def from_zarr(cls, store: str | os.PathLike, group: str = "sketch") -> Sketch:
        """Open a sketch written by :meth:`to_zarr` (lazy; chunks as stored)."""
        import xarray as xr
        import zarr

        from .._runtime.outputs import resolve, store_path

        store = store_path(store)
        meta = _read_attrs(store, group, "sketch")
        ds = xr.open_zarr(store, group=group, consolidated=False, chunks={})
        # "sketch", or the one variable of a group written with another name ("holdout")
        name = "sketch" if "sketch" in ds.data_vars else next(iter(ds.data_vars))
        xa = ds[name]
        coords = {str(k): np.asarray(v.values) for k, v in xa.coords.items()
                  if v.ndim == 1 and k in xa.dims}
        dims = tuple(meta["dims"])
        # the data through the checked reader: a corrupt chunk is a ChunkError naming it
        data = checked_dask(zarr.open_array(store, path=f"{group}/{name}", mode="r"),
                            f"the sketch {store}/{group}")
        return cls(
            data=data,
            operator=SketchOperator.from_dict(meta["operator"]),
            axis=int(meta["axis"]),
            feature_ranges=tuple(tuple(r) for r in meta["feature_ranges"]),
            dims=dims,
            coords=coords,
            feature_dim=meta.get("feature_dim"),
            provenance={**meta.get("provenance", {}),
                        "read_from": {"store": resolve(store), "group": group,
                                      "id": meta.get("id")}},
        )


def _regular(x: da.Array) -> bool:
    return all(len(set(c[:-1])) <= 1 and (len(c) == 1 or c[-1] <= c[0]) for c in x.chunks)


def _covered(ranges: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _read_attrs(store: str, group: str, kind: str) -> dict[str, Any]:
    """The ``cfact`` attributes of a finished ``kind`` group (see ``open_complete_group``)."""
    from .._runtime.outputs import open_complete_group

    return open_complete_group(store, group, kind)[1]


def _provenance(op: SketchOperator, source: str, location: str | None = None) -> dict[str, Any]:
    import dask
    import zarr

    return {
        "location": location,
        "cfact_dask": _version,
        "dask": dask.__version__,
        "zarr": zarr.__version__,
        "numpy": np.__version__,
        "seed": op.seed,
        "source": source,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def sketch_with(
    X: Any,
    operator: SketchOperator,
    *,
    axis: int | str | None = None,
    feature_offset: int = 0,
    check_finite: bool | None = None,
    split_every: int | None = None,
) -> Sketch:
    """Sketch ``X`` with an existing operator (e.g. new samples, or one node's columns)."""
    from .. import config

    inp = X if isinstance(X, InputArray) else open_array(X)
    inp = inp.with_feature_axis(axis)
    ax = inp.feature_axis
    n_block = inp.shape[ax]
    if feature_offset < 0 or feature_offset + n_block > operator.n_features:
        raise InputError(
            f"{inp.source} has {n_block} features on axis {ax}; at feature_offset={feature_offset} "
            f"that does not fit in an operator over {operator.n_features} features"
        )
    if check_finite is None:
        check_finite = bool(config.get("sketch.check-finite", True))
    data = project(
        inp.data, operator, axis=ax, offset=feature_offset, check_finite=check_finite,
        split_every=split_every, source=inp.source,
    )
    dims = None
    feature_dim = None
    if inp.dims is not None:
        dl = list(inp.dims)
        feature_dim = dl[ax]
        dl[ax] = SKETCH_DIM
        dims = tuple(dl)
    elif inp.ndim == 2:
        # an unlabelled matrix: the same names every other group of a store uses
        dims = (SKETCH_DIM, SAMPLE) if ax == 0 else (SAMPLE, SKETCH_DIM)
    if dims is not None and len(dims) == 2 and dims[1 - ax].startswith("dim_"):
        dl = list(dims)
        dl[1 - ax] = SAMPLE
        dims = tuple(dl)
    coords = {k: v for k, v in inp.coords.items()
              if (inp.dims is None or k != inp.dims[ax]) and dims is not None and k in dims}
    return Sketch(
        data=data,
        operator=operator,
        axis=ax,
        feature_ranges=((feature_offset, feature_offset + n_block),),
        dims=dims,
        coords=coords,
        feature_dim=feature_dim,
        provenance=_provenance(operator, inp.source, inp.location),
    )


def sketch(
    X: Any,
    n_components: int,
    kind: Kind = "expander",
    seed: SeedLike = 0,
    axis: int | str | None = None,
    *,
    s: int | None = None,
    n_features: int | None = None,
    feature_offset: int = 0,
    check_finite: bool | None = None,
    tile_size: int | None = None,
    split_every: int | None = None,
) -> Sketch:
    """Compress the feature axis of ``X`` with a random operator, in one pass (lazy).

    Each input chunk is read once and multiplied by the columns of ``P`` it meets (regenerated from
    the operator's seed and the chunk's *global* position); the d-sized partials are summed by a
    tree reduction. No rechunk of the input; float32 in gives float32 out.

    Parameters
    ----------
    X : array-like or InputArray
        Anything :func:`open_array` accepts (Zarr path, zarr.Array, xarray, dask, numpy).
    n_components : int
        The sketch size ``d`` (1 <= d < n).
    kind : {"expander", "sparse_sign", "countsketch", "gaussian"} or a registered kind
        The measurement matrix (see :class:`SketchOperator` and ``SKETCH_KINDS``). ``expander``
        keeps nonnegative data nonnegative, so NMF can run on the sketch.
    seed : int, SeedSequence, Generator or None
        Root seed of the operator (default 0, so results are repeatable).
    axis : int or str, optional
        The feature axis (a dim name for labelled data); defaults to the input's (0).
    s : int, optional
        Nonzeros per column for ``expander`` / ``sparse_sign``.
    n_features, feature_offset : int, optional
        For sketching one feature block of a larger dataset: the global ``n`` and this block's
        first feature. Sketches of disjoint blocks combine with :meth:`Sketch.merge`.
    check_finite : bool, optional
        Raise :class:`~cfact_dask.errors.NonFiniteError` naming the chunk when NaN / Inf is met
        (default from ``cfact.sketch.check-finite``).

    Returns
    -------
    Sketch
        Lazy; ``.persist()``, ``.compute()`` or ``.to_zarr()`` run the pass.

    Examples
    --------
    >>> import numpy as np, cfact_dask as cf
    >>> X = np.abs(np.random.default_rng(0).standard_normal((1000, 50)))
    >>> sk = cf.sketch(X, n_components=100, kind="expander", seed=0)
    >>> sk.shape
    (100, 50)
    """
    inp = X if isinstance(X, InputArray) else open_array(X)
    if len(inp.shape) < 2:
        # refused before any read: nothing downstream (factorization, recovery) takes a vector
        raise InputError(
            f"{inp.source} has shape {tuple(inp.shape)}: a sketch compresses the feature axis of "
            f"a features × samples matrix (or of a tensor). For one sample, pass it as a column "
            f"(x.reshape(-1, 1)); to sketch a vector with an existing operator, use "
            f"operator.matvec(x)"
        )
    inp = inp.with_feature_axis(axis)
    ax = inp.feature_axis
    n = int(n_features) if n_features is not None else inp.shape[ax] + feature_offset
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)):
        raise RankError(f"n_components must be an int, got {n_components!r}")
    if not 1 <= n_components < n:
        raise RankError(
            f"n_components={n_components} is impossible for {n} features on axis {ax} of "
            f"{inp.source}: a sketch compresses, so choose 1 <= n_components < {n}"
        )
    op = make_operator(kind, int(n_components), n, seed, s=s, tile_size=tile_size)
    return sketch_with(
        inp, op, axis=ax, feature_offset=feature_offset, check_finite=check_finite,
        split_every=split_every,
    )
