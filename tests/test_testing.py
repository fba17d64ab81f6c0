"""Tests of the public test helpers in posctx.testing."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from posctx.testing import (
    hidden_dataset,
    planted_components,
    planted_hidden,
    raise_if_dask_computes,
    track_chunk_reads,
    write_planted_store,
)
from posctx.types import (
    BLOCK_COMPLETE,
    BLOCK_START,
    CONTEXT,
    HIDDEN,
    HIDDEN_DIMS,
    LAYER_NAME,
    OFFSET,
    PROVENANCE_ATTR,
    SOURCE,
    TOKEN_ID,
    TOPIC,
)


def test_planted_components_are_a_balanced_two_way_split() -> None:
    parts = planted_components(12, 9, 2, 5, noise=0.2, seed=3)
    h = parts["mu"] + parts["pos"][None] + parts["ctx"][:, None] + parts["resid"]
    np.testing.assert_allclose(h, parts["h"])
    np.testing.assert_allclose(parts["pos"].sum(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(parts["ctx"].sum(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(parts["resid"].sum(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(parts["resid"].sum(axis=1), 0, atol=1e-12)
    centred = parts["h"] - parts["mu"]
    np.testing.assert_allclose(parts["ss_total"], (centred**2).sum(axis=(0, 1, 3)))


def test_planted_pos_is_low_rank_and_ctx_clusters_by_topic() -> None:
    parts = planted_components(30, 16, 2, 8, n_topics=3)
    for layer in range(2):
        singular = np.linalg.svd(parts["pos"][:, layer], compute_uv=False)
        assert singular[3:].max() < 1e-10 * singular[0]  # rank 3: one helix turn
        ctx = parts["ctx"][:, layer]
        unit = ctx / np.linalg.norm(ctx, axis=1, keepdims=True)
        cos = np.abs(unit @ unit.T)
        same = parts["topic"][:, None] == parts["topic"][None, :]
        off_diag = ~np.eye(len(unit), dtype=bool)
        assert cos[same & off_diag].mean() > cos[~same].mean()


def test_planted_components_are_reproducible() -> None:
    a, b = planted_components(4, 3, 1, 2, seed=5), planted_components(4, 3, 1, 2, seed=5)
    np.testing.assert_array_equal(a["h"], b["h"])
    assert not np.array_equal(a["h"], planted_components(4, 3, 1, 2, seed=6)["h"])


def test_planted_components_validate_sizes() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        planted_components(0, 3, 1, 2)
    with pytest.raises(ValueError, match="n_topics"):
        planted_components(3, 3, 1, 2, n_topics=0)


def test_planted_hidden_schema() -> None:
    ds, truth = planted_hidden(
        11, 5, 3, 4, chunks_context=(4, 4, 3), chunks_layer=2, chunks_position=3, dtype="float16"
    )
    h = ds[HIDDEN]
    assert h.dims == HIDDEN_DIMS and h.dtype == np.float16
    assert isinstance(h.data, da.Array)
    assert h.data.chunks == ((4, 4, 3), (3, 2), (2, 1), (4,))
    assert ds[TOKEN_ID].dtype == np.int32 and ds[TOKEN_ID].dims == (CONTEXT, "position")
    for name in ("context", "position", "layer", "dim", OFFSET):
        assert ds[name].dtype == np.int64
    assert ds[TOPIC].dims == ds[SOURCE].dims == (CONTEXT,)
    assert ds[LAYER_NAME].values.tolist() == ["embeddings", "block_1", "block_2"]
    assert ds[BLOCK_COMPLETE].values.tolist() == [1, 1, 1]
    assert ds[BLOCK_START].values.tolist() == [0, 4, 8]
    assert ds.attrs["posctx_kind"] == "hidden"
    assert ds.attrs[PROVENANCE_ATTR]["planted"]["dtype"] == "float16"
    np.testing.assert_array_equal(h.values, truth["h"].astype(np.float16))


def test_hidden_dataset_validates() -> None:
    with pytest.raises(ValueError, match="context, position, layer, dim"):
        hidden_dataset(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="one topic per context"):
        hidden_dataset(np.zeros((2, 3, 1, 1)), topics=["a"])
    with pytest.raises(ValueError, match="floating"):
        planted_hidden(2, 2, 1, 1, dtype="int32")


def test_write_planted_store_opens_quietly(tmp_path: Path) -> None:
    path = tmp_path / "hidden.zarr"
    truth = write_planted_store(
        str(path), n_contexts=10, length=4, n_layers=2, n_dims=3, chunks_context=4
    )
    ds = xr.open_zarr(path)  # warnings are errors in this suite
    assert ds[HIDDEN].data.chunks[0] == (4, 4, 2)
    np.testing.assert_array_equal(ds[HIDDEN].values, truth["h"].astype(np.float32))
    assert ds.attrs["posctx_kind"] == "hidden"


def test_write_planted_store_is_a_store_posctx_opens(tmp_path: Path) -> None:
    from posctx.store import open_hidden

    path = tmp_path / "hidden.zarr"
    write_planted_store(str(path), n_contexts=6, length=4, n_layers=2, n_dims=3)
    ds = open_hidden(str(path))
    assert ds[HIDDEN].dims == HIDDEN_DIMS


def test_raise_if_dask_computes_counts() -> None:
    x = da.ones(6, chunks=2)
    with raise_if_dask_computes() as counter:
        y = (x + 1).sum()
    assert counter.total_computes == 0
    with pytest.raises(RuntimeError, match="1 > max 0"), raise_if_dask_computes():
        y.compute()
    with raise_if_dask_computes(max_computes=2) as counter:
        assert int(y.compute()) == 12
        dask.compute(y, x)
    assert counter.total_computes == 2


def test_track_chunk_reads() -> None:
    x, reads = track_chunk_reads(da.arange(10, chunks=3))
    assert reads.total == 0
    np.testing.assert_array_equal(x.compute(scheduler="threads"), np.arange(10))
    assert reads.counts == {(0,): 1, (1,): 1, (2,): 1, (3,): 1}
    x[:2].compute(scheduler="sync")
    assert reads.counts[(0,)] == 2 and reads.total == 5


def test_write_planted_store_takes_file_urls(tmp_path: Path) -> None:
    import posctx

    url = f"file://{tmp_path}/nested/h.zarr"
    truth = write_planted_store(url, n_contexts=6, length=4, n_layers=2, n_dims=3)
    dec = posctx.decompose(posctx.open_hidden(url)).compute()
    np.testing.assert_allclose(dec.mu.values, truth["mu"], atol=1e-4)
