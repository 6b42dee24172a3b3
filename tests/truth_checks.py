"""Checks of a reduced night against the truth of its synthetic night (CLI and DAG tests)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from astropy.io import fits

from ar_tasks.combine import median_noise_factor
from ar_tasks.masters import central_region

MEASURED_DARKS = [5000, 60000, 180000]
INTERPOLATED_DARKS = [10000, 120000]  # B flats (10 s) and NGC 2420 (120 s) have no darks
GROUPS = [
    "M-67_R_60000",
    "M-67_V_60000",
    "NGC-2420_B_120000",
    "NGC-2420_R_120000",
    "NGC-2420_V_120000",
]
DARKS_PER_EXPOSURE = 5


def robust_std(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def fits_products(night: Path) -> list[Path]:
    return [
        p
        for folder in ("ar_masters", "ar_cosmetic", "stacked")
        for p in (night / folder).glob("*.fits")
    ]


def check_product_names(night: Path, frames_per_group: int) -> None:
    """Every master, aux frame and stack of a default synthetic night, with astro_reduce's names."""
    masters = {p.name for p in (night / "ar_masters").glob("*.fits")}
    expected = {f"mdark_{e}.fits" for e in MEASURED_DARKS + INTERPOLATED_DARKS}
    expected |= {f"mtrans_{f}.fits" for f in "BRV"}
    assert masters == expected
    aux = sorted((night / "ar_cosmetic").glob("*_aux.fits"))
    assert len(aux) == len(GROUPS) * frames_per_group
    pattern = r"[A-Za-z0-9+-]+_[A-Za-z0-9+]+_\d+_[0-9a-f]{32}_aux\.fits"
    assert all(re.fullmatch(pattern, p.name) for p in aux)
    assert {p.name for p in (night / "stacked").glob("*.fits")} == {f"{g}.fits" for g in GROUPS}
    assert not list(night.rglob("*.part"))


def _dark_sigma(truth, seconds: float) -> float:
    camera = truth.camera
    signal = float(np.median(truth.dark_rate)) * seconds
    return float(np.sqrt(camera["read_noise_adu"] ** 2 + signal / camera["gain_e_per_adu"]))


def check_master_darks(night: Path, truth) -> None:
    """Measured masters within 1.5x the noise of a median of N darks of bias + rate * t."""
    good = ~truth.hot_pixels
    for exposure in MEASURED_DARKS:
        data = fits.getdata(night / "ar_masters" / f"mdark_{exposure}.fits")
        residual = (data - (truth.bias + truth.dark_rate * exposure / 1000))[good]
        expected = _dark_sigma(truth, exposure / 1000) * median_noise_factor(DARKS_PER_EXPOSURE)
        assert robust_std(residual) < 1.5 * expected, (exposure, robust_std(residual), expected)
        assert abs(np.median(residual)) < 0.2 * expected


def check_interpolated_darks(night: Path, truth) -> None:
    """Interpolated masters within 1.5x the propagated noise of the fitted line."""
    x = np.array(MEASURED_DARKS, float)
    for exposure in INTERPOLATED_DARKS:
        path = night / "ar_masters" / f"mdark_{exposure}.fits"
        data, header = fits.getdata(path, header=True)
        assert header["IMAGETYP"] == "Interpolated dark"
        residual = (data - (truth.bias + truth.dark_rate * exposure / 1000))[~truth.hot_pixels]
        leverage = 1 / 3 + (exposure - x.mean()) ** 2 / np.sum((x - x.mean()) ** 2)
        noise = _dark_sigma(truth, 180) * median_noise_factor(DARKS_PER_EXPOSURE)
        sigma = noise * np.sqrt(leverage)
        assert robust_std(residual) < 1.5 * sigma, (exposure, robust_std(residual), sigma)
        assert abs(np.median(residual)) < 0.2 * sigma


def check_master_flats(night: Path, truth) -> None:
    """Master flats within 0.5% RMS of the truth (5.1.3: about 5%)."""
    for name, true_flat in truth.flats.items():
        data = fits.getdata(night / "ar_masters" / f"mtrans_{name}.fits")
        ratio = data / np.nanmedian(data[central_region(data.shape)]) / true_flat
        rms = float(np.sqrt(np.nanmean((ratio - 1) ** 2)))
        assert rms < 0.005, (name, rms)
        assert np.isfinite(data).mean() > 0.999


def history_shifts(header: fits.Header) -> dict[str, tuple[float, float]]:
    shifts = {}
    for card in header["HISTORY"]:
        match = re.fullmatch(r"(\S+) dy=(\S+) dx=(\S+) px", str(card))
        if match:
            shifts[match[1]] = (float(match[2]), float(match[3]))
    return shifts


