"""Step functions: the only entry points the `astro_reduce` CLI and the Airflow DAG call.

Each takes plain arguments (folders, a group name, options), does one step for one night or
one group, and returns a small JSON-able dict of keys, counts and QC figures, never arrays.
Problems with single files or groups are collected in the result (and reported through `log`)
so the rest of the night goes on; products are written atomically and reused when their
provenance key shows they were made from the same inputs.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import astrometry, calibration, masters, registration
from .combine import FrameStack, median_noise_factor, median_of
from .fitsheader import Header
from .fitsio import (
    FrameError,
    RawFrame,
    frame_header,
    product_header,
    read_frame,
    read_header,
    read_product,
    set_card,
    write_bytes_atomic,
    write_image,
)
from .inventory import Frame, GroupKey, Inventory, take_inventory
from .layout import ASTROMATIC_FOLDERS, REDUCED, WORKING_FOLDERS, NightLayout
from .previews import png_path, refresh_previews
from .provenance import input_key, is_current, product_key, stamp
from .threads import Task, default_jobs, run_each, run_graph

TEMPORARY_MAX_AGE = 600.0  # s: older temporary files were left by killed writers
SCRATCH_MAX_AGE = 6 * 3600.0  # s: an astrometry scratch folder may wait on a slow web service
Log = Callable[[str, str], None]  # (level, message); levels: info, verbose, warning, error


def _quiet(level: str, message: str) -> None:
    """Default log: say nothing (the DAG and the CLI pass their own)."""


class StepError(RuntimeError):
    """A step cannot run at all (as opposed to a problem with one file or one group)."""


# ----------------------------------------------------------------------------------------------
# Setup


def setup_night(
    layout: NightLayout, working_copies: str | None = "copy", log: Log = _quiet
) -> dict:
    """Inventory the raw night, save it, and remove products the new inventory does not cover.

    Writes ar_inventory.json (what every later step reads), astro_reduce's `<dir>.json`, and
    the ar_darks/ar_flats/ar_objects working copies under astro_reduce's names: byte copies
    ("copy", 5.1.3's back-up of the raw data), relative symbolic links ("link", no extra disk)
    or none (None, for the DAG). Stale aux frames, stacks, masters and PNGs from an earlier
    setup are deleted, so they can never be stacked or solved again (5.1.3 bug B17).
    """
    missing = [
        name for name in ("DARK", "FLAT", "ORIGINAL") if not (layout.raw_dir / name).is_dir()
    ]
    if missing:
        raise StepError(
            f"Did not find folder {', '.join(missing)} in `{layout.raw_dir}`: a night folder "
            "must hold DARK, FLAT and ORIGINAL."
        )
    inventory = take_inventory(layout.raw_dir, previous=_previous_inventory(layout))
    for problem in inventory.quarantined:
        log("error", f"{problem.path} {problem.reason}: left out.")
    for warning in inventory.warnings:
        log("warning", warning)
    layout.out_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(layout.inventory_file, inventory.to_json().encode())
    write_bytes_atomic(
        layout.config_file, (json.dumps(inventory.config(), indent=2) + "\n").encode()
    )
    if working_copies:
        _make_working_copies(layout, inventory, link=working_copies == "link")
    removed = prune_stale_products(layout, inventory) + remove_temporaries(layout)
    for path in removed:
        log("verbose", f"  Removed stale product `{path}`.")
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
_STACK = re.compile(r"^(?P<group>[^_]*_[^_]+_\d+)\.(fits|png)$")
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
        removed += astrometry.remove_scratch(layout.out_dir, SCRATCH_MAX_AGE)
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


# ----------------------------------------------------------------------------------------------
# Masters


def make_masters(
    layout: NightLayout,
    interpolate: bool = False,
    overwrite: bool = False,
    log: Log = _quiet,
    jobs: int = 1,
) -> dict:
    """Master darks per exposure, interpolated darks (if asked), master flats per filter.

    A missing dark or flat makes only the masters that need it fail; each failure is named in
    `problems` and the groups that depend on it fail later with a clear message. `jobs`
    masters are made at once, each as soon as the masters it needs exist.
    """
    plan = plan_masters(layout, interpolate, overwrite, log)
    run_graph(plan.tasks, jobs)
    return plan.record()


@dataclass
class MasterPlan:
    """A night's masters as tasks for threads.run_graph (keys `dark <ms>`, `interpolation`,
    `flat <filter>`), the record they fill, and which task makes the masters a group needs."""

    tasks: dict[str, Task] = field(default_factory=dict)
    darks_by_exposure: dict[int, str] = field(default_factory=dict)
    flats_by_filter: dict[str, str] = field(default_factory=dict)
    result: dict[str, Any] = field(
        default_factory=lambda: {"darks": {}, "interpolated": {}, "flats": {}, "problems": []}
    )

    def needs(self, exposure_ms: int, filter_name: str) -> tuple[str, ...]:
        """The tasks making the master dark and flat of a group (none for absent masters)."""
        found = (self.darks_by_exposure.get(exposure_ms), self.flats_by_filter.get(filter_name))
        return tuple(key for key in found if key)

    def record(self) -> dict:
        """The result, its masters in a stable order whatever order the threads finished in."""
        self.result["darks"] = dict(sorted(self.result["darks"].items(), key=lambda i: int(i[0])))
        self.result["flats"] = dict(sorted(self.result["flats"].items()))
        return self.result


def plan_masters(
    layout: NightLayout, interpolate: bool, overwrite: bool, log: Log = _quiet
) -> MasterPlan:
    """The masters to make, each with the tasks it needs; missing calibrations are reported
    (and their stale masters removed) now, the masters themselves are made by the tasks."""
    inventory = load_inventory(layout)
    plan = MasterPlan()
    result = plan.result
    darks = inventory.darks_by_exposure()
    log("info", "Writing master dark images:")

    def dark(exposure: int) -> None:
        try:
            qc = _master_dark(layout, exposure, darks[exposure], overwrite, log)
            result["darks"][str(exposure)] = qc
        except (FrameError, ValueError) as exc:
            result["problems"].append(_problem(log, f"Master dark {exposure} ms: {exc}"))

    for exposure in darks:
        plan.darks_by_exposure[exposure] = key = f"dark {exposure}"
        plan.tasks[key] = (functools.partial(dark, exposure), ())
    log("info", "Interpolating missing master dark images:")
    missing = [e for e in inventory.needed_exposures() if e not in darks]

    def interpolated() -> None:
        try:
            result["interpolated"] = _interpolated_darks(layout, darks, missing, overwrite, log)
        except (OSError, ValueError) as exc:
            result["problems"].append(_problem(log, f"Dark interpolation failed: {exc}"))

    if missing and not darks:
        result["problems"].append(
            _problem(log, "There are no dark files at all! Cannot calibrate or interpolate.")
        )
    elif missing and not interpolate:
        for exposure in missing:
            _remove_stale(layout.master_dark(exposure), log)
            result["problems"].append(
                _problem(
                    log,
                    f"Did not find dark field images for {exposure}ms exposure. "
                    "Use --interpolate to compute the missing master darks.",
                )
            )
    elif missing:
        plan.tasks["interpolation"] = (interpolated, tuple(plan.darks_by_exposure.values()))
        plan.darks_by_exposure.update(dict.fromkeys(missing, "interpolation"))
    log("info", "Calculating master transmission (flat) images:")
    flats = inventory.flats_by_filter()
    needed_filters = sorted({f.filter for f in inventory.of_kind("object")} | set(flats))
    for filter_name in needed_filters:
        if filter_name not in flats:
            _remove_stale(layout.master_flat(filter_name), log)
            result["problems"].append(
                _problem(log, f"Did not find flat field images for filter {filter_name}.")
            )

    def flat(filter_name: str) -> None:
        try:
            qc = _master_flat(layout, filter_name, flats[filter_name], overwrite, log)
            result["flats"][filter_name] = qc
        except (StepError, FrameError, ValueError) as exc:
            result["problems"].append(_problem(log, f"Master flat {filter_name}: {exc}"))

    for filter_name in (f for f in needed_filters if f in flats):
        exposures = {frame.exposure_ms for frame in flats[filter_name]}
        needs = {plan.darks_by_exposure[e] for e in exposures if e in plan.darks_by_exposure}
        plan.flats_by_filter[filter_name] = key = f"flat {filter_name}"
        plan.tasks[key] = (functools.partial(flat, filter_name), tuple(sorted(needs)))
    return plan


def _read_raw(layout: NightLayout, frame: Frame) -> RawFrame:
    """Read a raw frame and check it is the one the inventory saw."""
    try:
        raw = read_frame(layout.raw(frame), frame.known)
    except FrameError as exc:
        raise FrameError(f"{frame.path} {exc}") from None
    if raw.sha256 != frame.sha256:
        raise FrameError(f"{frame.path} changed since --setup: run astro_reduce --setup again")
    return raw


def _remove_stale(path: Path, log: Log) -> None:
    """Delete a master this run cannot make, so no group is calibrated with an old one."""
    for stale in (path, png_path(path)):
        if stale.is_file():
            stale.unlink()
            log("verbose", f"  Removed stale product `{stale.name}`.")


def _problem(log: Log, message: str) -> str:
    log("error", message)
    return message


def _master_dark(
    layout: NightLayout, exposure: int, frames: list[Frame], overwrite: bool, log: Log
) -> dict:
    path = layout.master_dark(exposure)
    key = product_key("mdark", exposure=exposure, inputs=sorted(f.sha256 for f in frames))
    qc = {
        "frames": len(frames),
        "file": str(path.relative_to(layout.out_dir)),
        "reused": True,
    }
    if overwrite or not is_current(path, key):
        first_header = None
        with FrameStack() as stack:
            for frame in frames:
                raw = _read_raw(layout, frame)
                first_header = first_header if first_header is not None else raw.header
                stack.append(raw.data, copy=False)
            noise = _frame_noise(stack)
            data = stack.median()
        header = product_header(first_header)
        header["FILTER"] = " " * 8
        _set_type(header, "Dark", exposure, "DARK")
        _add_inputs(header, frames)
        write_image(path, data, stamp(header, key))
        qc.update(
            reused=False,
            frame_noise_adu=noise,
            noise_adu=noise * median_noise_factor(len(frames)),
        )
    log("verbose", f"    {exposure} ms...    Done ({len(frames)} images).")
    return qc


def _frame_noise(stack: FrameStack) -> float:
    """Per-frame noise (ADU) from the difference of the first two frames (robust MAD).

    Every other pixel in each axis: a quarter of a 1024^2 frame fixes it to ~0.3%.
    """
    if len(stack) < 2:
        return float("nan")
    diff = stack.frame(0)[::2, ::2] - stack.frame(1)[::2, ::2]
    diff = diff[np.isfinite(diff)]
    return float(1.4826 * median_of(np.abs(diff - median_of(diff))) / np.sqrt(2))


def _interpolated_darks(
    layout: NightLayout,
    darks: dict[int, list[Frame]],
    missing: list[int],
    overwrite: bool,
    log: Log,
) -> dict:
    exposures = sorted(darks)
    sources = {e: layout.master_dark(e) for e in exposures}
    key_inputs = {str(e): input_key(p) for e, p in sources.items()}
    counts = [len(darks[e]) for e in exposures]
    model: tuple[np.ndarray, np.ndarray] | None = None
    results = {}
    for exposure in missing:
        path = layout.master_dark(exposure)
        key = product_key(
            "mdark-interpolated", exposure=exposure, masters=key_inputs, counts=counts
        )
        qc = {
            "from": exposures,
            "file": str(path.relative_to(layout.out_dir)),
            "reused": True,
        }
        if overwrite or not is_current(path, key):
            if len(exposures) == 1:
                data = read_product(sources[exposures[0]])[0]
                log(
                    "warning",
                    f"Only one dark exposure ({exposures[0]} ms): the {exposure} ms master dark "
                    "is a copy of it (no line can be fitted).",
                )
            else:
                if model is None:
                    model = masters.fit_dark_model(
                        exposures,
                        [read_product(sources[e])[0] for e in exposures],
                        counts,
                    )
                data = masters.interpolate_dark(model[0], model[1], exposure)
            header = Header()
            header["FILTER"] = " " * 8
            _set_type(header, "Interpolated dark", exposure, "DARK")
            header["ARDKFROM"] = (
                ",".join(str(e) for e in exposures),
                "exposures (ms) of the fit",
            )
            write_image(path, data, stamp(header, key))
            qc["reused"] = False
        results[str(exposure)] = qc
        log("verbose", f"    {exposure}ms...      Done.")
    return results


def _master_flat(
    layout: NightLayout,
    filter_name: str,
    frames: list[Frame],
    overwrite: bool,
    log: Log,
) -> dict:
    path = layout.master_flat(filter_name)
    dark_paths = {f.exposure_ms: layout.master_dark(f.exposure_ms) for f in frames}
    absent = sorted(e for e, p in dark_paths.items() if not p.is_file())
    if absent:
        raise StepError(f"no master dark for the flat exposure(s) {absent} ms")
    key = product_key(
        "mtrans",
        filter=filter_name,
        inputs=sorted(f.sha256 for f in frames),
        darks={str(e): input_key(p) for e, p in sorted(dark_paths.items())},
    )
    qc: dict[str, Any] = {
        "frames": len(frames),
        "file": str(path.relative_to(layout.out_dir)),
    }
    qc["reused"] = True
    if overwrite or not is_current(path, key):
        dark_cache: dict[int, np.ndarray] = {}
        levels = []
        first_header = None
        with FrameStack() as stack:
            for frame in frames:
                raw = _read_raw(layout, frame)
                first_header = first_header if first_header is not None else raw.header
                if frame.exposure_ms not in dark_cache:
                    dark_cache[frame.exposure_ms] = read_product(dark_paths[frame.exposure_ms])[0]
                dark = dark_cache[frame.exposure_ms]
                normalised, level = masters.normalise_flat(raw.data, dark, out=raw.data)
                levels.append(level)
                stack.append(normalised, copy=False)
            data, undefined = masters.finish_flat(stack.median())
        header = product_header(first_header)
        header["FILTER"] = filter_name
        _set_type(header, "Flat Field", -1000, "FLAT")
        _add_inputs(header, frames)
        header["ARFLBAD"] = (undefined, "pixels with response < 5% set undefined (NaN)")
        write_image(path, data, stamp(header, key))
        qc.update(
            reused=False,
            levels_adu=[round(v, 1) for v in levels],
            undefined_pixels=undefined,
        )
    log("verbose", f"    {filter_name}...   Done ({len(frames)} images).")
    return qc


def _set_type(header: Header, imagetyp: str, exposure_ms: int, obj: str) -> None:
    """astro_reduce's product keywords (exposure -1000 ms gives its EXPTIME -1 of flats)."""
    seconds = exposure_ms / 1000
    header["IMAGETYP"] = imagetyp
    header["EXPTIME"] = (seconds, "Exposure time in seconds")
    header["EXPOSURE"] = (seconds, "Exposure time in seconds")
    header["OBJECT"] = obj


