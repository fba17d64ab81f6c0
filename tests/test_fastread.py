"""Direct chunk reads equal zarr's reads exactly, and step aside when they do not apply."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

import posctx
from posctx.fastread import direct_array
from posctx.testing import write_large_planted_store


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_equals_zarr_including_edges_and_missing_chunks(tmp_path: Path, dtype: str) -> None:
    path = str(tmp_path / "a")
    z = zarr.create_array(path, shape=(11, 5, 3), chunks=(4, 2, 3), dtype=dtype,
                          compressors=None, fill_value=np.nan)
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
