"""The interactive report page: one layer slider redraws every plot, offline (plotly.js inline).

:func:`interactive_page` turns the in-memory inputs of :func:`posctx.geometry.collect_inputs`
and the measurements of :func:`posctx.geometry.measure_geometry` into one self-contained HTML
page. plotly.js is embedded once, inline; the page fetches nothing (no CDN, fonts, MathJax or
map tiles), so it opens from disk on a machine without a network.

The page holds, per plot, a base figure (what no layer changes: styles, labels, hover text)
and one patch per layer (the arrays that change). Moving the slider applies the layer's
patches to fresh copies of the bases and redraws with ``Plotly.react``. The plots:

* ``pos-curve``: pos in its top three principal components, one point per position (3-d);
* ``gram-posctx``: cosines of ``[pos; ctx]`` rows, contexts grouped by topic;
* ``gram-freq``: the cosine Gram matrix of pos in the DCT-II basis (log scale);
* ``ctx-pcs``: ctx in its top two principal components, one trace per topic;
* ``metric-lines``: the per-layer measurements over layers, with intervals when given, and
  a marker at the current layer;
* ``convergence`` (with an uncertainty dataset that has a convergence path): each
  measurement of the current layer against the number of contexts.

Large matrices travel as int16 in base64 (4 decimals for cosines), other numbers as JSON
rounded to :data:`SIGNIFICANT_DIGITS` significant digits; NaN becomes ``null``.
:func:`page_data` reads the embedded data back and :func:`figure_at_layer` replays a patch
in Python, as the page's script does.

Examples
--------
>>> import posctx
>>> from posctx.geometry import collect_inputs, measure_geometry
>>> from posctx.testing import planted_hidden
>>> ds, _ = planted_hidden(30, 12, 2, 6)
>>> inputs = collect_inputs(posctx.decompose(ds))
>>> page = interactive_page(inputs, measure_geometry(inputs))
>>> page.startswith("<!DOCTYPE html>"), 'id="layer-slider"' in page
(True, True)
>>> sorted(page_data(page)["figures"])
['ctx-pcs', 'gram-freq', 'gram-posctx', 'metric-lines', 'pos-curve']
"""

from __future__ import annotations

import base64
import copy
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import xarray as xr

from posctx.errors import PosctxError
from posctx.geometry import kernels
from posctx.types import (
    BOUND,
    CONTEXT,
    LAYER,
    LAYER_NAME,
    METRIC,
    POSITION,
    SAMPLE,
    TOPIC,
    UNCERTAINTY_ATTR,
)

#: Significant digits of the numbers embedded as JSON.
SIGNIFICANT_DIGITS = 4
#: Most positions drawn on the 3-d curve (evenly spaced).
CURVE_POSITIONS = 2048
#: Most positions and contexts in the Gram heatmaps (evenly spaced).
GRAM_POSITIONS = 256
GRAM_CONTEXTS = 128
#: Most contexts in the ctx scatter (a seeded uniform sample).
SCATTER_CONTEXTS = 2000
#: Floor added to ``|coefficient|`` before the log of the DCT spectrum.
TINY = 1e-12
#: Decades of the DCT spectrum's colour scale below its largest coefficient.
DCT_DECADES = 6.0

#: The panels of ``metric-lines``: (title, ((variable, dashed), ...)); a dashed line is a
#: baseline (the same measurement on shuffled or randomly rotated data).
PANELS: tuple[tuple[str, tuple[tuple[str, bool], ...]], ...] = (
    ("pos stable rank", (("pos_stable_rank", False),)),
    ("pos ScreeNOT rank", (("pos_screenot_rank", False),)),
    ("ScreeNOT share of sum s", (("pos_screenot_share", False),)),
    ("relative norm of pos", (("relative_norm", False),)),
    ("pos share of variance", (("share_pos", False),)),
    ("ctx share of variance", (("share_ctx", False),)),
    ("resid share of variance", (("share_resid", False),)),
    (
        "low-frequency share (dashed: shuffled)",
        (("smooth_low_share", False), ("smooth_low_share_shuffled", True)),
    ),
    ("ctx mean |cos|: within, between topics", (("ctx_within", False), ("ctx_between", False))),
    ("ctx k-means ARI", (("ctx_ari", False),)),
    (
        "pos-ctx max |cos| (dashed: random)",
        (("orth_max_cos", False), ("orth_max_cos_random", True)),
    ),
    ("spiral turns", (("spiral_turns", False),)),
)
#: Panels per row of ``metric-lines`` and ``convergence``.
PANEL_COLUMNS = 4

_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
_BASELINE_COLOUR = "#7f7f7f"
_Q16_NAN = -32768  # int16 code of NaN in the encoded matrices
_Q16_MAX = 32767
_PLOTLY_CONFIG = {"displaylogo": False, "responsive": True, "typesetMath": False}
_DATA_ID = "posctx-data"


# --- numbers as JSON ---------------------------------------------------------------------


