"""Real Chromium for browser tests: Debian's ``/usr/bin/chromium`` driven by Playwright (never a downloaded browser),
the real ``mailward web`` process, fresh pages with their dialogs, requests and CSP violations recorded, and
screenshots under ``test-output/screenshots/`` for review.

In CI (``CI=true``) a browser that cannot start fails the run; elsewhere the tests skip with the reason.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import Process, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-output" / "screenshots"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    except Exception as exc:
        pw.stop()
        if os.environ.get("CI") == "true":
            pytest.fail(f"Chromium ({CHROMIUM}) does not start: {exc}")
        pytest.skip(f"Chromium ({CHROMIUM}) does not start: {exc}")
    yield chromium
    chromium.close()
    pw.stop()


@pytest.fixture
def web(env: dict[str, str], tmp_path: Path, cfg: Any) -> Iterator[str]:
    """``mailward web`` as a real child process; yields its base URL."""
    proc = Process(["web"], env, tmp_path / "web.log").start()
    base = f"http://{env['MAILWARD_WEB_LISTEN']}"

    def up() -> bool:
        assert proc.proc is not None and proc.proc.poll() is None, proc.log()
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    wait_for(up, 30, what="web process")
    yield base
    proc.stop()


@pytest.fixture
def page_of(browser: Any) -> Iterator[Any]:
    """A factory of pages, each in a fresh browser context (its own cookies); records dialogs and requests."""
    contexts: list[Any] = []

    def new_page() -> Any:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.dialogs = []
        page.requests = []
        page.csp_violations = []
        page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
        page.on("console", lambda m: "Content Security Policy" in m.text and page.csp_violations.append(m.text))
        context.on("request", lambda r: page.requests.append(r.url))
        return page

    yield new_page
    for context in contexts:
        context.close()


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
