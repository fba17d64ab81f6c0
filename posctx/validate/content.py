"""The checks that read a store's data: finite hidden states, token ids, special tokens.

All three, and the values the ``statistics`` check reads (:mod:`posctx.validate.statistics`),
come from one dask pass (:class:`_ContentScan`): the per-chunk summaries of
:mod:`posctx.validate.kernels`, built into graphs by :mod:`posctx.validate.graph`, are
computed in a single ``dask.compute`` on whatever scheduler is active (threads by default, a
``dask.distributed`` client if one is set), so memory stays at one chunk per worker thread
whatever the size of the store. The checks here combine the summaries and word the findings.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, partial
from typing import Any

import dask.array as da
from dask.base import compute
from dask.delayed import Delayed

from posctx.progress import dask_progress
from posctx.store import Block, is_remote
from posctx.store.location import local_path
from posctx.types import CONTEXT, HIDDEN, LAYER, LAYER_NAME, POSITION, TOKEN_ID
from posctx.validate.graph import hidden_summaries, statistics_summaries, token_summaries
from posctx.validate.kernels import (
    STATISTICS_KEYS,
    Framing,
    HiddenSummary,
    StatisticsSummary,
    TokenSummary,
    combine_hidden,
    combine_statistics,
    combine_tokens,
)
from posctx.validate.report import Check, _plural, _Skip
from posctx.validate.structure import _Store

#: The groups of reads the content checks share: ``hidden`` (``finite``), ``token_id``
#: (``token_ids`` and ``special_tokens``, which read each block once between them) and the
#: per-context statistics with the stored hidden states (``statistics``).
_HIDDEN, _TOKENS, _STATISTICS = "hidden", "tokens", "statistics"
#: The largest relative difference between a context's stored statistics and those of its
#: stored hidden states that counts as equal. A store made on a CPU matches exactly (the same
#: numpy code, :func:`posctx.sums.block_statistics`, computed them); an accelerator sums in
#: float64 in another order, about 1e-16 relative per addition.
STATISTICS_TOLERANCE = 1e-12


def _hidden_array(st: _Store) -> da.Array:
    """``hidden`` as a dask array, read directly from the chunk files if it can be."""
    arr = st.array(HIDDEN)
    if not is_remote(st.path):
        from posctx.store.direct import direct_array

        direct: da.Array | None = direct_array(local_path(st.path) / HIDDEN)
        if direct is not None and direct.shape == arr.shape:
            return direct
    hidden: da.Array = da.from_zarr(arr)
    return hidden


def _plan_hidden(st: _Store, hidden: Callable[[], da.Array] | None = None) -> Delayed:
    """Summaries of every block marked written, one per block and layer chunk.

    Only of the contexts whose hidden states the store keeps (:meth:`_Store.stored_blocks`);
    ``hidden`` gives the dask array to read (default: :func:`_hidden_array`).
    """
    if st.stored_contexts() == 0:
        raise _Skip(f"{st.sample_note()}: the statistics check scans its statistics instead")
    blocks = st.stored_blocks()
    step = int(st.array(HIDDEN).chunks[2])
    return hidden_summaries((hidden or partial(_hidden_array, st))(), blocks, step)


def _plan_statistics(st: _Store, hidden: Callable[[], da.Array] | None = None) -> Delayed:
    """Summaries of the per-context statistics of every block marked written, each compared
    with the statistics of its stored hidden states (one per block).

    ``hidden`` gives the dask array of ``hidden`` to read (default: :func:`_hidden_array`);
    given the one the ``finite`` scan reads, each chunk is read once for both.
    """
    plan = st.statistics_plan()
    if plan is None:
        raise _Skip("the store keeps no statistics")
    arrays = [da.from_zarr(st.statistics_array(name)) for name in STATISTICS_KEYS]
    stored = {b.index: b.size for b in st.stored_blocks()}
    x = (hidden or partial(_hidden_array, st))() if any(stored.values()) else None
    return statistics_summaries(
        arrays, x, st.complete_blocks(), stored, plan.edges, STATISTICS_TOLERANCE
    )


def _vocab_limit(st: _Store) -> int | None:
    vocab = (st.record.get("model") or {}).get("vocab_size")
    return vocab if isinstance(vocab, int) and vocab > 0 else None


def _framing(st: _Store) -> Framing | None:
    """The recorded special-token framing; ``None`` when the record has none."""
    special = st.record.get("special_tokens")
    if not isinstance(special, dict) or "prefix_ids" not in special:
        return None
    prefix = tuple(int(v) for v in special.get("prefix_ids") or [])
    suffix = tuple(int(v) for v in special.get("suffix_ids") or [])
    # Separator ids are text tokens placed between documents, legitimately mid-context.
    separators = {int(v) for v in special.get("separator_ids") or []}
    return Framing(prefix, suffix, tuple(sorted(set(prefix + suffix) - separators)))


def _token_array(st: _Store) -> Any:
    arr = st.array(TOKEN_ID)
    if arr.ndim != 2:
        raise _Skip("`token_id` is not (context, position)")
    return arr


def _plan_tokens(st: _Store) -> Delayed:
    """Summaries of every planned block of ``token_id`` (written for all at creation)."""
    arr = _token_array(st)
    n, length = (int(v) for v in arr.shape)
    blocks = [Block(b.index, b.start, min(b.stop, n)) for b in st.blocks() if b.start < n]
    try:
        framing = _framing(st)
    except Exception:  # a malformed record: the special_tokens check reports it
        framing = None
    if framing is not None and len(framing.prefix) + len(framing.suffix) > length:
        framing = None  # contexts too short to hold the framing: reported without a scan
    return token_summaries(da.from_zarr(arr), blocks, _vocab_limit(st), framing)


class _ContentScan:
    """The data the content checks need, read in one dask pass when a check first asks.

    Parameters
    ----------
    st
        The store.
    scan
        Read ``hidden`` too (the ``finite`` check); ``token_id`` is always read.
    progress
        Show a progress bar for the pass.

    Notes
    -----
    Planning errors (a missing array) belong to the group they were raised for and are
    raised again to the checks of that group. Should the one pass fail, each group is read
    again on its own so that the failure is reported by the checks it belongs to.
    """

    def __init__(self, st: _Store, *, scan: bool, progress: bool) -> None:
        self._st = st
        self._scan = scan
        self._progress = progress
        self._results: dict[str, Any] | None = None

    def _run(self) -> dict[str, Any]:
        # One dask array of hidden for both graphs that read it: they share its read tasks.
        hidden = cache(partial(_hidden_array, self._st))
        plans: dict[str, Callable[[_Store], Delayed]] = {_TOKENS: _plan_tokens}
        if self._scan:
            plans = {
                _HIDDEN: partial(_plan_hidden, hidden=hidden),
                **plans,
                _STATISTICS: partial(_plan_statistics, hidden=hidden),
            }
        results: dict[str, Any] = {}
        lazy: dict[str, Delayed] = {}
        for group, plan in plans.items():
            try:
                lazy[group] = plan(self._st)
            except Exception as exc:  # _Skip included: raised again by the group's checks
                results[group] = exc
        if not lazy:
            return results
        try:
            with dask_progress(self._progress, "validate: scanning"):
                results.update(zip(lazy, compute(*lazy.values()), strict=True))
        except Exception:  # a chunk that cannot be read: find out whose
            for group, value in lazy.items():
                try:
                    (results[group],) = compute(value)
                except Exception as exc:
                    results[group] = exc
        combine: dict[str, Callable[[list[Any]], Any]] = {
            _HIDDEN: combine_hidden,
            _TOKENS: combine_tokens,
            _STATISTICS: combine_statistics,
        }
        return {
            group: value if isinstance(value, Exception) else combine[group](value)
            for group, value in results.items()
        }

    def _get(self, group: str) -> Any:
        if self._results is None:
            self._results = self._run()
        value = self._results[group]
        if isinstance(value, Exception):
            raise value
        return value

    def hidden(self) -> HiddenSummary:
        """NaN/inf in the blocks marked written."""
        summary: HiddenSummary = self._get(_HIDDEN)
        return summary

    def tokens(self) -> TokenSummary:
        """Range and framing of the token ids, one summary for both checks that read them."""
        summary: TokenSummary = self._get(_TOKENS)
        return summary

    @property
    def scan(self) -> bool:
        """Whether the pass reads ``hidden`` and the statistics (not ``--no-scan``)."""
        return self._scan

    def statistics(self) -> StatisticsSummary:
        """The per-context statistics of the marked blocks, against their hidden states."""
        summary: StatisticsSummary = self._get(_STATISTICS)
        return summary


def _check_finite(st: _Store, content: _ContentScan) -> Check:
    blocks = st.stored_blocks()
    n_unmarked = len(st.blocks()) - len(st.complete_blocks())
    found = content.hidden()
    bad_contexts = found.contexts.tolist()
    figures: dict[str, Any] = {
        "values_scanned": found.values,
        "blocks_scanned": len(blocks),
        "blocks_unmarked": n_unmarked,
        "nan": found.nan,
        "inf": found.inf,
        "vectors": found.vectors,
        "blocks": list(found.blocks),
        "contexts": bad_contexts[:100],
    }
    skipped = f"; {_plural(n_unmarked, 'unmarked block')} not scanned" if n_unmarked else ""
    if st.sample_note():
        figures["hidden_contexts"] = st.stored_contexts()
        skipped += f"; {st.sample_note()}: only those are scanned"
    if found.first is None:
        return Check(
            "finite",
            "ok",
            f"all {found.values:,} values of {_plural(len(blocks), 'marked block')} are finite"
            f"{skipped}",
            figures,
        )
    c, t, k = found.first
    figures["first"] = {
        CONTEXT: c,
        POSITION: st.label(POSITION, t),
        LAYER: st.label(LAYER, k),
        LAYER_NAME: st.label(LAYER_NAME, k),
    }
    shown = ", ".join(map(str, bad_contexts[:10]))
    return Check(
        "finite",
        "fail",
        f"{found.nan + found.inf:,} non-finite values ({found.nan:,} NaN, "
        f"{found.inf:,} inf) in {_plural(found.vectors, 'hidden vector')} of contexts "
        f"[{shown}{', ...' if len(bad_contexts) > 10 else ''}], blocks {list(found.blocks)} "
        f"marked written; first at context={c}, position={figures['first'][POSITION]}, "
        f"layer={figures['first'][LAYER]} ({figures['first'][LAYER_NAME]}): their completion "
        f"markers lie; set block_complete[b] = 0 for those blocks (with zarr) and re-run the "
        f"same `posctx extract` command to rewrite them{skipped}",
        figures,
    )


def _check_token_ids(st: _Store, content: _ContentScan) -> Check:
    limit = _vocab_limit(st)
    found = content.tokens()
    n_ids, lo, hi, n_bad = found.ids, found.min, found.max, found.out_of_range
    figures = {"vocab_size": limit, "ids": n_ids, "min": lo, "max": hi, "out_of_range": n_bad}
    allowed = f"[0, {limit})" if limit is not None else "[0, inf)"
    if found.first_out_of_range is not None:
        c, t, value = found.first_out_of_range
        return Check(
            "token_ids",
            "fail",
            f"{n_bad:,} of {n_ids:,} token ids outside {allowed} (the model's vocabulary); "
            f"first at context={c}, position={t}: {value}; the token ids no longer match the "
            "model: re-extract into a new store",
            {**figures, "first": {CONTEXT: c, POSITION: t, "id": value}},
        )
    if limit is None:
        return Check(
            "token_ids",
            "warn",
            f"all {n_ids:,} ids >= 0 (range {lo}..{hi}), but the record has no vocab_size (a store "
            "made by an older posctx): the upper bound was not checked",
            figures,
        )
    return Check("token_ids", "ok", f"all {n_ids:,} ids in {allowed} (range {lo}..{hi})", figures)


def _check_special_tokens(st: _Store, content: _ContentScan) -> Check:
    framing = _framing(st)
    if framing is None:
        return Check(
            "special_tokens",
            "warn",
            "no special_tokens record: the framing of contexts cannot be checked",
        )
    special: dict[str, Any] = st.record["special_tokens"]
    prefix, suffix = list(framing.prefix), list(framing.suffix)
    p, s = len(prefix), len(suffix)
    found = content.tokens()
    length = int(_token_array(st).shape[1])
    if p + s > length and st.blocks():
        return Check(
            "special_tokens",
            "fail",
            f"contexts of {length} tokens cannot hold {p} prefix and {s} suffix ids",
        )
    n_contexts = found.contexts
    tokens = dict(
        zip(
            prefix + suffix,
            (special.get("prefix_tokens") or []) + (special.get("suffix_tokens") or []),
            strict=False,
        )
    )
    mid = [list(m) for m in found.mid_first]
    figures: dict[str, Any] = {
        "prefix_ids": prefix,
        "suffix_ids": suffix,
        "policy": special.get("policy"),
        "bad_prefix_contexts": list(found.bad_prefix_contexts),
        "bad_suffix_contexts": list(found.bad_suffix_contexts),
        "mid_context": found.mid,
        "mid_context_first": mid,
    }
    problems = []
    if found.bad_prefix:
        problems.append(
            f"{found.bad_prefix} of {n_contexts} contexts do not start with "
            f"{prefix} (first: context {found.bad_prefix_contexts[0]})"
        )
    if found.bad_suffix:
        problems.append(
            f"{found.bad_suffix} of {n_contexts} contexts do not end with "
            f"{suffix} (first: context {found.bad_suffix_contexts[0]})"
        )
    if found.mid:
        c, t, value = mid[0]
        problems.append(
            f"{_plural(found.mid, 'prefix/suffix id')} mid-context, first "
            f"{tokens.get(value, value)!r} (id {value}) at context={c}, position={t}: the model "
            "saw a misplaced [CLS]/BOS/[SEP] there"
        )
    if problems:
        return Check(
            "special_tokens", "fail", "; ".join(problems) + "; re-extract into a new store", figures
        )
    frame = " + ".join(
        filter(
            None,
            [
                " ".join(map(str, special.get("prefix_tokens") or prefix)),
                "text",
                " ".join(map(str, special.get("suffix_tokens") or suffix)),
            ],
        )
    )
    return Check(
        "special_tokens",
        "ok",
        f"policy {special.get('policy')!r}: every context is {frame}; no "
        f"{'prefix/suffix id' if framing.forbidden else 'special id (none recorded)'} mid-context",
        figures,
    )
