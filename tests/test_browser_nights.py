"""The night browser in a real browser: Airflow's UI (a real `airflow standalone`), Debian's
Chromium driven by Playwright, through the home dashboard's summary, the nav view, a night's
page, a run's tab, a task instance's tab and the reprocess button (which makes a run through
Airflow's REST API as the logged-in user). Screenshots go to test-artifacts/browser/ (docs/
holds copies for README).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import ARTIFACTS, chromium_page
from playwright.sync_api import FrameLocator, Page, expect
from standalone import DAG_ID, Standalone, request, standalone_instance

from ar_tasks import pipeline
from ar_tasks.synthetic import NightSpec, ScienceGroup, Spoiler, write_night

pytestmark = [pytest.mark.timeout(420), pytest.mark.e2e]

NIGHT = "2023-05-10"
PARAMS = {"png": True, "interpolate": True}


def _products(raw: Path, products: Path) -> None:
    """A reduced night (as the DAG's tasks reduce it) with a clouded frame left out."""
    spec = NightSpec(
        night=NIGHT,
        size=256,
        darks=((60.0, 3),),
        flats=(("V", 5.0, 3),),
        science=(ScienceGroup("M 67", "V", 60.0, 4),),
        spoiled=(Spoiler("M 67", "V", 2, transparency=0.3),),
    )
    write_night(raw, spec)
    ready = pipeline.prepare_night(str(raw), str(products), NIGHT, PARAMS)
    for pair in ready["groups"]:
        pipeline.reduce_group(str(raw), str(products), NIGHT, pair["group"], PARAMS)
    pipeline.publish_night(str(raw), str(products), NIGHT, PARAMS)


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Standalone]:
    raw, products = tmp_path / "raw", tmp_path / "products"
    _products(raw, products)
    with standalone_instance(tmp_path / "airflow_home") as instance:
        instance.use_archive(raw, products)
        yield instance


@pytest.fixture
def page() -> Iterator[Page]:
    with chromium_page(1400, 1100, "nights_last_page.png") as page:
        yield page


def _frame(page: Page, name: str) -> FrameLocator:
    return page.frame_locator(f"iframe[title='{name}']")


def test_the_night_browser_in_the_airflow_ui(standalone: Standalone, page: Page) -> None:
    standalone.start()
    token = standalone.login()
    standalone.wait_for_dag(token)
    page.context.add_cookies([{"name": "_token", "value": token, "url": standalone.url}])
    # A run of the night (the DAG unpaused, so the scheduler runs it; overwrite, so its tasks
    # run although the night is current), for the tabs.
    dag_url = f"{standalone.url}/api/v2/dags/{DAG_ID}"
    assert request(dag_url, token, {"is_paused": False}, method="PATCH")[0] == 200
    body = {"logical_date": None, "conf": {"first_night": NIGHT, "overwrite": True}}
    code, created = request(f"{dag_url}/dagRuns", token, body)
    assert code == 200, created
    run_id = created["dag_run_id"]
    standalone.wait_for_run(token, run_id)

    # The home dashboard's summary (a React plugin app fed by the browser's JSON).
    page.goto(f"{standalone.url}/")
    expect(page.get_by_text("T120 nights: 1 reduced, 0 failed")).to_be_visible()
    page.screenshot(path=ARTIFACTS / "dashboard.png")
    page.get_by_role("link", name=NIGHT, exact=True).click()  # a deep link into the nav view
    deep = _frame(page, "T120 nights")
    expect(deep.get_by_role("heading", name=f"Night {NIGHT}")).to_be_visible()

    # The nav view: the archive's nights.
    page.goto(f"{standalone.url}/plugin/t120-nights")
    nights = _frame(page, "T120 nights")
    expect(nights.get_by_role("heading", name="T120 nights")).to_be_visible()
    expect(nights.get_by_role("link", name=NIGHT)).to_be_visible()
    page.screenshot(path=ARTIFACTS / "nights_list.png")

    # A night: its groups, the frame left out and why, its pictures.
    nights.get_by_role("link", name=NIGHT).click()
    expect(nights.get_by_role("heading", name=f"Night {NIGHT}")).to_be_visible()
    expect(nights.get_by_text("transparency 0.3").first).to_be_visible()
    expect(nights.locator("img[alt='qc_frames.png']")).to_be_visible()
    page.screenshot(path=ARTIFACTS / "night_page.png", full_page=True)

    # The run's tab: that run's nights.
    page.goto(f"{standalone.url}/dags/{DAG_ID}/runs/{run_id}/plugin/t120-run")
    tab = _frame(page, "T120 nights")
    expect(tab.get_by_text(f"Nights of run {run_id}")).to_be_visible()
    expect(tab.get_by_role("link", name=NIGHT)).to_be_visible()
    page.screenshot(path=ARTIFACTS / "run_tab.png")

    # A task instance's tab: prepare_night's mapped instance is its night.
    page.goto(
        f"{standalone.url}/dags/{DAG_ID}/runs/{run_id}/tasks/prepare_night/mapped/0/plugin/t120-task"
    )
    task = _frame(page, "T120 night")
    expect(task.get_by_role("link", name=f"night {NIGHT}")).to_be_visible()
    page.screenshot(path=ARTIFACTS / "task_tab.png")

    # Reprocess from the nav view: a new run of the night, made by Airflow's API as this user.
    page.goto(f"{standalone.url}/plugin/t120-nights")
    nights = _frame(page, "T120 nights")
    nights.get_by_role("button", name="Reprocess", exact=True).first.click()
    expect(nights.get_by_text("queued: open it")).to_be_visible()
    page.screenshot(path=ARTIFACTS / "reprocess.png")
    manual = [  # the unpaused DAG may also have started its scheduled run meanwhile
        r for r in standalone.runs(token, "manual") if r["dag_run_id"] != run_id
    ]
    assert [(r["conf"]["first_night"], r["conf"]["last_night"]) for r in manual] == [
        (NIGHT, NIGHT)
    ], json.dumps(manual)[:500]
