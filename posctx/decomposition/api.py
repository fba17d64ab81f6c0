"""Thin xarray layer over the dask decomposition: labels in, labelled lazy results out.

All logic about numbers lives in :mod:`posctx.decomposition.kernels` and
:mod:`posctx.decomposition.graph`; this module selects by label, checks the schema and attaches
coordinates and provenance. Zarr I/O is in :mod:`~posctx.decomposition.storage`, incremental
updates in :mod:`~posctx.decomposition.incremental`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import numpy.typing as npt
import xarray as xr

from posctx._version import version as _posctx_version
from posctx.decomposition.graph import (
    STATISTIC_NAMES,
    finalize_arrays,
    statistics_arrays,
    statistics_from_files,
)
from posctx.decomposition.kernels import plan_cells
from posctx.errors import PosctxError
from posctx.fused import kernel_name
from posctx.store.direct import direct_source
from posctx.types import (
    CELL,
    CELL_COUNT,
    CELL_RUN,
    CELL_TOPIC,
    COMPLETE_ONLY_ATTR,
    COMPONENT,
    CONTEXT,
    CONTEXT_CELL,
    DECOMPOSITION_ATTR,
    DECOMPOSITION_KIND,
    DIM,
    DIM2,
    HIDDEN,
    HIDDEN_DIMS,
    HIDDEN_KIND,
    HIDDEN_SAMPLE_ATTR,
    KIND_ATTR,
    LAYER,
    POSITION,
    PROVENANCE_ATTR,
    STATISTICS_ATTR,
    TOPIC,
)

if TYPE_CHECKING:
    import pandas as pd

#: Dimensions of each output variable.
OUTPUT_DIMS: dict[str, tuple[str, ...]] = {
    "mu": (LAYER, DIM),
    "pos": (POSITION, LAYER, DIM),
    "ctx": (CONTEXT, LAYER, DIM),
    "ss_total": (LAYER,),
    "ss_pos": (LAYER,),
    "ss_ctx": (LAYER,),
    "ss_resid": (LAYER,),
    "pos_sum": (POSITION, LAYER, DIM),
    "ctx_sum": (CONTEXT, LAYER, DIM),
    "sumsq": (LAYER,),
    "m2_hidden": (LAYER, DIM, DIM2),
    "m2_resid": (LAYER, DIM, DIM2),
    "sv_hidden": (LAYER, COMPONENT),
    "sv_resid": (LAYER, COMPONENT),
    "norm_hidden": (LAYER,),
    "cell_pos_sum": (CELL, POSITION, LAYER, DIM),
    "cell_sumsq": (CELL, LAYER),
}

#: A label selection: a slice, labels, a boolean mask, a single label, or None for all.
Selection = slice | Sequence[int] | npt.NDArray[Any] | int | None


def hidden_variable(ds: xr.Dataset) -> xr.DataArray:
    """``ds.hidden`` checked against the store schema and put in canonical dim order."""
    if HIDDEN not in ds.data_vars:
        raise PosctxError(
            f"dataset has no {HIDDEN!r} variable (found: {sorted(map(str, ds.data_vars))}); "
            "pass a hidden-state store opened with xr.open_zarr"
        )
    h = ds[HIDDEN]
    if set(h.dims) != set(HIDDEN_DIMS) or h.ndim != len(HIDDEN_DIMS):
        raise PosctxError(
            f"{HIDDEN!r} has dims {h.dims}; expected {HIDDEN_DIMS} (a hidden-state store)"
        )
    if not np.issubdtype(h.dtype, np.floating):
        raise PosctxError(f"{HIDDEN!r} has dtype {h.dtype}; expected float16/float32/float64")
    return h.transpose(*HIDDEN_DIMS)


def label_select(h: xr.DataArray, dim: str, selection: Selection) -> xr.DataArray:
    """Label-select ``selection`` along ``dim`` without dropping the dimension.

    A scalar label keeps ``dim`` (a table of one row); an empty selection, one that repeats
    labels or names labels ``h`` lacks is refused with what to choose instead.

    Examples
    --------
    >>> import xarray as xr
    >>> labels = xr.DataArray([0, 1, 2, 3], dims="context", coords={"context": [0, 1, 2, 3]})
    >>> label_select(labels, "context", slice(1, 2)).values.tolist()
    [1, 2]
    >>> label_select(labels, "context", 3).values.tolist()
    [3]
    """
    if selection is None:
        return h
    if isinstance(selection, (int, np.integer)):
        # A scalar label would drop the dimension; keep it as a table of one row.
        selection = [int(selection)]
    if not isinstance(selection, slice):
        selection = np.asarray(selection)
        if selection.ndim != 1:
            raise PosctxError(f"{dim} selection must be 1-d, got shape {selection.shape}")
    try:
        out = h.sel({dim: selection})
    except (KeyError, IndexError, ValueError) as exc:
        raise PosctxError(
            f"{dim} selection does not match the store's {dim} labels: {exc}"
        ) from exc
    if out.sizes[dim] == 0:
        labels = h[dim].values
        held = f"{labels[0]}..{labels[-1]}" if labels.size else "none"
        shown = (
            f"{'' if selection.start is None else selection.start}:"
            f"{'' if selection.stop is None else selection.stop}"
            if isinstance(selection, slice)
            else repr(selection)
        )
        raise PosctxError(
            f"{dim} selection {shown} is empty (the store's {dim}s: {held}): choose {dim} labels "
            f"within {held} (--{dim}s START:STOP in the CLI, stop included)"
        )
    if not out.indexes[dim].is_unique:
        raise PosctxError(f"{dim} selection repeats labels; each {dim} may be used once")
    return out


def _as_dask(h: xr.DataArray) -> xr.DataArray:
    if isinstance(h.data, da.Array):
        return h
    # In-memory input: chunk along context only, so the graph still has parallel tasks. Only
    # the data: chunking the DataArray would also chunk (string) coordinates.
    return h.copy(data=da.from_array(np.asarray(h.data), chunks=("auto", -1, -1, -1)))


def paper_positions(ds: xr.Dataset) -> slice:
    """Positions to decompose by default: all but position 0 and any trailing special tokens.

    The paper drops position 0 ([CLS]/BOS, an attention sink); a BERT-style [SEP] at T-1 is
    just as anomalous, so it is dropped too. Read from the store's special-token record;
    without one, only position 0 is dropped.

    Examples
    --------
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(4, 6, 1, 2)
    >>> paper_positions(ds)
    slice(1, None, None)
    >>> ds.attrs["posctx"] = {"special_tokens": {"suffix_ids": [102]}}
    >>> paper_positions(ds)
    slice(1, 4, None)
    """
    record = ds.attrs.get(PROVENANCE_ATTR) or {}
    n_suffix = len((record.get("special_tokens") or {}).get("suffix_ids") or ())
    if not n_suffix:
        return slice(1, None)
    last = int(ds[POSITION].values[-1]) - n_suffix  # label slices include their stop
    return slice(1, last)


def context_ranges(labels: npt.ArrayLike) -> list[list[int]]:
    """Context labels as ``[start, stop)`` runs: a compact record of which contexts were used.

    >>> context_ranges([0, 1, 2, 5, 6, 9])
    [[0, 3], [5, 7], [9, 10]]
    """
    values = np.asarray(labels, dtype=np.int64)
    if values.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(values) != 1) + 1
    return [[int(run[0]), int(run[-1]) + 1] for run in np.split(values, breaks)]


def statistics(
    ds: xr.Dataset,
    *,
    positions: Selection = None,
    contexts: Selection = None,
    moments: bool = False,
    runs: int | None = None,
) -> xr.Dataset:
    """Lazy sufficient statistics of the selected hidden states (one pass when computed).

    ``pos_sum`` (position, layer, dim) and ``ctx_sum`` (context, layer, dim) are the sums of
    ``h`` over contexts and over positions, ``sumsq`` (layer) the sum of squares, and with
    ``moments`` ``m2_hidden`` (layer, dim, dim2) the second moment of ``h - mu``. They are
    additive over contexts, so statistics of disjoint context sets :func:`combine` exactly;
    :func:`finalize` turns them into the decomposition. Arguments as for :func:`decompose`.

    Examples
    --------
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(6, 4, 2, 3)
    >>> sorted(statistics(ds).data_vars)
    ['ctx_sum', 'pos_sum', 'sumsq']
    >>> statistics(ds, runs=2).cell_pos_sum.dims
    ('cell', 'position', 'layer', 'dim')
    """
    full = hidden_variable(ds)
    h = label_select(full, POSITION, positions)
    h = label_select(h, CONTEXT, contexts)
    h = _as_dask(h)
    cells = None if runs is None else plan_cells(_topic_labels(h), runs)
    cell_of = None if cells is None else cells["cell"]
    arrays = None if moments else _statistics_from_files(full, h, cell_of)
    if arrays is None:
        arrays = statistics_arrays(h.data, moments=moments, cells=cell_of)
    out = statistics_dataset(
        arrays,
        h.coords,
        ds.attrs,
        moments=moments,
        source_store=ds.encoding.get("source"),
        source="hidden states",
    )
    return out if cells is None else with_cells(out, cells)


def _topic_labels(h: xr.DataArray) -> npt.NDArray[Any]:
    """The contexts' topics when they are in memory (``open_hidden`` loads them), else one
    topic for all: reading lazy labels here would compute behind the caller's back."""
    topic = h.coords.get(TOPIC)
    if topic is None or not isinstance(topic.data, np.ndarray):
        return np.full(h.sizes[CONTEXT], "all")
    return np.asarray(topic.values)


