"""Astrometric reduction end to end through the `astro_reduce` command, scored against truth.

The solvers get the calibrated images, the header pointing (off by up to 2') and a star
catalogue; the true WCS (rotated and scaled away from the nominal one) is only used to score.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from conftest import ASTRO_REDUCE, NIGHT, fitsverify, run_cli
from truth_checks import wcs_error_arcsec

from ar_tasks.refcat import Catalogue, build_index, write_star_table

MAX_RMS_ARCSEC = 0.1  # a full solve; SCAMP and solve-field reach 0.004-0.025" here
MAX_DERIVED_RMS_ARCSEC = 0.02  # a derived WCS, refined on its own stars: no worse than SCAMP's
IMAGES_PER_GROUP = 4  # three aux frames and the stack
GROUPS = ("M-67_V_60000", "NGC-2420_R_120000")


def _reduced(night: Path) -> list[Path]:
    return sorted((night / "reduced").glob("*.fits"))


def _check_solutions(night: Path, truth, solver: str, each: bool = False) -> list[float]:
    """Every image solved within MAX_RMS_ARCSEC of the truth: each group's stack by a full
    solve, its frames derived from it and checked (or every image on its own, `each`)."""
    reduced = _reduced(night)
    assert len(reduced) == IMAGES_PER_GROUP * len(GROUPS)
    errors = []
    for path in reduced:
        header = fits.getheader(path)
        assert header["ASTSOLVR"] == solver
        derived = "_aux" in path.name and not each
        assert header["ASTMETHD"] == ("derived" if derived else "full"), path.name
        if derived:
            assert header["ASTANCHR"] == path.name.rsplit("_", 2)[0] + ".fits"  # its stack
            assert header["ASTNREF"] >= 20 and header["ASTSIGMA"] < 0.1, path.name
            assert abs(header["ASTCORRX"]) < 0.2 and abs(header["ASTCORRY"]) < 0.2
        rms, worst = wcs_error_arcsec(path, truth)
        # Checked against a catalogue (or the index), a derived WCS is refined on its own; against
        # the anchor's stars only (-no: nothing local), it is as good as the anchor's solve.
        referenced = derived and not header["ASTCHKRF"].startswith("stars of")
        bound = MAX_DERIVED_RMS_ARCSEC if referenced else MAX_RMS_ARCSEC
        assert rms < bound and worst < 3 * bound, (path.name, header["ASTMETHD"], rms, worst)
        errors.append(rms)
        # Pixels are the calibrated image's, untouched.
        source = night / ("stacked" if "_aux" not in path.name else "ar_cosmetic") / path.name
        assert np.array_equal(fits.getdata(path), fits.getdata(source), equal_nan=True)
    fitsverify(reduced)
    return errors


def ldac_verify(paths: list[Path]) -> None:
    """fitsverify on SExtractor LDAC catalogues: no error, and no warning but the one the LDAC
    format itself requires (its column is named 'Field Header Card', with spaces)."""
    for path in paths:
        out = subprocess.run(["fitsverify", str(path)], capture_output=True, text=True).stdout
        assert "0 error(s)" in out, out
        warnings = [line for line in out.splitlines() if line.startswith("*** Warning")]
        assert all('"Field Header Card"' in w for w in warnings), out


def test_astromatic_chain_solves_every_frame_and_stack(astro_night, astro_archive):
    """--solve-each: every image through the whole chain, each with its own catalogues."""
    args = ["-m", "--astrometryonly", "--solve-each", "--refcat", str(astro_archive.refcat)]
    result = run_cli(astro_night, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    errors = _check_solutions(astro_night, astro_archive.truth, "SCAMP", each=True)
    print(f"SCAMP RMS vs truth: {min(errors):.4f}-{max(errors):.4f} arcsec")
    stems = [p.stem for p in _reduced(astro_night)]
    for stem in stems:
        assert (astro_night / "PSFRES" / f"{stem}.psf").is_file()
        assert (astro_night / "SCAMPRES" / f"{stem}.head").is_file()
        assert (astro_night / "SCAMPRES" / f"{stem}.xml").is_file()
        catalogue = astro_night / "SEXRES" / f"{stem}.ldac"
        # --sexagain: the catalogue kept is the one measured with the PSF model.
        assert "FLUX_PSF" in fits.getdata(catalogue, 2).columns.names
    fitsverify(sorted((astro_night / "PSFRES").glob("*.psf")))
    ldac_verify(sorted((astro_night / "SEXRES").glob("*.ldac")))
    assert not list(astro_night.glob(".ar_astro_*")), "scratch folders left behind"

    # A rerun reuses every solution (provenance keys), byte for byte.
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in _reduced(astro_night)}
    again = run_cli(astro_night, *args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("4 reused") == 2, again.stdout
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in _reduced(astro_night)} == before


def test_astromatic_chain_solves_each_group_once(astro_night, astro_archive):
    """The default: each group's stack through the whole chain, its frames derived from it by
    the registration shifts and checked on their own stars against the catalogue."""
    args = ["-m", "--astrometryonly", "--refcat", str(astro_archive.refcat)]
    result = run_cli(astro_night, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    errors = _check_solutions(astro_night, astro_archive.truth, "SCAMP")
    print(f"SCAMP once per group, RMS vs truth: {min(errors):.4f}-{max(errors):.4f} arcsec")
    for group in GROUPS:  # the anchor's own tool outputs; none for the derived frames
        assert (astro_night / "PSFRES" / f"{group}.psf").is_file()
        assert (astro_night / "SCAMPRES" / f"{group}.head").is_file()
        assert "FLUX_PSF" in fits.getdata(astro_night / "SEXRES" / f"{group}.ldac", 2).columns
    assert len(list((astro_night / "SCAMPRES").glob("*.head"))) == len(GROUPS)
    manifest = json.loads((astro_night / "manifest.json").read_text())
    derived = [
        image
        for group in manifest["astrometry"].values()
        for image in group["images"]
        if image.get("method") == "derived"
    ]
    assert len(derived) == (IMAGES_PER_GROUP - 1) * len(GROUPS)
    for image in derived:
        assert image["check"]["reference"] == "catalogue"
        assert image["check"]["matched"] >= 20 and image["check"]["rms_arcsec"] < 0.1

    # A rerun reuses every solution, derived ones included, byte for byte.
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in _reduced(astro_night)}
    again = run_cli(astro_night, *args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("4 reused") == 2, again.stdout
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in _reduced(astro_night)} == before


def test_a_wrong_registration_shift_is_caught_by_the_check(astro_night, astro_archive):
    """A frame whose recorded shift is 3 px off fails its check against the catalogue and is
    solved on its own, with the reason recorded; the others stay derived."""
    qc_file = astro_night / "stacked" / f"{GROUPS[0]}.qc.json"
    kept = json.loads(qc_file.read_text())
    entry = next(e for e in kept["record"]["qc"] if not e["reference"] and e["shift"])
    entry["shift"] = [entry["shift"][0] + 3.0, entry["shift"][1]]
    kept["record"]["shifts"][entry["path"]] = entry["shift"]
    qc_file.write_text(json.dumps(kept))
    result = run_cli(
        astro_night, "--scamp", "--astrometryonly", "--refcat", str(astro_archive.refcat)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    manifest = json.loads((astro_night / "manifest.json").read_text())
    images = manifest["astrometry"][GROUPS[0]]["images"]
    caught = [i for i in images if i.get("check_failed")]
    assert len(caught) == 1 and caught[0]["method"] == "full", images
    assert "matched" in caught[0]["check_failed"] or "moved" in caught[0]["check_failed"]
    assert sum(i.get("method") == "derived" for i in images) == IMAGES_PER_GROUP - 2
    _check_solutions_loose(astro_night, astro_archive.truth)


def _check_solutions_loose(night: Path, truth) -> None:
    for path in _reduced(night):
        rms, worst = wcs_error_arcsec(path, truth)
        assert rms < MAX_RMS_ARCSEC and worst < 3 * MAX_RMS_ARCSEC, (path.name, rms, worst)


def test_astrometry_net_local_solves_every_frame_and_stack(astro_night, astro_archive):
    result = run_cli(
        astro_night, "-nl", "--astrometryonly", "--anet-index", str(astro_archive.index)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    errors = _check_solutions(astro_night, astro_archive.truth, "astrometry.net local")
    print(f"astrometry.net local RMS vs truth: {min(errors):.4f}-{max(errors):.4f} arcsec")
    assert not (astro_night / "PSFRES").exists()  # -nl alone runs no PSFEx
    assert not (astro_night / "SCAMPRES").exists()


def test_full_reduction_with_scamp_in_one_command(astro_archive, tmp_path):
    """The whole reduction from raw frames, astrometry included, as an observer runs it."""
    night = tmp_path / NIGHT
    shutil.copytree(astro_archive.night_dir, night)
    assert run_cli(night, "--setup").returncode == 0
    result = run_cli(night, "-i", "--scamp", "--refcat", str(astro_archive.refcat))
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(_reduced(night)) == IMAGES_PER_GROUP * len(GROUPS)
    assert not (night / "PSFRES").exists()  # --scamp implies --sex only


def _shifted(catalogue: Catalogue, onto: Catalogue) -> Catalogue:
    """Another field's stars moved onto this field: the right density, the wrong sky."""
    dra = np.median(onto.ra) - np.median(catalogue.ra)
    ddec = np.median(onto.dec) - np.median(catalogue.dec)
    return Catalogue(catalogue.ra + dra, catalogue.dec + ddec, catalogue.mag, "shifted")


