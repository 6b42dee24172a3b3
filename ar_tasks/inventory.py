"""Inventory of a night: find the raw frames, validate them, quarantine the bad ones, group.

The inventory is the single source of truth for every later step: stacks use exactly the frames
listed here (5.1.3 globbed its working folders and stacked stale files, bug B17), and it is
saved as JSON so a rerun, the CLI and the DAG all see the same night.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import camera
from .fitsio import FrameError, KnownFile, racy_ns, scan_frame
from .threads import default_jobs, run_each

INVENTORY_VERSION = 2  # 2: instrument, binning and CCD set-point of each frame
MAX_NONFINITE_FRACTION = 0.5  # a frame with more NaN/inf pixels than this is unusable
FOLDER_OF = {"dark": "DARK", "flat": "FLAT", "object": "ORIGINAL"}


@dataclass(frozen=True, order=True)
class GroupKey:
    """One stack: all science frames of an (object, filter, exposure)."""

    object: str
    filter: str
    exposure_ms: int

    @property
    def name(self) -> str:
        """astro_reduce's stack name, `<OBJ>_<FILTER>_<ms>`."""
        return f"{self.object}_{self.filter}_{self.exposure_ms}"

    @property
    def label(self) -> str:
        """Readable label, e.g. 'M-67 V 60s'."""
        seconds = self.exposure_ms / 1000
        return f"{self.object or '(no object)'} {self.filter} {seconds:g}s"

    @classmethod
    def parse(cls, name: str) -> GroupKey:
        """Inverse of `name` (object names never contain '_')."""
        obj, filt, exposure = name.rsplit("_", 2)
        return cls(obj, filt, int(exposure))


@dataclass(frozen=True)
class Frame:
    """One usable raw frame, with the facts the reduction needs."""

    path: str  # relative to the raw night folder, e.g. "ORIGINAL/m67-001.fits"
    kind: str  # "dark", "flat" or "object"
    exposure_ms: int
    filter: str = ""
    object: str = ""
    sha256: str = ""
    date_obs: str = ""
    nonfinite: int = 0
    size: int = 0  # bytes, with mtime_ns: lets a new inventory reuse this record unread
    mtime_ns: int = 0
    ctime_ns: int = 0  # with size and mtime_ns: the bytes are still those hashed (see known);
    # 0 only for a file that kept changing while inspected (always hashed when read)
    shape: tuple[int, int] = (0, 0)
    raw_object: str = ""  # OBJECT and FILTER as written in the header
    raw_filter: str = ""
    instrument: str = ""  # INSTRUME, binning ("2x2") and CCD set-point (SET-TEMP, degC):
    binning: str = ""  # what a master borrowed from another night must match
    set_temp: float | None = None

    @property
    def id(self) -> str:
        """astro_reduce's frame id: the MD5 of the relative path string."""
        return hashlib.md5(self.path.encode()).hexdigest()

    @property
    def known(self) -> KnownFile:
        """The file as the inventory hashed it: read_frame skips the hash while it is unchanged."""
        return KnownFile((self.size, self.mtime_ns, self.ctime_ns), self.sha256)

    @property
    def working_name(self) -> str:
        """astro_reduce's working-copy name in ar_darks/, ar_flats/ or ar_objects/."""
        if self.kind == "dark":
            return f"dark_{self.exposure_ms}_{self.id}.fits"
        if self.kind == "flat":
            return f"flat_{self.filter}_{self.exposure_ms}_{self.id}.fits"
        return f"{self.object}_{self.filter}_{self.exposure_ms}_{self.id}.fits"

    @property
    def stem(self) -> str:
        return self.working_name.removesuffix(".fits")

    @property
    def group(self) -> GroupKey:
        return GroupKey(self.object, self.filter, self.exposure_ms)


@dataclass(frozen=True)
class Problem:
    """A raw file left out of the reduction, and why."""

    path: str
    reason: str
    size: int = 0  # the file's stamp when it was read, as Frame's (mtime_ns 0: unknown)
    mtime_ns: int = 0


