"""Running the planned blocks as tasks on a dask.distributed cluster, one model per worker."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from posctx.errors import StoreError
from posctx.extraction.plan import BlockRun
from posctx.extraction.run import Progress, compute_block
from posctx.store import Block, BlockWriter

if TYPE_CHECKING:  # pragma: no cover
    from posctx.model import LoadedModel


_MODELS: dict[str, LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def cached_model(model: Mapping[str, Any]) -> LoadedModel:
    """The model for ``model`` (a ``ModelConfig.to_dict()``), loaded once per process.

    Distributed extraction calls this inside every task: a worker process loads its model on
    its first block and reuses it for all later ones (one model per worker, so one per GPU
    when each worker owns one, e.g. with dask-cuda's ``LocalCUDACluster``).
    """
    from posctx.config import ModelConfig
    from posctx.model import load_model

    key = json.dumps(dict(model), sort_keys=True)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = load_model(ModelConfig.from_dict(model))
        return _MODELS[key]


def extract_block(
    path: str,
    block: Block,
    model: Mapping[str, Any],
    storage_dtype: str,
    weights_hash: str,
    storage_options: Mapping[str, Any] | None = None,
) -> int:
    """Compute and write one block wherever this runs (a dask worker); returns its size.

    Idempotent: the block's data is written before its marker, and rewriting a block writes
    the same values, so a task that a dying worker left half done is simply run again.
    """
    loaded = cached_model(model)
    if loaded.weights_hash != weights_hash:
        raise StoreError(
            f"a worker loaded different weights for {model.get('name')!r} than the store "
            f"records ({loaded.weights_hash} vs {weights_hash}): give every worker the same model"
        )
    writer = BlockWriter(path, storage_options)
    writer.write(block, compute_block(loaded, writer.token_ids(block), storage_dtype))
    return block.size


def run_blocks_distributed(client: Any, loaded: LoadedModel, run: BlockRun) -> int:
    """Run ``run.blocks`` as tasks on a ``distributed.Client``; returns the tokens written.

    Each block is one task writing one chunk-aligned region and then its own marker chunk, so
    workers never share a chunk. A task lost with its worker is retried elsewhere by the
    scheduler; it rewrites the same values.
    """
    from dask.base import tokenize
    from distributed import as_completed

    token = tokenize(run.path, loaded.weights_hash, run.storage_dtype)
    futures = [
        client.submit(
            extract_block,
            run.path,
            block,
            loaded.config.to_dict(),
            run.storage_dtype,
            loaded.weights_hash,
            dict(run.storage_options) if run.storage_options else None,
            key=f"posctx-extract-block-{block.index}-{token}",
            retries=3,
        )
        for block in run.blocks
    ]
    bar = Progress(run.n_total, run.n_done, run.progress)
    try:
        for future in as_completed(futures):
            size = future.result()
            bar.add(size, size * run.length)
    finally:
        bar.close()
    return bar.tokens


__all__ = [
    "cached_model",
    "extract_block",
    "run_blocks_distributed",
]
