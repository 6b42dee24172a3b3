"""The `astro_reduce` command's options, messages, exit codes and handling of bad input."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from conftest import ASTRO_REDUCE, fitsverify, run_cli

from ar_tasks.synthetic import NightSpec, load_truth, write_night

SMALL_GROUPS = {
    "M-67_R_60000",
    "M-67_V_60000",
    "NGC-2420_B_120000",
    "NGC-2420_R_120000",
    "NGC-2420_V_120000",
}


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _stacks(night: Path) -> set[str]:
    return {p.stem for p in (night / "stacked").glob("*.fits")}


def test_setup_never_imports_numpy(small_night):
    """`astro_reduce --setup` reads headers, hashes bytes and copies files: on a night of
    integer frames without BLANK it runs without numpy (0.05 s of every setup) and without
    the reduction's modules."""
    code = (
        "import atexit, sys\n"
        "from ar_tasks.cli import main\n"
        "atexit.register(lambda: print('numpy imported:', 'numpy' in sys.modules))\n"
        "sys.argv = ['astro_reduce', '--setup']\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=small_night, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert (small_night / "ar_inventory.json").is_file()
    assert result.stdout.strip().splitlines()[-1] == "numpy imported: False"


def test_reduction_without_setup_says_so(small_night):
    result = run_cli(small_night, "-i")
    assert result.returncode == 1
    assert "E: Configuration file `2023-05-10.json` not found" in result.stderr
    assert "--setup" in result.stderr


def test_a_night_without_flats_is_a_normal_night(small_night):
    """No FLAT/ folder: setup warns and succeeds; the reduction makes the darks, fails every
    group for want of its flat with the reason, and the manifest says so."""
    shutil.rmtree(small_night / "FLAT")
    result = run_cli(small_night, "--setup")
    assert result.returncode == 0, result.stderr
    assert "W: Did not find folder FLAT" in result.stdout
    result = run_cli(small_night, "-i")
    assert result.returncode == 1
    assert "E: Did not find flat field images for filter V." in result.stderr
    assert "E: Master files are missing for (60000ms, V): mtrans_V.fits." in result.stderr
    assert not _stacks(small_night)
    manifest = json.loads((small_night / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert manifest["masters"]["darks"] and not manifest["masters"]["flats"]
    assert any("mtrans_V.fits" in p for p in manifest["problems"])


def test_a_folder_without_any_frame_folder_is_refused(tmp_path):
    result = run_cli(tmp_path, "--setup")
    assert result.returncode == 1
    assert "is not a night folder: it has none of DARK, FLAT, ORIGINAL" in result.stderr


def test_missing_darks_fail_only_what_needs_them(small_night):
    assert run_cli(small_night, "--setup").returncode == 0
    result = run_cli(small_night)  # no --interpolate: 10 s and 120 s have no darks
    assert result.returncode == 1
    assert "E: Did not find dark field images for 120000ms exposure" in result.stderr
    assert "--interpolate" in result.stderr
    assert "E: Master files are missing for (120000ms, V)" in result.stderr
    # M 67 at 60 s in V and R has everything it needs and is reduced all the same.
    assert _stacks(small_night) == {"M-67_R_60000", "M-67_V_60000"}
    assert "astro_reduce done." in result.stdout


def test_options_line_and_verbose_report(small_night):
    run_cli(small_night, "--setup")
    result = run_cli(small_night, "-i", "-v", "--nostack")
    assert result.returncode == 0, result.stderr
    assert "Options: interpolate, verbose, nostack." in result.stdout
    assert (
        "Files found:" in result.stdout and "    60000 ms...    Done (5 images)." in result.stdout
    )
    assert not (small_night / "stacked").exists() or not _stacks(small_night)
    assert len(list((small_night / "ar_cosmetic").glob("*_aux.fits"))) == 15
    assert (small_night / "astro_reduce.log").read_text().count(
        "Options:"
    ) == 0  # header is console-only
    assert "Writing master dark images:" in (small_night / "astro_reduce.log").read_text()
    # The night's tasks run in threads: the log file says which group each line is about.
    assert (
        "M-67_V_60000:     M-67_V_60000...   Done (3 images)."
        in (small_night / "astro_reduce.log").read_text()
    )


def test_nomaster_needs_masters_then_uses_them(small_night):
    run_cli(small_night, "--setup")
    result = run_cli(small_night, "--nomaster")
    assert result.returncode == 1
    assert "E: You used the --nomaster option but there is no MASTER folder" in result.stderr
    assert run_cli(small_night, "-i", "--nostack").returncode == 0
    (small_night / "ar_masters" / "mtrans_B.fits").unlink()
    result = run_cli(small_night, "--nomaster")
    assert result.returncode == 1
    assert "E: Master files are missing for (120000ms, B): mtrans_B.fits." in result.stderr
    assert _stacks(small_night) == SMALL_GROUPS - {"NGC-2420_B_120000"}
    assert not (small_night / "ar_masters" / "mtrans_B.fits").exists()  # --nomaster makes none


def test_setup_copies_or_links_working_files(small_night):
    run_cli(small_night, "--setup")
    copies = sorted((small_night / "ar_objects").iterdir())
    assert len(copies) == 15 and not any(p.is_symlink() for p in copies)
    run_cli(small_night, "--setup", "--link")
    links = sorted((small_night / "ar_objects").iterdir())
    assert [p.name for p in links] == [p.name for p in copies]
    assert all(p.is_symlink() and p.resolve().parent.name == "ORIGINAL" for p in links)


def test_clear_and_clearall(small_night):
    run_cli(small_night, "--setup", "--link")
    assert run_cli(small_night, "-i", "-r").returncode == 0
    raw_before = {
        p: p.read_bytes()
        for p in small_night.rglob("*.fits")
        if p.parts[-2] in ("DARK", "FLAT", "ORIGINAL")
    }
    assert run_cli(small_night, "--clear").returncode == 0
    left = {p.name for p in small_night.iterdir()}
    assert left == {"DARK", "FLAT", "ORIGINAL", "stacked", "astro_reduce.log"}
    assert run_cli(small_night, "--clearall").returncode == 0
    assert {p.name for p in small_night.iterdir()} == {
        "DARK",
        "FLAT",
        "ORIGINAL",
        "astro_reduce.log",
    }
    assert {p: p.read_bytes() for p in raw_before} == raw_before  # raw untouched


def test_setup_again_after_raw_changes_leaves_no_stale_products(small_night):
    """5.1.3 bug B17: a removed raw frame's aux frame was still stacked."""
    run_cli(small_night, "--setup")
    assert run_cli(small_night, "-i", "-t", "-r").returncode == 0
    removed = sorted((small_night / "ORIGINAL").glob("M67-V-*"))[0]
    removed.unlink()
    shutil.rmtree(small_night / "FLAT")
    (small_night / "FLAT").mkdir()
    result = run_cli(small_night, "--setup")
    assert result.returncode == 0
    assert "Removed stale product" in result.stdout
    aux = list((small_night / "ar_cosmetic").glob("M-67_V_60000_*_aux.*"))
    assert len(aux) == 2 * 2  # two frames left, FITS + PNG each
    assert not list((small_night / "ar_masters").glob("mtrans_*"))  # flats gone: masters gone


def test_stack_uses_exactly_the_current_frames(small_night):
    run_cli(small_night, "--setup")
    assert run_cli(small_night, "-i").returncode == 0
    sorted((small_night / "ORIGINAL").glob("M67-V-*"))[0].unlink()
    assert run_cli(small_night, "--setup").returncode == 0
    assert run_cli(small_night, "-i").returncode == 0
    header = fits.getheader(small_night / "stacked" / "M-67_V_60000.fits")
    assert header["NCOMBINE"] == 2


def _science_frame(night: Path) -> Path:
    return sorted((night / "ORIGINAL").glob("M67-R-*"))[0]


def test_bad_inputs_are_named_and_the_rest_is_reduced(small_night):
    source = _science_frame(small_night)
    original = source.read_bytes()
    data, header = fits.getdata(source, header=True)
    bad = small_night / "ORIGINAL"
    (bad / "truncated.fits").write_bytes(original[: len(original) // 2])
    no_filter = header.copy()
    del no_filter["FILTER"]
    fits.writeto(bad / "nofilter.fits", data, no_filter)
    (bad / "notes.fits").write_text("this is not a FITS file\n")
    fits.writeto(bad / "small.fits", data[:128, :128], header)
    nan_header = header.copy()
    fits.writeto(bad / "allnan.fits", np.full(data.shape, np.nan, np.float32), nan_header)
    for name, obj in (("escape.fits", "../../x"), ("slash.fits", "M 51/a"), ("glob.fts", "N*[1]?")):
        evil = header.copy()
        evil["OBJECT"] = obj
        fits.writeto(bad / name, data, evil)
    with gzip.open(bad / "compressed.FITS.gz", "wb") as stream:  # accepted: any case, gzip
        stream.write(original)
    (bad / "readme.txt").write_text("observing log\n")
    damaged = bytearray(gzip.compress(original, mtime=0))
    damaged[len(damaged) // 2 : len(damaged) // 2 + 64] = bytes(64)  # inside the deflate data
    (bad / "damaged.fits.gz").write_bytes(bytes(damaged))
    (bad / "folder.fits").mkdir()
    (bad / "dangling.fits").symlink_to("gone.fits")
    outside_before = _tree(small_night.parent.parent)

    result = run_cli(small_night, "--setup")
    assert result.returncode == 1
    for name, reason in (
        ("truncated.fits", "is truncated"),
        ("nofilter.fits", "has no FILTER keyword"),
        ("notes.fits", "is not a readable FITS image (No SIMPLE card found"),
        ("small.fits", "is 128x128 px while the night's frames are 256x256 px"),
        ("allnan.fits", "has 65536 NaN or infinite pixels of 65536"),
        ("damaged.fits.gz", "is a damaged gzip file ("),
        ("folder.fits", "is a directory, not a FITS file"),
        ("dangling.fits", "is a link to `gone.fits`, which does not exist"),
    ):
        assert f"E: ORIGINAL/{name} {reason}" in result.stderr, (name, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert "W: ORIGINAL/readme.txt is not named like a FITS file: ignored." in result.stdout

    result = run_cli(small_night, "-i", "-t", "-r")
    assert result.returncode == 0, result.stderr
    assert "W: ORIGINAL/truncated.fits is truncated" in result.stdout
    assert _stacks(small_night) == SMALL_GROUPS | {"x_R_60000", "M-51-a_R_60000", "N-1_R_60000"}
    assert fits.getheader(small_night / "stacked" / "M-67_R_60000.fits")["NCOMBINE"] == 4
    # Nothing was written outside the night folder, and every product is valid FITS.
    after = _tree(small_night.parent.parent)
    assert {
        p for p in after - outside_before if not p.startswith(f"nights{os.sep}2023-05-10")
    } == set()
    products = ("ar_masters", "ar_cosmetic", "stacked")
    fitsverify([p for p in small_night.glob("*/*.fits") if p.parent.name in products])
    assert source.read_bytes() == original


def _without_seconds(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_seconds(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_seconds(v) for v in value]
    return value


def test_worker_processes_reduce_exactly_as_threads(small_night, tmp_path):
    """`--jobs 2` runs the masters' and the groups' tasks in forked workers, `--jobs 1` in the
    calling thread: same products byte for byte, same records, and the workers' messages (the
    errors about a science frame and a flat damaged after --setup, the warning that follows)
    reach the console, the log file and the final count as the thread's do (in the order the
    tasks end)."""
    nights = {}
    for jobs in ("1", "2"):
        night = tmp_path / f"jobs{jobs}" / small_night.name
        shutil.copytree(small_night, night)
        assert run_cli(night, "--setup").returncode == 0
        for damaged in (_science_frame(night), sorted((night / "FLAT").glob("flat-B-*"))[0]):
            damaged.write_bytes(damaged.read_bytes()[:20000])
        nights[jobs] = (night, run_cli(night, "-i", "--jobs", jobs))
    outcomes = {}
    for jobs, (night, result) in nights.items():
        manifest = json.loads((night / "manifest.json").read_text())
        log_lines = (night / "astro_reduce.log").read_text().splitlines()
        outcomes[jobs] = {
            "code": result.returncode,
            "stdout": [x for x in result.stdout.splitlines() if "astro_reduce done" not in x],
            "stderr": sorted(result.stderr.splitlines()),
            "log": sorted(x.split(" ", 1)[1] for x in log_lines if " " in x),
            "products": [(p["path"], p["sha256"]) for p in manifest["products"]],
            "groups": _without_seconds(manifest["groups"]),
            "masters": _without_seconds(manifest["masters"]),
            "problems": sorted(manifest["problems"]),
        }
    serial, workers = outcomes["1"], outcomes["2"]
    assert workers["code"] == serial["code"] == 1
    science = _science_frame(small_night).name
    assert any(f"E: ORIGINAL/{science} is truncated" in x for x in workers["stderr"])
    flat = "E: FLAT/flat-B-001.fits is truncated"  # left out: the master is made of the others
    assert any(flat in x for x in workers["stderr"])
    assert any("M-67_R_60000: W: The aux frame of" in x for x in workers["log"])
    assert workers["masters"]["darks"] and workers["masters"]["flats"]
    assert len(workers["products"]) > 20
    for part in serial:
        assert workers[part] == serial[part], part


def test_raw_frame_changed_after_setup_is_refused(small_night):
    run_cli(small_night, "--setup")
    changed = _science_frame(small_night)
    with fits.open(changed, mode="update") as hdus:
        hdus[0].header["OBSERVER"] = "someone"
    result = run_cli(small_night, "-i")
    assert result.returncode == 1
    assert (
        f"E: ORIGINAL/{changed.name} changed since --setup: run astro_reduce --setup again"
        in result.stderr
    )
    assert fits.getheader(small_night / "stacked" / "M-67_R_60000.fits")["NCOMBINE"] == 2
    assert run_cli(small_night, "--setup").returncode == 0
    assert run_cli(small_night, "-i").returncode == 0
    assert fits.getheader(small_night / "stacked" / "M-67_R_60000.fits")["NCOMBINE"] == 3


def test_large_dithers_are_registered_and_warned_about(tmp_path):
    """5.1.3's ghost warning above 15% of the field, and large shifts still found exactly."""
    night = write_night(tmp_path, NightSpec(size=256, frames_per_group=3, max_dither_px=60, seed=5))
    run_cli(night, "--setup")
    result = run_cli(night, "-i")
    assert result.returncode == 0, result.stderr
    assert "W: In M-67:V:60000, shifting by " in result.stdout
    assert "% of the field size.\nW: Beware of ghosts!" in result.stdout
    truth = load_truth(tmp_path / "_truth" / night.name)
    header = fits.getheader(night / "stacked" / "M-67_V_60000.fits")
    reference = truth.frame(header["ARREF"])
    for card in header["HISTORY"]:
        path, dy, dx, _ = str(card).split()
        frame = truth.frame(path)
        assert abs(float(dy[3:]) - (reference["dy"] - frame["dy"])) < 0.05
        assert abs(float(dx[3:]) - (reference["dx"] - frame["dx"])) < 0.05


def test_version_and_help(small_night):
    version = run_cli(small_night, "--version")
    assert version.returncode == 0 and version.stdout.startswith("astro_reduce, version ")
    helptext = run_cli(small_night, "--help")
    assert helptext.returncode == 0
    for option in ("--setup", "--clear", "--clearall", "--interpolate", "--tmppng", "--stkpng"):
        assert option in helptext.stdout
    assert "--nomaster" in helptext.stdout and "--nostack" in helptext.stdout


def _processes_in(folder: Path) -> list[int]:
    """The processes whose working directory is `folder`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cwd").resolve() == folder.resolve():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_killed_run_leaves_no_partial_product(small_night):
    """A reduction killed at any moment leaves only complete products; a rerun finishes cleanly."""
    run_cli(small_night, "--setup")

    def products() -> list[Path]:
        return [
            p
            for p in small_night.glob("*/*.fits")
            if p.parent.name in ("ar_masters", "ar_cosmetic", "stacked")
        ]

    # Killed once the first master exists, then once the first stack does (PNGs still to go):
    # points reached by progress, not by a delay the reduction may outrun.
    for stage in ("ar_masters", "stacked"):
        for path in products():
            path.unlink()
        process = subprocess.Popen(
            [str(ASTRO_REDUCE), "-i", "-t", "-r", "--overwrite"],
            cwd=small_night,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120  # however loaded the machine is
        while time.monotonic() < deadline and process.poll() is None:
            if any(p.parent.name == stage for p in products()):
                break
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL  # killed mid-run, not finished
        left = sorted(products())
        # Its worker processes died with it: none goes on writing products.
        while time.monotonic() < deadline and _processes_in(small_night):
            time.sleep(0.01)
        assert not _processes_in(small_night)
        assert sorted(products()) == left
        assert products()  # the kill came after some products were written
        fitsverify(products())
    leftover = small_night / "ar_cosmetic" / ".M-67_V_60000_x_aux.fits.abc123.part"
    leftover.write_bytes(b"half a file")  # what a kill during a write leaves ...
    old = time.time() - 3600
    for path in small_night.rglob("*.part"):  # (with the kills' own, if any) ...
        os.utime(path, (old, old))  # ... some time ago (a fresh one may be a live writer's)
    fresh = small_night / "ar_cosmetic" / ".M-67_V_60000_y_aux.fits.def456.part"
    fresh.write_bytes(b"being written")
    result = run_cli(small_night, "-i", "-t", "-r")
    assert result.returncode == 0, result.stderr
    assert _stacks(small_night) == SMALL_GROUPS
    assert list(small_night.rglob("*.part")) == [fresh]
