"""Dask graph of the position/context decomposition.

The graph has one kernel task per input chunk, each calling
:func:`posctx.decomposition.kernels.block_stats`; everything else reads the small per-chunk sums.
So when all outputs are computed together (one ``dask.compute`` or one ``to_zarr``), every
chunk of the hidden states is read and converted to float64 exactly once::

    hidden chunk (i, j, k) --block_stats--> {pos_sum, ctx_sum, sumsq}   one task per chunk
        ctx_sum   (C, L, D)          one task per (context block, layer block): sums the
                                     position blocks' partials
        pos_sum   (n_cblocks, T, L, D) -> .sum(axis=0)      tree reduction over context blocks
        sumsq     (n_cblocks, n_tblocks, L) -> .sum(axis=(0, 1))
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

from posctx.decomposition.kernels import block_stats, combine_sum, take_stat

#: Keys of the dict returned by :func:`decompose_arrays`, in a stable order.
OUTPUT_NAMES = ("mu", "pos", "ctx", "ss_total", "ss_pos", "ss_ctx", "ss_resid")


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


def decompose_arrays(h: da.Array) -> dict[str, da.Array]:
    """Lazy float64 decomposition of a ``(context, position, layer, dim)`` dask array.

    Parameters
    ----------
    h
        Hidden states, shape ``(C, T, L, D)``, any real floating dtype, any chunking (a
        chunked last axis is first rechunked to a single chunk).

    Returns
    -------
    dict of dask.array.Array
        ``mu`` ``(L, D)``, ``pos`` ``(T, L, D)``, ``ctx`` ``(C, L, D)`` and ``ss_total``,
        ``ss_pos``, ``ss_ctx``, ``ss_resid`` ``(L,)``, all float64 and all lazy. ``ctx``
        keeps the context and layer chunking of ``h``; ``pos`` its position and layer
        chunking. Compute them together so that ``h`` is read once.

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
    if h.ndim != 4:
        raise ValueError(f"expected a 4-d (context, position, layer, dim) array, got {h.ndim}-d")
    if not (np.issubdtype(h.dtype, np.floating) or np.issubdtype(h.dtype, np.integer)):
        raise TypeError(f"expected a real numeric array, got dtype {h.dtype}")
    if len(h.chunks[3]) > 1:
        # Per-context and per-position sums need whole vectors; dim is small (<= a few k).
        h = h.rechunk({3: -1})

    n_contexts, length = int(h.shape[0]), int(h.shape[1])
    if n_contexts == 0 or length == 0:
        raise ValueError(f"cannot decompose an empty table of shape {h.shape}")
    c_chunks, t_chunks, l_chunks, d_chunks = h.chunks
    n_cb, n_tb, n_lb = len(c_chunks), len(t_chunks), len(l_chunks)
    token = tokenize(h.name)

    # Chunk: one block_stats task per input chunk -- the only tasks that touch `h`.
    stats_name = f"posctx-block-stats-{token}"
    stats_layer = {
        (stats_name, i, j, k): (block_stats, (h.name, i, j, k, 0))
        for i in range(n_cb)
        for j in range(n_tb)
        for k in range(n_lb)
    }
    stats_graph = _add_layer(h.dask, stats_name, stats_layer, {h.name})

    # Combine, ctx: few position blocks per context block, so one task each is cheap.
    ctx_name = f"posctx-ctx-sum-{token}"
    ctx_layer = {
        (ctx_name, i, k, 0): (
            combine_sum,
            "ctx_sum",
            *[(stats_name, i, j, k) for j in range(n_tb)],
        )
        for i in range(n_cb)
        for k in range(n_lb)
    }
    ctx_sum = da.Array(
        _add_layer(stats_graph, ctx_name, ctx_layer, {stats_name}),
        ctx_name,
        chunks=(c_chunks, l_chunks, d_chunks),
        dtype=np.float64,
    )

    # Combine, pos: one partial per context block, stacked along a new leading axis so that
    # dask's tree reduction bounds how many (T, L, D) partials are ever summed at once.
    pos_part_name = f"posctx-pos-partial-{token}"
    pos_part_layer = {
        (pos_part_name, i, j, k, 0): (take_stat, (stats_name, i, j, k), "pos_sum", 1)
        for i in range(n_cb)
        for j in range(n_tb)
        for k in range(n_lb)
    }
    pos_partials = da.Array(
        _add_layer(stats_graph, pos_part_name, pos_part_layer, {stats_name}),
        pos_part_name,
        chunks=((1,) * n_cb, t_chunks, l_chunks, d_chunks),
        dtype=np.float64,
    )
    pos_sum = pos_partials.sum(axis=0)

    sumsq_part_name = f"posctx-sumsq-partial-{token}"
    sumsq_part_layer = {
        (sumsq_part_name, i, j, k): (take_stat, (stats_name, i, j, k), "sumsq", 2)
        for i in range(n_cb)
        for j in range(n_tb)
        for k in range(n_lb)
    }
    sumsq_partials = da.Array(
        _add_layer(stats_graph, sumsq_part_name, sumsq_part_layer, {stats_name}),
        sumsq_part_name,
        chunks=((1,) * n_cb, (1,) * n_tb, l_chunks),
        dtype=np.float64,
    )
    sumsq = sumsq_partials.sum(axis=(0, 1))

    # Finalize: divide by the counts and centre. All lazy.
    n_cells = n_contexts * length
    mu = pos_sum.sum(axis=0) / n_cells
    pos = pos_sum / n_contexts - mu
    ctx = ctx_sum / length - mu
    mu_sq = (mu**2).sum(axis=-1)
    ss_total = sumsq - n_cells * mu_sq
    ss_pos = n_contexts * (pos**2).sum(axis=(0, 2))
    ss_ctx = length * (ctx**2).sum(axis=(0, 2))
    ss_resid = ss_total - ss_pos - ss_ctx
    return {
        "mu": mu,
        "pos": pos,
        "ctx": ctx,
        "ss_total": ss_total,
        "ss_pos": ss_pos,
        "ss_ctx": ss_ctx,
        "ss_resid": ss_resid,
    }


__all__ = ["OUTPUT_NAMES", "decompose_arrays"]
