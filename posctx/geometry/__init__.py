"""The geometry of position and context: the measurements of Song & Zhong (2023).

Three layers, as in :mod:`posctx.decomposition`: :mod:`~posctx.geometry.kernels` (numpy, one
layer's arrays at a time), :mod:`~posctx.geometry.graph` (the dask graphs of the second
moments) and :mod:`~posctx.geometry.api` (labels in, a labelled :class:`xarray.Dataset` of
measurements out), with :mod:`~posctx.geometry.serialise` (records, tables, JSON) beside it.
Figures are in :mod:`posctx.plots`, the HTML report in :mod:`posctx.report`;
``docs/geometry.md`` explains every measurement.

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

from posctx.geometry.api import METRICS, collect_inputs, measure_geometry, pos_gram
from posctx.geometry.kernels import GeometryParams
from posctx.geometry.serialise import geometry_record, metrics_table, metrics_to_dict, provenance

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
