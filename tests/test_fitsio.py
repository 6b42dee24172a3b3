"""Reading raw frames (gzip, fpack, truncation) and atomic, reproducible product writes."""

from __future__ import annotations

import gzip
import hashlib
import os
import time
import warnings

import numpy as np
import pytest
from astropy.io import fits
from conftest import fitsverify

from ar_tasks import fitsio
from ar_tasks.fitschecksum import checksums_hold

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
        assert fitsio.frame_header(path).cards() == frame.header.cards()


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

    monkeypatch.setattr(fitsio.os, "replace", crash)  # the new file is complete, not renamed
    with pytest.raises(OSError, match="disk full"):
        fitsio.write_image(target, np.zeros((8, 8)), header)
    assert target.read_bytes() == first  # the old product is intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["product.fits"]  # no partial file


@pytest.mark.parametrize(
    ("bitpix", "scaling"),
    [(8, {}), (16, {"BZERO": 32768, "BSCALE": 1}), (32, {"BZERO": 2**31}), (-32, {}),
     (-64, {"BSCALE": 2.5, "BZERO": -3.0}), (16, {"BSCALE": 0.5, "BZERO": 10.0})],
)  # fmt: skip
def test_plain_images_read_as_astropy_reads_them(tmp_path, bitpix, scaling):
    path = tmp_path / "frame.fits"
    dtype = {8: np.uint8, 16: np.int16, 32: np.int32, -32: np.float32, -64: np.float64}[bitpix]
    stored = (np.arange(40 * 30).reshape(40, 30) % 200).astype(dtype)
    header = fits.Header({"BITPIX": bitpix, **scaling, "EXPTIME": 5})
    hdu = fits.PrimaryHDU(stored, header=header, do_not_scale_image_data=True)
    hdu.header.update(scaling)
    hdu.writeto(path)
    frame = fitsio.read_frame(path)
    with fits.open(path) as hdus:
        expected = np.asarray(hdus[0].data, dtype=np.float32)
    np.testing.assert_allclose(frame.data, expected, rtol=1e-7)
    assert frame.data.dtype == np.float32 and frame.header["EXPTIME"] == 5


def test_blank_pixels_become_nan(tmp_path):
    path = tmp_path / "frame.fits"
    stored = np.full((6, 5), 7, dtype=np.int16)
    stored[2, 3] = -999
    fits.PrimaryHDU(stored, header=fits.Header({"BLANK": -999})).writeto(path)
    data = fitsio.read_frame(path).data
    assert np.isnan(data[2, 3]) and np.count_nonzero(np.isnan(data)) == 1


def test_products_carry_checksums_astropy_and_fitsverify_accept(tmp_path):
    header = fitsio.Header()
    header["OBJECT"] = "NGC 2420 'a'"
    header["LONGPATH"] = ("ORIGINAL/" + "x" * 150 + ".fits", "a long string")
    header.add_history("h" * 100)
    for shape in [(64, 48), (3, 5)]:
        data = np.random.default_rng(0).normal(0, 1, shape).astype(np.float32)
        path = fitsio.write_image(tmp_path / f"p{shape[0]}.fits", data, header)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a failed checksum is a warning in astropy
            with fits.open(path, checksum=True) as hdus:
                np.testing.assert_array_equal(hdus[0].data, data)
                assert hdus[0].header["LONGPATH"] == header["LONGPATH"]
                assert hdus[0].header["OBJECT"] == "NGC 2420 'a'"
        assert checksums_hold(path)
        fitsverify([path])


def test_checksums_catch_damage_anywhere(tmp_path):
    path = tmp_path / "p.fits"
    fits.PrimaryHDU(np.ones((32, 32), np.float32)).writeto(path, checksum=True)
    assert checksums_hold(path)  # astropy's sums, checked by ours
    good = path.read_bytes()
    for offset in (200, 2880 + 100):  # a header byte, a data byte
        damaged = bytearray(good)
        damaged[offset] ^= 0x01
        path.write_bytes(bytes(damaged))
        assert not checksums_hold(path)
    path.write_bytes(good[:-2880])
    assert not checksums_hold(path)
    fits.PrimaryHDU(np.ones((4, 4), np.float32)).writeto(path, overwrite=True)
    assert checksums_hold(path)  # no sums written: nothing to contradict


