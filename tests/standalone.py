"""A real `airflow standalone` (`scripts/airflow-standalone.sh`) for the tests that need one.

Each instance has a temporary AIRFLOW_HOME and free ports, so it never touches a developer's
instance. `standalone_instance` stops it whatever happens: with the script, then SIGKILL to
whatever is left of its session.
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

from ports import free_port

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "airflow-standalone.sh"
DAG_ID = "t120_reduce"


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


def request(
    url: str, token: str | None = None, body: dict | None = None, method: str | None = None
) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
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
        self.log = home / "standalone.log"
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

    def start(self) -> subprocess.CompletedProcess:
        """`airflow-standalone.sh start`, which must succeed; the session id is kept."""
        started = run_script(self.env, "start", timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        self.sid = self.pid_file_sid()
        assert self.sid and session_members(self.sid)
        return started

    def admin_password(self) -> str:
        passwords = self.home / "simple_auth_manager_passwords.json.generated"
        return json.loads(passwords.read_text())["admin"]

    def login(self) -> str:
        """A JWT for the admin user (POST /auth/token)."""
        code, body = request(
            f"{self.url}/auth/token", body={"username": "admin", "password": self.admin_password()}
        )
        assert code == 201, code
        return body["access_token"]

    def wait_for_dag(self, token: str, timeout: float = 45) -> None:
        """Until the dag-processor has parsed and serialised the DAG (404 until then)."""
        deadline = time.monotonic() + timeout
        while (code := request(f"{self.url}/api/v2/dags/{DAG_ID}", token)[0]) != 200:
            assert time.monotonic() < deadline, (
                f"last status {code}\n" + self.log.read_text()[-3000:]
            )
            time.sleep(1)

    def use_archive(self, raw: Path, products: Path) -> None:
        """Point the DAG's roots at these folders; no reference catalogue, cache or index
        folder in the environment, so the optional text params default to None."""
        self.env["AR_RAW_ROOT"], self.env["AR_PRODUCTS_ROOT"] = str(raw), str(products)
        for name in ("AR_REFCAT", "AR_REFCAT_CACHE", "AR_ANET_INDEX_DIR"):
            self.env.pop(name, None)

    def runs(self, token: str, run_type: str | None = None) -> list[dict]:
        """The DAG's runs (of one type: "manual", "scheduled"... when given)."""
        code, body = request(f"{self.url}/api/v2/dags/{DAG_ID}/dagRuns?limit=100", token)
        assert code == 200, code
        return [r for r in body["dag_runs"] if run_type is None or r["run_type"] == run_type]

    def wait_for_run(self, token: str, run_id: str, timeout: float = 240) -> str:
        """Until the run is final (the scheduler's own pace: no timing is asserted)."""
        deadline = time.monotonic() + timeout
        url = f"{self.url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}"
        while (state := request(url, token)[1].get("state")) not in ("success", "failed"):
            assert time.monotonic() < deadline, f"run {run_id} still {state}"
            time.sleep(1)
        return state

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


@contextlib.contextmanager
def standalone_instance(home: Path) -> Iterator[Standalone]:
    """An instance (not started) on a free port, stopped on exit whatever happened."""
    instance = Standalone(home, free_port())
    try:
        yield instance
    finally:
        try:
            if instance.pid_file_sid() is not None:
                run_script(instance.env, "stop", timeout=60)
        finally:
            instance.kill_leftovers()
