"""posctx.validate.structure: the checks of metadata and labels, called one by one."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from posctx.extraction import extract
from posctx.store import Block
from posctx.store.location import consolidate, zarr_json
from posctx.types import SCHEMA_VERSION
from posctx.validate.report import _Skip
from posctx.validate.structure import (
    REQUIRED_PROVENANCE,
    _check_completeness,
    _check_labels,
    _check_partial,
    _check_provenance,
    _check_schema,
    _holes,
    _Store,
)
from tests.stores import tiny_config, write_corpus


@pytest.fixture(scope="module")
def good(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny-GPT-2 store: 12 contexts of 8 tokens, blocks of 4, 3 layers of 32."""
    root = tmp_path_factory.mktemp("structure")
    path = root / "good.zarr"
    extract(
        tiny_config(tiny_models["gpt2"], write_corpus(root / "corpus"), contexts=12),
        str(path),
        progress=False,
    )
    return path


@pytest.fixture
def store(good: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good, tmp_path / "h.zarr"))


def _st(path: Path) -> _Store:
    return _Store(str(path), None, zarr_json(str(path), None) or {})


def _group(path: Path) -> Any:
    return zarr.open_group(str(path), mode="r+", use_consolidated=False)


def _set_attrs(path: Path, **attrs: Any) -> None:
    _group(path).attrs.update(attrs)
    consolidate(str(path), None)


def _set_record(path: Path, **changes: Any) -> None:
    _set_attrs(path, posctx={**dict(_group(path).attrs["posctx"]), **changes})


# --- the shared view of a store --------------------------------------------------------------


def test_the_store_view_reads_sizes_blocks_and_labels(store: Path) -> None:
    st = _st(store)
    assert (st.n_contexts(), st.chunk_contexts()) == (12, 4)
    assert st.blocks() == [Block(0, 0, 4), Block(1, 4, 8), Block(2, 8, 12)]
    assert st.done().tolist() == [True, True, True] and st.complete_blocks() == st.blocks()
    assert st.label("layer", 2) == 2 and st.label("no_such_coordinate", 7) == 7
    assert st.record["chunk_contexts"] == 4


def test_the_block_size_falls_back_to_the_chunks_of_hidden(store: Path) -> None:
    for bad in (True, 0, "4", None):
        _set_record(store, chunk_contexts=bad)
        assert _st(store).chunk_contexts() == 4
    shutil.rmtree(store / "hidden")
    with pytest.raises(_Skip, match="no recorded chunk_contexts and no `hidden`"):
        _st(store).chunk_contexts()
    assert _st(store).n_contexts() == 12  # from token_id


def test_missing_markers_count_as_not_written(store: Path) -> None:
    _group(store)["block_complete"].resize((2,))
    assert _st(store).done().tolist() == [True, True, False]


# --- schema ----------------------------------------------------------------------------------


def test_a_good_schema_is_described(good: Path) -> None:
    check = _check_schema(_st(good))
    assert check.status == "ok"
    assert check.detail == (
        "schema 1; hidden (context=12, position=8, layer=3, dim=32) float32 in chunks (4, 8, 3, 32); "
        "token_id int32; 3 blocks of 4 contexts; every coordinate present"
    )
    assert check.figures == {
        "schema_version": 1,
        "expected_schema_version": SCHEMA_VERSION,
        "shape": [12, 8, 3, 32],
        "dtype": "float32",
    }


def test_dtypes_dims_and_versions_are_checked(store: Path) -> None:
    group = _group(store)
    ids = np.asarray(group["token_id"][:])
    del group["token_id"]
    group.create_array(
        "token_id", data=ids.astype(np.int64), chunks=(4, 8), dimension_names=("context", "dim")
    )
    _set_attrs(store, posctx_schema=0)
    detail = _check_schema(_st(store)).detail
    assert "`token_id` has dims ('context', 'dim'), expected ('context', 'position')" in detail
    assert "`token_id` has dtype int64, expected int32" in detail
    assert (
        "store schema version 0, this posctx reads schema 1: re-extract it with this posctx, or "
        "read it with posctx"
    ) in detail
    _set_attrs(store, posctx_schema=None)
    assert (
        "root attr posctx_schema is missing (this posctx writes 1)"
        in _check_schema(_st(store)).detail
    )


def test_blocks_must_be_whole_chunks_and_as_many_as_planned(store: Path) -> None:
    _set_record(store, chunk_contexts=6)  # blocks of 6: two, where three markers are stored
    detail = _check_schema(_st(store)).detail
    assert "3 blocks, but 12 contexts in blocks of 6 make 2" in detail
    assert "`hidden` chunks hold 4 contexts, the record's blocks 6" in detail


def test_metadata_not_consolidated_or_stale_is_a_warning(store: Path) -> None:
    _group(store).attrs["title"] = "renamed"  # an attrs write drops the consolidated copy
    check = _check_schema(_st(store))
    assert (check.status, check.detail) == (
        "warn",
        "no consolidated metadata: plain xr.open_zarr is slower and warns; re-consolidate with "
        "zarr.consolidate_metadata(STORE)",
    )
    consolidate(str(store), None)
    meta = json.loads((store / "zarr.json").read_text())
    meta["consolidated_metadata"]["metadata"]["offset"]["shape"] = [99]
    (store / "zarr.json").write_text(json.dumps(meta))
    assert _check_schema(_st(store)).detail.startswith(
        "consolidated metadata is stale for ['offset']: xr.open_zarr sees other shapes"
    )


# --- labels ----------------------------------------------------------------------------------


