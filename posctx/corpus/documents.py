"""Documents and the :class:`Corpus` protocol every source follows, with the seeded shuffling
and interleaving they share, and the errors for unreadable or non-UTF-8 files."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from posctx.errors import CorpusError

_T = TypeVar("_T")


@dataclass(frozen=True)
class Document:
    """One document of a corpus.

    Parameters
    ----------
    text
        The raw text, tokenised later without special tokens.
    topic
        The topic the document belongs to; contexts are balanced over topics.
    source
        Where the document comes from: a path relative to the corpus root, ``"pydoc:KEY"``,
        ``"module:DOTTED.NAME"``, ``"row:N"``...
    """

    text: str
    topic: str
    source: str


@runtime_checkable
class Corpus(Protocol):
    """A named stream of documents grouped into topics.

    Attributes
    ----------
    name
        Short name used in messages and as the default topic name.
    topics
        The topics in a fixed order when known up front (files, folders, the built-in
        corpus), else ``None`` (tables and datasets with a topic column).
    """

    name: str
    topics: tuple[str, ...] | None

    def documents(self, seed: int) -> Iterator[Document]:
        """Stream the documents lazily; the same seed gives the same stream."""
        ...

    def describe(self) -> dict[str, Any]:
        """Return a JSON-able provenance record of what was read."""
        ...


def seeded_shuffle(items: Iterable[_T], seed: int, salt: str) -> list[_T]:
    """Sort ``items`` and shuffle them with a generator seeded by ``seed`` and ``salt``.

    Sorting first makes the result independent of directory listing order; the salt (a topic
    name) gives each topic its own order. ``random`` seeds strings through SHA-512, so the
    order is the same in every process.

    Examples
    --------
    >>> seeded_shuffle(["c", "a", "b"], 0, "t") == seeded_shuffle(["b", "c", "a"], 0, "t")
    True
    """
    ordered: list[_T] = sorted(items)  # type: ignore[type-var]  # callers pass sortable items
    random.Random(f"{seed}:{salt}").shuffle(ordered)
    return ordered


def interleave(streams: Sequence[Iterator[_T]]) -> Iterator[_T]:
    """Yield one item from each stream in turn until all are exhausted.

    Round robin lets a consumer stop as soon as every topic has enough text, instead of
    reading all of the first topics before it sees the last one.

    Examples
    --------
    >>> list(interleave([iter("ab"), iter("xyz")]))
    ['a', 'x', 'b', 'y', 'z']
    """
    active = list(streams)
    while active:
        still: list[Iterator[_T]] = []
        for stream in active:
            try:
                item = next(stream)
            except StopIteration:
                continue
            still.append(stream)
            yield item
        active = still


def stat_record(paths: Sequence[Path]) -> dict[str, Any]:
    stats = [path.stat() for path in paths]
    latest = max((st.st_mtime for st in stats), default=0.0)
    return {
        "n_files": len(stats),
        "size": sum(st.st_size for st in stats),
        "mtime": datetime.fromtimestamp(latest, tz=timezone.utc).isoformat(),
    }


def invalid_utf8(path: Path) -> tuple[int, int] | None:
    """File offset and value of the first byte of ``path`` that is not valid UTF-8, if any."""
    offset, carry = 0, b""  # offset: where buf starts in the file; carry: a split sequence
    with path.open("rb") as handle:
        while True:
            block = handle.read(1 << 20)
            buf = carry + block
            if not buf:
                return None
            try:
                buf.decode("utf-8")
            except UnicodeDecodeError as exc:
                if not (block and exc.reason == "unexpected end of data"):
                    return offset + exc.start, buf[exc.start]
                offset, carry = offset + exc.start, buf[exc.start :]
            else:
                offset, carry = offset + len(buf), b""
            if not block:
                return None


def not_utf8_error(path: Path) -> CorpusError:
    """The error for a corpus file that is not UTF-8, naming the first bad byte."""
    found = invalid_utf8(path)
    where = f" (byte 0x{found[1]:02x} at offset {found[0]})" if found else ""
    return CorpusError(
        f"corpus file '{path}' is not valid UTF-8{where}: convert it to UTF-8, e.g. "
        f"iconv -f LATIN1 -t UTF-8 (or -f UTF-16) '{path}' > converted{path.suffix}"
    )


def unreadable_error(path: Path, exc: OSError) -> CorpusError:
    return CorpusError(
        f"cannot read corpus file '{path}' ({exc.strerror or exc}): check its permissions and "
        "that its disk is mounted, or remove it from the corpus"
    )


ACCEPTED_INPUTS = (
    "accepted are a .txt/.md/.rst/.py file, a folder of such files, a folder of topic "
    "folders, or a .jsonl/.csv/.parquet table"
)


def is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


__all__ = [
    "Document",
    "Corpus",
    "seeded_shuffle",
    "interleave",
    "stat_record",
    "invalid_utf8",
    "not_utf8_error",
    "unreadable_error",
    "ACCEPTED_INPUTS",
    "is_missing",
]
