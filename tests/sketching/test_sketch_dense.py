"""The dense (Gaussian) operator's generator and cache, the row-major sketch graph, and the direct
whole-chunk Zarr reads that keep the sketch pass within its memory budget."""

from __future__ import annotations

import tracemalloc

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from scipy import stats

import cfact_dask as cf
from cfact_dask import io
from cfact_dask.sketching import _project, operators
from cfact_dask.sketching._project import project
from cfact_dask.sketching.operators import make_operator


# ------------------------------------------------------------------ the Gaussian generator
def test_gaussian_tile_is_normal():
    """Box–Muller float32 entries: N(0, 1/d) by a KS test, independent of their neighbours."""
    d = 256
    P = make_operator("gaussian", d, 8192, seed=11).to_dense(np.float32)
    z = P.ravel().astype(np.float64) * np.sqrt(d)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(stats.kurtosis(z)) < 0.02  # excess kurtosis of a normal is 0
    # the cos / sin halves of each Box–Muller pair are uncorrelated
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 5e-3
    # the tiles are different streams
    a, b = P[:, :4096].ravel(), P[:, 4096:].ravel()
    assert abs(np.corrcoef(a, b)[0, 1]) < 5e-3


def test_gaussian_same_p_for_float32_and_float64():
    op = make_operator("gaussian", 16, 5000, seed=2)
    p32 = op.to_dense(np.float32)
    p64 = op.to_dense(np.float64)
    np.testing.assert_array_equal(p32.astype(np.float64), p64)


def test_dense_apply_block_independent_of_cache_state():
    """Cached tiles are used first, but products are summed in tile order: bitwise the same."""
    rng = np.random.default_rng(0)
    op = make_operator("gaussian", 40, 5000, seed=3, tile_size=512)
    block = rng.standard_normal((3000, 7)).astype(np.float32)
    operators._TILES.clear()
    cold = op.apply_block(block, 1234)
    # warm only some of the tiles this block needs, in a scrambled order
    for t in (7, 3, 5):
        op.tile(t, np.float32)
    warm = op.apply_block(block, 1234)
    np.testing.assert_array_equal(cold, warm)
    ref = op.to_dense(np.float64)[:, 1234:4234] @ block.astype(np.float64)
    np.testing.assert_allclose(warm, ref, rtol=2e-4, atol=2e-4)


# ------------------------------------------------------------------ the row-major graph
def _count_tiles(monkeypatch):
    calls: list[int] = []
    make = operators._make_tile

    def counting(op, t, dtype):
        calls.append(t)
        return make(op, t, dtype)

    monkeypatch.setattr(operators, "_make_tile", counting)
    operators._TILES.clear()
    return calls


def test_sample_chunks_of_a_row_reuse_tiles(monkeypatch):
    """The sample chunks of one feature row are sketched back to back (in groups of up to
    chunk bytes / split_every of partials), so with a cache of a chunk's worth of tiles each tile
    of P is generated once per group of sample chunks, not once per sample chunk."""
    monkeypatch.setattr(operators, "_CACHE_FLOOR", 0)
    x = da.random.default_rng(1).standard_normal((8000, 400), chunks=(1000, 50)).astype(
        np.float32)
    calls = _count_tiles(monkeypatch)
    n_tiles = 8000 // 64 + 1
    with dask.config.set({"cfact.sketch.tile-cache-chunk-fraction": 1.0}):
        sk = cf.sketch(x, 16, kind="gaussian", seed=0, tile_size=64)
        got = sk.data.compute(scheduler="sync")
        grouped = len(calls)
        # 8 sample chunks of 16 x 50 x 4 bytes, groups up to 200 kB / 8: two groups
        assert grouped <= 2 * (n_tiles + 8)
        calls.clear()
        operators._TILES.clear()
        with dask.config.set({"cfact.sketch.group-bytes": 1}):  # one tree per sample chunk
            again = cf.sketch(x, 16, kind="gaussian", seed=0, tile_size=64).data.compute(
                scheduler="sync")
    assert len(calls) >= 3 * grouped  # column-major order: regenerated per sample chunk
    np.testing.assert_array_equal(got, again)
    ref = make_operator("gaussian", 16, 8000, seed=0, tile_size=64).to_dense() @ x.compute()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-3)


