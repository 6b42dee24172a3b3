"""Our step functions called in one process, each step timed: where the time goes.

`python -m bench.inprocess NIGHT_DIR --json OUT [--astrometry ROUTE ...]` reduces a copy of a
night in place (setup with working copies, masters with interpolation, calibration, stacking,
previews) and, when asked, solves every aux frame and stack with each astrometric route, one
image at a time. The per-step seconds, the CPU time and the peak RSS go to OUT.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROUTES = {
    "astromatic": {"astromatic": True},  # sex -> psfex -> sex -> scamp
    "scamp": {"scamp": True},  # sex -> scamp
    "astrometrynet_local": {"local": True},
}


@contextmanager
def _timed(timings: dict[str, float], name: str):
    started = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - started


def reduce_night(night: Path, jobs: int) -> dict[str, float]:
    """The cosmetic reduction, step by step: the night plan the CLI runs, one kind of task at
    a time (the CLI runs them as one graph); returns seconds per step."""
    timings: dict[str, float] = {}
    with _timed(timings, "imports"):
        from ar_tasks.layout import NightLayout
        from ar_tasks.nightplan import NightPlan, ReductionOptions
        from ar_tasks.steps import load_inventory, setup_night
    layout = NightLayout.in_place(night)
    with _timed(timings, "inventory"):
        setup_night(layout, working_copies="copy")
    options = ReductionOptions(interpolate=True, aux_png=True, stack_png=True)
    plan = NightPlan.build(load_inventory(layout), options)
    run = plan.start(layout)
    with _timed(timings, "masters"):
        plan.run(run, ["masters"], jobs=jobs, kinds=["dark", "interpolation", "flat", "missing"])
    with _timed(timings, "calibration"):
        plan.run(run, ["group"], kinds=["calibrate"])
    plan.run(run, ["group"], kinds=["register", "combine"])
    for record in run.records.values():
        for part, seconds in (record.get("stack") or {}).get("seconds", {}).items():
            timings[part] = timings.get(part, 0.0) + seconds
    with _timed(timings, "previews"):
        plan.run(run, ["masters", "group"], kinds=["master", "previews"])
    return timings


def solve_night(night: Path, route: str, refcat: Path | None, index: Path | None) -> dict:
    """Every aux frame and stack solved by one route, one image at a time (`--solve-each`);
    then the same night once per group (each stack solved, its frames derived), amortised."""
    each = _solve(night, route, refcat, index, solve_each=True)
    group = _solve(night, route, refcat, index, solve_each=False)
    seconds = [r["seconds"] for r in each["records"] if r["status"] == "solved"]
    return {
        "images": len(each["records"]),
        "solved": len(seconds),
        "total_s": each["total_s"],
        "per_image_median_s": statistics.median(seconds) if seconds else None,
        "per_image_max_s": max(seconds) if seconds else None,
        "per_group_total_s": group["total_s"],
        "per_group_solved": sum(r["status"] == "solved" for r in group["records"]),
    }


def _solve(
    night: Path, route: str, refcat: Path | None, index: Path | None, solve_each: bool
) -> dict[str, Any]:
    from ar_tasks.astrometry import AstrometryOptions
    from ar_tasks.layout import NightLayout
    from ar_tasks.nightplan import NightPlan, ReductionOptions
    from ar_tasks.steps import load_inventory

    layout = NightLayout.in_place(night)
    astrometry = AstrometryOptions.from_flags(
        **ROUTES[route],
        refcat=str(refcat) if refcat else None,
        index_dir=str(index) if index else None,
        overwrite=True,
        solve_each=solve_each,
    )
    plan = NightPlan.build(load_inventory(layout), ReductionOptions(astrometry=astrometry))
    started = time.perf_counter()
    run = plan.run(plan.start(layout), ["solve"])
    records: list[dict[str, Any]] = [
        image
        for name, r in run.records.items()
        if name.startswith("astrometry_")
        for image in r.get("images", [])
    ]
    return {"records": records, "total_s": time.perf_counter() - started}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("night", type=Path)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--astrometry", nargs="*", default=[], choices=sorted(ROUTES))
    parser.add_argument("--refcat", type=Path)
    parser.add_argument("--index", type=Path)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    timings = reduce_night(args.night, args.jobs)
    result: dict[str, Any] = {"steps_s": timings, "cosmetic_s": time.perf_counter() - started}
    result["astrometry"] = {
        route: solve_night(args.night, route, args.refcat, args.index) for route in args.astrometry
    }
    from bench.harness import self_rusage

    cpu, rss = self_rusage()
    result.update(cpu_s=cpu, peak_rss_mb=rss)
    args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
