"""posctx.geometry.graph: the per-layer Gram array, one gram_chunk task per chunk, tree sums."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

from posctx.geometry.graph import gram_array
from posctx.testing import raise_if_dask_computes, track_chunk_reads


def _reference(x: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """``sum (x - centre)(x - centre)^T`` per layer, over every leading axis, in float64."""
    rows = x.astype(np.float64).reshape(-1, *x.shape[-2:])  # (rows, layer, dim)
    out = np.empty((x.shape[-2], x.shape[-1], x.shape[-1]))
    for layer in range(x.shape[-2]):
        r = rows[:, layer] - centre[layer]
        out[layer] = r.T @ r
    return out


def _gram_tasks(g: da.Array) -> int:
    """How many gram_chunk tasks the graph of ``g`` holds."""
    return sum(len(layer) for name, layer in g.dask.layers.items() if name.startswith("gram_chunk"))


@pytest.mark.parametrize(
    ("chunks", "n_chunks"),
    [
        (((3, 4), (2, 3), (2, 1), (3, 1)), 2 * 2 * 2),  # uneven everywhere; dim split in two
        (((7,), (5,), (3,), (4,)), 1),  # one chunk
        (((1,) * 7, (5,), (1, 1, 1), (4,)), 7 * 3),  # a task per context and per layer
    ],
)
def test_the_gram_of_uneven_chunks_matches_numpy_with_one_task_per_chunk(
    chunks: tuple[tuple[int, ...], ...], n_chunks: int
) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 5, 3, 4))
    centre = rng.normal(size=(3, 4))
    with raise_if_dask_computes():  # building the graph reads nothing
        g = gram_array(da.from_array(x, chunks=chunks), da.from_array(centre, chunks=(2, 3)))
    assert g.shape == (3, 4, 4) and g.dtype == np.float64
    assert g.chunks[0] == chunks[2]  # one (layer, d, d) block per layer chunk
    # dim chunks are merged first (every task needs whole rows): a task per chunk of the rest.
    assert _gram_tasks(g) == n_chunks
    np.testing.assert_allclose(g.compute(), _reference(x, centre), rtol=1e-12, atol=1e-12)


def test_any_number_of_leading_axes_and_float16_input_accumulate_in_float64() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 4), scale=10).astype(np.float16)  # (layer, dim): no leading axis
    centre = np.zeros((5, 4))
    flat = gram_array(da.from_array(x[np.newaxis], chunks=(1, 2, 4)), da.from_array(centre))
    np.testing.assert_allclose(flat.compute(), _reference(x[np.newaxis], centre), rtol=1e-12)
    y = rng.normal(size=(2, 3, 4, 2, 3)).astype(np.float16)  # three leading axes
    centre3 = y.astype(np.float64).mean(axis=(0, 1, 2))
    g = gram_array(da.from_array(y, chunks=(1, 2, 3, 1, 3)), da.from_array(centre3))
    assert g.dtype == np.float64 and _gram_tasks(g) == 2 * 2 * 2 * 2
    np.testing.assert_allclose(g.compute(), _reference(y, centre3), rtol=1e-12)


def test_each_chunk_is_read_once_in_a_single_compute() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(9, 4, 2, 3))
    tracked, reads = track_chunk_reads(da.from_array(x, chunks=(4, 3, 1, 3)))
    centre = da.from_array(x.mean(axis=(0, 1)))
    g = gram_array(tracked, centre)
    with raise_if_dask_computes(max_computes=1):
        got = g.compute()
    assert reads.total == 3 * 2 * 2 and set(reads.counts.values()) == {1}
    np.testing.assert_allclose(got, _reference(x, x.mean(axis=(0, 1))), rtol=1e-12)


def test_the_centre_is_subtracted_per_layer() -> None:
    """A shifted copy with the shift as centre has the Gram of the original about zero."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 2, 3))
    shift = np.array([[100.0, -50.0, 3.0], [0.0, 7.0, -1e3]])
    moved = gram_array(da.from_array(x + shift, chunks=(4, 1, 3)), da.from_array(shift))
    plain = gram_array(da.from_array(x, chunks=(4, 1, 3)), da.zeros((2, 3)))
    (moved_v, plain_v) = dask.compute(moved, plain)
    np.testing.assert_allclose(moved_v, plain_v, rtol=1e-9, atol=1e-9)
    assert not np.allclose(moved_v[1], moved_v[0])  # the layers keep their own Gram
