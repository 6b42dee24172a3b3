"""A small, explicit CCD model for unit tests: truth arrays and noisy frames drawn from them."""

from __future__ import annotations

import numpy as np

GAIN = 1.2  # e-/ADU
READ_NOISE = 6.0  # ADU


def structured_bias(shape, rng):
    y, x = np.indices(shape)
    return (300 + 4 * np.sin(x / 7.0) + 3 * y / shape[0] + rng.normal(0, 1.5, shape)).astype(
        np.float32
    )


def dark_rate(shape, rng, hot_fraction=5e-4):
    y, x = np.indices(shape)
    rate = 0.02 + 1.5 * np.exp(-np.hypot(y, x) / (0.1 * shape[0]))  # amp glow in a corner
    hot = rng.random(shape) < hot_fraction
    rate[hot] += rng.uniform(5, 200, hot.sum())
    return rate.astype(np.float32), hot


def vignetted_flat(shape, rng):
    """Vignetting (~18% at the corners), a 5% gradient, 1% PRNU and two dust rings."""
    y, x = np.indices(shape, dtype=np.float64)
    cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    r2 = ((y - cy) ** 2 + (x - cx) ** 2) / (cy**2 + cx**2)
    flat = (1 - 0.18 * r2) * (1 + 0.05 * (x - cx) / cx) * rng.normal(1, 0.01, shape)
    for ry, rx, radius in ((0.3, 0.6, 0.04), (0.7, 0.25, 0.03)):
        d = np.hypot(y - ry * shape[0], x - rx * shape[1]) / (radius * shape[0])
        flat *= 1 - 0.04 * np.exp(-((d - 1) ** 2) / 0.05)
    inner = flat[shape[0] // 4 : -shape[0] // 4, shape[1] // 4 : -shape[1] // 4]
    return (flat / np.median(inner)).astype(np.float32)


def expose(signal_adu, bias, rng):
    """Poisson (in electrons) on the signal, bias, then read noise."""
    electrons = rng.poisson(np.clip(signal_adu, 0, None) * GAIN)
    return (electrons / GAIN + bias + rng.normal(0, READ_NOISE, bias.shape)).astype(np.float32)


def frame_sigma(signal_adu):
    """Expected noise (ADU) of one frame with this mean signal."""
    return np.sqrt(READ_NOISE**2 + np.asarray(signal_adu) / GAIN)


def robust_std(values):
    values = values[np.isfinite(values)]
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def star_field(shape, rng, count=120, fwhm=3.5):
    """A star list (y, x, total flux ADU) spread a little beyond the frame."""
    margin = 20
    y = rng.uniform(-margin, shape[0] + margin, count)
    x = rng.uniform(-margin, shape[1] + margin, count)
    flux = 2000 * rng.pareto(1.5, count) + 500
    return np.column_stack([y, x, np.minimum(flux, 2e5)]), fwhm


def render(shape, stars, fwhm, dy=0.0, dx=0.0, sky=100.0):
    """Noiseless image: Gaussian stars shifted by (dy, dx) on a flat sky."""
    image = np.full(shape, sky, np.float64)
    sigma = fwhm / 2.3548
    for y, x, flux in stars:
        y, x = y + dy, x + dx
        y0, y1 = max(int(y) - 12, 0), min(int(y) + 13, shape[0])
        x0, x1 = max(int(x) - 12, 0), min(int(x) + 13, shape[1])
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        image[y0:y1, x0:x1] += (
            flux
            / (2 * np.pi * sigma**2)
            * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))
        )
    return image
