"""The entry point: :func:`validate_store` opens a store and runs every check in order."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from posctx.errors import StoreError
from posctx.store import is_remote, remove_partial_files
from posctx.store.location import exists, open_group, zarr_json
from posctx.types import HIDDEN, HIDDEN_KIND, KIND_ATTR, PROVENANCE_ATTR
from posctx.validate.content import (
    _check_finite,
    _check_special_tokens,
    _check_token_ids,
    _ContentScan,
)
from posctx.validate.report import Check, ValidationReport, _Skip
from posctx.validate.rerun import _check_rerun
from posctx.validate.statistics import _check_statistics, statistics_absent
from posctx.validate.structure import (
    _check_completeness,
    _check_labels,
    _check_partial,
    _check_provenance,
    _check_schema,
    _Store,
)


def _open(path: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The root metadata of the hidden-state store at ``path``; StoreError when there is none."""
    if not exists(path, storage_options):
        raise StoreError(f"no posctx store at {path}: check the path")
    try:
        meta = zarr_json(path, storage_options)
    except ValueError as exc:  # a damaged zarr.json: report it, as a broken store
        return {"_unreadable": f"{type(exc).__name__}: {exc}"}
    if meta is None:
        raise StoreError(
            f"{path} is not a Zarr v3 store (no zarr.json): give the path of a hidden-state "
            "store made by `posctx extract`"
        )
    if not isinstance(meta, dict) or not isinstance(meta.get("attributes", {}), dict):
        return {"_unreadable": "the root zarr.json is not a Zarr group's metadata"}
    attrs = meta.get("attributes") or {}
    kind = attrs.get(KIND_ATTR)
    if kind not in (None, HIDDEN_KIND):
        raise StoreError(
            f"{path} is a posctx {kind} store, not a hidden-state store: validate the "
            "hidden-state store it was made from"
        )
    if (
        kind is None
        and PROVENANCE_ATTR not in attrs
        and not _has_member(path, storage_options, HIDDEN)
    ):
        raise StoreError(
            f"{path} is a Zarr store but not a posctx hidden-state store (no posctx attrs, no "
            "`hidden` array): give the path of a store made by `posctx extract`"
        )
    return meta


def _has_member(path: str, storage_options: Mapping[str, Any] | None, name: str) -> bool:
    try:
        return name in open_group(path, "r", storage_options)
    except Exception:
        return False


def clean_partial_files(path: str) -> tuple[int, int]:
    """Delete the leftover ``.partial`` files of a local store; returns ``(files, bytes)`` removed.

    Only safe while no extraction writes to the store: a live writer's temporary file is
    indistinguishable from a dead one's.
    """
    if is_remote(path):
        raise StoreError(
            f"{path}: --clean-partial applies to local stores only (object stores "
            "leave no partial files)"
        )
    return remove_partial_files(path)


