"""Document sources: local text files and folders, tables, and HuggingFace datasets.

Every source is a :class:`Corpus`: a name, the topics when they are known up front, a lazy
and seeded stream of :class:`Document` records, and a JSON-able provenance record. Sources
only list what is cheap to list (file names, table headers); text is read while streaming.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from posctx.config import CorpusConfig
from posctx.errors import CorpusError

_T = TypeVar("_T")

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py")
TABLE_SUFFIXES = (".jsonl", ".csv", ".parquet")
#: rows per pandas chunk when streaming a CSV table.
_CSV_CHUNK_ROWS = 1024
_ACCEPTED = (
    "accepted are a .txt/.md/.rst/.py file, a folder of such files, a folder of topic "
    "folders, or a .jsonl/.csv/.parquet table"
)


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


def _stat_record(paths: Sequence[Path]) -> dict[str, Any]:
    stats = [path.stat() for path in paths]
    latest = max((st.st_mtime for st in stats), default=0.0)
    return {
        "n_files": len(stats),
        "size": sum(st.st_size for st in stats),
        "mtime": datetime.fromtimestamp(latest, tz=timezone.utc).isoformat(),
    }


def _invalid_utf8(path: Path) -> tuple[int, int] | None:
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


def _not_utf8(path: Path) -> CorpusError:
    """The error for a corpus file that is not UTF-8, naming the first bad byte."""
    found = _invalid_utf8(path)
    where = f" (byte 0x{found[1]:02x} at offset {found[0]})" if found else ""
    return CorpusError(
        f"corpus file '{path}' is not valid UTF-8{where}: convert it to UTF-8, e.g. "
        f"iconv -f LATIN1 -t UTF-8 (or -f UTF-16) '{path}' > converted{path.suffix}"
    )


def _unreadable(path: Path, exc: OSError) -> CorpusError:
    return CorpusError(
        f"cannot read corpus file '{path}' ({exc.strerror or exc}): check its permissions and "
        "that its disk is mounted, or remove it from the corpus"
    )


class FileCorpus:
    """Text files grouped into topics: one file, a folder of files, or of topic folders.

    Parameters
    ----------
    name
        Corpus name (the file stem or folder name).
    root
        Folder that document sources are relative to.
    groups
        Topic -> file paths relative to ``root``.
    kind
        ``"file"``, ``"folder"`` or ``"topic-folders"``, recorded by :meth:`describe`.
    """

    def __init__(
        self, name: str, root: Path, groups: Mapping[str, Sequence[str]], kind: str
    ) -> None:
        self.name = name
        self.root = root
        self.kind = kind
        self._groups = {topic: list(groups[topic]) for topic in sorted(groups)}
        self.topics: tuple[str, ...] | None = tuple(self._groups)

    def _read(self, topic: str, files: Sequence[str]) -> Iterator[Document]:
        for rel in files:
            path = self.root / rel
            try:
                text = path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(path) from exc
            except OSError as exc:
                raise _unreadable(path, exc) from exc
            yield Document(text=text, topic=topic, source=rel)

    def documents(self, seed: int) -> Iterator[Document]:
        """Stream the files, each topic in its own seeded order, topics taking turns."""
        return interleave(
            [
                self._read(topic, seeded_shuffle(files, seed, topic))
                for topic, files in self._groups.items()
            ]
        )

    def describe(self) -> dict[str, Any]:
        files = [self.root / rel for group in self._groups.values() for rel in group]
        where = files[0] if self.kind == "file" else self.root
        return {
            "name": self.name,
            "kind": self.kind,
            "path": str(where.resolve()),
            "topics": list(self._groups),
            **_stat_record(files),
        }


def _is_text_file(path: Path) -> bool:
    return path.is_file() and path.suffix in TEXT_SUFFIXES and not path.name.startswith(".")


def _folder_corpus(folder: Path) -> FileCorpus:
    files = sorted(p for p in folder.iterdir() if _is_text_file(p))
    topic_dirs: dict[str, list[str]] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        members = sorted(
            p.relative_to(folder).as_posix()
            for p in sub.rglob("*")
            if _is_text_file(p) and not any(part.startswith(".") for part in p.parts)
        )
        if members:
            topic_dirs[sub.name] = members
    if files and topic_dirs:
        raise CorpusError(
            f"corpus folder '{folder}' mixes text files ({', '.join(p.name for p in files[:3])}) "
            f"and topic folders ({', '.join(list(topic_dirs)[:3])}): "
            "put every file in a topic folder"
        )
    if topic_dirs:
        return FileCorpus(folder.name, folder, topic_dirs, "topic-folders")
    if not files:
        raise CorpusError(f"corpus folder '{folder}' holds no text files: {_ACCEPTED}")
    groups: dict[str, list[str]] = {}
    for path in files:
        groups.setdefault(path.stem, []).append(path.name)
    return FileCorpus(folder.name, folder, groups, "folder")


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


class TableCorpus:
    """Rows of a ``.jsonl``, ``.csv`` or ``.parquet`` table, streamed in file order.

    Parameters
    ----------
    path
        The table file.
    text_column
        Column holding the document text (a missing value skips the row).
    topic_column
        Column holding the topic; ``None`` or absent from the table puts every row in one
        topic named after the file stem.

    Raises
    ------
    CorpusError
        The text column is absent (the message lists the columns present), or a Parquet
        table is given without pyarrow installed.
    """

    def __init__(self, path: Path, text_column: str, topic_column: str | None) -> None:
        self.path = path
        self.name = path.stem
        self.format = path.suffix.lstrip(".")
        self.text_column = text_column
        try:
            columns = self._columns()
        except UnicodeDecodeError as exc:
            raise _not_utf8(path) from exc
        except OSError as exc:
            raise _unreadable(path, exc) from exc
        #: the table's column names, in file order.
        self.columns: list[str] | None = columns
        if text_column not in columns:
            raise CorpusError(
                f"table '{path}' has no text column {text_column!r}: its columns are "
                f"{', '.join(map(repr, columns)) or 'none'}; choose one with --text-column"
            )
        self.topic_column = topic_column if topic_column in columns else None
        self.topics: tuple[str, ...] | None = None if self.topic_column else (self.name,)

    def _columns(self) -> list[str]:
        if self.format == "jsonl":
            for _, record in self._records():
                return list(record)
            return []
        if self.format == "csv":
            import pandas as pd

            return [str(c) for c in pd.read_csv(self.path, nrows=0).columns]
        return list(_parquet_file(self.path).schema_arrow.names)

    def _records(self) -> Iterator[tuple[int, Mapping[str, Any]]]:
        with self.path.open("rb") as handle:  # bytes: a decoding error can name its offset
            for lineno, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise _not_utf8(self.path) from exc
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CorpusError(
                        f"{self.path}:{lineno} is not valid JSON ({exc.msg}): fix that line; a "
                        ".jsonl table holds one JSON object per line"
                    ) from exc
                if not isinstance(record, dict):
                    raise CorpusError(f"{self.path}:{lineno} is not a JSON object")
                yield lineno, record

    def _rows(self) -> Iterator[tuple[object, object]]:
        """Yield (text, topic) per row; topic is None without a topic column."""
        text_col, topic_col = self.text_column, self.topic_column
        if self.format == "jsonl":
            for _, record in self._records():
                yield record.get(text_col), record.get(topic_col) if topic_col else None
        elif self.format == "csv":
            import pandas as pd

            cols = [text_col] + ([topic_col] if topic_col else [])
            # dtype=str and no NA parsing: "NA" or "null" are words of a text, not missing values
            try:
                with pd.read_csv(
                    self.path, usecols=cols, dtype=str, keep_default_na=False, chunksize=_CSV_CHUNK_ROWS
                ) as reader:
                    for chunk in reader:
                        texts = chunk[text_col].tolist()
                        topics = chunk[topic_col].tolist() if topic_col else [None] * len(texts)
                        yield from zip(texts, topics)
            except UnicodeDecodeError as exc:
                raise _not_utf8(self.path) from exc
        else:
            parquet = _parquet_file(self.path)
            cols = [text_col] + ([topic_col] if topic_col else [])
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=cols)
                texts = table.column(text_col).to_pylist()
                topics = table.column(topic_col).to_pylist() if topic_col else [None] * len(texts)
                yield from zip(texts, topics)

    def documents(self, seed: int) -> Iterator[Document]:
        """Stream the rows in file order (``seed`` is unused: a shuffle would read it all)."""
        del seed
        for row, (text, topic) in enumerate(self._rows()):
            if _missing(text):
                continue
            if self.topic_column is None:
                label = self.name
            elif _missing(topic):
                raise CorpusError(
                    f"row {row} of '{self.path}' has no topic in column {self.topic_column!r}"
                )
            else:
                label = str(topic)
            yield Document(text=str(text), topic=label, source=f"row:{row}")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "table",
            "format": self.format,
            "path": str(self.path.resolve()),
            "text_column": self.text_column,
            "topic_column": self.topic_column,
            **{k: v for k, v in _stat_record([self.path]).items() if k != "n_files"},
        }


def _parquet_file(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise CorpusError(
            f"reading the Parquet table '{path}' needs pyarrow: pip install pyarrow "
            "(or pip install 'posctx[parquet]')"
        ) from exc
    return pq.ParquetFile(path)


@dataclass(frozen=True)
class HFSpec:
    """A parsed ``hf:NAME[/CONFIG][:SPLIT]`` corpus spec."""

    name: str
    config: str | None
    split: str


def parse_hf_spec(spec: str) -> HFSpec:
    """Parse ``hf:NAME[/CONFIG][:SPLIT]``; NAME may carry one organisation (``org/name``).

    One path part is a dataset name, two are NAME/CONFIG, three are ORG/NAME/CONFIG; a
    trailing slash (``ORG/NAME/``) names an organisation's dataset without a config. The
    split defaults to ``"train"``.

    Examples
    --------
    >>> parse_hf_spec("hf:wikitext/wikitext-103-raw-v1:validation")
    HFSpec(name='wikitext', config='wikitext-103-raw-v1', split='validation')
    >>> parse_hf_spec("hf:allenai/c4/en")
    HFSpec(name='allenai/c4', config='en', split='train')
    >>> parse_hf_spec("hf:roneneldan/TinyStories/")
    HFSpec(name='roneneldan/TinyStories', config=None, split='train')
    """
    body = spec[3:] if spec.startswith("hf:") else spec
    path, colon, split = body.partition(":")
    split = split if colon else "train"
    parts = path.split("/")
    # Two parts mean NAME/CONFIG, so an org dataset without a config is written ORG/NAME/
    # (empty config) to tell it apart.
    if not split or not 1 <= len(parts) <= 3 or not all(parts[:2]):
        raise CorpusError(
            f"corpus {spec!r} is not a HuggingFace spec: use hf:NAME, hf:NAME/CONFIG, "
            "hf:ORG/NAME/CONFIG or hf:ORG/NAME/ (no config), each optionally followed by :SPLIT"
        )
    if len(parts) == 1:
        return HFSpec(parts[0], None, split)
    if len(parts) == 2:
        return HFSpec(parts[0], parts[1], split)
    return HFSpec(f"{parts[0]}/{parts[1]}", parts[2] or None, split)


class HFCorpus:
    """A HuggingFace dataset split, streamed in dataset order without downloading it whole.

    Parameters
    ----------
    spec
        The parsed dataset spec.
    text_column, topic_column
        As for :class:`TableCorpus`; a ``ClassLabel`` topic column is mapped to label names.
    """

    def __init__(self, spec: HFSpec, text_column: str, topic_column: str | None) -> None:
        try:
            import datasets
        except ImportError as exc:
            raise CorpusError(
                "hf: corpora need the datasets package: pip install datasets "
                "(or pip install 'posctx[hf]')"
            ) from exc
        self.spec = spec
        self.name = spec.name.split("/")[-1]
        self.text_column = text_column
        self._datasets_version = str(getattr(datasets, "__version__", "unknown"))
        try:
            self._dataset = datasets.load_dataset(
                spec.name, spec.config, split=spec.split, streaming=True
            )
        except Exception as exc:  # datasets raises many types (network, config, split): one message
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CorpusError(f"cannot open HuggingFace dataset {spec.name!r}: {first}") from exc
        columns = getattr(self._dataset, "column_names", None)
        #: the dataset's column names, or ``None`` where the stream does not list them.
        self.columns: list[str] | None = None if columns is None else list(columns)
        if columns is not None and text_column not in columns:
            raise CorpusError(
                f"dataset {spec.name!r} has no text column {text_column!r}: its columns are "
                f"{', '.join(map(repr, columns))}; choose one with --text-column"
            )
        # Without a column listing, assume the topic column exists and check row by row.
        has_topic = topic_column is not None and (columns is None or topic_column in columns)
        self.topic_column = topic_column if has_topic else None
        self.topics: tuple[str, ...] | None = None if has_topic else (self.name,)
        features = getattr(self._dataset, "features", None) or {}
        self._label_names: list[str] | None = getattr(
            features.get(self.topic_column) if self.topic_column else None, "names", None
        )

    def _label(self, value: object, row: int) -> str:
        if _missing(value):
            raise CorpusError(
                f"row {row} of {self.spec.name!r} has no topic in column {self.topic_column!r}"
            )
        if self._label_names is not None and isinstance(value, int):
            return self._label_names[value]
        return str(value)

    def documents(self, seed: int) -> Iterator[Document]:
        """Stream the rows in dataset order (``seed`` is unused: streams cannot be shuffled)."""
        del seed
        for row, record in enumerate(self._dataset):
            text = record.get(self.text_column)
            if _missing(text):
                continue
            topic = self.name if self.topic_column is None else self._label(
                record.get(self.topic_column), row
            )
            yield Document(text=str(text), topic=topic, source=f"row:{row}")

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "hf",
            "dataset": self.spec.name,
            "config": self.spec.config,
            "split": self.spec.split,
            "text_column": self.text_column,
            "topic_column": self.topic_column,
            "datasets_version": self._datasets_version,
        }


def open_corpus(config: CorpusConfig) -> Corpus:
    """Open the corpus a :class:`~posctx.config.CorpusConfig` names.

    Only cheap work happens here (listing files, reading a table header), so that a bad spec
    fails before a model is loaded; text is read by :meth:`Corpus.documents`.

    Raises
    ------
    CorpusError
        The spec is not ``"stdlib"``, an ``hf:`` spec, or an existing file/folder of an
        accepted kind; or a table lacks the text column.
    """
    spec = config.spec
    if spec == "stdlib":
        from posctx.corpus.stdlib import StdlibCorpus

        return StdlibCorpus()
    if spec.startswith("hf:"):
        return HFCorpus(parse_hf_spec(spec), config.text_column, config.topic_column)
    path = Path(spec).expanduser()
    if path.is_symlink() and not path.exists():
        raise CorpusError(
            f"corpus '{path}' is a broken symbolic link (to '{os.readlink(path)}'): fix the link "
            "or pass the file it should point to"
        )
    if path.exists() and not (path.is_dir() or path.is_file()):
        raise CorpusError(
            f"corpus '{path}' is not a regular file or folder (a FIFO, socket or device): copy "
            "the text into a file and pass that"
        )
    if path.is_file() and path.suffix in TEXT_SUFFIXES + TABLE_SUFFIXES:
        try:
            with path.open("rb") as probe:  # unreadable fails now, before any model loads
                empty = not probe.read(1)
        except OSError as exc:
            raise _unreadable(path, exc) from exc
        if empty:
            raise CorpusError(f"corpus file '{path}' is empty: add text to it or pass another --corpus")
    if path.is_dir():
        return _folder_corpus(path)
    if path.is_file() and path.suffix in TABLE_SUFFIXES:
        return TableCorpus(path, config.text_column, config.topic_column)
    if path.is_file() and path.suffix in TEXT_SUFFIXES:
        return FileCorpus(path.stem, path.parent, {path.stem: [path.name]}, "file")
    reason = f"'{path.suffix}' is not a known extension" if path.is_file() else "no such path"
    raise CorpusError(
        f"corpus {spec!r} is not 'stdlib', an hf:NAME spec, or an existing file/folder "
        f"({reason}): {_ACCEPTED}"
    )


def check_topic_column(config: CorpusConfig) -> None:
    """Refuse a table or dataset without ``config.topic_column`` (a column the user named).

    :func:`open_corpus` puts every row in one topic when the topic column is absent, which
    suits the default column name; a column asked for by name must exist. Text-file corpora
    take their topics from file and folder names, so they pass.

    Raises
    ------
    CorpusError
        The table or dataset lists its columns and ``config.topic_column`` is not one of them.
    """
    if config.topic_column is None:
        return
    corpus = open_corpus(config)
    if not isinstance(corpus, (TableCorpus, HFCorpus)) or corpus.topic_column is not None:
        return
    if corpus.columns is None:
        return  # a stream that lists no columns: rows are checked as they are read
    what = f"table '{corpus.path}'" if isinstance(corpus, TableCorpus) else f"dataset {corpus.spec.name!r}"
    raise CorpusError(
        f"{what} has no topic column {config.topic_column!r}: its columns are "
        f"{', '.join(map(repr, corpus.columns)) or 'none'}; choose one with --topic-column, or "
        "leave --topic-column out to put every row in one topic"
    )


__all__ = [
    "Corpus",
    "Document",
    "FileCorpus",
    "HFCorpus",
    "HFSpec",
    "TableCorpus",
    "check_topic_column",
    "interleave",
    "open_corpus",
    "parse_hf_spec",
    "seeded_shuffle",
]
