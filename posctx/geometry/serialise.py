"""The measurements as records, tables and JSON-safe data (for metrics.csv and metrics.json)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import xarray as xr

from posctx.geometry import kernels
from posctx.types import (
    DECOMPOSITION_ATTR,
    GEOMETRY_ATTR,
    INPUTS_ATTR,
    LAYER,
    LAYER_NAME,
    PROVENANCE_ATTR,
)

if TYPE_CHECKING:
    import pandas as pd


def inputs_record(inputs: xr.Dataset) -> dict[str, Any]:
    """The JSON record of :func:`~posctx.geometry.collect_inputs` (sizes, settings)."""
    record: dict[str, Any] = json.loads(inputs.attrs[INPUTS_ATTR])
    return record


def geometry_record(metrics: xr.Dataset) -> dict[str, Any]:
    """The JSON record of how ``metrics`` were made (settings, sizes, topics).

    Examples
    --------
    >>> import posctx
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(30, 12, 1, 6)
    >>> geometry_record(posctx.measure_geometry(posctx.decompose(ds)))["relative_norm"]
    'missing: pass the hidden-state store'
    """
    record: dict[str, Any] = json.loads(metrics.attrs[GEOMETRY_ATTR])
    return record


def metrics_table(metrics: xr.Dataset) -> pd.DataFrame:
    """The per-layer scalar measurements as a table, one row per layer (for CSV).

    Examples
    --------
    >>> import posctx
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(30, 12, 2, 6)
    >>> table = metrics_table(posctx.measure_geometry(posctx.decompose(ds)))
    >>> table.shape[0], list(table.columns[:3])
    (2, ['layer_name', 'pos_norm', 'pos_stable_rank'])
    """
    scalars = [name for name in metrics.data_vars if metrics[name].dims == (LAYER,)]
    table = metrics[scalars].to_dataframe()
    if LAYER_NAME in table.columns:
        table = table[[LAYER_NAME] + [c for c in table.columns if c != LAYER_NAME]]
    return table


def metrics_to_dict(metrics: xr.Dataset) -> dict[str, Any]:
    """The measurements as JSON-safe plain data: NaN becomes ``None``.

    ``{"geometry": record, "descriptions": {name: text}, "layers": [{"layer": ...,
    "layer_name": ..., name: value or list, ...}, ...]}``.

    Examples
    --------
    >>> import json, posctx
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(30, 12, 2, 6)
    >>> d = metrics_to_dict(posctx.measure_geometry(posctx.decompose(ds)))
    >>> d["layers"][0]["layer_name"], d["layers"][0]["relative_norm"]
    ('embeddings', None)
    >>> _ = json.dumps(d, allow_nan=False)
    """
    layers = []
    for i, layer in enumerate(metrics[LAYER].values):
        row: dict[str, Any] = {"layer": int(layer)}
        if LAYER_NAME in metrics.coords:
            row["layer_name"] = str(metrics[LAYER_NAME].values[i])
        for name in metrics.data_vars:
            row[str(name)] = kernels.finite_or_none(metrics[name].values[i])
        layers.append(row)
    return {
        "geometry": geometry_record(metrics),
        "descriptions": {
            str(k): str(v.attrs.get("description", "")) for k, v in metrics.data_vars.items()
        },
        "layers": layers,
    }


def provenance(dec: Mapping[str, Any] | xr.Dataset) -> dict[str, Any]:
    """The store's provenance (``attrs["posctx"]``) and the decomposition record, as data.

    Examples
    --------
    >>> import posctx
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(10, 6, 2, 4)
    >>> sorted(provenance(posctx.decompose(ds)))
    ['decomposition', 'store']
    """
    attrs = dec.attrs if isinstance(dec, xr.Dataset) else dec
    record = attrs.get(DECOMPOSITION_ATTR)
    return {
        "store": dict(attrs.get(PROVENANCE_ATTR, {})),
        "decomposition": json.loads(record) if isinstance(record, str) else record,
    }


__all__ = ["geometry_record", "inputs_record", "metrics_table", "metrics_to_dict", "provenance"]
