"""`posctx validate`: a good store passes every check; each kind of damage fails the right one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import posctx
from posctx.cli import main
from posctx.config import CorpusConfig, ExtractConfig, ModelConfig, StoreConfig
from posctx.errors import StoreError
from posctx.extraction import extract
from posctx.store.location import consolidate
from posctx.testing import raise_if_dask_computes, write_large_planted_store
from posctx.validate import ValidationReport, validate_store
from posctx.validate.statistics import NO_STATISTICS
from tests.stores import writable_group

CHECKS = [
    "schema",
    "labels",
    "provenance",
    "completeness",
    "partial_files",
    "finite",
    "token_ids",
    "special_tokens",
    "statistics",
    "rerun",
]
CLS, SEP, BERT_VOCAB = 101, 102, 30522


def _config(model: Path, **store: Any) -> ExtractConfig:
    return ExtractConfig(
        corpus=CorpusConfig(spec="stdlib"),
        model=ModelConfig(name=str(model), batch_size=3),
        store=StoreConfig(**{"contexts": 12, "length": 16, "chunk_contexts": 4, **store}),
    )


@pytest.fixture(scope="module")
def good(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny-BERT store: 12 contexts of 16 tokens in 3 blocks of 4."""
    out = tmp_path_factory.mktemp("validate") / "good.zarr"
    extract(_config(tiny_models["bert"]), str(out), progress=False)
    return out


@pytest.fixture
def store(good: Path, tmp_path: Path) -> Path:
    """A copy of the good store, to damage."""
    return Path(shutil.copytree(good, tmp_path / "h.zarr"))


def _set_attrs(path: Path, **attrs: Any) -> None:
    writable_group(path).attrs.update(attrs)
    consolidate(str(path), None)  # an attrs write drops the consolidated copy: put it back


def _statuses(report: ValidationReport) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            digest.update(name.encode() + (Path(root) / name).read_bytes())
    return digest.hexdigest()


def test_good_store_passes_every_check_and_is_not_modified(good: Path) -> None:
    before = _digest(good)
    report = validate_store(good, rerun=3, seed=1)
    assert _statuses(report) == dict.fromkeys(CHECKS, "ok"), report.format()
    assert report.ok and report.skipped == [] and report.verdict() == "OK: all 10 checks passed"
    rerun = report.check("rerun").figures
    assert len(rerun["contexts"]) == 3 and rerun["batch_size"] == 3
    # Recomputed inside the batches they were extracted in: same kernels, same values.
    assert rerun["max_rel_diff"] <= 1e-6 and rerun["tolerance"] == 1e-4
    assert report.check("token_ids").figures["vocab_size"] == BERT_VOCAB
    assert report.check("finite").figures["values_scanned"] == 12 * 16 * 3 * 32
    assert "[CLS] + text + [SEP]" in report.check("special_tokens").detail
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["ok"] is True and [c["name"] for c in as_json["checks"]] == CHECKS
    assert _digest(good) == before  # validation only reads

    quick = validate_store(good, scan=False)
    assert "finite" in dict(quick.skipped) and "rerun" in dict(quick.skipped)
    assert quick.ok and "finite" not in _statuses(quick)


def test_unmarked_blocks_are_holes_and_never_scanned_or_rerun(store: Path) -> None:
    group = writable_group(store)
    group["block_complete"][1] = 0
    group["hidden"][4:8] = np.nan  # what an unwritten block holds
    report = validate_store(store, rerun=12)
    assert _statuses(report)["completeness"] == "fail" and not report.ok
    completeness = report.check("completeness")
    assert completeness.figures["holes"] == [[4, 7]]
    assert "contexts 4-7" in completeness.detail
    assert "re-run the same `posctx extract` command" in completeness.detail
    assert "complete_only=True" in completeness.detail
    finite = report.check("finite")  # the unmarked block is not scanned
    assert finite.status == "ok" and finite.figures["blocks_unmarked"] == 1
    rerun = report.check("rerun")  # nor recomputed
    assert rerun.status == "ok" and not set(rerun.figures["contexts"]) & {4, 5, 6, 7}
    assert len(rerun.figures["contexts"]) == 8
    assert report.verdict() == "FAIL: 1 check failed (completeness)"

    group["block_complete"][2] = 0  # adjacent holes are one range
    assert (
        "contexts 4-11 (8 contexts)"
        in validate_store(store, scan=False).check("completeness").detail
    )


