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

`--nights 30`: a 30-date archive instead (bench/work/cluster_backfill_30): 17 complete nights,
3 with science frames only, 2 without flats, 4 with damaged files (a truncated FITS, a file of
zeros, a frame without OBJECT or EXPTIME: `DAMAGES`), 2 dates without a folder and 2 with an
empty one; each night is checked against what its kind should give (`night_outcomes`), and the
archive's and the products' bytes are counted. `--roots s3`: the cluster also runs its S3
server (AR_CLUSTER_S3=1, moto on 127.0.0.1), the raw archive is uploaded to
s3://t120-bench/raw (an empty folder as its 0-byte key), the backfill's conf names s3:// roots,
and each pass's S3 requests and bytes are read from the server's request log; the pipeline's
own counters (`manifest["storage"]["total"]`) are summed when the manifests have them.

Efficiency = the command's CPU seconds ÷ (first pass wall × cores). Results: bench/results/
cluster_backfill.json (cluster_backfill_30_local.json, cluster_backfill_30_s3.json, ...) and a
table on stdout; `--write-benchmarks [NAME]` also writes the row NAME
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
import re
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

from bench.harness import Command, CommandFailed, machine_facts, proc_stats, run_sequence

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
# `--nights 30`: an archive month as it comes (17 complete nights, 3 with science frames only
# and 2 without flats that borrow masters, 4 with damaged files, 2 dates without a folder and 2
# with an empty one). The 12-night plan above stays the default.
KINDS_30 = (
    "complete",
    "complete",
    "science_only",
    "complete",
    "damaged",
    "complete",
    "empty",
    "complete",
    "no_flats",
    "complete",
    "complete",
    "damaged",
    "complete",
    "empty_folder",
    "science_only",
    "complete",
    "complete",
    "no_flats",
    "complete",
    "damaged",
    "complete",
    "empty",
    "complete",
    "science_only",
    "complete",
    "complete",
    "empty_folder",
    "complete",
    "damaged",
    "complete",
)
PLANS = {12: KINDS, 30: KINDS_30}
# The damaged nights, in date order: which files are spoiled and how (folder, index of the file
# in the folder's sorted listing, damage). Science frames come 5 to a group, so indices 0, 6 and
# 12 are in three different groups: every group keeps at least 4 frames.
DAMAGES = (
    (("ORIGINAL", 0, "truncated"), ("ORIGINAL", 6, "zeros")),
    (("ORIGINAL", 0, "no_object"), ("DARK", 0, "truncated")),
    (("FLAT", 0, "zeros"), ("DARK", 0, "no_exptime")),
    (("ORIGINAL", 0, "truncated"), ("ORIGINAL", 6, "zeros"), ("ORIGINAL", 12, "no_object")),
)
DAMAGE_VERSION = 1  # in the archive's stamp: a change of DAMAGES or of damage() rebuilds it
EMPTY = ("empty", "empty_folder")
REMOVED_FOLDERS = {"science_only": ("DARK", "FLAT"), "no_flats": ("FLAT",)}
HOPELESS = ("science_only", "no_flats")  # nights without their own masters: they failed until
# 2026-12-03, and borrow their neighbours' masters since (its figures before that are failures)
RAW_FOLDERS = ("DARK", "FLAT", "ORIGINAL")
MAX_ACTIVE_RUNS = 2
TICKS = os.sysconf("SC_CLK_TCK")
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
S3_BUCKET = "t120-bench"
ARCHIVE_BEGIN = "<!-- archive-backfill:begin (rows written by python -m bench.cluster_backfill) -->"
ARCHIVE_END = "<!-- archive-backfill:end -->"
ARCHIVE_HEADER = (
    "| roots | first pass s | rerun s (÷ first pass) | task instances: first pass / rerun | "
    "retries | efficiency | machine busy (others' share) | cluster CPU s: first pass / rerun | "
    "nights as expected | raw / products GB | S3 requests: first pass / rerun | "
    "S3 GB down / up: first pass; rerun | pipeline's storage counters | CLI, complete nights |"
)


# ---------------------------------------------------------------------------------------------
# The archive and the code


def night_plan(first: str = FIRST_NIGHT, nights: int = 12) -> dict[str, str]:
    """Night name -> kind, for the 12 (or 30: `PLANS`) consecutive dates from `first`."""
    start = dt.date.fromisoformat(first)
    kinds = PLANS[nights]
    return {(start + dt.timedelta(days=i)).isoformat(): kind for i, kind in enumerate(kinds)}


