"""`python -m bench.dark_choice`: the night's own interpolated dark against a neighbour's
measured dark of the exact exposure, both against the truth.

A night with darks at 5 s and 180 s (5 each) and science at 60 s can make its 60 s dark
from its own dark line; the night before has 5 darks of 60 s. Which is nearer the truth of
this night's 60 s dark (its bias + dark rate x 60 s)? Measured for a bias that does not move
between the nights and for one that moved by a few ADU (a CCD's bias drifts with its
electronics and after warm-ups). Errors over the pixels that are not hot (the hot pixels
separately), in ADU. Prints a table; bench/results/dark_choice.json keeps it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits

from ar_tasks import pipeline
from ar_tasks.synthetic import NightSpec, load_truth, write_night
from bench.harness import save_results

REPO = Path(__file__).resolve().parent.parent
SCIENCE = (("M 67", "V", 60.0, 3),)
FLATS = (("V", 5.0, 5),)


def errors(master: Path, truth, exposure_s: float) -> dict[str, float]:
    data = fits.getdata(master).astype(np.float64)
    residual = data - (truth.bias + truth.dark_rate * exposure_s)
    cold, hot = residual[~truth.hot_pixels], residual[truth.hot_pixels]
    return {
        "rms_adu": float(np.sqrt(np.mean(cold**2))),
        "mean_adu": float(np.mean(cold)),
        "hot_rms_adu": float(np.sqrt(np.mean(hot**2))),
    }


def case(drift_adu: float, size: int, work: Path) -> dict[str, dict[str, float]]:
    raw = work / f"raw{drift_adu:g}"
    shutil.rmtree(raw, ignore_errors=True)
    common = {"size": size, "science": SCIENCE, "flats": FLATS}
    write_night(raw, NightSpec(night="2023-05-09", darks=((60.0, 5),), **common))
    write_night(
        raw,
        NightSpec(
            night="2023-05-10",
            darks=((5.0, 5), (180.0, 5)),
            bias_offset_adu=drift_adu,
            **common,
        ),
    )
    truth = load_truth(raw / "_truth" / "2023-05-10")
    own = work / f"own{drift_adu:g}"
    pipeline.prepare_night(str(raw), str(own), "2023-05-10", {"interpolate": True})
    borrowed = work / f"borrowed{drift_adu:g}"
    pipeline.prepare_night(str(raw), str(borrowed), "2023-05-10", {"interpolate": False})
    return {
        "own dark line (5 s + 180 s)": errors(
            own / "2023-05-10/ar_masters/mdark_60000.fits", truth, 60
        ),
        "neighbour's measured 60 s": errors(
            borrowed / "2023-05-10/ar_masters/mdark_60000.fits", truth, 60
        ),
    }


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="ar_dark_choice_"))
    results = {}
    try:
        for drift in (0.0, 2.0, 5.0):
            results[f"{drift:g}"] = case(drift, 1024, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    save_results("dark_choice", results)
    print(
        "| bias drift between the nights | master dark of 60 s | RMS error | mean error "
        "| hot pixels RMS |"
    )
    print("|---:|---|---:|---:|---:|")
    for drift, rows in results.items():
        for name, figures in rows.items():
            print(
                f"| {drift} ADU | {name} | {figures['rms_adu']:.2f} | {figures['mean_adu']:+.2f} | "
                f"{figures['hot_rms_adu']:.2f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
