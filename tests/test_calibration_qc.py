"""Calibration frames that must not enter a master: each is named with why, the master is
made from the rest, and it still matches the truth (a night of the CLI, as a user runs it)."""

from __future__ import annotations

import json
import shutil

import numpy as np
from astropy.io import fits
from conftest import NIGHT, fitsverify, run_cli
from truth_checks import check_master_darks, check_master_flats

from ar_tasks.synthetic import load_truth


def _rewrite(path, data, **cards):
    with fits.open(path) as hdus:
        header = hdus[0].header.copy()
    header.update(cards)
    fits.PrimaryHDU(np.clip(data, 0, 65535).astype(np.uint16), header).writeto(path, overwrite=True)


def test_bad_calibration_frames_are_left_out_and_the_masters_still_match_the_truth(
    small_archive, tmp_path
):
    night = tmp_path / NIGHT
    shutil.copytree(small_archive / NIGHT, night)
    flats, darks = night / "FLAT", night / "DARK"
    shape = fits.getdata(flats / "flat-V-001.fits").shape
    _rewrite(flats / "flat-V-001.fits", np.zeros(shape))  # a readout that failed
    saturated = fits.getdata(flats / "flat-V-002.fits").astype(np.float64)
    saturated[: shape[0] // 5] = 65535  # a fifth of the frame burnt out
    _rewrite(flats / "flat-V-002.fits", saturated)
    dark_5s = fits.getdata(darks / "dark-005s-001.fits").astype(np.float64)
    _rewrite(flats / "flat-R-001.fits", dark_5s + 300)  # twilight gone: 300 ADU of signal
    leak = fits.getdata(darks / "dark-060s-001.fits").astype(np.float64)
    _rewrite(darks / "dark-060s-001.fits", leak + 200)  # a light leak
    shutil.copy(darks / "dark-005s-002.fits", darks / "dark-005s-copy.fits")
    science = sorted((night / "ORIGINAL").glob("M67-V-*"))[0]
    shutil.copy(science, flats / "misfiled.fits")  # IMAGETYP 'Light Frame' in FLAT/

    setup = run_cli(night, "--setup")
    assert "E: DARK/dark-005s-copy.fits is a byte-identical copy of DARK/dark-005s-002.fits" in (
        setup.stderr
    ) or "E: DARK/dark-005s-002.fits is a byte-identical copy of DARK/dark-005s-copy.fits" in (
        setup.stderr
    )
    assert "E: FLAT/misfiled.fits has IMAGETYP = 'Light Frame' but is in FLAT/" in setup.stderr
    reduced = run_cli(night, "-i")
    assert reduced.returncode == 0, reduced.stdout + reduced.stderr  # handled: warnings
    manifest = json.loads((night / "manifest.json").read_text())
    masters = manifest["masters"]
    assert masters["flats"]["V"]["left_out"] == {
        "FLAT/flat-V-001.fits": "is constant (every pixel is 0 ADU)",
        "FLAT/flat-V-002.fits": "has 20.3% of its pixels at or above saturation (64000 ADU; "
        "at most 5%)",
    }
    assert list(masters["flats"]["R"]["left_out"]) == ["FLAT/flat-R-001.fits"]
    assert (
        "is too faint: its level of 300 ADU gives S/N 19"
        in (masters["flats"]["R"]["left_out"]["FLAT/flat-R-001.fits"])
    )
    assert list(masters["darks"]["60000"]["left_out"]) == ["DARK/dark-060s-001.fits"]
    assert (
        "strays from the master of the others (100% of its pixels"
        in (masters["darks"]["60000"]["left_out"]["DARK/dark-060s-001.fits"])
    )
    assert masters["flats"]["V"]["used"] == 5 and masters["darks"]["60000"]["used"] == 4
    for line in ("W: FLAT/flat-V-001.fits is constant", "W: DARK/dark-060s-001.fits strays"):
        assert line in reduced.stdout
    header = fits.getheader(night / "ar_masters" / "mtrans_V.fits")
    assert header["NCOMBINE"] == 5
    assert header["ARLFT001"] == "FLAT/flat-V-001.fits: is constant (every pixel is 0 ADU)"
    # The masters made from the rest match the truth (flats to 0.5% RMS, darks within 1.5x
    # the noise of a median of their frames).
    truth = load_truth(small_archive / "_truth" / NIGHT)
    check_master_flats(night, truth)
    check_master_darks(night, truth)
    fitsverify(sorted((night / "ar_masters").glob("*.fits")))
    # Reused on a rerun, its record still says what was left out.
    again = run_cli(night, "-i")
    assert again.returncode == 0
    record = json.loads((night / "manifest.json").read_text())["masters"]["flats"]["V"]
    assert record["reused"] and len(record["left_out"]) == 2


def test_a_master_whose_every_frame_is_bad_fails_naming_each(small_archive, tmp_path):
    night = tmp_path / NIGHT
    shutil.copytree(small_archive / NIGHT, night)
    for path in sorted((night / "FLAT").glob("flat-B-*")):
        _rewrite(path, np.zeros(fits.getdata(path).shape))
    assert run_cli(night, "--setup").returncode == 0
    reduced = run_cli(night, "-i")
    assert reduced.returncode == 1
    assert (
        "E: Master flat B: every flat was left out: FLAT/flat-B-001.fits is constant (every "
        "pixel is 0 ADU); FLAT/flat-B-002.fits is constant" in reduced.stderr
    )
    # The other filters are reduced.
    assert (night / "stacked" / "M-67_V_60000.fits").is_file()
