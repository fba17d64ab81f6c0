"""Public test helpers: synthetic hidden-state stores with a known answer, and compute counters.

Use them to test your own pipelines on top of posctx:

* :func:`planted_hidden` builds a dataset in the hidden-state store schema whose position and
  context parts are known exactly (a smooth helix for position, topic clusters for context);
* :func:`hidden_dataset` wraps any array of your own in that schema;
* :func:`write_planted_store` writes a planted dataset to Zarr, as ``posctx extract`` would;
* :func:`raise_if_dask_computes` fails if code meant to be lazy computes anything;
* :func:`track_chunk_reads` counts how often each chunk of a dask array is read.

Examples
--------
>>> from posctx.testing import planted_hidden, raise_if_dask_computes
>>> ds, truth = planted_hidden(12, 6, 2, 4, chunks_context=5)
>>> ds.hidden.dims
('context', 'position', 'layer', 'dim')
>>> ds.hidden.chunks[0]
(5, 5, 2)
>>> with raise_if_dask_computes():
...     doubled = ds.hidden * 2  # lazy: fine
"""

from __future__ import annotations

import collections
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import dask
import dask.array as da
import numpy as np
import numpy.typing as npt
import xarray as xr
from dask.array.utils import meta_from_array
from dask.local import get_sync

from posctx.store import writing_consolidated, zarr_location
from posctx.store.layout import schema_dataset
from posctx.types import HIDDEN_DIMS, OFFSET, PROVENANCE_ATTR, SOURCE, TOPIC

Chunks = int | Sequence[int] | None


def _centre(x: npt.NDArray[np.float64], axis: int) -> npt.NDArray[np.float64]:
    centred: npt.NDArray[np.float64] = x - x.mean(axis=axis, keepdims=True)
    return centred


def planted_components(
    n_contexts: int,
    length: int,
    n_layers: int,
    n_dims: int,
    *,
    noise: float = 0.1,
    seed: int = 0,
    n_topics: int = 3,
) -> dict[str, npt.NDArray[Any]]:
    """The known parts of a planted table, in float64, with ``h = mu + pos + ctx + resid``.

    * ``mu`` ``(L, D)``: a random mean per layer;
    * ``pos`` ``(T, L, D)``: one turn of a helix (cosine, sine, linear drift) embedded in a
      random 3-d subspace per layer, rank ``min(3, D)``, centred over positions;
    * ``ctx`` ``(C, L, D)``: context ``c`` belongs to topic ``c % n_topics``; its vector is the
      topic's centre plus a smaller spread, centred over contexts;
    * ``resid`` ``(C, T, L, D)``: Gaussian noise of scale ``noise``, double-centred (zero mean
      over contexts and over positions), so the decomposition recovers ``pos`` and ``ctx``
      exactly.

    Also returned: ``topic`` ``(C,)`` (int topic index), ``h`` ``(C, T, L, D)`` float64, and
    the sums of squares ``ss_total``, ``ss_pos``, ``ss_ctx``, ``ss_resid`` ``(L,)``.

    Examples
    --------
    >>> parts = planted_components(6, 5, 2, 4)
    >>> import numpy as np
    >>> bool(np.allclose(parts["ss_total"], parts["ss_pos"] + parts["ss_ctx"] + parts["ss_resid"]))
    True
    """
    if min(n_contexts, length, n_layers, n_dims) < 1:
        raise ValueError("all sizes must be >= 1")
    if n_topics < 1:
        raise ValueError(f"n_topics must be >= 1, got {n_topics}")
    rng = np.random.default_rng(seed)
    mu = rng.normal(0.0, 2.0, size=(n_layers, n_dims))

    frac = np.arange(length) / length
    # One helix turn: a smooth, low-rank curve like the spirals reported for GPT-2.
    curve = np.stack(
        [np.cos(2 * np.pi * frac), np.sin(2 * np.pi * frac), 2.0 * frac - 1.0], axis=-1
    )
    rank = min(3, n_dims)
    pos = np.empty((length, n_layers, n_dims))
    for layer in range(n_layers):
        basis, _ = np.linalg.qr(rng.normal(size=(n_dims, rank)))
        pos[:, layer, :] = 3.0 * curve[:, :rank] @ basis.T
    pos = _centre(pos, axis=0)

    topic = np.arange(n_contexts) % n_topics
    centres = rng.normal(0.0, 1.5, size=(n_topics, n_layers, n_dims))
    ctx = centres[topic] + rng.normal(0.0, 0.3, size=(n_contexts, n_layers, n_dims))
    ctx = _centre(ctx, axis=0)

    resid = noise * rng.normal(size=(n_contexts, length, n_layers, n_dims))
    resid = _centre(_centre(resid, axis=0), axis=1)

    h = mu + pos[np.newaxis] + ctx[:, np.newaxis] + resid
    ss_pos = n_contexts * np.einsum("tld,tld->l", pos, pos)
    ss_ctx = length * np.einsum("cld,cld->l", ctx, ctx)
    ss_resid = np.einsum("ctld,ctld->l", resid, resid)
    return {
        "mu": mu,
        "pos": pos,
        "ctx": ctx,
        "resid": resid,
        "topic": topic,
        "h": h,
        "ss_pos": ss_pos,
        "ss_ctx": ss_ctx,
        "ss_resid": ss_resid,
        # The parts are orthogonal by construction, so the total is their sum exactly.
        "ss_total": ss_pos + ss_ctx + ss_resid,
    }


