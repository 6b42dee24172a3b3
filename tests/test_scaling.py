"""bench/scaling.py: the 10-year plan's arithmetic on a tiny synthetic results dict."""

from __future__ import annotations

import json

import pytest

from bench import scaling


def _pass(wall_s, tis, attempts, cpu, runs=(), s3=None):
    return {
        "analysis": {
            "wall_s": wall_s,
            "task_instances": tis,
            "attempts": attempts,
            "retries": 0,
            "runs": list(runs),
            "task_s": {"sum": 8.0, "median": 0.5},
            "by_task": {},
            "machine": {
                "busy": 0.5,
                "others": 0.1,
                "cluster_cpu_s": cpu,
                "cluster_cpu_s_by_part": {"scheduler": 2.0, "postgres": 1.0, "api-server": 0.5},
            },
        },
        "products_bytes": 360e6,
        "s3_traffic": s3,
        "storage_counters": None,
    }


def results(roots="local"):
    """3 dates: 2 complete nights of 60 frames (2 MB each), 1 empty; a complete night's run:
    10 task instances, 4 s, 8 task seconds."""
    plan = {"2023-05-01": "complete", "2023-05-02": "complete", "2023-05-03": "empty"}
    runs = [
        {
            "night": n,
            "kind": "complete",
            "duration_s": 4.0,
            "task_instances": 10,
            "attempts": 9,
            "task_seconds": 8.0,
        }
        for n in ("2023-05-01", "2023-05-02")
    ]
    runs.append(
        {
            "night": "2023-05-03",
            "kind": "empty",
            "duration_s": 1.0,
            "task_instances": 7,
            "attempts": 1,
            "task_seconds": 0.2,
        }
    )
    s3 = {"requests": 240, "by_operation": {"get": 240}, "bytes_down": 480e6, "bytes_up": 240e6}
    rerun_s3 = {"requests": 30, "by_operation": {"list": 30}, "bytes_down": 0, "bytes_up": 0}
    return {
        "roots": roots,
        "plan": plan,
        "machine": {"cores": 2, "date": "2026-12-04 05:00 UTC"},
        "code": {"commit": "abc1234"},
        "raw": {"files": 120, "bytes": 240e6},
        "raw_by_night": {"2023-05-01": {"files": 60}, "2023-05-02": {"files": 60}},
        "cli": {"cpu_s": 6.0, "nights": 2},
        "passes": {
            "first": _pass(10.0, 20, 20, 24.0, runs, s3 if roots == "s3" else None),
            "rerun": _pass(2.0, 20, 2, 3.0, runs, rerun_s3 if roots == "s3" else None),
        },
    }


