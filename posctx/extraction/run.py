"""Running the planned blocks in this process: forward groups queued one ahead, writer
threads storing finished blocks meanwhile, host buffers reused, and a progress bar.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from typing import TYPE_CHECKING, Any

import numpy as np

from posctx.config import AUTO
from posctx.extraction.groups import Group, plan_groups
from posctx.extraction.plan import BlockRun
from posctx.extraction.statistics import Commit, LaunchedGroup, WriterStatistics, kept_contexts
from posctx.store import Block, BlockWriter
from posctx.store.partials import new_owner

if TYPE_CHECKING:  # pragma: no cover
    from posctx.model import LoadedModel
    from posctx.model.forward import DeviceBuffers


class Writers:
    """Threads that write finished blocks while the caller computes the next ones.

    Writes of different blocks run at once (``threads`` of them), because one thread
    encoding and writing 64 MB chunks falls behind a GPU. A commit of statistics runs on a
    thread of its own, in order, after every write submitted before it: it marks blocks, and a
    marker must never precede its block's data. After a failure nothing more is written, and
    the error is raised in the caller's thread.
    """

    def __init__(
        self,
        writer: BlockWriter,
        run: BlockRun | None,
        on_written: Callable[[Block], None],
        threads: int = 1,
    ) -> None:
        self._writer = writer
        self._run = run
        self._on_written = on_written
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="posctx-writer")
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="posctx-commit")
        self._writes: list[Future[bool]] = []
        self._all: list[Future[bool]] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    def write(
        self, block: Block, data: np.ndarray, contexts: dict[str, np.ndarray] | None = None
    ) -> Future[bool]:
        """Write ``block`` (marked at once; unmarked with its per-context statistics)."""
        self.raise_if_failed()
        future = self._pool.submit(self._guarded, self._write, block, data, contexts)
        self._writes.append(future)
        self._all.append(future)
        return future

    def commit(self, commit: Commit) -> None:
        """Apply ``commit`` once every write submitted so far is done."""
        self.raise_if_failed()
        # Every write not known to have succeeded: one that failed just now must still stop
        # the commit from marking its block.
        before = [f for f in self._writes if not (f.done() and f.result())]
        self._writes = list(before)  # a copy: later writes must not join this commit
        self._all.append(
            self._committer.submit(self._guarded, self._commit, commit, before, commit=True)
        )

    def _write(
        self, block: Block, data: np.ndarray, contexts: dict[str, np.ndarray] | None
    ) -> None:
        if contexts is None:
            self._writer.write(block, data)
        else:
            self._writer.write_unmarked(block, data, contexts)
        self._on_written(block)

    def _commit(self, commit: Commit, before: Sequence[Future[bool]]) -> None:
        # Applied when the writes before it succeeded, even if a later one has failed since:
        # it counts and marks only blocks that are written, so it keeps finished work.
        if all(f.result() for f in before):
            assert self._run is not None
            commit.apply(self._writer, self._run)

    def _guarded(self, fn: Callable[..., None], *args: Any, commit: bool = False) -> bool:
        if self._error is not None and not commit:
            return False  # something failed: write nothing more
        try:
            fn(*args)
        except BaseException as exc:  # re-raised in the caller's thread
            with self._lock:
                if self._error is None:
                    self._error = exc
            return False
        return True

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Wait for every write and commit, then raise the first failure, if any."""
        wait_all(self._all)
        self._pool.shutdown()
        self._committer.shutdown()
        self.raise_if_failed()


class HostSlots:
    """Host buffers for the states of a group, allocated once per run and reused.

    A slot is taken for each launched group and given back when the group's blocks are
    written, so memory stays at ``count`` groups whatever the corpus size (pinned memory
    on a GPU, which is slow to allocate).
    """

    def __init__(self, make: Callable[[], Any], count: int) -> None:
        self._make = make
        self._free: queue.Queue[Any] = queue.Queue()
        self._made = 0
        self._count = count

    def take(self) -> Any:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            if self._made < self._count:
                self._made += 1
                return self._make()
            return self._free.get()

    def give_back_after(self, slot: Any, futures: Sequence[Future[Any]]) -> None:
        """Give ``slot`` back once ``futures`` are done (at once without any)."""
        left = [len(futures)]
        lock = threading.Lock()

        def one_done(_: Future[Any]) -> None:
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    self._free.put(slot)

        if not futures:
            self._free.put(slot)
        for future in futures:
            future.add_done_callback(one_done)


def compute_block(loaded: LoadedModel, token_ids: np.ndarray, storage_dtype: str) -> np.ndarray:
    """Hidden states of one block, computed in batches of the configured size (with
    ``auto``, what :func:`~posctx.model.memory.auto_batch_size` chooses)."""
    from posctx.model import forward_block
    from posctx.model.memory import auto_batch_size

    batch = loaded.config.batch_size
    if batch == AUTO:
        batch = auto_batch_size(loaded, token_ids.shape[1], storage_dtype, statistics=False)
    return forward_block(loaded, token_ids, storage_dtype, batch_size=int(batch))