def test_missing_chunk_files_of_marked_blocks_fail_completeness(store: Path) -> None:
    (store / "hidden" / "c" / "1" / "0" / "0" / "0").unlink()  # a partial copy
    completeness = validate_store(store, scan=False).check("completeness")  # no scan needed
    assert completeness.status == "fail"
    assert completeness.detail == (
        "all 3 blocks marked written, but 1 chunk of hidden is missing although its block is "
        "marked written (block 1; e.g. hidden/c/1/0/0/0): the store is damaged (a partial "
        "copy?); restore the files, or re-run the same `posctx extract` command: it computes "
        "the blocks whose files are missing again"
    )
    figures = completeness.figures
    assert (figures["missing_chunks"], figures["damaged_blocks"]) == (1, [1])
    assert figures["missing_chunk_keys"] == ["hidden/c/1/0/0/0"]
    finite = validate_store(store).check("finite")  # the scan reads it as NaN, as before
    assert finite.status == "fail" and finite.figures["blocks"] == [1]

    group = writable_group(store)
    group["block_complete"][2] = 0  # an interrupted extraction as well: both are reported
    detail = validate_store(store, scan=False).check("completeness").detail
    assert detail.startswith("1 of 3 blocks never marked written: contexts 8-11 (4 contexts)")
    assert "; and 1 chunk of hidden is missing although its block is marked written" in detail
    group["block_complete"][1] = 0  # the advice followed: block 1 is a hole to re-extract
    completeness = validate_store(store, scan=False).check("completeness")
    assert completeness.detail.startswith("2 of 3 blocks never marked written: contexts 4-11")
    assert "damaged" not in completeness.detail and completeness.figures["missing_chunks"] == 0


def test_nan_in_a_marked_block_fails_the_scan(store: Path) -> None:
    group = writable_group(store)
    group["hidden"][5, 3, 1, 0] = np.nan
    group["hidden"][9, 0, 2, :] = np.inf
    report = validate_store(store)
    finite = report.check("finite")
    assert finite.status == "fail", finite
    assert finite.figures["first"] == {
        "context": 5,
        "position": 3,
        "layer": 1,
        "layer_name": "block_1",
    }
    assert (finite.figures["nan"], finite.figures["inf"], finite.figures["vectors"]) == (1, 32, 2)
    assert finite.figures["contexts"] == [5, 9] and finite.figures["blocks"] == [1, 2]
    assert "context=5, position=3, layer=1" in finite.detail and "markers lie" in finite.detail
    assert [c.name for c in report.failures] == ["finite"]


def test_token_ids_outside_the_vocabulary_fail(store: Path) -> None:
    writable_group(store)["token_id"][2, 4] = BERT_VOCAB
    report = validate_store(store, scan=False)
    tokens = report.check("token_ids")
    assert tokens.status == "fail"
    assert tokens.figures["first"] == {"context": 2, "position": 4, "id": BERT_VOCAB}
    assert tokens.figures["out_of_range"] == 1 and f"[0, {BERT_VOCAB})" in tokens.detail
    assert report.check("special_tokens").status == "ok"

    # A store from before vocab_size was recorded: the lower bound only, with a warning.
    writable_group(store)["token_id"][2, 4] = 2000
    record = dict(writable_group(store).attrs["posctx"])
    record["model"] = {k: v for k, v in record["model"].items() if k != "vocab_size"}
    _set_attrs(store, posctx=record)
    old = validate_store(store, scan=False)
    assert (
        old.check("token_ids").status == "warn" and "no vocab_size" in old.check("token_ids").detail
    )
    assert old.ok

    # A context whose batch holds an id the model has no embedding for cannot be recomputed.
    writable_group(store)["token_id"][2, 4] = BERT_VOCAB
    rerun = validate_store(store, scan=False, rerun=12).check("rerun")
    assert rerun.status == "fail" and rerun.figures["not_recomputed"] == [0, 1, 2]
    assert rerun.figures["mismatched_contexts"] == [] and "not recomputed" in rerun.detail


