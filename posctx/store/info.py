"""What a store holds, as plain data: schema, size, completeness, statistics, provenance.

:func:`store_info` is what ``posctx info`` prints (``posctx.summary.format_store_info`` words
it for a terminal, ``--json`` prints it as is). It reads metadata, the markers and the
partials' attrs, and sizes the files; never a chunk of hidden states.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from posctx.errors import StoreError
from posctx.store.blocks import completed_blocks
from posctx.store.layout import STATISTICS_SCHEMA, StatisticsPlan, plan_blocks
from posctx.store.location import open_group, size_on_disk
from posctx.store.partials import coverage, read_partials, select_partials
from posctx.store.provenance import read_provenance
from posctx.types import HIDDEN, STAT_PARTIALS, TOKEN_ID

#: The store's members that hold its statistics: the per-context arrays, the ``edge``
#: coordinate and the partials.
STATISTICS_MEMBERS = (*STATISTICS_SCHEMA, STAT_PARTIALS)


def store_info(path: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Schema, size, completeness, statistics and provenance of a store, as plain data.

    Parameters
    ----------
    path
        Local path or fsspec URL of a hidden-state store.
    storage_options
        Passed to fsspec for URLs.

    Returns
    -------
    dict
        ``path``; ``arrays`` (shape, chunks, dtype, dims and uncompressed bytes of ``hidden``
        and ``token_id``); ``size_on_disk`` (bytes of every file), ``size_on_disk_hidden``
        (of the hidden states' files) and ``size_on_disk_statistics`` (of the statistics'
        files: per-context arrays and partials); ``blocks_complete``, ``blocks_total`` and
        ``complete``; ``hidden_contexts_stored``, the contexts whose hidden states the store
        keeps (all of them, or the first N of a ``--hidden-contexts N`` store);
        ``statistics``, ``None`` for a store without statistics, else its plan (``moments``,
        ``topics``, ``edges``, ``hidden_contexts``), ``partials`` (the partials whose sums
        count) and ``blocks_counted`` (blocks counted by exactly one of them); and
        ``provenance``, the record.

    Raises
    ------
    StoreError
        No posctx store at ``path``.

    Examples
    --------
    >>> import os, tempfile, posctx.testing
    >>> path = tempfile.mkdtemp() + "/h.zarr"
    >>> _ = posctx.testing.write_large_planted_store(path, n_contexts=8, length=4, n_layers=2,
    ...     n_dims=3, chunk_contexts=4, statistics=True, hidden_contexts=4)
    >>> info = store_info(path)
    >>> info["hidden_contexts_stored"], info["statistics"]["partials"], info["blocks_complete"]
    (4, 1, 2)
    >>> info["size_on_disk_hidden"] - os.path.getsize(path + "/hidden/zarr.json")  # one chunk
    384
    """
    prov = read_provenance(path, storage_options)
    if prov is None:
        raise StoreError(f"no posctx store at {path}: check the path")
    group = open_group(path, "r", storage_options)
    arrays = {}
    for name in (HIDDEN, TOKEN_ID):
        arr = group[name]
        arrays[name] = {
            "shape": list(arr.shape),
            "chunks": list(arr.chunks),
            "dtype": str(arr.dtype),
            "dims": list(arr.metadata.dimension_names or ()),
            "uncompressed_bytes": int(arr.nbytes),
        }
    done = completed_blocks(path, storage_options)
    n_contexts = int(group[HIDDEN].shape[0])
    plan = StatisticsPlan.from_record(prov)
    stored = n_contexts
    if plan is not None and plan.hidden_contexts is not None:
        stored = min(int(plan.hidden_contexts), n_contexts)
    statistics = None
    if plan is not None:
        chunk = prov.get("chunk_contexts") or group[HIDDEN].chunks[0]
        selected = select_partials(read_partials(path, storage_options)[0])
        counts = coverage(selected, plan_blocks(n_contexts, int(chunk)))
        statistics = {
            "moments": plan.moments,
            "hidden_contexts": plan.hidden_contexts,
            "topics": list(plan.topics),
            "edges": list(plan.edges.positions),
            "partials": len(selected),
            "blocks_counted": int(np.count_nonzero(counts == 1)),
        }
    return {
        "path": str(path),
        "arrays": arrays,
        "size_on_disk": size_on_disk(path, storage_options),
        "size_on_disk_hidden": size_on_disk(path, storage_options, members=[HIDDEN]),
        "size_on_disk_statistics": size_on_disk(path, storage_options, members=STATISTICS_MEMBERS),
        "blocks_complete": int(done.sum()),
        "blocks_total": int(done.size),
        "complete": bool(done.all()),
        "hidden_contexts_stored": stored,
        "statistics": statistics,
        "provenance": prov,
    }


__all__ = ["STATISTICS_MEMBERS", "store_info"]
