"""Dask graphs of the content checks' per-chunk summaries.

Each builder returns one :class:`~dask.delayed.Delayed` whose value is the list of the
summaries of :mod:`posctx.validate.kernels`, in store order, one task per chunk::

    hidden chunk (block i, layer chunk k) --hidden_chunk_summary--> HiddenSummary
    token_id block i                      --token_chunk_summary---> TokenSummary
    stat_* block i (+ its stored hidden)  --statistics_chunk_summary--> StatisticsSummary
    all of them                           --_gather---------------> [summary, ...]  (small)

Computed together (``dask.base.compute(a, b)``), every chunk is read once, in parallel on
whatever scheduler is active (threads by default, a ``dask.distributed`` client if one is
set), and memory stays at one chunk per worker thread (one block of every layer for the
statistics, which recompute the sums as extraction did). Graphs built on the same dask array
of ``hidden`` share its read tasks. The tasks are module-level functions with plain
arguments, so the graphs pickle and run on every scheduler.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from posctx.store import Block
from posctx.sums import Edges
from posctx.validate.kernels import (
    Framing,
    hidden_chunk_summary,
    statistics_chunk_summary,
    token_chunk_summary,
)


def _gather(*summaries: Any) -> list[Any]:
    return list(summaries)


def _by_block(x: da.Array, blocks: Sequence[Block], whole: tuple[int, ...]) -> da.Array:
    """``x`` chunked so that each of ``blocks`` is one chunk along axis 0 and axes ``whole`` are
    one chunk each; the array itself when it already is (as a store made by posctx is)."""
    edges = sorted({0, int(x.shape[0]), *(e for b in blocks for e in (b.start, b.stop))})
    chunks: dict[int, Any] = {0: tuple(int(n) for n in np.diff(edges)), **dict.fromkeys(whole, -1)}
    out: da.Array = x.rechunk(chunks)
    return out


def _chunk_indices(x: da.Array) -> dict[int, int]:
    """The index along axis 0 of each chunk of ``x``, by the chunk's first row."""
    return {int(s): i for i, s in enumerate(np.cumsum((0, *x.chunks[0][:-1])))}


def _collect(arrays: Sequence[da.Array], name: str, tasks: dict[Any, Any]) -> Delayed:
    """One Delayed that gathers ``tasks`` (which read chunks of ``arrays``) into a list."""
    layer = {**tasks, name: (_gather, *tasks)}
    layers: dict[str, Any] = {}
    dependencies: dict[str, Any] = {}
    for x in arrays:
        layers.update(x.dask.layers)
        dependencies.update(x.dask.dependencies)
    graph = HighLevelGraph(
        {**layers, name: MaterializedLayer(layer)},
        {**dependencies, name: {x.name for x in arrays}},
    )
    return Delayed(name, graph, layer=name)


def hidden_summaries(hidden: da.Array, blocks: Sequence[Block], layer_chunk: int) -> Delayed:
    """Lazy NaN/inf summaries of ``blocks`` of a ``(context, position, layer, dim)`` array.

    Parameters
    ----------
    hidden
        The store's ``hidden`` as a dask array.
    blocks
        The blocks to scan, ascending.
    layer_chunk
        Layers per summary (the store's layer chunk).

    Returns
    -------
    Delayed
        The list of :class:`~posctx.validate.kernels.HiddenSummary`, one per block and layer
        chunk, block by block.

    Examples
    --------
    >>> import dask
    >>> x = np.zeros((6, 2, 3, 2), dtype=np.float32)
    >>> x[4, 1, 2, 0] = np.nan
    >>> lazy = hidden_summaries(da.from_array(x, chunks=(2, 2, 2, 2)),
    ...                         [Block(1, 2, 4), Block(2, 4, 6)], layer_chunk=2)
    >>> [(s.values, s.nan, s.first) for s in dask.compute(lazy)[0]]
    [(16, 0, None), (8, 0, None), (16, 0, None), (8, 1, (4, 1, 2))]
    """
    n_layers = int(hidden.shape[2])
    starts = range(0, n_layers, layer_chunk)
    x = _by_block(hidden, blocks, (1, 3))
    x = x.rechunk({2: tuple(min(layer_chunk, n_layers - s) for s in starts)})
    name = f"posctx-validate-hidden-{tokenize(x.name, blocks, layer_chunk)}"
    index = _chunk_indices(x)
    tasks = {
        (name, b.index, k): (
            hidden_chunk_summary,
            (x.name, index[b.start], 0, k, 0),
            b.index,
            b.start,
            start,
        )
        for b in blocks
        for k, start in enumerate(starts)
    }
    return _collect([x], name, tasks)