def with_cells(stats: xr.Dataset, cells: Mapping[str, Any]) -> xr.Dataset:
    """``stats`` with the cell coordinates of :func:`~posctx.decomposition.kernels.plan_cells`
    and their plan in the decomposition record (``"cells"``)."""
    out = stats.assign_coords(
        {
            CONTEXT_CELL: (CONTEXT, cells["cell"]),
            CELL_RUN: (CELL, cells["run"]),
            CELL_TOPIC: (CELL, np.asarray([str(t) for t in cells["topic"]], dtype=object)),
            CELL_COUNT: (CELL, cells["count"]),
        }
    )
    record = json.loads(out.attrs[DECOMPOSITION_ATTR])
    record["cells"] = {
        "run_length": int(cells["run_length"]),
        "n_runs": int(cells["run"].max()) + 1,
        "n_cells": int(cells["count"].size),
        "topics_split": bool(np.unique(cells["topic"]).size > 1),
    }
    out.attrs[DECOMPOSITION_ATTR] = json.dumps(record, sort_keys=True)
    return out


def statistics_dataset(
    arrays: Mapping[str, Any],
    coords: Any,
    attrs: Mapping[str, Any],
    *,
    moments: bool,
    source_store: Any,
    source: str,
    kernel: str | None = None,
) -> xr.Dataset:
    """Labelled sufficient statistics, with the decomposition record in their attrs.

    ``coords`` are the selected contexts' and positions' (and the layers' and dims'); the
    record names the selection, the source store, where the sums came from (``source``:
    ``"hidden states"`` read back, or the ``"statistics"`` kept during extraction) and the
    posctx version, and ``kernel``, the per-chunk kernel used (by default the one
    :func:`~posctx.fused.kernel_name` chooses). ``attrs`` (the store's) are
    kept as the record of where the states came from, marked as a decomposition's.
    """
    coords = xr.Coordinates(coords) if not isinstance(coords, xr.Coordinates) else coords
    position_labels = coords[POSITION].values
    record = {
        "positions": [position_labels[0].item(), position_labels[-1].item()],
        "n_positions": int(position_labels.size),
        "n_contexts": int(coords[CONTEXT].size),
        "moments": bool(moments),
        # The compiled one-pass kernel or numpy's passes (none when nothing is read).
        "kernel": kernel_name() if kernel is None else kernel,
        "source": source,
        "source_store": None if source_store is None else str(source_store),
        "contexts_used": context_ranges(coords[CONTEXT].values),
        "posctx_version": _posctx_version(),
    }
    if COMPLETE_ONLY_ATTR in attrs:  # an interrupted store, opened with complete_only
        record["complete_only"] = attrs[COMPLETE_ONLY_ATTR]
    out_attrs = {k: v for k, v in attrs.items() if k not in (COMPLETE_ONLY_ATTR, STATISTICS_ATTR)}
    # No longer a hidden-state store: say so, or store readers would take it for one.
    out_attrs[KIND_ATTR] = DECOMPOSITION_KIND
    out_attrs[DECOMPOSITION_ATTR] = json.dumps(record, sort_keys=True)
    return xr.Dataset(
        {name: (OUTPUT_DIMS[name], arrays[name]) for name in arrays},
        coords=coords,
        attrs=out_attrs,
    )


