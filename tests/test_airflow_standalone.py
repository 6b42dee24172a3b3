"""`scripts/airflow-standalone.sh`: start, log in, see the DAG and the pool, run a night, clear
and rerun it, stop without leftovers.

Runs a real `airflow standalone` in a temporary AIRFLOW_HOME on free ports (about 35-45 s on
2 cores), so it never touches a developer's instance. Whatever happens, the fixture stops it
(with the script, then SIGKILL to whatever is left of its session).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ports import port_open
from standalone import (
    DAG_ID,
    Standalone,
    request,
    run_script,
    session_members,
    standalone_instance,
)

NIGHT = "2023-05-10"  # the small archive's night
pytestmark = [pytest.mark.timeout(420), pytest.mark.e2e]  # curl: packages.txt (make install)


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Standalone]:
    with standalone_instance(tmp_path / "airflow_home") as instance:
        yield instance


def test_start_login_dag_pool_stop(
    standalone: Standalone, small_archive: Path, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    started = standalone.start()
    startup = time.monotonic() - t0
    assert standalone.url in started.stdout

    # The printed password is the generated one, and it logs in.
    assert f"User: admin   Password: {standalone.admin_password()}" in started.stdout
    token = standalone.login()
    assert request(f"{standalone.url}/api/v2/dags/t120_reduce")[0] == 401  # no token

    # A second start is refused while this one runs.
    again = run_script(standalone.env, "start", timeout=60)
    assert again.returncode == 1 and "already running" in again.stderr
    status = run_script(standalone.env, "status", timeout=30)
    assert status.returncode == 0 and "running" in status.stdout

    # The dag-processor may need a few more seconds to parse and serialise the DAG (404 until then).
    standalone.wait_for_dag(token)
    dag_seen = time.monotonic() - t0
    code, pool = request(f"{standalone.url}/api/v2/pools/astrometry", token)
    assert code == 200 and pool["slots"] == 2, pool

    run_cleared_and_rerun(standalone, token, small_archive, tmp_path / "products")

    stopped = run_script(standalone.env, "stop", timeout=60)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert session_members(standalone.sid) == []
    assert not (standalone.home / "standalone.pid").exists()
    assert not port_open(standalone.port)

    again = run_script(standalone.env, "stop", timeout=30)
    assert again.returncode == 0 and "not running" in again.stdout
    status = run_script(standalone.env, "status", timeout=30)
    assert status.returncode == 3
    print(f"start-up {startup:.1f} s, DAG served after {dag_seen:.1f} s")


def run_cleared_and_rerun(standalone: Standalone, token: str, raw: Path, products: Path) -> None:
    """A run reduces a night; cleared from the UI's API, it runs again and finds the night
    current: no group is reduced again (a removed mapped instance's old XCom must not hand
    its groups on) and no product is rewritten."""
    dag_url = f"{standalone.url}/api/v2/dags/{DAG_ID}"
    assert request(dag_url, token, {"is_paused": False}, method="PATCH")[0] == 200
    conf = {"first_night": NIGHT, "raw_root": str(raw), "products_root": str(products)}
    code, run = request(f"{dag_url}/dagRuns", token, {"logical_date": None, "conf": conf})
    assert code == 200, run
    run_id = run["dag_run_id"]
    assert standalone.wait_for_run(token, run_id) == "success"
    night = products / NIGHT
    stamps = {p: p.stat().st_mtime_ns for p in sorted(night.rglob("*")) if p.is_file()}
    assert len([p for p in stamps if p.parent.name == "stacked" and p.suffix == ".fits"]) == 5

    code, _ = request(f"{dag_url}/dagRuns/{run_id}/clear", token, {"dry_run": False})
    assert code == 200
    assert standalone.wait_for_run(token, run_id) == "success"
    _, body = request(f"{dag_url}/dagRuns/{run_id}/taskInstances?limit=100", token)
    again = [
        (ti["task_id"], ti["map_index"])
        for ti in body["task_instances"]
        if ti["state"] == "success"
        and ti["task_id"] != "list_nights"
        and ti["task_id"] not in ("plan_groups", "plan_solves")
    ]
    assert again == [], body["task_instances"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
