"""posctx.store.create: atomic local creation, record-last remote creation, and growing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr

import posctx.store.create as create_module
from posctx.errors import StoreError
from posctx.store.blocks import BlockWriter, completed_blocks
from posctx.store.create import (
    StoreCreatedConcurrently,
    _creating_prefix,
    create_store,
    grow_store,
    process_alive,
)
from posctx.store.layout import build_dataset, plan_blocks
from posctx.store.provenance import read_provenance

RECORD = {"config": {"store": {"contexts": 10}}}


def _schema(n_contexts: int = 10, chunk: int = 4) -> tuple[Any, dict[str, Any]]:
    rng = np.random.default_rng(n_contexts)
    return build_dataset(
        token_ids=rng.integers(0, 1000, size=(n_contexts, 3)),
        topic=np.array([f"t{i % 2}" for i in range(n_contexts)]),
        source=np.array([f"doc{i}" for i in range(n_contexts)]),
        offset=np.arange(n_contexts) * 5,
        layers=(0, 1),
        layer_names=("embeddings", "block_1"),
        hidden_size=2,
        storage_dtype="float32",
        chunk_contexts=chunk,
        chunk_layers=0,
        attrs={"posctx_kind": "hidden", "posctx_schema": 1, "posctx": RECORD, "title": "old"},
    )


@pytest.fixture
def memory_path() -> Iterator[str]:
    import fsspec

    path = f"memory://posctx-tests/{uuid.uuid4().hex}/h.zarr"
    yield path
    fs = fsspec.filesystem("memory")
    if fs.exists(path):
        fs.rm(path, recursive=True)


def test_a_local_store_is_built_aside_and_renamed_into_place(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "h.zarr"  # missing parents are made
    create_store(str(target), *_schema())
    assert read_provenance(str(target)) == RECORD
    assert np.isnan(xr.open_zarr(target).hidden.values).all()  # preallocated, unwritten
    assert os.listdir(target.parent) == ["h.zarr"]  # no build folder left behind


def test_a_second_creator_finds_the_store_made_and_leaves_it_alone(tmp_path: Path) -> None:
    target = tmp_path / "h.zarr"
    create_store(str(target), *_schema())
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    with pytest.raises(StoreCreatedConcurrently) as info:
        create_store(str(target), *_schema(n_contexts=6))
    assert isinstance(info.value, StoreError)
    assert str(info.value) == f"{target} was created by another process meanwhile"
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    assert os.listdir(tmp_path) == ["h.zarr"]


def test_build_folders_are_named_after_host_and_process(tmp_path: Path) -> None:
    host = socket.gethostname()
    assert _creating_prefix(tmp_path / "h.zarr", pid=123) == f".h.zarr.creating-{host}-123-"
    assert _creating_prefix(tmp_path / "h.zarr") == f".h.zarr.creating-{host}-{os.getpid()}-"
    assert process_alive(os.getpid())
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    assert not process_alive(int(dead.stdout))


def test_on_object_storage_the_record_is_written_last(
    memory_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # after the arrays, before the record

    monkeypatch.setattr(create_module, "open_group", killed)
    with pytest.raises(KeyboardInterrupt):
        create_store(memory_path, *_schema())
    with pytest.raises(StoreError, match="the creation of this store was interrupted"):
        read_provenance(memory_path)
    monkeypatch.undo()
    fresh = memory_path.replace("h.zarr", "g.zarr")
    create_store(fresh, *_schema())
    assert read_provenance(fresh) == RECORD
    assert xr.open_zarr(fresh).attrs["posctx"] == RECORD  # the consolidated copy has it too


def test_an_object_store_that_refuses_writes_is_a_store_error(
    memory_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(*args: object) -> None:
        raise PermissionError("Access Denied")

    monkeypatch.setattr(create_module, "open_group", denied)
    with pytest.raises(StoreError) as info:
        create_store(memory_path, *_schema())
    assert str(info.value) == (
        f"cannot write a store at {memory_path} (Access Denied): choose a writable --out "
        "location or fix the storage options"
    )


def _grow(path: Path, old: int, new: int) -> tuple[np.ndarray, Any]:
    bigger, _ = _schema(n_contexts=new)
    token_ids = bigger.token_id.values
    token_ids[:old] = xr.open_zarr(path).token_id.values[:old]  # the first ones are unchanged
    grow_store(
        str(path),
        old_contexts=old,
        token_ids=token_ids,
        topic=bigger.topic.values,
        source=bigger.source.values,
        offset=bigger.offset.values,
        chunk_contexts=4,
        record={"config": {"store": {"contexts": new}}},
        title="new",
    )
    return token_ids, bigger


def test_growing_keeps_finished_blocks_and_reopens_the_partial_one(tmp_path: Path) -> None:
    path = tmp_path / "h.zarr"
    create_store(str(path), *_schema(10))
    writer = BlockWriter(str(path))
    for block in plan_blocks(10, 4):
        writer.write(block, np.full((block.size, 3, 2, 2), block.index, np.float32))
    token_ids, bigger = _grow(path, 10, 13)
    # Block 2 held contexts 8-9 and now holds 8-11: unmarked, to be redone; block 3 is new.
    assert completed_blocks(str(path)).tolist() == [True, True, False, False]
    ds = xr.open_zarr(path)  # the consolidated metadata shows the new shapes
    assert ds.sizes["context"] == 13 and ds.block_start.values.tolist() == [0, 4, 8, 12]
    np.testing.assert_array_equal(ds.hidden.values[:8, 0, 0, 0], [0] * 4 + [1] * 4)
    assert np.isnan(ds.hidden.values[10:]).all()
    np.testing.assert_array_equal(ds.token_id.values, token_ids)
    assert ds.context.values.tolist() == list(range(13))
    for name in ("topic", "source", "offset"):
        np.testing.assert_array_equal(ds[name].values, bigger[name].values)
    assert ds.attrs["title"] == "new" and ds.attrs["posctx"]["config"]["store"]["contexts"] == 13
    # Every step can be repeated after a crash: growing again changes nothing.
    _grow(path, 10, 13)
    again = xr.open_zarr(path)
    np.testing.assert_array_equal(again.token_id.values, token_ids)
    assert completed_blocks(str(path)).tolist() == [True, True, False, False]


def test_growing_from_whole_blocks_unmarks_nothing(tmp_path: Path) -> None:
    path = tmp_path / "h.zarr"
    create_store(str(path), *_schema(8))
    writer = BlockWriter(str(path))
    for block in plan_blocks(8, 4):
        writer.write(block, np.ones((4, 3, 2, 2), np.float32))
    _grow(path, 8, 12)
    assert completed_blocks(str(path)).tolist() == [True, True, False]
    group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    assert group["hidden"].shape == (12, 3, 2, 2) and group["block_start"][:].tolist() == [0, 4, 8]
