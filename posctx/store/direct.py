"""Direct chunk reads of uncompressed, local Zarr v3 arrays, as a dask array.

posctx stores ``hidden`` with the ``bytes`` codec alone (no compressor), so a chunk on disk is
exactly the chunk's little-endian values in C order (Zarr v3 spec, regular chunk grid, default
chunk key encoding). Reading such a file with one ``numpy.fromfile`` call is 2-10x faster than
zarr-python's general decode path, which copies each chunk several times and funnels every
read through one event-loop thread; the decomposition is bound by that read.

:func:`direct_array` returns ``None`` whenever the fast path does not apply exactly (a remote
store, any codec besides ``bytes``, sharding, another key encoding); callers then use zarr.
A chunk that was never written reads as the array's fill value, as zarr would, except in the
``required`` rows: there a missing chunk file raises :class:`~posctx.errors.StoreError`.
``posctx.open_hidden`` requires the rows of the blocks it keeps (having checked at open that
their files are there), so a file deleted while the store is read is never averaged as NaN.

The array's graph carries its :class:`DirectSource` (:func:`direct_source` finds it there), so
a consumer that wants the files themselves (the decomposition reads them one context at a
time) gets them from the array it was given, with nothing kept in a global.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from posctx.errors import StoreError
from posctx.store.integrity import chunk_keys

#: Zarr v3 data types the direct reader understands, as little-endian numpy dtypes.
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
    #: Chunk indices along the first axis whose files must exist: a missing one raises
    #: ``StoreError``; any other missing chunk reads as ``fill`` (zarr's rule).
    required: frozenset[int] = frozenset()

    def chunk_path(self, index: tuple[int, ...]) -> str:
        """The file of chunk ``index`` (default chunk key encoding)."""
        return os.path.join(self.root, self.sep.join(["c", *map(str, index)]))

    def chunk_bounds(self, index: tuple[int, ...]) -> tuple[int, ...]:
        """The part of chunk ``index`` inside the array (edge chunks are stored full size)."""
        return tuple(
            min(c, n - i * c) for i, n, c in zip(index, self.shape, self.chunk_shape, strict=True)
        )

    def read(self, index: tuple[int, ...]) -> np.ndarray:
        """Chunk ``index`` as an array, cut to the array's bounds."""
        path = self.chunk_path(index)
        if index[0] in self.required and not os.path.exists(path):
            raise StoreError(self.missing_message(path))
        return read_chunk(path, self.chunk_shape, self.chunk_bounds(index), self.dtype, self.fill)

    def missing_message(self, path: str) -> str:
        """The refusal of a missing chunk file in the ``required`` rows."""
        store = os.path.dirname(self.root)
        return (
            f"chunk file {path} is missing although its block is marked written (deleted "
            f"after the store was opened?): the store is damaged; run `posctx validate {store}` "
            "for details, and restore the file or re-extract its block"
        )

    def rows(self, index: tuple[int, ...], rows: tuple[int, ...]) -> Iterator[np.ndarray]:
        """Rows ``rows`` (along the first axis) of chunk ``index``, one at a time.

        Each row is read with ``readinto`` into one reused buffer, so the chunk never exists
        in memory as a whole and nothing is allocated per row: consume each row before asking
        for the next. Rows are full size (an edge chunk's padding included); a chunk that was
        never written yields rows of the fill value (``StoreError`` if it is ``required``).

        Examples
        --------
        >>> import tempfile, numpy as np, zarr
        >>> path = tempfile.mkdtemp() + "/a"
        >>> z = zarr.create_array(path, shape=(4, 3), chunks=(2, 3), dtype="f4",
        ...                       compressors=None, fill_value=0)
        >>> z[:] = np.arange(12, dtype="f4").reshape(4, 3)
        >>> source = direct_source(direct_array(path))
        >>> [row.tolist() for row in source.rows((1, 0), (1, 0))]
        [[9.0, 10.0, 11.0], [6.0, 7.0, 8.0]]
        """
        row_shape = self.chunk_shape[1:]
        path = self.chunk_path(index)
        if not os.path.exists(path):
            if index[0] in self.required:
                raise StoreError(self.missing_message(path))
            blank = np.full(row_shape, self.fill, dtype=self.dtype)
            for _ in rows:
                yield blank
            return
        raw = np.empty(row_shape, dtype=self.dtype)
        with open(path, "rb", buffering=0) as f:
            for row in rows:
                f.seek(row * raw.nbytes)
                if f.readinto(raw) != raw.nbytes:  # type: ignore[arg-type]  # ndarray is a writable buffer
                    raise OSError(f"{path} is shorter than a chunk of {self.chunk_shape}")
                yield raw


