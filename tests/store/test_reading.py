"""posctx.store.reading: opening a store as labelled lazy data, with or without its holes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

from posctx.errors import IncompleteStoreError, StoreError
from posctx.store.direct import direct_source
from posctx.store.info import store_info
from posctx.store.reading import COMPLETE_ONLY_ATTR, open_hidden, open_labelled
from posctx.testing import write_large_planted_store


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A complete planted store: 10 contexts x 6 tokens, 2 layers of 3 dims, blocks of 4."""
    out = tmp_path / "h.zarr"
    write_large_planted_store(
        str(out), n_contexts=10, length=6, n_layers=2, n_dims=3, chunk_contexts=4
    )
    return out


def _unmark(path: Path, *blocks: int) -> None:
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    for block in blocks:
        group["block_complete"][block] = 0


def test_a_local_store_opens_through_the_direct_reader_unless_chunks_are_asked(path: Path) -> None:
    ds = open_hidden(str(path))
    assert direct_source(ds.hidden.data) is not None
    assert ds.hidden.data.chunks[0] == (4, 4, 2)
    assert "block_complete" not in ds and "block_start" not in ds.coords
    assert COMPLETE_ONLY_ATTR not in ds.attrs
    chunked = open_hidden(str(path), chunks={"position": 6})  # chunks given: zarr decodes
    assert direct_source(chunked.hidden.data) is None
    assert chunked.hidden.data.chunks[0] == (4, 4, 2)
    np.testing.assert_array_equal(ds.hidden.values, chunked.hidden.values)


def test_complete_only_keeps_finished_blocks_and_records_what_it_left_out(path: Path) -> None:
    _unmark(path, 1)
    with pytest.raises(IncompleteStoreError) as info:
        open_hidden(str(path))
    assert str(info.value).startswith(
        f"{path}: 1 of 3 blocks are not written yet (an interrupted extraction): re-run the same"
    )
    ds = open_hidden(str(path), complete_only=True)
    assert ds.context.values.tolist() == [0, 1, 2, 3, 8, 9]
    assert ds.attrs[COMPLETE_ONLY_ATTR] == {
        "blocks_used": 2,
        "blocks_total": 3,
        "contexts_total": 10,
    }
    _unmark(path, 0, 2)
    empty = open_hidden(str(path), complete_only=True)
    assert empty.sizes["context"] == 0
    assert empty.attrs[COMPLETE_ONLY_ATTR] == {
        "blocks_used": 0,
        "blocks_total": 3,
        "contexts_total": 10,
    }


def test_nothing_at_the_path_says_how_to_make_a_store(tmp_path: Path) -> None:
    path = tmp_path / "missing.zarr"
    with pytest.raises(StoreError) as info:
        open_hidden(str(path))
    assert (
        str(info.value) == f"no posctx store at {path}: run `posctx extract ... --out {path}` first"
    )
    with pytest.raises(StoreError, match=f"no posctx store at {path}: check the path"):
        store_info(str(path))


def test_labels_are_read_into_memory_and_data_stays_lazy(path: Path) -> None:
    ds = open_labelled(str(path))
    assert isinstance(ds.hidden.data, da.Array) and isinstance(ds.token_id.data, da.Array)
    plain = xr.open_zarr(path)  # xarray alone makes every non-index coordinate lazy
    for name in ("topic", "source", "offset", "layer_name", "block_start"):
        assert isinstance(plain[name].data, da.Array), name
        assert isinstance(ds[name].data, np.ndarray), name
    assert ds.topic.values.tolist()[:5] == ["topic0", "topic1", "topic2", "topic3", "topic0"]


def test_a_store_without_consolidated_metadata_still_opens(path: Path) -> None:
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    del meta["consolidated_metadata"]  # a crash between an attrs write and its refresh
    meta_path.write_text(json.dumps(meta))
    ds = open_labelled(str(path))
    assert ds.hidden.shape == (10, 6, 2, 3) and ds.layer_name.values.tolist() == [
        "embeddings",
        "block_1",
    ]


def test_store_info_reports_schema_size_completeness_and_record(path: Path) -> None:
    _unmark(path, 2)
    info = store_info(str(path))
    assert info["arrays"]["hidden"] == {
        "shape": [10, 6, 2, 3],
        "chunks": [4, 6, 2, 3],
        "dtype": "float32",
        "dims": ["context", "position", "layer", "dim"],
        "uncompressed_bytes": 10 * 6 * 2 * 3 * 4,
    }
    assert info["arrays"]["token_id"]["dtype"] == "int32"
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    assert info["size_on_disk"] == total
    assert (info["blocks_complete"], info["blocks_total"], info["complete"]) == (2, 3, False)
    assert info["provenance"]["planted"]["generator"] == "write_large_planted_store"
    assert json.loads(json.dumps(info)) == info
