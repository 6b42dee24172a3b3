"""One solve per group: an image's WCS from the group's solved image and the registration shifts.

Registration measured each frame's translation onto the group's alignment grid (the reference
frame's pixels, which the stack shares). Once one image of the group is solved, any other
image's WCS is that solution moved by the difference of their shifts: exact for a translation,
for TPV (SCAMP) and SIP (astrometry.net) distortions alike, since both are polynomials of the
offset from CRPIX. Registration is good to ~0.05 px (0.04"), not to the ~0.01" a solver reaches,
so each moved WCS is checked on the image's own stars against reference positions (the
reference catalogue, or else the solved image's own stars) and its CRPIX refined by their mean
offset: with enough stars, by an affine fit, so a small scale or rotation error of the solved
image is not handed on either (CD and CRPIX change; SIP and TPV terms are kept). A check that
fails (too few stars matched, a large scatter or correction) sends the image to a full solve
of its own.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from . import registration
from .lazy_import import fits
from .wcs_headers import SCAMP_QUALITY_KEYS, celestial, wcs_cards

CHECK_STARS = 100  # brightest stars of the image that check its moved WCS
MATCH_RADIUS_PX = 2.0  # a star this close to a reference's predicted place is matched
MIN_MATCHED = 8
MIN_MATCHED_FRACTION = 0.3  # of the stars the image and the references should share
MAX_RMS_PX = 0.35  # scatter of the matched stars about the refined WCS
MAX_CORRECTION_PX = 1.5  # the refinement may not move the WCS further than this
MIN_AFFINE_STARS = 20  # matched stars needed to fit scale and rotation too, not only a shift
MAX_LINEAR = 2e-3  # largest scale or rotation change the fit may make (1 px across the field)
CLIP_SIGMA = 3.0
EDGE_PX = registration.CENTROID_RADIUS + 2


def settings() -> dict[str, float]:
    """The check's constants, for the derived products' provenance key."""
    return {
        "check_stars": CHECK_STARS,
        "match_radius_px": MATCH_RADIUS_PX,
        "min_matched": MIN_MATCHED,
        "min_matched_fraction": MIN_MATCHED_FRACTION,
        "max_rms_px": MAX_RMS_PX,
        "max_correction_px": MAX_CORRECTION_PX,
        "min_affine_stars": MIN_AFFINE_STARS,
        "max_linear": MAX_LINEAR,
    }


@dataclass(frozen=True)
class Check:
    """How a moved WCS fits the image's own stars, and the refinement it got."""

    reference: str  # what the stars were matched against: "catalogue" or the solved image
    stars: int  # stars measured on the image
    expected: int  # stars the image and the references should share (the sparser list)
    matched: int
    correction_px: tuple[float, float]  # (dx, dy) the refinement moved the image centre by
    rms_px: float  # scatter of the matched stars about the refined WCS
    rms_arcsec: float
    linear: float = 0.0  # largest element of the fit's linear part less the identity

    @property
    def problem(self) -> str | None:
        """Why the moved WCS cannot be trusted, or None."""
        needed = max(MIN_MATCHED, math.ceil(MIN_MATCHED_FRACTION * self.expected))
        if self.matched < needed:
            return (
                f"{self.matched} of {self.expected} stars matched the {self.reference} "
                f"(at least {needed} needed)"
            )
        if not self.rms_px <= MAX_RMS_PX:
            return f"scatter {self.rms_px:.2f} px about the moved WCS (at most {MAX_RMS_PX})"
        if math.hypot(*self.correction_px) > MAX_CORRECTION_PX:
            dx, dy = self.correction_px
            return f"the check moved the WCS by ({dx:+.2f}, {dy:+.2f}) px: a wrong shift?"
        if self.linear > MAX_LINEAR:
            return (
                f"the check changed scale or rotation by {self.linear:.1e} (at most {MAX_LINEAR})"
            )
        return None

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["correction_px"] = [round(v, 4) for v in self.correction_px]
        values["rms_px"] = round(self.rms_px, 4)
        values["rms_arcsec"] = round(self.rms_arcsec, 4)
        values["linear"] = float(f"{self.linear:.3g}")
        return values


def solution_cards(header: fits.Header) -> fits.Header:
    """The WCS of a solved product's header, without the solver's figures about that image."""
    cards = wcs_cards(header)
    for key in SCAMP_QUALITY_KEYS:
        cards.remove(key, ignore_missing=True, remove_all=True)
    return cards


def moved(solution: fits.Header, dx: float, dy: float) -> fits.Header:
    """The WCS of an image whose pixel (x, y) sees what the solved image sees at (x+dx, y+dy)."""
    out = solution.copy()
    out["CRPIX1"] = float(solution["CRPIX1"]) - dx
    out["CRPIX2"] = float(solution["CRPIX2"]) - dy
    return out


def image_stars(image: np.ndarray) -> np.ndarray:
    """(x, y) of the image's brightest stars (0-based pixels), windowed centroids."""
    detection = registration.detection_image(image)
    peaks = np.array(registration.brightest_peaks(detection, CHECK_STARS), dtype=np.float64)
    if not peaks.size:
        return np.empty((0, 2))
    found = registration.centroids(detection, peaks[:, 0], peaks[:, 1])
    found = found[np.isfinite(found).all(axis=1)]
    return found[:, ::-1].copy()


