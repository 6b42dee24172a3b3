"""The external programs of the astrometric reduction: found at run time, run under a timeout.

5.1.3 hard-coded `sex`, ran everything through `os.system` and ignored exit codes, so a missing
program or a tool that spun forever went unnoticed. Here a missing program is named with the
Debian package that provides it, every call has a timeout that kills the whole process group,
stdin is closed (PLplot prompts on it when it has no plot driver), and the output is kept in a
log file beside the products.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# Program -> (names to look for, in order; the Debian package that provides it).
PROGRAMS: dict[str, tuple[tuple[str, ...], str]] = {
    "sextractor": (("source-extractor", "sex"), "source-extractor"),
    "psfex": (("psfex",), "psfex"),
    "scamp": (("scamp",), "scamp"),
    "solve-field": (("solve-field",), "astrometry.net"),
    "build-astrometry-index": (("build-astrometry-index",), "astrometry.net"),
}
DEFAULT_TIMEOUT_S = 120.0


class ToolError(RuntimeError):
    """An external program is missing, failed, or ran out of time."""


def find_program(program: str) -> str:
    """Absolute path of a program (e.g. 'sextractor' finds source-extractor or sex).

    An environment variable AR_<PROGRAM>_BIN (e.g. AR_SEXTRACTOR_BIN) overrides the search.
    """
    names, package = PROGRAMS[program]
    override = os.environ.get(f"AR_{program.upper().replace('-', '_')}_BIN")
    for name in (override,) if override else names:
        found = shutil.which(name)
        if found:
            return found
    raise ToolError(
        f"{override or ' or '.join(names)} not found on PATH: "
        f"install the Debian package `{package}` (apt-get install {package})."
    )


@dataclass(frozen=True)
class ToolRun:
    """What one program call did: for the log, the QC record and error messages."""

    program: str
    returncode: int
    seconds: float
    output_tail: str


def run_program(
    program: str,
    args: list[str],
    cwd: Path,
    log_path: Path,
    timeout: float = DEFAULT_TIMEOUT_S,
    check: bool = True,
) -> ToolRun:
    """Run a program in `cwd`, appending its output to `log_path`; kill it after `timeout` s.

    The program runs in its own process group so a timeout also kills its children
    (solve-field starts astrometry-engine). With check=True a non-zero exit raises ToolError.
    """
    executable = find_program(program)
    command = [executable, *args]
    started = time.monotonic()
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(command)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            log.write(f"*** killed after {timeout:.0f} s\n".encode())
            raise ToolError(f"{Path(executable).name} did not finish in {timeout:.0f} s") from None
        except BaseException:
            _kill_group(process)
            raise
    run = ToolRun(Path(executable).name, returncode, time.monotonic() - started, _tail(log_path))
    if check and returncode != 0:
        raise ToolError(f"{run.program} exited with status {returncode}: {run.output_tail}")
    return run


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _tail(log_path: Path, lines: int = 3) -> str:
    """The last meaningful lines of a log, for error messages."""
    text = log_path.read_bytes()[-4000:].decode(errors="replace")
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    kept = [line for line in kept if not line.startswith("$ ")]  # our own command lines
    return " | ".join(kept[-lines:])


@functools.lru_cache(maxsize=16)
def tool_version(program: str) -> str:
    """The program's own version line (e.g. "SCAMP version 2.10.0 (2020-12-01)"), or
    "not installed": part of the key of every product the program helps make, and of the
    manifest. Asked once per process (each call starts the program)."""
    try:
        path = find_program(program)
    except ToolError:
        return "not installed"
    try:
        done = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({type(exc).__name__})"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"
