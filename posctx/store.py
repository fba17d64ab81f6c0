"""The hidden-state store: schema, creation, block writes, completeness and opening.

A store is a Zarr v3 group written through xarray (see ``docs/store.md``). It is created
once with every array preallocated and every coordinate written; ``hidden`` is then filled
block by block (one block = one chunk of contexts), and each finished block is recorded in
``block_complete``, an array with one element per chunk so that concurrent writers never
share a marker chunk. An unfinished block reads as NaN and is marked 0: a crash can leave
work to redo, never a silent hole.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import importlib.metadata
import json
import os
import re
import shutil
import socket
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from posctx.errors import IncompleteStoreError, StoreError
from posctx.types import (
    BLOCK,
    BLOCK_COMPLETE,
    BLOCK_START,
    CONTEXT,
    DIM,
    HIDDEN,
    HIDDEN_DIMS,
    LAYER,
    LAYER_NAME,
    OFFSET,
    POSITION,
    PROVENANCE_ATTR,
    SCHEMA_VERSION,
    SOURCE,
    TOKEN_ID,
    TOPIC,
)

#: attrs key that :func:`open_hidden` sets when it left unfinished blocks out.
COMPLETE_ONLY_ATTR = "posctx_complete_only"

#: target bytes per ``hidden`` chunk when the user does not choose a chunk size.
DEFAULT_CHUNK_BYTES = 64 * 2**20

# zarr's LocalStore writes a chunk to "<key minus suffix>.<uuid4 hex>.partial" and renames it;
# a SIGKILL between the two leaves the temporary file behind.
_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")


@dataclass(frozen=True)
class Block:
    """One unit of extraction work: contexts ``start:stop``, which is one storage chunk."""

    index: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def default_chunk_contexts(length: int, n_layers: int, n_dims: int, itemsize: int) -> int:
    """Contexts per chunk so that one ``hidden`` chunk holds about 64 MB."""
    per_context = max(1, length * n_layers * n_dims * itemsize)
    return max(1, DEFAULT_CHUNK_BYTES // per_context)


def plan_blocks(n_contexts: int, chunk_contexts: int) -> list[Block]:
    """Split ``n_contexts`` into chunk-aligned blocks (the last one may be short).

    >>> plan_blocks(10, 4)
    [Block(index=0, start=0, stop=4), Block(index=1, start=4, stop=8), Block(index=2, start=8, stop=10)]
    """
    if chunk_contexts < 1:
        raise ValueError("chunk_contexts must be >= 1")
    return [
        Block(i, start, min(start + chunk_contexts, n_contexts))
        for i, start in enumerate(range(0, n_contexts, chunk_contexts))
    ]


def is_remote(path: str) -> bool:
    """True for fsspec URLs other than ``file://``."""
    return "://" in str(path) and not str(path).startswith("file://")


def _local(path: str) -> Path:
    return Path(str(path).removeprefix("file://"))