def validate_store(
    path: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    scan: bool = True,
    rerun: int = 0,
    seed: int = 0,
    progress: bool = False,
    clean_partial: bool = False,
) -> ValidationReport:
    """Check a hidden-state store and report every problem found, check by check.

    Parameters
    ----------
    path
        Local path or fsspec URL of a store made by ``posctx extract``.
    storage_options
        fsspec options for URLs.
    scan
        Scan the hidden states of every block marked written for NaN/inf, and read the
        statistics' values (reads the whole store, chunk by chunk).
    rerun
        Recompute this many contexts (picked at random among the written blocks, among the
        contexts whose hidden states are stored) with the recorded model and compare them
        with the stored values; 0 skips the check. Loads the model.
    seed
        Seeds the choice of contexts to recompute.
    progress
        Show a progress bar on stderr for the pass that reads the data (local schedulers).
    clean_partial
        First delete the ``.partial`` files killed writers left (local stores; only while no
        extraction is running).

    Returns
    -------
    ValidationReport
        One :class:`Check` per check that ran; ``report.ok`` is false when any failed.

    Raises
    ------
    StoreError
        Nothing is at ``path``, or it is not a hidden-state store (a decomposition store, a
        folder of other files). A damaged hidden-state store raises nothing: its checks fail.

    Notes
    -----
    The checks that read the data (``finite``, ``token_ids``, ``special_tokens`` and the
    values of ``statistics``) share one ``dask.compute`` of small per-chunk summaries, run on the active dask scheduler: threads
    by default, a ``dask.distributed`` client's workers when one is active. Peak memory is one
    chunk per worker thread (one block of every layer where ``statistics`` recomputes a
    block's sums from ``hidden`` chunked by layers). Only when that pass fails does each of ``hidden`` and
    ``token_id`` get read again on its own, to tell which check the failure belongs to. The
    ``rerun`` check reads its few contexts with zarr, outside dask.

    Examples
    --------
    A synthetic store has the schema and values of a real one but no record of a model:

    >>> import tempfile, posctx.testing, zarr
    >>> path = tempfile.mkdtemp() + "/h.zarr"
    >>> _ = posctx.testing.write_large_planted_store(path, n_contexts=10, length=6, n_layers=2,
    ...                                              n_dims=3, chunk_contexts=4)
    >>> report = validate_store(path)
    >>> [(c.name, c.status) for c in report.checks]  # doctest: +NORMALIZE_WHITESPACE
    [('schema', 'ok'), ('labels', 'ok'), ('provenance', 'fail'), ('completeness', 'ok'),
     ('partial_files', 'ok'), ('finite', 'ok'), ('token_ids', 'warn'), ('special_tokens', 'warn')]

    An unmarked block is a hole:

    >>> zarr.open_group(path, mode="r+", use_consolidated=False)["block_complete"][1] = 0
    >>> print(validate_store(path, scan=False).check("completeness").detail)
    1 of 3 blocks never marked written: contexts 4-7 (4 contexts); re-run the same ...
    """
    path = os.fspath(path)
    meta = _open(path, storage_options)
    removed = clean_partial_files(path) if clean_partial else (0, 0)
    problem = meta.get("_unreadable")
    if problem is None:
        try:
            st = _Store(path, storage_options, meta)
        except Exception as exc:  # the root group does not open
            problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:  # without the root group nothing else can be checked
        return ValidationReport(
            path,
            [Check("schema", "fail", f"the root group cannot be opened ({problem})")],
            [("all other checks", "the store's root metadata is unreadable")],
        )
    # finite, token_ids and special_tokens share one dask pass, run when the first of them asks.
    content = _ContentScan(st, scan=scan, progress=progress)
    # Each step: its name, the check, and why it is skipped (not requested, or not applicable).
    steps: list[tuple[str, Callable[[], Check], str | None]] = [
        ("schema", lambda: _check_schema(st), None),
        ("labels", lambda: _check_labels(st), None),
        ("provenance", lambda: _check_provenance(st), None),
        ("completeness", lambda: _check_completeness(st), None),
        ("partial_files", lambda: _check_partial(st, removed), None),
        (
            "finite",
            lambda: _check_finite(st, content),
            None if scan else "not requested (--no-scan / scan=False)",
        ),
        ("token_ids", lambda: _check_token_ids(st, content), None),
        ("special_tokens", lambda: _check_special_tokens(st, content), None),
        ("statistics", lambda: _check_statistics(st, content), statistics_absent(st)),
        (
            "rerun",
            lambda: _check_rerun(st, rerun, seed),
            None
            if rerun > 0
            else "not requested (--rerun N / rerun=N recomputes N contexts with the model)",
        ),
    ]
    checks: list[Check] = []
    skipped: list[tuple[str, str]] = []
    for name, run, skip in steps:
        if skip:
            skipped.append((name, skip))
            continue
        try:
            checks.append(run())
        except _Skip as why:
            skipped.append((name, f"cannot run: {why}"))
        except Exception as exc:  # a store too damaged for this check's reads, NaN from the model
            checks.append(Check(name, "fail", f"could not be checked: {type(exc).__name__}: {exc}"))
    return ValidationReport(path, checks, skipped)
