"""Planning an extraction: sample the contexts, create or extend the store, and refuse a
resume whose settings, weights or interrupted extension do not match what is stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from posctx.config import AUTO, ExtractConfig
from posctx.errors import PosctxError, StoreError
from posctx.extraction.groups import in_shard
from posctx.store import (
    Block,
    BlockWriter,
    StoreCreatedConcurrently,
    build_dataset,
    create_store,
    default_chunk_contexts,
    plan_blocks,
    provenance_record,
    read_provenance,
)
from posctx.store.layout import RECORD_KEY, StatisticsPlan, default_chunk_layers
from posctx.store.partials import coverage, read_partials, roll_forward, select_partials
from posctx.sums import Edges
from posctx.types import BLOCK_COMPLETE, TOKEN_ID

if TYPE_CHECKING:  # pragma: no cover
    from posctx.model import LoadedModel


# Fields that may differ between the run that made a store and a run that resumes it:
# nothing that changes a hidden state is in here.
_RESUMABLE_DIFFERENCES: frozenset[str] = frozenset()


def config_differences(stored: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """Dotted names of the settings that differ between two ``ExtractConfig.to_dict()``.

    A setting one side does not have at all was added in another posctx version: it is not
    a difference (a store made before posctx kept statistics resumes without them).

    >>> config_differences({"model": {"name": "a", "dtype": "float32"}},
    ...                    {"model": {"name": "b", "dtype": "float32"}})
    ['model.name']
    >>> config_differences({"store": {"contexts": 8}}, {"store": {"contexts": 8, "moments": True}})
    []
    """
    out = []
    for section in sorted(set(stored) | set(requested)):
        a, b = stored.get(section, {}), requested.get(section, {})
        for key in sorted(set(a) & set(b)):
            name = f"{section}.{key}"
            if a[key] != b[key] and name not in _RESUMABLE_DIFFERENCES:
                out.append(name)
    return out


def refuse_mismatch(
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
        windows=config.corpus.windows,
        progress=progress,
        encode_batch=loaded.encode_batch,
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
    statistics = StatisticsPlan.from_record(stored)
    if statistics is not None:  # the new contexts may bring topics the first ones lacked
        topics = sorted({*statistics.topics, *(str(t) for t in plan.topic)})
        record[RECORD_KEY] = {**stored[RECORD_KEY], "topics": topics}
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


def statistics_plan(
    config: ExtractConfig, loaded: LoadedModel, topics: Iterable[Any]
) -> StatisticsPlan | None:
    """The statistics a new store keeps, or ``None`` with ``statistics`` off.

    The left-out positions are those of :func:`posctx.decomposition.paper_positions`:
    position 0 and the tokenizer's trailing special tokens.
    """
    if not config.store.statistics:
        return None
    return StatisticsPlan(
        Edges(config.store.length, 1, len(loaded.special.suffix_ids)),
        config.store.moments,
        config.store.hidden_contexts,
        tuple(sorted({str(t) for t in topics})),
    )


#: The provenance key of the forward batch size a store is extracted with.
BATCH_SIZE_KEY = "batch_size"


def chunk_layout(config: ExtractConfig, loaded: LoadedModel) -> tuple[int, int]:
    """Layers per chunk and contexts per chunk of a new store.

    Chosen when the user gives 0: all layers, unless one context of them exceeds 128 MB
    (:func:`~posctx.store.layout.default_chunk_layers`), and about 64 MB per chunk, but no
    more contexts than the store has (a chunk is stored whole, so a 48-context store would
    otherwise take a 64 MB file). With fewer layers per chunk, more contexts fit in one.
    """
    n_layers = len(loaded.layers)
    itemsize = np.dtype(config.store.storage_dtype).itemsize
    length, n_dims = config.store.length, loaded.hidden_size
    layers = min(
        config.store.chunk_layers or default_chunk_layers(length, n_layers, n_dims, itemsize),
        n_layers,
    )
    contexts = config.store.chunk_contexts or min(
        default_chunk_contexts(length, layers, n_dims, itemsize), config.store.contexts
    )
    return layers, contexts


def forward_batch_size(config: ExtractConfig, loaded: LoadedModel) -> int:
    """The forward batch of a new store: ``--batch-size``, or with ``auto`` what fits in
    the device's free memory (:func:`~posctx.model.memory.auto_batch_size`)."""
    if config.model.batch_size != AUTO:
        return int(config.model.batch_size)
    from posctx.model.memory import auto_batch_size

    return auto_batch_size(
        loaded, config.store.length, config.store.storage_dtype, config.store.statistics
    )


