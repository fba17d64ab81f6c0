"""Thin xarray layer over the dask decomposition: labels in, labelled lazy results out.

All logic about numbers lives in :mod:`posctx.decomposition.kernels` and
:mod:`posctx.decomposition.graph`; this module selects by label, checks the schema, attaches
coordinates and provenance, and reads/writes Zarr.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

import dask.array as da
import numpy as np
import numpy.typing as npt
import xarray as xr

from posctx._version import version as _posctx_version
from posctx.decomposition.graph import OUTPUT_NAMES, decompose_arrays
from posctx.errors import PosctxError, StoreError
from posctx.store import writing_consolidated
from posctx.types import CONTEXT, DIM, HIDDEN, HIDDEN_DIMS, LAYER, POSITION, PathLike

#: attrs key of the JSON record that says how a decomposition was made.
DECOMPOSITION_ATTR = "posctx_decomposition"

#: attrs key saying what kind of posctx store a dataset is, and the two kinds involved here.
KIND_ATTR = "posctx_kind"
HIDDEN_KIND = "hidden"
DECOMPOSITION_KIND = "decomposition"

#: Dimensions of each output variable.
OUTPUT_DIMS: dict[str, tuple[str, ...]] = {
    "mu": (LAYER, DIM),
    "pos": (POSITION, LAYER, DIM),
    "ctx": (CONTEXT, LAYER, DIM),
    "ss_total": (LAYER,),
    "ss_pos": (LAYER,),
    "ss_ctx": (LAYER,),
    "ss_resid": (LAYER,),
}

#: A label selection: a slice, labels, a boolean mask, a single label, or None for all.
Selection = slice | Sequence[int] | npt.NDArray[Any] | int | None


def _hidden(ds: xr.Dataset) -> xr.DataArray:
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


def _select(h: xr.DataArray, dim: str, selection: Selection) -> xr.DataArray:
    """Label-select ``selection`` along ``dim`` without dropping the dimension."""
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
        raise PosctxError(f"{dim} selection {selection!r} is empty (the store's {dim}s: {held})")
    if not out.indexes[dim].is_unique:
        raise PosctxError(f"{dim} selection repeats labels; each {dim} may be used once")
    return out


def _as_dask(h: xr.DataArray) -> xr.DataArray:
    if isinstance(h.data, da.Array):
        return h
    # In-memory input: chunk along context only, so the graph still has parallel tasks.
    return h.chunk({CONTEXT: "auto", POSITION: -1, LAYER: -1, DIM: -1})


def decompose(
    ds: xr.Dataset,
    *,
    positions: Selection = None,
    contexts: Selection = None,
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
    float64 once for all of them.

    Parameters
    ----------
    ds
        A hidden-state store (``xr.open_zarr(path)``): data variable ``hidden`` with dims
        ``(context, position, layer, dim)``, indexed by label along each.
    positions, contexts
        Label selections passed to ``.sel``: a slice (``positions=slice(1, None)`` drops the
        first position, as the paper does), a list/array of labels, or a boolean mask.
        ``None`` keeps all.

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
    h = _hidden(ds)
    h = _select(h, POSITION, positions)
    h = _select(h, CONTEXT, contexts)
    h = _as_dask(h)
    arrays = decompose_arrays(h.data)

    n_contexts, length = h.sizes[CONTEXT], h.sizes[POSITION]
    position_labels = h[POSITION].values
    source = ds.encoding.get("source")
    record = {
        "positions": [position_labels[0].item(), position_labels[-1].item()],
        "n_positions": int(length),
        "n_contexts": int(n_contexts),
        "source_store": None if source is None else str(source),
        "posctx_version": _posctx_version(),
    }
    attrs = dict(ds.attrs)
    # The input's attrs are kept as the record of where the states came from, but this is no
    # longer a hidden-state store: say so, or store readers would take it for one.
    attrs[KIND_ATTR] = DECOMPOSITION_KIND
    attrs[DECOMPOSITION_ATTR] = json.dumps(record, sort_keys=True)
    return xr.Dataset(
        {name: (OUTPUT_DIMS[name], arrays[name]) for name in OUTPUT_NAMES},
        coords=h.coords,
        attrs=attrs,
    )


def _indexer(source: xr.DataArray, dec: xr.Dataset, dim: str) -> slice | npt.NDArray[np.intp]:
    """Positional indexer of ``dec``'s ``dim`` labels in ``source``; a slice when contiguous."""
    wanted = dec.indexes[dim]
    found = np.asarray(source.indexes[dim].get_indexer(wanted), dtype=np.intp)
    if (found < 0).any():
        missing = list(wanted[found < 0][:5])
        raise PosctxError(
            f"the decomposition has {dim} labels the dataset lacks (e.g. {missing}); "
            "pass the store the decomposition was made from"
        )
    if found.size and np.array_equal(found, np.arange(found[0], found[0] + found.size)):
        # A slice keeps dask's getitem a plain view of whole chunks, no fancy indexing.
        return slice(int(found[0]), int(found[0]) + found.size)
    return found


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
    h = _hidden(ds)
    h = h.isel({dim: _indexer(h, dec, dim) for dim in HIDDEN_DIMS})
    h = _as_dask(h)
    # Arithmetic on bare Variables: xarray would otherwise compare (and so compute) the
    # non-index coordinates such as `topic` of the operands before keeping or dropping them.
    resid = (
        h.variable.astype(np.float64)
        - dec["mu"].variable
        - dec["pos"].variable
        - dec["ctx"].variable
    )
    return xr.DataArray(resid.transpose(*HIDDEN_DIMS), coords=h.coords, name="resid")


