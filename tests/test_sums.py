"""posctx.sums: one block's statistics against brute force, and merges in any grouping."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from posctx.sums import (
    CONTEXT_STATISTICS,
    Edges,
    PartialSums,
    block_statistics,
    centred_moments,
    merge_moments,
)

N_TOPICS = 3


def _block(c: int, length: int, dtype: str, seed: int = 0, offset: float = 2.0) -> np.ndarray:
    """``(c, length, 2, 3)`` hidden states in ``dtype``, away from zero (like real ones)."""
    rng = np.random.default_rng(seed)
    return (rng.normal(offset, 1.0, size=(c, length, 2, 3))).astype(dtype)


def _brute(x: np.ndarray, edges: Edges, topics: np.ndarray, n_topics: int) -> dict[str, Any]:
    """The statistics spelled out one number at a time in float64."""
    c, length, n_layers, n_dims = x.shape
    h = x.astype(np.float64)
    core = [t for t in range(length) if t not in edges.positions]
    ctx_sum = np.zeros((c, n_layers, n_dims))
    ctx_sumsq = np.zeros((c, n_layers))
    pos_sum = np.zeros((n_topics, length, n_layers, n_dims))
    for i in range(c):
        for t in core:
            ctx_sum[i] += h[i, t]
            ctx_sumsq[i] += (h[i, t] ** 2).sum(axis=-1)
        pos_sum[topics[i]] += h[i]
    cells = h[:, core].reshape(-1, n_layers, n_dims)
    mean = cells.mean(axis=0) if len(cells) else np.zeros((n_layers, n_dims))
    centred = cells - mean
    m2 = np.einsum("nld,nle->lde", centred, centred)
    return {
        "ctx_sum": ctx_sum,
        "ctx_sumsq": ctx_sumsq,
        "edge": x[:, list(edges.positions)],
        "pos_sum": pos_sum,
        "count": float(len(cells)),
        "mean": mean,
        "m2": m2,
    }


def _close(a: Any, b: Any, rtol: float) -> None:
    np.testing.assert_allclose(
        a, b, rtol=rtol, atol=rtol * max(1.0, float(np.abs(b).max(initial=0)))
    )


# ---------------------------------------------------------------------------------- Edges


@pytest.mark.parametrize(
    ("lead", "trail", "core", "positions"),
    [
        (1, 0, slice(1, 6), (0,)),
        (1, 1, slice(1, 5), (0, 5)),
        (1, 2, slice(1, 4), (0, 4, 5)),
        (0, 0, slice(0, 6), ()),
        (2, 1, slice(2, 5), (0, 1, 5)),
    ],
)
def test_edges_name_the_core_and_the_left_out_positions(
    lead: int, trail: int, core: slice, positions: tuple[int, ...]
) -> None:
    edges = Edges(6, lead, trail)
    assert edges.core == core and edges.positions == positions
    assert sorted([*range(6)[core], *positions]) == list(range(6))


def test_edges_default_to_position_zero_only() -> None:
    assert Edges(5) == Edges(5, 1, 0) and Edges(5).positions == (0,)


@pytest.mark.parametrize(
    ("length", "lead", "trail", "message"),
    [
        (4, 2, 2, "edges of 2 leading and 2 trailing positions leave no core in a context of 4"),
        (4, 1, 3, "edges of 1 leading and 3 trailing positions leave no core in a context of 4"),
        (1, 1, 0, "edges of 1 leading and 0 trailing positions leave no core in a context of 1"),
        (4, -1, 0, "edges of -1 leading and 0 trailing positions leave no core in a context of 4"),
        (4, 0, -1, "edges of 0 leading and -1 trailing positions leave no core in a context of 4"),
    ],
)
def test_edges_that_leave_no_core_are_refused(
    length: int, lead: int, trail: int, message: str
) -> None:
    with pytest.raises(ValueError) as info:
        Edges(length, lead, trail)
    assert str(info.value) == message


# ------------------------------------------------------------------------ block_statistics


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("trail", [0, 1, 2])
def test_block_statistics_equal_brute_force(dtype: str, trail: int) -> None:
    x = _block(5, 7, dtype)
    edges = Edges(7, 1, trail)
    topics = np.array([2, 0, 2, 1, 0])  # not sorted, not contiguous
    got = block_statistics(x, edges, topics, N_TOPICS, moments=True)
    ref = _brute(x, edges, topics, N_TOPICS)
    assert set(got) == {*CONTEXT_STATISTICS, "pos_sum", "count", "mean", "m2"}
    assert got["ctx_sum"].shape == (5, 2, 3) and got["ctx_sum"].dtype == np.float64
    assert got["ctx_sumsq"].shape == (5, 2) and got["ctx_sumsq"].dtype == np.float64
    assert got["pos_sum"].shape == (N_TOPICS, 7, 2, 3) and got["pos_sum"].dtype == np.float64
    for name in ("ctx_sum", "ctx_sumsq", "pos_sum", "mean"):
        _close(got[name], ref[name], 1e-12)
    # The edges are the stored values themselves, in the storage dtype.
    assert got["edge"].dtype == np.dtype(dtype) and got["edge"].shape == (5, 1 + trail, 2, 3)
    np.testing.assert_array_equal(got["edge"], ref["edge"])
    assert got["count"] == 5.0 * (6 - trail)
    _close(got["m2"], ref["m2"], 1e-6)  # float32 products of centred rows


def test_block_statistics_of_lead_zero_keep_no_edge_vectors() -> None:
    x = _block(3, 4, "float32")
    got = block_statistics(x, Edges(4, 0, 0), [0, 0, 1], 2)
    ref = _brute(x, Edges(4, 0, 0), np.array([0, 0, 1]), 2)
    assert got["edge"].shape == (3, 0, 2, 3)
    _close(got["ctx_sum"], ref["ctx_sum"], 1e-12)
    assert "m2" not in got and "count" not in got  # moments off


def test_a_topic_without_contexts_in_the_block_has_zero_position_sums() -> None:
    x = _block(4, 5, "float32")
    got = block_statistics(x, Edges(5), [0, 0, 2, 2], 4)
    assert not got["pos_sum"][[1, 3]].any()
    _close(got["pos_sum"][0], x[:2].astype(np.float64).sum(axis=0), 1e-12)
    _close(got["pos_sum"][2], x[2:].astype(np.float64).sum(axis=0), 1e-12)


def test_one_context_block() -> None:
    x = _block(1, 6, "float16")
    got = block_statistics(x, Edges(6, 1, 1), [1], 2, moments=True)
    h = x[0].astype(np.float64)
    _close(got["ctx_sum"][0], h[1:5].sum(axis=0), 1e-12)
    _close(got["ctx_sumsq"][0], (h[1:5] ** 2).sum(axis=(0, 2)), 1e-12)
    np.testing.assert_array_equal(got["pos_sum"][1], h)
    assert not got["pos_sum"][0].any()
    assert got["count"] == 4.0
    _close(got["mean"], h[1:5].mean(axis=0), 1e-12)


def test_an_empty_block_adds_nothing() -> None:
    x = np.zeros((0, 5, 2, 3), np.float32)
    got = block_statistics(x, Edges(5, 1, 1), np.array([], int), 2, moments=True)
    assert got["ctx_sum"].shape == (0, 2, 3) and got["ctx_sumsq"].shape == (0, 2)
    assert got["edge"].shape == (0, 2, 2, 3)
    assert got["pos_sum"].shape == (2, 5, 2, 3) and not got["pos_sum"].any()
    assert got["count"] == 0.0 and not got["mean"].any() and not got["m2"].any()
    # ... and merging it changes nothing.
    sums = PartialSums(("a", "b"), length=5, n_layers=2, n_dims=3, moments=True)
    full = block_statistics(_block(3, 5, "float32"), Edges(5, 1, 1), [0, 1, 1], 2, moments=True)
    sums.add(full, ("a", "b"))
    sums.add(got, ("a", "b"))
    assert sums.count == full["count"]
    np.testing.assert_array_equal(sums.mean, full["mean"])
    np.testing.assert_array_equal(sums.m2, full["m2"])


def test_block_statistics_accumulate_into_a_given_position_sum() -> None:
    a, b = _block(3, 5, "float32", seed=1), _block(2, 5, "float32", seed=2)
    acc = np.zeros((2, 5, 2, 3))
    out = block_statistics(a, Edges(5), [0, 1, 0], 2, pos_sum=acc)
    assert out["pos_sum"] is acc
    block_statistics(b, Edges(5), [1, 1], 2, pos_sum=acc)
    whole = block_statistics(np.concatenate([a, b]), Edges(5), [0, 1, 0, 1, 1], 2)
    _close(acc, whole["pos_sum"], 1e-12)


def test_block_statistics_refuse_a_block_that_is_not_four_dimensional() -> None:
    with pytest.raises(ValueError) as info:
        block_statistics(np.zeros((2, 5, 3)), Edges(5), [0, 0], 1)
    assert str(info.value) == (
        "expected a (context, position, layer, dim) block, got shape (2, 5, 3)"
    )


# ----------------------------------------------------------------------- centred_moments


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_centred_moments_keep_float32_precision_under_a_large_mean(dtype: str) -> None:
    x = _block(4, 5, dtype, offset=300.0)
    h = x.astype(np.float64)
    mean = h.mean(axis=(0, 1))
    got = centred_moments(x, mean)
    rows = (h - mean).reshape(-1, 2, 3)
    ref = np.einsum("nld,nle->lde", rows, rows)
    assert got["mean"].dtype == np.float64 and got["m2"].shape == (2, 3, 3)
    np.testing.assert_array_equal(got["mean"], mean)
    # Uncentred float32 products would lose everything (300^2 * 20 against a spread of 20).
    _close(got["m2"], ref, 1e-6)


# ------------------------------------------------------------------------ merge_moments


def _direct(rows: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Count, mean and float64 m2 of ``(n, L, D)`` rows, computed directly."""
    mean = rows.mean(axis=0)
    centred = rows - mean
    return float(len(rows)), mean, np.einsum("nld,nle->lde", centred, centred)


