"""WCS header rules: pointing, the initial WCS, SCAMP's non-ASCII .head, merging a solution."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from ar_tasks.astro_config import config_file
from ar_tasks.camera import CD_MATRIX, PIXEL_SCALE_ARCSEC, HeaderError
from ar_tasks.wcs_headers import (
    celestial,
    header_pointing,
    initial_wcs,
    merge_wcs,
    nominal_scale_arcsec,
    read_card_file,
    write_card_file,
)


def _raw_header(**cards) -> fits.Header:
    header = fits.Header({"NAXIS": 2, "NAXIS1": 1024, "NAXIS2": 1024, "XBINNING": 2})
    header.update(cards)
    return header


@pytest.mark.parametrize(
    ("ra", "dec", "expected"),
    [
        ("08 51 18.00", "+11 48 00.0", (132.825, 11.8)),
        ("08:51:18.00", "+11:48:00.0", (132.825, 11.8)),
        ("00 00 00.00", "-89 30 00", (0.0, -89.5)),
    ],
)
def test_pointing_from_maxim_keywords(ra, dec, expected):
    got = header_pointing(_raw_header(OBJCTRA=ra, OBJCTDEC=dec))
    assert got == pytest.approx(expected, abs=1e-9)


def test_pointing_falls_back_to_numeric_ra_dec_and_refuses_nonsense():
    assert header_pointing(_raw_header(RA=132.825, DEC=11.8)) == pytest.approx((132.825, 11.8))
    with pytest.raises(HeaderError, match="no pointing"):
        header_pointing(_raw_header())
    with pytest.raises(HeaderError, match="unreadable pointing"):
        header_pointing(_raw_header(OBJCTRA="tonight", OBJCTDEC="+11 48 00"))


def test_initial_wcs_is_the_nominal_camera_at_the_pointing():
    template = read_card_file(config_file("t120.ahead"))
    header = _raw_header(OBJCTRA="08 51 18.00", OBJCTDEC="+11 48 00.0")
    wcs = WCS(initial_wcs(header, template))
    centre = wcs.all_pix2world([[512.5, 512.5]], 1)[0]
    assert centre == pytest.approx([132.825, 11.8], abs=1e-9)
    assert np.allclose(wcs.wcs.cd, CD_MATRIX)
    assert nominal_scale_arcsec(header, template) == pytest.approx(PIXEL_SCALE_ARCSEC, rel=1e-3)
    unbinned = _raw_header(OBJCTRA="08 51 18", OBJCTDEC="+11 48 00", XBINNING=1)
    assert nominal_scale_arcsec(unbinned, template) == pytest.approx(PIXEL_SCALE_ARCSEC / 2, 1e-3)


def test_scamp_head_with_utf8_comment_is_read(tmp_path):
    head = tmp_path / "frame.head"
    cards = [
        "HISTORY   Astrometric solution by SCAMP version 2.10.0 (2020-12-01)",
        "COMMENT   (c) 2010-2018 Sorbonne Université/Université de Bordeaux/CNRS",
        "CTYPE1  = 'RA---TAN'",
        "CTYPE2  = 'DEC--TAN'",
        "CRVAL1  =   1.328223845914E+02",
        "CRVAL2  =   1.179854976102E+01",
        "CRPIX1  =   5.124944361989E+02",
        "CRPIX2  =   5.124981212596E+02",
        "CD1_1   =  -2.140903031469E-04",
        "CD1_2   =   2.145391267150E-06",
        "CD2_1   =  -2.296348121260E-06",
        "CD2_2   =  -2.140395228602E-04",
        "ASTRRMS1=   7.080933486662E-06",
        "END",
    ]
    head.write_bytes("\n".join(c.ljust(80) for c in cards).encode("utf-8"))
    header = read_card_file(head)
    assert header["CRVAL1"] == pytest.approx(132.8223845914)
    assert celestial(header) is not None


def test_merge_replaces_every_earlier_wcs_card(tmp_path):
    old = _raw_header(OBJECT="M-67", CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CDELT1=1.0, PC1_2=0.5)
    old["A_ORDER"] = 2  # a stale SIP term would distort the new solution
    solution = fits.Header(
        {
            "CTYPE1": "RA---TAN",
            "CTYPE2": "DEC--TAN",
            "CRVAL1": 10.0,
            "CRVAL2": 20.0,
            "CRPIX1": 512.0,
            "CRPIX2": 512.0,
            "CD1_1": -2e-4,
            "CD1_2": 0.0,
            "CD2_1": 0.0,
            "CD2_2": 2e-4,
            "DATE": "2024-01-01",  # solver bookkeeping is not copied
        }
    )
    merged = merge_wcs(old, solution)
    assert merged["OBJECT"] == "M-67" and merged["CRVAL1"] == 10.0
    for key in ("CDELT1", "PC1_2", "A_ORDER", "DATE"):
        assert key not in merged
    with pytest.raises(ValueError, match="no celestial WCS"):
        merge_wcs(old, fits.Header({"DATE": "2024-01-01"}))


def test_card_file_round_trip(tmp_path):
    header = fits.Header({"CTYPE1": "RA---TAN", "CRVAL1": 1.5})
    write_card_file(tmp_path / "x.ahead", header)
    text = (tmp_path / "x.ahead").read_text()
    assert text.splitlines()[-1].startswith("END") and all(
        len(line) == 80 for line in text.splitlines()
    )
    assert read_card_file(tmp_path / "x.ahead")["CRVAL1"] == 1.5