def damage_plan(plan: dict[str, str]) -> dict[str, tuple[tuple[str, int, str], ...]]:
    """Night -> the damages of `DAMAGES` its files get (the damaged nights, in date order)."""
    damaged = [night for night, kind in plan.items() if kind == "damaged"]
    return {night: DAMAGES[i % len(DAMAGES)] for i, night in enumerate(damaged)}


def _drop_card(data: bytes, keyword: str) -> bytes:
    """The FITS bytes with the header card `keyword` turned into a COMMENT (same length)."""
    key = f"{keyword:<8}=".encode()
    end = data.index(b"END" + b" " * 77)
    for start in range(0, end, 80):
        if data[start : start + 9] == key:
            card = f"COMMENT   {keyword} removed by bench.cluster_backfill".ljust(80).encode()
            return data[:start] + card + data[start + 80 :]
    raise ValueError(f"no {keyword} card")


def damage(path: Path, how: str) -> None:
    """Spoil a raw frame in place as archives spoil them: `truncated` (a transfer cut at half the
    file), `zeros` (a file of zero bytes of its size: a disk block map lost), `no_object` or
    `no_exptime` (a frame whose OBJECT or EXPTIME keyword is missing)."""
    data = path.read_bytes()
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "zeros":
        data = bytes(len(data))
    elif how in ("no_object", "no_exptime"):
        data = _drop_card(data, how.removeprefix("no_").upper())
    else:
        raise ValueError(f"unknown damage {how!r}")
    path.write_bytes(data)


def damaged_files(raw: Path, plan: dict[str, str]) -> dict[str, dict[str, str]]:
    """Night -> {path in the night: damage} of the archive in `raw` (the files `damage_plan`
    names; the listing of the written archive decides which file is which)."""
    found: dict[str, dict[str, str]] = {}
    for night, damages in damage_plan(plan).items():
        mine = found.setdefault(night, {})
        for folder, index, how in damages:
            names = sorted(p.name for p in (raw / night / folder).iterdir())
            mine[f"{folder}/{names[index]}"] = how
    return found


def build_archive(raw: Path, truth: Path, plan: dict[str, str], size: int) -> None:
    """The synthetic archive of `plan` in `raw` (reused while plan and size are the same)."""
    from ar_tasks.synthetic import NightSpec, write_night

    stamp = raw / ".bench-archive.json"
    wanted: dict[str, Any] = {"plan": plan, "size": size}
    if any(kind not in KINDS for kind in plan.values()):  # the 12-night stamp as it was
        wanted["damage_version"] = DAMAGE_VERSION
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return
    shutil.rmtree(raw, ignore_errors=True)
    shutil.rmtree(truth, ignore_errors=True)
    raw.mkdir(parents=True)
    t0 = time.perf_counter()
    for night, kind in plan.items():
        if kind == "empty":
            continue
        if kind == "empty_folder":
            (raw / night).mkdir()
            continue
        write_night(raw, NightSpec(night=night, size=size), truth_root=truth)
        for folder in REMOVED_FOLDERS.get(kind, ()):
            shutil.rmtree(raw / night / folder)
    for night, files in damaged_files(raw, plan).items():
        for relative, how in files.items():
            damage(raw / night / relative, how)
    stamp.write_text(json.dumps(wanted))
    print(f"archive: {len(plan)} dates in {raw} ({time.perf_counter() - t0:.0f} s)", flush=True)


