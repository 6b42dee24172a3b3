"""End to end: synthetic night -> `astro_reduce --setup` -> `astro_reduce -i -t -r`, vs truth."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from astropy.io import fits
from conftest import fitsverify, run_cli

from ar_tasks.combine import median_noise_factor
from ar_tasks.masters import central_region

GROUPS = [
    "M-67_R_60000",
    "M-67_V_60000",
    "NGC-2420_B_120000",
    "NGC-2420_R_120000",
    "NGC-2420_V_120000",
]
MEASURED_DARKS = [5000, 60000, 180000]
INTERPOLATED_DARKS = [10000, 120000]  # B flats (10 s) and NGC 2420 (120 s) have no darks


def robust_std(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def test_every_expected_product_exists(full_night):
    night, _ = full_night
    masters = {p.name for p in (night / "ar_masters").glob("*.fits")}
    expected = {f"mdark_{e}.fits" for e in MEASURED_DARKS + INTERPOLATED_DARKS}
    expected |= {f"mtrans_{f}.fits" for f in "BRV"}
    assert masters == expected
    aux = sorted((night / "ar_cosmetic").glob("*_aux.fits"))
    assert len(aux) == 25
    assert all(
        re.fullmatch(r"[A-Za-z0-9+-]+_[A-Za-z0-9+]+_\d+_[0-9a-f]{32}_aux\.fits", p.name)
        for p in aux
    )
    stacks = {p.name for p in (night / "stacked").glob("*.fits")}
    assert stacks == {f"{g}.fits" for g in GROUPS}
    for folder in ("ar_masters", "ar_cosmetic", "stacked"):
        for fits_path in (night / folder).glob("*.fits"):
            assert fits_path.with_suffix(".png").is_file(), fits_path
    config = json.loads((night / f"{night.name}.json").read_text())
    assert config == {
        "objects": ["M-67", "NGC-2420"],
        "exposures": [5000, 10000, 60000, 120000, 180000],
        "filters": ["B", "R", "V"],
    }
    assert len(list((night / "ar_objects").iterdir())) == 25
    assert not list(night.rglob("*.part"))


def test_every_fits_product_passes_fitsverify(full_night):
    night, _ = full_night
    products = [
        p
        for folder in ("ar_masters", "ar_cosmetic", "stacked")
        for p in (night / folder).glob("*.fits")
    ]
    fitsverify(products)


def _dark_sigma(truth, seconds: float) -> float:
    camera = truth.camera
    signal = float(np.median(truth.dark_rate)) * seconds
    return float(np.sqrt(camera["read_noise_adu"] ** 2 + signal / camera["gain_e_per_adu"]))


def test_master_darks_match_truth(full_night):
    night, truth = full_night
    good = ~truth.hot_pixels
    for exposure in MEASURED_DARKS:
        data = fits.getdata(night / "ar_masters" / f"mdark_{exposure}.fits")
        residual = (data - (truth.bias + truth.dark_rate * exposure / 1000))[good]
        expected = _dark_sigma(truth, exposure / 1000) * median_noise_factor(5)
        assert robust_std(residual) < 1.5 * expected, (exposure, robust_std(residual), expected)
        assert abs(np.median(residual)) < 0.2 * expected


def test_interpolated_darks_match_truth(full_night):
    night, truth = full_night
    x = np.array(MEASURED_DARKS, float)
    for exposure in INTERPOLATED_DARKS:
        header = fits.getheader(night / "ar_masters" / f"mdark_{exposure}.fits")
        assert header["IMAGETYP"] == "Interpolated dark"
        data = fits.getdata(night / "ar_masters" / f"mdark_{exposure}.fits")
        residual = (data - (truth.bias + truth.dark_rate * exposure / 1000))[~truth.hot_pixels]
        leverage = 1 / 3 + (exposure - x.mean()) ** 2 / np.sum((x - x.mean()) ** 2)
        sigma = _dark_sigma(truth, 180) * median_noise_factor(5) * np.sqrt(leverage)
        assert robust_std(residual) < 1.5 * sigma, (exposure, robust_std(residual), sigma)
        assert abs(np.median(residual)) < 0.2 * sigma


def test_master_flats_match_truth_to_half_a_percent(full_night):
    night, truth = full_night
    for name, true_flat in truth.flats.items():
        data = fits.getdata(night / "ar_masters" / f"mtrans_{name}.fits")
        ratio = data / np.nanmedian(data[central_region(data.shape)]) / true_flat
        rms = float(np.sqrt(np.nanmean((ratio - 1) ** 2)))
        assert rms < 0.005, (name, rms)
        assert np.isfinite(data).mean() > 0.999


def _history_shifts(header: fits.Header) -> dict[str, tuple[float, float]]:
    shifts = {}
    for card in header["HISTORY"]:
        match = re.fullmatch(r"(\S+) dy=(\S+) dx=(\S+) px", str(card))
        if match:
            shifts[match[1]] = (float(match[2]), float(match[3]))
    return shifts


@pytest.mark.parametrize("group", GROUPS)
def test_stacks_match_truth(full_night, group):
    night, truth = full_night
    data, header = fits.getdata(night / "stacked" / f"{group}.fits", header=True)
    _, filt, exposure = group.rsplit("_", 2)
    seconds = int(exposure) / 1000
    assert header["NCOMBINE"] == 5 and header["EXPTIME"] == seconds
    reference = truth.frame(header["ARREF"])
    assert header["DATE-OBS"].startswith(reference["date_obs"][:19])  # header from the reference
    # Registration: every measured shift within 0.05 px of the true dither difference.
    shifts = _history_shifts(header)
    assert len(shifts) == 5
    for path, (dy, dx) in shifts.items():
        frame = truth.frame(path)
        assert abs(dy - (reference["dy"] - frame["dy"])) < 0.05, (path, dy)
        assert abs(dx - (reference["dx"] - frame["dx"])) < 0.05, (path, dx)
    # Calibration: the sky is sky_rate * t everywhere (flat to 1%).
    sky = truth.sky_rate[filt] * seconds
    blocks = data[:1024, :1024].reshape(16, 64, 16, 64).transpose(0, 2, 1, 3).reshape(16, 16, -1)
    levels = np.nanmedian(blocks, axis=2)
    assert abs(np.median(levels) / sky - 1) < 0.01, (np.median(levels), sky)
    assert np.std(levels) / sky < 0.01
    # Stars sit at their true places in the reference grid, with their true flux.
    errors, ratios = _star_checks(data, truth, reference, filt, seconds)
    assert len(errors) >= 5
    assert np.median(errors) < 0.1, errors
    assert abs(np.median(ratios) - 1) < 0.03, ratios


def _star_checks(data, truth, reference, filt, seconds):
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


def test_cosmic_rays_are_rejected_in_stacks(full_night):
    night, truth = full_night
    data, header = fits.getdata(night / "stacked" / "M-67_V_60000.fits", header=True)
    reference = truth.frame(header["ARREF"])
    shifts = _history_shifts(header)
    sky = truth.sky_rate["V"] * 60
    worst = 0.0
    for path, (dy, dx) in shifts.items():
        for x, y, _ in truth.frame(path)["cosmic_pixels"]:
            ty, tx = round(y + dy), round(x + dx)
            if 0 <= ty < data.shape[0] and 0 <= tx < data.shape[1] and np.isfinite(data[ty, tx]):
                local = np.nanmedian(data[max(ty - 3, 0) : ty + 4, max(tx - 3, 0) : tx + 4])
                if local < 1.5 * sky:  # on sky, not on a star
                    worst = max(worst, data[ty, tx] - local)
    assert reference and worst < 8 * np.sqrt(sky), worst


def test_rerun_reuses_products_and_overwrite_recomputes_identically(full_night):
    night, _ = full_night
    products = sorted(
        p
        for folder in ("ar_masters", "ar_cosmetic", "stacked")
        for p in (night / folder).glob("*.fits")
    )
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in products}
    again = run_cli(night, "-i")
    assert again.returncode == 0, again.stderr
    assert all(p.stat().st_mtime_ns == before[p][0] for p in products)  # nothing rewritten
    forced = run_cli(night, "-i", "--overwrite")
    assert forced.returncode == 0, forced.stderr
    assert all(p.stat().st_mtime_ns != before[p][0] for p in products)  # all rewritten ...
    assert all(p.read_bytes() == before[p][1] for p in products)  # ... to the same bytes
