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
# Ten years of the T120 (the figures): observed nights, 1024² frames, raw bytes.
TEN_YEARS = {"nights": 1500, "frames": 225_000, "raw_bytes": 0.5e12}
WINDOWS_H = (24, 4)
# The route a production run would use unless told: SCAMP against a local catalogue.
DEFAULT_ROUTE = "--scamp"


# ---------------------------------------------------------------------------------------------
# Inputs


def astrometry_routes(benchmarks: str) -> dict[str, float]:
    """Route -> median seconds per image, from the table under "### Astrometry per route"."""
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
    pod_cpu_s: float = 2.0,
    target_busy: float = 0.8,
    archive: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The derived numbers, from the measured runs (`measured` of each; "local" is the base,
    "s3" adds the bytes and requests). `groups_per_night`, `science_per_night`: the bench's
    complete night (NightSpec's default: 5 groups of 5 science frames, 36 calibrations)."""
    archive = archive or TEN_YEARS
    base = runs.get("local") or next(iter(runs.values()))
    out: dict[str, Any] = {"archive": archive, "inputs": {}}
    frames_per_night = base["frames"] / base["data_nights"]
    bytes_per_frame = base["raw_bytes"] / base["frames"]
    ten_frames_per_night = archive["frames"] / archive["nights"]
    scale = ten_frames_per_night / frames_per_night  # a 10-year night is `scale` bench nights
    out["night"] = {
        "bench_frames_per_night": frames_per_night,
        "bench_bytes_per_frame": bytes_per_frame,
        "ten_frames_per_night": ten_frames_per_night,
        "scale": scale,
        "ten_raw_bytes_from_frames": archive["frames"] * bytes_per_frame,
    }
    night = out["night"]
    complete_frames = (
        base["complete_frames"] / base["complete_nights"]
        if base.get("complete_frames")
        else frames_per_night
    )
    night["bench_complete_frames"] = complete_frames
    ten_groups = groups_per_night * ten_frames_per_night / complete_frames
    night["ten_groups_per_night"] = ten_groups
    science_share = science_per_night / complete_frames
    night["ten_images_per_night"] = ten_frames_per_night * science_share + ten_groups

    # CPU: the command's (work) per frame, and the DAG's per frame (work + Airflow)
    cli_per_frame = base["cli_cpu_s"] / (base["complete_frames"] or base["cli_nights"] * 61)
    dag_per_frame = base["cluster_cpu_s"] / base["frames"]
    work_in_pass = cli_per_frame * base["frames"]
    overhead_per_attempt = (base["cluster_cpu_s"] - work_in_pass) / base["attempts"]
    fixed_tis = base["complete_run_tis"] - groups_per_night
    ten_tis_per_night = fixed_tis + ten_groups
    ten_tis_astro = fixed_tis + 2 * ten_groups - 1  # a solve per group, not the one empty
    out["cpu"] = {
        "cli_per_frame": cli_per_frame,
        "dag_per_frame": dag_per_frame,
        "work_in_pass": work_in_pass,
        "overhead_per_attempt": overhead_per_attempt,
        "fixed_tis_per_night": fixed_tis,
        "ten_tis_per_night": ten_tis_per_night,
        "ten_tis_per_night_astrometry": ten_tis_astro,
        "ten_tis": ten_tis_per_night * archive["nights"],
        "ten_tis_astrometry": ten_tis_astro * archive["nights"],
        "ten_work_s": cli_per_frame * archive["frames"],
        "ten_overhead_s": overhead_per_attempt * ten_tis_per_night * archive["nights"],
        "ten_astrometry_s": astrometry_s * night["ten_images_per_night"] * archive["nights"],
        "astrometry_s_per_image": astrometry_s,
        "efficiency": base["efficiency"],
        "busy": base["busy"],
        "target_busy": target_busy,
    }
    cpu = out["cpu"]
    cpu["ten_dag_s"] = cpu["ten_work_s"] + cpu["ten_overhead_s"]
    cpu["ten_dag_astro_s"] = (
        cpu["ten_dag_s"]
        + cpu["ten_astrometry_s"]
        + overhead_per_attempt * (ten_tis_astro - ten_tis_per_night) * archive["nights"]
    )
    cores = {}
    for hours in WINDOWS_H:
        seconds = hours * 3600
        cores[hours] = {
            # as measured: useful work per core-second was `efficiency` on the bench
            "as_measured": cpu["ten_work_s"] / (seconds * base["efficiency"]),
            # the DAG's measured CPU (work + Airflow) on cores kept `target_busy` busy
            "cpu_bound": cpu["ten_dag_s"] / (seconds * target_busy),
            "cpu_bound_astrometry": cpu["ten_dag_astro_s"] / (seconds * target_busy),
            "as_measured_astrometry": (cpu["ten_work_s"] + cpu["ten_astrometry_s"])
            / (seconds * base["efficiency"]),
        }
    out["cores"] = cores

    # Celery (warm workers, measured) against Kubernetes (a pod per task instance, assumed)
    run_concurrency = base["complete_run_task_s"] / base["complete_run_s"]
    stages = 5  # list_nights -> prepare_night -> plan_groups -> reduce_group -> publish
    out["executor"] = {
        "celery_overhead_per_ti_s": overhead_per_attempt,
        "k8s_pod_start_s": pod_start_s,
        "k8s_pod_cpu_s": pod_cpu_s,
        "k8s_extra_cpu_s": pod_cpu_s * cpu["ten_tis"],
        "k8s_extra_cpu_astro_s": pod_cpu_s * cpu["ten_tis_astrometry"],
        "k8s_extra_slot_s": pod_start_s * cpu["ten_tis"],
        "k8s_run_s": base["complete_run_s"] + stages * pod_start_s,
        "celery_run_s": base["complete_run_s"],
        "stages": stages,
        "median_task_s": base["task_s_median"],
    }
    ex = out["executor"]
    for hours in WINDOWS_H:
        ex[f"k8s_cores_{hours}"] = (cpu["ten_dag_s"] + ex["k8s_extra_cpu_s"]) / (
            hours * 3600 * target_busy
        )

    # Pools and run slots
    pools = {}
    for hours in WINDOWS_H:
        seconds = hours * 3600
        c_plain = cores[hours]["cpu_bound"]
        c_astro = cores[hours]["cpu_bound_astrometry"]
        astro_share = cpu["ten_astrometry_s"] / cpu["ten_dag_astro_s"]
        # nights in flight: Little's law, nights per second × a night's run time
        nights_per_s = archive["nights"] / seconds
        run_s_plain = base["complete_run_s"] * scale
        pools[hours] = {
            "nights_per_s": nights_per_s,
            "run_s_plain": run_s_plain,
            "runs_in_flight_plain": nights_per_s * run_s_plain,
            "runs_by_concurrency_plain": c_plain / (run_concurrency * scale),
            "astrometry_pool": c_astro * astro_share,
            "astro_share": astro_share,
            "worker_slots_astro": c_astro + 1,
        }
    out["pools"] = pools
    out["run_concurrency"] = run_concurrency

    # Scheduler and metadata database
    sched = base["cpu_by_part"].get("scheduler")
    db = base["cpu_by_part"].get("postgres")
    api = base["cpu_by_part"].get("api-server")
    out["scheduler"] = {
        "bench_ti_per_s": base["attempts"] / base["first_wall_s"],
        "scheduler_cpu_s": sched,
        "db_cpu_s": db,
        "api_cpu_s": api,
        "scheduler_cpu_per_ti": sched / base["attempts"] if sched else None,
        "db_cpu_per_ti": db / base["attempts"] if db else None,
        "api_cpu_per_ti": api / base["attempts"] if api else None,
    }
    sc = out["scheduler"]
    for hours in WINDOWS_H:
        for label, tis in (("plain", cpu["ten_tis"]), ("astrometry", cpu["ten_tis_astrometry"])):
            rate = tis / (hours * 3600)
            sc[f"ti_per_s_{hours}_{label}"] = rate
            if sc["scheduler_cpu_per_ti"]:
                sc[f"scheduler_cores_{hours}_{label}"] = rate * sc["scheduler_cpu_per_ti"]
            if sc["db_cpu_per_ti"]:
                sc[f"db_cores_{hours}_{label}"] = rate * sc["db_cpu_per_ti"]
            if sc["api_cpu_per_ti"]:
                sc[f"api_cores_{hours}_{label}"] = rate * sc["api_cpu_per_ti"]

    # S3: the bench's traffic per raw byte and per frame, scaled to the archive
    s3run = runs.get("s3")
    if s3run and s3run["s3"].get("first"):
        s3: dict[str, Any] = {
            "bench_raw_bytes": s3run["raw_bytes"],
            "bench_frames": s3run["frames"],
        }
        for label in ("first", "rerun"):
            t = s3run["s3"].get(label)
            if not t:
                continue
            s3[label] = {
                "requests": t["requests"],
                "by_operation": t["by_operation"],
                "bytes_down": t["bytes_down"],
                "bytes_up": t["bytes_up"],
                "down_per_raw_byte": t["bytes_down"] / s3run["raw_bytes"],
                "up_per_raw_byte": t["bytes_up"] / s3run["raw_bytes"],
                "requests_per_frame": t["requests"] / s3run["frames"],
                "requests_per_date": t["requests"] / s3run["dates"],
                "ten_bytes_down": t["bytes_down"] / s3run["raw_bytes"] * archive["raw_bytes"],
                "ten_bytes_up": t["bytes_up"] / s3run["raw_bytes"] * archive["raw_bytes"],
                "ten_requests": (
                    t["requests"] / s3run["frames"] * archive["frames"]
                    if label == "first"
                    else t["requests"] / s3run["dates"] * archive["nights"]
                ),
            }
        s3["products_per_raw_byte"] = (s3run["products_bytes"] or 0) / s3run["raw_bytes"]
        s3["ten_products_bytes"] = s3["products_per_raw_byte"] * archive["raw_bytes"]
        s3["storage_counters"] = s3run["storage_counters"]
        out["s3"] = s3
    out["products_per_raw_byte_local"] = (base["products_bytes"] or 0) / base["raw_bytes"]

    # Ten times the archive
    ten = {}
    for hours in WINDOWS_H:
        ten[hours] = {
            "cores": cores[hours]["cpu_bound"] * 10,
            "cores_astrometry": cores[hours]["cpu_bound_astrometry"] * 10,
            "ti_per_s": sc[f"ti_per_s_{hours}_astrometry"] * 10,
            "scheduler_cores": (sc.get(f"scheduler_cores_{hours}_astrometry") or 0) * 10,
            "db_cores": (sc.get(f"db_cores_{hours}_astrometry") or 0) * 10,
        }
    out["tenfold"] = ten
    out["tenfold_tis_rows"] = cpu["ten_tis_astrometry"] * 10
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
    a, night, cpu = p["archive"], p["night"], p["cpu"]
    lines: list[str] = []
    w = lines.append
    w("# Scaling: ten years of T120 nights")
    w("")
    w(
        "Made by `python -m bench.scaling` from the measured 30-night archive runs of "
        '`python -m bench.cluster_backfill --nights 30` (BENCHMARKS.md, "A 30-night archive, '
        'local and S3 roots"). Every number below is arithmetic on a measured figure, named '
        "with its source; assumptions are marked **assumed**. Regenerate after a new run: "
        "`make bench-archive` then `.venv/bin/python -m bench.scaling`."
    )
    w("")
    w("## The measured runs")
    w("")
    w(
        "| run | commit, date | dates / nights with data | frames (raw GB) | first pass s | "
        "rerun s | task instances: first / rerun (tries) | retries | cluster CPU s: first / "
        "rerun | busy (others) | CLI CPU s (complete nights) | efficiency |"
    )
    w("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, m in runs.items():
        w(
            f"| {name} | `{m['commit']}`, {m['date'][:16]} | {m['dates']} / {m['data_nights']} | "
            f"{m['frames']} ({m['raw_bytes'] / 1e9:.2f}) | {m['first_wall_s']:.0f} | "
            f"{m['rerun_wall_s']:.0f} | {m['task_instances']} / {m['rerun_task_instances']} "
            f"({m['attempts']} / {m['rerun_attempts']}) | {m['retries']} / {m['rerun_retries']} | "
            f"{_n(m['cluster_cpu_s'])} / {_n(m['rerun_cluster_cpu_s'])} | "
            f"{m['busy']:.0%} ({m['others']:.0%}) | {m['cli_cpu_s']:.1f} ({m['cli_nights']}) | "
            f"{m['efficiency']:.1%} |"
        )
    w("")
    w(
        f"Machine: {base['cores']} cores. The plan is taken from the **{base['name']}** run "
        "(CPU, task instances, durations); the S3 run adds the bytes and requests. "
        '"Cluster CPU" is every process of the cluster (scheduler, API server, dag-processor, '
        "triggerer, Celery worker and its task processes, PostgreSQL, Redis, and S3's moto "
        'server in the S3 run) over the pass, from /proc; "efficiency" is BENCHMARKS.md\'s: the '
        "CLI's CPU seconds on the complete nights ÷ (first pass wall × cores)."
    )
    parts = base["cpu_by_part"]
    if parts:
        w(
            "Cluster CPU of the first pass by part: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(parts.items(), key=lambda kv: -kv[1]))
            + "."
        )
    w("")
    w("## The archive, and a 10-year night in bench nights")
    w("")
    w(
        f"- **assumed** (the issue): {_n(a['nights'])} observed nights, {_n(a['frames'])} "
        f"frames of 1024², {_tb(a['raw_bytes'], 1)} raw."
    )
    w(
        f"- bench: {base['frames']} raw files in {base['data_nights']} nights with data = "
        f"**{night['bench_frames_per_night']:.1f} frames a night**; "
        f"{base['raw_bytes'] / 1e9:.3f} GB ÷ {base['frames']} = "
        f"**{night['bench_bytes_per_frame'] / 1e6:.2f} MB a frame**, so {_n(a['frames'])} frames "
        f"= {_tb(night['ten_raw_bytes_from_frames'])} (the issue's 0.5 TB agrees)."
    )
    w(
        f"- a 10-year night: {_n(a['frames'])} ÷ {_n(a['nights'])} = "
        f"**{night['ten_frames_per_night']:.0f} frames** = {night['scale']:.2f} bench nights. "
        f"**assumed**: its groups keep the bench's 5 science frames each and its science share "
        f"(25 of {night['bench_complete_frames']:.0f} frames): "
        f"5 × {night['ten_frames_per_night']:.0f} ÷ {night['bench_complete_frames']:.0f} = "
        f"**{night['ten_groups_per_night']:.1f} groups**, and "
        f"{night['ten_frames_per_night']:.0f} × 25/{night['bench_complete_frames']:.0f} + "
        f"{night['ten_groups_per_night']:.1f} stacks = **{night['ten_images_per_night']:.0f} "
        "images to solve** a night. More frames per group would mean fewer task instances "
        "(the counts below are then upper bounds)."
    )
    w("")
    w("## CPU and worker cores")
    w("")
    cli_frames = base["complete_frames"] or base["cli_nights"] * 61
    w(
        f"- the work (the CLI on the {base['cli_nights']} complete nights): "
        f"{base['cli_cpu_s']:.1f} CPU s ÷ {cli_frames} frames = "
        f"**{cpu['cli_per_frame'] * 1000:.1f} ms a frame**; ten years: "
        f"{cpu['cli_per_frame']:.4f} × {_n(a['frames'])} = **{_n(cpu['ten_work_s'])} CPU s** "
        f"({cpu['ten_work_s'] / 3600:.1f} core-hours)."
    )
    w(
        f"- the DAG: {_n(base['cluster_cpu_s'], 1)} cluster CPU s for the first pass's "
        f"{base['frames']} frames = {cpu['dag_per_frame'] * 1000:.0f} ms a frame; less the work "
        f"({cpu['cli_per_frame']:.4f} × {base['frames']} = {cpu['work_in_pass']:.1f} s) over its "
        f"{base['attempts']} task tries = **{cpu['overhead_per_attempt']:.2f} CPU s of Airflow a "
        "task instance** (task process start, supervisor, scheduler, API server, database; "
        "the idle loops of the pass's wall included)."
    )
    w(
        f"- task instances: the bench's complete night has {base['complete_run_tis']:.0f} "
        f"(median), 5 of them `reduce_group`: {cpu['fixed_tis_per_night']:.0f} a night + 1 a "
        f"group; a 10-year night {cpu['fixed_tis_per_night']:.0f} + "
        f"{night['ten_groups_per_night']:.1f} = **{cpu['ten_tis_per_night']:.1f}** "
        f"(with astrometry one `solve_group` a group more, less the one empty instance: "
        f"**{cpu['ten_tis_per_night_astrometry']:.1f}**); ten years: "
        f"**{_n(cpu['ten_tis'])}** task instances (**{_n(cpu['ten_tis_astrometry'])}** with "
        "astrometry)."
    )
    w(
        f"- Airflow's CPU for ten years: {cpu['overhead_per_attempt']:.2f} × "
        f"{_n(cpu['ten_tis'])} = **{_n(cpu['ten_overhead_s'])} CPU s**; DAG total "
        f"{_n(cpu['ten_work_s'])} + {_n(cpu['ten_overhead_s'])} = "
        f"**{_n(cpu['ten_dag_s'])} CPU s** ({cpu['ten_dag_s'] / 3600:.0f} core-hours)."
    )
    w(
        f"- astrometry (route `{route}`, {cpu['astrometry_s_per_image']:.2f} s an image, "
        'BENCHMARKS.md "Astrometry per route": wall of one image at a time, taken as its CPU, '
        "the tools being single-threaded): "
        f"{cpu['astrometry_s_per_image']:.2f} × {night['ten_images_per_night']:.0f} × "
        f"{_n(a['nights'])} = **{_n(cpu['ten_astrometry_s'])} CPU s**; with its task "
        f"instances' Airflow CPU, the DAG with astrometry: **{_n(cpu['ten_dag_astro_s'])} CPU s**"
        f" ({cpu['ten_dag_astro_s'] / 3600:.0f} core-hours)."
    )
    if routes:
        others = ", ".join(
            f"`{r}` {s:.2f} s → {_n(s * night['ten_images_per_night'] * a['nights'] / 3600)} "
            "core-hours"
            for r, s in routes.items()
        )
        w(f"  The other routes: {others}.")
    w("")
    w(
        "Worker cores, two ways: **as measured** = work ÷ (window × the bench's efficiency "
        f"{cpu['efficiency']:.1%}), i.e. as many idle-and-overhead core-seconds per useful one "
        "as on the bench; **CPU-bound** = the DAG's CPU (work + Airflow) ÷ (window × "
        f"{cpu['target_busy']:.0%} busy, **assumed** reachable once enough nights run at once: "
        f"the bench's first pass kept the machine {cpu['busy']:.0%} busy on {base['cores']} "
        "cores with 2 run slots)."
    )
    w("")
    w(
        "| window | without astrometry: as measured | CPU-bound | "
        "with astrometry: as measured | CPU-bound |"
    )
    w("|---|---|---|---|---|")
    for hours, c in p["cores"].items():
        secs = hours * 3600
        w(
            f"| {hours} h | {_n(cpu['ten_work_s'])} ÷ ({secs} × {cpu['efficiency']:.3f}) = "
            f"**{c['as_measured']:.1f}** | {_n(cpu['ten_dag_s'])} ÷ ({secs} × "
            f"{cpu['target_busy']}) = **{c['cpu_bound']:.1f}** | "
            f"({_n(cpu['ten_work_s'])} + {_n(cpu['ten_astrometry_s'])}) ÷ ({secs} × "
            f"{cpu['efficiency']:.3f}) = **{c['as_measured_astrometry']:.0f}** | "
            f"{_n(cpu['ten_dag_astro_s'])} ÷ ({secs} × {cpu['target_busy']}) = "
            f"**{c['cpu_bound_astrometry']:.0f}** |"
        )
    w("")
    w(
        'The "as measured" column is what the bench\'s shape would cost (2 nights in flight, '
        "short tasks waiting on the scheduler); the CPU-bound one is reachable only with enough "
        "run slots (next sections). Reading the products back (the rerun) and the I/O are in "
        "the measured CPU; disk or network bandwidth is not a limit in these figures."
    )
    w("")
    ex = p["executor"]
    w("## Celery against the KubernetesExecutor")
    w("")
    w(
        f"- Celery (measured): warm workers; a task instance costs "
        f"{ex['celery_overhead_per_ti_s']:.2f} CPU s of Airflow (above) and its median try "
        f"lasts {ex['median_task_s']:.2f} s; a complete night's run takes "
        f"{ex['celery_run_s']:.1f} s (median) through {ex['stages']} dependent stages."
    )
    w(
        f"- KubernetesExecutor: one pod per task instance. **assumed**: "
        f"{ex['k8s_pod_start_s']:.0f} s from the pod's creation to the task's start (image "
        f"cached, a warm node) and {ex['k8s_pod_cpu_s']:.1f} CPU s to start the interpreter, "
        "import Airflow and parse the DAG file in the pod (on top of Celery's per-task cost). "
        f"Ten years: {ex['k8s_pod_cpu_s']:.1f} × {_n(p['cpu']['ten_tis'])} = "
        f"**{_n(ex['k8s_extra_cpu_s'])} CPU s more** "
        f"({ex['k8s_extra_cpu_s'] / p['cpu']['ten_dag_s']:.0%} of the DAG's "
        f"{_n(p['cpu']['ten_dag_s'])}); cores, CPU-bound: 24 h **{ex['k8s_cores_24']:.1f}**, "
        f"4 h **{ex['k8s_cores_4']:.1f}** (Celery {p['cores'][24]['cpu_bound']:.1f} and "
        f"{p['cores'][4]['cpu_bound']:.1f}); each night's run "
        f"{ex['celery_run_s']:.1f} + {ex['stages']} × {ex['k8s_pod_start_s']:.0f} = "
        f"**{ex['k8s_run_s']:.0f} s**, so {ex['k8s_run_s'] / ex['celery_run_s']:.1f}× the run "
        "slots for the same throughput."
    )
    w(
        "- So: Celery for the reprocessing (tasks of about a second, where a pod's start would "
        "dominate); pods only for the astrometry if its tools need their own image, and then "
        "one pod per night's solves, not per group."
    )
    w("")
    w("## Pools and run slots")
    w("")
    w(
        f"A run's own parallelism, measured: a complete night's task seconds ÷ its run time = "
        f"{base['complete_run_task_s']:.1f} ÷ {base['complete_run_s']:.1f} = "
        f"**{p['run_concurrency']:.2f} cores busy per run**."
    )
    w("")
    w(
        "| window | nights/s | a 10-year night's run (no astrometry) | runs in flight "
        "(Little) | runs to fill the CPU-bound cores | astrometry pool | worker slots, with "
        "astrometry |"
    )
    w("|---|---|---|---|---|---|---|")
    for hours, q in p["pools"].items():
        w(
            f"| {hours} h | {_n(a['nights'])} ÷ {hours * 3600} = {q['nights_per_s']:.4f} | "
            f"{base['complete_run_s']:.1f} × {night['scale']:.2f} = {q['run_s_plain']:.0f} s | "
            f"{q['nights_per_s']:.4f} × {q['run_s_plain']:.0f} = "
            f"**{q['runs_in_flight_plain']:.1f}** | "
            f"{p['cores'][hours]['cpu_bound']:.1f} ÷ ({p['run_concurrency']:.2f} × "
            f"{night['scale']:.2f}) = **{q['runs_by_concurrency_plain']:.1f}** | "
            f"{p['cores'][hours]['cpu_bound_astrometry']:.0f} × {q['astro_share']:.2f} = "
            f"**{q['astrometry_pool']:.0f}** | **{q['worker_slots_astro']:.0f}** |"
        )
    w("")
    w(
        "- `max_active_runs` (the backfill's): the larger of the two run counts, rounded up, "
        "with a margin for the slowest nights; the bench used 2 on 2 cores. Above the run "
        "count that fills the cores, more slots only queue tasks."
    )
    w(
        "- the `astrometry` pool: astrometry's share of the CPU "
        "(astrometry CPU ÷ the DAG's with astrometry) of the cores; its tasks are the "
        "long ones, so the rest of the cores must stay free for the cosmetic tasks that feed "
        "it. `parallelism` and the workers' concurrency: the cores + 1 per worker (cluster-env.sh)."
    )
    w("")
    sc = p["scheduler"]
    w("## Scheduler and metadata database")
    w("")
    w(
        f"Measured: {base['attempts']} task tries in the {base['first_wall_s']:.0f} s first "
        f"pass = **{sc['bench_ti_per_s']:.2f} tries/s**; scheduler {_n(sc['scheduler_cpu_s'], 1)} "
        f"CPU s, PostgreSQL {_n(sc['db_cpu_s'], 1)}, API server {_n(sc['api_cpu_s'], 1)} over the "
        f"pass, i.e. per try: scheduler **{_n(sc['scheduler_cpu_per_ti'], 3)} s**, database "
        f"**{_n(sc['db_cpu_per_ti'], 3)} s**, API server **{_n(sc['api_cpu_per_ti'], 3)} s** "
        "(their idle loops included, so an upper bound per try at higher rates)."
    )
    w("")
    w(
        "| window | task instances/s (no astrometry; with) | scheduler cores | database "
        "cores | API server cores |"
    )
    w("|---|---|---|---|---|")
    for hours in WINDOWS_H:
        r0, r1 = sc[f"ti_per_s_{hours}_plain"], sc[f"ti_per_s_{hours}_astrometry"]
        w(
            f"| {hours} h | {_n(p['cpu']['ten_tis'])} ÷ {hours * 3600} = **{r0:.2f}**; "
            f"**{r1:.2f}** | {r1:.2f} × {_n(sc['scheduler_cpu_per_ti'], 3)} = "
            f"**{_n(sc.get(f'scheduler_cores_{hours}_astrometry'), 2)}** | "
            f"{r1:.2f} × {_n(sc['db_cpu_per_ti'], 3)} = "
            f"**{_n(sc.get(f'db_cores_{hours}_astrometry'), 2)}** | "
            f"{r1:.2f} × {_n(sc['api_cpu_per_ti'], 3)} = "
            f"**{_n(sc.get(f'api_cores_{hours}_astrometry'), 2)}** |"
        )
    w("")
    w(
        f"The metadata database keeps a row per task instance (and per try): ten years of one "
        f"pass are {_n(p['cpu']['ten_tis_astrometry'])} rows with astrometry; every "
        "reprocessing adds as many (`airflow db clean` of old runs belongs in the plan)."
    )
    w("")
    w("## S3: bytes and requests")
    w("")
    s3 = p.get("s3")
    if not s3:
        w("No S3 run in the inputs.")
    else:
        w(
            f"Measured on the S3 run (requests from the S3 server's log, bytes from the sizes of "
            f"the objects they name; raw archive {_gb(s3['bench_raw_bytes'])}, "
            f"{s3['bench_frames']} files):"
        )
        w("")
        w(
            "| pass | requests (by operation) | down | up | down ÷ raw | up ÷ raw | "
            "ten years: requests | down | up |"
        )
        w("|---|---|---|---|---|---|---|---|---|")
        for label in ("first", "rerun"):
            t = s3.get(label)
            if not t:
                continue
            ops = ", ".join(
                f"{k} {v}" for k, v in sorted(t["by_operation"].items(), key=lambda kv: -kv[1])
            )
            per = (
                f"{t['requests_per_frame']:.2f} a frame × {_n(a['frames'])}"
                if label == "first"
                else f"{t['requests_per_date']:.1f} a date × {_n(a['nights'])}"
            )
            w(
                f"| {label} | {t['requests']} ({ops}) | {_gb(t['bytes_down'])} | "
                f"{_gb(t['bytes_up'])} | {t['down_per_raw_byte']:.2f} | "
                f"{t['up_per_raw_byte']:.2f} | {per} = **{_n(t['ten_requests'])}** | "
                f"{t['down_per_raw_byte']:.2f} × 0.5 TB = **{_tb(t['ten_bytes_down'])}** | "
                f"**{_tb(t['ten_bytes_up'])}** |"
            )
        w("")
        w(
            f"- products: {s3['products_per_raw_byte']:.2f} bytes per raw byte (the products "
            f"listed after the first pass), ten years **{_tb(s3['ten_products_bytes'])}** "
            f"beside the 0.5 TB raw (local run: {p['products_per_raw_byte_local']:.2f})."
        )
        counters = s3.get("storage_counters") or {}
        if any(counters.values()):
            w(
                '- the pipeline\'s own counters (`manifest["storage"]["total"]`, summed over '
                "the manifests each pass wrote): "
                + "; ".join(
                    f"{k}: {c['requests']} requests, {_gb(c['bytes_down'])} down, "
                    f"{_gb(c['bytes_up'])} up ({c['nights']} manifests)"
                    for k, c in counters.items()
                    if c
                )
            )
        else:
            w(
                '- the pipeline\'s own counters (`manifest["storage"]["total"]`): – (not in '
                "the manifests of the code measured; the bench sums them when present)."
            )
        w(
            "- **assumed**: requests scale with frames on a first pass and with dates on a "
            "rerun (a rerun's cheap check lists each night); bytes with the raw volume."
        )
    w("")
    ten = p["tenfold"]
    w("## Ten times the archive")
    w("")
    w(
        f"Tenfold ({_n(a['nights'] * 10)} nights or ten times the frames, astrometry on): "
        f"24 h needs **{ten[24]['cores_astrometry']:.0f}** worker cores CPU-bound "
        f"(4 h: {ten[4]['cores_astrometry']:.0f}); the scheduler sees "
        f"**{ten[24]['ti_per_s']:.1f}** "
        f"task instances/s over 24 h (4 h: **{ten[4]['ti_per_s']:.1f}**), for about "
        f"{ten[24]['scheduler_cores']:.2f} (4 h: {ten[4]['scheduler_cores']:.2f}) scheduler "
        f"cores and {ten[24]['db_cores']:.2f} ({ten[4]['db_cores']:.2f}) database cores at the "
        "bench's cost per "
        f"try; and a pass writes {_n(p['tenfold_tis_rows'])} task-instance rows."
    )
    w("")
    w("What to change first, in order:")
    w("")
    w(
        "1. **Fewer, larger task instances**: the Airflow cost per task instance "
        f"({p['cpu']['overhead_per_attempt']:.2f} CPU s) is "
        f"{p['cpu']['ten_overhead_s'] / max(p['cpu']['ten_work_s'], 1):.1f}× the cosmetic work "
        "it carries; group the reduce tasks of a night into one task (or map per night, not per "
        "group) before adding cores. This divides the scheduler's and the database's load too."
    )
    w(
        "2. **Run slots and pools sized from the tables above**, not the bench's 2: the "
        "CPU-bound core counts need that many nights in flight."
    )
    w(
        "3. **Astrometry on its own workers** (a Celery queue and the `astrometry` pool): "
        "with astrometry it is most of the CPU; the cheapest route (`-nl`) cuts it by half "
        "against `--scamp`."
    )
    w(
        "4. **The rerun's cheap check**: it lists every night; at tenfold, cache the listing "
        "(the night index) so a rerun of a current archive does not walk it."
    )
    w(
        "5. **The metadata database**: `airflow db clean` after each reprocessing, and a "
        "PostgreSQL sized for the rows above."
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
    parser.add_argument("--pod-start-s", type=float, default=10.0, help="assumed, per pod")
    parser.add_argument("--pod-cpu-s", type=float, default=2.0, help="assumed, per pod")
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
    archive = {"nights": args.nights, "frames": args.frames, "raw_bytes": args.raw_tb * 1e12}
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