def sky_positions(solution: fits.Header, stars_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RA, Dec (degrees) of pixel positions through a solution."""
    wcs = _wcs(solution)
    ra, dec = wcs.all_pix2world(stars_xy[:, 0], stars_xy[:, 1], 0)
    return np.asarray(ra), np.asarray(dec)


def check(
    solution: fits.Header,
    stars_xy: np.ndarray,
    references: tuple[np.ndarray, np.ndarray],
    shape: tuple[int, int],
    reference_name: str,
) -> tuple[fits.Header, Check]:
    """Match the image's stars with the references' predicted places, refine CRPIX by their
    clipped mean offset; returns the refined solution and the check's figures."""
    wcs = _wcs(solution)
    height, width = shape
    with np.errstate(invalid="ignore"):
        predicted = np.column_stack(wcs.all_world2pix(references[0], references[1], 0))
    inside = np.isfinite(predicted).all(axis=1)
    inside &= (predicted[:, 0] > EDGE_PX) & (predicted[:, 0] < width - EDGE_PX)
    inside &= (predicted[:, 1] > EDGE_PX) & (predicted[:, 1] < height - EDGE_PX)
    predicted = predicted[inside]
    expected = min(len(predicted), len(stars_xy))
    scale = pixel_scale_arcsec(solution)
    if not expected:
        return solution, Check(reference_name, len(stars_xy), 0, 0, (0.0, 0.0), math.nan, math.nan)
    distance = np.hypot(
        stars_xy[:, None, 0] - predicted[None, :, 0], stars_xy[:, None, 1] - predicted[None, :, 1]
    )
    nearest = np.argmin(distance, axis=1)
    close = distance[np.arange(len(stars_xy)), nearest] <= MATCH_RADIUS_PX
    offsets = stars_xy[close] - predicted[nearest[close]]  # where stars are, less predicted
    if len(offsets) < 2:
        return solution, Check(
            reference_name, len(stars_xy), expected, len(offsets), (0.0, 0.0), math.nan, math.nan
        )
    centre = np.median(offsets, axis=0)
    spread = np.hypot(*(offsets - centre).T)
    limit = CLIP_SIGMA * max(1.4826 * float(np.median(spread)), 0.02)
    kept = spread <= limit
    image_centre = np.array([(width - 1) / 2, (height - 1) / 2])
    linear, shift = _fit(
        predicted[nearest[close]][kept] - image_centre, stars_xy[close][kept] - image_centre
    )
    fitted = (predicted[nearest[close]][kept] - image_centre) @ linear.T + shift + image_centre
    rms = float(np.sqrt(np.mean(np.sum((stars_xy[close][kept] - fitted) ** 2, axis=1))))
    refined = _refined(solution, linear, shift, image_centre)
    result = Check(
        reference_name,
        len(stars_xy),
        expected,
        int(kept.sum()),
        (float(shift[0]), float(shift[1])),
        rms,
        rms * scale,
        float(np.abs(linear - np.eye(2)).max()),
    )
    return refined, result


def _fit(predicted: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """found = linear @ predicted + shift, least squares (centred on the image); only the
    shift when too few stars constrain the linear part."""
    if len(found) < MIN_AFFINE_STARS:
        return np.eye(2), (found - predicted).mean(axis=0)
    design = np.column_stack([predicted, np.ones(len(predicted))])
    solution, *_ = np.linalg.lstsq(design, found, rcond=None)
    return solution[:2].T, solution[2]


def _refined(
    solution: fits.Header, linear: np.ndarray, shift: np.ndarray, centre: np.ndarray
) -> fits.Header:
    """The WCS whose prediction of a star at pixel p becomes linear @ (p - centre) + shift +
    centre: CRPIX moves with the fit and CD absorbs the inverse of its linear part (exact for
    TAN and TPV; SIP terms, applied before CD, stay as solved: their change is ~1e-4 of the
    distortion itself)."""
    out = solution.copy()
    crpix = np.array([float(solution["CRPIX1"]), float(solution["CRPIX2"])]) - 1
    new = linear @ (crpix - centre) + shift + centre + 1
    out["CRPIX1"], out["CRPIX2"] = float(new[0]), float(new[1])
    if np.allclose(linear, np.eye(2)):
        return out
    keys = ("CD1_1", "CD1_2", "CD2_1", "CD2_2")
    if not all(key in solution for key in keys):
        return moved(solution, -float(shift[0]), -float(shift[1]))
    cd = np.array([[solution["CD1_1"], solution["CD1_2"]], [solution["CD2_1"], solution["CD2_2"]]])
    cd = cd @ np.linalg.inv(linear)
    for key, value in zip(keys, cd.ravel(), strict=True):
        out[key] = float(value)
    return out


def pixel_scale_arcsec(solution: fits.Header) -> float:
    """The mean pixel scale of a solution (arcsec)."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.mean(proj_plane_pixel_scales(_wcs(solution).celestial)) * 3600)


def _wcs(solution: fits.Header) -> Any:
    wcs = celestial(solution)
    if wcs is None:
        raise ValueError("the solution holds no celestial WCS")
    return wcs
