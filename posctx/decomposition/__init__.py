"""Position/context decomposition of hidden states, out of core.

Three layers, from the bottom up: :mod:`~posctx.decomposition.kernels` (numpy, one chunk at a
time), :mod:`~posctx.decomposition.graph` (the dask graph: one kernel task per chunk, then tree
reductions) and :mod:`~posctx.decomposition.api` (labels, schema checks, Zarr I/O).
"""

from __future__ import annotations

from posctx.decomposition.api import (
    combine,
    decompose,
    finalize,
    norms,
    open_decomposition,
    paper_positions,
    residual,
    statistics,
    update_decomposition,
    write_decomposition,
)

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