@dataclass
class Inventory:
    """Every usable frame of a night, the quarantined files, and the night's frame shape."""

    frames: list[Frame] = field(default_factory=list)
    quarantined: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    shape: tuple[int, int] | None = None

    def of_kind(self, kind: str) -> list[Frame]:
        return [f for f in self.frames if f.kind == kind]

    def darks_by_exposure(self) -> dict[int, list[Frame]]:
        return _grouped(self.of_kind("dark"), lambda f: f.exposure_ms)

    def flats_by_filter(self) -> dict[str, list[Frame]]:
        return _grouped(self.of_kind("flat"), lambda f: f.filter)

    def groups(self) -> dict[GroupKey, list[Frame]]:
        return _grouped(self.of_kind("object"), lambda f: f.group)

    def needed_exposures(self) -> list[int]:
        """Exposures that need a master dark: those of the flats and the science frames."""
        return sorted({f.exposure_ms for f in self.frames if f.kind != "dark"})

    def config(self) -> dict[str, list[Any]]:
        """astro_reduce's `<dir>.json` content, with sorted (reproducible) lists."""
        return {
            "objects": sorted({f.object for f in self.of_kind("object")}),
            "exposures": sorted({f.exposure_ms for f in self.frames}),
            "filters": sorted({f.filter for f in self.frames if f.kind != "dark"}),
        }

    def to_json(self) -> str:
        payload = {
            "version": INVENTORY_VERSION,
            "shape": list(self.shape) if self.shape else None,
            "frames": [asdict(f) for f in self.frames],
            "quarantined": [asdict(p) for p in self.quarantined],
            "warnings": self.warnings,
        }
        return json.dumps(payload, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Inventory:
        payload = json.loads(text)
        if payload.get("version") != INVENTORY_VERSION:
            raise ValueError(f"unsupported inventory version {payload.get('version')!r}")
        return cls(
            frames=[
                Frame(**{**f, "shape": tuple(f.get("shape", (0, 0)))}) for f in payload["frames"]
            ],
            quarantined=[Problem(**p) for p in payload["quarantined"]],
            warnings=list(payload["warnings"]),
            shape=tuple(payload["shape"]) if payload["shape"] else None,
        )


def _grouped(frames: list[Frame], key: Any) -> dict[Any, list[Frame]]:
    grouped: dict[Any, list[Frame]] = defaultdict(list)
    for frame in frames:
        grouped[key(frame)].append(frame)
    return dict(sorted(grouped.items()))


def find_raw_files(
    night_dir: Path, folders: tuple[str, ...] = tuple(camera.FRAME_FOLDERS)
) -> tuple[list[str], list[str], dict[str, str]]:
    """Relative paths of the FITS files in DARK/, FLAT/ and ORIGINAL/ (or only `folders`),
    sorted; a note for each other file; and the entries named like FITS files that are no
    file to read (a directory, a dangling link, a link loop...), each with why.

    Any case of .fits/.fit/.fts, optionally .gz or .fz (5.1.3's case-sensitive `*.fit*` skipped
    .fts and .FITS silently).
    """
    found: list[str] = []
    ignored: list[str] = []
    unusable: dict[str, str] = {}
    for folder in folders:
        directory = night_dir / folder
        if not directory.is_dir():
            continue
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith("."):
                continue
            relative = f"{folder}/{entry.name}"
            if not camera.is_fits_name(entry.name):
                if entry.is_file():
                    ignored.append(f"{relative} is not named like a FITS file: ignored.")
                continue
            reason = not_a_file(entry)
            if reason:
                unusable[relative] = reason
            else:
                found.append(relative)
    return found, ignored, unusable


def not_a_file(entry: Path) -> str:
    """Why a directory entry is no regular file to read ("" when it is one)."""
    try:
        mode = entry.stat().st_mode
    except FileNotFoundError:
        return f"is a link to `{os.readlink(entry)}`, which does not exist"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop"
        return f"cannot be examined ({exc.strerror or exc})"
    if stat.S_ISDIR(mode):
        return "is a directory, not a FITS file"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a device, pipe or socket)"
    return ""


def entry_stamp(path: Path) -> tuple[int, int]:
    """(size, mtime_ns) of a directory entry: of what it points to, else of the link itself."""
    try:
        found = path.stat()
    except OSError:
        try:
            found = path.lstat()
        except OSError:
            return 0, 0
    return found.st_size, found.st_mtime_ns


