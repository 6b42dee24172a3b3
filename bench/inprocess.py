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
    """The cosmetic reduction, step by step, as the CLI runs it; returns seconds per step."""
    timings: dict[str, float] = {}
    with _timed(timings, "imports"):
        from ar_tasks import steps
        from ar_tasks.layout import NightLayout
    layout = NightLayout.in_place(night)
    with _timed(timings, "inventory"):
        steps.setup_night(layout, working_copies="copy")
    with _timed(timings, "masters"):
        steps.make_masters(layout, interpolate=True, jobs=jobs)
    groups = [g.name for g in steps.load_inventory(layout).groups()]
    with _timed(timings, "calibration"):
        for name in groups:
            steps.calibrate_group(layout, name)
    for name in groups:
        qc = steps.stack_group(layout, name)
        for part, seconds in qc["seconds"].items():
            timings[part] = timings.get(part, 0.0) + seconds
    with _timed(timings, "previews"):
        steps.make_previews(layout, masters_and_aux=True, stacks=True)
    return timings


def solve_night(night: Path, route: str, refcat: Path | None, index: Path | None) -> dict:
    """Every aux frame and stack solved by one route, one image at a time."""
    from ar_tasks import steps
    from ar_tasks.astrometry import AstrometryOptions
    from ar_tasks.layout import NightLayout

    layout = NightLayout.in_place(night)
    options = AstrometryOptions.from_flags(
        **ROUTES[route],
        refcat=str(refcat) if refcat else None,
        index_dir=str(index) if index else None,
        overwrite=True,
    )
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    for group in steps.load_inventory(layout).groups():
        records += steps.solve_group(layout, group.name, options, jobs=1)["images"]
    seconds = [r["seconds"] for r in records if r["status"] == "solved"]
    return {
        "images": len(records),
        "solved": len(seconds),
        "total_s": time.perf_counter() - started,
        "per_image_median_s": statistics.median(seconds) if seconds else None,
        "per_image_max_s": max(seconds) if seconds else None,
    }


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
