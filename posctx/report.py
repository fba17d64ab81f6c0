"""The geometry report: an interactive HTML page plus the measurements as JSON and CSV.

:func:`write_report` runs the whole chain on a decomposition: one dask pass
(:func:`posctx.geometry.collect_inputs`), the measurements
(:func:`posctx.geometry.measure_geometry`), their bootstrap intervals and convergence
(:func:`posctx.geometry.uncertainty.measure_uncertainty`), then writes::

    DIR/index.html      the interactive page (plotly, embedded: opens offline), tables,
                        intervals, contexts needed, the store's provenance
    DIR/metrics.json    every measurement per layer, its interval, the contexts it needed,
                        the settings and the provenance
    DIR/metrics.csv     the per-layer scalar measurements with NAME_lo, NAME_hi, NAME_needed
    DIR/static.html     with static=True: the page of PNG figures
    DIR/figures/*       with static=True: the figures as PNG, SVG and PDF

Examples
--------
>>> import posctx, tempfile
>>> from posctx.testing import planted_hidden
>>> ds, _ = planted_hidden(24, 10, 2, 6)
>>> result = write_report(posctx.decompose(ds), tempfile.mkdtemp(), hidden=ds, intervals=None,
...                       progress=False)
>>> result.index.name, result.figures, result.uncertainty is None
('index.html', (), True)
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from posctx._version import version as _posctx_version
from posctx.errors import PosctxError
from posctx.geometry import (
    GeometryParams,
    collect_inputs,
    geometry_record,
    measure_geometry,
    metrics_table,
    metrics_to_dict,
    provenance,
)
from posctx.geometry.kernels import finite_or_none
from posctx.geometry.uncertainty import (
    IntervalParams,
    measure_uncertainty,
    uncertainty_record,
    uncertainty_to_dict,
)
from posctx.types import (
    CONTEXT,
    LAYER,
    LAYER_NAME,
    METRIC,
    POSITION,
    PROVENANCE_ATTR,
    TOKEN_ID,
    PathLike,
)

#: The paper's reported values (Song & Zhong 2023, Table 1), shown beside the measurements.
PAPER_VALUES = (
    (
        "BERT-base",
        "9.2 at the embedding layer, falling to about 2",
        "0.33-0.36 falling to 0.12-0.17",
        "0.26-0.31",
        "0.12-0.17",
    ),
    ("GPT-2", "about 2 at every layer", "0.76-0.82 falling to about 0.1", "0.41-0.44", "0.10-0.28"),
)

#: The report's default intervals: 95%, 200 resamples, with the convergence path.
DEFAULT_INTERVALS = IntervalParams()

#: Columns of the headline table: (variable, header, format).
HEADLINE = (
    ("pos_stable_rank", "pos stable rank", "{:.2f}"),
    ("pos_screenot_rank", "ScreeNOT rank", "{:d}"),
    ("pos_screenot_share", "its share of sum s", "{:.2f}"),
    ("relative_norm", "relative norm", "{:.3f}"),
    ("share_pos", "pos share", "{:.3f}"),
    ("share_ctx", "ctx share", "{:.3f}"),
    ("share_resid", "resid share", "{:.3f}"),
    ("smooth_low_share", "low-freq share", "{:.2f}"),
    ("smooth_low_share_shuffled", "shuffled", "{:.2f}"),
    ("spiral_turns", "turns", "{:.2f}"),
    ("ctx_within", "within", "{:.3f}"),
    ("ctx_between", "between", "{:.3f}"),
    ("ctx_ari", "k-means ARI", "{:.2f}"),
    ("orth_max_cos", "pos-ctx max |cos|", "{:.3f}"),
    ("orth_max_cos_random", "random", "{:.3f}"),
)

#: Marks the page as fully rendered once every image has decoded (read by the browser test).
_RENDER_CHECK = """
<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var decoded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; });
  var root = document.documentElement;
  root.setAttribute("data-images", images.length + "/" + decoded.length);
  root.setAttribute("data-rendered", decoded.length === images.length ? "complete" : "broken");
});
</script>
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1500px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: right; }
th { background: #f4f4f4; } td.name, th.name { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; max-width: 60em; }
pre { background: #f8f8f8; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
.note { color: #555; font-size: 0.9em; max-width: 60em; }
"""


@dataclasses.dataclass(frozen=True, eq=False)
class ReportResult:
    """What :func:`write_report` wrote, and the measurements it wrote them from."""

    directory: Path
    index: Path
    metrics_json: Path
    metrics_csv: Path
    figures: tuple[Path, ...]
    metrics: xr.Dataset
    seconds: float
    uncertainty: xr.Dataset | None = None
    static: Path | None = None


def _fmt(value: Any, spec: str = "{:.3g}") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            return "n/a"
        if spec.endswith("d}"):
            return spec.format(int(value))
    if isinstance(value, (int, np.integer)) and not spec.endswith("d}"):
        return str(int(value))
    return spec.format(value)


def format_metrics_table(metrics: xr.Dataset, uncertainty: xr.Dataset | None = None) -> str:
    """The headline measurements as a fixed-width text table (for a terminal).

    With ``uncertainty``, a second table gives the intervals of the main ones and the
    contexts each measurement needed (the most over layers).

    Examples
    --------
    >>> import posctx
    >>> from posctx.geometry import measure_geometry
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(24, 10, 2, 6)
    >>> print(format_metrics_table(measure_geometry(posctx.decompose(ds))).splitlines()[0])
    layer name         srank  screeNOT  rel.norm  pos%   ctx%   within  between  max|cos|  random  smooth  shuffled
    """
    header = (
        f"{'layer':<5} {'name':<12} {'srank':>5}  {'screeNOT':>8}  {'rel.norm':>8}  {'pos%':<5}  "
        f"{'ctx%':<5}  {'within':>6}  {'between':>7}  {'max|cos|':>8}  {'random':>6}  "
        f"{'smooth':>6}  {'shuffled':>8}"
    )
    names = metrics[LAYER_NAME].values if LAYER_NAME in metrics.coords else metrics[LAYER].values
    lines = [header]
    for i, layer in enumerate(metrics[LAYER].values):
        v = {
            name: metrics[name].values[i]
            for name in metrics.data_vars
            if metrics[name].dims == (LAYER,)
        }
        lines.append(
            f"{int(layer):<5} {str(names[i]):<12} {_fmt(v['pos_stable_rank'], '{:.2f}'):>5}  "
            f"{_fmt(v['pos_screenot_rank'], '{:d}'):>8}  {_fmt(v['relative_norm'], '{:.3f}'):>8}  "
            f"{_fmt(100 * v['share_pos'], '{:.1f}'):<5}  {_fmt(100 * v['share_ctx'], '{:.1f}'):<5}  "
            f"{_fmt(v['ctx_within'], '{:.3f}'):>6}  {_fmt(v['ctx_between'], '{:.3f}'):>7}  "
            f"{_fmt(v['orth_max_cos'], '{:.3f}'):>8}  {_fmt(v['orth_max_cos_random'], '{:.3f}'):>6}  "
            f"{_fmt(v['smooth_low_share'], '{:.2f}'):>6}  {_fmt(v['smooth_low_share_shuffled'], '{:.2f}'):>8}"
        )
    if uncertainty is not None:
        lines += ["", *_interval_lines(metrics, uncertainty)]
    return "\n".join(lines)


#: The measurements of the terminal's interval table: (variable, header, format).
INTERVAL_COLUMNS = (
    ("pos_stable_rank", "srank", "{:.2f}"),
    ("share_pos", "pos share", "{:.3f}"),
    ("share_ctx", "ctx share", "{:.3f}"),
    ("ctx_within", "within", "{:.3f}"),
    ("ctx_between", "between", "{:.3f}"),
    ("orth_max_cos", "max|cos|", "{:.3f}"),
    ("smooth_low_share", "smooth", "{:.3f}"),
)


def _interval_lines(metrics: xr.Dataset, uncertainty: xr.Dataset) -> list[str]:
    record = uncertainty_record(uncertainty)
    names = metrics[LAYER_NAME].values if LAYER_NAME in metrics.coords else metrics[LAYER].values
    lines = [
        f"{100 * record['level']:.0f}% intervals ({record['interval']} bootstrap, "
        f"{record['resamples']} resamples):",
        f"{'layer':<5} {'name':<12} "
        + "  ".join(f"{header:<21}" for _, header, _ in INTERVAL_COLUMNS),
    ]
    for i, layer in enumerate(metrics[LAYER].values):
        cells = [
            _with_interval(metrics, uncertainty, name, i, spec)
            for name, _, spec in INTERVAL_COLUMNS
        ]
        lines.append(f"{int(layer):<5} {str(names[i]):<12} " + "  ".join(f"{c:<21}" for c in cells))
    n_all = int(record["n_contexts"])
    needed = [
        f"{name} {_needed_text(float(np.nanmax(v)), n_all)}"
        for name, v in (
            (n, uncertainty["needed"].sel({METRIC: n}).values)
            for n in uncertainty[METRIC].values.tolist()
        )
        if np.isfinite(v).any()
    ]
    if needed:
        lines.append(
            f"contexts needed to settle within {100 * record['tolerance']:.0f}% "
            "(0.01 for similarities), most over layers: " + "; ".join(needed)
        )
    return lines


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], name_columns: int = 1) -> str:
    def cell(tag: str, text: str, j: int) -> str:
        cls = ' class="name"' if j < name_columns else ""
        return f"<{tag}{cls}>{html.escape(text)}</{tag}>"

    head = "".join(cell("th", h, j) for j, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", c, j) for j, c in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _layer_labels(metrics: xr.Dataset) -> list[str]:
    names = metrics[LAYER_NAME].values if LAYER_NAME in metrics.coords else metrics[LAYER].values
    return [
        f"{int(layer)} {name}" for layer, name in zip(metrics[LAYER].values, names, strict=True)
    ]


def _with_interval(
    metrics: xr.Dataset, uncertainty: xr.Dataset | None, name: str, i: int, spec: str
) -> str:
    text = _fmt(metrics[name].values[i], spec)
    if uncertainty is None or name not in uncertainty[METRIC].values:
        return text
    lo, hi = uncertainty["interval"].sel({METRIC: name}).values[i]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return text
    spec = "{:.3g}" if spec.endswith("d}") else spec
    return f"{text} [{_fmt(lo, spec)}, {_fmt(hi, spec)}]"


def _headline_table(metrics: xr.Dataset, uncertainty: xr.Dataset | None = None) -> str:
    rows = []
    for i, label in enumerate(_layer_labels(metrics)):
        rows.append(
            [label]
            + [_with_interval(metrics, uncertainty, name, i, spec) for name, _, spec in HEADLINE]
        )
    return _table(["layer"] + [header for _, header, _ in HEADLINE], rows)


def _needed_text(value: float, n_all: int) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"not before {n_all:,}" if value >= n_all else f"{int(value):,}"


def uncertainty_section(uncertainty: xr.Dataset) -> str:
    """How sure the numbers are: method, contexts needed per measurement, what was not
    resampled (HTML)."""
    record = uncertainty_record(uncertainty)
    n = uncertainty["n_contexts"].values
    n_all = int(record["n_contexts"])
    rows = []
    for name in uncertainty[METRIC].values.tolist():
        needed = uncertainty["needed"].sel({METRIC: name}).values
        if not np.isfinite(needed).any():
            continue
        worst = float(np.nanmax(needed))
        rows.append(
            [str(name), _needed_text(worst, n_all)] + [_needed_text(v, n_all) for v in needed]
        )
    skipped = {**record["not_resampled"], **record["partial"]}
    notes = "".join(
        f"<li><code>{html.escape(k)}</code>: {html.escape(v)}</li>" for k, v in skipped.items()
    )
    path = (
        f"Convergence: each measurement from the contexts of the first 1, 2, 4, ... runs "
        f"({', '.join(str(int(v)) for v in n)} contexts); contexts needed = fewest from which "
        f"every later estimate stays within {100 * record['tolerance']:.0f}% of the final one "
        "(0.01 for similarities and clustering scores)."
        if n.size
        else "No convergence path (--no-convergence)."
    )
    return f"""<h2>How sure: intervals and contexts needed</h2>
<p class="note">Intervals: {100 * record["level"]:.0f}% {html.escape(record["method"])},
{record["resamples"]} resamples (seed {record["seed"]}); cells:
{html.escape(json.dumps(record.get("cells"), sort_keys=True))}. {html.escape(path)}</p>
{_table(["measurement", "all layers"] + _layer_labels(uncertainty), rows)}
<ul class="note">{notes}</ul>
"""


def _full_table(metrics: xr.Dataset) -> str:
    table = metrics_table(metrics)
    rows = []
    for name in table.columns:
        if name == LAYER_NAME:
            continue
        description = str(metrics[name].attrs.get("description", ""))
        rows.append([str(name), description] + [_fmt(v) for v in table[name].values])
    return _table(["measurement", "meaning"] + _layer_labels(metrics), rows, name_columns=2)


def _provenance_section(record: Mapping[str, Any]) -> str:
    store = record.get("store", {})
    model = store.get("model", {}) if isinstance(store, Mapping) else {}
    config = store.get("config", {}) if isinstance(store, Mapping) else {}
    corpus = config.get("corpus", {}) if isinstance(config, Mapping) else {}
    decomposition = record.get("decomposition") or {}
    facts = [
        ("model", f"{model.get('hf_id', 'n/a')} ({model.get('architecture', 'n/a')})"),
        ("weights", str(model.get("weights_hash", "n/a"))),
        ("corpus", f"{corpus.get('spec', 'n/a')} (seed {corpus.get('seed', 'n/a')})"),
        ("store", str(decomposition.get("source_store", "n/a"))),
        ("positions", str(decomposition.get("positions", "n/a"))),
        ("contexts", str(decomposition.get("n_contexts", "n/a"))),
        ("created", str(store.get("created", "n/a")) if isinstance(store, Mapping) else "n/a"),
    ]
    full = html.escape(json.dumps(record, indent=2, sort_keys=True, default=str))
    return (
        _table(["", ""], [[k, v] for k, v in facts], name_columns=2)
        + f"<details><summary>full provenance record</summary><pre>{full}</pre></details>"
    )


def render_html(
    metrics: xr.Dataset,
    figures: Mapping[str, tuple[str, str, bytes]],
    record: Mapping[str, Any],
    uncertainty: xr.Dataset | None = None,
) -> str:
    """The report page: headline table, the paper's values, figures, all measurements, provenance.

    ``figures`` maps a name to ``(title, caption, png bytes)``; each PNG is embedded as a
    ``data:`` URI, so the page needs no other file. A script marks ``<html>`` with
    ``data-rendered="complete"`` once every image has decoded.

    Examples
    --------
    >>> import posctx
    >>> from posctx.geometry import measure_geometry, provenance
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(24, 10, 2, 6)
    >>> dec = posctx.decompose(ds)
    >>> page = render_html(measure_geometry(dec), {}, provenance(dec))
    >>> page.startswith("<!DOCTYPE html>"), "data-rendered" in page
    (True, True)
    """
    figure_html = "".join(
        f'<figure id="fig-{html.escape(name)}"><h3>{html.escape(title)}</h3>'
        f'<img alt="{html.escape(title)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, (title, caption, png) in figures.items()
    )
    top, bottom = _sections(metrics, record, uncertainty)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>posctx report: geometry of position and context</title>
<style>{_STYLE}</style></head>
<body>
<h1>Geometry of position and context</h1>
{top}
<h2>Figures</h2>
{figure_html}
{bottom}
{_RENDER_CHECK}
</body></html>
"""


def _sections(
    metrics: xr.Dataset, record: Mapping[str, Any], uncertainty: xr.Dataset | None
) -> tuple[str, str]:
    """The page's text above the figures (summary, per-layer table, intervals, the paper's
    values) and below them (all measurements, provenance)."""
    geometry = geometry_record(metrics)
    params = geometry["params"]
    relative = (
        "The relative norm needs the spectral norm of the hidden states: "
        + (
            "computed from the hidden states (their second moment from a moments=True decomposition, or a read of the hidden-state store)."
            if geometry["relative_norm"] == "hidden store"
            else ""
        )
        + ("given by the caller." if geometry["relative_norm"] == "given" else "")
        + (
            "missing here (n/a): decompose with --moments, or run <code>posctx report ... --hidden HIDDEN_STORE</code>."
            if geometry["relative_norm"].startswith("missing")
            else ""
        )
    )
    paper_rows = [list(row) for row in PAPER_VALUES]
    intervals = (
        ""
        if uncertainty is None
        else f"Brackets: {100 * uncertainty_record(uncertainty)['level']:.0f}% bootstrap "
        "intervals over contexts (below)."
    )
    top = f"""<p class="note">h[c, t] = mu + pos[t] + ctx[c] + resid[c, t], per layer, over
{geometry["n_contexts"]} contexts x {geometry["n_positions"]} positions ({geometry["n_dims"]} dims);
topics: {html.escape(", ".join(geometry["topics"]))}. Pairwise measures use
{geometry["n_sampled_contexts"]} contexts. Settings: {html.escape(json.dumps(params, sort_keys=True))}.
Made by posctx {html.escape(_posctx_version())}.</p>

<h2>Per layer</h2>
{_headline_table(metrics, uncertainty)}
<p class="note">{intervals} Stable rank = sum s<sup>2</sup> / s<sub>1</sub><sup>2</sup> of pos; ScreeNOT rank:
the optimal hard threshold of Donoho, Gavish &amp; Romanov. Low-frequency share: energy of the
pos Gram matrix in its lowest {params["n_low_frequencies"]} x {params["n_low_frequencies"]}
DCT-II frequencies (shuffled: positions randomly permuted). Within/between: mean |cos| of ctx pairs
of the same / different topics. Max |cos| between pos and ctx vectors vs the pos set randomly
rotated. {relative}</p>
{"" if uncertainty is None else uncertainty_section(uncertainty)}
<h2>The paper's values (Song &amp; Zhong 2023, Table 1)</h2>
{_table(["model", "pos stable rank", "relative norm", "within", "between"], paper_rows, name_columns=1)}
"""
    bottom = f"""<h2>All measurements</h2>
{_full_table(metrics)}

<h2>Provenance</h2>
{_provenance_section(record)}
"""
    return top, bottom


def report_stores(
    decomposition: PathLike,
    out: PathLike,
    *,
    hidden: PathLike | None = None,
    params: GeometryParams | None = None,
    intervals: IntervalParams | None = DEFAULT_INTERVALS,
    static: bool = False,
    progress: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> ReportResult:
    """The ``posctx report`` command: a decomposition store (and its hidden store) to a report.

    With ``hidden``, the 3D curve's hover shows the tokens of the first context
    (:func:`example_tokens`).

    With ``hidden``, the relative norm and the residual spectrum need the hidden states'
    second moment: from the decomposition itself when it was made with moments, else from the
    statistics the hidden store kept during extraction when they serve
    (:func:`~posctx.decomposition.stores.moments_from_statistics`), and only else from one
    read of the hidden states.
    """
    from posctx.decomposition import open_decomposition
    from posctx.decomposition.stores import moments_from_statistics
    from posctx.store import open_hidden

    dec = open_decomposition(decomposition, storage_options=storage_options)
    hidden_ds, tokens = None, None
    if hidden is not None and "m2_hidden" not in dec:
        m2 = moments_from_statistics(hidden, dec, storage_options=storage_options)
        if m2 is not None:
            dec = dec.assign(m2_hidden=m2.drop_vars(list(m2.coords)))
        else:
            hidden_ds = open_hidden(os.fspath(hidden), storage_options=storage_options)
    if hidden is not None:
        # After the store was checked above (a missing or damaged store: one line).
        tokens = example_tokens(hidden, dec, storage_options=storage_options)
    return write_report(
        dec,
        out,
        hidden=hidden_ds,
        params=params,
        intervals=intervals,
        static=static,
        tokens=tokens,
        progress=progress,
    )


def example_tokens(
    hidden: xr.Dataset | PathLike,
    dec: xr.Dataset,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> list[str] | None:
    """The first context's tokens at the decomposition's positions, for the 3D curve's hover.

    Decoded with the tokenizer of the store's model where it loads offline (a local folder,
    the bundled MiniLM, or a cached hub model); else None, and the hover shows positions only.
    Reads one context's token ids (computes). ``hidden``: the store or its path.
    """
    if isinstance(hidden, xr.Dataset):
        store = hidden
    else:
        from posctx.store.provenance import read_provenance
        from posctx.store.reading import open_labelled

        path = os.fspath(hidden)
        if read_provenance(path, storage_options) is None:
            raise PosctxError(
                f"no posctx store at {path}: pass the hidden-state store (--hidden) the "
                "decomposition was made from"
            )
        # Token ids only: no check of the hidden states' chunks (a report may be made from
        # a store whose hidden states are gone, with the statistics kept).
        store = open_labelled(path, storage_options=storage_options)
    if TOKEN_ID not in store.data_vars:
        return None
    first = store[TOKEN_ID].isel({CONTEXT: 0}).sel({POSITION: dec[POSITION].values})
    ids = [int(i) for i in np.asarray(first.values)]
    record = store.attrs.get(PROVENANCE_ATTR, {})
    name = (
        record.get("config", {}).get("model", {}).get("name") if isinstance(record, dict) else None
    )
    if not name:
        return None
    from posctx.errors import ModelError
    from posctx.model.resolve import resolve_model

    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(resolve_model(str(name)))
    except (ModelError, OSError, ValueError):  # not available offline: positions only
        return None
    return [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]


def write_report(
    dec: xr.Dataset,
    out: PathLike,
    *,
    hidden: xr.Dataset | None = None,
    hidden_spectral_norm: xr.DataArray | Sequence[float] | None = None,
    params: GeometryParams | None = None,
    intervals: IntervalParams | None = DEFAULT_INTERVALS,
    static: bool = False,
    tokens: Sequence[str] | None = None,
    progress: bool = True,
) -> ReportResult:
    """Measure the geometry of a decomposition and write the report to the folder ``out``.

    ``index.html`` is the interactive page (:func:`posctx.interactive.interactive_page`:
    plotly, embedded, works offline). With ``static``, also the figures as PNG, SVG and
    PDF in ``figures/`` and the page of PNGs ``static.html``.

    Computes (this is its job): one dask pass over ``dec`` (and ``hidden``), then the
    measurements and figures in memory. Files already in ``out`` with the report's names
    are replaced; others are left alone.

    Parameters
    ----------
    dec
        A decomposition (:func:`posctx.open_decomposition` or :func:`posctx.decompose`).
    out
        Folder to write into (created if needed).
    hidden
        Optional hidden-state store ``dec`` was made from: adds the relative norm and the
        residual spectrum at the cost of one read of the store.
    hidden_spectral_norm
        Optional spectral norm of the hidden states per layer, if known (see
        :func:`posctx.geometry.measure_geometry`).
    params
        Measurement settings.
    intervals
        Bootstrap intervals and convergence (:class:`~posctx.geometry.uncertainty.IntervalParams`);
        ``None`` for none. With cells in ``dec`` (``decompose(..., runs=N)``) every
        measurement is resampled, else those of ctx alone.
    static
        Also write the static figures and page.
    tokens
        An example token per position, shown on the 3D curve's hover.
    progress
        Show progress bars (the dask pass, the layers, the figures).

    Returns
    -------
    ReportResult
    """
    start = time.perf_counter()
    directory = Path(os.fspath(out))
    try:
        # figures/ only when there are figure files to put there (--static).
        (directory / "figures" if static else directory).mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # --out is a file, or lies below one, or is read-only
        raise PosctxError(
            f"cannot write the report to {directory} ({exc.strerror or exc}): choose another "
            "--out folder"
        ) from exc
    params = params or GeometryParams()
    inputs = collect_inputs(dec, hidden=hidden, params=params, progress=progress)
    metrics = measure_geometry(
        inputs, hidden_spectral_norm=hidden_spectral_norm, params=params, progress=progress
    )
    record = provenance(dec)
    uncertainty = (
        None
        if intervals is None
        else measure_uncertainty(
            inputs, metrics, params=params, intervals=intervals, progress=progress
        )
    )
    paths: list[Path] = []
    static_page = None
    if static:
        paths, static_page = _write_static(
            directory, inputs, metrics, record, uncertainty, progress
        )

    metrics_json = directory / "metrics.json"
    payload = {"provenance": finite_or_none(record), **metrics_to_dict(metrics)}
    if uncertainty is not None:
        payload["uncertainty"] = uncertainty_to_dict(uncertainty)
    metrics_json.write_text(
        json.dumps(payload, indent=1, sort_keys=False, allow_nan=False, default=str)
    )
    metrics_csv = directory / "metrics.csv"
    table = metrics_table(metrics)
    if uncertainty is not None:
        table = _with_interval_columns(table, uncertainty)
    table.to_csv(metrics_csv)
    index = directory / "index.html"
    top, bottom = _sections(metrics, record, uncertainty)
    from posctx.interactive import interactive_page

    page = interactive_page(
        inputs,
        metrics,
        uncertainty=uncertainty,
        tokens=tokens,
        title="posctx report: geometry of position and context",
        extra_html=top + bottom,
    )
    index.write_text(page, encoding="utf-8")
    return ReportResult(
        directory=directory,
        index=index,
        metrics_json=metrics_json,
        metrics_csv=metrics_csv,
        figures=tuple(paths),
        metrics=metrics,
        seconds=time.perf_counter() - start,
        uncertainty=uncertainty,
        static=static_page,
    )


def _with_interval_columns(table: Any, uncertainty: xr.Dataset) -> Any:
    """``name_lo``, ``name_hi`` and ``name_needed`` beside each measurement with an interval."""
    for name in uncertainty[METRIC].values.tolist():
        if name not in table.columns:
            continue
        one = uncertainty.sel({METRIC: name})
        at = table.columns.get_loc(name) + 1
        table.insert(at, f"{name}_lo", one["interval"].sel(bound="lo").values)
        table.insert(at + 1, f"{name}_hi", one["interval"].sel(bound="hi").values)
        table.insert(at + 2, f"{name}_needed", one["needed"].values)
    return table


#: Formats of the static figures: PNG for the page, SVG and PDF for papers.
STATIC_FORMATS = ("png", "svg", "pdf")


def _write_static(
    directory: Path,
    inputs: xr.Dataset,
    metrics: xr.Dataset,
    record: Mapping[str, Any],
    uncertainty: xr.Dataset | None,
    progress: bool,
) -> tuple[list[Path], Path]:
    """The figures as PNG, SVG and PDF files and the page of PNGs, ``static.html``."""
    from posctx.plots import FIGURES, png_bytes

    names: Any = list(FIGURES)
    if progress:
        from tqdm.std import tqdm

        names = tqdm(names, desc="report: figures", unit="figure")
    rendered: dict[str, tuple[str, str, bytes]] = {}
    paths = []
    for name in names:
        title, caption, draw = FIGURES[name]
        figure = draw(inputs, metrics)
        png = png_bytes(figure)
        path = directory / "figures" / f"{name}.png"
        path.write_bytes(png)
        paths.append(path)
        for fmt in STATIC_FORMATS[1:]:
            figure.savefig(directory / "figures" / f"{name}.{fmt}", format=fmt)
        rendered[name] = (title, caption, png)
    page = directory / "static.html"
    page.write_text(render_html(metrics, rendered, record, uncertainty), encoding="utf-8")
    return paths, page


__all__ = [
    "DEFAULT_INTERVALS",
    "PAPER_VALUES",
    "STATIC_FORMATS",
    "example_tokens",
    "uncertainty_section",
    "ReportResult",
    "format_metrics_table",
    "render_html",
    "report_stores",
    "write_report",
]
