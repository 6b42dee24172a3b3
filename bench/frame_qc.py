"""`python -m bench.frame_qc`: what the science-frame QC and the night's QC figure cost.

The 1024² x 5 bench night (61 frames, 25 science frames in 5 groups) reduced by the CLI as
a user runs it (`astro_reduce --setup`, not timed, then `-i`, timed; and `-i -t -r`, which
also draws the QC figure), with this tree's code and with the code before the frame QC
(`--before`, a git commit checked out in a worktree and put first on PYTHONPATH),
interleaved, `--repeats` times, on fresh copies of the same raw night. In-process, the QC's
own work per frame: its figures (frame_qc.measure), its star list and the shift's check.
Medians go to bench/results/frame_qc.json and a table for BENCHMARKS.md is printed.
"""

from __future__ import annotations

import argparse
import os
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
    run_sequence,
    save_results,
    worktree_at,
)

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NIGHT = "2023-05-10"
BEFORE = "c8d4724"  # the last commit without the science-frame QC
FIGURE = """
import sys
from pathlib import Path
from ar_tasks.layout import NightLayout
from ar_tasks.steps import publish
layout = NightLayout.in_place(Path(sys.argv[1]))
manifest = publish.read_manifest(layout)
(layout.out_dir / "qc_frames.png").unlink(missing_ok=True)
publish.add_qc_figure(layout, manifest)
assert manifest["qc_figure"]
"""


def make_night(work: Path) -> Path:
    raw = work / "frame_qc" / "raw"
    if not (raw / ".complete").is_file():
        shutil.rmtree(raw, ignore_errors=True)
        code = "import sys; from ar_tasks.synthetic import NightSpec, write_night; "
        code += f"write_night(sys.argv[1], NightSpec(night='{NIGHT}'))"
        subprocess.run([BIN / "python", "-c", code, str(raw)], check=True)
        (raw / ".complete").touch()
    return raw / NIGHT


def fresh(night: Path, run_dir: Path) -> Path:
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(night, run_dir)
    return run_dir


def qc_work(reduced: Path) -> dict[str, float]:
    """Milliseconds per science frame of the QC's own work, in-process, on the aux frames."""
    import numpy as np

    from ar_tasks import frame_qc, registration
    from ar_tasks.fitsio import read_product

    measure, stars, check = [], [], []
    auxes = sorted((reduced / "ar_cosmetic").glob("*_aux.fits"))
    lists = []
    for path in auxes:
        aux = read_product(path)[0]
        detection = registration.detection_image(aux)
        start = time.perf_counter()
        frame_qc.measure(aux, 6e4, 0.0)
        measure.append(time.perf_counter() - start)
        start = time.perf_counter()
        lists.append(registration.star_list(detection, aux))
        stars.append(time.perf_counter() - start)
    for found in lists[1:]:
        start = time.perf_counter()
        registration.match_stars(lists[0], found, registration.Shift(0, 0, 1), (1024, 1024))
        check.append(time.perf_counter() - start)
    ms = {
        "measure_ms": 1000 * statistics.median(measure),
        "star_list_ms": 1000 * statistics.median(stars),
        "match_ms": 1000 * statistics.median(check),
    }
    ms["per_frame_ms"] = float(np.sum(list(ms.values())))
    ms["frames"] = len(auxes)
    return ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "work")
    args = parser.parse_args(argv)
    night = make_night(args.work)
    old = worktree_at(args.before, args.work / "frame_qc" / f"before-{args.before}")
    runs = args.work / "frame_qc" / "runs"
    astro_reduce = str(BIN / "astro_reduce")
    codes = {"with frame QC": {}, f"before ({args.before})": {"PYTHONPATH": str(old)}}
    samples: dict[str, list[Sample]] = {}
    for repeat in range(args.repeats):
        for code, env in codes.items():
            for flags in (["-i"], ["-i", "-t", "-r"]):
                run_dir = fresh(night, runs / code.split()[0] / NIGHT)
                name = f"{code}: {' '.join(flags)} (after --setup, not timed)"
                setup = {**os.environ, **env}
                subprocess.run(
                    [astro_reduce, "--setup"],
                    cwd=run_dir,
                    env=setup,
                    check=True,
                    capture_output=True,
                )
                commands = [Command([astro_reduce, *flags], run_dir, env)]
                sample = run_sequence(commands, log=runs / "bench.log")
                samples.setdefault(name, []).append(sample)
                print(f"{repeat} {name:<48} {sample.wall_s:6.2f} s {sample.cpu_s:6.2f} s CPU")
        figure = Command([str(BIN / "python"), "-c", FIGURE, str(runs / "with" / NIGHT)], REPO)
        samples.setdefault("QC figure alone (a process: import + draw)", []).append(
            run_sequence([figure])
        )
    summaries = {name: asdict(Summary.of(s)) for name, s in samples.items()}
    work = qc_work(runs / "with" / NIGHT)
    result = {
        "machine": machine_facts(),
        "repeats": args.repeats,
        "cases": summaries,
        "qc_work": work,
    }
    save_results("frame_qc", result)
    print("\n| case | wall (s) | CPU (s) | peak RSS (MB) |")
    print("|---|---:|---:|---:|")
    for name, summary in summaries.items():
        print(
            f"| {name} | {summary['wall_s']:.2f} | {summary['cpu_s']:.2f} | "
            f"{summary['peak_rss_mb']:.0f} |"
        )
    names = list(summaries)
    for flags, (new, old_name) in (
        ("-i", (names[0], names[2])),
        ("-i -t -r", (names[1], names[3])),
    ):
        new_wall, old_wall = summaries[new]["wall_s"], summaries[old_name]["wall_s"]
        change = 100 * (new_wall / old_wall - 1)
        print(f"{flags}: {new_wall:.2f} s against {old_wall:.2f} s: {change:+.1f}%")
    print(
        f"QC work in-process: {work['per_frame_ms']:.1f} ms per science frame "
        f"(figures {work['measure_ms']:.1f}, star list {work['star_list_ms']:.1f}, check "
        f"{work['match_ms']:.2f}); {work['frames']} frames"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
