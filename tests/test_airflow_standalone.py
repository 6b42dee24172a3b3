"""`scripts/airflow-standalone.sh`: start, log in, see the DAG and the pool, stop without leftovers.

Runs a real `airflow standalone` in a temporary AIRFLOW_HOME on free ports (about 35-45 s on
2 cores), so it never touches a developer's instance. Whatever happens, the fixture stops it
(with the script, then SIGKILL to whatever is left of its session).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from ports import free_port, port_open

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "airflow-standalone.sh"

pytestmark = pytest.mark.timeout(180)  # curl comes from packages.txt (make install)


def session_members(sid: int) -> list[str]:
    """Live (non-zombie) processes of session `sid`, as "pid state command" strings."""
    members = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = stat_file.read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        state, session = fields[0], int(fields[3])  # fields 3 and 6 of proc_pid_stat(5)
        if session == sid and state != "Z":
            members.append(f"{stat_file.parent.name} {state} {comm}")
    return members


def run_script(env: dict[str, str], command: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=timeout
    )


def request(url: str, token: str | None = None, body: dict | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, {}


class Standalone:
    def __init__(self, home: Path, port: int) -> None:
        self.home = home
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        self.env |= {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW_PORT": str(port),
            "AIRFLOW_START_TIMEOUT": "75",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # The scheduler's and triggerer's log servers (default 8793, 8794).
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        }
        self.sid: int | None = None

    def pid_file_sid(self) -> int | None:
        pid_file = self.home / "standalone.pid"
        return int(pid_file.read_text().split()[1]) if pid_file.exists() else None

    def kill_leftovers(self) -> None:
        """Last resort if the script failed: SIGKILL every process group of the session."""
        sid = self.sid or self.pid_file_sid()
        if sid is None:
            return
        for _ in range(2):
            for member in session_members(sid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(os.getpgid(int(member.split()[0])), signal.SIGKILL)
            time.sleep(0.5)


@pytest.fixture
def standalone(tmp_path: Path) -> Iterator[Standalone]:
    instance = Standalone(tmp_path / "airflow_home", free_port())
    try:
        yield instance
    finally:
        if instance.pid_file_sid() is not None:
            try:
                run_script(instance.env, "stop", timeout=60)
            finally:
                instance.kill_leftovers()
        else:
            instance.kill_leftovers()


def test_start_login_dag_pool_stop(standalone: Standalone) -> None:
    t0 = time.monotonic()
    started = run_script(standalone.env, "start", timeout=120)
    log = standalone.home / "standalone.log"
    assert started.returncode == 0, started.stdout + started.stderr
    startup = time.monotonic() - t0
    standalone.sid = standalone.pid_file_sid()
    assert standalone.sid and session_members(standalone.sid)
    assert standalone.url in started.stdout

    # The printed password is the generated one, and it logs in.
    passwords = json.loads(
        (standalone.home / "simple_auth_manager_passwords.json.generated").read_text()
    )
    assert f"User: admin   Password: {passwords['admin']}" in started.stdout
    code, body = request(
        f"{standalone.url}/auth/token", body={"username": "admin", "password": passwords["admin"]}
    )
    assert code == 201, code
    token = body["access_token"]
    assert request(f"{standalone.url}/api/v2/dags/t120_reduce")[0] == 401  # no token

    # A second start is refused while this one runs.
    again = run_script(standalone.env, "start", timeout=60)
    assert again.returncode == 1 and "already running" in again.stderr
    status = run_script(standalone.env, "status", timeout=30)
    assert status.returncode == 0 and "running" in status.stdout

    # The dag-processor may need a few more seconds to parse and serialise the DAG (404 until then).
    deadline = time.monotonic() + 45
    while (code := request(f"{standalone.url}/api/v2/dags/t120_reduce", token)[0]) != 200:
        assert time.monotonic() < deadline, f"last status {code}\n" + log.read_text()[-3000:]
        time.sleep(1)
    dag_seen = time.monotonic() - t0
    code, pool = request(f"{standalone.url}/api/v2/pools/astrometry", token)
    assert code == 200 and pool["slots"] == 2, pool

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
