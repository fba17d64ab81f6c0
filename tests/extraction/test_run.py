"""posctx.extraction.run: blocks computed here while a writer thread stores the previous one."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import posctx.model
from posctx.config import ModelConfig
from posctx.extraction.api import extract
from posctx.extraction.plan import BlockRun
from posctx.extraction.run import HostSlots, Progress, Writers, compute_block, run_blocks
from posctx.model import LoadedModel, forward_hidden, load_model
from posctx.store import Block, plan_blocks
from tests.stores import tiny_config, write_corpus


class _Recorder:
    """A BlockWriter stand-in that records writes and fails on the block given."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.written: list[int] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on

    def write(self, block: Block, data: np.ndarray) -> None:
        self.threads.add(threading.current_thread().name)
        if block.index == self.fail_on:
            raise OSError(28, "No space left on device")
        self.written.append(block.index)


def _blocks(n: int) -> list[Block]:
    return plan_blocks(4 * n, 4)


def test_one_writer_thread_writes_in_order_and_reports_each_block() -> None:
    recorder, reported = _Recorder(), []
    writer = Writers(recorder, None, lambda block: reported.append(block.index))  # type: ignore[arg-type]
    for block in _blocks(5):
        writer.write(block, np.zeros(1))
    writer.close()
    assert recorder.written == reported == [0, 1, 2, 3, 4]
    assert all(name.startswith("posctx-writer") for name in recorder.threads)  # never the caller


def test_a_write_failure_stops_writing_and_is_raised_in_the_caller() -> None:
    recorder, reported = _Recorder(fail_on=1), []
    writer = Writers(recorder, None, lambda block: reported.append(block.index))  # type: ignore[arg-type]
    with pytest.raises(OSError, match="No space left on device"):
        for block in _blocks(5):
            writer.write(block, np.zeros(1))
            time.sleep(0.05)  # the failure is seen before the next block is handed over
        writer.close()
    with pytest.raises(OSError, match="No space left on device"):
        writer.close()  # closing again: the error stays
    assert recorder.written == reported == [0]  # nothing after the failure is written


class _SlowRecorder(_Recorder):
    def write(self, block: Block, data: np.ndarray) -> None:
        time.sleep(0.02 * (5 - block.index))  # the first blocks finish last
        super().write(block, data)


class _Commit:
    """A commit that records which blocks were written when it was applied."""

    def __init__(self, recorder: _Recorder) -> None:
        self.recorder = recorder
        self.seen: list[int] | None = None

    def apply(self, writer: Any, run: Any) -> None:
        self.seen = sorted(self.recorder.written)


def test_writes_run_at_once_and_a_commit_waits_for_every_write_before_it() -> None:
    recorder = _SlowRecorder()
    writer = Writers(recorder, object(), lambda block: None, threads=5)  # type: ignore[arg-type]
    commit = _Commit(recorder)
    for block in _blocks(5):
        writer.write(block, np.zeros(1))
    writer.commit(commit)  # type: ignore[arg-type]
    writer.close()
    assert commit.seen == [0, 1, 2, 3, 4]  # never a marker before its block's data
    assert len(recorder.threads) > 1 and recorder.written[0] != 0  # in parallel, out of order


def test_host_slots_are_made_once_and_reused_after_their_writes() -> None:
    made: list[int] = []
    slots = HostSlots(lambda: made.append(1) or len(made), count=2)
    first, second = slots.take(), slots.take()
    assert (first, second) == (1, 2)
    pending: Future[None] = Future()
    slots.give_back_after(first, [pending])
    slots.give_back_after(second, [])
    assert slots.take() == 2  # given back at once: no writes
    pending.set_result(None)
    assert slots.take() == 1 and len(made) == 2  # reused, never a third allocation


def test_progress_counts_contexts_and_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    bar = Progress(total=12, done=4, enabled=True)
    bar.add(4, 4 * 8)
    bar.add(2, 2 * 8)
    assert bar.tokens == 48 and bar._bar.n == 10 and bar._bar.total == 12
    bar.close()
    err = capsys.readouterr().err
    assert "extract" in err and "10/12" in err and "tok_s=" in err
    quiet = Progress(total=12, done=0, enabled=False)
    quiet.add(1, 8)
    quiet.close()
    assert quiet.tokens == 8 and capsys.readouterr().err == ""


@pytest.fixture(scope="module")
def gpt2(tiny_models: dict[str, Path]) -> LoadedModel:
    return load_model(ModelConfig(name=str(tiny_models["gpt2"]), batch_size=3))


def test_compute_block_uses_the_configured_batch_size(
    gpt2: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, ...]] = []
    real = posctx.model.forward_block

    def spy(loaded: LoadedModel, ids: np.ndarray, dtype: str, *, batch_size: int) -> np.ndarray:
        calls.append((dtype, batch_size, ids.shape))
        return real(loaded, ids, dtype, batch_size=batch_size)

    monkeypatch.setattr(posctx.model, "forward_block", spy)
    ids = np.random.default_rng(0).integers(3, 800, size=(5, 8))
    states = compute_block(gpt2, ids, "float16")
    assert calls == [("float16", 3, (5, 8))]
    assert states.shape == (5, 8, 3, 32) and states.dtype == np.float16
    np.testing.assert_array_equal(states, forward_hidden(gpt2, ids, "float16"))


def test_run_blocks_writes_the_blocks_given_and_counts_their_tokens(
    gpt2: LoadedModel, tmp_path: Path
) -> None:
    path = str(tmp_path / "h.zarr")
    config = tiny_config(gpt2.path, write_corpus(tmp_path / "corpus"), contexts=10)
    extract(config, path, progress=False, loaded=gpt2, plan_only=True)
    blocks = plan_blocks(10, 4)
    run = BlockRun(
        path,
        (blocks[0], blocks[2]),
        storage_dtype="float32",
        length=8,
        progress=False,
        n_contexts=10,
        chunk_contexts=4,
        batch_size=3,
    )
    tokens = run_blocks(gpt2, run)
    assert tokens == (4 + 2) * 8
    ds = xr.open_zarr(path)
    assert ds.block_complete.values.tolist() == [1, 0, 1]
    ids = ds.token_id.values
    written = np.r_[0:4, 8:10]
    np.testing.assert_array_equal(ds.hidden.values[written], forward_hidden(gpt2, ids[written]))
    assert np.isnan(ds.hidden.values[4:8]).all()
