"""The ``posctx attention`` command: dissect layers of a store and write figures and tables."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from posctx.attention.adapters import attention_weights, model_from_store
from posctx.attention.api import DEFAULT_CONTEXTS, dissect_attention, toeplitz_share
from posctx.attention.figures import plot_attention_dissection
from posctx.decomposition import open_decomposition
from posctx.plots import png_bytes
from posctx.store import open_hidden
from posctx.types import CONTEXT, HEAD, PART


@dataclass(frozen=True)
class AttentionResult:
    """What :func:`write_attention_dissection` wrote, and the measurements."""

    figures: tuple[Path, ...]
    json: Path
    csv: Path
    shares: tuple[xr.Dataset, ...]
    seconds: float


def write_attention_dissection(
    hidden_path: str,
    decomposition_path: str,
    layers: Sequence[int],
    out: str | Path,
    *,
    contexts: int = DEFAULT_CONTEXTS,
    heads: Sequence[int] | None = None,
    device: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> AttentionResult:
    """The ``posctx attention`` command: dissect layers, write figures and Toeplitz shares.

    Loads the model recorded in the hidden-state store (refusing other weights), dissects
    each layer on the first ``contexts`` contexts of the decomposition and writes::

        OUT/attention_layer{L}.png            per head: pattern and the four parts, mean over contexts
        OUT/attention_layer{L}_context{C}.png the same for the first context alone
        OUT/toeplitz.json                     per layer and head, share and sd of each part
        OUT/toeplitz.csv                      the same, one row per (layer, head, part)

    Returns
    -------
    AttentionResult
    """
    start = time.perf_counter()
    hidden = open_hidden(hidden_path, storage_options=storage_options)
    dec = open_decomposition(decomposition_path, storage_options=storage_options)
    loaded = model_from_store(hidden, device=device)
    for layer in layers:  # refuse a layer without attention before writing anything
        attention_weights(loaded.model, int(layer), np.zeros(1, np.int64))
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    figures: list[Path] = []
    all_shares: list[xr.Dataset] = []
    rows: list[dict[str, Any]] = []
    for layer in layers:
        ds = dissect_attention(
            hidden, dec, int(layer), model=loaded, contexts=contexts, heads=heads
        )
        shares = toeplitz_share(ds)
        all_shares.append(shares)
        first = ds[CONTEXT].values[0]
        for name, context in (
            (f"attention_layer{layer}.png", None),
            (f"attention_layer{layer}_context{first}.png", first),
        ):
            path = target / name
            path.write_bytes(png_bytes(plot_attention_dissection(ds, context=context)))
            figures.append(path)
        for i, head in enumerate(shares[HEAD].values):
            for j, part in enumerate(shares[PART].values):
                rows.append(
                    {
                        "layer": int(layer),
                        "layer_name": ds.attrs["layer_name"],
                        "head": int(head),
                        "part": str(part),
                        "share": _finite(shares.share.values[i, j]),
                        "std": _finite(shares["std"].values[i, j]),
                        "chance": shares.attrs["chance"],
                    }
                )
    json_path, csv_path = target / "toeplitz.json", target / "toeplitz.csv"
    json_path.write_text(
        json.dumps(
            {
                "hidden": str(hidden_path),
                "decomposition": str(decomposition_path),
                "model": loaded.config.name,
                "weights_hash": loaded.weights_hash,
                "contexts": int(contexts),
                "measure": "share of each part's within-context variance explained by its mean along "
                "each diagonal (query - key), pooled over contexts; causal models: key <= query",
                "rows": rows,
            },
            indent=2,
        )
    )
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["layer"])
        writer.writeheader()
        writer.writerows(rows)
    return AttentionResult(
        tuple(figures), json_path, csv_path, tuple(all_shares), time.perf_counter() - start
    )


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


__all__ = ["AttentionResult", "write_attention_dissection"]
