"""Inventory: discovery, validation, quarantine with reasons, grouping, saved form."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zlib

import numpy as np
import pytest
from astropy.io import fits
from conftest import ASTRO_REDUCE

from ar_tasks.inventory import GroupKey, Inventory, take_inventory


def _write(path, shape=(32, 32), **keys):
    path.parent.mkdir(parents=True, exist_ok=True)
    offset = zlib.crc32(path.name.encode()) % 1000  # never constant, never another's copy
    data = (300 + offset + np.arange(shape[0] * shape[1]) % 97).astype(np.uint16).reshape(shape)
    fits.PrimaryHDU(data, header=fits.Header(keys)).writeto(path)


def test_grouping_names_and_config(tmp_path):
    _write(tmp_path / "DARK/d1.fits", EXPTIME=60)
    _write(tmp_path / "DARK/d2.FIT", EXPOSURE=60.0004)
    _write(tmp_path / "FLAT/f1.fts", EXPTIME=2, FILTER="r-SDSS")
    _write(tmp_path / "ORIGINAL/a.fits", EXPTIME=60, FILTER="r_SDSS", OBJECT="M 67")
    _write(tmp_path / "ORIGINAL/b.fits", EXPTIME=60.0, FILTER="rSDSS", OBJECT="M_67")
    inventory = take_inventory(tmp_path)
    assert inventory.quarantined == []
    assert list(inventory.darks_by_exposure()) == [60000]
    assert list(inventory.groups()) == [GroupKey("M-67", "rSDSS", 60000)]
    assert inventory.config() == {
        "objects": ["M-67"],
        "exposures": [2000, 60000],
        "filters": ["rSDSS"],
    }
    assert inventory.needed_exposures() == [2000, 60000]
    assert any("all become 'rSDSS'" in w for w in inventory.warnings)
    frame = inventory.groups()[GroupKey("M-67", "rSDSS", 60000)][0]
    assert frame.working_name == f"M-67_rSDSS_60000_{frame.id}.fits"
    assert GroupKey.parse("M-67_rSDSS_60000") == frame.group
    assert Inventory.from_json(inventory.to_json()) == inventory


def test_problems_are_quarantined_with_reasons(tmp_path):
    _write(tmp_path / "DARK/good.fits", EXPTIME=1)
    _write(tmp_path / "DARK/good2.fits", EXPTIME=1)
    _write(tmp_path / "DARK/noexp.fits")
    _write(tmp_path / "FLAT/badexp.fits", EXPTIME="long", FILTER="V")
    _write(tmp_path / "FLAT/nofilter.fits", EXPTIME=1)
    _write(tmp_path / "ORIGINAL/noobject.fits", EXPTIME=1, FILTER="V")
    _write(tmp_path / "ORIGINAL/big.fits", shape=(64, 64), EXPTIME=1, FILTER="V", OBJECT="A")
    reasons = {p.path: p.reason for p in take_inventory(tmp_path).quarantined}
    assert reasons == {
        "DARK/noexp.fits": "has no exposure keyword (EXPTIME, EXPOSURE or 'EXP (MS)')",
        "FLAT/badexp.fits": "has EXPTIME = 'long', not a number",
        "FLAT/nofilter.fits": "has no FILTER keyword",
        "ORIGINAL/noobject.fits": "has no OBJECT keyword",
        "ORIGINAL/big.fits": "is 64x64 px while the night's frames are 32x32 px",
    }


def test_unchanged_files_are_not_read_again(tmp_path):
    """Same size and mtime: the earlier record is reused; a touched file is read again."""
    import os

    path = tmp_path / "DARK" / "d.fits"
    _write(path, EXPTIME=60)
    first = take_inventory(tmp_path)
    stat = path.stat()
    fits.setval(path, "EXPTIME", value=30)  # same size: one card changed
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    reused = take_inventory(tmp_path, previous=first)
    assert reused.frames == first.frames  # not read: still 60 s (the SHA-256 check at read time
    # catches such a silent edit, see test_raw_frame_changed_after_setup_is_refused)
    os.utime(path)  # a real modification time
    again = take_inventory(tmp_path, previous=first)
    assert again.frames[0].exposure_ms == 30000 and again.frames[0].sha256 != first.frames[0].sha256


def test_threads_give_the_same_inventory(tmp_path):
    """Reading the files in threads changes nothing: same frames, problems and warnings."""
    for index in range(6):
        _write(tmp_path / f"DARK/d{index}.fits", EXPTIME=10 * (index % 2 + 1))
        _write(tmp_path / f"ORIGINAL/o{index}.fits", EXPTIME=10, FILTER="V", OBJECT=f"M {index}")
    (tmp_path / "FLAT").mkdir()
    (tmp_path / "FLAT/broken.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    _write(tmp_path / "FLAT/wide.fits", shape=(32, 40), EXPTIME=1, FILTER="V")
    serial, threaded = take_inventory(tmp_path, jobs=1), take_inventory(tmp_path, jobs=3)
    assert threaded.to_json() == serial.to_json()
    assert [p.path for p in threaded.quarantined] == ["FLAT/broken.fits", "FLAT/wide.fits"]


def test_an_inventory_taken_just_after_the_writes_records_what_a_later_one_does(
    tmp_path, monkeypatch
):
    """A file hashed within the racy window of its last write is read again once the window is
    past: its stamp is recorded (it vouches for the hash) whenever the inventory runs."""
    import time

    from ar_tasks import fitsio

    monkeypatch.setattr(fitsio, "RACY_WINDOW_NS", 300_000_000)  # "just now", however slow CI is
    for index in range(3):
        _write(tmp_path / f"DARK/d{index}.fits", EXPTIME=10)
    early = take_inventory(tmp_path, jobs=1)
    time.sleep(2 * fitsio.RACY_WINDOW_NS / 1e9)
    later = take_inventory(tmp_path, jobs=3)
    assert early.to_json() == later.to_json()
    for frame in early.frames:
        path = tmp_path / frame.path
        assert frame.known.stamp == fitsio.file_stamp(path.stat())
        assert frame.sha256 == fitsio.sha256_file(path)


def test_entries_that_are_no_files_are_quarantined_with_reasons(tmp_path):
    """A directory, a dangling link and a link loop named like FITS files are named, not
    skipped in silence; the cheap check lists them without failing; a non-FITS name is a
    warning."""
    from ar_tasks.nights import raw_stamps

    night = tmp_path / "2023-05-10"
    _write(night / "ORIGINAL/good.fits", EXPTIME=60, FILTER="V", OBJECT="M 67")
    (night / "ORIGINAL/folder.fits").mkdir()
    (night / "ORIGINAL/gone.fits").symlink_to("nowhere.fits")
    (night / "ORIGINAL/loop.fits").symlink_to("loop.fits")
    (night / "ORIGINAL/notes.txt").write_text("seeing 2 arcsec\n")
    inventory = take_inventory(night)
    reasons = {p.path: p.reason for p in inventory.quarantined}
    assert reasons == {
        "ORIGINAL/folder.fits": "is a directory, not a FITS file",
        "ORIGINAL/gone.fits": "is a link to `nowhere.fits`, which does not exist",
        "ORIGINAL/loop.fits": "is a symbolic link loop",
    }
    assert [f.path for f in inventory.frames] == ["ORIGINAL/good.fits"]
    assert inventory.warnings == ["ORIGINAL/notes.txt is not named like a FITS file: ignored."]
    from ar_tasks.inventory import describes

    stamps = raw_stamps(tmp_path, "2023-05-10")
    assert set(stamps) == {"ORIGINAL/good.fits", *reasons}
    assert describes(inventory, stamps)


def test_renamed_header_values_name_a_file_that_has_them(tmp_path):
    _write(tmp_path / "ORIGINAL/a.fits", EXPTIME=60, FILTER="V/../../x", OBJECT="M 67")
    _write(tmp_path / "ORIGINAL/b.fits", EXPTIME=60, FILTER="R", OBJECT="NGC*2420")
    _write(tmp_path / "FLAT/f.fits", EXPTIME=5, FILTER="r-SDSS")  # 5.1.3's own rule: silent
    warnings = take_inventory(tmp_path).warnings
    assert warnings == [
        "FILTER 'V/../../x' (in ORIGINAL/a.fits and its group) has unsafe characters; it is "
        "written 'Vx'.",
        "OBJECT 'NGC*2420' (in ORIGINAL/b.fits and its group) has unsafe characters; it is "
        "written 'NGC-2420'.",
    ]


def test_copies_and_frames_in_the_wrong_folder_are_named(tmp_path):
    """A byte-identical copy of a dark under another name is used once; a frame whose
    IMAGETYP says another kind than its folder is left out; a bias frame is a dark of 0 s."""
    import shutil

    _write(tmp_path / "DARK/d1.fits", EXPTIME=60, IMAGETYP="Dark Frame")
    shutil.copy(tmp_path / "DARK/d1.fits", tmp_path / "DARK/d1-copy.fits")
    _write(tmp_path / "DARK/bias.fits", EXPTIME=0, IMAGETYP="Bias Frame")
    _write(tmp_path / "DARK/light.fits", EXPTIME=60, IMAGETYP="Light Frame")
    _write(tmp_path / "FLAT/dark.fits", EXPTIME=5, FILTER="V", IMAGETYP="DARK")
    _write(tmp_path / "ORIGINAL/a.fits", EXPTIME=60, FILTER="V", OBJECT="M 67", IMAGETYP="Light")
    inventory = take_inventory(tmp_path)
    assert {p.path: p.reason for p in inventory.quarantined} == {
        "DARK/d1.fits": "is a byte-identical copy of DARK/d1-copy.fits: used once",
        "DARK/light.fits": "has IMAGETYP = 'Light Frame' but is in DARK/",
        "FLAT/dark.fits": "has IMAGETYP = 'DARK' but is in FLAT/",
    }
    assert [f.path for f in inventory.frames] == [
        "DARK/bias.fits",
        "DARK/d1-copy.fits",
        "ORIGINAL/a.fits",
    ]


def test_an_unreadable_file_is_quarantined_and_the_night_goes_on(small_night):
    """A raw frame without read permission (root is made to respect the permissions by
    dropping CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH): named at setup, the rest reduced."""
    unreadable = sorted((small_night / "ORIGINAL").glob("M67-V-*"))[0]
    unreadable.chmod(0)
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root reads every file, and setpriv (util-linux) is missing")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    try:
        for args in (["--setup"], ["-i"]):
            result = subprocess.run(
                [*prefix, str(ASTRO_REDUCE), *args],
                cwd=small_night,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert "Traceback" not in result.stdout + result.stderr
        name = f"ORIGINAL/{unreadable.name}"
        assert f"{name}" in result.stderr or f"{name}" in result.stdout
        manifest = json.loads((small_night / "manifest.json").read_text())
        reasons = {q["path"]: q["reason"] for q in manifest["quarantined"]}
        assert "Permission denied" in reasons[name], reasons
        assert manifest["groups"]["M-67_V_60000"]["stack"]["combined"] >= 2
    finally:
        unreadable.chmod(0o644)
