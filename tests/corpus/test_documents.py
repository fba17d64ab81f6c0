"""posctx.corpus.documents: seeded orders, round robin, file records and UTF-8 diagnostics."""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import os
from pathlib import Path

import pytest

from posctx.corpus.documents import (
    Corpus,
    Document,
    interleave,
    invalid_utf8,
    is_missing,
    not_utf8_error,
    seeded_shuffle,
    stat_record,
    unreadable_error,
)
from posctx.corpus.files import FileCorpus
from posctx.errors import CorpusError

MIB = 1 << 20  # invalid_utf8 reads the file in blocks of this size


def test_seeded_shuffle_ignores_input_order_and_depends_on_seed_and_salt() -> None:
    items = [f"f{i:02d}.txt" for i in range(30)]
    order = seeded_shuffle(items, 0, "news")
    assert sorted(order) == items and order != items
    assert seeded_shuffle(reversed(items), 0, "news") == order  # listing order does not matter
    assert seeded_shuffle(items, 1, "news") != order
    assert seeded_shuffle(items, 0, "code") != order  # each topic its own order


def test_interleave_takes_turns_until_every_stream_is_empty() -> None:
    assert list(interleave([iter("abc"), iter(""), iter("x"), iter("12")])) == [
        "a", "x", "1", "b", "2", "c",
    ]  # fmt: skip
    assert list(interleave([])) == []


def test_a_stream_is_read_only_as_far_as_it_is_consumed() -> None:
    pulled: list[int] = []

    def counting(n: int) -> object:
        for i in range(n):
            pulled.append(i)
            yield i

    stream = interleave([counting(100), counting(100)])  # type: ignore[list-item]
    assert [next(stream) for _ in range(3)] == [0, 0, 1]
    assert len(pulled) == 3


def test_stat_record_counts_files_bytes_and_the_latest_change(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("12345")
    b.write_text("12")
    os.utime(a, (1_600_000_000, 1_600_000_000))
    os.utime(b, (1_700_000_000, 1_700_000_000))
    assert stat_record([a, b]) == {
        "n_files": 2,
        "size": 7,
        "mtime": dt.datetime.fromtimestamp(1_700_000_000, tz=dt.timezone.utc).isoformat(),
    }
    assert stat_record([]) == {"n_files": 0, "size": 0, "mtime": "1970-01-01T00:00:00+00:00"}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"plain ascii", None),
        ("caf\u00e9 \u4e2d\u6587 \U0001f600".encode(), None),
        (b"abc\xe9def", (3, 0xE9)),  # latin-1 e-acute
        (b"\xff\xfeh\x00i\x00", (0, 0xFF)),  # UTF-16 with its byte order mark
        (b"0123456789\xc3", (10, 0xC3)),  # a sequence cut off at the end of the file
        (b"", None),
    ],
)
def test_invalid_utf8_finds_the_first_bad_byte(
    tmp_path: Path, content: bytes, expected: tuple[int, int] | None
) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(content)
    assert invalid_utf8(path) == expected


def test_sequences_split_between_read_blocks_are_not_errors(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    euro = "\u20ac".encode()  # three bytes, the first two before the block boundary
    path.write_bytes(b"a" * (MIB - 2) + euro + b"b" * 5)
    assert invalid_utf8(path) is None
    path.write_bytes(b"a" * (MIB - 2) + euro + b"b" * 5 + b"\xe9" + b"c" * 3)
    assert invalid_utf8(path) == (MIB + 6, 0xE9)
    path.write_bytes(b"a" * (2 * MIB + 7) + b"\x80")
    assert invalid_utf8(path) == (2 * MIB + 7, 0x80)


def test_the_not_utf8_error_names_the_byte_and_the_conversion(tmp_path: Path) -> None:
    path = tmp_path / "notes.md"
    path.write_bytes(b"abc\xe9")
    error = not_utf8_error(path)
    assert isinstance(error, CorpusError)
    assert str(error) == (
        f"corpus file '{path}' is not valid UTF-8 (byte 0xe9 at offset 3): convert it to UTF-8, "
        f"e.g. iconv -f LATIN1 -t UTF-8 (or -f UTF-16) '{path}' > converted.md"
    )
    path.write_text("fine")  # valid meanwhile: no position to name
    assert "is not valid UTF-8: convert it" in str(not_utf8_error(path))


def test_the_unreadable_error_gives_the_cause_and_what_to_check() -> None:
    exc = PermissionError(errno.EACCES, "Permission denied")
    assert str(unreadable_error(Path("/data/a.txt"), exc)) == (
        "cannot read corpus file '/data/a.txt' (Permission denied): check its permissions and "
        "that its disk is mounted, or remove it from the corpus"
    )
    assert "(disk gone)" in str(unreadable_error(Path("a"), OSError("disk gone")))


@pytest.mark.parametrize("value", [None, float("nan"), ""])
def test_missing_values(value: object) -> None:
    assert is_missing(value)


@pytest.mark.parametrize("value", [0, 0.0, "0", "NA", "null", " ", False])
def test_values_that_are_text_or_numbers_are_not_missing(value: object) -> None:
    assert not is_missing(value)


def test_documents_are_frozen_and_sources_follow_the_corpus_protocol(tmp_path: Path) -> None:
    doc = Document("text", "topic", "a.txt")
    with pytest.raises(dataclasses.FrozenInstanceError):
        doc.text = "other"  # type: ignore[misc]  # frozen on purpose
    assert isinstance(FileCorpus("c", tmp_path, {"t": []}, "folder"), Corpus)
    assert not isinstance(object(), Corpus)
