"""`scripts/cluster.sh`: the native Celery cluster (PostgreSQL, Redis, api-server, scheduler,
dag-processor, triggerer, Celery worker), for real, with the raw archive and the products in S3.

One test: start the cluster in a temporary AR_CLUSTER_HOME on free ports, with
AIRFLOW_CONN_AWS_DEFAULT pointing at moto's S3 server; through the REST API, reduce one night,
then backfill three nights (at most 2 runs at once); check the manifests and stacks in S3; stop
the cluster and check that no process is left and every port is closed. The start-up, run and
backfill times are printed (`pytest -s`) and written to cluster_timings.json in the test's tmp
directory. About 2 minutes on 2 cores. Whatever happens, the fixture stops the cluster (the
script, then SIGKILL to whatever is left of its sessions) and deletes its state.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO
from ports import free_port, port_open

from ar_tasks.storage import local_files
from ar_tasks.synthetic import NightSpec, write_night

SCRIPT = REPO / "scripts" / "cluster.sh"
DAG_ID = "t120_reduce"
SINGLE_NIGHT = "2023-05-09"
BACKFILL_NIGHTS = ["2023-05-10", "2023-05-11", "2023-05-12"]
# Small nights: 256^2, two science groups of 2 frames, 2 darks of each exposure, 2 flats.
SPEC = {
    "size": 256,
    "darks": ((5.0, 2), (60.0, 2)),
    "flats": (("V", 5.0, 2),),
    "science": (("M 67", "V", 60.0, 2), ("NGC 2420", "V", 60.0, 2)),
}
GROUPS = 2
CONF = {"png": False, "astrometry": "none"}  # the cheapest reduction

pytestmark = [pytest.mark.timeout(420), pytest.mark.e2e]  # postgresql-15, redis-server, curl


def proc_stat(pid: str) -> tuple[str, int, int] | None:
    """(state, ppid, session) of a process, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[3])


def live_processes() -> dict[str, tuple[int, int]]:
    """Every live (non-zombie) process: pid -> (ppid, session)."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        stat = proc_stat(entry.name)
        if stat and stat[0] != "Z":
            found[entry.name] = stat[1:]
    return found


def read_proc(pid: str, name: str) -> str:
    try:
        return (
            Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


class Cluster:
    def __init__(self, home: Path, s3_endpoint: str, bucket: str) -> None:
        self.home = home
        self.bucket = bucket
        self.ports = {
            "AR_CLUSTER_API_PORT": free_port(),
            "AR_CLUSTER_PG_PORT": free_port(),
            "AR_CLUSTER_REDIS_PORT": free_port(),
            "AR_CLUSTER_SCHEDULER_HEALTH_PORT": free_port(),
        }
        self.url = f"http://127.0.0.1:{self.ports['AR_CLUSTER_API_PORT']}"
        self.raw_root = f"s3://{bucket}/raw"
        self.products_root = f"s3://{bucket}/products"
        connection = {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
        }
        # Not the tests' own Airflow settings, nor the AWS environment: S3 only through the
        # connection, as on a real deployment.
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_", "AR_"))
        }
        self.env |= {k: str(v) for k, v in self.ports.items()}
        self.env |= {
            "AR_CLUSTER_HOME": str(home),
            "AR_CLUSTER_START_TIMEOUT": "150",
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
            # The param defaults, so that the scheduled run made by unpausing the DAG (the latest
            # night: no raw data) reads the bucket too.
            "AR_RAW_ROOT": self.raw_root,
            "AR_PRODUCTS_ROOT": self.products_root,
        }
        self.token = ""
        self.sessions: set[int] = set()  # sessions of the parts started by the script
        self.postmaster: int | None = None

    def script(self, command: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(SCRIPT), command], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def record_processes(self) -> None:
        """The sessions of the running parts and PostgreSQL's postmaster, for the final checks."""
        for pid_file in (self.home / "run").glob("*.pid"):
            self.sessions.add(int(pid_file.read_text().split()[0]))
        postmaster = self.home / "pg" / "data" / "postmaster.pid"
        if postmaster.exists():
            self.postmaster = int(postmaster.read_text().split()[0])

    def leftovers(self) -> list[str]:
        """Live processes of this cluster: in one of its sessions, PostgreSQL's postmaster or its
        children, or a process whose command line or environment names the state directory or
        one of the ports."""
        home = str(self.home)
        ports = [str(p) for p in self.ports.values()]
        found = []
        for pid, (ppid, session) in live_processes().items():
            if int(pid) == os.getpid():
                continue
            cmdline = read_proc(pid, "cmdline")
            ours = (
                session in self.sessions
                or self.postmaster in (int(pid), ppid)
                or home in cmdline
                or home in read_proc(pid, "environ")
                or any(re.search(rf"[:\s-]{p}\b", cmdline) for p in ports)
            )
            if ours:
                found.append(f"{pid} (session {session}): {cmdline[:120]}")
        return found

    def kill_leftovers(self) -> None:
        """Last resort if the script failed: SIGKILL what is left of the cluster."""
        for _ in range(3):
            left = self.leftovers()
            if not left:
                return
            for line in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(line.split()[0]), signal.SIGKILL)
            time.sleep(1)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            detail = err.read()
            try:
                return err.code, json.loads(detail or b"{}")
            except ValueError:
                return err.code, {"detail": detail.decode(errors="replace")}

    def runs(self) -> list[dict]:
        code, body = self.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?limit=100")
        assert code == 200, body
        return body["dag_runs"]

    def task_instances(self, run_id: str) -> list[dict]:
        quoted = urllib.parse.quote(run_id, safe="")
        path = f"/api/v2/dags/{DAG_ID}/dagRuns/{quoted}/taskInstances?limit=100"
        code, body = self.request("GET", path)
        assert code == 200, body
        return body["task_instances"]

    def explain_failure(self, run_ids: list[str]) -> str:
        """Task states of the runs, and the log of each failed or retried task instance."""
        lines = []
        logs = self.home / "airflow" / "logs" / f"dag_id={DAG_ID}"
        for run_id in run_ids:
            lines.append(f"run {run_id}:")
            for ti in sorted(self.task_instances(run_id), key=lambda t: t["task_id"]):
                lines.append(f"  {ti['task_id']}[{ti['map_index']}] {ti['state']}")
                if ti["state"] in ("failed", "up_for_retry"):
                    folder = logs / f"run_id={run_id}" / f"task_id={ti['task_id']}"
                    for log in sorted(folder.rglob("attempt=*.log")):
                        lines.append(f"--- {log}\n{log.read_text()[-3000:]}")
        return "\n".join(lines)

    def wait_for_runs(self, run_ids: list[str], timeout: float, max_running: int = 0) -> int:
        """Poll until every run succeeded (fail fast on a failed or retried task); returns the
        largest number of those runs seen running at once."""
        deadline = time.monotonic() + timeout
        peak = 0
        while True:
            states = {
                r["dag_run_id"]: r["state"] for r in self.runs() if r["dag_run_id"] in run_ids
            }
            running = sum(s == "running" for s in states.values())
            peak = max(peak, running)
            if max_running:
                assert running <= max_running, states
            if len(states) == len(run_ids) and set(states.values()) == {"success"}:
                return peak
            bad = [
                run_id
                for run_id, state in states.items()
                if state == "failed"
                or (
                    state == "running"
                    and any(
                        t["state"] in ("failed", "up_for_retry")
                        for t in self.task_instances(run_id)
                    )
                )
            ]
            assert not bad, self.explain_failure(bad)
            assert time.monotonic() < deadline, f"runs not done: {states}\n" + (
                self.explain_failure(list(states))
            )
            time.sleep(1)


