"""Tests of posctx.decomposition: kernels, dask graph and the xarray layer."""

from __future__ import annotations

import importlib
import json
import pickle
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import dask.core
import numpy as np
import pytest
import xarray as xr
from dask.highlevelgraph import HighLevelGraph
from hypothesis import given
from hypothesis import strategies as st

import posctx
import posctx.testing
from posctx.decomposition import (
    api,
    decompose,
    open_decomposition,
    residual,
    write_decomposition,
)
from posctx.decomposition.graph import OUTPUT_NAMES, decompose_arrays
from posctx.decomposition.kernels import chunk_stats, combine_sum, decompose_numpy, take_stat
from posctx.errors import PosctxError, StoreError
from posctx.testing import (
    hidden_dataset,
    planted_hidden,
    raise_if_dask_computes,
    track_chunk_reads,
    write_planted_store,
)
from posctx.types import CONTEXT, DIM, HIDDEN, HIDDEN_DIMS, LAYER, POSITION

# `posctx.decomposition` the attribute is the function re-exported by posctx/__init__.py.
decompose_pkg = importlib.import_module("posctx.decomposition")


def random_hidden(shape: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    """Random states with a sizeable mean, so centring is exercised."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape) + rng.normal(0.0, 3.0, size=shape[2:])


def assert_matches_reference(
    got: Any, ref: dict[str, np.ndarray], *, rtol: float = 1e-10, atol: float = 1e-10
) -> None:
    for name in OUTPUT_NAMES:
        value = np.asarray(got[name])
        assert value.dtype == np.float64, name
        np.testing.assert_allclose(value, ref[name], rtol=rtol, atol=atol, err_msg=name)


# --- kernels -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_chunk_stats_sums_in_float64(dtype: str) -> None:
    x = random_hidden((3, 4, 2, 5)).astype(dtype)
    stats = chunk_stats(x)
    x64 = x.astype(np.float64)
    assert all(value.dtype == np.float64 for value in stats.values())
    np.testing.assert_allclose(stats["pos_sum"], x64.sum(axis=0))
    np.testing.assert_allclose(stats["ctx_sum"], x64.sum(axis=1))
    np.testing.assert_allclose(stats["sumsq"], (x64**2).sum(axis=(0, 1, 3)))


def test_chunk_stats_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match="context, position, layer, dim"):
        chunk_stats(np.zeros((2, 3, 4)))


def test_combine_and_take_stat() -> None:
    a, b = chunk_stats(np.ones((2, 3, 1, 2))), chunk_stats(np.ones((2, 1, 1, 2)))
    np.testing.assert_array_equal(combine_sum("ctx_sum", a, b), np.full((2, 1, 2), 4.0))
    assert a["ctx_sum"][0, 0, 0] == 3.0  # combine_sum must not add into its inputs
    assert take_stat(a, "sumsq", 2).shape == (1, 1, 1)
    with pytest.raises(ValueError):
        combine_sum("ctx_sum")


def test_decompose_numpy_identity_and_centring() -> None:
    ref = decompose_numpy(random_hidden((7, 5, 3, 4)))
    np.testing.assert_allclose(ref["pos"].sum(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(ref["ctx"].sum(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(ref["resid"].sum(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(ref["resid"].sum(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(ref["ss_total"], ref["ss_pos"] + ref["ss_ctx"] + ref["ss_resid"])


# --- planted truth -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "rtol"), [("float64", 1e-10), ("float32", 1e-5), ("float16", 2e-2)]
)
def test_planted_store_recovers_truth(dtype: str, rtol: float) -> None:
    ds, truth = planted_hidden(24, 10, 3, 6, chunks_context=7, chunks_layer=2, dtype=dtype)
    dec = decompose(ds).compute()
    # Absolute tolerance scaled to the states: storage rounding is relative to |h|, not to
    # each (possibly small) component.
    atol = rtol * float(np.abs(truth["h"]).max())
    for name in ("mu", "pos", "ctx"):
        np.testing.assert_allclose(dec[name].values, truth[name], rtol=rtol, atol=atol)
    for name in ("ss_pos", "ss_ctx"):
        np.testing.assert_allclose(dec[name].values, truth[name], rtol=5 * rtol)
    np.testing.assert_allclose(
        dec.ss_total.values, (dec.ss_pos + dec.ss_ctx + dec.ss_resid).values, rtol=1e-12
    )
    # The cast states, decomposed directly, agree to float64 rounding.
    ref = decompose_numpy(ds.hidden.values)
    assert_matches_reference(dec, ref, rtol=1e-9, atol=1e-9)
    if dtype != "float16":
        np.testing.assert_allclose(dec.ss_resid.values, truth["ss_resid"], rtol=1e-3)
        np.testing.assert_allclose(dec.ss_total.values, truth["ss_total"], rtol=1e-5)


def test_planted_from_zarr_store(tmp_path: Path) -> None:
    path = tmp_path / "hidden.zarr"
    truth = write_planted_store(str(path), n_contexts=16, length=6, n_layers=2, n_dims=4)
    ds = xr.open_zarr(path)
    with raise_if_dask_computes():
        dec = decompose(ds, positions=slice(1, None))
        resid = residual(ds, dec)
    record = json.loads(dec.attrs[api.DECOMPOSITION_ATTR])
    assert record["source_store"] == str(path)
    assert record["positions"] == [1, 5]
    dec = dec.compute()
    h = truth["h"].astype(np.float32)[:, 1:]
    assert_matches_reference(dec, decompose_numpy(h), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(resid.values, decompose_numpy(h)["resid"], atol=1e-9)


# --- agreement with the numpy reference ----------------------------------------------------


@pytest.mark.parametrize(
    ("positions", "contexts"),
    [
        (None, None),
        (slice(1, None), None),
        (None, [0, 2, 3, 7, 8]),
        (slice(1, None), np.array([9, 1, 4])),  # unsorted labels keep their order
        ([0, 2, 4], slice(3, 8)),
    ],
)
def test_matches_numpy_reference(positions: Any, contexts: Any) -> None:
    x = random_hidden((10, 6, 3, 4)).astype(np.float32)
    ds = hidden_dataset(x, chunks_context=4, chunks_layer=2)
    dec = decompose(ds, positions=positions, contexts=contexts)
    pos_idx = ds.position.to_index().get_indexer(dec.position.values)
    ctx_idx = ds.context.to_index().get_indexer(dec.context.values)
    ref = decompose_numpy(x[ctx_idx][:, pos_idx])
    assert_matches_reference(dec.compute(), ref, rtol=1e-9, atol=1e-9)
    if isinstance(contexts, np.ndarray):
        assert dec.context.values.tolist() == contexts.tolist()


def test_boolean_context_mask() -> None:
    x = random_hidden((6, 4, 2, 3))
    ds = hidden_dataset(x, chunks_context=4)
    mask = np.array([True, False, True, True, False, True])
    dec = decompose(ds, contexts=mask)
    assert_matches_reference(dec.compute(), decompose_numpy(x[mask]))


def test_in_memory_dataset_is_accepted() -> None:
    x = random_hidden((5, 4, 2, 3))
    ds = hidden_dataset(x).compute()
    assert not isinstance(ds.hidden.data, da.Array)
    dec = decompose(ds)
    assert isinstance(dec.pos.data, da.Array)
    assert_matches_reference(dec.compute(), decompose_numpy(x))


def test_transposed_hidden_is_accepted() -> None:
    x = random_hidden((5, 4, 2, 3))
    ds = hidden_dataset(x, chunks_context=2)
    ds = ds.assign({HIDDEN: ds.hidden.transpose(LAYER, DIM, CONTEXT, POSITION)})
    assert_matches_reference(decompose(ds).compute(), decompose_numpy(x))


def partitions(total: int) -> st.SearchStrategy[tuple[int, ...]]:
    """Chunkings of an axis of length ``total``: any sizes >= 1 that add up to it."""
    if total == 1:
        return st.just((1,))
    cuts = st.sets(st.integers(1, total - 1), max_size=total - 1)
    return cuts.map(lambda c: tuple(int(n) for n in np.diff([0, *sorted(c), total])))


@given(data=st.data())
def test_any_shape_and_chunking_matches_reference(data: st.DataObject) -> None:
    shape = (
        data.draw(st.integers(1, 9), label="C"),
        data.draw(st.integers(1, 7), label="T"),
        data.draw(st.integers(1, 4), label="L"),
        data.draw(st.integers(1, 5), label="D"),
    )
    chunks = tuple(data.draw(partitions(n), label=f"chunks{axis}") for axis, n in enumerate(shape))
    x = random_hidden(shape, seed=data.draw(st.integers(0, 2**16), label="seed"))
    ds = hidden_dataset(
        x,
        chunks_context=chunks[0],
        chunks_position=chunks[1],
        chunks_layer=chunks[2],
        chunks_dim=chunks[3],
    )
    dec = decompose(ds)
    assert dec.ctx.data.chunks[:2] == (chunks[0], chunks[2])
    assert dec.pos.data.chunks[:2] == (chunks[1], chunks[2])
    assert_matches_reference(dec.compute(scheduler="sync"), decompose_numpy(x))


# --- laziness and one pass ------------------------------------------------------------------


def test_decompose_and_residual_are_lazy() -> None:
    ds, _ = planted_hidden(20, 8, 3, 4, chunks_context=6, chunks_layer=2)
    with raise_if_dask_computes():
        dec = decompose(ds, positions=slice(1, None), contexts=[1, 2, 5, 8, 13])
        resid = residual(ds, dec)
    assert all(isinstance(dec[name].data, da.Array) for name in OUTPUT_NAMES)
    assert isinstance(resid.data, da.Array)


def test_compute_guard_really_raises() -> None:
    ds, _ = planted_hidden(6, 4, 2, 3, chunks_context=3)
    dec = decompose(ds)
    with pytest.raises(RuntimeError, match="Too many dask computes"), raise_if_dask_computes():
        _ = dec.ss_total.values
    with raise_if_dask_computes(max_computes=1) as counter:
        _ = dec.ss_total.values
    assert counter.total_computes == 1


def _input_chunk_count(x: da.Array) -> int:
    return int(np.prod([len(c) for c in x.chunks]))


def test_graph_has_one_kernel_task_per_input_chunk() -> None:
    x = da.from_array(random_hidden((10, 6, 3, 4)), chunks=(3, 4, 2, 4))
    out = decompose_arrays(x)
    dsk = dict(HighLevelGraph.merge(*[a.dask for a in out.values()]))
    _, dependents = dask.core.get_deps(dsk)
    inputs = [key for key in dsk if isinstance(key, tuple) and key[0] == x.name]
    assert len(inputs) == _input_chunk_count(x)
    assert all(len(dependents[key]) == 1 for key in inputs)
    kernel_keys = [k for k in dsk if isinstance(k, tuple) and "chunk-stats" in str(k[0])]
    assert len(kernel_keys) == _input_chunk_count(x)


def test_graph_pickles() -> None:
    ds, _ = planted_hidden(8, 4, 2, 3, chunks_context=3)
    dec = decompose(ds, positions=slice(1, None))
    for name in OUTPUT_NAMES:
        pickle.dumps(dict(dec[name].data.__dask_graph__()))


def test_dim_chunks_are_merged_before_the_kernel() -> None:
    x = da.from_array(random_hidden((4, 3, 2, 6)), chunks=(2, 3, 2, 4))
    out = decompose_arrays(x)
    assert out["mu"].chunks == ((2,), (6,))
    assert_matches_reference(dask.compute(out)[0], decompose_numpy(x.compute()))


def test_large_mean_keeps_sums_of_squares_accurate() -> None:
    # ss_total is a one-pass sum (sumsq - C T |mu|^2): check the cancellation stays small
    # when the mean is 1000 times the spread (larger than typical hidden states).
    x = (np.random.default_rng(1).normal(size=(32, 16, 2, 8)) + 1e3).astype(np.float32)
    (got,) = dask.compute(decompose_arrays(da.from_array(x, chunks=(5, 16, 1, 8))))
    ref = decompose_numpy(x)
    for name in ("ss_total", "ss_pos", "ss_ctx", "ss_resid"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-7, err_msg=name)


def test_decompose_arrays_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="4-d"):
        decompose_arrays(da.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="empty"):
        decompose_arrays(da.zeros((0, 3, 4, 2)))
    with pytest.raises(TypeError, match="real numeric"):
        decompose_arrays(da.zeros((2, 3, 4, 2), dtype=complex))


def _tracked_dataset() -> tuple[xr.Dataset, posctx.testing.ChunkReadCounter, int]:
    ds, _ = planted_hidden(23, 7, 3, 4, chunks_context=5, chunks_layer=2, chunks_position=4)
    tracked, reads = track_chunk_reads(ds.hidden.data)
    ds = ds.assign({HIDDEN: (HIDDEN_DIMS, tracked)})
    return ds, reads, _input_chunk_count(tracked)


def test_computing_everything_reads_each_chunk_once() -> None:
    ds, reads, n_chunks = _tracked_dataset()
    dec = decompose(ds, positions=slice(1, None))
    with raise_if_dask_computes(max_computes=1):
        dec.compute()
    assert reads.total == n_chunks
    assert set(reads.counts.values()) == {1}


def test_write_reads_each_chunk_once(tmp_path: Path) -> None:
    ds, reads, n_chunks = _tracked_dataset()
    dec = decompose(ds, contexts=[0, 1, 2, 3, 6, 7, 8, 12, 20, 21])  # irregular ctx chunks
    # Two computes: the pass over hidden writes the statistics, the second derives the
    # results from the stored statistics without touching hidden again.
    with raise_if_dask_computes(max_computes=2):
        write_decomposition(dec, tmp_path / "dec.zarr")
    # Unselected contexts' chunks are never read; the selected ones are read once.
    assert set(reads.counts.values()) == {1}
    assert reads.total <= n_chunks
    stored = open_decomposition(tmp_path / "dec.zarr").compute()
    xr.testing.assert_allclose(stored, dec.compute())


# --- schedulers -----------------------------------------------------------------------------


def test_schedulers_agree() -> None:
    from distributed import Client, LocalCluster

    ds, _ = planted_hidden(20, 8, 3, 4, chunks_context=6, chunks_layer=2)
    dec = decompose(ds, positions=slice(1, None))
    threaded = dec.compute(scheduler="threads")
    synchronous = dec.compute(scheduler="sync")
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster),
    ):
        distributed = dec.compute()
    for other in (synchronous, distributed):
        for name in OUTPUT_NAMES:
            np.testing.assert_allclose(other[name].values, threaded[name].values, rtol=1e-12)


# --- labels, attrs and I/O ---------------------------------------------------------------


def test_output_schema_and_provenance() -> None:
    ds, _ = planted_hidden(12, 6, 3, 4, chunks_context=5)
    ds.attrs["note"] = "kept"
    dec = decompose(ds, positions=slice(1, None), contexts=slice(2, 9))
    assert {name: dec[name].dims for name in dec.data_vars} == {
        name: api.OUTPUT_DIMS[name] for name in (*OUTPUT_NAMES, "pos_sum", "ctx_sum", "sumsq")
    }
    assert all(dec[name].dtype == np.float64 for name in dec.data_vars)
    # token_id, block_complete dropped; the sufficient statistics travel with the results
    assert set(dec.data_vars) == {*OUTPUT_NAMES, "pos_sum", "ctx_sum", "sumsq"}
    assert dec.position.values.tolist() == [1, 2, 3, 4, 5]
    assert dec.context.values.tolist() == list(range(2, 10))
    assert dec.topic.dims == (CONTEXT,) and dec.topic.values[0] == "topic2"
    assert dec.layer_name.values.tolist() == ds.layer_name.values.tolist()
    assert dec.attrs["note"] == "kept"
    assert dec.attrs["posctx"] == ds.attrs["posctx"]
    assert (ds.attrs[api.KIND_ATTR], dec.attrs[api.KIND_ATTR]) == ("hidden", "decomposition")
    record = json.loads(dec.attrs[api.DECOMPOSITION_ATTR])
    assert record["positions"] == [1, 5]
    assert (record["n_positions"], record["n_contexts"]) == (5, 8)
    assert record["source_store"] is None
    assert isinstance(record["posctx_version"], str) and record["posctx_version"]


def test_write_open_round_trip(tmp_path: Path) -> None:
    ds, _ = planted_hidden(14, 6, 2, 3, chunks_context=4)
    dec = decompose(ds, positions=slice(1, None), contexts=[0, 3, 4, 5, 9, 13])
    path = tmp_path / "dec.zarr"
    write_decomposition(dec, path)
    opened = open_decomposition(path)
    assert isinstance(opened.ctx.data, da.Array)  # opened lazily
    assert opened.attrs == dec.attrs
    assert opened.context.values.tolist() == [0, 3, 4, 5, 9, 13]
    assert opened.topic.values.tolist() == dec.topic.values.tolist()
    assert opened.layer_name.values.tolist() == dec.layer_name.values.tolist()
    assert all(opened[name].dtype == np.float64 for name in OUTPUT_NAMES)
    xr.testing.assert_allclose(opened.compute(), dec.compute(), rtol=0, atol=0)
    # Stored raw, like the hidden states: compressing float64 sums saved little and cost time.
    import zarr

    group = zarr.open_group(str(path), mode="r")
    stored = [name for name in opened.data_vars if name != "ctx"]  # ctx: derived when opened
    assert "ctx" not in group and "ctx_sum" in group
    assert {name: group[name].compressors for name in stored} == {name: () for name in stored}

    # Refused before any work: no compute.
    with pytest.raises(StoreError, match="already holds data"), raise_if_dask_computes():
        write_decomposition(dec, path)
    write_decomposition(decompose(ds), path, mode="w")
    assert open_decomposition(path).sizes[CONTEXT] == 14


def test_open_decomposition_refuses_other_stores(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no decomposition store"):
        open_decomposition(tmp_path / "missing.zarr")
    hidden_path = tmp_path / "hidden.zarr"
    write_planted_store(str(hidden_path), n_contexts=4, length=3, n_layers=1, n_dims=2)
    with pytest.raises(StoreError, match="not a posctx decomposition store"):
        open_decomposition(hidden_path)


def test_write_never_overwrites_a_hidden_store(tmp_path: Path) -> None:
    path = tmp_path / "hidden.zarr"
    write_planted_store(str(path), n_contexts=4, length=3, n_layers=1, n_dims=2)
    ds = xr.open_zarr(path)
    with pytest.raises(StoreError, match="is a hidden-state store"):
        write_decomposition(decompose(ds), path, mode="w")
    assert xr.open_zarr(path).hidden.shape == (4, 3, 1, 2)


def test_write_rejects_unknown_mode(tmp_path: Path) -> None:
    ds, _ = planted_hidden(4, 3, 1, 2)
    with pytest.raises(PosctxError, match="mode"):
        bad_mode: Any = "a"  # typed Any: this checks the runtime guard behind the Literal
        write_decomposition(decompose(ds), tmp_path / "x.zarr", mode=bad_mode)


# --- residual -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("positions", "contexts"), [(None, None), (slice(1, None), [1, 4, 5, 9]), ([0, 3], [7, 2])]
)
def test_residual_matches_numpy(positions: Any, contexts: Any) -> None:
    x = random_hidden((10, 5, 2, 3)).astype(np.float32)
    ds = hidden_dataset(x, chunks_context=3)
    dec = decompose(ds, positions=positions, contexts=contexts)
    resid = residual(ds, dec)
    assert resid.dims == HIDDEN_DIMS and resid.dtype == np.float64
    pos_idx = ds.position.to_index().get_indexer(dec.position.values)
    ctx_idx = ds.context.to_index().get_indexer(dec.context.values)
    ref = decompose_numpy(x[ctx_idx][:, pos_idx])
    np.testing.assert_allclose(resid.values, ref["resid"], atol=1e-9)
    assert resid.context.values.tolist() == dec.context.values.tolist()
    assert "topic" in resid.coords
    np.testing.assert_allclose(
        (resid**2).sum((CONTEXT, POSITION, DIM)).values, dec.ss_resid.values, rtol=1e-9
    )


def test_residual_from_stored_decomposition(tmp_path: Path) -> None:
    ds, truth = planted_hidden(9, 5, 2, 3, chunks_context=4, dtype="float64")
    write_decomposition(decompose(ds), tmp_path / "dec.zarr")
    dec = open_decomposition(tmp_path / "dec.zarr")
    with raise_if_dask_computes():
        resid = residual(ds, dec)
    np.testing.assert_allclose(resid.values, truth["resid"], atol=1e-10)


def test_residual_refuses_foreign_labels() -> None:
    ds, _ = planted_hidden(8, 4, 2, 3)
    other, _ = planted_hidden(12, 4, 2, 3)
    dec = decompose(other, contexts=slice(6, 11))
    with pytest.raises(PosctxError, match="lack context labels of the decomposition"):
        residual(ds, dec)


# --- errors ---------------------------------------------------------------------------------


def _small() -> xr.Dataset:
    return planted_hidden(6, 4, 2, 3, chunks_context=3)[0]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda ds: ds.drop_vars(HIDDEN), "no 'hidden' variable"),
        (lambda ds: ds.assign({HIDDEN: ds.hidden.isel({LAYER: 0})}), "expected"),
        (lambda ds: ds.assign({HIDDEN: ds.hidden.astype(np.int32)}), "dtype"),
    ],
)
def test_schema_errors(make: Any, match: str) -> None:
    with pytest.raises(PosctxError, match=match):
        decompose(make(_small()))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"positions": slice(10, None)}, "empty"),
        ({"contexts": []}, "empty"),
        ({"contexts": [0, 99]}, "does not match"),
        ({"contexts": [1, 1, 2]}, "repeats"),
        ({"positions": [[0, 1]]}, "1-d"),
    ],
)
def test_selection_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(PosctxError, match=match):
        decompose(_small(), **kwargs)


def test_scalar_selection_keeps_the_dimension() -> None:
    dec = decompose(_small(), contexts=2)
    assert dec.ctx.dims == (CONTEXT, LAYER, DIM) and dec.sizes[CONTEXT] == 1


def test_public_api() -> None:
    assert sorted(decompose_pkg.__all__) == [
        "combine",
        "decompose",
        "finalize",
        "norms",
        "open_decomposition",
        "paper_positions",
        "residual",
        "statistics",
        "update_decomposition",
        "write_decomposition",
    ]


def test_update_from_an_interrupted_store_records_what_it_used(tmp_path: Path) -> None:
    import zarr

    from posctx import open_decomposition, open_hidden, update_decomposition, write_decomposition
    from posctx.decomposition import decompose as decompose_store
    from posctx.testing import write_planted_store

    path = str(tmp_path / "h.zarr")
    write_planted_store(path, n_contexts=12, length=6, n_layers=2, n_dims=4, chunks_context=4)
    zarr.open_group(path, mode="r+", use_consolidated=False)["block_complete"][2] = 0
    partial = open_hidden(path, complete_only=True)
    write_decomposition(decompose_store(partial, contexts=slice(0, 3)), str(tmp_path / "a.zarr"))
    assert update_decomposition(partial, str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")) == 4
    record = json.loads(open_decomposition(str(tmp_path / "b.zarr")).attrs["posctx_decomposition"])
    assert record["contexts_used"] == [[0, 8]]
    assert record["complete_only"] == {"blocks_used": 2, "blocks_total": 3, "contexts_total": 12}


def test_block_stats_is_a_deprecated_name_of_chunk_stats() -> None:
    from posctx.decomposition import kernels

    x = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    with pytest.warns(FutureWarning, match="block_stats .*chunk_stats"):
        old = kernels.block_stats(x)
    for name, value in kernels.chunk_stats(x).items():
        np.testing.assert_array_equal(old[name], value)


def test_update_decomposition_takes_the_old_argument_order_with_a_warning(tmp_path: Path) -> None:
    from posctx import open_decomposition, update_decomposition, write_decomposition

    ds, _ = planted_hidden(10, 4, 2, 3)
    first = str(tmp_path / "a.zarr")
    write_decomposition(decompose(ds, contexts=slice(0, 5)), first)
    with pytest.warns(FutureWarning, match=r"update_decomposition\(ds, previous, out\)"):
        assert update_decomposition(first, ds, str(tmp_path / "b.zarr")) == 4  # type: ignore[arg-type]
    got = open_decomposition(str(tmp_path / "b.zarr")).ctx.values
    np.testing.assert_allclose(got, decompose(ds).ctx.values, rtol=1e-12, atol=1e-12)


# --- bootstrap cells (decompose(..., runs=N)) ------------------------------------------------


@pytest.mark.parametrize("direct", [True, False])
def test_cells_hold_the_sums_of_their_contexts(tmp_path: Path, direct: bool) -> None:
    """Per-cell position sums and squares equal numpy's, by the file reader and by dask; they
    add up to the decomposition's own sums, which the cells leave unchanged."""
    from posctx.decomposition.kernels import plan_cells

    path = str(tmp_path / "h.zarr")
    write_planted_store(path, n_contexts=37, length=9, n_layers=2, n_dims=4, n_topics=3)
    ds = posctx.open_hidden(path) if direct else xr.open_zarr(path)
    dec = posctx.decompose(ds, positions=slice(1, None), runs=5).compute()
    plain = posctx.decompose(ds, positions=slice(1, None)).compute()
    h = np.asarray(ds.hidden.sel(position=slice(1, None)).values, dtype=np.float64)
    cells = plan_cells(ds.topic.values if direct else ["all"] * 37, 5)
    assert cells["run_length"] == 8 and dec.sizes["cell"] == cells["count"].size
    for g in range(cells["count"].size):
        rows = h[cells["cell"] == g]
        np.testing.assert_allclose(dec.cell_pos_sum.values[g], rows.sum(axis=0), rtol=1e-12)
        np.testing.assert_allclose(dec.cell_sumsq.values[g], (rows**2).sum(axis=(0, 1, 3)))
    np.testing.assert_allclose(dec.cell_pos_sum.sum("cell"), dec.pos_sum, rtol=1e-12)
    np.testing.assert_allclose(dec.pos, plain.pos, rtol=1e-12, atol=1e-12)
    assert dec.cell_count.values.tolist() == cells["count"].tolist()
    record = json.loads(dec.attrs["posctx_decomposition"])["cells"]
    assert record["run_length"] == 8 and record["topics_split"] is direct


def test_cells_are_written_and_an_update_drops_them(tmp_path: Path) -> None:
    path = str(tmp_path / "h.zarr")
    write_planted_store(path, n_contexts=20, length=6, n_layers=1, n_dims=3, n_topics=2)
    dec = posctx.decompose(posctx.open_hidden(path), contexts=slice(0, 11), runs=4)
    posctx.write_decomposition(dec, str(tmp_path / "d.zarr"))
    opened = posctx.open_decomposition(str(tmp_path / "d.zarr"))
    np.testing.assert_allclose(opened.cell_pos_sum, dec.cell_pos_sum.compute())
    assert opened.cell_topic.values.tolist()[:2] == ["topic0", "topic1"]
    from posctx.decomposition.stores import decompose_store

    updated = decompose_store(path, tmp_path / "u.zarr", previous=tmp_path / "d.zarr")
    assert "cell_pos_sum" not in updated.decomposition
    assert "cells" not in json.loads(updated.decomposition.attrs["posctx_decomposition"])
    with pytest.raises(PosctxError, match="drop --runs"):
        decompose_store(path, tmp_path / "v.zarr", previous=tmp_path / "d.zarr", runs=4)
