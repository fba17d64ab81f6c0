"""Direct chunk reads equal zarr's reads exactly, and step aside when they do not apply."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

import posctx
from posctx.store.direct import direct_array
from posctx.testing import write_large_planted_store


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_equals_zarr_including_edges_and_missing_chunks(tmp_path: Path, dtype: str) -> None:
    path = str(tmp_path / "a")
    z = zarr.create_array(
        path, shape=(11, 5, 3), chunks=(4, 2, 3), dtype=dtype, compressors=None, fill_value=np.nan
    )
    values = np.random.default_rng(0).normal(size=(11, 5, 3)).astype(dtype)
    z[:8] = values[:8]  # chunks of rows 8..10 never written
    x = direct_array(path)
    assert x.chunks == ((4, 4, 3), (2, 2, 1), (3,)) and x.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(x.compute(), z[:])
    assert np.isnan(x[8:].compute()).all()


def test_steps_aside_for_codecs_and_urls(tmp_path: Path) -> None:
    path = str(tmp_path / "b")
    zarr.create_array(path, shape=(4,), chunks=(2,), dtype="f4")  # default zstd compressor
    assert direct_array(path) is None
    assert direct_array("s3://bucket/store/hidden") is None
    assert direct_array(tmp_path / "missing") is None


def test_open_hidden_reads_directly_and_identically(tmp_path: Path) -> None:
    path = str(tmp_path / "h.zarr")
    write_large_planted_store(path, n_contexts=10, length=6, n_layers=2, n_dims=3, chunk_contexts=4)
    ds = posctx.open_hidden(path)
    assert ds.hidden.data.name.startswith("posctx-direct-read")
    np.testing.assert_array_equal(ds.hidden.values, zarr.open_array(path + "/hidden")[:])
    via_zarr = posctx.open_hidden(path, chunks={"position": -1})
    assert not via_zarr.hidden.data.name.startswith("posctx-direct-read")


def _layer_chunked_store(path: str) -> np.ndarray:
    from posctx.store import BlockWriter, build_dataset, create_store, plan_blocks

    rng = np.random.default_rng(3)
    values = (rng.normal(size=(11, 6, 5, 4)) + 3).astype(np.float32)
    ds, enc = build_dataset(
        token_ids=np.zeros((11, 6), np.int32),
        topic=np.array(["a", "b"] * 5 + ["a"]),
        source=np.array(["s"] * 11),
        offset=np.zeros(11),
        layers=tuple(range(5)),
        layer_names=tuple(f"l{i}" for i in range(5)),
        hidden_size=4,
        storage_dtype="float32",
        chunk_contexts=4,
        chunk_layers=2,
        provenance={},
    )
    create_store(path, ds, enc)
    writer = BlockWriter(path)
    for block in plan_blocks(11, 4):
        writer.write(block, values[block.start : block.stop])
    return values


@pytest.mark.parametrize(
    ("positions", "contexts"),
    [
        (None, None),
        (slice(1, None), None),
        (slice(2, 4), [9, 1, 2, 3, 10, 0]),
        (slice(1, None), slice(3, 8)),
    ],
)
def test_statistics_from_files_equal_the_general_path(
    tmp_path: Path, positions: slice | None, contexts: object
) -> None:
    from posctx.decomposition.kernels import decompose_numpy

    path = str(tmp_path / "h.zarr")
    values = _layer_chunked_store(path)
    ds = posctx.open_hidden(path)
    dec = posctx.decompose(ds, positions=positions, contexts=contexts)
    assert any(name.startswith("posctx-file-stats") for name in dec.ctx_sum.data.dask.layers)
    got = dec.compute()
    ref = decompose_numpy(
        ds.hidden.sel(
            position=positions or slice(None),
            context=contexts if contexts is not None else slice(None),
        ).values
    )
    for name in ("mu", "pos", "ctx", "ss_total", "ss_pos", "ss_ctx", "ss_resid"):
        np.testing.assert_allclose(got[name].values, ref[name], rtol=1e-12, atol=1e-12)
    assert values.shape == (11, 6, 5, 4)


def test_position_lists_use_the_general_path(tmp_path: Path) -> None:
    path = str(tmp_path / "h.zarr")
    _layer_chunked_store(path)
    dec = posctx.decompose(posctx.open_hidden(path), positions=[0, 2, 3])
    assert not any(name.startswith("posctx-file-stats") for name in dec.ctx_sum.data.dask.layers)


def test_the_source_travels_in_the_graph_not_in_a_global(tmp_path: Path) -> None:
    """Two arrays over the same files, one renamed: each finds its source in its own graph."""
    import pickle

    from posctx.store import direct

    path = str(tmp_path / "a")
    zarr.create_array(path, shape=(4, 3), chunks=(2, 3), dtype="f4", compressors=None)
    x = direct_array(path)
    source = direct.direct_source(x)
    assert source is not None and source.chunk_shape == (2, 3)
    assert not any(isinstance(v, dict) and x.name in v for v in vars(direct).values())
    assert direct.direct_source(pickle.loads(pickle.dumps(x))) == source
    assert direct.direct_source(x + 1) is None  # a derived array is no longer the files
    assert direct.direct_source(np.zeros(3)) is None


def test_rows_read_into_one_buffer_and_fill_missing_chunks(tmp_path: Path) -> None:
    from posctx.store.direct import open_source

    path = str(tmp_path / "a")
    z = zarr.create_array(
        path, shape=(5, 2, 3), chunks=(2, 2, 3), dtype="f2", compressors=None, fill_value=7
    )
    values = np.arange(5 * 6, dtype="f2").reshape(5, 2, 3)
    z[:4] = values[:4]
    source = open_source(path)
    assert source is not None and source.chunk_bounds((2, 0, 0)) == (1, 2, 3)
    got = [row.copy() for row in source.rows((1, 0, 0), (1, 0))]
    np.testing.assert_array_equal(np.stack(got), values[[3, 2]])
    missing = list(source.rows((2, 0, 0), (0,)))
    np.testing.assert_array_equal(missing[0], np.full((2, 3), 7, "f2"))


def test_file_chunk_stats_equal_chunk_stats_of_the_same_rows(tmp_path: Path) -> None:
    from posctx.decomposition.graph import file_chunk_stats
    from posctx.decomposition.kernels import chunk_stats
    from posctx.store.direct import open_source

    path = str(tmp_path / "h.zarr")
    values = _layer_chunked_store(path)
    source = open_source(path + "/hidden")
    assert source is not None
    got = file_chunk_stats(source, (1, 0, 2, 0), (3, 0), 1, 5)  # contexts 7 and 4, layers 4..5
    want = chunk_stats(values[[7, 4], 1:5, 4:5])
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-13)


def test_fastread_names_still_resolve_with_a_warning() -> None:
    import posctx.fastread as old
    from posctx.decomposition.graph import file_chunk_stats
    from posctx.store.direct import direct_array as new

    with pytest.warns(
        FutureWarning, match=r"posctx\.fastread\.direct_array .*posctx\.store\.direct"
    ):
        assert old.direct_array is new
    with pytest.warns(FutureWarning, match="file_chunk_stats"):
        assert old.file_block_stats is file_chunk_stats
    with pytest.raises(AttributeError):
        _ = old.nothing