def test_merge_moments_equal_the_moments_of_the_union() -> None:
    rows = np.random.default_rng(3).normal(50.0, 2.0, size=(23, 2, 4))
    a, b = _direct(rows[:9]), _direct(rows[9:])
    n, mean, m2 = merge_moments(*a, *b)
    ref = _direct(rows)
    assert n == 23.0
    _close(mean, ref[1], 1e-13)
    _close(m2, ref[2], 1e-12)


def test_merging_with_an_empty_group_keeps_the_other() -> None:
    rows = np.random.default_rng(4).normal(size=(6, 1, 2))
    n, mean, m2 = _direct(rows)
    zero_mean, zero_m2 = np.zeros((1, 2)), np.zeros((1, 2, 2))
    got = merge_moments(0.0, zero_mean, zero_m2, n, mean, m2)
    assert got[0] == 6.0
    _close(got[1], mean, 1e-15)
    np.testing.assert_array_equal(got[2], m2)
    got = merge_moments(n, mean, m2, 0.0, zero_mean, zero_m2)
    assert got[0] == 6.0
    np.testing.assert_array_equal(got[1], mean)
    np.testing.assert_array_equal(got[2], m2)
    both_empty = merge_moments(0.0, zero_mean, zero_m2, 0.0, zero_mean, zero_m2)
    assert both_empty[0] == 0.0 and both_empty[1] is zero_mean and both_empty[2] is zero_m2