def _add_inputs(header: Header, frames: list[Frame]) -> None:
    """NCOMBINE and IRAF-style IMCMBnnn cards naming every input frame."""
    header["NCOMBINE"] = (len(frames), "number of frames combined")
    for index, frame in enumerate(frames[:999], start=1):
        header[f"IMCMB{index:03d}"] = frame.path


# ----------------------------------------------------------------------------------------------
# Calibration and stacking of one group


def reduce_group(
    layout: NightLayout,
    group_name: str,
    stack: bool = True,
    overwrite: bool = False,
    log: Log = _quiet,
) -> dict:
    """Calibrate every frame of one (object, filter, exposure) group, then align and stack them.

    Raises StepError when the group cannot be reduced at all (no master dark or flat, no frame).
    """
    result = calibrate_group(layout, group_name, overwrite, log)
    if stack:
        result["stack"] = stack_group(layout, group_name, overwrite, log)
    return result


def _group_frames(layout: NightLayout, group_name: str) -> tuple[GroupKey, list[Frame]]:
    group = GroupKey.parse(group_name)
    frames = load_inventory(layout).groups().get(group)
    if not frames:
        raise StepError(f"No files found for group {group_name}.")
    return group, frames


def missing_masters(layout: NightLayout, group: GroupKey) -> list[str]:
    """Names of the master dark and flat a group needs that do not exist."""
    needed = (layout.master_dark(group.exposure_ms), layout.master_flat(group.filter))
    return [path.name for path in needed if not path.is_file()]


