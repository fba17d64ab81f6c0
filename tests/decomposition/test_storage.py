"""posctx.decomposition.storage: chunking for Zarr, what may be overwritten, and opening."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

from posctx.decomposition.api import DECOMPOSITION_ATTR, decompose
from posctx.decomposition.storage import (
    CONTEXT_CHUNK_BYTES,
    _refuse_overwriting_hidden,
    _uniform_chunks,
    open_decomposition,
    write_decomposition,
)
from posctx.errors import StoreError
from posctx.store import writing_consolidated
from posctx.testing import planted_hidden, write_planted_store

NOT_OURS = "(--overwrite replaces decomposition stores only), or delete it yourself"


def test_uniform_chunks_take_the_largest_chunk_and_merge_contexts_up_to_4_mib() -> None:
    assert CONTEXT_CHUNK_BYTES == 4 * 2**20
    small = xr.Dataset(
        {
            "ctx": (("context", "layer", "dim"), da.zeros((50, 2, 3), chunks=((3, 2) * 10, 1, 3))),
            "pos": (("position", "layer", "dim"), da.zeros((7, 2, 3), chunks=((4, 3), 2, 3))),
        }
    )
    # Rows of 48 bytes: the 3-context chunks merge into one chunk of every context.
    assert _uniform_chunks(small) == {"context": 50, "layer": 2, "dim": 3, "position": 4}
    wide = xr.Dataset({"ctx": (("context", "dim"), da.zeros((10, 2**17), chunks=(2, 2**17)))})
    # Rows of 1 MiB: chunks of 2 contexts (2 MiB) merge two by two, to 4 contexts (4 MiB).
    assert _uniform_chunks(wide) == {"context": 4, "dim": 2**17}
    huge = xr.Dataset({"ctx": (("context", "dim"), da.zeros((10, 2**20), chunks=(3, 2**20)))})
    assert _uniform_chunks(huge)["context"] == 3  # already beyond 4 MiB: kept
    assert _uniform_chunks(xr.Dataset({"x": ("dim", np.zeros(3))})) == {}  # in memory: nothing


def _decomposition_store(path: Path) -> None:
    ds, _ = planted_hidden(6, 4, 1, 2)
    write_decomposition(decompose(ds), path)


@pytest.mark.parametrize("where", ["missing.zarr", "empty", "d.zarr"])
def test_nothing_an_empty_folder_or_a_decomposition_may_be_written(
    tmp_path: Path, where: str
) -> None:
    (tmp_path / "empty").mkdir()
    _decomposition_store(tmp_path / "d.zarr")
    _refuse_overwriting_hidden(str(tmp_path / where), None)


def test_a_hidden_store_a_foreign_store_and_a_users_folder_are_never_overwritten(
    tmp_path: Path,
) -> None:
    hidden = tmp_path / "h.zarr"
    write_planted_store(str(hidden), n_contexts=4, length=3, n_layers=1, n_dims=2)
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w").create_array("x", shape=(2,), dtype="f4")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    cases = {
        hidden: f"{hidden} is a hidden-state store; write the decomposition somewhere else",
        foreign: f"{foreign} is a Zarr store but not a posctx decomposition: choose another --out {NOT_OURS}",
        folder: f"{folder} exists and is not a posctx decomposition store: choose another --out {NOT_OURS}",
    }
    ds, _ = planted_hidden(4, 3, 1, 2)
    for path, message in cases.items():
        with pytest.raises(StoreError) as info:
            write_decomposition(decompose(ds), path, mode="w")
        assert str(info.value) == message
    assert (folder / "thesis.tex").read_text() == "precious"
    assert zarr.open_group(str(foreign), mode="r")["x"].shape == (2,)


def test_mode_w_replaces_a_decomposition_store(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    _decomposition_store(path)
    ds, _ = planted_hidden(9, 4, 1, 2, seed=7)
    write_decomposition(decompose(ds), path, mode="w")
    np.testing.assert_allclose(
        open_decomposition(path).ctx.values, decompose(ds).ctx.values, rtol=1e-12
    )


def test_a_computed_decomposition_is_written_in_one_phase_with_the_same_numbers(
    tmp_path: Path,
) -> None:
    ds, _ = planted_hidden(10, 5, 2, 3, chunks_context=3)
    lazy = decompose(ds, positions=slice(1, None), moments=True)
    write_decomposition(lazy, tmp_path / "lazy.zarr")  # statistics first, then the results
    write_decomposition(lazy.compute(), tmp_path / "eager.zarr")
    a, b = open_decomposition(tmp_path / "lazy.zarr"), open_decomposition(tmp_path / "eager.zarr")
    assert sorted(a.data_vars) == sorted(b.data_vars) == sorted(lazy.data_vars)
    for name in a.data_vars:
        assert a[name].dtype == np.float64, name
        np.testing.assert_allclose(
            a[name].values, b[name].values, rtol=1e-12, atol=1e-12, err_msg=name
        )
    assert json.loads(a.attrs[DECOMPOSITION_ATTR]) == json.loads(b.attrs[DECOMPOSITION_ATTR])


def test_an_unwritable_location_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    ds, _ = planted_hidden(4, 3, 1, 2)
    target = tmp_path / "a-file" / "d.zarr"
    with pytest.raises(StoreError) as info:
        write_decomposition(decompose(ds), target)
    assert str(info.value).startswith(f"cannot write {target} (NotADirectoryError: ")
    assert str(info.value).endswith("choose a writable --out location, or fix the storage options")


def test_opening_names_what_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "missing.zarr"
    with pytest.raises(StoreError) as info:
        open_decomposition(missing)
    assert str(info.value).startswith(f"no decomposition store at {missing} (")
    assert str(info.value).endswith(
        f"): check the path, or make one with `posctx decompose STORE --out {missing}`"
    )
    hidden = tmp_path / "h.zarr"
    write_planted_store(str(hidden), n_contexts=4, length=3, n_layers=1, n_dims=2)
    with pytest.raises(StoreError) as info:
        open_decomposition(hidden)
    assert str(info.value) == (
        f"{hidden} is a hidden-state store, not a posctx decomposition store: run `posctx "
        f"decompose {hidden} --out DECOMPOSITION` (write_decomposition in Python) and pass "
        "DECOMPOSITION"
    )
    partial = tmp_path / "partial.zarr"
    ds, _ = planted_hidden(4, 3, 1, 2)
    with writing_consolidated():
        decompose(ds)[["mu", "pos"]].to_zarr(partial, zarr_format=3, consolidated=True)
    with pytest.raises(StoreError) as info:
        open_decomposition(partial)
    assert str(info.value) == (
        f"{partial} is not a posctx decomposition store (missing: ['ctx', 'ss_total', 'ss_pos', "
        "'ss_ctx', 'ss_resid']): pass a store written by `posctx decompose` (write_decomposition "
        "in Python)"
    )