def _statistics_from_files(
    full: xr.DataArray, h: xr.DataArray, cells: npt.NDArray[np.intp] | None = None
) -> dict[str, da.Array] | None:
    """Statistics read context by context from chunk files, when ``full`` allows it.

    Applies when ``full`` is, untouched, posctx's direct reader over an uncompressed local
    store (``open_hidden``'s default) and the positions are a contiguous range; otherwise
    ``None`` and the caller uses the general dask path. Same numbers, less memory traffic.
    """
    source = direct_source(full.data)
    if source is None or source.shape != full.shape:
        return None
    t_idx = full.indexes[POSITION].get_indexer(h.indexes[POSITION])
    c_idx = full.indexes[CONTEXT].get_indexer(h.indexes[CONTEXT])
    if not np.array_equal(t_idx, np.arange(t_idx[0], t_idx[0] + t_idx.size)):
        return None
    chunk = source.chunk_shape[0]
    groups: list[tuple[int, tuple[int, ...]]] = []
    for c in c_idx.tolist():
        i, row = divmod(c, chunk)
        if groups and groups[-1][0] == i:
            groups[-1] = (i, (*groups[-1][1], row))
        else:
            groups.append((i, (row,)))
    return statistics_from_files(source, groups, int(t_idx[0]), int(t_idx[-1]) + 1, cells)


