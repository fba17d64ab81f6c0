"""Blocks and the store's schema: how contexts split into chunks, and what a new store holds."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from posctx.sums import Edges
from posctx.types import (
    BLOCK,
    BLOCK_COMPLETE,
    BLOCK_START,
    CONTEXT,
    DIM,
    EDGE,
    HIDDEN,
    HIDDEN_DIMS,
    HIDDEN_KIND,
    KIND_ATTR,
    LAYER,
    LAYER_NAME,
    OFFSET,
    POSITION,
    PROVENANCE_ATTR,
    SCHEMA_ATTR,
    SCHEMA_VERSION,
    SOURCE,
    STAT_CTX_SUM,
    STAT_CTX_SUMSQ,
    STAT_EDGE,
    STORAGE_DTYPES,
    TOKEN_ID,
    TOPIC,
)

#: Every array of a hidden-state store: its dims, and the dtype kinds it may take ("f" float,
#: "i"/"u" integer, "T"/"U"/"O" strings). :func:`schema_dataset` writes these, and
#: ``posctx validate`` checks a store against them.
SCHEMA: dict[str, tuple[tuple[str, ...], str]] = {
    HIDDEN: (HIDDEN_DIMS, "f"),
    TOKEN_ID: ((CONTEXT, POSITION), "i"),
    BLOCK_COMPLETE: ((BLOCK,), "iu"),
    BLOCK_START: ((BLOCK,), "iu"),
    CONTEXT: ((CONTEXT,), "iu"),
    POSITION: ((POSITION,), "iu"),
    LAYER: ((LAYER,), "iu"),
    DIM: ((DIM,), "iu"),
    LAYER_NAME: ((LAYER,), "TUO"),
    TOPIC: ((CONTEXT,), "TUO"),
    SOURCE: ((CONTEXT,), "TUO"),
    OFFSET: ((CONTEXT,), "iu"),
}
#: Where the schema fixes the dtype itself, not only its kind.
EXACT_DTYPES: dict[str, tuple[str, ...]] = {HIDDEN: STORAGE_DTYPES, TOKEN_ID: ("int32",)}
#: The statistics a store keeps from extraction, per context (optional: stores made before
#: posctx 0.2, or with ``--no-statistics``, have none): dims and dtype kinds, as SCHEMA.
STATISTICS_SCHEMA: dict[str, tuple[tuple[str, ...], str]] = {
    STAT_CTX_SUM: ((CONTEXT, LAYER, DIM), "f"),
    STAT_CTX_SUMSQ: ((CONTEXT, LAYER), "f"),
    STAT_EDGE: ((CONTEXT, EDGE, LAYER, DIM), "f"),
    EDGE: ((EDGE,), "iu"),
}
#: The statistics kept per context, chunked by block like ``hidden``: each array's name and
#: the key of :func:`posctx.sums.block_statistics` that fills it.
PER_CONTEXT_STATISTICS: dict[str, str] = {
    STAT_CTX_SUM: "ctx_sum",
    STAT_CTX_SUMSQ: "ctx_sumsq",
    STAT_EDGE: "edge",
}
#: Coordinates labelled ``0..n-1`` (the layer coordinate holds the chosen hidden-state indices).
RANGE_COORDS = (CONTEXT, POSITION, DIM)
#: Coordinates of non-empty strings: one name per layer, one topic and source per context.
STRING_COORDS = (LAYER_NAME, TOPIC, SOURCE)
#: The labels of each context: its topic, the document it was cut from, and where in it.
CONTEXT_LABELS = (TOPIC, SOURCE, OFFSET)

#: target bytes per ``hidden`` chunk when the user does not choose a chunk size.
DEFAULT_CHUNK_BYTES = 64 * 2**20
#: the largest default chunk: above it, a context's layers are split across chunks. Chunks of
#: 16-128 MB suit local disks and object storage alike (few requests, bounded memory).
MAX_CHUNK_BYTES = 128 * 2**20


@dataclass(frozen=True)
class Block:
    """One unit of extraction work: contexts ``start:stop``, which is one storage chunk."""

    index: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


#: The provenance record's key for the statistics plan.
RECORD_KEY = "statistics"


@dataclass(frozen=True)
class StatisticsPlan:
    """What statistics a store keeps: recorded as ``attrs["posctx"]["statistics"]``.

    Attributes
    ----------
    edges
        The left-out positions.
    moments
        Whether partials hold the core cells' second moment.
    hidden_contexts
        Contexts whose hidden states are stored (the first ones); ``None`` for all.
    topics
        The store's topics, sorted: the rows of its position sums.
    """

    edges: Edges
    moments: bool = False
    hidden_contexts: int | None = None
    topics: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "lead": self.edges.lead,
            "trail": self.edges.trail,
            "length": self.edges.length,
            "moments": self.moments,
            "hidden_contexts": self.hidden_contexts,
            "topics": list(self.topics),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> StatisticsPlan | None:
        """The plan a provenance record names, or ``None`` for a store without statistics."""
        plan = record.get(RECORD_KEY)
        if not plan:
            return None
        return cls(
            Edges(int(plan["length"]), int(plan["lead"]), int(plan["trail"])),
            bool(plan["moments"]),
            plan.get("hidden_contexts"),
            tuple(str(t) for t in plan.get("topics", ())),
        )

    def stores_hidden(self, block: Block) -> slice:
        """The contexts of ``block`` whose hidden states are stored, block-relative."""
        keep = block.size if self.hidden_contexts is None else self.hidden_contexts - block.start
        return slice(0, max(0, min(block.size, keep)))


def default_chunk_contexts(length: int, n_layers: int, n_dims: int, itemsize: int) -> int:
    """Contexts per chunk so that one ``hidden`` chunk of ``n_layers`` layers holds about 64 MB."""
    per_context = max(1, length * n_layers * n_dims * itemsize)
    return max(1, DEFAULT_CHUNK_BYTES // per_context)


def default_chunk_layers(length: int, n_layers: int, n_dims: int, itemsize: int) -> int:
    """Layers per chunk when the user does not choose: all of them, unless one context of
    all layers exceeds :data:`MAX_CHUNK_BYTES`; then as many as fit in
    :data:`DEFAULT_CHUNK_BYTES` (at least one).

    >>> default_chunk_layers(1024, 13, 768, 4)  # GPT-2-small, T=1024, float32: 41 MB a context
    13
    >>> default_chunk_layers(1024, 17, 2048, 4)  # Llama-3.2-1B: 143 MB a context
    8
    >>> default_chunk_layers(1024, 33, 4096, 2)  # an 8B model in float16: 277 MB a context
    8
    """
    per_layer = max(1, length * n_dims * itemsize)
    if per_layer * n_layers <= MAX_CHUNK_BYTES:
        return n_layers
    return max(1, min(n_layers, DEFAULT_CHUNK_BYTES // per_layer))


def plan_blocks(n_contexts: int, chunk_contexts: int) -> list[Block]:
    """Split ``n_contexts`` into chunk-aligned blocks (the last one may be short).

    >>> plan_blocks(10, 4)
    [Block(index=0, start=0, stop=4), Block(index=1, start=4, stop=8), Block(index=2, start=8, stop=10)]
    """
    if chunk_contexts < 1:
        raise ValueError("chunk_contexts must be >= 1")
    return [
        Block(i, start, min(start + chunk_contexts, n_contexts))
        for i, start in enumerate(range(0, n_contexts, chunk_contexts))
    ]


def schema_dataset(
    *,
    hidden: Any,
    token_ids: Any,
    block_complete: Any,
    block_start: npt.ArrayLike,
    context_labels: Mapping[str, npt.ArrayLike],
    layers: Sequence[int],
    layer_names: Sequence[str],
    provenance: Mapping[str, Any],
    attrs: Mapping[str, Any] | None = None,
) -> Any:
    """A hidden-state store's schema around given arrays, as an ``xarray.Dataset``.

    The one definition of what a store holds: ``hidden`` ``(context, position, layer, dim)``,
    ``token_id`` ``(context, position)`` int32 and ``block_complete`` ``(block,)`` uint8;
    int64 index coordinates ``context``, ``position``, ``layer`` and ``dim``; ``topic``,
    ``source`` and ``offset`` along context, ``layer_name`` along layer and ``block_start``
    along block; attrs ``posctx_kind``, ``posctx_schema`` and the provenance record
    ``posctx``. Extraction (:func:`build_dataset`) and the test helpers
    (:func:`posctx.testing.hidden_dataset`) both make their stores here.

    Parameters
    ----------
    hidden, token_ids, block_complete
        The data variables (numpy or dask), shaped as above.
    block_start
        First context of each block.
    context_labels
        The per-context labels ``topic``, ``source`` and ``offset``, by name.
    layers, layer_names
        Hidden-state indices and their names.
    provenance
        The record stored under ``attrs["posctx"]``.
    attrs
        Further attrs (a title, say).
    """
    import xarray as xr

    if set(context_labels) != set(CONTEXT_LABELS):
        raise ValueError(f"context_labels must be {CONTEXT_LABELS}, got {sorted(context_labels)}")
    n_contexts, length, _, n_dims = hidden.shape
    ds = xr.Dataset(
        {
            HIDDEN: (HIDDEN_DIMS, hidden),
            TOKEN_ID: ((CONTEXT, POSITION), token_ids),
            BLOCK_COMPLETE: ((BLOCK,), block_complete),
        },
        coords={
            CONTEXT: np.arange(n_contexts, dtype=np.int64),
            POSITION: np.arange(length, dtype=np.int64),
            LAYER: np.asarray(layers, dtype=np.int64),
            DIM: np.arange(n_dims, dtype=np.int64),
            LAYER_NAME: (LAYER, np.asarray(layer_names, dtype=object)),
            **{
                name: (
                    CONTEXT,
                    np.asarray(values, dtype=object if name in STRING_COORDS else np.int64),
                )
                for name, values in context_labels.items()
            },
            BLOCK_START: (BLOCK, np.asarray(block_start, dtype=np.int64)),
        },
        attrs={
            **(attrs or {}),
            KIND_ATTR: HIDDEN_KIND,
            SCHEMA_ATTR: SCHEMA_VERSION,
            PROVENANCE_ATTR: dict(provenance),
        },
    )
    ds[HIDDEN].attrs["long_name"] = "hidden state"
    ds[TOKEN_ID].attrs["long_name"] = "input token id"
    ds[BLOCK_COMPLETE].attrs["long_name"] = (
        "1 when contexts block_start[b]:block_start[b+1] are written"
    )
    return ds


def statistics_variables(
    *,
    n_contexts: int,
    edges: Edges,
    n_layers: int,
    n_dims: int,
    storage_dtype: str,
    chunk_contexts: int,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Lazy (unwritten) per-context statistics arrays, their coordinates and Zarr encoding.

    Unwritten chunks read as NaN, as an unwritten block of ``hidden`` does.
    """
    import dask.array as da

    shapes = {
        STAT_CTX_SUM: ((n_contexts, n_layers, n_dims), np.float64),
        STAT_CTX_SUMSQ: ((n_contexts, n_layers), np.float64),
        STAT_EDGE: ((n_contexts, len(edges.positions), n_layers, n_dims), np.dtype(storage_dtype)),
    }
    variables = {}
    encoding = {}
    for name, (shape, dtype) in shapes.items():
        chunks = (chunk_contexts, *shape[1:])
        variables[name] = (
            STATISTICS_SCHEMA[name][0],
            da.full(shape, np.nan, dtype=dtype, chunks=chunks),
        )
        encoding[name] = {"chunks": chunks, "compressors": None, "fill_value": np.nan}
    coords = {EDGE: np.asarray(edges.positions, dtype=np.int64)}
    return variables, coords, encoding


