"""cfact_dask.plots: every figure writes a real PNG whose artists match the inputs."""

from __future__ import annotations

import sys
import threading

import dask.array as da
import numpy as np
import pytest

from cfact_dask.errors import InputError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 2000, f"{path} is suspiciously small ({len(data)} bytes)"


def test_missing_matplotlib_names_the_plot_extra(monkeypatch):
    import cfact_dask.plots as P

    # a None entry makes `import matplotlib.figure` raise ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"cfact_dask\[plot\]"):
        P.plot_convergence({"a": [1.0, 0.5]})


mpl = pytest.importorskip("matplotlib")
from cfact_dask import plots as P  # noqa: E402


def test_convergence_one_line_per_history(tmp_path):
    hist = {"sketch": [1.0, 0.4, 0.1, 0.05], "raw": [1.0, 0.3, 0.08],
            "node 3": np.geomspace(1, 1e-3, 50)}
    path = tmp_path / "sub" / "conv.png"
    fig = P.plot_convergence(hist, ylabel="relative error", path=path)
    _assert_png(path)
    (ax,) = fig.axes
    assert len(ax.lines) == 3
    assert [ln.get_label() for ln in ax.lines] == list(hist)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), hist["sketch"])
    np.testing.assert_array_equal(ax.lines[1].get_xdata(), [1, 2, 3])
    assert ax.get_yscale() == "log"
    assert ax.get_ylabel() == "relative error"


def test_convergence_linear_when_not_positive_and_errors():
    fig = P.plot_convergence({"cost": [3.0, 0.0, -1.0]}, logy=True)
    assert fig.axes[0].get_yscale() == "linear"
    with pytest.raises(InputError, match="mapping"):
        P.plot_convergence([1.0, 0.5])
    with pytest.raises(InputError, match="empty"):
        P.plot_convergence({})
    with pytest.raises(InputError, match="1-D"):
        P.plot_convergence({"a": [[1.0, 2.0]]})


def _planted_W(n=400, r=4, k=5, seed=0):
    """A factor whose top-k features per component are known: big weights on planted rows."""
    rng = np.random.default_rng(seed)
    W = rng.random((n, r)) * 0.1
    planted = rng.choice(n, size=(k, r), replace=False)
    for j in range(r):
        W[planted[:, j], j] = 1.0 + np.arange(k)[::-1]
    return W, planted


def test_factor_heatmap_rows_are_the_top_features(tmp_path):
    W, planted = _planted_W()
    names = [f"gene{i}" for i in range(W.shape[0])]
    path = tmp_path / "heat.png"
    fig = P.plot_factor_heatmap(W, top_features=5, feature_names=names, path=path)
    _assert_png(path)
    ax = fig.axes[0]
    (img,) = ax.images
    M = np.asarray(img.get_array())
    assert M.shape == (20, 4)  # 5 features x 4 components, disjoint planted sets
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [names[i] for i in planted.T.ravel()]  # grouped by component, largest first
    np.testing.assert_allclose(np.max(np.abs(M), axis=0), 1.0)  # normalised per component


def test_factor_heatmap_dask_matches_numpy_and_xarray_names():
    xr = pytest.importorskip("xarray")
    W, _ = _planted_W(n=1000, r=3, k=4, seed=1)
    ref = np.asarray(P.plot_factor_heatmap(W, 4).axes[0].images[0].get_array())
    Wd = da.from_array(W, chunks=(128, 3))
    got = np.asarray(P.plot_factor_heatmap(Wd, 4).axes[0].images[0].get_array())
    np.testing.assert_allclose(got, ref)
    Wx = xr.DataArray(Wd, dims=("word", "component"),
                      coords={"word": [f"w{i}" for i in range(1000)]})
    fig = P.plot_factor_heatmap(Wx, 4)
    assert all(t.get_text().startswith("w") for t in fig.axes[0].get_yticklabels())