def _rounded(values: npt.ArrayLike, digits: int = SIGNIFICANT_DIGITS) -> list[Any]:
    """``values`` as nested lists, rounded to ``digits`` significant digits, NaN as None.

    Examples
    --------
    >>> _rounded([123456.0, 0.000123456, float("nan"), 0.0])
    [123500.0, 0.0001235, None, 0.0]
    """
    a = np.asarray(values, dtype=np.float64)
    nonzero = np.isfinite(a) & (a != 0)
    exponent = np.zeros(a.shape, dtype=np.int64)
    exponent[nonzero] = np.floor(np.log10(np.abs(a[nonzero]))).astype(np.int64)
    decimals = np.clip(digits - 1 - exponent, -300, 300)
    # Scale by exact powers of ten on the side that keeps them integers, so the result is the
    # double nearest the decimal and JSON writes it in its short form.
    up, down = 10.0 ** np.maximum(decimals, 0), 10.0 ** np.maximum(-decimals, 0)
    out = np.asarray(np.round(a * up / down) * down / up)
    boxed = out.astype(object)
    boxed[~np.isfinite(out)] = None
    listed: list[Any] = boxed.tolist()
    return listed


def _q16(matrix: npt.ArrayLike) -> dict[str, Any]:
    """A matrix as int16 in base64 with a power-of-ten scale; NaN as -32768.

    Three to four times smaller than rounded JSON: the Gram heatmaps are most of the data.

    Examples
    --------
    >>> spec = _q16([[1.0, -0.5], [float("nan"), 0.25]])
    >>> spec["scale"], spec["shape"]
    (10000.0, [2, 2])
    >>> _decode_q16(spec)
    [[1.0, -0.5], [None, 0.25]]
    """
    a = np.asarray(matrix, dtype=np.float64)
    finite = np.isfinite(a)
    top = float(np.abs(a[finite]).max()) if finite.any() else 0.0
    # The largest power of ten that keeps every value within int16: 4 decimals for cosines.
    scale = 10.0 ** math.floor(math.log10(_Q16_MAX / top)) if top > 0 else 1.0
    codes = np.where(finite, np.round(np.where(finite, a, 0.0) * scale), _Q16_NAN)
    raw = codes.astype("<i2").tobytes()
    return {"q16": base64.b64encode(raw).decode("ascii"), "scale": scale, "shape": list(a.shape)}


def _decode_q16(spec: Mapping[str, Any]) -> list[Any]:
    """The rows of a matrix from :func:`_q16`, None for NaN (what the page's script does)."""
    codes = np.frombuffer(base64.b64decode(spec["q16"]), dtype="<i2").reshape(spec["shape"])
    values = np.where(codes == _Q16_NAN, np.nan, codes / float(spec["scale"]))
    return _rounded(values, 15)


def _plain(value: Any) -> Any:
    """A figure as plain JSON: numpy values to Python, NaN and infinities to None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _figure(fig: Any) -> dict[str, Any]:
    """A plotly Figure (checked by plotly.py on construction) as ``{"data", "layout"}``."""
    spec = _plain(fig.to_plotly_json())
    return {"data": spec["data"], "layout": spec["layout"]}


# --- selections --------------------------------------------------------------------------


def _evenly(n: int, most: int) -> npt.NDArray[np.intp]:
    """At most ``most`` evenly spaced indices of ``range(n)``, first and last included.

    Examples
    --------
    >>> _evenly(10, 4).tolist(), _evenly(3, 4).tolist()
    ([0, 3, 6, 9], [0, 1, 2])
    """
    if n <= most:
        return np.arange(n)
    out: npt.NDArray[np.intp] = np.unique(np.round(np.linspace(0, n - 1, most)).astype(np.intp))
    return out


def _topics(inputs: xr.Dataset) -> npt.NDArray[Any]:
    if TOPIC in inputs.coords:
        return np.array([str(t) for t in inputs[TOPIC].values])  # StringDType from Zarr
    return np.full(inputs.sizes[CONTEXT], "all")


def _layer_array(inputs: xr.Dataset, name: str, i: int) -> npt.NDArray[np.float64]:
    return np.asarray(inputs[name].isel({LAYER: i}).values, dtype=np.float64)


def layer_labels(data: xr.Dataset) -> list[str]:
    """One label per layer: ``"layer 3 · block_3"`` (the name when ``layer_name`` is there).

    Examples
    --------
    >>> import xarray as xr
    >>> layer_labels(xr.Dataset(coords={"layer": [0, 1], "layer_name": ("layer", ["emb", "b1"])}))
    ['layer 0 · emb', 'layer 1 · b1']
    """
    layers = [str(v) for v in data[LAYER].values]
    if LAYER_NAME not in data.coords:
        return [f"layer {layer}" for layer in layers]
    names = [str(v) for v in data[LAYER_NAME].values]
    return [f"layer {layer} · {name}" for layer, name in zip(layers, names, strict=True)]


def _explained(s: npt.NDArray[np.float64], k: int) -> list[str]:
    """``"PC1 (43%)"``: each component's share of ``sum s**2``."""
    total = float((s**2).sum())
    shares = [float(v**2 / total) if total > 0 else math.nan for v in s[:k]]
    shares += [math.nan] * (k - len(shares))
    return [
        f"PC{j + 1} ({100 * v:.0f}%)" if math.isfinite(v) else f"PC{j + 1}"
        for j, v in enumerate(shares)
    ]


# --- the plots ---------------------------------------------------------------------------