def test_header_values_parse_as_astropy_parses_them():
    source = fits.Header()
    source["STR"] = ("it''s 'quoted' ", "comment / with slash")
    source["EMPTY"] = ""
    source["LONG"] = "y" * 200
    source["INT"] = -42
    source["FLOAT"] = (1.5e-12, "tiny")
    source["BIG"] = 6.02e23
    source["TRUE"] = True
    source["FALSE"] = False
    source["UNDEF"] = None
    source["HIERARCH ESO DET TEMP"] = -100.5
    source.add_history("first")
    ours = fitsio.Header.from_astropy(source)
    for key in ("STR", "EMPTY", "LONG", "INT", "FLOAT", "BIG", "TRUE", "FALSE", "UNDEF"):
        assert ours[key] == source[key], key
        assert type(ours[key]) is type(source[key]), key
    assert ours["ESO DET TEMP"] == -100.5 and "esO det temp" in ours
    assert ours.comment("STR") == "comment / with slash"
    again = fits.Header.fromstring(fitsio.Header.from_astropy(source).tostring())
    assert again == source
    assert fitsio.Header.parse(b"EXPTIME =                60D-1 / exponent in D".ljust(80))[
        "EXPTIME"
    ] == pytest.approx(6.0)


def test_header_writes_cards_astropy_reads_back():
    ours = fitsio.Header()
    values = {"A": 1, "B": -2.5e-7, "C": True, "D": "text", "E": 12345678901234, "F": 0.1}
    for key, value in values.items():
        ours[key] = (value, "c" * 90)  # comments longer than the card are cut
    ours.set("G", "g", "k" * 90, whole_comment=True)  # ... or left out
    ours["D"] = "replaced"  # in place
    ours.remove("A")
    read = fits.Header.fromstring(ours.tostring())
    assert list(read) == ["B", "C", "D", "E", "F", "G"]
    assert read["B"] == -2.5e-7 and read["C"] is True and read["D"] == "replaced"
    assert read["E"] == 12345678901234 and read["F"] == 0.1 and read.comments["G"] == ""
    assert all(len(card) == 80 for card in ours.cards())
    with pytest.raises(fitsio.HeaderError, match="NaN"):
        ours["NAN"] = float("nan")
    with pytest.raises(fitsio.HeaderError, match="not a standard FITS keyword"):
        ours["TOO-LONG-KEY"] = 1
    ours["PATH"] = "café"
    assert fits.Header.fromstring(ours.tostring())["PATH"] == "caf\\xe9"


