"""The trigger form in a real browser: it submits with its defaults, and a bad value is refused.

A real `airflow standalone` (tests/standalone.py) with AR_RAW_ROOT and AR_PRODUCTS_ROOT set and
no AR_REFCAT, AR_REFCAT_CACHE or AR_ANET_INDEX_DIR, so the optional text params default to None:
the form sends null for an empty text field, and a `type="string"` param with a `""` default
kept the Trigger button disabled. Playwright (PyPI) drives Debian's Chromium (packages.txt; no
browser download). Screenshots go to test-artifacts/browser/ (the last page seen included).
About a minute on 2 cores, most of it the standalone's start-up.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import ARTIFACTS, chromium_page
from playwright.sync_api import Locator, Page, expect
from standalone import DAG_ID, Standalone, standalone_instance

pytestmark = [pytest.mark.timeout(300), pytest.mark.e2e]

NIGHT = "2023-05-10"


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Standalone]:
    with standalone_instance(tmp_path / "airflow_home") as instance:
        (tmp_path / "raw").mkdir()
        (tmp_path / "products").mkdir()
        instance.use_archive(tmp_path / "raw", tmp_path / "products")
        yield instance


@pytest.fixture
def page() -> Iterator[Page]:
    # Tall enough for the whole dialog to show in one screenshot.
    with chromium_page(1000, 2700, "last_page.png") as page:
        yield page


def open_trigger_form(page: Page, standalone: Standalone) -> Locator:
    """The DAG page's Trigger dialog, once rendered with its defaults, "unpause" unticked
    (a paused DAG starts no run of its own meanwhile, and the manual runs stay queued)."""
    page.goto(f"{standalone.url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger Dag", exact=True).click()
    dialog = page.get_by_role("dialog")
    expect(dialog.locator("#element_raw_root")).to_have_value(standalone.env["AR_RAW_ROOT"])
    label = f"Unpause {DAG_ID} on trigger"
    dialog.get_by_text(label, exact=True).click()  # its styled box covers the checkbox input
    expect(dialog.get_by_role("checkbox", name=label)).not_to_be_checked()
    return dialog


def test_trigger_form_defaults_and_rejected_value(standalone: Standalone, page: Page) -> None:
    standalone.start()
    token = standalone.login()
    standalone.wait_for_dag(token)
    page.context.add_cookies([{"name": "_token", "value": token, "url": standalone.url}])

    # The defaults, with a first night so the run's conf is known: the form submits.
    dialog = open_trigger_form(page, standalone)
    dialog.locator("#element_first_night").fill(NIGHT)
    submit = dialog.get_by_role("button", name="Trigger", exact=True)
    expect(submit).to_be_enabled()
    dialog.screenshot(path=ARTIFACTS / "trigger_form_defaults.png")
    submit.click()
    expect(page).to_have_url(re.compile(rf"/dags/{DAG_ID}/runs/manual__"))
    page.screenshot(path=ARTIFACTS / "run_created.png")
    runs = standalone.runs(token, "manual")
    assert len(runs) == 1, runs
    expected = {
        "first_night": NIGHT,
        "last_night": None,
        "raw_root": standalone.env["AR_RAW_ROOT"],
        "products_root": standalone.env["AR_PRODUCTS_ROOT"],
        "astrometry": "none",
        "refcat": None,
        "refcat_cache": None,
        "anet_index": None,
        "aws_conn_id": "aws_default",
        "objects": [],
        "filters": [],
        "interpolate": True,
        "overwrite": False,
    }
    conf = runs[0]["conf"]
    assert {key: conf.get(key) for key in expected} == expected, conf
    assert urllib.parse.unquote(page.url).endswith(runs[0]["dag_run_id"])

    # A relative raw root: the server checks the param's pattern, and the dialog shows its 400.
    dialog = open_trigger_form(page, standalone)
    dialog.locator("#element_raw_root").fill("data/raw")
    dialog.get_by_role("button", name="Trigger", exact=True).click()
    expect(dialog.get_by_text("Invalid input for param raw_root")).to_be_visible()
    expect(dialog).to_contain_text("'data/raw' does not match")
    dialog.screenshot(path=ARTIFACTS / "trigger_form_rejected.png")
    assert [run["dag_run_id"] for run in standalone.runs(token, "manual")] == [
        runs[0]["dag_run_id"]
    ]  # no new run