def tree_bytes(root: Path, skip: Iterable[str] = ()) -> dict[str, int]:
    """Files and bytes under a local root (names in `skip` at its top left out)."""
    files = size = 0
    for top in root.iterdir() if root.is_dir() else ():
        if top.name in skip or top.name.startswith("."):
            continue
        for path in [top] if top.is_file() else top.rglob("*"):
            if path.is_file():
                files += 1
                size += path.stat().st_size
    return {"files": files, "bytes": size}


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
    killed = []
    for night in nights:
        for attempt in (1, 2):
            folder = work / "cli" / night
            shutil.rmtree(folder, ignore_errors=True)
            for sub in RAW_FOLDERS:
                if (raw / night / sub).is_dir():
                    shutil.copytree(raw / night / sub, folder / sub)
            commands = [
                Command([command, "--setup"], folder, env, "astro_reduce --setup"),
                Command([command, "--interpolate"], folder, env, "astro_reduce --interpolate"),
            ]
            try:
                sample = run_sequence(commands, log=work / "logs" / "cli.log")
                break
            except CommandFailed as err:
                # Killed by a signal from outside (on a shared machine, someone's cleanup):
                # the night once more; its CPU until the kill stays in the children's total.
                if attempt == 2 or "exited -" not in str(err):
                    raise
                killed.append(night)
                print(f"CLI: {night}: {err}; once more", flush=True)
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
        "killed_and_rerun": killed,
    }
    if killed:  # the CPU of the killed attempts is not the command's
        result["cpu_s"] = round(sum(n["cpu_s"] for n in per_night.values()), 2)
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
        self.parts: Counter = Counter()  # the cluster's ticks by part (scheduler, worker, ...)
        self.part: dict[str, str] = {}  # pid -> its part
        ticks = os.sysconf("SC_CLK_TCK")
        self.started_ticks = int(float(Path("/proc/uptime").read_text().split()[0]) * ticks)
        self.me = str(os.getpid())
        self.sample()

    def sessions(self) -> dict[str, str]:
        """session id -> the cluster's part running in it (worker, scheduler, ...)."""
        found = {}
        for pid_file in self.run_dir.glob("*.pid") if self.run_dir else ():
            with contextlib.suppress(OSError, IndexError):
                found[pid_file.read_text().split()[0]] = pid_file.stem
        return found

    def classify(
        self, pid: str, session: str, parent_kind: str | None, sessions: dict[str, str]
    ) -> str:
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
        add_part: Counter = Counter()
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
            if kind == "cluster":  # its part: its session's, its parent's, else PostgreSQL's
                part = sessions.get(session) or self.part.get(parent) or "postgres"
                self.part[key[0]] = part
                add_part[part] += own - own0 + children - already
            seen[key] = (own, reaped, kind, parent)
        with self.lock:
            for kind, value in add.items():
                self.totals[kind] += value
            for part, value in add_part.items():
                self.parts[part] += value
            self.last = seen

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.sample()

    def snapshot(self) -> dict[str, int]:
        busy, total = _cpu_jiffies()
        with self.lock:
            parts = {f"part:{k}": v for k, v in self.parts.items()}
            return {"busy": busy, "total": total, **self.totals, **parts}


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

    def __init__(
        self,
        tree: Path,
        home: Path,
        logs: Path,
        roots: dict[str, str],
        extra_env: dict[str, str] | None = None,
    ) -> None:
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
        } | (extra_env or {})
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
        "window": [created, max((r["end"] or 0) for r in run_records) or time.time()],
        "machine": machine_window(snap0, snap1)
        | {
            "loadavg_start": list(load0),
            "loadavg_end": list(load1),
            # CPU seconds over the pass (all cores): the cluster's (workers' task processes
            # included), and the others'
            "cluster_cpu_s": round((snap1["cluster"] - snap0["cluster"]) / TICKS, 1),
            "others_cpu_s": round((snap1["others"] - snap0["others"]) / TICKS, 1),
            "wall_s": round((snap1["total"] - snap0["total"]) / TICKS / (os.cpu_count() or 1), 1),
            "cluster_cpu_s_by_part": {
                k.removeprefix("part:"): round((v - snap0.get(k, 0)) / TICKS, 1)
                for k, v in snap1.items()
                if k.startswith("part:")
            },
        },
    }


def _quarantined(entry: Any) -> tuple[str, str]:
    """(path, reason) of a manifest's quarantined entry ({"path", "reason"}, or a pair)."""
    if isinstance(entry, dict):
        return str(entry.get("path")), str(entry.get("reason"))
    return str(entry[0]), str(entry[1]) if len(entry) > 1 else ""


def manifest_figures(manifest: dict, written: list) -> dict[str, Any]:
    """What the bench keeps of a night's manifest: status, what it says was recomputed, its
    problems, quarantined files, borrowed masters, groups, the storage counters (when the
    pipeline writes them), and a stamp of every file of the night (path, size, mtime or ETag: a
    rerun of a current night leaves the manifest as it was, so only the files tell that nothing
    was written)."""
    recomputed = manifest.get("recomputed")
    groups = manifest.get("groups") or {}
    borrowed = (manifest.get("calibrations") or {}).get("borrowed") or {}
    storage = manifest.get("storage")
    return {
        "status": manifest.get("status"),
        "recomputed": None if recomputed is None else len(recomputed),
        "problems": len(manifest.get("problems") or []),
        "problem_texts": [str(p)[:300] for p in (manifest.get("problems") or [])[:10]],
        "quarantined": dict(_quarantined(q) for q in manifest.get("quarantined") or []),
        "borrowed": {name: (qc or {}).get("night") for name, qc in borrowed.items()},
        "groups": len(groups),
        "groups_failed": sorted(
            n for n, g in groups.items() if (g or {}).get("status") == "failed"
        ),
        "storage_total": storage.get("total") if isinstance(storage, dict) else None,
        "files": len(written),
        "bytes": sum(size for _, size, _ in written),
        "files_stamp": hashlib.sha256(json.dumps(sorted(written)).encode()).hexdigest()[:16],
    }


