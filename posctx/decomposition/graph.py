"""Dask graph of the position/context decomposition.

The graph has one kernel task per input chunk, each calling
:func:`posctx.decomposition.kernels.chunk_stats`; everything else reads the small per-chunk sums.
So when all outputs are computed together (one ``dask.compute`` or one ``to_zarr``), every
chunk of the hidden states is read and converted to float64 exactly once::

    hidden chunk (i, j, k) --chunk_stats--> {pos_sum, ctx_sum, sumsq}   one task per chunk
        ctx_sum   (C, L, D)          one task per (context chunk, layer chunk): sums the
                                     position chunks' partials
        pos_sum   (n_cchunks, T, L, D) -> .sum(axis=0)      tree reduction over context chunks
        sumsq     (n_cchunks, n_tchunks, L) -> .sum(axis=(0, 1))
    finalize (lazy): mu, pos, ctx, ss_total, ss_pos, ss_ctx, ss_resid

All tasks are module-level functions with plain arguments, so the graph pickles and runs on
the threaded, synchronous and ``dask.distributed`` schedulers alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph, Layer, MaterializedLayer

from posctx.decomposition.kernels import (
    ContextSums,
    chunk_stats,
    combine_cells,
    combine_sum,
    singular_values,
    take_stat,
)
from posctx.store.direct import DirectSource
from posctx.types import Float64Array, IndexArray

#: Keys of the dict returned by :func:`decompose_arrays`, in a stable order.
OUTPUT_NAMES = ("mu", "pos", "ctx", "ss_total", "ss_pos", "ss_ctx", "ss_resid")
#: Extra outputs when second moments are requested.
MOMENT_OUTPUT_NAMES = ("m2_resid", "sv_hidden", "sv_resid", "norm_hidden")
#: Sufficient statistics (additive over contexts), persisted with a decomposition.
STATISTIC_NAMES = ("pos_sum", "ctx_sum", "sumsq", "m2_hidden", "cell_pos_sum", "cell_sumsq")


def _add_layer(
    base: HighLevelGraph,
    name: str,
    layer: Mapping[Any, Any],
    depends_on: set[str],
) -> HighLevelGraph:
    """``base`` plus one materialized layer ``name`` that depends on layers ``depends_on``."""
    layers: dict[str, Layer] = dict(base.layers)
    dependencies = {key: set(value) for key, value in base.dependencies.items()}
    layers[name] = MaterializedLayer(dict(layer))
    dependencies[name] = set(depends_on)
    return HighLevelGraph(layers, dependencies)


def statistics_arrays(
    h: da.Array, moments: bool = False, cells: IndexArray | None = None
) -> dict[str, da.Array]:
    """Lazy sufficient statistics of a ``(context, position, layer, dim)`` dask array.

    Parameters
    ----------
    h
        Hidden states, shape ``(C, T, L, D)``, any real dtype, any chunking (a chunked last
        axis is first rechunked to a single chunk).
    moments
        Also return ``m2_hidden`` ``(L, D, D)``: the sum over all ``(c, t)`` of
        ``(h - mu)(h - mu)^T``, merged from chunk-centred moments (no cancellation).

    Returns
    -------
    dict of dask.array.Array
        ``pos_sum`` ``(T, L, D)``, ``ctx_sum`` ``(C, L, D)``, ``sumsq`` ``(L,)`` and with
        ``moments`` ``m2_hidden``; float64. These are additive over contexts (``m2_hidden``
        by :func:`~posctx.decomposition.kernels.merge_moments`), which is what makes
        incremental updates read only new contexts. With ``cells`` (the ``(C,)`` cell of
        each context, :func:`~posctx.decomposition.kernels.plan_cells`), also
        ``cell_pos_sum`` ``(cells, T, L, D)`` and ``cell_sumsq`` ``(cells, L)``, taken in
        the same pass.

    Examples
    --------
    >>> import dask
    >>> import dask.array as da
    >>> import numpy as np
    >>> x = np.arange(2 * 3 * 1 * 2, dtype=np.float32).reshape(2, 3, 1, 2)
    >>> stats = statistics_arrays(da.from_array(x, chunks=(1, 3, 1, 2)))
    >>> dask.compute(stats["sumsq"])[0].tolist() == [float((x.astype(float) ** 2).sum())]
    True
    """
    if h.ndim != 4:
        raise ValueError(f"expected a 4-d (context, position, layer, dim) array, got {h.ndim}-d")
    if not (np.issubdtype(h.dtype, np.floating) or np.issubdtype(h.dtype, np.integer)):
        raise TypeError(f"expected a real numeric array, got dtype {h.dtype}")
    if len(h.chunks[3]) > 1:
        # Per-context and per-position sums need whole vectors; dim is small (<= a few k).
        h = h.rechunk({3: -1})
    if h.shape[0] == 0 or h.shape[1] == 0:
        raise ValueError(f"cannot decompose an empty table of shape {h.shape}")
    c_chunks, t_chunks, l_chunks, _ = h.chunks
    token = tokenize(h.name, moments, cells)
    local = _local_cells(cells, c_chunks)
    # Chunk: one chunk_stats task per input chunk -- the only tasks that touch `h`.
    stats_name = f"posctx-chunk-stats-{token}"
    stats_layer = {
        (stats_name, i, j, k): (
            chunk_stats,
            (h.name, i, j, k, 0),
            moments,
            None if local is None else local[i][1],
        )
        for i in range(len(c_chunks))
        for j in range(len(t_chunks))
        for k in range(len(l_chunks))
    }
    graph = _add_layer(h.dask, stats_name, stats_layer, {h.name})
    return assemble_statistics(graph, stats_name, h.chunks, moments, token, cells)


def _local_cells(
    cells: IndexArray | None, c_chunks: tuple[int, ...]
) -> list[tuple[IndexArray, IndexArray]] | None:
    """Per context chunk: the global cells it holds (sorted) and each row's local index."""
    if cells is None:
        return None
    if len(cells) != sum(c_chunks):
        raise ValueError(f"{len(cells)} cell indices for {sum(c_chunks)} contexts")
    out = []
    start = 0
    for size in c_chunks:
        rows = np.asarray(cells[start : start + size])
        held, local = np.unique(rows, return_inverse=True)
        out.append((held, local.astype(np.intp)))
        start += size
    return out