class DirectReadLayer(MaterializedLayer):
    """The graph layer of a :func:`direct_array`: its tasks, and the files they read."""

    def __init__(self, mapping: dict[Any, Any], source: DirectSource) -> None:
        super().__init__(mapping)
        self.source = source


def direct_source(x: Any) -> DirectSource | None:
    """The chunk files behind ``x`` if it is, unchanged, an array from :func:`direct_array`.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> direct_source(da.zeros(3)) is None
    True
    """
    graph = getattr(x, "dask", None)
    layer = getattr(graph, "layers", {}).get(getattr(x, "name", None))
    return layer.source if isinstance(layer, DirectReadLayer) else None


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
        chunk = data.reshape(chunk_shape)
    else:
        chunk = np.full(chunk_shape, fill, dtype=dtype)
    if bounds != chunk_shape:
        chunk = chunk[tuple(slice(0, b) for b in bounds)]
    return chunk.astype(np.dtype(dtype).newbyteorder("="), copy=False)


def open_source(array_dir: str | os.PathLike[str]) -> DirectSource | None:
    """The :class:`DirectSource` of the Zarr v3 array at ``array_dir``, or ``None`` if unsupported."""
    if "://" in str(array_dir) and not str(array_dir).startswith("file://"):
        return None
    root = Path(str(array_dir).removeprefix("file://"))
    try:
        meta = json.loads((root / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    codecs = meta.get("codecs", [])
    keys = chunk_keys(meta)
    if (
        meta.get("zarr_format") != 3
        or meta.get("node_type") != "array"
        or meta.get("data_type") not in _DTYPES
        or meta.get("chunk_grid", {}).get("name") != "regular"
        or keys is None
        or keys.prefix != "c"  # the default encoding, not v2
        or meta.get("storage_transformers")
        or len(codecs) != 1
        or codecs[0].get("name") != "bytes"
    ):
        return None
    endian = codecs[0].get("configuration", {}).get("endian", "little")
    dtype = _DTYPES[meta["data_type"]]
    if endian == "big":
        dtype = dtype.replace("<", ">")
    return DirectSource(
        root=str(root),
        sep=keys.sep,
        shape=tuple(meta["shape"]),
        chunk_shape=tuple(meta["chunk_grid"]["configuration"]["chunk_shape"]),
        dtype=dtype,
        fill=_fill(meta.get("fill_value"), np.dtype(dtype)),
    )


def direct_array(
    array_dir: str | os.PathLike[str],
    name: str | None = None,
    *,
    required: Iterable[tuple[int, int]] = (),
) -> Any:
    """A dask array reading ``array_dir``'s chunk files directly, or ``None`` if unsupported.

    A chunk file that is not there reads as the fill value, as with zarr, unless it holds
    rows of the ``required`` ranges ``(start, stop)`` along the first axis (the contexts of
    blocks marked written): reading it then raises :class:`~posctx.errors.StoreError`.

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
    >>> direct_source(x).chunk_shape
    (2, 3)
    """
    import dask.array as da
    from dask.base import tokenize

    source = open_source(array_dir)
    if source is None:
        return None
    step = source.chunk_shape[0]
    rows = frozenset(
        i
        for start, stop in required
        if stop > start
        for i in range(start // step, (stop - 1) // step + 1)
    )
    if rows:
        source = replace(source, required=rows)
    grid = [range(0, n, c) for n, c in zip(source.shape, source.chunk_shape, strict=True)]
    chunks = tuple(
        tuple(min(c, n - s) for s in g)
        for g, n, c in zip(grid, source.shape, source.chunk_shape, strict=True)
    )
    stat = (Path(source.root) / "zarr.json").stat()
    name = name or (
        f"posctx-direct-read-{tokenize(str(Path(source.root).resolve()), stat.st_mtime_ns, source)}"
    )
    layer = DirectReadLayer(
        {(name, *index): (source.read, index) for index in np.ndindex(*map(len, chunks))},
        source,
    )
    dtype = np.dtype(source.dtype).newbyteorder("=")
    graph = HighLevelGraph({name: layer}, {name: set()})
    return da.Array(graph, name, chunks, dtype=dtype, meta=np.empty((0,) * len(chunks), dtype))


__all__ = [
    "DirectReadLayer",
    "DirectSource",
    "direct_array",
    "direct_source",
    "open_source",
    "read_chunk",
]
