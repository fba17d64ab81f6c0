"""posctx._deprecated: old names keep working, each with a FutureWarning naming its successor."""

from __future__ import annotations

import inspect
import sys
import warnings

import pytest

from posctx._deprecated import REMOVED_IN, moved_names, renamed, warn_renamed


def test_warn_renamed_says_what_replaces_what_and_when_it_goes() -> None:
    with pytest.warns(FutureWarning) as caught:
        warn_renamed("posctx.old", "posctx.new")
    assert REMOVED_IN == "0.3"
    assert str(caught[0].message) == (
        "posctx.old is deprecated and will be removed in posctx 0.3: use posctx.new"
    )


def test_the_warning_points_at_the_code_that_used_the_old_name() -> None:
    def old_api() -> None:  # a deprecated entry point calls warn_renamed itself
        warn_renamed("old_api()", "new_api()")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]  # CPython has frames
        old_api()  # stacklevel=3: this line, not old_api's body
    assert (caught[0].filename, caught[0].lineno) == (__file__, line)


def test_renamed_forwards_arguments_and_keeps_the_functions_identity() -> None:
    def scale(x: float, *, by: float = 2.0) -> float:
        """Multiply."""
        return x * by

    old = renamed(scale, "posctx.mult", "posctx.scale")
    with pytest.warns(FutureWarning, match=r"posctx\.mult is deprecated .* use posctx\.scale"):
        assert old(3.0, by=4.0) == 12.0
    assert (old.__name__, old.__doc__, old.__wrapped__) == ("scale", "Multiply.", scale)  # type: ignore[attr-defined]  # set by functools.wraps


def test_moved_names_import_the_new_home_only_when_an_old_name_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    getattr_ = moved_names("posctx.old", {"to_hsv": "colorsys:rgb_to_hsv"})
    assert "colorsys" not in sys.modules  # no import edge until the name is used
    with pytest.warns(FutureWarning) as caught:
        to_hsv = getattr_("to_hsv")
    assert to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)
    assert str(caught[0].message) == (
        "posctx.old.to_hsv is deprecated and will be removed in posctx 0.3: use colorsys.rgb_to_hsv"
    )
    with pytest.raises(AttributeError, match="module 'posctx.old' has no attribute 'other'"):
        getattr_("other")
