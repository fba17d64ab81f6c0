"""Tests of the interactive page: its embedded data, and the page itself in headless Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import plotly.graph_objects as go  # type: ignore[import-untyped]
import pytest
import xarray as xr
from plotly.offline import get_plotlyjs  # type: ignore[import-untyped]

import posctx
import posctx.interactive as interactive
from posctx.errors import PosctxError
from posctx.geometry import METRICS, GeometryParams, collect_inputs, measure_geometry, pos_gram
from posctx.geometry.kernels import pca_scores
from posctx.interactive import figure_at_layer, interactive_page, page_data
from posctx.testing import planted_hidden
from posctx.types import (
    BOUND,
    CONTEXT,
    DIM,
    LAYER,
    LAYER_NAME,
    METRIC,
    POSITION,
    SAMPLE,
    TOPIC,
    UNCERTAINTY_ATTR,
)
from tests.browser import open_page, requires_browser

N_CONTEXTS, LENGTH, N_LAYERS, N_DIMS = 60, 16, 3, 8
TOKENS = [f"tok{t}" for t in range(LENGTH)]
#: Measurements the fake uncertainty covers ("not_measured" is in no panel: ignored).
UNCERTAIN = ("pos_stable_rank", "share_pos", "ctx_within", "orth_max_cos", "not_measured")
N_SAMPLED = (8, 16, 32, 60)


@pytest.fixture(scope="module")
def planted() -> tuple[xr.Dataset, xr.Dataset]:
    """Inputs and measurements of a planted table whose layers differ visibly."""
    ds, _ = planted_hidden(N_CONTEXTS, LENGTH, N_LAYERS, N_DIMS, n_topics=3)
    inputs = collect_inputs(posctx.decompose(ds))
    # The planted helix is one curve in every layer (its PCs equal up to sign): scaling pos
    # per layer makes the layers tell apart in the 3-d plot's numbers.
    inputs["pos"] = inputs["pos"] * xr.DataArray(1.0 + np.arange(N_LAYERS), dims=LAYER)
    return inputs, measure_geometry(inputs, params=GeometryParams(n_random=2))


def fake_uncertainty(metrics: xr.Dataset) -> xr.Dataset:
    """An uncertainty dataset of the documented schema, with NaN where not computed."""
    layers = metrics[LAYER].values
    estimate = np.stack(
        [metrics[m].values if m in metrics else np.ones(layers.size) for m in UNCERTAIN]
    ).astype(np.float64)
    interval = np.stack([estimate * 0.9, estimate * 1.1], axis=-1)
    interval[1, 1, :] = np.nan  # share_pos: no interval at layer 1
    interval[2, :, :] = np.nan  # ctx_within: none at all
    n = np.asarray(N_SAMPLED, dtype=np.float64)
    path = estimate[:, :, np.newaxis] * (1 + 0.1 / np.sqrt(n))
    path[3] = np.nan  # orth_max_cos: no path
    return xr.Dataset(
        {
            "estimate": ((METRIC, LAYER), estimate),
            "interval": ((METRIC, LAYER, BOUND), interval),
            "path": ((METRIC, LAYER, SAMPLE), path),
            "needed": ((METRIC, LAYER), np.full(estimate.shape, 24.0)),
        },
        coords={
            METRIC: list(UNCERTAIN),
            LAYER: layers,
            BOUND: ["lo", "hi"],
            "n_contexts": (SAMPLE, list(N_SAMPLED)),
        },
        attrs={UNCERTAINTY_ATTR: json.dumps({"level": 0.9, "method": "fake"})},
    )


@pytest.fixture(scope="module")
def page(planted: tuple[xr.Dataset, xr.Dataset]) -> str:
    """The page with everything: tokens, uncertainty, NaN measurements, extra HTML."""
    inputs, metrics = planted
    assert np.isnan(metrics["relative_norm"]).all()  # measured without the hidden states
    metrics = metrics.copy()
    metrics["ctx_ari"] = metrics["ctx_ari"].where(metrics[LAYER] != 1)  # NaN at one layer
    return interactive_page(
        inputs,
        metrics,
        uncertainty=fake_uncertainty(metrics),
        tokens=TOKENS,
        title="planted <geometry>",
        extra_html='<h2 id="extra">Provenance</h2>',
    )


def test_plotly_js_is_inline_once_and_nothing_is_fetched(page: str) -> None:
    plotly_js = get_plotlyjs()
    assert page.count(plotly_js) == 1
    rest = page.replace(plotly_js, "")
    assert "plotly.js" not in rest.lower().replace("plotly.js is", "")  # no second copy
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", rest, re.IGNORECASE)
    assert not re.search(r"<script[^>]*\ssrc=", rest) and "<link" not in rest
    assert "@import" not in rest and "@font-face" not in rest and "url(" not in rest
    assert "MathJax" in page.split(plotly_js)[0]  # window.PlotlyConfig keeps MathJax local


def test_page_holds_one_slider_and_the_extra_html(page: str) -> None:
    assert page.count('type="range"') == 1
    slider = re.search(r'<input type="range" id="layer-slider"[^>]*>', page)
    assert slider is not None and 'min="0"' in slider.group(0)
    assert f'max="{N_LAYERS - 1}"' in slider.group(0)
    assert '<output id="layer-label" for="layer-slider">layer 0 · embeddings</output>' in page
    assert "<title>planted &lt;geometry&gt;</title>" in page
    assert page.index('id="metric-lines"') < page.index('id="extra"') < page.index("posctx-data")


def test_one_3d_point_per_position_per_layer(
    page: str, planted: tuple[xr.Dataset, xr.Dataset]
) -> None:
    inputs, _ = planted
    data = page_data(page)
    assert data["layers"] == ["layer 0 · embeddings", "layer 1 · block_1", "layer 2 · block_2"]
    curve = data["figures"]["pos-curve"]
    assert curve["base"]["data"][0]["type"] == "scatter3d"
    assert len(curve["base"]["data"][0]["text"]) == LENGTH
    assert len(curve["layers"]) == N_LAYERS
    for i, patch in enumerate(curve["layers"]):
        points = patch["data"][0]
        assert [len(points[a]) for a in "xyz"] == [LENGTH] * 3
        expected = pca_scores(inputs["pos"].isel({LAYER: i}).values, 3)
        got = np.array([points[a] for a in "xyz"]).T
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
    assert curve["layers"][0]["data"][0]["x"] != curve["layers"][1]["data"][0]["x"]
    assert "bdata" not in json.dumps(data)  # plain JSON arrays, not plotly.py's typed arrays


def test_every_layer_patch_makes_a_valid_plotly_figure(page: str) -> None:
    """The Python twin of the page's script: patched figures pass plotly.py's validation."""
    data = page_data(page)
    assert sorted(data["figures"]) == [
        "convergence",
        "ctx-pcs",
        "gram-freq",
        "gram-posctx",
        "metric-lines",
        "pos-curve",
    ]
    for figure_id in data["figures"]:
        for i in range(N_LAYERS):
            go.Figure(figure_at_layer(data, figure_id, i))  # raises on a wrong property


def test_gram_heatmap_holds_the_cosines(page: str, planted: tuple[xr.Dataset, xr.Dataset]) -> None:
    inputs, _ = planted
    data = page_data(page)
    for i in range(N_LAYERS):
        z = np.array(figure_at_layer(data, "gram-posctx", i)["data"][0]["z"], dtype=float)
        assert z.shape == (LENGTH + N_CONTEXTS,) * 2
        np.testing.assert_allclose(z[:LENGTH, :LENGTH], pos_gram(inputs, i), atol=1e-4)
        spectrum = figure_at_layer(data, "gram-freq", i)["data"][0]
        assert np.array(spectrum["z"]).shape == (LENGTH, LENGTH)
        assert spectrum["zmax"] - spectrum["zmin"] == pytest.approx(interactive.DCT_DECADES)
    labels = data["figures"]["gram-posctx"]["base"]["data"][0]["x"]
    topics = [label.rsplit(" · ", 1)[1] for label in labels[LENGTH:]]
    assert topics == sorted(topics)  # contexts grouped by topic: the blocks show


def test_tokens_appear_in_the_hover_text_escaped(planted: tuple[xr.Dataset, xr.Dataset]) -> None:
    inputs, metrics = planted
    tokens = list(TOKENS)
    tokens[3] = "</script><b>x"
    data = page_data(interactive_page(inputs, metrics, tokens=tokens))
    text = data["figures"]["pos-curve"]["base"]["data"][0]["text"]
    assert text[2] == "position 2<br>token: tok2"
    assert text[3] == "position 3<br>token: &lt;/script&gt;&lt;b&gt;x"
    assert data["figures"]["gram-posctx"]["base"]["data"][0]["x"][2] == "pos 2 · tok2"
    without = page_data(interactive_page(inputs, metrics))
    assert without["figures"]["pos-curve"]["base"]["data"][0]["text"][2] == "position 2"


def test_tokens_must_match_the_positions(planted: tuple[xr.Dataset, xr.Dataset]) -> None:
    inputs, metrics = planted
    with pytest.raises(PosctxError, match="one entry per position"):
        interactive_page(inputs, metrics, tokens=TOKENS[:-1])


def test_nan_measurements_become_null(page: str) -> None:
    embedded = re.search(r'id="posctx-data">(.*?)</script>', page, re.DOTALL)
    assert embedded is not None
    assert "NaN" not in embedded.group(1) and "Infinity" not in embedded.group(1)
    data = page_data(page)  # strict JSON: NaN would raise
    lines = data["figures"]["metric-lines"]["base"]
    by_name = {t["name"]: t for t in lines["data"] if t.get("meta") != "interval"}
    assert by_name["relative_norm"]["y"] == [None] * N_LAYERS
    assert by_name["ctx_ari"]["y"][1] is None and by_name["ctx_ari"]["y"][0] is not None
    titles = [a["text"] for a in lines["layout"]["annotations"]]
    assert "relative norm of pos: n/a" in titles and "ctx k-means ARI" in titles


def test_uncertainty_draws_bands_and_convergence(page: str) -> None:
    data = page_data(page)
    lines = data["figures"]["metric-lines"]
    bands = {t["name"]: t for t in lines["base"]["data"] if t.get("meta") == "interval"}
    # ctx_within has no finite interval and not_measured no panel: no band for either.
    assert sorted(bands) == [
        "orth_max_cos 90% interval",
        "pos_stable_rank 90% interval",
        "share_pos 90% interval",
    ]
    assert all(b["fill"] == "toself" for b in bands.values())
    assert bands["share_pos 90% interval"]["x"].count(None) == 1  # split at layer 1
    assert "90% interval" in lines["base"]["layout"]["title"]["text"]
    markers = [patch["layout"]["shapes"] for patch in lines["layers"]]
    assert [shapes[0]["x0"] for shapes in markers] == list(range(N_LAYERS))
    convergence = data["figures"]["convergence"]
    titles = [a["text"] for a in convergence["base"]["layout"]["annotations"]]
    assert titles == ["pos_stable_rank", "share_pos", "ctx_within"]  # orth_max_cos: no path
    patch = convergence["layers"][2]["data"]
    assert len(patch) == 2 * len(titles) and len(patch[0]["y"]) == len(N_SAMPLED)
    assert patch[1]["x"] == [24.0]  # contexts needed


def test_missing_uncertainty_parts_are_left_out(planted: tuple[xr.Dataset, xr.Dataset]) -> None:
    inputs, metrics = planted
    bare = fake_uncertainty(metrics)[["estimate"]]
    bare.attrs = {}
    data = page_data(interactive_page(inputs, metrics, uncertainty=bare))
    assert "convergence" not in data["figures"]
    lines = data["figures"]["metric-lines"]["base"]
    assert not [t for t in lines["data"] if t.get("meta") == "interval"]
    unlabelled = fake_uncertainty(metrics).drop_vars(LAYER)  # layers matched by position
    unlabelled.attrs[UNCERTAINTY_ATTR] = "{not json"
    data = page_data(interactive_page(inputs, metrics, uncertainty=unlabelled))
    lines = data["figures"]["metric-lines"]["base"]
    assert "pos_stable_rank interval" in [t["name"] for t in lines["data"]]


def test_large_inputs_are_capped(
    planted: tuple[xr.Dataset, xr.Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs, metrics = planted
    monkeypatch.setattr(interactive, "GRAM_POSITIONS", 5)
    monkeypatch.setattr(interactive, "GRAM_CONTEXTS", 7)
    monkeypatch.setattr(interactive, "SCATTER_CONTEXTS", 20)
    monkeypatch.setattr(interactive, "CURVE_POSITIONS", 9)
    data = page_data(interactive_page(inputs, metrics))
    gram = figure_at_layer(data, "gram-posctx", 0)["data"][0]
    assert np.array(gram["z"]).shape == (12, 12) and gram["x"][0] == "pos 0"
    assert gram["x"][4] == f"pos {LENGTH - 1}"  # evenly spaced, ends included
    assert np.array(figure_at_layer(data, "gram-freq", 0)["data"][0]["z"]).shape == (5, 5)
    scatter = figure_at_layer(data, "ctx-pcs", 0)["data"]
    assert sum(len(t["x"]) for t in scatter) == 20
    assert [t["name"] for t in scatter] == ["topic0", "topic1", "topic2"]
    assert len(figure_at_layer(data, "pos-curve", 0)["data"][0]["x"]) == 9


def _synthetic(n_contexts: int, length: int, n_layers: int, n_dims: int) -> xr.Dataset:
    """Inputs of the size of a small model's run, from random numbers (no decomposition)."""
    rng = np.random.default_rng(0)
    t = np.linspace(0, 2 * np.pi, length)[:, np.newaxis, np.newaxis]
    pos = np.cos(t * rng.uniform(0.5, 3, (1, n_layers, n_dims)))
    ctx = rng.normal(size=(n_contexts, n_layers, n_dims))
    return xr.Dataset(
        {"pos": ((POSITION, LAYER, DIM), pos), "ctx": ((CONTEXT, LAYER, DIM), ctx)},
        coords={
            POSITION: np.arange(1, length + 1),
            CONTEXT: np.arange(n_contexts),
            LAYER: np.arange(n_layers),
            LAYER_NAME: (LAYER, [f"block_{i}" for i in range(n_layers)]),
            TOPIC: (CONTEXT, [f"topic{i % 5}" for i in range(n_contexts)]),
        },
    )