def test_wrong_field_catalogue_fails_cleanly_and_keeps_earlier_results(
    astro_night, astro_archive, tmp_path
):
    m67, ngc = astro_archive.catalogues["M 67"], astro_archive.catalogues["NGC 2420"]
    only_m67 = write_star_table(tmp_path / "m67.fits", m67)
    result = run_cli(astro_night, "--scamp", "--astrometryonly", "--refcat", str(only_m67))
    assert result.returncode == 1
    reduced = [p.name for p in _reduced(astro_night)]
    assert len(reduced) == IMAGES_PER_GROUP and all(n.startswith("M-67") for n in reduced)
    # NGC 2420 frames: no reference star near the pointing, refused before SCAMP starts.
    assert result.stderr.count("astrometry failed") >= IMAGES_PER_GROUP
    assert "NGC-2420_R_120000.fits: astrometry failed" in result.stderr
    assert "reference star(s) within" in result.stderr
    # Refused before any tool ran: no catalogue of NGC 2420, and its frames not even tried.
    assert not list((astro_night / "SEXRES").glob("NGC*.ldac"))
    assert "not tried: the group's best image did not solve" in result.stderr

    # Unrelated stars at the right place: SCAMP runs, writes a .head anyway, and is judged.
    decoy = write_star_table(tmp_path / "decoy.fits", _shifted(ngc, m67))
    started = time.monotonic()
    again = run_cli(
        astro_night, "--scamp", "--astrometryonly", "--overwrite", "--refcat", str(decoy)
    )
    assert again.returncode == 1
    assert time.monotonic() - started < 240  # bounded: every SCAMP call has a timeout
    assert "SCAMP did not match" in again.stderr, again.stderr
    for path in _reduced(astro_night):  # the earlier solutions are kept, untouched
        assert wcs_error_arcsec(path, astro_archive.truth)[0] < MAX_RMS_ARCSEC
    heads = list((astro_night / "SCAMPRES").glob("NGC*.head"))
    assert heads == [], "a failed SCAMP solution must not be kept as a .head"