def file_chunk_stats(
    source: DirectSource,
    index: tuple[int, ...],
    rows: tuple[int, ...],
    start: int,
    stop: int,
    cells: IndexArray | None = None,
) -> dict[str, Float64Array]:
    """:func:`~posctx.decomposition.kernels.chunk_stats` of rows ``rows`` of one chunk file,
    positions ``start:stop``, folded in one context slab at a time as the store reads them
    (:meth:`~posctx.store.direct.DirectSource.rows`): the chunk is never whole in memory.
    """
    n_layers = source.chunk_bounds(index)[2]
    sums = ContextSums(len(rows), stop - start, n_layers, source.shape[3], cells)
    for i, slab in enumerate(source.rows(index, rows)):
        sums.add(i, slab[start:stop, :n_layers])
    return sums.result()


def statistics_from_files(
    source: DirectSource,
    groups: list[tuple[int, tuple[int, ...]]],
    start: int,
    stop: int,
    cells: IndexArray | None = None,
) -> dict[str, da.Array]:
    """Sufficient statistics read straight from the chunk files of ``source``.

    ``groups`` lists, in output order, ``(chunk index along context, rows of that chunk)``;
    positions ``start:stop`` are used and every layer. One task per (group, layer chunk)
    reads its rows slab by slab (:func:`file_chunk_stats`), so no chunk is ever materialised:
    the same statistics as :func:`statistics_arrays`, with less memory traffic. ``cells``:
    as for :func:`statistics_arrays`, one per context in output order.
    """
    n_layers, n_dims = source.shape[2], source.shape[3]
    lc = source.chunk_shape[2]
    l_chunks = tuple(min(lc, n_layers - s) for s in range(0, n_layers, lc))
    token = tokenize(source, groups, start, stop, cells)
    c_chunks = tuple(len(rows) for _, rows in groups)
    local = _local_cells(cells, c_chunks)
    stats_name = f"posctx-file-stats-{token}"
    layer = {
        (stats_name, g, 0, k): (
            file_chunk_stats,
            source,
            (i, 0, k, 0),
            rows,
            start,
            stop,
            None if local is None else local[g][1],
        )
        for g, (i, rows) in enumerate(groups)
        for k in range(len(l_chunks))
    }
    graph = HighLevelGraph({stats_name: MaterializedLayer(layer)}, {stats_name: set()})
    chunks = (c_chunks, (stop - start,), l_chunks, (n_dims,))
    return assemble_statistics(graph, stats_name, chunks, False, token, cells)


