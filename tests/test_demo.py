"""posctx.demo: run_demo's extract -> decompose -> report, and what it prints.

The real demo runs MiniLM, and its decomposition and report take about 30 s even on 8
contexts (tests/test_cli.py runs it, marked slow). Here the wiring is checked with every step
replaced by a recording stand-in (exact lines, arguments, timings), and the real steps run
once with the tiny BERT in MiniLM's place and blocks of 4 contexts (about 5 s): files written,
printed tables equal to the stored results, a second run resuming the store and replacing the
decomposition.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import xarray as xr

import posctx
import posctx.decomposition.stores
import posctx.extraction
import posctx.report
import posctx.store
from posctx.config import ExtractConfig
from posctx.demo import DEMO_RESAMPLES, DEMO_RUNS, run_demo
from posctx.extraction.api import ExtractResult
from posctx.geometry.uncertainty import IntervalParams
from posctx.report import format_metrics_table
from posctx.summary import format_variance_table, variance_shares
from posctx.testing import planted_hidden


@pytest.fixture(scope="module")
def measured() -> tuple[xr.Dataset, xr.Dataset]:
    """A planted decomposition and its measurements, for the stand-ins to return."""
    ds, _ = planted_hidden(30, 12, 2, 6)
    dec = posctx.decompose(ds, positions=slice(1, None)).compute()
    return dec, posctx.measure_geometry(dec).compute()


class _Calls:
    """Stand-ins for the four steps, recording how they were called."""

    def __init__(self, measured: tuple[xr.Dataset, xr.Dataset]) -> None:
        self.dec, self.metrics = measured
        self.calls: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    def extract(self, *args: Any, **kwargs: Any) -> ExtractResult:
        self.calls["extract"] = (args, kwargs)
        return ExtractResult(
            args[1], 512, 2, 1, 1, tokens_written=65_536, seconds=4.0, resumed=True
        )

    def decompose_store(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["decompose_store"] = (args, kwargs)
        return SimpleNamespace(path=str(args[1]), decomposition=self.dec)

    def store_info(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls["store_info"] = (args, kwargs)
        return {"size_on_disk": 123_456_789, "blocks_complete": 1, "blocks_total": 2}

    def write_report(self, *args: Any, **kwargs: Any) -> Any:
        self.calls["write_report"] = (args, kwargs)
        return SimpleNamespace(
            metrics=self.metrics,
            seconds=2.5,
            index=Path(args[1]) / "index.html",
            uncertainty=None,
        )

    def example_tokens(self, *args: Any, **kwargs: Any) -> list[str]:
        self.calls["example_tokens"] = (args, kwargs)
        return ["[CLS]", "the"]


def _replace_steps(monkeypatch: pytest.MonkeyPatch, stand_in: _Calls) -> None:
    monkeypatch.setattr(posctx.extraction, "extract", stand_in.extract)
    monkeypatch.setattr(posctx.decomposition.stores, "decompose_store", stand_in.decompose_store)
    monkeypatch.setattr(posctx.store, "store_info", stand_in.store_info)
    monkeypatch.setattr(posctx.report, "write_report", stand_in.write_report)
    monkeypatch.setattr(posctx.report, "example_tokens", stand_in.example_tokens)


def test_the_steps_are_called_in_turn_and_their_results_printed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    measured: tuple[xr.Dataset, xr.Dataset],
) -> None:
    stand_in = _Calls(measured)
    _replace_steps(monkeypatch, stand_in)
    out = tmp_path / "a" / "demo"  # parents made too
    timings = run_demo(out, contexts=512, length=64)  # echo: print
    hidden = str(out / "hidden.zarr")
    (config, path), options = stand_in.calls["extract"]
    assert isinstance(config, ExtractConfig) and path == hidden and options == {"progress": True}
    assert (config.corpus.spec, config.model.name) == ("stdlib", "minilm")
    assert (config.store.contexts, config.store.length) == (512, 64)
    assert config.store.chunk_contexts == 0 and config.store.storage_dtype == "float32"
    assert stand_in.calls["decompose_store"] == (
        (hidden, out / "decomposition.zarr"),
        # The spectra and the bootstrap cells in the same pass; replaced every run.
        {"moments": True, "runs": DEMO_RUNS, "mode": "w"},
    )
    assert stand_in.calls["store_info"] == ((hidden,), {})
    args, options = stand_in.calls["write_report"]
    assert args == (stand_in.dec, out / "report")
    assert options == {
        "progress": True,
        "intervals": IntervalParams(resamples=DEMO_RESAMPLES),
        "tokens": ["[CLS]", "the"],
    }
    assert stand_in.calls["example_tokens"] == ((hidden, stand_in.dec), {})
    lines = capsys.readouterr().out.splitlines()
    table = format_variance_table(variance_shares(stand_in.dec)).splitlines()
    metrics = format_metrics_table(stand_in.metrics).splitlines()
    assert lines[0] == "extract: 65,536 tokens in 4.0 s (16,384 tokens/s), 1 blocks already done"
    assert re.fullmatch(
        rf"decompose: \d+\.\d s -> {re.escape(str(out))}/decomposition.zarr", lines[1]
    )
    assert lines[2] == "variance shares (positions 1..T-2: [CLS] and [SEP] dropped):"
    assert lines[3 : 3 + len(table)] == table
    rest = lines[3 + len(table) :]
    assert rest[0] == f"store {hidden}: 123 MB on disk, 1/2 blocks"
    assert rest[1] == "geometry (see docs/geometry.md):"
    assert rest[2 : 2 + len(metrics)] == metrics
    assert re.fullmatch(
        rf"report: 2\.5 s -> {re.escape(str(out))}/report/index\.html; total \d+\.\d s",
        rest[2 + len(metrics)],
    )
    assert len(rest) == 3 + len(metrics)
    assert timings["extract"] == 4.0  # the extraction's own clock
    assert set(timings) == {"extract", "decompose", "report", "total"}
    assert timings["total"] >= timings["decompose"] + timings["report"]


def test_progress_off_and_echo_elsewhere(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    measured: tuple[xr.Dataset, xr.Dataset],
) -> None:
    stand_in = _Calls(measured)
    _replace_steps(monkeypatch, stand_in)
    lines: list[str] = []
    run_demo(tmp_path, progress=False, echo=lines.append)
    assert stand_in.calls["extract"][1] == {"progress": False}
    assert stand_in.calls["write_report"][1]["progress"] is False
    config = stand_in.calls["extract"][0][0]
    assert (config.store.contexts, config.store.length) == (512, 128)  # the defaults
    assert capsys.readouterr().out == "" and lines[0].startswith("extract: 65,536 tokens")


# --- the real steps, with the tiny BERT as the model -------------------------------------------


def test_a_small_real_run_writes_everything_and_prints_what_it_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_models: dict[str, Path]
) -> None:
    real_extract, real_report = posctx.extraction.extract, posctx.report.write_report
    asked: list[ExtractConfig] = []
    reports: list[Any] = []

    def tiny_extract(config: ExtractConfig, path: str, **kwargs: Any) -> ExtractResult:
        asked.append(config)
        model = dataclasses.replace(config.model, name=str(tiny_models["bert"]))
        # Blocks of 4: the default chunk (about 64 MB) would be written whole for 8 contexts.
        store = dataclasses.replace(config.store, chunk_contexts=4)
        return real_extract(dataclasses.replace(config, model=model, store=store), path, **kwargs)

    def spy_report(*args: Any, **kwargs: Any) -> Any:
        reports.append(real_report(*args, **kwargs))
        return reports[-1]

    monkeypatch.setattr(posctx.extraction, "extract", tiny_extract)
    monkeypatch.setattr(posctx.report, "write_report", spy_report)
    out = tmp_path / "demo"
    echoed: list[str] = []
    timings = run_demo(out, contexts=8, length=16, progress=False, echo=echoed.append)
    lines = "\n".join(echoed).splitlines()  # the tables are echoed whole, one call each
    assert asked[0].model.name == "minilm" and asked[0].store.chunk_contexts == 0
    for name in ("hidden.zarr", "decomposition.zarr", "report/index.html", "report/metrics.json"):
        assert (out / name).exists(), name
    assert re.fullmatch(
        r"extract: 128 tokens in \d+\.\d s \([\d,]+ tokens/s\), 0 blocks already done", lines[0]
    )
    with xr.open_zarr(out / "decomposition.zarr") as dec:
        table = format_variance_table(variance_shares(dec)).splitlines()
        assert {"m2_hidden", "m2_resid"} <= set(dec.data_vars)  # moments from the same pass
    assert lines[3 : 3 + len(table)] == table and len(table) == 1 + 3  # header + 3 layers
    info = posctx.store.store_info(str(out / "hidden.zarr"))
    assert lines[3 + len(table)] == (
        f"store {out / 'hidden.zarr'}: {info['size_on_disk'] / 1e6:,.0f} MB on disk, 2/2 blocks"
    )
    metrics = format_metrics_table(reports[0].metrics).splitlines()
    assert lines[5 + len(table) : 5 + len(table) + len(metrics)] == metrics
    assert lines[-1].startswith(f"report: {reports[0].seconds:.1f} s -> {reports[0].index}; total ")
    assert timings["total"] >= timings["extract"] + timings["decompose"] + timings["report"]

    # Again: the store is complete (resumed, nothing computed), the decomposition replaced.
    (out / "decomposition.zarr" / "stale").write_text("from the first run")
    monkeypatch.setattr(
        posctx.report,
        "write_report",
        lambda dec, where, **kw: SimpleNamespace(
            metrics=reports[0].metrics,
            seconds=0.0,
            index=Path(where) / "index.html",
            uncertainty=None,
        ),
    )
    echoed.clear()
    run_demo(out, contexts=8, length=16, progress=False, echo=echoed.append)
    lines = "\n".join(echoed).splitlines()
    assert re.fullmatch(
        r"extract: 0 tokens in \d+\.\d s \(\S+ tokens/s\), 2 blocks already done", lines[0]
    )
    assert not (out / "decomposition.zarr" / "stale").exists()
