"""The masters step: master darks per exposure, interpolated darks, master flats per filter.

Each master is one task of the night plan (see nightplan), made by the pure functions of
ar_tasks.masters from the inventory's frames, written atomically, and reused while its key
holds. Its QC figures are header cards, so a reused master's record says what a new one would.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .. import combine
from .. import masters as algorithms
from ..association import mean_date_obs
from ..combine import median_noise_factor
from ..fitsheader import Header
from ..fitsio import frame_header, product_header, read_header, read_product, write_image
from ..inventory import Frame
from ..layout import NightLayout
from ..logs import VERBOSE
from ..provenance import code_identity, constants, input_key, product_key, reuse_or_make, stamp
from .common import FITS_WRITING, StepError, add_inputs, read_raw, relative, set_type

log = logging.getLogger(__name__)
FLAT_CONSTANTS = ("FLAT_MIN_RESPONSE", "LEVEL_SUBSAMPLE", "LEVEL_SUBSAMPLE_MIN_SIZE")
QC_CONSTANTS = (
    "QC_INPUTS",
    "MAX_INPUT_DISAGREEMENT",
    "MAX_UNDEFINED_FRACTION",
    "DARK_LEVEL_RANGE_ADU",
)
QC_CODE = (
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
        _qc_cards,
        *QC_CODE,
        *FITS_WRITING,
    )
    return {"code": code, "parameters": constants(algorithms, FLAT_CONSTANTS + QC_CONSTANTS)}


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

    def make() -> None:
        first: list[np.ndarray] = []  # the first darks, for the QC

        def darks() -> Any:
            for frame in frames:
                data = read_raw(layout, frame).data
                if len(first) < algorithms.QC_INPUTS:
                    first.append(data)
                yield data

        data = algorithms.master_dark(darks(), copy=False)
        header = product_header(frame_header(layout.raw(frames[0])))
        header["FILTER"] = " " * 8
        set_type(header, "Dark", exposure, "DARK")
        add_inputs(header, frames)
        noise = algorithms.input_noise(first)
        qc = {
            "frame_noise": noise,
            "noise": noise * median_noise_factor(len(frames)),
            "disagreement": algorithms.disagreement(first, data, noise),
            "level_adu": float(np.nanmedian(data[::2, ::2])),
            "undefined_fraction": algorithms.undefined_fraction(data),
        }
        _qc_cards(header, layout, frames, "dark", qc, "ADU")
        write_image(path, data, stamp(header, key))

    reused = reuse_or_make(path, key, make, overwrite)
    log.log(VERBOSE, "    %s ms...    Done (%s images).", exposure, len(frames))
    return _record(layout, path, frames, reused, frame_noise_adu="QCFNOISE", noise_adu="QCNOISE")


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

    def make() -> None:
        darks: dict[int, np.ndarray] = {}
        first: list[np.ndarray] = []  # the first normalised flats, for the QC

        def normalised() -> Any:
            for frame in frames:
                exposure = frame.exposure_ms
                if exposure not in darks:
                    darks[exposure] = read_product(layout.master_dark(exposure))[0]
                raw = read_raw(layout, frame).data
                flat, level = algorithms.normalise_flat(raw, darks[exposure], raw)
                levels.append(level)
                if len(first) < algorithms.QC_INPUTS:
                    first.append(flat)
                yield flat

        data, undefined = algorithms.master_flat(normalised(), copy=False)
        header = product_header(frame_header(layout.raw(frames[0])))
        header["FILTER"] = filter_name
        set_type(header, "Flat Field", -1000, "FLAT")
        add_inputs(header, frames)
        header["ARFLBAD"] = (undefined, "pixels with response < 5% set undefined (NaN)")
        header["QCLEVMIN"] = (round(min(levels), 1), "[ADU] faintest input flat level")
        header["QCLEVMAX"] = (round(max(levels), 1), "[ADU] brightest input flat level")
        noise = algorithms.input_noise(first)
        qc = {
            "frame_noise": noise,
            "noise": noise * median_noise_factor(len(frames)),
            "disagreement": algorithms.disagreement(first, data, noise),
            "undefined_fraction": undefined / data.size,
        }
        _qc_cards(header, layout, frames, "flat", qc, "relative")
        write_image(path, data, stamp(header, key))

    reused = reuse_or_make(path, key, make, overwrite)
    log.log(VERBOSE, "    %s...   Done (%s images).", filter_name, len(frames))
    record = _record(
        layout, path, frames, reused, undefined_pixels="ARFLBAD",
        level_min_adu="QCLEVMIN", level_max_adu="QCLEVMAX",
    )  # fmt: skip
    if levels:  # made now: each input's level
        record["levels_adu"] = [round(v, 1) for v in levels]
    return record