def zarr_location(
    path: str, storage_options: Mapping[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """Where zarr and xarray should open ``path``, and the keyword arguments they need.

    ``file://`` URLs become plain paths: zarr's fsspec route creates no folders for them, and
    the direct reads of :mod:`posctx.fastread` need a path. Storage options go to URLs only:
    zarr refuses them for local paths, and one set of options (the CLI's) may serve a local
    and a remote store in the same command.
    """
    if is_remote(path):
        return str(path), {"storage_options": dict(storage_options or {})}
    return str(_local(path)), {}


def _remote_fs(path: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    """The fsspec filesystem of a URL and the store's root in it, with no stale listings.

    fsspec reuses filesystem instances and caches their listings, while zarr writes through
    instances of its own (and other processes through theirs): a cached listing can predate
    the latest blocks, so it is dropped before every look.
    """
    import fsspec

    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    fs.invalidate_cache()
    return fs, root.rstrip("/")


def _zarr_json(path: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The root ``zarr.json`` of ``path`` if there is one, else ``None``."""
    if is_remote(path):
        fs, root = _remote_fs(path, storage_options)
        meta = root + "/zarr.json"
        if not fs.exists(meta):
            return None
        with fs.open(meta, "rb") as f:
            loaded: dict[str, Any] = json.load(f)
            return loaded
    meta_path = _local(path) / "zarr.json"
    if not meta_path.is_file():
        return None
    loaded = json.loads(meta_path.read_text())
    return loaded


def _exists(path: str, storage_options: Mapping[str, Any] | None) -> bool:
    if is_remote(path):
        fs, root = _remote_fs(path, storage_options)
        return bool(fs.exists(root))
    p = _local(path)
    return p.exists() and not (p.is_dir() and not any(p.iterdir()))


def read_provenance(
    path: str, storage_options: Mapping[str, Any] | None = None, *, output: bool = False
) -> dict[str, Any] | None:
    """Provenance record of an existing posctx store; ``None`` if nothing is at ``path``.

    ``output`` says the caller means to write to ``path`` (extraction), which changes the
    advice when something else is there.

    Raises
    ------
    StoreError
        Something is at ``path`` but it is not a posctx hidden-state store this version of
        posctx can read.
    """
    if not _exists(path, storage_options):
        return None
    meta = _zarr_json(path, storage_options)
    attrs = (meta or {}).get("attributes", {})
    kind = attrs.get("posctx_kind")
    if kind == "hidden" and PROVENANCE_ATTR not in attrs:
        # create_store writes the record last on object storage: this one never finished.
        raise StoreError(
            f"{path}: the creation of this store was interrupted before it was usable: "
            "delete it and re-run the same command"
        )
    if PROVENANCE_ATTR not in attrs or kind != "hidden":
        what = "is a posctx decomposition store, not" if kind == "decomposition" else "is not"
        fix = (
            "choose another --out, or delete it yourself if it is disposable"
            if output
            else "pass the store `posctx extract` wrote"
        )
        raise StoreError(f"{path} exists and {what} a posctx hidden-state store: {fix}")
    schema = attrs.get("posctx_schema")
    if schema != SCHEMA_VERSION:
        raise StoreError(
            f"{path} has posctx schema {schema} but this posctx reads schema {SCHEMA_VERSION}: "
            "upgrade posctx to the version that wrote it (see attrs['posctx']['posctx_version']) "
            "or re-extract it with this one"
        )
    record: dict[str, Any] = attrs[PROVENANCE_ATTR]
    return record


def check_writable(path: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Fail early, before any model work, when the output location cannot be written."""
    if is_remote(path):
        # Object stores have no permissions to ask about: write and delete a probe object.
        fs, root = _remote_fs(path, storage_options)
        probe = root.rstrip("/") + "/.posctx-write-probe"
        try:
            fs.pipe(probe, b"")
            fs.rm(probe)
        except (OSError, PermissionError, ValueError) as exc:
            raise StoreError(
                f"cannot write a store at {path} ({type(exc).__name__}: {exc}): check the bucket, "
                "credentials and --storage-option settings, or choose another --out"
            ) from exc
        return
    target = _local(path).absolute()
    parent = target.parent
    probe_dir = parent
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    problem = None
    if not probe_dir.is_dir():
        problem = f"{probe_dir} is a file, not a folder"
    else:
        try:
            fd, probe = tempfile.mkstemp(prefix=".posctx-write-probe-", dir=probe_dir)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            problem = exc.strerror or str(exc)
    if problem:
        raise StoreError(
            f"cannot write a store at {path} ({problem}): choose a writable --out location"
        )


def build_dataset(
    *,
    token_ids: np.ndarray,
    topic: np.ndarray,
    source: np.ndarray,
    offset: np.ndarray,
    layers: tuple[int, ...],
    layer_names: tuple[str, ...],
    hidden_size: int,
    storage_dtype: str,
    chunk_contexts: int,
    chunk_layers: int,
    attrs: Mapping[str, Any],
) -> tuple[Any, dict[str, Any]]:
    """The store's schema as a lazy ``xarray.Dataset`` plus the Zarr encoding to write it.

    ``hidden`` and ``block_complete`` are lazy zeros: writing the dataset with
    ``compute=False`` creates their metadata without writing a single chunk.
    """
    import dask.array as da
    import xarray as xr

    n_contexts, length = token_ids.shape
    n_layers = len(layers)
    blocks = plan_blocks(n_contexts, chunk_contexts)
    hidden_chunks = (chunk_contexts, length, chunk_layers or n_layers, hidden_size)
    hidden = da.zeros(
        (n_contexts, length, n_layers, hidden_size),
        dtype=np.dtype(storage_dtype),
        chunks=hidden_chunks,
    )
    ds = xr.Dataset(
        {
            HIDDEN: (HIDDEN_DIMS, hidden),
            TOKEN_ID: ((CONTEXT, POSITION), np.asarray(token_ids, dtype=np.int32)),
            BLOCK_COMPLETE: ((BLOCK,), da.zeros(len(blocks), dtype=np.uint8, chunks=1)),
        },
        coords={
            CONTEXT: np.arange(n_contexts, dtype=np.int64),
            POSITION: np.arange(length, dtype=np.int64),
            LAYER: np.asarray(layers, dtype=np.int64),
            DIM: np.arange(hidden_size, dtype=np.int64),
            LAYER_NAME: (LAYER, np.asarray(layer_names, dtype=object)),
            TOPIC: (CONTEXT, np.asarray(topic, dtype=object)),
            SOURCE: (CONTEXT, np.asarray(source, dtype=object)),
            OFFSET: (CONTEXT, np.asarray(offset, dtype=np.int64)),
            BLOCK_START: (BLOCK, np.array([b.start for b in blocks], dtype=np.int64)),
        },
        attrs=dict(attrs),
    )
    ds[HIDDEN].attrs["long_name"] = "hidden state"
    ds[TOKEN_ID].attrs["long_name"] = "input token id"
    ds[BLOCK_COMPLETE].attrs["long_name"] = "1 when contexts block_start[b]:block_start[b+1] are written"
    encoding = {
        # zstd shrinks hidden states ~8% but makes decoding 4x slower: store them raw.
        HIDDEN: {"chunks": hidden_chunks, "compressors": None},
        TOKEN_ID: {"chunks": (chunk_contexts, length)},
        # One marker per chunk, so concurrent writers never share (and lose) a marker update.
        BLOCK_COMPLETE: {"chunks": (1,), "_FillValue": None},
    }
    return ds, encoding


@contextlib.contextmanager
def writing_consolidated() -> Iterator[None]:
    """Silence zarr's note that consolidated metadata is an extension to Zarr v3.

    posctx writes consolidated metadata on purpose: a plain ``xarray.open_zarr`` then opens
    its stores quietly and quickly. Store metadata never changes after creation (blocks are
    region writes), so the consolidated copy cannot go stale.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        yield


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
            location, options = zarr_location(path, storage_options)
            try:
                ds.to_zarr(location, **options, **kwargs)
                _open_group(path, "r+", storage_options).update_attributes(record)
                _consolidate(path, storage_options)  # an attrs write drops the consolidated copy
            except OSError as exc:  # fsspec's translation of a missing bucket, a denied write...
                raise StoreError(
                    f"cannot write a store at {path} ({exc}): choose a writable --out location "
                    "or fix the storage options"
                ) from exc
            return
        target = _local(path)
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
        _remove_dead_creations(_local(path))


def _remove_dead_creations(target: Path) -> None:
    host_prefix = f".{target.name}.creating-{socket.gethostname()}-"
    for folder in target.parent.glob(host_prefix + "*"):
        pid_text = folder.name[len(host_prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _open_group(path: str, mode: str, storage_options: Mapping[str, Any] | None) -> Any:
    import zarr

    # Never the consolidated copy: writers and completeness checks must see the arrays' own
    # metadata, which an extension resizes before it re-consolidates.
    location, options = zarr_location(path, storage_options)
    return zarr.open_group(location, mode=mode, use_consolidated=False, **options)  # type: ignore[arg-type]  # mode is "r" or "r+" from our callers


def _consolidate(path: str, storage_options: Mapping[str, Any] | None) -> None:
    """Rewrite the consolidated metadata from the arrays' and group's own metadata."""
    import zarr

    # Through an opened group's store: consolidate_metadata takes no storage options.
    store = _open_group(path, "r+", storage_options).store
    with writing_consolidated():
        zarr.consolidate_metadata(store)


class BlockWriter:
    """Writes finished blocks of ``hidden`` and then their completion markers.

    Data first, marker second: a kill between the two leaves the block unmarked, and a resume
    rewrites it.
    """

    def __init__(self, path: str, storage_options: Mapping[str, Any] | None = None) -> None:
        group = _open_group(path, "r+", storage_options)
        self.path = str(path)
        self._local_root = None if is_remote(path) else _local(path)
        self._hidden = group[HIDDEN]
        self._marker = group[BLOCK_COMPLETE]
        self._token_id = group[TOKEN_ID]
        self.length = int(self._token_id.shape[1])

    def token_ids(self, block: Block) -> np.ndarray:
        return np.asarray(self._token_id[block.start : block.stop])

    def write(self, block: Block, data: np.ndarray) -> None:
        try:
            self._remove_partials(block)
            self._hidden[block.start : block.stop] = data
            self._marker[block.index] = 1
        except OSError as exc:
            raise StoreError(_write_failure(self.path, block, exc)) from exc

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
        for partial in (self._local_root / HIDDEN / "c" / str(block.index)).rglob("*.partial"):
            if _PARTIAL.search(partial.name):  # zarr's own temporary files only
                partial.unlink(missing_ok=True)


def partial_files(path: str) -> list[tuple[str, int]]:
    """``(path, bytes)`` of the half-written chunk files a killed writer left in a local store.

    zarr writes each chunk to ``<chunk>.<uuid>.partial`` and renames it into place; a writer
    killed in between leaves that file, which no reader ever looks at.
    """
    found = []
    for root, _, files in os.walk(_local(path)):
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
    group = _open_group(path, "r+", storage_options)
    old = old_contexts
    new = int(token_ids.shape[0])
    if old % chunk_contexts:
        group[BLOCK_COMPLETE][old // chunk_contexts] = 0
    blocks = plan_blocks(new, chunk_contexts)
    for name in (HIDDEN, TOKEN_ID, CONTEXT, TOPIC, SOURCE, OFFSET):
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
    _consolidate(path, storage_options)  # new shapes visible to readers of the consolidated copy
    # One metadata write: zarr's attrs.update writes once per key, and a kill between the two
    # would leave the new record under the old title.
    group.update_attributes({PROVENANCE_ATTR: dict(record), "title": title})
    _consolidate(path, storage_options)  # an attrs write drops the consolidated copy: put it back


def completed_blocks(
    path: str, storage_options: Mapping[str, Any] | None = None
) -> np.ndarray:
    """Boolean array, one entry per block: ``True`` where the block is fully written."""
    group = _open_group(path, "r", storage_options)
    done: np.ndarray = np.asarray(group[BLOCK_COMPLETE][:]) == 1
    return done


def open_hidden(
    path: str,
    *,
    complete_only: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    chunks: Mapping[str, int] | str | None = None,
) -> Any:
    """Open a hidden-state store as a lazy, labelled ``xarray.Dataset``.

    Parameters
    ----------
    path
        Local path or fsspec URL of the store.
    complete_only
        Keep only the contexts of finished blocks instead of refusing an interrupted store.
    storage_options
        Passed to fsspec for URLs (credentials, endpoint).
    chunks
        Dask chunks; default: the store's own chunks.

    Raises
    ------
    StoreError
        ``path`` holds no posctx store.
    IncompleteStoreError
        Some blocks were never written and ``complete_only`` is false.

    Examples
    --------
    >>> import posctx, posctx.testing, tempfile
    >>> path = tempfile.mkdtemp() + "/h.zarr"
    >>> _ = posctx.testing.write_planted_store(path, n_contexts=6, length=4, n_layers=2, n_dims=3)
    >>> ds = posctx.open_hidden(path)
    >>> ds.hidden.dims
    ('context', 'position', 'layer', 'dim')
    """
    if read_provenance(path, storage_options) is None:
        raise StoreError(f"no posctx store at {path}: run `posctx extract ... --out {path}` first")
    ds = open_labelled(path, storage_options=storage_options, chunks=chunks)
    if chunks is None and not is_remote(path):
        from posctx.fastread import direct_array

        # Same values, same chunks, read without zarr's general decode path (see fastread).
        direct = direct_array(_local(path) / HIDDEN)
        if direct is not None and direct.shape == ds[HIDDEN].shape:
            ds[HIDDEN] = ds[HIDDEN].copy(data=direct)
    # Reading the markers is eager on purpose: a few bytes that decide whether the store is
    # usable at all, never a computation over hidden states.
    done = np.asarray(ds[BLOCK_COMPLETE].values) == 1
    starts = np.asarray(ds[BLOCK_START].values)
    ds = ds.drop_vars([BLOCK_COMPLETE, BLOCK_START])
    if done.all():
        return ds
    if not complete_only:
        raise IncompleteStoreError(
            f"{path}: {int((~done).sum())} of {done.size} blocks are not written yet (an "
            "interrupted extraction): re-run the same `posctx extract` command to finish it, "
            "or use only the finished contexts (complete_only=True; `posctx decompose "
            "--complete-only`)"
        )
    stops = np.append(starts[1:], ds.sizes[CONTEXT])
    keep = np.concatenate(
        [np.arange(a, b) for a, b, ok in zip(starts, stops, done) if ok] or [np.array([], int)]
    )
    ds = ds.isel({CONTEXT: keep})
    # Whatever is computed from this dataset carries the record of what it left out.
    ds.attrs[COMPLETE_ONLY_ATTR] = {
        "blocks_used": int(done.sum()),
        "blocks_total": int(done.size),
        "contexts_total": int(stops[-1]) if stops.size else 0,
    }
    return ds


def open_labelled(
    path: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    chunks: Mapping[str, int] | str | None = None,
) -> Any:
    """``xr.open_zarr`` with data variables lazy (dask) and every label read into memory.

    xarray would make the non-index coordinates (``topic``, ``source``, ``layer_name``...)
    dask arrays too; labels are small, are needed to select and concatenate, and object-dtype
    dask arrays cannot even be rechunked, so they are read once here, directly from Zarr
    (no dask compute involved).
    """
    import xarray as xr

    location, kwargs = zarr_location(path, storage_options)
    kwargs.update(consolidated=True, zarr_format=3)
    dask_chunks: Any = dict(chunks) if isinstance(chunks, Mapping) else (chunks or {})
    try:
        ds = xr.open_zarr(location, chunks=dask_chunks, **kwargs)
    except ValueError:  # no consolidated copy (a crash between an attrs write and its refresh)
        kwargs["consolidated"] = False
        ds = xr.open_zarr(location, chunks=dask_chunks, **kwargs)
    labels = [name for name in ds.coords if name not in ds.indexes]
    if labels:
        raw = xr.open_zarr(location, chunks=None, **kwargs)
        ds = ds.assign_coords({name: raw[name].variable.load() for name in labels})
    return ds


def size_on_disk(path: str, storage_options: Mapping[str, Any] | None = None) -> int:
    """Bytes the store occupies (unwritten chunks take none)."""
    if is_remote(path):
        fs, root = _remote_fs(path, storage_options)
        return int(fs.du(root))
    total = 0
    for dirpath, _, files in os.walk(_local(path)):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


def store_info(path: str, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Schema, size, completeness and provenance of a store, as plain data."""
    prov = read_provenance(path, storage_options)
    if prov is None:
        raise StoreError(f"no posctx store at {path}: check the path")
    group = _open_group(path, "r", storage_options)
    arrays = {}
    for name in (HIDDEN, TOKEN_ID):
        arr = group[name]
        arrays[name] = {
            "shape": list(arr.shape),
            "chunks": list(arr.chunks),
            "dtype": str(arr.dtype),
            "dims": list(arr.metadata.dimension_names or ()),
            "uncompressed_bytes": int(arr.nbytes),
        }
    done = completed_blocks(path, storage_options)
    return {
        "path": str(path),
        "arrays": arrays,
        "size_on_disk": size_on_disk(path, storage_options),
        "blocks_complete": int(done.sum()),
        "blocks_total": int(done.size),
        "complete": bool(done.all()),
        "provenance": prov,
    }


def provenance_record(
    *,
    config: Mapping[str, Any],
    model: Mapping[str, Any],
    corpus: Mapping[str, Any],
    special_tokens: Mapping[str, Any],
    chunk_contexts: int,
) -> dict[str, Any]:
    """The ``attrs['posctx']`` record stored with every hidden-state store."""
    import platform

    import xarray
    import zarr

    from posctx._version import version

    return {
        "config": dict(config),
        "model": dict(model),
        "corpus": dict(corpus),
        "special_tokens": dict(special_tokens),
        "chunk_contexts": chunk_contexts,
        "posctx_version": version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "xarray": xarray.__version__,
            "zarr": zarr.__version__,
            "dask": importlib.metadata.version("dask"),
        },
    }


__all__ = [
    "COMPLETE_ONLY_ATTR",
    "Block",
    "BlockWriter",
    "check_writable",
    "completed_blocks",
    "grow_store",
    "create_store",
    "default_chunk_contexts",
    "open_hidden",
    "open_labelled",
    "partial_files",
    "plan_blocks",
    "read_provenance",
    "remove_dead_creations",
    "remove_partial_files",
    "size_on_disk",
    "store_info",
    "writing_consolidated",
    "zarr_location",
]
