"""The labels of a matrix input, carried onto every group cfact writes from it.

A features × samples input may have dimension names (``gene`` / ``cell``), index coordinates
(the gene and cell names), non-index coordinates along either axis (``batch`` per cell) and
attributes. :class:`Labels` holds them; each result group names its dimensions from them so
that every group of a store opens with ``xr.open_zarr``, the whole store with
``xr.open_datatree`` and ``xr.merge`` of its groups aligns:

========================  ==================================================================
``sketch_row``            rows of the sketch (``d``)
``holdout_row``           rows of the hold-out sketch
``component``             the rank ``r``
feature dim               the input's feature dim (``feature`` when unnamed), with its coords
sample dim                the input's sample dim (``sample`` when unnamed), with its coords
========================  ==================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["COMPONENT", "FEATURE", "HOLDOUT_ROW", "SAMPLE", "SKETCH_ROW", "Labels",
           "labels_of_store", "vlen_text", "write_coords"]

FEATURE = "feature"
SAMPLE = "sample"
COMPONENT = "component"
SKETCH_ROW = "sketch_row"
HOLDOUT_ROW = "holdout_row"
_RESERVED = {COMPONENT, SKETCH_ROW, HOLDOUT_ROW}


def vlen_text(values: Any) -> np.ndarray:
    """Text labels as variable-length strings (object dtype), the Zarr v3 ``string`` type;
    numpy's fixed-width ``<U`` has no Zarr v3 specification (zarr warns on every write)."""
    v = np.asarray(values)
    return v.astype(object) if v.dtype.kind in "US" else v


def _dim_name(name: str | None, default: str) -> str:
    # xarray's and cfact's placeholder names say nothing: use the meaningful default instead
    if not name or name.startswith("dim_") or name in _RESERVED:
        return default
    return str(name)


@dataclass(frozen=True)
class Labels:
    """Dimension names, coordinates and attributes of a features × samples matrix.

    Attributes
    ----------
    feature_dim, sample_dim : str
        The names of the two axes (``feature`` / ``sample`` when the input has none).
    coords : dict
        ``name -> (dim, values)`` for every 1-D coordinate along either axis, index
        coordinates (``name == dim``) and non-index ones (``batch`` along ``cell``) alike.
    attrs : dict
        The input's attributes.
    """

    feature_dim: str = FEATURE
    sample_dim: str = SAMPLE
    coords: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_input(cls, inp: Any) -> Labels:
        """The labels of an :class:`~cfact_dask.io.InputArray` (matrices; none for tensors)."""
        if getattr(inp, "ndim", 2) != 2:
            return cls()
        ax = int(getattr(inp, "feature_axis", 0))
        dims = getattr(inp, "dims", None)
        fdim = _dim_name(dims[ax] if dims else None, FEATURE)
        sdim = _dim_name(dims[1 - ax] if dims else None, SAMPLE)
        if fdim == sdim:
            fdim, sdim = FEATURE, SAMPLE
        rename = {}
        if dims:
            rename = {dims[ax]: fdim, dims[1 - ax]: sdim}
        coords: dict[str, tuple[str, np.ndarray]] = {}
        for k, v in (getattr(inp, "coords", None) or {}).items():
            if k in rename:
                coords[rename[k]] = (rename[k], np.asarray(v))
        for k, (d, v) in (getattr(inp, "aux_coords", None) or {}).items():
            if d in rename and k not in coords and k not in rename.values():
                coords[str(k)] = (rename[d], np.asarray(v))
        return cls(fdim, sdim, coords, dict(getattr(inp, "attrs", None) or {}))

    def along(self, dim: str) -> dict[str, tuple[str, np.ndarray]]:
        """The coordinates along ``dim`` (``feature_dim`` or ``sample_dim``), for xarray."""
        return {k: (d, v) for k, (d, v) in self.coords.items() if d == dim}

    def sized(self, n_features: int | None, n_samples: int | None) -> Labels:
        """These labels without coordinates whose length does not match the sizes given (None:
        not checked), e.g. for a result of another shape."""
        keep = {}
        for k, (d, v) in self.coords.items():
            size = n_features if d == self.feature_dim else n_samples
            if size is None or len(v) == size:
                keep[k] = (d, v)
        return Labels(self.feature_dim, self.sample_dim, keep, self.attrs)

    # ------------------------------------------------------------------ storage
    def dataset_coords(self) -> dict[str, tuple[str, np.ndarray]]:
        """All coordinates, for the Dataset of the group that keeps them (the sketch's)."""
        return dict(self.coords)

    @classmethod
    def from_dataset(cls, ds: Any, meta: dict[str, Any] | None = None) -> Labels:
        """Labels written by :meth:`to_meta` + :meth:`dataset_coords` into one group."""
        meta = dict(meta or {})
        fdim = str(meta.get("feature_dim") or FEATURE)
        sdim = str(meta.get("sample_dim") or SAMPLE)
        coords = {}
        for k, v in ds.coords.items():
            if v.ndim == 1 and v.dims[0] in (fdim, sdim):
                coords[str(k)] = (str(v.dims[0]), np.asarray(v.values))
        return cls(fdim, sdim, coords, dict(meta.get("attrs") or {}))

    def to_meta(self) -> dict[str, Any]:
        """The JSON part (names and attributes; the coordinates are arrays of the group)."""
        from .jsonattrs import to_json

        return {"feature_dim": self.feature_dim, "sample_dim": self.sample_dim,
                "attrs": to_json(dict(self.attrs), arrays="summary")}


def labels_of_store(store: str, group: str = "sketch") -> Labels:
    """The labels a sketch group carries (empty labels for stores written before them)."""
    import xarray as xr
    import zarr

    try:
        g = zarr.open_group(store, path=group, mode="r", use_consolidated=False)
        meta = dict(g.attrs).get("cfact") or {}
        ds = xr.open_zarr(store, group=group, consolidated=False, chunks={})
    except Exception:  # noqa: BLE001 - no labels is a valid answer for an old or odd store
        return Labels()
    lab = meta.get("labels")
    if lab is None:
        dims = list(meta.get("dims") or [])
        fdim = _dim_name(meta.get("feature_dim"), FEATURE)
        sdim = _dim_name(dims[1 - int(meta.get("axis", 0))] if len(dims) == 2 else None, SAMPLE)
        return Labels(fdim, sdim, {}, {})
    return Labels.from_dataset(ds, lab)


def write_coords(group: Any, coords: dict[str, tuple[str, np.ndarray]],
                 variables: dict[str, Any]) -> None:
    """Write ``coords`` (``name -> (dim, values)``) into the zarr ``group`` and link them.

    Index coordinates (``name == dim``) are found by xarray from their dimension name; the
    others are listed in the ``coordinates`` attribute of each array in ``variables`` (name ->
    zarr array) that has their dimension, as xarray writes them. Text labels are stored as
    variable-length strings (the Zarr v3 string type).
    """
    for name, (dim, values) in coords.items():
        v = np.asarray(values)
        dtype: Any = str if v.dtype.kind in "OUS" else v.dtype
        a = group.create_array(name, shape=v.shape, dtype=dtype, chunks=v.shape or None,
                               dimension_names=[dim])
        a[...] = v.astype(object) if dtype is str else v
    for arr in variables.values():
        dims = tuple(getattr(arr.metadata, "dimension_names", None) or ())
        linked = [k for k, (d, _) in coords.items() if k != d and d in dims]
        if linked:
            arr.attrs["coordinates"] = " ".join(sorted(linked))
