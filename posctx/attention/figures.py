"""Figures of an attention dissection (matplotlib's Agg canvas, no pyplot state).

Examples
--------
>>> import numpy as np, xarray as xr
>>> from posctx.attention import PARTS, SCORE_DIMS
>>> ds = xr.Dataset({n: (SCORE_DIMS, np.zeros((1, 1, 3, 3))) for n in (*PARTS, "scores", "pattern")},
...                 coords={"context": [0], "head": [0], "query": [1, 2, 3], "key": [1, 2, 3]})
>>> len(plot_attention_dissection(ds).axes)
5
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from posctx.attention.api import PARTS
from posctx.attention.kernels import causal_mask
from posctx.plots import style_panel
from posctx.types import CONTEXT, HEAD, KEY, QUERY, TOPIC

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def plot_attention_dissection(ds: xr.Dataset, *, heads: Any = None, context: Any = None) -> Figure:
    """Per head, the attention pattern beside the pos-pos, pos-ctx, ctx-pos and ctx-ctx parts.

    One row per head: the model's attention probabilities, then the four parts of the
    pre-softmax scores (:func:`posctx.attention.dissect_attention`), each on a diverging
    colour map centred on 0 with its own symmetric range (in the panel title). For causal
    models the masked entries (key after query) are left blank.

    Parameters
    ----------
    ds
        From :func:`posctx.attention.dissect_attention`.
    heads
        Head labels to draw; all by default.
    context
        A context label; ``None`` draws the mean over the dissected contexts.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from posctx.attention import PARTS, SCORE_DIMS
    >>> rng = np.random.default_rng(0)
    >>> ds = xr.Dataset({n: (SCORE_DIMS, rng.normal(size=(2, 3, 5, 5)))
    ...                  for n in (*PARTS, "scores", "pattern")},
    ...                 coords={"context": [4, 7], "head": [0, 1, 2], "query": np.arange(1, 6),
    ...                         "key": np.arange(1, 6)}, attrs={"layer": 1, "causal": True})
    >>> len(plot_attention_dissection(ds, heads=[0, 2], context=7).axes)
    10
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    data = ds if heads is None else ds.sel({HEAD: list(heads)})
    if context is None:
        data = data.mean(CONTEXT)
        shown = f"mean over {ds.sizes[CONTEXT]} contexts"
    else:
        data = data.sel({CONTEXT: context})
        topic = f", {data[TOPIC].item()}" if TOPIC in data.coords else ""
        shown = f"context {context}{topic}"
    query, key = data[QUERY].values, data[KEY].values
    hidden = (
        ~causal_mask(query, key)
        if ds.attrs.get("causal")
        else np.zeros((query.size, key.size), bool)
    )
    contiguous = bool(np.all(np.diff(query) == 1) and np.all(np.diff(key) == 1))
    extent = (key[0] - 0.5, key[-1] + 0.5, query[-1] + 0.5, query[0] - 0.5) if contiguous else None
    columns = [("pattern", "pattern"), *((p, p.replace("_", "-")) for p in PARTS)]
    n_heads = data.sizes[HEAD]
    fig = Figure(figsize=(2.3 * len(columns), 2.2 * n_heads + 0.6), layout="constrained")
    axes = fig.subplots(n_heads, len(columns), squeeze=False)
    for row, head in enumerate(data[HEAD].values):
        for col, (name, title) in enumerate(columns):
            ax = axes[row, col]
            values = np.where(hidden, np.nan, data[name].sel({HEAD: head}).values)
            finite = np.isfinite(values).any()
            if name == "pattern":
                top = float(np.nanmax(values)) if finite else 1.0
                cmap, vmin, vmax, label = "magma", 0.0, top or 1.0, title
            else:
                limit = (float(np.nanmax(np.abs(values))) if finite else 0.0) or 1.0
                cmap, vmin, vmax, label = "RdBu_r", -limit, limit, f"{title} (±{limit:.3g})"
            ax.imshow(
                values,
                cmap=colormaps[cmap].with_extremes(bad="0.92"),
                vmin=vmin,
                vmax=vmax,
                extent=extent,
                interpolation="nearest",
            )
            style_panel(
                ax,
                label,
                "key" if row == n_heads - 1 else "",
                f"head {int(head)}: query" if col == 0 else None,
            )
            # Tick labels on the outer panels only: fewer texts for the layout to place.
            ax.tick_params(labelbottom=row == n_heads - 1, labelleft=col == 0)
    layer = ds.attrs.get("layer")
    layer_name = ds.attrs.get("layer_name")
    where = f"layer {layer}" + (
        f" ({layer_name})" if layer_name and str(layer_name) != str(layer) else ""
    )
    fig.suptitle(
        f"{where}: attention pattern and its pre-softmax scores split into pos/ctx parts, {shown}",
        fontsize=11,
    )
    return fig


__all__ = ["plot_attention_dissection"]
