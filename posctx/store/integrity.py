"""Which chunk files of ``hidden`` are missing from blocks whose markers say they are written.

A block's marker is set only after its data was written (:mod:`posctx.store.blocks`), so a
marked block whose chunk file is gone was damaged afterwards: a partial copy, an object-store
lifecycle rule, a hand-deleted file. zarr (and the direct reader) would read such a chunk as
the fill value, NaN, and a decomposition would average it silently. :func:`missing_chunks`
finds them without reading a single chunk: one ``stat`` per expected chunk file on a local
disk, one listing of the array's prefix on object storage, and nothing computed with dask.
:func:`check_chunks_present` turns a finding into a :class:`~posctx.errors.StoreError`;
``posctx.open_hidden`` calls it once, when it opens a store, and ``posctx validate`` reports
the same finding in its ``completeness`` check.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from posctx.errors import StoreError
from posctx.store.layout import Block
from posctx.store.location import is_remote, local_path, remote_fs
from posctx.types import HIDDEN

#: The name of an array's own metadata document (Zarr v3).
ARRAY_METADATA = "zarr.json"

#: What to do about missing chunk files, for every message that reports them.
REPAIR_ADVICE = (
    "restore the files, or re-run the same `posctx extract` command: it computes the blocks "
    "whose files are missing again"
)

#: How many runs of block indices a message lists before it counts the rest.
_MAX_RUNS = 20


@dataclass(frozen=True)
class ChunkKeys:
    """How a Zarr v3 array names its chunks: its ``chunk_key_encoding``.

    ``prefix`` is ``"c"`` for the ``default`` encoding and ``""`` for ``v2``; ``sep`` is the
    separator between the prefix and the chunk's grid indices.

    Examples
    --------
    >>> ChunkKeys("c", "/").key((3, 0, 1, 0))
    'c/3/0/1/0'
    >>> ChunkKeys("c", ".").key((3, 0, 1, 0))
    'c.3.0.1.0'
    >>> ChunkKeys("", ".").key((3, 0))
    '3.0'
    """

    prefix: str
    sep: str

    def key(self, index: tuple[int, ...]) -> str:
        """The key of the chunk at grid position ``index``, relative to the array."""
        parts = [self.prefix] if self.prefix else []
        parts += [str(i) for i in index]
        return self.sep.join(parts) if parts else "0"  # v2 names a 0-d array's chunk "0"


def chunk_keys(meta: Mapping[str, Any]) -> ChunkKeys | None:
    """The :class:`ChunkKeys` of an array's ``zarr.json``; ``None`` for an unknown encoding.

    Examples
    --------
    >>> chunk_keys({"chunk_key_encoding": {"name": "default"}})
    ChunkKeys(prefix='c', sep='/')
    >>> chunk_keys({"chunk_key_encoding": {"name": "default",
    ...                                    "configuration": {"separator": "."}}})
    ChunkKeys(prefix='c', sep='.')
    >>> chunk_keys({"chunk_key_encoding": {"name": "v2"}})
    ChunkKeys(prefix='', sep='.')
    >>> chunk_keys({"chunk_key_encoding": {"name": "my-own"}}) is None
    True
    """
    encoding = meta.get("chunk_key_encoding", {"name": "default"})
    if isinstance(encoding, str):  # the spec's short form of a configuration-less object
        encoding = {"name": encoding}
    if not isinstance(encoding, Mapping):
        return None
    config = encoding.get("configuration") or {}
    name = encoding.get("name")
    if name == "default":
        return ChunkKeys("c", str(config.get("separator", "/")))
    if name == "v2":
        return ChunkKeys("", str(config.get("separator", ".")))
    return None


def _grid(meta: Mapping[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """``(shape, chunk_shape)`` of a regular chunk grid; ``None`` for any other grid.

    With sharding, ``chunk_shape`` is the shard's: the files are shards.
    """
    grid = meta.get("chunk_grid") or {}
    if not isinstance(grid, Mapping) or grid.get("name") != "regular":
        return None
    chunk_shape = tuple(int(n) for n in (grid.get("configuration") or {}).get("chunk_shape", ()))
    shape = tuple(int(n) for n in meta.get("shape", ()))
    if len(shape) != len(chunk_shape) or not shape or min(chunk_shape) < 1:
        return None
    return shape, chunk_shape


def _expected_keys(
    keys: ChunkKeys, shape: tuple[int, ...], chunk_shape: tuple[int, ...], blocks: Sequence[Block]
) -> dict[int, list[str]]:
    """Block index -> the keys of every chunk holding its contexts (every layer chunk...)."""
    rest = [range(math.ceil(n / c)) for n, c in zip(shape[1:], chunk_shape[1:], strict=True)]
    # The grid positions along the other dims, as key suffixes, made once for all blocks.
    tails = [keys.sep.join(map(str, t)) for t in itertools.product(*rest)]
    expected: dict[int, list[str]] = {}
    for block in blocks:
        stop = min(block.stop, shape[0])
        first, last = block.start // chunk_shape[0], (stop - 1) // chunk_shape[0]
        heads = [keys.key((i,)) for i in range(first, last + 1)] if stop > block.start else []
        expected[block.index] = [
            f"{head}{keys.sep}{tail}" if tail else head for head in heads for tail in tails
        ]
    return expected


def _absent_local(array_dir: str, expected: list[str]) -> list[str]:
    """The keys in ``expected`` with no file under ``array_dir``: one ``stat`` each."""
    if os.stat not in os.supports_dir_fd:  # Windows: whole paths
        return [k for k in expected if not os.path.isfile(os.path.join(array_dir, k))]
    absent = []
    try:
        fd = os.open(array_dir, os.O_RDONLY)
    except FileNotFoundError:
        return list(expected)
    try:
        for key in expected:
            try:  # relative to the array's folder: the store's path is not resolved each time
                os.stat(key, dir_fd=fd)
            except (FileNotFoundError, NotADirectoryError):
                absent.append(key)
    finally:
        os.close(fd)
    return absent


def missing_chunks(
    path: str,
    blocks: Sequence[Block],
    storage_options: Mapping[str, Any] | None = None,
    *,
    name: str = HIDDEN,
) -> dict[int, list[str]]:
    """The chunk files of ``name`` that ``blocks`` should have and that are not there.

    Every chunk that holds contexts of a block is expected: every position, layer and dim
    chunk of it. Nothing is read but the array's ``zarr.json``: locally each expected file is
    looked up (one ``stat`` each), on object storage the array's prefix is listed once (a few
    requests per thousand chunks, never one per chunk). No dask computation is involved.

    Parameters
    ----------
    path
        Local path or fsspec URL of the store.
    blocks
        The blocks to check, normally those marked written.
    storage_options
        fsspec options for URLs.
    name
        The array (default ``hidden``), chunked along its first dimension like the blocks.

    Returns
    -------
    dict
        Block index -> the missing chunks' keys relative to the store (``hidden/c/3/0/0/0``),
        in grid order; only blocks that miss something, in the order of ``blocks``. Empty
        when nothing is missing, and also when the array uses a chunk grid or key encoding
        that is not in the Zarr v3 spec (nothing can be said about its files).

    Raises
    ------
    StoreError
        The array's own metadata (``hidden/zarr.json``) is missing or unreadable.

    Examples
    --------
    >>> import os, tempfile, posctx.testing
    >>> from posctx.store import plan_blocks
    >>> path = tempfile.mkdtemp() + "/h.zarr"
    >>> _ = posctx.testing.write_large_planted_store(path, n_contexts=10, length=4, n_layers=2,
    ...                                              n_dims=3, chunk_contexts=4, chunk_layers=1)
    >>> blocks = plan_blocks(10, 4)
    >>> missing_chunks(path, blocks)
    {}
    >>> os.remove(path + "/hidden/c/1/0/1/0")  # block 1's second layer chunk
    >>> missing_chunks(path, blocks)
    {1: ['hidden/c/1/0/1/0']}
    >>> missing_chunks(path, blocks[::2])  # blocks 0 and 2 only
    {}
    """
    meta = _array_metadata(path, storage_options, name)
    keys, grid = chunk_keys(meta), _grid(meta)
    if keys is None or grid is None:
        return {}
    shape, chunk_shape = grid
    expected = _expected_keys(keys, shape, chunk_shape, blocks)
    if is_remote(path):
        fs, root = remote_fs(path, storage_options)
        base = f"{root}/{name}"
        # One recursive listing (paged by the store, 1,000 keys a request on S3).
        present = {str(p).removeprefix(base).lstrip("/") for p in fs.find(base)}
        missing = {b: [k for k in ks if k not in present] for b, ks in expected.items()}
    else:
        array_dir = os.path.join(local_path(path), name)
        absent = set(_absent_local(array_dir, [k for ks in expected.values() for k in ks]))
        missing = {b: [k for k in ks if k in absent] for b, ks in expected.items()}
    return {b: [f"{name}/{k}" for k in ks] for b, ks in missing.items() if ks}


def _array_metadata(
    path: str, storage_options: Mapping[str, Any] | None, name: str
) -> dict[str, Any]:
    """The array's own ``zarr.json``; ``StoreError`` when it is missing or unreadable."""
    where = f"{name}/{ARRAY_METADATA}"
    try:
        if is_remote(path):
            fs, root = remote_fs(path, storage_options)
            raw = fs.cat_file(f"{root}/{where}")
        else:
            raw = (local_path(path) / name / ARRAY_METADATA).read_bytes()
        meta = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise StoreError(
            f"{path}: the metadata of `{name}` ({where}) cannot be read "
            f"({type(exc).__name__}: {exc}): the store is damaged (a partial copy?); run "
            f"`posctx validate {path}` for details"
        ) from exc
    if not isinstance(meta, dict):
        raise StoreError(
            f"{path}: {where} is not an array's metadata: the store is damaged; run "
            f"`posctx validate {path}` for details"
        )
    return meta