def assemble_statistics(
    graph: HighLevelGraph,
    stats_name: str,
    chunks: tuple[tuple[int, ...], ...],
    moments: bool,
    token: str,
    cells: IndexArray | None = None,
) -> dict[str, da.Array]:
    """Sufficient statistics from a layer of per-chunk :func:`chunk_stats`-like results.

    ``graph`` holds a task ``(stats_name, i, j, k)`` for every chunk ``(i, j, k)`` of a
    ``(context, position, layer, dim)`` table chunked as ``chunks`` (``dim`` in one chunk);
    each returns the dict of :func:`~posctx.decomposition.kernels.chunk_stats`. Whatever
    produces those dicts (a dask array's chunks, or chunk files read directly), the
    combining and reducing is this one function.
    """
    c_chunks, t_chunks, l_chunks, d_chunks = chunks
    n_cb, n_tb, n_lb = len(c_chunks), len(t_chunks), len(l_chunks)
    indices = [(i, j, k) for i in range(n_cb) for j in range(n_tb) for k in range(n_lb)]

    def partials(stat: str, lead: int, chunks: tuple[tuple[int, ...], ...]) -> da.Array:
        """Per-chunk results of ``stat`` with ``lead`` new leading axes indexing the chunk.

        Chunk ``(i, j, k)`` of the input maps to chunk ``(i, j, k, 0...)`` of the result:
        for ``lead == 1`` axis 1 is the position axis itself, for ``lead == 2`` a new one.
        """
        name = f"posctx-{stat}-partial-{token}"
        layer = {
            (name, i, j, k, *(0,) * (len(chunks) - 3)): (
                take_stat,
                (stats_name, i, j, k),
                stat,
                lead,
            )
            for i, j, k in indices
        }
        return da.Array(_add_layer(graph, name, layer, {stats_name}), name, chunks, np.float64)

    # Combine, ctx: few position chunks per context chunk, so one task each is cheap.
    ctx_name = f"posctx-ctx-sum-{token}"
    ctx_layer = {
        (ctx_name, i, k, 0): (combine_sum, "ctx_sum", *[(stats_name, i, j, k) for j in range(n_tb)])
        for i in range(n_cb)
        for k in range(n_lb)
    }
    out = {
        "ctx_sum": da.Array(
            _add_layer(graph, ctx_name, ctx_layer, {stats_name}),
            ctx_name,
            chunks=(c_chunks, l_chunks, d_chunks),
            dtype=np.float64,
        ),
        # Partials stacked along new leading axes, so that dask's tree reduction bounds how
        # many are ever held and summed at once.
        "pos_sum": partials("pos_sum", 1, ((1,) * n_cb, t_chunks, l_chunks, d_chunks)).sum(axis=0),
        "sumsq": partials("sumsq", 2, ((1,) * n_cb, (1,) * n_tb, l_chunks)).sum(axis=(0, 1)),
    }
    if moments:
        ones = ((1,) * n_cb, (1,) * n_tb)
        m2_within = partials("m2", 2, (*ones, l_chunks, d_chunks, d_chunks)).sum(axis=(0, 1))
        means = partials("mean", 2, (*ones, l_chunks, d_chunks))
        counts = np.outer(c_chunks, t_chunks).astype(np.float64)
        mu = out["pos_sum"].sum(axis=0) / (sum(c_chunks) * sum(t_chunks))
        # Between-chunk part of the parallel-axis theorem: sum_b n_b (mean_b - mu)(mean_b - mu)^T.
        dev = (means - mu) * np.sqrt(counts)[:, :, None, None]
        out["m2_hidden"] = m2_within + gram(dev)
    local = _local_cells(cells, c_chunks)
    if local is not None:
        out.update(_cell_arrays(graph, stats_name, chunks, local, token))
    return out


