"""Old names kept working for a while, each with a warning that names its replacement.

Every name here is listed, with its replacement and the version that will drop it, in
``docs/changes.md`` (section "Deprecations").
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: The release that removes every name deprecated in 0.2.
REMOVED_IN = "0.3"


def warn_renamed(old: str, new: str) -> None:
    """Warn that ``old`` is now ``new`` (a FutureWarning, which Python shows to users)."""
    warnings.warn(
        f"{old} is deprecated and will be removed in posctx {REMOVED_IN}: use {new}",
        FutureWarning,
        stacklevel=3,
    )


def renamed(func: F, old: str, new: str) -> F:
    """``func`` under its old name ``old``: same behaviour, plus a warning naming ``new``.

    Examples
    --------
    >>> import warnings
    >>> twice = renamed(lambda x: 2 * x, "posctx.double", "posctx.twice")
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     twice(3), str(caught[0].message)
    (6, 'posctx.double is deprecated and will be removed in posctx 0.3: use posctx.twice')
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        warn_renamed(old, new)
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]  # same signature as func


def moved_names(module: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that serves names that left ``module``, with a warning.

    ``moved`` maps each old name to ``"new.module:new_name"``. The new module is imported when
    an old name is first used, never when ``module`` is imported, so these forwards add no
    import edge (``tests/test_imports.py`` reads ``import`` statements only).

    Examples
    --------
    >>> import warnings
    >>> getattr_ = moved_names("posctx.old", {"dumps": "json:dumps"})
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     getattr_("dumps")([1]), str(caught[0].message)
    ('[1]', 'posctx.old.dumps is deprecated and will be removed in posctx 0.3: use json.dumps')
    """

    def __getattr__(name: str) -> Any:
        target = moved.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        path, _, new = target.partition(":")
        warn_renamed(f"{module}.{name}", f"{path}.{new}")
        return getattr(importlib.import_module(path), new)

    return __getattr__


__all__ = ["REMOVED_IN", "moved_names", "renamed", "warn_renamed"]
