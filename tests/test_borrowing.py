"""Nights without their own calibrations, reduced with masters borrowed from the nearest night
of the archive: through the DAG's stages (local and S3), the CLI, and two runs at once.

The synthetic nights share one camera (bias, dark current, flats: the seed's), so a
neighbour's masters are the truth of this night too, and its stacks must pass the same truth
checks as a night with its own calibrations.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from conftest import fitsverify, run_cli
from truth_checks import check_stack

from ar_tasks import pipeline
from ar_tasks.synthetic import NightSpec, load_truth, write_night

GROUP = "M-67_V_60000"
M67_V = {"object": "M-67", "filter": "V", "exposure_ms": 60000}
FULL = NightSpec(
    size=512,
    darks=((5.0, 3), (60.0, 3)),
    flats=(("V", 5.0, 3),),
    science=(("M 67", "V", 60.0, 3),),
)
SCIENCE_ONLY = {"darks": (), "flats": ()}
# Night -> what it holds (05-03, 05-05, 05-07 only science; 05-08 no flats; 05-10 darks of
# other exposures than its science's, no flats; 09-20 far from all).
ARCHIVE = {
    "2023-05-01": {},
    "2023-05-03": SCIENCE_ONLY,
    "2023-05-05": SCIENCE_ONLY,
    "2023-05-06": {},
    "2023-05-07": SCIENCE_ONLY,
    "2023-05-08": {"flats": ()},
    "2023-05-10": {"darks": ((5.0, 3), (180.0, 3)), "flats": ()},  # its own dark line
    "2023-09-20": SCIENCE_ONLY,
}


@pytest.fixture(scope="session")
def pristine_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("borrowing") / "raw"
    for night, changes in ARCHIVE.items():
        write_night(root, NightSpec(**{**FULL.__dict__, "night": night, **changes}))
    return root


@pytest.fixture
def raw(pristine_archive: Path, tmp_path: Path) -> Path:
    """A private copy of the archive (tests add, damage or remove nights)."""
    copy = tmp_path / "raw"
    shutil.copytree(pristine_archive, copy)
    return copy


def reduce(raw: Path, products: Path, night: str, params: dict | None = None) -> dict:
    """The DAG's stages for one night, as its tasks call them; the night's summary."""
    params = params or {}
    ready = pipeline.prepare_night(str(raw), str(products), night, params)
    for pair in ready["groups"]:
        pipeline.reduce_group(str(raw), str(products), night, pair["group"], params)
    return pipeline.publish_night(str(raw), str(products), night, params)


def manifest(products: Path, night: str) -> dict:
    return json.loads((products / night / "manifest.json").read_text())


def header(path: Path) -> fits.Header:
    return fits.getheader(path)


def masters_of(products: Path, night: str) -> dict:
    """Each borrowed master's night, from the group's record in the manifest."""
    group = manifest(products, night)["groups"][GROUP]
    return {kind: used["night"] for kind, used in group["masters"].items()}


def test_a_science_only_night_borrows_the_nearest_masters_and_passes_the_truth(raw, tmp_path):
    products = tmp_path / "products"
    summary = reduce(raw, products, "2023-05-05")
    assert summary["status"] == "success", summary["problems"]
    night = products / "2023-05-05"
    # The nearest calibrations are a night later (05-06, 1 d) rather than 05-01 (4 d before).
    assert masters_of(products, "2023-05-05") == {"dark": "2023-05-06", "flat": "2023-05-06"}
    check_stack(night, load_truth(raw / "_truth" / "2023-05-05"), GROUP, 3)
    products_of_night = [*sorted((night / "ar_cosmetic").glob("*_aux.fits")), night / "stacked"]
    for aux in [p for p in products_of_night if p.is_file()] + [night / f"stacked/{GROUP}.fits"]:
        cards = header(aux)
        assert cards["ARDKNGT"] == cards["ARFLNGT"] == "2023-05-06"
        assert cards["DARKIM"] == "2023-05-06/mdark_60000.fits"
        assert cards["FLATIM"] == "2023-05-06/mtrans_V.fits"
        assert cards["ARDARK"] == "mdark_60000.fits"  # 5.1.3's names still hold
        assert 0.7 < cards["ARDKDAYS"] < 1.2 and 0.7 < cards["ARFLDAYS"] < 1.2
    record = manifest(products, "2023-05-05")
    borrowed = record["calibrations"]["borrowed"]
    assert set(borrowed) == {"mdark_60000", "mtrans_V"}
    assert borrowed["mtrans_V"]["night"] == "2023-05-06"
    assert "cannot make" in borrowed["mtrans_V"]["why"]
    assert borrowed["mdark_60000"]["candidates"][0].startswith("2023-05-06")
    # The library holds them under the lending night, made as its own run makes them.
    library = products / "ar_calibrations" / "2023-05-06" / "ar_masters"
    assert (night / "ar_masters/mtrans_V.fits").read_bytes() == (
        library / "mtrans_V.fits"
    ).read_bytes()
    lender = products / "lender"
    assert reduce(raw, lender, "2023-05-06")["status"] == "success"
    assert (lender / "2023-05-06/ar_masters/mtrans_V.fits").read_bytes() == (
        library / "mtrans_V.fits"
    ).read_bytes()
    flat = header(library / "mtrans_V.fits")
    assert flat["QCUNDEF"] == 0 and 0.3 < flat["QCDISAGR"] < 1.5 and flat["QCNOISE"] > 0
    fitsverify(sorted(night.rglob("*.fits")) + sorted(library.glob("*.fits")))
    assert not list(products.rglob("*.part"))
    # A rerun has nothing to do: the cheap check (no frame read) says current.
    choice = pipeline.nights_to_reduce(str(raw), str(products), ["2023-05-05"], {})
    assert choice.todo == [] and choice.failed == {}
    before = {p: p.stat().st_mtime_ns for p in night.rglob("*.fits")}
    assert pipeline.prepare_night(str(raw), str(products), "2023-05-05", {})["current"]
    assert {p: p.stat().st_mtime_ns for p in night.rglob("*.fits")} == before


def test_a_night_without_flats_keeps_its_own_darks(raw, tmp_path):
    products = tmp_path / "products"
    assert reduce(raw, products, "2023-05-08")["status"] == "success"
    assert masters_of(products, "2023-05-08") == {"dark": "2023-05-08", "flat": "2023-05-06"}
    assert set(manifest(products, "2023-05-08")["calibrations"]["borrowed"]) == {"mtrans_V"}
    check_stack(products / "2023-05-08", load_truth(raw / "_truth" / "2023-05-08"), GROUP, 3)


def test_the_nearest_night_before_wins_over_a_farther_one_after(raw, tmp_path):
    products = tmp_path / "products"
    assert reduce(raw, products, "2023-05-03")["status"] == "success"
    assert masters_of(products, "2023-05-03") == {"dark": "2023-05-01", "flat": "2023-05-01"}


def test_a_master_listed_bad_is_never_used_and_the_next_one_is(raw, tmp_path):
    products = tmp_path / "products"
    products.mkdir()
    (products / "bad_masters.txt").write_text(
        "# dust on V after the filter wheel was serviced\n2023-05-06 mtrans_V.fits\nnonsense\n"
    )
    assert reduce(raw, products, "2023-05-05")["status"] == "success"
    assert masters_of(products, "2023-05-05") == {"dark": "2023-05-06", "flat": "2023-05-01"}
    borrowed = manifest(products, "2023-05-05")["calibrations"]["borrowed"]
    assert borrowed["mtrans_V"]["days"] > 3.5


def test_a_nights_own_master_listed_bad_is_replaced_by_a_neighbours(raw, tmp_path):
    """05-08's own 60 s darks are listed bad: its 60 s dark comes from another night (05-10's
    dark line, 1.8 d away, is nearer than 05-06's darks, 2.2 d), and the listing is part of
    the night key: removing it reduces the night again with its own darks."""
    products = tmp_path / "products"
    products.mkdir()
    listed = products / "bad_masters.txt"
    listed.write_text("2023-05-08 mdark_60000\n")
    assert reduce(raw, products, "2023-05-08")["status"] == "success"
    assert masters_of(products, "2023-05-08") == {"dark": "2023-05-10", "flat": "2023-05-06"}
    assert header(products / "2023-05-08/ar_masters/mdark_60000.fits")["ARNIGHT"] == "2023-05-10"
    listed.write_text("")
    assert pipeline.nights_to_reduce(str(raw), str(products), ["2023-05-08"], {}).todo == [
        "2023-05-08"
    ]
    assert reduce(raw, products, "2023-05-08")["status"] == "success"
    assert masters_of(products, "2023-05-08") == {"dark": "2023-05-08", "flat": "2023-05-06"}


def test_the_cli_borrows_from_an_s3_archive(raw, tmp_path, s3):
    client = s3.client()
    bucket = s3.new_bucket()
    for path in sorted((raw / "2023-05-06").rglob("*.fits")):
        client.upload_file(str(path), bucket, f"raw/{path.relative_to(raw).as_posix()}")
    night = tmp_path / "2023-05-05"
    shutil.copytree(raw / "2023-05-05", night)
    assert run_cli(night, "--setup").returncode == 0
    done = run_cli(night, "-i", "--calibrations", f"s3://{bucket}/raw")
    assert done.returncode == 0, done.stdout + done.stderr
    assert header(night / "stacked" / f"{GROUP}.fits")["ARDKNGT"] == "2023-05-06"
    check_stack(night, load_truth(raw / "_truth" / "2023-05-05"), GROUP, 3)


def test_a_night_of_another_camera_set_up_does_not_lend(raw, tmp_path):
    """05-06's calibration frames say another camera (INSTRUME): 05-05 takes its masters from
    the next nearest nights, and its manifest says why 05-06 was passed over. 05-01's frames
    give a CCD set-point, 05-05's do not: unknown matches anything."""
    for path in sorted((raw / "2023-05-06").glob("[DF]*/*.fits")):
        with fits.open(path, mode="update") as hdus:
            hdus[0].header["INSTRUME"] = "FLI PL230"
    for path in sorted((raw / "2023-05-01").glob("[DF]*/*.fits")):
        with fits.open(path, mode="update") as hdus:
            hdus[0].header["SET-TEMP"] = -80.0  # 05-05's science says nothing: any set-point
    products = tmp_path / "products"
    assert reduce(raw, products, "2023-05-05")["status"] == "success"
    # Darks from 05-08 (3 d after), flats from 05-01 (4 d before; 05-08 has none).
    assert masters_of(products, "2023-05-05") == {"dark": "2023-05-08", "flat": "2023-05-01"}
    searched = manifest(products, "2023-05-05")["calibrations"]["borrowed"]["mtrans_V"]
    assert searched["candidates"][0].startswith("2023-05-01")
    assert searched["refused"] == [
        "2023-05-06 mtrans_V: instrument 'FLI PL230' (not 'Andor iKon-L 936')"
    ]


