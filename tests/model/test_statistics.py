"""posctx.model.statistics: the torch accumulation (accelerators) equals numpy's (CPUs)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from posctx.model.statistics import DeviceStatistics
from posctx.sums import CONTEXT_STATISTICS, Edges, PartialSums, block_statistics

TOPICS = ("a", "b", "c")
EDGES = Edges(7, 1, 2)
#: Three batches of 4, 1 and 3 contexts, with their topics (in no order; "b" only once).
BATCHES = ((4, [2, 0, 2, 0]), (1, [1]), (3, [0, 2, 2]))


def _batches(dtype: torch.dtype, seed: int = 0) -> list[tuple[torch.Tensor, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for size, topics in BATCHES:
        x = rng.normal(3.0, 1.0, size=(size, 7, 2, 5))
        out.append((torch.from_numpy(x).to(dtype), np.array(topics)))
    return out


def _accumulate(batches: Any, *, moments: bool, numpy_on_cpu: bool) -> DeviceStatistics:
    stats = DeviceStatistics(
        EDGES, TOPICS, 2, 5, moments=moments, device="cpu", numpy_on_cpu=numpy_on_cpu
    )
    for x, topics in batches:
        stats.add(x, topics)
    return stats


def _close(a: Any, b: Any, rtol: float) -> None:
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(np.abs(b).max()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("moments", [False, True])
def test_the_torch_path_equals_numpy_and_the_reference(dtype: torch.dtype, moments: bool) -> None:
    batches = _batches(dtype)
    on_device = _accumulate(batches, moments=moments, numpy_on_cpu=False)
    on_host = _accumulate(batches, moments=moments, numpy_on_cpu=True)
    assert on_device._host is None and on_host._host is not None  # the two paths, really
    # The reference: one block_statistics of all contexts together.
    x = np.concatenate([b[0].numpy() for b in batches])
    topics = np.concatenate([b[1] for b in batches])
    ref = block_statistics(x, EDGES, topics, len(TOPICS), moments=moments)
    ctx_device, ctx_host = on_device.take_contexts(), on_host.take_contexts()
    for contexts in (ctx_device, ctx_host):
        assert set(contexts) == set(CONTEXT_STATISTICS)
        assert contexts["ctx_sum"].shape == (8, 2, 5) and contexts["ctx_sumsq"].shape == (8, 2)
        _close(contexts["ctx_sum"], ref["ctx_sum"], 1e-12)
        _close(contexts["ctx_sumsq"], ref["ctx_sumsq"], 1e-12)
        # Edge vectors stay in the storage dtype, exactly as stored.
        assert contexts["edge"].dtype == x.dtype and contexts["edge"].shape == (8, 3, 2, 5)
        np.testing.assert_array_equal(contexts["edge"], ref["edge"])
    device, host = on_device.snapshot(), on_host.snapshot()
    assert (
        set(device) == set(host) == ({"pos_sum", "count", "mean", "m2"} if moments else {"pos_sum"})
    )
    for snap in (device, host):
        assert snap["pos_sum"].shape == (3, 7, 2, 5) and snap["pos_sum"].dtype == np.float64
        _close(snap["pos_sum"], ref["pos_sum"], 1e-12)
    if moments:
        for snap in (device, host):
            assert float(snap["count"]) == ref["count"] == 8 * 4
            _close(snap["mean"], ref["mean"], 1e-12)
            _close(snap["m2"], ref["m2"], 1e-6)  # float32 products, merged by batch


def test_batches_merge_as_partial_sums_of_the_same_batches() -> None:
    """The device's running merge of batches is PartialSums' merge of the same batches."""
    batches = _batches(torch.float32, seed=1)
    sums = PartialSums(TOPICS, length=7, n_layers=2, n_dims=5, moments=True)
    for x, topics in batches:
        sums.add(block_statistics(x.numpy(), EDGES, topics, 3, moments=True), TOPICS)
    device = _accumulate(batches, moments=True, numpy_on_cpu=False).snapshot()
    assert device["count"] == sums.count
    _close(device["mean"], sums.mean, 1e-12)
    _close(device["m2"], sums.m2, 1e-6)


@pytest.mark.parametrize("numpy_on_cpu", [False, True])
def test_take_contexts_returns_the_batches_since_the_last_call_in_order(
    numpy_on_cpu: bool,
) -> None:
    batches = _batches(torch.float32)
    stats = DeviceStatistics(
        EDGES, TOPICS, 2, 5, moments=False, device="cpu", numpy_on_cpu=numpy_on_cpu
    )
    stats.add(*batches[0])
    stats.add(*batches[1])
    first = stats.take_contexts()
    stats.add(*batches[2])
    second = stats.take_contexts()
    x = np.concatenate([b[0].numpy() for b in batches])
    assert first["ctx_sum"].shape[0] == 5 and second["ctx_sum"].shape[0] == 3
    both = {k: np.concatenate([first[k], second[k]]) for k in CONTEXT_STATISTICS}
    ref = block_statistics(x, EDGES, np.zeros(8, int), 3)
    _close(both["ctx_sum"], ref["ctx_sum"], 1e-12)
    np.testing.assert_array_equal(both["edge"], x[:, [0, 5, 6]])
    # The position sums keep counting across takes: all 8 contexts.
    snap = stats.snapshot()
    _close(snap["pos_sum"].sum(axis=0), x.astype(np.float64).sum(axis=0), 1e-12)


@pytest.mark.parametrize("numpy_on_cpu", [False, True])
def test_a_snapshot_is_a_copy(numpy_on_cpu: bool) -> None:
    batches = _batches(torch.float32)
    stats = DeviceStatistics(
        EDGES, TOPICS, 2, 5, moments=True, device="cpu", numpy_on_cpu=numpy_on_cpu
    )
    stats.add(*batches[0])
    first = stats.snapshot()
    kept = {k: np.copy(v) for k, v in first.items()}
    for name in ("pos_sum", "mean", "m2"):
        first[name][...] = -1.0  # the caller's copy: the accumulator must not change
    again = stats.snapshot()
    for name in ("pos_sum", "mean", "m2"):
        np.testing.assert_array_equal(again[name], kept[name])
    stats.add(*batches[1])
    stats.add(*batches[2])
    later = stats.snapshot()
    np.testing.assert_array_equal(again["pos_sum"], kept["pos_sum"])  # not a view either
    assert float(later["count"]) == 32.0 and float(again["count"]) == 16.0
    assert not np.array_equal(later["pos_sum"], kept["pos_sum"])


def test_a_device_object_and_moments_off_keep_no_second_moment() -> None:
    stats = DeviceStatistics(
        EDGES, TOPICS, 2, 5, moments=False, device=torch.device("cpu"), numpy_on_cpu=False
    )
    assert stats.device == torch.device("cpu") and stats.topics == TOPICS
    stats.add(*_batches(torch.float32)[0])
    assert set(stats.snapshot()) == {"pos_sum"}


@pytest.mark.parametrize("numpy_on_cpu", [False, True])
def test_an_empty_batch_adds_nothing(numpy_on_cpu: bool) -> None:
    """As block_statistics of an empty block: no contexts, and moments left as they were."""
    x, topics = _batches(torch.float32)[0]
    alone = _accumulate([(x, topics)], moments=True, numpy_on_cpu=numpy_on_cpu)
    stats = _accumulate([(x, topics), (x[:0], topics[:0])], moments=True, numpy_on_cpu=numpy_on_cpu)
    assert stats.take_contexts()["ctx_sum"].shape == (4, 2, 5)
    got, ref = stats.snapshot(), alone.snapshot()
    assert float(got["count"]) == float(ref["count"]) == 4 * 4
    for name in ("pos_sum", "mean", "m2"):
        np.testing.assert_array_equal(got[name], ref[name])
