"""posctx.validate.graph: one summary task per block (and layer chunk), gathered in store order."""

from __future__ import annotations

import pickle
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.delayed import Delayed

from posctx.store import Block, plan_blocks
from posctx.sums import Edges, block_statistics
from posctx.testing import raise_if_dask_computes, track_chunk_reads
from posctx.validate.graph import hidden_summaries, statistics_summaries, token_summaries
from posctx.validate.kernels import Framing, hidden_chunk_summary, token_chunk_summary


def _hidden() -> np.ndarray:
    """11 contexts, 3 positions, 5 layers, 2 dims, with a NaN or inf in some blocks."""
    x = np.random.default_rng(0).normal(size=(11, 3, 5, 2)).astype(np.float32)
    x[1, 2, 4, 0] = np.nan
    x[6, 0, 1, 1] = np.inf
    x[10, 1, 2, :] = np.nan
    return x


def _fields(s: Any) -> tuple[Any, ...]:
    return (s.values, s.nan, s.inf, s.vectors, s.blocks, s.contexts.tolist(), s.first)


def _tasks(lazy: Delayed) -> int:
    """The summary tasks of ``lazy``'s own layer (its gather task left out)."""
    return len(lazy.dask.layers[lazy.key]) - 1


def test_hidden_summaries_are_the_kernels_on_each_block_and_layer_chunk() -> None:
    x = _hidden()
    blocks = plan_blocks(11, 4)  # 4 + 4 + 3
    layer_chunks = [(0, 2), (2, 4), (4, 5)]
    # The array's own chunking agrees with neither the blocks nor the layer chunks.
    lazy = hidden_summaries(da.from_array(x, chunks=(3, 2, 3, 1)), blocks, layer_chunk=2)
    assert _tasks(lazy) == 3 * 3
    (got,) = dask.compute(lazy)
    want = [
        hidden_chunk_summary(x[b.start : b.stop, :, l0:l1], b.index, b.start, l0)
        for b in blocks
        for l0, l1 in layer_chunks
    ]
    assert [_fields(s) for s in got] == [_fields(s) for s in want]
    assert [s.first for s in got if s.first] == [(1, 2, 4), (6, 0, 1), (10, 1, 2)]


def test_only_the_blocks_given_are_read_each_chunk_once() -> None:
    x = _hidden()
    tracked, reads = track_chunk_reads(da.from_array(x, chunks=(4, 3, 2, 2)))
    blocks = [Block(0, 0, 4), Block(2, 8, 11)]  # block 1 unmarked: not scanned
    lazy = hidden_summaries(tracked, blocks, layer_chunk=2)
    assert set(lazy.dask.layers) == {lazy.key, tracked.name, *tracked.dask.layers}  # no rechunk
    with raise_if_dask_computes(max_computes=1):
        (got,) = dask.compute(lazy)
    assert sorted(reads.counts) == [(b, 0, k, 0) for b in (0, 2) for k in range(3)]
    assert set(reads.counts.values()) == {1}
    assert [s.blocks for s in got] == [(), (), (0,), (), (2,), ()]  # layers 4 and 2
    assert [s.values for s in got] == [48, 48, 24, 36, 36, 18]


def test_token_summaries_are_the_kernel_on_each_block() -> None:
    ids = np.random.default_rng(1).integers(0, 12, size=(11, 4))
    ids[:, 0] = 1
    ids[5, 0] = 7
    framing = Framing((1,), (), (1,))
    blocks = plan_blocks(11, 4)
    lazy = token_summaries(da.from_array(ids, chunks=(1, 2)), blocks, 10, framing)
    assert _tasks(lazy) == 3
    (got,) = dask.compute(lazy)
    assert got == [token_chunk_summary(ids[b.start : b.stop], b.start, 10, framing) for b in blocks]
    assert got[1].bad_prefix_contexts == (5,)


def test_both_scans_share_one_compute_and_survive_pickling() -> None:
    x, ids = _hidden(), np.arange(44).reshape(11, 4)
    blocks = plan_blocks(11, 4)
    hidden = hidden_summaries(da.from_array(x, chunks=(4, 3, 2, 2)), blocks, 2)
    tokens = token_summaries(da.from_array(ids, chunks=(4, 4)), blocks, 40, None)
    with raise_if_dask_computes(max_computes=1):
        h, t = dask.compute(hidden, tokens)
    # Module-level tasks with plain arguments: the graphs travel to any scheduler's workers.
    h2, t2 = dask.compute(pickle.loads(pickle.dumps(hidden)), pickle.loads(pickle.dumps(tokens)))
    assert [_fields(s) for s in h2] == [_fields(s) for s in h] and t2 == t
    assert [s.out_of_range for s in t] == [0, 0, 4]


def test_graph_names_follow_their_inputs() -> None:
    x = da.from_array(_hidden(), chunks=(4, 3, 5, 2))
    blocks = plan_blocks(11, 4)
    assert hidden_summaries(x, blocks, 2).key == hidden_summaries(x, blocks, 2).key
    assert hidden_summaries(x, blocks, 2).key != hidden_summaries(x, blocks, 5).key
    assert hidden_summaries(x, blocks, 2).key != hidden_summaries(x, blocks[:2], 2).key
    ids = da.from_array(np.zeros((11, 4), dtype=np.int32), chunks=(4, 4))
    framed = token_summaries(ids, blocks, 10, Framing((1,), (), ()))
    assert framed.key != token_summaries(ids, blocks, 10, None).key
    assert str(framed.key).startswith("posctx-validate-tokens-")


def test_statistics_summaries_share_the_hidden_reads_of_the_finite_scan() -> None:
    x = np.random.default_rng(1).normal(size=(11, 3, 5, 2)).astype(np.float32)
    ref = block_statistics(x, Edges(3), np.zeros(11, np.intp), 1)
    stats = [da.from_array(ref[k], chunks=4) for k in ("ctx_sum", "ctx_sumsq", "edge")]
    tracked, reads = track_chunk_reads(da.from_array(x, chunks=(4, 3, 2, 2)))
    blocks = plan_blocks(11, 4)
    kept = [Block(0, 0, 4), Block(1, 4, 6)]  # the hidden states of the first 6 contexts
    finite = hidden_summaries(tracked, kept, layer_chunk=2)
    lazy = statistics_summaries(stats, tracked, blocks, {0: 4, 1: 2}, Edges(3), 0.0)
    assert _tasks(lazy) == 3  # one per block
    with raise_if_dask_computes(max_computes=1):
        _, got = dask.compute(finite, lazy)
    assert sorted(reads.counts) == [(b, 0, k, 0) for b in (0, 1) for k in range(3)]
    assert set(reads.counts.values()) == {1}  # each chunk read once for both
    assert [(s.contexts, s.compared, s.max_rel) for s in got] == [
        (4, 4, 0.0),
        (4, 2, 0.0),
        (3, 0, 0.0),
    ]
    # Per context: a sum (5 layers x 2 dims), 5 sums of squares, 1 edge position (10 values).
    assert [s.values for s in got] == [4 * 25, 4 * 25, 3 * 25]
    without = statistics_summaries(stats, None, blocks, {}, Edges(3), 0.0)
    assert [s.compared for s in dask.compute(without)[0]] == [0, 0, 0]
