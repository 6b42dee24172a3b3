"""The night's QC figure: each science frame's FWHM, sky, transparency and shift against time.

A data manager reads a night at a glance: a cloud passing, focus drifting, a trailed frame,
a frame of another field, each rejected frame marked with a red cross. Drawn from the
manifest's frame QC records, with matplotlib's object API (no pyplot, no global state) and
imported only here, only when the figure is drawn: the cosmetic path never loads it.
A figure whose records did not change is not redrawn (its key is in the PNG's text).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

from .fitsio import write_bytes_atomic
from .layout import QC_FIGURE, NightLayout
from .workers import die_with

log = logging.getLogger(__name__)
FIGURE_FILE = QC_FIGURE
DRAW_TIMEOUT_S = 60.0
KEY_TEXT = b"arkey"
PANELS = (
    ("fwhm_arcsec", "FWHM (arcsec)"),
    ("sky", "sky (ADU)"),
    ("transparency", "transparency"),
    ("shift_px", "shift (px)"),
)


def frame_points(manifest: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per group, its frames' QC records (with the shift's length), in time order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for name, group in sorted(manifest.get("groups", {}).items()):
        frames = (group.get("stack") or {}).get("qc") or []
        points = []
        for qc in frames:
            point = dict(qc)
            shift = qc.get("shift")
            point["shift_px"] = None if not shift else round(float(abs(complex(*shift))), 3)
            points.append(point)
        if points:
            groups[name] = sorted(points, key=lambda p: p.get("date_obs") or "")
    return groups


def figure_key(night: str, groups: dict[str, list[dict[str, Any]]]) -> str:
    """What the figure is drawn from: the records and this module's drawing code."""
    code = Path(__file__).read_bytes()
    payload = json.dumps({"night": night, "groups": groups}, sort_keys=True).encode()
    return hashlib.sha256(hashlib.sha256(code).digest() + payload).hexdigest()[:32]


def png_key(path: Path) -> str | None:
    """The key in a PNG's `arkey` text chunk (None: no such file or no key)."""
    try:
        head = path.read_bytes()[:4096]
    except OSError:
        return None
    start = head.find(b"tEXt" + KEY_TEXT + b"\0")
    if start < 0:
        return None
    length = int.from_bytes(head[start - 4 : start], "big")
    return head[start + 4 + len(KEY_TEXT) + 1 : start + 4 + length].decode("latin-1")


def write_night_figure(
    layout: NightLayout, manifest: dict[str, Any], drawer: Drawer | None = None
) -> Path | None:
    """Draw <night>/qc_frames.png beside the manifest (None: no frame QC to draw), with the
    `drawer` process when there is one; a current figure is left as it is."""
    groups = frame_points(manifest)
    if not groups:
        return None
    path = layout.out_dir / FIGURE_FILE
    night = str(manifest.get("night", layout.name))
    key = figure_key(night, groups)
    if png_key(path) == key:
        return path
    png = drawer.draw(night, groups, key) if drawer is not None else draw(night, groups, key)
    write_bytes_atomic(path, png)
    log.debug("QC figure %s drawn.", path)
    return path