def planted_hidden(
    n_contexts: int,
    length: int,
    n_layers: int,
    n_dims: int,
    *,
    chunks_context: Chunks = 8,
    chunks_layer: Chunks = None,
    chunks_position: Chunks = None,
    noise: float = 0.1,
    seed: int = 0,
    dtype: str = "float32",
    n_topics: int = 3,
) -> tuple[xr.Dataset, dict[str, npt.NDArray[Any]]]:
    """A dask-backed dataset in the hidden-state store schema, with a known decomposition.

    Parameters
    ----------
    n_contexts, length, n_layers, n_dims
        Sizes C, T, L and D.
    chunks_context, chunks_layer, chunks_position
        Dask chunking of ``hidden`` along context, layer and position: a size or explicit
        tuple of sizes; ``None`` means one chunk. ``dim`` is always one chunk.
    noise
        Scale of the residual part.
    seed
        Seeds every random part.
    dtype
        Storage dtype of ``hidden`` (``"float32"``, ``"float16"`` or ``"float64"``).
    n_topics
        Number of topic clusters among the contexts.

    Returns
    -------
    ds : xarray.Dataset
        ``hidden`` (context, position, layer, dim), ``token_id`` (context, position) int32,
        ``block_complete`` (block,) uint8 (all ones: one block per context chunk); coords
        ``context``, ``position``, ``layer``, ``dim`` (int64), ``topic``, ``source``,
        ``offset`` along context, ``layer_name`` along layer and ``block_start`` along
        block; the generator's parameters in ``attrs["posctx"]["planted"]``. See
        :func:`hidden_dataset`.
    truth : dict of numpy.ndarray
        The float64 parts from :func:`planted_components`. ``hidden`` is ``truth["h"]`` cast
        to ``dtype``, so a decomposition of it matches the truth up to that rounding.

    Examples
    --------
    >>> ds, truth = planted_hidden(10, 4, 3, 5, chunks_context=4, chunks_layer=2)
    >>> ds.hidden.data.chunks
    ((4, 4, 2), (4,), (2, 1), (5,))
    >>> sorted(truth)[:4]
    ['ctx', 'h', 'mu', 'pos']
    >>> ds.topic.values[:4].tolist()
    ['topic0', 'topic1', 'topic2', 'topic0']
    """
    truth = planted_components(
        n_contexts, length, n_layers, n_dims, noise=noise, seed=seed, n_topics=n_topics
    )
    np_dtype = np.dtype(dtype)
    if not np.issubdtype(np_dtype, np.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype!r}")

    provenance = {
        "generator": "posctx.testing.planted_hidden",
        "n_contexts": n_contexts,
        "length": length,
        "n_layers": n_layers,
        "n_dims": n_dims,
        "noise": noise,
        "seed": seed,
        "dtype": np_dtype.name,
        "n_topics": n_topics,
    }
    ds = hidden_dataset(
        truth["h"].astype(np_dtype),
        chunks_context=chunks_context,
        chunks_position=chunks_position,
        chunks_layer=chunks_layer,
        topics=[f"topic{k}" for k in truth["topic"]],
        attrs={PROVENANCE_ATTR: {"planted": provenance}},
        seed=seed,
    )
    return ds, truth


def _chunk_spec(chunks: Chunks, size: int) -> int | tuple[int, ...]:
    if chunks is None:
        return size
    return chunks if isinstance(chunks, int) else tuple(chunks)


