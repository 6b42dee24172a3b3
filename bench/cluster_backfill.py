"""`make bench-cluster`: the DAG t120_reduce at archive scale, unattended. A 12-night backfill on
the native Celery cluster (scripts/cluster.sh), then a rerun of the same range, beside the
astro_reduce command on the same nights.

1. A synthetic archive (ar_tasks.synthetic, 1024², 5 groups a night) of 12 consecutive dates:
   8 complete nights, 2 with science frames only (no DARK/, FLAT/), 1 without FLAT/, 1 date
   without a folder. Kept in bench/work/cluster_backfill/raw between runs of the bench.
2. The astro_reduce command (`--setup`, then `--interpolate`) on a fresh copy of each complete
   night, one after the other: wall, and CPU seconds of the child processes (getrusage).
3. The cluster up (its state in bench/work/cluster_backfill/cluster, on free ports), the DAG
   unpaused, then through the REST API a backfill of the 12 nights (max_active_runs 2,
   reprocess_behavior "completed", conf: the local roots, astrometry "none", png true), polled
   every second until every run is final; then the same backfill again (everything rerun; a
   successful night must have nothing written, or a manifest saying nothing was recomputed).
   Per pass: wall from the backfill's creation to the last run's end, runs (state, duration),
   task instances, every try (duration, queued → start, upstream end → start), retries, pool
   occupancy, and the machine's busy fraction from /proc/stat (with the CPU of processes
   outside the cluster). The cluster goes down whatever happens.

Efficiency = the command's CPU seconds ÷ (first pass wall × cores). Results: bench/results/
cluster_backfill.json and a table on stdout; `--write-benchmarks [NAME]` also writes the row NAME
of BENCHMARKS.md's table "The DAG at archive scale" (`--from-json` rewrites it from a results file
without running anything). Only the DAG id `t120_reduce` and its params are assumed, never task
names. `--source` picks the code the cluster and the command run: a snapshot of a commit (default
HEAD, so edits in progress in the working tree do not leak in) or `worktree`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench.harness import Command, machine_facts, proc_stats, run_sequence

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DAG_ID = "t120_reduce"
PARIS = ZoneInfo("Europe/Paris")
FIRST_NIGHT = "2023-05-01"
# One kind per date, in date order: 8 complete nights, 2 with science frames only, 1 without
# flats, 1 without any data (no folder).
KINDS = (
    "complete",
    "complete",
    "complete",
    "science_only",
    "complete",
    "empty",
    "complete",
    "complete",
    "no_flats",
    "complete",
    "science_only",
    "complete",
)
REMOVED_FOLDERS = {"science_only": ("DARK", "FLAT"), "no_flats": ("FLAT",)}
HOPELESS = ("science_only", "no_flats")  # nights without their own masters: they failed until
# 2026-12-03, and borrow their neighbours' masters since (its figures before that are failures)
RAW_FOLDERS = ("DARK", "FLAT", "ORIGINAL")
MAX_ACTIVE_RUNS = 2
CONF = {"astrometry": "none", "png": True}
FINAL_RUN_STATES = {"success", "failed"}
EXECUTED = {"success", "failed", "up_for_retry", "up_for_reschedule"}
TARGETS = {"first_pass_s": 150, "efficiency": 0.10, "rerun_fraction": 0.25}
BEGIN = "<!-- cluster-backfill:begin (rows written by python -m bench.cluster_backfill) -->"
END = "<!-- cluster-backfill:end -->"
HEADER = (
    "| run | first pass s | rerun s (÷ first pass) | task instances: first pass / rerun | "
    "retries | efficiency | machine busy (others' share) | complete night's run s | "
    "task instance s, complete nights | queued → start s | upstream end → start s | "
    "hopeless nights | astrometry pool full | CLI, 8 complete nights |"
)


# ---------------------------------------------------------------------------------------------
# The archive and the code


def night_plan(first: str = FIRST_NIGHT) -> dict[str, str]:
    """Night name -> kind, for the 12 consecutive dates from `first`."""
    start = dt.date.fromisoformat(first)
    return {(start + dt.timedelta(days=i)).isoformat(): kind for i, kind in enumerate(KINDS)}


def build_archive(raw: Path, truth: Path, plan: dict[str, str], size: int) -> None:
    """The synthetic archive of `plan` in `raw` (reused while plan and size are the same)."""
    from ar_tasks.synthetic import NightSpec, write_night

    stamp = raw / ".bench-archive.json"
    wanted = {"plan": plan, "size": size}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return
    shutil.rmtree(raw, ignore_errors=True)
    shutil.rmtree(truth, ignore_errors=True)
    raw.mkdir(parents=True)
    t0 = time.perf_counter()
    for night, kind in plan.items():
        if kind == "empty":
            continue
        write_night(raw, NightSpec(night=night, size=size), truth_root=truth)
        for folder in REMOVED_FOLDERS.get(kind, ()):
            shutil.rmtree(raw / night / folder)
    stamp.write_text(json.dumps(wanted))
    print(f"archive: {len(plan)} dates in {raw} ({time.perf_counter() - t0:.0f} s)", flush=True)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def source_tree(source: str, work: Path) -> tuple[Path, dict[str, Any]]:
    """The tree the cluster and the command run from: the working tree, or a snapshot of a
    commit (git archive, byte-compiled, the repository's venv linked in)."""
    if source == "worktree":
        dirty = git("status", "--porcelain", "--", "dags", "ar_tasks", "plugins", "scripts")
        about = {"source": "worktree", "commit": git("rev-parse", "--short", "HEAD")}
        about["dirty"] = dirty.splitlines()
        tree = REPO
    else:
        sha = git("rev-parse", "--verify", f"{source}^{{commit}}")
        tree = work / f"src-{sha[:12]}"
        if not (tree / ".complete").is_file():
            shutil.rmtree(tree, ignore_errors=True)
            tree.mkdir(parents=True)
            archive = subprocess.Popen(["git", "archive", sha], cwd=REPO, stdout=subprocess.PIPE)
            subprocess.run(["tar", "-x", "-C", str(tree)], stdin=archive.stdout, check=True)
            if archive.wait():
                raise RuntimeError(f"git archive {sha} failed")
            (tree / ".venv").symlink_to(REPO / ".venv")
            (tree / ".complete").touch()
        about = {"source": source, "commit": sha[:7], "dirty": []}
    # Every process would otherwise recompile the project (PYTHONDONTWRITEBYTECODE machines).
    site = next((BIN.parent / "lib").glob("python3*/site-packages"))
    for folder in (site, tree / "ar_tasks", tree / "dags", tree / "plugins"):
        if folder.is_dir():
            subprocess.run(
                [str(BIN / "python"), "-m", "compileall", "-q", "-j", "0", str(folder)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
    return tree, about


def code_env(tree: Path) -> dict[str, str]:
    """The environment that makes Python import ar_tasks from `tree` (before the editable
    install, which only finds what sys.path does not)."""
    return {} if tree == REPO else {"PYTHONPATH": str(tree)}


# ---------------------------------------------------------------------------------------------
# The command


def measure_cli(
    raw: Path, work: Path, nights: Sequence[str], env: dict[str, str]
) -> dict[str, Any]:
    """astro_reduce --setup, then --interpolate, on a fresh copy of each night, in turn."""
    command = str(BIN / "astro_reduce")
    per_night = {}
    busy0 = _cpu_jiffies()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for night in nights:
        folder = work / "cli" / night
        shutil.rmtree(folder, ignore_errors=True)
        for sub in RAW_FOLDERS:
            if (raw / night / sub).is_dir():
                shutil.copytree(raw / night / sub, folder / sub)
        sample = run_sequence(
            [
                Command([command, "--setup"], folder, env, "astro_reduce --setup"),
                Command([command, "--interpolate"], folder, env, "astro_reduce --interpolate"),
            ],
            log=work / "logs" / "cli.log",
        )
        per_night[night] = {"wall_s": round(sample.wall_s, 3), "cpu_s": round(sample.cpu_s, 3)}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1 = _cpu_jiffies()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    ticks = os.sysconf("SC_CLK_TCK")
    shutil.rmtree(work / "cli", ignore_errors=True)
    result = {
        "nights": len(nights),
        "wall_s": round(sum(n["wall_s"] for n in per_night.values()), 2),
        "cpu_s": round(cpu, 2),
        # the whole machine meanwhile, and its CPU that was not the command's (the bench's own
        # copies of the nights between commands included)
        "machine_busy": round((busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1), 3),
        "not_the_command_cpu_s": round((busy1[0] - busy0[0]) / ticks - cpu, 2),
        "per_night": per_night,
    }
    print(f"CLI: {len(nights)} nights, {result['wall_s']} s wall, {result['cpu_s']} CPU s")
    return result


# ---------------------------------------------------------------------------------------------
# The machine


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot (idle and iowait are not busy)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    total = sum(fields)  # user nice system idle iowait irq softirq steal (guest is in user)
    return total - fields[3] - fields[4], total


class ProcSampler(threading.Thread):
    """Samples every process's CPU time each second and sorts it: the cluster's, this bench's
    own, everyone else's. A process is the cluster's if it runs in one of the sessions of
    cluster.sh's parts (AR_CLUSTER_HOME/run/*.pid), descends from one of the cluster's
    processes, or carries AR_CLUSTER_MEMBER=<home> in its environment (setproctitle, used by
    the API server, the task supervisors, Celery and PostgreSQL, overwrites the environment,
    hence the first two).

    A process's time counts its own and that of the children it has reaped (cutime), less what
    was already counted while those children were seen alive: so short-lived processes (task
    processes, a test's subprocesses) count for their parent's kind even if never sampled."""

    def __init__(self, marker: str, run_dir: Path | None = None, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.marker = marker.encode()
        self.run_dir = run_dir
        self.interval = interval
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.totals = {"cluster": 0, "bench": 0, "others": 0}
        # (pid, start time) -> (own ticks, reaped children's ticks, kind, parent pid)
        self.last: dict[tuple[str, int], tuple[int, int, str, str]] = {}
        self.credit: Counter = Counter()  # pid -> ticks of its dead children already counted
        ticks = os.sysconf("SC_CLK_TCK")
        self.started_ticks = int(float(Path("/proc/uptime").read_text().split()[0]) * ticks)
        self.me = str(os.getpid())
        self.sample()

    def sessions(self) -> set[str]:
        found = set()
        for pid_file in self.run_dir.glob("*.pid") if self.run_dir else ():
            with contextlib.suppress(OSError, IndexError):
                found.add(pid_file.read_text().split()[0])
        return found

    def classify(self, pid: str, session: str, parent_kind: str | None, sessions: set[str]) -> str:
        if pid == self.me:
            return "bench"
        if session in sessions or parent_kind == "cluster":
            return "cluster"
        if parent_kind == "bench":
            return "bench"
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return "others"
        return "cluster" if self.marker in environ.split(b"\0") else "others"

    def sample(self) -> None:
        stats: dict[tuple[str, int], tuple[int, int, str, str]] = {}
        for pid, fields in proc_stats():
            own, reaped = int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
            key = (pid, int(fields[19]))
            stats[key] = (own, reaped, fields[1].decode(), fields[3].decode())
        # First the processes gone since the last sample: their parent's cutime holds what was
        # already counted of them (even in this very sample).
        for key, (own, reaped, _, parent) in self.last.items():
            if key not in stats and own + reaped:
                self.credit[parent] += own + reaped
        sessions = self.sessions()
        kinds = {pid: kind for (pid, _), (_, _, kind, _) in self.last.items()}
        seen: dict[tuple[str, int], tuple[int, int, str, str]] = {}
        add: Counter = Counter()
        for key in sorted(stats, key=lambda k: k[1]):  # parents before their children
            own, reaped, parent, session = stats[key]
            if key in self.last:
                own0, reaped0, kind, _ = self.last[key]
            else:
                kind = self.classify(key[0], session, kinds.get(parent), sessions)
                new = key[1] > self.started_ticks
                own0, reaped0 = (0, 0) if new else (own, reaped)
            kinds[key[0]] = kind
            children = reaped - reaped0
            already = min(children, self.credit[key[0]])
            if already:
                self.credit[key[0]] -= already
            add[kind] += own - own0 + children - already
            seen[key] = (own, reaped, kind, parent)
        with self.lock:
            for kind, value in add.items():
                self.totals[kind] += value
            self.last = seen

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.sample()

    def snapshot(self) -> dict[str, int]:
        busy, total = _cpu_jiffies()
        with self.lock:
            return {"busy": busy, "total": total, **self.totals}


def machine_window(start: dict[str, int], end: dict[str, int]) -> dict[str, float]:
    """Busy fraction of the machine between two snapshots, and who used it."""
    total = max(end["total"] - start["total"], 1)
    return {
        key: round((end[key] - start[key]) / total, 3) for key in ("busy", "cluster", "others")
    } | {"bench": round((end["bench"] - start["bench"]) / total, 4)}


# ---------------------------------------------------------------------------------------------
# The cluster and its REST API


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ApiError(RuntimeError):
    def __init__(self, method: str, path: str, code: int, body: Any) -> None:
        super().__init__(f"{method} {path}: HTTP {code}: {body}")
        self.code = code


class Cluster:
    """scripts/cluster.sh of a source tree, in its own AR_CLUSTER_HOME, on free ports."""

    def __init__(self, tree: Path, home: Path, logs: Path, roots: dict[str, str]) -> None:
        self.tree = tree
        self.home = home
        self.logs = logs
        ports = {
            "AR_CLUSTER_API_PORT": free_port(),
            "AR_CLUSTER_PG_PORT": free_port(),
            "AR_CLUSTER_REDIS_PORT": free_port(),
            "AR_CLUSTER_SCHEDULER_HEALTH_PORT": free_port(),
        }
        self.url = f"http://127.0.0.1:{ports['AR_CLUSTER_API_PORT']}"
        # Not the caller's Airflow, AWS or project settings: the cluster's own.
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_", "AR_"))
        }
        self.env |= {k: str(v) for k, v in ports.items()} | code_env(tree)
        self.env |= {
            "AR_CLUSTER_HOME": str(home),
            # The param defaults, also for the scheduled run that unpausing creates.
            "AR_RAW_ROOT": roots["raw_root"],
            "AR_PRODUCTS_ROOT": roots["products_root"],
        }
        self.token = ""

    def script(self, command: str, timeout: float) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(self.tree / "scripts" / "cluster.sh"), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        with open(self.logs / f"cluster-{command}.log", "a") as log:
            log.write(result.stdout + result.stderr)
        return result

    def up(self) -> float:
        if self.home.exists():
            self.script("purge", timeout=240)  # a fresh database: the figures of one run
        self.home.mkdir(parents=True)
        self.home.chmod(0o711)  # as root, the postgres user must reach pg/
        t0 = time.monotonic()
        result = self.script("up", timeout=300)
        if result.returncode:
            raise RuntimeError(f"cluster.sh up failed:\n{result.stdout}\n{result.stderr}")
        return time.monotonic() - t0

    def settings(self) -> dict[str, str]:
        """The concurrency settings the cluster's components got from cluster-env.sh."""
        names = ("AR_CLUSTER_WORKER_CONCURRENCY", "AIRFLOW__CORE__PARALLELISM")
        script = f"source {self.tree / 'scripts' / 'cluster-env.sh'} && " + " && ".join(
            f"echo {name}=${name}" for name in names
        )
        out = subprocess.run(
            ["bash", "-c", script], env=self.env, capture_output=True, text=True, check=True
        ).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def down(self) -> None:
        result = self.script("down", timeout=240)
        if result.returncode:
            print(f"cluster.sh down failed:\n{result.stdout}\n{result.stderr}", file=sys.stderr)

    def request(self, method: str, path: str, body: Any = None, params: dict | None = None) -> Any:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")
            raise ApiError(method, path, err.code, detail[:2000]) from None

    def login(self) -> None:
        passwords = self.home / "airflow" / "simple_auth_manager_passwords.json.generated"
        password = json.loads(passwords.read_text())["admin"]
        body = self.request("POST", "/auth/token", {"username": "admin", "password": password})
        self.token = body["access_token"]

    def wait_for_dag(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.request("GET", f"/api/v2/dags/{DAG_ID}")
                return
            except ApiError as err:
                if err.code != 404 or time.monotonic() > deadline:
                    errors = self.request("GET", "/api/v2/importErrors")
                    raise RuntimeError(f"DAG {DAG_ID} not served: {err}; {errors}") from None
            time.sleep(1)

    def paged(self, path: str, key: str, **params: Any) -> list[dict]:
        items: list[dict] = []
        while True:
            body = self.request("GET", path, params={**params, "limit": 100, "offset": len(items)})
            page = body[key]
            items += page
            if not page or len(items) >= (body.get("total_entries") or 0):
                return items

    def runs(self) -> list[dict]:
        return self.paged(f"/api/v2/dags/{DAG_ID}/dagRuns", "dag_runs")

    def pools(self) -> list[dict]:
        return self.request("GET", "/api/v2/pools", params={"limit": 100})["pools"]

    def upstreams(self) -> dict[str, list[str]]:
        """task id -> the ids of the tasks it directly depends on (from the DAG's own graph)."""
        tasks = self.request("GET", f"/api/v2/dags/{DAG_ID}/tasks")["tasks"]
        ups: dict[str, list[str]] = {t["task_id"]: [] for t in tasks}
        for task in tasks:
            for down in task.get("downstream_task_ids") or []:
                ups.setdefault(down, []).append(task["task_id"])
        return ups

    def task_instances(self, run_id: str) -> list[dict]:
        quoted = urllib.parse.quote(run_id, safe="")
        return self.paged(f"/api/v2/dags/{DAG_ID}/dagRuns/{quoted}/taskInstances", "task_instances")

    def tries(self, run_id: str, task_id: str, map_index: int) -> list[dict]:
        quoted = urllib.parse.quote(run_id, safe="")
        task = urllib.parse.quote(task_id, safe="")
        path = f"/api/v2/dags/{DAG_ID}/dagRuns/{quoted}/taskInstances/{task}/tries"
        return self.request("GET", path, params={"map_index": map_index})["task_instances"]


@contextlib.contextmanager
def cluster_up(cluster: Cluster) -> Iterator[float]:
    """The cluster up for the duration of the block; down whatever happens."""
    try:
        yield cluster.up()
    finally:
        print("cluster down ...", flush=True)
        cluster.down()


# ---------------------------------------------------------------------------------------------
# One pass: a backfill of the whole range, polled to the end, then its records


def epoch(stamp: str | None) -> float | None:
    return dt.datetime.fromisoformat(stamp).timestamp() if stamp else None


def night_of_run(run: dict) -> str | None:
    stamp = run.get("data_interval_start") or run.get("logical_date")
    return dt.datetime.fromisoformat(stamp).astimezone(PARIS).date().isoformat() if stamp else None


def create_backfill(cluster: Cluster, body: dict, timeout: float = 120) -> dict:
    """POST the backfill; retried while the previous one is not marked complete yet (409)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return cluster.request("POST", "/api/v2/backfills", body)
        except ApiError as err:
            if err.code != 409 or time.monotonic() > deadline:
                raise
            time.sleep(1)


def wait_backfill_complete(cluster: Cluster, backfill_id: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        backfill = cluster.request("GET", f"/api/v2/backfills/{backfill_id}")
        if backfill.get("completed_at") or time.monotonic() > deadline:
            return backfill
        time.sleep(1)


def settle_scheduled_runs(cluster: Cluster, timeout: float = 180) -> list[dict]:
    """Wait for the scheduled run that unpausing creates (the latest night) to finish, so that
    it does not share the first pass's slots."""
    appear_by = time.monotonic() + 20
    deadline = time.monotonic() + timeout
    while True:
        runs = [r for r in cluster.runs() if r["run_type"] != "backfill"]
        busy = [r for r in runs if r["state"] not in FINAL_RUN_STATES]
        now = time.monotonic()
        if (runs and not busy) or (not runs and now > appear_by) or now > deadline:
            return [{"run_id": r["dag_run_id"], "state": r["state"]} for r in runs]
        time.sleep(1)


def run_pass(
    cluster: Cluster,
    label: str,
    plan: dict[str, str],
    roots: dict[str, str],
    sampler: ProcSampler,
    previous_tries: dict[tuple[str, str, int], int],
    timeout: float,
) -> dict[str, Any]:
    """One backfill of the whole plan; returns its raw records (runs, task instances, tries,
    pool samples, machine) for `analyse_pass`."""
    nights = sorted(plan)
    body = {
        "dag_id": DAG_ID,
        "from_date": f"{nights[0]}T00:00:00Z",
        "to_date": f"{nights[-1]}T23:59:59Z",  # the last night's run is at 12:00 local
        "max_active_runs": MAX_ACTIVE_RUNS,
        "reprocess_behavior": "completed",
        "dag_run_conf": {**CONF, **roots},
    }
    dry = cluster.request("POST", "/api/v2/backfills/dry_run", body)
    if dry.get("total_entries") != len(plan):
        raise RuntimeError(f"the backfill would make {dry.get('total_entries')} runs: {dry}")
    os.sync()
    snap0, load0 = sampler.snapshot(), os.getloadavg()
    backfill = create_backfill(cluster, body)
    created = epoch(backfill["created_at"])
    assert created is not None
    print(f"{label}: backfill {backfill['id']} created", flush=True)
    pool_samples: list[dict] = []
    deadline = time.monotonic() + timeout
    last_report = 0.0
    states: Counter = Counter()
    while True:
        runs = [
            r for r in cluster.runs() if r["run_type"] == "backfill" and night_of_run(r) in plan
        ]
        now = time.time()
        pool_samples += [
            {
                "t": round(now - created, 1),
                "pool": p.get("name") or p.get("pool"),
                "slots": p["slots"],
                "occupied": p["occupied_slots"],
                "running": p["running_slots"],
                "queued": p["queued_slots"],
                "open": p["open_slots"],
            }
            for p in cluster.pools()
        ]
        done = [
            r
            for r in runs
            if r["state"] in FINAL_RUN_STATES and (epoch(r["end_date"]) or 0) >= created
        ]
        states = Counter(r["state"] for r in runs)
        if now - last_report >= 30:
            print(f"  {now - created:5.0f} s: {len(done)}/{len(plan)} done {dict(states)}")
            last_report = now
        if len(done) == len(plan):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{label}: runs not final after {timeout:.0f} s: {dict(states)}")
        time.sleep(1)
    polled_wall = time.time() - created
    snap1, load1 = sampler.snapshot(), os.getloadavg()
    completed = wait_backfill_complete(cluster, backfill["id"])
    upstreams = cluster.upstreams()
    run_records, ti_records, try_records = [], [], []
    for run in sorted(runs, key=lambda r: night_of_run(r) or ""):
        night = night_of_run(run) or ""
        kind = plan[night]
        run_records.append(
            {
                "night": night,
                "kind": kind,
                "run_id": run["dag_run_id"],
                "state": run["state"],
                "queued_at": epoch(run["queued_at"]),
                "start": epoch(run["start_date"]),
                "end": epoch(run["end_date"]),
            }
        )
        for ti in cluster.task_instances(run["dag_run_id"]):
            key = (run["dag_run_id"], ti["task_id"], ti["map_index"])
            ti_records.append(
                {
                    "night": night,
                    "kind": kind,
                    "run_id": key[0],
                    "task_id": key[1],
                    "map_index": key[2],
                    "state": ti["state"],
                    "try_number": ti["try_number"],
                }
            )
            for attempt in cluster.tries(*key):
                if attempt["try_number"] <= previous_tries.get(key, 0):
                    continue  # a try of an earlier pass
                try_records.append(
                    {
                        "night": night,
                        "kind": kind,
                        "run_id": key[0],
                        "task_id": key[1],
                        "map_index": key[2],
                        "try_number": attempt["try_number"],
                        "state": attempt["state"],
                        "pool": attempt["pool"],
                        "queued": epoch(attempt.get("queued_when")),
                        "start": epoch(attempt["start_date"]),
                        "end": epoch(attempt["end_date"]),
                    }
                )
    return {
        "label": label,
        "backfill": {
            "id": backfill["id"],
            "created_at": backfill["created_at"],
            "completed_at": completed.get("completed_at"),
            "request": body,
        },
        "created": created,
        "polled_wall_s": round(polled_wall, 1),
        "upstreams": upstreams,
        "runs": run_records,
        "task_instances": ti_records,
        "tries": try_records,
        "pool_samples": pool_samples,
        "pool_slots": {s["pool"]: s["slots"] for s in pool_samples},
        "machine": machine_window(snap0, snap1)
        | {"loadavg_start": list(load0), "loadavg_end": list(load1)},
    }


def read_manifests(products: Path, plan: dict[str, str]) -> dict[str, dict]:
    """Status, what its manifest says was recomputed, and a stamp of every file written
    (path, size, mtime: a rerun of a current night leaves the manifest as it was, so only
    the files tell that nothing was written), per night that has a manifest."""
    found = {}
    for night in plan:
        path = products / night / "manifest.json"
        if path.is_file():
            manifest = json.loads(path.read_text())
            recomputed = manifest.get("recomputed")
            written = sorted(
                (p.relative_to(path.parent).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                for p in path.parent.rglob("*")
                if p.is_file()
            )
            found[night] = {
                "status": manifest.get("status"),
                "recomputed": None if recomputed is None else len(recomputed),
                "problems": len(manifest.get("problems") or []),
                "files_stamp": hashlib.sha256(json.dumps(written).encode()).hexdigest()[:16],
            }
    return found


# ---------------------------------------------------------------------------------------------
# Analysis (pure functions of the records)


def stats(values: Iterable[float]) -> dict[str, float] | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return {
        "n": len(ordered),
        "median": round(statistics.median(ordered), 3),
        "min": round(ordered[0], 3),
        "max": round(ordered[-1], 3),
        "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 3),
        "sum": round(sum(ordered), 3),
    }


def seconds_at_least(intervals: Iterable[tuple[float, float]], level: int) -> tuple[float, int]:
    """(seconds during which at least `level` intervals overlap, the largest overlap)."""
    events = sorted(e for a, b in intervals if b > a for e in ((a, 1), (b, -1)))
    count = peak = 0
    held = 0.0
    since = 0.0
    for moment, step in events:
        if count >= level:
            held += moment - since
        count += step
        peak = max(peak, count)
        since = moment
    return held, peak


def _group(task_id: str) -> str:
    return task_id.rpartition(".")[0]


def analyse_pass(record: dict[str, Any]) -> dict[str, Any]:
    """The figures of one pass from its records."""
    runs, tries = record["runs"], record["tries"]
    # Task instances that the run no longer has (a mapped task mapping fewer items on a rerun)
    # are listed by the API as "removed": counted apart.
    tis = [t for t in record["task_instances"] if t["state"] != "removed"]
    removed = len(record["task_instances"]) - len(tis)
    executed = [t for t in tries if t["state"] in EXECUTED and t["start"] and t["end"]]
    last: dict[tuple[str, str, int], dict] = {}
    for attempt in sorted(executed, key=lambda t: t["try_number"]):
        last[(attempt["run_id"], attempt["task_id"], attempt["map_index"])] = attempt
    by_task: dict[tuple[str, str], list[dict]] = {}
    for (run_id, task_id, _), attempt in last.items():
        by_task.setdefault((run_id, task_id), []).append(attempt)

    # Upstream end -> start: the latest end, before this start, of the tasks it depends on
    # (in a mapped task group, the same map index of its own group).
    gaps, waits = [], []
    for (run_id, task_id, map_index), attempt in last.items():
        ends = []
        for up in record["upstreams"].get(task_id, []):
            same = last.get((run_id, up, map_index))
            if map_index >= 0 and same and _group(up) and _group(up) == _group(task_id):
                candidates = [same]
            else:
                candidates = by_task.get((run_id, up), [])
            before = [c["end"] for c in candidates if c["end"] <= attempt["start"] + 1e-3]
            if not before:
                ends = []
                break
            ends.append(max(before))
        if ends:
            gaps.append(attempt["start"] - max(ends))
            if attempt["queued"]:
                waits.append(attempt["queued"] - max(ends))

    per_run = []
    for run in runs:
        mine = [t for t in executed if t["run_id"] == run["run_id"]]
        per_run.append(
            {
                "night": run["night"],
                "kind": run["kind"],
                "state": run["state"],
                "duration_s": round(run["end"] - run["start"], 1)
                if run["start"] and run["end"]
                else None,
                "waited_s": round(run["start"] - run["queued_at"], 1)
                if run["start"] and run["queued_at"]
                else None,
                "task_instances": sum(t["run_id"] == run["run_id"] for t in tis),
                "attempts": len(mine),
                "retries": len(mine) - len({(t["task_id"], t["map_index"]) for t in mine}),
                "task_seconds": round(sum(t["end"] - t["start"] for t in mine), 2),
            }
        )
    hopeless = [(r["start"], r["end"]) for r in runs if r["kind"] in HOPELESS and r["end"]]
    held, _ = seconds_at_least(hopeless, MAX_ACTIVE_RUNS)
    pools = {}
    for name, slots in record["pool_slots"].items():
        samples = [s for s in record["pool_samples"] if s["pool"] == name]
        intervals = [(t["queued"] or t["start"], t["end"]) for t in executed if t["pool"] == name]
        full_s, peak = seconds_at_least(intervals, slots)
        pools[name] = {
            "slots": slots,
            "samples": len(samples),
            "full_samples": sum(s["open"] == 0 for s in samples),
            "max_occupied_sampled": max((s["occupied"] for s in samples), default=0),
            "task_instances": sum(1 for t in executed if t["pool"] == name),
            "full_s_from_tries": round(full_s, 1),
            "max_occupied_from_tries": peak,
        }
    ends = [r["end"] for r in runs if r["end"]]
    complete = [t for t in executed if t["kind"] == "complete" and t["state"] == "success"]
    task_names: dict[str, list[dict]] = {}
    for attempt in executed:
        task_names.setdefault(attempt["task_id"], []).append(attempt)
    return {
        "wall_s": round(max(ends) - record["created"], 1) if ends else None,
        "polled_wall_s": record["polled_wall_s"],
        "runs": per_run,
        "run_states": dict(Counter(r["state"] for r in runs)),
        "task_instances": len(tis),
        "removed_task_instances": removed,
        "task_instance_states": dict(Counter(t["state"] for t in tis)),
        "attempts": len(executed),
        "retries": len(executed) - len(last),
        "task_s": stats(t["end"] - t["start"] for t in executed),
        "task_s_complete_nights": stats(t["end"] - t["start"] for t in complete),
        "queued_to_start_s": stats(t["start"] - t["queued"] for t in executed if t["queued"]),
        "upstream_end_to_start_s": stats(gaps),
        "upstream_end_to_queued_s": stats(waits),
        "hopeless_runs_held_all_slots_s": round(held, 1),
        "pools": pools,
        "by_task": {  # informational: whatever the DAG's tasks are called
            name: {
                "attempts": len(items),
                "median_s": round(statistics.median(t["end"] - t["start"] for t in items), 3),
                "median_queued_to_start_s": round(
                    statistics.median([t["start"] - t["queued"] for t in items if t["queued"]])
                    if any(t["queued"] for t in items)
                    else 0.0,
                    3,
                ),
            }
            for name, items in sorted(task_names.items())
        },
        "machine": record["machine"],
    }


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """The headline figures (the row of BENCHMARKS.md)."""
    first = results["passes"]["first"]["analysis"]
    rerun = results["passes"].get("rerun", {}).get("analysis")
    cores = results["machine"]["cores"]
    cli = results["cli"]
    summary: dict[str, Any] = {
        "first_pass_s": first["wall_s"],
        "rerun_s": rerun["wall_s"] if rerun else None,
        "rerun_fraction": round(rerun["wall_s"] / first["wall_s"], 3)
        if rerun and first["wall_s"]
        else None,
        "task_instances": [first["task_instances"], rerun["task_instances"] if rerun else None],
        "removed_task_instances": [
            first.get("removed_task_instances", 0),
            rerun.get("removed_task_instances", 0) if rerun else None,
        ],
        "retries": [first["retries"], rerun["retries"] if rerun else None],
        "efficiency": round(cli["cpu_s"] / (first["wall_s"] * cores), 4)
        if first["wall_s"]
        else None,
        "machine_busy": first["machine"]["busy"],
        "machine_others": first["machine"]["others"],
        "cli_wall_s": cli["wall_s"],
        "cli_cpu_s": cli["cpu_s"],
        "rerun_recomputed_nights": results.get("rerun_recomputed_nights"),
    }
    summary["targets_met"] = {
        "first_pass_s": summary["first_pass_s"] is not None
        and summary["first_pass_s"] <= TARGETS["first_pass_s"],
        "efficiency": (summary["efficiency"] or 0) >= TARGETS["efficiency"],
        "rerun_fraction": summary["rerun_fraction"] is not None
        and summary["rerun_fraction"] <= TARGETS["rerun_fraction"],
    }
    return summary


def _span(values: Sequence[float | None], digits: int = 0) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "–"
    low, high = min(present), max(present)
    if f"{low:.{digits}f}" == f"{high:.{digits}f}":
        return f"{low:.{digits}f}"
    return f"{low:.{digits}f}–{high:.{digits}f}"


def markdown_row(results: dict[str, Any], name: str) -> str:
    """The table row of one results file."""
    s = summarise(results)
    first = results["passes"]["first"]["analysis"]
    runs = first["runs"]
    complete = [r["duration_s"] for r in runs if r["kind"] == "complete"]
    hopeless = [r["duration_s"] for r in runs if r["kind"] in HOPELESS]
    task_s = first["task_s_complete_nights"] or {}
    queued = first["queued_to_start_s"] or {}
    gap = first["upstream_end_to_start_s"] or {}
    pool = first["pools"].get("astrometry")
    pool_cell = (
        f"{pool['full_samples']} of {pool['samples']} 1-s samples "
        f"({pool['full_s_from_tries']:.0f} s from the tries)"
        if pool
        else "no such pool"
    )
    rerun = s["rerun_s"]
    rerun_cell = f"{rerun:.0f} ({s['rerun_fraction']:.0%})" if rerun else "–"
    tis = " / ".join(
        "–" if n is None else f"{n} (+{r} removed)" if r else str(n)
        for n, r in zip(s["task_instances"], s["removed_task_instances"], strict=True)
    )
    retries = " / ".join("–" if n is None else str(n) for n in s["retries"])
    commit = results["code"]["commit"] + ("+dirty" if results["code"].get("dirty") else "")
    label = f"{name} (`{commit}`, {results['machine']['date'][:10]})"
    cells = [
        label,
        f"{s['first_pass_s']:.0f}",
        rerun_cell,
        tis,
        retries,
        f"{s['efficiency']:.1%}" if s["efficiency"] is not None else "–",
        f"{s['machine_busy']:.0%} ({s['machine_others']:.0%})",
        _span(complete),
        f"{_span([task_s.get('min'), task_s.get('max')], 1)} (median {task_s.get('median', 0):.2f})"
        if task_s
        else "–",
        f"{queued['median']:.2f} (p90 {queued['p90']:.2f})" if queued else "–",
        f"{gap['median']:.2f} (p90 {gap['p90']:.2f})" if gap else "–",
        f"{len(hopeless)} runs of {_span(hopeless)} s; all {MAX_ACTIVE_RUNS} run slots theirs "
        f"{first['hopeless_runs_held_all_slots_s']:.0f} s",
        pool_cell,
        f"{s['cli_wall_s']:.1f} s ({s['cli_cpu_s']:.1f} CPU s)",
    ]
    return "| " + " | ".join(cells) + " |"


def write_benchmarks(row: str, name: str, path: Path) -> None:
    """Replace the row called `name` in the table between BEGIN and END (or add it there)."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path}: no {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    body, tail = rest.split(END, 1)
    lines = body.strip("\n").splitlines()
    names = [line.strip("| ").split(" |", 1)[0].strip() for line in lines]
    mine = [i for i, n in enumerate(names) if n == name or n.startswith(f"{name} ")]
    if mine:
        lines[mine[0]] = row
    else:  # a new row goes before the placeholder "after", if there is one
        after = [i for i, n in enumerate(names) if n == "after" or n.startswith("after ")]
        lines.insert(after[0] if after else len(lines), row)
    path.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail)


def print_table(results: dict[str, Any]) -> None:
    s = summarise(results)
    print()
    print(
        f"{'pass':<8}{'wall s':>8}{'runs':>24}{'TIs':>6}{'tries':>7}{'retries':>9}"
        f"{'TI s med':>10}{'q→start':>9}{'up→start':>10}{'busy':>7}{'others':>8}"
    )
    for label, entry in results["passes"].items():
        a = entry["analysis"]
        states = ", ".join(f"{n} {k}" for k, n in sorted(a["run_states"].items()))
        print(
            f"{label:<8}{a['wall_s']:>8.0f}{states:>24}{a['task_instances']:>6}{a['attempts']:>7}"
            f"{a['retries']:>9}{(a['task_s'] or {}).get('median', 0):>10.2f}"
            f"{(a['queued_to_start_s'] or {}).get('median', 0):>9.2f}"
            f"{(a['upstream_end_to_start_s'] or {}).get('median', 0):>10.2f}"
            f"{a['machine']['busy']:>7.0%}{a['machine']['others']:>8.0%}"
        )
    print()
    first = results["passes"]["first"]["analysis"]
    for run in first["runs"]:
        print(
            f"  {run['night']} {run['kind']:<13}{run['state']:<8}{run['duration_s'] or 0:7.1f} s "
            f"{run['task_instances']:3d} TIs {run['attempts']:3d} tries "
            f"{run['retries']:2d} retries {run['task_seconds']:6.1f} task s"
        )
    print()
    print(
        f"CLI on the {results['cli']['nights']} complete nights: {s['cli_wall_s']} s wall, "
        f"{s['cli_cpu_s']} CPU s; efficiency {s['efficiency']:.1%} "
        f"(target ≥ {TARGETS['efficiency']:.0%})"
    )
    print(
        f"first pass {s['first_pass_s']} s (target ≤ {TARGETS['first_pass_s']} s); rerun "
        f"{s['rerun_s']} s = {s['rerun_fraction']} of it (target ≤ {TARGETS['rerun_fraction']})"
    )
    print(f"rerun recomputed something in: {s['rerun_recomputed_nights'] or 'no night'}")


# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = args.work.resolve()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    plan = night_plan(args.first_night)
    raw, products = work / "raw", work / "products"
    build_archive(raw, work / "truth", plan, args.size)
    tree, code = source_tree(args.source, work)
    env = code_env(tree)
    results: dict[str, Any] = {
        "machine": machine_facts(),
        "code": code,
        "plan": plan,
        "size": args.size,
        "conf": CONF,
        "max_active_runs": MAX_ACTIVE_RUNS,
    }
    load0 = os.getloadavg()
    busy0 = _cpu_jiffies()
    time.sleep(5)
    busy1 = _cpu_jiffies()
    results["machine"]["before"] = {
        "loadavg": list(load0),
        "busy_5s": round((busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1), 3),
    }
    complete = [n for n, kind in plan.items() if kind == "complete"]
    results["cli"] = measure_cli(raw, work, complete, env)

    shutil.rmtree(products, ignore_errors=True)
    products.mkdir(parents=True)
    roots = {"raw_root": str(raw), "products_root": str(products)}
    cluster = Cluster(tree, work / "cluster", logs, roots)
    with cluster_up(cluster) as startup_s:
        results["cluster"] = {"startup_s": round(startup_s, 1), **cluster.settings()}
        cluster.login()
        cluster.wait_for_dag(timeout=180)
        cluster.request("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
        details = cluster.request("GET", f"/api/v2/dags/{DAG_ID}/details")
        results["dag"] = {k: details.get(k) for k in ("max_active_runs", "max_active_tasks")}
        results["cluster"]["scheduled_runs_before"] = settle_scheduled_runs(cluster)
        sampler = ProcSampler(f"AR_CLUSTER_MEMBER={cluster.home}", cluster.home / "run")
        sampler.start()
        results["passes"] = {}
        previous: dict[tuple[str, str, int], int] = {}
        for label in ("first", "rerun"):
            record = run_pass(cluster, label, plan, roots, sampler, previous, args.timeout)
            for t in record["tries"]:
                key = (t["run_id"], t["task_id"], t["map_index"])
                previous[key] = max(previous.get(key, 0), t["try_number"])
            for t in record["task_instances"]:
                key = (t["run_id"], t["task_id"], t["map_index"])
                previous[key] = max(previous.get(key, 0), t["try_number"])
            manifests = read_manifests(products, plan)
            results["passes"][label] = {
                "analysis": analyse_pass(record),
                "manifests": manifests,
                "records": record,
            }
            analysis = results["passes"][label]["analysis"]
            print(f"{label}: {analysis['wall_s']} s, runs {analysis['run_states']}", flush=True)
        sampler.stop_event.set()
    first = results["passes"]["first"]["manifests"]
    results["rerun_recomputed_nights"] = sorted(
        night
        for night, m in results["passes"]["rerun"]["manifests"].items()
        if m["status"] == "success"
        and m["files_stamp"] != first.get(night, {}).get("files_stamp")
        and m["recomputed"] != 0
    )
    end_code = git("rev-parse", "--short", "HEAD")
    results["code"]["head_at_end"] = end_code
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "work" / "cluster_backfill")
    parser.add_argument(
        "--results", type=Path, default=REPO / "bench" / "results" / "cluster_backfill.json"
    )
    parser.add_argument("--size", type=int, default=1024, help="frame size (default 1024)")
    parser.add_argument("--first-night", default=FIRST_NIGHT)
    parser.add_argument(
        "--source",
        default="HEAD",
        help="the code the cluster and the command run: a commit (snapshot) or `worktree`",
    )
    parser.add_argument("--timeout", type=float, default=2400, help="seconds per pass")
    parser.add_argument(
        "--write-benchmarks",
        nargs="?",
        const="after",
        metavar="NAME",
        help="also write row NAME (default `after`) of the table in BENCHMARKS.md",
    )
    parser.add_argument("--benchmarks", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument(
        "--from-json", type=Path, help="print (and write) the row of a results file, run nothing"
    )
    args = parser.parse_args(argv)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        started = time.perf_counter()
        results = run(args)
        results["bench_s"] = round(time.perf_counter() - started, 1)
        results["summary"] = summarise(results)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1) + "\n")
        stamped = args.results.with_name(
            f"{args.results.stem}-{results['code']['commit']}-"
            f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M}.json"
        )
        shutil.copyfile(args.results, stamped)
        print(f"results: {args.results} (and {stamped.name}); bench {results['bench_s']} s")
    print_table(results)
    row = markdown_row(results, args.write_benchmarks or "after")
    print("\nBENCHMARKS.md row:\n" + row)
    if args.write_benchmarks:
        write_benchmarks(row, args.write_benchmarks, args.benchmarks)
        print(f"written to {args.benchmarks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