def _pos_curve(inputs: xr.Dataset, tokens: Sequence[str] | None) -> dict[str, Any]:
    import plotly.graph_objects as go  # type: ignore[import-untyped]

    shown = _evenly(inputs.sizes[POSITION], CURVE_POSITIONS)
    positions = inputs[POSITION].values[shown]
    text = [f"position {html.escape(str(p))}" for p in positions]
    if tokens is not None:
        text = [
            f"{t}<br>token: {html.escape(str(tokens[j]))}" for t, j in zip(text, shown, strict=True)
        ]
    trace = go.Scatter3d(
        mode="lines+markers",
        text=text,
        hovertemplate="%{text}<br>PC1 %{x:.4g}<br>PC2 %{y:.4g}<br>PC3 %{z:.4g}<extra></extra>",
        line={"color": "#bbbbbb", "width": 2},
        marker={
            "size": 3,
            "color": positions.tolist(),
            "colorscale": "Viridis",
            "showscale": True,
            "colorbar": {"title": {"text": "position"}},
        },
    )
    layout = {
        "template": "plotly_white",
        "height": 520,
        "margin": {"l": 0, "r": 0, "t": 30, "b": 0},
        "title": {"text": "pos in its top three principal components"},
        # Kept while the revision is the same: the camera stays where the reader turned it.
        "uirevision": "pos-curve",
    }
    patches = []
    for i in range(inputs.sizes[LAYER]):
        u, s, _ = np.linalg.svd(_layer_array(inputs, "pos", i)[shown], full_matrices=False)
        z = kernels.scores_from_svd(u, s, 3)
        titles = _explained(s, 3)
        patches.append(
            {
                "data": [{"x": _rounded(z[:, 0]), "y": _rounded(z[:, 1]), "z": _rounded(z[:, 2])}],
                "layout": {
                    f"scene.{a}axis.title.text": t for a, t in zip("xyz", titles, strict=True)
                },
            }
        )
    return {"base": _figure(go.Figure(trace, layout)), "layers": patches}


def _gram_rows(
    inputs: xr.Dataset, tokens: Sequence[str] | None
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], list[str], npt.NDArray[Any]]:
    """Rows of the [pos; ctx] heatmap: positions, contexts by topic, labels, their topics."""
    pos_rows = _evenly(inputs.sizes[POSITION], GRAM_POSITIONS)
    topics = _topics(inputs)
    picked = _evenly(inputs.sizes[CONTEXT], GRAM_CONTEXTS)
    ctx_rows = picked[np.argsort(topics[picked], kind="stable")]
    labels = [f"pos {html.escape(str(inputs[POSITION].values[j]))}" for j in pos_rows]
    if tokens is not None:
        labels = [
            f"{t} · {html.escape(str(tokens[j]))}" for t, j in zip(labels, pos_rows, strict=True)
        ]
    labels += [
        f"ctx {html.escape(str(inputs[CONTEXT].values[j]))} · {html.escape(topics[j])}"
        for j in ctx_rows
    ]
    return pos_rows, ctx_rows, labels, topics[ctx_rows]


def _separators(n_pos: int, ctx_topics: npt.NDArray[Any]) -> list[dict[str, Any]]:
    """Lines between the pos and ctx blocks (solid) and between topics (dotted)."""
    cuts = [(n_pos - 0.5, "solid")] + [
        (n_pos + j - 0.5, "dot")
        for j in range(1, ctx_topics.size)
        if ctx_topics[j] != ctx_topics[j - 1]
    ]
    shapes = []
    for at, dash in cuts:
        line = {"color": "black", "width": 1 if dash == "solid" else 0.5, "dash": dash}
        shapes.append(
            {
                "type": "line",
                "xref": "x",
                "yref": "y domain",
                "x0": at,
                "x1": at,
                "y0": 0,
                "y1": 1,
                "line": line,
            }
        )
        shapes.append(
            {
                "type": "line",
                "yref": "y",
                "xref": "x domain",
                "y0": at,
                "y1": at,
                "x0": 0,
                "x1": 1,
                "line": line,
            }
        )
    return shapes


def _gram_posctx(inputs: xr.Dataset, tokens: Sequence[str] | None) -> dict[str, Any]:
    import plotly.graph_objects as go

    pos_rows, ctx_rows, labels, ctx_topics = _gram_rows(inputs, tokens)
    n_pos, n_ctx = pos_rows.size, ctx_rows.size
    trace = go.Heatmap(
        x=labels,
        y=labels,
        colorscale="RdBu",
        reversescale=True,
        zmin=-1,
        zmax=1,
        colorbar={"title": {"text": "cosine"}},
        hovertemplate="%{y}<br>%{x}<br>cosine %{z:.3f}<extra></extra>",
    )
    axis = {"showticklabels": False, "showgrid": False, "zeroline": False}
    blocks = [
        ((n_pos - 1) / 2, f"pos ({n_pos})"),
        (n_pos + (n_ctx - 1) / 2, f"ctx ({n_ctx}, by topic)"),
    ]
    layout = {
        "template": "plotly_white",
        "height": 560,
        "margin": {"t": 60},
        "title": {"text": "cosines of normalised [pos; ctx] rows"},
        "xaxis": {**axis, "title": {"text": "pos rows, then ctx rows grouped by topic"}},
        "yaxis": {**axis, "autorange": "reversed"},
        "shapes": _separators(n_pos, ctx_topics),
        "annotations": [
            {
                "x": x,
                "y": 1.0,
                "xref": "x",
                "yref": "paper",
                "yanchor": "bottom",
                "text": t,
                "showarrow": False,
            }
            for x, t in blocks
        ],
    }
    patches = []
    for i in range(inputs.sizes[LAYER]):
        rows = np.vstack(
            [_layer_array(inputs, "pos", i)[pos_rows], _layer_array(inputs, "ctx", i)[ctx_rows]]
        )
        unit = kernels.normalise_rows(rows)
        patches.append({"data": [{"z": _q16(unit @ unit.T)}], "layout": {}})
    return {"base": _figure(go.Figure(trace, layout)), "layers": patches}


