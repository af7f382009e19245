"""Figures for runs and benchmarks: convergence, factors, phase transitions, error vs compression.

matplotlib is optional (the ``plot`` extra: ``pip install 'cfact_dask[plot]'``) and imported only
when a function here is called. Figures are built with :class:`matplotlib.figure.Figure` directly,
never through ``pyplot``: no global figure state, nothing to close, no GUI backend needed, safe in
worker threads and on headless machines (PNG files are rendered with Agg). Every function returns
the Figure (notebooks display it) and writes it to ``path`` when one is given (PNG unless the
suffix names another format).

Factor matrices may be numpy, dask or xarray arrays of shape (n_features, rank). Only small pieces
are computed: the top features of each component (``dask.array.argtopk``, a tree reduction) and
their rows, never the whole of a large ``W``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "plot_convergence",
    "plot_error_vs_compression",
    "plot_factor_heatmap",
    "plot_factor_images",
    "plot_phase_transition",
    "write_run_plots",
]

logger = logging.getLogger(__name__)

_EXTRA_HINT = (
    "cfact_dask.plots needs matplotlib, which is not installed; install the plot extra: "
    "pip install 'cfact_dask[plot]'  (or: pip install matplotlib)"
)


# --------------------------------------------------------------------------- helpers
def _figure_class() -> type[Figure]:
    """Import matplotlib lazily, with an error naming the ``plot`` extra when it is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:  # ModuleNotFoundError included
        raise ImportError(_EXTRA_HINT) from e
    return Figure


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        # the root Figure also when ``ax`` sits in a SubFigure (a Figure's .figure is itself)
        root: Figure = ax.figure.figure  # type: ignore[union-attr, assignment]
        return root, ax
    fig = _figure_class()(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _finish(fig: Figure, path: str | os.PathLike | None, dpi: int) -> Figure:
    if path is not None:
        path = os.fspath(path)
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        fmt = None if os.path.splitext(path)[1] else "png"
        fig.savefig(path, dpi=dpi, format=fmt)
        logger.info("wrote %s", path)
    return fig


def _as_1d(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(_compute_small(values), dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise InputError(
            f"{what} must be a non-empty 1-D sequence of numbers, got shape {arr.shape}"
        )
    return arr


def _compute_small(x: Any) -> Any:
    """Materialise a small dask / xarray object as numpy (anything else passes through)."""
    if hasattr(x, "dask") and hasattr(x, "compute"):
        x = x.compute()
    if hasattr(x, "values") and hasattr(x, "dims"):  # xarray
        x = x.values
    return x


def _factor_matrix(W: Any, what: str = "W") -> Any:
    """Return W as a 2-D numpy or dask array (xarray unwrapped lazily), validated."""
    data = getattr(W, "data", W) if hasattr(W, "dims") else W
    if not hasattr(data, "ndim"):
        data = np.asarray(data)
    if data.ndim == 1:
        data = data.reshape(-1, 1)
    if data.ndim != 2:
        raise InputError(
            f"{what} must be a (n_features, rank) matrix, got {data.ndim} dimensions "
            f"(shape {tuple(data.shape)})"
        )
    if 0 in data.shape:
        raise InputError(f"{what} is empty (shape {tuple(data.shape)})")
    dt = np.dtype(data.dtype)
    if not np.issubdtype(dt, np.number) or np.issubdtype(dt, np.complexfloating):
        raise InputError(f"{what} must hold real numbers, got dtype {data.dtype}")
    return data


def _feature_names_from(W: Any) -> np.ndarray | None:
    """Labels of the feature (first) dim of an xarray factor, if it has a coordinate."""
    dims = getattr(W, "dims", None)
    coords = getattr(W, "coords", None)
    if dims and coords is not None and dims[0] in coords:
        return np.asarray(coords[dims[0]].values)
    return None


def _check_finite(a: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise InputError(
            f"{what} holds NaN or Inf (first at index {tuple(int(i) for i in bad)}); plot a "
            f"factor from a converged run, or drop the non-finite entries first"
        )


# --------------------------------------------------------------------------- convergence
def plot_convergence(
    histories: Mapping[str, Sequence[float]],
    ylabel: str = "relative error",
    logy: bool = True,
    path: str | os.PathLike | None = None,
    *,
    xlabel: str = "iteration",
    title: str | None = None,
    ax: Axes | None = None,
    dpi: int = 120,
) -> Figure:
    """Plot one convergence curve per run (error or cost against iteration).

    Parameters
    ----------
    histories : mapping of str to sequence of float
        Label → the values of successive iterations (e.g. an estimator's error history, or one
        entry per DGD+LOCAL node / per method). Each curve starts at iteration 1.
    ylabel : str
        Label of the y axis.
    logy : bool
        Log-scale y axis (when every value is positive; otherwise a linear axis is used and the
        fall-back is logged).
    path : str or path-like, optional
        Write the figure there (PNG unless the suffix says otherwise; parent dirs are created).
    xlabel, title : str, optional
        Axis label and title.
    ax : matplotlib.axes.Axes, optional
        Draw into this Axes instead of a new figure.
    dpi : int
        Resolution of the written file.

    Returns
    -------
    matplotlib.figure.Figure
        One ``Line2D`` per history in its Axes.

    Examples
    --------
    >>> fig = plot_convergence({"sketch": [1.0, 0.3, 0.1], "raw": [1.0, 0.2, 0.05]})
    >>> len(fig.axes[0].lines)
    2
    """
    if isinstance(histories, Mapping):
        items = list(histories.items())
    else:
        raise InputError(
            f"histories must be a mapping of label -> sequence of values, got "
            f"{type(histories).__name__}; wrap a single history as {{'run': history}}"
        )
    if not items:
        raise InputError("histories is empty: give at least one label -> sequence of values")
    curves = [(str(k), _as_1d(v, f"history {k!r}")) for k, v in items]
    fig, ax = _new_axes(ax, (6.0, 4.0))
    for label, y in curves:
        x = np.arange(1, y.size + 1)
        ax.plot(x, y, label=label, marker="o" if y.size <= 30 else None, markersize=3)
    positive = all(np.all(y[np.isfinite(y)] > 0) for _, y in curves)
    if logy and positive:
        ax.set_yscale("log")
    elif logy:
        logger.info("plot_convergence: values <= 0 present, using a linear y axis")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if len(curves) > 1 or curves[0][0]:
        ax.legend(fontsize="small")
    return _finish(fig, path, dpi)


# --------------------------------------------------------------------------- factors
def _top_feature_rows(W: Any, k: int) -> np.ndarray:
    """Indices (k, rank) of the ``k`` largest-|w| features of each column, largest first.

    For a dask ``W`` this is one tree reduction (``argtopk``) and one small fancy-index read.
    """
    n, r = W.shape
    k = min(k, n)
    if isinstance(W, np.ndarray):
        a = np.abs(W)
        top = np.argsort(-a, axis=0, kind="stable")[:k]  # (k, r), largest first
    else:
        import dask.array as da

        top = np.asarray(da.argtopk(abs(W), k, axis=0).compute())  # (k, r), largest first
    return top


def plot_factor_heatmap(
    W: Any,
    top_features: int = 10,
    feature_names: Sequence[Any] | None = None,
    path: str | os.PathLike | None = None,
    *,
    normalize: bool = True,
    title: str | None = None,
    cmap: str | None = None,
    ax: Axes | None = None,
    dpi: int = 120,
) -> Figure:
    """Heatmap of the top features of each component of a factor ``W`` (features × rank).

    The rows are the ``top_features`` features of largest ``|W[:, j]|`` for each component ``j``
    (grouped by component, each feature once); the columns are the components. With
    ``normalize``, each column is divided by its largest absolute value, so components of
    different scales share one colour scale.

    Parameters
    ----------
    W : array-like, shape (n_features, rank)
        numpy, dask or xarray. A dask ``W`` is never gathered: only the top rows are computed.
    top_features : int
        Features shown per component.
    feature_names : sequence, optional
        One label per feature (length n_features); defaults to the coordinate of an xarray
        ``W``'s first dim, else the feature indices.
    path : str or path-like, optional
        Write the figure there (PNG by default).
    normalize : bool
        Scale each component to a maximum absolute value of 1.
    title, cmap : str, optional
        Title; colormap (``viridis`` for nonnegative factors, ``RdBu_r`` centred on 0 otherwise).
    ax : matplotlib.axes.Axes, optional
        Draw into this Axes.
    dpi : int
        Resolution of the written file.

    Returns
    -------
    matplotlib.figure.Figure
        Its first Axes holds one image of shape (shown features, rank).
    """
    names: Any = feature_names if feature_names is not None else _feature_names_from(W)
    data = _factor_matrix(W)
    n, r = data.shape
    if isinstance(top_features, bool) or not isinstance(top_features, (int, np.integer)) or (
        top_features < 1
    ):
        raise InputError(f"top_features must be a positive int, got {top_features!r}")
    if names is not None and len(names) != n:
        raise InputError(
            f"feature_names has {len(names)} labels but W has {n} features (rows); "
            f"give one label per row of W"
        )
    if not isinstance(data, np.ndarray) and not hasattr(data, "dask"):
        data = np.asarray(data)
    top = _top_feature_rows(data, int(top_features))
    # rows grouped by component (block-diagonal look), each feature listed once
    order: list[int] = []
    seen: set[int] = set()
    for j in range(r):
        for i in top[:, j]:
            if int(i) not in seen:
                seen.add(int(i))
                order.append(int(i))
    rows = np.asarray(order)
    if isinstance(data, np.ndarray):
        M = np.asarray(data[rows], dtype=float)
    else:
        # fancy indexing wants sorted unique indices for an efficient read; reorder after
        srt = np.sort(rows)
        block = np.asarray(data[srt].compute(), dtype=float)
        M = block[np.searchsorted(srt, rows)]
    _check_finite(M, "W")
    if normalize:
        scale = np.max(np.abs(M), axis=0)
        M = M / np.where(scale > 0, scale, 1.0)
    signed = bool(np.any(M < 0))
    fig, ax = _new_axes(ax, (1.2 + 0.45 * r, 1.5 + 0.22 * len(rows)))
    if signed:
        vmax = float(np.max(np.abs(M))) or 1.0
        im = ax.imshow(M, aspect="auto", interpolation="nearest", cmap=cmap or "RdBu_r",
                       vmin=-vmax, vmax=vmax)
    else:
        im = ax.imshow(M, aspect="auto", interpolation="nearest", cmap=cmap or "viridis", vmin=0)
    ax.set_xticks(np.arange(r), [str(j + 1) for j in range(r)])
    labels = [str(names[i]) if names is not None else str(i) for i in rows]
    ax.set_yticks(np.arange(len(rows)), labels, fontsize="small" if len(rows) <= 60 else 5)
    ax.set_xlabel("component")
    ax.set_ylabel("feature")
    ax.set_title(title or f"top {min(int(top_features), n)} features per component")
    fig.colorbar(im, ax=ax, label="weight / max |weight|" if normalize else "weight")
    return _finish(fig, path, dpi)


def plot_factor_images(
    W: Any,
    image_shape: tuple[int, ...],
    path: str | os.PathLike | None = None,
    *,
    ncols: int | None = None,
    titles: Sequence[str] | None = None,
    cmap: str = "gray",
    title: str | None = None,
    dpi: int = 120,
) -> Figure:
    """Show each component (column) of ``W`` as an image, e.g. NMF parts of faces or digits.

    Parameters
    ----------
    W : array-like, shape (n_features, rank)
        numpy, dask or xarray; ``n_features`` must equal ``prod(image_shape)`` (pixels in C order).
    image_shape : tuple of int
        ``(height, width)``, or ``(height, width, 3 | 4)`` for colour.
    path : str or path-like, optional
        Write the figure there (PNG by default).
    ncols : int, optional
        Images per row (default: up to 5).
    titles : sequence of str, optional
        One title per component (default ``"1"``, ``"2"``, ...).
    cmap : str
        Colormap of single-channel images; each image is scaled to its own range.
    title : str, optional
        Title of the whole figure.
    dpi : int
        Resolution of the written file.

    Returns
    -------
    matplotlib.figure.Figure
        One Axes with one image per component.
    """
    shape = tuple(int(s) for s in np.atleast_1d(image_shape))
    if len(shape) not in (2, 3) or any(s < 1 for s in shape) or (
        len(shape) == 3 and shape[2] not in (3, 4)
    ):
        raise InputError(
            f"image_shape must be (height, width) or (height, width, 3|4), got {image_shape!r}"
        )
    data = _factor_matrix(W)
    n, r = data.shape
    if n != int(np.prod(shape)):
        raise InputError(
            f"W has {n} features (rows) but image_shape {shape} has {int(np.prod(shape))} pixels; "
            f"give the shape the images had when they were flattened into W's rows"
        )
    if titles is not None and len(titles) != r:
        raise InputError(f"titles has {len(titles)} entries for {r} components")
    A = np.asarray(_compute_small(data), dtype=float)
    _check_finite(A, "W")
    ncols = int(ncols) if ncols else min(r, 5)
    if ncols < 1:
        raise InputError(f"ncols must be >= 1, got {ncols}")
    nrows = -(-r // ncols)
    h, w = shape[:2]
    panel = 2.0
    aspect = h / w
    Figure = _figure_class()
    fig = Figure(figsize=(panel * ncols, panel * aspect * nrows + (0.4 if title else 0.1)),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for j in range(nrows * ncols):
        ax = axes.flat[j]
        ax.set_axis_off()
        if j >= r:
            continue
        img = A[:, j].reshape(shape)
        if img.ndim == 3:
            lo, hi = float(img.min()), float(img.max())
            img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
            ax.imshow(img, interpolation="nearest")
        else:
            ax.imshow(img, cmap=cmap, interpolation="nearest")
        ax.set_title(titles[j] if titles is not None else str(j + 1), fontsize="small")
    if title:
        fig.suptitle(title)
    return _finish(fig, path, dpi)


# --------------------------------------------------------------------------- phase transitions
def plot_phase_transition(
    table: Any,
    compression: Sequence[float] | None = None,
    sparsity: Sequence[float] | None = None,
    path: str | os.PathLike | None = None,
    *,
    level: float | None = 0.5,
    xlabel: str | None = None,
    ylabel: str | None = None,
    value_label: str = "success rate",
    title: str | None = None,
    cmap: str = "magma",
    ax: Axes | None = None,
    dpi: int = 120,
) -> Figure:
    """Phase-transition map: a value (success rate, recovery error) over compression × sparsity.

    Parameters
    ----------
    table : array-like, shape (len(compression), len(sparsity))
        ``table[i, j]`` is the value at ``compression[i]``, ``sparsity[j]``. An xarray DataArray
        with two 1-D coordinates supplies the axis values itself (and its dim names as labels).
    compression, sparsity : sequence of float, optional
        The axis values (default: the indices, or the coordinates of an xarray ``table``).
    path : str or path-like, optional
        Write the figure there (PNG by default).
    level : float or None
        Draw the contour of this value (the transition; e.g. 0.5 success). None for no contour.
    xlabel, ylabel : str, optional
        Axis labels (default: the dim names of an xarray ``table``, else "compression (n / d)"
        and "sparsity (nonzeros per factor column / d)").
    value_label, title : str
        Label of the colour bar (the value); title.
    cmap : str
        Colormap.
    ax : matplotlib.axes.Axes, optional
        Draw into this Axes.
    dpi : int
        Resolution of the written file.

    Returns
    -------
    matplotlib.figure.Figure
        Its first Axes holds one ``QuadMesh`` with ``table.size`` cells (compression on x).

    References
    ----------
    .. [1] D. L. Donoho, J. Tanner. "Observed universality of phase transitions in
       high-dimensional geometry". Phil. Trans. R. Soc. A 367 (2009).
    """
    cvals: Any = compression
    svals: Any = sparsity
    dims = getattr(table, "dims", None)
    if dims is not None and len(dims) == 2:
        coords = getattr(table, "coords", {})
        if cvals is None and dims[0] in coords:
            cvals = np.asarray(coords[dims[0]].values)
        if svals is None and dims[1] in coords:
            svals = np.asarray(coords[dims[1]].values)
        xlabel = xlabel or str(dims[0])
        ylabel = ylabel or str(dims[1])
    xlabel = xlabel or "compression (n / d)"
    ylabel = ylabel or "sparsity (nonzeros per factor column / d)"
    T = np.asarray(_compute_small(table), dtype=float)
    if T.ndim != 2 or 0 in T.shape:
        raise InputError(
            f"table must be a non-empty 2-D array over (compression, sparsity), got shape {T.shape}"
        )
    cx = np.arange(T.shape[0], dtype=float) if cvals is None else _as_1d(cvals, "compression")
    sy = np.arange(T.shape[1], dtype=float) if svals is None else _as_1d(svals, "sparsity")
    if cx.size != T.shape[0] or sy.size != T.shape[1]:
        raise InputError(
            f"table has shape {T.shape} but there are {cx.size} compression and {sy.size} "
            f"sparsity values; table[i, j] must be the value at compression[i], sparsity[j]"
        )
    for name, v in (("compression", cx), ("sparsity", sy)):
        if v.size > 1 and not (np.all(np.diff(v) > 0) or np.all(np.diff(v) < 0)):
            raise InputError(f"{name} values must be strictly monotonic, got {v.tolist()}")
    fig, ax = _new_axes(ax, (6.0, 4.5))
    Z = np.ma.masked_invalid(T.T)  # rows = sparsity (y), columns = compression (x)
    mesh = ax.pcolormesh(cx, sy, Z, shading="nearest", cmap=cmap)
    if (level is not None and min(T.shape) >= 2 and np.nanmin(T) < level < np.nanmax(T)):
        cs = ax.contour(cx, sy, Z, levels=[level], colors="cyan", linewidths=1.5)
        ax.clabel(cs, fmt=lambda v: f"{value_label} = {v:g}", fontsize="x-small")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    fig.colorbar(mesh, ax=ax, label=value_label)
    return _finish(fig, path, dpi)


# --------------------------------------------------------------------------- error vs compression
def plot_error_vs_compression(
    compression: Sequence[float],
    errors: Mapping[str, Any],
    path: str | os.PathLike | None = None,
    *,
    baseline: float | Mapping[str, float] | None = None,
    logx: bool = True,
    logy: bool = True,
    xlabel: str = "compression (n / d)",
    ylabel: str = "relative reconstruction error",
    title: str | None = None,
    ax: Axes | None = None,
    dpi: int = 120,
) -> Figure:
    """Error against compression factor, one line per method, with the uncompressed baseline.

    Parameters
    ----------
    compression : sequence of float
        The compression factors (e.g. ``n / d`` for a sketch of size ``d``).
    errors : mapping of str to array-like
        Method → errors. A 1-D array has one value per compression factor; a 2-D array of shape
        (repeats, len(compression)) is drawn as its median with the min–max range shaded
        (repeated randomized runs).
    path : str or path-like, optional
        Write the figure there (PNG by default).
    baseline : float or mapping of str to float, optional
        Error(s) without compression (e.g. the same method on the raw data), drawn as dashed
        horizontal lines.
    logx, logy : bool
        Log-scale axes (ignored for an axis with values <= 0).
    xlabel, ylabel, title : str
        Labels.
    ax : matplotlib.axes.Axes, optional
        Draw into this Axes.
    dpi : int
        Resolution of the written file.

    Returns
    -------
    matplotlib.figure.Figure
        One solid line per method plus one dashed line per baseline.
    """
    cx = _as_1d(compression, "compression")
    if not isinstance(errors, Mapping) or not errors:
        raise InputError(
            "errors must be a non-empty mapping of method -> errors (one per compression value)"
        )
    series = []
    for name, e in errors.items():
        E = np.asarray(_compute_small(e), dtype=float)
        if E.ndim == 1:
            E = E[None, :]
        if E.ndim != 2 or E.shape[1] != cx.size:
            raise InputError(
                f"errors[{name!r}] has shape {np.shape(e)}; expected ({cx.size},) or "
                f"(repeats, {cx.size}): one value per compression factor"
            )
        series.append((str(name), E))
    fig, ax = _new_axes(ax, (6.0, 4.0))
    allvals = [cx]
    order = np.argsort(cx)
    for name, E in series:
        med = np.nanmedian(E, axis=0)
        (line,) = ax.plot(cx[order], med[order], marker="o", markersize=4, label=name)
        if E.shape[0] > 1:
            ax.fill_between(cx[order], np.nanmin(E, axis=0)[order], np.nanmax(E, axis=0)[order],
                            color=line.get_color(), alpha=0.2, linewidth=0)
        allvals.append(E.ravel())
    if baseline is not None:
        base = baseline if isinstance(baseline, Mapping) else {"uncompressed": baseline}
        for name, b in base.items():
            ax.axhline(float(b), linestyle="--", color="0.3", linewidth=1,
                       label=f"{name} (no compression)" if isinstance(baseline, Mapping) else name)
            allvals.append(np.asarray([float(b)]))
    if logx and np.all(cx > 0):
        ax.set_xscale("log")
    ys = np.concatenate(allvals[1:])
    if logy and np.all(ys[np.isfinite(ys)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    return _finish(fig, path, dpi)


# --------------------------------------------------------------------------- run outputs
def write_run_plots(
    directory: str | os.PathLike,
    *,
    histories: Mapping[str, Sequence[float]] | None = None,
    W: Any = None,
    feature_names: Sequence[Any] | None = None,
    top_features: int = 10,
    image_shape: tuple[int, ...] | None = None,
    ylabel: str = "relative error",
) -> dict[str, str]:
    """Write the standard figures of a run into ``directory`` (what ``cfact run --plots`` shows).

    Parameters
    ----------
    directory : str or path-like
        Created if needed.
    histories : mapping, optional
        Convergence histories → ``convergence.png``.
    W : array-like, optional
        The recovered factor (features × rank) → ``factors_top_features.png``, and
        ``factor_images.png`` when ``image_shape`` is given.
    feature_names, top_features : optional
        As in :func:`plot_factor_heatmap`.
    image_shape : tuple of int, optional
        As in :func:`plot_factor_images`.
    ylabel : str
        y label of the convergence plot.

    Returns
    -------
    dict of str to str
        Figure name → written path.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    written: dict[str, str] = {}
    if histories:
        p = os.path.join(directory, "convergence.png")
        plot_convergence(histories, ylabel=ylabel, path=p)
        written["convergence"] = p
    if W is not None:
        p = os.path.join(directory, "factors_top_features.png")
        plot_factor_heatmap(W, top_features=top_features, feature_names=feature_names, path=p)
        written["factors_top_features"] = p
        if image_shape is not None:
            p = os.path.join(directory, "factor_images.png")
            plot_factor_images(W, image_shape, path=p)
            written["factor_images"] = p
    return written