def calibrate_group(
    layout: NightLayout, group_name: str, overwrite: bool = False, log: Log = _quiet
) -> dict:
    """Write the aux frames of one group: (raw - master dark) / master flat."""
    group, frames = _group_frames(layout, group_name)
    absent = missing_masters(layout, group)
    if absent:
        raise StepError(
            f"Master files are missing for ({group.exposure_ms}ms, {group.filter}): "
            f"{', '.join(absent)}."
        )
    dark_path, flat_path = layout.master_dark(group.exposure_ms), layout.master_flat(group.filter)
    result: dict[str, Any] = {"group": group_name, "label": group.label, "problems": []}
    done = _calibrate_frames(layout, frames, dark_path, flat_path, overwrite, result, log)
    result["aux"] = [str(layout.aux(f).relative_to(layout.out_dir)) for f in done]
    log("verbose", f"    {group_name}...   Done ({len(done)} images).")
    if not done:
        raise StepError(f"No frame of {group_name} could be calibrated.")
    return result


def stack_group(
    layout: NightLayout, group_name: str, overwrite: bool = False, log: Log = _quiet
) -> dict:
    """Align and median-combine the aux frames of one group into stacked/<group>.fits."""
    return combine_group(layout, register_group(layout, group_name, overwrite, log), log)