def finalize(stats: xr.Dataset) -> xr.Dataset:
    """Lazy decomposition (``mu``, ``pos``, ``ctx``, ``ss_*``...) from :func:`statistics`.

    The statistics variables are kept in the result. Works on lazy, in-memory or
    Zarr-backed statistics alike; computes nothing.

    Examples
    --------
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(6, 4, 2, 3)
    >>> dec = finalize(statistics(ds))
    >>> dec.ctx.dims
    ('context', 'layer', 'dim')
    """
    missing = [name for name in ("pos_sum", "ctx_sum", "sumsq") if name not in stats]
    if missing:
        raise PosctxError(f"statistics lack {missing}: make them with posctx statistics()")
    arrays = finalize_arrays(
        {name: dask_data(stats[name]) for name in STATISTIC_NAMES if name in stats}
    )
    out = stats.copy()
    for name, array in arrays.items():
        out[name] = (OUTPUT_DIMS[name], array)
    return out


def dask_data(var: xr.DataArray) -> da.Array:
    """The data of ``var`` as a dask array: as it is if lazy, else one chunk in memory."""
    data = var.data
    return data if isinstance(data, da.Array) else da.from_array(np.asarray(data), chunks=-1)


def decompose(
    ds: xr.Dataset,
    *,
    positions: Selection = None,
    contexts: Selection = None,
    moments: bool = False,
    runs: int | None = None,
) -> xr.Dataset:
    """Lazily split hidden states into mean, position, context and residual parts.

    For every layer, over the selected contexts ``c`` and positions ``t`` (PAPER.md)::

        mu     = mean over (c, t) of h[c, t]
        pos[t] = mean over c of h[c, t] - mu
        ctx[c] = mean over t of h[c, t] - mu

    with sums of squares ``ss_total = sum |h - mu|^2``, ``ss_pos = C sum_t |pos_t|^2``,
    ``ss_ctx = T sum_c |ctx_c|^2`` and ``ss_resid = ss_total - ss_pos - ss_ctx`` (the sum of
    squares of the residual, see :func:`residual`).

    Nothing is computed. Compute or write all variables together (``dec.compute()`` or
    :func:`write_decomposition`): every chunk of ``hidden`` is then read and converted to
    float64 once for all of them. ``decompose`` is ``finalize(statistics(ds, ...))``: the
    result also carries the sufficient statistics ``pos_sum``, ``ctx_sum``, ``sumsq`` (and
    ``m2_hidden``), which :func:`write_decomposition` persists so that
    :func:`update_decomposition` can later add contexts by reading only the new ones.

    Parameters
    ----------
    ds
        A hidden-state store (``xr.open_zarr(path)``): data variable ``hidden`` with dims
        ``(context, position, layer, dim)``, indexed by label along each.
    positions, contexts
        Label selections passed to ``.sel``: a slice (``positions=slice(1, None)`` drops the
        first position, as the paper does), a list/array of labels, or a boolean mask.
        ``None`` keeps all.
    moments
        Also accumulate the ``dim x dim`` second moment of ``h - mu`` per layer, giving the
        singular values of the hidden states and of the residual (``sv_hidden``,
        ``sv_resid``), the residual's second moment ``m2_resid`` and ``norm_hidden``, the
        spectral norm of ``h`` as stored. Costs a matrix product per chunk (opt-in).
    runs
        Also keep the position sums and sums of squares of *cells*: runs of consecutive
        contexts (at most ``runs`` of them, each a power of two contexts long), split by
        topic (:func:`~posctx.decomposition.kernels.plan_cells`). The geometry's
        confidence intervals and convergence path resample and add these cells
        (:mod:`posctx.geometry.uncertainty`) with no second read. Taken in the same pass:
        one accumulator per cell instead of one per chunk, no extra arithmetic. Costs
        ``cells x T x L x d`` float64 values (about ``runs x topics`` position tables).

    Returns
    -------
    xarray.Dataset
        Float64, dask-backed: ``mu`` (layer, dim), ``pos`` (position, layer, dim), ``ctx``
        (context, layer, dim), ``ss_total``, ``ss_pos``, ``ss_ctx``, ``ss_resid`` (layer).
        Coordinates of the selected positions and contexts (with ``topic``, ``source``,
        ``offset``), of the layers (with ``layer_name``) and dims. The attrs of ``ds`` plus
        ``posctx_decomposition``, a JSON record of the selection, the source store and the
        posctx version; ``posctx_kind`` is set to ``"decomposition"``.

    Raises
    ------
    PosctxError
        If ``hidden`` is missing, has the wrong dims or dtype, or the selection is empty,
        repeats labels or names labels the store does not have.

    Examples
    --------
    >>> import numpy as np
    >>> from posctx.testing import planted_hidden
    >>> ds, truth = planted_hidden(12, 8, 2, 4, chunks_context=5)
    >>> dec = decompose(ds, positions=slice(1, None))
    >>> dec.pos.dims, dec.sizes["position"]
    (('position', 'layer', 'dim'), 7)
    >>> dec = decompose(ds).compute()
    >>> bool(np.allclose(dec.pos.values, truth["pos"], atol=1e-5))
    True
    >>> identity = dec.ss_pos + dec.ss_ctx + dec.ss_resid
    >>> bool(np.allclose(identity, dec.ss_total))
    True
    """
    return finalize(
        statistics(ds, positions=positions, contexts=contexts, moments=moments, runs=runs)
    )


