"""posctx.corpus.hf: HuggingFace dataset specs and streamed splits (with a stand-in datasets)."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from posctx.corpus.documents import Document
from posctx.corpus.hf import HFCorpus, HFSpec, parse_hf_spec
from posctx.errors import CorpusError


class _Stream:
    """A streamed split: rows, and the column names and features when the dataset lists them."""

    def __init__(
        self, rows: list[dict[str, Any]], columns: list[str] | None, labels: list[str] | None = None
    ) -> None:
        self.rows = rows
        if columns is not None:
            self.column_names = columns
            self.features = {"topic": types.SimpleNamespace(names=labels)} if labels else {}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)


def _datasets(monkeypatch: pytest.MonkeyPatch, load: Any) -> None:
    module = types.ModuleType("datasets")
    module.load_dataset = load  # type: ignore[attr-defined]  # a stand-in module
    module.__version__ = "9.9-fake"  # type: ignore[attr-defined]  # a stand-in module
    monkeypatch.setitem(sys.modules, "datasets", module)


def test_the_spec_parts_go_to_load_dataset_streaming(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def load(name: str, config: str | None, *, split: str, streaming: bool) -> _Stream:
        calls.append((name, config, split, streaming))
        return _Stream([{"text": "a", "topic": "x"}], ["text", "topic"])

    _datasets(monkeypatch, load)
    corpus = HFCorpus(parse_hf_spec("hf:org/set/cfg:validation"), "text", "topic")
    assert calls == [("org/set", "cfg", "validation", True)]
    assert corpus.name == "set" and corpus.columns == ["text", "topic"] and corpus.topics is None
    assert corpus.describe() == {
        "name": "set",
        "kind": "hf",
        "dataset": "org/set",
        "config": "cfg",
        "split": "validation",
        "text_column": "text",
        "topic_column": "topic",
        "datasets_version": "9.9-fake",
    }


def test_rows_stream_in_order_with_class_labels_named_and_empty_texts_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = [
        {"text": "first", "topic": 1},
        {"text": None, "topic": 0},
        {"text": "", "topic": 0},
        {"text": 42, "topic": 0},  # not a string: its text form
    ]
    _datasets(monkeypatch, lambda *a, **k: _Stream(rows, ["text", "topic"], ["world", "sports"]))
    corpus = HFCorpus(HFSpec("news", None, "train"), "text", "topic")
    assert list(corpus.documents(seed=123)) == [
        Document("first", "sports", "row:0"),
        Document("42", "world", "row:3"),
    ]


def test_a_stream_without_a_column_listing_checks_topics_row_by_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = [{"text": "a", "topic": "x"}, {"text": "b"}]
    _datasets(monkeypatch, lambda *a, **k: _Stream(rows, columns=None))
    corpus = HFCorpus(HFSpec("news", None, "train"), "text", "topic")
    assert corpus.columns is None and corpus.topic_column == "topic" and corpus.topics is None
    stream = corpus.documents(seed=0)
    assert next(stream) == Document("a", "x", "row:0")
    with pytest.raises(CorpusError) as info:
        next(stream)
    assert str(info.value) == "row 1 of 'news' has no topic in column 'topic'"


def test_without_a_topic_column_every_row_is_in_one_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    _datasets(monkeypatch, lambda *a, **k: _Stream([{"text": "a"}], ["text"]))
    for topic_column in ("topic", None):
        corpus = HFCorpus(HFSpec("org/news", None, "train"), "text", topic_column)
        assert corpus.topics == ("news",) and corpus.topic_column is None
        assert [d.topic for d in corpus.documents(0)] == ["news"]


@pytest.mark.parametrize(
    ("exc", "shown"),
    [
        (
            ValueError("BuilderConfig 'x' not found.\nAvailable: ['a']"),
            "BuilderConfig 'x' not found.",
        ),
        (ConnectionError(""), "ConnectionError"),
    ],
)
def test_a_dataset_that_does_not_open_is_one_corpus_error(
    monkeypatch: pytest.MonkeyPatch, exc: Exception, shown: str
) -> None:
    def load(*args: Any, **kwargs: Any) -> Any:
        raise exc

    _datasets(monkeypatch, load)
    with pytest.raises(CorpusError) as info:
        HFCorpus(HFSpec("wikitext", "x", "train"), "text", None)
    assert str(info.value) == f"cannot open HuggingFace dataset 'wikitext': {shown}"
    assert info.value.__cause__ is exc


def test_a_missing_text_column_lists_the_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    _datasets(monkeypatch, lambda *a, **k: _Stream([], ["body", "label"]))
    with pytest.raises(CorpusError) as info:
        HFCorpus(HFSpec("news", None, "train"), "text", None)
    assert str(info.value) == (
        "dataset 'news' has no text column 'text': its columns are 'body', 'label'; choose one "
        "with --text-column"
    )


def test_a_malformed_spec_shows_every_accepted_form() -> None:
    with pytest.raises(CorpusError) as info:
        parse_hf_spec("hf:a/b/c/d")
    assert str(info.value) == (
        "corpus 'hf:a/b/c/d' is not a HuggingFace spec: use hf:NAME, hf:NAME/CONFIG, "
        "hf:ORG/NAME/CONFIG or hf:ORG/NAME/ (no config), each optionally followed by :SPLIT"
    )
    assert parse_hf_spec("wikitext") == HFSpec("wikitext", None, "train")  # prefix optional