def hidden_dataset(
    h: npt.ArrayLike,
    *,
    chunks_context: Chunks = 8,
    chunks_position: Chunks = None,
    chunks_layer: Chunks = None,
    chunks_dim: Chunks = None,
    topics: Sequence[str] | None = None,
    attrs: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> xr.Dataset:
    """Wrap any ``(context, position, layer, dim)`` array in the hidden-state store schema.

    Parameters
    ----------
    h
        Hidden states, shape ``(C, T, L, D)``; the dtype is kept.
    chunks_context, chunks_position, chunks_layer, chunks_dim
        Dask chunking along each dim: a size or explicit tuple of sizes; ``None`` means one
        chunk.
    topics
        Topic name of each context; default ``"topic0"`` for all.
    attrs
        Extra attrs. ``posctx_kind`` (``"hidden"``) and ``posctx_schema`` are always set,
        and ``posctx`` (the provenance record) defaults to ``{}``, as in stores written by
        ``posctx extract``.
    seed
        Seeds the random ``token_id``.

    Returns
    -------
    xarray.Dataset
        ``hidden`` (dask), ``token_id`` (context, position) int32, ``block_complete``
        (block,) uint8 (all ones: one block per context chunk, starting at the
        ``block_start`` coordinate); int64 index coords ``context``, ``position``,
        ``layer``, ``dim``; ``topic``, ``source``, ``offset`` along context and
        ``layer_name`` along layer.

    Examples
    --------
    >>> import numpy as np
    >>> ds = hidden_dataset(np.zeros((5, 3, 2, 4), np.float16), chunks_context=2)
    >>> ds.hidden.dtype, ds.hidden.data.chunks[0], ds.sizes["block"]
    (dtype('float16'), (2, 2, 1), 3)
    """
    x = np.asarray(h)
    if x.ndim != len(HIDDEN_DIMS):
        raise ValueError(f"expected a (context, position, layer, dim) array, got shape {x.shape}")
    n_contexts, length, n_layers, n_dims = x.shape
    c_chunks = _chunk_spec(chunks_context, n_contexts)
    hidden = da.from_array(
        x,
        chunks=(
            c_chunks,
            _chunk_spec(chunks_position, length),
            _chunk_spec(chunks_layer, n_layers),
            _chunk_spec(chunks_dim, n_dims),
        ),
    )
    rng = np.random.default_rng(seed + 1)
    token_id = da.from_array(
        rng.integers(0, 30_000, size=(n_contexts, length), dtype=np.int32),
        chunks=(c_chunks, -1),
    )
    topic_names = np.array(
        list(topics) if topics is not None else ["topic0"] * n_contexts, dtype=object
    )
    if topic_names.shape != (n_contexts,):
        raise ValueError(f"need one topic per context ({n_contexts}), got {topic_names.shape}")
    extra = dict(attrs or {})
    provenance = extra.pop(PROVENANCE_ATTR, {})
    ds: xr.Dataset = schema_dataset(
        hidden=hidden,
        token_ids=token_id,
        # One block per context chunk, all written.
        block_complete=np.ones(len(hidden.chunks[0]), dtype=np.uint8),
        block_start=np.cumsum((0, *hidden.chunks[0][:-1])),
        context_labels={
            TOPIC: topic_names,
            SOURCE: np.array([f"planted:{name}" for name in topic_names], dtype=object),
            OFFSET: np.arange(n_contexts, dtype=np.int64) * length,
        },
        layers=range(n_layers),
        layer_names=["embeddings"] + [f"block_{k}" for k in range(1, n_layers)],
        provenance=provenance,
        attrs=extra,
    )
    return ds


def write_planted_store(
    path: str,
    *,
    consolidated: bool = True,
    storage_options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, npt.NDArray[Any]]:
    """Write :func:`planted_hidden` to a Zarr v3 store at ``path``; return the truth.

    ``kwargs`` go to :func:`planted_hidden` (use regular chunk sizes: Zarr needs them). With
    ``consolidated=True`` (the default) the store opens without warnings via a plain
    ``xr.open_zarr(path)``. ``path`` may be an fsspec URL (with ``storage_options``).

    Examples
    --------
    >>> import tempfile, os
    >>> import xarray as xr
    >>> path = os.path.join(tempfile.mkdtemp(), "planted.zarr")
    >>> truth = write_planted_store(path, n_contexts=8, length=4, n_layers=2, n_dims=3)
    >>> xr.open_zarr(path).hidden.shape
    (8, 4, 2, 3)
    """
    ds, truth = planted_hidden(**kwargs)
    location, options = zarr_location(path, storage_options)
    with writing_consolidated():
        ds.to_zarr(location, mode="w-", zarr_format=3, consolidated=consolidated, **options)
    return truth


def write_large_planted_store(
    path: str,
    *,
    n_contexts: int,
    length: int,
    n_layers: int,
    n_dims: int,
    chunk_contexts: int,
    dtype: str = "float32",
    noise: float = 0.5,
    seed: int = 0,
    n_topics: int = 4,
    progress: bool = False,
    chunk_layers: int = 0,
    statistics: bool = False,
    moments: bool = False,
    hidden_contexts: int | None = None,
) -> dict[str, npt.NDArray[Any]]:
    """Write a planted store of any size block by block, in the real store schema.

    Unlike :func:`write_planted_store` nothing of size ``C*T*L*D`` is ever in memory, so it
    makes stores far larger than RAM (benchmarks, memory-limit tests). ``hidden`` is
    ``mu + pos[t] + ctx[c] + resid`` with the residual double-centred within every pair of
    contexts (``e`` and ``-e``, centred over positions), so the decomposition recovers
    ``mu``, ``pos`` and ``ctx`` exactly up to the storage dtype's rounding.

    Each block is one chunk along ``context``; ``chunk_layers`` layers make a chunk along
    ``layer`` (0: all of them), as ``posctx extract --chunk-layers`` does.

    With ``statistics`` the store also keeps the statistics ``posctx extract`` keeps
    (position 0 left out, no trailing special tokens), computed with the numpy reference
    :func:`posctx.sums.block_statistics` and committed as one partial; ``moments`` and
    ``hidden_contexts`` as for extraction.

    Returns the truth: ``mu`` ``(L, D)``, ``pos`` ``(T, L, D)`` and ``ctx`` ``(C, L, D)``
    (float64) and ``topic`` ``(C,)``.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import posctx
    >>> path = os.path.join(tempfile.mkdtemp(), "big.zarr")
    >>> truth = write_large_planted_store(path, n_contexts=10, length=6, n_layers=2,
    ...                                   n_dims=3, chunk_contexts=4)
    >>> dec = posctx.decompose(posctx.open_hidden(path)).compute()
    >>> bool(np.allclose(dec.ctx, truth["ctx"], atol=1e-4))
    True
    """
    from tqdm.auto import tqdm

    from posctx.store import BlockWriter, build_dataset, create_store, plan_blocks
    from posctx.store.layout import RECORD_KEY, StatisticsPlan
    from posctx.store.partials import write_partial
    from posctx.sums import Edges, PartialSums, block_statistics

    if chunk_contexts % 2:
        raise ValueError("chunk_contexts must be even: the residual is planted in pairs")
    parts = planted_components(
        min(n_contexts, 2 * n_topics),
        length,
        n_layers,
        n_dims,
        noise=0.0,
        seed=seed,
        n_topics=n_topics,
    )
    rng = np.random.default_rng(seed + 1)
    topic = np.arange(n_contexts) % n_topics
    centres = rng.normal(0.0, 1.5, size=(n_topics, n_layers, n_dims))
    ctx = centres[topic] + rng.normal(0.0, 0.3, size=(n_contexts, n_layers, n_dims))
    ctx = _centre(ctx, axis=0)
    mu, pos = parts["mu"], parts["pos"]
    record: dict[str, Any] = {
        "planted": {"generator": "write_large_planted_store", "seed": seed},
        "chunk_contexts": chunk_contexts,
    }
    plan = None
    if statistics:
        plan = StatisticsPlan(
            Edges(length, 1, 0),
            moments,
            hidden_contexts,
            tuple(f"topic{k}" for k in range(n_topics)),
        )
        record[RECORD_KEY] = plan.to_dict()
    ds, encoding = build_dataset(
        token_ids=np.zeros((n_contexts, length), dtype=np.int32),
        topic=np.array([f"topic{k}" for k in topic]),
        source=np.array([f"planted:{c}" for c in range(n_contexts)]),
        offset=np.zeros(n_contexts, dtype=np.int64),
        layers=tuple(range(n_layers)),
        layer_names=tuple("embeddings" if i == 0 else f"block_{i}" for i in range(n_layers)),
        hidden_size=n_dims,
        storage_dtype=dtype,
        chunk_contexts=chunk_contexts,
        chunk_layers=chunk_layers,
        provenance=record,
        statistics=None if plan is None else plan.edges,
    )
    create_store(path, ds, encoding)
    writer = BlockWriter(path)
    base = (mu + pos).astype(np.float32)  # (T, L, D)
    blocks = plan_blocks(n_contexts, chunk_contexts)
    sums = None
    if plan is not None:
        sums = PartialSums(
            plan.topics, length=length, n_layers=n_layers, n_dims=n_dims, moments=moments
        )
    for block in tqdm(blocks, disable=not progress, unit="block"):
        half = (block.size + 1) // 2
        e = rng.standard_normal((half, length, n_layers, n_dims), dtype=np.float32)
        e *= noise
        e -= e.mean(axis=1, keepdims=True)
        resid = np.concatenate([e, -e])[: block.size]
        if block.size % 2:  # the store's last, odd context: no partner, so no residual
            resid[-1] = 0.0
        resid += base
        resid += ctx[block.start : block.stop, np.newaxis].astype(np.float32)
        stored = resid.astype(dtype, copy=False)
        if plan is None or sums is None:
            writer.write(block, stored)
            continue
        stats = block_statistics(
            stored, plan.edges, topic[block.start : block.stop], n_topics, moments=moments
        )
        sums.add(stats, plan.topics)
        writer.write_unmarked(block, stored[plan.stores_hidden(block)], stats)
    if plan is not None and sums is not None:
        write_partial(
            path,
            None,
            owner="planted",
            seq=0,
            blocks=blocks,
            topics=plan.topics,
            sums=sums.result(),
        )
        writer.mark(blocks)
    return {"mu": mu, "pos": pos, "ctx": ctx, "topic": topic}


class CountingScheduler:
    """A dask scheduler that counts its calls and refuses more than ``max_computes``.

    Each ``compute``/``persist``/``.values`` of a dask collection is one call; the work is
    then done by the synchronous scheduler.
    """

    def __init__(self, max_computes: int = 0) -> None:
        self.total_computes = 0
        self.max_computes = max_computes

    def __call__(self, dsk: Mapping[Any, Any], keys: Any, **kwargs: Any) -> Any:
        self.total_computes += 1
        if self.total_computes > self.max_computes:
            raise RuntimeError(
                f"Too many dask computes: {self.total_computes} > max {self.max_computes}. "
                "Something that should be lazy computed."
            )
        return get_sync(dsk, keys, **kwargs)


@contextmanager
def raise_if_dask_computes(max_computes: int = 0) -> Iterator[CountingScheduler]:
    """Raise ``RuntimeError`` if dask computes more than ``max_computes`` times inside.

    Wrap every call that promises to be lazy. The scheduler is set through
    ``dask.config.set(scheduler=...)``, which overrides a ``dask.distributed`` client too.

    Examples
    --------
    >>> import dask.array as da
    >>> x = da.ones(4, chunks=2)
    >>> with raise_if_dask_computes():
    ...     y = x + 1
    >>> with raise_if_dask_computes():
    ...     y.sum().compute()
    Traceback (most recent call last):
    ...
    RuntimeError: Too many dask computes: 1 > max 0. Something that should be lazy computed.
    >>> with raise_if_dask_computes(max_computes=1) as counter:
    ...     _ = y.sum().compute()
    >>> counter.total_computes
    1
    """
    counter = CountingScheduler(max_computes)
    with dask.config.set(scheduler=counter):
        yield counter


class ChunkReadCounter:
    """Counts how often each chunk of a dask array was produced, keyed by chunk index.

    Made by :func:`track_chunk_reads`. Thread-safe; counts live in this process, so use it
    with the synchronous or threaded scheduler.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._token = uuid.uuid4().hex
        self.counts: collections.Counter[tuple[int, ...]] = collections.Counter()

    def __call__(self, block: Any, block_id: tuple[int, ...] | None = None) -> Any:
        with self._lock:
            self.counts[tuple(block_id) if block_id is not None else ()] += 1
        return block

    def __dask_tokenize__(self) -> str:
        # Each counter is its own task name, never merged with another counter's tasks.
        return self._token

    @property
    def total(self) -> int:
        """Number of chunk reads so far."""
        return sum(self.counts.values())


def track_chunk_reads(x: da.Array) -> tuple[da.Array, ChunkReadCounter]:
    """``x`` with every chunk passed through a counter; returns the array and the counter.

    Examples
    --------
    >>> import dask, dask.array as da
    >>> x, reads = track_chunk_reads(da.ones((4, 4), chunks=2))
    >>> _ = dask.compute(x.sum(), x.mean(), scheduler="sync")
    >>> reads.total, max(reads.counts.values())
    (4, 1)
    """
    counter = ChunkReadCounter()
    tracked = da.map_blocks(counter, x, dtype=x.dtype, meta=meta_from_array(x))
    return tracked, counter


__all__ = [
    "ChunkReadCounter",
    "CountingScheduler",
    "hidden_dataset",
    "planted_components",
    "planted_hidden",
    "raise_if_dask_computes",
    "track_chunk_reads",
    "write_large_planted_store",
    "write_planted_store",
]
