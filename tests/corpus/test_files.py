"""posctx.corpus.files: text files and folders as topics, streamed in a seeded order."""

from __future__ import annotations

from pathlib import Path

import pytest

from posctx.corpus.documents import Document
from posctx.corpus.files import TEXT_SUFFIXES, FileCorpus, folder_corpus
from posctx.errors import CorpusError


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def test_topics_take_turns_each_in_its_own_seeded_order(tmp_path: Path) -> None:
    files = {f"{t}/{i}.txt": f"{t}{i}" for t in ("b", "a") for i in range(6)}
    corpus = FileCorpus(
        "c",
        _write(tmp_path, files),
        {"b": [f"b/{i}.txt" for i in range(6)], "a": [f"a/{i}.txt" for i in range(6)]},
        "topic-folders",
    )
    assert corpus.topics == ("a", "b")  # sorted
    docs = list(corpus.documents(seed=3))
    assert [d.topic for d in docs] == ["a", "b"] * 6
    assert all(d.text == Path(tmp_path, d.source).read_text() for d in docs)
    a_order = [d.source for d in docs if d.topic == "a"]
    assert a_order != sorted(a_order) and sorted(a_order) == [f"a/{i}.txt" for i in range(6)]
    assert [d.source for d in corpus.documents(seed=3)] == [d.source for d in docs]


def test_files_are_read_only_when_streamed(tmp_path: Path) -> None:
    root = _write(tmp_path, {"t/one.txt": "one", "t/two.txt": "two"})
    corpus = FileCorpus("c", root, {"t": ["t/one.txt", "t/two.txt"]}, "folder")
    stream = corpus.documents(seed=0)
    first = next(stream)
    (root / "t" / "one.txt").unlink()
    (root / "t" / "two.txt").unlink()
    with pytest.raises(CorpusError) as info:
        next(stream)  # the file vanished after listing: named, with what to check
    assert str(info.value).startswith(f"cannot read corpus file '{root / 't'}")
    assert "check its permissions and that its disk is mounted" in str(info.value)
    assert isinstance(first, Document)


def test_a_file_that_is_not_utf8_fails_when_it_is_read(tmp_path: Path) -> None:
    (tmp_path / "latin.txt").write_bytes(b"na\xefve")
    corpus = FileCorpus("latin", tmp_path, {"latin": ["latin.txt"]}, "file")
    with pytest.raises(
        CorpusError, match=r"/latin.txt' is not valid UTF-8 \(byte 0xef at offset 2\)"
    ):
        list(corpus.documents(seed=0))


def test_describe_points_at_the_file_or_the_folder(tmp_path: Path) -> None:
    root = _write(tmp_path, {"x.txt": "12345", "y.md": "123"})
    single = FileCorpus("x", root, {"x": ["x.txt"]}, "file").describe()
    assert single["path"] == str((root / "x.txt").resolve())
    assert (single["kind"], single["topics"], single["n_files"], single["size"]) == (
        "file",
        ["x"],
        1,
        5,
    )
    folder = folder_corpus(root).describe()
    assert folder["path"] == str(root.resolve()) and folder["name"] == root.name
    assert (folder["kind"], folder["topics"], folder["n_files"], folder["size"]) == (
        "folder",
        ["x", "y"],
        2,
        8,
    )


def test_a_folder_of_files_takes_only_visible_text_files(tmp_path: Path) -> None:
    assert TEXT_SUFFIXES == (".txt", ".md", ".rst", ".py")
    root = _write(
        tmp_path, {"a.txt": "a", "a.md": "a too", "b.py": "b", ".c.txt": "hidden", "d.json": "{}"}
    )
    corpus = folder_corpus(root)
    assert corpus.kind == "folder" and corpus.topics == ("a", "b")
    # Files with the same stem share a topic.
    assert sorted(d.source for d in corpus.documents(0) if d.topic == "a") == ["a.md", "a.txt"]


def test_topic_folders_skip_hidden_parts_and_empty_folders(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "news/2024/jan.txt": "jan",
            "news/.drafts/x.txt": "draft",
            "code/main.py": "print()",
            "code/data.bin": "",
            ".cache/y.txt": "cache",
            "images/logo.svg": "<svg/>",
        },
    )
    corpus = folder_corpus(root)
    assert corpus.kind == "topic-folders" and corpus.topics == ("code", "news")
    assert sorted(d.source for d in corpus.documents(0)) == ["code/main.py", "news/2024/jan.txt"]


def test_a_folder_mixing_files_and_topic_folders_names_some_of_each(tmp_path: Path) -> None:
    root = _write(tmp_path, {"z.txt": "z", "a.txt": "a", "t1/x.txt": "x", "t2/y.txt": "y"})
    with pytest.raises(CorpusError) as info:
        folder_corpus(root)
    assert str(info.value) == (
        f"corpus folder '{root}' mixes text files (a.txt, z.txt) and topic folders (t1, t2): put "
        "every file in a topic folder"
    )
