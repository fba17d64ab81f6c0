"""The geometry of position and context: the measurements of Song & Zhong (2023).

Two layers, as in :mod:`posctx.decomposition`: :mod:`~posctx.geometry.kernels` (numpy, one
layer's arrays at a time) and :mod:`~posctx.geometry.api` (labels in, a labelled
:class:`xarray.Dataset` of measurements out). Figures are in :mod:`posctx.plots`, the HTML
report in :mod:`posctx.report`; ``docs/geometry.md`` explains every measurement.

Examples
--------
>>> import posctx
>>> from posctx.testing import planted_hidden
>>> ds, _ = planted_hidden(48, 16, 2, 8)
>>> metrics = posctx.measure_geometry(posctx.decompose(ds, positions=slice(1, None)))
>>> metrics.pos_stable_rank.dims
('layer',)
"""

from __future__ import annotations

from posctx.geometry.api import (
    METRICS,
    collect_inputs,
    geometry_record,
    measure_geometry,
    metrics_table,
    metrics_to_dict,
    pos_gram,
    provenance,
)
from posctx.geometry.kernels import GeometryParams

__all__ = [
    "METRICS",
    "GeometryParams",
    "collect_inputs",
    "geometry_record",
    "measure_geometry",
    "metrics_table",
    "metrics_to_dict",
    "pos_gram",
    "provenance",
]
