"""posctx.extraction.groups: forward batches span blocks, in groups fixed by the plan, so a
resume or a shard batches every context with the same mates as one uninterrupted run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from posctx.config import ModelConfig
from posctx.extraction.api import extract
from posctx.extraction.groups import Group, blocks_per_group, in_shard, plan_groups
from posctx.extraction.plan import BlockRun, pending_blocks
from posctx.extraction.run import run_blocks
from posctx.model import LoadedModel, forward_hidden, load_model
from posctx.store import Block, plan_blocks, read_provenance
from posctx.store.layout import StatisticsPlan
from tests.stores import tiny_config, write_corpus


def test_a_group_holds_a_full_batch_and_one_block_when_a_chunk_does() -> None:
    assert [blocks_per_group(c, 32) for c in (1, 2, 3, 16, 31, 32, 46)] == [32, 16, 11, 2, 2, 1, 1]
    with pytest.raises(ValueError):
        blocks_per_group(0, 32)


def test_groups_are_the_plans_whatever_is_left_to_do() -> None:
    blocks = plan_blocks(10, 1)
    groups = plan_groups(blocks, [blocks[4], blocks[9], blocks[5]], 3)
    assert groups == [
        Group(1, (blocks[3], blocks[4], blocks[5]), (blocks[4], blocks[5])),
        Group(3, (blocks[9],), (blocks[9],)),  # the short last group
    ]
    assert (groups[0].start, groups[0].stop, groups[0].size) == (3, 6, 3)
    assert groups[0].span == Block(1, 3, 6) and groups[0].rows(blocks[5]) == slice(2, 3)


def test_shards_take_whole_groups() -> None:
    blocks = plan_blocks(12, 2)  # 6 blocks, groups of 2 blocks
    done = np.zeros(6, bool)
    shards = [pending_blocks(blocks, done, (i, 2), per_group=2) for i in range(2)]
    assert [[b.index for b in s] for s in shards] == [[0, 1, 4, 5], [2, 3]]
    assert not in_shard(blocks[2], 2, (0, 2)) and in_shard(blocks[2], 1, (0, 2))


@pytest.fixture(scope="module")
def gpt2(tiny_models: dict[str, Path]) -> LoadedModel:
    return load_model(ModelConfig(name=str(tiny_models["gpt2"]), batch_size=3))


def _batches(loaded: LoadedModel, calls: list[tuple[int, ...]]) -> Any:
    """Record the first token id of every context of every forward pass."""
    return loaded.model.register_forward_hook(
        lambda module, args, kwargs, out: calls.append(
            tuple(int(i) for i in kwargs["input_ids"][:, 0])
        ),
        with_kwargs=True,
    )


def _store(gpt2: LoadedModel, tmp_path: Path, name: str) -> tuple[str, Any]:
    config = tiny_config(gpt2.path, write_corpus(tmp_path / "corpus"), contexts=10, chunk=1)
    path = str(tmp_path / name)
    extract(config, path, progress=False, loaded=gpt2, plan_only=True)
    return path, config


def test_batches_span_chunks_and_a_resume_keeps_every_batch(
    gpt2: LoadedModel, tmp_path: Path
) -> None:
    whole, config = _store(gpt2, tmp_path, "whole.zarr")
    calls: list[tuple[int, ...]] = []
    hook = _batches(gpt2, calls)
    try:
        extract(config, whole, progress=False, loaded=gpt2)
        ids = xr.open_zarr(whole).token_id.values[:, 0].tolist()
        # One context a chunk, yet batches of 3: groups of 3 blocks, and a short last one.
        assert calls == [tuple(ids[i : i + 3]) for i in (0, 3, 6, 9)]

        resumed, _ = _store(gpt2, tmp_path, "resumed.zarr")
        blocks = plan_blocks(10, 1)
        statistics = StatisticsPlan.from_record(read_provenance(resumed) or {})
        assert statistics is not None
        first = BlockRun(
            resumed,
            (blocks[1], blocks[7]),  # what an interrupted run left: a block of two groups
            "float32",
            8,
            progress=False,
            n_contexts=10,
            chunk_contexts=1,
            batch_size=3,
            per_group=3,
            statistics=statistics,
            topics=statistics.topics,
        )
        calls.clear()
        assert run_blocks(gpt2, first) == 2 * 8  # written: those two blocks only
        assert calls == [tuple(ids[0:3]), tuple(ids[6:9])]  # computed: their whole groups
        calls.clear()
        result = extract(config, resumed, progress=False, loaded=gpt2)
        assert result.blocks_written == 8 and result.tokens_written == 8 * 8
        assert calls == [tuple(ids[i : i + 3]) for i in (0, 3, 6, 9)]  # the same batches
    finally:
        hook.remove()
    a, b = xr.open_zarr(whole).hidden.values, xr.open_zarr(resumed).hidden.values
    assert a.tobytes() == b.tobytes()
    np.testing.assert_array_equal(a, forward_hidden(gpt2, xr.open_zarr(whole).token_id.values))


def test_shards_compute_disjoint_groups_and_make_the_same_store(
    gpt2: LoadedModel, tmp_path: Path
) -> None:
    whole, config = _store(gpt2, tmp_path, "whole.zarr")
    extract(config, whole, progress=False, loaded=gpt2)
    sharded, _ = _store(gpt2, tmp_path, "sharded.zarr")
    calls: list[tuple[int, ...]] = []
    hook = _batches(gpt2, calls)
    try:
        first = extract(config, sharded, progress=False, loaded=gpt2, shard=(0, 2))
        assert len(calls) == 2 and first.blocks_missing == 4  # groups 0 and 2 done
        extract(config, sharded, progress=False, loaded=gpt2, shard=(1, 2))
        assert len(calls) == 4  # groups 1 and 3: no context computed twice
    finally:
        hook.remove()
    a, b = xr.open_zarr(whole), xr.open_zarr(sharded)
    assert a.hidden.values.tobytes() == b.hidden.values.tobytes()
    assert b.block_complete.values.all()
