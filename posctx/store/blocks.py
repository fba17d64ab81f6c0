"""Writing blocks (data, then marker), their completion markers, and crash leftovers."""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from posctx.errors import StoreError
from posctx.store.layout import PER_CONTEXT_STATISTICS, Block
from posctx.store.location import is_remote, local_path, open_group
from posctx.types import (
    BLOCK_COMPLETE,
    HIDDEN,
    TOKEN_ID,
    TOPIC,
)

# zarr's LocalStore writes a chunk to "<key minus suffix>.<uuid4 hex>.partial" and renames it;
# a SIGKILL between the two leaves the temporary file behind.
_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")


class BlockWriter:
    """Writes finished blocks of ``hidden`` and then their completion markers.

    Data first, marker second: a kill between the two leaves the block unmarked, and a resume
    rewrites it.
    """

    def __init__(self, path: str, storage_options: Mapping[str, Any] | None = None) -> None:
        group = open_group(path, "r+", storage_options)
        self._group = group
        self.path = str(path)
        self._local_root = None if is_remote(path) else local_path(path)
        self._hidden = group[HIDDEN]
        self._marker = group[BLOCK_COMPLETE]
        self._token_id = group[TOKEN_ID]
        self.length = int(self._token_id.shape[1])

    def token_ids(self, block: Block) -> np.ndarray:
        return np.asarray(self._token_id[block.start : block.stop])

    def topics(self, block: Block) -> np.ndarray:
        """The topic of each context of ``block``."""
        return np.asarray(self._group[TOPIC][block.start : block.stop])

    def write(self, block: Block, data: np.ndarray) -> None:
        """Write a block's hidden states, then its marker."""
        try:
            self._remove_partials(block)
            self._hidden[block.start : block.stop] = data
            self._marker[block.index] = 1
        except OSError as exc:
            raise StoreError(_write_failure(self.path, block, exc)) from exc

    def write_unmarked(
        self, block: Block, data: np.ndarray, statistics: Mapping[str, np.ndarray]
    ) -> None:
        """Write a block's hidden states (the first ``len(data)`` contexts) and statistics.

        The marker waits for the partial that counts the block (see
        :mod:`posctx.store.statistics`); :meth:`mark` sets it.
        """
        try:
            self._remove_partials(block)
            if len(data):
                self._hidden[block.start : block.start + len(data)] = data
            for name, key in PER_CONTEXT_STATISTICS.items():
                self._group[name][block.start : block.stop] = statistics[key]
        except OSError as exc:
            raise StoreError(_write_failure(self.path, block, exc)) from exc

    def mark(self, blocks: Sequence[Block]) -> None:
        """Set the markers of blocks whose data and statistics are written and counted."""
        try:
            for block in blocks:
                self._marker[block.index] = 1
        except OSError as exc:
            raise StoreError(_write_failure(self.path, blocks[0], exc)) from exc

    def _remove_partials(self, block: Block) -> None:
        """Delete the temporary files a killed writer of this block left behind.

        zarr writes a local chunk to ``<chunk>.<uuid>.partial`` and renames it into place, so
        a SIGKILL mid-write leaves up to a chunk (64 MB) of garbage that nothing reads. Only
        this block's files are touched: blocks are disjoint between writers, and a duplicate
        writer of the same block that loses its file just fails and leaves the block unmarked.
        Only the block's own chunk folder is listed: a stray marker file is a few bytes, and
        listing the folder of every marker for every block would cost O(blocks²).
        """
        if self._local_root is None:
            return
        for name in (HIDDEN, *PER_CONTEXT_STATISTICS):
            for partial in (self._local_root / name / "c" / str(block.index)).rglob("*.partial"):
                if _PARTIAL.search(partial.name):  # zarr's own temporary files only
                    partial.unlink(missing_ok=True)


def partial_files(path: str) -> list[tuple[str, int]]:
    """``(path, bytes)`` of the half-written chunk files a killed writer left in a local store.

    zarr writes each chunk to ``<chunk>.<uuid>.partial`` and renames it into place; a writer
    killed in between leaves that file, which no reader ever looks at.
    """
    found = []
    for root, _, files in os.walk(local_path(path)):
        for name in files:
            if _PARTIAL.search(name):
                full = os.path.join(root, name)
                try:
                    found.append((full, os.path.getsize(full)))
                except OSError:  # renamed into place by a writer just now
                    continue
    return sorted(found)


def remove_partial_files(path: str) -> tuple[int, int]:
    """Delete the temporary ``.partial`` files of a local store; returns (files, bytes).

    A killed process leaves the chunk or metadata file it was writing behind as
    ``<name>.<uuid>.partial`` (zarr renames it into place only when complete): the files
    :func:`partial_files` lists. Nothing reads them, but a data chunk's can be 64 MB. Only
    call this while no other process writes the store: a live writer's temporary file would
    vanish under it (it would fail, not corrupt).
    """
    if is_remote(path):
        return 0, 0
    count = size = 0
    for full, n in partial_files(path):
        with contextlib.suppress(FileNotFoundError):  # renamed into place meanwhile
            os.unlink(full)
            count += 1
            size += n
    return count, size


def _write_failure(path: str, block: Block, exc: OSError) -> str:
    """One line for a failed block write: the cause, and that nothing finished is lost."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        fix = "free space (or choose another --out) and re-run the same command to resume"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "make the location writable again and re-run the same command to resume"
    else:
        fix = "fix the storage problem and re-run the same command to resume"
    return (
        f"writing block {block.index} (contexts {block.start}:{block.stop}) of {path} failed "
        f"({cause}): {fix}; the blocks already finished are kept"
    )


def completed_blocks(path: str, storage_options: Mapping[str, Any] | None = None) -> np.ndarray:
    """Boolean array, one entry per block: ``True`` where the block is fully written."""
    group = open_group(path, "r", storage_options)
    done: np.ndarray = np.asarray(group[BLOCK_COMPLETE][:]) == 1
    return done


__all__ = ["BlockWriter", "partial_files", "remove_partial_files", "completed_blocks"]
