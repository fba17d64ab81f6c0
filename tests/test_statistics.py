"""Statistics kept during extraction: a decomposition with no second read of the store.

Real MiniLM on the built-in corpus for the equality with a full read (to 1e-12 relative); a
tiny random BERT for the layouts (sample of hidden states, extension, shards).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

import posctx
from posctx.config import CorpusConfig, ExtractConfig, ModelConfig, StoreConfig
from posctx.decomposition import paper_positions
from posctx.decomposition.stores import decompose_store
from posctx.errors import PosctxError, StoreError
from posctx.extraction import extract
from posctx.store.statistics import open_statistics
from posctx.types import HIDDEN_SAMPLE_ATTR, STAT_CTX_SUM, STAT_CTX_SUMSQ, STAT_EDGE
from tests import faults

OUTPUTS = ("mu", "pos", "ctx", "ss_total", "ss_pos", "ss_ctx", "ss_resid")


def _config(model: str, contexts: int, **store: Any) -> ExtractConfig:
    return ExtractConfig(
        corpus=CorpusConfig(spec="stdlib"),
        model=ModelConfig(name=model, batch_size=4),
        store=StoreConfig(contexts=contexts, **{"length": 32, "chunk_contexts": 4, **store}),
    )


def _relative(a: xr.Dataset, b: xr.Dataset, names: tuple[str, ...] = OUTPUTS) -> float:
    """Largest difference of each variable relative to its own largest magnitude."""
    return max(
        float(np.abs(a[n].values - b[n].values).max() / np.abs(b[n].values).max()) for n in names
    )


@pytest.fixture(scope="module")
def minilm_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("statistics") / "h.zarr"
    config = _config("minilm", 48, length=64, chunk_contexts=10, moments=True)
    extract(config, str(path), progress=False)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("positions", "topic", "moments"),
    [("auto", None, True), (None, None, True), ("auto", "code", False), (None, "reference", False)],
)
def test_the_statistics_equal_a_full_read_of_the_store(
    minilm_store: Path, tmp_path: Path, positions: Any, topic: str | None, moments: bool
) -> None:
    result = decompose_store(
        minilm_store, tmp_path / "d.zarr", positions=positions, topic=topic, moments=moments
    )
    assert result.source == "statistics" and result.contexts_read == 0
    assert json.loads(result.decomposition.attrs["posctx_decomposition"])["source"] == "statistics"
    hidden = posctx.open_hidden(str(minilm_store))
    contexts = None
    if topic is not None:
        contexts = hidden.context.values[[str(t) == topic for t in hidden.topic.values]]
    read = posctx.decompose(
        hidden,
        positions=paper_positions(hidden) if positions == "auto" else positions,
        contexts=contexts,
        moments=moments,
    ).compute()
    got = result.decomposition.compute()
    assert got.position.values.tolist() == read.position.values.tolist()
    assert got.context.values.tolist() == read.context.values.tolist()
    assert _relative(got, read) < 1e-12
    if moments:
        # Second moments are float32 products of centred rows either way, grouped by batch
        # here and by chunk in the read: entries agree to float32's precision, and singular
        # values near zero only to about sqrt(1e-7) of the largest.
        assert _relative(got, read, ("m2_hidden", "m2_resid")) < 1e-6
        assert _relative(got, read, ("sv_hidden", "sv_resid")) < 1e-4


@pytest.mark.slow
def test_a_store_without_its_hidden_chunk_files_still_decomposes(
    minilm_store: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "h.zarr"
    shutil.copytree(minilm_store, copy)
    shutil.rmtree(copy / "hidden" / "c")  # every chunk of hidden states moved away
    result = decompose_store(copy, tmp_path / "d.zarr", moments=True)
    reference = decompose_store(minilm_store, tmp_path / "r.zarr", moments=True)
    for name in (*OUTPUTS, "sv_hidden"):
        np.testing.assert_array_equal(
            result.decomposition[name].values, reference.decomposition[name].values
        )
    with pytest.raises(StoreError, match="chunks of hidden are missing"):
        posctx.open_hidden(str(copy))  # reading the hidden states is refused, not averaged


@pytest.mark.slow
def test_a_selection_the_statistics_cannot_serve_reads_the_store_and_says_so(
    minilm_store: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from posctx.cli import cli

    result = decompose_store(minilm_store, tmp_path / "d.zarr", positions=slice(3, 40))
    assert result.source == "hidden states" and result.contexts_read == 48
    assert "not an arbitrary position range" in (result.source_reason or "")
    record = json.loads(result.decomposition.attrs["posctx_decomposition"])
    assert record["source"] == "hidden states"
    assert "arbitrary position range" in record["source_reason"]
    out = CliRunner().invoke(
        cli,
        ["decompose", str(minilm_store), "--out", str(tmp_path / "e.zarr"), "--contexts", "0:9"],
    )
    assert out.exit_code == 0, out.output
    assert "read the hidden states: the statistics keep position sums per topic" in out.output
    out = CliRunner().invoke(
        cli, ["decompose", str(minilm_store), "--out", str(tmp_path / "f.zarr")]
    )
    assert "decomposed from the statistics kept during extraction" in out.output


def test_an_update_from_a_previous_decomposition_is_served_by_the_statistics(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    store = tmp_path / "h.zarr"
    extract(_config(str(tiny_models["bert"]), 10), str(store), progress=False)
    decompose_store(store, tmp_path / "old.zarr", positions=None)
    extract(_config(str(tiny_models["bert"]), 18), str(store), progress=False)
    updated = decompose_store(store, tmp_path / "new.zarr", previous=tmp_path / "old.zarr")
    assert updated.source == "statistics" and updated.decomposition.sizes["context"] == 18
    assert updated.decomposition.sizes["position"] == 32  # the previous one's: all positions
    read = posctx.decompose(posctx.open_hidden(str(store))).compute()
    assert _relative(updated.decomposition.compute(), read) < 1e-12


def test_a_sample_of_hidden_states_and_statistics_for_every_context(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    full, sample, none = tmp_path / "full.zarr", tmp_path / "sample.zarr", tmp_path / "none.zarr"
    model = str(tiny_models["bert"])
    extract(_config(model, 18), str(full), progress=False)
    extract(_config(model, 18, hidden_contexts=6), str(sample), progress=False)
    extract(_config(model, 18, hidden_contexts=0), str(none), progress=False)
    a, b, c = (xr.open_zarr(p) for p in (full, sample, none))
    for name in (STAT_CTX_SUM, STAT_CTX_SUMSQ, STAT_EDGE):
        np.testing.assert_array_equal(a[name].values, b[name].values)
        np.testing.assert_array_equal(a[name].values, c[name].values)
    # Hidden chunk files for the blocks of the first 6 contexts only (blocks 0 and 1), none.
    assert sorted(p.name for p in (sample / "hidden" / "c").iterdir()) == ["0", "1"]
    assert not (none / "hidden" / "c").exists()
    opened = posctx.open_hidden(str(sample))
    assert opened.sizes["context"] == 6
    assert opened.attrs[HIDDEN_SAMPLE_ATTR] == {"stored_contexts": 6, "contexts_total": 18}
    np.testing.assert_array_equal(opened.hidden.values, a.hidden.values[:6])
    with pytest.raises(StoreError, match="keeps no hidden states .*--hidden-contexts 0"):
        posctx.open_hidden(str(none))
    reference = decompose_store(full, tmp_path / "a.zarr").decomposition
    for store in (sample, none):
        result = decompose_store(store, tmp_path / f"{store.stem}-d.zarr")
        assert result.source == "statistics"
        for name in OUTPUTS:
            np.testing.assert_array_equal(result.decomposition[name].values, reference[name].values)
    # A selection the statistics cannot serve reads the stored sample, and says so.
    sampled = decompose_store(sample, tmp_path / "s.zarr", positions=slice(2, 9))
    assert sampled.source == "hidden states (the 6 stored of 18 contexts)"
    assert sampled.decomposition.sizes["context"] == 6
    with pytest.raises(PosctxError, match="arbitrary position range, and .* keeps no hidden"):
        decompose_store(none, tmp_path / "n.zarr", positions=slice(2, 9))
    # Residual vectors need hidden states: refused for the contexts the sample lacks.
    hidden = posctx.open_hidden(str(sample))
    dec = decompose_store(sample, tmp_path / "sd.zarr").decomposition
    with pytest.raises(PosctxError, match="first 6 of 18 contexts only .*slice\\(0, 6\\)"):
        posctx.norms(hidden, dec)
    norms = posctx.norms(hidden, dec.isel(context=slice(0, 6))).compute()
    assert norms.sizes["context"] == 6
    with pytest.raises(PosctxError, match="the relative norm and the residual spectrum needs"):
        posctx.measure_geometry(dec, hidden=hidden)


def test_an_extension_gives_the_statistics_of_a_fresh_store(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    grown, fresh = tmp_path / "g.zarr", tmp_path / "f.zarr"
    model = str(tiny_models["bert"])
    extract(_config(model, 10, moments=True), str(grown), progress=False)  # a short last block
    extract(_config(model, 19, moments=True), str(grown), progress=False)
    extract(_config(model, 19, moments=True), str(fresh), progress=False)
    a, b = xr.open_zarr(grown), xr.open_zarr(fresh)
    for name in ("hidden", STAT_CTX_SUM, STAT_CTX_SUMSQ, STAT_EDGE):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    sa, sb = open_statistics(str(grown)), open_statistics(str(fresh))
    for name in ("pos_sum", "mean", "m2"):
        np.testing.assert_allclose(sa[name].values, sb[name].values, rtol=1e-12, atol=1e-12)
    assert sa.attrs["posctx_statistics"]["count"] == sb.attrs["posctx_statistics"]["count"]


def test_shards_give_the_statistics_of_one_process(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    config = faults.tiny_config(tiny_models["bert"], contexts=12, chunk=2)
    single, sharded = tmp_path / "one.zarr", tmp_path / "shards.zarr"
    assert faults.run(config, single) == 0
    procs = [faults.start(config, sharded, shard=(i, 3)) for i in range(3)]
    assert [faults.wait(p) for p in procs] == [0, 0, 0]
    diff = faults.differences(faults.store_contents(single), faults.store_contents(sharded))
    assert diff == []


def test_statistics_that_disagree_with_the_markers_are_refused(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    import zarr

    from posctx.cli import main

    store = tmp_path / "h.zarr"
    extract(_config(str(tiny_models["bert"]), 12), str(store), progress=False)
    group = zarr.open_group(str(store / "stat_partials"), mode="r+", use_consolidated=False)
    (name,) = [n for n, _ in group.groups()]
    del group[name]  # the partial that counts blocks 0-2 is lost
    with pytest.raises(StoreError, match=r"blocks 0, 1, 2 are marked written but no partial"):
        open_statistics(str(store))
    import sys

    argv = sys.argv
    sys.argv = ["posctx", "decompose", str(store), "--out", str(tmp_path / "d.zarr")]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = argv
    assert exit_info.value.code == 2
    # The same extract command repairs it: the uncounted blocks are computed again.
    result = extract(_config(str(tiny_models["bert"]), 12), str(store), progress=False)
    assert result.blocks_written == 3
    assert open_statistics(str(store)).sizes["context"] == 12


def test_a_missing_statistics_chunk_of_a_marked_block_is_refused_not_read_as_nan(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    store = tmp_path / "h.zarr"
    extract(_config(str(tiny_models["bert"]), 12), str(store), progress=False)
    whole = decompose_store(str(store), str(tmp_path / "whole.zarr"))
    assert whole.source == "statistics"
    chunk = store / STAT_CTX_SUM / "c" / "1" / "0" / "0"  # block 1: contexts 4-7
    assert chunk.is_file()
    stats = open_statistics(str(store))
    chunk.unlink()  # block 1's per-context sums, as a partial copy would lose them
    with pytest.raises(StoreError, match=r"1 chunk of stat_ctx_sum is missing .*block 1.*validate"):
        decompose_store(str(store), str(tmp_path / "d.zarr"))
    # Lost after the store was opened: refused when read, not taken as NaN.
    with pytest.raises(StoreError, match=r"chunk file .*stat_ctx_sum.* is missing.*validate"):
        stats[STAT_CTX_SUM].load()
    # posctx validate names it, and the same extract command computes that block again.
    report = posctx.validate_store(str(store), scan=False)
    check = next(c for c in report.checks if c.name == "statistics")
    assert check.status == "fail", check.detail
    assert "1 chunk of stat_ctx_sum is missing" in check.detail
    assert check.figures["missing_statistics_chunks"] == 1
    result = extract(_config(str(tiny_models["bert"]), 12), str(store), progress=False)
    assert result.blocks_written == 1
    again = decompose_store(str(store), str(tmp_path / "again.zarr"))
    assert (
        _relative(posctx.open_decomposition(again.path), posctx.open_decomposition(whole.path)) == 0
    )


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="needs root to mount a size-limited tmpfs (mount -t tmpfs -o size=4m tmpfs DIR)",
)
def test_a_statistics_only_store_fits_where_its_hidden_states_would_not(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """--hidden-contexts 0 into a 4 MB file system: the hidden states would need 6x that."""
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    try:
        config = _config(str(tiny_models["bert"]), 1024, length=64, chunk_contexts=256)
        hidden_bytes = 1024 * 64 * 3 * 32 * 4  # C x T x layers x dims x float32
        free = shutil.disk_usage(small).free
        assert hidden_bytes >= 6 * free
        with pytest.raises(StoreError, match="No space left on device"):
            extract(config, str(small / "full.zarr"), progress=False)
        shutil.rmtree(small / "full.zarr")
        stats_only = ExtractConfig(
            corpus=config.corpus,
            model=config.model,
            store=StoreConfig(**{**config.store.to_dict(), "hidden_contexts": 0}),
        )
        extract(stats_only, str(small / "h.zarr"), progress=False)
        used = sum(f.stat().st_size for f in (small / "h.zarr").rglob("*") if f.is_file())
        assert used < free / 2
        result = decompose_store(small / "h.zarr", tmp_path / "d.zarr")
        assert result.source == "statistics" and result.decomposition.sizes["context"] == 1024
    finally:
        subprocess.run(["umount", str(small)], check=True)


@pytest.mark.slow
def test_the_report_takes_the_hidden_moments_from_the_statistics(
    minilm_store: Path, tmp_path: Path
) -> None:
    """No read of the hidden states for the relative norm and the residual spectrum."""
    from posctx.report import report_stores

    copy = tmp_path / "h.zarr"
    shutil.copytree(minilm_store, copy)
    shutil.rmtree(copy / "hidden" / "c")  # nothing left to read
    decompose_store(copy, tmp_path / "d.zarr")  # no --moments: the report must find them
    result = report_stores(tmp_path / "d.zarr", tmp_path / "report", hidden=copy, progress=False)
    read = posctx.measure_geometry(
        posctx.open_decomposition(str(tmp_path / "d.zarr")),
        hidden=posctx.open_hidden(str(minilm_store)),
    )
    for name in ("relative_norm", "hidden_norm"):
        np.testing.assert_allclose(result.metrics[name].values, read[name].values, rtol=1e-6)
    np.testing.assert_allclose(
        result.metrics.resid_sv.values[:, :10], read.resid_sv.values[:, :10], rtol=1e-4
    )


@pytest.mark.parametrize("statistics", [True, False])
def test_the_same_extract_command_recomputes_blocks_whose_chunk_files_are_lost(
    tiny_models: dict[str, Path], tmp_path: Path, statistics: bool
) -> None:
    store = tmp_path / "h.zarr"
    config = _config(str(tiny_models["bert"]), 12, statistics=statistics)
    extract(config, str(store), progress=False)
    before = xr.open_zarr(store).hidden.values.copy()
    partials = sorted(p.name for p in (store / "stat_partials").iterdir()) if statistics else []
    (store / "hidden" / "c" / "1" / "0" / "0" / "0").unlink()  # a partial copy lost block 1
    with pytest.raises(StoreError, match="re-run the same `posctx extract` command: it computes"):
        posctx.open_hidden(str(store))
    result = extract(config, str(store), progress=False)
    assert result.blocks_written == 1
    np.testing.assert_array_equal(posctx.open_hidden(str(store)).hidden.values, before)
    if statistics:  # what the partials counted stays counted, once
        assert sorted(p.name for p in (store / "stat_partials").iterdir()) == partials
        assert open_statistics(str(store)).sizes["context"] == 12
