"""Every docstring example in the package runs and gives what it shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from types import ModuleType

import pytest

import posctx

MODULES = sorted(
    {"posctx"}
    | {
        m.name
        for m in pkgutil.walk_packages(posctx.__path__, "posctx.")
        if m.name != "posctx.__main__"
    }
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module: ModuleType = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_examples_exist() -> None:
    """Guard against the parametrised test above passing because nothing was collected."""
    finder = doctest.DocTestFinder()
    n = sum(len(t.examples) for name in MODULES for t in finder.find(importlib.import_module(name)))
    assert len(MODULES) > 10 and n > 30
