"""Dimension names, variable names and type aliases shared by the whole package.

Dimension names are constants so that a rename is one edit, not a grep.
"""

from __future__ import annotations

import os
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

CONTEXT = "context"
POSITION = "position"
LAYER = "layer"
DIM = "dim"
BLOCK = "block"
#: second matrix axis of (layer, dim, dim2) second moments
DIM2 = "dim2"
#: index of a singular value, largest first
COMPONENT = "component"
#: index of a principal angle between two subspaces, smallest angle first
ANGLE = "angle"
#: uncertainty of the measurements: a measurement's name, an interval's end ("lo", "hi"), a
#: point of the convergence path (its ``n_contexts`` coordinate), a bootstrap cell (a run of
#: consecutive contexts of one topic)
METRIC = "metric"
BOUND = "bound"
SAMPLE = "sample"
#: a bootstrap replicate
RESAMPLE = "resample"
CELL = "cell"
#: coordinates of the bootstrap cells: each context's cell; each cell's run, topic, contexts
CONTEXT_CELL = "context_cell"
CELL_RUN = "cell_run"
CELL_TOPIC = "cell_topic"
CELL_COUNT = "cell_count"
#: attention dissection: a query head, the query and key positions of a score, a score part
HEAD = "head"
QUERY = "query"
KEY = "key"
PART = "part"
#: the key/value head a query head reads (grouped-query attention), a coordinate along ``head``
KV_HEAD = "kv_head"
#: the positions the default selection leaves out (position 0 and trailing special tokens),
#: whose hidden states the statistics keep per context; labelled by those positions
EDGE = "edge"
#: the topics of the per-topic position sums of a store's statistics
STAT_TOPIC = "stat_topic"

# The statistics a store keeps during extraction (docs/store.md, "Statistics").
#: sum over the default positions, per context, float64 ``(context, layer, dim)``
STAT_CTX_SUM = "stat_ctx_sum"
#: sum of squares over the default positions and dims, per context, float64 ``(context, layer)``
STAT_CTX_SUMSQ = "stat_ctx_sumsq"
#: the stored hidden states at the left-out positions ``(context, edge, layer, dim)``
STAT_EDGE = "stat_edge"
#: Zarr group of the per-process partial sums (position sums per topic, second moments)
STAT_PARTIALS = "stat_partials"

HIDDEN_DIMS = (CONTEXT, POSITION, LAYER, DIM)

HIDDEN = "hidden"
TOKEN_ID = "token_id"
TOPIC = "topic"
SOURCE = "source"
OFFSET = "offset"
LAYER_NAME = "layer_name"
BLOCK_COMPLETE = "block_complete"
BLOCK_START = "block_start"

# attrs keys: what kind of posctx store (or in-memory result) a dataset is, and its records.
#: attrs key naming the kind of store: :data:`HIDDEN_KIND` or :data:`DECOMPOSITION_KIND`.
KIND_ATTR = "posctx_kind"
HIDDEN_KIND = "hidden"
DECOMPOSITION_KIND = "decomposition"
#: attrs key of the store schema's version (:data:`SCHEMA_VERSION` for stores written now).
SCHEMA_ATTR = "posctx_schema"
#: value of attrs[SCHEMA_ATTR] for stores written by this version.
SCHEMA_VERSION = 1
#: attrs key under which the provenance record (a JSON object) is stored.
PROVENANCE_ATTR = "posctx"
#: attrs key of the process creating a store on object storage (``{"host", "pid"}``): a
#: store with it and without :data:`PROVENANCE_ATTR` is a creation that never finished.
CREATING_ATTR = "posctx_creating"
#: attrs key of the JSON record that says how a decomposition was made.
DECOMPOSITION_ATTR = "posctx_decomposition"
#: attrs key that :func:`posctx.open_hidden` sets when it left unfinished blocks out.
COMPLETE_ONLY_ATTR = "posctx_complete_only"
#: attrs key of the JSON record of how geometry measurements were made.
#: attrs of the uncertainty dataset: a JSON record of its method and settings
UNCERTAINTY_ATTR = "posctx_uncertainty"
GEOMETRY_ATTR = "posctx_geometry"
#: attrs key marking the in-memory inputs of the geometry measurements (a JSON record).
INPUTS_ATTR = "posctx_geometry_inputs"
#: attrs key of the JSON record that says how an attention dissection was made.
ATTENTION_ATTR = "posctx_attention"
#: attrs key of :func:`posctx.store.statistics.open_statistics`: what the statistics hold.
STATISTICS_ATTR = "posctx_statistics"
#: attrs key :func:`posctx.open_hidden` sets when the store keeps hidden states of only some
#: of its contexts (``posctx extract --hidden-contexts N``).
HIDDEN_SAMPLE_ATTR = "posctx_hidden_sample"