def test_the_cosmetic_path_never_imports_astropy():
    """astropy.io.fits costs 0.2 s per process: `--setup` and a night reduced without
    astrometry must not pay for it (the astrometry imports it on first use)."""
    import subprocess
    import sys

    code = (
        "import sys, ar_tasks.cli, ar_tasks.steps, ar_tasks.pipeline\n"
        "print(sorted(m for m in sys.modules if m.startswith('astropy.io')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_written_product_is_hashed_once_unless_changed(tmp_path):
    """write_image hashes the bytes it writes; sha256_file answers with that digest while the
    file is the one written, and reads the file again once it was replaced or edited."""
    path = tmp_path / "product.fits"
    fitsio.write_image(path, DATA.astype(np.float32))
    assert fitsio._written_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert fitsio.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    other = tmp_path / "other.fits"
    fits.PrimaryHDU((DATA + 1).astype(np.float32)).writeto(other)
    os.replace(other, path)  # same size, another inode
    assert fitsio._written_digest(path) is None
    assert fitsio.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    fitsio.write_image(path, DATA.astype(np.float32))
    before = os.stat(path)
    with open(path, "r+b") as stream:  # edited in place, its mtime moved on
        stream.seek(2880 + 10)
        stream.write(b"\x7f")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert fitsio._written_digest(path) is None
    assert fitsio.sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_known_unchanged_file_is_not_hashed_again(raw_file):
    """The stamp taken before hashing vouches for the bytes while size, mtime and ctime hold."""
    time.sleep(2 * fitsio.RACY_WINDOW_NS / 1e9)
    scan = fitsio.scan_frame(raw_file)
    assert scan.known == fitsio.KnownFile(scan.stamp, fitsio.sha256_file(raw_file))
    vouched = fitsio.KnownFile(scan.known.stamp, "f" * 64)  # a hash that only the stamp can give
    assert fitsio.read_frame(raw_file, vouched).sha256 == "f" * 64


def test_a_silent_edit_is_hashed_despite_its_restored_mtime(raw_file):
    """Same size and the old mtime put back: the ctime still moves, so the hash is redone."""
    time.sleep(2 * fitsio.RACY_WINDOW_NS / 1e9)
    known = fitsio.scan_frame(raw_file).known
    assert known is not None
    before = os.stat(raw_file)
    with open(raw_file, "r+b") as stream:
        stream.seek(2880 + 10)
        stream.write(b"\x7f")
    os.utime(raw_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    frame = fitsio.read_frame(raw_file, known)
    assert frame.sha256 == fitsio.sha256_file(raw_file) != known.sha256


def test_a_file_written_just_now_is_not_vouched_for(raw_file, monkeypatch):
    """Racy: a second write in the same clock tick would leave the stamp unchanged."""
    monkeypatch.setattr(fitsio, "RACY_WINDOW_NS", 60 * 10**9)  # "just now", however slow CI is
    raw_file.write_bytes(raw_file.read_bytes())
    assert fitsio.scan_frame(raw_file).known is None


def test_scan_counts_undefined_pixels_without_converting(tmp_path):
    path = tmp_path / "frame.fits"
    stored = np.full((6, 5), 7, dtype=np.int16)
    stored[1, 1] = stored[2, 2] = -999
    fits.PrimaryHDU(stored, header=fits.Header({"BLANK": -999, "EXPTIME": 3})).writeto(path)
    scan = fitsio.scan_frame(path)
    assert (scan.shape, scan.nonfinite, scan.header["EXPTIME"]) == ((6, 5), 2, 3)
    assert scan.sha256 == fitsio.sha256_file(path)
    floats = np.ones((4, 3), np.float32)
    floats[0, 0], floats[1, 1] = np.nan, np.inf
    fits.PrimaryHDU(floats).writeto(path, overwrite=True)
    assert fitsio.scan_frame(path).nonfinite == 2


def test_products_of_other_layouts_are_read_too(tmp_path):
    """A user's own master (--nomaster) may be 16-bit or scaled: the general path reads it."""
    path = tmp_path / "mdark_1000.fits"
    fits.PrimaryHDU(DATA.astype(np.int32)).writeto(path)
    pixels, header = fitsio.read_product(path)
    np.testing.assert_array_equal(pixels, DATA)
    assert pixels.dtype == np.float32 and header["BITPIX"] == 32
    ours = fitsio.write_image(tmp_path / "p.fits", np.ones((64, 48)))
    ours.write_bytes(ours.read_bytes()[:-4000])
    with pytest.raises(fitsio.FrameError, match=r"p\.fits is truncated"):
        fitsio.read_product(ours)  # named, not a short array


def test_product_rows_read_any_rows_of_ours_and_of_other_layouts(tmp_path):
    """Row ranges come back as read_product gives them, from our layout (read in place) and
    from another one (read whole once); a truncated product is named."""
    image = np.random.default_rng(5).normal(size=(64, 48)).astype(np.float32)
    ours = fitsio.write_image(tmp_path / "aux.fits", image)
    other = tmp_path / "other.fits"
    fits.PrimaryHDU(DATA.astype(np.int32)).writeto(other)
    buffer = np.full(24 * 48, np.nan, dtype=np.float32)
    for path, expected in ((ours, image), (other, DATA.astype(np.float32))):
        rows = fitsio.ProductRows(path)
        assert rows.shape == (64, 48)
        for start, stop in ((0, 20), (30, 47), (50, 64), (10, 10)):
            got = rows.read(start, stop, buffer)
            assert got.dtype == np.float32 and got.shape == (stop - start, 48)
            np.testing.assert_array_equal(got, expected[start:stop])
    rows = fitsio.ProductRows(ours)
    ours.write_bytes(ours.read_bytes()[:-4000])
    with pytest.raises(fitsio.FrameError, match=r"aux\.fits is truncated"):
        rows.read(40, 64, buffer)
    with pytest.raises(fitsio.FrameError, match=r"missing\.fits cannot be read"):
        fitsio.ProductRows(tmp_path / "missing.fits")
