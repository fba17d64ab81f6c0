"""Incremental decompositions: combine disjoint context sets exactly, and update a stored
decomposition with the contexts added to its store since, reading only those."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import xarray as xr

from posctx._deprecated import warn_renamed
from posctx.decomposition.api import (
    DECOMPOSITION_ATTR,
    OUTPUT_DIMS,
    context_ranges,
    finalize,
    hidden_variable,
    statistics,
)
from posctx.decomposition.graph import STATISTIC_NAMES
from posctx.decomposition.kernels import CELL_STAT_NAMES
from posctx.decomposition.storage import open_decomposition, write_decomposition
from posctx.errors import PosctxError
from posctx.types import (
    CELL_COUNT,
    CELL_RUN,
    CELL_TOPIC,
    CONTEXT,
    CONTEXT_CELL,
    DIM,
    DIM2,
    LAYER,
    POSITION,
    PathLike,
)


def combine(a: xr.Dataset, b: xr.Dataset) -> xr.Dataset:
    """Statistics of the union of two disjoint context sets (lazy; exact).

    ``pos_sum`` and ``sumsq`` add, ``ctx_sum`` is concatenated along ``context`` and
    ``m2_hidden`` (when both have it) merges by the parallel-axis theorem.

    Raises
    ------
    PosctxError
        The two cover different positions, layers or dims, or share a context label.

    Examples
    --------
    >>> import numpy as np
    >>> from posctx.decomposition import combine, decompose, finalize, statistics
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(10, 4, 2, 3)
    >>> both = combine(statistics(ds, contexts=slice(0, 5)), statistics(ds, contexts=slice(6, 9)))
    >>> bool(np.allclose(finalize(both).mu, decompose(ds).mu))
    True
    """
    for dim in (POSITION, LAYER, DIM):
        if not np.array_equal(a[dim].values, b[dim].values):
            raise PosctxError(
                f"cannot combine statistics over different {dim}s: decompose the new contexts "
                f"with the same {dim} selection as the previous decomposition"
            )
    shared = np.intersect1d(a[CONTEXT].values, b[CONTEXT].values)
    if shared.size:
        raise PosctxError(
            f"contexts {shared[:5].tolist()} are in both sets: combine disjoint context sets"
        )
    # Bootstrap cells are runs of the contexts one pass read: the union has none.
    cell_names = [CONTEXT_CELL, CELL_RUN, CELL_TOPIC, CELL_COUNT, *CELL_STAT_NAMES]
    a = a.drop_vars(cell_names, errors="ignore")
    b = b.drop_vars(cell_names, errors="ignore")
    n_a, n_b = a.sizes[CONTEXT] * a.sizes[POSITION], b.sizes[CONTEXT] * b.sizes[POSITION]
    out = xr.Dataset(
        {
            "pos_sum": a.pos_sum + b.pos_sum,
            "sumsq": a.sumsq + b.sumsq,
            "ctx_sum": xr.concat([a.ctx_sum, b.ctx_sum], dim=CONTEXT),
        },
        attrs=dict(a.attrs),
    )
    if "m2_hidden" in a and "m2_hidden" in b:
        mean_a = a.pos_sum.sum(POSITION) / n_a
        mean_b = b.pos_sum.sum(POSITION) / n_b
        delta = mean_a - mean_b
        cross = delta * delta.rename({DIM: DIM2}) * (n_a * n_b / (n_a + n_b))
        out["m2_hidden"] = (a.m2_hidden + b.m2_hidden + cross).transpose(*OUTPUT_DIMS["m2_hidden"])
    record = json.loads(a.attrs.get(DECOMPOSITION_ATTR, "{}"))
    record["n_contexts"] = int(out.sizes[CONTEXT])
    record["contexts_used"] = context_ranges(out[CONTEXT].values)
    # complete_only describes the store the newest contexts came from (contexts_used says
    # which contexts the result holds): kept when that store was still being written.
    record.pop("complete_only", None)
    record.pop("cells", None)
    added = json.loads(b.attrs.get(DECOMPOSITION_ATTR, "{}"))
    if "complete_only" in added:
        record["complete_only"] = added["complete_only"]
    record["moments"] = "m2_hidden" in out
    # Which kernel took the sums (numba and numpy agree to ~1e-15): both, if they differ.
    kernels = {k for k in (record.get("kernel"), added.get("kernel")) if k}
    if kernels:
        record["kernel"] = "+".join(sorted(kernels))
    out.attrs[DECOMPOSITION_ATTR] = json.dumps(record, sort_keys=True)
    return out


def update_decomposition(
    ds: xr.Dataset,
    previous: PathLike,
    out: PathLike,
    *,
    mode: Literal["w", "w-"] = "w-",
    storage_options: Mapping[str, Any] | None = None,
) -> int:
    """Write the decomposition of ``previous``'s contexts plus ``ds``'s new ones to ``out``.

    Only the contexts of ``ds`` that ``previous`` does not hold are read from ``ds``; the
    rest comes from the statistics persisted in ``previous``. The result equals decomposing
    all contexts from scratch (up to float64 rounding).

    Parameters
    ----------
    ds
        The hidden-state store, grown since ``previous`` was made (:func:`posctx.open_hidden`).
    previous
        Path or URL of a decomposition store of some of ``ds``'s contexts.
    out
        Path or URL of the updated decomposition (not ``previous``).
    mode, storage_options
        As for :func:`~posctx.decomposition.write_decomposition`.

    Returns
    -------
    int
        The number of new contexts read.

    Notes
    -----
    Before posctx 0.2 the order was ``(previous, ds, out)``; that order still works, with a
    FutureWarning, until 0.3.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from posctx.decomposition import (
    ...     decompose, open_decomposition, update_decomposition, write_decomposition)
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(10, 4, 2, 3)
    >>> tmp = tempfile.mkdtemp()
    >>> write_decomposition(decompose(ds, contexts=slice(0, 5)), os.path.join(tmp, "a.zarr"))
    >>> update_decomposition(ds, os.path.join(tmp, "a.zarr"), os.path.join(tmp, "b.zarr"))
    4
    >>> updated = open_decomposition(os.path.join(tmp, "b.zarr"))
    >>> bool(np.allclose(updated.ctx, decompose(ds).ctx))
    True
    """
    if isinstance(previous, xr.Dataset) and not isinstance(ds, xr.Dataset):
        warn_renamed(
            "update_decomposition(previous, ds, out)", "update_decomposition(ds, previous, out)"
        )
        ds, previous = previous, ds
    if os.fspath(previous) == os.fspath(out):
        raise PosctxError("write the updated decomposition to a new path: --out must differ")
    prev = open_decomposition(previous, storage_options=storage_options)
    record = json.loads(prev.attrs[DECOMPOSITION_ATTR])
    h = hidden_variable(ds)
    new = np.setdiff1d(h[CONTEXT].values, prev[CONTEXT].values)
    if new.size == 0:
        raise PosctxError(
            f"{os.fspath(previous)} already holds every context of this store: nothing to add"
        )
    added = statistics(
        ds,
        positions=prev[POSITION].values,
        contexts=new,
        moments=bool(record.get("moments")) and "m2_hidden" in prev,
    )
    stats = [name for name in STATISTIC_NAMES if name in prev and name in added]
    combined = combine(prev[stats], added[stats])
    write_decomposition(finalize(combined), out, mode=mode, storage_options=storage_options)
    return int(new.size)


__all__ = [
    "combine",
    "update_decomposition",
]