def test_plan_arithmetic():
    runs = {r: scaling.measured(results(r)) for r in ("local", "s3")}
    assert runs["local"]["efficiency"] == pytest.approx(6.0 / (10.0 * 2))
    archive = {"nights": 10, "frames": 1200, "raw_bytes": 2.4e9, "dates": 20}
    p = scaling.plan(
        runs,
        astrometry_s=1.0,
        archive=archive,
        pod_cpu_s=2.0,
        pod_start_s=10.0,
        scheduler_idle_core=0.1,
    )
    night, t, cpu = p["night"], p["tasks"], p["cpu"]
    assert night["bench_complete_frames"] == 60 and night["scale"] == 2.0  # 120 frames a night
    assert night["ten_groups_per_night"] == 10.0  # 5 groups of 5 science frames, twice over
    assert night["ten_images_per_night"] == 60.0  # (25 frames + 5 stacks) x 2
    # a complete night: 10 instances, 9 tries, 5 per group; an empty date: 7 and 1
    assert (t["tis_per_night"], t["tries_per_night"]) == (15.0, 14.0)
    assert t["tries"] == 10 * 14 + 10 * 1  # 10 nights, 10 dates without data
    assert t["tis_astrometry"] == 10 * (4 + 2 * 10) + 10 * 7
    assert cpu["cli_per_frame"] == pytest.approx(0.05)  # 6 CPU s / 120 frames
    assert cpu["overhead_per_try"] == pytest.approx((24.0 - 0.05 * 120) / 20)  # 0.9
    assert cpu["ten_dag_s"] == pytest.approx(0.05 * 1200 + 0.9 * 150)
    assert cpu["ten_astrometry_s"] == pytest.approx(1.0 * 60 * 10)
    assert p["cores"][24]["cpu_bound"] == pytest.approx(195 / (86400 * 0.8))
    assert p["cores"][4]["as_measured"] == pytest.approx(60 / (4 * 3600 * 0.3))
    assert cpu["efficiency_quiet"] == pytest.approx(0.3 / 0.9)  # others used 10%
    assert p["executor"]["extra_cpu_s"] == 300.0  # 2 CPU s x 150 pods
    assert p["executor"]["k8s_run_s"] == 4.0 + 5 * 10.0
    assert p["pools"]["run_parallelism"] == 2.0  # 8 task seconds in a 4 s run
    sc = p["scheduler"]
    assert sc["scheduler_per_try"] == pytest.approx(0.1)  # 2 s / 20 tries
    assert sc["scheduler_net_per_try"] == pytest.approx((2.0 - 0.1 * 10) / 20)
    rate = t["tries_astrometry"] / 14400
    assert sc["scheduler_net_cores_4_astrometry"] == pytest.approx(0.1 + rate * 0.05)
    assert p["rerun"]["ten_wall_s"] == pytest.approx(2.0 / 3 * 20)  # per date x dates
    s3 = p["s3"]
    assert s3["first"]["down_per_raw_byte"] == 2.0
    assert s3["first"]["ten_bytes_down"] == pytest.approx(4.8e9)
    assert s3["first"]["ten_requests"] == pytest.approx(240 / 120 * 1200)  # per frame
    assert s3["rerun"]["ten_requests"] == pytest.approx(30 / 3 * 20)  # per date
    assert p["tenfold"][24]["cores"] == pytest.approx(10 * p["cores"][24]["cpu_bound"])


def test_astrometry_routes_are_read_from_benchmarks():
    text = (
        "### Astrometry per route (one image at a time)\n\n"
        "| night | route | images solved | median s per image | slowest s | total s |\n"
        "|---|---|---|---|---|---|\n"
        "| 1024² × 5 | `--scamp`: source-extractor → scamp | 30/30 | 2.19 | 2.34 | 57.4 |\n"
        "| 1024² × 5 | `-nl`: source-extractor → solve-field | 30/30 | 0.93 | 1.06 | 28.1 |\n\n"
        "### The cost of Airflow\n| x | `-m` | 1 | 9.9 |\n"
    )
    assert scaling.astrometry_routes(text) == {"--scamp": 2.19, "-nl": 0.93}


def test_main_writes_scaling_md(tmp_path):
    paths = []
    for roots in ("local", "s3"):
        path = tmp_path / f"{roots}.json"
        path.write_text(json.dumps(results(roots)))
        paths.append(str(path))
    out = tmp_path / "SCALING.md"
    args = [*paths, "--astrometry-s-per-image", "0.3", "--out", str(out)]
    assert scaling.main([*args, "--benchmarks", str(tmp_path / "none.md")]) == 0
    text = out.read_text()
    assert text.startswith("# Scaling") and "0.30 s an image" in text and "**assumed**" in text


def test_the_per_group_astrometry_figures_are_preferred():
    text = (
        "## Astrometry once per group\n\n| night | route | case | images solved | wall s | CPU s |"
        " wall s per image | CPU s per image | error |\n|---|---|---|---|---|---|---|---|---|\n"
        "| 1024² × 5 | `--scamp` | per group | 30/30 | 4.54 | 3.76 | 0.151 | 0.125 | x |\n"
        "| 1024² × 5 | `--scamp` | --solve-each | 30/30 | 16.69 | 11.48 | 0.556 | 0.383 | x |\n"
        "| 1024² × 20 | `-nl` | per group | 105/105 | 20.58 | 13.17 | 0.196 | 0.125 | x |\n\n"
        "## Next\n\n### Astrometry per route\n\n| night | route | solved | median |\n"
        "| 1024² × 5 | `--scamp` | 30/30 | 2.19 |\n"
    )
    assert scaling.astrometry_routes(text) == {"--scamp": 0.125}
