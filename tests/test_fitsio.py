"""Reading raw frames (gzip, fpack, truncation) and atomic, reproducible product writes."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from astropy.io import fits
from conftest import fitsverify

from ar_tasks import fitsio

DATA = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 7) % 60000


@pytest.fixture
def raw_file(tmp_path):
    path = tmp_path / "frame.fits"
    fits.PrimaryHDU(DATA, header=fits.Header({"EXPTIME": 10.0})).writeto(path)
    return path


def test_reads_plain_gzip_and_fpack_alike(raw_file, tmp_path):
    gz = tmp_path / "frame.fits.gz"
    gz.write_bytes(gzip.compress(raw_file.read_bytes()))
    fz = tmp_path / "frame.fits.fz"
    fits.HDUList(
        [fits.PrimaryHDU(), fits.CompImageHDU(DATA, header=fits.Header({"EXPTIME": 10.0}))]
    ).writeto(fz)
    for path in (raw_file, gz, fz):
        frame = fitsio.read_frame(path)
        assert frame.data.dtype == np.float32
        np.testing.assert_array_equal(frame.data, DATA)
        assert frame.header["EXPTIME"] == 10.0
        assert frame.sha256 == fitsio.sha256_file(path)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (lambda raw: raw[: len(raw) - 3000], "is truncated"),
        (lambda raw: b"hello" * 10, "is not a readable FITS image"),
        (lambda raw: gzip.compress(raw)[:100], "damaged gzip"),
    ],
)
def test_bad_files_raise_with_the_reason(raw_file, tmp_path, content, reason):
    bad = tmp_path / "bad.fits"
    bad.write_bytes(content(raw_file.read_bytes()))
    with pytest.raises(fitsio.FrameError, match=reason):
        fitsio.read_frame(bad)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(fitsio.FrameError, match="cannot be read"):
        fitsio.read_frame(tmp_path / "absent.fits")


def test_write_is_atomic_reproducible_and_valid(tmp_path, monkeypatch):
    target = tmp_path / "out" / "product.fits"
    header = fits.Header({"OBJECT": "M-67", "BZERO": 32768, "BSCALE": 1})
    fitsio.write_image(target, np.ones((8, 8)), header)
    first = target.read_bytes()
    fitsio.write_image(target, np.ones((8, 8)), header)
    assert target.read_bytes() == first  # no timestamp: identical bytes on rerun
    written = fits.getheader(target)
    assert written["BITPIX"] == -32 and "BZERO" not in written and written["OBJECT"] == "M-67"
    fitsverify([target])

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fits.PrimaryHDU, "writeto", crash)
    with pytest.raises(OSError, match="disk full"):
        fitsio.write_image(target, np.zeros((8, 8)), header)
    assert target.read_bytes() == first  # the old product is intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["product.fits"]  # no partial file
