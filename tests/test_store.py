"""The store layer: schema, creation, markers, opening with and without posctx."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from posctx.errors import IncompleteStoreError, StoreError
from posctx.store import (
    BlockWriter,
    build_dataset,
    check_writable,
    create_store,
    default_chunk_contexts,
    open_hidden,
    plan_blocks,
    read_provenance,
    store_info,
)


def _make(
    path: Path, n_contexts: int = 10, length: int = 4, chunk: int = 4, dtype: str = "float32"
) -> None:
    rng = np.random.default_rng(0)
    ds, enc = build_dataset(
        token_ids=rng.integers(0, 100_000, size=(n_contexts, length)),
        topic=np.array(["prose", "code"] * (n_contexts // 2)),
        source=np.array([f"doc{i}" for i in range(n_contexts)]),
        offset=np.arange(n_contexts) * 7,
        layers=(0, 1, 2),
        layer_names=("embeddings", "block_1", "block_2"),
        hidden_size=5,
        storage_dtype=dtype,
        chunk_contexts=chunk,
        chunk_layers=0,
        provenance={"config": {"a": 1}},
    )
    create_store(str(path), ds, enc)


def test_plan_blocks_cover_every_context_once() -> None:
    blocks = plan_blocks(10, 4)
    covered = np.concatenate([np.arange(b.start, b.stop) for b in blocks])
    np.testing.assert_array_equal(covered, np.arange(10))
    assert [b.size for b in blocks] == [4, 4, 2]
    with pytest.raises(ValueError):
        plan_blocks(10, 0)


def test_default_chunk_is_about_64_mb() -> None:
    n = default_chunk_contexts(128, 7, 384, 4)
    assert 64e6 * 0.9 < n * 128 * 7 * 384 * 4 <= 2**26
    assert default_chunk_contexts(100_000, 100, 10_000, 4) == 1


def test_schema_readable_by_plain_xarray(tmp_path: Path) -> None:
    path = tmp_path / "h.zarr"
    _make(path)
    ds = xr.open_zarr(path)  # no posctx involved: labels must all be there
    assert ds.hidden.dims == ("context", "position", "layer", "dim")
    assert ds.hidden.dtype == np.float32
    assert ds.token_id.dtype == np.int32
    assert ds.token_id.values.max() > 65_535  # would wrap in uint16
    assert list(ds.layer_name.values) == ["embeddings", "block_1", "block_2"]
    assert list(ds.topic.values[:2]) == ["prose", "code"]
    assert ds.offset.values[3] == 21
    assert ds.attrs["posctx"] == {"config": {"a": 1}}
    assert ds.hidden.encoding["chunks"] == (4, 4, 3, 5)
    # preallocated but unwritten: NaN, never zeros that look like data
    assert np.isnan(ds.hidden.values).all()
    assert not ds.block_complete.values.any()


def test_float16_storage_stays_float16(tmp_path: Path) -> None:
    path = tmp_path / "h.zarr"
    _make(path, dtype="float16")
    writer = BlockWriter(str(path))
    for block in plan_blocks(10, 4):
        writer.write(block, np.full((block.size, 4, 3, 5), 1.5, np.float16))
    ds = open_hidden(str(path))
    assert ds.hidden.dtype == np.float16
    assert float(ds.hidden.sum()) == 1.5 * 10 * 4 * 3 * 5


def test_incomplete_store_is_refused_or_subset(tmp_path: Path) -> None:
    path = tmp_path / "h.zarr"
    _make(path)
    writer = BlockWriter(str(path))
    blocks = plan_blocks(10, 4)
    writer.write(blocks[0], np.ones((4, 4, 3, 5), np.float32))
    writer.write(blocks[2], np.full((2, 4, 3, 5), 2.0, np.float32))
    with pytest.raises(IncompleteStoreError, match="1 of 3 blocks are not written yet.*re-run"):
        open_hidden(str(path))
    ds = open_hidden(str(path), complete_only=True)
    np.testing.assert_array_equal(ds.context.values, [0, 1, 2, 3, 8, 9])
    assert not np.isnan(ds.hidden.values).any()
    info = store_info(str(path))
    assert (info["blocks_complete"], info["blocks_total"], info["complete"]) == (2, 3, False)
    assert info["arrays"]["hidden"]["shape"] == [10, 4, 3, 5]


def test_foreign_path_is_refused_and_left_alone(tmp_path: Path) -> None:
    foreign = tmp_path / "not-a-store"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(StoreError, match="is not a posctx hidden-state store"):
        read_provenance(str(foreign))
    with pytest.raises(StoreError, match="no posctx store"):
        open_hidden(str(tmp_path / "missing.zarr"))
    assert (foreign / "precious.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert read_provenance(str(empty)) is None  # an empty folder is a fine place to create


def test_unwritable_location_fails_early(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot write a store.*choose a writable --out"):
        check_writable(str(blocker / "sub" / "h.zarr"))
    check_writable(str(tmp_path / "new" / "h.zarr"))  # missing parents are fine


def test_build_folders_of_dead_creators_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from posctx.store import remove_dead_creations

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host = socket.gethostname()
    orphan = tmp_path / f".h.zarr.creating-{host}-{dead.stdout.strip()}-abc"
    live = tmp_path / f".h.zarr.creating-{host}-{os.getpid()}-def"
    other_store = tmp_path / f".g.zarr.creating-{host}-{dead.stdout.strip()}-ghi"
    for folder in (orphan, live, other_store):
        (folder / "store.zarr").mkdir(parents=True)
    remove_dead_creations(str(tmp_path / "h.zarr"))
    assert not orphan.exists()  # killed between its rename and its clean-up, or before
    assert live.exists() and other_store.exists()


def test_schema_dataset_writes_exactly_the_declared_schema() -> None:
    """One schema: what the store is made of (schema_dataset) is what validate checks (SCHEMA)."""
    from posctx.store.layout import EXACT_DTYPES, SCHEMA
    from posctx.testing import hidden_dataset

    ds = hidden_dataset(np.zeros((5, 3, 2, 4), np.float32), chunks_context=2)
    assert set(ds.variables) == set(SCHEMA)
    for name, (dims, kinds) in SCHEMA.items():
        assert ds[name].dims == dims, name
        assert ds[name].dtype.kind in kinds, name
        assert str(ds[name].dtype) in EXACT_DTYPES.get(name, (str(ds[name].dtype),)), name
