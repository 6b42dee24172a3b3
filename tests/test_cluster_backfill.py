"""bench/cluster_backfill.py without the cluster (the bench itself takes minutes): the
archive's layout, the figures made from the API's records, and the row of BENCHMARKS.md."""

from __future__ import annotations

import json
from collections import Counter

from bench import cluster_backfill as cb

T0 = 1_700_000_000.0


def test_archive_has_the_planned_kinds_of_night(tmp_path):
    plan = cb.night_plan("2023-05-01")
    assert len(plan) == 12 and list(plan) == sorted(plan)
    assert Counter(plan.values()) == {"complete": 8, "science_only": 2, "no_flats": 1, "empty": 1}
    raw = tmp_path / "raw"
    cb.build_archive(raw, tmp_path / "truth", plan, size=64)
    folders = {
        night: sorted(p.name for p in (raw / night).iterdir()) if (raw / night).exists() else None
        for night in plan
    }
    expected = {
        "complete": ["DARK", "FLAT", "ORIGINAL"],
        "science_only": ["ORIGINAL"],
        "no_flats": ["DARK", "ORIGINAL"],
        "empty": None,
    }
    assert folders == {night: expected[kind] for night, kind in plan.items()}
    assert not (raw / "_truth").exists()
    stamp = (raw / ".bench-archive.json").stat().st_mtime_ns
    cb.build_archive(raw, tmp_path / "truth", plan, size=64)  # reused, not rewritten
    assert (raw / ".bench-archive.json").stat().st_mtime_ns == stamp


def _try(run_id, task_id, start, end, *, map_index=-1, try_number=1, state="success", **kw):
    return {
        "night": kw.get("night", "2023-05-01"),
        "kind": kw.get("kind", "complete"),
        "run_id": run_id,
        "task_id": task_id,
        "map_index": map_index,
        "try_number": try_number,
        "state": state,
        "pool": kw.get("pool", "default_pool"),
        "queued": T0 + start - kw.get("latency", 0.5),
        "start": T0 + start,
        "end": T0 + end,
    }


def record() -> dict:
    """Two runs: a complete night (a -> g.b[0], g.b[1] -> c) and a hopeless one whose c failed
    once before failing for good (its g.b never ran)."""
    tries = [
        _try("r1", "a", 1, 2),
        _try("r1", "g.b", 3, 4, map_index=0, pool="astrometry"),
        _try("r1", "g.b", 3, 5, map_index=1, pool="astrometry"),
        _try("r1", "c", 6, 7),
        _try("r2", "a", 1, 2, kind="science_only", night="2023-05-02"),
        _try("r2", "c", 3, 4, kind="science_only", state="up_for_retry", night="2023-05-02"),
        _try("r2", "c", 9, 10, kind="science_only", try_number=2, state="failed"),
    ]
    tis = [
        {"run_id": run_id, "task_id": task_id, "map_index": map_index, "state": state}
        for run_id, task_id, map_index, state in [
            ("r1", "a", -1, "success"),
            ("r1", "g.b", 0, "success"),
            ("r1", "g.b", 1, "success"),
            ("r1", "c", -1, "success"),
            ("r2", "a", -1, "success"),
            ("r2", "g.b", -1, "upstream_failed"),
            ("r2", "c", -1, "failed"),
            ("r2", "g.b", 0, "removed"),
        ]
    ]
    runs = [
        {"night": "2023-05-01", "kind": "complete", "run_id": "r1", "state": "success"},
        {"night": "2023-05-02", "kind": "science_only", "run_id": "r2", "state": "failed"},
    ]
    for run, (start, end) in zip(runs, [(0, 8), (0, 11)], strict=True):
        run |= {"queued_at": T0 - 1, "start": T0 + start, "end": T0 + end}
    return {
        "created": T0 - 2,
        "polled_wall_s": 14.0,
        "upstreams": {"a": [], "g.b": ["a"], "c": ["g.b", "a"]},
        "runs": runs,
        "task_instances": tis,
        "tries": tries,
        "pool_samples": [
            {"t": 1, "pool": "astrometry", "slots": 2, "occupied": 2, "open": 0},
            {"t": 2, "pool": "astrometry", "slots": 2, "occupied": 1, "open": 1},
        ],
        "pool_slots": {"astrometry": 2, "default_pool": 128},
        "machine": {"busy": 0.5, "cluster": 0.4, "others": 0.1, "bench": 0.001},
    }


def test_pass_figures_come_from_the_tries():
    a = cb.analyse_pass(record())
    assert a["wall_s"] == 13.0  # backfill created at -2, last run ended at 11
    assert a["task_instances"] == 7 and a["removed_task_instances"] == 1
    assert a["attempts"] == 7 and a["retries"] == 1
    assert a["run_states"] == {"success": 1, "failed": 1}
    r1, r2 = a["runs"]
    assert (r1["duration_s"], r1["attempts"], r1["retries"], r1["task_seconds"]) == (8, 4, 0, 5)
    assert (r2["attempts"], r2["retries"]) == (3, 1)
    assert a["queued_to_start_s"]["median"] == 0.5
    # g.b[0] and g.b[1] start 1 s after a; c 1 s after the later g.b; r2's c: 1 s after a (its
    # only executed upstream: g.b never ran there, so r2's c has no complete upstream set).
    assert a["upstream_end_to_start_s"]["n"] == 3
    assert a["upstream_end_to_start_s"]["median"] == 1.0
    assert a["task_s_complete_nights"]["max"] == 2.0
    assert a["pools"]["astrometry"]["full_samples"] == 1
    # both astrometry tries occupy the pool from queued (2.5) to the first end (4)
    assert a["pools"]["astrometry"]["full_s_from_tries"] == 1.5
    assert a["hopeless_runs_held_all_slots_s"] == 0.0  # one hopeless run, two slots
    assert set(a["by_task"]) == {"a", "g.b", "c"}


def test_row_is_written_into_benchmarks(tmp_path):
    analysis = cb.analyse_pass(record())
    results = {
        "machine": {"cores": 2, "date": "2026-12-02 08:00 UTC"},
        "code": {"commit": "abc1234", "dirty": []},
        "cli": {"nights": 8, "wall_s": 2.6, "cpu_s": 2.6},
        "passes": {"first": {"analysis": analysis}, "rerun": {"analysis": analysis}},
        "rerun_recomputed_nights": [],
    }
    summary = cb.summarise(results)
    assert summary["efficiency"] == 0.1  # 2.6 CPU s / (13 s x 2 cores)
    assert summary["targets_met"] == {
        "first_pass_s": True,
        "efficiency": True,
        "rerun_fraction": False,
    }
    row = cb.markdown_row(results, "after")
    assert row.startswith(
        "| after (`abc1234`, 2026-12-02) | 13 | 13 (100%) "
        "| 7 (+1 removed) / 7 (+1 removed) | 1 / 1 |"
    )
    assert row.count(" | ") == cb.HEADER.count(" | ")
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"x\n{cb.BEGIN}\n{cb.HEADER}\n| before | 1 |\n| after | to do |\n{cb.END}\ny\n")
    cb.write_benchmarks(row.replace("| after", "| now"), "now", doc)  # before "after"
    cb.write_benchmarks(row, "after", doc)
    lines = doc.read_text().splitlines()
    assert lines[3] == "| before | 1 |" and lines[4].startswith("| now (") and lines[5] == row
    assert lines[-2:] == [cb.END, "y"]
    json.dumps(results)  # what the bench writes is JSON