def test_unsolvable_frame_with_astrometry_net_is_reported_within_the_cpu_limit(
    astro_night, astro_archive, tmp_path
):
    m67, ngc = astro_archive.catalogues["M 67"], astro_archive.catalogues["NGC 2420"]
    wrong = build_index(_shifted(ngc, m67), tmp_path / "wrong_index")
    started = time.monotonic()
    result = run_cli(
        astro_night, "-nl", "--astrometryonly", "--anet-index", str(wrong), "--cpulimit", "5"
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert "M-67_V_60000.fits: astrometry failed: astrometry.net found no solution" in (
        result.stderr
    )
    assert not [p for p in _reduced(astro_night) if p.name.startswith("M-67")]
    assert elapsed < 120, elapsed


def test_an_index_of_another_field_is_refused_before_solve_field_runs(
    astro_night, astro_archive, tmp_path
):
    """An index that holds no star where M 67 is: refused from the index files' own star
    lists, before SExtractor or solve-field spend anything; NGC 2420 is still solved."""
    ngc = build_index(astro_archive.catalogues["NGC 2420"], tmp_path / "ngc_index")
    result = run_cli(astro_night, "-nl", "--astrometryonly", "--anet-index", str(ngc))
    assert result.returncode == 1
    assert "M-67_V_60000.fits: astrometry failed: no astrometry.net index in" in result.stderr
    assert "wrong index folder?" in result.stderr
    assert not list((astro_night / "SEXRES").glob("M-67*.ldac"))
    solved = sorted(p.name for p in _reduced(astro_night))
    assert len(solved) == IMAGES_PER_GROUP and all(n.startswith("NGC-2420") for n in solved)


def test_missing_program_names_its_debian_package(astro_night, tmp_path):
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    result = _run_with_env(astro_night, {"PATH": str(empty)}, "--sex", "--astrometryonly")
    assert result.returncode == 1
    assert "source-extractor or sex not found on PATH" in result.stderr
    assert "apt-get install source-extractor" in result.stderr


@pytest.mark.parametrize("forceimg", [False, True], ids=["source-list", "image"])
def test_astrometry_net_online_through_a_local_nova_standin(astro_night, astro_archive, forceimg):
    from nova_standin import NovaStandin

    config = astro_archive.index / "standin.cfg"
    config.write_text(f"inparallel\ncpulimit 30\nadd_path {astro_archive.index}\nautoindex\n")
    with NovaStandin(config) as standin:
        env = {
            "AR_ASTROMETRY_NET_URL": standin.url,
            "AR_ASTROMETRY_NET_API_KEY": "test-key",
        }
        args = ["-no", "--astrometryonly", *(["--forceimg"] if forceimg else [])]
        result = _run_with_env(astro_night, env, *args)
        assert result.returncode == 0, result.stdout + result.stderr
        paths = [path for _, path in standin.requests]
    upload = "/api/upload" if forceimg else "/api/url_upload"
    assert paths.count(upload) == len(GROUPS)  # the stacks; their frames are derived
    errors = _check_solutions(astro_night, astro_archive.truth, "astrometry.net online")
    print(f"astrometry.net online ({upload}) RMS: {min(errors):.4f}-{max(errors):.4f} arcsec")
    assert "test-key" not in (astro_night / "astro_reduce.log").read_text()


def _run_with_env(night: Path, env: dict[str, str], *args: str):
    """The installed command in a night folder, with these environment variables set."""
    return subprocess.run(
        [str(ASTRO_REDUCE), *args],
        cwd=night,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_scamp_with_per_field_catalogues_fetched_once(astro_night, astro_archive, tmp_path):
    """--refcat-cache: each field's Gaia stars are fetched once (here from a local VizieR
    serving the synthetic fields) and every later run is offline."""
    from vizier_standin import FakeVizier, gaia_table

    stars = astro_archive.everything
    cache = tmp_path / "refcat_cache"
    vizier = FakeVizier(gaia_table(stars.ra, stars.dec, stars.mag))
    try:
        env = {"AR_VIZIER_SERVER": vizier.server}
        args = ["--scamp", "--astrometryonly", "--refcat-cache", str(cache), "--jobs", "1"]
        result = _run_with_env(astro_night, env, *args)
        assert result.returncode == 0, result.stdout + result.stderr
        assert len(vizier.requests) == 2  # one per field, shared by its frames and stack
        cached = sorted(p.name for p in cache.glob("*.fits"))
        assert len(cached) == 2 and all(name.startswith("gaiadr3_") for name in cached)
        _check_solutions(astro_night, astro_archive.truth, "SCAMP")
        again = _run_with_env(astro_night, env, *args, "--overwrite")
        assert again.returncode == 0, again.stdout + again.stderr
        assert len(vizier.requests) == 2  # reprocessing is offline
    finally:
        vizier.close()
