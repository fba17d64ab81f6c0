"""Several writers and readers on one store at once: nothing lost, nothing half-read."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from posctx.config import ExtractConfig
from posctx.decomposition import statistics
from posctx.errors import IncompleteStoreError
from posctx.store import completed_blocks, open_hidden
from tests import faults


@pytest.fixture(scope="module")
def reference(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("concurrency-reference")
    config = faults.tiny_config(tiny_models["bert"], contexts=24)
    assert faults.run(config, root / "ref.zarr", count_file=root / "count") == 0
    return {
        "config": config,
        "path": root / "ref.zarr",
        "contents": faults.store_contents(root / "ref.zarr"),
        "writes": int((root / "count").read_text()),
    }


def test_shards_started_together_create_one_store_and_fill_it(
    reference: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "sharded.zarr"
    procs = [faults.start(reference["config"], path, shard=(i, 3)) for i in range(3)]
    assert [faults.wait(p) for p in procs] == [0, 0, 0]
    assert not faults.differences(reference["contents"], faults.store_contents(path))
    assert not faults.leftovers(path)  # the losers' half-built copies are gone too


def test_a_killed_shard_loses_nothing_of_the_others(
    reference: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "sharded.zarr"
    # Chunks of 2 contexts and batches of 3: forward groups of 2 blocks, and shard i of 3
    # takes groups i and i + 3. Shard 1 (blocks 2, 3, 8, 9) dies writing block 3.
    kill = faults.Kill(where="hidden/c/3/", mode="torn")
    procs = [
        faults.start(reference["config"], path, kill=kill if i == 1 else None, shard=(i, 3))
        for i in range(3)
    ]
    assert [faults.wait(p) for p in procs] == [0, -9, 0]
    done = completed_blocks(str(path))
    assert done[[0, 1, 4, 5, 6, 7, 10, 11]].all()  # shards 0 and 2 finished
    assert not done[[2, 3, 8, 9]].any()  # shard 1 died before its first commit
    assert faults.run_shard(reference["config"], path, (1, 3)) == 0
    assert not faults.differences(reference["contents"], faults.store_contents(path))
    assert not faults.leftovers(path)


def test_one_shared_marker_chunk_loses_updates_and_posctx_markers_do_not(tmp_path: Path) -> None:
    """The classic lost update: writers read-modify-write the one chunk that holds every
    marker, and the last write wins. posctx gives each block's marker its own chunk."""
    n = 4
    shared = zarr.open_group(str(tmp_path / "shared.zarr"), mode="w")
    shared.create_array("done", shape=(n,), chunks=(n,), dtype="u1", fill_value=0)
    faults.set_markers_concurrently(tmp_path / "shared.zarr", "done", n)
    lost = n - int(np.asarray(zarr.open_array(str(tmp_path / "shared.zarr"), path="done")[:]).sum())
    assert lost >= 1, "the strawman should lose updates; the test no longer interleaves writers"

    store = zarr.open_group(str(tmp_path / "own.zarr"), mode="w")
    store.create_array("done", shape=(n,), chunks=(1,), dtype="u1", fill_value=0)
    faults.set_markers_concurrently(tmp_path / "own.zarr", "done", n)
    assert (
        np.asarray(zarr.open_array(str(tmp_path / "own.zarr"), path="done")[:]).tolist() == [1] * n
    )


def test_store_markers_have_one_chunk_per_block(reference: dict[str, Any]) -> None:
    marker = zarr.open_group(str(reference["path"]), mode="r", use_consolidated=False)[
        "block_complete"
    ]
    assert marker.chunks == (1,) and marker.shape == (12,)


def test_readers_during_extraction_see_only_finished_blocks(
    reference: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "live.zarr"
    expected = reference["contents"]["hidden"]
    proc = faults.start(reference["config"], path, pause=0.08)
    snapshots: list[int] = []
    try:
        while proc.is_alive():
            try:
                ds = open_hidden(str(path), complete_only=True)
            except Exception:  # not created yet, or just renamed into place
                time.sleep(0.02)
                continue
            used = ds.attrs.get("posctx_complete_only", {"blocks_used": 12})["blocks_used"]
            values = ds.hidden.values
            contexts = ds.context.values
            assert not np.isnan(values).any()
            np.testing.assert_array_equal(values, expected[contexts])
            if 0 < used < 12:
                snapshots.append(used)
                try:
                    open_hidden(str(path))
                except IncompleteStoreError as exc:
                    assert "re-run the same" in str(exc)
                else:  # the last block landed in between
                    assert completed_blocks(str(path)).all()
                record = json.loads(statistics(ds).attrs["posctx_decomposition"])
                assert record["complete_only"]["blocks_used"] == used
                assert sum(b - a for a, b in record["contexts_used"]) == contexts.size
            time.sleep(0.05)
    finally:
        assert faults.wait(proc) == 0
    assert len(set(snapshots)) >= 3, f"saw too few partial states: {snapshots}"
    assert not faults.differences(reference["contents"], faults.store_contents(path))


def test_plan_only_then_shards_and_extensions_need_one_planner(
    reference: dict[str, Any], tmp_path: Path
) -> None:
    from posctx.errors import StoreError
    from posctx.extraction import extract

    path = str(tmp_path / "planned.zarr")
    config = ExtractConfig.from_dict(reference["config"])
    small = ExtractConfig.from_dict(faults.tiny_config(Path(config.model.name), contexts=12))
    planned = extract(small, path, plan_only=True, progress=False)
    assert (planned.blocks_written, planned.blocks_missing) == (0, 6)
    assert not completed_blocks(path).any()
    for i in range(3):
        extract(small, path, shard=(i, 3), progress=False)
    assert completed_blocks(path).all()

    # Growing the store is one process's job: shards are refused until it is planned.
    with pytest.raises(StoreError, match="with --plan-only"):
        extract(config, path, shard=(0, 2), progress=False)
    assert faults.store_contents(Path(path))["hidden"].shape[0] == 12  # untouched
    grown = extract(config, path, plan_only=True, progress=False)
    assert (grown.blocks_written, grown.blocks_missing) == (0, 6)
    results = [extract(config, path, shard=(i, 2), progress=False) for i in range(2)]
    # Blocks 6-11 in groups 3, 4 and 5 of two blocks: shard 0 takes group 4, shard 1 the others.
    assert [r.blocks_written for r in results] == [2, 4] and results[-1].blocks_missing == 0
    got = faults.store_contents(Path(path))
    differ = [name for name in faults.differences(reference["contents"], got) if name != "attrs"]
    assert not differ, differ


def test_shards_on_object_storage_need_the_store_planned_first(reference: dict[str, Any]) -> None:
    from posctx.errors import PosctxError, StoreError
    from posctx.extraction import extract

    config = ExtractConfig.from_dict(reference["config"])
    with pytest.raises(StoreError, match="create it with one process first"):
        extract(config, "memory://posctx-shards/h.zarr", shard=(0, 2), progress=False)
    with pytest.raises(PosctxError, match="shard 3/2 does not exist"):
        extract(config, "memory://posctx-shards/h.zarr", shard=(3, 2), progress=False)
