"""``extract``: the whole extraction, planned and then run here, on a cluster or as one shard."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from posctx.config import ExtractConfig
from posctx.errors import StoreError
from posctx.extraction.cluster import run_blocks_distributed
from posctx.extraction.groups import blocks_per_group
from posctx.extraction.plan import (
    BlockRun,
    check_shard,
    damaged_blocks,
    flush_seconds,
    pending_blocks,
    prepare_store,
    refuse_interrupted_extension,
    refuse_mismatch,
    settle_statistics,
    stored_batch_size,
    unmark,
)
from posctx.extraction.run import default_writer_threads, run_blocks
from posctx.extraction.statistics import repair_blocks
from posctx.store import (
    check_writable,
    completed_blocks,
    is_remote,
    plan_blocks,
    read_provenance,
    remove_dead_creations,
    remove_partial_files,
)
from posctx.store.create import remove_interrupted_creation
from posctx.store.layout import StatisticsPlan
from posctx.store.provenance import InterruptedCreation

if TYPE_CHECKING:  # pragma: no cover
    from posctx.model import LoadedModel


@dataclass(frozen=True)
class ExtractResult:
    """What one call of :func:`extract` did."""

    path: str
    n_contexts: int
    n_blocks: int
    blocks_written: int
    blocks_already_done: int
    tokens_written: int
    seconds: float
    resumed: bool
    #: blocks of the store still unwritten when this call ended (other shards' work, if any).
    blocks_missing: int = 0
    #: the call only planned (``plan_only``): it created or checked the store, computed nothing.
    plan_only: bool = False

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_written / self.seconds if self.seconds > 0 else float("nan")


def extract(
    config: ExtractConfig,
    path: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    loaded: LoadedModel | None = None,
    client: Any = None,
    shard: tuple[int, int] | None = None,
    plan_only: bool = False,
    require_topic_column: bool = False,
    writer_threads: int | None = None,
) -> ExtractResult:
    """Extract every requested layer's hidden states for a corpus into a Zarr store.

    Re-running with the same arguments resumes an interrupted run: finished blocks are kept,
    unfinished ones are computed again. A store made with other settings is refused.

    Parameters
    ----------
    config
        Corpus, model and store settings (all recorded in the store's attrs).
    path
        Output store: a local path or an fsspec URL.
    storage_options
        fsspec options for URLs.
    progress
        Show progress bars on stderr.
    loaded
        An already loaded model (from :func:`posctx.model.load_model` with ``config.model``),
        to avoid loading it again.
    client
        A ``distributed.Client``: blocks then run as tasks on its workers, each loading the
        model once (see :func:`~posctx.extraction.cluster.extract_blocks`). The calling
        process still plans the store (it loads the model to tokenise and to record the
        weights' hash).
    shard
        ``(i, n)``: compute only the blocks whose forward group's index is ``i`` modulo ``n``
        (:mod:`posctx.extraction.groups`; a group is one block when a chunk holds a batch).
        Run ``n`` processes (``i = 0 ... n-1``, e.g. one per GPU or a Slurm array job) on
        the same ``path`` at once: they create the store once between them, write disjoint blocks,
        and each can be killed and re-run on its own. The store is complete when all are.
        Extending a store, and creating one on object storage, is one process's job: do it
        with ``plan_only`` first.
    plan_only
        Create (or extend) the store, with its token ids and labels, and compute nothing.
    writer_threads
        Threads writing finished blocks while the forward passes go on (default 4, or the
        number of CPUs if fewer). They change nothing stored, only how fast it is stored.
    require_topic_column
        Refuse a table or dataset without ``config.corpus.topic_column`` (the command line
        sets this when ``--topic-column`` is given): otherwise a missing column puts every
        row in one topic, which suits the default column name only.

    Returns
    -------
    ExtractResult
        What was done, with the time and token count of the forward-and-write phase.
    """
    from posctx.corpus import open_corpus
    from posctx.corpus.sources import check_topic_column
    from posctx.model import load_model

    check_shard(shard)
    if require_topic_column:
        check_topic_column(config.corpus)  # a column named on purpose must exist
    try:
        stored = read_provenance(path, storage_options, output=True)  # a foreign store: refused
    except InterruptedCreation as interrupted:
        # A creation on object storage killed before its record: nothing was marked yet, so
        # the same command starts it again (when its process is known to have ended).
        remove_interrupted_creation(path, storage_options, interrupted)
        stored = None
    if stored is None:
        check_writable(path, storage_options)
        open_corpus(config.corpus)  # an unknown corpus fails before the model loads
    else:
        refuse_mismatch(path, stored, config, allow_more_contexts=True)
        refuse_interrupted_extension(path, stored, config, storage_options)
    if loaded is None:
        loaded = load_model(config.model)
    if shard is not None and stored is None and is_remote(path):
        raise StoreError(
            f"{path} does not exist yet: on object storage, create it with one process first "
            "(the same command without --shard, with --plan-only), then start the shards"
        )
    if (
        shard is not None
        and stored is not None
        and config.store.contexts > stored["config"]["store"]["contexts"]
    ):
        raise StoreError(
            f"{path} holds {stored['config']['store']['contexts']} contexts: extend it to "
            f"{config.store.contexts} with one process first (the same command without --shard, "
            "with --plan-only), then start the shards"
        )
    resumed = prepare_store(
        config, path, loaded, storage_options=storage_options, progress=progress
    )
    remove_dead_creations(path)  # e.g. killed between its rename and its own clean-up
    if shard is None:
        # The only writer: what killed processes left half-written is garbage now.
        remove_partial_files(path)
    prov = read_provenance(path, storage_options) or {}
    chunk = int(prov["chunk_contexts"])
    blocks = plan_blocks(config.store.contexts, chunk)
    batch_size = stored_batch_size(prov)
    per_group = blocks_per_group(chunk, batch_size)
    statistics = StatisticsPlan.from_record(prov)
    done = completed_blocks(path, storage_options)
    mine = pending_blocks(blocks, np.zeros(len(blocks), bool), shard, per_group)
    if statistics is not None:
        done = settle_statistics(path, storage_options, blocks, done, mine)
    damaged = [] if plan_only else damaged_blocks(path, storage_options, mine, done, statistics)
    if damaged and statistics is None:  # computed again like any unfinished block
        unmark(path, storage_options, damaged)
        done[[b.index for b in damaged]] = False
    todo = [] if plan_only else pending_blocks(blocks, done, shard, per_group)
    n_done = sum(b.size for b in mine if done[b.index])
    start = time.perf_counter()
    run = BlockRun(
        path=path,
        blocks=tuple(todo),
        storage_dtype=config.store.storage_dtype,
        length=config.store.length,
        storage_options=storage_options,
        progress=progress,
        n_total=sum(b.size for b in mine),
        n_done=n_done,
        statistics=statistics,
        topics=() if statistics is None else statistics.topics,
        n_contexts=config.store.contexts,
        chunk_contexts=chunk,
        flush_seconds=flush_seconds(),
        batch_size=batch_size,
        per_group=per_group,
    )
    if damaged and statistics is not None:
        # Counted already: recompute their hidden states (the same values) and nothing else.
        repair_blocks(loaded, replace(run, blocks=tuple(damaged), progress=False))
    if not todo:
        tokens = 0
    elif client is not None:
        tokens = run_blocks_distributed(client, loaded, run)
    else:
        threads = default_writer_threads() if writer_threads is None else writer_threads
        tokens = run_blocks(loaded, run, writer_threads=threads)
    return ExtractResult(
        path=str(path),
        n_contexts=config.store.contexts,
        n_blocks=len(blocks),
        blocks_written=len(todo) + (len(damaged) if statistics is not None else 0),
        blocks_already_done=sum(1 for b in mine if done[b.index]),
        tokens_written=tokens,
        seconds=time.perf_counter() - start,
        resumed=resumed,
        blocks_missing=int((~completed_blocks(path, storage_options)).sum()),
        plan_only=plan_only,
    )


__all__ = [
    "ExtractResult",
    "extract",
]
