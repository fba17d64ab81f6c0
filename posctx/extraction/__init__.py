"""The extraction engine: corpus -> token contexts -> model forward -> hidden-state store.

Planning and execution are separate. Planning (:func:`prepare_store`, in ``plan``) samples
the contexts, writes their token ids and labels and preallocates ``hidden``; from then on the
store alone says what remains to do. Execution streams the pending blocks through the model in
forward groups (``groups``: batches as large as asked, whatever the chunk size) while writer
threads store finished blocks, so writing hides behind compute: in this
process (:func:`run_blocks`, in ``run``) or as tasks on a dask.distributed cluster
(:func:`run_blocks_distributed`, in ``cluster``). Re-running the same command resumes:
finished blocks are skipped, unfinished ones redone. :func:`extract` (in ``api``) does it all.
"""

from posctx.extraction.api import ExtractResult, extract
from posctx.extraction.cluster import (
    cached_model,
    extract_block,
    extract_blocks,
    run_blocks_distributed,
)
from posctx.extraction.plan import check_shard, config_differences, pending_blocks, prepare_store
from posctx.extraction.run import compute_block, run_blocks

__all__ = [
    "ExtractResult",
    "cached_model",
    "check_shard",
    "compute_block",
    "config_differences",
    "extract",
    "extract_block",
    "extract_blocks",
    "pending_blocks",
    "prepare_store",
    "run_blocks",
    "run_blocks_distributed",
]