def label_indexer(source: pd.Index, wanted: pd.Index, dim: str) -> slice | npt.NDArray[np.intp]:
    """Positions of the labels ``wanted`` in ``source``; a slice when they are contiguous.

    A slice keeps dask's getitem a plain view of whole chunks, with no fancy indexing.

    Raises
    ------
    PosctxError
        ``source`` lacks some of ``wanted`` (the decomposition came from another store).

    Examples
    --------
    >>> import pandas as pd
    >>> label_indexer(pd.Index([5, 6, 7, 8]), pd.Index([6, 7]), "context")
    slice(1, 3, None)
    >>> label_indexer(pd.Index([5, 6, 7, 8]), pd.Index([8, 5]), "context").tolist()
    [3, 0]
    """
    found = np.asarray(source.get_indexer(wanted), dtype=np.intp)
    if (found < 0).any():
        missing = list(wanted[found < 0][:5])
        raise PosctxError(
            f"the hidden states lack {dim} labels of the decomposition (e.g. {missing}): "
            "pass the store the decomposition was made from"
        )
    if found.size and np.array_equal(found, np.arange(found[0], found[0] + found.size)):
        return slice(int(found[0]), int(found[0]) + found.size)
    return found


def refuse_partial_sample(ds: xr.Dataset, dec: xr.Dataset, what: str) -> None:
    """Refuse residual vectors of contexts a sampled store keeps no hidden states of.

    A store extracted with ``--hidden-contexts N`` holds the hidden states of its first N
    contexts only (``attrs["posctx_hidden_sample"]``); a decomposition of all its contexts
    (from the statistics) has contexts the residual cannot be formed for.
    """
    sample = ds.attrs.get(HIDDEN_SAMPLE_ATTR)
    if not sample:
        return
    held = set(np.asarray(ds[CONTEXT].values).tolist())
    lacking = [c for c in np.asarray(dec[CONTEXT].values).tolist() if c not in held]
    if lacking:
        n = sample["stored_contexts"]
        raise PosctxError(
            f"{what} needs the hidden states of every context of the decomposition, and the "
            f"store keeps them for its first {n} of {sample['contexts_total']} contexts only "
            f"(--hidden-contexts {n}): use that stored sample, e.g. "
            f"dec.isel(context=slice(0, {n})), or decompose with --moments for the spectra"
        )


