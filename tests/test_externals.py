"""External programs: found by name, missing ones named with their package, bounded in time."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ar_tasks import externals
from ar_tasks.externals import ToolError, find_program, run_program


def test_source_extractor_is_found_under_either_name():
    assert os.path.basename(find_program("sextractor")) in ("source-extractor", "sex")
    assert find_program("solve-field").endswith("solve-field")


def test_missing_program_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolError, match=r"scamp not found.*apt-get install scamp"):
        find_program("scamp")
    with pytest.raises(ToolError, match=r"package `astrometry\.net`"):
        find_program("solve-field")


def _script(tmp_path, body: str):
    script = tmp_path / "fake-scamp"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return script


def test_a_hanging_program_and_its_children_are_killed(monkeypatch, tmp_path):
    """SCAMP spins for ever on a field without references: the timeout must end it."""
    marker = tmp_path / "child.pid"
    script = _script(tmp_path, f"sleep 300 & echo $! > {marker}\nwait\n")
    monkeypatch.setenv("AR_SCAMP_BIN", str(script))
    started = time.monotonic()
    with pytest.raises(ToolError, match="did not finish in 1 s"):
        run_program("scamp", [], tmp_path, tmp_path / "tools.log", timeout=1)
    assert time.monotonic() - started < 10
    child = int(marker.read_text())
    time.sleep(0.2)
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().split()[2] == "Z"  # gone, or a zombie
    assert "killed after 1 s" in (tmp_path / "tools.log").read_text()


def test_failure_status_and_output_are_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("AR_SCAMP_BIN", str(_script(tmp_path, "echo 'bad catalogue' ; exit 3\n")))
    with pytest.raises(ToolError, match="exited with status 3: bad catalogue"):
        run_program("scamp", [], tmp_path, tmp_path / "tools.log")
    run = run_program("scamp", [], tmp_path, tmp_path / "tools.log", check=False)
    assert run.returncode == 3 and externals.DEFAULT_TIMEOUT_S > 0
