"""The checks that read a store's data: finite hidden states, token ids, special tokens.

Each reads one block (and one layer chunk) at a time, so memory stays at one chunk whatever
the size of the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from posctx.store import Block, is_remote
from posctx.store.location import local_path
from posctx.types import CONTEXT, HIDDEN, LAYER, LAYER_NAME, POSITION, TOKEN_ID
from posctx.validate.report import Check, _plural, _Skip
from posctx.validate.structure import _Store


def _hidden_reader(st: _Store) -> Callable[[slice, slice], np.ndarray]:
    """Reads ``hidden[contexts, :, layers]`` as numpy, directly from the chunk files if it can."""
    arr = st.array(HIDDEN)
    if not is_remote(st.path):
        from posctx.store.direct import direct_array

        direct = direct_array(local_path(st.path) / HIDDEN)
        if direct is not None and direct.shape == arr.shape:
            return lambda c, k: np.asarray(direct[c, :, k].compute(scheduler="synchronous"))
    return lambda c, k: np.asarray(arr[c, :, k])


def _chunks(
    st: _Store, blocks: Sequence[Block], progress: bool, what: str
) -> Iterator[tuple[Block, slice, np.ndarray]]:
    """``hidden`` one block and one layer chunk at a time: memory stays at one chunk."""
    from tqdm.auto import tqdm

    arr = st.array(HIDDEN)
    n_layers, step = int(arr.shape[2]), int(arr.chunks[2])
    read = _hidden_reader(st)
    for block in tqdm(blocks, desc=what, unit="block", disable=not progress, dynamic_ncols=True):
        for start in range(0, n_layers, step):
            layers = slice(start, min(start + step, n_layers))
            yield block, layers, read(slice(block.start, block.stop), layers)


def _check_finite(st: _Store, progress: bool) -> Check:
    blocks = st.complete_blocks()
    n_unmarked = len(st.blocks()) - len(blocks)
    counts = {"nan": 0, "inf": 0, "vectors": 0}
    bad_blocks: list[int] = []
    bad_contexts: set[int] = set()
    first: tuple[int, int, int] | None = None
    n_values = 0
    for block, layers, data in _chunks(st, blocks, progress, "finite"):
        n_values += data.size
        finite = np.isfinite(data)
        if finite.all():
            continue
        counts["nan"] += int(np.isnan(data).sum())
        counts["inf"] += int(np.isinf(data).sum())
        bad = ~finite.all(axis=3)  # (context, position, layer) vectors holding a bad value
        counts["vectors"] += int(bad.sum())
        bad_contexts.update((block.start + np.flatnonzero(bad.any(axis=(1, 2)))).tolist())
        if not bad_blocks or bad_blocks[-1] != block.index:
            bad_blocks.append(block.index)
        if first is None:
            c, t, k = (int(v) for v in np.argwhere(bad)[0])
            first = (block.start + c, t, layers.start + k)
    figures: dict[str, Any] = {
        "values_scanned": n_values,
        "blocks_scanned": len(blocks),
        "blocks_unmarked": n_unmarked,
        **counts,
        "blocks": bad_blocks,
        "contexts": sorted(bad_contexts)[:100],
    }
    skipped = f"; {_plural(n_unmarked, 'unmarked block')} not scanned" if n_unmarked else ""
    if first is None:
        return Check(
            "finite",
            "ok",
            f"all {n_values:,} values of {_plural(len(blocks), 'marked block')} are finite{skipped}",
            figures,
        )
    c, t, k = first
    figures["first"] = {
        CONTEXT: c,
        POSITION: st.label(POSITION, t),
        LAYER: st.label(LAYER, k),
        LAYER_NAME: st.label(LAYER_NAME, k),
    }
    shown = ", ".join(map(str, sorted(bad_contexts)[:10]))
    return Check(
        "finite",
        "fail",
        f"{counts['nan'] + counts['inf']:,} non-finite values ({counts['nan']:,} NaN, "
        f"{counts['inf']:,} inf) in {_plural(counts['vectors'], 'hidden vector')} of contexts "
        f"[{shown}{', ...' if len(bad_contexts) > 10 else ''}], blocks {bad_blocks} marked written; "
        f"first at context={c}, position={figures['first'][POSITION]}, "
        f"layer={figures['first'][LAYER]} ({figures['first'][LAYER_NAME]}): their completion "
        f"markers lie; set block_complete[b] = 0 for those blocks (with zarr) and re-run the "
        f"same `posctx extract` command to rewrite them{skipped}",
        figures,
    )


def _token_blocks(st: _Store, progress: bool, what: str) -> Iterator[tuple[Block, np.ndarray]]:
    """``token_id`` one block at a time (token ids are written for every block at creation)."""
    from tqdm.auto import tqdm

    arr = st.array(TOKEN_ID)
    if arr.ndim != 2:
        raise _Skip("`token_id` is not (context, position)")
    for block in tqdm(
        st.blocks(), desc=what, unit="block", disable=not progress, dynamic_ncols=True
    ):
        yield block, np.asarray(arr[block.start : block.stop])


def _check_token_ids(st: _Store, progress: bool) -> Check:
    vocab = (st.record.get("model") or {}).get("vocab_size")
    limit = vocab if isinstance(vocab, int) and vocab > 0 else None
    n_bad, first, lo, hi, n_ids = 0, None, None, None, 0
    for block, ids in _token_blocks(st, progress, "token ids"):
        if ids.size == 0:
            continue
        n_ids += ids.size
        lo = int(ids.min()) if lo is None else min(lo, int(ids.min()))
        hi = int(ids.max()) if hi is None else max(hi, int(ids.max()))
        bad = (ids < 0) | (ids >= limit) if limit is not None else ids < 0
        if bad.any():
            n_bad += int(bad.sum())
            if first is None:
                c, t = (int(v) for v in np.argwhere(bad)[0])
                first = (block.start + c, t, int(ids[c, t]))
    figures = {"vocab_size": limit, "ids": n_ids, "min": lo, "max": hi, "out_of_range": n_bad}
    allowed = f"[0, {limit})" if limit is not None else "[0, inf)"
    if first is not None:
        c, t, value = first
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


def _check_special_tokens(st: _Store, progress: bool) -> Check:
    special = st.record.get("special_tokens")
    if not isinstance(special, dict) or "prefix_ids" not in special:
        return Check(
            "special_tokens",
            "warn",
            "no special_tokens record: the framing of contexts cannot be checked",
        )
    prefix = [int(v) for v in special.get("prefix_ids") or []]
    suffix = [int(v) for v in special.get("suffix_ids") or []]
    # Separator ids are text tokens placed between documents, legitimately mid-context.
    forbidden = sorted(set(prefix + suffix) - {int(v) for v in special.get("separator_ids") or []})
    p, s = len(prefix), len(suffix)
    rows: dict[str, list[int]] = {"prefix": [], "suffix": []}  # contexts framed wrongly
    n_contexts = 0
    mid: list[tuple[int, int, int]] = []
    n_mid = 0
    for block, ids in _token_blocks(st, progress, "special tokens"):
        length = ids.shape[1]
        n_contexts += len(ids)
        if p + s > length:
            return Check(
                "special_tokens",
                "fail",
                f"contexts of {length} tokens cannot hold {p} prefix and {s} suffix ids",
            )
        if p:
            rows["prefix"] += (
                block.start + np.flatnonzero((ids[:, :p] != prefix).any(axis=1))
            ).tolist()
        if s:
            rows["suffix"] += (
                block.start + np.flatnonzero((ids[:, length - s :] != suffix).any(axis=1))
            ).tolist()
        if forbidden:
            hits = np.argwhere(np.isin(ids[:, p : length - s], forbidden))
            n_mid += len(hits)
            for c, t in hits[: max(0, 10 - len(mid))].tolist():  # the first ten, as examples
                mid.append((block.start + c, p + t, int(ids[c, p + t])))
    tokens = dict(
        zip(
            prefix + suffix,
            (special.get("prefix_tokens") or []) + (special.get("suffix_tokens") or []),
            strict=False,
        )
    )
    figures: dict[str, Any] = {
        "prefix_ids": prefix,
        "suffix_ids": suffix,
        "policy": special.get("policy"),
        "bad_prefix_contexts": rows["prefix"][:100],
        "bad_suffix_contexts": rows["suffix"][:100],
        "mid_context": n_mid,
        "mid_context_first": [list(m) for m in mid],
    }
    problems = []
    if rows["prefix"]:
        problems.append(
            f"{len(rows['prefix'])} of {n_contexts} contexts do not start with "
            f"{prefix} (first: context {rows['prefix'][0]})"
        )
    if rows["suffix"]:
        problems.append(
            f"{len(rows['suffix'])} of {n_contexts} contexts do not end with "
            f"{suffix} (first: context {rows['suffix'][0]})"
        )
    if n_mid:
        c, t, value = mid[0]
        problems.append(
            f"{_plural(n_mid, 'prefix/suffix id')} mid-context, first {tokens.get(value, value)!r} (id "
            f"{value}) at context={c}, position={t}: the model saw a misplaced "
            "[CLS]/BOS/[SEP] there"
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
        f"{'prefix/suffix id' if forbidden else 'special id (none recorded)'} mid-context",
        figures,
    )
