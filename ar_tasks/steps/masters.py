"""The masters step: master darks per exposure, interpolated darks, master flats per filter.

Each master is one task of the night plan (see nightplan), made by the pure functions of
ar_tasks.masters from the inventory's frames, written atomically, and reused while its key
holds. Its QC figures are header cards, so a reused master's record says what a new one would.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import combine
from .. import masters as algorithms
from ..association import mean_date_obs
from ..camera import saturation_level
from ..combine import FrameStack, median_noise_factor
from ..fitsheader import Header
from ..fitsio import (
    RawFrame,
    frame_header,
    product_header,
    read_header,
    read_product,
    write_image,
)
from ..inventory import Frame
from ..layout import NightLayout
from ..logs import VERBOSE
from ..provenance import code_identity, constants, input_key, product_key, reuse_or_make, stamp
from .common import FITS_WRITING, StepError, add_inputs, problem, read_raw, relative, set_type

log = logging.getLogger(__name__)
FLAT_CONSTANTS = ("FLAT_MIN_RESPONSE", "LEVEL_SUBSAMPLE", "LEVEL_SUBSAMPLE_MIN_SIZE")
QC_CONSTANTS = (
    "MAX_SATURATED_FRACTION",
    "MAX_UNDEFINED_INPUT",
    "OUTLIER_SIGMA",
    "OUTLIER_FRACTION",
    "QC_INPUTS",
    "MAX_INPUT_DISAGREEMENT",
    "MAX_UNDEFINED_FRACTION",
    "DARK_LEVEL_RANGE_ADU",
)
LEFT_OUT = "ARLFT"  # ARLFTnnn cards of a master: a frame it left out, and why
QC_CODE = (
    algorithms.frame_problem,
    algorithms.outlier_fraction,
    algorithms.median_without_outliers,
    saturation_level,
    algorithms.input_noise,
    algorithms.disagreement,
    algorithms.undefined_fraction,
    algorithms.master_problem,
)
# Record field -> header card of every master's QC figures (read back for a reused master).
QC_CARDS = {
    "night": "ARNIGHT",
    "date_obs": "ARDATE",
    "frame_noise": "QCFNOISE",
    "noise": "QCNOISE",
    "disagreement": "QCDISAGR",
    "level_adu": "QCLEVEL",
    "undefined_fraction": "QCUNDEF",
}


def dark_recipe() -> dict[str, Any]:
    """The code and parameters that make a master dark's bytes (see provenance)."""
    code = code_identity(
        algorithms.master_dark,
        algorithms.pair_noise,
        combine,
        make_master_dark,
        _combine,
        _left_out_cards,
        _qc_cards,
        *QC_CODE,
        *FITS_WRITING,
    )
    return {"code": code, "parameters": constants(algorithms, QC_CONSTANTS)}


def interpolation_recipe() -> dict[str, Any]:
    code = code_identity(
        algorithms.fit_dark_model,
        algorithms.interpolate_dark,
        make_interpolated_darks,
        _qc_cards,
        *QC_CODE,
        *FITS_WRITING,
    )
    return {"code": code, "parameters": constants(algorithms, QC_CONSTANTS)}


def flat_recipe() -> dict[str, Any]:
    code = code_identity(
        algorithms.normalise_flat,
        algorithms.robust_level,
        algorithms.central_region,
        algorithms.finish_flat,
        algorithms.master_flat,
        combine,
        make_master_flat,
        _combine,
        _left_out_cards,
        _gain,
        algorithms.flat_signal_problem,
        _qc_cards,
        *QC_CODE,
        *FITS_WRITING,
    )
    flat_only = ("MIN_FLAT_SNR",)
    return {
        "code": code,
        "parameters": constants(algorithms, FLAT_CONSTANTS + QC_CONSTANTS + flat_only),
    }


def dark_key(exposure: int, frames: list[Frame]) -> str:
    return product_key(
        "mdark", **dark_recipe(), exposure=exposure, inputs=sorted(f.sha256 for f in frames)
    )


