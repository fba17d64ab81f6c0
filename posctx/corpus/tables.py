"""Tables as a corpus: JSON Lines, CSV or Parquet, with a text column and optional topic column."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from posctx.corpus.documents import (
    Document,
    is_missing,
    not_utf8_error,
    stat_record,
    unreadable_error,
)
from posctx.errors import CorpusError

TABLE_SUFFIXES = (".jsonl", ".csv", ".parquet")


#: rows per pandas chunk when streaming a CSV table.
_CSV_CHUNK_ROWS = 1024


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
            raise not_utf8_error(path) from exc
        except OSError as exc:
            raise unreadable_error(path, exc) from exc
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
        return list(parquet_file(self.path).schema_arrow.names)

    def _records(self) -> Iterator[tuple[int, Mapping[str, Any]]]:
        with self.path.open("rb") as handle:  # bytes: a decoding error can name its offset
            for lineno, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise not_utf8_error(self.path) from exc
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
                    self.path,
                    usecols=cols,
                    dtype=str,
                    keep_default_na=False,
                    chunksize=_CSV_CHUNK_ROWS,
                ) as reader:
                    for chunk in reader:
                        texts = chunk[text_col].tolist()
                        topics = chunk[topic_col].tolist() if topic_col else [None] * len(texts)
                        yield from zip(texts, topics, strict=True)
            except UnicodeDecodeError as exc:
                raise not_utf8_error(self.path) from exc
        else:
            parquet = parquet_file(self.path)
            cols = [text_col] + ([topic_col] if topic_col else [])
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=cols)
                texts = table.column(text_col).to_pylist()
                topics = table.column(topic_col).to_pylist() if topic_col else [None] * len(texts)
                yield from zip(texts, topics, strict=True)

    def documents(self, seed: int) -> Iterator[Document]:
        """Stream the rows in file order (``seed`` is unused: a shuffle would read it all)."""
        del seed
        for row, (text, topic) in enumerate(self._rows()):
            if is_missing(text):
                continue
            if self.topic_column is None:
                label = self.name
            elif is_missing(topic):
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
            **{k: v for k, v in stat_record([self.path]).items() if k != "n_files"},
        }


def parquet_file(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise CorpusError(
            f"reading the Parquet table '{path}' needs pyarrow: pip install pyarrow "
            "(or pip install 'posctx[parquet]')"
        ) from exc
    return pq.ParquetFile(path)


__all__ = [
    "TABLE_SUFFIXES",
    "TableCorpus",
    "parquet_file",
]
