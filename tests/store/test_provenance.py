"""posctx.store.provenance: the record every store carries, and each refusal of reading it."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import platform
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from posctx._version import version
from posctx.decomposition import decompose, write_decomposition
from posctx.errors import StoreError
from posctx.store.provenance import provenance_record, read_provenance
from posctx.testing import planted_hidden, write_planted_store
from posctx.types import SCHEMA_VERSION

OUTPUT_FIX = "choose another --out, or delete it yourself if it is disposable"
INPUT_FIX = "pass the store `posctx extract` wrote"


def _record() -> dict[str, object]:
    return provenance_record(
        config={"store": {"contexts": 4}},
        model={"name": "m", "weights_hash": "ab"},
        corpus={"name": "c"},
        special_tokens={"prefix_ids": [101]},
        chunk_contexts=2,
    )


def test_the_record_holds_the_settings_and_the_versions_that_made_the_store() -> None:
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    record = _record()
    after = dt.datetime.now(dt.timezone.utc)
    assert sorted(record) == [
        "chunk_contexts",
        "config",
        "corpus",
        "created",
        "model",
        "posctx_version",
        "special_tokens",
        "versions",
    ]
    assert record["config"] == {"store": {"contexts": 4}}
    assert record["model"] == {"name": "m", "weights_hash": "ab"}
    assert record["corpus"] == {"name": "c"} and record["special_tokens"] == {"prefix_ids": [101]}
    assert record["chunk_contexts"] == 2 and record["posctx_version"] == version()
    created = dt.datetime.fromisoformat(str(record["created"]))
    assert created.utcoffset() == dt.timedelta(0) and before <= created <= after
    assert record["versions"] == {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "xarray": xr.__version__,
        "zarr": zarr.__version__,
        "dask": importlib.metadata.version("dask"),
    }
    assert json.loads(json.dumps(record)) == record  # plain JSON, as Zarr attrs need


def test_the_record_copies_its_mappings() -> None:
    config = {"store": {"contexts": 4}}
    record = provenance_record(
        config=config, model={}, corpus={}, special_tokens={}, chunk_contexts=1
    )
    config["extra"] = {}
    assert "extra" not in record["config"]


def test_nothing_at_the_path_is_no_record(tmp_path: Path) -> None:
    assert read_provenance(str(tmp_path / "missing.zarr")) is None
    (tmp_path / "empty").mkdir()
    assert read_provenance(str(tmp_path / "empty")) is None  # a fine place to create a store


def test_a_hidden_state_store_gives_its_record(tmp_path: Path) -> None:
    path = tmp_path / "h.zarr"
    write_planted_store(str(path), n_contexts=4, length=3, n_layers=1, n_dims=2, seed=5)
    record = read_provenance(str(path))
    assert record is not None and record["planted"]["seed"] == 5
    assert read_provenance(f"file://{path}") == record


@pytest.mark.parametrize(("output", "fix"), [(True, OUTPUT_FIX), (False, INPUT_FIX)])
def test_a_decomposition_store_is_refused(tmp_path: Path, output: bool, fix: str) -> None:
    ds, _ = planted_hidden(4, 3, 1, 2)
    path = tmp_path / "d.zarr"
    write_decomposition(decompose(ds), path)
    with pytest.raises(StoreError) as info:
        read_provenance(str(path), output=output)
    assert str(info.value) == (
        f"{path} exists and is a posctx decomposition store, not a posctx hidden-state store: {fix}"
    )


@pytest.mark.parametrize(("output", "fix"), [(True, OUTPUT_FIX), (False, INPUT_FIX)])
def test_a_foreign_zarr_store_a_folder_or_a_file_is_refused(
    tmp_path: Path, output: bool, fix: str
) -> None:
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w").create_array("x", shape=(2,), dtype="f4")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    a_file = tmp_path / "file.zarr"
    a_file.write_text("not a store")
    for path in (foreign, folder, a_file):
        with pytest.raises(StoreError) as info:
            read_provenance(str(path), output=output)
        assert str(info.value) == (f"{path} exists and is not a posctx hidden-state store: {fix}")
    assert (folder / "notes.txt").read_text() == "keep"  # refused, never touched


def test_a_store_whose_creation_was_interrupted_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.zarr"
    # On object storage the record is written last: a store without it never finished.
    zarr.open_group(str(path), mode="w", attributes={"posctx_kind": "hidden", "posctx_schema": 1})
    with pytest.raises(StoreError) as info:
        read_provenance(str(path), output=True)
    assert str(info.value) == (
        f"{path}: the creation of this store was interrupted before it was usable: delete it "
        "and re-run the same command"
    )


@pytest.mark.parametrize("schema", [SCHEMA_VERSION + 1, 0, None])
def test_another_schema_version_is_refused(tmp_path: Path, schema: int | None) -> None:
    path = tmp_path / "h.zarr"
    write_planted_store(str(path), n_contexts=4, length=3, n_layers=1, n_dims=2)
    zarr.open_group(str(path), mode="r+", use_consolidated=False).attrs["posctx_schema"] = schema
    with pytest.raises(StoreError) as info:
        read_provenance(str(path))
    assert str(info.value) == (
        f"{path} has posctx schema {schema} but this posctx reads schema {SCHEMA_VERSION}: "
        "upgrade posctx to the version that wrote it (see attrs['posctx']['posctx_version']) "
        "or re-extract it with this one"
    )


@pytest.mark.parametrize(
    ("content", "cause"),
    [
        (b"{not json", "its zarr.json does not parse: Expecting property name"),
        (b"\xff\xfe{}", "its zarr.json does not parse: 'utf-8' codec can't decode"),
        (b"[1, 2]", None),  # JSON, but not a group's metadata
        (b'{"attributes": ["posctx"]}', None),
    ],
)
def test_a_damaged_zarr_json_is_refused_as_a_store_error(
    tmp_path: Path, content: bytes, cause: str | None
) -> None:
    path = tmp_path / "h.zarr"
    path.mkdir()
    (path / "zarr.json").write_bytes(content)
    with pytest.raises(StoreError) as info:
        read_provenance(str(path), output=True)
    message = str(info.value)
    assert message.startswith(f"{path} exists and is not a posctx hidden-state store")
    assert message.endswith(OUTPUT_FIX)
    if cause:
        assert cause in message