def read_manifests(
    products: Path, plan: dict[str, str], store: S3Store | None = None
) -> dict[str, dict]:
    """`manifest_figures` per night that has a manifest, from a local products root or, with
    `store`, from its bucket's products/ prefix."""
    found = {}
    if store is not None:
        objects = store.objects("products/")
        for night in plan:
            prefix = f"products/{night}/"
            mine = [(k[len(prefix) :], *v) for k, v in objects.items() if k.startswith(prefix)]
            if any(name == "manifest.json" for name, _, _ in mine):
                manifest = json.loads(store.read(prefix + "manifest.json"))
                found[night] = manifest_figures(manifest, mine)
        return found
    for night in plan:
        path = products / night / "manifest.json"
        if path.is_file():
            manifest = json.loads(path.read_text())
            written = [
                (p.relative_to(path.parent).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                for p in path.parent.rglob("*")
                if p.is_file()
            ]
            found[night] = manifest_figures(manifest, written)
    return found


def night_outcomes(
    plan: dict[str, str],
    runs: list[dict],
    manifests: dict[str, dict],
    damaged: dict[str, dict[str, str]],
) -> dict[str, dict[str, Any]]:
    """Whether each night ended as its kind should: a complete night reduced with its own
    masters; a night without calibrations or flats reduced with borrowed ones; a damaged night
    reduced with exactly its damaged files quarantined and every group reduced; an empty date
    (no folder, an empty folder) a successful run with no manifest. `expected` False names why."""
    states = {r["night"]: r["state"] for r in runs}
    outcomes = {}
    for night, kind in plan.items():
        m = manifests.get(night)
        why = []
        if states.get(night) != "success":
            why.append(f"run {states.get(night)}")
        if kind in EMPTY:
            if m is not None:
                why.append(f"a manifest ({m['status']})")
        elif m is None:
            why.append("no manifest")
        else:
            if m["status"] != "success":
                why.append(f"manifest {m['status']}: {'; '.join(m['problem_texts'][:3])}")
            if m["groups_failed"]:
                why.append(f"groups failed: {', '.join(m['groups_failed'])}")
            want_quarantined = set(damaged.get(night, {}))
            if set(m["quarantined"]) != want_quarantined:
                why.append(
                    f"quarantined {sorted(m['quarantined'])}, expected {sorted(want_quarantined)}"
                )
            if kind in HOPELESS and not m["borrowed"]:
                why.append("borrowed no master")
            if kind not in HOPELESS and m["borrowed"]:
                why.append(f"borrowed {sorted(m['borrowed'])}")
        outcomes[night] = {
            "kind": kind,
            "run_state": states.get(night),
            "manifest_status": m["status"] if m else None,
            "quarantined": m["quarantined"] if m else {},
            "borrowed": m["borrowed"] if m else {},
            "groups": m["groups"] if m else 0,
            "expected": not why,
            "why": why,
        }
    return outcomes


def storage_totals(
    manifests: dict[str, dict], before: dict[str, dict] | None = None
) -> dict[str, Any] | None:
    """The pipeline's own S3 counters (`manifest["storage"]["total"]`), summed over the nights
    whose manifest this pass wrote (its files' stamp changed since `before`); None when no
    manifest has them (the field is newer than this bench)."""
    written = [
        m
        for night, m in manifests.items()
        if before is None or (before.get(night) or {}).get("files_stamp") != m["files_stamp"]
    ]
    if not any(m.get("storage_total") for m in manifests.values()):
        return None
    total: dict[str, Any] = {"nights": 0, "requests": 0, "bytes_down": 0, "bytes_up": 0}
    by_operation: Counter = Counter()
    for m in written:
        counters = m.get("storage_total") or {}
        if not counters:
            continue
        total["nights"] += 1
        for key in ("requests", "bytes_down", "bytes_up"):
            total[key] += int(counters.get(key) or 0)
        for op, value in (counters.get("by_operation") or {}).items():
            if isinstance(value, dict):  # {op: {"requests": n, ...}} rather than {op: n}
                value = next((value[k] for k in ("requests", "n", "count") if k in value), 0)
            by_operation[op] += int(value or 0)
    total["by_operation"] = dict(by_operation)
    return total


# ---------------------------------------------------------------------------------------------
# S3 roots: moto's server of the cluster (AR_CLUSTER_S3=1)


S3_CHUNK = 8 * 2**20  # boto3's transfer chunk: a larger object moves in ranged GETs / parts


class S3Store:
    """The cluster's local S3 server, seen from the bench: the raw archive uploaded to
    s3://<bucket>/raw, listings, and the server's request log read back per pass."""

    def __init__(self, endpoint: str, bucket: str) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint,
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                config=Config(max_pool_connections=16),
            )
        return self._client

    def upload_archive(self, raw: Path, plan: dict[str, str]) -> dict[str, Any]:
        """Every raw file to raw/<night>/...; an empty folder as the 0-byte key raw/<night>/
        (what the S3 console's "create folder" makes)."""
        from concurrent.futures import ThreadPoolExecutor

        files = [p for night in plan if (raw / night).is_dir() for p in (raw / night).rglob("*")]
        files = [p for p in files if p.is_file()]
        t0 = time.monotonic()

        def put(path: Path) -> int:
            self.client.upload_file(str(path), self.bucket, f"raw/{path.relative_to(raw)}")
            return path.stat().st_size

        with ThreadPoolExecutor(max_workers=8) as pool:
            size = sum(pool.map(put, files))
        markers = [n for n, kind in plan.items() if kind == "empty_folder"]
        for night in markers:
            self.client.put_object(Bucket=self.bucket, Key=f"raw/{night}/", Body=b"")
        seconds = time.monotonic() - t0
        print(f"S3: {len(files)} raw files ({size / 1e9:.2f} GB) uploaded in {seconds:.0f} s")
        return {"files": len(files), "bytes": size, "folder_markers": len(markers), "s": seconds}

    def objects(self, prefix: str) -> dict[str, tuple[int, str]]:
        """key -> (size, "ETag@LastModified") under prefix."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return {
            o["Key"]: (o["Size"], f"{o['ETag'].strip(chr(34))}@{o['LastModified'].isoformat()}")
            for page in pages
            for o in page.get("Contents", [])
        }

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()


_LOG_LINE = re.compile(r'\[(\d\d/\w{3}/\d{4} \d\d:\d\d:\d\d)\] "(\w+) (\S+) HTTP/[\d.]+" (\d{3})')
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def parse_s3_log(text: str, bucket: str) -> list[tuple[float, str, str, str, int]]:
    """The requests in moto's (werkzeug's) log: (epoch second, method, key, query, status).
    The log stamps local time to the second."""
    found = []
    for line in _ANSI.sub("", text).splitlines():
        match = _LOG_LINE.search(line)
        if not match:
            continue
        stamp, method, target, status = match.groups()
        when = time.mktime(time.strptime(stamp, "%d/%b/%Y %H:%M:%S"))
        path, _, query = target.partition("?")
        path = urllib.parse.unquote(path).lstrip("/")
        key = path[len(bucket) + 1 :] if path.startswith(f"{bucket}/") else ""
        found.append((when, method, key, query, int(status)))
    return found


def s3_operation(method: str, key: str, query: str) -> str:
    """The S3 operation of a request line (path-style addressing)."""
    params = urllib.parse.parse_qs(query, keep_blank_values=True)
    if method == "GET":
        return "list" if not key or "list-type" in params or "prefix" in params else "get"
    if method == "PUT":
        return "put_part" if "uploadId" in params else "put" if key else "create_bucket"
    if method == "POST":
        if "uploads" in params:
            return "create_multipart"
        if "uploadId" in params:
            return "complete_multipart"
        return "delete_objects" if "delete" in params else "post"
    return method.lower()  # head, delete


def s3_traffic(
    requests: list[tuple[float, str, str, str, int]],
    window: tuple[float, float],
    sizes: dict[str, int],
) -> dict[str, Any]:
    """Requests of a pass (those stamped within the window's seconds) by operation and status,
    and the bytes they moved, estimated from the objects' sizes in the final listings: a GET
    moves its object (at most one transfer chunk per request: larger objects come in ranged
    GETs), a PUT its object, a part at most one chunk. Requests for keys no longer listed
    (deleted since) move bytes the bench cannot size: counted apart."""
    start, end = int(window[0]), int(window[1])
    ops: Counter = Counter()
    statuses: Counter = Counter()
    areas: Counter = Counter()
    down = up = unsized = raw_down = 0
    for when, method, key, query, status in requests:
        if not start <= when <= end:
            continue
        op = s3_operation(method, key, query)
        ops[op] += 1
        statuses[str(status)] += 1
        area = key.split("/", 1)[0] if "/" in key else "bucket"
        areas[f"{op} {area}"] += 1
        if op == "get" and area == "raw" and status < 300 and key in sizes:
            raw_down += min(sizes[key], S3_CHUNK)
        if op in ("get", "put", "put_part") and status < 300:
            if key not in sizes:
                unsized += 1
                continue
            size = min(sizes[key], S3_CHUNK) if op != "put" else sizes[key]
            if op == "get":
                down += size
            else:
                up += size
    return {
        "requests": sum(ops.values()),
        "by_operation": dict(ops),
        "by_status": dict(statuses),
        "bytes_down": down,
        "bytes_up": up,
        "unsized_transfers": unsized,
        # where: "get raw", "head products", ... and the raw archive's bytes fetched
        "by_area": dict(areas),
        "raw_bytes_down": raw_down,
    }


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
    passes = results["passes"]
    summary["cluster_cpu_s"] = [
        passes[p]["analysis"]["machine"].get("cluster_cpu_s") if p in passes else None
        for p in ("first", "rerun")
    ]
    outcomes = passes["first"].get("outcomes")
    if outcomes is not None:
        final = passes.get("rerun", passes["first"]).get("outcomes") or outcomes
        summary["nights_expected"] = [
            sum(o["expected"] for o in outcomes.values()),
            sum(o["expected"] for o in final.values()),
            len(outcomes),
        ]
        summary["unexpected"] = {
            label: {
                n: o["why"]
                for n, o in (passes[label].get("outcomes") or {}).items()
                if not o["expected"]
            }
            for label in passes
        }
    if "raw" in results:
        summary["raw_bytes"] = results["raw"]["bytes"]
        summary["products_bytes"] = [passes[p].get("products_bytes") for p in passes]
        summary["s3_traffic"] = {
            p: {k: v for k, v in passes[p]["s3_traffic"].items() if k != "by_status"}
            for p in passes
            if passes[p].get("s3_traffic")
        }
        summary["storage_counters"] = {p: passes[p].get("storage_counters") for p in passes}
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


def _gb(n: float | None) -> str:
    return "–" if n is None else f"{n / 1e9:.2f}"


def archive_row(results: dict[str, Any], name: str) -> str:
    """The row of the 30-night archive table (BENCHMARKS.md, "A 30-night archive")."""
    s = summarise(results)
    rerun = s["rerun_s"]
    tis = " / ".join("–" if n is None else str(n) for n in s["task_instances"])
    retries = " / ".join("–" if n is None else str(n) for n in s["retries"])
    cpu = " / ".join("–" if n is None else f"{n:.0f}" for n in s["cluster_cpu_s"])
    ok_first, ok_rerun, total = s.get("nights_expected") or (None, None, None)
    unexpected = s.get("unexpected", {}).get("first") or {}
    nights_cell = f"{ok_first}/{total} (rerun {ok_rerun}/{total})"
    if unexpected:
        nights_cell += "; not: " + ", ".join(
            f"{n} {results['plan'][n]}" for n in sorted(unexpected)
        )
    traffic = s.get("s3_traffic") or {}
    if traffic:
        requests = " / ".join(
            str(traffic.get(p, {}).get("requests", "–")) for p in ("first", "rerun")
        )
        moved = "; ".join(
            f"{_gb(traffic[p]['bytes_down'])} / {_gb(traffic[p]['bytes_up'])}"
            for p in ("first", "rerun")
            if p in traffic
        )
    else:
        requests = moved = "– (local roots)"
    counters = s.get("storage_counters") or {}
    if any(counters.values()):
        counters_cell = "; ".join(
            f"{p}: {c['requests']} requests, {_gb(c['bytes_down'])} / {_gb(c['bytes_up'])} GB "
            f"({c['nights']} manifests)"
            for p, c in counters.items()
            if c
        )
    else:
        counters_cell = "–"
    commit = results["code"]["commit"] + ("+dirty" if results["code"].get("dirty") else "")
    cells = [
        f"{name} (`{commit}`, {results['machine']['date'][:10]})",
        f"{s['first_pass_s']:.0f}",
        f"{rerun:.0f} ({s['rerun_fraction']:.0%})" if rerun else "–",
        tis,
        retries,
        f"{s['efficiency']:.1%}" if s["efficiency"] is not None else "–",
        f"{s['machine_busy']:.0%} ({s['machine_others']:.0%})",
        cpu,
        nights_cell,
        f"{_gb(s.get('raw_bytes'))} / {_gb((s.get('products_bytes') or [None])[0])}",
        requests,
        moved,
        counters_cell,
        f"{results['cli']['nights']}: {s['cli_wall_s']:.1f} s ({s['cli_cpu_s']:.1f} CPU s)",
    ]
    return "| " + " | ".join(cells) + " |"


def write_benchmarks(row: str, name: str, path: Path, begin: str = BEGIN, end: str = END) -> None:
    """Replace the row called `name` in the table between `begin` and `end` (or add it there)."""
    text = path.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{path}: no {begin} ... {end} section")
    head, rest = text.split(begin, 1)
    body, tail = rest.split(end, 1)
    lines = body.strip("\n").splitlines()
    names = [line.strip("| ").split(" |", 1)[0].strip() for line in lines]
    mine = [i for i, n in enumerate(names) if n == name or n.startswith(f"{name} ")]
    if mine:
        lines[mine[0]] = row
    else:  # a new row goes before the placeholder "after", if there is one
        after = [i for i, n in enumerate(names) if n == "after" or n.startswith("after ")]
        lines.insert(after[0] if after else len(lines), row)
    path.write_text(head + begin + "\n" + "\n".join(lines) + "\n" + end + tail)


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
    if "nights_expected" in s:
        ok, ok_rerun, total = s["nights_expected"]
        print(f"nights as expected: {ok}/{total} first pass, {ok_rerun}/{total} rerun")
        for label, nights in s["unexpected"].items():
            for night, why in nights.items():
                print(f"  {label}: {night} ({results['plan'][night]}): {'; '.join(why)}")
    if "raw_bytes" in s:
        print(
            f"raw {_gb(s['raw_bytes'])} GB; products "
            + ", ".join(_gb(b) for b in s["products_bytes"])
            + " GB after each pass; cluster CPU s per pass: "
            + ", ".join(str(c) for c in s["cluster_cpu_s"])
        )
        for label, t in s["s3_traffic"].items():
            print(
                f"S3 {label}: {t['requests']} requests {t['by_operation']}, "
                f"{_gb(t['bytes_down'])} GB down, {_gb(t['bytes_up'])} GB up "
                f"({t['unsized_transfers']} transfers of keys deleted since)"
            )
        for label, c in s["storage_counters"].items():
            print(f"pipeline's storage counters, {label}: {c if c else '– (not in the manifests)'}")


# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = args.work.resolve()
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    plan = night_plan(args.first_night, args.nights)
    raw, products = work / "raw", work / "products"
    build_archive(raw, work / "truth", plan, args.size)
    damaged = damaged_files(raw, plan)
    tree, code = source_tree(args.source, work)
    env = code_env(tree)
    results: dict[str, Any] = {
        "machine": machine_facts(),
        "code": code,
        "nights": args.nights,
        "roots": args.roots,
        "plan": plan,
        "damaged_files": damaged,
        "size": args.size,
        "conf": CONF,
        "max_active_runs": MAX_ACTIVE_RUNS,
        "raw": tree_bytes(raw),
        "raw_by_night": {n: tree_bytes(raw / n) for n in plan if (raw / n).is_dir()},
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
    store: S3Store | None = None
    extra_env: dict[str, str] = {}
    if args.roots == "s3":
        port = free_port()
        store = S3Store(f"http://127.0.0.1:{port}", S3_BUCKET)
        roots = {"raw_root": f"s3://{S3_BUCKET}/raw", "products_root": f"s3://{S3_BUCKET}/products"}
        extra_env = {
            "AR_CLUSTER_S3": "1",
            "AR_CLUSTER_S3_PORT": str(port),
            "AR_CLUSTER_S3_BUCKET": S3_BUCKET,
        }
    else:
        roots = {"raw_root": str(raw), "products_root": str(products)}
    cluster = Cluster(tree, work / "cluster", logs, roots, extra_env)
    with cluster_up(cluster) as startup_s:
        results["cluster"] = {"startup_s": round(startup_s, 1), **cluster.settings()}
        if store is not None:
            results["s3_upload"] = store.upload_archive(raw, plan)
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
        windows = {}
        before: dict[str, dict] | None = None
        for label in ("first", "rerun"):
            if store is not None:
                time.sleep(2)  # the bench's own S3 requests stay out of the pass's seconds
            record = run_pass(cluster, label, plan, roots, sampler, previous, args.timeout)
            windows[label] = record["window"]
            for t in record["tries"]:
                key = (t["run_id"], t["task_id"], t["map_index"])
                previous[key] = max(previous.get(key, 0), t["try_number"])
            for t in record["task_instances"]:
                key = (t["run_id"], t["task_id"], t["map_index"])
                previous[key] = max(previous.get(key, 0), t["try_number"])
            if store is not None:
                time.sleep(2)
            manifests = read_manifests(products, plan, store)
            outcomes = night_outcomes(plan, record["runs"], manifests, damaged)
            if store is not None:
                product_bytes = sum(size for size, _ in store.objects("products/").values())
            else:
                product_bytes = tree_bytes(products)["bytes"]
            results["passes"][label] = {
                "analysis": analyse_pass(record),
                "manifests": manifests,
                "outcomes": outcomes,
                "products_bytes": product_bytes,
                "storage_counters": storage_totals(manifests, before),
                "records": record,
            }
            before = manifests
            analysis = results["passes"][label]["analysis"]
            unexpected = {n: o["why"] for n, o in outcomes.items() if not o["expected"]}
            print(f"{label}: {analysis['wall_s']} s, runs {analysis['run_states']}", flush=True)
            for night, why in unexpected.items():
                print(f"  {night} ({plan[night]}) not as expected: {'; '.join(why)}", flush=True)
        sampler.stop_event.set()
        if store is not None:
            sizes = {key: size for key, (size, _) in store.objects("").items()}
            requests = parse_s3_log((cluster.home / "logs" / "s3.log").read_text(), S3_BUCKET)
            for label, window in windows.items():
                results["passes"][label]["s3_traffic"] = s3_traffic(requests, window, sizes)
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


def write_split(results: dict[str, Any], path: Path) -> None:
    """The results without each pass's raw records (every try, run and pool sample) in `path`,
    the records in `<stem>.records.json` beside it; `--from-json` and bench.scaling read the
    first alone."""
    records = {label: entry.pop("records", None) for label, entry in results["passes"].items()}
    path.write_text(json.dumps(results, indent=1) + "\n")
    path.with_name(f"{path.stem}.records.json").write_text(json.dumps(records) + "\n")
    for label, entry in results["passes"].items():
        entry["records"] = records[label]


def default_paths(nights: int, roots: str) -> tuple[Path, Path]:
    """(work folder, results file): the 12-night local bench's as they were; the others' apart
    (the 30-night archive is shared by its local and S3 runs)."""
    work = (
        REPO
        / "bench"
        / "work"
        / ("cluster_backfill" if nights == 12 else f"cluster_backfill_{nights}")
    )
    if nights == 12:
        name = "cluster_backfill.json" if roots == "local" else f"cluster_backfill_{roots}.json"
    else:
        name = f"cluster_backfill_{nights}_{roots}.json"
    return work, REPO / "bench" / "results" / name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--nights",
        type=int,
        choices=sorted(PLANS),
        default=12,
        help="the archive: 12 dates (default) or 30 (damaged files and empty folders too)",
    )
    parser.add_argument(
        "--roots",
        choices=("local", "s3"),
        default="local",
        help="raw archive and products on local disk (default) or in the cluster's S3 server",
    )
    parser.add_argument("--work", type=Path, help="default bench/work/cluster_backfill[_30]")
    parser.add_argument(
        "--results",
        type=Path,
        help="default bench/results/cluster_backfill.json (12 nights, local roots), "
        "cluster_backfill_s3.json, cluster_backfill_30_local.json, cluster_backfill_30_s3.json",
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
        const="",
        metavar="NAME",
        help="also write row NAME of the table in BENCHMARKS.md (12 nights: the cluster "
        "table, default `after`; 30 nights: the archive table, default the roots)",
    )
    parser.add_argument("--benchmarks", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument(
        "--from-json", type=Path, help="print (and write) the row of a results file, run nothing"
    )
    args = parser.parse_args(argv)
    work, results_path = default_paths(args.nights, args.roots)
    args.work = args.work or work
    args.results = args.results or results_path
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        started = time.perf_counter()
        results = run(args)
        results["bench_s"] = round(time.perf_counter() - started, 1)
        results["summary"] = summarise(results)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        if results["nights"] != 12:  # the tries apart: the results file stays small
            write_split(results, args.results)
        else:
            args.results.write_text(json.dumps(results, indent=1) + "\n")
        stamped = args.results.with_name(
            f"{args.results.stem}-{results['code']['commit']}-"
            f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M}.json"
        )
        shutil.copyfile(args.results, stamped)
        print(f"results: {args.results} (and {stamped.name}); bench {results['bench_s']} s")
    print_table(results)
    if results.get("nights", 12) == 12:
        name = args.write_benchmarks or "after"
        row = markdown_row(results, name)
        begin, end = BEGIN, END
    else:
        name = args.write_benchmarks or results.get("roots", "local")
        row = archive_row(results, name)
        begin, end = ARCHIVE_BEGIN, ARCHIVE_END
    print("\nBENCHMARKS.md row:\n" + row)
    if args.write_benchmarks is not None:
        write_benchmarks(row, name, args.benchmarks, begin, end)
        print(f"written to {args.benchmarks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
