"""posctx.store.blocks: data before marker, failures that keep finished blocks, crash leftovers."""

from __future__ import annotations

import errno
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from posctx.errors import StoreError
from posctx.store.blocks import (
    BlockWriter,
    _write_failure,
    completed_blocks,
    partial_files,
    remove_partial_files,
)
from posctx.store.create import create_store
from posctx.store.layout import Block, build_dataset, plan_blocks


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """An unwritten store of 10 contexts x 3 tokens, blocks of 4 (4, 4, 2)."""
    out = tmp_path / "h.zarr"
    ds, encoding = build_dataset(
        token_ids=np.arange(30).reshape(10, 3),
        topic=np.array(["t"] * 10),
        source=np.array(["s"] * 10),
        offset=np.zeros(10, int),
        layers=(0, 1),
        layer_names=("embeddings", "block_1"),
        hidden_size=2,
        storage_dtype="float32",
        chunk_contexts=4,
        chunk_layers=0,
        attrs={"posctx_kind": "hidden", "posctx_schema": 1, "posctx": {}},
    )
    create_store(str(out), ds, encoding)
    return out


def _group(path: Path) -> Any:
    return zarr.open_group(str(path), mode="r", use_consolidated=False)


def test_a_written_block_holds_its_data_and_then_its_marker(path: Path) -> None:
    writer = BlockWriter(str(path))
    assert writer.length == 3 and writer.path == str(path)
    block = Block(1, 4, 8)
    assert writer.token_ids(block).tolist() == [
        [12, 13, 14],
        [15, 16, 17],
        [18, 19, 20],
        [21, 22, 23],
    ]
    data = np.random.default_rng(0).normal(size=(4, 3, 2, 2)).astype(np.float32)
    assert completed_blocks(str(path)).tolist() == [False, False, False]
    writer.write(block, data)
    assert completed_blocks(str(path)).tolist() == [False, True, False]
    hidden = _group(path)["hidden"]
    np.testing.assert_array_equal(hidden[4:8], data)
    assert np.isnan(hidden[:4]).all() and np.isnan(hidden[8:]).all()


class _FailingArray:
    def __init__(self, exc: OSError) -> None:
        self.exc = exc

    def __setitem__(self, key: object, value: object) -> None:
        raise self.exc


def test_a_failed_write_is_a_store_error_and_leaves_the_block_unmarked(path: Path) -> None:
    writer = BlockWriter(str(path))
    writer.write(Block(0, 0, 4), np.ones((4, 3, 2, 2), np.float32))
    writer._hidden = _FailingArray(OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(StoreError) as info:
        writer.write(Block(1, 4, 8), np.ones((4, 3, 2, 2), np.float32))
    assert str(info.value) == (
        f"writing block 1 (contexts 4:8) of {path} failed (No space left on device): free space "
        "(or choose another --out) and re-run the same command to resume; the blocks already "
        "finished are kept"
    )
    assert isinstance(info.value.__cause__, OSError)
    assert completed_blocks(str(path)).tolist() == [True, False, False]


@pytest.mark.parametrize(
    ("exc", "cause", "fix"),
    [
        (
            OSError(errno.EROFS, "Read-only file system"),
            "Read-only file system",
            "make the location writable again",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied"),
            "Permission denied",
            "make the location writable again",
        ),
        (
            OSError(errno.EPERM, "Operation not permitted"),
            "Operation not permitted",
            "make the location writable again",
        ),
        (OSError(errno.EIO, "Input/output error"), "Input/output error", "fix the storage problem"),
        (OSError("bucket gone"), "bucket gone", "fix the storage problem"),
        (OSError(), "OSError", "fix the storage problem"),
    ],
)
def test_each_kind_of_write_failure_gets_its_advice(exc: OSError, cause: str, fix: str) -> None:
    message = _write_failure("s.zarr", Block(2, 8, 10), exc)
    assert message.startswith(f"writing block 2 (contexts 8:10) of s.zarr failed ({cause}): {fix}")
    assert message.endswith(
        "re-run the same command to resume; the blocks already finished are kept"
    )


def _partial(folder: Path, stem: str = "0") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    leftover = folder / f"{stem}.{uuid.uuid4().hex}.partial"
    leftover.write_bytes(b"x" * 100)
    return leftover


def test_writing_a_block_removes_only_its_own_leftovers(path: Path) -> None:
    mine = _partial(path / "hidden" / "c" / "1" / "0" / "0")
    other_block = _partial(path / "hidden" / "c" / "2" / "0" / "0")
    not_zarrs = path / "hidden" / "c" / "1" / "0" / "0" / "notes.partial"
    not_zarrs.write_text("a user's file, not zarr's uuid-named temporary")
    BlockWriter(str(path)).write(Block(1, 4, 8), np.zeros((4, 3, 2, 2), np.float32))
    assert not mine.exists()
    assert other_block.exists() and not_zarrs.exists()


def test_partial_files_are_listed_with_their_sizes_and_removed(path: Path) -> None:
    leftovers = [
        _partial(path / "hidden" / "c" / "0" / "0" / "0"),
        _partial(path / "block_complete" / "c", stem="1"),
        _partial(path, stem="zarr.json"),  # a metadata write killed midway
    ]
    (path / "hidden" / "keep.partial").write_text("not zarr's")
    assert partial_files(str(path)) == sorted((str(p), 100) for p in leftovers)
    assert remove_partial_files(str(path)) == (3, 300)
    assert partial_files(str(path)) == [] and (path / "hidden" / "keep.partial").exists()
    assert remove_partial_files(str(path)) == (0, 0)
    assert remove_partial_files("s3://bucket/h.zarr") == (0, 0)  # object stores leave none


def test_completed_blocks_reads_one_marker_per_block(path: Path) -> None:
    writer = BlockWriter(str(path))
    for block in plan_blocks(10, 4)[::2]:
        writer.write(block, np.zeros((block.size, 3, 2, 2), np.float32))
    done = completed_blocks(str(path))
    assert done.dtype == bool and done.tolist() == [True, False, True]