#: Compute dtypes of a model's forward pass, and the dtypes a store's hidden states take.
ModelDType = Literal["float32", "bfloat16", "float16"]
StorageDType = Literal["float32", "float16"]
MODEL_DTYPES: tuple[str, ...] = get_args(ModelDType)
STORAGE_DTYPES: tuple[str, ...] = get_args(StorageDType)
Device = str  # "cpu", "cuda", "cuda:1", ...
SpecialTokenPolicy = Literal["model", "none"]
SPECIAL_TOKEN_POLICIES: tuple[str, ...] = get_args(SpecialTokenPolicy)
#: Where a decoder's last hidden state is taken: after its final norm (what HF returns), or
#: before it (the residual stream out of the last block).
FinalNorm = Literal["after", "before"]
FINAL_NORMS: tuple[str, ...] = get_args(FinalNorm)
#: How contexts are cut from a topic's documents: windows anywhere in the topic's token
#: stream, or the first tokens of single documents (one context per document, each starting
#: at its document's first token: problems, prompts, records of a fixed layout).
Windows = Literal["stream", "documents"]
WINDOWS: tuple[str, ...] = get_args(Windows)

FloatArray = npt.NDArray[np.floating]
IntArray = npt.NDArray[np.integer]
#: What the numpy kernels return: they accumulate in float64 and index with intp.
Float64Array = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]
PathLike = str | os.PathLike[str]

__all__ = [
    "ANGLE",
    "ATTENTION_ATTR",
    "BLOCK",
    "BLOCK_COMPLETE",
    "BLOCK_START",
    "BOUND",
    "CELL",
    "CELL_COUNT",
    "CELL_RUN",
    "CELL_TOPIC",
    "CONTEXT_CELL",
    "COMPLETE_ONLY_ATTR",
    "COMPONENT",
    "CONTEXT",
    "DECOMPOSITION_ATTR",
    "DECOMPOSITION_KIND",
    "DIM",
    "DIM2",
    "EDGE",
    "GEOMETRY_ATTR",
    "HEAD",
    "HIDDEN",
    "HIDDEN_DIMS",
    "HIDDEN_KIND",
    "HIDDEN_SAMPLE_ATTR",
    "INPUTS_ATTR",
    "KEY",
    "KIND_ATTR",
    "CREATING_ATTR",
    "KV_HEAD",
    "LAYER",
    "LAYER_NAME",
    "METRIC",
    "MODEL_DTYPES",
    "OFFSET",
    "PART",
    "POSITION",
    "PROVENANCE_ATTR",
    "QUERY",
    "RESAMPLE",
    "SAMPLE",
    "SCHEMA_ATTR",
    "SCHEMA_VERSION",
    "SOURCE",
    "SPECIAL_TOKEN_POLICIES",
    "FINAL_NORMS",
    "WINDOWS",
    "STAT_CTX_SUM",
    "STAT_CTX_SUMSQ",
    "STAT_EDGE",
    "STAT_PARTIALS",
    "STAT_TOPIC",
    "STATISTICS_ATTR",
    "STORAGE_DTYPES",
    "TOKEN_ID",
    "TOPIC",
    "UNCERTAINTY_ATTR",
    "Device",
    "Float64Array",
    "FloatArray",
    "IndexArray",
    "IntArray",
    "ModelDType",
    "PathLike",
    "SpecialTokenPolicy",
    "FinalNorm",
    "StorageDType",
]
