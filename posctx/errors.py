"""Exceptions with messages that name the problem and the fix.

The CLI prints ``str(exc)`` of any :class:`PosctxError` as one line and exits with status 2.
"""

from __future__ import annotations


class PosctxError(Exception):
    """Base class: a user-facing problem with a message that says what to do."""


class CorpusError(PosctxError):
    """The corpus cannot be read or is too small for the requested contexts."""


class ModelError(PosctxError):
    """The model cannot be resolved or cannot take the requested input."""


class StoreError(PosctxError):
    """The output or input store is missing, foreign, incompatible or unwritable."""


class IncompleteStoreError(StoreError):
    """The store has blocks that were never written (an interrupted extraction)."""


class NonFiniteError(PosctxError):
    """The model produced NaN or inf hidden states."""


__all__ = [
    "CorpusError",
    "IncompleteStoreError",
    "ModelError",
    "NonFiniteError",
    "PosctxError",
    "StoreError",
]
