"""posctx._version: the version comes from the installed package's metadata."""

from __future__ import annotations

import importlib.metadata

import pytest

from posctx._version import version


def test_version_is_the_installed_metadata() -> None:
    assert version() == importlib.metadata.version("posctx")


def test_a_source_tree_that_is_not_installed_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert version() == "0+unknown"
