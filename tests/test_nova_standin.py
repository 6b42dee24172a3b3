"""The nova stand-in really solves, and astroquery's own client accepts what it serves.

A private index is built from a synthetic catalogue, so a solve is checked against a known WCS,
not against canned answers.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from astropy.io import fits
from astropy.utils.exceptions import AstropyDeprecationWarning, AstropyUserWarning
from astropy.wcs import WCS
from astroquery import cache_conf
from astroquery.astrometry_net import AstrometryNetClass, conf
from astroquery.exceptions import TimeoutError as AstroqueryTimeout
from nova_standin import NovaStandin

RA0, DEC0, CAP = 150.2, 33.4, 0.25  # catalogue centre and radius, degrees
SIZE, SCALE, ROTATION = 1024, 0.77, 12.0  # pixels, arcsec/pixel, degrees


@dataclass
class Sky:
    """The catalogue, its private index config and the true WCS of the test field."""

    config: Path
    ra: np.ndarray
    dec: np.ndarray
    mag: np.ndarray
    truth: WCS

    def sources(self, origin: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel positions (and magnitudes) of the catalogue stars inside the field."""
        x, y = self.truth.all_world2pix(self.ra, self.dec, origin)
        low, high = origin - 0.5, SIZE + origin - 0.5
        inside = (x > low) & (x < high) & (y > low) & (y < high)
        return x[inside], y[inside], self.mag[inside]


