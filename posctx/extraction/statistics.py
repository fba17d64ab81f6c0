"""One writer's statistics during extraction: what it accumulates, and how it commits them.

A writer (an extraction process, a shard, a cluster task) computes its blocks with a
:class:`~posctx.model.statistics.DeviceStatistics` on the model's device. Each block's hidden
states and per-context statistics are written at once, unmarked; every so often the writer
commits: a new version of its partial (the position sums and moments of every block it has
counted), then the markers of the blocks it adds, then the deletion of its previous version
(:mod:`posctx.store.statistics` has the protocol and why a kill anywhere is safe).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from posctx.extraction.groups import Group, plan_groups
from posctx.extraction.plan import BlockRun
from posctx.store import Block, BlockWriter
from posctx.store.layout import StatisticsPlan
from posctx.store.partials import delete_partials, tail_owner, write_partial

if TYPE_CHECKING:  # pragma: no cover
    from posctx.model import LoadedModel
    from posctx.model.forward import DeviceBuffers, PendingStates
    from posctx.model.statistics import DeviceStatistics


@dataclass(frozen=True)
class Commit:
    """One version of a writer's partial, and the markers it makes true."""

    owner: str
    seq: int
    blocks: tuple[Block, ...]
    sums: dict[str, Any]
    mark: tuple[Block, ...]
    delete: tuple[str, ...] = ()

    def apply(self, writer: BlockWriter, run: BlockRun) -> None:
        """Partial first, then the markers, then the superseded version (in that order)."""
        write_partial(
            run.path,
            run.storage_options,
            owner=self.owner,
            seq=self.seq,
            blocks=self.blocks,
            topics=run.topics,
            sums=self.sums,
        )
        writer.mark(self.mark)
        delete_partials(run.path, run.storage_options, self.delete)


@dataclass
class WriterStatistics:
    """The statistics one writer accumulates over its blocks, and its next commit."""

    loaded: LoadedModel
    run: BlockRun
    owner: str
    counted: list[Block] = field(default_factory=list)
    unmarked: list[Block] = field(default_factory=list)
    seq: int = 0
    _sums: DeviceStatistics | None = None

    def _new_sums(self) -> DeviceStatistics:
        from posctx.model.statistics import DeviceStatistics

        plan = self.run.statistics
        assert plan is not None
        return DeviceStatistics(
            plan.edges,
            self.run.topics,
            len(self.loaded.layers),
            self.loaded.hidden_size,
            moments=plan.moments,
            device=self.loaded.config.device,
        )

    def launch(
        self,
        group: Group,
        writer: BlockWriter,
        out: Any = None,
        buffers: DeviceBuffers | None = None,
    ) -> LaunchedGroup:
        """Start ``group``'s forward passes, adding its blocks to write to the statistics.

        Every context of the group is computed (see :mod:`posctx.extraction.groups`); only
        the contexts of ``group.todo`` are counted. The store's short last block gets sums of
        its own and a commit of its own (the group's ``tail``).
        """
        from posctx.model.forward import launch_block

        plan = self.run.statistics
        assert plan is not None
        labels = writer.topics(group.span)
        topic_index = np.array([self.run.topics.index(str(t)) for t in labels], dtype=np.intp)
        tail = next((b for b in group.todo if self.run.is_tail(b)), None)
        counted = [b for b in group.todo if b != tail]
        if counted and self._sums is None:
            self._sums = self._new_sums()
        tail_sums = self._new_sums() if tail is not None else None
        routes = [(group.rows(b), tail_sums if b == tail else self._sums) for b in group.todo]

        def on_batch(stacked: Any, start: int, stop: int) -> None:
            for rows, sums in routes:
                lo, hi = max(start, rows.start), min(stop, rows.stop)
                if lo < hi:
                    assert sums is not None
                    sums.add(stacked[lo - start : hi - start], topic_index[lo:hi])

        pending = launch_block(
            self.loaded,
            writer.token_ids(group.span),
            self.run.storage_dtype,
            batch_size=self.run.batch_size,
            on_batch=on_batch,
            keep=kept_contexts(group, plan),
            out=out,
            buffers=buffers,
        )
        parts = self._sums.take_parts() if counted and self._sums is not None else []
        if tail_sums is not None:
            parts += tail_sums.take_parts()
        self.counted += counted
        self.unmarked += counted
        tail_commit = None
        if tail is not None:
            assert tail_sums is not None
            # Grows if the store is extended: its sums must be deletable on their own.
            tail_commit = Commit(tail_owner(tail), 0, (tail,), tail_sums.snapshot(), (tail,))
        order = (*counted, *((tail,) if tail is not None else ()))
        return LaunchedGroup(group, pending, _Contexts(order, parts, buffers), tail_commit)

    def compute(
        self, block: Block, writer: BlockWriter
    ) -> tuple[np.ndarray, dict[str, np.ndarray], Commit | None]:
        """One block's stored states and per-context statistics, and a tail's own commit,
        computed in its forward group and waited for (:meth:`launch` is the queued form)."""
        (group,) = plan_groups(self.run.all_blocks(), [block], self.run.per_group)
        launched = self.launch(group, writer)
        states = launched.pending.wait()
        assert launched.contexts is not None
        return states[group.rows(block)], launched.contexts.by_block()[block], launched.tail

    def partial_bytes(self) -> int:
        """Bytes a commit of this writer's partial writes: its position sums (and moments)."""
        plan = self.run.statistics
        assert plan is not None
        n_layers, n_dims = len(self.loaded.layers), self.loaded.hidden_size
        per_topic = plan.edges.length * n_layers * n_dims * 8
        moments = n_layers * n_dims * (n_dims + 1) * 8 if plan.moments else 0
        return len(self.run.topics) * per_topic + moments

    def commit(self) -> Commit | None:
        """The next version of the partial, if blocks were added since the last one."""
        if not self.unmarked or self._sums is None:
            return None
        previous = (f"{self.owner}.{self.seq - 1}",) if self.seq else ()
        out = Commit(
            self.owner,
            self.seq,
            tuple(self.counted),
            self._sums.snapshot(),
            tuple(self.unmarked),
            previous,
        )
        self.seq += 1
        self.unmarked = []
        return out


