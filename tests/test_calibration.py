"""Calibration: the sky of a calibrated frame is flat once dark and flat are removed."""

import numpy as np
from camera_model import dark_rate, expose, structured_bias, vignetted_flat

from ar_tasks import masters
from ar_tasks.calibration import calibrate

SHAPE = (256, 256)


def test_calibrated_sky_is_flat_to_one_percent():
    rng = np.random.default_rng(20)
    bias = structured_bias(SHAPE, rng)
    rate, _ = dark_rate(SHAPE, rng)
    flat = vignetted_flat(SHAPE, rng)
    seconds, sky = 120.0, 5.0
    dark = masters.master_dark([expose(rate * seconds, bias, rng) for _ in range(5)])
    dark5 = masters.master_dark([expose(rate * 5, bias, rng) for _ in range(5)])
    flats = [
        expose(rate * 5 + level * flat, bias, rng) for level in (2e4, 2.5e4, 3e4, 2.2e4, 2.8e4)
    ]
    mflat, _ = masters.master_flat(masters.normalise_flat(f, dark5)[0] for f in flats)
    raw = expose(rate * seconds + sky * seconds * flat, bias, rng)
    aux = calibrate(raw, dark, mflat)
    assert aux.dtype == np.float32
    blocks = aux.reshape(8, 32, 8, 32).transpose(0, 2, 1, 3).reshape(8, 8, -1)
    levels = np.median(blocks, axis=2)
    assert np.ptp(levels) / np.median(levels) < 0.01 * 2  # peak-to-peak of 64 block medians
    assert np.std(levels) / np.median(levels) < 0.01 / 2
    assert abs(np.median(levels) / (sky * seconds) - 1) < 0.01
    # Without the flat the vignetting shows (> 10% across the frame).
    raw_levels = np.median(
        (raw - dark).reshape(8, 32, 8, 32).transpose(0, 2, 1, 3).reshape(8, 8, -1), axis=2
    )
    assert np.ptp(raw_levels) / np.median(raw_levels) > 0.1


def test_undefined_flat_pixels_give_nan_not_inf():
    flat = np.ones((4, 4), np.float32)
    flat[1, 1] = np.nan
    aux = calibrate(np.full((4, 4), 100, np.float32), np.zeros((4, 4), np.float32), flat)
    assert np.isnan(aux[1, 1]) and np.isfinite(np.delete(aux.ravel(), 5)).all()