def test_grouped_graph_matches_ungrouped_bitwise():
    x = da.random.default_rng(2).standard_normal((3000, 900), chunks=(500, (100, 300, 200, 300)))
    op = make_operator("gaussian", 30, 3000, seed=5, tile_size=256)
    grouped = project(x, op)
    with dask.config.set({"cfact.sketch.group-bytes": 1}):
        single = project(x, op)
    assert len(grouped.dask) < len(single.dask) + 20  # grouping adds rows, not a blow-up
    assert any("-row" in str(k[0]) for k in grouped.dask if isinstance(k, tuple))
    assert not any("-row" in str(k[0]) for k in single.dask if isinstance(k, tuple))
    a, b = grouped.compute(scheduler="threads"), single.compute(scheduler="sync")
    assert grouped.chunks == single.chunks
    np.testing.assert_array_equal(a, b)


def test_project_many_is_each_project_bitwise_in_one_task_per_chunk():
    """Sketches along both axes (grouped column chunks for one of them), a sparse and a dense
    kind, and a per-chunk statistic, from one task per chunk: each result equals its own
    ``project`` bitwise, and the chunk's kernels run once, in one task."""
    x = da.random.default_rng(3).standard_normal((3000, 900), chunks=(500, (100, 300, 200, 300)))
    x = x.astype(np.float32)
    omega = make_operator("gaussian", 12, 900, seed=1, tile_size=256)
    psi = make_operator("countsketch", 40, 3000, seed=2)
    theta = make_operator("expander", 16, 3000, seed=3)
    calls = []
    Y, W, T, sq = _project.project_many(
        x, [(omega, 1), (psi, 0), (theta, -2)],
        extras=[lambda b: (calls.append(b.shape), np.full((1, 1), float((b**2).sum())))[1]])
    assert Y.shape == (3000, 12) and W.shape == (40, 900) and T.shape == (16, 900)
    assert sq.shape == x.numblocks
    fused = [k for k in Y.__dask_graph__() if isinstance(k, tuple)
             and str(k[0]).startswith("cfact-sketches-")]
    assert len(fused) == 24  # one task per chunk, shared by every result
    got = dask.compute(Y, W, T, sq, scheduler="sync")
    assert len(calls) == 24  # each chunk's statistic computed once for all four results
    np.testing.assert_array_equal(got[0], project(x, omega, axis=1).compute(scheduler="sync"))
    np.testing.assert_array_equal(got[1], project(x, psi, axis=0).compute(scheduler="sync"))
    np.testing.assert_array_equal(got[2], project(x, theta, axis=0).compute(scheduler="sync"))
    xs = x.compute()
    np.testing.assert_allclose(got[3].sum(), float((xs.astype(np.float64) ** 2).sum()),
                               rtol=1e-5)
    np.testing.assert_allclose(got[1], psi.to_dense() @ xs, rtol=1e-4, atol=1e-4)
    # no task per partial: the sums read each chunk's partials out of its task's result
    # (before: one getitem task per chunk and result, 96 here, each a scheduler round trip)
    graph = {k for c in (Y, W, T, sq) for k in c.__dask_graph__()}
    import re

    leaf = re.compile(r"cfact-sketch-partial-\d+-[0-9a-f]+$")
    assert not [k for k in graph if isinstance(k, tuple) and leaf.match(str(k[0]))]
    # the statistic summed by a fixed tree instead, when asked: one entry, the same total
    (total,) = _project.project_many(x, [], extras=[lambda b: np.full((1, 1), float(
        (b.astype(np.float64) ** 2).sum()))], sum_extras=True)
    assert total.shape == (1, 1) and total.numblocks == (1, 1)
    np.testing.assert_allclose(total.compute(scheduler="sync")[0, 0],
                               float((xs.astype(np.float64) ** 2).sum()), rtol=1e-12)