def test_misplaced_special_tokens_fail(store: Path) -> None:
    ids = writable_group(store)["token_id"]
    ids[7, 8] = CLS  # [CLS] mid-context: the failure a peer tool had
    report = validate_store(store, scan=False)
    special = report.check("special_tokens")
    assert special.status == "fail" and special.figures["mid_context"] == 1
    assert special.figures["mid_context_first"] == [[7, 8, CLS]]
    assert "'[CLS]' (id 101) at context=7, position=8" in special.detail
    assert report.check("token_ids").status == "ok"

    ids[3, 0] = 2000  # no [CLS] in front
    ids[10, 15] = 2000  # no [SEP] at the end
    special = validate_store(store, scan=False).check("special_tokens")
    assert special.figures["bad_prefix_contexts"] == [3]
    assert special.figures["bad_suffix_contexts"] == [10]
    assert "do not start with [101]" in special.detail and "do not end with [102]" in special.detail


def test_missing_or_inconsistent_arrays_fail_the_schema(store: Path) -> None:
    shutil.rmtree(store / "topic")
    writable_group(store)["source"].resize((11,))
    report = validate_store(store)  # never raises for a damaged store
    schema = report.check("schema")
    assert schema.status == "fail"
    assert "`topic` is missing" in schema.detail
    assert "`source` has context=11, other arrays context=12" in schema.detail
    assert "consolidated metadata is stale for ['source', 'topic']" in schema.detail
    assert report.check("labels").status == "ok"  # what is there is well-formed
    assert report.check("finite").status == "ok"

    (store / "hidden" / "zarr.json").write_text("{not json")
    broken = validate_store(store)
    assert "`hidden` cannot be opened" in broken.check("schema").detail
    assert "finite" in dict(broken.skipped) and not broken.ok

    (store / "zarr.json").write_text("{not json")
    unreadable = validate_store(store)
    assert [(c.name, c.status) for c in unreadable.checks] == [("schema", "fail")]
    assert "the root group cannot be opened" in unreadable.check("schema").detail


def test_other_schema_version_and_mismatched_record_fail(store: Path) -> None:
    _set_attrs(store, posctx_schema=2)
    report = validate_store(store, scan=False)
    schema = report.check("schema")
    assert schema.status == "fail" and schema.figures["schema_version"] == 2
    assert "store schema version 2, this posctx reads schema 1: upgrade posctx" in schema.detail

    _set_attrs(store, posctx_schema=1, posctx_kind=None)
    assert (
        "posctx_kind is None, not 'hidden'"
        in validate_store(store, scan=False).check("schema").detail
    )
    _set_attrs(store, posctx_kind="hidden")
    record = dict(writable_group(store).attrs["posctx"])
    record["config"] = {**record["config"], "store": {**record["config"]["store"], "contexts": 8}}
    _set_attrs(store, posctx=record)
    provenance = validate_store(store, scan=False).check("provenance")
    assert provenance.status == "fail"
    assert (
        "config says 8 contexts, the arrays hold 12: an extension to 12 contexts"
        in provenance.detail
    )

    _set_attrs(store, posctx={"config": "nonsense"})
    report = validate_store(store, scan=False)
    assert report.check("provenance").status == "fail"
    assert "record lacks" in report.check("provenance").detail


def test_an_attrs_write_without_consolidating_is_a_warning(store: Path) -> None:
    writable_group(store).attrs.update({"title": "renamed"})
    report = validate_store(store, scan=False)
    schema = report.check("schema")
    assert schema.status == "warn" and "no consolidated metadata" in schema.detail
    assert report.ok


def test_tampered_values_and_other_weights_fail_the_rerun(store: Path) -> None:
    hidden = writable_group(store)["hidden"]
    hidden[6] = hidden[6] + np.float32(0.5)
    report = validate_store(store, rerun=12)
    rerun = report.check("rerun")
    assert rerun.status == "fail" and rerun.figures["mismatched_contexts"] == [6]
    assert rerun.figures["max_abs_diff"] == pytest.approx(0.5, rel=1e-5)
    assert rerun.figures["max_rel_diff"] > 0.01
    assert "contexts [6] differ from what the model computes" in rerun.detail
    assert report.check("finite").status == "ok"  # finite, but wrong

    record = dict(writable_group(store).attrs["posctx"])
    record["model"] = {**record["model"], "weights_hash": "0" * 32}
    _set_attrs(store, posctx=record)
    rerun = validate_store(store, scan=False, rerun=1).check("rerun")
    assert rerun.status == "fail"
    assert "the model loaded now is not the one that made this store" in rerun.detail


