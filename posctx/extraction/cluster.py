"""Running the planned blocks as tasks on a dask.distributed cluster, one model per worker."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from posctx.errors import StoreError
from posctx.extraction.plan import BlockRun
from posctx.extraction.run import Progress, compute_block
from posctx.extraction.statistics import WriterStatistics
from posctx.store import Block, BlockWriter
from posctx.store.partials import coverage, new_owner, read_partials, select_partials

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


def _worker_model(model: Mapping[str, Any], weights_hash: str) -> LoadedModel:
    loaded = cached_model(model)
    if loaded.weights_hash != weights_hash:
        raise StoreError(
            f"a worker loaded different weights for {model.get('name')!r} than the store "
            f"records ({loaded.weights_hash} vs {weights_hash}): give every worker the same model"
        )
    return loaded


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
    For stores without statistics; :func:`extract_group` is the task of stores with them.
    """
    loaded = _worker_model(model, weights_hash)
    writer = BlockWriter(path, storage_options)
    writer.write(block, compute_block(loaded, writer.token_ids(block), storage_dtype))
    return block.size


def extract_group(run: BlockRun, model: Mapping[str, Any], weights_hash: str) -> int:
    """Compute and write ``run.blocks`` with their statistics, as one writer; returns contexts.

    The group commits one partial of its own at the end. A retry after its worker died finds
    what the lost attempt already committed (its blocks are counted): it marks those and
    computes only the rest, so nothing is counted twice.
    """
    loaded = _worker_model(model, weights_hash)
    writer = BlockWriter(run.path, run.storage_options)
    partials, _ = read_partials(run.path, run.storage_options)
    counted = coverage(select_partials(partials), _all_blocks(run))
    todo = [b for b in run.blocks if counted[b.index] == 0]
    writer.mark([b for b in run.blocks if counted[b.index] == 1])
    stats = WriterStatistics(loaded, run, new_owner("task"))
    for block in todo:
        data, contexts, tail = stats.compute(block, writer)
        writer.write_unmarked(block, data, contexts)
        if tail is not None:
            tail.apply(writer, run)
    commit = stats.commit()
    if commit is not None:
        commit.apply(writer, run)
    return sum(b.size for b in run.blocks)


def _all_blocks(run: BlockRun) -> list[Block]:
    from posctx.store import plan_blocks

    return plan_blocks(run.n_contexts, run.chunk_contexts)


def _groups(run: BlockRun, loaded: LoadedModel) -> list[tuple[Block, ...]]:
    """The pending blocks cut into cluster tasks of consecutive blocks.

    A task's partial holds ``topics x T x L x D`` float64 position sums, whatever its size:
    a task takes enough blocks that its partial is at most a tenth of their hidden states.
    """
    per_block = run.chunk_contexts * run.length * len(loaded.layers) * loaded.hidden_size
    partial = 8 * max(len(run.topics), 1) * run.length * len(loaded.layers) * loaded.hidden_size
    itemsize = 2 if run.storage_dtype == "float16" else 4
    size = max(1, min(16, -(-10 * partial // max(per_block * itemsize, 1))))
    blocks = list(run.blocks)
    return [tuple(blocks[i : i + size]) for i in range(0, len(blocks), size)]


def run_blocks_distributed(client: Any, loaded: LoadedModel, run: BlockRun) -> int:
    """Run ``run.blocks`` as tasks on a ``distributed.Client``; returns the tokens written.

    Without statistics each block is one task writing one chunk-aligned region and then its
    own marker chunk, so workers never share a chunk; with statistics a task is a group of
    consecutive blocks committing one partial (:func:`extract_group`). A task lost with its
    worker is retried elsewhere by the scheduler; it rewrites the same values.
    """
    from dataclasses import replace

    from dask.base import tokenize
    from distributed import as_completed

    token = tokenize(run.path, loaded.weights_hash, run.storage_dtype)
    model = loaded.config.to_dict()
    options = dict(run.storage_options) if run.storage_options else None
    if run.statistics is None:
        futures = [
            client.submit(
                extract_block,
                run.path,
                block,
                model,
                run.storage_dtype,
                loaded.weights_hash,
                options,
                key=f"posctx-extract-block-{block.index}-{token}",
                retries=3,
            )
            for block in run.blocks
        ]
    else:
        futures = [
            client.submit(
                extract_group,
                replace(run, blocks=group, storage_options=options, progress=False),
                model,
                loaded.weights_hash,
                key=f"posctx-extract-group-{group[0].index}-{token}",
                retries=3,
            )
            for group in _groups(run, loaded)
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
    "extract_group",
    "run_blocks_distributed",
]
