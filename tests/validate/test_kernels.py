"""posctx.validate.kernels: per-chunk summaries, and their combination, against brute force."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from posctx.sums import Edges, block_statistics
from posctx.validate.kernels import (
    MAX_EXAMPLES,
    MAX_LISTED,
    Framing,
    HiddenSummary,
    TokenSummary,
    combine_hidden,
    combine_statistics,
    combine_tokens,
    hidden_chunk_summary,
    statistics_chunk_summary,
    token_chunk_summary,
)

# --- brute force ------------------------------------------------------------------------------


def _edges(sizes: list[int]) -> list[tuple[int, int]]:
    starts = np.cumsum([0, *sizes[:-1]])
    return [(int(a), int(a + n)) for a, n in zip(starts, sizes, strict=True)]


def _fields(s: HiddenSummary) -> tuple[Any, ...]:
    return (s.values, s.nan, s.inf, s.vectors, s.blocks, s.contexts.tolist(), s.first)


def _hidden_by_loops(
    x: np.ndarray, blocks: list[tuple[int, int]], layer_chunks: list[tuple[int, int]]
) -> tuple[Any, ...]:
    """What the combined summary must say, by looping over every value in store order."""
    nan = inf = vectors = 0
    bad_blocks: set[int] = set()
    bad_contexts: set[int] = set()
    first = None
    for b, (c0, c1) in enumerate(blocks):
        for l0, l1 in layer_chunks:
            for c in range(c0, c1):
                for t in range(x.shape[1]):
                    for k in range(l0, l1):
                        vector = x[c, t, k]
                        nan += int(np.isnan(vector).sum())
                        inf += int(np.isinf(vector).sum())
                        if not np.isfinite(vector).all():
                            vectors += 1
                            bad_blocks.add(b)
                            bad_contexts.add(c)
                            first = first or (c, t, k)
    return (x.size, nan, inf, vectors, tuple(sorted(bad_blocks)), sorted(bad_contexts), first)


def _hidden_by_chunks(
    x: np.ndarray, blocks: list[tuple[int, int]], layer_chunks: list[tuple[int, int]]
) -> list[HiddenSummary]:
    return [
        hidden_chunk_summary(x[c0:c1, :, l0:l1], block=b, context_start=c0, layer_start=l0)
        for b, (c0, c1) in enumerate(blocks)
        for l0, l1 in layer_chunks
    ]


@st.composite
def _hidden_case(draw: st.DrawFn) -> tuple[np.ndarray, list[int], list[int]]:
    block_sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    layer_sizes = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    length, dims = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    shape = (sum(block_sizes), length, sum(layer_sizes), dims)
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).astype(draw(st.sampled_from(["float16", "float32", "float64"])))
    kind = rng.random(shape)
    x[kind < 0.04] = np.nan
    x[(kind >= 0.04) & (kind < 0.06)] = np.inf
    x[(kind >= 0.06) & (kind < 0.07)] = -np.inf
    return x, block_sizes, layer_sizes


@given(_hidden_case())
def test_hidden_summaries_combine_to_brute_force(
    case: tuple[np.ndarray, list[int], list[int]],
) -> None:
    x, block_sizes, layer_sizes = case
    blocks, layer_chunks = _edges(block_sizes), _edges(layer_sizes)
    parts = _hidden_by_chunks(x, blocks, layer_chunks)
    combined = combine_hidden(parts)
    assert _fields(combined) == _hidden_by_loops(x, blocks, layer_chunks)
    assert combined.contexts.dtype == np.int64
    # Folding in two halves gives the same: the combination is associative.
    half = len(parts) // 2
    assert _fields(
        combine_hidden([combine_hidden(parts[:half]), combine_hidden(parts[half:])])
    ) == (_fields(combined))


def test_a_finite_chunk_counts_its_values_only() -> None:
    s = hidden_chunk_summary(np.zeros((2, 3, 4, 5), dtype=np.float16), 7, 100, 2)
    assert _fields(s) == (120, 0, 0, 0, (), [], None)
    assert _fields(combine_hidden([])) == (0, 0, 0, 0, (), [], None)


def test_a_chunks_indices_are_made_absolute() -> None:
    x = np.zeros((3, 2, 2, 2))
    x[2, 1, 0, 1] = np.nan
    x[0, 0, 1, 0] = -np.inf
    s = hidden_chunk_summary(x, block=4, context_start=16, layer_start=6)
    assert _fields(s) == (24, 1, 1, 2, (4,), [16, 18], (16, 0, 7))


def test_the_first_finding_is_in_store_order_not_the_smallest_index() -> None:
    """Block by block, then layer chunk by layer chunk: what comes first is kept first."""
    late = HiddenSummary(
        values=1, nan=1, vectors=1, blocks=(3,), contexts=np.array([12]), first=(12, 0, 0)
    )
    early = HiddenSummary(
        values=1, inf=1, vectors=1, blocks=(1,), contexts=np.array([5]), first=(5, 2, 4)
    )
    s = combine_hidden([HiddenSummary(values=2), late, early])
    assert _fields(s) == (4, 1, 1, 2, (1, 3), [5, 12], (12, 0, 0))


# --- token ids --------------------------------------------------------------------------------


def _tokens_by_loops(x: np.ndarray, limit: int | None, framing: Framing | None) -> dict[str, Any]:
    """The combined token summary's fields, by looping over contexts and positions."""
    n, length = x.shape
    values = [int(v) for v in x.ravel()]
    out: dict[str, Any] = {
        "ids": x.size,
        "min": min(values) if values else None,
        "max": max(values) if values else None,
        "contexts": n,
    }
    bad = [
        (c, t, int(x[c, t]))
        for c in range(n)
        for t in range(length)
        if x[c, t] < 0 or (limit is not None and x[c, t] >= limit)
    ]
    out["out_of_range"], out["first_out_of_range"] = len(bad), (bad[0] if bad else None)
    prefix_rows: list[int] = []
    suffix_rows: list[int] = []
    mid: list[tuple[int, int, int]] = []
    if framing is not None:
        p, s = len(framing.prefix), len(framing.suffix)
        for c in range(n):
            row = [int(v) for v in x[c]]
            if p and tuple(row[:p]) != framing.prefix:
                prefix_rows.append(c)
            if s and tuple(row[length - s :]) != framing.suffix:
                suffix_rows.append(c)
            mid += [(c, t, row[t]) for t in range(p, length - s) if row[t] in framing.forbidden]
    out.update(
        bad_prefix=len(prefix_rows),
        bad_prefix_contexts=tuple(prefix_rows[:MAX_LISTED]),
        bad_suffix=len(suffix_rows),
        bad_suffix_contexts=tuple(suffix_rows[:MAX_LISTED]),
        mid=len(mid),
        mid_first=tuple(mid[:MAX_EXAMPLES]),
    )
    return out