@dataclass
class Alignment:
    """What registering a group found, for combine_group: its stack is `reused` (and `qc`
    says so) or its frames are shifted by `shifts` onto `frames[reference]`."""

    group: GroupKey
    frames: list[Frame]
    key: str
    qc: dict[str, Any]
    reused: bool = False
    reference: int = 0
    shifts: dict[int, registration.Shift] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)
    skies: list[float] = field(default_factory=list)
    seconds: float = 0.0


def register_group(
    layout: NightLayout, group_name: str, overwrite: bool = False, log: Log = _quiet
) -> Alignment:
    """The first half of stack_group: find each aux frame's shift onto the best frame.

    Separate from combine_group so that a night's threads can register one group while
    combining another, instead of one core finishing the last whole stack alone.
    """
    group, frames = _group_frames(layout, group_name)
    present = [f for f in frames if layout.aux(f).is_file()]
    for frame in frames:
        if frame not in present:
            log("warning", f"{layout.aux(frame).name} is missing: {frame.path} is not stacked.")
    if not present:
        raise StepError(f"No calibrated frame of {group_name} to stack.")
    return _register(layout, group, present, overwrite, log)


def _calibrate_frames(
    layout: NightLayout,
    frames: list[Frame],
    dark_path: Path,
    flat_path: Path,
    overwrite: bool,
    result: dict,
    log: Log,
) -> list[Frame]:
    """Write the aux frames; returns the frames that have a current aux frame."""
    dark_key, flat_key = input_key(dark_path), input_key(flat_path)
    dark = flat = None
    done: list[Frame] = []
    written: list[str] = []
    reused = 0
    for frame in frames:
        path = layout.aux(frame)
        key = product_key("aux", raw=frame.sha256, dark=dark_key, flat=flat_key)
        if not overwrite and is_current(path, key):
            done.append(frame)
            reused += 1
            continue
        try:
            raw = _read_raw(layout, frame)
            if dark is None or flat is None:
                dark, flat = read_product(dark_path)[0], read_product(flat_path)[0]
            aux = calibration.calibrate(raw.data, dark, flat, out=raw.data)  # raw is ours
        except (FrameError, ValueError) as exc:
            result["problems"].append(_problem(log, f"{exc}: not calibrated."))
            continue
        header = product_header(raw.header)
        header["FILTER"] = frame.filter
        _set_type(header, "Light Frame", frame.exposure_ms, frame.object)
        set_card(header, "ARRAW", frame.path, "raw frame")
        set_card(header, "ARDARK", dark_path.name, "master dark subtracted")
        set_card(header, "ARFLAT", flat_path.name, "master flat divided")
        write_image(path, aux, stamp(header, key))
        done.append(frame)
        written.append(str(path.relative_to(layout.out_dir)))
    result["calibrated"] = len(done)
    result["written"] = written
    result["aux_reused"] = reused
    return done


