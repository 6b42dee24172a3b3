"""End to end: synthetic night -> `astro_reduce --setup` -> `astro_reduce -i -t -r`, vs truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits
from conftest import fitsverify, run_cli
from truth_checks import (
    GROUPS,
    check_interpolated_darks,
    check_master_darks,
    check_master_flats,
    check_product_names,
    check_stack,
    fits_products,
    history_shifts,
)

pytestmark = pytest.mark.e2e  # the installed command on a full 1024² night


def test_every_expected_product_exists(full_night):
    night, _ = full_night
    check_product_names(night, frames_per_group=5)
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


def test_every_fits_product_passes_fitsverify(full_night):
    fitsverify(fits_products(full_night[0]))


def test_master_darks_match_truth(full_night):
    check_master_darks(*full_night)


def test_interpolated_darks_match_truth(full_night):
    check_interpolated_darks(*full_night)


def test_master_flats_match_truth_to_half_a_percent(full_night):
    check_master_flats(*full_night)


@pytest.mark.parametrize("group", GROUPS)
def test_stacks_match_truth(full_night, group):
    check_stack(*full_night, group, frames=5)


def test_cosmic_rays_are_rejected_in_stacks(full_night):
    night, truth = full_night
    data, header = fits.getdata(night / "stacked" / "M-67_V_60000.fits", header=True)
    reference = truth.frame(header["ARREF"])
    shifts = history_shifts(header)
    sky = truth.sky_rate["V"] * 60
    worst, checked = 0.0, 0
    for path, (dy, dx) in shifts.items():
        for x, y, _ in truth.frame(path)["cosmic_pixels"]:
            ty, tx = round(y + dy), round(x + dx)
            if 0 <= ty < data.shape[0] and 0 <= tx < data.shape[1] and np.isfinite(data[ty, tx]):
                local = np.nanmedian(data[max(ty - 3, 0) : ty + 4, max(tx - 3, 0) : tx + 4])
                if local < 1.5 * sky:  # on sky, not on a star
                    worst = max(worst, data[ty, tx] - local)
                    checked += 1
    assert reference and checked >= 20, checked  # hits of hundreds to thousands of ADU
    assert worst < 8 * np.sqrt(sky), worst


def test_rerun_reuses_products_and_overwrite_recomputes_identically(full_night):
    night, _ = full_night
    products = sorted(fits_products(night))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in products}
    again = run_cli(night, "-i")
    assert again.returncode == 0, again.stderr
    assert all(p.stat().st_mtime_ns == before[p][0] for p in products)  # nothing rewritten
    forced = run_cli(night, "-i", "--overwrite")
    assert forced.returncode == 0, forced.stderr
    assert all(p.stat().st_mtime_ns != before[p][0] for p in products)  # all rewritten ...
    assert all(p.read_bytes() == before[p][1] for p in products)  # ... to the same bytes
