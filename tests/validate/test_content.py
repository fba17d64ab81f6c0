"""posctx.validate.content: the finite, token_ids and special_tokens checks through one dask pass,
their exact wording, and the pieces they read the store with."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest

import posctx.store.direct
from posctx.store.direct import direct_source
from posctx.store.location import zarr_json
from posctx.testing import raise_if_dask_computes, write_large_planted_store
from posctx.validate.content import (
    _check_finite,
    _check_special_tokens,
    _check_token_ids,
    _ContentScan,
    _framing,
    _hidden_array,
    _plan_tokens,
    _vocab_limit,
)
from posctx.validate.kernels import Framing
from posctx.validate.report import _Skip
from posctx.validate.structure import _Store
from tests.stores import set_record, writable_group

CLS, SEP, VOCAB = 101, 102, 30522
SPECIAL = {
    "policy": "model",
    "prefix_ids": [CLS],
    "suffix_ids": [SEP],
    "prefix_tokens": ["[CLS]"],
    "suffix_tokens": ["[SEP]"],
    "separator_ids": [],
}
VALUES = 22 * 6 * 5 * 3


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """22 contexts of 6 tokens in 6 blocks (the last of 2), 5 layers in chunks of 2 + 2 + 1,
    3 dims; [CLS] 7 7 7 7 [SEP] token ids, a vocabulary and a framing recorded."""
    path = tmp_path_factory.mktemp("content") / "h.zarr"
    write_large_planted_store(
        str(path), n_contexts=22, length=6, n_layers=5, n_dims=3, chunk_contexts=4, chunk_layers=2
    )
    ids = np.full((22, 6), 7, dtype=np.int32)
    ids[:, 0], ids[:, -1] = CLS, SEP
    writable_group(path)["token_id"][...] = ids
    set_record(path, model={"vocab_size": VOCAB}, special_tokens=SPECIAL)
    return path


@pytest.fixture
def store(good: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good, tmp_path / "h.zarr"))


def _st(path: Path) -> _Store:
    return _Store(str(path), None, zarr_json(str(path), None) or {})


def _scan(path: Path, scan: bool = True) -> tuple[_Store, _ContentScan]:
    st = _st(path)
    return st, _ContentScan(st, scan=scan, progress=False)


# --- the recorded vocabulary and framing ------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "limit"),
    [
        ({"model": {"vocab_size": 50257}}, 50257),
        ({"model": {"vocab_size": 0}}, None),
        ({"model": {"vocab_size": "50257"}}, None),
        ({"model": {}}, None),
        ({"model": None}, None),
        ({}, None),
    ],
)
def test_the_vocabulary_limit_is_a_positive_recorded_size(
    record: dict[str, Any], limit: int | None
) -> None:
    assert _vocab_limit(SimpleNamespace(record=record)) == limit  # type: ignore[arg-type]


def test_the_framing_forbids_prefix_and_suffix_ids_but_not_separators() -> None:
    def framing(special: Any) -> Framing | None:
        return _framing(SimpleNamespace(record={"special_tokens": special}))  # type: ignore[arg-type]

    assert framing(SPECIAL) == Framing((CLS,), (SEP,), (CLS, SEP))
    # GPT-2's "\n\n" joins documents; a model whose EOS doubles as that separator keeps it.
    assert framing({**SPECIAL, "suffix_ids": [628], "separator_ids": [628]}) == Framing(
        (CLS,), (628,), (CLS,)
    )
    assert framing({"policy": "none", "prefix_ids": [], "suffix_ids": None}) == Framing((), (), ())
    assert framing({"policy": "model"}) is None  # no ids recorded
    assert framing(None) is None
    assert _framing(SimpleNamespace(record={})) is None  # type: ignore[arg-type]


# --- one pass for every content check ---------------------------------------------------------


def test_both_groups_are_read_in_one_compute_and_kept(good: Path) -> None:
    _, content = _scan(good)
    with raise_if_dask_computes(max_computes=1) as counter:
        hidden, tokens = content.hidden(), content.tokens()
        assert content.hidden() is hidden and content.tokens() is tokens
    assert counter.total_computes == 1
    assert (hidden.values, hidden.first, hidden.blocks) == (VALUES, None, ())
    assert (tokens.ids, tokens.min, tokens.max, tokens.contexts) == (22 * 6, 7, SEP, 22)
    _, quick = _scan(good, scan=False)  # no hidden group: token ids only, still one compute
    with raise_if_dask_computes(max_computes=1):
        assert quick.tokens().ids == 22 * 6


def test_a_group_that_cannot_be_planned_fails_alone(store: Path) -> None:
    shutil.rmtree(store / "token_id")
    _, content = _scan(store)
    with raise_if_dask_computes(max_computes=1):
        assert content.hidden().values == VALUES
        with pytest.raises(_Skip, match="^`token_id` is missing$"):
            content.tokens()


def test_a_pass_that_fails_is_read_again_group_by_group(store: Path) -> None:
    chunk = store / "hidden" / "c" / "1" / "0" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])  # block 1, layer chunk 1 cut short
    _, content = _scan(store)
    with raise_if_dask_computes(max_computes=3) as counter:
        with pytest.raises(OSError, match="holds 2 values, expected a chunk of"):
            content.hidden()
        assert content.tokens().contexts == 22
    assert counter.total_computes == 3  # the shared pass, then each group on its own


def test_hidden_is_read_from_the_chunk_files_when_it_can_be(
    good: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    st = _st(good)
    direct = _hidden_array(st)
    assert direct_source(direct) is not None
    stored = np.asarray(st.array("hidden")[...])
    np.testing.assert_array_equal(direct.compute(), stored)
    for fallback in (None, da.zeros((1, 6, 5, 3))):  # unsupported, or not the same shape
        monkeypatch.setattr(posctx.store.direct, "direct_array", lambda path, f=fallback: f)
        via_zarr = _hidden_array(st)
        assert direct_source(via_zarr) is None
        np.testing.assert_array_equal(via_zarr.compute(), stored)


def test_token_ids_are_planned_for_the_blocks_they_cover(store: Path) -> None:
    writable_group(store)["token_id"].resize((17, 6))  # shorter than the planned blocks
    st = _st(store)
    (summaries,) = dask.compute(_plan_tokens(st))
    assert [s.contexts for s in summaries] == [4, 4, 4, 4, 1]  # block 5 (20-21) has none
    bad = np.asarray(writable_group(store)["token_id"][...])
    bad[:, 1] = CLS
    writable_group(store)["token_id"][...] = bad
    set_record(store, special_tokens={**SPECIAL, "prefix_ids": [CLS] * 4, "suffix_ids": [SEP] * 3})
    (summaries,) = dask.compute(_plan_tokens(_st(store)))
    assert {(s.bad_prefix, s.mid) for s in summaries} == {(0, 0)}  # 4 + 3 > 6: not scanned
    set_record(store, special_tokens={**SPECIAL, "prefix_ids": ["x"]})  # malformed
    (summaries,) = dask.compute(_plan_tokens(_st(store)))
    assert sum(s.ids for s in summaries) == 17 * 6  # ranges still checked


def test_token_id_of_another_shape_is_skipped(store: Path) -> None:
    group = writable_group(store)
    del group["token_id"]
    group.create_array("token_id", shape=(22,), dtype="int32", dimension_names=("context",))
    _, content = _scan(store, scan=False)
    with pytest.raises(_Skip, match=r"^`token_id` is not \(context, position\)$"):
        content.tokens()


# --- finite -----------------------------------------------------------------------------------


def test_finite_values_are_counted_over_the_marked_blocks(store: Path) -> None:
    st, content = _scan(store)
    check = _check_finite(st, content)
    assert (check.name, check.status) == ("finite", "ok")
    assert check.detail == f"all {VALUES:,} values of 6 marked blocks are finite"
    assert check.figures == {
        "values_scanned": VALUES,
        "blocks_scanned": 6,
        "blocks_unmarked": 0,
        "nan": 0,
        "inf": 0,
        "vectors": 0,
        "blocks": [],
        "contexts": [],
    }
    writable_group(store)["block_complete"][5] = 0
    st, content = _scan(store)
    check = _check_finite(st, content)
    assert check.detail == (
        f"all {VALUES - 2 * 90:,} values of 5 marked blocks are finite; 1 unmarked block not scanned"
    )


def test_a_non_finite_value_is_reported_with_its_labels_and_the_fix(store: Path) -> None:
    writable_group(store)["hidden"][13, 4, 2, 1] = -np.inf
    st, content = _scan(store)
    check = _check_finite(st, content)
    assert check.status == "fail"
    assert check.detail == (
        "1 non-finite values (0 NaN, 1 inf) in 1 hidden vector of contexts [13], blocks [3] "
        "marked written; first at context=13, position=4, layer=2 (block_2): their completion "
        "markers lie; set block_complete[b] = 0 for those blocks (with zarr) and re-run the "
        "same `posctx extract` command to rewrite them"
    )
    assert check.figures["first"] == {
        "context": 13,
        "position": 4,
        "layer": 2,
        "layer_name": "block_2",
    }
    assert (check.figures["blocks"], check.figures["contexts"]) == ([3], [13])


# --- token ids --------------------------------------------------------------------------------


def test_token_ids_in_the_vocabulary_pass_with_their_range(good: Path) -> None:
    st, content = _scan(good, scan=False)
    check = _check_token_ids(st, content)
    assert (check.status, check.detail) == ("ok", f"all 132 ids in [0, {VOCAB}) (range 7..{SEP})")
    assert check.figures == {
        "vocab_size": VOCAB,
        "ids": 132,
        "min": 7,
        "max": SEP,
        "out_of_range": 0,
    }


def test_ids_outside_the_vocabulary_fail_and_without_one_only_negatives_do(store: Path) -> None:
    ids = writable_group(store)["token_id"]
    ids[9, 3] = VOCAB + 5
    ids[20, 2] = VOCAB
    st, content = _scan(store, scan=False)
    check = _check_token_ids(st, content)
    assert (check.status, check.detail) == (
        "fail",
        f"2 of 132 token ids outside [0, {VOCAB}) (the model's vocabulary); first at "
        f"context=9, position=3: {VOCAB + 5}; the token ids no longer match the model: "
        "re-extract into a new store",
    )
    assert check.figures["first"] == {"context": 9, "position": 3, "id": VOCAB + 5}
    set_record(store, model={})
    st, content = _scan(store, scan=False)
    check = _check_token_ids(st, content)
    assert (check.status, check.detail) == (
        "warn",
        f"all 132 ids >= 0 (range 7..{VOCAB + 5}), but the record has no vocab_size (a store "
        "made by an older posctx): the upper bound was not checked",
    )
    ids[0, 2] = -1
    st, content = _scan(store, scan=False)
    assert _check_token_ids(st, content).detail.startswith(
        "1 of 132 token ids outside [0, inf) (the model's vocabulary); first at context=0, "
        "position=2: -1;"
    )


# --- special tokens ---------------------------------------------------------------------------


def test_the_framing_is_described_when_every_context_has_it(store: Path) -> None:
    st, content = _scan(store, scan=False)
    check = _check_special_tokens(st, content)
    assert (check.status, check.detail) == (
        "ok",
        "policy 'model': every context is [CLS] + text + [SEP]; no prefix/suffix id mid-context",
    )
    assert check.figures == {
        "prefix_ids": [CLS],
        "suffix_ids": [SEP],
        "policy": "model",
        "bad_prefix_contexts": [],
        "bad_suffix_contexts": [],
        "mid_context": 0,
        "mid_context_first": [],
    }
    set_record(store, special_tokens={**SPECIAL, "prefix_tokens": [], "suffix_tokens": None})
    st, content = _scan(store, scan=False)
    assert _check_special_tokens(st, content).detail == (
        "policy 'model': every context is 101 + text + 102; no prefix/suffix id mid-context"
    )


def test_no_framing_recorded_or_none_chosen(store: Path) -> None:
    set_record(store, special_tokens={"policy": "model"})
    st, content = _scan(store, scan=False)
    check = _check_special_tokens(st, content)
    assert (check.status, check.detail, check.figures) == (
        "warn",
        "no special_tokens record: the framing of contexts cannot be checked",
        {},
    )
    none = {"policy": "none", "prefix_ids": [], "suffix_ids": [], "separator_ids": [628]}
    set_record(store, special_tokens=none)
    st, content = _scan(store, scan=False)
    assert _check_special_tokens(st, content).detail == (
        "policy 'none': every context is text; no special id (none recorded) mid-context"
    )


def test_every_framing_problem_is_listed_in_one_failure(store: Path) -> None:
    ids = writable_group(store)["token_id"]
    ids[3, 0] = 7  # no [CLS] in front
    ids[14, 0] = 7
    ids[10, 5] = 7  # no [SEP] at the end
    ids[18, 2] = SEP  # [SEP] mid-context
    ids[21, 1] = CLS  # [CLS] mid-context, the short last block
    st, content = _scan(store, scan=False)
    check = _check_special_tokens(st, content)
    assert (check.status, check.detail) == (
        "fail",
        "2 of 22 contexts do not start with [101] (first: context 3); 1 of 22 contexts do not "
        "end with [102] (first: context 10); 2 prefix/suffix ids mid-context, first '[SEP]' "
        "(id 102) at context=18, position=2: the model saw a misplaced [CLS]/BOS/[SEP] there; "
        "re-extract into a new store",
    )
    assert check.figures["bad_prefix_contexts"] == [3, 14]
    assert check.figures["mid_context_first"] == [[18, 2, SEP], [21, 1, CLS]]


def test_contexts_too_short_for_the_framing_fail_without_a_scan(store: Path) -> None:
    set_record(store, special_tokens={**SPECIAL, "prefix_ids": [CLS] * 4, "suffix_ids": [SEP] * 3})
    st, content = _scan(store, scan=False)
    check = _check_special_tokens(st, content)
    assert (check.status, check.detail) == (
        "fail",
        "contexts of 6 tokens cannot hold 4 prefix and 3 suffix ids",
    )
