"""The hidden-state store: schema, creation, block writes, completeness and opening.

A store is a Zarr v3 group written through xarray (see ``docs/store.md``). It is created
once with every array preallocated and every coordinate written; ``hidden`` is then filled
block by block (one block = one chunk of contexts), and each finished block is recorded in
``block_complete``, an array with one element per chunk so that concurrent writers never
share a marker chunk. An unfinished block reads as NaN and is marked 0: a crash can leave
work to redo, never a silent hole.

Modules: ``layout`` (blocks and schema), ``location`` (paths, URLs, opening the Zarr group),
``provenance`` (the attrs record), ``create`` (creation and growth), ``blocks`` (block writes,
markers, crash leftovers), ``integrity`` (chunk files missing from blocks marked written),
``direct`` (direct chunk reads), ``statistics`` (the statistics kept during extraction),
``reading`` (opening as xarray) and ``info`` (what a store holds, as plain data).
"""

from posctx.store.blocks import BlockWriter, completed_blocks, partial_files, remove_partial_files
from posctx.store.create import (
    StoreCreatedConcurrently,
    create_store,
    grow_store,
    remove_dead_creations,
)
from posctx.store.info import store_info
from posctx.store.integrity import missing_chunks
from posctx.store.layout import (
    DEFAULT_CHUNK_BYTES,
    Block,
    build_dataset,
    default_chunk_contexts,
    plan_blocks,
)
from posctx.store.location import (
    check_writable,
    is_remote,
    size_on_disk,
    writing_consolidated,
    zarr_location,
)
from posctx.store.provenance import provenance_record, read_provenance
from posctx.store.reading import COMPLETE_ONLY_ATTR, open_hidden, open_labelled

__all__ = [
    "COMPLETE_ONLY_ATTR",
    "DEFAULT_CHUNK_BYTES",
    "Block",
    "BlockWriter",
    "StoreCreatedConcurrently",
    "build_dataset",
    "check_writable",
    "completed_blocks",
    "create_store",
    "default_chunk_contexts",
    "grow_store",
    "is_remote",
    "missing_chunks",
    "open_hidden",
    "open_labelled",
    "partial_files",
    "plan_blocks",
    "provenance_record",
    "read_provenance",
    "remove_dead_creations",
    "remove_partial_files",
    "size_on_disk",
    "store_info",
    "writing_consolidated",
    "zarr_location",
]