class _Contexts:
    """A launched group's per-context statistics, copied to the host in the background."""

    def __init__(self, order: tuple[Block, ...], parts: list[dict[str, Any]], buffers: Any) -> None:
        self._order = order
        self._parts: list[dict[str, Any]] = parts
        self._done: Any = None
        if buffers is not None:
            self._parts, self._done = buffers.parts_to_host(parts)

    def by_block(self) -> dict[Block, dict[str, np.ndarray]]:
        """Each counted block's per-context statistics (waits for their copy)."""
        from posctx.model.statistics import join_contexts

        if not self._order:
            return {}
        if self._done is not None:
            self._done.synchronize()
        joined = join_contexts(self._parts)
        out, offset = {}, 0
        for block in self._order:
            out[block] = {k: v[offset : offset + block.size] for k, v in joined.items()}
            offset += block.size
        return out


@dataclass
class LaunchedGroup:
    """A group whose forward passes are queued: its states, statistics and tail commit."""

    group: Group
    pending: PendingStates
    contexts: _Contexts | None = None
    tail: Commit | None = None


def kept_contexts(group: Group, plan: StatisticsPlan | None) -> int:
    """How many of ``group``'s first contexts keep their hidden states (all without a plan).

    The store keeps the hidden states of its first ``hidden_contexts`` contexts: a prefix of
    the store, so a prefix of every group.
    """
    if plan is None or plan.hidden_contexts is None:
        return group.size
    return max(0, min(group.size, plan.hidden_contexts - group.start))


def repair_blocks(loaded: LoadedModel, run: BlockRun) -> None:
    """Compute ``run.blocks`` again and write their hidden states and per-context statistics.

    For blocks that partials count already but whose hidden chunk files were lost: the same
    forward passes give the same values, so what was counted stays right; nothing is counted
    again and the markers stay set.
    """
    writer = BlockWriter(run.path, run.storage_options)
    throwaway = WriterStatistics(loaded, run, "repair")
    for block in run.blocks:
        data, contexts, _ = throwaway.compute(block, writer)
        writer.write_unmarked(block, data, contexts)


__all__ = ["Commit", "LaunchedGroup", "WriterStatistics", "kept_contexts", "repair_blocks"]
