"""The archive as one calibration library: what other nights offer, and borrowing from them.

A night that cannot make a master itself (see nightplan) borrows the nearest usable one that
another night of the same raw archive can make from its own raw calibration frames
(association has the rules). Finding it is listings, not a scan: the archive's nights are one
listing, and each candidate night's calibrations are described by an entry,
`<library>/<night>/calibrations.json` (the inventory of its DARK/ and FLAT/, and the masters
found bad), kept current by the stamps of those folders (one listing each). Only a night
without a current entry has its calibration frames read, once for the whole archive.

A borrowed master is made in `<library>/<night>/ar_masters/` by the same code, from the same
frames, under the same key as that night's own run would make it, and never from other
masters: whoever builds it first, the bytes are the same (no time stamp in a product), and
every write is atomic (rename, or one S3 PUT), so two runs that need it at once are safe. It is
then copied under its astro_reduce name into the borrowing night's own `ar_masters/`, where
calibration finds it, and its header (ARNIGHT, ARDATE) says whose it is.

The DAG's library is `<products_root>/ar_calibrations/`, shared by every night of the
products tree; the CLI's is `ar_calibrations/` in the night's own products folder. An
operator lists masters that must never be used in `bad_masters.txt` (see read_bad_list).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import nights as archive_nights
from .association import (
    Candidate,
    Need,
    Offer,
    Search,
    Setup,
    Windows,
    mean_date_obs,
    parse_date_obs,
    search,
)
from .fitsio import read_header, write_bytes_atomic
from .inventory import Frame, Inventory, take_inventory
from .layout import LIBRARY_FOLDER, NightLayout
from .provenance import is_current, stored_key
from .steps import masters as master_steps
from .steps.common import StepError
from .storage import KEY_METADATA, S3Settings, S3Store, StorageError, is_s3, join
from .workspace import night_workspace

log = logging.getLogger(__name__)
ENTRY_FILE = "calibrations.json"
ENTRY_VERSION = 1
BAD_LIST_FILE = "bad_masters.txt"
CALIBRATION_FOLDERS = ("DARK", "FLAT")
SPARE_CANDIDATES = 2  # candidates kept per need: the nearest, and one in case it fails its QC
DATE_SLACK_DAYS = 1.5  # a night's DATE-OBS lie within about a day of its folder's date


class Undecided(RuntimeError):
    """A night's calibrations are not described by a current entry, and the caller asked not
    to read frames (the cheap check of a rerun): only a full association can tell."""


@dataclass(frozen=True)
class Archive:
    """Where a night looks for other nights' calibrations, and where borrowed masters live."""

    raw_root: str  # <raw_root>/<YYYY-MM-DD>/DARK|FLAT, local or s3://
    library: str  # <library>/<night>/calibrations.json and ar_masters/
    windows: Windows = field(default_factory=Windows)
    bad_lists: tuple[str, ...] = ()  # bad_masters.txt files (absent ones are ignored)
    s3: dict[str, str] | None = None
    interpolate: bool = False  # may a neighbour's dark line serve an exposure it lacks?

    def store(self) -> S3Store:
        return S3Store(S3Settings(**(self.s3 or {})))


