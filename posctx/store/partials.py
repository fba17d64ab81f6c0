"""Partials: each writer's position sums and moments, and which blocks they count.

The commit protocol and why a kill anywhere is safe are in :mod:`posctx.store.statistics`
(and docs/design.md, "Statistics during extraction"); this module reads, writes, selects and
repairs the partials in a store's ``stat_partials`` group.
"""

from __future__ import annotations

import os
import socket
import uuid
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from posctx.errors import StoreError
from posctx.store.layout import Block
from posctx.store.location import open_group
from posctx.types import (
    BLOCK_COMPLETE,
    DIM,
    DIM2,
    LAYER,
    POSITION,
    STAT_PARTIALS,
    STAT_TOPIC,
)

#: Dims of each array of a partial.
PARTIAL_DIMS: dict[str, tuple[str, ...]] = {
    "pos_sum": (STAT_TOPIC, POSITION, LAYER, DIM),
    "mean": (LAYER, DIM),
    "m2": (LAYER, DIM, DIM2),
}


@dataclass(frozen=True)
class Partial:
    """One complete partial: who wrote it, which version, which blocks and topics."""

    name: str
    owner: str
    seq: int
    blocks: tuple[tuple[int, int, int], ...]
    topics: tuple[str, ...]
    count: float | None


def new_owner(prefix: str = "run") -> str:
    """A writer id no other process can have: host, process and a random suffix.

    Examples
    --------
    >>> owner = new_owner()
    >>> owner.startswith("run-"), _dead_here(owner)
    (True, False)
    """
    return f"{prefix}-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _host() -> str:
    return "".join(c for c in socket.gethostname() if c.isalnum()) or "host"


def _dead_here(owner: str) -> bool:
    """Whether ``owner`` was a process of this host that has ended (tails count as dead)."""
    if owner.startswith("tail-"):
        return True
    parts = owner.rsplit("-", 3)
    if len(parts) != 4 or parts[1] != _host() or not parts[2].isdigit():
        return False  # another host's writer: it may still be writing
    from posctx.store.create import process_alive

    return not process_alive(int(parts[2]))


def tail_owner(block: Block) -> str:
    """The writer id of the partial of a short last block (one per block and size)."""
    return f"tail-{block.index}-{block.start}-{block.stop}"


def _partials_group(path: str, storage_options: Mapping[str, Any] | None, mode: str) -> Any:
    group = open_group(path, mode, storage_options)
    if STAT_PARTIALS in group:
        return group[STAT_PARTIALS]
    if mode == "r":
        return None
    from zarr.errors import ContainsGroupError

    try:
        return group.require_group(STAT_PARTIALS)
    except ContainsGroupError:  # a concurrent writer (a shard) created it since the lookup
        return group[STAT_PARTIALS]


