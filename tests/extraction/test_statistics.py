"""posctx.extraction.statistics: a writer's sums, its commits, and their order on the store."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr

from posctx.config import ModelConfig
from posctx.errors import StoreError
from posctx.extraction.api import extract
from posctx.extraction.plan import BlockRun, settle_statistics
from posctx.extraction.statistics import Commit, WriterStatistics
from posctx.model import LoadedModel, forward_hidden, load_model
from posctx.store import Block, BlockWriter, plan_blocks, read_provenance
from posctx.store.blocks import completed_blocks
from posctx.store.layout import StatisticsPlan
from posctx.store.partials import read_partials, write_partial
from posctx.store.statistics import open_statistics
from posctx.sums import CONTEXT_STATISTICS, block_statistics
from posctx.types import BLOCK_COMPLETE
from tests.stores import tiny_config, write_corpus


class Killed(Exception):
    """Stands for a SIGKILL at the point where it is raised."""


@pytest.fixture(scope="module")
def bert(tiny_models: dict[str, Path]) -> LoadedModel:
    return load_model(ModelConfig(name=str(tiny_models["bert"]), batch_size=3))


@pytest.fixture
def run(bert: LoadedModel, tmp_path: Path) -> BlockRun:
    """A planned store of 10 contexts x 8 tokens in blocks of 4 (the last one short), with
    moments, as the run ``extract`` would hand to its executor."""
    path = str(tmp_path / "h.zarr")
    config = tiny_config(bert.path, write_corpus(tmp_path / "corpus"), contexts=10)
    config = dataclasses.replace(config, store=dataclasses.replace(config.store, moments=True))
    extract(config, path, progress=False, loaded=bert, plan_only=True)
    plan = StatisticsPlan.from_record(read_provenance(path) or {})
    assert plan is not None and plan.topics == ("alpha", "beta")
    assert (plan.edges.lead, plan.edges.trail) == (1, 1)  # position 0 and BERT's [SEP]
    return BlockRun(
        path,
        tuple(plan_blocks(10, 4)),
        storage_dtype="float32",
        length=8,
        progress=False,
        statistics=plan,
        topics=plan.topics,
        n_contexts=10,
        chunk_contexts=4,
    )


def _topic_index(run: BlockRun, writer: BlockWriter, blocks: Any) -> np.ndarray:
    labels = np.concatenate([writer.topics(b) for b in blocks])
    return np.array([run.topics.index(str(t)) for t in labels])


def _reference(
    loaded: LoadedModel, run: BlockRun, writer: BlockWriter, blocks: Any
) -> dict[str, Any]:
    """block_statistics of the blocks' hidden states, computed again from their token ids."""
    assert run.statistics is not None
    ids = np.concatenate([writer.token_ids(b) for b in blocks])
    x = forward_hidden(loaded, ids)
    topics = _topic_index(run, writer, blocks)
    return block_statistics(x, run.statistics.edges, topics, len(run.topics), moments=True)


def _close(a: Any, b: Any, rtol: float = 1e-12) -> None:
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(np.abs(b).max()))


def _check_sums(sums: dict[str, Any], ref: dict[str, Any]) -> None:
    _close(sums["pos_sum"], ref["pos_sum"])
    assert sums["count"] == ref["count"]
    _close(sums["mean"], ref["mean"])
    _close(sums["m2"], ref["m2"], 1e-6)


def _fields(commit: Commit) -> tuple[Any, ...]:
    return commit.owner, commit.seq, commit.blocks, commit.mark, commit.delete


def _names(path: str) -> list[str]:
    complete, broken = read_partials(path)
    assert broken == []
    return [p.name for p in complete]


def _markers(path: str) -> list[int]:
    group = zarr.open_group(path, mode="r", use_consolidated=False)
    return np.asarray(group[BLOCK_COMPLETE][:]).tolist()


