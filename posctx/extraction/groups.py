"""Forward groups: runs of consecutive blocks computed together, so that a forward batch is
as large as the user asks whatever the storage chunk.

A block is one storage chunk of contexts (the unit of writing and of completion markers).
When a chunk holds fewer contexts than a forward batch (GPT-2-small at T=1024 keeps 41 MB per
context, so a 64 MB chunk holds one), the forward pass runs over a *group* of
``blocks_per_group`` consecutive blocks, in batches counted from the group's first context.
Groups are fixed by the store's plan, not by what is left to do: a context is always computed
with the same batch mates, so a resume, a shard or a cluster task gives the same bits as one
uninterrupted run (batched kernels may round a row differently when its batch mates change).
A group with some blocks written already is computed whole, and only its other blocks are
written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from posctx.store import Block


def blocks_per_group(chunk_contexts: int, batch_size: int) -> int:
    """Consecutive blocks computed together: enough that a group holds one full batch.

    >>> blocks_per_group(46, 32)  # a chunk holds a batch: one block per group, as ever
    1
    >>> blocks_per_group(1, 32)  # GPT-2-small at T=1024 in float32
    32
    >>> blocks_per_group(21, 32)
    2
    """
    if chunk_contexts < 1 or batch_size < 1:
        raise ValueError("chunk_contexts and batch_size must be >= 1")
    return max(1, -(-batch_size // chunk_contexts))


@dataclass(frozen=True)
class Group:
    """Consecutive blocks computed in one run of forward batches.

    Attributes
    ----------
    index
        The group's place in the store's plan (block ``b`` is in group ``b.index // k``).
    blocks
        Every block of the group, in order: all of them are computed.
    todo
        The blocks to write (a subset of ``blocks``, in order); the others are written already.
    """

    index: int
    blocks: tuple[Block, ...]
    todo: tuple[Block, ...]

    @property
    def start(self) -> int:
        return self.blocks[0].start

    @property
    def stop(self) -> int:
        return self.blocks[-1].stop

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def span(self) -> Block:
        """The group's contexts as one range (for reading its token ids)."""
        return Block(self.index, self.start, self.stop)

    def rows(self, block: Block) -> slice:
        """Where ``block``'s contexts are in the group's arrays."""
        return slice(block.start - self.start, block.stop - self.start)


def group_index(block: Block, per_group: int) -> int:
    """The group of ``block``: groups are ``per_group`` consecutive blocks of the plan."""
    return block.index // per_group


def plan_groups(all_blocks: Sequence[Block], todo: Iterable[Block], per_group: int) -> list[Group]:
    """The groups that hold a block of ``todo``, each with every block of the store's plan
    it spans (``all_blocks``) and the blocks of ``todo`` it writes.

    >>> from posctx.store import plan_blocks
    >>> blocks = plan_blocks(10, 2)
    >>> [(g.index, [b.index for b in g.blocks], [b.index for b in g.todo])
    ...  for g in plan_groups(blocks, [blocks[1], blocks[4]], 2)]
    [(0, [0, 1], [1]), (2, [4], [4])]
    """
    wanted: dict[int, list[Block]] = {}
    for block in todo:
        wanted.setdefault(group_index(block, per_group), []).append(block)
    return [
        Group(
            g,
            tuple(all_blocks[g * per_group : (g + 1) * per_group]),
            tuple(sorted(wanted[g], key=lambda b: b.index)),
        )
        for g in sorted(wanted)
    ]


def in_shard(block: Block, per_group: int, shard: tuple[int, int] | None) -> bool:
    """Whether ``block`` is shard ``i`` of ``n``'s: its group's index is ``i`` modulo ``n``
    (whole groups go to one shard, so that shards compute disjoint contexts).

    >>> in_shard(Block(3, 6, 8), 1, (1, 2)), in_shard(Block(3, 6, 8), 4, (1, 2))
    (True, False)
    """
    if shard is None:
        return True
    return group_index(block, per_group) % shard[1] == shard[0]


__all__ = [
    "Group",
    "blocks_per_group",
    "group_index",
    "in_shard",
    "plan_groups",
]