def _gram_freq(inputs: xr.Dataset) -> dict[str, Any]:
    import plotly.graph_objects as go

    shown = _evenly(inputs.sizes[POSITION], GRAM_POSITIONS)
    trace = go.Heatmap(
        colorscale="Magma",
        colorbar={"title": {"text": "log10 |coef|"}},
        hovertemplate="frequencies (%{y}, %{x})<br>log10 |coef| %{z:.3f}<extra></extra>",
    )
    note = "" if shown.size == inputs.sizes[POSITION] else f", {shown.size} evenly spaced positions"
    layout = {
        "template": "plotly_white",
        "height": 560,
        "title": {"text": f"pos Gram matrix (cosines) in the DCT-II basis{note}"},
        "xaxis": {"title": {"text": "frequency"}, "showgrid": False},
        "yaxis": {"title": {"text": "frequency"}, "showgrid": False, "autorange": "reversed"},
    }
    patches = []
    for i in range(inputs.sizes[LAYER]):
        unit = kernels.normalise_rows(_layer_array(inputs, "pos", i)[shown])
        spectrum = np.log10(np.abs(kernels.dct_spectrum(unit @ unit.T)) + TINY)
        top = float(spectrum.max())
        # A fixed depth below the largest coefficient: rounding noise near TINY gets no colours.
        patches.append(
            {"data": [{"z": _q16(spectrum), "zmin": top - DCT_DECADES, "zmax": top}], "layout": {}}
        )
    return {"base": _figure(go.Figure(trace, layout)), "layers": patches}


def _ctx_pcs(inputs: xr.Dataset) -> dict[str, Any]:
    import plotly.graph_objects as go

    topics = _topics(inputs)
    shown = kernels.sample_indices(topics.size, SCATTER_CONTEXTS, 0)
    names = [str(t) for t in np.unique(topics[shown])]
    members = [shown[topics[shown] == name] for name in names]
    contexts = inputs[CONTEXT].values
    traces = [
        go.Scatter(
            mode="markers",
            name=name,
            text=[
                f"context {html.escape(str(contexts[j]))}<br>topic {html.escape(name)}"
                for j in rows
            ],
            hovertemplate="%{text}<br>PC1 %{x:.4g}<br>PC2 %{y:.4g}<extra></extra>",
            marker={"size": 5, "opacity": 0.7, "color": _COLOURS[k % len(_COLOURS)]},
        )
        for k, (name, rows) in enumerate(zip(names, members, strict=True))
    ]
    layout = {
        "template": "plotly_white",
        "height": 520,
        "title": {"text": "ctx in its top two principal components, by topic"},
        "legend": {"title": {"text": "topic"}},
        "uirevision": "ctx-pcs",
    }
    patches = []
    for i in range(inputs.sizes[LAYER]):
        u, s, _ = np.linalg.svd(_layer_array(inputs, "ctx", i), full_matrices=False)
        z = kernels.scores_from_svd(u, s, 2)
        x_title, y_title = _explained(s, 2)
        patches.append(
            {
                "data": [
                    {"x": _rounded(z[rows, 0]), "y": _rounded(z[rows, 1])} for rows in members
                ],
                "layout": {"xaxis.title.text": x_title, "yaxis.title.text": y_title},
            }
        )
    return {"base": _figure(go.Figure(traces, layout)), "layers": patches}


# --- measurements over layers ------------------------------------------------------------


def _uncertainty_level(uncertainty: xr.Dataset) -> str:
    """``"95% interval"`` from the uncertainty record's ``level``, else ``"interval"``."""
    try:
        level = float(json.loads(uncertainty.attrs[UNCERTAINTY_ATTR])["level"])
    except (KeyError, TypeError, ValueError):
        return "interval"
    return f"{100 * level:g}% interval"


def _uncertainty_of(
    uncertainty: xr.Dataset | None, variable: str, name: str, layers: npt.NDArray[Any]
) -> xr.DataArray | None:
    """``uncertainty[variable]`` of measurement ``name`` on ``layers`` (NaN where missing).

    None when the dataset, the variable or the measurement is absent.
    """
    if (
        uncertainty is None
        or variable not in uncertainty.data_vars
        or METRIC not in uncertainty.dims
    ):
        return None
    names = [str(m) for m in uncertainty[METRIC].values] if METRIC in uncertainty.coords else []
    if name not in names:
        return None
    values = uncertainty[variable].isel({METRIC: names.index(name)})
    if LAYER in values.coords:
        return values.reindex({LAYER: layers})
    if values.sizes.get(LAYER) == layers.size:
        return values.assign_coords({LAYER: layers})
    return None


