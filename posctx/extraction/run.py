"""Running the planned blocks in this process: forward passes, with a writer thread storing
the previous block meanwhile, and a progress bar.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from posctx.extraction.plan import BlockRun
from posctx.extraction.statistics import Commit, WriterStatistics
from posctx.store import Block, BlockWriter
from posctx.store.partials import new_owner

if TYPE_CHECKING:  # pragma: no cover
    from posctx.model import LoadedModel


class _Writer:
    """A thread that writes finished blocks while the caller computes the next one.

    The queue holds at most one block, so memory stays at two blocks in flight whatever the
    corpus size, and the forward pass never waits on storage unless storage is the slower side.
    Each item is a block to write (marked at once, or, with statistics, unmarked with its
    per-context sums) and/or a commit of the writer's partial.
    """

    def __init__(
        self, writer: BlockWriter, run: BlockRun, on_written: Callable[[Block], None]
    ) -> None:
        self._writer = writer
        self._run = run
        self._on_written = on_written
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run_items, name="posctx-writer", daemon=True)
        self._thread.start()

    def _run_items(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain without writing once something went wrong
            try:
                self._write(item)
            except BaseException as exc:  # re-raised in the caller's thread
                self._error = exc

    def _write(self, item: _Item) -> None:
        block, data, contexts, commit = item
        if block is not None:
            assert data is not None
            if contexts is None:
                self._writer.write(block, data)
            else:
                self._writer.write_unmarked(block, data, contexts)
            self._on_written(block)
        if commit is not None:
            commit.apply(self._writer, self._run)

    def put(
        self,
        block: Block | None,
        data: np.ndarray | None,
        contexts: dict[str, np.ndarray] | None = None,
        commit: Commit | None = None,
    ) -> None:
        self.raise_if_failed()
        self._queue.put((block, data, contexts, commit))

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self.raise_if_failed()


_Item = tuple[Block | None, np.ndarray | None, dict[str, np.ndarray] | None, "Commit | None"]


def compute_block(loaded: LoadedModel, token_ids: np.ndarray, storage_dtype: str) -> np.ndarray:
    """Hidden states of one block, computed in batches of the configured size."""
    from posctx.model import forward_block

    return forward_block(loaded, token_ids, storage_dtype, batch_size=loaded.config.batch_size)


#: A writer commits its partial once it has written this many times the partial's size in
#: hidden states (at every block, an 8x ratio cost MiniLM runs 5% of their speed).
COMMIT_RATIO = 64


def run_blocks(loaded: LoadedModel, run: BlockRun) -> int:
    """Compute and write ``run.blocks`` in this process; returns the number of tokens written.

    A writer thread stores each block while the next one computes. With statistics, the
    writer commits its partial every ``run.flush_seconds`` and after the last block.
    """
    writer = BlockWriter(run.path, run.storage_options)
    bar = Progress(run.n_total, run.n_done, run.progress)
    background = _Writer(writer, run, lambda block: bar.add(block.size, block.size * run.length))
    stats = None if run.statistics is None else WriterStatistics(loaded, run, new_owner())
    last_commit, since_commit = time.monotonic(), 0
    try:
        for block in run.blocks:
            if stats is None:
                background.put(
                    block, compute_block(loaded, writer.token_ids(block), run.storage_dtype)
                )
                continue
            data, contexts, tail = stats.compute(block, writer)
            commit = tail
            since_commit += data.nbytes
            # Every flush_seconds, or once the hidden states written since the last commit
            # outweigh the partial a commit rewrites COMMIT_RATIO times over: rewriting it
            # then costs under 2% of the writes, and a failure loses little.
            due = time.monotonic() - last_commit >= run.flush_seconds
            if tail is None and (due or since_commit >= COMMIT_RATIO * stats.partial_bytes()):
                commit, last_commit, since_commit = stats.commit(), time.monotonic(), 0
            background.put(block, data, contexts, commit)
        if stats is not None:
            background.put(None, None, None, stats.commit())
    finally:
        background.close()
        bar.close()
    return bar.tokens


class Progress:
    """The extraction progress bar: contexts done, and this call's token rate."""

    def __init__(self, total: int | None, done: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=total,
            initial=done,
            unit="ctx",
            desc="extract",
            disable=not enabled,
            dynamic_ncols=True,
        )
        self._start = time.perf_counter()
        self.tokens = 0

    def add(self, contexts: int, tokens: int) -> None:
        self.tokens += tokens
        self._bar.update(contexts)
        rate = self.tokens / max(time.perf_counter() - self._start, 1e-9)
        self._bar.set_postfix(tok_s=f"{rate:,.0f}")

    def close(self) -> None:
        self._bar.close()


__all__ = [
    "compute_block",
    "run_blocks",
    "Progress",
]
