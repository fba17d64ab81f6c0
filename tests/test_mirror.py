"""Tests mirror the package: every module of posctx with logic of its own is imported by a test.

A module has logic of its own when its source defines a top-level function or class; the
imports are read from the tests' source with ``ast`` (tests/sources.py), so a module counts
only when a test module (``test_*.py``) names it in full: ``import posctx.a.b``,
``from posctx.a.b import x`` or ``from posctx.a import b``. Importing a package does not count
for its submodules, nor does an import in a helper module or ``conftest.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.sources import imported_names, module_files

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS.parent / "posctx"

#: Modules without tests of their own, with the reason.
EXEMPT = {
    "posctx.__main__": "runs the command line; tests/test_cli.py runs it",
    "posctx.fastread": "a deprecation shim forwarding to posctx.store.direct",
}


def has_logic(path: Path) -> bool:
    """Whether the module's source defines a top-level function or class."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        for node in tree.body
    )


def untested_modules(package: Path, tests: Path, exempt: frozenset[str] = frozenset()) -> list[str]:
    """The modules of ``package`` with logic of their own that no test file under ``tests`` imports."""
    modules = {
        name
        for name, path in module_files(package).items()
        if name not in exempt and has_logic(path)
    }
    imported: set[str] = set()
    for name, path in module_files(tests).items():
        if path.name.startswith("test_"):  # test modules only: not helpers or conftest.py
            imported.update(imported_names(path, name))
    return sorted(modules - imported)


def test_every_module_with_logic_is_imported_by_a_test() -> None:
    missing = untested_modules(PACKAGE, TESTS, frozenset(EXEMPT))
    assert missing == [], (
        f"no test module imports {', '.join(missing)}: add tests/<package>/test_<module>.py"
    )


def test_exempt_modules_exist() -> None:
    """An exemption outliving its module would hide the next module of that name."""
    assert set(EXEMPT) <= set(module_files(PACKAGE))


def test_checker_finds_an_unimported_module(tmp_path: Path) -> None:
    """Guard: a planted tree where each way of importing counts, and only those."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("X = 1\n")  # no logic: not listed
    for name in ("a", "b", "c", "untested", "parent_only"):
        (pkg / "sub" / f"{name}.py").write_text(f"def {name}():\n    return 1\n")
    (pkg / "sub" / "consts.py").write_text("Y = 2\n")  # no logic: not listed
    (pkg / "shim.py").write_text("class Shim:\n    pass\n")
    tests = tmp_path / "tests"
    (tests / "sub").mkdir(parents=True)
    (tests / "__init__.py").write_text("")
    (tests / "sub" / "__init__.py").write_text("")
    (tests / "test_x.py").write_text("import pkg.sub.a\nfrom pkg.sub.b import b\n")
    (tests / "sub" / "test_y.py").write_text(
        "def test():\n    from pkg.sub import c\n    import pkg.sub\n"
    )
    (tests / "helpers.py").write_text("import pkg.sub.untested\n")  # not a test module
    (tests / "conftest.py").write_text("from pkg import shim\n")
    assert untested_modules(pkg, tests) == ["pkg.shim", "pkg.sub.parent_only", "pkg.sub.untested"]
    assert untested_modules(pkg, tests, frozenset({"pkg.shim"})) == [
        "pkg.sub.parent_only",
        "pkg.sub.untested",
    ]