def _register(
    layout: NightLayout,
    group: GroupKey,
    frames: list[Frame],
    overwrite: bool,
    log: Log,
) -> Alignment:
    path = layout.stack(group)
    key = product_key("stack", inputs=[input_key(layout.aux(f)) for f in frames])
    qc: dict[str, Any] = {
        "file": str(path.relative_to(layout.out_dir)),
        "frames": len(frames),
    }
    if not overwrite and is_current(path, key):
        header = read_header(path)
        qc.update(
            reused=True,
            combined=int(header.get("NCOMBINE", 1)),
            reference=header.get("ARREF"),
        )
        log(
            "verbose",
            f"  {group.object}:\n    {group.filter}:{group.exposure_ms}ms...   Reused.",
        )
        return Alignment(group, frames, key, qc, reused=True)
    started = time.perf_counter()
    with FrameStack() as detections:
        skies, scores = [], []
        for frame in frames:
            aux = read_product(layout.aux(frame))[0]
            detection = registration.detection_image(aux)
            detections.append(detection, copy=False)
            scores.append(registration.quality_score(detection))
            skies.append(_sky_level(aux))
        # Best quality first; ties broken by the frame id so the choice is reproducible.
        ref_index = max(range(len(frames)), key=lambda i: (scores[i], frames[i].id))
        shifts, failed = _measure_shifts(detections, ref_index, frames, log)
    return Alignment(
        group, frames, key, qc, False, ref_index, shifts, failed, skies,
        seconds=time.perf_counter() - started,
    )  # fmt: skip