def make_master_dark(
    layout: NightLayout, exposure: int, frames: list[Frame], overwrite: bool = False
) -> dict[str, Any]:
    """ar_masters/mdark_<ms>.fits: the median of the night's darks of one exposure."""
    path = layout.master_dark(exposure)
    key = dark_key(exposure, frames)
    errors: list[str] = []  # inputs that could not be read (made now)

    def make() -> None:
        def check(frame: Frame, raw: RawFrame) -> tuple[np.ndarray, str]:
            return raw.data, algorithms.frame_problem(raw.data, saturation_level(raw.header))

        data, used, left_out, first, noise = _combine(layout, frames, check, "dark", errors)
        header = product_header(frame_header(layout.raw(used[0])))
        header["FILTER"] = " " * 8
        set_type(header, "Dark", exposure, "DARK")
        add_inputs(header, used)
        _left_out_cards(header, left_out)
        qc = {
            "frame_noise": noise,
            "noise": noise * median_noise_factor(len(used)),
            "disagreement": algorithms.disagreement(first, data, noise),
            "level_adu": float(np.nanmedian(data[::2, ::2])),
            "undefined_fraction": algorithms.undefined_fraction(data),
        }
        _qc_cards(header, layout, used, "dark", qc, "ADU")
        write_image(path, data, stamp(header, key))

    reused = reuse_or_make(path, key, make, overwrite)
    log.log(VERBOSE, "    %s ms...    Done (%s images).", exposure, len(frames))
    record = _record(layout, path, frames, reused, frame_noise_adu="QCFNOISE", noise_adu="QCNOISE")
    return record | {"problems": errors}


def _combine(
    layout: NightLayout,
    frames: list[Frame],
    check: Callable[[Frame, RawFrame], tuple[np.ndarray, str]],
    kind: str,
    errors: list[str],
    noise_floor: Callable[[list[Frame]], float] | None = None,
) -> tuple[np.ndarray, list[Frame], dict[str, str], list[np.ndarray], float]:
    """The median of the frames that pass `check` (which turns a raw frame into what is
    combined, and says why it must not be), less the outliers among them
    (masters.median_without_outliers); returns (median, frames used, {path: why} of those
    left out, the first used ones for the QC, one input's noise). One input's noise is the
    quietest pair's, or `noise_floor` of the frames when it is lower (when no two inputs
    agree, no pair can tell their noise). An input that cannot be read is also an error,
    filed in `errors`. StepError when none is left, naming each frame."""
    left_out: dict[str, str] = {}
    accepted: list[Frame] = []
    with FrameStack() as stack:
        for frame in frames:
            try:
                data, reason = check(frame, read_raw(layout, frame))
            except ValueError as exc:  # FrameError, or a level that cannot be taken: an
                # input that cannot be used at all is an error, as a science frame's is
                reason = str(exc).removeprefix(f"{frame.path} ")
                left_out[frame.path] = reason
                errors.append(problem(f"{frame.path} {reason}: left out of its master {kind}."))
                continue
            if reason:
                left_out[frame.path] = reason
                log.warning("%s %s: left out of its master %s.", frame.path, reason, kind)
                continue
            stack.append(data, copy=False)
            accepted.append(frame)
        if not accepted:
            raise StepError(
                f"every {kind} was left out: "
                + "; ".join(f"{path} {why}" for path, why in left_out.items())
            )
        sample = [stack.frame(i) for i in range(min(len(stack), algorithms.QC_INPUTS))]
        floor = noise_floor(accepted) if noise_floor else float("nan")
        noise = float(np.nanmin([algorithms.input_noise(sample), floor]))
        data, stray, kept = algorithms.median_without_outliers(stack, noise)
        for index, fraction in stray.items():
            path = accepted[index].path
            left_out[path] = (
                f"strays from the master of the others ({fraction:.0%} of its pixels at "
                f"{algorithms.OUTLIER_SIGMA:g} sigma or more)"
            )
            log.warning("%s %s: left out of its master %s.", path, left_out[path], kind)
        first = [stack.frame(i).copy() for i in kept[: algorithms.QC_INPUTS]]
    if stray:
        noise = float(np.nanmin([algorithms.input_noise(first), floor]))
    return data, [accepted[i] for i in kept], left_out, first, noise


def _gain(header: Header) -> float:
    """GAIN (e-/ADU) where the header gives a usable one, else 1."""
    try:
        gain = float(header["GAIN"])
    except (KeyError, TypeError, ValueError):
        return 1.0
    return gain if np.isfinite(gain) and gain > 0 else 1.0


def _left_out_cards(header: Header, left_out: dict[str, str]) -> None:
    """ARLFTnnn cards naming each frame a master left out, and why (read back by _record)."""
    for index, (path, reason) in enumerate(list(left_out.items())[:999], start=1):
        header[f"{LEFT_OUT}{index:03d}"] = f"{path}: {reason}"


