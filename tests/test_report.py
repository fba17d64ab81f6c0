"""Tests of the report: files, contents, the CLI command, and rendering in a real browser."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from click.testing import CliRunner

import posctx
from posctx.cli import cli
from posctx.errors import StoreError
from posctx.geometry import GeometryParams
from posctx.geometry.uncertainty import INTERVAL_METRICS, IntervalParams
from posctx.plots import FIGURES
from posctx.report import STATIC_FORMATS, ReportResult, format_metrics_table, write_report
from posctx.testing import planted_hidden, raise_if_dask_computes, write_planted_store
from tests.browser import open_page, requires_browser

CHROMIUM = shutil.which("chromium")

requires_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium; .ci/run does)"
)

FAST = GeometryParams(n_random=2)
FEW = IntervalParams(resamples=12)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A planted hidden store and its decomposition on disk, as the CLI sees them."""
    root = tmp_path_factory.mktemp("report")
    hidden, dec = root / "hidden.zarr", root / "dec.zarr"
    write_planted_store(
        str(hidden), n_contexts=45, length=21, n_layers=3, n_dims=16, chunks_context=10
    )
    posctx.write_decomposition(
        posctx.decompose(posctx.open_hidden(str(hidden)), positions=slice(1, None), runs=8),
        str(dec),
    )
    return hidden, dec


@pytest.fixture(scope="module")
def report(stores: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> ReportResult:
    hidden, dec = stores
    out = tmp_path_factory.mktemp("out") / "report"
    return write_report(
        posctx.open_decomposition(str(dec)),
        out,
        hidden=posctx.open_hidden(str(hidden)),
        params=FAST,
        intervals=FEW,
        static=True,
        tokens=[f"tok{t}" for t in range(1, 21)],
        progress=False,
    )


def test_report_writes_every_file(report: ReportResult) -> None:
    assert sorted(p.name for p in report.directory.iterdir()) == [
        "figures",
        "index.html",
        "metrics.csv",
        "metrics.json",
        "static.html",
    ]
    assert sorted(p.stem for p in report.figures) == sorted(FIGURES)
    for path in report.figures:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
        assert b"<svg" in path.with_suffix(".svg").read_bytes()[:1000]
    assert STATIC_FORMATS == ("png", "svg", "pdf")


def test_metrics_json_and_csv_carry_intervals_and_contexts_needed(report: ReportResult) -> None:
    payload = json.loads(report.metrics_json.read_text())
    u = payload["uncertainty"]
    assert u["method"]["resamples"] == 12 and u["method"]["level"] == 0.95
    # Runs of 8 contexts (45 contexts, at most 8 runs): 8, 16, 32 then all 45.
    assert u["n_contexts"] == [8, 16, 32, 45]
    share = u["metrics"]["share_pos"]
    assert len(share["interval"]) == 3 and all(lo <= hi for lo, hi in share["interval"])
    assert set(u["metrics"]) == set(INTERVAL_METRICS)
    table = pd.read_csv(report.metrics_csv, index_col="layer")
    assert {"share_pos_lo", "share_pos_hi", "share_pos_needed"} <= set(table.columns)
    np.testing.assert_allclose(table["share_pos_lo"], [lo for lo, _ in share["interval"]])
    page = report.index.read_text()
    assert "How sure" in page and "contexts needed" in page.lower()
    assert "95% intervals" in format_metrics_table(report.metrics, report.uncertainty)


def test_no_intervals_and_no_cells(stores: tuple[Path, Path], tmp_path: Path) -> None:
    """intervals=None: no uncertainty anywhere; without cells only ctx measures get one."""
    hidden, _ = stores
    dec = posctx.decompose(posctx.open_hidden(str(hidden)), positions=slice(1, None))
    none = write_report(dec, tmp_path / "a", params=FAST, intervals=None, progress=False)
    assert "uncertainty" not in json.loads(none.metrics_json.read_text())
    some = write_report(dec, tmp_path / "b", params=FAST, intervals=FEW, progress=False)
    metrics = json.loads(some.metrics_json.read_text())["uncertainty"]["metrics"]
    assert metrics["ctx_within"]["interval"][0] is not None
    assert metrics["pos_stable_rank"]["interval"][0] == [None, None]


def test_metrics_json_and_csv_hold_every_layer(report: ReportResult) -> None:
    payload = json.loads(report.metrics_json.read_text())  # strict JSON: NaN would not parse back
    assert [row["layer_name"] for row in payload["layers"]] == ["embeddings", "block_1", "block_2"]
    assert payload["provenance"]["store"]["planted"]["n_contexts"] == 45
    assert payload["provenance"]["decomposition"]["positions"] == [1, 20]
    assert payload["geometry"]["relative_norm"] == "hidden store"
    assert all(row["relative_norm"] is not None for row in payload["layers"])
    assert len(payload["layers"][0]["pos_sv"]) == 16
    table = pd.read_csv(report.metrics_csv, index_col="layer")
    np.testing.assert_allclose(table["pos_stable_rank"], report.metrics.pos_stable_rank.values)
    assert list(table["layer_name"]) == ["embeddings", "block_1", "block_2"]


def test_static_html_is_self_contained(report: ReportResult) -> None:
    assert report.static is not None
    page = report.static.read_text()
    sources = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(sources) == len(FIGURES)
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:4] == b"\x89PNG"
    assert not re.search(r'(src|href)="(?!data:)[^"#]', page)  # nothing to fetch
    for text in ("Per layer", "BERT-base", "Provenance", "planted", "block_2", "relative norm"):
        assert text in page