def _cell_arrays(
    graph: HighLevelGraph,
    stats_name: str,
    chunks: tuple[tuple[int, ...], ...],
    local: list[tuple[IndexArray, IndexArray]],
    token: str,
) -> dict[str, da.Array]:
    """``cell_pos_sum`` and ``cell_sumsq``: one task per cell (and position and layer chunk)
    adding that cell's sums from every chunk result that holds it."""
    _, t_chunks, l_chunks, d_chunks = chunks
    n_cells = max(int(held.max()) for held, _ in local if held.size) + 1
    holders: list[list[tuple[int, int]]] = [[] for _ in range(n_cells)]
    for i, (held, _) in enumerate(local):
        for j, cell in enumerate(held.tolist()):
            holders[cell].append((i, j))
    pos_name, sq_name = f"posctx-cell-pos-sum-{token}", f"posctx-cell-sumsq-{token}"
    pos_layer = {
        (pos_name, g, j, k, 0): (
            combine_cells,
            "cell_pos_sum",
            tuple(at for _, at in holders[g]),
            *[(stats_name, i, j, k) for i, _ in holders[g]],
        )
        for g in range(n_cells)
        for j in range(len(t_chunks))
        for k in range(len(l_chunks))
    }
    sq_layer = {
        (sq_name, g, k): (
            combine_cells,
            "cell_sumsq",
            tuple(at for _, at in holders[g] for _ in t_chunks),
            *[(stats_name, i, j, k) for i, _ in holders[g] for j in range(len(t_chunks))],
        )
        for g in range(n_cells)
        for k in range(len(l_chunks))
    }
    ones = (1,) * n_cells
    return {
        "cell_pos_sum": da.Array(
            _add_layer(graph, pos_name, pos_layer, {stats_name}),
            pos_name,
            (ones, t_chunks, l_chunks, d_chunks),
            np.float64,
        ),
        "cell_sumsq": da.Array(
            _add_layer(graph, sq_name, sq_layer, {stats_name}),
            sq_name,
            (ones, l_chunks),
            np.float64,
        ),
    }


def _chunk_gram(block: Float64Array) -> Float64Array:
    """``sum over leading axes of x[..., l, d] x[..., l, e]``, the leading axes kept as 1s."""
    lead = "abcdefgh"[: block.ndim - 2]
    gram_block: Float64Array = np.einsum(f"{lead}ld,{lead}le->lde", block, block)
    return gram_block.reshape((1,) * len(lead) + gram_block.shape)


def gram(x: da.Array) -> da.Array:
    """``(layer, dim, dim)`` sums of outer products: ``einsum("...ld,...le->lde", x, x)``,
    with ``dim`` in one chunk and one task per chunk of ``x``.

    ``da.einsum`` splits ``dim`` into many small chunks when a layer chunk is small (one
    layer of 128 dims: 22 x 22 chunks, with a PerformanceWarning); here each chunk's Gram
    matrix is summed by dask's tree reduction.

    >>> x = np.arange(24.0).reshape(3, 2, 4)
    >>> bool(np.allclose(gram(da.from_array(x, chunks=(1, 1, 4))).compute(),
    ...                  np.einsum("tld,tle->lde", x, x)))
    True
    """
    x = x.rechunk({x.ndim - 1: -1})
    lead = "abcdefgh"[: x.ndim - 2]
    out: da.Array = da.blockwise(
        _chunk_gram,
        lead + "lde",
        x,
        lead + "ld",
        new_axes={"e": x.shape[-1]},
        adjust_chunks={axis: 1 for axis in lead},
        dtype=np.float64,
    )
    if not lead:
        return out
    summed: da.Array = out.sum(axis=tuple(range(len(lead))))
    return summed


