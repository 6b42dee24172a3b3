"""Debian's Chromium driven by Playwright (PyPI), for the tests that use Airflow's UI.

Launched with `executable_path` (no browser download); every page waits up to a minute (a
loaded 2-core machine: a first render alone takes 3-7 s) and leaves a screenshot of the last
thing it showed in test-artifacts/browser/.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from playwright.sync_api import Page, expect, sync_playwright
from standalone import REPO

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts" / "browser"
WAIT_MS = 60_000


@contextlib.contextmanager
def chromium_page(width: int, height: int, last_screenshot: str) -> Iterator[Page]:
    """A page of a headless Chromium; `last_screenshot` is saved when the test is done."""
    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} missing: run `make install` (packages.txt)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(WAIT_MS)
            yield page
            page.screenshot(path=ARTIFACTS / last_screenshot)
        finally:
            browser.close()
