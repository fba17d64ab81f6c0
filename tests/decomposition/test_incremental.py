"""posctx.decomposition.incremental: exact combination of statistics, and stored updates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from posctx.decomposition.api import DECOMPOSITION_ATTR, finalize, statistics
from posctx.decomposition.graph import OUTPUT_NAMES
from posctx.decomposition.incremental import combine, update_decomposition
from posctx.decomposition.kernels import decompose_numpy
from posctx.decomposition.storage import open_decomposition, write_decomposition
from posctx.errors import PosctxError
from posctx.testing import hidden_dataset, planted_hidden, raise_if_dask_computes

C, T, L, D = 11, 6, 2, 4


@pytest.fixture(scope="module")
def h() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.normal(size=(C, T, L, D)) + rng.normal(0.0, 3.0, size=(L, D))


@pytest.fixture(scope="module")
def ds(h: np.ndarray) -> xr.Dataset:
    return hidden_dataset(h, chunks_context=3)


def _record(stats: xr.Dataset) -> dict[str, object]:
    record: dict[str, object] = json.loads(stats.attrs[DECOMPOSITION_ATTR])
    return record


def _assert_decomposes(stats: xr.Dataset, h: np.ndarray, *, rtol: float = 1e-12) -> None:
    """``finalize(stats)`` equals numpy's decomposition of ``h`` (contexts in ``stats`` order)."""
    dec = finalize(stats).compute()
    ref = decompose_numpy(h)
    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(dec[name].values, ref[name], rtol=rtol, atol=1e-12, err_msg=name)


def test_combining_two_ranges_is_the_decomposition_of_their_union(
    ds: xr.Dataset, h: np.ndarray
) -> None:
    a = statistics(ds, contexts=slice(0, 4))  # labels 0..4: five contexts, stop included
    b = statistics(ds, contexts=slice(5, 10))
    both = combine(a, b)
    assert both.context.values.tolist() == list(range(11))
    _assert_decomposes(both, h)
    record = _record(both)
    assert record["n_contexts"] == 11 and record["contexts_used"] == [[0, 11]]


def test_interleaved_sets_keep_their_order_and_record_their_runs(
    ds: xr.Dataset, h: np.ndarray
) -> None:
    evens, odds = np.arange(0, C, 2), np.arange(1, C, 2)
    both = combine(statistics(ds, contexts=odds), statistics(ds, contexts=evens))
    order = np.concatenate([odds, evens])
    assert both.context.values.tolist() == order.tolist()  # ctx_sum is concatenated, a then b
    _assert_decomposes(both, h[order])
    assert _record(both)["contexts_used"] == [[c, c + 1] for c in order.tolist()]


def test_combine_is_associative_over_three_sets(ds: xr.Dataset, h: np.ndarray) -> None:
    parts = [
        statistics(ds, contexts=[0, 7]),
        statistics(ds, contexts=[3]),
        statistics(ds, contexts=[1, 2, 9]),
    ]
    left = combine(combine(parts[0], parts[1]), parts[2])
    right = combine(parts[0], combine(parts[1], parts[2]))
    order = [0, 7, 3, 1, 2, 9]
    _assert_decomposes(left, h[order])
    for name in ("pos_sum", "ctx_sum", "sumsq"):
        np.testing.assert_allclose(left[name].values, right[name].values, rtol=1e-14)


def test_second_moments_merge_by_the_parallel_axis_theorem(h: np.ndarray) -> None:
    shifted = h.copy()
    shifted[:3] += 5.0  # the two sets' means differ a lot: the cross term matters
    ds = hidden_dataset(shifted, chunks_context=3)
    a = statistics(ds, contexts=slice(0, 2), moments=True)
    b = statistics(ds, contexts=slice(3, 10), moments=True)
    both = combine(a, b)
    assert both.m2_hidden.dims == ("layer", "dim", "dim2")
    centred = (shifted - shifted.mean(axis=(0, 1))).reshape(-1, L, D)
    expected = np.einsum("nld,nle->lde", centred, centred)
    # chunk_stats forms each chunk's moments with a float32 matrix product.
    np.testing.assert_allclose(both.m2_hidden.values, expected, rtol=1e-5)
    assert _record(both)["moments"] is True
    # Only one side with moments: the union has none, and says so.
    without = combine(a, statistics(ds, contexts=slice(3, 10)))
    assert "m2_hidden" not in without and _record(without)["moments"] is False


def test_combine_is_lazy(ds: xr.Dataset) -> None:
    a, b = statistics(ds, contexts=slice(0, 4)), statistics(ds, contexts=slice(5, 10))
    with raise_if_dask_computes():
        combine(a, b)