def test_a_master_that_fails_its_qc_is_never_used(raw, tmp_path):
    """Two of 05-06's three V flats lit by a leak (a ramp across the field): no minority of
    outliers to leave out, so its master fails its QC (inputs that disagree), is not
    written, is marked bad in the library, and the next night's flat serves."""
    for number in (1, 2):
        lit = raw / "2023-05-06" / "FLAT" / f"flat-V-00{number}.fits"
        with fits.open(lit) as hdus:
            data = hdus[0].data.astype(np.float64)
            head = hdus[0].header.copy()
        ramp = np.linspace(0.6, 1.4, data.shape[1])[None, :] ** number
        fits.PrimaryHDU((data * ramp).clip(0, 65535).astype(np.uint16), head).writeto(
            lit, overwrite=True
        )
    products = tmp_path / "products"
    summary = reduce(raw, products, "2023-05-05")
    assert summary["status"] == "success", summary["problems"]
    assert masters_of(products, "2023-05-05") == {"dark": "2023-05-06", "flat": "2023-05-01"}
    library = products / "ar_calibrations" / "2023-05-06"
    assert not (library / "ar_masters" / "mtrans_V.fits").exists()
    entry = json.loads((library / "calibrations.json").read_text())
    assert any("fails its QC" in reason for reason in entry["bad"].values())
    # The lending night itself cannot use it either: its group fails with the figure.
    lender = reduce(raw, tmp_path / "lender", "2023-05-06")
    assert lender["status"] == "failed"
    assert any("Master flat V: fails its QC" in p for p in lender["problems"])


