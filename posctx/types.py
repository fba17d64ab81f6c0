"""Dimension names, variable names and type aliases shared by the whole package.

Dimension names are constants so that a rename is one edit, not a grep.
"""

from __future__ import annotations

from typing import Literal, Union

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
#: attention dissection: a query head, the query and key positions of a score, a score part
HEAD = "head"
QUERY = "query"
KEY = "key"
PART = "part"

HIDDEN_DIMS = (CONTEXT, POSITION, LAYER, DIM)

HIDDEN = "hidden"
TOKEN_ID = "token_id"
TOPIC = "topic"
SOURCE = "source"
OFFSET = "offset"
LAYER_NAME = "layer_name"
BLOCK_COMPLETE = "block_complete"
BLOCK_START = "block_start"

#: attrs key under which the provenance record (a JSON object) is stored.
PROVENANCE_ATTR = "posctx"
#: value of attrs["posctx_schema"] for stores written by this version.
SCHEMA_VERSION = 1

ModelDType = Literal["float32", "bfloat16", "float16"]
StorageDType = Literal["float32", "float16"]
Device = str  # "cpu", "cuda", "cuda:1", ...
SpecialTokenPolicy = Literal["model", "none"]

FloatArray = npt.NDArray[np.floating]
IntArray = npt.NDArray[np.integer]
#: What the numpy kernels return: they accumulate in float64 and index with intp.
Float64Array = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]
PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "BLOCK",
    "BLOCK_COMPLETE",
    "BLOCK_START",
    "COMPONENT",
    "DIM2",
    "CONTEXT",
    "DIM",
    "HEAD",
    "HIDDEN",
    "HIDDEN_DIMS",
    "KEY",
    "LAYER",
    "LAYER_NAME",
    "OFFSET",
    "PART",
    "POSITION",
    "PROVENANCE_ATTR",
    "QUERY",
    "SCHEMA_VERSION",
    "SOURCE",
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

import os  # noqa: E402  (only for the PathLike forward reference above)