def block_runs(indices: Sequence[int], limit: int = _MAX_RUNS) -> str:
    """Block indices as runs, ``3, 7-9, 12``; past ``limit`` runs the rest is counted.

    Examples
    --------
    >>> block_runs([3, 7, 8, 9, 12])
    '3, 7-9, 12'
    >>> block_runs([0, 2, 4, 6, 7], limit=2)
    '0, 2 and 3 more blocks'
    """
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    shown = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs[:limit])
    rest = sum(b - a + 1 for a, b in runs[limit:])
    return f"{shown} and {rest} more blocks" if rest else shown


def describe_missing(missing: Mapping[int, Sequence[str]], name: str = HIDDEN) -> str:
    """What :func:`missing_chunks` found, as a phrase: how many chunks, which blocks, one key.

    Examples
    --------
    >>> describe_missing({3: ["hidden/c/3/0/0/0"]})
    '1 chunk of hidden is missing although its block is marked written (block 3; e.g. hidden/c/3/0/0/0)'
    >>> describe_missing({3: ["hidden/c/3/0/0/0", "hidden/c/3/0/1/0"], 7: ["hidden/c/7/0/0/0"]})
    '3 chunks of hidden are missing although their blocks are marked written (blocks 3, 7; e.g. hidden/c/3/0/0/0)'
    """
    count = sum(len(keys) for keys in missing.values())
    blocks = sorted(missing)
    example = missing[blocks[0]][0]
    if count == 1:
        head = f"1 chunk of {name} is missing"
    else:
        head = f"{count} chunks of {name} are missing"
    marked = "its block is" if len(blocks) == 1 else "their blocks are"
    which = "block" if len(blocks) == 1 else "blocks"
    return f"{head} although {marked} marked written ({which} {block_runs(blocks)}; e.g. {example})"


