"""The stacking step: register a group's aux frames onto its best frame, then median-combine.

Registration and combination are separate tasks of the night plan, so a night's threads can
register one group while combining another instead of one core finishing the last stack alone.
Facts about the stack (aligned or not, ghost risk, frames left out) are fields of its record,
not only messages.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import combine, registration, stacking
from ..association import mean_date_obs
from ..combine import FrameStack, median_of
from ..fitsio import (
    FrameError,
    ProductRows,
    frame_header,
    product_header,
    read_header,
    read_product,
    set_card,
    write_image,
)
from ..inventory import Frame, GroupKey
from ..layout import NightLayout
from ..logs import VERBOSE
from ..provenance import code_identity, constants, input_key, is_current, product_key, stamp
from . import calibrate
from .common import FITS_WRITING, StepError, add_inputs, relative, set_type

log = logging.getLogger(__name__)
REGISTRATION_CONSTANTS = (
    "BACKGROUND_MESH",
    "BACKGROUND_SUBSAMPLE",
    "DETECTION_SIGMA",
    "SHARP_SIGMA",
    "SHARP_RATIO",
    "MAX_SHIFT_FRACTION",
    "LANCZOS_ORDER",
    "COARSE_BINNING",
    "COARSE_MIN_SIZE",
    "REFINE_STARS",
    "MIN_REFINE_STARS",
    "MIN_PEAK_SNR",
    "PEAK_BOX",
    "CENTROID_RADIUS",
)


@dataclass
class Alignment:
    """What registering a group found, for combine_group: its stack is `reused` (and `record`
    says so) or its frames are shifted by `shifts` onto `frames[reference]`."""

    group: GroupKey
    frames: list[Frame]
    key: str
    record: dict[str, Any]
    reused: bool = False
    reference: int = 0
    aligned: bool = True
    shifts: dict[int, registration.Shift] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    skies: list[float] = field(default_factory=list)
    seconds: float = 0.0


def stack_recipe() -> dict[str, Any]:
    """The code and parameters that make a stack's bytes (see provenance)."""
    code = code_identity(
        registration,
        combine,
        stacking,
        ProductRows,
        register_group,
        _sky_level,
        _measure_shifts,
        combine_group,
        calibrate.master_cards,
        *FITS_WRITING,
    )
    return {"code": code, "parameters": constants(registration, REGISTRATION_CONSTANTS)}


def stack_key(layout: NightLayout, frames: list[Frame]) -> str:
    return product_key(
        "stack",
        **stack_recipe(),
        inputs=[input_key(layout.aux(f)) for f in frames],
    )


def register_group(
    layout: NightLayout, group: GroupKey, frames: list[Frame], overwrite: bool = False
) -> Alignment:
    """Find each aux frame's shift onto the group's best frame (or find the stack current)."""
    present = [f for f in frames if layout.aux(f).is_file()]
    missing = [f.path for f in frames if f not in present]
    for path in missing:
        log.warning("The aux frame of %s is missing: it is not stacked.", path)
    if not present:
        raise StepError(f"No calibrated frame of {group.name} to stack.")
    path = layout.stack(group)
    key = stack_key(layout, present)
    record: dict[str, Any] = {"file": relative(layout, path), "frames": len(present)}
    record["missing_aux"] = missing
    if not overwrite and is_current(path, key):
        header = read_header(path)
        record.update(
            reused=True,
            combined=int(header.get("NCOMBINE", 1)),
            reference=header.get("ARREF"),
            aligned=bool(header.get("ARALIGN", True)),
        )
        log.log(
            VERBOSE,
            "  %s:\n    %s:%sms...   Reused.",
            group.object,
            group.filter,
            group.exposure_ms,
        )
        return Alignment(group, present, key, record, reused=True)
    started = time.perf_counter()
    with FrameStack(sparse=True) as detections:
        skies, scores = [], []
        for frame in present:
            aux = read_product(layout.aux(frame))[0]
            detection = registration.detection_image(aux)
            detections.append(detection, copy=False)
            scores.append(registration.quality_score(detection))
            skies.append(_sky_level(aux))
        # Best quality first; ties broken by the frame id so the choice is reproducible.
        reference = max(range(len(present)), key=lambda i: (scores[i], present[i].id))
        shifts, failed, aligned = _measure_shifts(detections, reference, present)
    return Alignment(
        group,
        present,
        key,
        record,
        False,
        reference,
        aligned,
        shifts,
        failed,
        skies,
        seconds=time.perf_counter() - started,
    )