def test_nothing_within_the_windows_fails_fast_naming_what_and_where(raw, tmp_path):
    products = tmp_path / "products"
    ready = pipeline.prepare_night(str(raw), str(products), "2023-09-20", {})
    assert ready["groups"] == []  # no group task is mapped
    summary = pipeline.publish_night(str(raw), str(products), "2023-09-20", {})
    assert summary["status"] == "failed"
    assert (
        f"No master dark of 60 s on this night, and no usable one within ±90 d in {raw}."
        in (summary["problems"])
    )
    # Wider windows reach 05-10 (its dark line, 133 d) and 05-06 (flats): then it is reduced.
    wide = {"dark_window_days": 150, "flat_window_days": 150}
    assert reduce(raw, products, "2023-09-20", wide)["status"] == "success"
    assert masters_of(products, "2023-09-20") == {"dark": "2023-05-10", "flat": "2023-05-06"}
    borrowed = manifest(products, "2023-09-20")["calibrations"]["borrowed"]
    assert borrowed["mdark_60000"]["how"] == "interpolated"


def test_the_nights_own_dark_line_beats_a_neighbours_measured_dark(raw, tmp_path):
    """05-10 has darks of 5 s and 180 s, its science 60 s; 05-08 has darks of 60 s. Its own
    line wins (bench/dark_choice.py: 2.5 ADU RMS against 3.3 ADU, whatever the bias drift);
    without `interpolate` the neighbour's measured dark serves."""
    products = tmp_path / "products"
    assert reduce(raw, products, "2023-05-10")["status"] == "success"
    assert masters_of(products, "2023-05-10") == {"dark": "2023-05-10", "flat": "2023-05-06"}
    own = header(products / "2023-05-10" / "ar_masters" / "mdark_60000.fits")
    assert own["IMAGETYP"] == "Interpolated dark" and own["ARNIGHT"] == "2023-05-10"
    other = tmp_path / "other"
    assert reduce(raw, other, "2023-05-10", {"interpolate": False})["status"] == "success"
    assert masters_of(other, "2023-05-10") == {"dark": "2023-05-08", "flat": "2023-05-06"}


