"""Figures of the geometry of position and context (matplotlib, imported lazily).

Every function takes the in-memory inputs of :func:`posctx.geometry.collect_inputs` and/or
the measurements of :func:`posctx.geometry.measure_geometry`, computes nothing with dask, and
returns a :class:`matplotlib.figure.Figure`. Figures are drawn on matplotlib's Agg canvas
directly (no ``pyplot``), so making them never changes the user's backend, opens a window or
leaves figures in pyplot's registry. :func:`png_bytes` renders one to PNG.

Examples
--------
>>> import posctx
>>> from posctx.geometry import collect_inputs, measure_geometry
>>> from posctx.testing import planted_hidden
>>> ds, _ = planted_hidden(30, 12, 2, 6)
>>> inputs = collect_inputs(posctx.decompose(ds))
>>> fig = pos_curves_2d(inputs)
>>> png_bytes(fig)[:4]
b'\\x89PNG'
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt
import xarray as xr

from posctx._deprecated import moved_names
from posctx.geometry import kernels
from posctx.geometry.serialise import geometry_record
from posctx.types import COMPONENT, CONTEXT, LAYER, LAYER_NAME, POSITION, TOPIC

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from mpl_toolkits.mplot3d import Axes3D

#: Panels per row of the per-layer grids.
MAX_COLUMNS = 7
#: Contexts shown in the [pos; ctx] Gram heatmaps (grouped by topic).
GRAM_CONTEXTS = 96
#: Contexts drawn in the ctx scatter plots.
SCATTER_CONTEXTS = 1500


def style_panel(ax: Any, title: str, xlabel: str, ylabel: str | None = None) -> None:
    """The one style of every panel: small title, axis labels and ticks."""
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    if ylabel is not None:
        ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)


def _figure(
    n_panels: int, *, panel: float = 2.6, projection: str | None = None
) -> tuple[Figure, list[Axes]]:
    """A figure with a grid of ``n_panels`` axes (at most :data:`MAX_COLUMNS` per row)."""
    from matplotlib.figure import Figure

    cols = min(n_panels, MAX_COLUMNS)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(panel * cols, panel * rows + 0.5), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1, projection=projection) for i in range(n_panels)]
    return fig, axes


def _layer_titles(data: xr.Dataset) -> list[str]:
    layers = data[LAYER].values
    names = data[LAYER_NAME].values if LAYER_NAME in data.coords else layers
    return [f"{int(layer)}: {name}" for layer, name in zip(layers, names, strict=True)]


def _pos(inputs: xr.Dataset, i: int) -> npt.NDArray[np.float64]:
    return np.asarray(inputs["pos"].isel({LAYER: i}).values, dtype=np.float64)


def _ctx(inputs: xr.Dataset, i: int) -> npt.NDArray[np.float64]:
    return np.asarray(inputs["ctx"].isel({LAYER: i}).values, dtype=np.float64)


def _topics(inputs: xr.Dataset) -> npt.NDArray[Any]:
    if TOPIC in inputs.coords:
        return np.array([str(t) for t in inputs[TOPIC].values])  # StringDType from Zarr
    return np.full(inputs.sizes[CONTEXT], "all")


def pos_curves_2d(inputs: xr.Dataset) -> Figure:
    """Per layer, pos in its top two principal components, coloured by position.

    Examples
    --------
    >>> import posctx
    >>> from posctx.geometry import collect_inputs
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(20, 10, 3, 5)
    >>> len(pos_curves_2d(collect_inputs(posctx.decompose(ds))).axes)  # 3 panels, 1 colour bar
    4
    """
    positions = inputs[POSITION].values
    fig, axes = _figure(inputs.sizes[LAYER])
    for i, (ax, title) in enumerate(zip(axes, _layer_titles(inputs), strict=True)):
        z = kernels.pca_scores(_pos(inputs, i), 2)
        ax.plot(z[:, 0], z[:, 1], color="0.75", linewidth=0.8, zorder=1)
        points = ax.scatter(z[:, 0], z[:, 1], c=positions, cmap="viridis", s=9, zorder=2)
        style_panel(ax, title, "PC1", "PC2")
    fig.colorbar(points, ax=axes, label="position", shrink=0.8)
    fig.suptitle("pos in its top two principal components (coloured by position)", fontsize=11)
    return fig


def pos_curves_3d(inputs: xr.Dataset) -> Figure:
    """Per layer, pos in its top three principal components (a 3-d view), by position.

    Examples
    --------
    >>> import posctx
    >>> from posctx.geometry import collect_inputs
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(20, 10, 2, 5)
    >>> pos_curves_3d(collect_inputs(posctx.decompose(ds))).axes[0].name
    '3d'
    """
    positions = inputs[POSITION].values
    fig, axes = _figure(inputs.sizes[LAYER], panel=2.9, projection="3d")
    for i, (panel, title) in enumerate(zip(axes, _layer_titles(inputs), strict=True)):
        ax = cast("Axes3D", panel)
        z = kernels.pca_scores(_pos(inputs, i), 3)
        ax.plot(z[:, 0], z[:, 1], z[:, 2], color="0.7", linewidth=0.7)
        ax.scatter(z[:, 0], z[:, 1], z[:, 2], c=positions, cmap="viridis", s=6, depthshade=False)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=6)
        ax.view_init(elev=25, azim=-60)
    fig.suptitle(
        "pos in its top three principal components (3-d view, coloured by position)", fontsize=11
    )
    return fig


def _gram_context_order(topics: npt.NDArray[Any], n: int, seed: int) -> npt.NDArray[np.intp]:
    """Up to ``n`` context indices, as many from each topic as possible, grouped by topic."""
    rng = np.random.default_rng(seed)
    names = np.unique(topics)
    per_topic = max(1, n // len(names))
    picked = [
        np.sort(rng.permutation(np.flatnonzero(topics == name))[:per_topic]) for name in names
    ]
    order: npt.NDArray[np.intp] = np.concatenate(picked)[:n]
    return order


def gram_heatmaps(inputs: xr.Dataset, *, seed: int = 0) -> Figure:
    """Per layer, the Gram matrix of the normalised ``[pos; ctx]`` vectors.

    All positions, then up to :data:`GRAM_CONTEXTS` contexts grouped by topic. Near-zero
    off-diagonal parts mean pos and ctx are nearly orthogonal; bright squares on the ctx
    diagonal mean ctx clusters by topic.

    Examples
    --------
    >>> import posctx
    >>> from posctx.geometry import collect_inputs
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(20, 10, 2, 5)
    >>> len(gram_heatmaps(collect_inputs(posctx.decompose(ds))).axes)
    3
    """
    topics = _topics(inputs)
    order = _gram_context_order(topics, GRAM_CONTEXTS, seed)
    n_pos = inputs.sizes[POSITION]
    fig, axes = _figure(inputs.sizes[LAYER])
    for i, (ax, title) in enumerate(zip(axes, _layer_titles(inputs), strict=True)):
        both = kernels.normalise_rows(np.vstack([_pos(inputs, i), _ctx(inputs, i)[order]]))
        image = ax.imshow(both @ both.T, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.axhline(n_pos - 0.5, color="k", linewidth=0.6)
        ax.axvline(n_pos - 0.5, color="k", linewidth=0.6)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([n_pos / 2, n_pos + len(order) / 2], ["pos", "ctx"], fontsize=7)
        ax.set_yticks([n_pos / 2, n_pos + len(order) / 2], ["pos", "ctx"], fontsize=7)
    fig.colorbar(image, ax=axes, label="cosine", shrink=0.8)
    fig.suptitle(
        f"Gram matrix of normalised [pos; ctx] ({n_pos} positions, {len(order)} contexts grouped by topic)",
        fontsize=11,
    )
    return fig


def dct_heatmaps(inputs: xr.Dataset, *, n_frequencies: int = 32) -> Figure:
    """Per layer, ``|F^T G F|`` of the pos Gram matrix ``G`` in the DCT-II basis, log scale.

    The lowest ``n_frequencies`` of each axis are shown; a smooth pos puts its energy in the
    top-left corner.

    Examples
    --------
    >>> import posctx
    >>> from posctx.geometry import collect_inputs
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(20, 10, 2, 5)
    >>> len(dct_heatmaps(collect_inputs(posctx.decompose(ds))).axes)
    3
    """
    from matplotlib.colors import LogNorm

    fig, axes = _figure(inputs.sizes[LAYER])
    for i, (ax, title) in enumerate(zip(axes, _layer_titles(inputs), strict=True)):
        p = kernels.normalise_rows(_pos(inputs, i))
        spectrum = np.abs(kernels.dct_spectrum(p @ p.T))[:n_frequencies, :n_frequencies]
        top = float(spectrum.max()) if spectrum.size else 1.0
        image = ax.imshow(
            np.maximum(spectrum, top * 1e-4),
            cmap="magma",
            norm=LogNorm(vmin=top * 1e-4, vmax=top),
            interpolation="nearest",
        )
        style_panel(ax, title, "frequency", "frequency")
    fig.colorbar(image, ax=axes, label="|coefficient|", shrink=0.8)
    fig.suptitle("pos Gram matrix in the DCT-II basis (lowest frequencies, log scale)", fontsize=11)
    return fig


def spectra(metrics: xr.Dataset) -> Figure:
    """Per layer, singular values of pos, ctx and resid on a log scale, as ``CT x d`` parts.

    pos is scaled by ``sqrt(C)`` and ctx by ``sqrt(T)`` (each repeated over the other index),
    so that the squared values of each curve add up to ``ss_pos``, ``ss_ctx`` and
    ``ss_resid``: the three are on one scale. Values below 1e-6 of a panel's largest are
    left out (zero up to rounding). resid is drawn only when the measurements
    had the hidden-state store; the title says so otherwise.

    Examples
    --------
    >>> import posctx
    >>> from posctx.geometry import measure_geometry
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(20, 10, 2, 5)
    >>> fig = spectra(measure_geometry(posctx.decompose(ds)))
    >>> "without the hidden-state store" in fig.texts[0].get_text()
    True
    """
    record = geometry_record(metrics)
    c, t = record["n_contexts"], record["n_positions"]
    fig, axes = _figure(metrics.sizes[LAYER])
    k = np.arange(1, metrics.sizes[COMPONENT] + 1)
    parts = [
        ("pos", np.sqrt(c), "tab:blue"),
        ("ctx", np.sqrt(t), "tab:orange"),
        ("resid", 1.0, "tab:gray"),
    ]
    for i, (ax, title) in enumerate(zip(axes, _layer_titles(metrics), strict=True)):
        spectra_i = [
            np.asarray(metrics[f"{n}_sv"].isel({LAYER: i}).values) * sc for n, sc, _ in parts
        ]
        top = max((float(np.nanmax(v)) for v in spectra_i if np.isfinite(v).any()), default=0.0)
        for (name, _, colour), s in zip(parts, spectra_i, strict=True):
            # Values below 1e-6 of the largest are zeros up to rounding (rank limits and
            # spectra from Gram matrices); drawn, they would only stretch the axis.
            keep = np.isfinite(s) & (s > 1e-6 * top)
            if keep.any():
                ax.semilogy(k[keep], s[keep], color=colour, linewidth=1.2, label=name)
        style_panel(ax, title, "component")
    axes[0].legend(fontsize=7)
    note = (
        ""
        if record["resid_spectrum"]
        else " (resid omitted: measured without the hidden-state store)"
    )
    fig.suptitle(f"singular values of pos (x sqrt C), ctx (x sqrt T) and resid{note}", fontsize=11)
    return fig


def ctx_pcs(inputs: xr.Dataset, *, seed: int = 0) -> Figure:
    """Per layer, ctx in its top two principal components, coloured by topic.

    Examples
    --------
    >>> import posctx
    >>> from posctx.geometry import collect_inputs
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(20, 10, 2, 5)
    >>> len(ctx_pcs(collect_inputs(posctx.decompose(ds))).axes)
    2
    """
    topics = _topics(inputs)
    names = np.unique(topics)
    shown = kernels.sample_indices(topics.size, SCATTER_CONTEXTS, seed)
    fig, axes = _figure(inputs.sizes[LAYER])
    for i, (ax, title) in enumerate(zip(axes, _layer_titles(inputs), strict=True)):
        z = kernels.pca_scores(_ctx(inputs, i), 2)[shown]
        for j, name in enumerate(names):
            mask = topics[shown] == name
            ax.scatter(z[mask, 0], z[mask, 1], s=5, alpha=0.6, color=f"C{j % 10}", label=name)
        style_panel(ax, title, "PC1", "PC2")
    axes[0].legend(fontsize=7, markerscale=2)
    fig.suptitle("ctx in its top two principal components (coloured by topic)", fontsize=11)
    return fig


def layer_summary(metrics: xr.Dataset) -> Figure:
    """Across layers: variance shares, pos rank, within/between similarity, orthogonality.

    Examples
    --------
    >>> import posctx
    >>> from posctx.geometry import measure_geometry
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(20, 10, 2, 5)
    >>> len(layer_summary(measure_geometry(posctx.decompose(ds))).axes)
    4
    """
    from matplotlib.figure import Figure

    layers = metrics[LAYER].values
    fig = Figure(figsize=(13, 3.2), layout="constrained")
    axes = fig.subplots(1, 4)
    panels: list[tuple[str, list[tuple[str, str, str]]]] = [
        (
            "share of variance",
            [("share_pos", "pos", "-"), ("share_ctx", "ctx", "-"), ("share_resid", "resid", "-")],
        ),
        (
            "pos rank",
            [("pos_stable_rank", "stable rank", "-"), ("pos_screenot_rank", "ScreeNOT rank", "--")],
        ),
        (
            "ctx mean |cos|",
            [("ctx_within", "within topic", "-"), ("ctx_between", "between topics", "-")],
        ),
        (
            "pos-ctx max |cos|",
            [("orth_max_cos", "pos vs ctx", "-"), ("orth_max_cos_random", "random rotation", "--")],
        ),
    ]
    for ax, (title, lines) in zip(axes, panels, strict=True):
        for name, label, style in lines:
            ax.plot(layers, metrics[name].values, style, marker="o", markersize=3, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_xticks(layers)
        ax.tick_params(labelsize=7)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    if np.isfinite(metrics["relative_norm"].values).any():
        axes[0].plot(
            layers,
            metrics["relative_norm"].values,
            ":",
            marker="s",
            markersize=3,
            color="k",
            label="relative norm",
        )
        axes[0].legend(fontsize=7)
    fig.suptitle("across layers", fontsize=11)
    return fig


#: The report's figures, in order: name -> (title, what to look for, function).
FIGURES: dict[str, tuple[str, str, Callable[[xr.Dataset, xr.Dataset], Figure]]] = {
    "layer_summary": (
        "Across layers",
        "Variance shares of pos, ctx and resid (and the relative norm when known), the stable "
        "and ScreeNOT ranks of pos, within- vs between-topic similarity of ctx, and the largest "
        "pos-ctx cosine against randomly rotated pos.",
        lambda inputs, metrics: layer_summary(metrics),
    ),
    "pos_curves_2d": (
        "pos: the positional curve (2-d)",
        "pos in its top two principal components: a smooth curve, often a spiral.",
        lambda inputs, metrics: pos_curves_2d(inputs),
    ),
    "pos_curves_3d": (
        "pos: the positional curve (3-d)",
        "The same curve in three principal components.",
        lambda inputs, metrics: pos_curves_3d(inputs),
    ),
    "gram": (
        "Gram matrix of [pos; ctx]",
        "Cosines between normalised pos vectors (top left), ctx vectors grouped by topic "
        "(bottom right) and across (off-diagonal parts: near zero when pos and ctx are "
        "nearly orthogonal).",
        lambda inputs, metrics: gram_heatmaps(inputs),
    ),
    "dct": (
        "pos Gram matrix in frequency",
        "The pos Gram matrix in the DCT-II basis: energy in the top-left corner means pos is "
        "smooth in position.",
        lambda inputs, metrics: dct_heatmaps(inputs),
    ),
    "spectra": (
        "Singular values",
        "Spectra of pos, ctx and resid as parts of the CT x d matrix of hidden states.",
        lambda inputs, metrics: spectra(metrics),
    ),
    "ctx_pcs": (
        "ctx by topic",
        "ctx in its top two principal components, coloured by topic.",
        lambda inputs, metrics: ctx_pcs(inputs),
    ),
}


def png_bytes(fig: Figure, *, dpi: int = 80) -> bytes:
    """Render a figure to PNG bytes (Agg, matplotlib's default for PNG; no pyplot involved).

    Examples
    --------
    >>> from matplotlib.figure import Figure
    >>> png_bytes(Figure(figsize=(1, 1)))[:4]
    b'\\x89PNG'
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


__all__ = [
    "FIGURES",
    "ctx_pcs",
    "dct_heatmaps",
    "gram_heatmaps",
    "layer_summary",
    "png_bytes",
    "style_panel",
    "pos_curves_2d",
    "pos_curves_3d",
    "spectra",
]

__getattr__ = moved_names(
    __name__, {"plot_attention_dissection": "posctx.attention.figures:plot_attention_dissection"}
)