def _hidden_of(ds: xr.Dataset, dec: xr.Dataset) -> xr.DataArray:
    """``ds``'s hidden states at exactly the contexts, positions and layers of ``dec``, lazy."""
    refuse_partial_sample(ds, dec, "the residual")
    h = hidden_variable(ds)
    return _as_dask(
        h.isel({d: label_indexer(h.indexes[d], dec.indexes[d], d) for d in HIDDEN_DIMS})
    )


def residual(ds: xr.Dataset, dec: xr.Dataset) -> xr.DataArray:
    """Lazy residual ``h - mu - pos - ctx`` over the positions and contexts of ``dec``.

    Parameters
    ----------
    ds
        The hidden-state store ``dec`` was made from.
    dec
        A decomposition from :func:`decompose` or :func:`open_decomposition`.

    Returns
    -------
    xarray.DataArray
        Float64 ``resid`` with dims ``(context, position, layer, dim)`` and the coordinates
        of the selected hidden states. Computing it reads ``hidden`` for the residual itself
        and, unless ``dec`` is already in memory or on disk, once more for ``dec``.

    Examples
    --------
    >>> import numpy as np
    >>> from posctx.testing import planted_hidden
    >>> ds, truth = planted_hidden(9, 6, 2, 3, chunks_context=4, dtype="float64")
    >>> dec = decompose(ds, contexts=[0, 2, 4, 6, 8])  # labels, not positions
    >>> r = residual(ds, dec)
    >>> r.dims, r.shape
    (('context', 'position', 'layer', 'dim'), (5, 6, 2, 3))
    >>> bool(np.allclose((r**2).sum(("context", "position", "dim")), dec.ss_resid))
    True
    """
    h = _hidden_of(ds, dec)
    # Arithmetic on bare Variables: xarray would otherwise compare (and so compute) the
    # non-index coordinates such as `topic` of the operands before keeping or dropping them.
    resid = (
        h.variable.astype(np.float64)
        - dec["mu"].variable
        - dec["pos"].variable
        - dec["ctx"].variable
    )
    return xr.DataArray(resid.transpose(*HIDDEN_DIMS), coords=h.coords, name="resid")


def norms(ds: xr.Dataset, dec: xr.Dataset) -> xr.Dataset:
    """Lazy per-(context, position) norms of the residual and of ``h - mu``, per layer.

    ``resid_norm**2`` summed over contexts and positions is ``ss_resid``, ``hidden_norm**2``
    is ``ss_total``: compare them cell by cell to see where context-free, position-free
    structure lives. Computing reads ``hidden`` once (plus once for ``dec`` if it is lazy).

    Examples
    --------
    >>> import numpy as np
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(6, 4, 2, 3, dtype="float64")
    >>> dec = decompose(ds).compute()
    >>> n = norms(ds, dec)
    >>> n.resid_norm.dims
    ('context', 'position', 'layer')
    >>> bool(np.allclose((n.resid_norm**2).sum(("context", "position")), dec.ss_resid))
    True
    """
    resid = residual(ds, dec)
    h = _hidden_of(ds, dec)
    centred = h.variable.astype(np.float64) - dec["mu"].variable
    return xr.Dataset(
        {
            "resid_norm": np.sqrt((resid**2).sum(DIM)),
            "hidden_norm": (
                (CONTEXT, POSITION, LAYER),
                np.sqrt((centred**2).sum(DIM).transpose(CONTEXT, POSITION, LAYER).data),
            ),
        }
    )


__all__ = [
    "finalize",
    "dask_data",
    "hidden_variable",
    "label_indexer",
    "label_select",
    "norms",
    "paper_positions",
    "refuse_partial_sample",
    "statistics_dataset",
    "with_cells",
    "statistics",
    "DECOMPOSITION_ATTR",
    "DECOMPOSITION_KIND",
    "HIDDEN_KIND",
    "KIND_ATTR",
    "OUTPUT_DIMS",
    "decompose",
    "residual",
]