def test_scheduled_runs_borrow_only_from_earlier_nights(raw, tmp_path):
    products = tmp_path / "products"
    params = {"calibrations_past_only": True}
    assert reduce(raw, products, "2023-05-05", params)["status"] == "success"
    assert masters_of(products, "2023-05-05") == {"dark": "2023-05-01", "flat": "2023-05-01"}
    # A later reprocessing that may look both ways finds the nearer 05-06 and says so.
    assert pipeline.nights_to_reduce(str(raw), str(products), ["2023-05-05"], {}).todo == [
        "2023-05-05"
    ]
    assert reduce(raw, products, "2023-05-05")["status"] == "success"
    assert masters_of(products, "2023-05-05") == {"dark": "2023-05-06", "flat": "2023-05-06"}
    changed = manifest(products, "2023-05-05")["calibrations"]["changed"]
    assert "mtrans_V: 2023-05-01 -> 2023-05-06" in changed
    assert any("ar_cosmetic" in p for p in manifest(products, "2023-05-05")["recomputed"])


def test_a_nearer_night_that_arrives_later_changes_the_key(raw, tmp_path):
    products = tmp_path / "products"
    held = tmp_path / "held"
    shutil.move(raw / "2023-05-06", held)  # not yet in the archive
    assert reduce(raw, products, "2023-05-05")["status"] == "success"
    # Darks from 05-08 (3 d after), flats from 05-01 (05-08 has none).
    assert masters_of(products, "2023-05-05") == {"dark": "2023-05-08", "flat": "2023-05-01"}
    assert pipeline.nights_to_reduce(str(raw), str(products), ["2023-05-05"], {}).todo == []
    shutil.move(held, raw / "2023-05-06")
    assert pipeline.nights_to_reduce(str(raw), str(products), ["2023-05-05"], {}).todo == [
        "2023-05-05"
    ]
    assert reduce(raw, products, "2023-05-05")["status"] == "success"
    assert masters_of(products, "2023-05-05") == {"dark": "2023-05-06", "flat": "2023-05-06"}
    changed = manifest(products, "2023-05-05")["calibrations"]["changed"]
    assert changed == [
        "mdark_60000: 2023-05-08 -> 2023-05-06",
        "mtrans_V: 2023-05-01 -> 2023-05-06",
    ]
    # The aux frames and the stack were made again with the nearer masters.
    assert any(p.startswith("stacked/") for p in manifest(products, "2023-05-05")["recomputed"])


BORROW = """
import sys
from ar_tasks import pipeline
raw, products, night = sys.argv[1:]
ready = pipeline.prepare_night(raw, products, night, {})
for pair in ready["groups"]:
    pipeline.reduce_group(raw, products, night, pair["group"], {})
print(pipeline.publish_night(raw, products, night, {})["status"])
"""