@pytest.mark.parametrize(("kind", "frame"), [("gpt2", "text"), ("llama", "<s> + text")])
def test_decoder_stores_validate(
    kind: str, frame: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "h.zarr"
    extract(_config(tiny_models[kind], contexts=6), str(out), progress=False)
    report = validate_store(out, rerun=2)
    assert report.ok and not report.warnings, report.format()
    assert f"every context is {frame};" in report.check("special_tokens").detail
    if kind == "llama":  # a BOS id (1) mid-context is caught like [CLS]
        writable_group(out)["token_id"][4, 9] = 1
        special = validate_store(out, scan=False).check("special_tokens")
        assert special.status == "fail" and special.figures["mid_context_first"] == [[4, 9, 1]]


def test_rerun_falls_back_to_the_cpu_when_the_recorded_device_is_missing(store: Path) -> None:
    record = dict(writable_group(store).attrs["posctx"])
    model = {**record["config"]["model"], "device": "cuda:7"}
    record["config"] = {**record["config"], "model": model}
    _set_attrs(store, posctx=record)
    rerun = validate_store(store, scan=False, rerun=2).check("rerun")
    assert rerun.status == "ok" and "(on cpu: device 'cuda:7'" in rerun.detail, rerun.detail


def test_float16_store_reruns_within_its_tolerance(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "f16.zarr"
    extract(
        _config(tiny_models["bert"], contexts=6, storage_dtype="float16"), str(out), progress=False
    )
    report = validate_store(out, rerun=2)
    assert report.ok, report.format()
    assert report.check("rerun").figures["tolerance"] == 2e-3


def test_leftover_partial_files_warn_and_clean_partial_removes_them(store: Path) -> None:
    leftover = store / "hidden" / "c" / "1" / "0" / "0" / f"0.{uuid.uuid4().hex}.partial"
    leftover.write_bytes(b"x" * 100)
    unrelated = store / "notes.partial"  # not zarr's naming: never touched
    unrelated.write_text("mine")
    report = validate_store(store, scan=False)
    partial = report.check("partial_files")
    assert partial.status == "warn" and partial.figures == {"count": 1, "bytes": 100}
    assert "--clean-partial" in partial.detail and "hidden/c/1/0/0/0." in partial.detail
    assert report.ok  # harmless to readers

    cleaned = validate_store(store, scan=False, clean_partial=True).check("partial_files")
    assert cleaned.status == "ok" and cleaned.figures["removed"] == 1
    assert not leftover.exists() and unrelated.read_text() == "mine"


def test_not_a_hidden_store_raises(good: Path, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no posctx store at"):
        validate_store(tmp_path / "missing.zarr")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    with pytest.raises(StoreError, match="is not a Zarr v3 store"):
        validate_store(folder)
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").create_array(
        "x", shape=(2,), dtype="i4"
    )
    with pytest.raises(StoreError, match="not a posctx hidden-state store"):
        validate_store(tmp_path / "other.zarr")
    dec = tmp_path / "dec.zarr"
    posctx.write_decomposition(posctx.decompose(posctx.open_hidden(str(good))), dec)
    with pytest.raises(
        StoreError, match="is a posctx decomposition store, not a hidden-state store"
    ):
        validate_store(dec)


def test_object_storage_store(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An S3 store (moto's server on localhost) validates through fsspec, with no local checks."""
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }.items():
        monkeypatch.setenv(name, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket="posctx-validate"
        )
        opts = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
        url = "s3://posctx-validate/h.zarr"
        extract(_config(tiny_models["bert"], contexts=8), url, storage_options=opts, progress=False)
        report = validate_store(url, storage_options=opts, rerun=1)
        assert report.ok and "partial_files" in dict(report.skipped), report.format()
        assert report.check("finite").figures["blocks_scanned"] == 2
        group: Any = zarr.open_group(url, mode="r+", use_consolidated=False, storage_options=opts)
        group["block_complete"][1] = 0
        report = validate_store(url, storage_options=opts, scan=False)
        assert report.check("completeness").figures["holes"] == [[4, 7]]
        with pytest.raises(StoreError, match="local stores only"):
            validate_store(url, storage_options=opts, clean_partial=True)
        with pytest.raises(StoreError, match="no posctx store"):
            validate_store("s3://posctx-validate/missing.zarr", storage_options=opts)
    finally:
        server.stop()


# --- stores with statistics, and samples of hidden states -----------------------------------


@pytest.fixture(scope="module")
def kept(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """18 contexts in 5 blocks of 4 (the last of 2), made with statistics (the default): every
    hidden state (``all``), those of the first 6 contexts (``6``: blocks 0 and 1, block 1 cut
    at context 6), none (``0``); and a store without statistics (``old``)."""
    root = tmp_path_factory.mktemp("kept")
    stores = {}
    for name, store in (
        ("all", {}),
        ("6", {"hidden_contexts": 6}),
        ("0", {"hidden_contexts": 0}),
        ("old", {"statistics": False}),
    ):
        stores[name] = root / f"{name}.zarr"
        extract(_config(tiny_models["bert"], contexts=18, **store), str(stores[name]))
    return stores


def _copy(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / source.name))


def test_stores_with_statistics_and_samples_of_hidden_states_validate(
    kept: dict[str, Path],
) -> None:
    full = validate_store(kept["all"], rerun=2)
    assert full.ok and not full.warnings and full.skipped == [], full.format()
    statistics = full.check("statistics")
    assert statistics.figures["contexts_compared"] == 18
    assert statistics.figures["max_rel_diff"] == 0.0  # made on this CPU: identical
    assert statistics.figures["partials"] == 2  # the writer's, and the short last block's
    assert statistics.detail == (
        "plan of 3 topics, edges [0, 15]; 5 marked blocks each counted by exactly one of 2 "
        "partials; the per-context statistics of 18 contexts are finite; those of the 18 "
        "contexts with stored hidden states equal posctx.sums.block_statistics of them exactly"
    )

    sample = validate_store(kept["6"], rerun=3, seed=2)
    assert sample.ok and not sample.warnings and sample.skipped == [], sample.format()
    note = (
        "the store keeps the hidden states of its first 6 of 18 contexts (extracted with "
        "--hidden-contexts 6)"
    )
    completeness = sample.check("completeness")
    assert completeness.detail == (
        f"all 5 blocks marked written; {note}: chunk files of hidden are expected for those only"
    )
    assert completeness.figures["blocks_with_hidden"] == 2
    finite = sample.check("finite")
    assert finite.figures["values_scanned"] == 6 * 16 * 3 * 32  # block 1 cut at context 6
    assert finite.figures["blocks_scanned"] == 2 and finite.detail.endswith(
        f"{note}: only those are scanned"
    )
    rerun = sample.check("rerun")
    assert set(rerun.figures["contexts"]) <= set(range(6)) and rerun.figures["hidden_contexts"] == 6
    assert "(picked among the first 6 of 18 contexts, the ones whose hidden" in rerun.detail
    statistics = sample.check("statistics")
    assert (statistics.figures["contexts_read"], statistics.figures["contexts_compared"]) == (18, 6)
    assert statistics.detail.endswith(f"exactly; {note}")

    none = validate_store(kept["0"], rerun=2)
    assert none.ok and [c.name for c in none.checks] == [
        n for n in CHECKS if n not in ("finite", "rerun")
    ]
    assert dict(none.skipped) == {
        "finite": "cannot run: the store keeps no hidden states (extracted with "
        "--hidden-contexts 0): the statistics check scans its statistics instead",
        "rerun": "cannot run: the store keeps no hidden states (extracted with "
        "--hidden-contexts 0): there is nothing to compare a recomputation with",
    }
    assert none.check("completeness").detail.endswith("no chunk file of hidden is expected")
    assert none.check("statistics").figures["contexts_compared"] == 0

    old = validate_store(kept["old"])
    assert old.ok and "statistics" not in _statuses(old)
    assert old.skipped[0] == ("statistics", NO_STATISTICS)
    assert old.format().splitlines()[-3] == f"skip  statistics      {NO_STATISTICS}"


def test_the_content_checks_and_the_statistics_read_a_store_in_one_compute(
    kept: dict[str, Path],
) -> None:
    for name in ("all", "6", "0"):
        with raise_if_dask_computes(max_computes=1) as counter:
            report = validate_store(kept[name])
        assert counter.total_computes == 1 and report.ok
    with raise_if_dask_computes(max_computes=1):  # --no-scan: the token ids only
        quick = validate_store(kept["6"], scan=False)
    assert quick.check("statistics").detail.endswith(
        "values not read (--no-scan): neither their finiteness nor their agreement with the "
        "stored hidden states is checked"
    )


def test_a_changed_statistic_or_hidden_state_fails_the_statistics_check(
    kept: dict[str, Path], tmp_path: Path
) -> None:
    store = _copy(kept["6"], tmp_path)
    (partial,) = [p.name for p in (store / "stat_partials").iterdir() if p.name.startswith("run-")]
    group = writable_group(store)
    group["stat_ctx_sum"][5, 1, 3] = group["stat_ctx_sum"][5, 1, 3] + 1.0  # block 1, stored
    report = validate_store(store)
    statistics = report.check("statistics")
    assert statistics.status == "fail" and [c.name for c in report.failures] == ["statistics"]
    assert (statistics.figures["mismatched_blocks"], statistics.figures["mismatched_contexts"]) == (
        [1],
        [5],
    )
    assert statistics.figures["max_abs_diff"] == pytest.approx(1.0)
    assert statistics.detail.startswith(
        "the stored statistics of 1 context [5] in block 1 differ from those of their stored "
        "hidden states (largest relative difference "
    )
    assert statistics.detail.endswith(
        "at context=5, in `stat_ctx_sum`; tolerance 1e-12): the hidden states or the statistics "
        f"were changed after extraction; delete the partial that counts them (stat_partials/"
        f"{partial}) and re-run the same `posctx extract` command: it computes that partial's "
        "blocks again"
    )
    assert validate_store(store, scan=False).check("statistics").status == "ok"  # not read

    group["stat_edge"][13, 0, 2, 7] = np.nan  # block 3: no hidden states, never written
    statistics = validate_store(store).check("statistics")
    assert statistics.figures["nonfinite_blocks"] == [3]
    assert (
        "the per-context statistics of 1 context in block 3 marked written are not finite (NaN: "
        "never written; first at context=13, in `stat_edge`)" in statistics.detail
    )

    # A changed hidden state disagrees with its statistics just as well.
    store = _copy(kept["all"], tmp_path / "all")
    hidden = writable_group(store)["hidden"]
    hidden[9, 4] = hidden[9, 4] * np.float32(1.001)
    statistics = validate_store(store).check("statistics")
    assert statistics.status == "fail" and statistics.figures["mismatched_contexts"] == [9]


def test_a_lost_partial_fails_and_the_same_extract_command_repairs_it(
    kept: dict[str, Path], tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    store = _copy(kept["all"], tmp_path)
    (partial,) = [p for p in (store / "stat_partials").iterdir() if p.name.startswith("run-")]
    shutil.rmtree(partial)  # the partial that counts blocks 0-3
    report = validate_store(store, scan=False)
    statistics = report.check("statistics")
    assert statistics.status == "fail" and [c.name for c in report.failures] == ["statistics"]
    assert statistics.detail == (
        "blocks 0, 1, 2, 3 are marked written but no partial counts them: re-run the same "
        "`posctx extract` command: it computes them again"
    )
    assert statistics.figures["uncounted_blocks"] == [0, 1, 2, 3]
    result = extract(_config(tiny_models["bert"], contexts=18), str(store))
    assert result.blocks_written == 4
    assert validate_store(store).ok


def test_partials_left_by_ended_writers_and_counted_unmarked_blocks_warn(
    kept: dict[str, Path], tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    store = _copy(kept["all"], tmp_path)
    (store / "stat_partials" / "tail-4-16-17.0").mkdir()  # cut short before its zarr.json
    report = validate_store(store, scan=False)
    statistics = report.check("statistics")
    assert report.ok and statistics.status == "warn"
    assert statistics.detail == (
        "1 partial version left by writers that have ended (stat_partials/tail-4-16-17.0): no "
        "reader counts them; the next `posctx extract` of this store removes them"
    )
    extract(_config(tiny_models["bert"], contexts=18), str(store))
    assert not (store / "stat_partials" / "tail-4-16-17.0").exists()
    assert validate_store(store, scan=False).check("statistics").status == "ok"

    writable_group(store)["block_complete"][2] = 0  # killed between its commit and its markers
    report = validate_store(store, scan=False)
    assert _statuses(report)["completeness"] == "fail"
    statistics = report.check("statistics")
    assert statistics.status == "warn" and statistics.figures["counted_unmarked_blocks"] == [2]
    assert statistics.detail.startswith("blocks 2 are counted but not marked")


# --- the content checks' one dask pass --------------------------------------------------------


def _planted(path: Path) -> Path:
    """A planted store of 6 blocks (the last one short) and 3 layer chunks (2 + 2 + 1 layers),
    with a vocabulary, a [CLS] ... [SEP] framing and token ids to match."""
    write_large_planted_store(
        str(path), n_contexts=22, length=6, n_layers=5, n_dims=3, chunk_contexts=4, chunk_layers=2
    )
    ids = np.full((22, 6), 7, dtype=np.int32)
    ids[:, 0], ids[:, -1] = CLS, SEP
    writable_group(path)["token_id"][...] = ids
    record = dict(writable_group(path).attrs["posctx"])
    record["model"] = {"vocab_size": BERT_VOCAB}
    record["special_tokens"] = {
        "policy": "model",
        "prefix_ids": [CLS],
        "suffix_ids": [SEP],
        "prefix_tokens": ["[CLS]"],
        "suffix_tokens": ["[SEP]"],
        "separator_ids": [],
    }
    _set_attrs(path, posctx=record)
    return path


def test_content_checks_read_the_store_in_one_compute(tmp_path: Path) -> None:
    path = _planted(tmp_path / "h.zarr")
    group = writable_group(path)
    group["hidden"][9, 2, 4, 1] = np.nan  # block 2, last layer chunk
    group["token_id"][13, 3] = SEP  # mid-context, block 3
    group["token_id"][20, 1] = BERT_VOCAB  # outside the vocabulary, the short last block
    expected = validate_store(path).to_dict()  # the default (threaded) scheduler
    for scan in (True, False):
        with raise_if_dask_computes(max_computes=1) as counter:
            report = validate_store(path, scan=scan)
        assert counter.total_computes == 1
    assert report.to_dict() == validate_store(path, scan=False).to_dict()
    with raise_if_dask_computes(max_computes=1):
        assert validate_store(path).to_dict() == expected
    statuses = {c["name"]: c["status"] for c in expected["checks"]}
    assert (statuses["finite"], statuses["token_ids"], statuses["special_tokens"]) == ("fail",) * 3
    finite = validate_store(path).check("finite").figures
    assert finite["values_scanned"] == 22 * 6 * 5 * 3 and finite["blocks_scanned"] == 6
    tokens = validate_store(path, scan=False)
    assert tokens.check("token_ids").figures["first"] == {
        "context": 20,
        "position": 1,
        "id": BERT_VOCAB,
    }
    assert tokens.check("special_tokens").figures["mid_context_first"] == [[13, 3, SEP]]


def test_nan_and_inf_are_counted_exactly_with_the_first_in_store_order(tmp_path: Path) -> None:
    path = _planted(tmp_path / "h.zarr")
    group = writable_group(path)
    hidden = group["hidden"]
    hidden[6, 4, 3, 0] = np.nan  # block 1, layer chunk 1: first in store order...
    hidden[7, 0, 0, :] = np.inf  # ...though this one has a smaller layer, so it is not first
    hidden[5, 5, 4, 2] = -np.inf  # block 1, layer chunk 2
    hidden[5, 5, 4, 0] = np.nan  # the same vector
    hidden[21, 1, 2, 1] = np.nan  # the short last block
    for c in range(12, 20):  # blocks 3 and 4, the middle of layer chunk 0
        hidden[c, 3, 1, 1] = np.inf
    group["block_complete"][0] = 0
    hidden[1, 1, 1, 1] = np.nan  # an unmarked block: not scanned
    finite = validate_store(path).check("finite")
    assert finite.status == "fail"
    assert (finite.figures["nan"], finite.figures["inf"]) == (3, 3 + 1 + 8)
    assert finite.figures["vectors"] == 1 + 1 + 1 + 1 + 8
    assert finite.figures["blocks"] == [1, 3, 4, 5] and finite.figures["blocks_unmarked"] == 1
    assert finite.figures["contexts"] == [5, 6, 7, *range(12, 20), 21]
    assert finite.figures["values_scanned"] == 18 * 6 * 5 * 3
    # Block by block, then layer chunk by layer chunk: context 7 at layer 0 lies in block 1's
    # first layer chunk, so it is found before context 6 at layer 3.
    assert finite.figures["first"] == {
        "context": 7,
        "position": 0,
        "layer": 0,
        "layer_name": "embeddings",
    }
    assert finite.detail.startswith(
        "15 non-finite values (3 NaN, 12 inf) in 12 hidden vectors of contexts "
        "[5, 6, 7, 12, 13, 14, 15, 16, 17, 18, ...], blocks [1, 3, 4, 5] marked written; "
        "first at context=7, position=0, layer=0 (embeddings)"
    )
    assert finite.detail.endswith("; 1 unmarked block not scanned")


def test_content_checks_run_on_a_distributed_client(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    path = _planted(tmp_path / "h.zarr")
    writable_group(path)["hidden"][10, 2, 3, 1] = np.inf
    writable_group(path)["token_id"][4, 0] = 2000
    expected = validate_store(path).to_dict()
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        Client(cluster),
    ):
        assert validate_store(path).to_dict() == expected
    assert [c["name"] for c in expected["checks"] if c["status"] == "fail"] == [
        "provenance",
        "finite",
        "special_tokens",
    ]


def test_progress_is_one_bar_for_the_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _planted(tmp_path / "h.zarr")
    validate_store(path, progress=True)
    err = capsys.readouterr().err
    assert "validate: scanning" in err and "finite" not in err and "token ids" not in err
    validate_store(path)
    assert capsys.readouterr().err == ""


def test_an_unreadable_chunk_fails_only_the_check_that_reads_it(tmp_path: Path) -> None:
    path = _planted(tmp_path / "h.zarr")
    chunk = path / "hidden" / "c" / "1" / "0" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    report = validate_store(path)
    assert report.check("finite").detail.startswith("could not be checked: OSError: ")
    assert "holds 2 values, expected a chunk of (4, 6, 2, 3)" in report.check("finite").detail
    assert report.check("token_ids").status == "ok"
    assert report.check("special_tokens").status == "ok"
    writable_group(path)["block_complete"][1] = 0  # unmarked: its chunks are not even read
    assert validate_store(path).check("finite").status == "ok"


def _cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """Run the console entry point in-process: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["posctx", "validate", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_exit_codes_and_json(
    good: Path,
    store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _cli(monkeypatch, capsys, "--help")
    assert code == 0 and "Usage:" in out and "--clean-partial" in out

    code, out, _ = _cli(monkeypatch, capsys, str(good), "--quiet")
    assert code == 0 and out.strip().splitlines()[-1] == "verdict: OK: all 9 checks passed"
    assert "OK    completeness" in out and "skip  rerun" in out

    code, out, _ = _cli(monkeypatch, capsys, str(good), "--json", "--no-scan")
    record = json.loads(out)
    assert code == 0 and record["ok"] is True
    assert {s["name"] for s in record["skipped"]} == {"finite", "rerun"}

    writable_group(store)["block_complete"][0] = 0
    code, out, _ = _cli(monkeypatch, capsys, str(store), "--quiet")
    assert code == 1 and "FAIL  completeness" in out and "contexts 0-3" in out
    assert out.strip().splitlines()[-1] == "verdict: FAIL: 1 check failed (completeness)"
    code, out, _ = _cli(monkeypatch, capsys, str(store), "--json")
    assert code == 1 and json.loads(out)["ok"] is False

    code, out, err = _cli(monkeypatch, capsys, str(tmp_path / "missing.zarr"))
    assert code == 2 and out == "" and err.startswith("error: no posctx store at")
    code, _, err = _cli(monkeypatch, capsys, str(good), "--rerun", "-1")
    assert code == 2 and "--rerun" in err


def test_public_api() -> None:
    assert {"validate_store", "ValidationReport"} <= set(posctx.__all__)
    assert posctx.validate_store is validate_store
