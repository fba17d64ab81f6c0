"""posctx.validate.statistics: the statistics check on planted stores, its wording and figures."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from posctx.store.location import zarr_json
from posctx.testing import write_large_planted_store
from posctx.validate.api import validate_store
from posctx.validate.content import STATISTICS_TOLERANCE, _ContentScan
from posctx.validate.statistics import NO_STATISTICS, _check_statistics, statistics_absent
from posctx.validate.structure import _Store
from tests.stores import set_record, writable_group


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 contexts of 6 tokens in blocks of 4 (the last of 2), 2 layers of 3 dims, with the
    statistics of one writer (``planted``) and the hidden states of the first 5 contexts."""
    path = tmp_path_factory.mktemp("statistics") / "h.zarr"
    write_large_planted_store(
        str(path),
        n_contexts=10,
        length=6,
        n_layers=2,
        n_dims=3,
        chunk_contexts=4,
        statistics=True,
        moments=True,
        hidden_contexts=5,
    )
    return path


@pytest.fixture
def store(good: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good, tmp_path / "h.zarr"))


def _check(path: Path, scan: bool = True) -> Any:
    st = _Store(str(path), None, zarr_json(str(path), None) or {})
    return _check_statistics(st, _ContentScan(st, scan=scan, progress=False))


def test_a_planted_store_with_statistics_passes(good: Path) -> None:
    check = _check(good)
    assert check.status == "ok", check.detail
    assert check.detail == (
        "plan of 4 topics, edges [0], with moments; 3 marked blocks each counted by exactly one "
        "of 1 partial; the per-context statistics of 10 contexts are finite; those of the 5 "
        "contexts with stored hidden states equal posctx.sums.block_statistics of them "
        "exactly; the store keeps the hidden states of its first 5 of 10 contexts (extracted "
        "with --hidden-contexts 5)"
    )
    figures = check.figures
    assert (figures["partials"], figures["blocks_counted"], figures["moments"]) == (1, 3, True)
    assert (figures["contexts_read"], figures["contexts_compared"]) == (10, 5)
    assert figures["made_on"] is None and figures["tolerance"] == STATISTICS_TOLERANCE


def test_a_store_without_statistics_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "h.zarr"
    write_large_planted_store(
        str(path), n_contexts=4, length=3, n_layers=1, n_dims=2, chunk_contexts=2
    )
    st = _Store(str(path), None, zarr_json(str(path), None) or {})
    assert statistics_absent(st) == NO_STATISTICS
    assert ("statistics", NO_STATISTICS) in validate_store(path).skipped


def test_a_record_that_does_not_parse_fails(store: Path) -> None:
    record = dict(writable_group(store).attrs["posctx"])
    set_record(store, statistics={**record["statistics"], "lead": 9})  # no core left
    st = _Store(str(store), None, zarr_json(str(store), None) or {})
    assert statistics_absent(st) is None  # reported by the check, not skipped
    check = _check(store)
    assert check.status == "fail"
    assert check.detail.startswith(
        "the statistics record (attrs['posctx']['statistics']) does not parse (ValueError: "
        "edges of 9 leading and 0 trailing positions leave no core in a context of 6): "
    )
    # The other checks treat the store as keeping every hidden state.
    report = validate_store(store)
    assert report.check("completeness").status == "fail"  # blocks 2 and 3 have no chunks


def test_arrays_that_disagree_with_the_plan_fail(store: Path) -> None:
    shutil.rmtree(store / "stat_edge")
    writable_group(store)["stat_ctx_sumsq"].resize((9, 2))
    check = _check(store)
    assert check.status == "fail"
    assert check.detail == (
        "`stat_ctx_sumsq` has context=9, expected context=10, layer=2; `stat_edge` is missing"
    )


def test_a_block_counted_twice_fails_naming_both_partials(store: Path) -> None:
    shutil.copytree(store / "stat_partials" / "planted.0", store / "stat_partials" / "other.0")
    group = writable_group(store / "stat_partials" / "other.0")
    group.attrs.update(owner="other")
    check = _check(store, scan=False)
    assert check.status == "fail"
    assert check.detail == (
        "blocks 0, 1, 2 are counted by more than one partial (stat_partials/other.0, "
        "stat_partials/planted.0): delete all but one of those partials and re-run the same "
        "`posctx extract` command: it computes the deleted partials' blocks again"
    )
    assert check.figures["blocks_counted_twice"] == [0, 1, 2]


def test_a_partial_without_its_sums_fails(store: Path) -> None:
    shutil.rmtree(store / "stat_partials" / "planted.0" / "m2")
    check = _check(store, scan=False)
    assert check.status == "fail" and check.detail == "partial planted.0 lacks `m2`"


@pytest.mark.parametrize(
    ("device", "change", "status"),
    [
        ("cuda", 1e-14, "ok"),  # an accelerator sums in another order
        ("cpu", 1e-14, "warn"),  # a CPU store normally matches exactly
        ("cuda", 1e-9, "fail"),
        ("cpu", 0.0, "ok"),
    ],
)
def test_the_tolerance_depends_on_where_the_store_was_made(
    store: Path, device: str, change: float, status: str
) -> None:
    set_record(store, config={"model": {"device": device}})
    sums = writable_group(store)["stat_ctx_sum"]
    sums[2] = sums[2] * (1 + change)  # block 0, whose hidden states are stored
    check = _check(store)
    assert check.status == status, check.detail
    assert check.figures["made_on"] == device
    assert check.figures["max_rel_diff"] == pytest.approx(change, rel=0.5, abs=0.0)
    if status == "ok" and change:
        rel = f"{check.figures['max_rel_diff']:.3g}"
        assert f"of them to {rel} relative (tolerance 1e-12 for a store made on cuda)" in (
            check.detail
        )
    if status == "warn":
        assert check.detail == (
            f"the stored statistics of 1 context differ from those of their stored hidden "
            f"states by up to {check.figures['max_rel_diff']:.3g} relative: a store made on a "
            "CPU normally matches exactly (another numpy build or CPU sums in another order); "
            "within the 1e-12 allowed for accelerators"
        )
    if status == "fail":
        assert check.figures["mismatched_contexts"] == [2]


def test_hidden_states_that_are_not_finite_are_left_to_the_finite_check(store: Path) -> None:
    writable_group(store)["hidden"][1, 2, 0, 0] = np.nan
    report = validate_store(store)
    assert [c.name for c in report.failures] == ["provenance", "finite"]  # planted: no model
    check = report.check("statistics")
    assert check.status == "ok" and check.figures["not_compared"] == [1]
    assert "; 1 context not compared: its hidden states are not finite (see finite)" in (
        check.detail
    )