def _left_out_of(header: Header) -> dict[str, str]:
    found = {}
    index = 1
    while f"{LEFT_OUT}{index:03d}" in header:
        path, _, reason = str(header[f"{LEFT_OUT}{index:03d}"]).partition(": ")
        found[path] = reason
        index += 1
    return found


def _qc_cards(
    header: Header, layout: NightLayout, frames: list[Frame], kind: str, qc: dict, unit: str
) -> None:
    """A master's night, epoch and QC figures as header cards; StepError (and nothing
    written) when the figures say it must not be used (masters.master_problem)."""
    header["ARNIGHT"] = (layout.raw_dir.name, "night whose raw frames made this master")
    header["ARDATE"] = (mean_date_obs(f.date_obs for f in frames), "mean DATE-OBS of inputs")
    comments = {
        "frame_noise": f"[{unit}] noise of one input",
        "noise": f"[{unit}] expected noise of the master",
        "disagreement": "max robust std(input - master) / input noise",
        "level_adu": "[ADU] median level",
        "undefined_fraction": "fraction of undefined (NaN) pixels",
    }
    for field, comment in comments.items():
        value = qc.get(field)
        if value is not None and np.isfinite(value):
            header[QC_CARDS[field]] = (round(float(value), 6), comment)
    reason = algorithms.master_problem(kind, qc)
    if reason:
        raise StepError(f"fails its QC: {reason}")


def _record(
    layout: NightLayout, path: Path, frames: list[Frame], reused: bool, **cards: str
) -> dict[str, Any]:
    """A master's QC record; its figures (QC_CARDS and `cards`: record field -> header
    keyword) are read from its header, so a reused master's record says what a new one's
    would."""
    header = read_header(path)
    record = {"frames": len(frames), "file": relative(layout, path), "reused": reused}
    record["used"] = header.get("NCOMBINE", len(frames))
    record["left_out"] = _left_out_of(header)
    return record | {name: header.get(card) for name, card in (QC_CARDS | cards).items()}


def make_interpolated_darks(
    layout: NightLayout, darks: dict[int, list[Frame]], missing: list[int], overwrite: bool = False
) -> dict[str, Any]:
    """Master darks for exposures without darks, from the weighted line through the night's
    master darks (one exposure only: a copy of it, with a warning)."""
    exposures = sorted(darks)
    sources = {e: layout.master_dark(e) for e in exposures}
    absent = [e for e, path in sources.items() if not path.is_file()]
    if absent:
        raise StepError(f"the master darks of {absent} ms could not be made")
    key_inputs = {e: input_key(p) for e, p in sources.items()}
    counts = [len(darks[e]) for e in exposures]
    model: list[tuple[np.ndarray, np.ndarray]] = []
    results = {}
    for exposure in missing:
        path = layout.master_dark(exposure)
        key = interpolation_key(exposure, key_inputs, counts)

        def make(exposure: int = exposure, path: Any = path, key: str = key) -> None:
            if len(exposures) == 1:
                data = read_product(sources[exposures[0]])[0]
                log.warning(
                    "Only one dark exposure (%s ms): the %s ms master dark is a copy of it "
                    "(no line can be fitted).",
                    exposures[0],
                    exposure,
                )
            else:
                if not model:
                    images = [read_product(sources[e])[0] for e in exposures]
                    model.append(algorithms.fit_dark_model(exposures, images, counts))
                data = algorithms.interpolate_dark(*model[0], exposure)
            header = Header()
            header["FILTER"] = " " * 8
            set_type(header, "Interpolated dark", exposure, "DARK")
            header["ARDKFROM"] = (",".join(map(str, exposures)), "exposures (ms) of the fit")
            qc = {
                "level_adu": float(np.nanmedian(data[::2, ::2])),
                "undefined_fraction": algorithms.undefined_fraction(data),
            }
            inputs = [f for e in exposures for f in darks[e]]
            _qc_cards(header, layout, inputs, "dark", qc, "ADU")
            write_image(path, data, stamp(header, key))

        try:
            reused = reuse_or_make(path, key, make, overwrite)
        except StepError as exc:
            raise StepError(f"the {exposure} ms master dark {exc}") from None
        results[str(exposure)] = {"from": exposures, **_record(layout, path, [], reused)}
        del results[str(exposure)]["frames"]
        log.log(VERBOSE, "    %sms...      Done.", exposure)
    return results