def stored_batch_size(stored: Mapping[str, Any]) -> int:
    """The forward batch a store is extracted with (stores older than the key: the config's)."""
    return int(stored.get(BATCH_SIZE_KEY) or stored["config"]["model"]["batch_size"])


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
    layers_per_chunk, chunk = chunk_layout(config, loaded)
    record = provenance_record(
        config=config.to_dict(),
        model=loaded.info(),
        corpus=corpus.describe(),
        special_tokens=special.to_dict(),
        chunk_contexts=chunk,
    )
    record["chunk_layers"] = layers_per_chunk
    # Fixed with the store: a resume batches every context with the same mates (see
    # posctx.extraction.groups), even where --batch-size auto would choose otherwise.
    record[BATCH_SIZE_KEY] = forward_batch_size(config, loaded)
    statistics = statistics_plan(config, loaded, plan.topic)
    if statistics is not None:
        record[RECORD_KEY] = statistics.to_dict()
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
        chunk_layers=layers_per_chunk,
        provenance=record,
        attrs={"title": _title(config)},
        statistics=None if statistics is None else statistics.edges,
    )
    try:
        create_store(path, ds, encoding, storage_options)
    except StoreCreatedConcurrently:
        # Shards started together all plan the store; the first rename wins and the others
        # join it once it is shown to be the very store they would have made.
        stored = read_provenance(path, storage_options) or {}
        _refuse_other_weights(path, stored, config, loaded)
        if not np.array_equal(
            BlockWriter(path, storage_options).token_ids(Block(0, 0, config.store.contexts)),
            plan.token_ids,
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
    refuse_mismatch(path, stored, config, allow_more_contexts=True)
    if stored.get("model", {}).get("weights_hash") != loaded.weights_hash:
        raise StoreError(
            f"{path} was made with different weights for model {config.model.name!r} "
            f"(hash {stored['model'].get('weights_hash')} vs {loaded.weights_hash}): "
            "use the same weights to resume, or choose another --out"
        )


def refuse_interrupted_extension(
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
    blocks: Iterable[Block],
    done: np.ndarray,
    shard: tuple[int, int] | None = None,
    per_group: int = 1,
) -> list[Block]:
    """The blocks whose completion marker is not set, in order; only shard ``i`` of ``n``
    (the blocks whose forward group's index is ``i`` modulo ``n``, see
    :func:`~posctx.extraction.groups.in_shard`) when ``shard=(i, n)``.

    >>> import numpy as np
    >>> from posctx.store import plan_blocks
    >>> pending_blocks(plan_blocks(10, 4), np.array([True, False, True]))
    [Block(index=1, start=4, stop=8)]
    >>> pending_blocks(plan_blocks(10, 2), np.zeros(5, bool), shard=(1, 2))
    [Block(index=1, start=2, stop=4), Block(index=3, start=6, stop=8)]
    """
    return [b for b in blocks if not bool(done[b.index]) and in_shard(b, per_group, shard)]


def settle_statistics(
    path: str,
    storage_options: Mapping[str, Any] | None,
    blocks: Sequence[Block],
    done: np.ndarray,
    mine: Sequence[Block],
) -> np.ndarray:
    """Markers that agree with the statistics, before this process computes anything.

    Blocks a killed writer counted but did not mark are marked (:func:`roll_forward`); this
    process's blocks that are marked but counted by no partial (their partial was lost) are
    unmarked, so that they are computed again. Returns the markers.
    """

    done = roll_forward(path, storage_options, blocks, done)
    counted = coverage(select_partials(read_partials(path, storage_options)[0]), blocks)
    lost = [b for b in mine if done[b.index] and counted[b.index] == 0]
    unmark(path, storage_options, lost)
    done[[b.index for b in lost]] = False
    return done


def unmark(path: str, storage_options: Mapping[str, Any] | None, blocks: Sequence[Block]) -> None:
    """Clear the markers of ``blocks``, so that they are computed again."""
    if not blocks:
        return
    from posctx.store.location import open_group

    markers = open_group(path, "r+", storage_options)[BLOCK_COMPLETE]
    for block in blocks:
        markers[block.index] = 0


def damaged_blocks(
    path: str,
    storage_options: Mapping[str, Any] | None,
    mine: Sequence[Block],
    done: np.ndarray,
    statistics: StatisticsPlan | None,
) -> list[Block]:
    """This process's blocks marked written whose hidden or statistics chunk files are missing.

    A partial copy or an object-store rule can lose chunk files of finished blocks; the same
    extract command recomputes them (:func:`~posctx.store.integrity.missing_chunks` looks for
    them by name, reading nothing). Blocks whose hidden states the store does not keep
    (``--hidden-contexts``) have no hidden files to miss, but their per-context statistics.
    """
    from posctx.store.integrity import missing_chunks
    from posctx.store.layout import PER_CONTEXT_STATISTICS

    kept = []
    for block in mine:
        stored = block.size if statistics is None else statistics.stores_hidden(block).stop
        if done[block.index] and stored > 0:
            kept.append(Block(block.index, block.start, block.start + stored))
    missing = set(missing_chunks(path, kept, storage_options) if kept else {})
    marked = [block for block in mine if done[block.index]]
    if statistics is not None and marked:
        for name in PER_CONTEXT_STATISTICS:
            missing.update(missing_chunks(path, marked, storage_options, name=name))
    return [block for block in mine if block.index in missing]


#: Environment variable: seconds between a writer's commits of its statistics (default 30).
FLUSH_ENV = "POSCTX_FLUSH_SECONDS"


def flush_seconds() -> float:
    """How often a writer commits its statistics: ``$POSCTX_FLUSH_SECONDS``, default 30.

    A kill loses at most this much of a writer's work; each commit rewrites its partial.
    """
    import os

    value = os.environ.get(FLUSH_ENV, "").strip()
    try:
        seconds = float(value) if value else 30.0
    except ValueError:
        raise PosctxError(
            f"{FLUSH_ENV}={value!r} is not a number of seconds: set it to e.g. 30, or unset it"
        ) from None
    if seconds < 0:
        raise PosctxError(f"{FLUSH_ENV} must be >= 0, got {seconds}: set it to e.g. 30")
    return seconds


def check_shard(shard: tuple[int, int] | None) -> None:
    """Refuse a shard that names no blocks: ``(i, n)`` needs ``0 <= i < n``."""
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise PosctxError(
            f"shard {shard[0]}/{shard[1]} does not exist: give I/N with 0 <= I < N, e.g. 0/4 "
            "... 3/4 for four processes"
        )


@dataclass(frozen=True)
class BlockRun:
    """What one extraction call computes and writes: the plan both executors take.

    :func:`~posctx.extraction.run.run_blocks` runs it in this process (a writer thread
    behind the forward passes), :func:`~posctx.extraction.cluster.run_blocks_distributed`
    as tasks on a dask.distributed cluster.

    Attributes
    ----------
    path
        The store.
    blocks
        The blocks to compute, in order.
    storage_dtype
        Dtype of the stored hidden states.
    length
        Tokens per context (for the token count).
    storage_options
        fsspec options for URLs.
    progress
        Show a progress bar.
    n_total, n_done
        Contexts of this process's share of the store, and how many were already written
        (the progress bar's total and start).
    statistics
        What statistics the store keeps (``None``: none; blocks are marked as written).
    topics
        The store's topics, in the order of the position sums' rows.
    n_contexts, chunk_contexts
        The store's size and block size (to know its short last block).
    flush_seconds
        With statistics, how often a writer commits its partial (and marks the blocks it
        counts): a kill loses at most this much work.
    batch_size
        Contexts per forward pass (the store's, see :func:`stored_batch_size`).
    per_group
        Blocks per forward group (:func:`~posctx.extraction.groups.blocks_per_group`).
    """

    path: str
    blocks: tuple[Block, ...]
    storage_dtype: str
    length: int
    storage_options: Mapping[str, Any] | None = None
    progress: bool = True
    n_total: int | None = None
    n_done: int = 0
    statistics: StatisticsPlan | None = None
    topics: tuple[str, ...] = ()
    n_contexts: int = 0
    chunk_contexts: int = 0
    flush_seconds: float = 30.0
    batch_size: int = 32
    per_group: int = 1

    def all_blocks(self) -> list[Block]:
        """Every block of the store, in order."""
        return plan_blocks(self.n_contexts, self.chunk_contexts)

    def is_tail(self, block: Block) -> bool:
        """Whether ``block`` is the store's short last block (its statistics go apart)."""
        return block.stop == self.n_contexts and block.size < self.chunk_contexts


__all__ = [
    "BATCH_SIZE_KEY",
    "chunk_layout",
    "forward_batch_size",
    "stored_batch_size",
    "unmark",
    "damaged_blocks",
    "statistics_plan",
    "FLUSH_ENV",
    "flush_seconds",
    "settle_statistics",
    "BlockRun",
    "config_differences",
    "refuse_mismatch",
    "plan_contexts",
    "prepare_store",
    "refuse_interrupted_extension",
    "pending_blocks",
    "check_shard",
]
