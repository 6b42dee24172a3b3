"""The derived WCS on arrays: a solution moved by a shift, then refined on stars whose true
places differ from the moved WCS by a small shift, scale and rotation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from ar_tasks import derived_wcs

SCALE_DEG = 0.77 / 3600
SHAPE = (1024, 1024)


def _tan(crpix: tuple[float, float], scale: float = SCALE_DEG, angle_deg: float = 0.0):
    header = fits.Header()
    header.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=132.8, CRVAL2=11.8)
    header.update(CRPIX1=crpix[0], CRPIX2=crpix[1], CUNIT1="deg", CUNIT2="deg")
    c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    header.update(CD1_1=-scale * c, CD1_2=scale * s, CD2_1=scale * s, CD2_2=scale * c)
    return header


def _stars(rng: np.random.Generator, count: int = 120) -> np.ndarray:
    return rng.uniform(40, 984, size=(count, 2))


def test_moved_follows_the_registration_convention():
    solution = _tan((512.5, 512.5))
    # A frame whose pixel (x, y) sees what the solved image sees at (x + 3, y - 2).
    frame = derived_wcs.moved(solution, 3.0, -2.0)
    a = WCS(solution).all_pix2world([[103.0, 198.0]], 0)
    b = WCS(frame).all_pix2world([[100.0, 200.0]], 0)
    assert np.allclose(a, b, atol=1e-12)


@pytest.mark.parametrize("affine", [False, True], ids=["shift", "shift-scale-rotation"])
def test_check_refines_the_moved_wcs_onto_the_stars(affine):
    rng = np.random.default_rng(3)
    truth = _tan((510.3, 515.8), SCALE_DEG * (1.0003 if affine else 1.0), 0.02 if affine else 0)
    guess = _tan((510.0, 516.0))  # a registration 0.3 px off, and the anchor's own error
    stars = _stars(rng)
    ra, dec = WCS(truth).all_pix2world(stars[:, 0], stars[:, 1], 0)
    noise = 0.05  # px, each centroid
    found = stars + rng.normal(0, noise, stars.shape)
    refined, check = derived_wcs.check(guess, found, (ra, dec), SHAPE, "catalogue")
    assert check.problem is None
    assert check.matched == len(stars)
    assert check.rms_px == pytest.approx(noise * math.sqrt(2), rel=0.2)
    grid = np.array([[x, y] for x in (0, 512, 1023) for y in (0, 512, 1023)], dtype=float)
    true_sky = WCS(truth).all_pix2world(grid, 0)
    got_sky = WCS(refined).all_pix2world(grid, 0)
    dra = (true_sky[:, 0] - got_sky[:, 0]) * math.cos(math.radians(11.8))
    error_px = np.hypot(dra, true_sky[:, 1] - got_sky[:, 1]) / SCALE_DEG
    # The fit's own error, from 120 stars of 0.05 px each, is ~0.01 px at the centre.
    assert error_px.max() < 0.05, error_px


def test_a_wrong_field_or_shift_is_refused():
    rng = np.random.default_rng(5)
    solution = _tan((512.5, 512.5))
    stars = _stars(rng)
    ra, dec = WCS(solution).all_pix2world(stars[:, 0], stars[:, 1], 0)
    other = _stars(rng)  # stars of another field
    _, check = derived_wcs.check(solution, other, (ra, dec), SHAPE, "catalogue")
    assert check.problem and "matched" in check.problem
    shifted = stars + np.array([1.8, 0.0])  # within the match radius, beyond the largest correction
    _, check = derived_wcs.check(solution, shifted, (ra, dec), SHAPE, "catalogue")
    assert check.problem and "moved the WCS" in check.problem
