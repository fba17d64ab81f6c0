"""Open a page from disk in headless Chromium, offline, and collect what went wrong.

Shared by the tests that render HTML (tests/test_interactive.py, the report's tests). The
browser is Debian's ``chromium`` package (``.ci/run`` installs it), driven by Playwright's
Python package; ``playwright install`` is never run (it downloads browsers).

The network is off twice over: the browser context is offline, and every request that is
not for a ``file:`` or ``data:`` URL is aborted and recorded in :attr:`Opened.blocked`, so a
test can assert that the page tried to fetch nothing.

Usage::

    from tests.browser import open_page, requires_browser

    @pytest.mark.browser
    @requires_browser
    def test_page(tmp_path):
        with open_page(tmp_path / "index.html") as opened:
            assert opened.errors == [] and opened.blocked == []
            opened.page.wait_for_function("document.body.dataset.drawn === '0'")
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

#: Debian's Chromium, the one browser the tests run.
CHROMIUM = shutil.which("chromium")

#: Headless flags: no sandbox (containers), no GPU, nothing the browser itself would fetch.
#: WebGL (plotly's 3-d plots) runs on SwiftShader, Chromium's software renderer, asked for by
#: name: Chromium is phasing it out as a silent fallback when there is no GPU.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
)


def skip_reason() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if CHROMIUM is None:
        return "needs Debian's chromium (apt-get install -y chromium; .ci/run does)"
    if importlib.util.find_spec("playwright") is None:
        return "needs Playwright's Python package (pip install -e '.[dev]')"
    return None


#: Skips a test when Chromium or Playwright is missing.
requires_browser = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


@dataclasses.dataclass
class Opened:
    """A page open in the browser, and what it reported since it started loading."""

    page: Page
    #: console messages of type "error" and uncaught exceptions, as text
    errors: list[str]
    #: URLs the page tried to fetch from the network (all aborted)
    blocked: list[str]


def _local(url: str) -> bool:
    return url.startswith(("file:", "data:", "blob:", "about:"))


@contextlib.contextmanager
def open_page(
    path: Path, *, width: int = 1400, height: int = 1000, timeout_s: float = 30.0
) -> Iterator[Opened]:
    """Load ``path`` (a file) in a fresh headless Chromium, offline; close it afterwards.

    Returns once the page's ``load`` event has fired; wait for the page's own signal of
    being drawn (``page.wait_for_function``) before reading it.
    """
    from playwright.sync_api import sync_playwright

    assert CHROMIUM is not None, skip_reason()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=list(CHROMIUM_ARGS), timeout=timeout_s * 1000
        )
        try:
            context = browser.new_context(offline=True, viewport={"width": width, "height": height})
            context.set_default_timeout(timeout_s * 1000)
            opened = Opened(page=context.new_page(), errors=[], blocked=[])

            def route(request_route: Any) -> None:
                url = request_route.request.url
                if _local(url):
                    request_route.continue_()
                else:
                    opened.blocked.append(url)
                    request_route.abort()

            context.route("**/*", route)
            opened.page.on(
                "console",
                lambda message: (
                    opened.errors.append(f"console: {message.text}")
                    if message.type == "error"
                    else None
                ),
            )
            opened.page.on("pageerror", lambda error: opened.errors.append(f"page: {error}"))
            opened.page.on(
                "requestfailed",
                lambda request: (
                    None
                    if _local(request.url) or request.url in opened.blocked
                    else opened.blocked.append(request.url)
                ),
            )
            opened.page.goto(path.resolve().as_uri(), wait_until="load")
            yield opened
        finally:
            browser.close()