class Drawer:
    """A forked process that imports matplotlib while the night is reduced (0.5-0.7 s of CPU
    that a 2-core machine has idle then, in no process's way: an import thread in the CLI
    held the GIL its task dispatch needed) and draws the figure when asked.

    Fork it before any thread starts (as the workers are). If it dies, the caller draws."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("fork")
        self._connection, child = context.Pipe()
        arguments = (child, self._connection, os.getpid())
        self._process = context.Process(
            target=_serve, args=arguments, name="qc-figure", daemon=True
        )
        self._process.start()
        child.close()

    def draw(self, night: str, groups: dict[str, list[dict[str, Any]]], key: str) -> bytes:
        try:
            self._connection.send((night, groups, key))
            if self._connection.poll(DRAW_TIMEOUT_S):
                done, payload = self._connection.recv()
                if done:
                    return payload
                log.debug("The QC figure's process failed: %s", payload)
        except (OSError, EOFError) as exc:
            log.debug("The QC figure's process is gone: %s", exc)
        return draw(night, groups, key)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._connection.send(None)
        self._connection.close()
        self._process.join(DRAW_TIMEOUT_S)
        if self._process.is_alive():
            self._process.kill()


def _serve(connection: Any, callers_end: Any, caller: int) -> None:
    """The drawer process: import, then draw what is asked (None: stop). It dies with its
    caller, even a killed one, as the workers do."""
    die_with(caller)
    callers_end.close()  # the pipe then ends when the caller's end closes
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's
    preload()
    try:
        request = connection.recv()
    except EOFError:
        return
    if request is None:
        return
    try:
        connection.send((True, draw(*request)))
    except Exception as exc:  # reported to the caller, which then draws itself
        connection.send((False, repr(exc)))


def preload() -> None:
    """Import what drawing needs (0.5-0.7 s), so the figure costs only its drawing later;
    never fails: drawing will say what is missing."""
    try:
        import matplotlib.backends.backend_agg
        import matplotlib.dates
        import matplotlib.figure  # noqa: F401
    except Exception as exc:
        log.debug("matplotlib could not be imported ahead: %s", exc)


def draw(night: str, groups: dict[str, list[dict[str, Any]]], key: str) -> bytes:
    """The figure as PNG bytes: one panel per figure, one colour per group, rejected frames
    as red crosses, the reference frame ringed."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import DateFormatter
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    # A fixed layout: matplotlib's constrained layout doubled the drawing time.
    figure = Figure(figsize=(9, 8.5))
    figure.subplots_adjust(left=0.09, right=0.98, top=0.94, bottom=0.12, hspace=0.08)
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(PANELS), 1, sharex=True)
    for number, (name, points) in enumerate(groups.items()):
        dated = [(_time(p.get("date_obs")), p) for p in points]
        dated = [(when, p) for when, p in dated if when is not None]
        for axis, (field, _) in zip(axes, PANELS, strict=True):
            kept = [(when, p[field]) for when, p in dated if _plotted(p, field, True)]
            left = [(when, p[field]) for when, p in dated if _plotted(p, field, False)]
            refs = [(when, p[field]) for when, p in dated if p.get("reference") and _has(p, field)]
            if kept:
                axis.plot(*_columns(kept), "o-", color=f"C{number % 10}", ms=4, lw=0.8, label=name)
            if left:
                axis.plot(*_columns(left), "x", color="red", ms=9, mew=2)
                if field == PANELS[0][0]:  # the reason's first words, once, on the top panel
                    for when, p in dated:
                        if not p.get("stacked") and _has(p, field):
                            axis.annotate(
                                _short(p.get("reason")),
                                (when, p[field]),
                                fontsize=7,
                                color="red",
                                xytext=(5, 3),
                                textcoords="offset points",
                            )
            if refs:
                axis.plot(*_columns(refs), "o", mfc="none", mec="black", ms=9)
    for axis, (_, label) in zip(axes, PANELS, strict=True):
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.yaxis.set_major_locator(MaxNLocator(4))  # few ticks: ticks are most of the time
    axes[2].axhline(1.0, color="grey", lw=0.5)
    axes[2].set_ylim(0, 1.08)  # from 0: a 2% jitter must not read as a cloud
    axes[-1].set_xlabel("DATE-OBS (UT, hours)")
    rejected = sum(1 for points in groups.values() for p in points if not p.get("stacked"))
    total = sum(len(points) for points in groups.values())
    figure.suptitle(
        f"T120 night {night}: {total} science frames, {rejected} left out of stacks (red x); "
        "reference ringed"
    )
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        columns = min(4, len(handles))
        figure.legend(handles, labels, loc="lower center", ncols=columns, fontsize=8)
    axes[-1].xaxis.set_major_formatter(DateFormatter("%H:%M"))
    axes[-1].xaxis.set_major_locator(MaxNLocator(6))
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=80, metadata={KEY_TEXT.decode(): key})
    return out.getvalue()


def _short(reason: Any) -> str:
    """'transparency 0.31 of ...' -> 'transparency'; 'does not register: ...' -> 'no match'."""
    text = str(reason or "")
    if text.startswith("does not register"):
        return "does not register"
    return text.split(" ")[0] if text else ""


def _columns(points: list[tuple[Any, Any]]) -> tuple[list[Any], list[Any]]:
    return [p[0] for p in points], [p[1] for p in points]


def _has(point: dict[str, Any], field: str) -> bool:
    return point.get(field) is not None


def _plotted(point: dict[str, Any], field: str, stacked: bool) -> bool:
    return _has(point, field) and bool(point.get("stacked")) == stacked


def _time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None