def test_commits_list_every_counted_block_and_mark_only_the_new_ones(
    bert: LoadedModel, run: BlockRun
) -> None:
    writer = BlockWriter(run.path)
    b0, b1, b2 = run.blocks
    stats = WriterStatistics(bert, run, "w")
    assert stats.commit() is None  # nothing computed yet
    data, contexts, tail = stats.compute(b0, writer)
    assert tail is None and stats.counted == [b0] and stats.unmarked == [b0]
    np.testing.assert_array_equal(data, forward_hidden(bert, writer.token_ids(b0)))
    ref = _reference(bert, run, writer, [b0])
    assert set(contexts) == set(CONTEXT_STATISTICS)
    _close(contexts["ctx_sum"], ref["ctx_sum"])
    _close(contexts["ctx_sumsq"], ref["ctx_sumsq"])
    np.testing.assert_array_equal(contexts["edge"], data[:, [0, 7]])
    first = stats.commit()
    assert first is not None and _fields(first) == ("w", 0, (b0,), (b0,), ())
    _check_sums(first.sums, ref)
    assert stats.commit() is None and stats.seq == 1 and stats.unmarked == []

    stats.compute(b1, writer)
    second = stats.commit()
    assert second is not None and _fields(second) == ("w", 1, (b0, b1), (b1,), ("w.0",))
    _check_sums(second.sums, _reference(bert, run, writer, [b0, b1]))
    _check_sums(first.sums, ref)  # the first commit's sums are its own copy

    # The short last block: its own commit under its own writer, outside the writer's sums.
    data, contexts, tail = stats.compute(b2, writer)
    assert data.shape == (2, 8, 3, 32) and contexts["ctx_sum"].shape == (2, 3, 32)
    assert tail is not None and _fields(tail) == ("tail-2-8-10", 0, (b2,), (b2,), ())
    _check_sums(tail.sums, _reference(bert, run, writer, [b2]))
    assert stats.counted == [b0, b1] and stats.unmarked == [] and stats.commit() is None
    assert stats.seq == 2


def test_applied_commits_leave_one_version_per_writer_and_mark_their_blocks(
    bert: LoadedModel, run: BlockRun
) -> None:
    writer = BlockWriter(run.path)
    b0, b1, b2 = run.blocks
    stats = WriterStatistics(bert, run, "w")
    for block, names, markers in (
        (b0, ["w.0"], [1, 0, 0]),
        (b1, ["w.1"], [1, 1, 0]),
        (b2, ["tail-2-8-10.0", "w.1"], [1, 1, 1]),
    ):
        data, contexts, tail = stats.compute(block, writer)
        writer.write_unmarked(block, data, contexts)
        assert _markers(run.path)[block.index] == 0  # written, not yet counted
        commit = tail or stats.commit()
        assert commit is not None
        commit.apply(writer, run)
        assert _names(run.path) == names and _markers(run.path) == markers
    # What a reader merges equals the statistics of the stored hidden states.
    opened = open_statistics(run.path)
    hidden = xr.open_zarr(run.path).hidden.values.astype(np.float64)
    topics = _topic_index(run, writer, run.blocks)
    for k in range(2):
        _close(opened.pos_sum.values[k], hidden[topics == k].sum(axis=0))
    _close(opened.stat_ctx_sum.values, hidden[:, 1:7].sum(axis=1))
    assert opened.attrs["posctx_statistics"]["count"] == 10 * 6


class _Recorder:
    """A BlockWriter stand-in that records, at each mark, the partials on the store."""

    def __init__(self, path: str, fail: bool = False) -> None:
        self.path = path
        self.fail = fail
        self.events: list[tuple[list[int], list[str]]] = []

    def mark(self, blocks: Any) -> None:
        self.events.append(([b.index for b in blocks], _names(self.path)))
        if self.fail:
            raise Killed


def _sums(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "pos_sum": rng.normal(size=(2, 8, 3, 32)),
        "count": 6.0,
        "mean": rng.normal(size=(3, 32)),
        "m2": rng.normal(size=(3, 32, 32)),
    }


