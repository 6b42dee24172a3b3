"""Archive trends: per night, the figures a drift shows in (a warming camera, a dusty filter,
a focus that wanders), from the night index, drawn with matplotlib.

A data manager reads years at a glance: one panel per figure against the night's date, failed
nights marked. `series` is the data (pure, tested); `draw` the picture (matplotlib imported
only there, with its object API: no pyplot, no global state).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from datetime import date
from typing import Any

PANELS = (
    ("sky_adu_s", "sky (ADU/s)"),
    ("fwhm_arcsec", "median FWHM (arcsec)"),
    ("dark_level_adu", "master dark level (ADU)"),
    ("dark_noise_adu", "master dark noise (ADU)"),
    ("flat_change", "flat vs previous (99.9%)"),
    ("rejected_fraction", "science frames left out"),
    ("solve_rate", "astrometric solve rate"),
)


BY_FILTER = ("sky_adu_s", "flat_change")  # one series per filter


def series(
    entries: Iterable[dict[str, Any]], first: str | None = None, last: str | None = None
) -> dict[str, Any]:
    """Per figure, (night, value) pairs in night order within [first, last]; the sky per
    filter; the nights that failed. Nights without a figure are left out of its series."""
    chosen = sorted(
        (e for e in entries if _within(str(e.get("night", "")), first, last)),
        key=lambda e: str(e["night"]),
    )
    out: dict[str, Any] = {name: [] for name, _ in PANELS if name not in BY_FILTER}
    out.update({name: {} for name in BY_FILTER})
    out["failed"] = [e["night"] for e in chosen if e.get("status") != "success"]
    for entry in chosen:
        night = entry["night"]
        for band, rate in (entry.get("sky_adu_s") or {}).items():
            if rate is not None:
                out["sky_adu_s"].setdefault(band, []).append((night, rate))
        for band, flat in (entry.get("flats") or {}).items():
            tail = ((flat or {}).get("vs_previous") or {}).get("p999")
            if tail is not None:
                out["flat_change"].setdefault(band, []).append((night, tail))
        if entry.get("fwhm_arcsec") is not None:
            out["fwhm_arcsec"].append((night, entry["fwhm_arcsec"]))
        dark = _longest_dark(entry.get("darks") or {})
        if dark.get("level_adu") is not None:
            out["dark_level_adu"].append((night, dark["level_adu"]))
        if dark.get("noise_adu") is not None:
            out["dark_noise_adu"].append((night, dark["noise_adu"]))
        science = (entry.get("frames") or {}).get("object") or 0
        if science:
            out["rejected_fraction"].append((night, round(entry.get("rejected", 0) / science, 4)))
        solved, images = (entry.get("solved") or [0, 0])[:2]
        if images:
            out["solve_rate"].append((night, round(solved / images, 4)))
    return out


def _within(night: str, first: str | None, last: str | None) -> bool:
    return bool(night) and (not first or night >= first) and (not last or night <= last)


def _longest_dark(darks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The master dark of the night's longest exposure (the most dark current: drifts show)."""
    exposures = [name for name in darks if str(name).isdigit()]
    return darks[max(exposures, key=int)] if exposures else {}


def draw(data: dict[str, Any], title: str) -> bytes:
    """The trends as PNG bytes: one panel per figure against the date, failed nights as red
    ticks along the bottom of every panel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(10, 12.5))
    figure.subplots_adjust(left=0.09, right=0.97, top=0.95, bottom=0.06, hspace=0.12)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(PANELS), 1, sharex=True)
    failed = [_date(n) for n in data.get("failed", [])]
    for axis, (name, label) in zip(axes, PANELS, strict=True):
        if name in BY_FILTER:
            for number, (band, points) in enumerate(sorted(data[name].items())):
                axis.plot(*_columns(points), ".", ms=3, color=f"C{number % 10}", label=band)
            if data[name]:
                axis.legend(loc="upper right", fontsize=7, ncols=len(data[name]))
        elif data[name]:
            axis.plot(*_columns(data[name]), ".", ms=3, color="C0")
        for when in failed:
            axis.axvline(when, ymax=0.04, color="red", lw=0.8)
        if name in ("rejected_fraction", "solve_rate"):  # fractions: the whole scale
            axis.set_ylim(0, 1.05 if name == "solve_rate" else None)
        axis.set_ylabel(label, fontsize=8)
        axis.grid(alpha=0.3)
        axis.yaxis.set_major_locator(MaxNLocator(4))
    axes[-1].set_xlabel("night")
    figure.suptitle(title)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=80)
    return out.getvalue()


def _date(night: str) -> date:
    return date.fromisoformat(night)


def _columns(points: list[tuple[str, float]]) -> tuple[list[date], list[float]]:
    return [_date(n) for n, _ in points], [v for _, v in points]
