"""Measure whole processes: wall time, CPU time and peak memory of a command and its children.

CPU time comes from wait4's rusage (the process plus every descendant it waited for). Peak
memory ("peak RSS" in the tables, `peak_rss_mb`) is the largest sum of the proportional set
sizes of the process tree seen by a 10 ms sampler of /proc (a page shared by n processes
counts once in all), or the kernel's maximum resident set of the largest single process when
the command was too short-lived to be sampled.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
SAMPLE_INTERVAL_S = 0.01


@dataclass(frozen=True)
class Command:
    """One process to measure: its argv, the folder it runs in and its extra environment."""

    argv: Sequence[str]
    cwd: Path
    env: Mapping[str, str] = field(default_factory=dict)
    label: str = ""


@dataclass(frozen=True)
class Sample:
    """One measured run."""

    wall_s: float
    cpu_s: float
    peak_rss_mb: float


class CommandFailed(RuntimeError):
    """A measured command exited with a non-zero status."""


def proc_stats() -> Iterator[tuple[str, list[bytes]]]:
    """(pid, fields of /proc/<pid>/stat after the command name) of every live process; field
    0 is the state (stat field 3), so stat field n is fields[n - 3]."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                yield entry.name, handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue


def _tree_memory_bytes(session: int) -> int:
    """The memory of a session's processes (the command's process tree): the sum of their
    proportional set sizes, where a page shared by n processes counts 1/n in each. A sum of
    resident sets counted the pages a forked worker shares with its parent once per process
    (the CLI's two workers: 212 MB "peak RSS" on the 61-frame night for ~150 MB of memory).
    A process whose smaps_rollup cannot be read counts its resident set."""
    total = 0
    for pid, fields in proc_stats():
        with contextlib.suppress(IndexError, ValueError):
            if int(fields[3]) == session:  # session is stat field 6, rss (pages) field 24
                total += _pss_bytes(pid) or int(fields[21]) * PAGE_BYTES
    return total


def _pss_bytes(pid: str) -> int:
    """A process's proportional set size, or 0 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as handle:
            for line in handle:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def machine_facts() -> dict[str, Any]:
    """The machine and the date, for BENCHMARKS.md."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
        platform.processor(),
    )
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    memory_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 2**20, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def run_measured(command: Command, log: Path | None = None, settle: bool = True) -> Sample:
    """Run a command to completion in its own session and measure it; raise on failure.

    With `settle`, the page cache's dirty data (earlier runs' products, the fresh copy of the
    night) is first written to disk, so no run pays for another's writeback.
    """
    if settle:
        os.sync()
    env = {**os.environ, **command.env}
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    start = time.perf_counter()
    process = subprocess.Popen(
        list(command.argv),
        cwd=command.cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_memory_bytes(process.pid))
            done.wait(SAMPLE_INTERVAL_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    finally:
        done.set()
        sampler.join()
        if log:
            out.close()
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        where = f" (log: {log})" if log else ""
        raise CommandFailed(
            f"{command.label or command.argv[0]} exited {process.returncode}{where}"
        )
    peak = peak or usage.ru_maxrss * 1024  # a command too short to be sampled: its RSS
    return Sample(wall, usage.ru_utime + usage.ru_stime, peak / 2**20)


def run_sequence(commands: Sequence[Command], log: Path | None = None) -> Sample:
    """Several commands run one after the other, measured as one job (e.g. setup then reduce)."""
    samples = [run_measured(c, log, settle=i == 0) for i, c in enumerate(commands)]
    return Sample(
        sum(s.wall_s for s in samples),
        sum(s.cpu_s for s in samples),
        max(s.peak_rss_mb for s in samples),
    )


@dataclass(frozen=True)
class Summary:
    """Medians over repeated runs, with the spread of wall time."""

    runs: int
    wall_s: float
    wall_min_s: float
    wall_max_s: float
    cpu_s: float
    peak_rss_mb: float

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> Summary:
        walls = [s.wall_s for s in samples]
        return cls(
            len(samples),
            statistics.median(walls),
            min(walls),
            max(walls),
            statistics.median(s.cpu_s for s in samples),
            statistics.median(s.peak_rss_mb for s in samples),
        )


def self_rusage() -> tuple[float, float]:
    """(CPU seconds, peak RSS MiB) of the current process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


RESULTS = Path(__file__).resolve().parent / "results"


def save_results(name: str, payload: Any) -> Path:
    """A bench's figures as bench/results/<name>.json (ignored by git)."""
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    return out


def worktree_at(commit: str, tree: Path) -> Path:
    """The repository's code at `commit` in a git worktree (made once, byte-compiled), to run
    beside this tree's with PYTHONPATH=<tree>: the same bench, the code before a change."""
    repo = Path(__file__).resolve().parent.parent
    if not (tree / "ar_tasks").is_dir():
        shutil.rmtree(tree, ignore_errors=True)
        subprocess.run(["git", "-C", str(repo), "worktree", "prune"], check=True)
        subprocess.run(
            ["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), commit],
            check=True,
            capture_output=True,
        )
        python = Path(sys.executable)
        subprocess.run([python, "-m", "compileall", "-q", str(tree / "ar_tasks")], check=True)
    return tree
