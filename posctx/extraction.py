"""The extraction engine: corpus -> token contexts -> model forward -> hidden-state store.

Planning and execution are separate. Planning (:func:`prepare_store`) samples the contexts,
writes their token ids and labels and preallocates ``hidden``; from then on the store alone
says what remains to do. Execution (:func:`run_blocks`) streams the pending blocks through
the model while a writer thread stores the previous block, so writing hides behind compute.
Re-running the same command resumes: finished blocks are skipped, unfinished ones redone.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import numpy as np

from posctx.config import ExtractConfig
from posctx.errors import PosctxError, StoreError
from posctx.store import (
    Block,
    BlockWriter,
    StoreCreatedConcurrently,
    build_dataset,
    check_writable,
    completed_blocks,
    create_store,
    default_chunk_contexts,
    is_remote,
    plan_blocks,
    provenance_record,
    read_provenance,
    remove_dead_creations,
    remove_partial_files,
)
from posctx.types import SCHEMA_VERSION, TOKEN_ID

if TYPE_CHECKING:  # pragma: no cover
    from posctx.model import LoadedModel

# Fields that may differ between the run that made a store and a run that resumes it:
# nothing that changes a hidden state is in here.
_RESUMABLE_DIFFERENCES: frozenset[str] = frozenset()


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

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_written / self.seconds if self.seconds > 0 else float("nan")


def config_differences(stored: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """Dotted names of the settings that differ between two ``ExtractConfig.to_dict()``.

    >>> config_differences({"model": {"name": "a", "dtype": "float32"}},
    ...                    {"model": {"name": "b", "dtype": "float32"}})
    ['model.name']
    """
    out = []
    for section in sorted(set(stored) | set(requested)):
        a, b = stored.get(section, {}), requested.get(section, {})
        for key in sorted(set(a) | set(b)):
            name = f"{section}.{key}"
            if a.get(key) != b.get(key) and name not in _RESUMABLE_DIFFERENCES:
                out.append(name)
    return out


def _refuse_mismatch(
    path: str, stored: Mapping[str, Any], config: ExtractConfig, allow_more_contexts: bool = False
) -> None:
    diffs = config_differences(stored.get("config", {}), config.to_dict())
    old = stored.get("config", {}).get("store", {}).get("contexts", 0)
    if allow_more_contexts and config.store.contexts > old:
        diffs = [d for d in diffs if d != "store.contexts"]  # growing a store is allowed
    if diffs:
        details = ", ".join(
            f"{d}: store has {_lookup(stored['config'], d)!r}, asked {_lookup(config.to_dict(), d)!r}"
            for d in diffs
        )
        raise StoreError(
            f"{path} was made with different settings ({details}): re-run with the store's "
            "settings to resume it, or choose another --out"
        )


def _lookup(tree: Mapping[str, Any], dotted: str) -> Any:
    section, key = dotted.split(".", 1)
    return tree.get(section, {}).get(key)


def _title(config: ExtractConfig) -> str:
    return (
        f"posctx hidden states of {config.model.name} on {config.corpus.spec} "
        f"(C={config.store.contexts}, T={config.store.length})"
    )


def plan_contexts(config: ExtractConfig, loaded: LoadedModel, corpus: Any, progress: bool) -> Any:
    """The contexts of ``config`` framed with ``loaded``'s special tokens (a ContextPlan)."""
    from posctx.corpus import sample_contexts

    special = loaded.special
    return sample_contexts(
        corpus,
        loaded.encode,
        n_contexts=config.store.contexts,
        length=config.store.length,
        prefix_ids=special.prefix_ids,
        suffix_ids=special.suffix_ids,
        separator_ids=special.separator_ids,
        seed=config.corpus.seed,
        balance=config.corpus.balance,
        progress=progress,
    )