def token_summaries(
    token_id: da.Array, blocks: Sequence[Block], limit: int | None, framing: Framing | None
) -> Delayed:
    """Lazy range and framing summaries of ``blocks`` of a ``(context, position)`` id array.

    Parameters
    ----------
    token_id
        The store's ``token_id`` as a dask array.
    blocks
        The blocks to scan, ascending.
    limit, framing
        As :func:`~posctx.validate.kernels.token_chunk_summary` takes them.

    Returns
    -------
    Delayed
        The list of :class:`~posctx.validate.kernels.TokenSummary`, one per block.

    Examples
    --------
    >>> import dask
    >>> ids = da.from_array(np.array([[1, 2], [3, 4], [5, 9]]), chunks=1)
    >>> lazy = token_summaries(ids, [Block(0, 0, 2), Block(1, 2, 3)], 9, None)
    >>> [(s.min, s.max, s.first_out_of_range) for s in dask.compute(lazy)[0]]
    [(1, 4, None), (5, 9, (2, 1, 9))]
    """
    x = _by_block(token_id, blocks, (1,))
    name = f"posctx-validate-tokens-{tokenize(x.name, blocks, limit, framing)}"
    index = _chunk_indices(x)
    tasks = {
        (name, b.index): (
            token_chunk_summary,
            (x.name, index[b.start], 0),
            b.start,
            limit,
            framing,
        )
        for b in blocks
    }
    return _collect([x], name, tasks)


def statistics_summaries(
    statistics: Sequence[da.Array],
    hidden: da.Array | None,
    blocks: Sequence[Block],
    stored: Mapping[int, int],
    edges: Edges,
    tolerance: float,
) -> Delayed:
    """Lazy summaries of ``blocks``' per-context statistics and their stored hidden states.

    Parameters
    ----------
    statistics
        The store's ``stat_ctx_sum``, ``stat_ctx_sumsq`` and ``stat_edge`` as dask arrays.
    hidden
        The store's ``hidden`` as a dask array (``None`` when no block keeps hidden states).
    blocks
        The blocks to check, ascending.
    stored
        Block index -> how many of its first contexts keep their hidden states (blocks not
        listed keep none).
    edges, tolerance
        As :func:`~posctx.validate.kernels.statistics_chunk_summary` takes them.

    Returns
    -------
    Delayed
        The list of :class:`~posctx.validate.kernels.StatisticsSummary`, one per block.

    Examples
    --------
    >>> import dask
    >>> from posctx.sums import block_statistics
    >>> x = np.random.default_rng(0).normal(size=(6, 4, 2, 3)).astype(np.float32)
    >>> ref = block_statistics(x, Edges(4), np.zeros(6, np.intp), 1)
    >>> stats = [da.from_array(ref[k], chunks=2) for k in ("ctx_sum", "ctx_sumsq", "edge")]
    >>> lazy = statistics_summaries(stats, da.from_array(x, chunks=(2, 4, 1, 3)),
    ...                             [Block(0, 0, 2), Block(2, 4, 6)], {0: 2, 2: 1}, Edges(4), 0.0)
    >>> [(s.contexts, s.compared, s.max_rel) for s in dask.compute(lazy)[0]]
    [(2, 2, 0.0), (2, 1, 0.0)]
    """
    parts = [_by_block(x, blocks, tuple(range(1, x.ndim))) for x in statistics]
    kept = [
        Block(b.index, b.start, b.start + stored[b.index]) for b in blocks if stored.get(b.index)
    ]
    arrays = list(parts)
    rows: dict[int, Any] = {}
    if hidden is not None and kept:
        h = _by_block(hidden, kept, (1, 2, 3))
        index = _chunk_indices(h)
        rows = {b.index: (h.name, index[b.start], 0, 0, 0) for b in kept}
        arrays.append(h)
    name = f"posctx-validate-statistics-{tokenize([x.name for x in arrays], blocks, stored, edges, tolerance)}"
    indices = [_chunk_indices(x) for x in parts]
    tasks = {
        (name, b.index): (
            statistics_chunk_summary,
            *(
                (x.name, index[b.start], *(0,) * (x.ndim - 1))
                for x, index in zip(parts, indices, strict=True)
            ),
            rows.get(b.index),
            b.index,
            b.start,
            edges,
            tolerance,
        )
        for b in blocks
    }
    return _collect(arrays, name, tasks)


__all__ = ["hidden_summaries", "statistics_summaries", "token_summaries"]
