"""Direct chunk reads of uncompressed, local Zarr v3 arrays, as a dask array.

posctx stores ``hidden`` with the ``bytes`` codec alone (no compressor), so a chunk on disk is
exactly the chunk's little-endian values in C order (Zarr v3 spec, regular chunk grid, default
chunk key encoding). Reading such a file with one ``numpy.fromfile`` call is 2-10x faster than
zarr-python's general decode path, which copies each chunk several times and funnels every
read through one event-loop thread; the decomposition is bound by that read.

:func:`direct_array` returns ``None`` whenever the fast path does not apply exactly (a remote
store, any codec besides ``bytes``, sharding, another key encoding); callers then use zarr.
A chunk that was never written reads as the array's fill value, as zarr would.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_DTYPES = {"float16": "<f2", "float32": "<f4", "float64": "<f8"}


@dataclass(frozen=True)
class DirectSource:
    """Where and how the chunk files of a directly readable array lie."""

    root: str
    sep: str
    shape: tuple[int, ...]
    chunk_shape: tuple[int, ...]
    dtype: str
    fill: Any

    def chunk_path(self, index: tuple[int, ...]) -> str:
        return os.path.join(self.root, self.sep.join(["c", *map(str, index)]))


# dask name -> source of every array made by direct_array, so that the decomposition can
# recognise one and read its chunk files context by context (see file_block_stats).
_SOURCES: dict[str, DirectSource] = {}


def direct_source(x: Any) -> DirectSource | None:
    """The chunk files behind ``x`` if it is, unchanged, an array from :func:`direct_array`."""
    return _SOURCES.get(getattr(x, "name", ""))


def file_block_stats(
    source: DirectSource, index: tuple[int, ...], rows: tuple[int, ...], start: int, stop: int
) -> dict[str, Any]:
    """:func:`~posctx.decomposition.kernels.block_stats` of rows ``rows`` of one chunk file,
    positions ``start:stop``, read one context slab at a time into a reused buffer.

    The chunk never exists in memory as a whole: each context's ``(T, l, d)`` slab is read
    (``readinto``, no allocation) and folded into the sums while it is still in cache.
    """
    from posctx.decomposition.kernels import ContextSums

    slab_shape = source.chunk_shape[1:]
    n_layers = min(source.chunk_shape[2], source.shape[2] - index[2] * source.chunk_shape[2])
    sums = ContextSums(len(rows), stop - start, n_layers, source.shape[3])
    path = source.chunk_path(index)
    if not os.path.exists(path):
        slab = np.full(slab_shape, source.fill, dtype=source.dtype)
        for i in range(len(rows)):
            sums.add(i, slab[start:stop, :n_layers])
        return sums.result()
    raw = np.empty(slab_shape, dtype=source.dtype)
    with open(path, "rb", buffering=0) as f:
        for i, row in enumerate(rows):
            f.seek(row * raw.nbytes)
            if f.readinto(raw) != raw.nbytes:  # type: ignore[arg-type]  # ndarray is a writable buffer
                raise OSError(f"{path} is shorter than a chunk of {source.chunk_shape}")
            sums.add(i, raw[start:stop, :n_layers])
    return sums.result()


def _fill(value: Any, dtype: np.dtype[Any]) -> Any:
    if isinstance(value, str):  # "NaN", "Infinity", "-Infinity" per the v3 spec
        return {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}[value]
    return dtype.type(value)


def read_chunk(
    path: str, chunk_shape: tuple[int, ...], bounds: tuple[int, ...], dtype: str, fill: Any
) -> np.ndarray:
    """One chunk file as an array, cut to ``bounds`` (edge chunks are stored full size)."""
    if os.path.exists(path):
        data = np.fromfile(path, dtype=dtype)
        if data.size != int(np.prod(chunk_shape)):
            raise OSError(f"{path} holds {data.size} values, expected a chunk of {chunk_shape}")
        block = data.reshape(chunk_shape)
    else:
        block = np.full(chunk_shape, fill, dtype=dtype)
    if bounds != chunk_shape:
        block = block[tuple(slice(0, b) for b in bounds)]
    return block.astype(np.dtype(dtype).newbyteorder("="), copy=False)


def direct_array(array_dir: str | os.PathLike[str], name: str | None = None) -> Any:
    """A dask array reading ``array_dir``'s chunk files directly, or ``None`` if unsupported.

    Examples
    --------
    >>> import tempfile, numpy as np, zarr
    >>> path = tempfile.mkdtemp() + "/a"
    >>> z = zarr.create_array(path, shape=(5, 3), chunks=(2, 3), dtype="f4", compressors=None,
    ...                       fill_value=np.nan)
    >>> z[:4] = np.arange(12, dtype="f4").reshape(4, 3)
    >>> x = direct_array(path)
    >>> x.chunks
    ((2, 2, 1), (3,))
    >>> x.compute()[3:].tolist()
    [[9.0, 10.0, 11.0], [nan, nan, nan]]
    """
    import dask.array as da
    from dask.base import tokenize

    root = Path(array_dir)
    if "://" in str(array_dir) and not str(array_dir).startswith("file://"):
        return None
    root = Path(str(root).removeprefix("file://"))
    try:
        meta = json.loads((root / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    codecs = meta.get("codecs", [])
    if (
        meta.get("zarr_format") != 3
        or meta.get("node_type") != "array"
        or meta.get("data_type") not in _DTYPES
        or meta.get("chunk_grid", {}).get("name") != "regular"
        or meta.get("chunk_key_encoding", {}).get("name") != "default"
        or meta.get("storage_transformers")
        or len(codecs) != 1
        or codecs[0].get("name") != "bytes"
    ):
        return None
    endian = codecs[0].get("configuration", {}).get("endian", "little")
    dtype = _DTYPES[meta["data_type"]]
    if endian == "big":
        dtype = dtype.replace("<", ">")
    sep = meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
    shape = tuple(meta["shape"])
    chunk_shape = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
    fill = _fill(meta.get("fill_value"), np.dtype(dtype))
    grid = [range(0, n, c) for n, c in zip(shape, chunk_shape, strict=True)]
    chunks = tuple(
        tuple(min(c, n - s) for s in g) for g, n, c in zip(grid, shape, chunk_shape, strict=True)
    )
    stat = (root / "zarr.json").stat()
    reader = functools.partial(
        _read_block,
        root=str(root),
        sep=sep,
        chunk_shape=chunk_shape,
        chunks=chunks,
        dtype=dtype,
        fill=fill,
    )
    name = name or f"posctx-direct-read-{tokenize(str(root.resolve()), stat.st_mtime_ns, shape)}"
    _SOURCES[name] = DirectSource(str(root), sep, shape, chunk_shape, dtype, fill)
    return da.map_blocks(
        reader,
        chunks=chunks,
        dtype=np.dtype(dtype).newbyteorder("="),
        name=name,
        meta=np.empty((0,) * len(shape), dtype=np.dtype(dtype).newbyteorder("=")),
    )


def _read_block(
    *,
    root: str,
    sep: str,
    chunk_shape: tuple[int, ...],
    chunks: tuple[tuple[int, ...], ...],
    dtype: str,
    fill: Any,
    block_id: tuple[int, ...],
) -> np.ndarray:
    bounds = tuple(chunks[d][i] for d, i in enumerate(block_id))
    key = sep.join(["c", *map(str, block_id)])
    return read_chunk(os.path.join(root, key), chunk_shape, bounds, dtype, fill)


__all__ = ["DirectSource", "direct_array", "direct_source", "file_block_stats", "read_chunk"]
