"""The decomposition's sufficient statistics from those a store kept during extraction.

A store made with statistics (``posctx extract``, the default) holds, per context, float64
sums over the core positions and the hidden states at the left-out ones, and, over its
blocks, position sums per topic and (with ``--moments``) the core cells' second moment
(:mod:`posctx.store.statistics`). :func:`stored_statistics` turns them into exactly what
:func:`~posctx.decomposition.statistics` computes from the hidden states, for the selections
they can serve; :func:`cannot_serve` says why a selection needs the hidden states instead.
The rest of the decomposition (:func:`~posctx.decomposition.finalize`, writing, updates) is
the same either way.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.delayed import delayed

from posctx.decomposition.api import Selection, statistics_dataset
from posctx.decomposition.graph import statistics_arrays
from posctx.sums import Edges, merge_moments
from posctx.types import (
    CONTEXT,
    EDGE,
    POSITION,
    STAT_CTX_SUM,
    STAT_CTX_SUMSQ,
    STAT_EDGE,
    STAT_TOPIC,
    STATISTICS_ATTR,
    TOPIC,
)

#: The position selections statistics serve: the default (core) one, or every position.
CORE, ALL = "core", "all"


def plan_edges(stats: xr.Dataset) -> Edges:
    """The left-out positions of a store's statistics (:func:`open_statistics`)."""
    info = stats.attrs[STATISTICS_ATTR]
    return Edges(int(info["length"]), int(info["lead"]), int(info["trail"]))


def positions_kind(stats: xr.Dataset, positions: Selection | str) -> str | None:
    """``"core"``, ``"all"`` or ``None`` (a selection the statistics cannot serve).

    ``positions`` is ``"auto"`` (the default selection), ``None`` (all) or label
    selections that happen to name the core or every position.
    """
    if isinstance(positions, str):
        return CORE if positions == "auto" else None
    labels = stats[POSITION].values
    if positions is None:
        return ALL
    chosen = xr.DataArray(labels, dims=POSITION, coords={POSITION: labels}).sel(
        {POSITION: positions}
    )
    values = np.atleast_1d(chosen.values)
    if np.array_equal(values, labels):
        return ALL
    if np.array_equal(values, labels[plan_edges(stats).core]):
        return CORE
    return None


def cannot_serve(
    stats: xr.Dataset,
    *,
    positions: Selection | str = "auto",
    contexts: Selection = None,
    topic: str | None = None,
    moments: bool = False,
) -> str | None:
    """Why the statistics cannot serve this selection (one line), or ``None`` if they can."""
    if positions_kind(stats, positions) is None:
        return (
            "the statistics serve the default positions and all positions, not an arbitrary "
            "position range"
        )
    if contexts is not None:
        return (
            "the statistics keep position sums per topic, not per context, so a context "
            "selection needs the hidden states"
        )
    if moments and "m2" not in stats:
        return "the store's statistics have no second moments (extracted without --moments)"
    if moments and topic is not None:
        return "the second moments are kept over all topics together, not per topic"
    return None


