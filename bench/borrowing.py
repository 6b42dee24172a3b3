"""`python -m bench.borrowing`: what borrowing masters from another night costs.

Three 1024² synthetic nights of one camera: 2023-05-09 (the lender, with its darks and
flats), 2023-05-10 (its own calibrations: 61 frames) and 2023-05-11 (the same science, no
calibration frame: 25 frames). Each case is a whole process running the DAG's stages as its
tasks call them (prepare_night, reduce_group per group, publish_night), on fresh products,
interleaved, `--repeats` times; and the CLI (`astro_reduce --setup`, then `-i`, with
`--calibrations` for the borrower). Medians go to bench/results/borrowing.json and a table
for BENCHMARKS.md is printed.

Cases: `own` (05-10 with its own calibrations); `borrowed` (05-11, the library already holds
05-09's masters: any night after the first that borrows them); `borrowed, first` (05-11 with
an empty library: it reads 05-09's calibration frames and makes the masters).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench.harness import (
    Command,
    Sample,
    Summary,
    machine_facts,
    run_measured,
    run_sequence,
    save_results,
)

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LENDER, OWN, BORROWER = "2023-05-09", "2023-05-10", "2023-05-11"
STAGES = """
import sys
from ar_tasks import pipeline
raw, products, night = sys.argv[1:]
ready = pipeline.prepare_night(raw, products, night, {})
for pair in ready["groups"]:
    pipeline.reduce_group(raw, products, night, pair["group"], {})
summary = pipeline.publish_night(raw, products, night, {})
assert summary["status"] == "success", summary["problems"]
"""


def make_archive(work: Path) -> Path:
    """The three nights (made once; kept between runs)."""
    raw = work / "borrowing" / "raw"
    done = raw / ".complete"
    if done.is_file():
        return raw
    shutil.rmtree(raw, ignore_errors=True)
    code = (
        "import sys; from ar_tasks.synthetic import NightSpec, write_night; "
        "raw = sys.argv[1]; "
        f"write_night(raw, NightSpec(night='{LENDER}')); "
        f"write_night(raw, NightSpec(night='{OWN}')); "
        f"write_night(raw, NightSpec(night='{BORROWER}', darks=(), flats=()))"
    )
    subprocess.run([BIN / "python", "-c", code, str(raw)], check=True)
    done.touch()
    return raw


def stages(raw: Path, products: Path, night: str) -> Command:
    argv = [str(BIN / "python"), "-c", STAGES, str(raw), str(products), night]
    return Command(argv, REPO, {}, f"stages {night}")


def warm_library(raw: Path, work: Path) -> Path:
    """A products tree whose library holds the lender's masters (made by one borrower)."""
    warm = work / "borrowing" / "warm"
    if not (warm / "ar_calibrations" / LENDER / "calibrations.json").is_file():
        shutil.rmtree(warm, ignore_errors=True)
        run_measured(stages(raw, warm, BORROWER), settle=False)
    return warm / "ar_calibrations"


def cli_night(raw: Path, night: str, run_dir: Path) -> Path:
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(raw / night, run_dir)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "work")
    args = parser.parse_args(argv)
    raw = make_archive(args.work)
    library = warm_library(raw, args.work)
    runs = args.work / "borrowing" / "runs"
    samples: dict[str, list[Sample]] = {}
    astro_reduce = str(BIN / "astro_reduce")
    for repeat in range(args.repeats):
        cases = {}
        own = runs / "own"
        shutil.rmtree(own, ignore_errors=True)
        cases["DAG stages, own calibrations"] = [stages(raw, own, OWN)]
        borrowed = runs / "borrowed"
        shutil.rmtree(borrowed, ignore_errors=True)
        borrowed.mkdir(parents=True)
        shutil.copytree(library, borrowed / "ar_calibrations")
        cases["DAG stages, borrowed (library holds the masters)"] = [
            stages(raw, borrowed, BORROWER)
        ]
        first = runs / "first"
        shutil.rmtree(first, ignore_errors=True)
        cases["DAG stages, borrowed first (library empty)"] = [stages(raw, first, BORROWER)]
        own_cli = cli_night(raw, OWN, runs / "cli-own" / OWN)
        cases["CLI -i, own calibrations"] = [
            Command([astro_reduce, "--setup"], own_cli),
            Command([astro_reduce, "-i"], own_cli),
        ]
        borrow_cli = cli_night(raw, BORROWER, runs / "cli-borrowed" / BORROWER)
        cases["CLI -i --calibrations (first: its own library)"] = [
            Command([astro_reduce, "--setup"], borrow_cli),
            Command([astro_reduce, "-i", "--calibrations", str(raw)], borrow_cli),
        ]
        for name, commands in cases.items():
            sample = run_sequence(commands, log=runs / "bench.log")
            samples.setdefault(name, []).append(sample)
            print(f"{repeat} {name:<52} {sample.wall_s:6.2f} s {sample.cpu_s:6.2f} s CPU")
    summaries = {name: asdict(Summary.of(s)) for name, s in samples.items()}
    checks = {
        "own": cheap_check(raw, runs / "own", OWN),
        "borrowed": cheap_check(raw, runs / "borrowed", BORROWER),
    }
    own_wall = summaries["DAG stages, own calibrations"]["wall_s"]
    result = {
        "machine": machine_facts(),
        "repeats": args.repeats,
        "cases": summaries,
        "rerun_check_s": checks,
    }
    save_results("borrowing", result)
    print("\n| case | wall (s) | CPU (s) | peak PSS (MB) | ÷ own (DAG) |")
    print("|---|---:|---:|---:|---:|")
    for name, summary in summaries.items():
        ratio = summary["wall_s"] / own_wall
        print(
            f"| {name} | {summary['wall_s']:.2f} | {summary['cpu_s']:.2f} | "
            f"{summary['peak_rss_mb']:.0f} | {ratio:.2f} |"
        )
    print(
        f"\nA rerun's cheap check (nights_to_reduce, in-process, median of 5): own "
        f"{checks['own'] * 1000:.1f} ms, borrowed {checks['borrowed'] * 1000:.1f} ms"
    )
    return 0


def cheap_check(raw: Path, products: Path, night: str) -> float:
    """Seconds of list_nights' check of a reduced night (it must say: current)."""
    from ar_tasks import pipeline

    times = []
    for _ in range(5):
        start = time.perf_counter()
        choice = pipeline.nights_to_reduce(str(raw), str(products), [night], {})
        times.append(time.perf_counter() - start)
        assert choice.todo == [] and choice.failed == {}, choice
    return statistics.median(times)


if __name__ == "__main__":
    raise SystemExit(main())