def finalize_arrays(stats: Mapping[str, da.Array]) -> dict[str, da.Array]:
    """Lazy decomposition from sufficient statistics (see :func:`statistics_arrays`).

    Returns ``mu``, ``pos``, ``ctx``, ``ss_total``, ``ss_pos``, ``ss_ctx``, ``ss_resid`` and,
    when ``stats`` holds ``m2_hidden``: ``m2_resid`` (the residual's second moment, from the
    balanced-table identity ``m2_hidden = C sum pos pos^T + T sum ctx ctx^T + m2_resid``),
    ``sv_hidden`` and ``sv_resid`` (singular values of the ``CT x D`` matrices of ``h - mu``
    and of the residual, per layer, descending) and ``norm_hidden``, the spectral norm of
    the hidden states as stored (``mu`` included, as the paper's relative norm uses).

    Notes
    -----
    With ``S`` the sum over contexts and positions of ``h`` and ``Q`` the sum of squares::

        mu       = S / (C T)
        pos      = pos_sum / C - mu
        ctx      = ctx_sum / T - mu
        ss_total = Q - C T |mu|^2
        ss_pos   = C sum_t |pos_t|^2
        ss_ctx   = T sum_c |ctx_c|^2
        ss_resid = ss_total - ss_pos - ss_ctx

    ``ss_total`` is a one-pass (uncentred) sum of squares: its relative rounding error is
    about ``1e-16 * Q / ss_total`` in float64, negligible unless ``|mu|`` dwarfs the spread
    by many orders of magnitude. ``ss_pos`` and ``ss_ctx`` are taken from the centred
    vectors, which avoids that cancellation for them.
    """
    pos_sum, ctx_sum, sumsq = stats["pos_sum"], stats["ctx_sum"], stats["sumsq"]
    n_contexts, length = int(ctx_sum.shape[0]), int(pos_sum.shape[0])
    n_cells = n_contexts * length
    mu = pos_sum.sum(axis=0) / n_cells
    pos = pos_sum / n_contexts - mu
    ctx = ctx_sum / length - mu
    out = {
        "mu": mu,
        "pos": pos,
        "ctx": ctx,
        "ss_total": sumsq - n_cells * (mu**2).sum(axis=-1),
        "ss_pos": n_contexts * (pos**2).sum(axis=(0, 2)),
        "ss_ctx": length * (ctx**2).sum(axis=(0, 2)),
    }
    out["ss_resid"] = out["ss_total"] - out["ss_pos"] - out["ss_ctx"]
    if "m2_hidden" in stats:
        m2_hidden = stats["m2_hidden"].rechunk({1: -1, 2: -1})
        m2_pos = n_contexts * gram(pos)
        m2_ctx = length * gram(ctx)
        m2_resid = (m2_hidden - m2_pos - m2_ctx).rechunk({1: -1, 2: -1})
        m2_raw = (m2_hidden + n_cells * gram(mu)).rechunk({1: -1, 2: -1})
        n_sv = int(m2_hidden.shape[-1])
        sv = {
            name: m.map_blocks(
                singular_values, drop_axis=2, chunks=(m.chunks[0], (n_sv,)), dtype=np.float64
            )
            for name, m in (("sv_hidden", m2_hidden), ("sv_resid", m2_resid), ("sv_raw", m2_raw))
        }
        out.update(m2_resid=m2_resid, sv_hidden=sv["sv_hidden"], sv_resid=sv["sv_resid"])
        out["norm_hidden"] = sv["sv_raw"][:, 0]
    return out


def decompose_arrays(h: da.Array, moments: bool = False) -> dict[str, da.Array]:
    """Lazy float64 decomposition of a ``(context, position, layer, dim)`` dask array.

    ``finalize_arrays(statistics_arrays(h, moments))``: compute the outputs together so that
    ``h`` is read once.

    Examples
    --------
    >>> import dask
    >>> import dask.array as da
    >>> import numpy as np
    >>> from posctx.decomposition.kernels import decompose_numpy
    >>> x = np.random.default_rng(0).normal(size=(6, 5, 2, 3)).astype(np.float32)
    >>> out = decompose_arrays(da.from_array(x, chunks=(4, 5, 1, 3)))
    >>> out["ctx"].chunks
    ((4, 2), (1, 1), (3,))
    >>> (got,) = dask.compute(out)
    >>> ref = decompose_numpy(x)
    >>> all(np.allclose(got[k], ref[k]) for k in got)
    True
    """
    return finalize_arrays(statistics_arrays(h, moments))


__all__ = [
    "MOMENT_OUTPUT_NAMES",
    "assemble_statistics",
    "file_chunk_stats",
    "statistics_from_files",
    "OUTPUT_NAMES",
    "STATISTIC_NAMES",
    "decompose_arrays",
    "finalize_arrays",
    "statistics_arrays",
]
