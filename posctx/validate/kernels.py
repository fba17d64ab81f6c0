"""Per-chunk numpy summaries of the content checks, and how they combine.

The bottom of the three layers of the ``finite``, ``token_ids`` and ``special_tokens`` checks
(numpy kernels -> :mod:`posctx.validate.graph` -> :mod:`posctx.validate.content`); it
imports neither dask nor zarr. Each check is declared as chunk -> combine:

* chunk: :func:`hidden_chunk_summary` turns one chunk of ``hidden`` (one store block, one
  layer chunk) into a :class:`HiddenSummary`; :func:`token_chunk_summary` turns one block of
  ``token_id`` into a :class:`TokenSummary`. Both are small whatever the chunk's size.
* combine: :func:`combine_hidden` and :func:`combine_tokens` fold summaries, given in store
  order, into one summary of the same kind: counts add up, the first finding stays first.

Every index a summary holds is absolute (a context of the store, a layer index of the array),
so summaries combine without knowing where their chunks lay.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

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


__all__ = [
    "MAX_EXAMPLES",
    "MAX_LISTED",
    "Framing",
    "HiddenSummary",
    "TokenSummary",
    "combine_hidden",
    "combine_tokens",
    "hidden_chunk_summary",
    "token_chunk_summary",
]
