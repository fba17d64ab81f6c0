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

from posctx.extraction.plan import BlockRun
from posctx.store import Block, BlockWriter
from posctx.store.partials import delete_partials, tail_owner, write_partial

if TYPE_CHECKING:  # pragma: no cover
    from posctx.model import LoadedModel
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

    def compute(
        self, block: Block, writer: BlockWriter
    ) -> tuple[np.ndarray, dict[str, np.ndarray], Commit | None]:
        """A block's stored states and per-context statistics; a tail's own commit."""
        from posctx.model import forward_block

        plan = self.run.statistics
        assert plan is not None
        labels = writer.topics(block)
        topic_index = np.array([self.run.topics.index(str(t)) for t in labels], dtype=np.intp)
        tail = self.run.is_tail(block)
        if self._sums is None and not tail:
            self._sums = self._new_sums()
        sums = self._new_sums() if tail else self._sums
        assert sums is not None
        data = forward_block(
            self.loaded,
            writer.token_ids(block),
            self.run.storage_dtype,
            batch_size=self.loaded.config.batch_size,
            statistics=sums,
            topic_index=topic_index,
            keep=plan.stores_hidden(block).stop,
        )
        contexts = sums.take_contexts()
        if tail:  # grows if the store is extended: its sums must be deletable on their own
            return data, contexts, Commit(tail_owner(block), 0, (block,), sums.snapshot(), (block,))
        self.counted.append(block)
        self.unmarked.append(block)
        return data, contexts, None

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


__all__ = ["Commit", "WriterStatistics", "repair_blocks"]
