"""Text files and folders as a corpus: one file, a folder of files, or a folder of topic folders."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from posctx.corpus.documents import (
    ACCEPTED_INPUTS,
    Document,
    interleave,
    not_utf8_error,
    seeded_shuffle,
    stat_record,
    unreadable_error,
)
from posctx.errors import CorpusError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py")


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
                raise not_utf8_error(path) from exc
            except OSError as exc:
                raise unreadable_error(path, exc) from exc
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
            **stat_record(files),
        }


def _is_text_file(path: Path) -> bool:
    return path.is_file() and path.suffix in TEXT_SUFFIXES and not path.name.startswith(".")


def folder_corpus(folder: Path) -> FileCorpus:
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
        raise CorpusError(f"corpus folder '{folder}' holds no text files: {ACCEPTED_INPUTS}")
    groups: dict[str, list[str]] = {}
    for path in files:
        groups.setdefault(path.stem, []).append(path.name)
    return FileCorpus(folder.name, folder, groups, "folder")


__all__ = [
    "TEXT_SUFFIXES",
    "FileCorpus",
    "folder_corpus",
]
