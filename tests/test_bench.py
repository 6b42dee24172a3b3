"""The benchmark harness: its measurements are right, and a tiny run makes the tables.

No timing is asserted here (speed lives in BENCHMARKS.md); only that the harness measures
what a process really does and that `make bench`'s pipeline runs end to end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import harness, report, run


def test_harness_sees_memory_and_cpu_of_the_whole_process_tree(tmp_path):
    """A parent holding 150 MB starts a child holding 100 MB: the tree's peak counts both,
    and the child's busy CPU is in the total."""
    child = (
        "import numpy, time; a = numpy.ones(100 * 2**20 // 8); t = time.process_time(); "
        "exec('while time.process_time() - t < 0.5: pass'); time.sleep(0.3)"
    )
    parent = (
        "import numpy, subprocess, sys; a = numpy.ones(150 * 2**20 // 8); "
        f"subprocess.run([sys.executable, '-c', {child!r}], check=True)"
    )
    sample = harness.run_measured(harness.Command([sys.executable, "-c", parent], tmp_path))
    assert sample.peak_rss_mb > 250
    assert sample.cpu_s >= 0.5
    assert sample.wall_s >= sample.cpu_s * 0.5


def test_harness_counts_pages_a_fork_shares_once(tmp_path):
    """A parent holding 150 MB forks two children that only read it: the tree holds 150 MB,
    not three times that (a sum of resident sets says ~450)."""
    code = (
        "import numpy, os, time\n"
        "a = numpy.ones(150 * 2**20 // 8)\n"
        "pids = []\n"
        "for _ in range(2):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        time.sleep(0.5); float(a.sum()); os._exit(0)\n"
        "    pids.append(pid)\n"
        "time.sleep(0.5)\n"
        "for pid in pids: os.waitpid(pid, 0)\n"
    )
    sample = harness.run_measured(harness.Command([sys.executable, "-c", code], tmp_path))
    assert 150 < sample.peak_rss_mb < 250


def test_harness_reports_a_failing_command(tmp_path):
    log = tmp_path / "log"
    with pytest.raises(harness.CommandFailed, match="exited 3"):
        harness.run_measured(
            harness.Command([sys.executable, "-c", "print('boom'); exit(3)"], tmp_path, {}, "x"),
            log=log,
        )
    assert "boom" in log.read_text()


def test_tiny_bench_run_makes_every_table(tmp_path):
    """ours, the floor and the in-process steps on a 256^2 night, then the report."""
    results = tmp_path / "results"
    code = run.main(
        [
            *("--configs", "256x3", "--target", "256x3", "--repeats", "1"),
            *("--work", str(tmp_path / "work"), "--results", str(results)),
            *("--skip-ar513", "--skip-iraf", "--no-png"),
        ]
    )
    assert code == 0
    record = json.loads((results / "256x3.json").read_text())
    assert set(record["summaries"]) == {"ours", "floor", "inprocess"}
    assert record["frames"] == 51
    assert set(record["steps_s"]) >= set(report.STEPS)
    for summary in record["summaries"].values():
        assert summary["wall_s"] > 0 and summary["peak_rss_mb"] > 20
    (results / "cluster_backfill.json").write_text('{"summary": {}}')  # another bench's
    target = tmp_path / "BENCHMARKS.md"
    target.write_text(f"# Benchmarks\n\nprose kept\n\n{report.BEGIN}\nold\n{report.END}\nend\n")
    assert report.main([str(results), str(target)]) == 0
    text = target.read_text()
    assert "prose kept" in text and text.endswith("end\n") and "\nold\n" not in text
    assert "| 256² × 3 | 51 |" in text and "(e) read + write floor" in text


def test_floor_writes_what_ours_wrote(tmp_path):
    """The floor's plan lists our FITS products, and the floor writes each of them."""
    from ar_tasks import synthetic
    from ar_tasks.layout import NightLayout
    from ar_tasks.nightplan import NightPlan, ReductionOptions
    from ar_tasks.steps import load_inventory, setup_night
    from bench import floor

    # 128 px: a 64 px frame shows too few stars for a shift to be checked (5 matched at least).
    spec = synthetic.NightSpec(size=128, frames_per_group=2)
    night = synthetic.write_night(tmp_path / "raw", spec)
    ours = run.fresh_copy(night, tmp_path / "ours" / night.name)
    layout = NightLayout.in_place(ours)
    setup_night(layout)
    plan = NightPlan.build(load_inventory(layout), ReductionOptions(interpolate=True))
    plan.run(plan.start(layout), ["masters", "group"])
    plan = floor.plan(ours)
    assert any(p["path"].startswith("stacked/") for p in plan["images"])
    assert len(plan["copies"]) == sum(1 for _ in Path(night).rglob("*.fits"))
    target = run.fresh_copy(night, tmp_path / "floor" / night.name)
    floor.run(target, plan)
    for image in plan["images"]:
        assert (target / image["path"]).is_file()
