"""The setup step: inventory a night, save it, and clear what the new inventory no longer covers."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..fitsio import read_header, write_bytes_atomic
from ..inventory import Frame, Inventory, take_inventory
from ..layout import (
    ASTROMATIC_FOLDERS,
    LIBRARY_FOLDER,
    QC_FIGURE,
    REDUCED,
    SCRATCH_PREFIX,
    WORKING_FOLDERS,
    NightLayout,
)
from ..logs import VERBOSE
from ..threads import default_jobs, run_each
from .common import StepError
from .publish import MANIFEST, QC_FOLDER, write_record

log = logging.getLogger(__name__)
TEMPORARY_MAX_AGE = 600.0  # s: older temporary files were left by killed writers
SCRATCH_MAX_AGE = 6 * 3600.0  # s: an astrometry scratch folder may wait on a slow web service
FRAME_FOLDERS = ("DARK", "FLAT", "ORIGINAL")


def setup_night(layout: NightLayout, working_copies: str | None = "copy") -> dict[str, Any]:
    """setup (below), its record written in ar_qc/setup.json, or the reason it failed."""
    started = time.monotonic()
    try:
        summary = _setup(layout, working_copies)
    except StepError as exc:
        if layout.out_dir != layout.raw_dir:  # a products tree: its manifest will say why
            layout.out_dir.mkdir(parents=True, exist_ok=True)
            write_record(layout, "setup", {"status": "failed", "error": str(exc)})
        raise
    summary.update(status="done", seconds=round(time.monotonic() - started, 3))
    write_record(layout, "setup", summary)
    return summary


def _setup(layout: NightLayout, working_copies: str | None) -> dict[str, Any]:
    """Inventory the raw night, save it, and remove products the new inventory does not cover.

    Writes ar_inventory.json (what every later step reads), astro_reduce's `<dir>.json`, and
    the ar_darks/ar_flats/ar_objects working copies under astro_reduce's names: byte copies
    ("copy", 5.1.3's back-up of the raw data), relative symbolic links ("link", no extra disk)
    or none (None, for the DAG). Stale aux frames, stacks, masters and PNGs from an earlier
    setup are deleted, so they can never be stacked or solved again (5.1.3 bug B17).

    A night without DARK/ or FLAT/ (or without ORIGINAL/) is a normal night of an archive:
    each missing folder is a warning, and the groups that need it fail later with the reason.
    """
    missing = [name for name in FRAME_FOLDERS if not (layout.raw_dir / name).is_dir()]
    if len(missing) == len(FRAME_FOLDERS):
        raise StepError(
            f"`{layout.raw_dir}` is not a night folder: it has none of {', '.join(missing)}."
        )
    inventory = take_inventory(layout.raw_dir, previous=_previous_inventory(layout))
    inventory.warnings[:0] = [
        f"Did not find folder {name} in `{layout.raw_dir.name}`: this night has no "
        f"{name.lower()} frames of its own."
        for name in missing
    ]
    for quarantined in inventory.quarantined:
        log.error("%s %s: left out.", quarantined.path, quarantined.reason)
    for warning in inventory.warnings:
        log.warning("%s", warning)
    layout.out_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(layout.inventory_file, inventory.to_json().encode())
    write_bytes_atomic(
        layout.config_file, (json.dumps(inventory.config(), indent=2) + "\n").encode()
    )
    if working_copies:
        _make_working_copies(layout, inventory, link=working_copies == "link")
    removed = prune_stale_products(layout, inventory) + remove_temporaries(layout)
    for path in removed:
        log.log(VERBOSE, "  Removed stale product `%s`.", path)
    return {
        "frames": len(inventory.frames),
        "darks": len(inventory.of_kind("dark")),
        "flats": len(inventory.of_kind("flat")),
        "objects": len(inventory.of_kind("object")),
        "groups": [g.name for g in inventory.groups()],
        "quarantined": [{"path": p.path, "reason": p.reason} for p in inventory.quarantined],
        "warnings": list(inventory.warnings),
        "removed_stale": [str(p) for p in removed],
        "shape": list(inventory.shape) if inventory.shape else None,
    }


def _previous_inventory(layout: NightLayout) -> Inventory | None:
    try:
        return Inventory.from_json(layout.inventory_file.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _make_working_copies(layout: NightLayout, inventory: Inventory, link: bool) -> None:
    """Copies (in threads: the copies are kernel work) or relative links."""
    for kind in WORKING_FOLDERS:
        directory = layout.working_dir(kind)
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)

    def place(frame: Frame) -> None:
        target = layout.working_dir(frame.kind) / frame.working_name
        if link:
            target.symlink_to(os.path.relpath(layout.raw(frame), target.parent))
        else:
            shutil.copyfile(layout.raw(frame), target)

    run_each(
        place, [f for kind in WORKING_FOLDERS for f in inventory.of_kind(kind)], default_jobs()
    )


_AUX = re.compile(r"^(?P<stem>.+_[0-9a-f]{32})_aux\.(fits|png)$")
_STACK = re.compile(r"^(?P<group>[^_]*_[^_]+_\d+)\.(fits|png|qc\.json)$")
_MDARK = re.compile(r"^mdark_(?P<ms>\d+)\.(fits|png)$")
_MTRANS = re.compile(r"^mtrans_(?P<filter>[^_.]+)\.(fits|png)$")


def prune_stale_products(layout: NightLayout, inventory: Inventory) -> list[Path]:
    """Delete aux frames, stacks, masters and their PNGs that no current frame or group needs.

    Only files named by our own patterns are touched.
    """
    stems = {f.stem for f in inventory.of_kind("object")}
    groups = {g.name for g in inventory.groups()}
    exposures = {f.exposure_ms for f in inventory.frames}
    filters = {f.filter for f in inventory.of_kind("flat")}
    # A flat borrowed from another night stays while a science filter needs it.
    science = {f.filter for f in inventory.of_kind("object")}
    filters |= {f for f in science if _borrowed(layout, layout.master_flat(f))}
    keep: list[tuple[Path, re.Pattern[str], Callable[[re.Match[str]], bool]]] = [
        (layout.cosmetic, _AUX, lambda m: m["stem"] in stems),
        (layout.stacked, _STACK, lambda m: m["group"] in groups),
        (layout.masters, _MDARK, lambda m: int(m["ms"]) in exposures),
        (layout.masters, _MTRANS, lambda m: m["filter"] in filters),
    ]
    removed = []
    for directory, pattern, wanted in keep:
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            match = pattern.match(path.name)
            if match and not wanted(match):
                path.unlink()
                removed.append(path)
    return removed


def _borrowed(layout: NightLayout, master: Path) -> bool:
    """True when a master in ar_masters/ was made from another night's frames (ARNIGHT)."""
    try:
        night = read_header(master).get("ARNIGHT")
    except (OSError, ValueError):
        return False
    return bool(night) and night != layout.raw_dir.name


def remove_temporaries(layout: NightLayout, older_than: float = TEMPORARY_MAX_AGE) -> list[Path]:
    """Delete the hidden `.<name>.part` files that killed writers left in the product folders.

    Only files older than `older_than` seconds go: a live writer finishes a product in seconds,
    so its temporary file is never taken, whatever else runs on the night.
    """
    deadline = time.time() - older_than
    removed = []
    folders = (layout.masters, layout.cosmetic, layout.stacked, layout.out_dir)
    folders += tuple(layout.out_dir / name for name in (*ASTROMATIC_FOLDERS, REDUCED))
    for folder in folders:
        for path in folder.glob(".*.part") if folder.is_dir() else []:
            if path.stat().st_mtime < deadline:
                path.unlink(missing_ok=True)
                removed.append(path)
    if layout.out_dir.is_dir():
        removed += _remove_scratch(layout.out_dir, SCRATCH_MAX_AGE)
    return removed


def _remove_scratch(out_dir: Path, older_than: float) -> list[Path]:
    """Astrometry scratch folders left by killed runs (older than `older_than` seconds)."""
    now = time.time()
    removed = []
    for folder in Path(out_dir).glob(f"{SCRATCH_PREFIX}*"):
        if folder.is_dir() and now - folder.stat().st_mtime > older_than:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def load_inventory(layout: NightLayout) -> Inventory:
    """The inventory written by setup_night, or StepError saying to run setup."""
    if not layout.inventory_file.is_file():
        raise StepError(
            f"Configuration file `{layout.config_file.name}` not found: run `astro_reduce --setup` "
            "in the night folder first."
        )
    try:
        return Inventory.from_json(layout.inventory_file.read_text())
    except (ValueError, KeyError, TypeError) as exc:
        raise StepError(
            f"`{layout.inventory_file.name}` cannot be parsed ({exc}): run --setup again."
        ) from None


def clear_night(layout: NightLayout, everything: bool = False) -> list[str]:
    """astro_reduce's --clear (working files) and --clearall (also stacked/ and reduced/)."""
    names = [
        layout.config_file.name,
        layout.inventory_file.name,
        *WORKING_FOLDERS.values(),
    ]
    names += [layout.masters.name, layout.cosmetic.name, *ASTROMATIC_FOLDERS, LIBRARY_FOLDER]
    names += [QC_FOLDER, MANIFEST, QC_FIGURE]
    if everything:
        names += [REDUCED, layout.stacked.name]
    removed = []
    for name in names:
        path = layout.out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            removed.append(name)
        elif path.exists() or path.is_symlink():
            path.unlink()
            removed.append(name)
    return removed