def test_svd_norm_of_a_chunk_is_float64_exact():
    from cfact_dask.factor._svd import _sq_block

    rng = np.random.default_rng(0)
    for shape, dt in [((3000, 70), np.float32), ((40, 7), np.float64), ((5,), np.float32),
                      ((3, 4, 5), np.float32), ((0, 3), np.float32)]:
        b = rng.standard_normal(shape).astype(dt)
        ref = float(np.sum(np.square(b, dtype=np.float64)))
        assert _sq_block(b)[0, 0] == pytest.approx(ref, rel=1e-13, abs=0)


def test_group_size_bounded_by_chunk_bytes():
    # d x group columns x itemsize stays below chunk bytes / split_every
    chunks = ((1000,) * 4, (50,) * 40)
    g = _project._sample_groups(chunks, 0, 16 * 4, 1000 * 50 * 4 // 8)
    assert g is not None
    axis, groups = g
    assert axis == 1 and [j for r in groups for j in r] == list(range(40))
    assert all(len(r) * 50 * 16 * 4 <= 1000 * 50 * 4 // 8 for r in groups)
    assert max(len(r) for r in groups) == 7
    # nothing to group with one sample chunk, or with two split non-feature axes
    assert _project._sample_groups(((10, 10), (5,)), 0, 8, 10**6) is None
    assert _project._sample_groups(((10, 10), (5, 5), (3, 3)), 0, 8, 10**6) is None


# ------------------------------------------------------------------ direct chunk reads
@pytest.fixture(params=["v3", "v2", "v2-order-F", "v3-transpose"])
def store(request, tmp_path):
    from zarr.codecs import BytesCodec, TransposeCodec

    rng = np.random.default_rng(0)
    data = rng.standard_normal((250, 130)).astype(np.float32)
    p = tmp_path / "x.zarr"
    kw = {"v3": {}, "v2": {"zarr_format": 2}, "v2-order-F": {"zarr_format": 2, "order": "F"},
          "v3-transpose": {"serializer": BytesCodec(),
                           "filters": [TransposeCodec(order=(1, 0))]}}[request.param]
    z = zarr.create_array(p, shape=data.shape, chunks=(100, 50), dtype="f4", fill_value=-7.0,
                          **kw)
    z[:] = data
    # one chunk never written (reads as the fill value)
    z[100:200, 50:100] = -7.0
    data[100:200, 50:100] = -7.0
    return p, data


def test_direct_reads_equal_zarr_reads(store):
    # the store leaves a chunk equal to the fill value unwritten (zarr's default), which it
    # relies on: cfact.io.missing-chunks=fill reads it as zarr does
    with dask.config.set({"cfact.io.missing-chunks": "fill"}):
        p, data = store
        inp = cf.open_array(str(p))
        z = zarr.open_array(p, mode="r")
        chk = io._CheckedZarr(z, str(p))
        for i in range(3):
            for j in range(3):
                key = (slice(i * 100, min(i * 100 + 100, 250)), slice(j * 50, min(j * 50 + 50, 130)))
                assert chk._whole_chunk(key) is not None  # edge chunks too
                np.testing.assert_array_equal(chk[key], data[key])
        # unaligned selections go through zarr
        assert chk._whole_chunk((slice(10, 110), slice(0, 50))) is None
        np.testing.assert_array_equal(chk[10:110, 0:50], data[10:110, 0:50])
        np.testing.assert_array_equal(inp.data.compute(), data)
        # sketches of either axis of the (possibly F-ordered) chunks
        for axis in (0, 1):
            sk = cf.sketch(str(p), 20, kind="gaussian", seed=1, axis=axis)
            P = sk.operator.to_dense()
            ref = P @ data.astype(np.float64) if axis == 0 else data.astype(np.float64) @ P.T
            np.testing.assert_allclose(sk.data.compute(), ref, rtol=1e-4, atol=1e-4)
        with dask.config.set({"cfact.io.direct-chunk-reads": False}):
            assert chk._whole_chunk((slice(0, 100), slice(0, 50))) is None


def test_direct_read_peak_memory(tmp_path):
    """Decoding the stored bytes without zarr's output copy: compressed + decoded at most."""
    rng = np.random.default_rng(0)
    data = rng.standard_normal((4000, 1000)).astype(np.float32)  # 16 MB, incompressible
    p = tmp_path / "big.zarr"
    z = zarr.create_array(p, shape=data.shape, chunks=data.shape, dtype="f4")
    z[:] = data
    z = zarr.open_array(p, mode="r")
    chk = io._CheckedZarr(z, str(p))
    key = (slice(0, 4000), slice(0, 1000))
    chk[key]  # warm imports and codec objects
    tracemalloc.start()
    out = chk[key]
    _, direct = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    tracemalloc.start()
    out2 = z[key]
    _, plain = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.testing.assert_array_equal(out, out2)
    assert direct <= 2.2 * data.nbytes
    assert direct < plain - 0.5 * data.nbytes


def test_direct_read_of_corrupt_chunk_names_it(tmp_path):
    p = tmp_path / "c.zarr"
    z = zarr.create_array(p, shape=(20, 20), chunks=(10, 10), dtype="f8")
    z[:] = 1.0
    (p / "c" / "1" / "0").write_bytes(b"garbage")
    from cfact_dask.errors import ChunkError

    with pytest.raises(ChunkError, match=r"chunk \(1, 0\).*c/1/0"):
        cf.open_array(str(p)).data.compute(scheduler="sync")


def test_dense_last_axis_without_transposed_copy():
    """Sketching the last axis of a C-ordered block multiplies by Pᵀ on the right (no copy of
    the block); it agrees with the generic path (an F-ordered block) to rounding."""
    rng = np.random.default_rng(3)
    op = make_operator("gaussian", 12, 900, seed=1, tile_size=128)
    block = rng.standard_normal((40, 700))
    fast = op.apply_block(block, 150, axis=1)
    generic = op.apply_block(np.asfortranarray(block), 150, axis=1)
    ref = block @ op.to_dense()[:, 150:850].T
    assert fast.shape == (40, 12)
    np.testing.assert_allclose(fast, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(generic, ref, rtol=1e-12, atol=1e-12)
    # 3-way tensor, last mode
    T = rng.standard_normal((3, 4, 900)).astype(np.float32)
    got = op.apply_block(T, 0, axis=2)
    np.testing.assert_allclose(got, np.einsum("abn,dn->abd", T, op.to_dense()), rtol=1e-4,
                               atol=1e-4)


def test_generator_version_in_the_spec(tmp_path):
    """Specs carry the tile generator's version: a spec stored before it existed (0.1.0)
    regenerates the P it was made with; unknown versions are refused."""
    op = make_operator("gaussian", 6, 50, seed=3, tile_size=16)
    assert op.to_dict()["generator"] == 2
    assert operators.SketchOperator.from_dict(op.to_dict()) == op
    old = {k: v for k, v in op.to_dict().items() if k != "generator"}
    v1 = operators.SketchOperator.from_dict(old)
    assert v1.generator == 1
    # version 1 = float64 ziggurat on Philox, SeedSequence(seed, spawn_key=(kind code, tile))
    ref = np.hstack([
        np.random.Generator(np.random.Philox(np.random.SeedSequence(3, spawn_key=(3, t))))
        .standard_normal((6, min(16, 50 - 16 * t))) / np.sqrt(6)
        for t in range(4)])
    np.testing.assert_array_equal(v1.to_dense(), ref)
    assert not np.allclose(v1.to_dense(), op.to_dense())
    # the sparse kinds are the same in both versions
    ex = make_operator("expander", 6, 50, seed=3, tile_size=16)
    ex1 = operators.SketchOperator.from_dict(
        {k: v for k, v in ex.to_dict().items() if k != "generator"})
    np.testing.assert_array_equal(ex1.to_dense(), ex.to_dense())
    # a stored sketch keeps its version through Zarr
    x = np.random.default_rng(0).standard_normal((50, 7))
    sk = cf.sketch(x, 6, kind="gaussian", seed=3)
    sk.to_zarr(tmp_path / "s.zarr")
    back = cf.Sketch.from_zarr(tmp_path / "s.zarr")
    assert back.operator == sk.operator and back.operator.generator == 2
    from cfact_dask.errors import InputError

    with pytest.raises(InputError, match="generator version 3"):
        operators.SketchOperator.from_dict({**op.to_dict(), "generator": 3})
