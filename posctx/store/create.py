"""Creating a store (atomically where the storage allows) and growing it to more contexts."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from posctx.errors import StoreError
from posctx.store.layout import STATISTICS_SCHEMA, plan_blocks
from posctx.store.location import (
    consolidate,
    is_remote,
    local_path,
    open_group,
    remote_fs,
    writing_consolidated,
    zarr_location,
)
from posctx.store.provenance import InterruptedCreation
from posctx.types import (
    BLOCK_COMPLETE,
    BLOCK_START,
    CONTEXT,
    CREATING_ATTR,
    EDGE,
    HIDDEN,
    OFFSET,
    PROVENANCE_ATTR,
    SOURCE,
    TOKEN_ID,
    TOPIC,
)


def create_store(
    path: str,
    ds: Any,
    encoding: Mapping[str, Any],
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Write the schema and coordinates of a new store; ``hidden`` stays unwritten.

    Locally the store is built in a hidden sibling folder and renamed into place, so a crash
    during creation never leaves a half-made store behind. Object storage cannot rename a
    prefix: there the provenance record, which makes a store resumable, is written last.
    """
    kwargs: dict[str, Any] = {
        "mode": "w-",
        "compute": False,
        "zarr_format": 3,
        "consolidated": True,
        "encoding": dict(encoding),
    }
    with writing_consolidated():
        if is_remote(path):
            # Without the record a half-written store (token ids missing, say) is refused by
            # read_provenance instead of being resumed.
            record = {PROVENANCE_ATTR: ds.attrs[PROVENANCE_ATTR]}
            ds = ds.copy()
            del ds.attrs[PROVENANCE_ATTR]
            # Who is creating it: a re-run on this host may then clear a creation whose
            # process has died (remove_interrupted_creation).
            ds.attrs[CREATING_ATTR] = {"host": socket.gethostname(), "pid": os.getpid()}
            location, options = zarr_location(path, storage_options)
            try:
                ds.to_zarr(location, **options, **kwargs)
                open_group(path, "r+", storage_options).update_attributes(record)
                consolidate(path, storage_options)  # an attrs write drops the consolidated copy
            except OSError as exc:  # fsspec's translation of a missing bucket, a denied write...
                raise StoreError(
                    f"cannot write a store at {path} ({exc}): choose a writable --out location "
                    "or fix the storage options"
                ) from exc
            return
        target = local_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_creations(target)
        tmp = Path(tempfile.mkdtemp(prefix=_creating_prefix(target), dir=target.parent))
        try:
            ds.to_zarr(str(tmp / "store.zarr"), **kwargs)
            try:
                # rename(2) replaces an empty folder atomically and fails on a non-empty one:
                # exactly one of several processes creating the same store at once wins.
                os.replace(tmp / "store.zarr", target)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise StoreCreatedConcurrently(
                        f"{path} was created by another process meanwhile"
                    ) from exc
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def remove_interrupted_creation(
    path: str, storage_options: Mapping[str, Any] | None, interrupted: InterruptedCreation
) -> None:
    """Delete a store on object storage whose creation never finished, when that is safe.

    Safe when the process that created it ran on this host and has ended: no block can be
    marked before creation completes, so nothing of value is lost, and the same command
    then creates the store afresh. Otherwise (another host's process, which may still be
    creating it, or a store of a posctx version that did not record its creator) the error
    is raised with what is known.
    """
    creator = interrupted.creator or {}
    host, pid = creator.get("host"), creator.get("pid")
    if host == socket.gethostname() and isinstance(pid, int) and not process_alive(pid):
        fs, root = remote_fs(path, storage_options)
        fs.rm(root, recursive=True)
        return
    if host is None:
        raise interrupted
    raise StoreError(
        f"{path}: the creation of this store was interrupted before it was usable, or is "
        f"still going on in process {pid} on {host}: once that process has ended, delete the "
        "store and re-run the same command"
    ) from interrupted


class StoreCreatedConcurrently(StoreError):
    """Another process created the store while this one was creating it too."""


def _creating_prefix(target: Path, pid: int | None = None) -> str:
    """Name prefix of the folder a store is built in before it is renamed to ``target``.

    Host and process id in the name let a later run remove the folders of creators that died
    (SIGKILL leaves them behind) without touching one that another live process is filling.
    """
    return f".{target.name}.creating-{socket.gethostname()}-{os.getpid() if pid is None else pid}-"


def remove_dead_creations(path: str) -> None:
    """Delete the build folders of store creations whose process died (local stores only).

    A creator killed before its rename leaves a half-built store in its folder; one killed
    just after the rename leaves the folder empty. Either way nothing reads it, and only
    folders of dead processes on this host are touched, so this is safe while others write.
    """
    if not is_remote(path):
        _remove_dead_creations(local_path(path))


def _remove_dead_creations(target: Path) -> None:
    host_prefix = f".{target.name}.creating-{socket.gethostname()}-"
    for folder in target.parent.glob(host_prefix + "*"):
        pid_text = folder.name[len(host_prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and not process_alive(int(pid_text)):
            shutil.rmtree(folder, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (someone else's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def grow_store(
    path: str,
    *,
    old_contexts: int,
    token_ids: np.ndarray,
    topic: np.ndarray,
    source: np.ndarray,
    offset: np.ndarray,
    chunk_contexts: int,
    record: Mapping[str, Any],
    title: str,
    storage_options: Mapping[str, Any] | None = None,
) -> None:
    """Extend a store to ``len(token_ids)`` contexts; the first contexts must be unchanged.

    Every step can be repeated after a crash: the last, partial block (if any) is unmarked
    first, since it will grow; then the arrays are resized and the new contexts' token ids and
    labels written; the provenance record (with the new number of contexts) is written last,
    so until then the store still describes, and opens as, its old self.
    """
    group = open_group(path, "r+", storage_options)
    old = old_contexts
    new = int(token_ids.shape[0])
    if old % chunk_contexts:
        group[BLOCK_COMPLETE][old // chunk_contexts] = 0
    blocks = plan_blocks(new, chunk_contexts)
    for name in (HIDDEN, TOKEN_ID, CONTEXT, TOPIC, SOURCE, OFFSET, *STATISTICS_SCHEMA):
        if name == EDGE or (name in STATISTICS_SCHEMA and name not in group):
            continue  # a store without statistics; the edges coordinate does not grow
        arr = group[name]
        arr.resize((new, *arr.shape[1:]))
    for name in (BLOCK_COMPLETE, BLOCK_START):
        group[name].resize((len(blocks),))
    group[TOKEN_ID][old:] = np.asarray(token_ids[old:], dtype=np.int32)
    group[CONTEXT][old:] = np.arange(old, new, dtype=np.int64)
    group[TOPIC][old:] = np.asarray(topic[old:], dtype=object)
    group[SOURCE][old:] = np.asarray(source[old:], dtype=object)
    group[OFFSET][old:] = np.asarray(offset[old:], dtype=np.int64)
    group[BLOCK_START][:] = np.array([b.start for b in blocks], dtype=np.int64)
    consolidate(path, storage_options)  # new shapes visible to readers of the consolidated copy
    # One metadata write: zarr's attrs.update writes once per key, and a kill between the two
    # would leave the new record under the old title.
    group.update_attributes({PROVENANCE_ATTR: dict(record), "title": title})
    consolidate(path, storage_options)  # an attrs write drops the consolidated copy: put it back


__all__ = [
    "create_store",
    "StoreCreatedConcurrently",
    "remove_dead_creations",
    "remove_interrupted_creation",
    "grow_store",
]