def inspect(night_dir: Path, relative: str) -> Frame:
    """Read and validate one raw file.

    A file read within the racy window of its last write (just staged or written) is read again
    once that window is past, so its stamp vouches for the hash and the record does not depend
    on when the inventory ran. Raises FrameError or camera.HeaderError with the reason.
    """
    kind = camera.FRAME_FOLDERS[relative.split("/", 1)[0]]
    raw = scan_frame(night_dir / relative)
    if raw.known is None and (wait := racy_ns(raw.stamp)):
        time.sleep(wait / 1e9)
        raw = scan_frame(night_dir / relative)  # header and hash from the same, later, bytes
    header = raw.header
    _check_declared_kind(kind, header)
    exposure = camera.exposure_ms(header)
    raw_filter = raw_object = ""
    filt = obj = ""
    if kind in ("flat", "object"):
        raw_filter = camera.header_text(header, "FILTER")
        filt = camera.sanitize_filter(raw_filter)
        if not filt:
            raise camera.HeaderError(f"has FILTER = {raw_filter!r}, which leaves no usable name")
    if kind == "object":
        raw_object = camera.header_text(header, "OBJECT")
        obj = camera.sanitize_object(raw_object)
    nonfinite, size = raw.nonfinite, raw.shape[0] * raw.shape[1]
    if nonfinite > MAX_NONFINITE_FRACTION * size:
        raise FrameError(f"has {nonfinite} NaN or infinite pixels of {size}")
    size, mtime_ns, _ = raw.stamp
    frame = Frame(
        path=relative,
        kind=kind,
        exposure_ms=exposure,
        filter=filt,
        object=obj,
        sha256=raw.sha256,
        date_obs=str(header.get("DATE-OBS", "")),
        nonfinite=nonfinite,
        size=size,
        mtime_ns=mtime_ns,
        ctime_ns=raw.known.stamp[2] if raw.known else 0,  # 0: always hashed when read
        shape=raw.shape,
        raw_object=raw_object,
        raw_filter=raw_filter,
        **camera.setup(header),
    )
    return frame


def _check_declared_kind(kind: str, header: Any) -> None:
    """FrameError when IMAGETYP clearly says another kind than the frame's folder (a bias
    frame is a dark of 0 s: accepted in DARK/). The pixels' plausibility is checked where
    they are read for a master (steps.masters)."""
    declared = camera.declared_kind(header)
    if declared and declared != kind and not (kind == "dark" and declared == "bias"):
        value = str(header.get("IMAGETYP", "")).strip()
        raise FrameError(f"has IMAGETYP = {value!r} but is in {FOLDER_OF[kind]}/")


def take_inventory(
    night_dir: Path,
    previous: Inventory | None = None,
    jobs: int | None = None,
    folders: tuple[str, ...] = tuple(camera.FRAME_FOLDERS),
) -> Inventory:
    """Inventory of one night folder holding DARK/, FLAT/ and ORIGINAL/ (or only `folders`:
    the calibration library inventories another night's DARK/ and FLAT/).

    Frames of `previous` whose file has the same size and modification time are reused without
    reading them again (reading every frame of a night costs more than the rest of a rerun);
    every step checks the SHA-256 when it reads a frame (unless even its ctime is unchanged),
    so a change is still caught. The files are read `jobs` at a time (default: the cores), in
    threads.
    """
    night_dir = Path(night_dir)
    paths, ignored, unusable = find_raw_files(night_dir, folders)
    known = {f.path: f for f in previous.frames} if previous else {}
    inventory = Inventory(warnings=ignored)
    for relative, reason in unusable.items():
        inventory.quarantined.append(Problem(relative, reason, *entry_stamp(night_dir / relative)))
    candidates: list[tuple[Frame, tuple[int, int]]] = []
    # (keyword, safe name) -> each original value -> the first file that has it
    raw_names: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)

    def examine(relative: str) -> Frame | Problem:
        frame = known.get(relative)
        if _unchanged(night_dir, frame):
            assert frame is not None
            return frame
        size, mtime_ns = _stamp_before_reading(night_dir / relative)
        try:
            return inspect(night_dir, relative)
        except (FrameError, camera.HeaderError) as exc:
            return Problem(relative, str(exc), size, mtime_ns)

    for frame in run_each(examine, paths, default_jobs() if jobs is None else jobs):
        if isinstance(frame, Problem):
            inventory.quarantined.append(frame)
            continue
        candidates.append((frame, frame.shape))
        if frame.kind == "object":
            raw_names[("OBJECT", frame.object)].setdefault(frame.raw_object, frame.path)
        if frame.kind != "dark":
            raw_names[("FILTER", frame.filter)].setdefault(frame.raw_filter, frame.path)
    candidates = _without_copies(candidates, inventory)
    if candidates:
        inventory.shape = _night_shape([shape for _, shape in candidates])
    for frame, shape in candidates:
        if shape != inventory.shape:
            assert inventory.shape is not None
            reason = f"is {_size(shape)} while the night's frames are {_size(inventory.shape)}"
            inventory.quarantined.append(Problem(frame.path, reason, frame.size, frame.mtime_ns))
        else:
            inventory.frames.append(frame)
    inventory.quarantined.sort(key=lambda p: p.path)
    inventory.warnings.extend(_name_warnings(raw_names))
    return inventory