def _as_dict(s: TokenSummary) -> dict[str, Any]:
    return {name: getattr(s, name) for name in TokenSummary.__dataclass_fields__}


def _tokens_by_blocks(
    x: np.ndarray, sizes: list[int], limit: int | None, framing: Framing | None
) -> TokenSummary:
    return combine_tokens(
        [token_chunk_summary(x[c0:c1], c0, limit, framing) for c0, c1 in _edges(sizes)]
    )


FRAMINGS = [
    None,
    Framing((1,), (2,), (1, 2)),  # [CLS] ... [SEP]
    Framing((1, 3), (), (1,)),  # two prefix ids, one of them a text token too
    Framing((), (2,), ()),  # a suffix only, nothing forbidden
    Framing((), (), (1,)),  # no framing, an id forbidden everywhere
]


@given(
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=5),
    length=st.integers(3, 6),
    limit=st.sampled_from([None, 4, 9]),
    framing=st.sampled_from(FRAMINGS),
    seed=st.integers(0, 2**16),
)
def test_token_summaries_combine_to_brute_force(
    sizes: list[int], length: int, limit: int | None, framing: Framing | None, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.choice(np.array([-1, 0, 1, 2, 3, 5, 9]), size=(sum(sizes), length))
    x[rng.random(len(x)) < 0.6, 0] = 1  # most contexts framed, some not
    x[rng.random(len(x)) < 0.6, -1] = 2
    assert _as_dict(_tokens_by_blocks(x, sizes, limit, framing)) == _tokens_by_loops(
        x, limit, framing
    )


def test_long_lists_are_cut_but_counted_in_full() -> None:
    x = np.full((150, 4), 7)
    x[:, 1] = 1  # a forbidden id mid-context in every context; none starts with 1
    s = _tokens_by_blocks(x, [40, 60, 50], 100, Framing((1,), (), (1,)))
    assert (s.bad_prefix, s.mid) == (150, 150)
    assert s.bad_prefix_contexts == tuple(range(MAX_LISTED))
    assert s.mid_first == tuple((c, 1, 1) for c in range(MAX_EXAMPLES))
    assert _as_dict(s) == _tokens_by_loops(x, 100, Framing((1,), (), (1,)))


def test_no_ids_give_no_range() -> None:
    empty = token_chunk_summary(np.zeros((0, 4), dtype=np.int32), 8, 10, Framing((1,), (2,), ()))
    assert empty == TokenSummary()
    assert combine_tokens([]) == TokenSummary()
    one = token_chunk_summary(np.array([[5, 6]]), 3, None, None)
    assert combine_tokens([empty, one]) == TokenSummary(ids=2, min=5, max=6, contexts=1)
    negative = token_chunk_summary(np.array([[5, -6]]), 3, None, None)  # no limit: >= 0 only
    assert (negative.out_of_range, negative.first_out_of_range) == (1, (3, 1, -6))


# --- statistics ---------------------------------------------------------------------------------


def _statistics(x: np.ndarray, edges: Edges) -> dict[str, np.ndarray]:
    stats = block_statistics(x, edges, np.zeros(len(x), np.intp), 1)
    return {k: stats[k] for k in ("ctx_sum", "ctx_sumsq", "edge")}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_statistics_of_stored_hidden_states_match_exactly(dtype: str) -> None:
    edges = Edges(5, 1, 1)
    x = np.random.default_rng(2).normal(size=(4, 5, 3, 6)).astype(dtype)
    stored = _statistics(x, edges)
    s = statistics_chunk_summary(*stored.values(), x, 2, 8, edges, 0.0)
    assert (s.values, s.contexts, s.compared, s.max_abs, s.max_rel, s.worst) == (
        4 * 18 + 4 * 3 + 4 * 36,
        4,
        4,
        0.0,
        0.0,
        None,
    )
    assert s.mismatched_blocks == () and s.inexact == 0 and s.first_nonfinite is None


def test_statistics_compare_the_stored_contexts_only_and_skip_non_finite_hidden() -> None:
    edges = Edges(5)
    x = np.random.default_rng(3).normal(size=(4, 5, 2, 3)).astype(np.float32)
    stored = _statistics(x, edges)
    stored["edge"][3, 0, 1, 2] += 1.0  # context 3: its hidden states are not stored
    stored["ctx_sumsq"][1, 0] *= 1 + 1e-14  # context 1: within the tolerance
    hidden = x[:3].copy()
    hidden[2, 4, 0, 0] = np.nan  # context 2: not finite, so not compared
    s = statistics_chunk_summary(*stored.values(), hidden, 0, 0, edges, 1e-12)
    assert s.compared == 2 and s.not_compared.tolist() == [2] and s.mismatched_blocks == ()
    assert s.inexact == 1 and s.worst == (1, "stat_ctx_sumsq") and 0 < s.max_rel <= 1e-12
    tight = statistics_chunk_summary(*stored.values(), hidden, 0, 0, edges, 0.0)
    assert tight.mismatched_contexts.tolist() == [1] and tight.mismatched_blocks == (0,)
    assert statistics_chunk_summary(*stored.values(), None, 0, 0, edges, 0.0).compared == 0


def test_statistics_summaries_combine_in_store_order() -> None:
    edges = Edges(4)
    x = np.random.default_rng(4).normal(size=(6, 4, 1, 2)).astype(np.float32)
    stored = _statistics(x, edges)
    stored["ctx_sum"][[1, 4]] = np.nan
    stored["edge"][5] += 3.0
    parts = [
        statistics_chunk_summary(*(v[a:b] for v in stored.values()), x[a:b], i, a, edges, 0.0)
        for i, (a, b) in enumerate([(0, 3), (3, 6)])
    ]
    s = combine_statistics(parts)
    assert s.nonfinite_contexts.tolist() == [1, 4] and s.nonfinite_blocks == (0, 1)
    assert s.first_nonfinite == (1, "stat_ctx_sum")
    assert s.mismatched_contexts.tolist() == [5] and s.worst == (5, "stat_edge")
    assert s.compared == 4 and s.contexts == 6 and s.max_abs == pytest.approx(3.0, rel=1e-6)
    empty = combine_statistics([])
    assert (empty.values, empty.first_nonfinite, empty.worst) == (0, None, None)
