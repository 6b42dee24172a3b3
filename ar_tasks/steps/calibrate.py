"""The calibration step: one group's aux frames, (raw - master dark) / master flat."""

from __future__ import annotations

import logging
from typing import Any

from .. import calibration, camera, frame_qc
from ..association import days_between, mean_date_obs
from ..fitsio import FrameError, product_header, read_header, read_product, set_card, write_image
from ..inventory import Frame, GroupKey
from ..layout import NightLayout
from ..logs import VERBOSE
from ..provenance import code_identity, input_key, product_key, reuse_or_make, stamp
from .common import FITS_WRITING, StepError, problem, read_raw, relative, set_type

log = logging.getLogger(__name__)


def missing_masters(layout: NightLayout, group: GroupKey) -> list[str]:
    """Names of the master dark and flat a group needs that do not exist."""
    needed = (layout.master_dark(group.exposure_ms), layout.master_flat(group.filter))
    return [path.name for path in needed if not path.is_file()]


def missing_masters_message(group: GroupKey, absent: list[str]) -> str:
    return (
        f"Master files are missing for ({group.exposure_ms}ms, {group.filter}): "
        f"{', '.join(absent)}."
    )


def aux_recipe() -> dict[str, Any]:
    """The code and parameters that make an aux frame's bytes (see provenance)."""
    code = code_identity(calibration, frame_qc, calibrate_group, master_cards, *FITS_WRITING)
    return {"code": code, "parameters": {}}


# Header cards naming a product's masters (after BANZAI's L1IDDARK and Gemini's DARKIM):
# kind -> (astro_reduce-airflow's file card, night card, distance card, <night>/<file> card).
MASTER_CARDS = {
    "dark": ("ARDARK", "ARDKNGT", "ARDKDAYS", "DARKIM"),
    "flat": ("ARFLAT", "ARFLNGT", "ARFLDAYS", "FLATIM"),
}


def master_cards(
    layout: NightLayout, group: GroupKey, date_obs: str
) -> tuple[list[tuple[str, Any, str]], dict[str, Any]]:
    """The cards (key, value, comment) that name a group's master dark and flat, their night
    and their distance in days from `date_obs`, and the same as the group record's `masters`.
    A master without ARNIGHT (one supplied with --nomaster) is taken as the night's own."""
    cards: list[tuple[str, Any, str]] = []
    summary: dict[str, Any] = {}
    paths = {
        "dark": layout.master_dark(group.exposure_ms),
        "flat": layout.master_flat(group.filter),
    }
    for kind, path in paths.items():
        header = read_header(path)
        night = str(header.get("ARNIGHT") or layout.raw_dir.name)
        days = days_between(date_obs, str(header.get("ARDATE", "")))
        file_card, night_card, days_card, image_card = MASTER_CARDS[kind]
        cards.append((file_card, path.name, f"master {kind} used"))
        cards.append((night_card, night, f"night of the master {kind}'s frames"))
        if days is not None:
            cards.append((days_card, round(days, 3), f"[d] master {kind} to this frame"))
        cards.append((image_card, f"{night}/{path.name}", f"master {kind}: night/file"))
        summary[kind] = {
            "file": relative(layout, path),
            "night": night,
            "borrowed": night != layout.raw_dir.name,
            "days": None if days is None else round(days, 3),
        }
    return cards, summary


def calibrate_group(
    layout: NightLayout, group: GroupKey, frames: list[Frame], overwrite: bool = False
) -> dict[str, Any]:
    """Write the aux frames of one group; StepError when it has no masters or no frame could
    be calibrated (a frame that cannot be read is a problem of the record, not the group's)."""
    absent = missing_masters(layout, group)
    if absent:
        raise StepError(missing_masters_message(group, absent))
    dark_path, flat_path = layout.master_dark(group.exposure_ms), layout.master_flat(group.filter)
    recipe = aux_recipe()
    dark_key, flat_key = input_key(dark_path), input_key(flat_path)
    _, used = master_cards(layout, group, mean_date_obs(f.date_obs for f in frames))
    masters: list[Any] = []
    record: dict[str, Any] = {"problems": [], "written": [], "aux_reused": 0}
    done: list[Frame] = []
    for frame in frames:
        path = layout.aux(frame)
        key = product_key("aux", **recipe, raw=frame.sha256, dark=dark_key, flat=flat_key)

        def make(frame: Frame = frame, path: Any = path, key: str = key) -> None:
            raw = read_raw(layout, frame)
            if not masters:
                masters.extend((read_product(dark_path)[0], read_product(flat_path)[0]))
            level = camera.saturation_level(raw.header)
            saturated = frame_qc.saturated_fraction(raw.data, level)
            headroom = level - frame_qc.sky_level(raw.data)
            aux = calibration.calibrate(raw.data, masters[0], masters[1], out=raw.data)
            figures = frame_qc.measure(aux, headroom, saturated)
            header = product_header(raw.header)
            header["FILTER"] = frame.filter
            set_type(header, "Light Frame", frame.exposure_ms, frame.object)
            set_card(header, "ARRAW", frame.path, "raw frame")
            for card in master_cards(layout, group, frame.date_obs)[0]:
                set_card(header, *card)
            for card in frame_qc.header_cards(figures):
                set_card(header, *card)
            write_image(path, aux, stamp(header, key))
            record["written"].append(relative(layout, path))

        try:
            record["aux_reused"] += reuse_or_make(path, key, make, overwrite)
        except (FrameError, ValueError) as exc:
            record["problems"].append(problem(f"{exc}: not calibrated."))
            continue
        done.append(frame)
    record.update(
        calibrated=len(done),
        aux=[relative(layout, layout.aux(f)) for f in done],
        masters=used,
    )
    log.log(VERBOSE, "    %s...   Done (%s images).", group.name, len(done))
    if not done:
        raise StepError(f"No frame of {group.name} could be calibrated.")
    return record
