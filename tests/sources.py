"""Reading a package's import statements from its source with ``ast`` (no module is imported).

Shared by tests/test_imports.py (the import graph) and tests/test_mirror.py (which modules
the tests import).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path


def module_files(root: Path) -> dict[str, Path]:
    """``pkg.a.b`` -> its file, for every module of the package in folder ``root``."""
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_names(path: Path, module: str) -> Iterator[str]:
    """Every absolute module name ``path`` imports, ``from a import b`` giving ``a`` and ``a.b``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            yield name
            yield from (f"{name}.{alias.name}" for alias in node.names)
