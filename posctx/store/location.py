"""Where a store lives: local paths and fsspec URLs, opening its Zarr group, its size."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from posctx.errors import StoreError


def is_remote(path: str) -> bool:
    """True for fsspec URLs other than ``file://``."""
    return "://" in str(path) and not str(path).startswith("file://")


def local_path(path: str) -> Path:
    return Path(str(path).removeprefix("file://"))


def zarr_location(
    path: str, storage_options: Mapping[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """Where zarr and xarray should open ``path``, and the keyword arguments they need.

    ``file://`` URLs become plain paths: zarr's fsspec route creates no folders for them, and
    the direct reads of :mod:`posctx.store.direct` need a path. Storage options go to URLs only:
    zarr refuses them for local paths, and one set of options (the CLI's) may serve a local
    and a remote store in the same command.
    """
    if is_remote(path):
        return str(path), {"storage_options": dict(storage_options or {})}
    return str(local_path(path)), {}


def remote_fs(path: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    """The fsspec filesystem of a URL and the store's root in it, with no stale listings.

    fsspec reuses filesystem instances and caches their listings, while zarr writes through
    instances of its own (and other processes through theirs): a cached listing can predate
    the latest blocks, so it is dropped before every look.
    """
    import fsspec

    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    fs.invalidate_cache()
    return fs, root.rstrip("/")


def zarr_json(path: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The root ``zarr.json`` of ``path`` if there is one, else ``None``."""
    if is_remote(path):
        fs, root = remote_fs(path, storage_options)
        meta = root + "/zarr.json"
        if not fs.exists(meta):
            return None
        with fs.open(meta, "rb") as f:
            loaded: dict[str, Any] = json.load(f)
            return loaded
    meta_path = local_path(path) / "zarr.json"
    if not meta_path.is_file():
        return None
    loaded = json.loads(meta_path.read_text())
    return loaded


def exists(path: str, storage_options: Mapping[str, Any] | None) -> bool:
    if is_remote(path):
        fs, root = remote_fs(path, storage_options)
        return bool(fs.exists(root))
    p = local_path(path)
    return p.exists() and not (p.is_dir() and not any(p.iterdir()))


def open_group(path: str, mode: str, storage_options: Mapping[str, Any] | None) -> Any:
    import zarr

    # Never the consolidated copy: writers and completeness checks must see the arrays' own
    # metadata, which an extension resizes before it re-consolidates.
    location, options = zarr_location(path, storage_options)
    return zarr.open_group(location, mode=mode, use_consolidated=False, **options)  # type: ignore[arg-type]  # mode is "r" or "r+" from our callers


def consolidate(path: str, storage_options: Mapping[str, Any] | None) -> None:
    """Rewrite the consolidated metadata from the arrays' and group's own metadata."""
    import zarr

    # Through an opened group's store: consolidate_metadata takes no storage options.
    store = open_group(path, "r+", storage_options).store
    with writing_consolidated():
        zarr.consolidate_metadata(store)


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


def check_writable(path: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Fail early, before any model work, when the output location cannot be written."""
    if is_remote(path):
        # Object stores have no permissions to ask about: write and delete a probe object.
        fs, root = remote_fs(path, storage_options)
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
    target = local_path(path).absolute()
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


def size_on_disk(
    path: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    members: Sequence[str] | None = None,
) -> int:
    """Bytes the store occupies (unwritten chunks take none), from its files.

    With ``members`` (names of arrays or groups in the store), the bytes under those only; a
    member that is not there takes none.
    """
    if is_remote(path):
        fs, root = remote_fs(path, storage_options)
        if members is None:
            return int(fs.du(root))
        return sum(int(fs.du(f"{root}/{m}")) for m in members if fs.exists(f"{root}/{m}"))
    roots = [local_path(path)] if members is None else [local_path(path) / m for m in members]
    total = 0
    for top in roots:
        for dirpath, _, files in os.walk(top):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


__all__ = [
    "is_remote",
    "local_path",
    "zarr_location",
    "remote_fs",
    "zarr_json",
    "exists",
    "open_group",
    "consolidate",
    "writing_consolidated",
    "check_writable",
    "size_on_disk",
]
