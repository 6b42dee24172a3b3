"""Archive trends from the night index: a drift is in the data and in the picture."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from ar_tasks import trends


def _entries(nights: int = 200):
    """A camera that warms by 0.05 ADU a night from night 100; a failed night in 20."""
    out = []
    for i in range(nights):
        night = f"2021-{1 + i // 28:02d}-{1 + i % 28:02d}"
        level = 304.0 + (0.05 * (i - 100) if i >= 100 else 0.0) + 0.1 * np.sin(i)
        out.append(
            {
                "night": night,
                "status": "failed" if i % 20 == 7 else "success",
                "sky_adu_s": {"V": 3.0, "R": None},
                "fwhm_arcsec": 2.8,
                "darks": {"5000": {"level_adu": 300.0}, "60000": {"level_adu": level}},
                "frames": {"object": 25},
                "rejected": 1,
                "solved": [29, 30],
            }
        )
    return out


def test_series_follow_the_nights_and_show_the_drift():
    data = trends.series(_entries())
    levels = np.array([v for _, v in data["dark_level_adu"]])
    assert len(levels) == 200  # the longest exposure's dark, not the 5 s one
    before, after = (
        np.polyfit(np.arange(100), levels[:100], 1)[0],
        np.polyfit(np.arange(100), levels[100:], 1)[0],
    )
    assert abs(before) < 0.005 and abs(after - 0.05) < 0.005  # flat, then the warming
    assert data["rejected_fraction"][0] == ("2021-01-01", 0.04)
    assert data["solve_rate"][0] == ("2021-01-01", 0.9667)
    assert list(data["sky_adu_s"]) == ["V"]  # a filter without a figure has no series
    assert len(data["failed"]) == 10
    chosen = trends.series(_entries(), first="2021-02-01", last="2021-02-28")
    assert [n for n, _ in chosen["fwhm_arcsec"]] == [f"2021-02-{d:02d}" for d in range(1, 29)]


def test_the_picture_is_drawn_and_matplotlib_is_imported_only_to_draw():
    png = trends.draw(trends.series(_entries()), "T120 2021")
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    code = "import sys; import ar_tasks.trends; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False"
