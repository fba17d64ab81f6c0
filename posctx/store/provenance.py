"""The provenance record in a store's attrs: writing it, and reading it back checked."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
from collections.abc import Mapping
from typing import Any

import numpy as np

from posctx.errors import StoreError
from posctx.store.location import exists, zarr_json
from posctx.types import (
    CREATING_ATTR,
    DECOMPOSITION_KIND,
    HIDDEN_KIND,
    KIND_ATTR,
    PROVENANCE_ATTR,
    SCHEMA_ATTR,
    SCHEMA_VERSION,
)


class InterruptedCreation(StoreError):
    """A store on object storage whose creation never finished (no provenance record).

    ``creator`` is the ``{"host", "pid"}`` of the process that created it (``None`` for
    stores of posctx versions that did not record it).
    """

    def __init__(self, message: str, creator: Any = None) -> None:
        super().__init__(message)
        self.creator = creator if isinstance(creator, dict) else None


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
    if not exists(path, storage_options):
        return None
    fix = (
        "choose another --out, or delete it yourself if it is disposable"
        if output
        else "pass the store `posctx extract` wrote"
    )
    try:
        meta = zarr_json(path, storage_options)
    except ValueError as exc:  # a zarr.json that is not JSON (or not UTF-8)
        raise StoreError(
            f"{path} exists and is not a posctx hidden-state store (its zarr.json does not "
            f"parse: {exc}): {fix}"
        ) from exc
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    if not isinstance(attrs, dict):
        attrs = {}
    kind = attrs.get(KIND_ATTR)
    if kind == HIDDEN_KIND and PROVENANCE_ATTR not in attrs:
        # create_store writes the record last on object storage: this one never finished.
        raise InterruptedCreation(
            f"{path}: the creation of this store was interrupted before it was usable: "
            "delete it and re-run the same command",
            attrs.get(CREATING_ATTR),
        )
    if PROVENANCE_ATTR not in attrs or kind != HIDDEN_KIND:
        what = "is a posctx decomposition store, not" if kind == DECOMPOSITION_KIND else "is not"
        raise StoreError(f"{path} exists and {what} a posctx hidden-state store: {fix}")
    schema = attrs.get(SCHEMA_ATTR)
    if schema != SCHEMA_VERSION:
        raise StoreError(
            f"{path} has posctx schema {schema} but this posctx reads schema {SCHEMA_VERSION}: "
            "upgrade posctx to the version that wrote it (see attrs['posctx']['posctx_version']) "
            "or re-extract it with this one"
        )
    record: dict[str, Any] = attrs[PROVENANCE_ATTR]
    return record


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


__all__ = ["InterruptedCreation", "read_provenance", "provenance_record"]