def interpolation_key(exposure: int, dark_keys: dict[int, str], counts: list[int]) -> str:
    """The key of an interpolated master dark, from the keys of the masters it is fitted to."""
    masters = {str(e): k for e, k in sorted(dark_keys.items())}
    return product_key(
        "mdark-interpolated",
        **interpolation_recipe(),
        exposure=exposure,
        masters=masters,
        counts=counts,
    )


def flat_key(layout: NightLayout, filter_name: str, frames: list[Frame]) -> str:
    """The key of a master flat from its frames and the night's master darks (their files)."""
    darks = {f.exposure_ms: input_key(layout.master_dark(f.exposure_ms)) for f in frames}
    return flat_key_of(filter_name, frames, darks)


def flat_key_of(filter_name: str, frames: list[Frame], dark_keys: dict[int, str]) -> str:
    """The key of a master flat from its frames and the keys of the darks it subtracts."""
    return product_key(
        "mtrans",
        **flat_recipe(),
        filter=filter_name,
        inputs=sorted(f.sha256 for f in frames),
        darks={str(e): k for e, k in sorted(dark_keys.items())},
    )


def make_master_flat(
    layout: NightLayout, filter_name: str, frames: list[Frame], overwrite: bool = False
) -> dict[str, Any]:
    """ar_masters/mtrans_<filter>.fits: the median of the dark-subtracted, normalised flats."""
    path = layout.master_flat(filter_name)
    absent = sorted(
        {f.exposure_ms for f in frames if not layout.master_dark(f.exposure_ms).is_file()}
    )
    if absent:
        raise StepError(f"no master dark for the flat exposure(s) {absent} ms")
    key = flat_key(layout, filter_name, frames)
    levels: list[float] = []
    errors: list[str] = []  # inputs that could not be read (made now)

    def make() -> None:
        darks: dict[int, np.ndarray] = {}
        level_of: dict[str, float] = {}

        def check(frame: Frame, raw: RawFrame) -> tuple[np.ndarray, str]:
            reason = algorithms.frame_problem(raw.data, saturation_level(raw.header))
            if reason:
                return raw.data, reason
            exposure = frame.exposure_ms
            if exposure not in darks:
                darks[exposure] = read_product(layout.master_dark(exposure))[0]
            flat, level = algorithms.normalise_flat(raw.data, darks[exposure], raw.data)
            level_of[frame.path] = level
            gains.append(_gain(raw.header))
            return flat, algorithms.flat_signal_problem(level, gains[-1])

        gains: list[float] = []

        def photon_noise(accepted: list[Frame]) -> float:
            """One normalised flat's photon noise, 1/sqrt(level x gain) at the median level."""
            median_level = float(np.median([level_of[f.path] for f in accepted]))
            return 1.0 / float(np.sqrt(median_level * (np.median(gains) if gains else 1.0)))

        normalised, used, left_out, first, noise = _combine(
            layout, frames, check, "flat", errors, photon_noise
        )
        data, undefined = algorithms.finish_flat(normalised)
        levels.extend(level_of[f.path] for f in used)
        header = product_header(frame_header(layout.raw(used[0])))
        header["FILTER"] = filter_name
        set_type(header, "Flat Field", -1000, "FLAT")
        add_inputs(header, used)
        _left_out_cards(header, left_out)
        header["ARFLBAD"] = (undefined, "pixels with response < 5% set undefined (NaN)")
        header["QCLEVMIN"] = (round(min(levels), 1), "[ADU] faintest input flat level")
        header["QCLEVMAX"] = (round(max(levels), 1), "[ADU] brightest input flat level")
        qc = {
            "frame_noise": noise,
            "noise": noise * median_noise_factor(len(used)),
            "disagreement": algorithms.disagreement(first, data, noise),
            "undefined_fraction": undefined / data.size,
        }
        _qc_cards(header, layout, used, "flat", qc, "relative")
        write_image(path, data, stamp(header, key))

    reused = reuse_or_make(path, key, make, overwrite)
    log.log(VERBOSE, "    %s...   Done (%s images).", filter_name, len(frames))
    record = _record(
        layout, path, frames, reused, undefined_pixels="ARFLBAD",
        level_min_adu="QCLEVMIN", level_max_adu="QCLEVMAX",
    )  # fmt: skip
    if levels:  # made now: each input's level
        record["levels_adu"] = [round(v, 1) for v in levels]
    return record | {"problems": errors}
