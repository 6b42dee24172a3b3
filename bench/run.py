"""`make bench`: astro_reduce 5.1.3, IRAF, our command, our steps in-process and the read+write
floor, run on the same synthetic nights in one session, each measured as whole processes.

For every configuration (frame size x science frames per group) one synthetic night is made,
then every implementation reduces a fresh copy of it, `--repeats` times, interleaved so drift
in the machine's speed hits all alike. Medians go to bench/results/<config>.json; IRAF's
products are compared with ours. `python -m bench.report` turns the results into the tables
of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from bench import ar513, floor, iraf
from bench.harness import Command, Sample, Summary, machine_facts, run_measured, run_sequence

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NIGHT = "2023-05-10"
RAW_FOLDERS = ("DARK", "FLAT", "ORIGINAL")
DEFAULT_CONFIGS = ("1024x5", "1024x20", "1024x50", "2048x5", "2048x20")
ASTROMETRY_ROUTES = ("astromatic", "scamp", "astrometrynet_local")

Prepare = Callable[[Path], list[Command]]  # a fresh night copy -> the commands to time


def make_night(work: Path, size: int, per_group: int) -> Path:
    """The synthetic night of a configuration (made once; kept between runs of the bench)."""
    root = work / "nights" / f"{size}x{per_group}"
    night = root / NIGHT
    done = root / ".complete"
    if not done.is_file():
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run(
            [
                *(BIN / "python", "-m", "ar_tasks.synthetic", "--root", root, "--night", NIGHT),
                *("--size", str(size), "--frames-per-group", str(per_group)),
                *("--refcat", root / "refcat.fits"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        done.touch()
    return night


def fresh_copy(night: Path, run_dir: Path) -> Path:
    """A night folder holding only the raw frames, as a user starts from."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    for folder in RAW_FOLDERS:
        shutil.copytree(night / folder, run_dir / folder)
    return run_dir


def ours(flags: list[str]) -> Prepare:
    """Our astro_reduce command: --setup, then the reduction, in the night folder."""

    def prepare(run_dir: Path) -> list[Command]:
        command = str(BIN / "astro_reduce")
        return [
            Command([command, "--setup"], run_dir, {}, "ours --setup"),
            Command([command, *flags], run_dir, {}, f"ours {' '.join(flags)}"),
        ]

    return prepare


def measure(
    name: str, prepare: Prepare, night: Path, work: Path, results: dict[str, list[Sample]]
) -> Path:
    """One measured run of one implementation on a fresh copy; returns its folder."""
    run_dir = fresh_copy(night, work / "runs" / name / NIGHT)
    commands = prepare(run_dir)
    sample = run_sequence(commands, log=work / "runs" / f"{name}.log")
    results.setdefault(name, []).append(sample)
    print(
        f"  {name:<14} {sample.wall_s:7.2f} s wall {sample.cpu_s:7.2f} s CPU "
        f"{sample.peak_rss_mb:7.0f} MB",
        flush=True,
    )
    return run_dir


def run_config(args: argparse.Namespace, size: int, per_group: int, repeats: int) -> dict[str, Any]:
    """Every implementation on one configuration; returns the results record."""
    work = args.work
    night = make_night(work, size, per_group)
    frames = sum(1 for f in RAW_FOLDERS for _ in (night / f).iterdir())
    raw_mb = sum(p.stat().st_size for f in RAW_FOLDERS for p in (night / f).iterdir()) / 2**20
    print(
        f"{size}x{size}, {per_group} frames per group: {frames} frames, {raw_mb:.0f} MB", flush=True
    )
    samples: dict[str, list[Sample]] = {}
    steps: list[dict[str, Any]] = []
    venv = ar513.ensure_venv(work / "ar513-venv") if not args.skip_ar513 else None
    target = f"{size}x{per_group}" == args.target
    plan_file = work / "runs" / "floor-plan.json"
    inprocess_json = work / "runs" / "inprocess.json"
    python = str(BIN / "python")
    references: dict[str, str] = {}

    def floor_run(d: Path) -> list[Command]:
        return [Command([python, "-m", "bench.floor", str(d), str(plan_file)], REPO, {}, "floor")]

    def inprocess_run(d: Path) -> list[Command]:
        command = [python, "-m", "bench.inprocess", str(d), "--json", str(inprocess_json)]
        return [Command(command, REPO, {}, "inprocess")]

    def iraf_run(d: Path) -> list[Command]:
        return [iraf.prepare(night, d.parent / "iraf-work", references)]

    ours_dir = iraf_dir = None
    for repeat in range(repeats):
        print(f" run {repeat + 1}/{repeats}", flush=True)
        ours_dir = measure("ours", ours(["-i"]), night, work, samples)
        if repeat == 0:
            plan_file.write_text(json.dumps(floor.plan(ours_dir)))
            references.update(iraf_references(ours_dir))
        measure("floor", floor_run, night, work, samples)
        measure("inprocess", inprocess_run, night, work, samples)
        steps.append(json.loads(inprocess_json.read_text()))
        if not args.skip_iraf:
            iraf_dir = measure("iraf", iraf_run, night, work, samples)
        if venv is not None:
            measure("ar513", partial(ar513.prepare, venv, night), night, work, samples)
        if target and args.png:
            measure("ours_png", ours(["-i", "-t", "-r"]), night, work, samples)
            if venv is not None:
                measure("ar513_png", partial(ar513.prepare_png, venv, night), night, work, samples)
    record: dict[str, Any] = {
        "size": size,
        "frames_per_group": per_group,
        "repeats": repeats,
        "frames": frames,
        "raw_mb": round(raw_mb, 1),
        "summaries": {k: asdict(Summary.of(v)) for k, v in samples.items()},
        "steps_s": _median_steps([s["steps_s"] for s in steps]),
        "inprocess_peak_rss_mb": _median([s["peak_rss_mb"] for s in steps]),
    }
    if iraf_dir is not None and ours_dir is not None:
        record["iraf_agreement"] = iraf.compare(iraf_dir.parent / "iraf-work", ours_dir)
    if args.astrometry and target:
        record["astrometry"] = astrometry_routes(night, work)
    if args.airflow and target:
        record["airflow"] = airflow_cost(night, work, repeats)
    return record


