"""WCS header rules: the initial WCS a solver starts from, and merging the solved one.

The raw T120 header has no WCS, only the telescope pointing (OBJCTRA/OBJCTDEC). Solvers start
from that pointing with the nominal plate scale and camera angle; the solution they return is
merged into the product header after every earlier WCS card is removed, so a stale or seeded
WCS can never survive next to the solved one (5.1.3 copied nothing: its reduced/ files kept the
seeded WCS).
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .camera import HeaderError
from .lazy_import import fits

if TYPE_CHECKING:
    from astropy.wcs import WCS

# Keywords that describe a celestial WCS (or distortions of one), in any of its conventions.
_WCS_KEY = re.compile(
    r"^(WCSAXES|WCSNAME|CTYPE\d|CUNIT\d|CRVAL\d|CRPIX\d|CDELT\d|CROTA\d|CD\d_\d|PC\d_\d|PV\d_\d+"
    r"|PS\d_\d+|LONPOLE|LATPOLE|EQUINOX|EPOCH|RADESYSA?|RADECSYS|MJDREF|"
    r"[AB]P?_ORDER|[AB]P?_\d+_\d+|[AB]_DMAX|IMAGEW|IMAGEH)$"
)
# Quality cards SCAMP writes beside its WCS, kept in the merged header.
SCAMP_QUALITY_KEYS = ("ASTRRMS1", "ASTRRMS2", "ASTIRMS1", "ASTIRMS2", "ASTINST", "FLXSCALE")
_POINTING_KEYS = (("OBJCTRA", "OBJCTDEC"), ("RA", "DEC"), ("TELRA", "TELDEC"))


def header_pointing(header: fits.Header) -> tuple[float, float]:
    """Telescope pointing (RA, Dec in degrees) from OBJCTRA/OBJCTDEC, else RA/DEC.

    Strings are sexagesimal (RA in hours), as MaxIm DL writes them; numbers are degrees.
    """
    for ra_key, dec_key in _POINTING_KEYS:
        if ra_key in header and dec_key in header:
            ra, dec = header[ra_key], header[dec_key]
            # astropy.coordinates costs 0.4 s to import: only solving pays it, not every step.
            from astropy import units as u
            from astropy.coordinates import Angle

            try:
                if isinstance(ra, str):
                    ra_deg = Angle(ra.strip(), unit=u.hourangle).degree
                    dec_deg = Angle(str(dec).strip(), unit=u.deg).degree
                else:
                    ra_deg, dec_deg = float(ra), float(dec)
            except (ValueError, TypeError) as exc:
                raise HeaderError(f"unreadable pointing {ra_key}={ra!r} {dec_key}={dec!r}") from exc
            if not (-90 <= dec_deg <= 90 and math.isfinite(ra_deg)):
                raise HeaderError(f"pointing out of range: {ra_key}={ra!r} {dec_key}={dec!r}")
            return float(ra_deg % 360), float(dec_deg)
    raise HeaderError("no pointing keywords (OBJCTRA/OBJCTDEC or RA/DEC)")


def initial_wcs(header: fits.Header, template: fits.Header) -> fits.Header:
    """The a-priori WCS of a frame: CRVAL at the header pointing, CRPIX at the frame centre,
    the template's CD matrix (the nominal 2x2-binned camera) scaled by the frame's binning."""
    ra, dec = header_pointing(header)
    nx, ny = int(header["NAXIS1"]), int(header["NAXIS2"])
    binning = float(header.get("XBINNING", 2) or 2)
    out = fits.Header()
    out["EQUINOX"] = float(template.get("EQUINOX", 2000.0))
    out["RADESYS"] = str(template.get("RADESYS", "ICRS"))
    for axis in (1, 2):
        out[f"CTYPE{axis}"] = template[f"CTYPE{axis}"]
        out[f"CUNIT{axis}"] = template.get(f"CUNIT{axis}", "deg")
    out["CRVAL1"], out["CRVAL2"] = ra, dec
    out["CRPIX1"], out["CRPIX2"] = (nx + 1) / 2, (ny + 1) / 2
    for key in ("CD1_1", "CD1_2", "CD2_1", "CD2_2"):
        out[key] = float(template[key]) * binning / 2
    return out


def nominal_scale_arcsec(header: fits.Header, template: fits.Header) -> float:
    """Nominal pixel scale of a frame in arcsec, from the template CD matrix and the binning."""
    cd = np.array([[template["CD1_1"], template["CD1_2"]], [template["CD2_1"], template["CD2_2"]]])
    binning = float(header.get("XBINNING", 2) or 2)
    return float(math.sqrt(abs(np.linalg.det(cd))) * 3600 * binning / 2)


def read_card_file(path: Path) -> fits.Header:
    """A header written as text cards (SCAMP .head / .ahead), whatever bytes it holds.

    SCAMP 2.10 writes 'Université' in a COMMENT: non-ASCII bytes are replaced first.
    """
    text = path.read_bytes().decode("ascii", errors="replace").replace("\ufffd", "?")
    lines = [line.rstrip("\r") for line in text.splitlines()]
    cards = [line for line in lines if line.strip()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        return fits.Header.fromstring("\n".join(cards), sep="\n")


def write_card_file(path: Path, header: fits.Header) -> None:
    """Write a header as one 80-character card per line, ending with END (SCAMP's .ahead)."""
    lines = [str(card) for card in header.cards] + ["END".ljust(80)]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")


def wcs_cards(header: fits.Header) -> fits.Header:
    """Only the WCS (and SCAMP quality) cards of a solver's header."""
    kept = fits.Header()
    for card in header.cards:
        if _WCS_KEY.match(card.keyword) or card.keyword in SCAMP_QUALITY_KEYS:
            kept.append(card)
    return kept


def strip_wcs(header: fits.Header) -> fits.Header:
    """Remove every WCS card in place (an earlier solution or a seeded WCS)."""
    for key in [card.keyword for card in header.cards if _WCS_KEY.match(card.keyword)]:
        header.remove(key, ignore_missing=True, remove_all=True)
    return header


def merge_wcs(header: fits.Header, solution: fits.Header) -> fits.Header:
    """A copy of `header` with its WCS replaced by the solver's; raises ValueError when the
    solution is not a usable celestial WCS."""
    cards = wcs_cards(solution)
    merged = strip_wcs(header.copy())
    merged.extend(cards.cards, update=True)
    if not celestial(merged):
        raise ValueError("the solver's header holds no celestial WCS")
    return merged


def celestial(header: fits.Header) -> WCS | None:
    """The celestial WCS of a header, or None when it has none."""
    # astropy.wcs pulls in astropy.coordinates (0.4 s): imported when a WCS is read, not before.
    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, relax=True)
        except (ValueError, KeyError, MemoryError):
            return None
    return wcs if wcs.has_celestial and wcs.celestial.naxis == 2 else None