@dataclass
class Entry:
    """What one night of the archive holds for calibration."""

    night: str
    stamps: dict[str, tuple[int, int]]
    inventory: Inventory
    bad: dict[str, str] = field(default_factory=dict)  # master key -> why it failed its QC

    def to_json(self) -> str:
        payload = {
            "version": ENTRY_VERSION,
            "night": self.night,
            "stamps": {path: list(stamp) for path, stamp in sorted(self.stamps.items())},
            "inventory": json.loads(self.inventory.to_json()),
            "bad": dict(sorted(self.bad.items())),
        }
        return json.dumps(payload, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Entry:
        payload = json.loads(text)
        if payload.get("version") != ENTRY_VERSION:
            raise ValueError(f"unsupported entry version {payload.get('version')!r}")
        return cls(
            night=payload["night"],
            stamps={p: (int(s[0]), int(s[1])) for p, s in payload["stamps"].items()},
            inventory=Inventory.from_json(json.dumps(payload["inventory"])),
            bad=dict(payload.get("bad", {})),
        )


def archive_for(
    raw_root: str,
    products_root: str,
    windows: Windows,
    interpolate: bool,
    s3: dict[str, str] | None = None,
    bad_lists: tuple[str, ...] = (),
) -> Archive:
    """The archive of a products tree: other nights under `raw_root`, the library in
    `<products_root>/ar_calibrations/`, the operator's `<products_root>/bad_masters.txt`."""
    return Archive(
        raw_root=raw_root,
        library=join(products_root, LIBRARY_FOLDER),
        windows=windows,
        bad_lists=(join(products_root, BAD_LIST_FILE), *bad_lists),
        s3=s3,
        interpolate=interpolate,
    )


# ---------------------------------------------------------------------- reading the archive


def read_bad_list(urls: Iterable[str], s3: dict[str, str] | None = None) -> frozenset:
    """(night, master name) pairs an operator marked as never to be used.

    `bad_masters.txt`, one master per line: the night and the master's name, e.g.
    `2023-05-09 mtrans_V` (a `.fits` suffix is allowed); `#` starts a comment. A line that does
    not parse is reported and ignored; a missing file is an empty list.
    """
    found: set[tuple[str, str]] = set()
    for url in urls:
        text = _read_text(url, s3)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            name = words[1].removesuffix(".fits") if len(words) == 2 else ""
            if not archive_nights.NIGHT_PATTERN.match(words[0]) or not _master_name(name):
                log.warning(
                    "%s line %s: %r is not `<YYYY-MM-DD> <mdark_<ms>|mtrans_<filter>>`: ignored.",
                    url,
                    number,
                    line.strip(),
                )
                continue
            found.add((words[0], name))
    return frozenset(found)


def _master_name(name: str) -> bool:
    return (name.startswith("mdark_") and name[6:].isdigit()) or (
        name.startswith("mtrans_") and len(name) > 7
    )


def _read_text(url: str, s3: dict[str, str] | None) -> str | None:
    """A small text file's content (local or S3), or None when it does not exist."""
    if not is_s3(url):
        try:
            return Path(url).read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None
    store = S3Store(S3Settings(**(s3 or {})))
    try:
        return store.read_bytes(url).decode("utf-8")
    except StorageError as exc:
        if "NoSuchKey" in str(exc) or "404" in str(exc):
            return None
        raise


def night_names(archive: Archive) -> list[str]:
    """The archive's nights (folders named YYYY-MM-DD): one listing."""
    root = archive.raw_root
    if is_s3(root):
        names = archive.store().list_prefixes(root)
    else:
        names = [p.name for p in Path(root).iterdir() if p.is_dir()] if Path(root).is_dir() else []
    return sorted(n for n in names if archive_nights.NIGHT_PATTERN.match(n))


def load_entry(archive: Archive, night: str, build: bool = True) -> Entry | None:
    """The current entry of a night (None: it has no calibration frames at all). A missing or
    stale entry is made by reading the night's DARK/ and FLAT/ frames (`build`), else
    Undecided."""
    stamps = archive_nights.raw_stamps(archive.raw_root, night, archive.s3, CALIBRATION_FOLDERS)
    if not stamps:
        return None
    url = join(archive.library, night, ENTRY_FILE)
    text = _read_text(url, archive.s3)
    entry = None
    if text is not None:
        try:
            entry = Entry.from_json(text)
        except (ValueError, KeyError, TypeError):
            entry = None
    if entry is not None and entry.stamps == stamps:
        return entry
    if not build:
        raise Undecided(f"{night}: its calibrations have no current entry in {archive.library}")
    log.info("Night %s: reading its calibration frames for the library.", night)
    with night_workspace(
        archive.raw_root,
        archive.library,
        night,
        raw_folders=CALIBRATION_FOLDERS,
        products=[],
        settings=S3Settings(**(archive.s3 or {})),
    ) as layout:
        inventory = take_inventory(layout.raw_dir, folders=CALIBRATION_FOLDERS)
        fresh = Entry(night, stamps, inventory, entry.bad if entry else {})
        write_bytes_atomic(layout.out_dir / ENTRY_FILE, fresh.to_json().encode())
    return fresh


# ---------------------------------------------------------------------- offers and searches


def _setup_of(frames: list[Frame], shape: tuple[int, int] | None) -> Setup:
    first = frames[0]
    return Setup(tuple(shape or first.shape), first.binning, first.instrument, first.set_temp)


def offers(entry: Entry, needs: Iterable[Need], interpolate: bool) -> list[Offer]:
    """The masters a night can make from its own frames for these needs, with their keys (as
    its own run would make them): measured darks, its dark line when `interpolate` (two dark
    exposures or more), flats whose exposures it has darks for."""
    inventory = entry.inventory
    darks = inventory.darks_by_exposure()
    flats = inventory.flats_by_filter()
    dark_keys = {e: master_steps.dark_key(e, frames) for e, frames in darks.items()}
    line = interpolate and len(darks) >= 2
    counts = [len(darks[e]) for e in sorted(darks)]
    all_darks = [f for frames in darks.values() for f in frames]

    def dark_offer(exposure: int) -> Offer | None:
        if exposure in darks:
            frames = darks[exposure]
            return _offer(entry, f"mdark_{exposure}", dark_keys[exposure], frames, "measured")
        if line:
            key = master_steps.interpolation_key(exposure, dark_keys, counts)
            return _offer(entry, f"mdark_{exposure}", key, all_darks, "interpolated")
        return None

    found = []
    for need in needs:
        if need.kind == "dark":
            offer = dark_offer(need.exposure_ms)
        elif need.filter in flats:
            frames = flats[need.filter]
            keys = {f.exposure_ms: dark_offer(f.exposure_ms) for f in frames}
            if any(k is None for k in keys.values()):
                continue  # its flats' darks are missing too: it cannot make the flat
            flat_darks = {e: o.key for e, o in keys.items() if o is not None}
            key = master_steps.flat_key_of(need.filter, frames, flat_darks)
            offer = _offer(entry, need.name, key, frames, "measured")
        else:
            offer = None
        if offer is not None:
            found.append(offer)
    return found


def _offer(entry: Entry, name: str, key: str, frames: list[Frame], how: str) -> Offer:
    return Offer(
        night=entry.night,
        name=name,
        key=key,
        date_obs=mean_date_obs(f.date_obs for f in frames),
        setup=_setup_of(frames, entry.inventory.shape),
        frames=len(frames),
        how=how,
        bad=entry.bad.get(key, ""),
    )


def science_time(inventory: Inventory) -> str:
    """When a night's science was taken (the mean DATE-OBS of its science frames)."""
    frames = inventory.of_kind("object") or inventory.frames
    return mean_date_obs(f.date_obs for f in frames)


def night_setup(inventory: Inventory) -> Setup:
    frames = inventory.of_kind("object") or inventory.frames
    return _setup_of(frames, inventory.shape)


def associate(
    archive: Archive,
    night: str,
    inventory: Inventory,
    needs: list[Need],
    build: bool = True,
    bad: frozenset | None = None,
) -> dict[str, Search]:
    """For each need, the usable masters of other nights, nearest first (at least the nearest
    and a spare, when the window holds them). Nights are visited nearest first by their
    folder's date and the walk stops as soon as no farther night can be nearer. `bad`: the
    masters listed as bad, when the caller has read the lists already."""
    when = science_time(inventory)
    setup = night_setup(inventory)
    if bad is None:
        bad = read_bad_list(archive.bad_lists, archive.s3)
    found = {need.name: Search(need) for need in needs}
    moment = parse_date_obs(when)
    if needs and moment is None:
        for each in found.values():
            each.refused.append("this night's frames have no readable DATE-OBS to measure from")
    if not needs or moment is None:
        return found
    widest = max(archive.windows.days(n.kind) for n in needs)
    by_distance = []
    for name in night_names(archive):
        if name == night:
            continue
        distance = abs((dt.date.fromisoformat(name) - moment.date()).days)
        if distance <= widest + DATE_SLACK_DAYS:
            by_distance.append((distance, name))
    for distance, name in sorted(by_distance):
        if _settled(found, distance - DATE_SLACK_DAYS):
            break
        entry = load_entry(archive, name, build)
        if entry is None:
            continue
        for offer_search in _searches(entry, found, night, when, setup, archive, bad):
            target = found[offer_search.need.name]
            target.candidates.extend(offer_search.candidates)
            target.refused.extend(offer_search.refused)
    for each in found.values():
        each.candidates.sort(
            key=lambda c: (c.days, c.offer.date_obs, c.offer.how != "measured", c.offer.night)
        )
    return found


def _searches(
    entry: Entry,
    found: dict[str, Search],
    night: str,
    when: str,
    setup: Setup,
    archive: Archive,
    bad: frozenset,
) -> list[Search]:
    wanted = [s.need for s in found.values()]
    offered = offers(entry, wanted, archive.interpolate)
    return [search(n, offered, night, when, setup, archive.windows, bad) for n in wanted]


def _settled(found: dict[str, Search], nearest_possible: float) -> bool:
    """True when every need has its candidates and none of a farther night could be nearer."""
    return all(
        len(s.candidates) >= SPARE_CANDIDATES
        and sorted(c.days for c in s.candidates)[SPARE_CANDIDATES - 1] <= nearest_possible
        for s in found.values()
    )


# ---------------------------------------------------------------------- borrowing


def borrow(
    archive: Archive, found: Search, layout: NightLayout, overwrite: bool = False
) -> tuple[Candidate, dict[str, Any]]:
    """Place the first candidate that makes a good master into the night's ar_masters/ under
    its astro_reduce name; returns it and its QC record. A candidate whose master fails its QC
    is marked bad in its night's entry (never tried again) and the next is tried; StepError
    when none is left, naming what was looked for, where, and what failed."""
    failures = []
    for candidate in found.candidates:
        try:
            qc = _borrow_one(archive, candidate, layout, overwrite)
        except (StepError, ValueError, OSError) as exc:
            failures.append(f"{candidate.offer.night} {candidate.offer.name}: {exc}")
            log.warning(
                "Cannot borrow the %s of %s: %s", found.need.describe(), candidate.offer.night, exc
            )
            continue
        qc["passed_over"] = failures
        return candidate, qc
    message = found.failure(archive.raw_root, archive.windows)
    if failures:
        message = message.removesuffix(".") + f"; unusable: {'; '.join(failures)}."
    raise StepError(message)


def _borrow_one(
    archive: Archive, candidate: Candidate, layout: NightLayout, overwrite: bool
) -> dict[str, Any]:
    offer = candidate.offer
    target = layout.masters / f"{offer.name}.fits"
    if not overwrite and is_current(target, offer.key):
        return _placed_record(layout, target, candidate, reused=True)
    if not overwrite and _library_current(archive, offer):
        _fetch(archive, offer, target)
        return _placed_record(layout, target, candidate, reused=False)
    entry = load_entry(archive, offer.night)
    if entry is None:
        raise StepError("its calibration frames are gone")
    need = Need.parse(offer.name)
    with night_workspace(
        archive.raw_root,
        archive.library,
        offer.night,
        raw_files=[f.path for f in _frames_for(entry.inventory, need)],
        products=["ar_masters/mdark_*.fits", "ar_masters/mtrans_*.fits"],
        settings=S3Settings(**(archive.s3 or {})),
    ) as library:
        try:
            made = _make(library, entry.inventory, need, offer, overwrite)
        except StepError as exc:
            entry.bad[offer.key] = str(exc)
            write_bytes_atomic(library.out_dir / ENTRY_FILE, entry.to_json().encode())
            raise
        if stored_key(made) != offer.key:
            raise StepError(f"its master was made with key {stored_key(made)}, not {offer.key}")
        write_bytes_atomic(target, made.read_bytes())
    return _placed_record(layout, target, candidate, reused=False)


def _frames_for(inventory: Inventory, need: Need) -> list[Frame]:
    """The raw frames a master of `need` is made from (a flat: with its darks' frames)."""
    darks = inventory.darks_by_exposure()

    def for_dark(exposure: int) -> list[Frame]:
        return darks.get(exposure) or [f for frames in darks.values() for f in frames]

    if need.kind == "dark":
        return for_dark(need.exposure_ms)
    flats = inventory.flats_by_filter().get(need.filter, [])
    chosen = {f.path: f for f in flats}
    for exposure in {f.exposure_ms for f in flats}:
        chosen.update({f.path: f for f in for_dark(exposure)})
    return list(chosen.values())


def _make(
    library: NightLayout, inventory: Inventory, need: Need, offer: Offer, overwrite: bool
) -> Path:
    """The offered master, made in the library's folder of its night, from that night's raw
    frames (and its own master darks, for a flat or an interpolated dark)."""
    darks = inventory.darks_by_exposure()

    def dark(exposure: int) -> Path:
        if exposure in darks:
            master_steps.make_master_dark(library, exposure, darks[exposure], overwrite)
        else:
            for measured, frames in darks.items():
                master_steps.make_master_dark(library, measured, frames, overwrite)
            master_steps.make_interpolated_darks(library, darks, [exposure], overwrite)
        return library.master_dark(exposure)

    if need.kind == "dark":
        return dark(need.exposure_ms)
    frames = inventory.flats_by_filter()[need.filter]
    for exposure in sorted({f.exposure_ms for f in frames}):
        dark(exposure)
    master_steps.make_master_flat(library, need.filter, frames, overwrite)
    return library.master_flat(need.filter)


def _library_current(archive: Archive, offer: Offer) -> bool:
    """True when the library already holds this master with this key (S3: its metadata)."""
    url = join(archive.library, offer.night, "ar_masters", f"{offer.name}.fits")
    if not is_s3(url):
        return is_current(Path(url), offer.key)
    try:
        return archive.store().metadata(url).get(KEY_METADATA) == offer.key
    except StorageError:
        return False


def _fetch(archive: Archive, offer: Offer, target: Path) -> None:
    """Copy the library's master to `target` atomically (S3: download, checked by SHA-256)."""
    url = join(archive.library, offer.night, "ar_masters", f"{offer.name}.fits")
    if is_s3(url):
        archive.store().download_verified(url, target)
    else:
        write_bytes_atomic(target, Path(url).read_bytes())
    if not is_current(target, offer.key):
        target.unlink(missing_ok=True)
        raise StepError(f"{url} changed while it was copied")


def _placed_record(
    layout: NightLayout, path: Path, candidate: Candidate, reused: bool
) -> dict[str, Any]:
    """A borrowed master's record: its QC figures (from its header), its night, distance."""
    header = read_header(path)
    record = {name: header.get(card) for name, card in master_steps.QC_CARDS.items()}
    offer = candidate.offer
    record.update(
        file=str(path.relative_to(layout.out_dir)),
        reused=reused,
        night=offer.night,
        days=candidate.days,
        how=offer.how,
        frames=offer.frames,
        key=offer.key,
    )
    return record