def test_report_without_hidden_says_what_is_missing(
    stores: tuple[Path, Path], tmp_path: Path
) -> None:
    _, dec = stores
    result = write_report(
        posctx.open_decomposition(str(dec)), tmp_path, params=FAST, intervals=None, progress=False
    )
    page = result.index.read_text()
    assert "--hidden HIDDEN_STORE" in page
    assert np.isnan(result.metrics.relative_norm).all()
    assert "n/a" in format_metrics_table(result.metrics)


def test_figures_compute_nothing() -> None:
    ds, _ = planted_hidden(30, 10, 2, 8)
    inputs = posctx.geometry.collect_inputs(posctx.decompose(ds))
    metrics = posctx.measure_geometry(inputs, params=FAST)
    with raise_if_dask_computes():
        for _, _, draw in FIGURES.values():
            draw(inputs, metrics)


def test_cli_report(stores: tuple[Path, Path], tmp_path: Path) -> None:
    hidden, dec = stores
    out = tmp_path / "cli-report"
    result = CliRunner().invoke(
        cli,
        [
            "report",
            str(dec),
            "--out",
            str(out),
            "--hidden",
            str(hidden),
            "--quiet",
            "--max-contexts",
            "30",
            "--resamples",
            "4",
            "--no-convergence",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "block_2" in result.output and "index.html" in result.output
    payload = json.loads((out / "metrics.json").read_text())
    assert payload["geometry"]["n_sampled_contexts"] == 30
    missing = CliRunner().invoke(cli, ["report", str(tmp_path / "nope.zarr"), "--out", str(out)])
    assert isinstance(missing.exception, StoreError)


def test_report_help() -> None:
    result = CliRunner().invoke(cli, ["report", "--help"])
    assert result.exit_code == 0 and "--hidden" in result.output


def _dump_dom(page: Path, profile: Path) -> str:
    """The DOM of ``page`` after load, as headless Chromium serialises it; the <html> tag."""
    assert CHROMIUM is not None
    run = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    root = re.search(r"<html[^>]*>", run.stdout)
    assert root is not None, run.stdout[:500]
    return root.group(0)


@pytest.mark.browser
@requires_chromium
def test_index_html_renders_completely_in_chromium(report: ReportResult, tmp_path: Path) -> None:
    """Headless Chromium loads the page; its script marks <html> once every image decoded."""
    assert report.static is not None
    root = _dump_dom(report.static, tmp_path / "profile")
    n = len(FIGURES)
    assert f'data-images="{n}/{n}"' in root and 'data-rendered="complete"' in root, root


@pytest.mark.browser
@requires_chromium
def test_the_browser_check_catches_a_broken_image(report: ReportResult, tmp_path: Path) -> None:
    """The same check on the page with one figure's bytes corrupted reports it."""
    assert report.static is not None
    page = report.static.read_text()
    start = page.index("data:image/png;base64,") + len("data:image/png;base64,")
    broken = tmp_path / "broken.html"
    broken.write_text(page[:start] + "AAAA" + page[start + 4 :])
    root = _dump_dom(broken, tmp_path / "profile")
    n = len(FIGURES)
    assert f'data-images="{n}/{n - 1}"' in root and 'data-rendered="broken"' in root, root


@pytest.mark.browser
@requires_browser
def test_index_html_is_interactive_in_chromium(report: ReportResult, tmp_path: Path) -> None:
    """The report's page, offline: no console errors or requests, the slider changes the
    layer the plots show, the 3D curve has one point per position (with its token)."""
    with open_page(report.index) as opened:
        page = opened.page
        page.wait_for_function("document.body.dataset.drawn === '0'")
        curve = "document.getElementById('pos-curve').data[0]"
        assert page.evaluate(f"{curve}.x.length") == 20
        assert "tok1" in str(page.evaluate(f"{curve}.text || {curve}.hovertext"))
        before = page.evaluate(f"{curve}.x")
        page.focus("#layer-slider")
        page.keyboard.press("ArrowRight")
        page.wait_for_function("document.body.dataset.drawn === '1'")
        assert page.evaluate("document.body.dataset.layer") == "1"
        assert "block_1" in page.inner_text("#layer-label")
        assert page.evaluate(f"{curve}.x") != before
        assert "How sure" in page.inner_text("body")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        assert opened.errors == [] and opened.blocked == []
    assert (tmp_path / "report.png").stat().st_size > 50_000


def test_collected_inputs_are_reused_by_measure(stores: tuple[Path, Path]) -> None:
    """The report's path: one collect, then measurements and figures from memory."""
    _, dec = stores
    inputs = posctx.geometry.collect_inputs(posctx.open_decomposition(str(dec)))
    assert isinstance(inputs, xr.Dataset) and inputs.sizes["position"] == 20
    with raise_if_dask_computes():
        posctx.measure_geometry(inputs, params=FAST)