def read_partials(
    path: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[list[Partial], list[str]]:
    """The complete partials of a store, and the names of incomplete ones (a killed write)."""
    group = _partials_group(path, storage_options, "r")
    if group is None:
        return [], []
    from zarr.core.sync import collect_aiterator

    # A version whose group a kill cut short before its zarr.json is a bare folder (or
    # prefix): zarr skips it with a warning, the listing still names it.
    listed = {name for name in collect_aiterator(group.store.list_dir(group.path))}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Object at .* is not recognized")
        children = dict(group.groups())
    complete: list[Partial] = []
    broken = sorted(listed - set(children) - {"zarr.json"})
    for name, child in sorted(children.items()):
        attrs = dict(child.attrs)
        if "blocks" not in attrs:  # written last: this version's write was cut short
            broken.append(name)
            continue
        complete.append(
            Partial(
                name=name,
                owner=str(attrs["owner"]),
                seq=int(attrs["seq"]),
                blocks=tuple(tuple(int(v) for v in b) for b in attrs["blocks"]),  # type: ignore[misc]
                topics=tuple(str(t) for t in attrs["topics"]),
                count=attrs.get("count"),
            )
        )
    return complete, broken


def select_partials(partials: Iterable[Partial]) -> list[Partial]:
    """Each writer's newest complete version: the partials whose sums count.

    Examples
    --------
    >>> p = [Partial("a.0", "a", 0, ((0, 0, 4),), ("t",), None),
    ...      Partial("a.1", "a", 1, ((0, 0, 4), (1, 4, 8)), ("t",), None)]
    >>> [x.name for x in select_partials(p)]
    ['a.1']
    """
    newest: dict[str, Partial] = {}
    for p in partials:
        if p.owner not in newest or p.seq > newest[p.owner].seq:
            newest[p.owner] = p
    return sorted(newest.values(), key=lambda p: p.name)


def coverage(selected: Iterable[Partial], blocks: Sequence[Block]) -> np.ndarray:
    """How many counted partials list each block with its present bounds.

    Examples
    --------
    >>> from posctx.store.layout import plan_blocks
    >>> p = Partial("a.1", "a", 1, ((0, 0, 4), (2, 8, 9)), ("t",), None)
    >>> coverage([p], plan_blocks(10, 4)).tolist()
    [1, 0, 0]
    """
    counts = np.zeros(len(blocks), dtype=np.int64)
    for p in selected:
        for index, start, stop in p.blocks:
            if index < len(blocks) and (blocks[index].start, blocks[index].stop) == (start, stop):
                counts[index] += 1
    return counts


def write_partial(
    path: str,
    storage_options: Mapping[str, Any] | None,
    *,
    owner: str,
    seq: int,
    blocks: Iterable[Block],
    topics: Sequence[str],
    sums: Mapping[str, Any],
) -> str:
    """Write one complete version of a partial; its attrs, naming its blocks, come last."""
    group = _partials_group(path, storage_options, "r+")
    name = f"{owner}.{seq}"
    if name in group:  # a version cut short by a kill: written again from the start
        del group[name]
    child = group.create_group(name)
    for key in ("pos_sum", "mean", "m2"):
        if key in sums:
            values = np.ascontiguousarray(sums[key], dtype=np.float64)
            array = child.create_array(
                key,
                shape=values.shape,
                dtype=np.float64,
                chunks=values.shape or None,
                compressors=None,
                dimension_names=PARTIAL_DIMS[key],
            )
            array[...] = values
    child.update_attributes(
        {
            "owner": owner,
            "seq": seq,
            "topics": list(topics),
            "count": float(sums["count"]) if "count" in sums else None,
            "blocks": [[b.index, b.start, b.stop] for b in blocks],
        }
    )
    return name


def delete_partials(
    path: str, storage_options: Mapping[str, Any] | None, names: Iterable[str]
) -> None:
    """Delete partials by name (superseded or cut-short versions)."""
    names = list(names)
    if not names:
        return
    from zarr.core.sync import sync

    group = _partials_group(path, storage_options, "r+")
    for name in names:
        # Through the store: a version cut short may be no zarr group yet (a bare folder).
        sync(group.store.delete_dir(f"{group.path}/{name}"))


def partial_arrays(
    path: str, storage_options: Mapping[str, Any] | None, partial: Partial
) -> dict[str, Any]:
    """A partial's arrays as lazy dask arrays (read when computed)."""
    import dask.array as da

    group = _partials_group(path, storage_options, "r")
    child = group[partial.name]
    return {name: da.from_zarr(child[name]) for name, _ in child.arrays()}


def roll_forward(
    path: str,
    storage_options: Mapping[str, Any] | None,
    blocks: Sequence[Block],
    done: np.ndarray,
) -> np.ndarray:
    """Mark the covered blocks a killed writer left unmarked, and clear stale partials.

    Returns the markers after the repair. Deletes versions superseded by a newer one of the
    same writer, versions cut short by a kill, and tails whose block has grown since.
    """
    partials, broken = read_partials(path, storage_options)
    # A version cut short is garbage once its writer is gone; a live writer is still at it.
    broken = [name for name in broken if _dead_here(name.rpartition(".")[0])]
    selected = select_partials(partials)
    chosen = {p.name for p in selected}
    stale = [p.name for p in partials if p.name not in chosen]
    current = {(b.index, b.start, b.stop) for b in blocks}
    stale += [
        p.name for p in selected if p.owner.startswith("tail-") and not set(p.blocks) <= current
    ]
    delete_partials(path, storage_options, [*stale, *broken])
    counts = coverage(select_partials(read_partials(path, storage_options)[0]), blocks)
    done = np.asarray(done, dtype=bool).copy()
    group = open_group(path, "r+", storage_options)
    for block in blocks:
        if counts[block.index] == 1 and not done[block.index]:
            group[BLOCK_COMPLETE][block.index] = 1
            done[block.index] = True
    return done


def check_coverage(
    path: str,
    blocks: Sequence[Block],
    done: np.ndarray,
    counts: np.ndarray,
    *,
    unmarked_counted: bool = True,
) -> None:
    """Refuse statistics that disagree with the markers (a block counted twice or not at all).

    With ``unmarked_counted``, also refuse blocks counted but not marked (a writer killed
    between its commit and its markers, or still writing): their sums are in the position
    sums, but a reader of the finished blocks must leave them out.

    Raises
    ------
    StoreError
        Naming the blocks, and pointing to ``posctx validate``.
    """
    found = coverage_problems(done, counts)
    problems = [text for kind, text in found.items() if unmarked_counted or kind != "unmarked"]
    if problems:
        raise StoreError(
            f"{path}: the statistics disagree with the blocks' markers: {'; '.join(problems)}: "
            f"re-run the same `posctx extract` command to repair them (`posctx validate {path}` "
            "shows the details)"
        )


def coverage_problems(done: np.ndarray, counts: np.ndarray) -> dict[str, str]:
    """Where the statistics disagree with the markers, as phrases (:func:`check_coverage`).

    Returns
    -------
    dict
        Only the kinds found: ``"missing"`` (blocks marked written that no counted partial
        lists), ``"twice"`` (blocks more than one counted partial lists) and ``"unmarked"``
        (blocks counted but not marked: an extraction running, or killed between its commit
        and its markers), each a phrase naming the blocks.

    Examples
    --------
    >>> coverage_problems(np.array([True, True, False]), np.array([0, 1, 1]))
    {'missing': 'blocks 0 are marked written but no partial counts them', 'unmarked': 'blocks 2 are counted but not marked (an extraction is running, or was killed between the two)'}
    """
    done = np.asarray(done, dtype=bool)
    counts = np.asarray(counts)
    found: dict[str, str] = {}
    missing = np.flatnonzero(done & (counts == 0))
    twice = np.flatnonzero(counts > 1)
    unmarked = np.flatnonzero(~done & (counts > 0))
    if missing.size:
        found["missing"] = f"blocks {_first(missing)} are marked written but no partial counts them"
    if twice.size:
        found["twice"] = f"blocks {_first(twice)} are counted by more than one partial"
    if unmarked.size:
        found["unmarked"] = (
            f"blocks {_first(unmarked)} are counted but not marked (an extraction is running, "
            "or was killed between the two)"
        )
    return found


def leftover_partials(
    partials: Iterable[Partial], broken: Iterable[str], blocks: Sequence[Block]
) -> list[str]:
    """Partial versions that writers which have ended left behind, and no reader counts.

    Versions cut short by a kill (``broken``, from :func:`read_partials`), versions superseded
    by a newer one of the same writer, and tails whose block has grown since; only those of
    writers known to have ended (a process of this host that is gone, or a tail), since a live
    writer deletes its own. :func:`roll_forward`, run by every ``posctx extract`` of the
    store, deletes them.

    Examples
    --------
    >>> from posctx.store.layout import plan_blocks
    >>> p = [Partial("tail-2-8-9.0", "tail-2-8-9", 0, ((2, 8, 9),), ("t",), None)]
    >>> leftover_partials(p, ["tail-2-8-10.0"], plan_blocks(10, 4))
    ['tail-2-8-10.0', 'tail-2-8-9.0']
    """
    partials = list(partials)
    chosen = {p.name for p in select_partials(partials)}
    current = {(b.index, b.start, b.stop) for b in blocks}
    stale = [
        p.name
        for p in partials
        if p.name not in chosen or (p.owner.startswith("tail-") and not set(p.blocks) <= current)
    ]
    names = [*broken, *stale]
    return sorted(name for name in names if _dead_here(name.rpartition(".")[0]))


def _first(indices: np.ndarray, n: int = 8) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:n])
    return shown + (f", ... ({indices.size} in all)" if indices.size > n else "")


__all__ = [
    "PARTIAL_DIMS",
    "Partial",
    "check_coverage",
    "coverage",
    "coverage_problems",
    "delete_partials",
    "leftover_partials",
    "new_owner",
    "partial_arrays",
    "read_partials",
    "roll_forward",
    "select_partials",
    "tail_owner",
    "write_partial",
]