def test_page_of_a_small_model_stays_small() -> None:
    """7 layers, 126 positions, 384 dims, 512 contexts: well under 8 MB, plotly.js included."""
    inputs = _synthetic(512, 126, 7, 384)
    rng = np.random.default_rng(1)
    metrics = xr.Dataset(
        {
            name: (LAYER, rng.uniform(size=7))
            for name, (dims, _) in METRICS.items()
            if dims == (LAYER,)
        },
        coords={LAYER: np.arange(7), LAYER_NAME: (LAYER, inputs[LAYER_NAME].values)},
    )
    page = interactive_page(inputs, metrics, tokens=[f"t{i}" for i in range(126)])
    size = len(page.encode())
    data_size = size - len(get_plotlyjs().encode())
    assert size < 8e6 and data_size < 2.5e6, (size, data_size)


@pytest.mark.browser
@requires_browser
def test_page_works_offline_in_chromium(page: str, tmp_path: Path) -> None:
    """The page draws every plot with no error and no request; the slider redraws them."""
    path = tmp_path / "interactive.html"
    path.write_text(page, encoding="utf-8")
    n_figures = len(page_data(page)["figures"])
    with open_page(path) as opened:
        browser = opened.page
        browser.wait_for_function("document.body.dataset.drawn === '0'")
        assert browser.evaluate("document.body.dataset.layer") == "0"
        assert browser.locator(".js-plotly-plot").count() == n_figures
        assert browser.locator("#pos-curve canvas").count() > 0  # WebGL drew the 3-d scene
        assert "WebGL is not supported" not in browser.inner_text("body")
        x_of = "Array.from(document.getElementById('pos-curve').data[0].x)"
        before = browser.evaluate(x_of)
        assert len(before) == LENGTH
        assert browser.inner_text("#layer-label") == "layer 0 · embeddings"

        browser.focus("#layer-slider")
        browser.keyboard.press("ArrowRight")
        browser.wait_for_function("document.body.dataset.drawn === '1'")
        assert browser.inner_text("#layer-label") == "layer 1 · block_1"
        assert browser.evaluate("document.body.dataset.layer") == "1"
        after = browser.evaluate(x_of)
        assert len(after) == LENGTH and after != before
        marker = "document.getElementById('metric-lines').layout.shapes[0].x0"
        assert browser.evaluate(marker) == 1

        browser.evaluate(
            """() => {
                const slider = document.getElementById('layer-slider');
                slider.value = '2';
                slider.dispatchEvent(new Event('input', {bubbles: true}));
            }"""
        )
        browser.wait_for_function("document.body.dataset.drawn === '2'")
        assert browser.inner_text("#layer-label") == "layer 2 · block_2"
        assert browser.evaluate(x_of) not in (before, after)

        shot = tmp_path / "page.png"
        browser.screenshot(path=str(shot), full_page=True)
        assert opened.errors == [] and opened.blocked == []
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000


@pytest.mark.browser
@requires_browser
def test_the_browser_check_catches_errors_and_requests(tmp_path: Path) -> None:
    """Guard: the helper reports a script error and a network request (and blocks it)."""
    path = tmp_path / "bad.html"
    path.write_text(
        '<!DOCTYPE html><html><body><img src="https://example.com/x.png">'
        "<script>console.error('planted'); undefinedFunction();</script></body></html>"
    )
    with open_page(path) as opened:
        opened.page.wait_for_timeout(200)
        assert any("planted" in e for e in opened.errors)
        assert any("undefinedFunction" in e for e in opened.errors)
        assert opened.blocked == ["https://example.com/x.png"]