def test_good_labels_say_what_was_checked(good: Path) -> None:
    check = _check_labels(_st(good))
    assert check.status == "ok"
    assert check.detail == (
        "context 0..11; position 0..7; dim 0..31; layers [0, 1, 2]; 3 distinct layer_names; "
        "2 distinct topics; 2 distinct sources; offsets >= 0; 3 block starts as planned"
    )


def test_each_broken_label_rule_is_named(store: Path) -> None:
    group = _group(store)
    group["context"][3] = 30
    group["layer"][:] = [0, 1, 1]
    group["topic"][[2, 5]] = ["", ""]
    group["offset"][[1, 7]] = -1
    group["block_start"][:] = [0, 4, 9]
    assert _check_labels(_st(store)).figures["problems"] == [
        "`context` is not 0..11 (index 3 holds 30)",
        "`layer` labels are not unique and >= 0: [0, 1, 1]",
        "`topic` is empty or not a string at 2 indices (first [2, 5])",
        "`offset` < 0 at contexts [1, 7]",
        "`block_start` is [0, 4, 9], the planned block starts are [0, 4, 8]",
    ]


def test_without_any_coordinate_there_is_nothing_to_check(store: Path) -> None:
    for name in (
        "context",
        "position",
        "dim",
        "layer",
        "layer_name",
        "topic",
        "source",
        "offset",
        "block_start",
    ):
        shutil.rmtree(store / name)
    with pytest.raises(_Skip, match="no coordinate is there to check"):
        _check_labels(_st(store))


# --- provenance ------------------------------------------------------------------------------


def test_a_complete_record_passes(good: Path) -> None:
    check = _check_provenance(_st(good))
    assert check.status == "ok"
    assert check.detail.startswith(
        "record complete; config parses and matches the arrays (C=12, T=8, float32); model "
    )
    assert check.figures["contexts"] == 12 and check.figures["missing"] == []


def test_records_missing_or_unparsable_fail(store: Path) -> None:
    _set_attrs(store, posctx="a string")
    assert _check_provenance(_st(store)).detail == (
        "no `posctx` record in the root attrs: nothing says how this store was made (it was not "
        "written by `posctx extract`)"
    )
    _set_attrs(store, posctx={"config": [1]})
    check = _check_provenance(_st(store))
    assert check.detail == f"record lacks {[k for k in REQUIRED_PROVENANCE if k != 'config']}"
    _set_attrs(store, posctx={"config": {"store": {"contexts": 0}}})
    assert "config does not parse (PosctxError: --contexts must be >= 1, got 0" in (
        _check_provenance(_st(store)).detail
    )


def test_a_record_that_disagrees_with_the_arrays_names_each_difference(store: Path) -> None:
    record = dict(_group(store).attrs["posctx"])
    config = json.loads(json.dumps(record["config"]))
    config["store"].update(contexts=16, length=9, storage_dtype="float16", chunk_contexts=6)
    config["model"]["layers"] = [0, 2]
    model = {**record["model"], "hidden_size": 64}
    del model["weights_hash"]
    _set_record(store, config=config, model=model)
    assert _check_provenance(_st(store)).detail.split("; ") == [
        "model record has no weights_hash",
        "config says 16 contexts, the arrays hold 12",  # fewer: no interrupted extension
        "config says length 9, the arrays hold 8",
        "config says storage dtype float16, `hidden` is float32",
        "model hidden_size 64, `hidden` has dim=32",
        "config asks chunks of 6 contexts, record says 4",
        "config's layers are [0, 2], the store's [0, 1, 2]",
    ]


# --- completeness and leftovers --------------------------------------------------------------


def test_holes_are_runs_of_adjacent_unwritten_blocks() -> None:
    blocks = [Block(0, 0, 4), Block(1, 4, 8), Block(3, 12, 16), Block(5, 20, 21)]
    assert _holes(blocks) == [(0, 7), (12, 15), (20, 20)]
    assert _holes([]) == []


def test_completeness_lists_the_first_ten_holes(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    path = tmp_path / "many.zarr"
    config = tiny_config(
        tiny_models["gpt2"], write_corpus(tmp_path / "corpus"), contexts=24, chunk=1
    )
    extract(config, str(path), progress=False, plan_only=True)
    _group(path)["block_complete"][::2] = 1  # every odd context unwritten: 12 holes
    check = _check_completeness(_st(path))
    assert check.status == "fail"
    assert check.figures["holes"][:2] == [[1, 1], [3, 3]] and len(check.figures["holes"]) == 12
    assert check.figures["contexts_missing"] == 12 and check.figures["blocks_complete"] == 12
    assert check.detail.startswith(
        "12 of 24 blocks never marked written: contexts 1, 3, 5, 7, 9, 11, 13, 15, 17, 19 and 2 "
        "more ranges (12 contexts)"
    )


def test_partial_files_found_and_removed_are_reported(store: Path) -> None:
    leftover = store / "hidden" / "c" / "0" / "0" / "0" / f"0.{uuid.uuid4().hex}.partial"
    leftover.write_bytes(b"x" * 10)
    check = _check_partial(_st(store), (0, 0))
    assert check.status == "warn" and check.figures == {"count": 1, "bytes": 10}
    leftover.unlink()
    check = _check_partial(_st(store), (2, 2048))
    assert (check.status, check.detail) == (
        "ok",
        "removed 2 leftover .partial files (2,048 bytes); no leftover .partial chunk files",
    )
    assert check.figures == {"count": 0, "bytes": 0, "removed": 2, "removed_bytes": 2048}
    st = _st(store)
    st.path = "s3://bucket/h.zarr"
    with pytest.raises(_Skip, match="object stores write whole objects"):
        _check_partial(st, (0, 0))
