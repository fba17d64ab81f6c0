"""The decomposition's statistics a store keeps from extraction: layout, partials, coverage.

Per context, with its block (covered by the block's marker like its hidden states):
``stat_ctx_sum`` and ``stat_ctx_sumsq``, float64 sums over the core positions, and
``stat_edge``, the stored hidden states at the left-out positions (:class:`posctx.sums.Edges`).

Per process, in the group ``stat_partials``: one *partial* per writer (an extraction process,
a shard, a cluster task), each the float64 position sums per topic (and with moments the core
cells' count, mean and centred second moment) of the blocks it lists. A writer rewrites its
partial as it goes, each version under a higher sequence number, and lists each block with its
bounds; a partial is complete once its attrs (written last) name its blocks.

The protocol (docs/design.md, "Statistics during extraction"):

1. a block's hidden states and per-context statistics are written;
2. a new version of the writer's partial, listing the block, is written;
3. the block's marker is set; the writer's older versions are deleted.

Readers count, per writer, its newest complete version (:func:`select_partials`). A block is
*covered* when exactly one counted partial lists it with its present bounds; a marked block
must be covered. A kill between 2 and 3 leaves covered blocks without their marker: the next
run marks them (:func:`roll_forward`) instead of computing them again; a kill before 2 leaves
blocks uncovered, which the next run computes again. The store's last block, when short, gets
a partial of its own (a *tail*), since an extension grows it and its old sums must then go.
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
from posctx.store.layout import RECORD_KEY, Block, StatisticsPlan
from posctx.store.location import open_group
from posctx.types import (
    BLOCK_COMPLETE,
    CONTEXT,
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
    return group.require_group(STAT_PARTIALS)


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
    "RECORD_KEY",
    "Partial",
    "StatisticsPlan",
    "check_coverage",
    "coverage",
    "coverage_problems",
    "delete_partials",
    "leftover_partials",
    "new_owner",
    "open_statistics",
    "partial_arrays",
    "read_partials",
    "roll_forward",
    "select_partials",
    "tail_owner",
    "write_partial",
]


def open_statistics(
    path: str,
    *,
    complete_only: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """A store's statistics as a lazy, labelled ``xarray.Dataset`` (reads only metadata).

    Parameters
    ----------
    path
        Local path or fsspec URL of a hidden-state store made with statistics.
    complete_only
        Keep only the contexts of finished blocks instead of refusing an interrupted store.
    storage_options
        Passed to fsspec for URLs.

    Returns
    -------
    xarray.Dataset
        Per context: ``stat_ctx_sum`` ``(context, layer, dim)``, ``stat_ctx_sumsq``
        ``(context, layer)`` and ``stat_edge`` ``(context, edge, layer, dim)``; over the
        counted blocks: ``pos_sum`` ``(stat_topic, position, layer, dim)`` and, with moments,
        ``mean`` ``(layer, dim)`` and ``m2`` ``(layer, dim, dim2)`` of the core cells, whose
        number is ``attrs["posctx_statistics"]["count"]``. The store's labels and attrs, and
        under ``posctx_statistics`` the plan (:class:`StatisticsPlan`).

    Raises
    ------
    StoreError
        No statistics in the store, or statistics that disagree with the blocks' markers.
    IncompleteStoreError
        Unfinished blocks and ``complete_only`` false.

    Examples
    --------
    >>> import tempfile, posctx.testing
    >>> path = tempfile.mkdtemp() + "/h.zarr"
    >>> _ = posctx.testing.write_large_planted_store(
    ...     path, n_contexts=6, length=5, n_layers=2, n_dims=3, chunk_contexts=2, statistics=True)
    >>> stats = open_statistics(path)
    >>> stats.stat_ctx_sum.dims, stats.pos_sum.dims
    (('context', 'layer', 'dim'), ('stat_topic', 'position', 'layer', 'dim'))
    """
    import xarray as xr

    from posctx.errors import IncompleteStoreError
    from posctx.store.blocks import completed_blocks
    from posctx.store.layout import STATISTICS_SCHEMA, plan_blocks
    from posctx.store.provenance import read_provenance
    from posctx.store.reading import COMPLETE_ONLY_ATTR, open_labelled
    from posctx.types import BLOCK_START, HIDDEN, STATISTICS_ATTR, TOKEN_ID

    record = read_provenance(path, storage_options)
    if record is None:
        raise StoreError(f"no posctx store at {path}: run `posctx extract ... --out {path}` first")
    plan = StatisticsPlan.from_record(record)
    if plan is None:
        raise StoreError(
            f"{path} keeps no statistics (made before posctx 0.2, or with --no-statistics): "
            "decompose it from its hidden states (posctx.decompose), or extract it again"
        )
    ds = open_labelled(path, storage_options=storage_options)
    chunk = record.get("chunk_contexts") or open_group(path, "r", storage_options)[HIDDEN].chunks[0]
    blocks = plan_blocks(ds.sizes[CONTEXT], int(chunk))
    done = completed_blocks(path, storage_options)
    selected = select_partials(read_partials(path, storage_options)[0])
    counts = coverage(selected, blocks)
    # Unfinished blocks are refused below, unless complete_only: then no counted sums may
    # belong to an unmarked block, whose contexts are left out.
    check_coverage(path, blocks, done, counts, unmarked_counted=complete_only)
    keep = [name for name in STATISTICS_SCHEMA if name in ds.variables]
    out = ds[[name for name in keep if name in ds.data_vars]]
    out = out.drop_vars([v for v in (HIDDEN, TOKEN_ID, BLOCK_COMPLETE, BLOCK_START) if v in out])
    sums = _merged_partials(path, storage_options, selected, plan)
    out["pos_sum"] = (PARTIAL_DIMS["pos_sum"], sums["pos_sum"])
    out = out.assign_coords({STAT_TOPIC: list(plan.topics)})
    info = plan.to_dict()
    if plan.moments:
        out["mean"] = (PARTIAL_DIMS["mean"], sums["mean"])
        out["m2"] = (PARTIAL_DIMS["m2"], sums["m2"])
        info["count"] = sums["count"]
    out.attrs[STATISTICS_ATTR] = info
    if not done.all():
        if not complete_only:
            raise IncompleteStoreError(
                f"{path}: {int((~done).sum())} of {done.size} blocks are not written yet (an "
                "interrupted extraction): re-run the same `posctx extract` command to finish "
                "it, or use only the finished contexts (complete_only=True; `posctx decompose "
                "--complete-only`)"
            )
        rows = np.concatenate(
            [np.arange(b.start, b.stop) for b in blocks if done[b.index]] or [np.array([], int)]
        )
        out = out.isel({CONTEXT: rows})
        out.attrs[COMPLETE_ONLY_ATTR] = {
            "blocks_used": int(done.sum()),
            "blocks_total": int(done.size),
            "contexts_total": int(ds.sizes[CONTEXT]),
        }
    result: xr.Dataset = out
    return result


def _merged_partials(
    path: str,
    storage_options: Mapping[str, Any] | None,
    selected: Sequence[Partial],
    plan: StatisticsPlan,
) -> dict[str, Any]:
    """Every counted partial's sums added up (lazily), rows aligned by topic name."""
    import dask.array as da
    from dask.delayed import delayed

    from posctx.sums import merge_moments

    length = plan.edges.length
    totals: list[Any] = []
    moments: list[tuple[float, Any, Any]] = []
    shape: tuple[int, ...] | None = None
    for partial in selected:
        arrays = partial_arrays(path, storage_options, partial)
        rows = arrays["pos_sum"]
        shape = tuple(rows.shape[1:])
        full = [
            rows[partial.topics.index(t)] if t in partial.topics else da.zeros(shape)
            for t in plan.topics
        ]
        totals.append(da.stack(full))
        if plan.moments:
            moments.append((float(partial.count or 0.0), arrays["mean"], arrays["m2"]))
    if shape is None:  # no block counted yet (an empty, interrupted store)
        raise StoreError(f"{path}: no block's statistics are written yet: finish the extraction")
    out: dict[str, Any] = {"pos_sum": sum(totals[1:], totals[0])}
    assert len(out["pos_sum"].shape) == 4 and out["pos_sum"].shape[1] == length
    if plan.moments:

        def merge(*parts: Any) -> tuple[Any, Any]:
            count, mean, m2 = 0.0, np.zeros(parts[1].shape), np.zeros(parts[2].shape)
            for i in range(0, len(parts), 3):
                count, mean, m2 = merge_moments(count, mean, m2, *parts[i : i + 3])
            return mean, m2

        flat = [x for part in moments for x in part]
        merged = delayed(merge, nout=2)(*flat)
        n_layers, n_dims = shape[1], shape[2]
        out["mean"] = da.from_delayed(merged[0], (n_layers, n_dims), dtype=np.float64)
        out["m2"] = da.from_delayed(merged[1], (n_layers, n_dims, n_dims), dtype=np.float64)
        out["count"] = float(sum(part[0] for part in moments))
    return out