def build_dataset(
    *,
    token_ids: np.ndarray,
    topic: np.ndarray,
    source: np.ndarray,
    offset: np.ndarray,
    layers: tuple[int, ...],
    layer_names: tuple[str, ...],
    hidden_size: int,
    storage_dtype: str,
    chunk_contexts: int,
    chunk_layers: int,
    provenance: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    statistics: Edges | None = None,
) -> tuple[Any, dict[str, Any]]:
    """A new store's :func:`schema_dataset`, lazy, plus the Zarr encoding to write it.

    ``hidden`` and ``block_complete`` are lazy zeros: writing the dataset with
    ``compute=False`` creates their metadata without writing a single chunk. Without
    ``provenance``, the record is taken from ``attrs["posctx"]`` (as before posctx 0.2).
    With ``statistics`` (the left-out positions), the per-context statistics arrays of
    :data:`STATISTICS_SCHEMA` are added, unwritten.
    """
    import dask.array as da

    extra = dict(attrs or {})
    record = extra.pop(PROVENANCE_ATTR, {}) if provenance is None else provenance
    n_contexts, length = token_ids.shape
    n_layers = len(layers)
    blocks = plan_blocks(n_contexts, chunk_contexts)
    hidden_chunks = (chunk_contexts, length, chunk_layers or n_layers, hidden_size)
    ds = schema_dataset(
        hidden=da.zeros(
            (n_contexts, length, n_layers, hidden_size),
            dtype=np.dtype(storage_dtype),
            chunks=hidden_chunks,
        ),
        token_ids=np.asarray(token_ids, dtype=np.int32),
        block_complete=da.zeros(len(blocks), dtype=np.uint8, chunks=1),
        block_start=[b.start for b in blocks],
        context_labels={TOPIC: topic, SOURCE: source, OFFSET: offset},
        layers=layers,
        layer_names=layer_names,
        provenance=record,
        attrs=extra,
    )
    encoding = {
        # zstd shrinks hidden states ~8% but makes decoding 4x slower: store them raw.
        HIDDEN: {"chunks": hidden_chunks, "compressors": None},
        TOKEN_ID: {"chunks": (chunk_contexts, length)},
        # One marker per chunk, so concurrent writers never share (and lose) a marker update.
        BLOCK_COMPLETE: {"chunks": (1,), "_FillValue": None},
    }
    if statistics is not None:
        variables, coords, stat_encoding = statistics_variables(
            n_contexts=n_contexts,
            edges=statistics,
            n_layers=n_layers,
            n_dims=hidden_size,
            storage_dtype=storage_dtype,
            chunk_contexts=chunk_contexts,
        )
        ds = ds.assign_coords(coords).assign(variables)
        encoding.update(stat_encoding)
    return ds, encoding


__all__ = [
    "RECORD_KEY",
    "StatisticsPlan",
    "CONTEXT_LABELS",
    "EXACT_DTYPES",
    "PER_CONTEXT_STATISTICS",
    "RANGE_COORDS",
    "SCHEMA",
    "STATISTICS_SCHEMA",
    "STRING_COORDS",
    "DEFAULT_CHUNK_BYTES",
    "MAX_CHUNK_BYTES",
    "default_chunk_layers",
    "Block",
    "default_chunk_contexts",
    "plan_blocks",
    "build_dataset",
    "schema_dataset",
    "statistics_variables",
]
