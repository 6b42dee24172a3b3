"""The stacking step: register a group's aux frames onto its best frame, then median-combine.

Registration and combination are separate tasks of the night plan, so a night's threads can
register one group while combining another instead of one core finishing the last stack alone.
Facts about the stack (aligned or not, ghost risk, frames left out) are fields of its record,
not only messages.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import camera, combine, frame_qc, registration, stacking
from ..association import mean_date_obs
from ..combine import FrameStack
from ..fitsio import (
    FrameError,
    ProductRows,
    frame_header,
    product_header,
    read_product,
    set_card,
    write_bytes_atomic,
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


MAX_REFERENCE_TRIALS = 3  # candidate references tried before the best-agreeing one is taken


@dataclass
class Alignment:
    """What registering a group found, for combine_group: its stack is `reused` (and `record`
    says so) or its frames are shifted by `shifts` onto `frames[reference]`; `failed` holds
    the frames left out with the reason, `qc` every frame's figures (in `frames` order)."""

    group: GroupKey
    frames: list[Frame]
    key: str
    record: dict[str, Any]
    reused: bool = False
    reference: int = 0
    shifts: dict[int, registration.Shift] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    skies: list[float] = field(default_factory=list)
    qc: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class _Check:
    """One frame's shift onto a candidate reference and how well its stars confirm it."""

    shift: registration.Shift | None
    match: registration.Match | None
    problem: str | None


@dataclass
class _Measured:
    """What registration reads off each aux frame."""

    detections: FrameStack
    stars: list[registration.Stars]
    scores: list[float]
    figures: list[frame_qc.FrameFigures | None]
    skies: list[float]
    pixel_scale: float = camera.PIXEL_SCALE_ARCSEC  # arcsec/px (the frames' binning)


def stack_recipe(thresholds: frame_qc.Thresholds | None = None) -> dict[str, Any]:
    """The code and parameters that make a stack's bytes (see provenance): the frame QC's
    thresholds decide which frames enter it."""
    code = code_identity(
        registration,
        combine,
        stacking,
        frame_qc,
        ProductRows,
        register_group,
        _measure_frames,
        _choose_reference,
        _check_shift,
        _judge,
        _frame_record,
        _kept_qc,
        combine_group,
        calibrate.master_cards,
        *FITS_WRITING,
    )
    parameters = constants(registration, REGISTRATION_CONSTANTS)
    parameters["frame_qc"] = (thresholds or frame_qc.Thresholds()).parameters()
    parameters["reference_trials"] = MAX_REFERENCE_TRIALS
    return {"code": code, "parameters": parameters}


def stack_key(
    layout: NightLayout, frames: list[Frame], thresholds: frame_qc.Thresholds | None = None
) -> str:
    return product_key(
        "stack",
        **stack_recipe(thresholds),
        inputs=[input_key(layout.aux(f)) for f in frames],
    )


def register_group(
    layout: NightLayout,
    group: GroupKey,
    frames: list[Frame],
    overwrite: bool = False,
    thresholds: frame_qc.Thresholds | None = None,
) -> Alignment:
    """Judge each aux frame, choose the reference among frames that agree and find each
    frame's checked shift onto it (or find the stack current). StepError when no frame is
    left to stack: the group fails with every frame's reason, the night goes on."""
    thresholds = thresholds or frame_qc.Thresholds()
    present = [f for f in frames if layout.aux(f).is_file()]
    missing = [f.path for f in frames if f not in present]
    for path in missing:
        log.warning("The aux frame of %s is missing: it is not stacked.", path)
    if not present:
        raise StepError(f"No calibrated frame of {group.name} to stack.")
    path = layout.stack(group)
    key = stack_key(layout, present, thresholds)
    record: dict[str, Any] = {"file": relative(layout, path), "frames": len(present)}
    record["missing_aux"] = missing
    kept = _kept_qc(layout, group, key) if not overwrite and is_current(path, key) else None
    if kept is not None:
        record.update(kept, reused=True)
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
        measured = _measure_frames(layout, present, detections)
        reference, checks = _choose_reference(group, present, measured, thresholds)
    failed, transparency = _judge(group, present, measured, reference, checks, thresholds)
    shifts = {i: c.shift for i, c in checks.items() if c.shift is not None and i not in failed}
    shifts[reference] = registration.Shift(0.0, 0.0, float("inf"))
    for index, reason in failed.items():
        log.warning("%s: %s; left out of the stack.", present[index].path, reason)
    qc = [
        _frame_record(present[i], i, reference, measured, checks, transparency, failed)
        for i in range(len(present))
    ]
    return Alignment(
        group,
        present,
        key,
        record,
        False,
        reference,
        shifts,
        failed,
        measured.skies,
        qc,
        seconds=time.perf_counter() - started,
    )