# -------------------------------------------------------------------------- PartialSums


def test_partial_sums_add_rows_by_topic_name() -> None:
    x = _block(3, 4, "float32")
    sums = PartialSums(("a", "b", "c"), length=4, n_layers=2, n_dims=3, moments=False)
    # Statistics of a partial that knows the topics ("c", "a") only, in that order.
    stats = block_statistics(x, Edges(4), [0, 1, 0], 2)
    sums.add(stats, ("c", "a"))
    _close(sums.pos_sum[2], x[[0, 2]].astype(np.float64).sum(axis=0), 1e-12)
    _close(sums.pos_sum[0], x[1].astype(np.float64), 1e-12)
    assert not sums.pos_sum[1].any()
    assert set(sums.result()) == {"pos_sum"} and sums.m2 is None


def _grouped(x: np.ndarray, topics: np.ndarray, cuts: list[int], moments: bool) -> PartialSums:
    """PartialSums of ``x`` added block by block, the blocks cut at ``cuts``."""
    names = tuple(f"t{k}" for k in range(N_TOPICS))
    sums = PartialSums(names, length=x.shape[1], n_layers=2, n_dims=3, moments=moments)
    bounds = [0, *cuts, len(x)]
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        stats = block_statistics(
            x[start:stop], Edges(x.shape[1], 1, 1), topics[start:stop], N_TOPICS, moments=moments
        )
        sums.add(stats, names)
    return sums


_X = _block(17, 6, "float32", seed=5, offset=20.0)
_TOPICS = np.random.default_rng(6).integers(0, N_TOPICS, size=17)


@given(cuts=st.lists(st.integers(0, 17), max_size=6).map(sorted))
def test_partial_sums_in_any_grouping_equal_one_block_of_everything(cuts: list[int]) -> None:
    whole = block_statistics(_X, Edges(6, 1, 1), _TOPICS, N_TOPICS, moments=True)
    sums = _grouped(_X, _TOPICS, cuts, moments=True).result()
    assert sums["count"] == whole["count"] == 17 * 4
    _close(sums["pos_sum"], whole["pos_sum"], 1e-12)
    _close(sums["mean"], whole["mean"], 1e-12)
    # Each group's m2 is a float32 product of its own centred rows; the merge itself is exact.
    _close(sums["m2"], whole["m2"], 1e-6)


def test_two_partials_of_two_processes_merge_as_one() -> None:
    names = tuple(f"t{k}" for k in range(N_TOPICS))
    a, b = _grouped(_X[:7], _TOPICS[:7], [3], True), _grouped(_X[7:], _TOPICS[7:], [5], True)
    merged = PartialSums(names, length=6, n_layers=2, n_dims=3, moments=True)
    merged.add(a.result(), names)
    merged.add(b.result(), names)
    whole = _grouped(_X, _TOPICS, [], True).result()
    assert merged.count == whole["count"]
    _close(merged.pos_sum, whole["pos_sum"], 1e-12)
    _close(merged.mean, whole["mean"], 1e-12)
    _close(merged.m2, whole["m2"], 1e-6)