#: A writer commits its partial once it has written this many times the partial's size in
#: hidden states (at every block, an 8x ratio cost MiniLM runs 5% of their speed).
COMMIT_RATIO = 64


def default_writer_threads() -> int:
    """Writer threads when the caller does not choose: 4, or fewer on a small machine."""
    import os

    return max(1, min(4, os.cpu_count() or 1))


def run_blocks(
    loaded: LoadedModel, run: BlockRun, owner: str | None = None, writer_threads: int = 1
) -> int:
    """Compute and write ``run.blocks`` in this process; returns the number of tokens written.

    The blocks are computed in their forward groups (:mod:`posctx.extraction.groups`), the
    next group queued on the device before the previous one's states are waited for; writer
    threads store finished blocks meanwhile. With statistics, the writer (named ``owner``,
    default a new name) commits its partial every ``run.flush_seconds`` and after the last
    block.
    """
    from posctx.model.forward import DeviceBuffers, host_buffer

    writer = BlockWriter(run.path, run.storage_options)
    bar = Progress(run.n_total, run.n_done, run.progress)
    writes = Writers(
        writer, run, lambda block: bar.add(block.size, block.size * run.length), writer_threads
    )
    groups = plan_groups(run.all_blocks(), run.blocks, run.per_group)
    largest = max((kept_contexts(g, run.statistics) for g in groups), default=0)
    slots = HostSlots(
        lambda: host_buffer(loaded, largest, run.length, run.storage_dtype), writer_threads + 2
    )
    buffers = DeviceBuffers(loaded, run.storage_dtype)
    stats = None if run.statistics is None else WriterStatistics(loaded, run, owner or new_owner())
    last_commit, since_commit = time.monotonic(), 0
    previous: tuple[LaunchedGroup, Any, Commit | None] | None = None
    try:
        for group in groups:
            slot = slots.take()
            launched = _launch(loaded, run, group, writer, stats, slot, buffers)
            commit = None
            if stats is not None:
                since_commit += _hidden_bytes(loaded, run, group)
                # Every flush_seconds, or once the hidden states written since the last commit
                # outweigh the partial a commit rewrites COMMIT_RATIO times over: rewriting it
                # then costs under 2% of the writes, and a failure loses little.
                due = time.monotonic() - last_commit >= run.flush_seconds
                if due or since_commit >= COMMIT_RATIO * stats.partial_bytes():
                    commit = stats.commit()
                    last_commit, since_commit = time.monotonic(), 0
            if previous is not None:
                _finish(writes, slots, *previous)
            previous = (launched, slot, commit)
        if previous is not None:
            _finish(writes, slots, *previous)
        if stats is not None:
            final = stats.commit()
            if final is not None:
                writes.commit(final)
    finally:
        writes.close()
        bar.close()
    return bar.tokens


def _hidden_bytes(loaded: LoadedModel, run: BlockRun, group: Group) -> int:
    itemsize = 2 if run.storage_dtype == "float16" else 4
    per_context = run.length * len(loaded.layers) * loaded.hidden_size * itemsize
    return sum(b.size for b in group.todo) * per_context


def _launch(
    loaded: LoadedModel,
    run: BlockRun,
    group: Group,
    writer: BlockWriter,
    stats: WriterStatistics | None,
    slot: Any,
    buffers: DeviceBuffers,
) -> LaunchedGroup:
    from posctx.model.forward import launch_block

    if stats is not None:
        return stats.launch(group, writer, slot, buffers)
    pending = launch_block(
        loaded,
        writer.token_ids(group.span),
        run.storage_dtype,
        batch_size=run.batch_size,
        keep=kept_contexts(group, None),
        out=slot,
        buffers=buffers,
    )
    return LaunchedGroup(group, pending)


def _finish(
    writes: Writers, slots: HostSlots, launched: LaunchedGroup, slot: Any, commit: Commit | None
) -> None:
    """Hand a launched group's blocks to the writers once its states are on the host."""
    try:
        states = launched.pending.wait()
    except BaseException:
        slots.give_back_after(slot, [])
        raise
    group = launched.group
    contexts = None if launched.contexts is None else launched.contexts.by_block()
    futures = [
        writes.write(
            block,
            states[group.rows(block)],
            None if contexts is None else contexts[block],
        )
        for block in group.todo
    ]
    slots.give_back_after(slot, futures)
    if launched.tail is not None:
        writes.commit(launched.tail)
    if commit is not None:
        writes.commit(commit)


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
        self._lock = threading.Lock()
        self.tokens = 0

    def add(self, contexts: int, tokens: int) -> None:
        with self._lock:  # writer threads report at once
            self.tokens += tokens
            self._bar.update(contexts)
            rate = self.tokens / max(time.perf_counter() - self._start, 1e-9)
            self._bar.set_postfix(tok_s=f"{rate:,.0f}")

    def close(self) -> None:
        self._bar.close()


__all__ = [
    "COMMIT_RATIO",
    "HostSlots",
    "Progress",
    "Writers",
    "compute_block",
    "default_writer_threads",
    "run_blocks",
]