def iraf_references(ours_dir: Path) -> dict[str, str]:
    """Our stacks' alignment references (ARREF), so IRAF registers onto the same frames."""
    from astropy.io import fits

    return {
        path.stem: fits.getheader(path)["ARREF"]
        for path in sorted((ours_dir / "stacked").glob("*.fits"))
    }


def astrometry_routes(night: Path, work: Path) -> dict[str, Any]:
    """Seconds per image of each astrometric route (one image at a time, in-process)."""
    refcat = night.parent / "refcat.fits"
    index = work / "anet-index"
    if not index.is_dir():
        subprocess.run(
            [BIN / "python", "-m", "ar_tasks.refcat", refcat, index],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    run_dir = fresh_copy(night, work / "runs" / "astrometry" / NIGHT)
    out = work / "runs" / "astrometry.json"
    command = [BIN / "python", "-m", "bench.inprocess", run_dir, "--json", out]
    command += ["--astrometry", *ASTROMETRY_ROUTES, "--refcat", refcat, "--index", index]
    subprocess.run(command, check=True, cwd=REPO)
    return json.loads(out.read_text())["astrometry"]


def airflow_cost(night: Path, work: Path, repeats: int) -> dict[str, Any]:
    """`airflow dags test` of one night (PNG on, no astrometry) beside our CLI with -t -r."""
    home = work / "airflow"
    env = {"AIRFLOW_HOME": str(home)}
    if not (home / "airflow.db").is_file():
        subprocess.run(
            [REPO / "scripts" / "airflow-init.sh"],
            check=True,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
        )
    samples: list[Sample] = []
    date = dt.date.fromisoformat(NIGHT) + dt.timedelta(days=1)
    for repeat in range(repeats):
        products = work / "runs" / "airflow-products"
        shutil.rmtree(products, ignore_errors=True)
        conf = {
            "first_night": NIGHT,
            "last_night": NIGHT,
            "raw_root": str(night.parent),
            "products_root": str(products),
            "astrometry": "none",
            "png": True,
        }
        script = (
            f"source scripts/airflow-env.sh && airflow dags test t120_reduce "
            f"{date.isoformat()}T0{repeat}:00:00+00:00 -c '{json.dumps(conf)}'"
        )
        samples.append(
            run_measured(
                Command(["bash", "-c", script], REPO, env, "airflow dags test"),
                log=work / "runs" / "airflow.log",
            )
        )
        print(f"  airflow dags test {samples[-1].wall_s:7.2f} s wall", flush=True)
    with sqlite3.connect(home / "airflow.db") as db:
        (run_id,) = db.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = 't120_reduce' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        rows = db.execute(
            "SELECT task_id, count(*) FROM task_instance WHERE run_id = ? GROUP BY task_id",
            (run_id,),
        ).fetchall()
    return {
        "dags_test": asdict(Summary.of(samples)),
        "task_instances": sum(n for _, n in rows),
        "task_instances_by_task": dict(sorted(rows)),
    }


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _median_steps(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(_median([r[key] for r in runs]), 3) for key in runs[0]} if runs else {}


def machine() -> dict[str, Any]:
    """The machine, the date, IRAF's version and the commit, for BENCHMARKS.md."""
    iraf_version = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "iraf"], capture_output=True, text=True
    ).stdout
    return machine_facts() | {
        "iraf": iraf_version or "not installed",
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip(),
    }


def compile_bytecode() -> None:
    """Byte-compile our venv and sources, as 5.1.3's venv is, so no run pays for compiling.

    With PYTHONDONTWRITEBYTECODE set (or a read-only tree) every process would otherwise
    recompile ~250 modules: 0.36 s per interpreter start, charged to ours and the floor only.
    """
    site = next((BIN.parent / "lib").glob("python3*/site-packages"))
    for tree in (site, REPO / "ar_tasks", REPO / "bench"):
        subprocess.run(
            [str(BIN / "python"), "-m", "compileall", "-q", "-j", "0", str(tree)],
            check=True,
            stdout=subprocess.DEVNULL,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--configs",
        default=",".join(DEFAULT_CONFIGS),
        help="SIZExFRAMES_PER_GROUP[:REPEATS], comma-separated",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--target",
        default="1024x5",
        help="the configuration also timed with PNGs, per astrometric route and under Airflow",
    )
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "work")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--skip-ar513", action="store_true")
    parser.add_argument("--skip-iraf", action="store_true")
    parser.add_argument("--no-png", dest="png", action="store_false")
    parser.add_argument("--astrometry", action="store_true", help="time each astrometric route")
    parser.add_argument("--airflow", action="store_true", help="time airflow dags test")
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    args.results.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    compile_bytecode()
    about = machine()
    for spec in args.configs.split(","):
        config, _, repeats = spec.partition(":")  # SIZExFRAMES[:REPEATS]
        size, per_group = (int(v) for v in config.split("x"))
        record = run_config(args, size, per_group, int(repeats or args.repeats))
        record["machine"] = about
        (args.results / f"{config}.json").write_text(json.dumps(record, indent=1))
        shutil.rmtree(args.work / "runs", ignore_errors=True)  # GBs of products at 2048^2
    print(f"bench done in {time.perf_counter() - started:.0f} s; results in {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
