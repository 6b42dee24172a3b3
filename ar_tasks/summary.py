"""A short account of a reduced night: where the products are and what the stacks hold."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .fitsio import read_header
from .layout import COSMETIC, MASTERS, REDUCED, STACKED


def summarise(night_dir: Path) -> str:
    """Human-readable summary of the products under a night folder."""
    night_dir = Path(night_dir).resolve()
    lines = [f"Products of {night_dir.name} in {night_dir}:"]
    for folder in (MASTERS, COSMETIC, STACKED, REDUCED):
        path = night_dir / folder
        fits_files = sorted(path.glob("*.fits")) if path.is_dir() else []
        pngs = sorted(path.glob("*.png")) if path.is_dir() else []
        lines.append(f"  {folder + '/':<13} {len(fits_files):3d} FITS, {len(pngs):3d} PNG")
    manifest = night_dir / "manifest.json"
    if manifest.is_file():
        record = json.loads(manifest.read_text())
        lines.append(
            f"  manifest.json: status {record['status']}, {len(record['inputs'])} inputs, "
            f"{len(record['quarantined'])} quarantined, {len(record['products'])} products, "
            f"{len(record['recomputed'])} recomputed in the last run"
        )
        lines += [f"  problem: {problem}" for problem in record["problems"]]
    for stack in sorted((night_dir / STACKED).glob("*.fits")):
        header = read_header(stack)
        solved = night_dir / REDUCED / stack.name
        wcs = ""
        if solved.is_file():
            solution = read_header(solved)
            wcs = f", WCS by {solution['ASTSOLVR']}"
            if "ASTSIGMA" in solution:
                wcs += f' ({solution.get("ASTNREF", "?")} stars, {solution["ASTSIGMA"]:.3f}")'
        rejected = int(header.get("ARNREJ", 0) or 0)
        left_out = f" ({rejected} left out)" if rejected else ""
        lines.append(
            f"    {stack.name:<28} {header.get('NCOMBINE', 1):2d} frames{left_out}, "
            f"reference {header.get('ARREF', '?')}{wcs}{_masters(header, night_dir.name)}"
        )
    return "\n".join(lines)


def _masters(header: dict, night: str) -> str:
    """ ", masters of 2023-05-09 (1.2 d)" when a stack's masters were borrowed."""
    parts = []
    for kind, (key, days) in {
        "dark": ("ARDKNGT", "ARDKDAYS"),
        "flat": ("ARFLNGT", "ARFLDAYS"),
    }.items():
        lender = header.get(key)
        if lender and lender != night:
            parts.append(f"{kind} of {lender} ({header.get(days, '?')} d)")
    return f", borrowed {' and '.join(parts)}" if parts else ""


def main(argv: list[str] | None = None) -> int:
    """Summarise each night folder given (default: the current folder)."""
    args = (sys.argv[1:] if argv is None else argv) or ["."]
    print("\n".join(summarise(Path(arg)) for arg in args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