def combine_group(layout: NightLayout, alignment: Alignment, log: Log = _quiet) -> dict:
    """The second half of stack_group: shift the registered frames, take their median and
    write stacked/<group>.fits; returns the group's stack record."""
    if alignment.reused:
        return alignment.qc
    started = time.perf_counter()
    group, frames, shifts = alignment.group, alignment.frames, alignment.shifts
    ref_index, skies, failed = alignment.reference, alignment.skies, alignment.failed
    used = [i for i in range(len(frames)) if i not in failed]
    with FrameStack() as aligned:
        for index in used:
            aux = read_product(layout.aux(frames[index]))[0]
            shifted = registration.shift_image(aux, shifts[index].dy, shifts[index].dx)
            shifted += np.float32(skies[ref_index] - skies[index])
            aligned.append(shifted, copy=False)
        assert aligned.shape is not None
        fraction = registration.ghost_fraction([shifts[i] for i in used], aligned.shape)
        data = aligned.median()
    if fraction > registration.GHOST_WARNING_FRACTION:
        log(
            "warning",
            f"In {group.object}:{group.filter}:{group.exposure_ms}, shifting by "
            f"{int(100 * fraction)}% of the field size.\nW: Beware of ghosts!",
        )
    reference = frames[ref_index]
    header = product_header(frame_header(layout.raw(reference)))
    header["FILTER"] = group.filter
    _set_type(header, "Light Frame", group.exposure_ms, group.object)
    _add_inputs(header, [frames[i] for i in used])
    set_card(header, "ARREF", reference.path, "alignment reference and header source")
    header["EXPTOTAL"] = (
        len(used) * group.exposure_ms / 1000,
        "[s] summed exposure of inputs",
    )
    for index in used:
        s = shifts[index]
        header.add_history(f"{frames[index].path} dy={s.dy:+.3f} dx={s.dx:+.3f} px")
    write_image(layout.stack(group), data, stamp(header, alignment.key))
    log(
        "verbose",
        f"  {group.object}:\n    {group.filter}:{group.exposure_ms}ms...   "
        f"Done ({len(used)} images).",
    )
    qc = dict(alignment.qc)
    qc.update(
        reused=False,
        combined=len(used),
        reference=reference.path,
        shifts={frames[i].path: [round(shifts[i].dy, 3), round(shifts[i].dx, 3)] for i in used},
        refine_stars={frames[i].path: shifts[i].stars for i in used},
        rejected=[frames[i].path for i in failed],
        max_shift_fraction=round(fraction, 4),
        seconds={
            "registration": round(alignment.seconds, 3),
            "combine": round(time.perf_counter() - started, 3),
        },
    )
    return qc


def _sky_level(image: np.ndarray) -> float:
    """Median of a regular subsample of the finite pixels: the frame's sky, cheaply."""
    sample = image[::3, ::3]
    sample = sample[np.isfinite(sample)]
    return float(median_of(sample)) if sample.size else 0.0