def upload_nights(client, bucket: str, root: Path, nights: list[str]) -> None:
    for night in nights:
        write_night(root, NightSpec(night=night, **SPEC))
    for rel, path in local_files(root, skip=["_truth"]).items():
        client.upload_file(str(path), bucket, f"raw/{rel}")


def check_products(client, bucket: str, night: str) -> None:
    prefix = f"products/{night}/"
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = {o["Key"].removeprefix(prefix) for page in pages for o in page.get("Contents", [])}
    assert "manifest.json" in keys, sorted(keys)
    stacks = [k for k in keys if re.fullmatch(r"stacked/[^/]+\.fits", k)]
    assert len(stacks) == GROUPS, sorted(keys)
    manifest = json.loads(
        client.get_object(Bucket=bucket, Key=prefix + "manifest.json")["Body"].read()
    )
    assert manifest["status"] == "success" and manifest["problems"] == [], manifest["problems"]
    assert len(manifest["groups"]) == GROUPS
    assert manifest["raw_dir"] == f"s3://{bucket}/raw/{night}"


@pytest.fixture
def cluster(s3_server) -> Iterator[Cluster]:
    # Not under pytest's tmp_path (mode 700 parents): as root, the postgres user must reach it.
    home = Path(tempfile.mkdtemp(prefix="ar-cluster-", dir="/tmp"))
    home.chmod(0o711)
    bucket = s3_server.new_bucket()
    instance = Cluster(home, s3_server.endpoint, bucket)
    try:
        yield instance
    finally:
        try:
            instance.record_processes()
            result = instance.script("purge", timeout=180)
            if result.returncode:
                print(result.stdout + result.stderr)
        finally:
            instance.kill_leftovers()
            shutil.rmtree(home, ignore_errors=True)


