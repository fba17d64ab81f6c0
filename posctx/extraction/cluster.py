"""Running the planned blocks as tasks on a dask.distributed cluster, one model per worker."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from posctx.errors import StoreError
from posctx.extraction.groups import plan_groups
from posctx.extraction.plan import BlockRun
from posctx.extraction.run import Progress, run_blocks
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


def extract_blocks(run: BlockRun, model: Mapping[str, Any], weights_hash: str) -> int:
    """Compute and write ``run.blocks`` wherever this runs (a dask worker); returns contexts.

    The blocks are whole forward groups' worth (:func:`_tasks`), computed as in one process.
    Idempotent: data is written before markers, and rewriting a block writes the same values,
    so a task that a dying worker left half done is simply run again. With statistics the
    task is one writer that commits one partial of its own at the end; a retry finds what the
    lost attempt already committed (its blocks are counted): it marks those and computes only
    the rest, so nothing is counted twice.
    """
    loaded = _worker_model(model, weights_hash)
    todo = list(run.blocks)
    if run.statistics is not None:
        writer = BlockWriter(run.path, run.storage_options)
        partials, _ = read_partials(run.path, run.storage_options)
        counted = coverage(select_partials(partials), run.all_blocks())
        todo = [b for b in run.blocks if counted[b.index] == 0]
        writer.mark([b for b in run.blocks if counted[b.index] == 1])
    if todo:
        from dataclasses import replace

        once = replace(run, blocks=tuple(todo), progress=False, flush_seconds=float("inf"))
        run_blocks(loaded, once, owner=new_owner("task"), writer_threads=1)
    return sum(b.size for b in run.blocks)


def extract_block(
    path: str,
    block: Block,
    model: Mapping[str, Any],
    storage_dtype: str,
    weights_hash: str,
    storage_options: Mapping[str, Any] | None = None,
) -> int:
    """Deprecated: :func:`extract_blocks`, which computes a block with its forward group."""
    from posctx._deprecated import warn_renamed
    from posctx.extraction.groups import blocks_per_group
    from posctx.extraction.plan import stored_batch_size
    from posctx.store import read_provenance
    from posctx.store.layout import StatisticsPlan

    warn_renamed("posctx.extraction.extract_block", "posctx.extraction.extract_blocks")
    stored = read_provenance(path, storage_options) or {}
    chunk, batch = int(stored["chunk_contexts"]), stored_batch_size(stored)
    statistics = StatisticsPlan.from_record(stored)
    run = BlockRun(
        path,
        (block,),
        storage_dtype,
        int(stored["config"]["store"]["length"]),
        storage_options,
        progress=False,
        statistics=statistics,
        topics=() if statistics is None else statistics.topics,
        n_contexts=int(stored["config"]["store"]["contexts"]),
        chunk_contexts=chunk,
        batch_size=batch,
        per_group=blocks_per_group(chunk, batch),
    )
    return extract_blocks(run, model, weights_hash)


def _tasks(run: BlockRun, loaded: LoadedModel) -> list[tuple[Block, ...]]:
    """The pending blocks cut into cluster tasks of whole forward groups.

    Without statistics a task is one group. With them, a task's partial holds
    ``topics x T x L x D`` float64 position sums, whatever its size: a task takes enough
    groups that its partial is at most a tenth of their hidden states.
    """
    groups = [g.todo for g in plan_groups(run.all_blocks(), run.blocks, run.per_group)]
    if run.statistics is None:
        return groups
    per_block = run.chunk_contexts * run.length * len(loaded.layers) * loaded.hidden_size
    partial = 8 * max(len(run.topics), 1) * run.length * len(loaded.layers) * loaded.hidden_size
    itemsize = 2 if run.storage_dtype == "float16" else 4
    blocks = max(1, min(16, -(-10 * partial // max(per_block * itemsize, 1))))
    size = max(1, -(-blocks // run.per_group))
    return [
        tuple(b for group in groups[i : i + size] for b in group)
        for i in range(0, len(groups), size)
    ]


def run_blocks_distributed(client: Any, loaded: LoadedModel, run: BlockRun) -> int:
    """Run ``run.blocks`` as tasks on a ``distributed.Client``; returns the tokens written.

    A task is one forward group or, with statistics, several committing one partial
    (:func:`extract_blocks`): tasks write disjoint chunk-aligned regions and their own marker
    chunks, so workers never share a chunk, and every context is computed with the batch
    mates it has in one process. A task lost with its worker is retried elsewhere by the
    scheduler; it rewrites the same values.
    """
    from dataclasses import replace

    from dask.base import tokenize
    from distributed import as_completed

    token = tokenize(run.path, loaded.weights_hash, run.storage_dtype)
    model = loaded.config.to_dict()
    options = dict(run.storage_options) if run.storage_options else None
    futures = [
        client.submit(
            extract_blocks,
            replace(run, blocks=task, storage_options=options, progress=False),
            model,
            loaded.weights_hash,
            key=f"posctx-extract-{task[0].index}-{token}",
            retries=3,
        )
        for task in _tasks(run, loaded)
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
    "extract_blocks",
    "run_blocks_distributed",
]
