"""Position/context decomposition of hidden states, out of core.

Three layers, from the bottom up: :mod:`~posctx.decomposition.kernels` (numpy, one chunk at a
time), :mod:`~posctx.decomposition.graph` (the dask graph: one kernel task per chunk, then tree
reductions) and :mod:`~posctx.decomposition.api` (labels, schema checks), with
:mod:`~posctx.decomposition.storage` (Zarr I/O) and :mod:`~posctx.decomposition.incremental`
(exact updates with new contexts) beside it.
"""

from __future__ import annotations

from posctx.decomposition.api import (
    decompose,
    finalize,
    norms,
    paper_positions,
    residual,
    statistics,
)
from posctx.decomposition.incremental import combine, update_decomposition
from posctx.decomposition.storage import open_decomposition, write_decomposition

__all__ = [
    "combine",
    "decompose",
    "finalize",
    "norms",
    "open_decomposition",
    "paper_positions",
    "residual",
    "statistics",
    "update_decomposition",
    "write_decomposition",
]
