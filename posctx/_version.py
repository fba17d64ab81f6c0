"""Installed version of posctx (from package metadata, so there is one source of truth)."""

from __future__ import annotations


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version("posctx")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


__all__ = ["version"]
