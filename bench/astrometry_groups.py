"""`python -m bench.astrometry_groups`: astrometry once per group against every image on its own.

Synthetic 1024² nights (5 science groups; `--frames` frames per group; darks, flats, a star
catalogue of the fields and astrometry.net indexes built from it) are set up and reduced once
(`astro_reduce --setup`, `-i`); then each route (`-m`, `--scamp`, `-nl`) solves a fresh copy of
the reduced night as a user runs it, `astro_reduce ROUTE --astrometryonly`, a whole process:
  - per group (the default): each stack solved, its frames derived and checked;
  - `--solve-each`: every image solved on its own (this tree's code and configuration);
  - before: the code and configuration before per-group astrometry (`--before`, a git
    worktree on PYTHONPATH), every image on its own with SCAMP's automatic match resolution.
Each case gives wall and CPU seconds per image (total over images: aux frames and stacks) and
every solved image's error against the true WCS (RMS over a 21 x 21 grid). Results:
bench/results/astrometry_groups.json and a table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.harness import Command, machine_facts, run_measured, save_results, worktree_at

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NIGHT = "2023-05-10"
BEFORE = "0706f1c"  # the last commit solving every image on its own
ROUTES = {"-m": ["-m"], "--scamp": ["--scamp"], "-nl": ["-nl"]}
SOLVED_FOLDERS = ("reduced", "SEXRES", "PSFRES", "SCAMPRES")


def make_night(work: Path, frames: int) -> tuple[Path, Path, Path, Path]:
    """(reduced night, truth folder, catalogue, index folder), made once per frame count."""
    root = work / f"1024x{frames}"
    reduced = root / "reduced" / NIGHT
    if not (root / ".complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        python = str(BIN / "python")
        refcat = root / "refcat.fits"
        subprocess.run(
            [python, "-m", "ar_tasks.synthetic", "--root", str(root / "raw"), "--night", NIGHT,
             "--frames-per-group", str(frames), "--refcat", str(refcat)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        subprocess.run(
            [python, "-m", "ar_tasks.refcat", str(refcat), str(root / "index")],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        shutil.copytree(root / "raw" / NIGHT, reduced)
        for flags in (["--setup"], ["-i"]):
            subprocess.run([str(BIN / "astro_reduce"), *flags], cwd=reduced, check=True,
                           capture_output=True)  # fmt: skip
        (root / ".complete").touch()
    return reduced, root / "raw" / "_truth" / NIGHT, root / "refcat.fits", root / "index"


def fresh(reduced: Path, run_dir: Path) -> Path:
    """The cosmetically reduced night without any astrometric product."""
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(reduced, run_dir, ignore=shutil.ignore_patterns(*SOLVED_FOLDERS))
    return run_dir


def _truth_checks() -> Any:
    """tests/truth_checks.py: the one scoring of a reduced file against the true WCS."""
    spec = importlib.util.spec_from_file_location(
        "truth_checks", REPO / "tests" / "truth_checks.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def score(run_dir: Path, truth_dir: Path) -> dict[str, Any]:
    """Images solved, by method, and their errors against the truth (arcsec)."""
    from astropy.io import fits

    from ar_tasks.synthetic import load_truth

    truth, checks = load_truth(truth_dir), _truth_checks()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    images = [i for g in manifest["astrometry"].values() for i in g["images"]]
    errors: dict[str, list[float]] = {}
    for path in sorted((run_dir / "reduced").glob("*.fits")):
        method = str(fits.getheader(path).get("ASTMETHD", "full"))
        errors.setdefault(method, []).append(checks.wcs_error_arcsec(path, truth)[0])
    return {
        "images": len(images),
        "solved": sum(i["status"] == "solved" for i in images),
        "errors": {m: [round(min(e), 4), round(max(e), 4), len(e)] for m, e in errors.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument(
        "--cases",
        nargs="+",
        default=["group", "each", "before"],
        choices=["group", "each", "before"],
    )
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "work" / "astrometry")
    args = parser.parse_args(argv)
    cases: dict[str, tuple[list[str], dict[str, str]]] = {}
    if "group" in args.cases:
        cases["per group"] = ([], {})
    if "each" in args.cases:
        cases["--solve-each"] = (["--solve-each"], {})
    if "before" in args.cases:
        old = worktree_at(args.before, args.work / f"before-{args.before}")
        # Its code and its configuration files (the installed package would give this tree's).
        configs = str(old / "include" / "astromatic_configs")
        before = {"PYTHONPATH": str(old), "AR_ASTROMATIC_CONFIGS": configs}
        cases[f"before ({args.before})"] = ([], before)
    results: list[dict[str, Any]] = []
    for frames in args.frames:
        reduced, truth, refcat, index = make_night(args.work, frames)
        for route, flags in ROUTES.items():
            for case, (extra, env) in cases.items():
                walls, cpus, scored = [], [], {}
                for _ in range(args.repeats):
                    run_dir = fresh(reduced, args.work / "runs" / NIGHT)
                    argv_ = [str(BIN / "astro_reduce"), *flags, *extra, "--astrometryonly"]
                    argv_ += ["--refcat", str(refcat), "--anet-index", str(index)]
                    sample = run_measured(Command(argv_, run_dir, env, f"{route} {case}"))
                    walls.append(sample.wall_s)
                    cpus.append(sample.cpu_s)
                    scored = score(run_dir, truth)
                images = max(scored["images"], 1)
                row = {
                    "night": f"1024² × {frames}",
                    "route": route,
                    "case": case,
                    "wall_s": round(statistics.median(walls), 2),
                    "cpu_s": round(statistics.median(cpus), 2),
                    "wall_per_image_s": round(statistics.median(walls) / images, 3),
                    "cpu_per_image_s": round(statistics.median(cpus) / images, 3),
                    **scored,
                }
                results.append(row)
                print(json.dumps(row), flush=True)
    save_results("astrometry_groups", {"machine": machine_facts(), "rows": results})
    print(markdown(results))
    return 0


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table for BENCHMARKS.md."""
    lines = [
        "| night | route | case | images solved | wall s | CPU s | wall s per image | "
        "CPU s per image | error vs truth, arcsec (method: min–max) |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        errors = "; ".join(
            f"{method} {low:.4f}–{high:.4f} ({count})"
            for method, (low, high, count) in sorted(row["errors"].items())
        )
        lines.append(
            f"| {row['night']} | `{row['route']}` | {row['case']} | {row['solved']}/"
            f"{row['images']} | {row['wall_s']:.2f} | {row['cpu_s']:.2f} | "
            f"{row['wall_per_image_s']:.3f} | {row['cpu_per_image_s']:.3f} | {errors} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