def test_two_runs_that_need_the_same_master_at_once_get_the_same_bytes(raw, tmp_path):
    """05-05 and 05-07 both borrow 05-06's masters, in two processes started together (as
    two DAG runs with max_active_runs 2): both succeed, the library's masters are byte for
    byte what one run alone makes, and no partial file is left anywhere."""
    products = tmp_path / "products"
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", BORROW, str(raw), str(products), night],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for night in ("2023-05-05", "2023-05-07")
    ]
    for run in runs:
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0 and out.strip().endswith("success"), out + err
    alone = tmp_path / "alone"
    assert reduce(raw, alone, "2023-05-07")["status"] == "success"
    shared = products / "ar_calibrations" / "2023-05-06" / "ar_masters"
    solo = alone / "ar_calibrations" / "2023-05-06" / "ar_masters"
    names = sorted(p.name for p in solo.glob("*.fits"))
    assert "mtrans_V.fits" in names  # the master both nights borrow
    for name in names:
        assert (shared / name).read_bytes() == (solo / name).read_bytes(), name
    # 05-05's darks from 05-06 (1.2 d before); 05-07's from 05-08 (0.8 d after).
    assert masters_of(products, "2023-05-05") == {"dark": "2023-05-06", "flat": "2023-05-06"}
    assert masters_of(products, "2023-05-07") == {"dark": "2023-05-08", "flat": "2023-05-06"}
    assert not [p for p in products.rglob("*") if p.name.endswith(".part")]


def test_the_cli_borrows_from_the_archive_it_is_given(raw, tmp_path):
    night = tmp_path / "2023-05-05"
    shutil.copytree(raw / "2023-05-05", night)
    assert run_cli(night, "--setup").returncode == 0
    refused = run_cli(night, "-i")
    assert refused.returncode == 1  # no archive given: 5.1.3's messages
    assert "There are no dark files at all!" in refused.stderr
    done = run_cli(night, "-i", "--calibrations", str(raw))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mtrans_V: borrowed from 2023-05-06" in done.stdout
    stack = night / "stacked" / f"{GROUP}.fits"
    assert header(stack)["ARFLNGT"] == "2023-05-06"
    assert (night / "ar_calibrations" / "2023-05-06" / "calibrations.json").is_file()
    check_stack(night, load_truth(raw / "_truth" / "2023-05-05"), GROUP, 3)
    again = run_cli(night, "-i", "--calibrations", str(raw))
    assert again.returncode == 0
    assert json.loads((night / "manifest.json").read_text())["recomputed"] == []
    assert not list(raw.rglob("ar_*"))  # the archive is only read


def test_s3_roots(raw, tmp_path, s3):
    """Raw archive and products in S3: the library is in the products bucket, and a rerun
    is current without reading a frame."""
    client = s3.client()
    bucket = s3.new_bucket()
    for path in sorted(raw.rglob("*.fits")):
        relative = path.relative_to(raw).as_posix()
        if relative.split("/")[0] in ("2023-05-05", "2023-05-06"):
            client.upload_file(str(path), bucket, f"raw/{relative}")
    raw_url, products_url = f"s3://{bucket}/raw", f"s3://{bucket}/products"
    ready = pipeline.prepare_night(raw_url, products_url, "2023-05-05", {})
    for pair in ready["groups"]:
        pipeline.reduce_group(raw_url, products_url, "2023-05-05", pair["group"], {})
    summary = pipeline.publish_night(raw_url, products_url, "2023-05-05", {})
    assert summary["status"] == "success", summary["problems"]
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert "products/ar_calibrations/2023-05-06/calibrations.json" in keys
    assert "products/ar_calibrations/2023-05-06/ar_masters/mtrans_V.fits" in keys
    assert "products/2023-05-05/ar_masters/mtrans_V.fits" in keys
    body = client.get_object(Bucket=bucket, Key="products/2023-05-05/manifest.json")["Body"]
    record = json.loads(body.read())
    assert record["groups"][GROUP]["masters"]["flat"]["night"] == "2023-05-06"
    assert not [k for k in keys if k.startswith("raw/") and "ar_" in k]
    choice = pipeline.nights_to_reduce(raw_url, products_url, ["2023-05-05"], {})
    assert choice.todo == [] and choice.failed == {}