def test_cluster_reduces_a_night_and_a_backfill_from_s3(cluster, s3_server, tmp_path):
    client = s3_server.client()
    upload_nights(client, cluster.bucket, tmp_path / "raw", [SINGLE_NIGHT, *BACKFILL_NIGHTS])
    roots = {"raw_root": cluster.raw_root, "products_root": cluster.products_root}
    timings: dict[str, float] = {}

    # Start-up.
    t0 = time.monotonic()
    started = cluster.script("up", timeout=240)
    timings["startup_s"] = round(time.monotonic() - t0, 1)
    cluster.record_processes()
    assert started.returncode == 0, started.stdout + started.stderr
    assert "cluster up in" in started.stdout and cluster.url in started.stdout
    assert len(cluster.sessions) == 6 and cluster.postmaster, cluster.sessions  # 5 + Redis
    secrets = cluster.home / "secrets.env"
    assert secrets.stat().st_mode & 0o777 == 0o600
    assert {line.split("=")[0] for line in secrets.read_text().splitlines()} >= {
        "FERNET_KEY",
        "JWT_SECRET",
        "API_SECRET_KEY",
    }
    again = cluster.script("up", timeout=60)
    assert again.returncode == 0 and "already running" in again.stdout, again.stdout
    assert cluster.script("status", timeout=30).returncode == 0

    # Log in with the generated password; wait until the DAG is parsed, unpause it.
    passwords = json.loads(
        (cluster.home / "airflow" / "simple_auth_manager_passwords.json.generated").read_text()
    )
    assert f"User: admin   Password: {passwords['admin']}" in started.stdout
    code, body = cluster.request(
        "POST", "/auth/token", {"username": "admin", "password": passwords["admin"]}
    )
    assert code == 201, body
    cluster.token = body["access_token"]
    deadline = time.monotonic() + 60
    while (code := cluster.request("GET", f"/api/v2/dags/{DAG_ID}")[0]) != 200:
        assert time.monotonic() < deadline, f"DAG not served: last status {code}"
        time.sleep(1)
    timings["dag_served_s"] = round(time.monotonic() - t0, 1)
    code, body = cluster.request("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
    assert code == 200 and body["is_paused"] is False, body
    code, pool = cluster.request("GET", "/api/v2/pools/astrometry")
    assert code == 200 and pool["slots"] == 2, pool

    # One night, triggered like the UI's "Single run".
    t1 = time.monotonic()
    conf = {**CONF, **roots, "first_night": SINGLE_NIGHT, "last_night": SINGLE_NIGHT}
    code, run = cluster.request(
        "POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf}
    )
    assert code == 200, run
    cluster.wait_for_runs([run["dag_run_id"]], timeout=150)
    timings["one_night_run_s"] = round(time.monotonic() - t1, 1)
    check_products(client, cluster.bucket, SINGLE_NIGHT)

    # A backfill of three nights, at most two at once; each run reduces its own night.
    backfill = {
        "dag_id": DAG_ID,
        "from_date": f"{BACKFILL_NIGHTS[0]}T00:00:00Z",
        "to_date": f"{BACKFILL_NIGHTS[-1]}T23:59:59Z",  # the last night starts at 12:00 local
        "max_active_runs": 2,
        "reprocess_behavior": "none",
        "dag_run_conf": {**CONF, **roots},
    }
    code, dry = cluster.request("POST", "/api/v2/backfills/dry_run", backfill)
    assert code == 200 and dry["total_entries"] == 3, dry
    t2 = time.monotonic()
    code, created = cluster.request("POST", "/api/v2/backfills", backfill)
    assert code == 200 and created["max_active_runs"] == 2, created
    deadline = time.monotonic() + 30
    while (
        len(run_ids := [r["dag_run_id"] for r in cluster.runs() if r["run_type"] == "backfill"]) < 3
    ):
        assert time.monotonic() < deadline, run_ids
        time.sleep(0.5)
    peak = cluster.wait_for_runs(run_ids, timeout=240, max_running=2)
    timings["backfill_3_nights_s"] = round(time.monotonic() - t2, 1)
    timings["backfill_peak_running"] = peak
    for night in BACKFILL_NIGHTS:
        check_products(client, cluster.bucket, night)
    deadline = time.monotonic() + 30  # the scheduler marks it complete on a later loop
    while not (done := cluster.request("GET", f"/api/v2/backfills/{created['id']}")[1]).get(
        "completed_at"
    ):
        assert time.monotonic() < deadline, done
        time.sleep(1)

    # Stop: nothing left, every port closed; a second `down` has nothing to do.
    t3 = time.monotonic()
    cluster.record_processes()
    stopped = cluster.script("down", timeout=180)
    timings["shutdown_s"] = round(time.monotonic() - t3, 1)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert cluster.leftovers() == []
    assert [name for name, port in cluster.ports.items() if port_open(port)] == []
    again = cluster.script("down", timeout=60)
    assert again.returncode == 0 and "nothing to stop" in again.stdout, again.stdout
    assert cluster.script("status", timeout=30).returncode == 3

    timings["test_s"] = round(time.monotonic() - t0, 1)
    (tmp_path / "cluster_timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    print("\ncluster timings:", json.dumps(timings), f"({tmp_path / 'cluster_timings.json'})")
