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
# Ten years of the T120 (the figures): observed nights, 1024² frames, raw bytes; and
# the dates a backfill of ten years walks (the nights without data cost a run each).
TEN_YEARS = {"nights": 1500, "frames": 225_000, "raw_bytes": 0.5e12, "dates": 3652}
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
    sc: dict[str, Any] = {"bench_tries_per_s": base["attempts"] / base["first_wall_s"]}
    for part, key in (("scheduler", "scheduler"), ("postgres", "db"), ("api-server", "api")):
        value = base["cpu_by_part"].get(part)
        sc[f"{key}_cpu_s"] = value
        sc[f"{key}_per_try"] = value / base["attempts"] if value else None
    for hours in WINDOWS_H:
        for label, tries in (("plain", t["tries"]), ("astrometry", t["tries_astrometry"])):
            rate = tries / (hours * 3600)
            sc[f"tries_per_s_{hours}_{label}"] = rate
            for key in ("scheduler", "db", "api"):
                per = sc[f"{key}_per_try"]
                sc[f"{key}_cores_{hours}_{label}"] = rate * per if per else None
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


RENDER_PLACEHOLDER


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