@pytest.fixture(scope="module")
def sky(tmp_path_factory: pytest.TempPathFactory) -> Sky:
    """400 stars on a 0.25 deg cap, indexed with -P 1..3 (always -E: one healpix, not all)."""
    root = tmp_path_factory.mktemp("nova_sky")
    rng = np.random.default_rng(20230510)
    rho = CAP * np.sqrt(rng.uniform(0, 1, 400))
    theta = rng.uniform(0, 2 * np.pi, 400)
    dec = DEC0 + rho * np.sin(theta)
    ra = RA0 + rho * np.cos(theta) / np.cos(np.radians(dec))
    mag = rng.uniform(12, 19, 400)
    catalogue = root / "cat.fits"
    columns = [
        fits.Column(name=n, format="D", array=a)
        for n, a in zip(["RA", "DEC", "MAG"], (ra, dec, mag), strict=True)
    ]
    fits.BinTableHDU.from_columns(columns).writeto(catalogue)
    index_dir = root / "idx"
    index_dir.mkdir()
    for preset in (1, 2, 3):
        subprocess.run(
            ["build-astrometry-index", "-i", str(catalogue), "-e", "1",
             "-o", str(index_dir / f"index-99000{preset}.fits"), "-P", str(preset), "-E",
             "-S", "MAG", "-A", "RA", "-D", "DEC", "-I", f"99000{preset}", "-j", "0.1"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    config = index_dir / "astrometry.cfg"
    config.write_text(f"inparallel\ncpulimit 30\nadd_path {index_dir}\nautoindex\n")
    truth = WCS(naxis=2)
    truth.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    truth.wcs.crval = [RA0 + 0.01, DEC0 - 0.02]
    truth.wcs.crpix = [SIZE / 2 + 0.5, SIZE / 2 + 0.5]
    c, s = np.cos(np.radians(ROTATION)), np.sin(np.radians(ROTATION))
    truth.wcs.cd = SCALE / 3600 * np.array([[-c, s], [s, c]])  # east left, north up, rotated
    return Sky(config, ra, dec, mag, truth)


@pytest.fixture
def client() -> Iterator[AstrometryNetClass]:
    """astroquery's client with a key and without its disk cache (it caches the WCS GET)."""
    with conf.set_temp("api_key", "test"), cache_conf.set_temp("cache_active", False):
        yield AstrometryNetClass()


def _point(client: AstrometryNetClass, standin: NovaStandin) -> AstrometryNetClass:
    """URL and API_URL are class attributes fixed at import: set them on the instance."""
    client.URL = standin.url
    client.API_URL = standin.url + "/api"
    return client


def _rms_arcsec(header: fits.Header, truth: WCS) -> float:
    """RMS sky distance between the solved and true WCS over a 9x9 pixel grid."""
    grid = np.linspace(1, SIZE, 9)
    gx, gy = (a.ravel() for a in np.meshgrid(grid, grid))
    header = header.copy()
    header.remove("NAXIS", ignore_missing=True)  # a data-less .wcs header: astropy would warn
    solved = WCS(header).all_pix2world(gx, gy, 1)
    true = truth.all_pix2world(gx, gy, 1)
    ddec = solved[1] - true[1]
    dra = (solved[0] - true[0]) * np.cos(np.radians(true[1]))
    return float(np.sqrt(np.mean(dra**2 + ddec**2)) * 3600)


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def test_source_list_solves_through_astroquery(sky: Sky, client: AstrometryNetClass) -> None:
    """x/y list (1-based, brightest first) -> a WCS within 0.1" of the truth, in nova's steps."""
    x, y, mag = sky.sources(origin=1)
    order = np.argsort(mag)
    threads_before = set(threading.enumerate())
    with NovaStandin(sky.config, cpulimit=20) as standin:
        header, subid = _point(client, standin).solve_from_source_list(
            x[order], y[order], SIZE, SIZE, solve_timeout=60, verbose=False,
            return_submission_id=True, scale_units="arcsecperpix", scale_type="ev",
            scale_est=SCALE, scale_err=5, parity=2,
        )  # fmt: skip
        steps = [(m, re.sub(r"\d+", "N", p)) for m, p in standin.requests]
        job = _get_json(f"{standin.url}/api/submissions/{subid}")["jobs"][0]
        calibration = _get_json(f"{standin.url}/api/jobs/{job}/calibration")
        command = standin.commands[0]
    assert len(x) > 50
    assert header["CTYPE1"].startswith("RA---TAN")
    assert _rms_arcsec(header, sky.truth) < 0.1
    assert calibration["pixscale"] == pytest.approx(SCALE, rel=1e-3)
    # login -> upload -> poll the submission until it has a job -> poll the job -> WCS file
    collapsed = [s for i, s in enumerate(steps) if i == 0 or s != steps[i - 1]]
    assert collapsed == [
        ("POST", "/api/login"),
        ("POST", "/api/url_upload"),
        ("GET", "/api/submissions/N"),
        ("GET", "/api/jobs/N/info"),
        ("GET", "/wcs_file/N"),
    ]
    low, high = (
        command[command.index("--scale-low") + 1],
        command[command.index("--scale-high") + 1],
    )
    assert (float(low), float(high)) == pytest.approx((SCALE * 0.95, SCALE * 1.05))
    assert "--parity" not in command  # parity 2 = both, solve-field's default
    assert set(threading.enumerate()) <= threads_before  # server and workers are gone


def _render(sky: Sky, path: Path) -> None:
    """Gaussian stars (FWHM 3.5 px) on a sky of 100 with noise, as float32, without a WCS."""
    x, y, mag = sky.sources(origin=0)
    rng = np.random.default_rng(7)
    image = 100 + rng.normal(0, 10, (SIZE, SIZE))
    sigma, half = 1.5, 8
    flux = 2e5 * 10 ** (-0.4 * (mag - 12))
    for xi, yi, fi in zip(x, y, flux, strict=True):
        x0, y0 = round(xi), round(yi)
        ys = slice(max(y0 - half, 0), min(y0 + half + 1, SIZE))
        xs = slice(max(x0 - half, 0), min(x0 + half + 1, SIZE))
        yy, xx = np.mgrid[ys, xs]
        stamp = np.exp(-((xx - xi) ** 2 + (yy - yi) ** 2) / (2 * sigma**2))
        image[ys, xs] += fi * stamp / (2 * np.pi * sigma**2)
    fits.PrimaryHDU(image.astype(np.float32)).writeto(path)


def test_image_upload_solves_through_astroquery(
    sky: Sky, client: AstrometryNetClass, tmp_path: Path
) -> None:
    """Multipart FITS upload -> solve-field on the image -> a WCS within 0.5" of the truth."""
    image = tmp_path / "field.fits"
    _render(sky, image)
    with NovaStandin(sky.config, cpulimit=20) as standin:
        # force_image_upload is deprecated (0.4.8) but still honoured; photutils is absent anyway.
        with pytest.warns(AstropyDeprecationWarning, match="force_image_upload"):
            header = _point(client, standin).solve_from_image(
                image, force_image_upload=True, solve_timeout=60, verbose=False,
                scale_units="arcsecperpix", scale_type="ul", scale_lower=0.7, scale_upper=0.85,
                tweak_order=1, crpix_center=True,
            )  # fmt: skip
        paths = [p for _, p in standin.requests]
        command = standin.commands[0]
    assert _rms_arcsec(header, sky.truth) < 0.5
    assert header["CRPIX1"] == pytest.approx(SIZE / 2 + 0.5)
    assert "/api/upload" in paths and "/api/url_upload" not in paths
    assert command[command.index("--tweak-order") + 1] == "1"


def test_unrelated_sources_fail_within_cpulimit(sky: Sky, client: AstrometryNetClass) -> None:
    """Random positions: solve-field gives up, the job ends "failure", the client returns {}."""
    rng = np.random.default_rng(99)
    x, y = rng.uniform(1, SIZE, 80), rng.uniform(1, SIZE, 80)
    with NovaStandin(sky.config, cpulimit=5) as standin:
        start = time.monotonic()
        result = _point(client, standin).solve_from_source_list(
            x, y, SIZE, SIZE, solve_timeout=60, verbose=False
        )
        elapsed = time.monotonic() - start
        assert not any(p.startswith("/wcs_file") for _, p in standin.requests)
        command = standin.commands[0]
    assert result == {}
    assert command[command.index("--cpulimit") + 1] == "5"
    assert elapsed < 5 + 2  # cpulimit plus the client's 1 s polling


def test_misbehaviour_knobs(sky: Sky, client: AstrometryNetClass) -> None:
    """fail_next and hang_jobs, and what astroquery's client makes of them (it never retries)."""
    x, y, mag = sky.sources(origin=1)
    order = np.argsort(mag)
    with NovaStandin(sky.config, cpulimit=5, api_keys={"test"}) as standin:
        an = _point(client, standin)
        standin.fail_next(1, path="/api/login")
        # The login status code is not checked: the HTML error page fails to decode as JSON.
        with pytest.raises(requests.exceptions.JSONDecodeError):
            an.solve_from_source_list([1.0], [1.0], SIZE, SIZE, solve_timeout=5, verbose=False)
        assert standin.requests == [("POST", "/api/login")]
        # A failed WCS download is not noticed either: the error page becomes a 1-card Header.
        standin.fail_next(1, path="/wcs_file")
        with pytest.warns(AstropyUserWarning, match="invalid"):
            header = an.solve_from_source_list(
                x[order], y[order], SIZE, SIZE, solve_timeout=30, verbose=False
            )
        assert standin.requests[-1][1].startswith("/wcs_file") and "CTYPE1" not in header
        standin.hang_jobs = True
        start = time.monotonic()
        with pytest.raises(AstroqueryTimeout) as raised:
            an.solve_from_source_list([1.0], [1.0], SIZE, SIZE, solve_timeout=2, verbose=False)
        assert 2 < time.monotonic() - start < 5  # polls once a second until past solve_timeout
        subid = raised.value.args[1]  # the submission id rides on the exception
        job = _get_json(f"{standin.url}/api/submissions/{subid}")["jobs"][0]
        assert _get_json(f"{standin.url}/api/jobs/{job}")["status"] == "solving"
        assert len(standin.commands) == 1  # the hung job never ran solve-field
        with conf.set_temp("api_key", "wrong"), pytest.raises(RuntimeError, match="log in"):
            _point(AstrometryNetClass(), standin).solve_from_source_list(
                [1.0], [1.0], SIZE, SIZE, verbose=False
            )