def _kept_qc(layout: NightLayout, group: GroupKey, key: str) -> dict[str, Any] | None:
    """The record a current stack was made with (None when its QC file is not its own)."""
    try:
        kept = json.loads(layout.stack_qc(group).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(kept, dict) or kept.get("key") != key:
        return None
    return kept.get("record")


def _measure_frames(layout: NightLayout, frames: list[Frame], detections: FrameStack) -> _Measured:
    """Each aux frame's detection image, brightest stars, quality score, figures and sky."""
    measured = _Measured(detections, [], [], [], [])
    for frame in frames:
        aux, header = read_product(layout.aux(frame))
        detection = registration.detection_image(aux)
        detections.append(detection, copy=False)
        measured.scores.append(registration.quality_score(detection))
        measured.stars.append(registration.star_list(detection, aux))
        figures = frame_qc.from_header(header)
        measured.figures.append(figures)
        measured.pixel_scale = camera.pixel_scale(header)
        sky = figures.sky if figures is not None else math.nan
        measured.skies.append(sky if math.isfinite(sky) else frame_qc.sky_level(aux))
    return measured


def _choose_reference(
    group: GroupKey,
    frames: list[Frame],
    measured: _Measured,
    thresholds: frame_qc.Thresholds,
) -> tuple[int, dict[int, _Check]]:
    """The reference and every other frame's check against it.

    Candidates are the frames their own figures keep, best quality first (ties broken by the
    frame id, so the choice is reproducible). A candidate is taken once at least half of the
    other candidates register onto it; otherwise the one most frames register onto, after
    MAX_REFERENCE_TRIALS. A frame no other frame registers onto (another field) is never the
    reference: the frames cannot be aligned and the group fails.
    """
    count = len(frames)
    own = frame_qc.judge(measured.figures, [None] * count, thresholds, measured.pixel_scale)
    candidates = sorted(
        (i for i in range(count) if not own[i]),
        key=lambda i: (measured.scores[i], frames[i].id),
        reverse=True,
    )
    if not candidates:
        raise StepError(
            _every_frame_left_out(group, frames, {i: "; ".join(own[i]) for i in range(count)})
        )
    if count == 1:
        return 0, {}
    shape = measured.detections.frame(candidates[0]).shape
    buffer = np.empty(shape[0] * shape[1], dtype=np.float32)
    best: tuple[int, int, registration.Correlator, dict[int, _Check]] | None = None
    refused: list[str] = []
    for candidate in candidates[:MAX_REFERENCE_TRIALS]:
        try:
            correlator = registration.Correlator(measured.detections.frame(candidate))
        except registration.RegistrationError as exc:
            refused.append(f"{frames[candidate].path}: {exc}")
            continue
        checks = {
            i: _check_shift(correlator, measured, candidate, i, buffer)
            for i in candidates
            if i != candidate
        }
        agreeing = sum(check.problem is None for check in checks.values())
        if best is None or agreeing > best[1]:
            best = (candidate, agreeing, correlator, checks)
        if 2 * agreeing >= len(candidates) - 1:
            break
    if best is None or (best[1] == 0 and len(candidates) > 1):
        found = "; ".join(refused) or "each frame matches none of the others"
        raise StepError(
            f"{group.name}: no two of its {len(candidates)} usable frames show the same stars "
            f"({found}): the frames cannot be aligned and are never stacked unaligned."
        )
    reference, _, correlator, checks = best
    for index in range(count):  # the frames judged on their own figures: their shift, for QC
        if index != reference and index not in checks:
            checks[index] = _check_shift(correlator, measured, reference, index, buffer)
    return reference, checks


def _check_shift(
    correlator: registration.Correlator,
    measured: _Measured,
    reference: int,
    index: int,
    buffer: np.ndarray,
) -> _Check:
    """A frame's shift onto the reference, checked against both frames' own stars."""
    try:
        shift = correlator.shift(measured.detections.frame(index, out=buffer))
    except registration.RegistrationError as exc:
        return _Check(None, None, f"does not register: {exc}")
    match = registration.match_stars(
        measured.stars[reference], measured.stars[index], shift, correlator.shape
    )
    return _Check(shift, match, match.problem)


def _judge(
    group: GroupKey,
    frames: list[Frame],
    measured: _Measured,
    reference: int,
    checks: dict[int, _Check],
    thresholds: frame_qc.Thresholds,
) -> tuple[dict[int, str], list[float | None]]:
    """The frames left out (index: reason) and each frame's transparency relative to the
    clearest frame that registers (median flux ratio of the matched stars)."""
    ratios: list[float | None] = [None] * len(frames)
    ratios[reference] = 1.0
    for index, check in checks.items():
        if check.problem is None and check.match is not None:
            ratio = check.match.flux_ratio
            ratios[index] = ratio if math.isfinite(ratio) and ratio > 0 else None
    clearest = max((r for r in ratios if r is not None), default=1.0)
    transparency = [None if r is None else r / clearest for r in ratios]
    reasons = frame_qc.judge(measured.figures, transparency, thresholds, measured.pixel_scale)
    failed: dict[int, str] = {}
    for index in range(len(frames)):
        why = list(reasons[index])
        check = checks.get(index)
        if check is not None and check.problem is not None:
            why.insert(0, check.problem)
        if why:
            failed[index] = "; ".join(why)
    if len(failed) == len(frames):
        raise StepError(_every_frame_left_out(group, frames, failed))
    return failed, transparency


def _every_frame_left_out(group: GroupKey, frames: list[Frame], reasons: dict[int, str]) -> str:
    listed = "; ".join(f"{frames[i].path}: {why}" for i, why in reasons.items())
    return f"{group.name}: every frame is left out of the stack ({listed})."


def _frame_record(
    frame: Frame,
    index: int,
    reference: int,
    measured: _Measured,
    checks: dict[int, _Check],
    transparency: list[float | None],
    failed: dict[int, str],
) -> dict[str, Any]:
    """One frame's QC record: its own figures, its transparency and its checked shift."""
    figures = measured.figures[index]
    record: dict[str, Any] = {"path": frame.path, "date_obs": frame.date_obs}
    record.update(figures.as_record() if figures is not None else {})
    fwhm = record.get("fwhm")
    record["fwhm_arcsec"] = None if fwhm is None else round(fwhm * measured.pixel_scale, 3)
    clarity = transparency[index]
    record["transparency"] = None if clarity is None else round(clarity, 4)
    check = checks.get(index)
    if index == reference:
        record.update(shift=[0.0, 0.0], matched=len(measured.stars[index].positions))
    elif check is not None and check.shift is not None:
        record["shift"] = [round(check.shift.dy, 3), round(check.shift.dx, 3)]
        if check.match is not None:
            record["matched"] = check.match.matched
            record["expected"] = check.match.expected
            residual = check.match.residual
            record["residual_px"] = round(residual, 4) if math.isfinite(residual) else None
    record["score"] = round(measured.scores[index], 1)  # quality: the reference's ranking
    record["reference"] = index == reference
    record["stacked"] = index not in failed
    record["reason"] = failed.get(index)
    return record


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
    set_card(header, "ARALIGN", True, "frames aligned before combining")
    set_card(header, "ARNREJ", len(failed), "frames left out by QC or registration")
    for number, index in enumerate(failed, start=1):
        set_card(header, f"ARREJ{number:03d}", frames[index].path, "left out (HISTORY: why)")
    header["EXPTOTAL"] = (len(used) * group.exposure_ms / 1000, "[s] summed exposure of inputs")
    inputs_date = mean_date_obs(frames[i].date_obs for i in used)
    for card in calibrate.master_cards(layout, group, inputs_date)[0]:
        set_card(header, *card)
    for index in used:
        s = shifts[index]
        header.add_history(f"{frames[index].path} dy={s.dy:+.3f} dx={s.dx:+.3f} px")
    for index, reason in failed.items():
        header.add_history(f"left out: {frames[index].path}: {reason}")
    record = dict(alignment.record)
    record.update(
        combined=len(used),
        reference=reference.path,
        aligned=True,
        ghost_risk=ghost_risk,
        shifts={frames[i].path: [round(shifts[i].dy, 3), round(shifts[i].dx, 3)] for i in used},
        refine_stars={frames[i].path: shifts[i].stars for i in used},
        left_out=[{"path": frames[i].path, "reason": r} for i, r in failed.items()],
        max_shift_fraction=round(fraction, 4),
        qc=alignment.qc,
    )
    # The QC first: a stack is current only with the QC file of its own key beside it.
    kept = {"key": alignment.key, "record": record}
    write_bytes_atomic(layout.stack_qc(group), (json.dumps(kept, indent=1) + "\n").encode())
    write_image(layout.stack(group), data, stamp(header, alignment.key))
    log.log(
        VERBOSE,
        "  %s:\n    %s:%sms...   Done (%s images).",
        group.object,
        group.filter,
        group.exposure_ms,
        len(used),
    )
    record = dict(record)
    record.update(
        reused=False,
        seconds={
            "registration": round(alignment.seconds, 3),
            "combine": round(time.perf_counter() - started, 3),
        },
    )
    return record