def test_factor_heatmap_signed_and_errors():
    rng = np.random.default_rng(2)
    W = rng.standard_normal((50, 3))
    fig = P.plot_factor_heatmap(W, top_features=3, normalize=False)
    (img,) = fig.axes[0].images
    lo, hi = img.get_clim()
    assert lo == -hi  # centred colour scale for signed factors
    with pytest.raises(InputError, match="feature_names has 3 labels"):
        P.plot_factor_heatmap(W, feature_names=["a", "b", "c"])
    with pytest.raises(InputError, match="top_features"):
        P.plot_factor_heatmap(W, top_features=0)
    W[4, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        P.plot_factor_heatmap(W, top_features=W.shape[0])  # every row shown, the NaN one too


def test_factor_images_one_image_per_component(tmp_path):
    rng = np.random.default_rng(3)
    W = rng.random((8 * 6, 7))
    path = tmp_path / "faces.png"
    fig = P.plot_factor_images(W, (8, 6), path=path, ncols=3, title="NMF parts")
    _assert_png(path)
    images = [im for ax in fig.axes for im in ax.images]
    assert len(images) == 7
    assert len(fig.axes) == 9  # 3 x 3 grid, two empty panels
    np.testing.assert_allclose(np.asarray(images[2].get_array()), W[:, 2].reshape(8, 6))
    rgb = P.plot_factor_images(rng.random((4 * 4 * 3, 2)), (4, 4, 3))
    assert len([im for ax in rgb.axes for im in ax.images]) == 2
    with pytest.raises(InputError, match="48 features .* 49 pixels"):
        P.plot_factor_images(W, (7, 7))
    with pytest.raises(InputError, match="image_shape"):
        P.plot_factor_images(W, (48,))


def test_phase_transition_mesh_and_contour(tmp_path):
    comp = np.array([2.0, 4.0, 8.0, 16.0])
    spars = np.array([0.05, 0.1, 0.2, 0.3, 0.4])
    # success falls with compression and with sparsity: a clean transition
    table = 1.0 / (1.0 + np.exp(5 * (np.log2(comp)[:, None] + 6 * spars[None, :] - 3.5)))
    path = tmp_path / "pt.png"
    fig = P.plot_phase_transition(table, comp, spars, path=path, level=0.5)
    _assert_png(path)
    ax = fig.axes[0]
    meshes = [c for c in ax.collections if isinstance(c, mpl.collections.QuadMesh)]
    assert len(meshes) == 1
    assert np.asarray(meshes[0].get_array()).size == table.size
    # compression on x: the mesh rows follow sparsity
    np.testing.assert_allclose(np.asarray(meshes[0].get_array()).reshape(5, 4), table.T)
    assert len(ax.collections) >= 2  # + the contour of the transition
    assert ax.get_xlabel().startswith("compression")


def test_phase_transition_xarray_coords_and_errors():
    xr = pytest.importorskip("xarray")
    t = xr.DataArray(np.random.default_rng(4).random((3, 2)), dims=("n_over_d", "k_over_d"),
                     coords={"n_over_d": [2, 4, 8], "k_over_d": [0.1, 0.2]})
    fig = P.plot_phase_transition(t, level=None)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "n_over_d" and ax.get_ylabel() == "k_over_d"
    assert len(ax.collections) == 1
    with pytest.raises(InputError, match="table has shape"):
        P.plot_phase_transition(np.zeros((3, 2)), [1, 2], [1, 2])
    with pytest.raises(InputError, match="monotonic"):
        P.plot_phase_transition(np.zeros((3, 2)), [1, 3, 2], [1, 2])


def test_error_vs_compression_lines_band_and_baseline(tmp_path):
    comp = [2, 4, 8, 16]
    rng = np.random.default_rng(5)
    reps = 0.05 * np.array(comp) * (1 + 0.1 * rng.random((5, 4)))
    path = tmp_path / "evc.png"
    fig = P.plot_error_vs_compression(
        comp, {"nmf (sketch)": reps, "svd": [0.02, 0.03, 0.05, 0.09]},
        baseline={"nmf": 0.04}, path=path,
    )
    _assert_png(path)
    ax = fig.axes[0]
    solid = [ln for ln in ax.lines if ln.get_linestyle() == "-"]
    dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(solid) == 2 and len(dashed) == 1
    np.testing.assert_allclose(solid[0].get_ydata(), np.median(reps, axis=0))
    assert len(ax.collections) == 1  # min-max band of the repeated runs only
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    with pytest.raises(InputError, match="one value per compression"):
        P.plot_error_vs_compression(comp, {"a": [1, 2]})


def test_write_run_plots(tmp_path):
    W, _ = _planted_W(n=64, r=3, k=3)
    out = P.write_run_plots(tmp_path / "plots", histories={"nmf": [1, 0.5, 0.2]}, W=W,
                            image_shape=(8, 8))
    assert set(out) == {"convergence", "factors_top_features", "factor_images"}
    for p in out.values():
        _assert_png(type(tmp_path)(p))


def test_plots_from_threads_without_pyplot(tmp_path):
    """Figures are built without pyplot, so threads (e.g. a dask worker) can plot concurrently,
    on headless machines with any configured backend (PNG files are rendered by Agg)."""
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            P.plot_convergence({"a": [1.0, 0.5, 0.1 * (i + 1)]}, path=tmp_path / f"t{i}.png")
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(4):
        _assert_png(tmp_path / f"t{i}.png")
    # no pyplot anywhere: no global figure registry, no GUI backend, nothing to close
    import inspect

    assert "pyplot" not in inspect.getsource(P).replace("never through ``pyplot``", "")


def test_draw_into_given_axes_returns_root_figure():
    from matplotlib.figure import Figure

    root = Figure()
    left, right = root.subfigures(1, 2)
    ax1, ax2 = left.add_subplot(), right.add_subplot()
    assert P.plot_convergence({"a": [1.0, 0.1]}, ax=ax1) is root
    assert P.plot_error_vs_compression([2, 4], {"m": [0.1, 0.2]}, ax=ax2) is root
    assert len(ax1.lines) == 1 and len(ax2.lines) == 1