def stored_statistics(
    stats: xr.Dataset,
    *,
    positions: Selection | str = "auto",
    topic: str | None = None,
    moments: bool = False,
) -> xr.Dataset:
    """Lazy sufficient statistics of a selection, from a store's statistics.

    The same variables, dims and record as :func:`~posctx.decomposition.statistics` on the
    hidden states (``pos_sum``, ``ctx_sum``, ``sumsq`` and with ``moments`` ``m2_hidden``),
    with ``source: "statistics"`` in the record. Only additions: the core sums as stored;
    for all positions, plus the left-out positions' stored vectors.

    Parameters
    ----------
    stats
        From :func:`posctx.store.statistics.open_statistics`.
    positions
        ``"auto"`` (the default selection: the core) or ``None`` (all positions); see
        :func:`cannot_serve` for the rest.
    topic
        Only this topic's contexts.
    moments
        Also ``m2_hidden``.

    Examples
    --------
    >>> import tempfile, numpy as np, posctx, posctx.testing
    >>> from posctx.store.statistics import open_statistics
    >>> from posctx.decomposition import finalize
    >>> path = tempfile.mkdtemp() + "/h.zarr"
    >>> _ = posctx.testing.write_large_planted_store(
    ...     path, n_contexts=8, length=6, n_layers=2, n_dims=3, chunk_contexts=4,
    ...     statistics=True)
    >>> from_stats = finalize(stored_statistics(open_statistics(path))).compute()
    >>> hidden = posctx.open_hidden(path)
    >>> read = posctx.decompose(hidden, positions=slice(1, None)).compute()
    >>> bool(np.allclose(from_stats.ctx, read.ctx, rtol=1e-12, atol=1e-12))
    True
    """
    kind = positions_kind(stats, positions)
    if kind is None:
        raise ValueError(f"the statistics cannot serve positions {positions!r}")
    edges = plan_edges(stats)
    rows = slice(None) if kind == ALL else edges.core
    selected = stats
    if topic is not None:
        topics = np.array([str(t) for t in stats[TOPIC].values])
        selected = stats.isel({CONTEXT: np.flatnonzero(topics == topic)})
        pos_sum = stats["pos_sum"].sel({STAT_TOPIC: topic}).data
    else:
        pos_sum = stats["pos_sum"].data.sum(axis=0)
    pos_sum = pos_sum[rows]
    ctx_sum = selected[STAT_CTX_SUM].data
    sumsq = selected[STAT_CTX_SUMSQ].data.sum(axis=0)
    if kind == ALL:
        # The left-out positions' vectors are a small (context, edge, layer, dim) table:
        # the same one-pass statistics as the hidden states', added to the core's.
        edge = statistics_arrays(selected[STAT_EDGE].data, moments=moments)
        ctx_sum = ctx_sum + edge["ctx_sum"]
        sumsq = sumsq + edge["sumsq"]
    arrays: dict[str, Any] = {"pos_sum": pos_sum, "ctx_sum": ctx_sum, "sumsq": sumsq}
    if moments:
        m2 = stats["m2"].data
        if kind == ALL:
            count = float(stats.attrs[STATISTICS_ATTR]["count"])
            n_edge = float(selected.sizes[CONTEXT] * selected.sizes[EDGE])
            edge_mean = edge["pos_sum"].sum(axis=0) / n_edge
            m2 = _merged_m2(count, stats["mean"].data, m2, n_edge, edge_mean, edge["m2_hidden"])
        arrays["m2_hidden"] = m2
    position_labels = stats[POSITION].values[rows]
    coords = selected.coords.assign({POSITION: position_labels})
    coords = coords.drop_vars([c for c in (EDGE, STAT_TOPIC) if c in coords])
    return statistics_dataset(
        arrays,
        coords,
        stats.attrs,
        moments=moments,
        source_store=stats.encoding.get("source"),
        source="statistics",
        kernel="none: sums kept during extraction",
    )


def _merged_m2(
    n_a: float, mean_a: da.Array, m2_a: da.Array, n_b: float, mean_b: da.Array, m2_b: da.Array
) -> da.Array:
    """Lazy :func:`~posctx.sums.merge_moments` of two groups' second moments."""

    def merge(mean_a: Any, m2_a: Any, mean_b: Any, m2_b: Any) -> Any:
        return merge_moments(n_a, mean_a, m2_a, n_b, mean_b, m2_b)[2]

    shape = tuple(int(n) for n in m2_a.shape)
    merged: da.Array = da.from_delayed(
        delayed(merge)(mean_a, m2_a, mean_b, m2_b), shape, dtype=np.float64
    )
    return merged


__all__ = ["ALL", "CORE", "cannot_serve", "plan_edges", "positions_kind", "stored_statistics"]
