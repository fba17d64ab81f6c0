"""Document sources: files, folders, tables, HuggingFace specs and the built-in stdlib corpus."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from posctx.config import CorpusConfig
from posctx.corpus import Corpus, Document, open_corpus
from posctx.corpus.sources import HFCorpus, HFSpec, parse_hf_spec
from posctx.corpus.stdlib import (
    EXCLUDED_DIRS,
    StdlibCorpus,
    list_stdlib_files,
    module_docstrings,
    module_name,
)
from posctx.errors import CorpusError


def _open(spec: Path | str, **kwargs: Any) -> Corpus:
    return open_corpus(CorpusConfig(spec=str(spec), **kwargs))


def _docs(corpus: Corpus, seed: int = 0) -> list[Document]:
    return list(corpus.documents(seed))


# --- text files and folders -------------------------------------------------------------


def test_single_text_file_is_one_topic_named_after_the_stem(tmp_path: Path) -> None:
    path = tmp_path / "notes.md"
    path.write_text("# Title\n\nSome prose.", encoding="utf-8")
    corpus = _open(path)
    assert isinstance(corpus, Corpus)
    assert corpus.name == "notes"
    assert corpus.topics == ("notes",)
    assert _docs(corpus) == [Document("# Title\n\nSome prose.", "notes", "notes.md")]
    record = corpus.describe()
    assert record["kind"] == "file" and record["n_files"] == 1
    assert record["path"] == str(path.resolve())
    assert record["size"] == path.stat().st_size and "mtime" in record


def test_folder_of_files_is_one_topic_per_file(tmp_path: Path) -> None:
    for name in ["b.txt", "a.rst", "c.py", "skip.json", ".hidden.txt"]:
        (tmp_path / name).write_text(f"text of {name}", encoding="utf-8")
    corpus = _open(tmp_path)
    assert corpus.topics == ("a", "b", "c")
    docs = _docs(corpus)
    assert sorted((d.topic, d.source, d.text) for d in docs) == [
        ("a", "a.rst", "text of a.rst"),
        ("b", "b.txt", "text of b.txt"),
        ("c", "c.py", "text of c.py"),
    ]


def _topic_tree(root: Path, n_files: int = 12) -> None:
    for topic in ["news", "code"]:
        for i in range(n_files):
            path = root / topic / ("deep" if i % 3 == 0 else "") / f"f{i:02d}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{topic} {i}", encoding="utf-8")
    (root / "news" / ".git").mkdir()
    (root / "news" / ".git" / "x.txt").write_text("hidden", encoding="utf-8")
    (root / "empty").mkdir()


def test_folder_of_topic_folders(tmp_path: Path) -> None:
    _topic_tree(tmp_path)
    corpus = _open(tmp_path)
    assert corpus.topics == ("code", "news")
    docs = _docs(corpus)
    assert len(docs) == 24
    assert {d.topic for d in docs} == {"code", "news"}
    assert all(d.source.startswith(d.topic + "/") for d in docs)
    assert "news/deep/f00.txt" in {d.source for d in docs}
    assert all(Path(tmp_path, d.source).read_text(encoding="utf-8") == d.text for d in docs)
    # topics take turns, so a consumer that stops early has seen every topic
    assert [d.topic for d in docs[:4]] == ["code", "news", "code", "news"]
    assert corpus.describe()["n_files"] == 24


def test_file_order_is_a_seeded_shuffle(tmp_path: Path) -> None:
    _topic_tree(tmp_path)
    corpus = _open(tmp_path)
    first = [d.source for d in _docs(corpus, seed=0)]
    assert first == [d.source for d in _docs(corpus, seed=0)]
    assert first != [d.source for d in _docs(corpus, seed=1)]
    news = [s for s in first if s.startswith("news/")]
    assert news != sorted(news)


def test_folder_mixing_files_and_topic_folders_is_refused(tmp_path: Path) -> None:
    _topic_tree(tmp_path)
    (tmp_path / "README.md").write_text("readme", encoding="utf-8")
    with pytest.raises(CorpusError, match="mixes text files .*README.md.* topic folders"):
        _open(tmp_path)


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data.bin").write_bytes(b"\0")
    with pytest.raises(CorpusError, match="holds no text files"):
        _open(tmp_path)


@pytest.mark.parametrize("spec", ["does/not/exist.txt", "nope"])
def test_missing_path_is_an_unknown_spec(spec: str) -> None:
    message = r"is not 'stdlib', an hf:NAME spec, or an existing file/folder"
    with pytest.raises(CorpusError, match=message):
        _open(spec)


def test_unknown_extension_is_an_unknown_spec(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"\0")
    message = r"'\.bin' is not a known extension.*\.jsonl/\.csv/\.parquet"
    with pytest.raises(CorpusError, match=message):
        _open(path)


# --- tables -----------------------------------------------------------------------------

FORMATS = ["jsonl", "csv", "parquet"]


def _write_table(path: Path, frame: pd.DataFrame) -> None:
    if path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, row_group_size=3)  # several row groups: order must survive


def _frame(n: int = 10) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "body": [f"document number {i}" for i in range(n)],
            "label": ["even" if i % 2 == 0 else "odd" for i in range(n)],
            "extra": list(range(n)),
        }
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_table_with_topic_column(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"rows.{fmt}"
    _write_table(path, _frame())
    corpus = _open(path, text_column="body", topic_column="label")
    assert corpus.topics is None  # only known after reading the whole table
    docs = _docs(corpus)
    assert [d.text for d in docs] == [f"document number {i}" for i in range(10)]  # stream order
    assert [d.topic for d in docs] == ["even", "odd"] * 5
    assert [d.source for d in docs] == [f"row:{i}" for i in range(10)]
    record = corpus.describe()
    assert record["format"] == fmt and record["topic_column"] == "label" and record["size"] > 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_table_without_topic_column_is_one_topic(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"rows.{fmt}"
    _write_table(path, _frame(4))
    corpus = _open(path, text_column="body", topic_column="missing")
    assert corpus.topics == ("rows",)
    assert {d.topic for d in _docs(corpus)} == {"rows"}
    assert corpus.describe()["topic_column"] is None
    assert _open(path, text_column="body", topic_column=None).topics == ("rows",)


@pytest.mark.parametrize("fmt", FORMATS)
def test_table_without_text_column_names_the_columns(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"rows.{fmt}"
    _write_table(path, _frame(2))
    message = r"no text column 'text': its columns are 'body', 'label', 'extra'"
    with pytest.raises(CorpusError, match=message):
        _open(path)


def test_table_rows_without_text_are_skipped_and_words_like_na_are_text(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("text,topic\nNA,a\n,a\nnull,b\n", encoding="utf-8")
    docs = _docs(_open(path))
    rows = [(d.text, d.topic, d.source) for d in docs]
    assert rows == [("NA", "a", "row:0"), ("null", "b", "row:2")]


def test_table_row_without_topic_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    lines = ['{"text": "a", "topic": "x"}', "", '{"text": "b", "topic": null}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="row 1 of .* has no topic in column 'topic'"):
        _docs(_open(path))


def test_invalid_jsonl_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a"}\n{oops\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"rows.jsonl:2 is not valid JSON"):
        _docs(_open(path))


def test_jsonl_streams_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\nnot json at all\n', encoding="utf-8")
    first_two = list(islice(_open(path).documents(0), 2))
    assert [d.text for d in first_two] == ["a", "b"]


# --- HuggingFace ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hf:wikitext", HFSpec("wikitext", None, "train")),
        ("hf:wikitext:validation", HFSpec("wikitext", None, "validation")),
        (
            "hf:wikitext/wikitext-103-raw-v1:train",
            HFSpec("wikitext", "wikitext-103-raw-v1", "train"),
        ),
        ("hf:wikitext/wikitext-2-raw-v1", HFSpec("wikitext", "wikitext-2-raw-v1", "train")),
        ("hf:allenai/c4/en:validation", HFSpec("allenai/c4", "en", "validation")),
        ("hf:roneneldan/TinyStories/", HFSpec("roneneldan/TinyStories", None, "train")),
        ("hf:roneneldan/TinyStories/:test", HFSpec("roneneldan/TinyStories", None, "test")),
    ],
)
def test_parse_hf_spec(spec: str, expected: HFSpec) -> None:
    assert parse_hf_spec(spec) == expected


@pytest.mark.parametrize(
    "spec", ["hf:", "hf::train", "hf:a/b/c/d", "hf:name:", "hf:/cfg", "hf:a//c"]
)
def test_parse_hf_spec_rejects_malformed_specs(spec: str) -> None:
    with pytest.raises(CorpusError, match="is not a HuggingFace spec"):
        parse_hf_spec(spec)


class _FakeLabel:
    names = ["world", "sports"]


class _FakeStream:
    column_names = ["text", "label"]
    features = {"text": object(), "label": _FakeLabel()}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        yield {"text": "first", "label": 1}
        yield {"text": "", "label": 0}
        yield {"text": "third", "label": 0}


@pytest.fixture
def fake_datasets(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []

    def load_dataset(name: str, config: str | None, *, split: str, streaming: bool) -> _FakeStream:
        calls.append((name, config, split, streaming))
        return _FakeStream()

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset  # type: ignore[attr-defined]  # a stand-in module
    module.__version__ = "0.0-fake"  # type: ignore[attr-defined]  # a stand-in module
    monkeypatch.setitem(sys.modules, "datasets", module)
    return calls


def test_hf_corpus_streams_the_split_and_maps_class_labels(fake_datasets: list[Any]) -> None:
    corpus = _open("hf:org/news/default:test", topic_column="label")
    assert isinstance(corpus, HFCorpus)
    assert fake_datasets == [("org/news", "default", "test", True)]
    assert corpus.name == "news" and corpus.topics is None
    expected = [Document("first", "sports", "row:0"), Document("third", "world", "row:2")]
    assert _docs(corpus) == expected
    assert corpus.describe()["dataset"] == "org/news"


def test_hf_corpus_without_topic_column_is_one_topic(fake_datasets: list[tuple[Any, ...]]) -> None:
    corpus = _open("hf:news", topic_column="category")
    assert corpus.topics == ("news",)
    assert {d.topic for d in _docs(corpus)} == {"news"}


def test_hf_corpus_without_text_column_names_the_columns(fake_datasets: list[Any]) -> None:
    with pytest.raises(CorpusError, match="no text column 'body': its columns are 'text', 'label'"):
        _open("hf:news", text_column="body")


def test_hf_corpus_without_datasets_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(CorpusError, match="pip install datasets"):
        _open("hf:wikitext")


# --- the built-in stdlib corpus ---------------------------------------------------------


def test_module_name_and_docstrings() -> None:
    assert module_name("email/mime/text.py") == "email.mime.text"
    assert module_name("email/__init__.py") == "email"
    source = 'x = 1\ndef f():\n    "Doc of f."\nclass C:\n    "Doc of C."\n'
    assert module_docstrings(source) == "Doc of f.\n\nDoc of C."
    assert module_docstrings("x = 1") == ""


def test_stdlib_file_listing_skips_excluded_folders_and_big_files(tmp_path: Path) -> None:
    for rel in [
        "os.py",
        "json/__init__.py",
        "json/tests/t.py",
        "test/x.py",
        "idlelib/a.py",
        "site-packages/pkg.py",
        "json/__pycache__/c.py",
        "data.txt",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("'''Doc.'''\n", encoding="utf-8")
    (tmp_path / "big.py").write_text("#" * 200_001, encoding="utf-8")
    assert list_stdlib_files(tmp_path) == ["json/__init__.py", "os.py"]


def test_stdlib_docstrings_skip_thin_modules(tmp_path: Path) -> None:
    (tmp_path / "thin.py").write_text('"""Short."""\n', encoding="utf-8")
    (tmp_path / "rich.py").write_text('"""' + "Long prose. " * 30 + '"""\n', encoding="utf-8")
    (tmp_path / "broken.py").write_text("def (:\n", encoding="utf-8")
    docs = [d for d in StdlibCorpus(root=tmp_path).documents(0) if d.topic == "docstrings"]
    assert [d.source for d in docs] == ["module:rich"]


@pytest.fixture(scope="module")
def stdlib_docs() -> list[Document]:
    return list(islice(StdlibCorpus().documents(seed=0), 90))


def test_stdlib_corpus_has_three_topics_of_plausible_documents(stdlib_docs: list[Document]) -> None:
    corpus = open_corpus(CorpusConfig(spec="stdlib"))
    assert corpus.name == "stdlib"
    assert corpus.topics == ("reference", "docstrings", "code")
    by_topic: dict[str, list[Document]] = {}
    for doc in stdlib_docs:
        by_topic.setdefault(doc.topic, []).append(doc)
    assert set(by_topic) == {"reference", "docstrings", "code"}
    assert all(d.source.startswith("pydoc:") for d in by_topic["reference"])
    docstrings = by_topic["docstrings"]
    assert all(d.source.startswith("module:") and len(d.text) >= 200 for d in docstrings)
    assert all(d.source.endswith(".py") for d in by_topic["code"])
    assert not any(set(d.source.split("/")) & EXCLUDED_DIRS for d in by_topic["code"])
    assert any("def " in d.text or "class " in d.text for d in by_topic["code"])
    # not the alphabetically first modules
    codes = [d.source for d in by_topic["code"]]
    assert codes != sorted(codes)


def test_stdlib_corpus_is_deterministic(stdlib_docs: list[Document]) -> None:
    again = list(islice(StdlibCorpus().documents(seed=0), 90))
    assert again == stdlib_docs
    other = list(islice(StdlibCorpus().documents(seed=1), 90))
    assert [d.source for d in other] != [d.source for d in stdlib_docs]


def test_stdlib_describe() -> None:
    record = StdlibCorpus().describe()
    assert record["name"] == "stdlib"
    assert record["python"] == ".".join(map(str, sys.version_info[:3]))
    assert record["topics"] == ["reference", "docstrings", "code"]
    counts = record["n_documents"]
    assert counts["reference"] > 50 and counts["code"] > 300
    assert record["n_modules"] == counts["code"] and record["min_docstring_chars"] == 200
    json.dumps(record)  # JSON-able