def _measure_shifts(
    detections: FrameStack, ref_index: int, frames: list[Frame], log: Log
) -> tuple[dict[int, registration.Shift], set[int]]:
    shifts = {ref_index: registration.Shift(0.0, 0.0, float("inf"))}
    failed: set[int] = set()
    try:
        correlator = registration.Correlator(detections.frame(ref_index))
    except registration.RegistrationError as exc:
        log(
            "warning",
            f"{frames[ref_index].path}: {exc}; the frames are combined without alignment.",
        )
        return {i: registration.Shift(0.0, 0.0, 0.0) for i in range(len(frames))}, set()
    for index in range(len(frames)):
        if index == ref_index:
            continue
        try:
            shifts[index] = correlator.shift(detections.frame(index))
        except registration.RegistrationError as exc:
            log("warning", f"{frames[index].path}: {exc}; left out of the stack.")
            failed.add(index)
    return shifts, failed


# ----------------------------------------------------------------------------------------------
# Astrometry of one group


def astrometry_images(layout: NightLayout, group_name: str, include_stack: bool = True) -> list:
    """The aux frames of a group that exist, then its stack (when asked and present)."""
    group, frames = _group_frames(layout, group_name)
    images = [layout.aux(f) for f in frames if layout.aux(f).is_file()]
    if include_stack and layout.stack(group).is_file():
        images.append(layout.stack(group))
    return images


def solve_group(
    layout: NightLayout,
    group_name: str,
    options: astrometry.AstrometryOptions,
    log: Log = _quiet,
    include_stack: bool = True,
    jobs: int = 1,
) -> dict:
    """Astrometry of one group's aux frames and stack; one failed image does not stop the rest.

    The external programs are single-threaded, so `jobs` images are solved at once.
    """
    images = astrometry_images(layout, group_name, include_stack)
    if not images:
        raise StepError(f"No calibrated frame or stack of {group_name} to solve.")
    records = run_each(
        lambda path: astrometry.solve_image(layout.out_dir, path, options, log), images, jobs
    )
    result: dict[str, Any] = {"group": group_name, "solver": options.solver, "images": records}
    for status in ("solved", "failed", "reused", "catalogued"):
        result[status] = sum(r["status"] == status for r in records)
    result["problems"] = []
    for record in records:
        name = Path(record["image"]).name
        if record["status"] == "failed":
            message = f"{name}: astrometry failed: {record.get('reason', 'unknown reason')}"
            result["problems"].append(_problem(log, message))
        else:
            log("verbose", f"    {name}: {_describe(record)}")
    return result


def _describe(record: dict) -> str:
    """One line for a solved, catalogued or reused image."""
    if record["status"] == "reused":
        return f"{record['product']} is current: reused."
    if record["status"] == "catalogued":
        return f"catalogue {record['product']} ({record['seconds']} s)."
    stats = record.get("stats", {})
    figures = []
    if "matched_references" in stats:
        figures.append(f"{stats['matched_references']} references")
    if stats.get("sigma_arcsec"):
        figures.append(f'scatter {max(stats["sigma_arcsec"]):.3f}"')
    detail = f" ({', '.join(figures)})" if figures else ""
    return f"solved by {record['solver']}{detail} in {record['seconds']} s -> {record['product']}."


# ----------------------------------------------------------------------------------------------
# Previews and clearing


def make_previews(
    layout: NightLayout, masters_and_aux: bool, stacks: bool, overwrite: bool = False
) -> dict:
    """PNG quick-looks: masters and aux frames (--tmppng) and/or stacks (--stkpng)."""
    folders = ([layout.masters, layout.cosmetic] if masters_and_aux else []) + (
        [layout.stacked] if stacks else []
    )
    sources = [p for folder in folders if folder.is_dir() for p in sorted(folder.glob("*.fits"))]
    written = refresh_previews(sources, overwrite)
    return {
        "written": [str(p.relative_to(layout.out_dir)) for p in written],
        "kept": len(sources) - len(written),
    }


def clear_night(layout: NightLayout, everything: bool = False) -> list[str]:
    """astro_reduce's --clear (working files) and --clearall (also stacked/ and reduced/)."""
    names = [
        layout.config_file.name,
        layout.inventory_file.name,
        *WORKING_FOLDERS.values(),
    ]
    names += [layout.masters.name, layout.cosmetic.name, *ASTROMATIC_FOLDERS]
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
