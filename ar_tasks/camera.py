"""OHP T120 camera facts and the header rules that turn raw keywords into safe names.

Everything that depends on the instrument or on header conventions lives here, so the reduction
modules stay generic and the synthetic nights model the same camera the pipeline expects.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

# Detector (Andor 2048^2 binned 2x2, as encoded in astro_reduce 5.1.3's t120-andor1024.ahead).
NAXIS = 1024
PIXEL_SCALE_ARCSEC = 0.77
BINNING = 2  # the binning PIXEL_SCALE_ARCSEC is for
SATURATION_ADU = 64000.0
ADC_MAX_ADU = 65535.0  # the 16-bit converter's top: saturated when SATURATE is not given
# Nominal CD matrix of the T120 (degrees / pixel): ~179.4 deg rotation with flipped parity.
CD_MATRIX = (
    (-2.138738809045e-04, 2.180959444292e-06),
    (-2.331002019312e-06, -2.138176347970e-04),
)

# Folders of a night, and which frame type each holds (the folder decides, never IMAGETYP).
FRAME_FOLDERS = {"DARK": "dark", "FLAT": "flat", "ORIGINAL": "object"}
FITS_SUFFIXES = (".fits", ".fit", ".fts")
COMPRESSED_SUFFIXES = ("", ".gz", ".fz")

EXPOSURE_KEYS_SECONDS = ("EXPTIME", "EXPOSURE")
EXPOSURE_KEY_MS = "EXP (MS)"

_UNSAFE_OBJECT = re.compile(r"[^A-Za-z0-9+\-]+")
_UNSAFE_FILTER = re.compile(r"[^A-Za-z0-9+]+")
_DASH_RUN = re.compile(r"-{2,}")


class HeaderError(ValueError):
    """A header lacks a keyword the reduction needs, or holds an unusable value."""


def is_fits_name(name: str) -> bool:
    """True for .fits/.fit/.fts in any case, optionally gzip- or fpack-compressed."""
    lower = name.lower()
    return any(lower.endswith(s + c) for s in FITS_SUFFIXES for c in COMPRESSED_SUFFIXES)


def exposure_ms(header: Mapping[str, Any]) -> int:
    """Exposure in integer milliseconds: EXPTIME, then EXPOSURE (s), then 'EXP (MS)' (ms).

    Rounded to the nearest millisecond; 5.1.3 truncated, so 1.001 s became 1000 ms.
    """
    for key in EXPOSURE_KEYS_SECONDS:
        if key in header:
            return _to_ms(header[key], key, 1000.0)
    if EXPOSURE_KEY_MS in header:
        return _to_ms(header[EXPOSURE_KEY_MS], EXPOSURE_KEY_MS, 1.0)
    raise HeaderError("has no exposure keyword (EXPTIME, EXPOSURE or 'EXP (MS)')")


def _to_ms(value: Any, key: str, factor: float) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise HeaderError(f"has {key} = {value!r}, not a number") from None
    if not math.isfinite(number) or number < 0:
        raise HeaderError(f"has {key} = {value!r}, not a valid exposure")
    return round(number * factor)


def sanitize_object(raw: str) -> str:
    """OBJECT as a file-name-safe token.

    5.1.3's rule (space and '_' become '-') plus: every other character outside [A-Za-z0-9+-]
    becomes '-', runs of '-' collapse and edge dashes go, so '/', '..', '*' or '[' can never
    reach a path or a glob. 'M 67' -> 'M-67', 'NGC_2420' -> 'NGC-2420', '../../x' -> 'x'.
    """
    return _DASH_RUN.sub("-", _UNSAFE_OBJECT.sub("-", str(raw).strip())).strip("-")


def sanitize_filter(raw: str) -> str:
    """FILTER as a file-name-safe token: 5.1.3 deletes '-', ' ' and '_'; we delete every other
    unsafe character too ('r-SDSS' -> 'rSDSS', 'B_1' -> 'B1')."""
    return _UNSAFE_FILTER.sub("", str(raw).strip())


def header_text(header: Mapping[str, Any], key: str) -> str:
    """A string keyword's value, or HeaderError when it is missing."""
    if key not in header:
        raise HeaderError(f"has no {key} keyword")
    return str(header[key]).strip()


def setup(header: Mapping[str, Any]) -> dict[str, Any]:
    """The camera set-up a master must share with the frames it calibrates, where the header
    says it: the camera (INSTRUME), the binning (XBINNING x YBINNING) and the CCD temperature
    set-point (SET-TEMP, degC; the measured CCD-TEMP wanders and is not a set-up)."""
    found: dict[str, Any] = {"instrument": str(header.get("INSTRUME", "")).strip()}
    xbin, ybin = header.get("XBINNING"), header.get("YBINNING")
    found["binning"] = f"{xbin}x{ybin}" if xbin is not None and ybin is not None else ""
    try:
        set_temp = float(header["SET-TEMP"])
        found["set_temp"] = set_temp if math.isfinite(set_temp) else None
    except (KeyError, TypeError, ValueError):
        found["set_temp"] = None
    return found


_DECLARED_KINDS = (("dark", "dark"), ("bias", "bias"), ("zero", "bias"), ("flat", "flat"))
_DECLARED_KINDS += (("light", "object"), ("object", "object"), ("science", "object"))


def pixel_scale(header: Mapping[str, Any]) -> float:
    """Arcseconds per pixel of a frame: PIXEL_SCALE_ARCSEC at 2x2, scaled by XBINNING."""
    try:
        binning = float(header["XBINNING"])
    except (KeyError, TypeError, ValueError):
        return PIXEL_SCALE_ARCSEC
    if not (math.isfinite(binning) and 1 <= binning <= 16):
        return PIXEL_SCALE_ARCSEC
    return PIXEL_SCALE_ARCSEC * binning / BINNING


def saturation_level(header: Mapping[str, Any]) -> float:
    """SATURATE (ADU) where the header gives a usable one, else the 16-bit converter's top."""
    try:
        level = float(header["SATURATE"])
    except (KeyError, TypeError, ValueError):
        return ADC_MAX_ADU
    return level if math.isfinite(level) and level > 0 else ADC_MAX_ADU


def declared_kind(header: Mapping[str, Any]) -> str:
    """What IMAGETYP says a frame is ("dark", "bias", "flat", "object"; "" when it does not
    say, or says something else): the folder decides, but a clear contradiction is an error."""
    text = str(header.get("IMAGETYP", "")).strip().lower()
    for word, kind in _DECLARED_KINDS:
        if word in text:
            return kind
    return ""
