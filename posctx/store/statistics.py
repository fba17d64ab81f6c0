"""The decomposition's statistics a store keeps from extraction, opened for a decomposition.

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

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from posctx.errors import StoreError
from posctx.store.integrity import damaged_store_message, missing_chunks
from posctx.store.layout import PER_CONTEXT_STATISTICS, StatisticsPlan
from posctx.store.location import is_remote, local_path, open_group
from posctx.store.partials import (
    PARTIAL_DIMS,
    Partial,
    check_coverage,
    coverage,
    partial_arrays,
    read_partials,
    select_partials,
)
from posctx.types import (
    BLOCK_COMPLETE,
    CONTEXT,
    STAT_TOPIC,
)


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
    marked = [b for b in blocks if done[b.index]]
    for (
        name
    ) in PER_CONTEXT_STATISTICS:  # as for hidden: a lost chunk file is refused, not read as NaN
        missing = missing_chunks(path, marked, storage_options, name=name)
        if missing:
            raise StoreError(damaged_store_message(path, missing, name))
    if not is_remote(path):
        _read_directly(out, path, [(b.start, b.stop) for b in marked])
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


def _read_directly(out: Any, path: str, marked: list[tuple[int, int]]) -> None:
    """The per-context statistics read by the direct chunk reader, as ``hidden`` is.

    zarr's path costs about 2 ms a chunk, which is most of a decomposition served by the
    statistics (a store of 20 GB has 600 such chunks). A chunk file of a marked block that
    vanishes after the store is opened is refused when read, never taken as NaN.
    """
    from posctx.store.direct import direct_array

    for name in PER_CONTEXT_STATISTICS:
        direct = direct_array(local_path(path) / name, required=marked)
        if direct is not None and direct.shape == out[name].shape:
            out[name] = out[name].copy(data=direct)


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


__all__ = [
    "open_statistics",
]
