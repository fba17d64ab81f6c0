"""Document sources: local text files and folders, tables, and HuggingFace datasets.

Every source is a :class:`Corpus`: a name, the topics when they are known up front, a lazy
and seeded stream of :class:`Document` records, and a JSON-able provenance record. Sources
only list what is cheap to list (file names, table headers); text is read while streaming.

This module chooses the source for a spec (:func:`open_corpus`); the sources themselves are in
``files``, ``tables`` and ``hf``, and what they share in ``documents``.
"""

from __future__ import annotations

import os
from pathlib import Path

from posctx.config import CorpusConfig
from posctx.corpus.documents import (
    ACCEPTED_INPUTS,
    Corpus,
    Document,
    interleave,
    seeded_shuffle,
    unreadable_error,
)
from posctx.corpus.files import TEXT_SUFFIXES, FileCorpus, folder_corpus
from posctx.corpus.hf import HFCorpus, HFSpec, parse_hf_spec
from posctx.corpus.tables import TABLE_SUFFIXES, TableCorpus
from posctx.errors import CorpusError


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
            raise unreadable_error(path, exc) from exc
        if empty:
            raise CorpusError(
                f"corpus file '{path}' is empty: add text to it or pass another --corpus"
            )
    if path.is_dir():
        return folder_corpus(path)
    if path.is_file() and path.suffix in TABLE_SUFFIXES:
        return TableCorpus(path, config.text_column, config.topic_column)
    if path.is_file() and path.suffix in TEXT_SUFFIXES:
        return FileCorpus(path.stem, path.parent, {path.stem: [path.name]}, "file")
    reason = f"'{path.suffix}' is not a known extension" if path.is_file() else "no such path"
    raise CorpusError(
        f"corpus {spec!r} is not 'stdlib', an hf:NAME spec, or an existing file/folder "
        f"({reason}): {ACCEPTED_INPUTS}"
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
    what = (
        f"table '{corpus.path}'"
        if isinstance(corpus, TableCorpus)
        else f"dataset {corpus.spec.name!r}"
    )
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
