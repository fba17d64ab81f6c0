"""posctx: out-of-core position/context decomposition of transformer hidden states.

The data flow, one module per step::

    corpus -> contexts -> model forward -> hidden-state store (Zarr) -> decomposition (Dask)
    -> geometry measurements -> figures and report

Importing posctx never imports torch or transformers; only :mod:`posctx.model` does.

Examples
--------
>>> import posctx, posctx.testing, tempfile
>>> path = tempfile.mkdtemp() + "/hidden.zarr"
>>> _ = posctx.testing.write_planted_store(path, n_contexts=8, length=5, n_layers=2, n_dims=3)
>>> ds = posctx.open_hidden(path)
>>> dec = posctx.decompose(ds, positions=slice(1, None))
>>> dec.pos.sel(layer=1).shape
(4, 3)
"""

from __future__ import annotations

from posctx._version import version as _version
from posctx.attention import dissect_attention, toeplitz_share
from posctx.config import CorpusConfig, ExtractConfig, ModelConfig, StoreConfig
from posctx.decomposition import (
    decompose,
    norms,
    open_decomposition,
    residual,
    update_decomposition,
    write_decomposition,
)
from posctx.errors import (
    CorpusError,
    IncompleteStoreError,
    ModelError,
    NonFiniteError,
    PosctxError,
    StoreError,
)
from posctx.extraction import ExtractResult, extract
from posctx.geometry import GeometryParams, measure_geometry
from posctx.report import write_report
from posctx.store import open_hidden, store_info
from posctx.validate import ValidationReport, validate_store

__version__ = _version()

__all__ = [
    "CorpusConfig",
    "CorpusError",
    "ExtractConfig",
    "ExtractResult",
    "GeometryParams",
    "IncompleteStoreError",
    "ModelConfig",
    "ModelError",
    "NonFiniteError",
    "PosctxError",
    "StoreConfig",
    "StoreError",
    "ValidationReport",
    "__version__",
    "decompose",
    "dissect_attention",
    "extract",
    "measure_geometry",
    "norms",
    "open_decomposition",
    "open_hidden",
    "residual",
    "store_info",
    "toeplitz_share",
    "update_decomposition",
    "validate_store",
    "write_decomposition",
    "write_report",
]
