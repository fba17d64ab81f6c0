"""posctx.store.partials (written and read, coverage, roll-forward) and open_statistics."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr

import posctx.testing
from posctx.errors import IncompleteStoreError, StoreError
from posctx.store.layout import Block, plan_blocks
from posctx.store.partials import (
    Partial,
    _dead_here,
    _host,
    check_coverage,
    coverage,
    delete_partials,
    new_owner,
    partial_arrays,
    read_partials,
    roll_forward,
    select_partials,
    tail_owner,
    write_partial,
)
from posctx.store.statistics import open_statistics
from posctx.sums import merge_moments
from posctx.types import BLOCK_COMPLETE, COMPLETE_ONLY_ATTR, STAT_PARTIALS, STATISTICS_ATTR

#: The planted store: 10 contexts of 5 tokens, blocks of 4 (4, 4, 2), topics alternating.
BLOCKS = plan_blocks(10, 4)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("planted") / "h.zarr"
    posctx.testing.write_large_planted_store(
        str(path),
        n_contexts=10,
        length=5,
        n_layers=2,
        n_dims=3,
        chunk_contexts=4,
        n_topics=2,
        statistics=True,
        moments=True,
    )
    return path


@pytest.fixture
def store(planted: Path, tmp_path: Path) -> str:
    """A copy of the planted store to change: one partial ``planted.0`` counting all blocks."""
    copy = tmp_path / "h.zarr"
    shutil.copytree(planted, copy)
    return str(copy)


def _group(path: str) -> Any:
    return zarr.open_group(path, mode="r+", use_consolidated=False)


def _set_markers(path: str, markers: list[int]) -> None:
    _group(path)[BLOCK_COMPLETE][:] = np.array(markers, dtype=np.uint8)


def _markers(path: str) -> list[int]:
    return _group(path)[BLOCK_COMPLETE][:].tolist()


def _sums(seed: int, n_topics: int = 2, count: float | None = None) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"pos_sum": rng.normal(size=(n_topics, 5, 2, 3))}
    if count is not None:
        out.update(count=count, mean=rng.normal(size=(2, 3)), m2=rng.normal(size=(2, 3, 3)))
    return out


def _dead_pid() -> int:
    """The id of a process of this host that has ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _bare_version(path: str, name: str) -> Path:
    """What a kill leaves of a version's group: a folder with zarr's temporary file only."""
    folder = Path(path) / STAT_PARTIALS / name
    folder.mkdir()
    (folder / "zarr.json.0123456789abcdef.partial").write_text('{"zarr_fo')
    return folder