def _runs(ok: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of True in ``ok``.

    Examples
    --------
    >>> _runs(np.array([True, True, False, True]))
    [(0, 2), (3, 4)]
    """
    edges = np.diff(np.concatenate([[0], ok.astype(np.int8), [0]]))
    return list(
        zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True)
    )


def _band(x: npt.ArrayLike, lo: npt.ArrayLike, hi: npt.ArrayLike) -> tuple[list[Any], list[Any]]:
    """A closed outline from ``lo`` to ``hi`` per run of finite layers, runs split by None.

    Plotly's ``fill="toself"`` closes each run of a trace between gaps on its own, so an
    interval missing at some layers leaves a gap, not a wrong shape. A run of one layer
    becomes a narrow box, which a line down and back up would not show.

    Examples
    --------
    >>> _band([0, 1, 2, 3], [0, 1, float("nan"), 3], [1, 2, 3, 4])
    ([0.0, 1.0, 1.0, 0.0, None, 2.85, 3.15, 3.15, 2.85], [1.0, 2.0, 1.0, 0.0, None, 4.0, 4.0, 3.0, 3.0])
    """
    at = np.asarray(x, dtype=np.float64)
    low, high = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    xs: list[Any] = []
    ys: list[Any] = []
    for start, end in _runs(np.isfinite(low) & np.isfinite(high)):
        if xs:
            xs.append(None)
            ys.append(None)
        if end - start == 1:
            xs += _rounded(at[start] + np.array([-0.15, 0.15, 0.15, -0.15]))
            ys += _rounded(np.array([high[start], high[start], low[start], low[start]]))
        else:
            xs += _rounded(np.concatenate([at[start:end], at[start:end][::-1]]))
            ys += _rounded(np.concatenate([high[start:end], low[start:end][::-1]]))
    return xs, ys


def _interval_outline(
    uncertainty: xr.Dataset | None, name: str, layers: npt.NDArray[Any]
) -> tuple[list[Any], list[Any]] | None:
    """The band of ``name``'s interval over ``layers`` (:func:`_band`); None if it has none."""
    interval = _uncertainty_of(uncertainty, "interval", name, layers)
    if interval is None or BOUND not in interval.dims:
        return None
    bounds = [str(b) for b in interval[BOUND].values]
    if "lo" not in bounds or "hi" not in bounds:
        return None
    lo = interval.isel({BOUND: bounds.index("lo")}).values
    hi = interval.isel({BOUND: bounds.index("hi")}).values
    outline = _band(layers, lo, hi)
    return outline if outline[0] else None


def _rgba(colour: str, alpha: float) -> str:
    r, g, b = (int(colour[k : k + 2], 16) for k in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _panels(available: Sequence[str]) -> list[tuple[str, list[tuple[str, bool]]]]:
    """The :data:`PANELS` whose measurements are in ``available`` (only those lines)."""
    out = []
    for title, lines in PANELS:
        kept = [(name, dashed) for name, dashed in lines if name in available]
        if kept:
            out.append((title, kept))
    return out


def _subplots(titles: Sequence[str]) -> Any:
    from plotly.subplots import make_subplots  # type: ignore[import-untyped]

    rows = max(1, math.ceil(len(titles) / PANEL_COLUMNS))
    return make_subplots(
        rows=rows,
        cols=PANEL_COLUMNS,
        subplot_titles=list(titles),
        horizontal_spacing=0.06,
        vertical_spacing=0.5 / rows,
    )


def _cell(k: int) -> tuple[int, int, str]:
    """Row, column and axis suffix (``""``, ``"2"``, ...) of panel ``k``."""
    return k // PANEL_COLUMNS + 1, k % PANEL_COLUMNS + 1, "" if k == 0 else str(k + 1)


def _layer_markers(n_panels: int, x: Any) -> list[dict[str, Any]]:
    """One vertical line at ``x`` in every panel: the current layer."""
    return [
        {
            "type": "line",
            "xref": f"x{_cell(k)[2]}",
            "yref": f"y{_cell(k)[2]} domain",
            "x0": x,
            "x1": x,
            "y0": 0,
            "y1": 1,
            "line": {"color": "#444444", "width": 1.5, "dash": "dot"},
        }
        for k in range(n_panels)
    ]


def _metric_lines(metrics: xr.Dataset, uncertainty: xr.Dataset | None) -> dict[str, Any]:
    import plotly.graph_objects as go

    layers = metrics[LAYER].values
    x = [v.item() if isinstance(v, np.generic) else v for v in layers]
    names = layer_labels(metrics)
    available = [str(n) for n in metrics.data_vars if metrics[n].dims == (LAYER,)]
    panels = _panels(available)
    # An empty panel says why (relative_norm needs the hidden-state store, for one).
    fig = _subplots(
        [
            title
            if any(np.isfinite(metrics[n].values).any() for n, _ in lines)
            else f"{title}: n/a"
            for title, lines in panels
        ]
    )
    level = _uncertainty_level(uncertainty) if uncertainty is not None else ""
    for k, (_, lines) in enumerate(panels):
        row, col, _ = _cell(k)
        for j, (name, dashed) in enumerate(lines):
            colour = _BASELINE_COLOUR if dashed else _COLOURS[j]
            outline = _interval_outline(uncertainty, name, layers)
            if outline is not None:
                band = go.Scatter(
                    x=outline[0],
                    y=outline[1],
                    fill="toself",
                    mode="lines",
                    line={"width": 0},
                    fillcolor=_rgba(colour, 0.2),
                    name=f"{name} {level}",
                    hoverinfo="skip",
                    meta="interval",
                )
                fig.add_trace(band, row=row, col=col)
            line = go.Scatter(
                x=x,
                y=_rounded(metrics[name].values),
                mode="lines+markers",
                name=name,
                text=names,
                line={"color": colour, "dash": "dash" if dashed else "solid", "width": 1.5},
                marker={"size": 5},
                hovertemplate=f"%{{text}}<br>{name} %{{y:.4g}}<extra></extra>",
            )
            fig.add_trace(line, row=row, col=col)
        fig.update_xaxes(title_text="layer", tickvals=x, row=row, col=col)
    fig.update_layout(
        template="plotly_white",
        height=260 * max(1, math.ceil(len(panels) / PANEL_COLUMNS)) + 60,
        showlegend=False,
        margin={"t": 60},
        title={"text": "measurements across layers" + (f" (bands: {level})" if level else "")},
    )
    patches = [{"data": [], "layout": {"shapes": _layer_markers(len(panels), v)}} for v in x]
    return {"base": _figure(fig), "layers": patches}


def _paths(metrics: xr.Dataset, uncertainty: xr.Dataset) -> dict[str, npt.NDArray[np.float64]]:
    """Convergence paths ``(layer, sample)`` of the panels' measurements that have any."""
    layers = metrics[LAYER].values
    out = {}
    for name in (name for _, lines in PANELS for name, _ in lines):
        path = _uncertainty_of(uncertainty, "path", name, layers)
        if path is not None and SAMPLE in path.dims and LAYER in path.dims:
            values = np.asarray(path.transpose(LAYER, SAMPLE).values, dtype=np.float64)
            if np.isfinite(values).any():
                out[name] = values
    return out


def _convergence(metrics: xr.Dataset, uncertainty: xr.Dataset | None) -> dict[str, Any] | None:
    """Each measurement of the current layer against the contexts used; None without paths.

    Per panel: the path (measurement on the first n contexts), a dashed line at the value
    from all contexts, and a red point at the contexts ``needed`` when the dataset has it.
    """
    import plotly.graph_objects as go

    if uncertainty is None or "n_contexts" not in uncertainty.coords:
        return None
    paths = _paths(metrics, uncertainty)
    if not paths:
        return None
    layers = metrics[LAYER].values
    n = np.asarray(uncertainty["n_contexts"].values, dtype=np.float64)
    fig = _subplots(list(paths))
    ticks = [int(v) for v in np.unique(n[np.isfinite(n) & (n > 0)])]
    for k, name in enumerate(paths):
        row, col, _ = _cell(k)
        path = go.Scatter(
            x=_rounded(n),
            mode="lines+markers",
            name=name,
            line={"color": _COLOURS[0]},
            hovertemplate=f"%{{x}} contexts<br>{name} %{{y:.4g}}<extra></extra>",
        )
        needed = go.Scatter(
            mode="markers",
            name="contexts needed",
            marker={"color": _COLOURS[3], "size": 9, "symbol": "diamond"},
            hovertemplate="contexts needed: %{x:.4g}<extra></extra>",
        )
        fig.add_trace(path, row=row, col=col)
        fig.add_trace(needed, row=row, col=col)
        fig.update_xaxes(
            type="log", tickvals=ticks, title_text="contexts (log scale)", row=row, col=col
        )
    fig.update_layout(
        template="plotly_white",
        height=260 * max(1, math.ceil(len(paths) / PANEL_COLUMNS)) + 60,
        showlegend=False,
        margin={"t": 60},
        title={
            "text": "convergence at this layer (dashed: all contexts; diamond: contexts needed)"
        },
    )
    patches = [_convergence_patch(metrics, uncertainty, paths, i) for i in range(layers.size)]
    return {"base": _figure(fig), "layers": patches}


def _convergence_patch(
    metrics: xr.Dataset,
    uncertainty: xr.Dataset,
    paths: Mapping[str, npt.NDArray[np.float64]],
    i: int,
) -> dict[str, Any]:
    layers = metrics[LAYER].values
    data: list[dict[str, Any]] = []
    shapes = []
    for k, name in enumerate(paths):
        full = float(metrics[name].values[i]) if name in metrics else math.nan
        needed = _uncertainty_of(uncertainty, "needed", name, layers)
        n_needed = float(needed.values[i]) if needed is not None and needed.ndim == 1 else math.nan
        show = math.isfinite(n_needed) and n_needed > 0 and math.isfinite(full)
        data.append({"y": _rounded(paths[name][i])})
        data.append(
            {"x": _rounded([n_needed] if show else []), "y": _rounded([full] if show else [])}
        )
        if math.isfinite(full):
            suffix = _cell(k)[2]
            shapes.append(
                {
                    "type": "line",
                    "xref": f"x{suffix} domain",
                    "yref": f"y{suffix}",
                    "x0": 0,
                    "x1": 1,
                    "y0": _rounded([full])[0],
                    "y1": _rounded([full])[0],
                    "line": {"color": _BASELINE_COLOUR, "width": 1, "dash": "dash"},
                }
            )
    return {"data": data, "layout": {"shapes": shapes}}


# --- the page ----------------------------------------------------------------------------

#: What the page's script does: decode a layer's patches, apply them to fresh copies of the
#: base figures, redraw. ``body[data-layer]`` is the layer shown; ``body[data-drawn]`` is set
#: once every plot of that layer has been drawn (tests wait for it).
_SCRIPT = """
(function () {
  "use strict";
  var payload = JSON.parse(document.getElementById("posctx-data").textContent);
  var slider = document.getElementById("layer-slider");
  var label = document.getElementById("layer-label");
  var cache = {};

  // int16 codes in base64 -> rows of numbers, null for NaN (posctx.interactive._q16).
  function decodeQ16(spec) {
    var bytes = atob(spec.q16);
    var view = new DataView(new ArrayBuffer(bytes.length));
    for (var b = 0; b < bytes.length; b++) view.setUint8(b, bytes.charCodeAt(b));
    var rows = [], cols = spec.shape[1];
    for (var r = 0; r < spec.shape[0]; r++) {
      var row = new Array(cols);
      for (var c = 0; c < cols; c++) {
        var code = view.getInt16(2 * (r * cols + c), true);
        row[c] = code === -32768 ? null : code / spec.scale;
      }
      rows.push(row);
    }
    return rows;
  }
  function decodeAll(patch) {
    var out = {};
    for (var path in patch) {
      var v = patch[path];
      out[path] = v !== null && typeof v === "object" && !Array.isArray(v) && "q16" in v ? decodeQ16(v) : v;
    }
    return out;
  }
  function patchAt(id, i) {
    var key = id + "/" + i;
    if (!(key in cache)) {
      var patch = payload.figures[id].layers[i];
      cache[key] = {data: patch.data.map(decodeAll), layout: decodeAll(patch.layout)};
    }
    return cache[key];
  }
  function setPath(target, path, value) {
    var keys = path.split(".");
    for (var k = 0; k < keys.length - 1; k++) {
      if (target[keys[k]] === null || typeof target[keys[k]] !== "object") target[keys[k]] = {};
      target = target[keys[k]];
    }
    target[keys[keys.length - 1]] = value;
  }
  function figureAt(id, i) {
    // A fresh copy every time: Plotly.react finds what changed by comparing references.
    var fig = JSON.parse(JSON.stringify(payload.figures[id].base));
    var patch = patchAt(id, i);
    patch.data.forEach(function (p, k) { for (var path in p) setPath(fig.data[k], path, p[path]); });
    for (var path in patch.layout) setPath(fig.layout, path, patch.layout[path]);
    return fig;
  }
  function show(i) {
    label.textContent = payload.layers[i];
    document.body.dataset.layer = String(i);
    var drawn = Object.keys(payload.figures).map(function (id) {
      var fig = figureAt(id, i);
      return Plotly.react(id, fig.data, fig.layout, payload.config);
    });
    Promise.all(drawn).then(function () {
      if (slider.value === String(i)) document.body.dataset.drawn = String(i);
    });
  }
  slider.addEventListener("input", function () { show(Number(slider.value)); });
  show(Number(slider.value));
})();
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1500px; padding: 0 1em 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin: 1.2em 0 0.2em; }
.controls { position: sticky; top: 0; z-index: 10; background: #fff; padding: 0.6em 0;
  border-bottom: 1px solid #ddd; display: flex; gap: 1em; align-items: center; }
.controls input { width: min(40em, 60vw); }
#layer-label { font-weight: 600; font-variant-numeric: tabular-nums; }
.pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 1em; }
.note { color: #555; font-size: 0.9em; max-width: 60em; margin: 0.2em 0; }
"""

#: The plots in page order: (div id, heading, what to look for); pairs share a row.
_SECTIONS: tuple[tuple[tuple[str, str, str], ...], ...] = (
    (
        (
            "pos-curve",
            "The positional curve (3-d)",
            "pos in its top three principal components, one point per position, coloured by "
            "position: a smooth curve, often a spiral. Drag to turn it.",
        ),
        (
            "ctx-pcs",
            "ctx by topic",
            "ctx in its top two principal components, one colour per topic: topics form "
            "clusters. Click a topic in the legend to hide it.",
        ),
    ),
    (
        (
            "gram-posctx",
            "Gram matrix of [pos; ctx]",
            "Cosines between normalised pos rows (top left), ctx rows grouped by topic (bottom "
            "right) and across (off-diagonal blocks: near zero when pos and ctx are nearly "
            "orthogonal).",
        ),
        (
            "gram-freq",
            "pos Gram matrix in frequency",
            "The cosine Gram matrix of pos in the DCT-II basis, log10 of |coefficient|: "
            "energy in the top-left corner means pos is smooth in position.",
        ),
    ),
    (
        (
            "metric-lines",
            "Measurements across layers",
            "Each measurement over the layers; the dotted line marks the layer shown above.",
        ),
    ),
    (
        (
            "convergence",
            "Convergence",
            "Each measurement of the layer shown, computed on the first n contexts.",
        ),
    ),
)


def _sections(figure_ids: Sequence[str]) -> str:
    out = []
    for row in _SECTIONS:
        cells = [
            f'<section><h2>{html.escape(heading)}</h2><p class="note">{html.escape(note)}</p>'
            f'<div id="{div}" class="plot"></div></section>'
            for div, heading, note in row
            if div in figure_ids
        ]
        if cells:
            out.append(f'<div class="pair">{"".join(cells)}</div>' if len(cells) > 1 else cells[0])
    return "\n".join(out)


def _script_json(payload: Mapping[str, Any]) -> str:
    """Strict JSON (NaN refused) that cannot end its ``<script>`` element early."""
    text = json.dumps(payload, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def interactive_page(
    inputs: xr.Dataset,
    metrics: xr.Dataset,
    *,
    uncertainty: xr.Dataset | None = None,
    tokens: Sequence[str] | None = None,
    title: str = "posctx geometry report",
    extra_html: str = "",
) -> str:
    """One self-contained interactive HTML page of the geometry, with one layer slider.

    The page needs no network: plotly.js is inline, and nothing else is loaded. One range
    input (``#layer-slider``) picks the layer; its ``input`` event redraws the
    layer-dependent plots from data embedded in the page.

    Parameters
    ----------
    inputs
        The output of :func:`posctx.geometry.collect_inputs` (``pos``, ``ctx``, ``topic``).
    metrics
        The output of :func:`posctx.geometry.measure_geometry` for the same layers.
    uncertainty
        Optional intervals and convergence paths of the measurements: dims ``metric``,
        ``layer``, ``bound`` (``"lo"``, ``"hi"``) and ``sample``; variables ``interval``
        (metric, layer, bound) drawn as shaded bands, ``path`` (metric, layer, sample) with
        coordinate ``n_contexts`` (sample) drawn in ``#convergence``, ``needed`` (metric,
        layer); attrs ``posctx_uncertainty``, a JSON record with ``level``. Missing
        variables or measurements are left out of the plots.
    tokens
        One example token per position of ``inputs``, shown in the hover text.
    title
        The page's title and heading.
    extra_html
        HTML placed after the plots (tables, provenance), as given.

    Returns
    -------
    str
        The page. :func:`page_data` reads its embedded data back.

    Raises
    ------
    PosctxError
        If ``tokens`` does not have one entry per position.

    Examples
    --------
    >>> import posctx
    >>> from posctx.geometry import collect_inputs, measure_geometry
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(30, 12, 3, 6)
    >>> inputs = collect_inputs(posctx.decompose(ds))
    >>> page = interactive_page(inputs, measure_geometry(inputs), tokens=list("abcdefghijkl"))
    >>> page.count('type="range"'), 'max="2"' in page
    (1, True)
    >>> data = page_data(page)
    >>> data["layers"]
    ['layer 0 · embeddings', 'layer 1 · block_1', 'layer 2 · block_2']
    >>> len(data["figures"]["pos-curve"]["layers"][2]["data"][0]["x"])  # one per position
    12
    """
    from plotly.offline import get_plotlyjs  # type: ignore[import-untyped]

    if tokens is not None and len(tokens) != inputs.sizes[POSITION]:
        raise PosctxError(
            f"tokens needs one entry per position ({inputs.sizes[POSITION]}), got {len(tokens)}"
        )
    figures = {
        "pos-curve": _pos_curve(inputs, tokens),
        "ctx-pcs": _ctx_pcs(inputs),
        "gram-posctx": _gram_posctx(inputs, tokens),
        "gram-freq": _gram_freq(inputs),
        "metric-lines": _metric_lines(metrics, uncertainty),
    }
    convergence = _convergence(metrics, uncertainty)
    if convergence is not None:
        figures["convergence"] = convergence
    labels = layer_labels(inputs)
    payload = {"layers": labels, "config": _PLOTLY_CONFIG, "figures": figures}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{_STYLE}</style>
<script>window.PlotlyConfig = {{MathJaxConfig: "local"}};</script>
<script>{get_plotlyjs()}</script>
</head>
<body>
<h1>{html.escape(title)}</h1>
<div class="controls">
<label for="layer-slider">layer</label>
<input type="range" id="layer-slider" min="0" max="{len(labels) - 1}" step="1" value="0">
<output id="layer-label" for="layer-slider">{html.escape(labels[0])}</output>
</div>
{_sections(list(figures))}
{extra_html}
<script type="application/json" id="{_DATA_ID}">{_script_json(payload)}</script>
<script>{_SCRIPT}</script>
</body></html>
"""


def page_data(page: str) -> dict[str, Any]:
    """The data embedded in a page from :func:`interactive_page`: layer labels and figures.

    ``figures`` maps each plot's div id to ``{"base": figure, "layers": [patch, ...]}``; a
    patch holds, per trace and for the layout, values by dotted property path (see
    :func:`figure_at_layer`).

    Raises
    ------
    PosctxError
        If the page holds no such data.

    Examples
    --------
    >>> page_data('<script type="application/json" id="posctx-data">{"layers": []}</script>')
    {'layers': []}
    """
    found = re.search(
        rf'<script type="application/json" id="{_DATA_ID}">(.*?)</script>', page, re.DOTALL
    )
    if found is None:
        raise PosctxError("not a page from posctx.interactive.interactive_page: no data")

    def refuse(constant: str) -> Any:
        raise PosctxError(f"the page's data holds {constant}, which is not JSON")

    data: dict[str, Any] = json.loads(found.group(1), parse_constant=refuse)
    return data


def _set_path(target: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    target[last] = value


def _decoded(value: Any) -> Any:
    return _decode_q16(value) if isinstance(value, Mapping) and "q16" in value else value


def figure_at_layer(data: Mapping[str, Any], figure_id: str, index: int) -> dict[str, Any]:
    """The figure ``figure_id`` as the page draws it at layer ``index`` (the script's twin).

    The figure's base with the layer's patch applied and its matrices decoded: a plain dict
    that ``plotly.graph_objects.Figure`` accepts.

    Examples
    --------
    >>> import posctx
    >>> from posctx.geometry import collect_inputs, measure_geometry
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(30, 12, 2, 6)
    >>> inputs = collect_inputs(posctx.decompose(ds))
    >>> data = page_data(interactive_page(inputs, measure_geometry(inputs)))
    >>> fig = figure_at_layer(data, "gram-posctx", 1)
    >>> len(fig["data"][0]["z"]), fig["data"][0]["z"][0][0]  # 12 positions + 30 contexts
    (42, 1.0)
    """
    spec = data["figures"][figure_id]
    figure: dict[str, Any] = copy.deepcopy(spec["base"])
    patch = spec["layers"][index]
    # A patch may stop before the last traces (those no layer changes).
    for trace, changes in zip(figure["data"], patch["data"], strict=False):
        for path, value in changes.items():
            _set_path(trace, path, _decoded(value))
    for path, value in patch["layout"].items():
        _set_path(figure["layout"], path, _decoded(value))
    return figure


__all__ = [
    "CURVE_POSITIONS",
    "GRAM_CONTEXTS",
    "GRAM_POSITIONS",
    "PANELS",
    "SCATTER_CONTEXTS",
    "SIGNIFICANT_DIGITS",
    "figure_at_layer",
    "interactive_page",
    "layer_labels",
    "page_data",
]
