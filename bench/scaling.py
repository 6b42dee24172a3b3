"""`python -m bench.scaling`: the 10-year plan (SCALING.md) from the measured archive runs.

Reads the results of `python -m bench.cluster_backfill --nights 30 --roots local|s3`
(bench/results/cluster_backfill_30_local.json, cluster_backfill_30_s3.json) and the per-image
astrometry figures of BENCHMARKS.md's "Astrometry per route" table (or `--astrometry-s-per-image`),
and derives for ten years of T120 nights (`--nights`, `--frames`, `--raw-tb`): the worker cores
for a 24-hour and a 4-hour reprocessing, with and without astrometry; Celery against the
KubernetesExecutor; the pools and run slots; the scheduler's and the metadata database's load;
S3 bytes and requests of a first pass and a rerun; and what gives first at ten times the archive.
Every derived number is written with its arithmetic and the measured figure it comes from.

Pure arithmetic (`plan`) on the results dicts, then text (`render`); nothing is run.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DEFAULT_RESULTS = (
    RESULTS / "cluster_backfill_30_local.json",
    RESULTS / "cluster_backfill_30_s3.json",
)
EMPTY = ("empty", "empty_folder")
# Ten years of the T120 (the figures): observed nights, 1024² frames, raw bytes; and
# the dates a backfill of ten years walks (the nights without data cost a run each).
TEN_YEARS = {"nights": 1500, "frames": 225_000, "raw_bytes": 0.5e12, "dates": 3652}
WINDOWS_H = (24, 4)
# An idle scheduler's CPU with the cluster's 0.2 s idle sleep: 9.7% of a core over 60 s
# (BENCHMARKS.md, "The DAG at archive scale", the row at 6f150fd).
SCHEDULER_IDLE_CORE = 0.097
# The route a production run would use unless told: SCAMP against a local catalogue.
DEFAULT_ROUTE = "--scamp"


# ---------------------------------------------------------------------------------------------
# Inputs


GROUP_SECTION = "## Astrometry once per group"


def astrometry_routes(benchmarks: str) -> dict[str, float]:
    """Route -> CPU seconds per image of the per-group astrometry on the 5-frame night (the
    archive's nights), from "## Astrometry once per group"; else the median seconds per image
    of the older "### Astrometry per route" table (every image solved on its own)."""
    if GROUP_SECTION in benchmarks:
        section = benchmarks.split(GROUP_SECTION, 1)[1].split("\n## ", 1)[0]
        routes = {}
        for line in section.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) < 8 or cells[0] != "1024² × 5" or cells[2] != "per group":
                continue
            route = re.match(r"`([^`]+)`", cells[1])
            if route and re.fullmatch(r"[\d.]+", cells[7]):
                routes[route.group(1)] = float(cells[7])
        if routes:
            return routes
    if "### Astrometry per route" not in benchmarks:
        return {}
    section = benchmarks.split("### Astrometry per route", 1)[1].split("\n### ", 1)[0]
    routes = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not re.fullmatch(r"[\d.]+", cells[3]):
            continue
        route = re.match(r"`([^`]+)`", cells[1])
        if route:
            routes[route.group(1)] = float(cells[3])
    return routes


def _pass(results: dict, label: str) -> dict:
    return results["passes"][label]["analysis"]


def measured(results: dict) -> dict[str, Any]:
    """The figures of one archive run the plan uses (each named after its source)."""
    plan = results["plan"]
    cores = results["machine"]["cores"]
    first, rerun = _pass(results, "first"), _pass(results, "rerun")
    by_night = results.get("raw_by_night") or {}
    data_nights = [n for n, kind in plan.items() if kind not in EMPTY]
    complete = [n for n, kind in plan.items() if kind == "complete"]
    frames = results["raw"]["files"]
    runs = {r["night"]: r for r in first["runs"]}
    complete_runs = [runs[n] for n in complete if n in runs]
    cli_frames = sum(by_night[n]["files"] for n in complete) if by_night else None
    m: dict[str, Any] = {
        "name": results.get("roots", "local"),
        "commit": results["code"]["commit"],
        "date": results["machine"]["date"],
        "cores": cores,
        "dates": len(plan),
        "data_nights": len(data_nights),
        "frames": frames,
        "raw_bytes": results["raw"]["bytes"],
        "complete_nights": len(complete),
        "complete_frames": cli_frames,
        "first_wall_s": first["wall_s"],
        "rerun_wall_s": rerun["wall_s"],
        "task_instances": first["task_instances"],
        "rerun_task_instances": rerun["task_instances"],
        "attempts": first["attempts"],
        "rerun_attempts": rerun["attempts"],
        "retries": first["retries"],
        "rerun_retries": rerun["retries"],
        "cluster_cpu_s": first["machine"].get("cluster_cpu_s"),
        "rerun_cluster_cpu_s": rerun["machine"].get("cluster_cpu_s"),
        "cpu_by_part": first["machine"].get("cluster_cpu_s_by_part") or {},
        "rerun_cpu_by_part": rerun["machine"].get("cluster_cpu_s_by_part") or {},
        "busy": first["machine"]["busy"],
        "others": first["machine"]["others"],
        "cli_cpu_s": results["cli"]["cpu_s"],
        "cli_nights": results["cli"]["nights"],
        "task_s_sum": (first["task_s"] or {}).get("sum"),
        "task_s_median": (first["task_s"] or {}).get("median"),
        "by_task": first["by_task"],
        "complete_run_s": statistics.median(r["duration_s"] for r in complete_runs),
        "complete_run_tis": statistics.median(r["task_instances"] for r in complete_runs),
        "complete_run_task_s": statistics.median(r["task_seconds"] for r in complete_runs),
        "complete_run_attempts": statistics.median(r["attempts"] for r in complete_runs),
        "empty_run_tis": statistics.median(
            [r["task_instances"] for r in first["runs"] if r["kind"] in EMPTY] or [0]
        ),
        "empty_run_attempts": statistics.median(
            [r["attempts"] for r in first["runs"] if r["kind"] in EMPTY] or [0]
        ),
        "products_bytes": results["passes"]["first"].get("products_bytes"),
        "s3": {p: results["passes"][p].get("s3_traffic") for p in ("first", "rerun")},
        "storage_counters": {
            p: results["passes"][p].get("storage_counters") for p in ("first", "rerun")
        },
        "nights_expected": (results.get("summary") or {}).get("nights_expected"),
    }
    m["efficiency"] = m["cli_cpu_s"] / (m["first_wall_s"] * cores)
    return m


# ---------------------------------------------------------------------------------------------
# The plan (numbers only)


def plan(
    runs: dict[str, dict[str, Any]],
    astrometry_s: float,
    groups_per_night: float = 5.0,
    science_per_night: float = 25.0,
    pod_start_s: float = 10.0,
    pod_cpu_s: float = 2.6,
    target_busy: float = 0.8,
    archive: dict[str, float] | None = None,
    scheduler_idle_core: float = SCHEDULER_IDLE_CORE,
) -> dict[str, Any]:
    """The derived numbers, from the measured runs (`measured` of each; "local" is the base,
    "s3" adds the bytes and requests). `groups_per_night`, `science_per_night`: the bench's
    complete night (NightSpec's default: 5 groups of 5 science frames, 36 calibrations)."""
    archive = {**TEN_YEARS, **(archive or {})}
    base = runs.get("local") or next(iter(runs.values()))
    nights, frames = archive["nights"], archive["frames"]
    dates = archive.get("dates") or TEN_YEARS["dates"]
    out: dict[str, Any] = {"archive": {**archive, "dates": dates}}

    # A 10-year night in bench nights
    complete_frames = (
        base["complete_frames"] / base["complete_nights"]
        if base.get("complete_frames")
        else base["frames"] / base["data_nights"]
    )
    per_night = frames / nights
    scale = per_night / complete_frames
    groups = groups_per_night * scale
    out["night"] = {
        "bench_frames_per_night": base["frames"] / base["data_nights"],
        "bench_complete_frames": complete_frames,
        "bench_bytes_per_frame": base["raw_bytes"] / base["frames"],
        "ten_raw_bytes_from_frames": frames * base["raw_bytes"] / base["frames"],
        "ten_frames_per_night": per_night,
        "scale": scale,
        "ten_groups_per_night": groups,
        "ten_images_per_night": (science_per_night + groups_per_night) * scale,
    }
    night = out["night"]

    # Task instances (rows) and tries (executed), per night and in all
    fixed_tis = base["complete_run_tis"] - groups_per_night
    fixed_tries = base["complete_run_attempts"] - groups_per_night
    empty_dates = max(dates - nights, 0)
    t: dict[str, Any] = {
        "fixed_tis": fixed_tis,
        "fixed_tries": fixed_tries,
        "empty_dates": empty_dates,
        "empty_tis": base["empty_run_tis"],
        "empty_tries": base["empty_run_attempts"],
        "tis_per_night": fixed_tis + groups,
        "tries_per_night": fixed_tries + groups,
        # astrometry: a solve_group per group instead of the one skipped instance
        "tis_per_night_astrometry": fixed_tis - 1 + 2 * groups,
        "tries_per_night_astrometry": fixed_tries + 2 * groups,
    }
    for suffix in ("", "_astrometry"):
        t[f"tis{suffix}"] = nights * t[f"tis_per_night{suffix}"] + empty_dates * t["empty_tis"]
        t[f"tries{suffix}"] = (
            nights * t[f"tries_per_night{suffix}"] + empty_dates * t["empty_tries"]
        )
    out["tasks"] = t

    # CPU
    cli_per_frame = base["cli_cpu_s"] / (base["complete_frames"] or base["cli_nights"] * 61)
    work_in_pass = cli_per_frame * base["frames"]
    overhead = (base["cluster_cpu_s"] - work_in_pass) / base["attempts"]
    worker = base["cpu_by_part"].get("worker")
    cpu: dict[str, Any] = {
        "cli_per_frame": cli_per_frame,
        "dag_per_frame": base["cluster_cpu_s"] / base["frames"],
        "work_in_pass": work_in_pass,
        "overhead_per_try": overhead,
        "worker_overhead_per_try": (worker - work_in_pass) / base["attempts"] if worker else None,
        "ten_work_s": cli_per_frame * frames,
        "ten_overhead_s": overhead * t["tries"],
        "ten_overhead_astrometry_s": overhead * t["tries_astrometry"],
        "astrometry_s_per_image": astrometry_s,
        "ten_astrometry_s": astrometry_s * night["ten_images_per_night"] * nights,
        "efficiency": base["efficiency"],
        "efficiency_quiet": base["efficiency"] / max(1 - base["others"], 1e-9),
        "others": base["others"],
        "busy": base["busy"],
        "target_busy": target_busy,
    }
    cpu["ten_dag_s"] = cpu["ten_work_s"] + cpu["ten_overhead_s"]
    cpu["ten_dag_astrometry_s"] = (
        cpu["ten_work_s"] + cpu["ten_overhead_astrometry_s"] + cpu["ten_astrometry_s"]
    )
    cpu["astrometry_share"] = cpu["ten_astrometry_s"] / cpu["ten_dag_astrometry_s"]
    out["cpu"] = cpu
    cores = {}
    for hours in WINDOWS_H:
        seconds = hours * 3600
        work_astro = cpu["ten_work_s"] + cpu["ten_astrometry_s"]
        cores[hours] = {
            "as_measured": cpu["ten_work_s"] / (seconds * cpu["efficiency"]),
            "quiet": cpu["ten_work_s"] / (seconds * cpu["efficiency_quiet"]),
            "cpu_bound": cpu["ten_dag_s"] / (seconds * target_busy),
            "as_measured_astrometry": work_astro / (seconds * cpu["efficiency"]),
            "quiet_astrometry": work_astro / (seconds * cpu["efficiency_quiet"]),
            "cpu_bound_astrometry": cpu["ten_dag_astrometry_s"] / (seconds * target_busy),
        }
    out["cores"] = cores

    # Celery (warm workers, measured) against Kubernetes (a pod per task instance)
    stages = 5  # list_nights -> prepare_night -> plan_groups -> reduce_group -> publish
    ex: dict[str, Any] = {
        "pod_start_s": pod_start_s,
        "pod_cpu_s": pod_cpu_s,
        "extra_cpu_s": pod_cpu_s * t["tries"],
        "extra_cpu_astrometry_s": pod_cpu_s * t["tries_astrometry"],
        "celery_run_s": base["complete_run_s"],
        "k8s_run_s": base["complete_run_s"] + stages * pod_start_s,
        "stages": stages,
        "median_task_s": base["task_s_median"],
    }
    for hours in WINDOWS_H:
        seconds = hours * 3600
        ex[f"cores_{hours}"] = (cpu["ten_dag_s"] + ex["extra_cpu_s"]) / (seconds * target_busy)
        ex[f"cores_{hours}_astrometry"] = (
            cpu["ten_dag_astrometry_s"] + ex["extra_cpu_astrometry_s"]
        ) / (seconds * target_busy)
    out["executor"] = ex

    # Run slots and pools
    parallel = base["complete_run_task_s"] / base["complete_run_s"]
    pools: dict[Any, Any] = {"run_parallelism": parallel}
    for hours in WINDOWS_H:
        c_plain = cores[hours]["cpu_bound"]
        c_astro = cores[hours]["cpu_bound_astrometry"]
        pools[hours] = {
            "runs_plain": c_plain * target_busy / parallel,
            # with astrometry a run solves its groups at once (assumed): up to `groups` cores
            "runs_astrometry": c_astro * target_busy / groups,
            "astrometry_pool": c_astro * cpu["astrometry_share"],
            "worker_slots": c_astro + 1,
        }
    out["pools"] = pools

    # Scheduler and metadata database: CPU per try over the first pass, by part
    sc: dict[str, Any] = {
        "bench_tries_per_s": base["attempts"] / base["first_wall_s"],
        "scheduler_idle_core": scheduler_idle_core,
    }
    for part, key in (("scheduler", "scheduler"), ("postgres", "db"), ("api-server", "api")):
        value = base["cpu_by_part"].get(part)
        sc[f"{key}_cpu_s"] = value
        sc[f"{key}_per_try"] = value / base["attempts"] if value else None
    if sc["scheduler_cpu_s"]:  # its idle loops apart: they cost the same at any rate
        idle = scheduler_idle_core * base["first_wall_s"]
        sc["scheduler_idle_s"] = idle
        sc["scheduler_net_per_try"] = max(sc["scheduler_cpu_s"] - idle, 0) / base["attempts"]
    for hours in WINDOWS_H:
        for label, tries in (("plain", t["tries"]), ("astrometry", t["tries_astrometry"])):
            rate = tries / (hours * 3600)
            sc[f"tries_per_s_{hours}_{label}"] = rate
            for key in ("scheduler", "db", "api"):
                per = sc[f"{key}_per_try"]
                sc[f"{key}_cores_{hours}_{label}"] = rate * per if per else None
            if sc.get("scheduler_net_per_try") is not None:
                sc[f"scheduler_net_cores_{hours}_{label}"] = (
                    scheduler_idle_core + rate * sc["scheduler_net_per_try"]
                )
    out["scheduler"] = sc

    # The rerun of a current archive: one cheap check per date (measured per date)
    rerun = {
        "wall_per_date": base["rerun_wall_s"] / base["dates"],
        "cpu_per_date": base["rerun_cluster_cpu_s"] / base["dates"],
        "tries_per_date": base["rerun_attempts"] / base["dates"],
    }
    rerun["ten_wall_s"] = rerun["wall_per_date"] * dates
    rerun["ten_cpu_s"] = rerun["cpu_per_date"] * dates
    rerun["ten_tries"] = rerun["tries_per_date"] * dates
    rerun["fraction_of_first"] = base["rerun_wall_s"] / base["first_wall_s"]
    out["rerun"] = rerun

    # S3: the bench's traffic per raw byte, per frame and per date, scaled to the archive
    s3run = runs.get("s3")
    if s3run and (s3run["s3"] or {}).get("first"):
        s3: dict[str, Any] = {
            "bench_raw_bytes": s3run["raw_bytes"],
            "bench_frames": s3run["frames"],
            "bench_dates": s3run["dates"],
        }
        for label in ("first", "rerun"):
            traffic = s3run["s3"].get(label)
            if not traffic:
                continue
            per_unit = (
                traffic["requests"] / s3run["frames"]
                if label == "first"
                else traffic["requests"] / s3run["dates"]
            )
            s3[label] = {
                **{k: traffic[k] for k in ("requests", "by_operation", "bytes_down", "bytes_up")},
                "down_per_raw_byte": traffic["bytes_down"] / s3run["raw_bytes"],
                "up_per_raw_byte": traffic["bytes_up"] / s3run["raw_bytes"],
                "requests_per_unit": per_unit,
                "ten_requests": per_unit * (frames if label == "first" else dates),
                "ten_bytes_down": traffic["bytes_down"] / s3run["raw_bytes"] * archive["raw_bytes"],
                "ten_bytes_up": traffic["bytes_up"] / s3run["raw_bytes"] * archive["raw_bytes"],
                "by_area": traffic.get("by_area") or {},
                "raw_bytes_down": traffic.get("raw_bytes_down"),
            }
        s3["products_per_raw_byte"] = (s3run["products_bytes"] or 0) / s3run["raw_bytes"]
        s3["ten_products_bytes"] = s3["products_per_raw_byte"] * archive["raw_bytes"]
        s3["storage_counters"] = s3run["storage_counters"]
        s3["first_wall_s"] = s3run["first_wall_s"]
        s3["cluster_cpu_s"] = s3run["cluster_cpu_s"]
        s3["cpu_by_part"] = s3run["cpu_by_part"]
        out["s3"] = s3
    out["products_per_raw_byte"] = (base["products_bytes"] or 0) / base["raw_bytes"]

    # Ten times the archive (everything above is linear in nights and frames)
    out["tenfold"] = {
        hours: {
            "cores": cores[hours]["cpu_bound"] * 10,
            "cores_astrometry": cores[hours]["cpu_bound_astrometry"] * 10,
            "tries_per_s": sc[f"tries_per_s_{hours}_astrometry"] * 10,
            "scheduler_cores": (sc[f"scheduler_cores_{hours}_astrometry"] or 0) * 10,
            "scheduler_net_cores": scheduler_idle_core
            + sc[f"tries_per_s_{hours}_astrometry"] * 10 * (sc.get("scheduler_net_per_try") or 0),
            "db_cores": (sc[f"db_cores_{hours}_astrometry"] or 0) * 10,
            "api_cores": (sc[f"api_cores_{hours}_astrometry"] or 0) * 10,
            "rerun_wall_s": rerun["ten_wall_s"] * 10,
        }
        for hours in WINDOWS_H
    }
    out["tenfold_rows"] = t["tis_astrometry"] * 10
    return out


# ---------------------------------------------------------------------------------------------
# The text


def _n(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "–"
    return f"{x:,.{digits}f}".replace(",", " ")


def _gb(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x / 1e9:.{digits}f} GB"


def _tb(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x / 1e12:.{digits}f} TB"


def render(runs: dict[str, dict], p: dict[str, Any], routes: dict[str, float], route: str) -> str:
    base = runs.get("local") or next(iter(runs.values()))
    a, night, t, cpu = p["archive"], p["night"], p["tasks"], p["cpu"]
    cores, ex, sc, rr = p["cores"], p["executor"], p["scheduler"], p["rerun"]
    lines: list[str] = []
    w = lines.append
    w("# Scaling: ten years of T120 nights")
    w("")
    w(
        "Made by `python -m bench.scaling` (bench/scaling.py) from the measured 30-night archive "
        "runs of `python -m bench.cluster_backfill --nights 30 --roots local|s3` (BENCHMARKS.md, "
        '"A 30-night archive, local and S3 roots"; results in bench/results/). Every number '
        "below is arithmetic on a measured figure, named with its source; what is not measured is "
        "marked **assumed**. After new runs: `make bench-archive` (both runs, then this script)."
    )
    w("")
    w("## Headlines")
    w("")
    w(
        f"- Ten years ({_n(a['nights'])} nights, {_n(a['frames'])} frames, "
        f"{_tb(a['raw_bytes'], 1)}) without astrometry: **{_n(cpu['ten_dag_s'] / 3600)} "
        f"core-hours** of DAG CPU, **{cores[24]['cpu_bound']:.1f} worker cores for 24 h, "
        f"{cores[4]['cpu_bound']:.1f} for 4 h** when CPU-bound ({cores[24]['quiet']:.1f} and "
        f"{cores[4]['quiet']:.1f} at the bench's measured efficiency, the other users' share "
        "removed)."
    )
    w(
        f"- With astrometry (`{route}`, {cpu['astrometry_s_per_image']:.2f} s an image): "
        f"**{_n(cpu['ten_dag_astrometry_s'] / 3600)} core-hours**, "
        f"**{cores[24]['cpu_bound_astrometry']:.1f} worker cores for 24 h, "
        f"{cores[4]['cpu_bound_astrometry']:.1f} for 4 h**; astrometry is "
        f"{cpu['astrometry_share']:.0%} of it."
    )
    w(
        f"- Airflow costs {cpu['overhead_per_try']:.2f} CPU s a task try against "
        f"{cpu['cli_per_frame'] * 1000:.0f} ms of reduction a frame: without astrometry "
        f"{cpu['ten_overhead_s'] / cpu['ten_dag_s']:.0%} of the DAG's CPU is Airflow's."
    )
    s3 = p.get("s3")
    if s3 and s3.get("first"):
        w(
            f"- S3, first pass: {_n(s3['first']['ten_requests'])} requests, "
            f"{_tb(s3['first']['ten_bytes_down'])} down and {_tb(s3['first']['ten_bytes_up'])} up; "
            f"a rerun of a current archive: {_n((s3.get('rerun') or {}).get('ten_requests'))} "
            "requests."
        )
    w(
        f"- Scheduler: {sc['tries_per_s_4_astrometry']:.1f} task tries/s for a 4-hour "
        "reprocessing with astrometry, "
        f"{_n(sc.get('scheduler_net_cores_4_astrometry'), 2)}–"
        f"{_n(sc['scheduler_cores_4_astrometry'], 2)} of a core (measured CPU a try, idle loops "
        f"apart or not); tenfold {p['tenfold'][4]['scheduler_net_cores']:.1f}–"
        f"{p['tenfold'][4]['scheduler_cores']:.1f} cores: one scheduler is the first limit."
    )
    w("")
    w("## The measured runs")
    w("")
    w(
        "| run | commit, date | dates / nights with data | raw files (GB) | first pass s | "
        "rerun s | task instances / tries: first; rerun | retries | cluster CPU s: first / "
        "rerun | machine busy (others) | CLI CPU s (complete nights) | efficiency |"
    )
    w("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, m in runs.items():
        w(
            f"| {name} | `{m['commit']}`, {m['date'][:16]} | {m['dates']} / {m['data_nights']} | "
            f"{m['frames']} ({m['raw_bytes'] / 1e9:.2f}) | {m['first_wall_s']:.0f} | "
            f"{m['rerun_wall_s']:.0f} | {m['task_instances']} / {m['attempts']}; "
            f"{m['rerun_task_instances']} / {m['rerun_attempts']} | "
            f"{m['retries']} / {m['rerun_retries']} | "
            f"{_n(m['cluster_cpu_s'])} / {_n(m['rerun_cluster_cpu_s'])} | "
            f"{m['busy']:.0%} ({m['others']:.0%}) | {m['cli_cpu_s']:.1f} ({m['cli_nights']}) | "
            f"{m['efficiency']:.1%} |"
        )
    w("")
    w(
        f'Machine: {base["cores"]} cores, shared: "others" is the share of the machine used by '
        "processes that were neither the cluster nor the bench. The plan's CPU, task and "
        f"duration figures come from the **{base['name']}** run; the S3 run adds bytes and "
        "requests. Cluster CPU is every process of the cluster over the pass (scheduler, API "
        "server, dag-processor, triggerer, Celery worker with its task processes, PostgreSQL, "
        "Redis; moto's S3 server in the S3 run), from /proc; efficiency is BENCHMARKS.md's (the "
        "CLI's CPU s on the complete nights ÷ (first pass wall × cores))."
    )
    for name, m in runs.items():
        if m["cpu_by_part"]:
            parts = sorted(m["cpu_by_part"].items(), key=lambda kv: -kv[1])
            w(
                f"Cluster CPU of the {name} first pass by part: "
                + ", ".join(f"{k} {v:.1f} s" for k, v in parts)
                + "."
            )
    w("")
    w("## A 10-year night in bench nights")
    w("")
    w(
        f"- **assumed** (the issue): {_n(a['nights'])} observed nights, {_n(a['frames'])} "
        f"1024² frames, {_tb(a['raw_bytes'], 1)} raw; a backfill of ten years walks "
        f"{_n(a['dates'])} dates."
    )
    w(
        f"- bench: {base['raw_bytes'] / 1e9:.3f} GB ÷ {base['frames']} raw files = "
        f"**{night['bench_bytes_per_frame'] / 1e6:.2f} MB a frame**, so {_n(a['frames'])} "
        f"frames = {_tb(night['ten_raw_bytes_from_frames'])} (the issue's 0.5 TB agrees); a "
        f"complete night {night['bench_complete_frames']:.0f} frames (25 science frames in 5 "
        "groups, 36 calibrations)."
    )
    w(
        f"- a 10-year night: {_n(a['frames'])} ÷ {_n(a['nights'])} = "
        f"**{night['ten_frames_per_night']:.0f} frames** = {night['scale']:.2f} complete bench "
        "nights. **assumed**: the same mix (5 science frames a group, 25 science frames in "
        f"{night['bench_complete_frames']:.0f}): 5 × {night['scale']:.2f} = "
        f"**{night['ten_groups_per_night']:.1f} groups** and (25 + 5 stacks) × "
        f"{night['scale']:.2f} = **{night['ten_images_per_night']:.0f} images to solve**. "
        "Longer groups would mean fewer task instances: the counts below are then upper bounds."
    )
    w("")
    w("## Task instances and tries")
    w("")
    w(
        f"Measured: a complete night's run has {base['complete_run_tis']:.0f} task instances and "
        f"{base['complete_run_attempts']:.0f} tries (median), 5 of each `reduce_group` "
        f"(`solve_group` is one skipped instance without astrometry); a date without data "
        f"{t['empty_tis']:.0f} instances and {t['empty_tries']:.0f} try (`list_nights`)."
    )
    w("")
    w("| | per night | ten years |")
    w("|---|---|---|")
    g = night["ten_groups_per_night"]
    for label, suffix, per_tis, per_tries in (
        (
            "without astrometry",
            "",
            f"{t['fixed_tis']:.0f} + {g:.1f}",
            f"{t['fixed_tries']:.0f} + {g:.1f}",
        ),
        (
            "with astrometry",
            "_astrometry",
            f"{t['fixed_tis'] - 1:.0f} + 2 × {g:.1f}",
            f"{t['fixed_tries']:.0f} + 2 × {g:.1f}",
        ),
    ):
        w(
            f"| task instances, {label} | {per_tis} = {t[f'tis_per_night{suffix}']:.1f} | "
            f"{_n(a['nights'])} × {t[f'tis_per_night{suffix}']:.1f} + {_n(t['empty_dates'])} "
            f"empty dates × {t['empty_tis']:.0f} = **{_n(t[f'tis{suffix}'])}** |"
        )
        w(
            f"| tries, {label} | {per_tries} = {t[f'tries_per_night{suffix}']:.1f} | "
            f"{_n(a['nights'])} × {t[f'tries_per_night{suffix}']:.1f} + "
            f"{_n(t['empty_dates'])} × {t['empty_tries']:.0f} = **{_n(t[f'tries{suffix}'])}** |"
        )
    w("")
    w("## CPU and worker cores")
    w("")
    cli_frames = base["complete_frames"] or base["cli_nights"] * 61
    w(
        f"- the reduction (the CLI on the {base['cli_nights']} complete nights): "
        f"{base['cli_cpu_s']:.1f} CPU s ÷ {cli_frames} frames = "
        f"**{cpu['cli_per_frame'] * 1000:.1f} ms a frame**; ten years "
        f"{cpu['cli_per_frame']:.4f} × {_n(a['frames'])} = **{_n(cpu['ten_work_s'])} CPU s**."
    )
    w(
        f"- Airflow: the first pass used {_n(base['cluster_cpu_s'], 1)} cluster CPU s for "
        f"{base['frames']} frames; less their reduction ({cpu['cli_per_frame']:.4f} × "
        f"{base['frames']} = {cpu['work_in_pass']:.1f} s), over its {base['attempts']} tries: "
        f"**{cpu['overhead_per_try']:.2f} CPU s a try** (of which the Celery worker and its task "
        f"processes {_n(cpu['worker_overhead_per_try'], 2)} s: a task process's start, imports, "
        "supervisor; the rest scheduler, API server, database, their idle loops over the pass "
        f"included: they grow with the pass's wall, {base['first_wall_s']:.0f} s on a machine "
        f"{base['others']:.0%} used by others, so a quiet machine's figure is lower). "
        f"Ten years: {cpu['overhead_per_try']:.2f} × {_n(t['tries'])} = "
        f"**{_n(cpu['ten_overhead_s'])} CPU s**; with astrometry × {_n(t['tries_astrometry'])} = "
        f"{_n(cpu['ten_overhead_astrometry_s'])}."
    )
    w(
        f"- astrometry (route `{route}`: {cpu['astrometry_s_per_image']:.2f} s an image, "
        'BENCHMARKS.md "Astrometry once per group": CPU of the whole `astro_reduce '
        "--astrometryonly` process over the night's images, each group's stack solved and its "
        f"frames derived): {cpu['astrometry_s_per_image']:.2f} × "
        f"{night['ten_images_per_night']:.0f} × {_n(a['nights'])} = "
        f"**{_n(cpu['ten_astrometry_s'])} CPU s**."
    )
    if routes:
        w(
            "  The table's routes: "
            + ", ".join(
                f"`{r}` {v:.2f} s → "
                f"{_n(v * night['ten_images_per_night'] * a['nights'] / 3600)} core-hours"
                for r, v in routes.items()
            )
            + "."
        )
    w(
        f"- the DAG in all: {_n(cpu['ten_work_s'])} + {_n(cpu['ten_overhead_s'])} = "
        f"**{_n(cpu['ten_dag_s'])} CPU s** ({_n(cpu['ten_dag_s'] / 3600)} core-hours); with "
        f"astrometry {_n(cpu['ten_work_s'])} + {_n(cpu['ten_overhead_astrometry_s'])} + "
        f"{_n(cpu['ten_astrometry_s'])} = **{_n(cpu['ten_dag_astrometry_s'])} CPU s** "
        f"({_n(cpu['ten_dag_astrometry_s'] / 3600)} core-hours)."
    )
    s3m = runs.get("s3")
    if s3m and s3m is not base and s3m.get("cluster_cpu_s"):
        server = s3m["cpu_by_part"].get("s3", 0.0)
        ratio = (s3m["cluster_cpu_s"] - server) / base["cluster_cpu_s"]
        w(
            f"- with S3 roots (the S3 run, same archive): {_n(s3m['cluster_cpu_s'], 1)} cluster "
            f"CPU s, of which the S3 server's own {server:.1f} (the storage's, not ours): "
            f"({_n(s3m['cluster_cpu_s'], 1)} − {server:.1f}) ÷ {_n(base['cluster_cpu_s'], 1)} = "
            f"**{ratio:.2f}×** the local run's (worker {s3m['cpu_by_part'].get('worker', 0):.1f} "
            f"s against {base['cpu_by_part'].get('worker', 0):.1f}: transfers, hashing, listings; "
            "the scheduler's and API server's longer idle over a longer pass). The CPU-bound "
            f"cores below × {ratio:.2f} for S3 roots: 24 h "
            f"{cores[24]['cpu_bound'] * ratio:.1f}, 4 h {cores[4]['cpu_bound'] * ratio:.1f} "
            "without astrometry (astrometry itself does not touch S3 more)."
        )
    w("")
    w(
        "Worker cores three ways: **measured** = the reduction's CPU ÷ (window × the bench's "
        f"efficiency {cpu['efficiency']:.1%}), as many core-seconds per useful one as on the "
        f"bench, other users included; **quiet** = the same with the others' share removed "
        f"({cpu['efficiency']:.3f} ÷ (1 − {cpu['others']:.2f}) = {cpu['efficiency_quiet']:.1%}); "
        f"**CPU-bound** = the DAG's CPU (reduction + Airflow) ÷ (window × {cpu['target_busy']:.0%} "
        "busy, **assumed** reachable with enough nights in flight: see the run slots). The "
        "first two apply the bench's efficiency to astrometry too, which its long tasks would "
        "beat: take them as upper bounds there."
    )
    w("")
    w("| window | | measured | quiet | CPU-bound |")
    w("|---|---|---|---|---|")
    for hours, c in cores.items():
        secs = hours * 3600
        work_astro = cpu["ten_work_s"] + cpu["ten_astrometry_s"]
        w(
            f"| {hours} h | without astrometry | {_n(cpu['ten_work_s'])} ÷ ({secs} × "
            f"{cpu['efficiency']:.3f}) = **{c['as_measured']:.1f}** | ÷ ({secs} × "
            f"{cpu['efficiency_quiet']:.3f}) = **{c['quiet']:.1f}** | {_n(cpu['ten_dag_s'])} ÷ "
            f"({secs} × {cpu['target_busy']}) = **{c['cpu_bound']:.1f}** |"
        )
        w(
            f"| {hours} h | with astrometry | {_n(work_astro)} ÷ ({secs} × "
            f"{cpu['efficiency']:.3f}) = **{c['as_measured_astrometry']:.0f}** | "
            f"**{c['quiet_astrometry']:.0f}** | {_n(cpu['ten_dag_astrometry_s'])} ÷ ({secs} × "
            f"{cpu['target_busy']}) = **{c['cpu_bound_astrometry']:.0f}** |"
        )
    w("")
    w(
        "Disk and network bandwidth are not limits in these figures (the I/O's CPU is in the "
        f"measured CPU): a 4-hour pass reads {_tb(a['raw_bytes'], 1)} of raw, "
        f"{a['raw_bytes'] / 14400 / 1e6:.0f} MB/s"
        + (
            f", and on S3 {p['s3']['first']['down_per_raw_byte']:.2f}× that as measured "
            f"({a['raw_bytes'] * p['s3']['first']['down_per_raw_byte'] / 14400 / 1e6:.0f} MB/s "
            "down)."
            if p.get("s3") and p["s3"].get("first")
            else "."
        )
    )
    w("")
    w("## Celery against the KubernetesExecutor")
    w("")
    w(
        f"- Celery (measured): warm workers, {_n(cpu['worker_overhead_per_try'], 2)} CPU s of "
        f"the worker per try beyond the reduction, median try {ex['median_task_s']:.2f} s; a "
        f"complete night's run {ex['celery_run_s']:.1f} s (median) through {ex['stages']} "
        "dependent stages."
    )
    w(
        f"- KubernetesExecutor, a pod per try: **assumed** {ex['pod_start_s']:.0f} s from the "
        "pod's creation to the task's start (a cached image on a warm node: ~5 s for the "
        "container, ~5 s for the interpreter) and "
        f"{ex['pod_cpu_s']:.1f} CPU s more a try: the interpreter, Airflow's task runner and the "
        "DAG file imported in a fresh process (measured here: `python -c 'import "
        "airflow.sdk.execution_time.task_runner; import t120_reduce'`, 2.4–2.9 CPU s and "
        "5.9–8.5 s wall, 3 runs on the shared machine), which Celery's forked task processes "
        "inherit. Ten years: "
        f"{ex['pod_cpu_s']:.1f} × {_n(t['tries'])} = **{_n(ex['extra_cpu_s'])} CPU s more** "
        f"({ex['extra_cpu_s'] / cpu['ten_dag_s']:.0%} of the DAG's {_n(cpu['ten_dag_s'])}); "
        f"CPU-bound cores 24 h **{ex['cores_24']:.1f}**, 4 h **{ex['cores_4']:.1f}** (Celery "
        f"{cores[24]['cpu_bound']:.1f}, {cores[4]['cpu_bound']:.1f}); with astrometry "
        f"{ex['cores_24_astrometry']:.0f} and {ex['cores_4_astrometry']:.0f} (Celery "
        f"{cores[24]['cpu_bound_astrometry']:.0f}, {cores[4]['cpu_bound_astrometry']:.0f}). "
        f"A night's run: {ex['celery_run_s']:.1f} + {ex['stages']} × {ex['pod_start_s']:.0f} = "
        f"**{ex['k8s_run_s']:.0f} s**, {ex['k8s_run_s'] / ex['celery_run_s']:.1f}× the run "
        "slots for the same throughput."
    )
    w(
        "- So Celery for the reprocessing: its tasks last seconds, and a pod's start would be "
        "most of each. Pods pay only for long tasks (a night's solves in one task, if the "
        "astrometry tools need an image of their own)."
    )
    w("")
    w("## Run slots and pools")
    w("")
    pools = p["pools"]
    w(
        f"A run's parallelism, measured: a complete night's task seconds ÷ its run's wall = "
        f"{base['complete_run_task_s']:.1f} ÷ {base['complete_run_s']:.1f} = "
        f"**{pools['run_parallelism']:.2f} cores a run** (its groups in parallel, its other "
        "stages one at a time). **assumed** with astrometry: a run solves its "
        f"{night['ten_groups_per_night']:.1f} groups at once."
    )
    w("")
    w(
        "| window | `max_active_runs`, no astrometry | with astrometry | `astrometry` pool | "
        "worker slots (`parallelism`) |"
    )
    w("|---|---|---|---|---|")
    for hours in WINDOWS_H:
        q = pools[hours]
        w(
            f"| {hours} h | {cores[hours]['cpu_bound']:.1f} × {cpu['target_busy']} ÷ "
            f"{pools['run_parallelism']:.2f} = **{q['runs_plain']:.1f}** | "
            f"{cores[hours]['cpu_bound_astrometry']:.1f} × {cpu['target_busy']} ÷ "
            f"{night['ten_groups_per_night']:.1f} = **{q['runs_astrometry']:.1f}** | "
            f"{cores[hours]['cpu_bound_astrometry']:.1f} × {cpu['astrometry_share']:.2f} = "
            f"{q['astrometry_pool']:.1f}, **{max(2, math.ceil(q['astrometry_pool']))}** "
            f"(at least the default 2) | {cores[hours]['cpu_bound_astrometry']:.1f} + 1 = "
            f"**{math.ceil(q['worker_slots'])}** |"
        )
    w("")
    w(
        "- `max_active_runs`: rounded up, at least 2 (the bench's); more only queue tasks. "
        "The `astrometry` pool: astrometry's share of the CPU times the cores, so that the "
        "cosmetic tasks that feed it keep the rest; workers' concurrency: cores + 1 each "
        "(cluster-env.sh), `parallelism` their sum."
    )
    w("")
    w("## Scheduler and metadata database")
    w("")
    w(
        f"Measured over the {base['first_wall_s']:.0f} s first pass ({base['attempts']} tries, "
        f"{sc['bench_tries_per_s']:.2f} a second): scheduler {_n(sc['scheduler_cpu_s'], 1)} CPU s, "
        f"PostgreSQL {_n(sc['db_cpu_s'], 1)}, API server {_n(sc['api_cpu_s'], 1)}: per try "
        f"**{_n(sc['scheduler_per_try'], 3)}**, **{_n(sc['db_per_try'], 3)}** and "
        f"**{_n(sc['api_per_try'], 3)} CPU s**, idle loops included (an upper bound at higher "
        "rates). The scheduler's idle loops alone cost "
        f"{sc['scheduler_idle_core']:.1%} of a core (BENCHMARKS.md, at `6f150fd`): "
        f"{_n(sc.get('scheduler_idle_s'), 1)} s of this pass, so "
        f"({_n(sc['scheduler_cpu_s'], 1)} − {_n(sc.get('scheduler_idle_s'), 1)}) ÷ "
        f"{base['attempts']} = **{_n(sc.get('scheduler_net_per_try'), 3)} CPU s a try** beyond "
        f"them, and a scheduler's cores = {sc['scheduler_idle_core']} + tries/s × "
        f"{_n(sc.get('scheduler_net_per_try'), 3)} (the last column)."
    )
    w("")
    w(
        "| window | tries/s: no astrometry; with | scheduler cores | database cores | "
        "API server cores | scheduler cores, idle apart |"
    )
    w("|---|---|---|---|---|---|")
    for hours in WINDOWS_H:
        r0, r1 = sc[f"tries_per_s_{hours}_plain"], sc[f"tries_per_s_{hours}_astrometry"]
        w(
            f"| {hours} h | {_n(t['tries'])} ÷ {hours * 3600} = **{r0:.2f}**; **{r1:.2f}** | "
            f"{r1:.2f} × {_n(sc['scheduler_per_try'], 3)} = "
            f"**{_n(sc[f'scheduler_cores_{hours}_astrometry'], 2)}** | "
            f"× {_n(sc['db_per_try'], 3)} = **{_n(sc[f'db_cores_{hours}_astrometry'], 2)}** | "
            f"× {_n(sc['api_per_try'], 3)} = **{_n(sc[f'api_cores_{hours}_astrometry'], 2)}** | "
            f"{sc['scheduler_idle_core']} + {r1:.2f} × {_n(sc.get('scheduler_net_per_try'), 3)} "
            f"= **{_n(sc.get(f'scheduler_net_cores_{hours}_astrometry'), 2)}** |"
        )
    w("")
    w(
        f"The metadata database keeps a row per task instance: one ten-year pass writes "
        f"{_n(t['tis_astrometry'])} with astrometry ({_n(t['tis'])} without), and each "
        "reprocessing as many again (clear or `airflow db clean` old runs)."
    )
    w("")
    w("## The rerun")
    w("")
    w(
        f"Measured: the rerun of the current 30 dates took {base['rerun_wall_s']:.0f} s "
        f"({rr['fraction_of_first']:.0%} of the first pass), {base['rerun_attempts']} tries "
        f"(one `list_nights` a date), {_n(base['rerun_cluster_cpu_s'], 1)} cluster CPU s: per "
        f"date {rr['wall_per_date']:.2f} s of wall (2 run slots) and {rr['cpu_per_date']:.2f} "
        f"CPU s. Ten years ({_n(a['dates'])} dates): **{_n(rr['ten_wall_s'] / 60)} minutes** "
        f"with 2 run slots, {_n(rr['ten_cpu_s'])} CPU s, {_n(rr['ten_tries'])} tries."
    )
    w("")
    w("## S3: bytes and requests")
    w("")
    if not s3:
        w("No S3 run in the inputs.")
    else:
        w(
            "Measured on the S3 run: requests from the S3 server's log, bytes from the sizes of "
            f"the objects they name (raw archive {_gb(s3['bench_raw_bytes'])}, "
            f"{s3['bench_frames']} files, {s3['bench_dates']} dates)."
        )
        w("")
        w(
            "| pass | requests (by operation) | down | up | down ÷ raw | up ÷ raw | "
            "ten years: requests | down | up |"
        )
        w("|---|---|---|---|---|---|---|---|---|")
        for label in ("first", "rerun"):
            tr = s3.get(label)
            if not tr:
                continue
            ops = ", ".join(
                f"{k} {v}" for k, v in sorted(tr["by_operation"].items(), key=lambda kv: -kv[1])
            )
            unit = (
                f"{tr['requests_per_unit']:.2f} a frame × {_n(a['frames'])}"
                if label == "first"
                else f"{tr['requests_per_unit']:.1f} a date × {_n(a['dates'])}"
            )
            w(
                f"| {label} | {tr['requests']} ({ops}) | {_gb(tr['bytes_down'])} | "
                f"{_gb(tr['bytes_up'])} | {tr['down_per_raw_byte']:.2f} | "
                f"{tr['up_per_raw_byte']:.2f} | {unit} = **{_n(tr['ten_requests'])}** | "
                f"{tr['down_per_raw_byte']:.2f} × {_tb(a['raw_bytes'], 1)} = "
                f"**{_tb(tr['ten_bytes_down'])}** | **{_tb(tr['ten_bytes_up'])}** |"
            )
        w("")
        first = s3["first"]
        areas = first["by_area"]
        if areas and first.get("raw_bytes_down") is not None:
            gets, heads = areas.get("get raw", 0), areas.get("head raw", 0)
            once = first["down_per_raw_byte"] - first["raw_bytes_down"] / s3["bench_raw_bytes"] + 1
            w(
                f"- the raw archive is fetched {gets / s3['bench_frames']:.2f} times over on a "
                f"first pass: {gets} GETs of raw keys for {s3['bench_frames']} files, "
                f"{_gb(first['raw_bytes_down'])} for {_gb(s3['bench_raw_bytes'])} "
                f"({first['raw_bytes_down'] / s3['bench_raw_bytes']:.2f}×), each after a HEAD "
                f"({heads}: boto3's `download_file` asks for the size first); the products add "
                f"{areas.get('get products', 0)} GETs "
                f"({_gb(first['bytes_down'] - first['raw_bytes_down'])}: masters, records and "
                "index entries read back by later tasks) and "
                f"{areas.get('head products', 0)} HEADs. Fetching each raw frame once (the "
                "night's tasks on one worker, or its science frames kept from `prepare_night`) "
                f"would take the first pass's download from {first['down_per_raw_byte']:.2f} to "
                f"about {once:.2f} bytes per raw byte."
            )
        w(
            f"- products: {s3['products_per_raw_byte']:.2f} bytes per raw byte (listed after the "
            f"first pass; local run {p['products_per_raw_byte']:.2f}): ten years "
            f"**{_tb(s3['ten_products_bytes'])}** beside the raw."
        )
        counters = s3.get("storage_counters") or {}
        if any(counters.values()):
            w(
                '- the pipeline\'s own counters (`manifest["storage"]["total"]`, summed over the '
                "manifests each pass wrote): "
                + "; ".join(
                    f"{k}: {c['requests']} requests, {_gb(c['bytes_down'])} down, "
                    f"{_gb(c['bytes_up'])} up ({c['nights']} manifests)"
                    for k, c in counters.items()
                    if c
                )
                + "."
            )
        else:
            w(
                '- the pipeline\'s own counters (`manifest["storage"]["total"]`): – (not in the '
                "manifests of the code measured; the bench sums them when they are)."
            )
        w(
            "- **assumed**: a first pass's requests scale with frames, a rerun's with dates "
            "(its cheap check lists each night), bytes with the raw volume."
        )
    w("")
    ten = p["tenfold"]
    w("## Ten times the archive")
    w("")
    w(
        f"Everything above is linear in nights and frames. Tenfold, with astrometry: "
        f"**{ten[24]['cores_astrometry']:.0f}** worker cores for 24 h, "
        f"**{ten[4]['cores_astrometry']:.0f}** for 4 h; the scheduler at "
        f"{ten[24]['tries_per_s']:.1f} tries/s (24 h) or {ten[4]['tries_per_s']:.1f} (4 h) needs "
        f"**{ten[24]['scheduler_cores']:.1f}** or **{ten[4]['scheduler_cores']:.1f}** cores at "
        f"the measured cost ({ten[24]['scheduler_net_cores']:.1f} or "
        f"{ten[4]['scheduler_net_cores']:.1f} with its idle loops apart), the database "
        f"{ten[24]['db_cores']:.1f} or "
        f"{ten[4]['db_cores']:.1f}, the API server {ten[24]['api_cores']:.1f} or "
        f"{ten[4]['api_cores']:.1f}; a pass writes {_n(p['tenfold_rows'])} task-instance rows; "
        f"a rerun of the current archive takes {_n(ten[24]['rerun_wall_s'] / 3600, 1)} h with 2 "
        "run slots."
    )
    w("")
    w("What to change first, in order:")
    w("")
    w(
        f"1. **The scheduler's load per try.** One scheduler loop is one process: at "
        f"{ten[4]['scheduler_net_cores']:.1f}–{ten[4]['scheduler_cores']:.1f} cores it cannot "
        "keep up with a 4-hour tenfold pass (today's archive in 4 h: "
        f"{sc.get('scheduler_net_cores_4_astrometry') or 0:.2f}–"
        f"{sc['scheduler_cores_4_astrometry'] or 0:.2f} of a core). "
        "Fewer, longer tries first: one `reduce_group` try for several groups of a "
        "night (or the night's groups in one task with the CLI's workers), the cheap check of "
        "many dates in one `list_nights`; then a second scheduler (Airflow 3 runs several "
        "against PostgreSQL)."
    )
    w(
        f"2. **Airflow's CPU a try** ({cpu['overhead_per_try']:.2f} s against "
        f"{cpu['cli_per_frame'] * 1000:.0f} ms of reduction a frame) is "
        f"{cpu['ten_overhead_s'] / max(cpu['ten_work_s'], 1):.1f}× the reduction without "
        "astrometry: the same remedy (fewer tries) before more worker cores."
    )
    w(
        "3. **Astrometry on workers of its own** (a Celery queue, the `astrometry` pool sized as "
        f"above): it is {cpu['astrometry_share']:.0%} of the CPU with `{route}`"
        + (
            f"; the costliest route, `{max(routes, key=routes.get)}`, takes "
            f"{max(routes.values()) / cpu['astrometry_s_per_image']:.1f}× its CPU an image."
            if routes
            else "."
        )
    )
    w(
        "4. **Run slots** from the table above rather than the bench's 2, and **the rerun's "
        "check**: it walks every date, so a current tenfold archive's rerun takes hours; list "
        "the products once per run (the night index) instead of a run per date."
    )
    w(
        "5. **The metadata database**: PostgreSQL sized for the rows above, old runs cleaned "
        "after each reprocessing."
    )
    w("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "results", nargs="*", type=Path, help="results JSON files (default: the 30-night ones)"
    )
    parser.add_argument("--benchmarks", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument(
        "--astrometry-s-per-image",
        type=float,
        help=f"seconds per image (default: the `{DEFAULT_ROUTE}` row of BENCHMARKS.md)",
    )
    parser.add_argument("--route", default=DEFAULT_ROUTE, help="astrometry route of the table")
    parser.add_argument("--nights", type=int, default=TEN_YEARS["nights"])
    parser.add_argument("--frames", type=int, default=TEN_YEARS["frames"])
    parser.add_argument("--raw-tb", type=float, default=TEN_YEARS["raw_bytes"] / 1e12)
    parser.add_argument("--dates", type=int, default=TEN_YEARS["dates"], help="dates walked")
    parser.add_argument("--pod-start-s", type=float, default=10.0, help="assumed, per pod")
    parser.add_argument(
        "--pod-cpu-s", type=float, default=2.6, help="per pod (measured: see SCALING.md)"
    )
    parser.add_argument("--target-busy", type=float, default=0.8)
    parser.add_argument("--out", type=Path, default=REPO / "SCALING.md")
    parser.add_argument("--json", type=Path, help="also write the derived numbers here")
    args = parser.parse_args(argv)
    paths = args.results or [p for p in DEFAULT_RESULTS if p.is_file()]
    if not paths:
        raise SystemExit("no results: run python -m bench.cluster_backfill --nights 30 first")
    runs = {}
    for path in paths:
        results = json.loads(path.read_text())
        m = measured(results)
        runs[m["name"]] = m
    routes = astrometry_routes(args.benchmarks.read_text()) if args.benchmarks.is_file() else {}
    seconds = args.astrometry_s_per_image or routes.get(args.route)
    if seconds is None:
        raise SystemExit(f"no astrometry figure for {args.route}: pass --astrometry-s-per-image")
    archive = {
        "nights": args.nights,
        "frames": args.frames,
        "raw_bytes": args.raw_tb * 1e12,
        "dates": args.dates,
    }
    derived = plan(
        runs,
        seconds,
        pod_start_s=args.pod_start_s,
        pod_cpu_s=args.pod_cpu_s,
        target_busy=args.target_busy,
        archive=archive,
    )
    args.out.write_text(render(runs, derived, routes, args.route))
    if args.json:
        args.json.write_text(json.dumps(derived, indent=1, default=str) + "\n")
    c = derived["cores"]
    print(
        f"{args.out}: cores for 24 h / 4 h: {c[24]['cpu_bound']:.1f} / {c[4]['cpu_bound']:.1f} "
        f"(astrometry: {c[24]['cpu_bound_astrometry']:.0f} / {c[4]['cpu_bound_astrometry']:.0f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
