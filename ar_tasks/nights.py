"""Which observing night a run reduces, and which nights of an archive have raw data.

An observing night is named after the local date (Europe/Paris) of its evening: the night
2023-05-10 runs from noon on 10 May to noon on 11 May, local time. The DAG's data interval
(noon to noon) starts on that date, so the night is the interval's start date in Paris.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from zoneinfo import ZoneInfo

from . import camera, storage
from .inventory import entry_stamp, find_raw_files

OBSERVATORY_TZ = ZoneInfo("Europe/Paris")
NIGHT_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")
NIGHT_STARTS_AT = dt.time(12, 0)


def parse_night(text: str) -> dt.date:
    """A night name YYYY-MM-DD as a date, or ValueError saying what is wrong."""
    if not NIGHT_PATTERN.match(text or ""):
        raise ValueError(f"night {text!r} is not a date YYYY-MM-DD")
    return dt.date.fromisoformat(text)


def night_of(moment: dt.datetime) -> str:
    """The observing night that contains a moment (local noon to local noon)."""
    local = moment.astimezone(OBSERVATORY_TZ)
    day = local.date() if local.time() >= NIGHT_STARTS_AT else local.date() - dt.timedelta(days=1)
    return day.isoformat()


def last_complete_night(run_after: dt.datetime) -> str:
    """The latest night that has ended (reached the next local noon) by `run_after`."""
    ended_by = run_after.astimezone(OBSERVATORY_TZ) - dt.timedelta(days=1)
    return night_of(ended_by)


def run_range(
    first: str | None,
    last: str | None,
    data_interval_start: dt.datetime | None,
    run_after: dt.datetime,
) -> tuple[str, str]:
    """The first and last night of a t120_reduce run: its params, else its own night (a
    scheduled run's interval; a manual run's last complete night). The DAG and the night
    browser's run tab both ask this."""
    own = night_of(data_interval_start) if data_interval_start else last_complete_night(run_after)
    first = first or own
    return first, last or first


def night_range(first: str, last: str) -> list[str]:
    """Every night name from first to last inclusive."""
    start, end = parse_night(first), parse_night(last)
    if end < start:
        raise ValueError(f"last night {last} is before first night {first}")
    return [(start + dt.timedelta(days=d)).isoformat() for d in range((end - start).days + 1)]


def has_raw_data(night_dir: Path) -> bool:
    """True when a night folder holds at least one FITS file in DARK/, FLAT/ or ORIGINAL/."""
    for folder in camera.FRAME_FOLDERS:
        directory = night_dir / folder
        if directory.is_dir() and any(camera.is_fits_name(p.name) for p in directory.iterdir()):
            return True
    return False


def nights_with_raw_data(
    raw_root: str | Path, first: str, last: str, s3: dict[str, str] | None = None
) -> list[str]:
    """The nights in [first, last] whose raw folder exists and holds frames.

    In S3, one paginated listing of the root's prefixes (not a request per night): a night
    prefix exists only when it holds objects.
    """
    wanted = set(night_range(first, last))
    if storage.is_s3(raw_root):
        store = storage.S3Store(storage.S3Settings(**(s3 or {})))
        return [name for name in store.list_prefixes(str(raw_root)) if name in wanted]
    if not Path(raw_root).is_dir():
        raise FileNotFoundError(f"raw root {raw_root} does not exist")
    found = [
        entry.name
        for entry in Path(raw_root).iterdir()
        if entry.name in wanted and entry.is_dir() and has_raw_data(entry)
    ]
    return sorted(found)


def raw_stamps(
    raw_root: str | Path,
    night: str,
    s3: dict[str, str] | None = None,
    folders: tuple[str, ...] = tuple(camera.FRAME_FOLDERS),
) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of each FITS file of a night's DARK/, FLAT/ and ORIGINAL/, by relative
    path: the files an inventory would read, listed without reading any (in S3: one listing;
    a staged object keeps the object's time, so the stamps compare with the inventory's).
    Only `folders` (DARK/ and FLAT/ for the calibration library): one listing each in S3."""
    if storage.is_s3(raw_root):
        store = storage.S3Store(storage.S3Settings(**(s3 or {})))
        whole = len(folders) == len(camera.FRAME_FOLDERS)
        stamps = {}
        for prefix in [""] if whole else list(folders):
            for remote in store.list_files(storage.join(str(raw_root), night, prefix)):
                relative = f"{prefix}/{remote.relpath}" if prefix else remote.relpath
                if _is_raw_file(relative):
                    stamps[relative] = (remote.size, remote.mtime_ns)
        return stamps
    night_dir = Path(raw_root) / night
    paths, _, unusable = find_raw_files(night_dir, folders)
    return {path: entry_stamp(night_dir / path) for path in [*paths, *unusable]}


def _is_raw_file(relative: str) -> bool:
    """An object key find_raw_files would list: a FITS file directly in a frame folder."""
    folder, _, name = relative.partition("/")
    return (
        folder in camera.FRAME_FOLDERS
        and "/" not in name
        and not name.startswith(".")
        and camera.is_fits_name(name)
    )
