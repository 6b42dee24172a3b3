"""The synthetic night generator against its own model: tolerances come from the noise model."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from scipy.optimize import least_squares

from ar_tasks import camera
from ar_tasks import synthetic as syn

SIZE = 256
NIGHT = "2023-05-10"
# Std of the median of 5 Gaussian samples, in units of one sample's std.
MEDIAN5_FACTOR = 0.536
TINY = {
    "size": 64,
    "darks": ((5.0, 2),),
    "flats": (("V", 5.0, 2),),
    "science": (("M 67", "V", 10.0, 2),),
}


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, syn.Truth]:
    root = tmp_path_factory.mktemp("raw")
    night_dir = syn.write_night(root, syn.NightSpec(night=NIGHT, size=SIZE, frames_per_group=3))
    return night_dir, syn.load_truth(root / "_truth" / NIGHT)


def _data(path: Path) -> np.ndarray:
    return fits.getdata(path).astype(np.float64)


def _sigma(truth: syn.Truth, signal_adu: np.ndarray) -> np.ndarray:
    """Per-pixel noise of one frame: Poisson on electrons, read noise, 16-bit rounding."""
    cam = truth.camera
    return np.sqrt(signal_adu / cam["gain_e_per_adu"] + cam["read_noise_adu"] ** 2 + 1 / 12)


def test_layout_and_truth_frames(night: tuple[Path, syn.Truth]) -> None:
    night_dir, truth = night
    files = sorted(str(p.relative_to(night_dir)) for p in night_dir.glob("*/*.fits"))
    assert files == sorted(f["path"] for f in truth.frames)
    assert len(files) == 15 + 21 + 5 * 3
    assert "DARK/dark-005s-001.fits" in files
    assert "FLAT/flat-B-007.fits" in files
    assert "ORIGINAL/M67-V-060s-001.fits" in files
    assert "ORIGINAL/NGC2420-B-120s-003.fits" in files
    assert not any(" " in f for f in files)
    assert (night_dir.parent / "_truth" / NIGHT / "truth.npz").is_file()
    assert sorted(truth.flats) == ["B", "R", "V"]
    assert truth.bias.dtype == np.float32 and truth.bias.shape == (SIZE, SIZE)
    assert truth.hot_pixels.dtype == bool
    assert 0 < truth.hot_pixels.mean() < 2e-3
    for entry in truth.frames:
        assert 3 <= entry["n_cosmics"] <= 15


def test_raw_encoding_is_uint16_with_bzero(night: tuple[Path, syn.Truth]) -> None:
    night_dir, _ = night
    path = night_dir / "ORIGINAL" / "M67-V-060s-001.fits"
    with fits.open(path, do_not_scale_image_data=True) as hdul:
        header, raw = hdul[0].header, hdul[0].data
        assert header["BITPIX"] == 16
        assert header["BZERO"] == 32768 and header["BSCALE"] == 1
        assert raw.dtype.kind == "i" and raw.dtype.itemsize == 2
    data = fits.getdata(path)
    assert data.dtype == np.uint16
    assert np.array_equal(data.astype(np.int32), raw.astype(np.int32) + 32768)


def test_headers(night: tuple[Path, syn.Truth]) -> None:
    night_dir, truth = night
    start = datetime.fromisoformat(NIGHT) + timedelta(hours=12)
    previous = start
    for entry in truth.frames:
        h = fits.getheader(night_dir / entry["path"])
        assert h["TELESCOP"] == "OHP T120" and h["INSTRUME"]
        assert h["IMAGETYP"] == syn.IMAGETYP[entry["type"]]
        assert h["EXPTIME"] == entry["exposure_s"]
        assert h["XBINNING"] == h["YBINNING"] == 2
        assert h["GAIN"] == truth.camera["gain_e_per_adu"]
        assert h["SATURATE"] == camera.SATURATION_ADU
        assert isinstance(h["CCD-TEMP"], float)
        assert not {"CTYPE1", "CD1_1", "CRVAL1", "CRPIX1"} & set(h)
        when = datetime.fromisoformat(h["DATE-OBS"])
        assert previous <= when < start + timedelta(days=1)
        previous = when
        if entry["type"] == "dark":
            assert "FILTER" not in h
        else:
            assert h["FILTER"] == entry["filter"]
        if entry["type"] == "object":
            assert h["OBJECT"] == entry["object"]
            field = truth.fields[entry["object"]]
            pointing = SkyCoord(h["OBJCTRA"], h["OBJCTDEC"], unit=(u.hourangle, u.deg))
            centre = SkyCoord(field["center_ra_deg"], field["center_dec_deg"], unit=u.deg)
            assert pointing.separation(centre).arcsec <= 121
            assert h["OBJCTRA"] == field["pointing"]["objctra"]
    # Science runs past midnight, so DATE-OBS holds both dates.
    assert previous.date() > start.date()


def test_exposure_keyword_option(tmp_path: Path) -> None:
    spec = syn.NightSpec(exposure_keyword="EXPOSURE", **TINY)
    night_dir = syn.write_night(tmp_path, spec)
    for path in night_dir.glob("*/*.fits"):
        h = fits.getheader(path)
        assert "EXPOSURE" in h and "EXPTIME" not in h
    with pytest.raises(ValueError):
        syn.NightSpec(exposure_keyword="EXP")


@pytest.mark.parametrize("exposure", [5, 60, 180])
def test_median_dark_matches_bias_plus_rate(night: tuple[Path, syn.Truth], exposure: int) -> None:
    night_dir, truth = night
    files = sorted(night_dir.glob(f"DARK/dark-{exposure:03d}s-*.fits"))
    assert len(files) == 5
    median = np.median([_data(f) for f in files], axis=0)
    model = truth.bias + truth.dark_rate * exposure
    z = ((median - model) / (MEDIAN5_FACTOR * _sigma(truth, truth.dark_rate * exposure)))[
        ~truth.hot_pixels
    ]
    assert abs(z.mean()) < 0.05
    assert 0.9 < z.std() < 1.1
    assert (np.abs(z) > 3).mean() < 0.01
    # Hot pixels hold their rate too (within 5 % + noise).
    hot = np.abs(median - model)[truth.hot_pixels]
    assert np.all(hot < 0.05 * truth.dark_rate[truth.hot_pixels] * exposure + 30)


def test_flat_matches_truth(night: tuple[Path, syn.Truth]) -> None:
    night_dir, truth = night
    dark = np.median([_data(f) for f in night_dir.glob("DARK/dark-005s-*.fits")], axis=0)
    lo, hi = SIZE // 4, 3 * SIZE // 4
    flat = truth.flats["V"]
    assert np.median(flat[lo:hi, lo:hi]) == pytest.approx(1.0, abs=1e-6)
    corners = [flat[:8, :8], flat[:8, -8:], flat[-8:, :8], flat[-8:, -8:]]
    assert 0.75 < min(np.median(c) for c in corners) < 0.9
    norm = []
    for path in sorted(night_dir.glob("FLAT/flat-V-*.fits")):
        signal = _data(path) - dark
        signal /= np.median(signal[lo:hi, lo:hi])
        residual = signal / flat - 1
        assert np.std(residual) < 0.01
        assert abs(np.median(residual)) < 0.002
        norm.append(signal)
    assert np.std(np.mean(norm, axis=0) / flat - 1) < 0.01 / np.sqrt(3)


def test_sky_level(night: tuple[Path, syn.Truth]) -> None:
    night_dir, truth = night
    entry = truth.frame("ORIGINAL/NGC2420-R-120s-001.fits")
    t = entry["exposure_s"]
    sky = (_data(night_dir / entry["path"]) - truth.bias - truth.dark_rate * t) / truth.flats["R"]
    assert np.median(sky) == pytest.approx(truth.sky_rate["R"] * t, rel=0.02)


def _moffat_fit(stamp: np.ndarray, mask: np.ndarray, x0: float, y0: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : stamp.shape[0], 0 : stamp.shape[1]]

    def residual(p: np.ndarray) -> np.ndarray:
        cx, cy, amp, alpha, bkg = p
        model = amp * (1 + ((xx - cx) ** 2 + (yy - cy) ** 2) / alpha**2) ** -3.0 + bkg
        return (model - stamp)[mask]

    start = [x0, y0, stamp.max(), 3.4, np.median(stamp)]
    return least_squares(residual, start).x


def test_brightest_unsaturated_star_at_truth_plus_dither(night: tuple[Path, syn.Truth]) -> None:
    night_dir, truth = night
    entry = truth.frame("ORIGINAL/NGC2420-V-120s-002.fits")
    data = _data(night_dir / entry["path"])
    stars = truth.fields[entry["object"]]["stars"]
    xs = np.array([s["x"] for s in stars]) + entry["dx"]
    ys = np.array([s["y"] for s in stars]) + entry["dy"]
    flux = np.array([s["flux"]["V"] for s in stars])
    cosmics = {(x, y) for x, y, _ in entry["cosmic_pixels"]}
    half = 8
    for i in np.argsort(flux)[::-1]:
        x, y = xs[i], ys[i]
        if not (30 < x < SIZE - 31 and 30 < y < SIZE - 31):
            continue
        near = np.hypot(xs - x, ys - y) < 30
        near[i] = False
        if np.any(flux[near] > 0.01 * flux[i]):
            continue
        ix, iy = round(x), round(y)
        stamp = data[iy - half : iy + half + 1, ix - half : ix + half + 1]
        if stamp.max() >= camera.SATURATION_ADU:
            continue
        break
    else:
        pytest.fail("no isolated unsaturated star")
    mask = np.ones(stamp.shape, bool)
    for cx, cy in cosmics:
        if abs(cx - ix) <= half and abs(cy - iy) <= half:
            mask[cy - iy + half, cx - ix + half] = False
    fx, fy, *_ = _moffat_fit(stamp, mask, x - ix + half, y - iy + half)
    assert abs(fx + ix - half - x) < 0.1
    assert abs(fy + iy - half - y) < 0.1
    # Its +-12 px stamp holds the catalogue flux x flat x exposure.
    r = syn.STAMP_RADIUS_PX
    box = data[iy - r : iy + r + 1, ix - r : ix + r + 1]
    ring = data[iy - r - 8 : iy + r + 9, ix - r - 8 : ix + r + 9].copy()
    ring[8:-8, 8:-8] = np.nan
    counts = (box - np.nanmedian(ring)).sum()
    flat = truth.flats["V"][iy - r : iy + r + 1, ix - r : ix + r + 1].mean()
    assert counts == pytest.approx(flux[i] * entry["exposure_s"] * flat, rel=0.03)


def test_some_stars_reach_saturation(night: tuple[Path, syn.Truth]) -> None:
    night_dir, truth = night
    peaks = [_data(night_dir / e["path"]).max() for e in truth.frames if e["exposure_s"] == 120]
    assert max(peaks) >= camera.SATURATION_ADU
    assert max(peaks) <= syn.ADC_MAX


def test_render_stars_conserves_flux_and_position() -> None:
    image = syn.render_stars(np.array([30.3]), np.array([20.8]), np.array([1000.0]), 64, 3.5)
    assert image.dtype == np.float32
    assert image.sum() == pytest.approx(1000.0, rel=1e-5)
    yy, xx = np.mgrid[0:64, 0:64]
    assert (image * xx).sum() / image.sum() == pytest.approx(30.3, abs=0.01)
    assert (image * yy).sum() / image.sum() == pytest.approx(20.8, abs=0.01)


def test_deterministic(tmp_path: Path) -> None:
    a = syn.write_night(tmp_path / "a", syn.NightSpec(**TINY))
    b = syn.write_night(tmp_path / "b", syn.NightSpec(**TINY))
    c = syn.write_night(tmp_path / "c", syn.NightSpec(seed=1, **TINY))
    for rel in ("DARK/dark-005s-001.fits", "ORIGINAL/M67-V-010s-002.fits"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
        assert (a / rel).read_bytes() != (c / rel).read_bytes()
    truth = tmp_path / "{}" / "_truth" / NIGHT / "truth.json"
    assert Path(str(truth).format("a")).read_text() == Path(str(truth).format("b")).read_text()


def test_write_archive_nights_differ_camera_shared(tmp_path: Path) -> None:
    nights = ["2023-05-10", "2023-05-11"]
    dirs = syn.write_archive(tmp_path, nights, syn.NightSpec(**TINY), tmp_path / "truth")
    assert [d.name for d in dirs] == nights
    rel = "DARK/dark-005s-001.fits"
    assert (dirs[0] / rel).read_bytes() != (dirs[1] / rel).read_bytes()
    t0, t1 = (syn.load_truth(tmp_path / "truth" / n) for n in nights)
    assert np.array_equal(t0.bias, t1.bias) and np.array_equal(t0.dark_rate, t1.dark_rate)
    assert t0.frames[-1]["dx"] != t1.frames[-1]["dx"]


def test_cli_writes_a_night(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "ar_tasks.synthetic", "--root", str(tmp_path), "--night", NIGHT]
    cmd += ["--size", "128", "--frames-per-group", "2"]
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=True).stdout
    assert out.split() == [str(tmp_path / NIGHT), "46", "frames"]
    assert len(list((tmp_path / NIGHT).glob("*/*.fits"))) == 46
    truth = syn.load_truth(tmp_path / "_truth" / NIGHT)
    assert truth.camera["size"] == 128 and len(truth.frames) == 46


def test_the_command_writes_science_only_nights(tmp_path, capsys):
    """`ar-synth --science-only NIGHT`: that night has no DARK/ or FLAT/ (the demo's second
    night, which borrows the first night's masters); the other night has all three."""
    from ar_tasks.synthetic import main

    argv = ["--root", str(tmp_path), "--size", "64", "--frames-per-group", "1"]
    argv += ["--night", "2023-05-10", "--night", "2023-05-11", "--science-only", "2023-05-11"]
    assert main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "2023-05-10").iterdir()) == [
        "DARK",
        "FLAT",
        "ORIGINAL",
    ]
    assert [p.name for p in (tmp_path / "2023-05-11").iterdir()] == ["ORIGINAL"]
    assert "2023-05-11 5 frames" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="2023-05-12"):
        main([*argv[:6], "--night", "2023-05-10", "--science-only", "2023-05-12"])