def _cut_short(path: str, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Write version ``name`` as a kill before its attrs would leave it: arrays, no attrs."""

    class Killed(Exception):
        pass

    def kill(self: Any, *args: Any, **kwargs: Any) -> None:
        raise Killed

    owner, _, seq = name.rpartition(".")
    with monkeypatch.context() as patch:
        patch.setattr(zarr.Group, "update_attributes", kill)
        with pytest.raises(Killed):
            write_partial(
                path, None, owner=owner, seq=int(seq), blocks=[], topics=["t"], sums=_sums(0)
            )


# ----------------------------------------------------------------- writing and reading


def test_a_written_partial_reads_back_with_its_blocks_topics_and_arrays(tmp_path: Path) -> None:
    path = str(tmp_path / "g.zarr")
    zarr.open_group(path, mode="w")
    sums = _sums(1, count=12.0)
    name = write_partial(
        path,
        None,
        owner="w",
        seq=3,
        blocks=BLOCKS[:2],
        topics=("topic1", "topic0"),
        sums=sums,
    )
    assert name == "w.3"
    write_partial(path, None, owner="v", seq=0, blocks=[BLOCKS[2]], topics=["t"], sums=_sums(2))
    complete, broken = read_partials(path)
    assert broken == []
    assert complete == [
        Partial("v.0", "v", 0, ((2, 8, 10),), ("t",), None),
        Partial("w.3", "w", 3, ((0, 0, 4), (1, 4, 8)), ("topic1", "topic0"), 12.0),
    ]
    arrays = partial_arrays(path, None, complete[1])
    assert sorted(arrays) == ["m2", "mean", "pos_sum"]
    for key in ("pos_sum", "mean", "m2"):
        assert arrays[key].dtype == np.float64
        np.testing.assert_array_equal(arrays[key].compute(), sums[key])
    assert sorted(partial_arrays(path, None, complete[0])) == ["pos_sum"]  # no moments
    dims = zarr.open_group(path, mode="r")[STAT_PARTIALS]["w.3"]["m2"].metadata.dimension_names
    assert dims == ("layer", "dim", "dim2")


def test_a_partials_group_made_by_a_concurrent_writer_meanwhile_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shards race to create ``stat_partials``: zarr's require_group looks, then creates, and
    raises if another process created the group in between (seen with three shards)."""
    from zarr.errors import ContainsGroupError

    path = str(tmp_path / "g.zarr")
    zarr.open_group(path, mode="w")

    def racing(self: zarr.Group, name: str, **kwargs: Any) -> Any:
        zarr.open_group(path, mode="a").create_group(name)  # the other shard, in between
        raise ContainsGroupError(f"A group exists in store at path {name!r}.")

    monkeypatch.setattr(zarr.Group, "require_group", racing)
    write_partial(path, None, owner="w", seq=0, blocks=[BLOCKS[0]], topics=["t"], sums=_sums(1))
    assert [p.name for p in read_partials(path)[0]] == ["w.0"]


def test_a_store_without_partials_reads_none(tmp_path: Path) -> None:
    path = str(tmp_path / "g.zarr")
    zarr.open_group(path, mode="w")
    assert read_partials(path) == ([], [])
    delete_partials(path, None, [])  # nothing to delete: the group is not even made
    assert STAT_PARTIALS not in zarr.open_group(path, mode="r")


def test_a_version_whose_attrs_were_not_written_is_broken(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cut_short(store, "w.1", monkeypatch)
    complete, broken = read_partials(store)
    assert [p.name for p in complete] == ["planted.0"] and broken == ["w.1"]
    # Its arrays are there: only the attrs, written last, make a version count.
    assert "pos_sum" in _group(store)[STAT_PARTIALS]["w.1"]
    # Written again from the start, it is complete.
    write_partial(store, None, owner="w", seq=1, blocks=[BLOCKS[0]], topics=["t"], sums=_sums(5))
    complete, broken = read_partials(store)
    assert [p.name for p in complete] == ["planted.0", "w.1"] and broken == []
    np.testing.assert_array_equal(
        partial_arrays(store, None, complete[1])["pos_sum"].compute(), _sums(5)["pos_sum"]
    )


def test_a_bare_folder_left_by_a_kill_is_broken_and_deleted(store: str) -> None:
    folder = _bare_version(store, "w.4")
    complete, broken = read_partials(store)
    assert [p.name for p in complete] == ["planted.0"] and broken == ["w.4"]
    delete_partials(store, None, ["w.4"])
    assert not folder.exists()
    assert read_partials(store) == (complete, [])


def test_select_partials_counts_each_writers_newest_version() -> None:
    def p(owner: str, seq: int) -> Partial:
        return Partial(f"{owner}.{seq}", owner, seq, (), ("t",), None)

    partials = [p("b", 2), p("a", 1), p("b", 10), p("a", 0), p("tail-2-8-10", 0), p("b", 9)]
    assert [x.name for x in select_partials(partials)] == ["a.1", "b.10", "tail-2-8-10.0"]
    assert select_partials([]) == []


def test_coverage_counts_blocks_listed_with_their_present_bounds() -> None:
    a = Partial("a.0", "a", 0, ((0, 0, 4), (2, 8, 9)), ("t",), None)  # block 2 has grown since
    b = Partial("b.0", "b", 0, ((0, 0, 4), (1, 4, 8), (5, 20, 24)), ("t",), None)  # 5: not here
    assert coverage([a, b], BLOCKS).tolist() == [2, 1, 0]
    assert coverage([a], plan_blocks(9, 4)).tolist() == [1, 0, 1]  # before the growth
    assert coverage([], BLOCKS).tolist() == [0, 0, 0]


# ----------------------------------------------------------------------------- owners


def test_owners_name_host_process_and_a_random_suffix() -> None:
    owner = new_owner()
    prefix, host, pid, suffix = owner.rsplit("-", 3)
    assert (prefix, host, pid) == ("run", _host(), str(os.getpid()))
    assert len(suffix) == 8 and int(suffix, 16) >= 0
    assert new_owner() != owner
    assert new_owner("task").startswith(f"task-{_host()}-{os.getpid()}-")
    assert _host().isalnum()


def test_dead_here_only_for_tails_and_ended_processes_of_this_host() -> None:
    dead = _dead_pid()
    assert _dead_here("tail-2-8-10") is True
    assert _dead_here(f"run-{_host()}-{dead}-0123abcd") is True
    assert _dead_here(f"my-task-{_host()}-{dead}-0123abcd") is True  # a prefix with a hyphen
    assert _dead_here(new_owner()) is False  # this process: alive
    assert _dead_here(new_owner("task")) is False
    assert _dead_here(f"run-{_host()}x-{dead}-0123abcd") is False  # another host: may be alive
    assert _dead_here(f"run-{_host()}-pid-0123abcd") is False  # not a process id
    assert _dead_here("planted") is False and _dead_here("a-b") is False


def test_a_tail_owner_names_its_block_and_size() -> None:
    assert tail_owner(Block(2, 8, 10)) == "tail-2-8-10"


# ----------------------------------------------------------------------- roll_forward


def test_roll_forward_marks_counted_blocks_and_clears_stale_partials(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, dead = _host(), _dead_pid()
    live = f"run-{host}-{os.getpid()}-0123abcd"  # this process: still writing
    elsewhere = "run-otherhost-12-0123abcd"  # another host's: may still be writing
    gone = f"run-{host}-{dead}-0123abcd"
    blocks01 = BLOCKS[:2]
    # planted.1 supersedes planted.0 and counts blocks 0 and 1; a tail counts block 2.
    write_partial(store, None, owner="planted", seq=1, blocks=blocks01, topics=["t"], sums=_sums(1))
    write_partial(
        store, None, owner="tail-2-8-10", seq=0, blocks=[BLOCKS[2]], topics=["t"], sums=_sums(2)
    )
    # The tail of a block since grown; a second writer counting block 0 again.
    write_partial(
        store, None, owner="tail-2-8-9", seq=0, blocks=[Block(2, 8, 9)], topics=["t"], sums=_sums(3)
    )
    write_partial(store, None, owner="x", seq=0, blocks=[BLOCKS[0]], topics=["t"], sums=_sums(4))
    _cut_short(store, f"{live}.0", monkeypatch)
    _cut_short(store, f"{elsewhere}.0", monkeypatch)
    _bare_version(store, f"{gone}.3")
    _bare_version(store, "tail-2-8-10.1")
    _set_markers(store, [0, 0, 1])
    before = np.array([False, False, True])
    done = roll_forward(store, None, BLOCKS, before)
    # Block 1 is counted once: marked. Block 0 is counted twice: left for check_coverage.
    assert done.tolist() == [False, True, True] and before.tolist() == [False, False, True]
    assert _markers(store) == [0, 1, 1]
    complete, broken = read_partials(store)
    assert [p.name for p in complete] == ["planted.1", "tail-2-8-10.0", "x.0"]
    assert broken == sorted([f"{live}.0", f"{elsewhere}.0"])


def test_roll_forward_of_an_agreeing_store_changes_nothing(store: str) -> None:
    done = roll_forward(store, None, BLOCKS, np.ones(3, bool))
    assert done.tolist() == [True, True, True] and _markers(store) == [1, 1, 1]
    assert [p.name for p in read_partials(store)[0]] == ["planted.0"]


# --------------------------------------------------------------------- check_coverage


def _message(path: str, problems: str) -> str:
    return (
        f"{path}: the statistics disagree with the blocks' markers: {problems}: re-run the "
        f"same `posctx extract` command to repair them (`posctx validate {path}` shows the "
        "details)"
    )


@pytest.mark.parametrize(
    ("done", "counts", "problems"),
    [
        ([1, 1, 0], [1, 0, 0], "blocks 1 are marked written but no partial counts them"),
        ([1, 1, 1], [1, 2, 3], "blocks 1, 2 are counted by more than one partial"),
        (
            [1, 0, 0],
            [1, 1, 0],
            "blocks 1 are counted but not marked (an extraction is running, or was killed "
            "between the two)",
        ),
        (
            [1, 1, 0],
            [0, 2, 1],
            "blocks 0 are marked written but no partial counts them; blocks 1 are counted by "
            "more than one partial; blocks 2 are counted but not marked (an extraction is "
            "running, or was killed between the two)",
        ),
    ],
)
def test_check_coverage_names_the_blocks_that_disagree(
    done: list[int], counts: list[int], problems: str
) -> None:
    with pytest.raises(StoreError) as info:
        check_coverage("s.zarr", BLOCKS, np.array(done, bool), np.array(counts))
    assert str(info.value) == _message("s.zarr", problems)


def test_check_coverage_lets_counted_unmarked_blocks_pass_on_request() -> None:
    unmarked = np.array([1, 0, 0], bool)
    check_coverage("s.zarr", BLOCKS, unmarked, np.array([1, 1, 0]), unmarked_counted=False)
    check_coverage("s.zarr", BLOCKS, np.array([1, 1, 0], bool), np.array([1, 1, 0]))
    with pytest.raises(StoreError, match="blocks 0 are marked written but no partial"):
        check_coverage("s.zarr", BLOCKS, unmarked, np.array([0, 1, 0]), unmarked_counted=False)


def test_check_coverage_shows_the_first_eight_blocks_and_the_number() -> None:
    blocks = plan_blocks(40, 4)
    with pytest.raises(StoreError) as info:
        check_coverage("s.zarr", blocks, np.ones(10, bool), np.zeros(10, int))
    assert "blocks 0, 1, 2, 3, 4, 5, 6, 7, ... (10 in all) are marked written" in str(info.value)


# --------------------------------------------------------------------- open_statistics


def test_open_statistics_of_a_complete_store_equals_its_hidden_states(planted: Path) -> None:
    stats = open_statistics(str(planted))
    ds = xr.open_zarr(planted)
    h = ds.hidden.values.astype(np.float64)  # (10, 5, 2, 3), position 0 left out
    topic = np.array([str(t) for t in ds.topic.values])
    assert stats.stat_ctx_sum.dims == ("context", "layer", "dim")
    assert stats.stat_ctx_sumsq.dims == ("context", "layer")
    assert stats.stat_edge.dims == ("context", "edge", "layer", "dim")
    assert stats.pos_sum.dims == ("stat_topic", "position", "layer", "dim")
    assert stats["m2"].dims == ("layer", "dim", "dim2") and stats["mean"].dims == ("layer", "dim")
    assert stats.stat_topic.values.tolist() == ["topic0", "topic1"]
    assert "hidden" not in stats and BLOCK_COMPLETE not in stats
    np.testing.assert_allclose(stats.stat_ctx_sum.values, h[:, 1:].sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(
        stats.stat_ctx_sumsq.values, (h[:, 1:] ** 2).sum(axis=(1, 3)), rtol=1e-12
    )
    np.testing.assert_array_equal(stats.stat_edge.values, ds.hidden.values[:, :1])
    for k, name in enumerate(("topic0", "topic1")):
        np.testing.assert_allclose(
            stats.pos_sum.values[k], h[topic == name].sum(axis=0), rtol=1e-12, atol=1e-12
        )
    cells = h[:, 1:].reshape(-1, 2, 3)
    mean = cells.mean(axis=0)
    m2 = np.einsum("nld,nle->lde", cells - mean, cells - mean)
    np.testing.assert_allclose(stats["mean"].values, mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats["m2"].values, m2, rtol=1e-6, atol=1e-6 * np.abs(m2).max())
    assert stats.attrs[STATISTICS_ATTR] == {
        "lead": 1,
        "trail": 0,
        "length": 5,
        "moments": True,
        "hidden_contexts": None,
        "topics": ["topic0", "topic1"],
        "count": 40.0,
    }


def test_an_interrupted_store_is_refused_unless_complete_only(store: str) -> None:
    # Blocks 0 and 2 written and counted; block 1 never written.
    (planted,) = read_partials(store)[0]
    arrays = {k: v.compute() for k, v in partial_arrays(store, None, planted).items()}
    block1 = xr.open_zarr(store).hidden.values[4:8].astype(np.float64)
    topics = np.arange(4, 8) % 2
    for k in (0, 1):
        arrays["pos_sum"][k] -= block1[topics == k].sum(axis=0)
    delete_partials(store, None, ["planted.0"])
    write_partial(
        store,
        None,
        owner="w",
        seq=0,
        blocks=[BLOCKS[0], BLOCKS[2]],
        topics=["topic0", "topic1"],
        sums={
            "pos_sum": arrays["pos_sum"],
            "count": 24.0,
            "mean": arrays["mean"],
            "m2": arrays["m2"],
        },
    )
    _set_markers(store, [1, 0, 1])
    with pytest.raises(IncompleteStoreError) as info:
        open_statistics(store)
    assert str(info.value) == (
        f"{store}: 1 of 3 blocks are not written yet (an interrupted extraction): re-run the "
        "same `posctx extract` command to finish it, or use only the finished contexts "
        "(complete_only=True; `posctx decompose --complete-only`)"
    )
    stats = open_statistics(store, complete_only=True)
    assert stats.context.values.tolist() == [0, 1, 2, 3, 8, 9]
    assert stats.attrs[COMPLETE_ONLY_ATTR] == {
        "blocks_used": 2,
        "blocks_total": 3,
        "contexts_total": 10,
    }
    assert stats.attrs[STATISTICS_ATTR]["count"] == 24.0
    np.testing.assert_array_equal(stats.pos_sum.values, arrays["pos_sum"])


def test_complete_only_refuses_blocks_counted_but_not_marked(store: str) -> None:
    _set_markers(store, [1, 0, 1])  # killed between its partial and its markers
    with pytest.raises(StoreError) as info:
        open_statistics(store, complete_only=True)
    assert str(info.value) == _message(
        store,
        "blocks 1 are counted but not marked (an extraction is running, or was killed between "
        "the two)",
    )
    with pytest.raises(IncompleteStoreError, match="1 of 3 blocks are not written yet"):
        open_statistics(store)


def test_a_store_with_no_counted_block_yet_is_refused(store: str) -> None:
    delete_partials(store, None, ["planted.0"])
    _set_markers(store, [0, 0, 0])
    with pytest.raises(StoreError) as info:
        open_statistics(store, complete_only=True)
    assert str(info.value) == (
        f"{store}: no block's statistics are written yet: finish the extraction"
    )


def test_older_partials_lacking_a_topic_count_zeros_for_it(store: str) -> None:
    """After an extension added a topic, the older partials have no row for it."""
    delete_partials(store, None, ["planted.0"])
    old, new = _sums(7, n_topics=1, count=32.0), _sums(8, n_topics=2, count=8.0)
    write_partial(store, None, owner="a", seq=0, blocks=BLOCKS[:2], topics=["topic1"], sums=old)
    # The newer partial lists its topics in another order: rows are matched by name.
    write_partial(
        store, None, owner="b", seq=0, blocks=[BLOCKS[2]], topics=["topic1", "topic0"], sums=new
    )
    stats = open_statistics(store)
    np.testing.assert_array_equal(stats.pos_sum.values[0], new["pos_sum"][1])
    np.testing.assert_array_equal(stats.pos_sum.values[1], old["pos_sum"][0] + new["pos_sum"][0])
    count, mean, m2 = merge_moments(32.0, old["mean"], old["m2"], 8.0, new["mean"], new["m2"])
    assert stats.attrs[STATISTICS_ATTR]["count"] == count == 40.0
    np.testing.assert_allclose(stats["mean"].values, mean, rtol=1e-15)
    np.testing.assert_allclose(stats["m2"].values, m2, rtol=1e-15)


def test_open_statistics_refuses_stores_without_statistics(tmp_path: Path) -> None:
    path = str(tmp_path / "plain.zarr")
    posctx.testing.write_large_planted_store(
        path, n_contexts=4, length=3, n_layers=1, n_dims=2, chunk_contexts=2
    )
    with pytest.raises(StoreError) as info:
        open_statistics(path)
    assert str(info.value) == (
        f"{path} keeps no statistics (made before posctx 0.2, or with --no-statistics): "
        "decompose it from its hidden states (posctx.decompose), or extract it again"
    )
    missing = str(tmp_path / "missing.zarr")
    with pytest.raises(StoreError) as info:
        open_statistics(missing)
    assert str(info.value) == (
        f"no posctx store at {missing}: run `posctx extract ... --out {missing}` first"
    )
