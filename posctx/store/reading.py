"""Opening a store as a labelled, lazy ``xarray.Dataset``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from posctx.errors import IncompleteStoreError, StoreError
from posctx.store.integrity import check_chunks_present
from posctx.store.layout import STATISTICS_SCHEMA, Block, StatisticsPlan
from posctx.store.location import is_remote, local_path, zarr_location
from posctx.store.provenance import read_provenance
from posctx.types import (
    BLOCK_COMPLETE,
    BLOCK_START,
    COMPLETE_ONLY_ATTR,
    CONTEXT,
    HIDDEN,
    HIDDEN_SAMPLE_ATTR,
)


def open_hidden(
    path: str,
    *,
    complete_only: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    chunks: Mapping[str, int] | str | None = None,
) -> Any:
    """Open a hidden-state store as a lazy, labelled ``xarray.Dataset``.

    Parameters
    ----------
    path
        Local path or fsspec URL of the store.
    complete_only
        Keep only the contexts of finished blocks instead of refusing an interrupted store.
    storage_options
        Passed to fsspec for URLs (credentials, endpoint).
    chunks
        Dask chunks; default: the store's own chunks.

    Returns
    -------
    xarray.Dataset
        ``hidden`` and ``token_id`` with every label; a store extracted with
        ``--hidden-contexts N`` opens with its first N contexts only, and says so in
        ``attrs["posctx_hidden_sample"]`` (``stored_contexts``, ``contexts_total``); its
        statistics cover every context (:func:`posctx.store.statistics.open_statistics`).

    Raises
    ------
    StoreError
        ``path`` holds no posctx store, or one that keeps no hidden states, or a block
        marked written lacks chunk files of ``hidden`` (a damaged store: a partial copy,
        deleted objects).
    IncompleteStoreError
        Some blocks were never written and ``complete_only`` is false.

    Examples
    --------
    >>> import posctx, posctx.testing, tempfile
    >>> path = tempfile.mkdtemp() + "/h.zarr"
    >>> _ = posctx.testing.write_planted_store(path, n_contexts=6, length=4, n_layers=2, n_dims=3)
    >>> ds = posctx.open_hidden(path)
    >>> ds.hidden.dims
    ('context', 'position', 'layer', 'dim')
    """
    record = read_provenance(path, storage_options)
    if record is None:
        raise StoreError(f"no posctx store at {path}: run `posctx extract ... --out {path}` first")
    plan = StatisticsPlan.from_record(record)
    stored = None if plan is None else plan.hidden_contexts
    if stored == 0:
        raise StoreError(
            f"{path} keeps no hidden states (extracted with --hidden-contexts 0): decompose it "
            f"from its statistics (`posctx decompose {path} --out DECOMPOSITION`, or "
            "posctx.open_statistics in Python)"
        )
    ds = open_labelled(path, storage_options=storage_options, chunks=chunks)
    # Reading the markers is eager on purpose: a few bytes that decide whether the store is
    # usable at all, never a computation over hidden states.
    done = np.asarray(ds[BLOCK_COMPLETE].values) == 1
    starts = np.asarray(ds[BLOCK_START].values)
    # The hidden states and their labels; the statistics open with open_statistics.
    ds = ds.drop_vars([BLOCK_COMPLETE, BLOCK_START, *(v for v in STATISTICS_SCHEMA if v in ds)])
    total = int(ds.sizes[CONTEXT])
    stops = np.append(starts[1:], total)
    sample = stored is not None and stored < total
    if sample:  # --hidden-contexts: only the first contexts' blocks hold hidden states
        assert stored is not None
        held = starts < stored
        done, starts, stops = done[held], starts[held], np.minimum(stops[held], stored)
    # Every block that will be read (all of them, or the finished ones with complete_only)
    # must have its chunk files: a missing one would read as NaN. No chunk is read here.
    marked = [
        Block(i, int(a), int(b))
        for i, (a, b, ok) in enumerate(zip(starts, stops, done, strict=True))
        if ok
    ]
    check_chunks_present(path, marked, storage_options)
    if chunks is None and not is_remote(path):
        from posctx.store.direct import direct_array

        # Same values, same chunks, read without zarr's general decode path (see store.direct).
        # A file of a kept block that vanishes after the check is refused too, never read as
        # NaN; other blocks' chunks may be touched by dask (an empty selection) and are not.
        direct = direct_array(
            local_path(path) / HIDDEN, required=[(b.start, b.stop) for b in marked]
        )
        if direct is not None and direct.shape == ds[HIDDEN].shape:
            ds[HIDDEN] = ds[HIDDEN].copy(data=direct)
    if sample:  # open those, and say so
        ds = ds.isel({CONTEXT: slice(0, stored)})
        ds.attrs[HIDDEN_SAMPLE_ATTR] = {
            "stored_contexts": int(stored or 0),
            "contexts_total": total,
        }
    if done.all():
        return ds
    if not complete_only:
        raise IncompleteStoreError(
            f"{path}: {int((~done).sum())} of {done.size} blocks are not written yet (an "
            "interrupted extraction): re-run the same `posctx extract` command to finish it, "
            "or use only the finished contexts (complete_only=True; `posctx decompose "
            "--complete-only`)"
        )
    keep = np.concatenate(
        [np.arange(a, b) for a, b, ok in zip(starts, stops, done, strict=True) if ok]
        or [np.array([], int)]
    )
    ds = ds.isel({CONTEXT: keep})
    # Whatever is computed from this dataset carries the record of what it left out.
    ds.attrs[COMPLETE_ONLY_ATTR] = {
        "blocks_used": int(done.sum()),
        "blocks_total": int(done.size),
        "contexts_total": int(stops[-1]) if stops.size else 0,
    }
    return ds


def open_labelled(
    path: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    chunks: Mapping[str, int] | str | None = None,
) -> Any:
    """``xr.open_zarr`` with data variables lazy (dask) and every label read into memory.

    xarray would make the non-index coordinates (``topic``, ``source``, ``layer_name``...)
    dask arrays too; labels are small, are needed to select and concatenate, and object-dtype
    dask arrays cannot even be rechunked, so they are read once here, directly from Zarr
    (no dask compute involved).
    """
    import xarray as xr

    location, kwargs = zarr_location(path, storage_options)
    kwargs.update(consolidated=True, zarr_format=3)
    dask_chunks: Any = dict(chunks) if isinstance(chunks, Mapping) else (chunks or {})
    try:
        ds = xr.open_zarr(location, chunks=dask_chunks, **kwargs)
    except ValueError:  # no consolidated copy (a crash between an attrs write and its refresh)
        kwargs["consolidated"] = False
        ds = xr.open_zarr(location, chunks=dask_chunks, **kwargs)
    labels = [name for name in ds.coords if name not in ds.indexes]
    if labels:
        raw = xr.open_zarr(location, chunks=None, **kwargs)
        ds = ds.assign_coords({name: raw[name].variable.load() for name in labels})
    return ds


__all__ = ["COMPLETE_ONLY_ATTR", "open_hidden", "open_labelled"]