def _without_copies(
    candidates: list[tuple[Frame, tuple[int, int]]], inventory: Inventory
) -> list[tuple[Frame, tuple[int, int]]]:
    """The candidates less byte-identical copies (same SHA-256): the first by path is used,
    each other is quarantined naming it (a copied dark would count twice in its master)."""
    first: dict[str, str] = {}
    kept = []
    for frame, shape in sorted(candidates, key=lambda c: c[0].path):
        original = first.setdefault(frame.sha256, frame.path)
        if original != frame.path:
            reason = f"is a byte-identical copy of {original}: used once"
            inventory.quarantined.append(Problem(frame.path, reason, frame.size, frame.mtime_ns))
        else:
            kept.append((frame, shape))
    return kept


def _stamp_before_reading(path: Path) -> tuple[int, int]:
    """(size, mtime_ns) of a file about to be read, taken once the racy window of its last
    write is past (as inspect does), so that it vouches for what is read next; (0, 0) when
    the file cannot be stat'ed."""
    try:
        stat = path.stat()
        if wait := racy_ns((stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)):
            time.sleep(wait / 1e9)
            stat = path.stat()
    except OSError:
        return 0, 0
    return stat.st_size, stat.st_mtime_ns


def describes(inventory: Inventory, stamps: dict[str, tuple[int, int]]) -> bool:
    """True when `inventory` was taken from exactly these raw files, none changed since:
    `stamps` maps each FITS file's relative path to (size, mtime_ns), as listed now. Then
    the inventory holds without reading a single frame (the cheap check of a rerun)."""
    recorded = {f.path: (f.size, f.mtime_ns) for f in inventory.frames}
    recorded.update({p.path: (p.size, p.mtime_ns) for p in inventory.quarantined})
    return recorded == stamps and all(mtime_ns for _, mtime_ns in recorded.values())


def _unchanged(night_dir: Path, frame: Frame | None) -> bool:
    """True when a previously inventoried file still has the same size and mtime (not ctime: a
    raw frame staged again from S3 gets the object's mtime back, but a new ctime)."""
    if frame is None or not frame.size:
        return False
    try:
        stat = (night_dir / frame.path).stat()
    except OSError:
        return False
    return stat.st_size == frame.size and stat.st_mtime_ns == frame.mtime_ns


def _night_shape(shapes: list[tuple[int, int]]) -> tuple[int, int]:
    """The most common frame shape (ties: the larger frame)."""
    counts = Counter(shapes)
    return max(counts, key=lambda s: (counts[s], s[0] * s[1], s))


def _size(shape: tuple[int, int]) -> str:
    return f"{shape[1]}x{shape[0]} px"


def _name_warnings(raw_names: dict[tuple[str, str], dict[str, str]]) -> list[str]:
    """Warnings for header values renamed into file names, each naming a file that has it."""
    messages = []
    for (keyword, safe), originals in sorted(raw_names.items()):
        if keyword == "OBJECT" and safe == "":
            first = sorted(originals.values())[0]
            messages.append(
                f"The OBJECT keyword is empty in some frames (e.g. {first}); their names start "
                "with '_'."
            )
        elif len(originals) > 1:
            listed = ", ".join(f"{o!r} ({path})" for o, path in sorted(originals.items()))
            messages.append(
                f"{keyword} values {listed} all become '{safe}' and are grouped together."
            )
        else:
            ((original, path),) = originals.items()
            # 5.1.3's own rules: OBJECT turns ' ' and '_' into '-', FILTER drops ' ', '-', '_'.
            expected = (
                original.replace(" ", "-").replace("_", "-")
                if keyword == "OBJECT"
                else original.replace(" ", "").replace("-", "").replace("_", "")
            )
            if safe != expected:
                messages.append(
                    f"{keyword} {original!r} (in {path} and its group) has unsafe characters; "
                    f"it is written '{safe}'."
                )
    return messages
