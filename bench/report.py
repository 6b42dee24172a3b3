"""Turn bench/results/*.json into the tables of BENCHMARKS.md (between its two markers).

`python -m bench.report [RESULTS_DIR] [BENCHMARKS.md]`: the prose around the markers is kept,
the tables between them are rewritten, so `make bench` reproduces them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench:begin (made by python -m bench.report) -->", "<!-- bench:end -->"
IMPLEMENTATIONS = (
    ("ar513", "(a) astro_reduce 5.1.3 `--setup` + `-i`"),
    ("iraf", "(b) IRAF 2.17 CL script"),
    ("ours", "(c) our `astro_reduce --setup` + `-i`"),
    ("inprocess", "(d) our step functions, one process"),
    ("floor", "(e) read + write floor"),
)
STEPS = ("imports", "inventory", "masters", "calibration", "registration", "combine", "previews")


def _config(record: dict[str, Any]) -> str:
    return f"{record['size']}² × {record['frames_per_group']}"


def _ratio(numerator: float | None, denominator: float | None) -> str:
    if not numerator or not denominator:
        return "–"
    return f"{numerator / denominator:.1f}×"


def _get(record: dict[str, Any], name: str, field: str) -> float | None:
    summary = record["summaries"].get(name)
    return summary[field] if summary else None


def _cell(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main_table(records: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| night (size × frames per group) | frames | raw MB | implementation | wall s "
        "(min–max) | CPU s | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for record in records:
        for name, label in IMPLEMENTATIONS:
            summary = record["summaries"].get(name)
            if not summary:
                continue
            lines.append(
                f"| {_config(record)} | {record['frames']} | {record['raw_mb']:.0f} | {label} | "
                f"{summary['wall_s']:.2f} ({summary['wall_min_s']:.2f}–{summary['wall_max_s']:.2f})"
                f" | {summary['cpu_s']:.2f} | {summary['peak_rss_mb']:.0f} |"
            )
    return lines


def ratio_table(records: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| night | (a)/(c) wall: 5.1.3 ÷ ours | (b)/(c) wall: IRAF ÷ ours | (c)/(e) wall: ours "
        "÷ floor | (a)/(c) CPU | (c)/(a) peak RSS: ours ÷ 5.1.3 | (c)/(b) peak RSS: ours ÷ IRAF |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        ours_rss, ar_rss = _get(r, "ours", "peak_rss_mb"), _get(r, "ar513", "peak_rss_mb")
        iraf_rss = _get(r, "iraf", "peak_rss_mb")
        lines.append(
            f"| {_config(r)} | {_ratio(_get(r, 'ar513', 'wall_s'), _get(r, 'ours', 'wall_s'))} "
            f"| {_ratio(_get(r, 'iraf', 'wall_s'), _get(r, 'ours', 'wall_s'))} "
            f"| {_ratio(_get(r, 'ours', 'wall_s'), _get(r, 'floor', 'wall_s'))} "
            f"| {_ratio(_get(r, 'ar513', 'cpu_s'), _get(r, 'ours', 'cpu_s'))} "
            f"| {_fraction(ours_rss, ar_rss)} | {_fraction(ours_rss, iraf_rss)} |"
        )
    return lines


def _fraction(numerator: float | None, denominator: float | None) -> str:
    if not numerator or not denominator:
        return "–"
    return f"{numerator / denominator:.2f}"


def png_table(records: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| night | command | wall s | CPU s | peak RSS MB | PNG cost (wall, vs. without) |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        for name, plain, label in (
            ("ar513_png", "ar513", "astro_reduce 5.1.3 `-i -t -r`"),
            ("ours_png", "ours", "ours `-i -t -r`"),
        ):
            summary = r["summaries"].get(name)
            if summary:
                extra = summary["wall_s"] - (_get(r, plain, "wall_s") or 0)
                lines.append(
                    f"| {_config(r)} | {label} | {summary['wall_s']:.2f} | {summary['cpu_s']:.2f}"
                    f" | {summary['peak_rss_mb']:.0f} | {extra:+.2f} s |"
                )
        if r["summaries"].get("ours_png") and r["summaries"].get("ar513_png"):
            ratio = _ratio(_get(r, "ar513_png", "wall_s"), _get(r, "ours_png", "wall_s"))
            lines.append(f"| {_config(r)} | ratio 5.1.3 ÷ ours | {ratio} | | | |")
    return lines


def steps_table(records: list[dict[str, Any]]) -> list[str]:
    header = " | ".join(STEPS)
    lines = [
        f"| night | {header} | total | in-process peak RSS MB |",
        "|---|" + "---|" * (len(STEPS) + 2),
    ]
    for r in records:
        steps = r.get("steps_s", {})
        cells = " | ".join(_cell(steps.get(s)) for s in STEPS)
        total = sum(steps.get(s, 0.0) for s in STEPS)
        lines.append(
            f"| {_config(r)} | {cells} | {total:.2f} | {r.get('inprocess_peak_rss_mb', 0):.0f} |"
        )
    return lines


def astrometry_table(records: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| night | route | images solved | median s per image | slowest s | total s | "
        "once per group: solved, total s, s per image |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = {
        "astromatic": "`-m`: source-extractor → psfex → source-extractor → scamp",
        "scamp": "`--scamp`: source-extractor → scamp",
        "astrometrynet_local": "`-nl`: source-extractor → solve-field (local index)",
    }
    for r in records:
        for route, result in r.get("astrometry", {}).items():
            lines.append(
                f"| {_config(r)} | {labels.get(route, route)} | {result['solved']}/"
                f"{result['images']} | {_cell(result['per_image_median_s'])} | "
                f"{_cell(result['per_image_max_s'])} | {result['total_s']:.1f} | "
                f"{_group_cell(result)} |"
            )
    return lines


def _group_cell(result: dict[str, Any]) -> str:
    """The per-group solve of the same night (results before it have none)."""
    if "per_group_total_s" not in result:
        return "–"
    total, images = result["per_group_total_s"], max(result["images"], 1)
    return f"{result['per_group_solved']}/{result['images']}, {total:.1f}, {total / images:.3f}"


def airflow_table(records: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in records:
        airflow = r.get("airflow")
        if not airflow:
            continue
        dags, cli = airflow["dags_test"], r["summaries"].get("ours_png")
        lines += [
            "| night | run | wall s | CPU s | peak RSS MB |",
            "|---|---|---|---|---|",
            f"| {_config(r)} | `airflow dags test t120_reduce` (png on, no astrometry) | "
            f"{dags['wall_s']:.2f} | {dags['cpu_s']:.2f} | {dags['peak_rss_mb']:.0f} |",
        ]
        if cli:
            lines.append(
                f"| {_config(r)} | our CLI `--setup` + `-i -t -r` | {cli['wall_s']:.2f} | "
                f"{cli['cpu_s']:.2f} | {cli['peak_rss_mb']:.0f} |"
            )
        by_task = ", ".join(f"{t} {n}" for t, n in airflow["task_instances_by_task"].items())
        lines += ["", f"Task instances per night: **{airflow['task_instances']}** ({by_task})."]
    return lines


def agreement_table(records: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| night | master darks: max abs diff ADU (relative) | master flats: worst RMS diff "
        "÷ expected noise | stacks: worst sky RMS diff ÷ sky noise | agree |",
        "|---|---|---|---|---|",
    ]
    for r in records:
        a = r.get("iraf_agreement")
        if not a:
            continue
        agree = all(a[k] for k in ("agree_darks", "agree_flats", "agree_stacks"))
        lines.append(
            f"| {_config(r)} | {a['dark_max_abs_adu']:.4f} ({a['dark_max_rel']:.1e}) | "
            f"{a['flat_max_diff_over_noise']:.3f} | {a['stack_max_sky_rms_over_noise']:.3f} | "
            f"{'yes' if agree else '**no**'} |"
        )
    return lines


def render(records: list[dict[str, Any]]) -> str:
    machine = records[0]["machine"]
    repeats = sorted({r["repeats"] for r in records})
    parts = [
        BEGIN,
        "",
        f"Measured {machine['date']} at commit `{machine['commit']}` on {machine['cpu']}, "
        f"{machine['cores']} cores, {machine['memory_gib']} GiB, {machine['os']}, Python "
        f"{machine['python']}, IRAF {machine['iraf']}. Medians of "
        f"{' or '.join(str(n) for n in repeats)} runs per implementation.",
        "",
        "### Whole processes, same night, same run",
        "",
        *main_table(records),
        "",
        "### Ratios",
        "",
        *ratio_table(records),
        "",
        "### PNG quick-looks",
        "",
        *png_table(records),
        "",
        "### Where our time goes (step functions in one process, seconds)",
        "",
        *steps_table(records),
        "",
        "### Astrometry per route (one image at a time; then once per group)",
        "",
        *astrometry_table(records),
        "",
        "### The cost of Airflow",
        "",
        *airflow_table(records),
        "",
        "### IRAF's products against ours",
        "",
        *agreement_table(records),
        "",
        END,
    ]
    return "\n".join(parts)


def load(results: Path) -> list[dict[str, Any]]:
    """bench.run's records, `<size>x<frames per group>.json` (the folder holds other benches'
    results too, such as cluster_backfill's)."""
    records = [json.loads(p.read_text()) for p in results.glob("[0-9]*x[0-9]*.json")]
    return sorted(records, key=lambda r: (r["size"], r["frames_per_group"]))


def main(argv: list[str]) -> int:
    results = Path(argv[0]) if argv else REPO / "bench" / "results"
    target = Path(argv[1]) if len(argv) > 1 else REPO / "BENCHMARKS.md"
    records = load(results)
    if not records:
        print(f"no results in {results}", file=sys.stderr)
        return 1
    text = target.read_text() if target.is_file() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    target.write_text(head + render(records) + tail)
    print(f"{target}: tables from {len(records)} result files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