def test_overlapping_context_sets_are_refused(ds: xr.Dataset) -> None:
    a, b = statistics(ds, contexts=slice(0, 5)), statistics(ds, contexts=slice(4, 10))
    with pytest.raises(PosctxError) as info:
        combine(a, b)
    assert str(info.value) == "contexts [4, 5] are in both sets: combine disjoint context sets"


@pytest.mark.parametrize(
    ("dim", "other"),
    [
        ("position", {"positions": slice(1, None)}),
        ("layer", {"layer": [1]}),
        ("dim", {"dim": [0, 1, 2]}),
    ],
)
def test_statistics_over_other_positions_layers_or_dims_are_refused(
    ds: xr.Dataset, dim: str, other: dict[str, object]
) -> None:
    a = statistics(ds, contexts=slice(0, 4))
    if dim == "position":
        b = statistics(ds, contexts=slice(5, 10), **other)  # type: ignore[arg-type]
    else:
        b = statistics(ds.sel(other), contexts=slice(5, 10))
    with pytest.raises(PosctxError) as info:
        combine(a, b)
    assert str(info.value) == (
        f"cannot combine statistics over different {dim}s: decompose the new contexts with "
        f"the same {dim} selection as the previous decomposition"
    )


def test_the_record_keeps_the_newest_complete_only_note_and_both_kernels(ds: xr.Dataset) -> None:
    a, b = statistics(ds, contexts=slice(0, 4)), statistics(ds, contexts=slice(5, 10))
    ra, rb = _record(a), _record(b)
    ra.update(kernel="numba", complete_only={"blocks_used": 1})
    rb.update(kernel="numpy")
    a.attrs[DECOMPOSITION_ATTR], b.attrs[DECOMPOSITION_ATTR] = json.dumps(ra), json.dumps(rb)
    record = _record(combine(a, b))
    assert record["kernel"] == "numba+numpy"
    assert "complete_only" not in record  # it described the older, finished store
    rb["complete_only"] = {"blocks_used": 2, "blocks_total": 3}
    b.attrs[DECOMPOSITION_ATTR] = json.dumps(rb)
    assert _record(combine(a, b))["complete_only"] == {"blocks_used": 2, "blocks_total": 3}


# --- updating a stored decomposition ---------------------------------------------------------


def test_update_reads_only_the_new_contexts(tmp_path: Path, h: np.ndarray) -> None:
    old = hidden_dataset(h[:7], chunks_context=3)
    write_decomposition(finalize(statistics(old, positions=slice(1, None))), tmp_path / "a.zarr")
    # The grown store, with the contexts the decomposition holds overwritten by NaN: any read
    # of them would poison every mean.
    poisoned = h.copy()
    poisoned[:7] = np.nan
    grown = hidden_dataset(poisoned, chunks_context=3)
    n_new = update_decomposition(grown, tmp_path / "a.zarr", tmp_path / "b.zarr")
    assert n_new == 4
    updated = open_decomposition(tmp_path / "b.zarr")
    assert updated.position.values.tolist() == list(range(1, T))  # the previous positions
    ref = decompose_numpy(h[:, 1:])
    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(updated[name].values, ref[name], rtol=1e-10, err_msg=name)


def test_update_keeps_second_moments_when_the_previous_had_them(tmp_path: Path) -> None:
    from posctx.decomposition.api import decompose

    ds, _ = planted_hidden(10, 5, 2, 3, chunks_context=4, dtype="float64")
    write_decomposition(decompose(ds, contexts=slice(0, 5), moments=True), tmp_path / "a.zarr")
    assert update_decomposition(ds, tmp_path / "a.zarr", tmp_path / "b.zarr") == 4
    updated = open_decomposition(tmp_path / "b.zarr")
    scratch = decompose(ds, moments=True).compute()
    # float32 products per chunk (see chunk_stats), merged in float64
    np.testing.assert_allclose(updated.m2_hidden.values, scratch.m2_hidden.values, rtol=1e-5)
    assert json.loads(updated.attrs[DECOMPOSITION_ATTR])["moments"] is True


def test_update_refuses_its_own_path_and_a_store_with_nothing_new(tmp_path: Path) -> None:
    ds, _ = planted_hidden(6, 4, 1, 2)
    write_decomposition(finalize(statistics(ds)), tmp_path / "a.zarr")
    with pytest.raises(PosctxError, match="write the updated decomposition to a new path"):
        update_decomposition(ds, tmp_path / "a.zarr", tmp_path / "a.zarr")
    with pytest.raises(PosctxError) as info:
        update_decomposition(ds, tmp_path / "a.zarr", tmp_path / "b.zarr")
    assert str(info.value) == (
        f"{tmp_path / 'a.zarr'} already holds every context of this store: nothing to add"
    )
    assert not (tmp_path / "b.zarr").exists()