def damaged_store_message(
    path: str, missing: Mapping[int, Sequence[str]], name: str = HIDDEN
) -> str:
    """The one-line refusal of a store missing chunks of ``name``, naming them and the fix."""
    return (
        f"{path}: {describe_missing(missing, name)}: the store is damaged (a partial copy?); run "
        f"`posctx validate {path}` for details, and {REPAIR_ADVICE}"
    )


def check_chunks_present(
    path: str, blocks: Sequence[Block], storage_options: Mapping[str, Any] | None = None
) -> None:
    """Refuse a store in which ``blocks`` (marked written) lack chunk files of ``hidden``.

    Raises
    ------
    StoreError
        Some chunk is missing (the message names the blocks, one chunk, and says to run
        ``posctx validate``), or the metadata of ``hidden`` cannot be read.

    Examples
    --------
    >>> import os, tempfile, posctx.testing
    >>> from posctx.store import plan_blocks
    >>> path = tempfile.mkdtemp() + "/h.zarr"
    >>> _ = posctx.testing.write_large_planted_store(path, n_contexts=8, length=4, n_layers=2,
    ...                                              n_dims=3, chunk_contexts=4)
    >>> os.remove(path + "/hidden/c/1/0/0/0")
    >>> check_chunks_present(path, plan_blocks(8, 4))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    posctx.errors.StoreError: ...: 1 chunk of hidden is missing although its block is marked written (block 1; e.g. hidden/c/1/0/0/0): the store is damaged (a partial copy?); run `posctx validate ...` for details, and restore the files, or re-run the same ...
    """
    missing = missing_chunks(path, blocks, storage_options)
    if missing:
        raise StoreError(damaged_store_message(path, missing))


__all__ = [
    "ARRAY_METADATA",
    "REPAIR_ADVICE",
    "ChunkKeys",
    "block_runs",
    "check_chunks_present",
    "chunk_keys",
    "damaged_store_message",
    "describe_missing",
    "missing_chunks",
]
