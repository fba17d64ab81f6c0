"""Checking a hidden-state store: schema, labels, provenance, completeness, values, token ids.

``posctx validate STORE`` runs :func:`validate_store`. Each check reads only what it needs and
reports ``ok``, ``warn`` or ``fail`` with its figures; a broken store gives failing checks,
never an exception, so one run lists everything that is wrong. The value scans share one
``dask.compute`` of small per-chunk summaries, so a store of any size validates in constant
memory (one chunk per worker thread), in parallel on the active dask scheduler.

The checks, in order:

``schema``
    Root attrs (``posctx_kind``, ``posctx_schema``), the arrays and coordinates with their
    dims and dtypes, mutually consistent shapes, and a consolidated copy of the metadata that
    matches the arrays.
``labels``
    ``context`` and ``position`` are ``0..N-1``, layers unique, every ``topic``/``source`` a
    non-empty string, ``offset >= 0``, ``block_start`` the planned block starts.
``provenance``
    The ``posctx`` attrs record is complete and its config parses and agrees with the arrays.
``completeness``
    Which blocks were never marked written, as context ranges, and which blocks marked
    written lack chunk files of ``hidden`` (a damaged store; of a ``--hidden-contexts N``
    store, only the contexts whose hidden states it keeps are expected).
``partial_files``
    Chunk files a killed writer left half written (local stores).
``finite``
    No NaN/inf in the blocks marked written (``scan=True``).
``token_ids``, ``special_tokens``
    Ids within the model's vocabulary; every context framed by the recorded prefix/suffix
    special tokens, which never appear mid-context.
``statistics``
    The statistics kept during extraction (skipped for a store without them): every marked
    block counted by exactly one partial, the per-context statistics finite and equal to
    :func:`posctx.sums.block_statistics` of the stored hidden states (``scan=True``).
``rerun``
    A few contexts recomputed with the model and compared with the stored values
    (``rerun=N``).

Where they live: :mod:`~posctx.validate.report` (:class:`Check`, :class:`ValidationReport`),
:mod:`~posctx.validate.structure` (the checks that read metadata and labels only, up to
``partial_files``), :mod:`~posctx.validate.content` (``finite``, ``token_ids``,
``special_tokens``: the scans of the data, on the per-chunk numpy summaries of
:mod:`~posctx.validate.kernels` and their dask graphs in :mod:`~posctx.validate.graph`),
:mod:`~posctx.validate.statistics` (``statistics``, whose values come from the same pass),
:mod:`~posctx.validate.rerun` (the model re-run) and :mod:`~posctx.validate.api`
(:func:`validate_store`, which runs them in order).
"""

from __future__ import annotations

from posctx.store import partial_files
from posctx.validate.api import clean_partial_files, validate_store
from posctx.validate.report import Check, ValidationReport
from posctx.validate.rerun import RERUN_TOLERANCE

__all__ = [
    "RERUN_TOLERANCE",
    "Check",
    "ValidationReport",
    "clean_partial_files",
    "partial_files",
    "validate_store",
]
