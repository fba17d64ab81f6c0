"""posctx.corpus.tables: JSON Lines, CSV and Parquet tables streamed row by row."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import posctx.corpus.tables as tables
from posctx.corpus.documents import Document
from posctx.corpus.tables import TABLE_SUFFIXES, TableCorpus, parquet_file
from posctx.errors import CorpusError


def test_the_suffixes_are_the_three_formats() -> None:
    assert TABLE_SUFFIXES == (".jsonl", ".csv", ".parquet")


def test_csv_streams_in_chunks_in_file_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tables, "_CSV_CHUNK_ROWS", 2)  # five rows: chunks of 2, 2, 1
    path = tmp_path / "rows.csv"
    path.write_text("topic,text\nx,a\ny,b\nx,c\nz,d\ny,e\n", encoding="utf-8")
    docs = list(TableCorpus(path, "text", "topic").documents(seed=0))
    assert [(d.text, d.topic, d.source) for d in docs] == [
        ("a", "x", "row:0"), ("b", "y", "row:1"), ("c", "x", "row:2"), ("d", "z", "row:3"), ("e", "y", "row:4"),
    ]  # fmt: skip


def test_jsonl_values_that_are_not_strings_become_text_and_topics(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": 12, "topic": 3}\n\n{"text": "b", "topic": true}\n', encoding="utf-8")
    assert list(TableCorpus(path, "text", "topic").documents(seed=0)) == [
        Document("12", "3", "row:0"),
        Document("b", "True", "row:1"),  # the blank line is no row
    ]


def test_a_jsonl_line_that_is_not_an_object_is_named(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a"}\n[1, 2]\n', encoding="utf-8")
    corpus = TableCorpus(path, "text", None)
    with pytest.raises(CorpusError) as info:
        list(corpus.documents(seed=0))
    assert str(info.value) == f"{path}:2 is not a JSON object"


def test_an_empty_jsonl_table_has_no_columns(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(CorpusError) as info:
        TableCorpus(path, "text", None)
    assert str(info.value) == (
        f"table '{path}' has no text column 'text': its columns are none; choose one with "
        "--text-column"
    )


@pytest.mark.parametrize(
    ("name", "content", "offset"),
    [("rows.csv", b"text\ncaf\xe9\n", 8), ("rows.jsonl", b'{"text": "caf\xe9"}\n', 13)],
)
def test_text_that_is_not_utf8_names_the_byte(
    tmp_path: Path, name: str, content: bytes, offset: int
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=rf"not valid UTF-8 \(byte 0xe9 at offset {offset}\)"):
        list(TableCorpus(path, "text", None).documents(seed=0))


def test_a_header_that_is_not_utf8_fails_on_opening(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_bytes(b"t\xe9xt\nabc\n")
    with pytest.raises(CorpusError, match=r"not valid UTF-8 \(byte 0xe9 at offset 1\)"):
        TableCorpus(path, "text", None)


def test_describe_records_the_table_and_its_columns(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("text,label\na,x\n", encoding="utf-8")
    os.utime(path, (1_700_000_000, 1_700_000_000))
    corpus = TableCorpus(path, "text", "label")
    assert corpus.columns == ["text", "label"] and corpus.topics is None
    assert corpus.describe() == {
        "name": "rows",
        "kind": "table",
        "format": "csv",
        "path": str(path.resolve()),
        "text_column": "text",
        "topic_column": "label",
        "size": path.stat().st_size,
        "mtime": "2023-11-14T22:13:20+00:00",
    }


def test_parquet_without_pyarrow_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # makes the import fail
    path = tmp_path / "rows.parquet"
    with pytest.raises(CorpusError) as info:
        parquet_file(path)
    assert str(info.value) == (
        f"reading the Parquet table '{path}' needs pyarrow: pip install pyarrow (or pip install "
        "'posctx[parquet]')"
    )
    path.write_bytes(b"PAR1")
    with pytest.raises(CorpusError, match="needs pyarrow"):
        TableCorpus(path, "text", None)


def test_parquet_streams_row_group_by_row_group(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "rows.parquet"
    table = pa.table(
        {"text": [f"doc {i}" for i in range(7)], "topic": ["a", "b", None, "a", "b", "a", "b"]}
    )
    pq.write_table(table, path, row_group_size=3)
    assert parquet_file(path).num_row_groups == 3
    corpus = TableCorpus(path, "text", None)
    assert corpus.topics == ("rows",)
    assert [d.text for d in corpus.documents(seed=0)] == [f"doc {i}" for i in range(7)]
    with pytest.raises(CorpusError, match="row 2 of .* has no topic in column 'topic'"):
        list(TableCorpus(path, "text", "topic").documents(seed=0))