def _uniform_chunks(dec: xr.Dataset) -> dict[Hashable, int]:
    """Per dim, the largest dask chunk of any variable: a chunking Zarr can store."""
    sizes: dict[Hashable, int] = {}
    for var in dec.variables.values():
        if isinstance(var.data, da.Array):
            for dim, chunks in zip(var.dims, var.data.chunks, strict=True):
                sizes[dim] = max(sizes.get(dim, 1), *chunks)
    return sizes


def _storage_kwargs(storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    # Local paths must not receive storage_options (zarr refuses them without fsspec).
    return {"storage_options": dict(storage_options)} if storage_options else {}


def _refuse_overwriting_hidden(target: str, storage_options: Mapping[str, Any] | None) -> None:
    """Raise if ``target`` holds a hidden-state store: ``mode='w'`` would delete it."""
    import zarr

    try:
        group = zarr.open_group(target, mode="r", **_storage_kwargs(storage_options))
    except (FileNotFoundError, ValueError):
        return  # nothing there, or not a Zarr group: nothing of ours to lose
    if group.attrs.get(KIND_ATTR) == HIDDEN_KIND:
        raise StoreError(
            f"{target} is a hidden-state store; write the decomposition somewhere else"
        )


def write_decomposition(
    dec: xr.Dataset,
    path: PathLike,
    *,
    mode: Literal["w", "w-"] = "w-",
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write a decomposition to a Zarr v3 store, computing all variables in one pass.

    All variables go through one ``to_zarr`` call, so the hidden states behind a lazy
    ``dec`` are read once. Irregular dask chunks (from a context selection) are made
    uniform first, as Zarr requires. Everything is stored as float64.

    Parameters
    ----------
    dec
        From :func:`decompose` (lazy) or :func:`open_decomposition`.
    path
        Local path or fsspec URL of the new store.
    mode
        ``"w-"`` refuses an existing store; ``"w"`` overwrites it (never a hidden-state
        store).
    storage_options
        Passed to fsspec for URLs (credentials, endpoint).

    Raises
    ------
    StoreError
        If a store exists at ``path`` and ``mode="w-"``, or ``path`` holds a hidden-state
        store.

    Examples
    --------
    >>> import os, tempfile
    >>> from posctx.testing import planted_hidden
    >>> ds, _ = planted_hidden(10, 5, 2, 3)
    >>> path = os.path.join(tempfile.mkdtemp(), "dec.zarr")
    >>> write_decomposition(decompose(ds), path)
    >>> sorted(open_decomposition(path).data_vars)
    ['ctx', 'mu', 'pos', 'ss_ctx', 'ss_pos', 'ss_resid', 'ss_total']
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
    out = out.chunk(_uniform_chunks(out))
    try:
        with writing_consolidated():
            out.to_zarr(
                target, mode=mode, zarr_format=3, consolidated=True, **_storage_kwargs(storage_options)
            )
    except FileExistsError as exc:
        raise StoreError(
            f"{target} already holds data: remove it, or overwrite it with --overwrite "
            "(mode='w' in Python)"
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
        dec: xr.Dataset = xr.open_zarr(
            target, consolidated=True, **_storage_kwargs(storage_options)
        )
    except FileNotFoundError as exc:
        raise StoreError(f"no decomposition store at {target}: {exc}") from exc
    missing = [name for name in OUTPUT_NAMES if name not in dec.data_vars]
    if missing or DECOMPOSITION_ATTR not in dec.attrs:
        raise StoreError(
            f"{target} is not a posctx decomposition store (missing: "
            f"{missing or [DECOMPOSITION_ATTR]}); write one with write_decomposition"
        )
    return dec


__all__ = [
    "DECOMPOSITION_ATTR",
    "DECOMPOSITION_KIND",
    "HIDDEN_KIND",
    "KIND_ATTR",
    "OUTPUT_DIMS",
    "decompose",
    "open_decomposition",
    "residual",
    "write_decomposition",
]
