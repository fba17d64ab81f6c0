"""Per-chunk numpy summaries of the content checks, and how they combine.

The bottom of the three layers of the ``finite``, ``token_ids``, ``special_tokens`` and
``statistics`` checks (numpy kernels -> :mod:`posctx.validate.graph` ->
:mod:`posctx.validate.content`); it imports neither dask nor zarr. Each check is declared as
chunk -> combine:

* chunk: :func:`hidden_chunk_summary` turns one chunk of ``hidden`` (one store block, one
  layer chunk) into a :class:`HiddenSummary`; :func:`token_chunk_summary` turns one block of
  ``token_id`` into a :class:`TokenSummary`; :func:`statistics_chunk_summary` turns one
  block's per-context statistics, and its stored hidden states, into a
  :class:`StatisticsSummary`. All are small whatever the chunk's size.
* combine: :func:`combine_hidden`, :func:`combine_tokens` and :func:`combine_statistics` fold
  summaries, given in store order, into one summary of the same kind: counts add up, the
  first finding stays first.

Every index a summary holds is absolute (a context of the store, a layer index of the array),
so summaries combine without knowing where their chunks lay.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from posctx.sums import Edges, block_statistics
from posctx.types import STAT_CTX_SUM, STAT_CTX_SUMSQ, STAT_EDGE

#: How many bad contexts a summary lists per framing problem (the check's figures show 100).
MAX_LISTED = 100
#: How many mid-context special ids a summary gives as examples.
MAX_EXAMPLES = 10


def _no_contexts() -> npt.NDArray[np.int64]:
    return np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class HiddenSummary:
    """NaN/inf found in some chunks of ``hidden``.

    Attributes
    ----------
    values
        Values scanned.
    nan, inf
        NaN and infinite values found.
    vectors
        Hidden vectors (one ``(context, position, layer)``) holding at least one of them.
    blocks
        Store blocks holding one, ascending.
    contexts
        Contexts holding one, ascending, unique.
    first
        The first bad ``(context, position, layer)``: in the first bad chunk in store order
        (block, then layer chunk), the first in C order.
    """

    values: int = 0
    nan: int = 0
    inf: int = 0
    vectors: int = 0
    blocks: tuple[int, ...] = ()
    contexts: npt.NDArray[np.int64] = field(default_factory=_no_contexts)
    first: tuple[int, int, int] | None = None


def hidden_chunk_summary(
    chunk: npt.ArrayLike, block: int, context_start: int, layer_start: int
) -> HiddenSummary:
    """The NaN/inf of one ``(context, position, layer, dim)`` chunk of hidden states.

    Parameters
    ----------
    chunk
        The chunk; any floating dtype.
    block
        The store block it belongs to.
    context_start, layer_start
        The store's indices of its first context and first layer.

    Returns
    -------
    HiddenSummary

    Examples
    --------
    >>> x = np.ones((2, 3, 2, 4), dtype=np.float32)
    >>> x[1, 2, 0, 3] = np.nan
    >>> x[1, 0, 1, :] = np.inf
    >>> s = hidden_chunk_summary(x, block=5, context_start=10, layer_start=2)
    >>> (s.values, s.nan, s.inf, s.vectors, s.blocks, s.contexts.tolist(), s.first)
    (48, 1, 4, 2, (5,), [11], (11, 0, 3))
    """
    data = np.asarray(chunk)
    finite = np.isfinite(data)
    if finite.all():
        return HiddenSummary(values=int(data.size))
    bad = ~finite.all(axis=3)  # (context, position, layer) vectors holding a bad value
    c, t, k = (int(v) for v in np.argwhere(bad)[0])
    return HiddenSummary(
        values=int(data.size),
        nan=int(np.isnan(data).sum()),
        inf=int(np.isinf(data).sum()),
        vectors=int(bad.sum()),
        blocks=(block,),
        contexts=(context_start + np.flatnonzero(bad.any(axis=(1, 2)))).astype(np.int64),
        first=(context_start + c, t, layer_start + k),
    )


def combine_hidden(summaries: Iterable[HiddenSummary]) -> HiddenSummary:
    """One summary of ``summaries``, given in store order (block, then layer chunk).

    Examples
    --------
    >>> a = HiddenSummary(values=8, nan=1, vectors=1, blocks=(0,), contexts=np.array([3]),
    ...                   first=(3, 0, 1))
    >>> b = HiddenSummary(values=8, inf=2, vectors=1, blocks=(0,), contexts=np.array([1, 3]),
    ...                   first=(1, 2, 0))
    >>> s = combine_hidden([HiddenSummary(values=8), a, b])
    >>> (s.values, s.nan, s.inf, s.vectors, s.blocks, s.contexts.tolist(), s.first)
    (24, 1, 2, 2, (0,), [1, 3], (3, 0, 1))
    """
    parts = list(summaries)
    return HiddenSummary(
        values=sum(s.values for s in parts),
        nan=sum(s.nan for s in parts),
        inf=sum(s.inf for s in parts),
        vectors=sum(s.vectors for s in parts),
        blocks=tuple(sorted({b for s in parts for b in s.blocks})),
        contexts=np.unique(np.concatenate([_no_contexts(), *(s.contexts for s in parts)])),
        first=next((s.first for s in parts if s.first is not None), None),
    )


@dataclass(frozen=True)
class Framing:
    """The special-token framing every context must have.

    Attributes
    ----------
    prefix, suffix
        Ids every context starts and ends with.
    forbidden
        Ids that must not appear between prefix and suffix.
    """

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    forbidden: tuple[int, ...]


@dataclass(frozen=True)
class TokenSummary:
    """Token ids of some contexts: their range, and how they are framed.

    Attributes
    ----------
    ids
        Token ids scanned.
    min, max
        Their range; ``None`` when none was scanned.
    out_of_range
        Ids below 0 or at least the vocabulary size.
    first_out_of_range
        The first of them as ``(context, position, id)``, in store order.
    contexts
        Contexts scanned.
    bad_prefix, bad_suffix
        Contexts that do not start with the prefix, do not end with the suffix.
    bad_prefix_contexts, bad_suffix_contexts
        The first :data:`MAX_LISTED` of them.
    mid
        Forbidden ids found between prefix and suffix.
    mid_first
        The first :data:`MAX_EXAMPLES` of them as ``(context, position, id)``.
    """

    ids: int = 0
    min: int | None = None
    max: int | None = None
    out_of_range: int = 0
    first_out_of_range: tuple[int, int, int] | None = None
    contexts: int = 0
    bad_prefix: int = 0
    bad_prefix_contexts: tuple[int, ...] = ()
    bad_suffix: int = 0
    bad_suffix_contexts: tuple[int, ...] = ()
    mid: int = 0
    mid_first: tuple[tuple[int, int, int], ...] = ()


def token_chunk_summary(
    ids: npt.ArrayLike, context_start: int, limit: int | None, framing: Framing | None
) -> TokenSummary:
    """Range and framing of one ``(context, position)`` block of token ids.

    Parameters
    ----------
    ids
        The token ids of whole contexts.
    context_start
        The store's index of its first context.
    limit
        The vocabulary size: ids must lie in ``[0, limit)``; ``None`` checks ``>= 0`` only.
    framing
        The framing to check; ``None`` checks none. ``len(prefix) + len(suffix)`` must not
        exceed the context length.

    Returns
    -------
    TokenSummary

    Examples
    --------
    >>> ids = np.array([[101, 5, 6, 102], [101, 101, 7, 9]])
    >>> s = token_chunk_summary(ids, 4, limit=100, framing=Framing((101,), (102,), (101, 102)))
    >>> (s.min, s.max, s.out_of_range, s.first_out_of_range)
    (5, 102, 4, (4, 0, 101))
    >>> (s.bad_prefix, s.bad_suffix_contexts, s.mid, s.mid_first)
    (0, (5,), 1, ((5, 1, 101),))
    """
    x = np.asarray(ids)
    n_contexts, length = (int(n) for n in x.shape)
    out: dict[str, Any] = {"ids": int(x.size), "contexts": n_contexts}
    if x.size:
        out["min"], out["max"] = int(x.min()), int(x.max())
        bad = (x < 0) | (x >= limit) if limit is not None else x < 0
        if bad.any():
            c, t = (int(v) for v in np.argwhere(bad)[0])
            out["out_of_range"] = int(bad.sum())
            out["first_out_of_range"] = (context_start + c, t, int(x[c, t]))
    if framing is not None:
        p, s = len(framing.prefix), len(framing.suffix)
        for name, width, part, expected in (
            ("prefix", p, x[:, :p], framing.prefix),
            ("suffix", s, x[:, length - s :], framing.suffix),
        ):
            if width:
                rows = np.flatnonzero((part != np.asarray(expected)).any(axis=1))
                out[f"bad_{name}"] = len(rows)
                out[f"bad_{name}_contexts"] = tuple((context_start + rows[:MAX_LISTED]).tolist())
        if framing.forbidden:
            hits = np.argwhere(np.isin(x[:, p : length - s], framing.forbidden))
            out["mid"] = len(hits)
            out["mid_first"] = tuple(
                (context_start + c, p + t, int(x[c, p + t]))
                for c, t in hits[:MAX_EXAMPLES].tolist()
            )
    return TokenSummary(**out)


def combine_tokens(summaries: Sequence[TokenSummary]) -> TokenSummary:
    """One summary of ``summaries``, given in store order.

    Examples
    --------
    >>> a = TokenSummary(ids=4, min=3, max=9, contexts=1, bad_suffix=1, bad_suffix_contexts=(0,))
    >>> b = TokenSummary(ids=4, min=1, max=5, contexts=1, out_of_range=1,
    ...                  first_out_of_range=(1, 2, -1))
    >>> s = combine_tokens([a, TokenSummary(), b])
    >>> (s.ids, s.min, s.max, s.first_out_of_range, s.contexts, s.bad_suffix_contexts)
    (8, 1, 9, (1, 2, -1), 2, (0,))
    """
    lows = [s.min for s in summaries if s.min is not None]
    highs = [s.max for s in summaries if s.max is not None]
    return TokenSummary(
        ids=sum(s.ids for s in summaries),
        min=min(lows) if lows else None,
        max=max(highs) if highs else None,
        out_of_range=sum(s.out_of_range for s in summaries),
        first_out_of_range=next(
            (s.first_out_of_range for s in summaries if s.first_out_of_range is not None), None
        ),
        contexts=sum(s.contexts for s in summaries),
        bad_prefix=sum(s.bad_prefix for s in summaries),
        bad_prefix_contexts=tuple(c for s in summaries for c in s.bad_prefix_contexts)[:MAX_LISTED],
        bad_suffix=sum(s.bad_suffix for s in summaries),
        bad_suffix_contexts=tuple(c for s in summaries for c in s.bad_suffix_contexts)[:MAX_LISTED],
        mid=sum(s.mid for s in summaries),
        mid_first=tuple(m for s in summaries for m in s.mid_first)[:MAX_EXAMPLES],
    )


#: The per-context statistics a store keeps, by array name, with the key
#: :func:`posctx.sums.block_statistics` gives each.
STATISTICS_KEYS = {STAT_CTX_SUM: "ctx_sum", STAT_CTX_SUMSQ: "ctx_sumsq", STAT_EDGE: "edge"}


@dataclass(frozen=True, eq=False)
class StatisticsSummary:
    """The per-context statistics of some blocks: finite, and equal to their hidden states'.

    Attributes
    ----------
    values
        Values of the per-context statistics read.
    contexts
        Contexts whose statistics were read.
    nonfinite_blocks
        Blocks holding a context whose statistics are not all finite (NaN: never written).
    nonfinite_contexts
        Those contexts, ascending.
    first_nonfinite
        The first of them as ``(context, array name)``, in store order.
    compared
        Contexts whose statistics were compared with those of their stored hidden states.
    max_abs, max_rel
        The largest absolute difference, and the largest relative one (per context and array:
        ``max |recomputed - stored| / max |stored|``), over the compared contexts.
    worst
        Where ``max_rel`` is, as ``(context, array name)``; ``None`` when nothing differs.
    mismatched_blocks, mismatched_contexts
        Blocks and contexts whose relative difference exceeds the tolerance.
    inexact
        Contexts that differ within the tolerance (not bit for bit).
    not_compared
        Contexts not compared: their stored hidden states are not finite (the ``finite``
        check reports them).
    """

    values: int = 0
    contexts: int = 0
    nonfinite_blocks: tuple[int, ...] = ()
    nonfinite_contexts: npt.NDArray[np.int64] = field(default_factory=_no_contexts)
    first_nonfinite: tuple[int, str] | None = None
    compared: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst: tuple[int, str] | None = None
    mismatched_blocks: tuple[int, ...] = ()
    mismatched_contexts: npt.NDArray[np.int64] = field(default_factory=_no_contexts)
    inexact: int = 0
    not_compared: npt.NDArray[np.int64] = field(default_factory=_no_contexts)


def _context_axes(x: np.ndarray) -> tuple[int, ...]:
    return tuple(range(1, x.ndim))


def statistics_chunk_summary(
    ctx_sum: npt.ArrayLike,
    ctx_sumsq: npt.ArrayLike,
    edge: npt.ArrayLike,
    hidden: npt.ArrayLike | None,
    block: int,
    context_start: int,
    edges: Edges,
    tolerance: float,
) -> StatisticsSummary:
    """One block's per-context statistics: finite, and equal to those of its hidden states.

    Parameters
    ----------
    ctx_sum, ctx_sumsq, edge
        The block's stored ``stat_ctx_sum`` ``(c, L, D)``, ``stat_ctx_sumsq`` ``(c, L)`` and
        ``stat_edge`` ``(c, E, L, D)``.
    hidden
        The stored hidden states ``(k, T, L, D)`` of the block's first ``k <= c`` contexts
        (all layers: the sums are recomputed as extraction computed them), or ``None``.
    block
        The store block.
    context_start
        The store's index of the block's first context.
    edges
        The left-out positions of the store's statistics plan.
    tolerance
        The largest relative difference that still counts as equal.

    Returns
    -------
    StatisticsSummary

    Examples
    --------
    >>> from posctx.sums import Edges, block_statistics
    >>> x = np.arange(3 * 4 * 1 * 2, dtype=np.float32).reshape(3, 4, 1, 2)
    >>> ref = block_statistics(x, Edges(4), [0, 0, 0], 1)
    >>> ref["ctx_sum"][2, 0, 1] += 1.0  # context 2's sum is off
    >>> ref["ctx_sumsq"][1] = np.nan  # context 1's was never written
    >>> s = statistics_chunk_summary(ref["ctx_sum"], ref["ctx_sumsq"], ref["edge"], x[:3],
    ...                              block=4, context_start=8, edges=Edges(4), tolerance=1e-12)
    >>> s.nonfinite_contexts.tolist(), s.first_nonfinite, s.compared
    ([9], (9, 'stat_ctx_sumsq'), 2)
    >>> s.mismatched_contexts.tolist(), s.mismatched_blocks, s.worst, round(s.max_rel, 4)
    ([10], (4,), (10, 'stat_ctx_sum'), 0.0156)
    """
    stored = {
        STAT_CTX_SUM: np.asarray(ctx_sum),
        STAT_CTX_SUMSQ: np.asarray(ctx_sumsq),
        STAT_EDGE: np.asarray(edge),
    }
    c = int(stored[STAT_CTX_SUM].shape[0])
    finite = np.ones(c, dtype=bool)
    first: tuple[int, str] | None = None
    for name, values in stored.items():
        ok = np.isfinite(values).all(axis=_context_axes(values))
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            if first is None or row < first[0] - context_start:
                first = (context_start + row, name)
        finite &= ok
    bad = np.flatnonzero(~finite)
    out: dict[str, Any] = {
        "values": int(sum(v.size for v in stored.values())),
        "contexts": c,
        "nonfinite_blocks": (block,) if bad.size else (),
        "nonfinite_contexts": (context_start + bad).astype(np.int64),
        "first_nonfinite": first,
    }
    x = None if hidden is None else np.asarray(hidden)
    if x is None or not len(x):
        return StatisticsSummary(**out)
    k = int(x.shape[0])
    finite_hidden = np.isfinite(x).all(axis=_context_axes(x))
    rows = np.flatnonzero(finite_hidden & finite[:k])
    out["not_compared"] = (context_start + np.flatnonzero(~finite_hidden)).astype(np.int64)
    out["compared"] = int(rows.size)
    if not rows.size:
        return StatisticsSummary(**out)
    fresh = block_statistics(x[rows], edges, np.zeros(rows.size, dtype=np.intp), 1)
    rel = np.zeros(rows.size)
    worst_name = np.full(rows.size, STAT_CTX_SUM, dtype=object)
    max_abs = 0.0
    for name, key in STATISTICS_KEYS.items():
        want = stored[name][rows].astype(np.float64)
        got = np.asarray(fresh[key], dtype=np.float64)
        axes = _context_axes(want)
        diff = np.abs(got - want).max(axis=axes, initial=0.0)
        scale = np.abs(want).max(axis=axes, initial=0.0)
        r = diff / np.maximum(scale, np.finfo(np.float64).tiny)
        worst_name[r > rel] = name
        rel = np.maximum(rel, r)
        max_abs = max(max_abs, float(diff.max(initial=0.0)))
    high = np.flatnonzero(rel > tolerance)
    top = int(rel.argmax())
    out.update(
        max_abs=max_abs,
        max_rel=float(rel[top]),
        worst=(context_start + int(rows[top]), str(worst_name[top])) if rel[top] > 0 else None,
        mismatched_blocks=(block,) if high.size else (),
        mismatched_contexts=(context_start + rows[high]).astype(np.int64),
        inexact=int(np.count_nonzero((rel > 0) & (rel <= tolerance))),
    )
    return StatisticsSummary(**out)


def combine_statistics(summaries: Sequence[StatisticsSummary]) -> StatisticsSummary:
    """One summary of ``summaries``, given in store order.

    Examples
    --------
    >>> a = StatisticsSummary(values=10, contexts=2, compared=2, max_rel=1e-15, max_abs=1e-14,
    ...                       worst=(1, "stat_ctx_sum"), inexact=1)
    >>> b = StatisticsSummary(values=10, contexts=2, nonfinite_blocks=(3,),
    ...                       nonfinite_contexts=np.array([7]), first_nonfinite=(7, "stat_edge"))
    >>> s = combine_statistics([a, b])
    >>> (s.values, s.contexts, s.compared, s.max_rel, s.worst, s.inexact)
    (20, 4, 2, 1e-15, (1, 'stat_ctx_sum'), 1)
    >>> s.nonfinite_blocks, s.nonfinite_contexts.tolist(), s.first_nonfinite
    ((3,), [7], (7, 'stat_edge'))
    """
    parts = list(summaries)
    worst = max(parts, key=lambda s: s.max_rel, default=StatisticsSummary())

    def joined(name: str) -> npt.NDArray[np.int64]:
        return np.unique(np.concatenate([_no_contexts(), *(getattr(s, name) for s in parts)]))

    return StatisticsSummary(
        values=sum(s.values for s in parts),
        contexts=sum(s.contexts for s in parts),
        nonfinite_blocks=tuple(sorted({b for s in parts for b in s.nonfinite_blocks})),
        nonfinite_contexts=joined("nonfinite_contexts"),
        first_nonfinite=next(
            (s.first_nonfinite for s in parts if s.first_nonfinite is not None), None
        ),
        compared=sum(s.compared for s in parts),
        max_abs=max((s.max_abs for s in parts), default=0.0),
        max_rel=worst.max_rel,
        worst=worst.worst,
        mismatched_blocks=tuple(sorted({b for s in parts for b in s.mismatched_blocks})),
        mismatched_contexts=joined("mismatched_contexts"),
        inexact=sum(s.inexact for s in parts),
        not_compared=joined("not_compared"),
    )


__all__ = [
    "MAX_EXAMPLES",
    "MAX_LISTED",
    "STATISTICS_KEYS",
    "Framing",
    "HiddenSummary",
    "StatisticsSummary",
    "TokenSummary",
    "combine_hidden",
    "combine_statistics",
    "combine_tokens",
    "hidden_chunk_summary",
    "statistics_chunk_summary",
    "token_chunk_summary",
]
