"""posctx.validate.api: what validate_store accepts, and how it runs its checks in order."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import zarr

import posctx.validate.api as api
from posctx.decomposition import decompose, write_decomposition
from posctx.errors import StoreError
from posctx.testing import planted_hidden, write_large_planted_store
from posctx.validate.api import _has_member, _open, clean_partial_files, validate_store
from posctx.validate.report import Check, _Skip
from posctx.validate.statistics import NO_STATISTICS

ORDER = [
    "schema",
    "labels",
    "provenance",
    "completeness",
    "partial_files",
    "finite",
    "token_ids",
    "special_tokens",
]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A planted store in the real schema, without a record of a model."""
    out = tmp_path / "h.zarr"
    write_large_planted_store(
        str(out), n_contexts=10, length=6, n_layers=2, n_dims=3, chunk_contexts=4
    )
    return out


def test_what_is_not_a_hidden_state_store_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "missing.zarr"
    with pytest.raises(StoreError) as info:
        _open(str(missing), None)
    assert str(info.value) == f"no posctx store at {missing}: check the path"
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    with pytest.raises(StoreError) as info:
        _open(str(folder), None)
    assert str(info.value) == (
        f"{folder} is not a Zarr v3 store (no zarr.json): give the path of a hidden-state store "
        "made by `posctx extract`"
    )
    dec = tmp_path / "d.zarr"
    write_decomposition(decompose(planted_hidden(4, 3, 1, 2)[0]), dec)
    with pytest.raises(StoreError) as info:
        _open(str(dec), None)
    assert str(info.value) == (
        f"{dec} is a posctx decomposition store, not a hidden-state store: validate the "
        "hidden-state store it was made from"
    )
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w").create_array("x", shape=(2,), dtype="i4")
    with pytest.raises(StoreError, match="is a Zarr store but not a posctx hidden-state store"):
        _open(str(foreign), None)


def test_a_store_that_lost_its_attrs_but_has_hidden_is_still_validated(path: Path) -> None:
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    for key in ("posctx_kind", "posctx_schema", "posctx"):
        del group.attrs[key]
    assert _open(str(path), None)["attributes"] == {}
    assert _has_member(str(path), None, "hidden") and not _has_member(str(path), None, "nope")
    assert not _has_member(str(path / "missing"), None, "hidden")  # no group: False, no error
    report = validate_store(path, scan=False)
    assert "root attr posctx_kind is None, not 'hidden'" in report.check("schema").detail


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "JSONDecodeError: Expecting property name"),
        ('{"attributes": [1]}', "the root zarr.json is not a Zarr group's metadata"),
        ("[1]", "the root zarr.json is not a Zarr group's metadata"),
    ],
)
def test_an_unreadable_root_fails_the_schema_and_skips_the_rest(
    path: Path, content: str, problem: str
) -> None:
    (path / "zarr.json").write_text(content)
    report = validate_store(path)
    assert [(c.name, c.status) for c in report.checks] == [("schema", "fail")]
    assert report.check("schema").detail.startswith(f"the root group cannot be opened ({problem}")
    assert report.skipped == [("all other checks", "the store's root metadata is unreadable")]


def test_checks_run_in_order_and_a_crashing_check_fails_alone(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = validate_store(path)
    assert [c.name for c in report.checks] == ORDER
    assert report.skipped == [
        ("statistics", NO_STATISTICS),  # a store without statistics
        ("rerun", "not requested (--rerun N / rerun=N recomputes N contexts with the model)"),
    ]

    def crash(st: object) -> Check:
        raise RuntimeError("boom")

    def skip(st: object) -> Check:
        raise _Skip("`offset` is missing")

    monkeypatch.setattr(api, "_check_labels", crash)
    monkeypatch.setattr(api, "_check_completeness", skip)
    report = validate_store(path, scan=False)
    assert report.check("labels").status == "fail"
    assert report.check("labels").detail == "could not be checked: RuntimeError: boom"
    assert [c.name for c in report.checks] == [
        n for n in ORDER if n not in ("completeness", "finite")
    ]
    assert report.skipped == [
        ("completeness", "cannot run: `offset` is missing"),
        ("finite", "not requested (--no-scan / scan=False)"),
        ("statistics", NO_STATISTICS),
        ("rerun", "not requested (--rerun N / rerun=N recomputes N contexts with the model)"),
    ]


def test_clean_partial_files_works_on_local_stores_only(path: Path) -> None:
    leftover = path / "hidden" / "c" / "0" / "0" / "0" / f"0.{uuid.uuid4().hex}.partial"
    leftover.write_bytes(b"x" * 7)
    assert clean_partial_files(str(path)) == (1, 7) and not leftover.exists()
    with pytest.raises(StoreError) as info:
        clean_partial_files("s3://bucket/h.zarr")
    assert str(info.value) == (
        "s3://bucket/h.zarr: --clean-partial applies to local stores only (object stores leave "
        "no partial files)"
    )


def test_cleaning_runs_before_the_checks_and_is_reported(path: Path) -> None:
    leftover = path / "hidden" / "c" / "1" / "0" / "0" / f"0.{uuid.uuid4().hex}.partial"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"x" * 5)
    partial = validate_store(path, scan=False, clean_partial=True).check("partial_files")
    assert partial.status == "ok" and partial.figures["removed"] == 1
    assert json.loads(json.dumps(partial.to_dict()))["figures"]["removed_bytes"] == 5