def test_a_commit_writes_its_partial_then_marks_then_deletes_the_old_version(
    run: BlockRun,
) -> None:
    b0, b1, _ = run.blocks
    write_partial(run.path, None, owner="w", seq=0, blocks=[b0], topics=run.topics, sums=_sums(0))
    recorder = _Recorder(run.path)
    Commit("w", 1, (b0, b1), _sums(1), (b1,), ("w.0",)).apply(recorder, run)  # type: ignore[arg-type]
    # At the marks the new version was complete and the old one still there; then it went.
    assert recorder.events == [([1], ["w.0", "w.1"])]
    assert _names(run.path) == ["w.1"]
    (partial,) = read_partials(run.path)[0]
    assert partial.blocks == ((0, 0, 4), (1, 4, 8)) and partial.topics == ("alpha", "beta")
    assert partial.count == 6.0


def test_a_kill_before_the_markers_is_rolled_forward_by_the_next_run(
    bert: LoadedModel, run: BlockRun
) -> None:
    writer = BlockWriter(run.path)
    b0, b1, b2 = run.blocks
    stats = WriterStatistics(bert, run, "w")
    for block in (b0, b1):
        data, contexts, _ = stats.compute(block, writer)
        writer.write_unmarked(block, data, contexts)
        commit = stats.commit()
        assert commit is not None
        if block is b0:
            commit.apply(writer, run)
            continue
        killed = _Recorder(run.path, fail=True)
        with pytest.raises(Killed):  # the partial is written, the markers are not
            commit.apply(killed, run)  # type: ignore[arg-type]
    assert killed.events == [([1], ["w.0", "w.1"])]
    assert _markers(run.path) == [1, 0, 0]
    with pytest.raises(StoreError, match=r"blocks 1 are counted but not marked"):
        open_statistics(run.path, complete_only=True)
    # A block marked but counted by no partial (its partial lost): computed again if ours.
    writer.mark([b2])
    blocks = list(run.blocks)
    done = settle_statistics(run.path, None, blocks, completed_blocks(run.path), [b0, b1])
    assert done.tolist() == [True, True, True]  # b2 is another process's: left as it is
    assert _markers(run.path) == [1, 1, 1] and _names(run.path) == ["w.1"]
    done = settle_statistics(run.path, None, blocks, completed_blocks(run.path), blocks)
    assert done.tolist() == [True, True, False] and _markers(run.path) == [1, 1, 0]
    # The next run computes the rest only; nothing is counted twice.
    data, contexts, tail = WriterStatistics(bert, run, "v").compute(b2, writer)
    writer.write_unmarked(b2, data, contexts)
    assert tail is not None
    tail.apply(writer, run)
    opened = open_statistics(run.path)
    hidden = xr.open_zarr(run.path).hidden.values.astype(np.float64)
    topics = _topic_index(run, writer, blocks)
    for k in range(2):
        _close(opened.pos_sum.values[k], hidden[topics == k].sum(axis=0))
    assert opened.attrs["posctx_statistics"]["count"] == 10 * 6


def test_a_block_of_stored_hidden_states_is_cut_to_the_sample(
    bert: LoadedModel, run: BlockRun
) -> None:
    """With hidden_contexts, compute returns the sampled contexts' states, sums for all."""
    assert run.statistics is not None
    sampled = dataclasses.replace(
        run, statistics=dataclasses.replace(run.statistics, hidden_contexts=6)
    )
    writer = BlockWriter(run.path)
    stats = WriterStatistics(bert, sampled, "w")
    data, contexts, _ = stats.compute(Block(1, 4, 8), writer)
    full = forward_hidden(bert, writer.token_ids(Block(1, 4, 8)))
    np.testing.assert_array_equal(data, full[:2])
    assert contexts["ctx_sum"].shape[0] == 4
    _close(contexts["ctx_sum"], full[:, 1:7].astype(np.float64).sum(axis=1))
