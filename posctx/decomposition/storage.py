"""Writing a decomposition to Zarr (refusing to overwrite a hidden-state store) and opening it."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any, Literal

import dask.array as da
import xarray as xr

from posctx.decomposition.api import (
    DECOMPOSITION_ATTR,
    DECOMPOSITION_KIND,
    HIDDEN_KIND,
    KIND_ATTR,
    finalize,
)
from posctx.decomposition.graph import OUTPUT_NAMES, STATISTIC_NAMES
from posctx.errors import PosctxError, StoreError
from posctx.store import open_labelled, writing_consolidated, zarr_location
from posctx.store.location import exists
from posctx.types import CONTEXT, DIM, LAYER, POSITION, PathLike

#: Codecs of the stored outputs: none, as for the hidden states. zarr's default (``"auto"``,
#: zstd) shrank a decomposition store by 17% and made writing ``ctx_sum`` and ``ctx`` (two
#: C x L x D float64 arrays) its slowest step (``bench/decompose.py``, route posctx-prior).
OUTPUT_COMPRESSORS: Any = None

#: Bytes per stored chunk of the per-context outputs (``ctx``, ``ctx_sum``) at least.
CONTEXT_CHUNK_BYTES = 4 * 2**20


def _uniform_chunks(dec: xr.Dataset) -> dict[Hashable, int]:
    """Per dim, the largest dask chunk of any variable: a chunking Zarr can store.

    Along ``context`` whole chunks are merged up to :data:`CONTEXT_CHUNK_BYTES`: one hidden
    chunk's ``ctx`` rows are ~1 MB, and reading and writing zarr chunks that small cost
    more than the arithmetic on them. 4 MB took a 4 GB store's decomposition from 1.0 s to
    0.75 s for 12 MB more peak memory; 16 MB was no faster and took 130 MB more.
    """
    sizes: dict[Hashable, int] = {}
    context_row_bytes = 1  # bytes of one context's row in the widest per-context variable
    for var in dec.variables.values():
        if isinstance(var.data, da.Array):
            for dim, chunks in zip(var.dims, var.data.chunks, strict=True):
                sizes[dim] = max(sizes.get(dim, 1), *chunks)
            if CONTEXT in var.dims:
                row = var.dtype.itemsize * var.size // max(var.sizes[CONTEXT], 1)
                context_row_bytes = max(context_row_bytes, row)
    if CONTEXT in sizes:
        per_chunk = sizes[CONTEXT] * context_row_bytes
        merged = sizes[CONTEXT] * max(1, CONTEXT_CHUNK_BYTES // per_chunk)
        sizes[CONTEXT] = min(merged, dec.sizes[CONTEXT])
    return sizes


def _refuse_overwriting_hidden(target: str, storage_options: Mapping[str, Any] | None) -> None:
    """Raise if ``target`` holds anything but a decomposition: ``mode='w'`` would delete it."""
    import zarr

    location, options = zarr_location(target, storage_options)
    try:
        group = zarr.open_group(location, mode="r", **options)
    except (FileNotFoundError, ValueError):
        if exists(target, storage_options):  # files of the user's: never ours to delete
            raise StoreError(
                f"{target} exists and is not a posctx decomposition store: choose another --out "
                "(--overwrite replaces decomposition stores only), or delete it yourself"
            ) from None
        return  # nothing there
    if group.attrs.get(KIND_ATTR) == HIDDEN_KIND:
        raise StoreError(
            f"{target} is a hidden-state store; write the decomposition somewhere else"
        )
    if group.attrs.get(KIND_ATTR) != DECOMPOSITION_KIND and DECOMPOSITION_ATTR not in group.attrs:
        raise StoreError(
            f"{target} is a Zarr store but not a posctx decomposition: choose another --out "
            "(--overwrite replaces decomposition stores only), or delete it yourself"
        )


#: Outputs a decomposition store does not hold but derives when opened (from its sums).
DERIVED = ("ctx",)


def derived_ctx(dec: xr.Dataset) -> xr.DataArray:
    """``ctx = ctx_sum / T - mu``, lazily: the same float64 operations as finalize.

    Examples
    --------
    >>> from posctx.decomposition import decompose
    >>> from posctx.testing import planted_hidden
    >>> dec = decompose(planted_hidden(6, 4, 2, 3)[0]).compute()
    >>> bool((derived_ctx(dec) == dec.ctx).all())
    True
    """
    ctx_sum = dec["ctx_sum"]
    data = ctx_sum.data / dec.sizes[POSITION] - dec["mu"].transpose(LAYER, DIM).data
    ctx: xr.DataArray = ctx_sum.copy(data=data)
    ctx.attrs = {"description": "ctx_sum / n_positions - mu (derived when opened)"}
    return ctx


def write_decomposition(
    dec: xr.Dataset,
    path: PathLike,
    *,
    mode: Literal["w", "w-"] = "w-",
    storage_options: Mapping[str, Any] | None = None,
    one_pass: bool = False,
) -> None:
    """Write a decomposition and its sufficient statistics to a Zarr v3 store.

    The hidden states behind a lazy ``dec`` are read once, in a first phase that writes the
    statistics (``ctx_sum`` chunk by chunk, so memory stays bounded by the chunk size
    whatever the number of contexts); a second phase derives ``mu``, ``pos``, ``ctx`` and the
    sums of squares from the stored statistics (2/T of the hidden bytes). Irregular dask
    chunks (from a context selection) are made uniform first, as Zarr requires. Everything
    is stored as float64.

    Parameters
    ----------
    dec
        From :func:`decompose` (lazy) or :func:`open_decomposition`.
    path
        Local path or fsspec URL of the new store.
    mode
        ``"w-"`` refuses an existing store; ``"w"`` overwrites a decomposition store (and
        nothing else: never a hidden-state store or a folder of other files).
    storage_options
        Passed to fsspec for URLs (credentials, endpoint).
    one_pass
        Write every variable in one pass. Right when the sums are stored already (the
        statistics kept during extraction): ``mu`` then needs no pass over ``ctx_sum``, so
        ``ctx`` streams out with it. From hidden states, the two phases above keep memory
        bounded.

    Raises
    ------
    StoreError
        If a store exists at ``path`` and ``mode="w-"``, or ``path`` holds anything but a
        decomposition store (a hidden-state store, another Zarr store, a user's files), or
        cannot be written.

    Examples
    --------
    >>> import os, tempfile
    >>> from posctx.decomposition import decompose, open_decomposition, write_decomposition
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(10, 5, 2, 3)
    >>> path = os.path.join(tempfile.mkdtemp(), "dec.zarr")
    >>> write_decomposition(decompose(ds), path)
    >>> sorted(open_decomposition(path).data_vars)
    ['ctx', 'ctx_sum', 'mu', 'pos', 'pos_sum', 'ss_ctx', 'ss_pos', 'ss_resid', 'ss_total', 'sumsq']
    """
    if mode not in ("w", "w-"):
        raise PosctxError(
            f"mode must be 'w-' (refuse to overwrite) or 'w' (overwrite), got {mode!r}"
        )
    target = os.fspath(path)
    _refuse_overwriting_hidden(target, storage_options)
    out = dec.copy(deep=False)
    for var in out.variables.values():
        # Encodings inherited from the hidden-state store (chunk shapes, codecs) describe
        # other arrays; let xarray derive fresh ones from the dask chunks.
        var.encoding = {}
    stats = [name for name in STATISTIC_NAMES if name in out.data_vars]
    if "ctx_sum" in stats:
        # ctx is ctx_sum / T - mu: derived when opened (open_decomposition) rather than
        # written, which halves the per-context bytes (2 x C x L x d x 8) a decomposition writes.
        out = out.drop_vars([name for name in DERIVED if name in out.data_vars])
    two_phase = {"pos_sum", "ctx_sum", "sumsq"} <= set(stats) and any(
        isinstance(out[name].data, da.Array) for name in stats
    )
    if one_pass or not two_phase:
        _to_zarr(out, target, mode, storage_options)
        return
    # Phase 1, the one pass over the hidden states: only the statistics, so `ctx_sum` streams
    # to disk chunk by chunk (ctx itself needs mu, which needs every chunk). Phase 2 reads the
    # stored sums (2/T of the hidden bytes) and writes the results next to them.
    _to_zarr(out[stats], target, mode, storage_options)
    stored = open_labelled(target, storage_options=storage_options)
    final = finalize(stored)
    results = [name for name in final.data_vars if name not in (*stats, *DERIVED)]
    written = final[results]
    _to_zarr(written.drop_vars(list(written.coords)), target, "a", storage_options)


def _to_zarr(
    ds: xr.Dataset, target: str, mode: str, storage_options: Mapping[str, Any] | None
) -> None:
    sizes = _uniform_chunks(ds)
    ds = ds.copy()
    for name, var in ds.data_vars.items():
        # Data only: chunking coordinates too would turn string labels into object-dtype dask
        # arrays that xarray must load to choose a Zarr dtype.
        if isinstance(var.data, da.Array):
            ds[name] = var.copy(
                data=var.data.rechunk({i: sizes[d] for i, d in enumerate(var.dims)})
            )
    encoding = {name: {"compressors": OUTPUT_COMPRESSORS} for name in ds.data_vars}
    location, options = zarr_location(target, storage_options)
    try:
        with writing_consolidated():
            ds.to_zarr(  # type: ignore[call-overload]  # mode is one of xarray's literals
                location, mode=mode, zarr_format=3, consolidated=True, encoding=encoding, **options
            )
    except FileExistsError as exc:
        raise StoreError(
            f"{target} already holds data: remove it, or overwrite it with --overwrite "
            "(mode='w' in Python)"
        ) from exc
    except OSError as exc:  # a read-only or full disk, a denied bucket...
        raise StoreError(
            f"cannot write {target} ({type(exc).__name__}: {exc}): choose a writable --out "
            "location, or fix the storage options"
        ) from exc


def open_decomposition(
    path: PathLike, *, storage_options: Mapping[str, Any] | None = None
) -> xr.Dataset:
    """Open a store written by :func:`write_decomposition`, lazily.

    Parameters
    ----------
    path
        Local path or fsspec URL of the store.
    storage_options
        Passed to fsspec for URLs (credentials, endpoint).

    Raises
    ------
    StoreError
        If ``path`` holds no store or a store that is not a decomposition.

    Examples
    --------
    >>> import os, tempfile
    >>> from posctx.decomposition import decompose, open_decomposition, write_decomposition
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(10, 5, 2, 3)
    >>> path = os.path.join(tempfile.mkdtemp(), "dec.zarr")
    >>> write_decomposition(decompose(ds, positions=slice(1, None)), path)
    >>> dec = open_decomposition(path)
    >>> dec.position.values.tolist()
    [1, 2, 3, 4]
    >>> import json
    >>> json.loads(dec.attrs["posctx_decomposition"])["positions"]
    [1, 4]
    """
    target = os.fspath(path)
    try:
        dec: xr.Dataset = open_labelled(target, storage_options=storage_options)
    except FileNotFoundError as exc:
        raise StoreError(
            f"no decomposition store at {target} ({exc}): check the path, or make one with "
            f"`posctx decompose STORE --out {target}`"
        ) from exc
    if dec.attrs.get(KIND_ATTR) == HIDDEN_KIND:
        raise StoreError(
            f"{target} is a hidden-state store, not a posctx decomposition store: run "
            f"`posctx decompose {target} --out DECOMPOSITION` (write_decomposition in Python) "
            "and pass DECOMPOSITION"
        )
    if "ctx" not in dec.data_vars and {"ctx_sum", "mu"} <= set(dec.data_vars):
        dec["ctx"] = derived_ctx(dec)
    missing = [name for name in OUTPUT_NAMES if name not in dec.data_vars]
    if missing or DECOMPOSITION_ATTR not in dec.attrs:
        raise StoreError(
            f"{target} is not a posctx decomposition store (missing: "
            f"{missing or [DECOMPOSITION_ATTR]}): pass a store written by `posctx decompose` "
            "(write_decomposition in Python)"
        )
    return dec


__all__ = [
    "DERIVED",
    "derived_ctx",
    "open_decomposition",
    "write_decomposition",
]