def _extend(
    config: ExtractConfig,
    path: str,
    loaded: LoadedModel,
    stored: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None,
    progress: bool,
) -> None:
    """Grow a store to ``config.store.contexts`` contexts, keeping every existing one.

    Plans are prefix-stable (see :func:`posctx.corpus.contexts.interleave_order`), so the
    plan for the larger C starts with the store's contexts; that is checked token by token.
    """
    from posctx.corpus import open_corpus
    from posctx.store import grow_store

    plan = plan_contexts(config, loaded, open_corpus(config.corpus), progress)
    old = int(stored["config"]["store"]["contexts"])
    writer = BlockWriter(path, storage_options)
    if not np.array_equal(writer.token_ids(Block(0, 0, old)), plan.token_ids[:old]):
        raise StoreError(
            f"{path}: the corpus no longer yields the store's {old} contexts (it changed since "
            "the store was made), so the store cannot be extended: extract into a new --out"
        )
    record = dict(stored)
    record["config"] = config.to_dict()
    record["extensions"] = [
        *stored.get("extensions", []),
        {"from": old, "to": config.store.contexts, "posctx_version": stored.get("posctx_version")},
    ]
    grow_store(
        path,
        old_contexts=old,
        token_ids=plan.token_ids,
        topic=plan.topic,
        source=plan.source,
        offset=plan.offset,
        chunk_contexts=int(stored["chunk_contexts"]),
        record=record,
        title=_title(config),
        storage_options=storage_options,
    )


