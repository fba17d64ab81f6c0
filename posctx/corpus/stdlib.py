"""The built-in offline corpus: text that every CPython installation ships.

Three topics of different register, so that context effects have something to separate:

``reference``
    Reference-manual prose from ``pydoc_data.topics`` (one document per help topic).
``docstrings``
    Module, class and function docstrings of each stdlib module, read with :mod:`ast`
    (nothing is imported, so no module's import side effects run).
``code``
    The stdlib ``.py`` source files themselves.
"""

from __future__ import annotations

import ast
import os
import platform
import sysconfig
import warnings
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

from posctx.corpus.documents import Document, interleave, seeded_shuffle
from posctx.errors import CorpusError

TOPICS = ("reference", "docstrings", "code")
#: folders skipped anywhere under the stdlib: third-party code, test suites, tools and data.
EXCLUDED_DIRS = frozenset(
    {
        "site-packages",
        "test",
        "tests",
        "idlelib",
        "lib2to3",
        "__pycache__",
        "ensurepip",
        "turtledemo",
    }
)
#: larger files are mostly generated tables (unicode data, opcode maps), not prose or code.
MAX_FILE_BYTES = 200_000
#: modules with less docstring text than this are too thin to be a document.
MIN_DOCSTRING_CHARS = 200

_DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def module_docstrings(source: str) -> str:
    """Join the module, class and function docstrings of ``source`` in source order.

    Examples
    --------
    >>> src = "'Mod.'\\nclass A:\\n    'Cls.'\\n    def f(self):\\n        'Fn.'\\n"
    >>> module_docstrings(src)
    'Mod.\\n\\nCls.\\n\\nFn.'
    """
    with warnings.catch_warnings():
        # Old escape sequences in some stdlib files warn at parse time; the text is still fine.
        warnings.simplefilter("ignore")
        tree = ast.parse(source)
    nodes = sorted(
        (node for node in ast.walk(tree) if isinstance(node, _DEFINITIONS)),
        key=lambda node: (node.lineno, node.col_offset),
    )
    docs = [ast.get_docstring(tree)] + [ast.get_docstring(node) for node in nodes]
    return "\n\n".join(doc for doc in docs if doc)


def module_name(rel: str) -> str:
    """Dotted module name of a stdlib file path (``json/__init__.py`` -> ``json``).

    Examples
    --------
    >>> module_name("json/decoder.py"), module_name("json/__init__.py")
    ('json.decoder', 'json')
    """
    parts = rel[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def list_stdlib_files(root: Path) -> list[str]:
    """Sorted relative ``.py`` paths under ``root``, minus excluded folders and big files."""
    found: list[str] = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        for filename in filenames:
            path = Path(folder, filename)
            if filename.endswith(".py") and path.stat().st_size <= MAX_FILE_BYTES:
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


def _docstring_text(path: Path) -> str:
    try:
        return module_docstrings(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):  # a file this Python cannot parse has no docstrings to give
        return ""


def _reference_topics() -> dict[str, str]:
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:  # some distributions strip pydoc_data
        raise CorpusError(
            "the stdlib corpus needs pydoc_data.topics, which this Python lacks: "
            "pass a file, folder or table with --corpus instead"
        ) from exc
    return dict(topics)


class StdlibCorpus:
    """Reference prose, docstrings and source code of the running Python's standard library.

    Parameters
    ----------
    root
        The stdlib folder; defaults to ``sysconfig.get_paths()["stdlib"]``.

    Examples
    --------
    >>> corpus = StdlibCorpus()
    >>> corpus.topics
    ('reference', 'docstrings', 'code')
    >>> next(corpus.documents(seed=0)).topic
    'reference'
    """

    name = "stdlib"

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(sysconfig.get_paths()["stdlib"]) if root is None else Path(root)
        self.topics: tuple[str, ...] | None = TOPICS

    @cached_property
    def _files(self) -> list[str]:
        if not self.root.is_dir():
            raise CorpusError(f"the stdlib folder '{self.root}' does not exist")
        return list_stdlib_files(self.root)

    def _read(self, rel: str) -> str:
        return (self.root / rel).read_text(encoding="utf-8", errors="replace")

    def _reference(self, seed: int) -> Iterator[Document]:
        pages = _reference_topics()
        for key in seeded_shuffle(pages, seed, "reference"):
            yield Document(text=pages[key], topic="reference", source=f"pydoc:{key}")

    def _docstrings(self, seed: int) -> Iterator[Document]:
        for rel in seeded_shuffle(self._files, seed, "docstrings"):
            text = _docstring_text(self.root / rel)
            if len(text) >= MIN_DOCSTRING_CHARS:
                yield Document(text=text, topic="docstrings", source=f"module:{module_name(rel)}")

    def _code(self, seed: int) -> Iterator[Document]:
        for rel in seeded_shuffle(self._files, seed, "code"):
            yield Document(text=self._read(rel), topic="code", source=rel)

    def documents(self, seed: int) -> Iterator[Document]:
        """Stream the three topics in turn, each in its own seeded order, reading files lazily."""
        return interleave([self._reference(seed), self._docstrings(seed), self._code(seed)])

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": "stdlib",
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "topics": list(TOPICS),
            # Counting docstring documents would parse every module (seconds); the module
            # count and the thresholds below determine them just as well.
            "n_documents": {"reference": len(_reference_topics()), "code": len(self._files)},
            "n_modules": len(self._files),
            "min_docstring_chars": MIN_DOCSTRING_CHARS,
            "max_file_bytes": MAX_FILE_BYTES,
            "excluded_dirs": sorted(EXCLUDED_DIRS),
        }


__all__ = [
    "EXCLUDED_DIRS",
    "MAX_FILE_BYTES",
    "MIN_DOCSTRING_CHARS",
    "TOPICS",
    "StdlibCorpus",
    "list_stdlib_files",
    "module_docstrings",
    "module_name",
]
