"""Griffe extension for the API pages: Sphinx roles in docstrings become inline code.

posctx's docstrings are numpy style and use Sphinx cross-reference roles
(``:func:`decompose```, ``:mod:`~posctx.store```) that Markdown would show literally. This
turns each into inline code with the name Sphinx would show (``~`` keeps the last part), and
a paragraph ending in ``::`` (reST's literal-block marker) into one ending in ``:``.
Loaded by mkdocstrings from ``mkdocs.yml``; not part of the package.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|mod|class|data|meth|attr|obj|exc|const):`(~?)([^`]+)`")
_LITERAL_MARKER = re.compile(r"(?<=\S)::$", re.MULTILINE)


def _role(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def convert(text: str) -> str:
    """``:func:`~a.b``` -> ```b```; ``text::`` at a line end -> ``text:``."""
    return _LITERAL_MARKER.sub(":", _ROLE.sub(_role, text))


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring once the object tree is complete."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        # on_object does not run for the package itself.
        self.on_object(obj=pkg, loader=loader)
