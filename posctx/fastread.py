"""Deprecated: the direct chunk reader moved to :mod:`posctx.store.direct`.

``file_block_stats`` is now :func:`posctx.decomposition.graph.file_chunk_stats`. Every name
still resolves here, with a FutureWarning; see ``docs/changes.md``.
"""

from __future__ import annotations

from posctx._deprecated import moved_names

__getattr__ = moved_names(
    __name__,
    {
        "DirectSource": "posctx.store.direct:DirectSource",
        "direct_array": "posctx.store.direct:direct_array",
        "direct_source": "posctx.store.direct:direct_source",
        "read_chunk": "posctx.store.direct:read_chunk",
        "file_block_stats": "posctx.decomposition.graph:file_chunk_stats",
    },
)
