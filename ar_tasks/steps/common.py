"""What the step modules share: their error, raw-frame reading, product header cards, names."""

from __future__ import annotations

import logging
from pathlib import Path

from .. import fitschecksum, fitsheader
from ..fitsheader import Header
from ..fitsio import (
    FrameError,
    RawFrame,
    _image_header,
    product_header,
    read_frame,
    set_card,
    write_image,
)
from ..inventory import Frame
from ..layout import NightLayout, png_path
from ..logs import VERBOSE

log = logging.getLogger(__name__)

# The code that turns an array and a header into a product file: part of every product's key.
FITS_WRITING = (write_image, _image_header, product_header, set_card, fitsheader, fitschecksum)


class StepError(RuntimeError):
    """A step cannot run at all (as opposed to a problem with one file or one group).

    Deterministic: running it again on the same night gives the same answer, so the DAG
    fails such a task at once instead of retrying it.
    """


def read_raw(layout: NightLayout, frame: Frame) -> RawFrame:
    """Read a raw frame and check it is the one the inventory saw."""
    try:
        raw = read_frame(layout.raw(frame), frame.known)
    except FrameError as exc:
        raise FrameError(f"{frame.path} {exc}") from None
    if raw.sha256 != frame.sha256:
        raise FrameError(f"{frame.path} changed since --setup: run astro_reduce --setup again")
    return raw


def relative(layout: NightLayout, path: Path) -> str:
    """A product's path inside the night's products folder, as records and manifests give it."""
    return str(path.relative_to(layout.out_dir))


def remove_stale(path: Path) -> None:
    """Delete a master this run cannot make, so no group is calibrated with an old one."""
    for stale in (path, png_path(path)):
        if stale.is_file():
            stale.unlink()
            log.log(VERBOSE, "  Removed stale product `%s`.", stale.name)


def problem(message: str) -> str:
    """Log a problem as an error and return it, for the step's record."""
    log.error("%s", message)
    return message


def set_type(header: Header, imagetyp: str, exposure_ms: int, obj: str) -> None:
    """astro_reduce's product keywords (exposure -1000 ms gives its EXPTIME -1 of flats)."""
    seconds = exposure_ms / 1000
    header["IMAGETYP"] = imagetyp
    header["EXPTIME"] = (seconds, "Exposure time in seconds")
    header["EXPOSURE"] = (seconds, "Exposure time in seconds")
    header["OBJECT"] = obj


def add_inputs(header: Header, frames: list[Frame]) -> None:
    """NCOMBINE and IRAF-style IMCMBnnn cards naming every input frame."""
    header["NCOMBINE"] = (len(frames), "number of frames combined")
    for index, frame in enumerate(frames[:999], start=1):
        header[f"IMCMB{index:03d}"] = frame.path
