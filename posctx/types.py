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
#: attention dissection: a query head, the query and key positions of a score, a score part
HEAD = "head"
QUERY = "query"
KEY = "key"
PART = "part"
#: the key/value head a query head reads (grouped-query attention), a coordinate along ``head``
KV_HEAD = "kv_head"

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
#: attrs key of the JSON record that says how a decomposition was made.
DECOMPOSITION_ATTR = "posctx_decomposition"
#: attrs key that :func:`posctx.open_hidden` sets when it left unfinished blocks out.
COMPLETE_ONLY_ATTR = "posctx_complete_only"
#: attrs key of the JSON record of how geometry measurements were made.
GEOMETRY_ATTR = "posctx_geometry"
#: attrs key marking the in-memory inputs of the geometry measurements (a JSON record).
INPUTS_ATTR = "posctx_geometry_inputs"
#: attrs key of the JSON record that says how an attention dissection was made.
ATTENTION_ATTR = "posctx_attention"

#: Compute dtypes of a model's forward pass, and the dtypes a store's hidden states take.
ModelDType = Literal["float32", "bfloat16", "float16"]
StorageDType = Literal["float32", "float16"]
MODEL_DTYPES: tuple[str, ...] = get_args(ModelDType)
STORAGE_DTYPES: tuple[str, ...] = get_args(StorageDType)
Device = str  # "cpu", "cuda", "cuda:1", ...
SpecialTokenPolicy = Literal["model", "none"]

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
    "COMPLETE_ONLY_ATTR",
    "COMPONENT",
    "CONTEXT",
    "DECOMPOSITION_ATTR",
    "DECOMPOSITION_KIND",
    "DIM",
    "DIM2",
    "GEOMETRY_ATTR",
    "HEAD",
    "HIDDEN",
    "HIDDEN_DIMS",
    "HIDDEN_KIND",
    "INPUTS_ATTR",
    "KEY",
    "KIND_ATTR",
    "KV_HEAD",
    "LAYER",
    "LAYER_NAME",
    "MODEL_DTYPES",
    "OFFSET",
    "PART",
    "POSITION",
    "PROVENANCE_ATTR",
    "QUERY",
    "SCHEMA_ATTR",
    "SCHEMA_VERSION",
    "SOURCE",
    "STORAGE_DTYPES",
    "TOKEN_ID",
    "TOPIC",
    "Device",
    "Float64Array",
    "FloatArray",
    "IndexArray",
    "IntArray",
    "ModelDType",
    "PathLike",
    "SpecialTokenPolicy",
    "StorageDType",
]