def prepare_store(
    config: ExtractConfig,
    path: str,
    loaded: LoadedModel,
    *,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> bool:
    """Create the store (sample contexts, write token ids and labels) unless it exists.

    Returns ``True`` when an existing, matching store is resumed.
    """
    from posctx.corpus import open_corpus
    from posctx.model import check_length

    stored = read_provenance(path, storage_options, output=True)
    if stored is not None:
        _refuse_other_weights(path, stored, config, loaded)
        if config.store.contexts > stored["config"]["store"]["contexts"]:
            _extend(config, path, loaded, stored, storage_options, progress)
        return True
    check_length(loaded, config.store.length)
    corpus = open_corpus(config.corpus)
    special = loaded.special
    plan = plan_contexts(config, loaded, corpus, progress)
    itemsize = np.dtype(config.store.storage_dtype).itemsize
    chunk = config.store.chunk_contexts or default_chunk_contexts(
        config.store.length, len(loaded.layers), loaded.hidden_size, itemsize
    )
    record = provenance_record(
        config=config.to_dict(),
        model=loaded.info(),
        corpus=corpus.describe(),
        special_tokens=special.to_dict(),
        chunk_contexts=chunk,
    )
    attrs = {
        "title": _title(config),
        "posctx_kind": "hidden",
        "posctx_schema": SCHEMA_VERSION,
        "posctx": record,
    }
    ds, encoding = build_dataset(
        token_ids=plan.token_ids,
        topic=plan.topic,
        source=plan.source,
        offset=plan.offset,
        layers=loaded.layers,
        layer_names=loaded.layer_names,
        hidden_size=loaded.hidden_size,
        storage_dtype=config.store.storage_dtype,
        chunk_contexts=chunk,
        chunk_layers=config.store.chunk_layers,
        attrs=attrs,
    )
    try:
        create_store(path, ds, encoding, storage_options)
    except StoreCreatedConcurrently:
        # Shards started together all plan the store; the first rename wins and the others
        # join it once it is shown to be the very store they would have made.
        stored = read_provenance(path, storage_options) or {}
        _refuse_other_weights(path, stored, config, loaded)
        if not np.array_equal(BlockWriter(path, storage_options).token_ids(
            Block(0, 0, config.store.contexts)), plan.token_ids
        ):
            raise StoreError(
                f"{path} was created meanwhile by another process from a different corpus: "
                "make every process read the same corpus, or choose another --out"
            ) from None
        return True
    return False


def _refuse_other_weights(
    path: str, stored: Mapping[str, Any], config: ExtractConfig, loaded: LoadedModel
) -> None:
    _refuse_mismatch(path, stored, config, allow_more_contexts=True)
    if stored.get("model", {}).get("weights_hash") != loaded.weights_hash:
        raise StoreError(
            f"{path} was made with different weights for model {config.model.name!r} "
            f"(hash {stored['model'].get('weights_hash')} vs {loaded.weights_hash}): "
            "use the same weights to resume, or choose another --out"
        )


def _refuse_interrupted_extension(
    path: str,
    stored: Mapping[str, Any],
    config: ExtractConfig,
    storage_options: Mapping[str, Any] | None,
) -> None:
    from posctx.store.location import open_group

    size = int(open_group(path, "r", storage_options)[TOKEN_ID].shape[0])
    if size != stored["config"]["store"]["contexts"] and config.store.contexts != size:
        raise StoreError(
            f"{path}: an extension to {size} contexts was interrupted: re-run with "
            f"--contexts {size} to finish it"
        )


def pending_blocks(
    blocks: Iterable[Block], done: np.ndarray, shard: tuple[int, int] | None = None
) -> list[Block]:
    """The blocks whose completion marker is not set, in order; only shard ``i`` of ``n``
    (the blocks whose index is ``i`` modulo ``n``) when ``shard=(i, n)``.

    >>> pending_blocks(plan_blocks(10, 4), np.array([True, False, True]))
    [Block(index=1, start=4, stop=8)]
    >>> pending_blocks(plan_blocks(10, 2), np.zeros(5, bool), shard=(1, 2))
    [Block(index=1, start=2, stop=4), Block(index=3, start=6, stop=8)]
    """
    i, n = shard or (0, 1)
    return [b for b in blocks if not bool(done[b.index]) and b.index % n == i]


def check_shard(shard: tuple[int, int] | None) -> None:
    """Refuse a shard that names no blocks: ``(i, n)`` needs ``0 <= i < n``."""
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise PosctxError(
            f"shard {shard[0]}/{shard[1]} does not exist: give I/N with 0 <= I < N, e.g. 0/4 "
            "... 3/4 for four processes"
        )


class _Writer:
    """A thread that writes finished blocks while the caller computes the next one.

    The queue holds at most one block, so memory stays at two blocks in flight whatever the
    corpus size, and the forward pass never waits on storage unless storage is the slower side.
    """

    def __init__(self, writer: BlockWriter, on_written: Callable[[Block], None]) -> None:
        self._writer = writer
        self._on_written = on_written
        self._queue: queue.Queue[tuple[Block, np.ndarray] | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="posctx-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain without writing once something went wrong
            block, data = item
            try:
                self._writer.write(block, data)
                self._on_written(block)
            except BaseException as exc:  # re-raised in the caller's thread
                self._error = exc

    def put(self, block: Block, data: np.ndarray) -> None:
        self.raise_if_failed()
        self._queue.put((block, data))

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self.raise_if_failed()


def compute_block(loaded: LoadedModel, token_ids: np.ndarray, storage_dtype: str) -> np.ndarray:
    """Hidden states of one block, computed in batches of the configured size."""
    from posctx.model import forward_block

    return forward_block(loaded, token_ids, storage_dtype, batch_size=loaded.config.batch_size)


def run_blocks(
    loaded: LoadedModel,
    path: str,
    blocks: list[Block],
    *,
    storage_dtype: str,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    n_total: int | None = None,
    n_done: int = 0,
) -> int:
    """Compute and write ``blocks``; returns the number of tokens written."""
    writer = BlockWriter(path, storage_options)
    bar = _Progress(n_total, n_done, progress)
    background = _Writer(writer, lambda block: bar.add(block.size, block.size * writer.length))
    try:
        for block in blocks:
            ids = writer.token_ids(block)
            background.put(block, compute_block(loaded, ids, storage_dtype))
    finally:
        background.close()
        bar.close()
    return bar.tokens


class _Progress:
    """The extraction progress bar: contexts done, and this call's token rate."""

    def __init__(self, total: int | None, done: int, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=total, initial=done, unit="ctx", desc="extract", disable=not enabled, dynamic_ncols=True
        )
        self._start = time.perf_counter()
        self.tokens = 0

    def add(self, contexts: int, tokens: int) -> None:
        self.tokens += tokens
        self._bar.update(contexts)
        rate = self.tokens / max(time.perf_counter() - self._start, 1e-9)
        self._bar.set_postfix(tok_s=f"{rate:,.0f}")

    def close(self) -> None:
        self._bar.close()


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


def run_blocks_distributed(
    client: Any,
    loaded: LoadedModel,
    path: str,
    blocks: list[Block],
    *,
    storage_dtype: str,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    n_total: int | None = None,
    n_done: int = 0,
    length: int,
) -> int:
    """Run ``blocks`` as tasks on a ``distributed.Client``; returns the tokens written.

    Each block is one task writing one chunk-aligned region and then its own marker chunk, so
    workers never share a chunk. A task lost with its worker is retried elsewhere by the
    scheduler; it rewrites the same values.
    """
    from dask.base import tokenize
    from distributed import as_completed

    token = tokenize(path, loaded.weights_hash, storage_dtype)
    futures = [
        client.submit(
            extract_block,
            path,
            block,
            loaded.config.to_dict(),
            storage_dtype,
            loaded.weights_hash,
            dict(storage_options) if storage_options else None,
            key=f"posctx-extract-block-{block.index}-{token}",
            retries=3,
        )
        for block in blocks
    ]
    bar = _Progress(n_total, n_done, progress)
    try:
        for future in as_completed(futures):
            size = future.result()
            bar.add(size, size * length)
    finally:
        bar.close()
    return bar.tokens


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
        model once (see :func:`extract_block`). The calling process still plans the store
        (it loads the model to tokenise and to record the weights' hash).
    shard
        ``(i, n)``: compute only the blocks whose index is ``i`` modulo ``n``. Run ``n``
        processes (``i = 0 ... n-1``, e.g. one per GPU or a Slurm array job) on the same
        ``path`` at once: they create the store once between them, write disjoint blocks,
        and each can be killed and re-run on its own. The store is complete when all are.
        Extending a store, and creating one on object storage, is one process's job: do it
        with ``plan_only`` first.
    plan_only
        Create (or extend) the store, with its token ids and labels, and compute nothing.

    Returns
    -------
    ExtractResult
        What was done, with the time and token count of the forward-and-write phase.
    """
    from posctx.corpus import open_corpus
    from posctx.model import load_model

    check_shard(shard)
    stored = read_provenance(path, storage_options, output=True)  # a foreign store: refused now
    if stored is None:
        check_writable(path, storage_options)
        open_corpus(config.corpus)  # an unknown corpus fails before the model loads
    else:
        _refuse_mismatch(path, stored, config, allow_more_contexts=True)
        _refuse_interrupted_extension(path, stored, config, storage_options)
    if loaded is None:
        loaded = load_model(config.model)
    if shard is not None and stored is None and is_remote(path):
        raise StoreError(
            f"{path} does not exist yet: on object storage, create it with one process first "
            "(the same command without --shard, with --plan-only), then start the shards"
        )
    if shard is not None and stored is not None and config.store.contexts > stored["config"]["store"]["contexts"]:
        raise StoreError(
            f"{path} holds {stored['config']['store']['contexts']} contexts: extend it to "
            f"{config.store.contexts} with one process first (the same command without --shard, "
            "with --plan-only), then start the shards"
        )
    resumed = prepare_store(config, path, loaded, storage_options=storage_options, progress=progress)
    remove_dead_creations(path)  # e.g. killed between its rename and its own clean-up
    if shard is None:
        # The only writer: what killed processes left half-written is garbage now.
        remove_partial_files(path)
    prov = read_provenance(path, storage_options) or {}
    blocks = plan_blocks(config.store.contexts, int(prov["chunk_contexts"]))
    done = completed_blocks(path, storage_options)
    mine = pending_blocks(blocks, np.zeros(len(blocks), bool), shard)
    todo = [] if plan_only else pending_blocks(blocks, done, shard)
    n_done = sum(b.size for b in mine if done[b.index])
    start = time.perf_counter()
    common: dict[str, Any] = {
        "storage_dtype": config.store.storage_dtype,
        "storage_options": storage_options,
        "progress": progress,
        "n_total": sum(b.size for b in mine),
        "n_done": n_done,
    }
    if not todo:
        tokens = 0
    elif client is not None:
        tokens = run_blocks_distributed(
            client, loaded, path, todo, length=config.store.length, **common
        )
    else:
        tokens = run_blocks(loaded, path, todo, **common)
    return ExtractResult(
        path=str(path),
        n_contexts=config.store.contexts,
        n_blocks=len(blocks),
        blocks_written=len(todo),
        blocks_already_done=len(mine) - len(todo),
        tokens_written=tokens,
        seconds=time.perf_counter() - start,
        resumed=resumed,
        blocks_missing=int((~completed_blocks(path, storage_options)).sum()),
    )


__all__ = [
    "ExtractResult",
    "cached_model",
    "check_shard",
    "extract_block",
    "run_blocks_distributed",
    "compute_block",
    "config_differences",
    "extract",
    "pending_blocks",
    "prepare_store",
    "run_blocks",
]