def _sky_level(image: np.ndarray) -> float:
    """Median of a regular subsample of the finite pixels: the frame's sky, cheaply."""
    sample = image[::3, ::3]
    sample = sample[np.isfinite(sample)]
    return float(median_of(sample)) if sample.size else 0.0


def _measure_shifts(
    detections: FrameStack, reference: int, frames: list[Frame]
) -> tuple[dict[int, registration.Shift], dict[int, str], bool]:
    """Shifts onto the reference, the frames that did not register (with the reason), and
    whether the group is aligned at all (not when the reference itself has no usable stars)."""
    shifts = {reference: registration.Shift(0.0, 0.0, float("inf"))}
    failed: dict[int, str] = {}
    try:
        correlator = registration.Correlator(detections.frame(reference))
    except registration.RegistrationError as exc:
        log.warning(
            "%s: %s; the frames are combined without alignment.", frames[reference].path, exc
        )
        return {i: registration.Shift(0.0, 0.0, 0.0) for i in range(len(frames))}, {}, False
    buffer = np.empty(correlator.shape[0] * correlator.shape[1], dtype=np.float32)
    for index in range(len(frames)):
        if index == reference:
            continue
        try:
            shifts[index] = correlator.shift(detections.frame(index, out=buffer))
        except registration.RegistrationError as exc:
            log.warning("%s: %s; left out of the stack.", frames[index].path, exc)
            failed[index] = str(exc)
    return shifts, failed, True


def combine_group(layout: NightLayout, alignment: Alignment) -> dict[str, Any]:
    """Shift the registered frames, take their median and write stacked/<group>.fits; returns
    the group's stack record."""
    if alignment.reused:
        return alignment.record
    started = time.perf_counter()
    group, frames, shifts = alignment.group, alignment.frames, alignment.shifts
    ref_index, skies, failed = alignment.reference, alignment.skies, alignment.failed
    used = [i for i in range(len(frames)) if i not in failed]
    sources = [ProductRows(layout.aux(frames[i])) for i in used]
    shape = sources[0].shape
    for source in sources:
        if source.shape != shape:
            raise FrameError(f"{source.path}: shape {source.shape} differs from {shape}")
    fraction = registration.ghost_fraction([shifts[i] for i in used], shape)
    data = stacking.shifted_median(
        [source.read for source in sources],
        shape,
        [shifts[i] for i in used],
        [skies[ref_index] - skies[i] for i in used],
    )
    ghost_risk = fraction > registration.GHOST_WARNING_FRACTION
    if ghost_risk:
        log.warning(
            "In %s:%s:%s, shifting by %s%% of the field size.\nW: Beware of ghosts!",
            group.object,
            group.filter,
            group.exposure_ms,
            int(100 * fraction),
        )
    reference = frames[ref_index]
    header = product_header(frame_header(layout.raw(reference)))
    header["FILTER"] = group.filter
    set_type(header, "Light Frame", group.exposure_ms, group.object)
    add_inputs(header, [frames[i] for i in used])
    set_card(header, "ARREF", reference.path, "alignment reference and header source")
    set_card(header, "ARALIGN", alignment.aligned, "frames aligned before combining")
    header["EXPTOTAL"] = (len(used) * group.exposure_ms / 1000, "[s] summed exposure of inputs")
    inputs_date = mean_date_obs(frames[i].date_obs for i in used)
    for card in calibrate.master_cards(layout, group, inputs_date)[0]:
        set_card(header, *card)
    for index in used:
        s = shifts[index]
        header.add_history(f"{frames[index].path} dy={s.dy:+.3f} dx={s.dx:+.3f} px")
    for index, reason in failed.items():
        header.add_history(f"left out: {frames[index].path}: {reason}")
    write_image(layout.stack(group), data, stamp(header, alignment.key))
    log.log(
        VERBOSE,
        "  %s:\n    %s:%sms...   Done (%s images).",
        group.object,
        group.filter,
        group.exposure_ms,
        len(used),
    )
    record = dict(alignment.record)
    record.update(
        reused=False,
        combined=len(used),
        reference=reference.path,
        aligned=alignment.aligned,
        ghost_risk=ghost_risk,
        shifts={frames[i].path: [round(shifts[i].dy, 3), round(shifts[i].dx, 3)] for i in used},
        refine_stars={frames[i].path: shifts[i].stars for i in used},
        left_out=[{"path": frames[i].path, "reason": r} for i, r in failed.items()],
        max_shift_fraction=round(fraction, 4),
        seconds={
            "registration": round(alignment.seconds, 3),
            "combine": round(time.perf_counter() - started, 3),
        },
    )
    return record
