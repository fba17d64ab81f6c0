"""posctx.validate.rerun: the tolerance per dtype, the sampled re-computation and its verdicts."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from posctx.errors import ModelError
from posctx.extraction import extract
from posctx.store.location import consolidate, zarr_json
from posctx.validate.report import _Skip
from posctx.validate.rerun import (
    RERUN_TOLERANCE,
    _batches,
    _check_rerun,
    _differences,
    _rerun_model,
)
from posctx.validate.structure import _Store
from tests.stores import tiny_config, write_corpus

#: (storage dtype, compute dtype) of the stores below, and the tolerance each gets.
DTYPES = {
    ("float32", "float32"): 1e-4,
    ("float16", "float32"): 2e-3,
    ("float32", "bfloat16"): 1.6e-2,
}


@pytest.fixture(scope="module")
def stores(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], Path]:
    """Tiny GPT-2 stores of 8 contexts x 8 tokens, blocks of 4, batches of 3, per dtype pair."""
    root = tmp_path_factory.mktemp("rerun")
    corpus = write_corpus(root / "corpus")
    out = {}
    for storage, compute in DTYPES:
        path = root / f"{storage}-{compute}.zarr"
        config = tiny_config(tiny_models["gpt2"], corpus, storage_dtype=storage, dtype=compute)
        extract(config, str(path), progress=False)
        out[storage, compute] = path
    return out


@pytest.fixture
def store(stores: dict[tuple[str, str], Path], tmp_path: Path) -> Path:
    """A copy of the float32 store, to change."""
    return Path(shutil.copytree(stores["float32", "float32"], tmp_path / "h.zarr"))


def _check(path: Path, n: int = 8, seed: int = 0) -> Any:
    return _check_rerun(_Store(str(path), None, zarr_json(str(path), None) or {}), n, seed)


def _group(path: Path) -> Any:
    return zarr.open_group(str(path), mode="r+", use_consolidated=False)


def _set_record(path: Path, **changes: Any) -> None:
    record = dict(_group(path).attrs["posctx"])
    record.update(changes)
    _group(path).attrs["posctx"] = record
    consolidate(str(path), None)


# --- the pure helpers ------------------------------------------------------------------------


def test_tolerances_are_the_documented_ones() -> None:
    assert RERUN_TOLERANCE == {"float32": 1e-4, "float16": 2e-3, "bfloat16": 1.6e-2}


def test_differences_are_relative_per_hidden_vector() -> None:
    rng = np.random.default_rng(0)
    stored = rng.normal(size=(3, 2, 4)).astype(np.float32)  # (position, layer, dim)
    new = stored.astype(np.float64)
    new[1, 0] *= 1.001
    abs_diff, rel = _differences(new, stored)
    assert rel.shape == (3, 2)
    expected = np.zeros((3, 2))
    expected[1, 0] = 1e-3
    np.testing.assert_allclose(rel, expected, atol=1e-12)
    assert abs_diff == pytest.approx(1e-3 * np.abs(stored[1, 0]).max())


def test_a_non_finite_stored_value_never_matches() -> None:
    stored = np.ones((2, 1, 3), np.float32)
    stored[0, 0, 1] = np.nan
    abs_diff, rel = _differences(np.ones((2, 1, 3)), stored)
    assert np.isinf(abs_diff) and np.isinf(rel[0, 0]) and rel[1, 0] == 0.0
    # A zero stored vector: no division by zero, any difference is huge.
    zero = np.zeros((1, 1, 3), np.float32)
    assert _differences(zero, zero)[1][0, 0] == 0.0
    assert _differences(np.full((1, 1, 3), 1e-6), zero)[1][0, 0] > 1e30


def test_each_pick_is_recomputed_in_its_extraction_batch() -> None:
    picks = np.array([0, 2, 3, 4, 7, 9])
    # Blocks of 4 hold a batch of 3: batches restart at each block's start, stop at its end.
    assert _batches(4, 10, picks, 3) == {
        (0, 3): [0, 2],
        (3, 4): [3],
        (4, 7): [4],
        (7, 8): [7],
        (8, 10): [9],
    }
    # A batch of 32 spans blocks: one forward group of 8 blocks, cut at the store's end.
    assert _batches(4, 10, picks, 32) == {(0, 10): [0, 2, 3, 4, 7, 9]}
    # Blocks of 1 and batches of 3: groups of 3 blocks.
    assert _batches(1, 10, picks, 3) == {(0, 3): [0, 2], (3, 6): [3, 4], (6, 9): [7], (9, 10): [9]}
    assert _batches(4, 10, np.array([], int), 3) == {}


def test_the_recorded_model_loads_here_or_on_the_cpu_with_a_note(
    tiny_models: dict[str, Path],
) -> None:
    config = tiny_config(tiny_models["gpt2"]).model.to_dict()
    loaded, note = _rerun_model(config)
    assert note == "" and loaded.config.device == "cpu"
    loaded, note = _rerun_model({**config, "device": "cuda:99"})
    assert loaded.config.device == "cpu" and note.startswith(" (on cpu: device 'cuda:99'")
    with pytest.raises(ModelError):  # gone on the CPU too: reported as such
        _rerun_model({**config, "name": str(tiny_models["gpt2"]) + "-gone"})


# --- the check on real stores ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtypes", "tolerance"), list(DTYPES.items()), ids=["-".join(k) for k in DTYPES]
)
def test_each_dtype_gets_its_tolerance_and_a_fresh_store_matches(
    dtypes: tuple[str, str], tolerance: float, stores: dict[tuple[str, str], Path]
) -> None:
    check = _check(stores[dtypes])
    assert check.status == "ok", check.detail
    figures = check.figures
    assert figures["tolerance"] == tolerance
    assert (figures["storage_dtype"], figures["compute_dtype"]) == dtypes
    assert figures["contexts"] == list(range(8)) and figures["batch_size"] == 3
    # Recomputed inside the batches they were extracted in: the same values (bit for bit on
    # the machine that extracted them; well within the tolerance anywhere).
    assert figures["max_rel_diff"] <= tolerance / 10 and figures["mismatched_contexts"] == []
    assert check.detail.endswith(
        f"(tolerance {tolerance:g} for {dtypes[0]} storage, {dtypes[1]} compute); weights hash "
        "matches"
    )


@pytest.mark.parametrize(
    ("dtypes", "tolerance"), list(DTYPES.items()), ids=["-".join(k) for k in DTYPES]
)
def test_a_change_fails_only_beyond_the_dtypes_tolerance(
    dtypes: tuple[str, str], tolerance: float, stores: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    path = Path(shutil.copytree(stores[dtypes], tmp_path / "h.zarr"))
    hidden = _group(path)["hidden"]
    hidden[5] = (np.asarray(hidden[5], np.float64) * 1.001).astype(hidden.dtype)  # 0.1 %
    check = _check(path)
    assert check.figures["max_rel_diff"] == pytest.approx(1e-3, rel=0.6)
    assert check.status == ("fail" if tolerance < 1e-3 else "ok"), check.detail
    hidden[5] = (np.asarray(hidden[5], np.float64) * 1.05).astype(hidden.dtype)  # 5 %
    check = _check(path)
    assert check.status == "fail" and check.figures["mismatched_contexts"] == [5]


def test_the_worst_difference_is_located_by_its_labels(store: Path) -> None:
    hidden = _group(store)["hidden"]
    hidden[2, 5, 1] = hidden[2, 5, 1] * np.float32(1.1)
    check = _check(store)
    assert check.status == "fail" and check.figures["mismatched_contexts"] == [2]
    assert "worst at context=2, position=5, layer=1" in check.detail
    assert check.detail.endswith(
        "the stored values were changed after extraction or belong to other token ids"
    )


def test_the_sample_is_seeded_and_drawn_from_marked_blocks_only(store: Path) -> None:
    picks = _check(store, n=3, seed=4).figures["contexts"]
    expected = np.sort(np.random.default_rng(4).choice(np.arange(8), size=3, replace=False))
    assert picks == expected.tolist() == _check(store, n=3, seed=4).figures["contexts"]
    assert _check(store, n=99).figures["contexts"] == list(range(8))
    group = _group(store)
    group["block_complete"][0] = 0
    group["hidden"][1] = 0.0  # a changed context in an unmarked block is never compared
    check = _check(store, n=99)
    assert check.status == "ok" and check.figures["contexts"] == [4, 5, 6, 7]
    group["block_complete"][1] = 0
    with pytest.raises(_Skip, match="no block is marked written"):
        _check(store)


def test_token_ids_outside_the_vocabulary_leave_their_batch_unchecked(store: Path) -> None:
    _group(store)["token_id"][5, 2] = 5000  # tiny GPT-2 has 1024 ids
    check = _check(store)
    assert check.status == "fail" and check.figures["not_recomputed"] == [4, 5, 6]
    assert check.figures["mismatched_contexts"] == []
    assert "contexts [4, 5, 6] not recomputed (token ids outside the vocabulary in its batch)" in (
        check.detail
    )
    assert check.detail.startswith("5 contexts [0, 1, 2, 3, 7] recomputed")


def test_other_weights_other_layers_or_no_model_fail_without_comparing(store: Path) -> None:
    record = dict(_group(store).attrs["posctx"])
    _set_record(store, model={**record["model"], "weights_hash": "0" * 32})
    check = _check(store)
    assert check.status == "fail" and check.figures["weights_hash_recorded"] == "0" * 32
    assert check.detail.startswith("the model loaded now is not the one that made this store")
    assert check.detail.endswith("values not compared")
    _set_record(store, model=record["model"])
    _group(store)["layer"][:] = [0, 1, 5]
    check = _check(store)
    assert (check.status, check.detail) == (
        "fail",
        "the model gives layers [0, 1, 2], the store holds [0, 1, 5]",
    )
    gone = {**record["config"]["model"], "name": str(store / "no-such-model")}
    _set_record(store, config={**record["config"], "model": gone})
    check = _check(store)
    assert check.status == "fail"
    assert check.detail.startswith("cannot load the model that made this store: ")
    _set_record(store, config=None)
    del record["config"]
    _group(store).attrs["posctx"] = record
    with pytest.raises(_Skip, match="no provenance config says which model made the store"):
        _check(store)