def check_stack(night: Path, truth, group: str, frames: int) -> None:
    """Registration, calibration and star positions and fluxes of one stack against truth."""
    data, header = fits.getdata(night / "stacked" / f"{group}.fits", header=True)
    _, filt, exposure = group.rsplit("_", 2)
    seconds = int(exposure) / 1000
    assert header["NCOMBINE"] == frames and header["EXPTIME"] == seconds
    reference = truth.frame(header["ARREF"])
    assert header["DATE-OBS"].startswith(reference["date_obs"][:19])  # header from the reference
    # Registration: every measured shift within 0.05 px of the true dither difference.
    shifts = history_shifts(header)
    assert len(shifts) == frames
    for path, (dy, dx) in shifts.items():
        frame = truth.frame(path)
        assert abs(dy - (reference["dy"] - frame["dy"])) < 0.05, (path, dy)
        assert abs(dx - (reference["dx"] - frame["dx"])) < 0.05, (path, dx)
    # Calibration: the sky is sky_rate * t everywhere (flat to 1%).
    sky = truth.sky_rate[filt] * seconds
    cells = data.shape[0] // 64
    size = cells * 64
    blocks = data[:size, :size].reshape(cells, 64, cells, 64).transpose(0, 2, 1, 3)
    levels = np.nanmedian(blocks.reshape(cells, cells, -1), axis=2)
    assert abs(np.median(levels) / sky - 1) < 0.01, (np.median(levels), sky)
    assert np.std(levels) / sky < 0.01
    # Stars sit at their true places in the reference grid, with their true flux.
    errors, ratios = star_checks(data, truth, reference, filt, seconds)
    assert len(errors) >= 5
    assert np.median(errors) < 0.1, errors
    assert abs(np.median(ratios) - 1) < 0.03, ratios


def star_checks(data, truth, reference, filt, seconds):
    field = truth.fields[reference["object"]]
    stars = sorted(field["stars"], key=lambda s: -s["flux"].get(filt, 0))
    positions = np.array([(s["x"] + reference["dx"], s["y"] + reference["dy"]) for s in stars])
    errors, ratios = [], []
    for star, (x, y) in zip(stars, positions, strict=True):
        peak = star["flux"][filt] * seconds / 8  # rough peak of a 3.5 px FWHM star
        close = np.hypot(positions[:, 0] - x, positions[:, 1] - y)
        if not (40 < x < data.shape[1] - 40 and 40 < y < data.shape[0] - 40):
            continue
        if peak > 30000 or peak < 300 or np.sort(close)[1] < 25:
            continue
        iy, ix = round(y), round(x)
        box = data[iy - 15 : iy + 16, ix - 15 : ix + 16].astype(np.float64)
        if not np.isfinite(box).all():
            continue
        yy, xx = np.mgrid[-15:16, -15:16]
        ring = np.hypot(yy, xx) > 13
        stamp = box - np.median(box[ring])
        window = np.exp(-((yy + iy - y) ** 2 + (xx + ix - x) ** 2) / (2 * 2.0**2))
        weight = stamp * window
        errors.append(
            np.hypot(
                (weight * (xx + ix)).sum() / weight.sum() - x,
                (weight * (yy + iy)).sum() / weight.sum() - y,
            )
        )
        ratios.append(stamp[~ring].sum() / (star["flux"][filt] * seconds))
        if len(errors) == 10:
            break
    return np.array(errors), np.array(ratios)


def wcs_error_arcsec(reduced: Path, truth) -> tuple[float, float]:
    """(RMS, max) separation in arcsec between a reduced file's WCS and the true WCS of the
    frame its pixels are on (an aux frame's own dither; a stack's alignment reference),
    over a 21 x 21 grid of the image."""
    import warnings

    from astropy.wcs import WCS, FITSFixedWarning

    header = fits.getheader(reduced)
    source = header.get("ARRAW") or header["ARREF"]
    entry = truth.frame(source)
    true_wcs = truth.wcs(entry["object"], entry["dx"], entry["dy"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        solved = WCS(header)
    grid = np.linspace(0, header["NAXIS1"] - 1, 21)
    x, y = (a.ravel() for a in np.meshgrid(grid, grid))
    ra1, dec1 = solved.all_pix2world(x, y, 0)
    ra2, dec2 = true_wcs.all_pix2world(x, y, 0)
    sep = np.hypot((ra1 - ra2) * np.cos(np.radians(dec2)), dec1 - dec2) * 3600
    return float(np.sqrt(np.mean(sep**2))), float(sep.max())
