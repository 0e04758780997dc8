"""Drive a headless Chromium with Playwright, to check HTML output the way a reader sees it.

Playwright's own browser download cannot be reached from these machines, so the helper
drives the system Chromium (Debian: ``apt-get install -y --no-install-recommends
chromium``) through ``executable_path``. It is found as ``$CAPTUM_PERTURB_CHROMIUM`` when
that is set, else as ``chromium`` (or ``chromium-browser``) on ``PATH``. ``.ci/run``
installs it; Playwright itself comes with the ``test`` extra.

A page is opened from a local file with every request that is not ``file://`` aborted,
so a page that needs the network shows it (the aborted URLs are recorded)::

    from browser import open_offline


    def test_page_renders(tmp_path):
        html = tmp_path / "page.html"
        html.write_text("<p id='x'>hello</p>")
        with open_offline(html) as view:
            assert view.page.locator("#x").inner_text() == "hello"
            assert view.blocked_requests == []

Without Playwright or Chromium a test that uses :func:`open_offline` (or
:func:`require_browser`) is skipped with the reason and the fix; under ``CI=true`` it
fails instead, as for every missing test resource (see ``conftest.py``). A script rather
than a test checks :func:`browser_unavailable_reason` first and decides itself.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Error, Page, Route

CHROMIUM_ENV_VAR = "CAPTUM_PERTURB_CHROMIUM"
"""Environment variable naming the Chromium executable; overrides the ``PATH`` lookup."""

CHROMIUM_NAMES = ("chromium", "chromium-browser")
"""Executable names looked up on ``PATH`` (Debian's, then Ubuntu's)."""

CHROMIUM_ARGS = (
    "--no-sandbox",  # runs as root in a container, where Chromium's sandbox cannot start
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
    "--disable-gpu",
)
"""Command-line switches Chromium is launched with."""

INSTALL_HINT_CHROMIUM = "apt-get install -y --no-install-recommends chromium"
INSTALL_HINT_PLAYWRIGHT = "pip install playwright (or pip install -e '.[test]')"

WaitUntil = Literal["commit", "domcontentloaded", "load", "networkidle"]


def running_in_ci() -> bool:
    """Whether this runs under CI (``CI`` is ``true``, any case), as ``conftest.running_in_ci``."""
    return os.environ.get("CI", "").strip().lower() == "true"


def find_chromium() -> str | None:
    """The Chromium executable to drive, or ``None`` when there is none.

    Returns:
        ``$CAPTUM_PERTURB_CHROMIUM`` when set and non-empty (resolved on ``PATH`` when it
        is a bare name; ``None`` when it names no executable: a set variable is never
        silently replaced by another browser), else the first of :data:`CHROMIUM_NAMES`
        found on ``PATH``.
    """
    override = os.environ.get(CHROMIUM_ENV_VAR, "").strip()
    if override:
        return shutil.which(override)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found is not None:
            return found
    return None


def browser_unavailable_reason() -> str | None:
    """Why the browser checks cannot run here, with the fix; ``None`` when they can.

    Checks that Playwright imports and that :func:`find_chromium` finds an executable;
    launching is not tried.
    """
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"Playwright is not installed ({exc}): {INSTALL_HINT_PLAYWRIGHT}"
    if find_chromium() is None:
        override = os.environ.get(CHROMIUM_ENV_VAR, "").strip()
        if override:
            return f"${CHROMIUM_ENV_VAR}={override!r} is not an executable"
        return (
            f"no Chromium found ({' or '.join(CHROMIUM_NAMES)} on PATH, or "
            f"${CHROMIUM_ENV_VAR}): {INSTALL_HINT_CHROMIUM} (Playwright's own browser "
            "download is not used)"
        )
    return None


def require_browser() -> str:
    """The Chromium executable; skips the calling test when the browser checks cannot run.

    Under ``CI=true`` the test fails instead of being skipped.

    Returns:
        The path of the Chromium executable (Playwright is importable too).
    """
    reason = browser_unavailable_reason()
    if reason is not None:
        if running_in_ci():
            pytest.fail(
                f"{reason} (CI=true: a missing test dependency is a failure)", pytrace=False
            )
        pytest.skip(reason)
    executable = find_chromium()
    assert executable is not None
    return executable


@contextmanager
def launch_chromium() -> Iterator[Browser]:
    """A headless Chromium (the system one, see :func:`find_chromium`), closed on exit.

    Use it to open several pages in one browser: pass it to :func:`open_offline`.
    Skips the calling test (fails under ``CI=true``) when the browser is missing.
    """
    executable = require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class OfflinePage:
    """A page opened by :func:`open_offline`, with what happened while it loaded and ran."""

    page: Page
    """The Playwright page, loaded; use it for assertions (``locator``, ``evaluate``...)."""
    blocked_requests: list[str] = field(default_factory=list)
    """URLs of the requests that were aborted because they were not ``file://``."""
    console_errors: list[str] = field(default_factory=list)
    """Text of the page's ``console.error`` messages (an aborted request logs one too)."""
    page_errors: list[str] = field(default_factory=list)
    """Uncaught JavaScript exceptions thrown by the page."""


@contextmanager
def open_offline(
    html_file: str | os.PathLike[str],
    *,
    browser: Browser | None = None,
    wait_until: WaitUntil = "load",
    timeout_ms: float = 30_000,
) -> Iterator[OfflinePage]:
    """Open a local HTML file in headless Chromium with the network blocked.

    Every request whose URL does not start with ``file:`` is aborted (``page.route``) and
    recorded in :attr:`OfflinePage.blocked_requests`; service workers are blocked. The page
    gets its own browser context, closed on exit.

    Args:
        html_file: The HTML file to open; must exist.
        browser: A browser from :func:`launch_chromium` to open the page in; by default a
            new one is launched for this page and closed on exit.
        wait_until: The load event ``page.goto`` waits for.
        timeout_ms: Default timeout of the page's actions and waits, in milliseconds.

    Yields:
        The loaded page with the requests, console errors and page errors seen so far
        (the lists keep growing while the page runs).

    Skips the calling test (fails under ``CI=true``) when Playwright or Chromium is
    missing; raises :class:`FileNotFoundError` when ``html_file`` does not exist.
    """
    path = Path(html_file).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no such HTML file: {path}")
    with ExitStack() as stack:
        if browser is None:
            browser = stack.enter_context(launch_chromium())
        context = browser.new_context(service_workers="block")
        stack.callback(context.close)
        context.set_default_timeout(timeout_ms)
        page = context.new_page()
        view = OfflinePage(page=page)

        def route(route: Route) -> None:
            url = route.request.url
            if url.startswith("file:"):
                route.continue_()
            else:
                view.blocked_requests.append(url)
                route.abort("blockedbyclient")

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                view.console_errors.append(message.text)

        def on_page_error(error: Error) -> None:
            view.page_errors.append(f"{error.name}: {error.message}")

        context.route("**/*", route)
        page.on("console", on_console)
        page.on("pageerror", on_page_error)
        page.goto(path.as_uri(), wait_until=wait_until)
        yield view
