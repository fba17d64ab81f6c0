"""The store layer: schema, creation, markers, opening with and without posctx."""

from __future__ import annotations

import builtins
import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr

from posctx.errors import IncompleteStoreError, StoreError
from posctx.store import (
    Block,
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
from posctx.store.integrity import missing_chunks
from posctx.testing import raise_if_dask_computes, write_large_planted_store
from posctx.types import HIDDEN


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


# --- a damaged store: chunk files missing from blocks marked written --------------------------


def _bare_hidden(location: str, sep: str, **options: Any) -> None:
    """A group holding only ``hidden``: 10 contexts in blocks of 4, 2 layer chunks, all written."""
    group = zarr.open_group(location, mode="w", **options)
    arr = group.create_array(
        HIDDEN,
        shape=(10, 3, 4, 2),
        chunks=(4, 3, 2, 2),
        dtype="f4",
        fill_value=np.nan,
        compressors=None,
        chunk_key_encoding={"name": "default", "separator": sep},
    )
    arr[...] = np.ones(arr.shape, np.float32)


@contextlib.contextmanager
def _no_chunk_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail any ``open`` of a file under ``hidden/`` other than its ``zarr.json``."""
    opened: list[str] = []
    real = builtins.open

    def guarded(file: Any, *args: Any, **kwargs: Any) -> Any:
        name = os.fspath(file) if isinstance(file, (str, os.PathLike)) else ""
        if f"{os.sep}{HIDDEN}{os.sep}" in name:
            opened.append(name)
            assert name.endswith("zarr.json"), f"a chunk was read: {name}"
        return real(file, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(builtins, "open", guarded)
        patch.setattr(io, "open", guarded)
        patch.setattr(np, "fromfile", lambda *a, **k: pytest.fail("a chunk was read"))
        yield opened


@pytest.mark.parametrize("sep", ["/", "."])
def test_missing_chunks_are_found_by_file_existence_alone(
    tmp_path: Path, sep: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "h.zarr"
    _bare_hidden(str(path), sep)
    blocks = plan_blocks(10, 4)
    array_dir = path / HIDDEN
    keys = [sep.join(["c", *k]) for k in (("1", "0", "1", "0"), ("2", "0", "0", "0"))]
    assert all((array_dir / key).is_file() for key in keys)  # the files the encoding names
    assert missing_chunks(str(path), blocks) == {}
    for key in keys:
        (array_dir / key).unlink()
    with raise_if_dask_computes(max_computes=0), _no_chunk_reads(monkeypatch) as opened:
        found = missing_chunks(str(path), blocks)
    assert opened == [str(array_dir / "zarr.json")]  # the metadata, and no chunk
    assert found == {1: [f"{HIDDEN}/{keys[0]}"], 2: [f"{HIDDEN}/{keys[1]}"]}
    assert missing_chunks(str(path), blocks[:1]) == {}  # block 0 has all its files
    # Only the blocks asked about, whatever their order; a block past the array is empty.
    assert list(missing_chunks(str(path), [blocks[2], blocks[1], Block(3, 12, 16)])) == [2, 1]
    (array_dir / "zarr.json").unlink()
    with pytest.raises(StoreError, match=r"the metadata of `hidden` \(hidden/zarr.json\)"):
        missing_chunks(str(path), blocks)


def test_open_hidden_refuses_a_store_with_missing_chunk_files(tmp_path: Path) -> None:
    path = tmp_path / "h.zarr"
    write_large_planted_store(
        str(path), n_contexts=10, length=4, n_layers=3, n_dims=2, chunk_contexts=4, chunk_layers=2
    )
    (path / "hidden" / "c" / "1" / "0" / "1" / "0").unlink()  # block 1, second layer chunk
    (path / "hidden" / "c" / "2" / "0" / "0" / "0").unlink()  # block 2, first layer chunk
    expected = (
        f"{path}: 2 chunks of hidden are missing although their blocks are marked written "
        "(blocks 1-2; e.g. hidden/c/1/0/1/0): the store is damaged (a partial copy?); run "
        f"`posctx validate {path}` for details, and restore the files, or re-run the same "
        "`posctx extract` command: it computes the blocks whose files are missing again"
    )
    for complete_only in (False, True):
        with pytest.raises(StoreError) as info:
            open_hidden(str(path), complete_only=complete_only)
        assert str(info.value) == expected
        assert not isinstance(info.value, IncompleteStoreError)
    # The same store read through zarr (not the direct reader) is refused the same way.
    with pytest.raises(StoreError, match="2 chunks of hidden are missing"):
        open_hidden(str(path), chunks={"dim": 2})  # the stored chunks

    # Unmarked, a block's missing files are a hole, not damage: complete_only leaves it out.
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    group["block_complete"][2] = 0
    with pytest.raises(StoreError, match=r"\(block 1; e.g. hidden/c/1/0/1/0\)"):
        open_hidden(str(path), complete_only=True)
    group["block_complete"][1] = 0
    ds = open_hidden(str(path), complete_only=True)
    assert ds.context.values.tolist() == [0, 1, 2, 3]
    assert not np.isnan(ds.hidden.values).any()
    with pytest.raises(IncompleteStoreError, match="2 of 3 blocks are not written yet"):
        open_hidden(str(path))
    # Nothing finished and nothing there (a store just created): an empty selection, whose
    # reading touches chunk 0 in dask, reads as empty rather than refusing that unkept chunk.
    group["block_complete"][0] = 0
    for chunk in (path / "hidden" / "c" / "0").rglob("0"):
        if chunk.is_file():
            chunk.unlink()
    assert open_hidden(str(path), complete_only=True).hidden.values.shape == (0, 4, 3, 2)


def test_a_chunk_deleted_after_open_is_refused_not_read_as_nan(tmp_path: Path) -> None:
    import posctx
    from posctx.store.direct import direct_array, direct_source

    path = tmp_path / "h.zarr"
    write_large_planted_store(
        str(path), n_contexts=10, length=4, n_layers=2, n_dims=3, chunk_contexts=4
    )
    ds = open_hidden(str(path))
    source = direct_source(ds.hidden.data)
    assert source is not None and source.required == {0, 1, 2}  # every block's chunks
    (path / "hidden" / "c" / "1" / "0" / "0" / "0").unlink()  # after the check at open
    refused = r"chunk file .*hidden/c/1/0/0/0 is missing although its block is marked written"
    with pytest.raises(StoreError, match=refused):
        ds.hidden.values  # noqa: B018  # the chunk-by-chunk reader
    with pytest.raises(StoreError, match=refused):
        posctx.decompose(ds).compute()  # the context-by-context reader of the statistics
    # The raw reader keeps zarr's rule: a missing chunk is the fill value.
    raw = direct_array(path / "hidden").compute()
    assert np.isnan(raw[4:8]).all() and not np.isnan(raw[:4]).any()
