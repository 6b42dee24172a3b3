"""Science-frame QC against truth: clouded, trailed, defocused and mis-pointed frames among good
dithered ones. The stack leaves the bad ones out (each named with the figure that failed),
keeps the mild ones, never takes a frame of another field as its reference, and reaches the
depth of the good frames alone; a group with no two frames alike fails, the night goes on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from astropy.io import fits
from conftest import fitsverify, run_cli
from truth_checks import check_stack

from ar_tasks import frame_qc, registration
from ar_tasks.synthetic import (
    NightSpec,
    ScienceGroup,
    Spoiler,
    load_truth,
    render_stars,
    write_night,
)

NIGHT = "2023-05-10"
GROUP = "M-67_V_60000"
SIZE = 512
# Frame number -> (spoiler fields, left out?). Strengths from harmless to ruinous.
SPOILED = {
    2: ({"transparency": 0.3}, True),  # thick cloud: 1.3 mag
    3: ({"trail_px": 8.0}, True),  # a tracking jump
    4: ({"defocus": 2.2}, True),  # out of focus
    # Another field, and a richer one: its stars are brighter than the group's (x 1.5), so by
    # quality alone it would be the reference.
    5: ({"field": "NGC 2420", "transparency": 1.5}, True),
    6: ({"transparency": 0.85}, False),  # thin cirrus: 0.18 mag
    7: ({"trail_px": 2.0}, False),  # slight trailing
    8: ({"defocus": 1.25}, False),  # a slight focus drift
}
GOOD = (1, 9, 10)
FRAMES = 10


def _path(number: int) -> str:
    return f"ORIGINAL/M67-V-060s-{number:03d}.fits"


def _aux(night, number: int):
    """The aux frame made from raw frame `number` (aux names carry the frame's id)."""
    for path in sorted((night / "ar_cosmetic").glob("*_aux.fits")):
        if fits.getheader(path)["ARRAW"] == _path(number):
            return path
    raise FileNotFoundError(_path(number))


def _spec(**changes) -> NightSpec:
    spoiled = tuple(Spoiler("M 67", "V", n, **fields) for n, (fields, _) in SPOILED.items())
    base = dict(
        size=SIZE,
        darks=((60.0, 5),),
        flats=(("V", 5.0, 5),),
        science=(ScienceGroup("M 67", "V", 60.0, FRAMES),),
        spoiled=spoiled,
    )
    base.update(changes)
    return NightSpec(**base)


@pytest.fixture(scope="module")
def spoiled_night(tmp_path_factory):
    root = tmp_path_factory.mktemp("spoiled")
    night = write_night(root / "raw", _spec())
    assert run_cli(night, "--setup").returncode == 0
    reduced = run_cli(night, "-i", "-t")
    assert reduced.returncode == 0, reduced.stdout + reduced.stderr
    return night, reduced, load_truth(root / "raw" / "_truth" / NIGHT)


def test_bad_frames_are_left_out_named_with_the_figure_that_failed(spoiled_night):
    night, reduced, _ = spoiled_night
    stack = json.loads((night / "manifest.json").read_text())["groups"][GROUP]["stack"]
    left_out = {entry["path"]: entry["reason"] for entry in stack["left_out"]}
    expected = {_path(n) for n, (_, out) in SPOILED.items() if out}
    assert set(left_out) == expected  # and the mild cases stay in
    assert left_out[_path(2)].startswith("transparency 0.3")  # 0.30 of the best, measured
    assert "ellipticity" in left_out[_path(3)] and "trailed" in left_out[_path(3)]
    assert left_out[_path(4)].startswith("FWHM")
    assert left_out[_path(5)].startswith("does not register")
    assert stack["combined"] == FRAMES - len(expected)
    for path, reason in left_out.items():
        assert f"W: {path}: {reason}; left out of the stack." in reduced.stdout
    # The frame of the other field had the best quality score, yet is not the reference.
    qc = {entry["path"]: entry for entry in stack["qc"]}
    assert max(qc.values(), key=lambda e: e["score"])["path"] == _path(5)
    assert stack["reference"] != _path(5) and qc[stack["reference"]]["reference"]
    # Each frame's figures, against truth: transparency within 5% of the cloud's, shifts
    # within 0.1 px of the dithers' differences for the frames that stack.
    truth = load_truth(night.parent / "_truth" / NIGHT)
    reference = truth.frame(stack["reference"])
    for number in (*GOOD, 6, 7, 8, 2):
        entry, frame = qc[_path(number)], truth.frame(_path(number))
        assert entry["transparency"] == pytest.approx(frame["transparency"], rel=0.05)
        dy, dx = entry["shift"]
        assert dy == pytest.approx(reference["dy"] - frame["dy"], abs=0.1)
        assert dx == pytest.approx(reference["dx"] - frame["dx"], abs=0.1)
        assert entry["matched"] >= registration.MIN_MATCHED_STARS
        if not entry["reference"]:
            assert entry["residual_px"] < registration.MAX_RESIDUAL_PX
    assert qc[_path(5)]["matched"] < registration.MIN_MATCHED_STARS
    good_fwhm = [qc[_path(n)]["fwhm_arcsec"] for n in GOOD]
    assert qc[_path(4)]["fwhm_arcsec"] > 1.5 * max(good_fwhm)
    assert (
        qc[_path(3)]["ellipticity"] > 0.4 and max(qc[_path(n)]["ellipticity"] for n in GOOD) < 0.05
    )
    assert 0.05 < qc[_path(7)]["ellipticity"] < 0.2  # slight trailing: seen, kept


def test_figures_are_in_the_aux_and_stack_headers(spoiled_night):
    night, _, _ = spoiled_night
    aux = fits.getheader(_aux(night, 3))
    for card in ("QCSKY", "QCSKYSIG", "QCNSTAR", "QCFWHM", "QCELLIP", "QCSATF"):
        assert card in aux
    assert aux["QCELLIP"] > 0.4 and aux["QCSATF"] < 0.001
    header = fits.getheader(night / "stacked" / f"{GROUP}.fits")
    assert header["ARNREJ"] == 4 and header["NCOMBINE"] == FRAMES - 4
    rejected = {header[f"ARREJ{i:03d}"] for i in range(1, 5)}
    assert rejected == {_path(n) for n in (2, 3, 4, 5)}
    inputs = {header[f"IMCMB{i:03d}"] for i in range(1, header["NCOMBINE"] + 1)}
    assert inputs.isdisjoint(rejected)
    history = "\n".join(str(h) for h in header["HISTORY"])
    assert f"left out: {_path(2)}: transparency" in history
    fitsverify(
        [night / "stacked" / f"{GROUP}.fits", *sorted((night / "ar_cosmetic").glob("*.fits"))]
    )


def _stack_sky_noise(data: np.ndarray) -> float:
    """Robust sky noise of the part of a stack every frame covers."""
    inner = data[40:-40, 40:-40]
    inner = inner[np.isfinite(inner)]
    return 1.4826 * float(np.median(np.abs(inner - np.median(inner))))


def test_the_stack_reaches_the_depth_of_the_good_frames_alone(spoiled_night):
    """The good frames (the clean ones and the mild cases) shifted by their true dithers and
    median-combined independently of the pipeline: the stack's sky noise is within 5% of that
    median's (measured: 0.004%)."""
    night, _, truth = spoiled_night
    stack = json.loads((night / "manifest.json").read_text())["groups"][GROUP]["stack"]
    reference = truth.frame(stack["reference"])
    kept = [n for n in range(1, FRAMES + 1) if not SPOILED.get(n, ({}, False))[1]]
    # The stack of what was kept passes the night's truth checks: shifts within 0.05 px,
    # flat sky to 1%, stars within 0.1 px of their places with their flux to 3%.
    check_stack(night, truth, GROUP, frames=len(kept))
    shifted = []
    for number in kept:
        frame = truth.frame(_path(number))
        aux = fits.getdata(_aux(night, number))
        aux = aux - np.nanmedian(aux)
        dy, dx = reference["dy"] - frame["dy"], reference["dx"] - frame["dx"]
        shifted.append(registration.shift_image(aux, dy, dx))
    independent = np.nanmedian(np.stack(shifted), axis=0)
    data = fits.getdata(night / "stacked" / f"{GROUP}.fits")
    ours, good_alone = _stack_sky_noise(data), _stack_sky_noise(independent)
    assert ours == pytest.approx(good_alone, rel=0.05)
    # A single good frame is about sqrt(frames) noisier: the stack did combine them.
    single = _stack_sky_noise(fits.getdata(_aux(night, 1)))
    assert ours < single / math.sqrt(len(kept)) * 1.5


def test_the_qc_figure_is_drawn_beside_the_manifest(spoiled_night):
    night, _, _ = spoiled_night
    manifest = json.loads((night / "manifest.json").read_text())
    assert manifest["qc_figure"] == "qc_frames.png"
    png = (night / "qc_frames.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    from PIL import Image

    with Image.open(night / "qc_frames.png") as image:
        assert image.size[0] >= 600 and image.size[1] >= 600


def test_a_rerun_reuses_the_stack_and_still_reports_its_qc(spoiled_night, tmp_path):
    night, _, _ = spoiled_night
    before = {p: p.stat().st_mtime_ns for p in (night / "stacked").iterdir()}
    before[night / "qc_frames.png"] = (night / "qc_frames.png").stat().st_mtime_ns
    again = run_cli(night, "-i", "-t")
    assert again.returncode == 0
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # nothing redrawn
    stack = json.loads((night / "manifest.json").read_text())["groups"][GROUP]["stack"]
    assert stack["reused"] and len(stack["left_out"]) == 4 and len(stack["qc"]) == FRAMES


def test_without_rejection_only_frames_that_do_not_register_are_left_out(tmp_path):
    night = write_night(tmp_path / "raw", _spec(science=(ScienceGroup("M 67", "V", 60.0, 6),)))
    assert run_cli(night, "--setup").returncode == 0
    reduced = run_cli(night, "-i", "--no-rejection")
    assert reduced.returncode == 0, reduced.stderr
    stack = json.loads((night / "manifest.json").read_text())["groups"][GROUP]["stack"]
    assert [entry["path"] for entry in stack["left_out"]] == [_path(5)]
    assert stack["combined"] == 5
    # Stricter thresholds from the command line leave the thin cirrus out too, and remake
    # the stack only: the aux frames do not depend on them.
    aux_times = {p: p.stat().st_mtime_ns for p in (night / "ar_cosmetic").glob("*_aux.fits")}
    strict = run_cli(night, "-i", "--min-transparency", "0.9")
    assert strict.returncode == 0
    assert all(p.stat().st_mtime_ns == t for p, t in aux_times.items())
    stack = json.loads((night / "manifest.json").read_text())["groups"][GROUP]["stack"]
    assert {entry["path"] for entry in stack["left_out"]} == {_path(n) for n in (2, 3, 4, 5, 6)}
    # The QC file of a group the night no longer has goes with its stack at the next setup.
    (night / "stacked" / "NGC-7000_V_60000.qc.json").write_text("{}")
    assert run_cli(night, "--setup").returncode == 0
    assert not (night / "stacked" / "NGC-7000_V_60000.qc.json").exists()
    assert (night / "stacked" / f"{GROUP}.qc.json").is_file()


def test_a_group_with_no_two_frames_alike_fails_and_the_night_goes_on(tmp_path):
    """Three frames of an 'M 67' group, each pointed at a different field: no reference can be
    trusted, so the group fails with the reason; the R group is reduced."""
    spoiled = (
        Spoiler("M 67", "V", 2, field="NGC 2420"),
        Spoiler("M 67", "V", 3, field="NGC 188"),
    )
    spec = _spec(
        flats=(("V", 5.0, 5), ("R", 5.0, 5)),
        science=(ScienceGroup("M 67", "V", 60.0, 3), ScienceGroup("M 67", "R", 60.0, 3)),
        spoiled=spoiled,
    )
    night = write_night(tmp_path / "raw", spec)
    assert run_cli(night, "--setup").returncode == 0
    reduced = run_cli(night, "-i")
    assert reduced.returncode == 1
    assert (
        f"E: {GROUP}: no two of its 3 usable frames show the same stars (each frame matches none "
        "of the others): the frames cannot be aligned and are never stacked unaligned."
    ) in reduced.stderr
    assert "Traceback" not in reduced.stderr + reduced.stdout
    assert not (night / "stacked" / f"{GROUP}.fits").exists()
    assert (night / "stacked" / "M-67_R_60000.fits").is_file()
    manifest = json.loads((night / "manifest.json").read_text())
    assert manifest["status"] != "success"


# --------------------------------------------------------------------------------------------
# The figures on arrays


def _frame(fwhm: float = 3.5, trail: float = 0.0, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    size = 512
    count = 60  # a T120 field's density: ~250 stars per 1024^2 frame
    x, y = rng.uniform(20, size - 20, count), rng.uniform(20, size - 20, count)
    flux = 10 ** rng.uniform(3, 5.5, count)
    steps = max(1, math.ceil(2 * trail) + 1)
    along = np.linspace(-trail / 2, trail / 2, steps) if steps > 1 else [0.0]
    image = sum(render_stars(x + a, y, flux / steps, size, fwhm) for a in along)
    return image + 300 + rng.normal(0, 12, (size, size)).astype(np.float32)


def test_measure_against_the_rendered_truth():
    sharp, blurred = frame_qc.measure(_frame(), 6e4, 0.0), frame_qc.measure(_frame(7.0), 6e4, 0.0)
    # The median sky, lifted by the stars' wings by less than 0.2 sigma of its noise.
    assert sharp.sky == pytest.approx(300, abs=0.2 * 12) and sharp.noise == pytest.approx(
        12, rel=0.05
    )
    # Adaptive moments of a Moffat (beta 3) star: a Gaussian-equivalent FWHM 10-20% above the
    # Moffat's own, the same for every frame, so ratios hold.
    assert 1.0 < sharp.fwhm / 3.5 < 1.25 and 1.6 < blurred.fwhm / sharp.fwhm < 2.1
    assert sharp.ellipticity < 0.03
    trailed = frame_qc.measure(_frame(trail=8.0), 6e4, 0.0)
    assert trailed.ellipticity > 0.4
    # Cosmic rays and hot pixels are not stars.
    blank = np.full((256, 256), 300.0, dtype=np.float32)
    blank += np.random.default_rng(2).normal(0, 12, blank.shape).astype(np.float32)
    blank[100, 100] = blank[50, 60] = blank[200, 31] = 5000.0
    assert frame_qc.measure(blank, 6e4, 0.0).stars == 0


def test_judge_is_relative_with_floors():
    def figures(fwhm: float, ellipticity: float = 0.02, saturated: float = 0.0):
        return frame_qc.FrameFigures(300.0, 12.0, 100, fwhm, ellipticity, saturated)

    scale = 0.77
    thresholds = frame_qc.Thresholds()
    # Sharp seeing: 1.5" best, a 2.4" frame (1.6x) is still under the 2.5" floor: kept.
    group = [figures(1.5 / scale), figures(2.4 / scale)]
    assert frame_qc.judge(group, [1.0, 1.0], thresholds, scale) == [[], []]
    # Poor seeing all night: 4" frames, one at 5" (1.25x): kept; one at 6.5": left out.
    group = [figures(4 / scale), figures(5 / scale), figures(6.5 / scale)]
    verdict = frame_qc.judge(group, [1.0, 1.0, 1.0], thresholds, scale)
    assert verdict[:2] == [[], []] and verdict[2][0].startswith('FWHM 6.50" > 6.00"')
    # A group trailed alike keeps its frames; one trailed more than the rest goes.
    group = [figures(3.5, 0.3), figures(3.5, 0.35), figures(3.5, 0.5)]
    verdict = frame_qc.judge(group, [1.0, 1.0, 1.0], thresholds, scale)
    assert verdict[:2] == [[], []] and verdict[2][0].startswith("ellipticity 0.50 > 0.40")
    # Saturation is absolute (BANZAI's 5%); transparency relative; rejection can be off.
    group = [figures(3.5), figures(3.5, saturated=0.08)]
    assert frame_qc.judge(group, [1.0, 0.5], thresholds, scale)[1] == [
        "8.0% of pixels saturated (> 5%)",
        "transparency 0.50 of the group's best < 0.6 (0.75 mag of cloud)",
    ]
    off = frame_qc.Thresholds(reject=False)
    assert frame_qc.judge(group, [1.0, 0.5], off, scale) == [[], []]
    with pytest.raises(ValueError, match="max_fwhm_ratio"):
        frame_qc.Thresholds(max_fwhm_ratio=0.5)


def test_a_shift_is_checked_against_both_frames_stars():
    image = _frame()
    moved = np.roll(np.roll(image, 7, axis=0), -4, axis=1)  # out[y, x] = image[y - 7, x + 4]
    stars = [registration.star_list(registration.detection_image(i), i) for i in (image, moved)]
    good = registration.match_stars(
        stars[0], stars[1], registration.Shift(-7.0, 4.0, 10.0), image.shape
    )
    assert (
        good.problem is None
        and good.residual < 0.05
        and good.flux_ratio == pytest.approx(1, abs=0.01)
    )
    wrong = registration.match_stars(
        stars[0], stars[1], registration.Shift(-70.0, 40.0, 10.0), image.shape
    )
    assert wrong.problem is not None and wrong.problem.startswith("does not register")
    other = _frame(seed=5)
    elsewhere = registration.star_list(registration.detection_image(other), other)
    assert registration.match_stars(
        stars[0], elsewhere, registration.Shift(0, 0, 1), image.shape
    ).problem


def test_the_cosmetic_path_never_imports_matplotlib(tmp_path):
    """Without -t/-r no figure is drawn and matplotlib stays out of the run (0.5 s of imports)."""
    import subprocess
    import sys

    night = write_night(tmp_path / "raw", _spec(science=(ScienceGroup("M 67", "V", 60.0, 3),)))
    assert run_cli(night, "--setup").returncode == 0
    code = (
        "import atexit, sys\n"
        "from ar_tasks.cli import main\n"
        "atexit.register(lambda: print('matplotlib imported:', 'matplotlib' in sys.modules))\n"
        "sys.argv = ['astro_reduce', '-i']\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=night, capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "matplotlib imported: False"
    assert (night / "stacked" / f"{GROUP}.fits").is_file() and not (
        night / "qc_frames.png"
    ).exists()


def test_the_thresholds_defaults_are_the_same_for_the_cli_and_the_library():
    """The CLI spells its defaults out (its module must not import numpy for --setup)."""
    from ar_tasks.cli import cli

    defaults = {param.name: param.default for param in cli.params}
    library = frame_qc.Thresholds()
    assert library.reject  # and --no-rejection is a flag: rejection is on by default
    for name in ("max_fwhm_ratio", "max_ellipticity", "min_transparency"):
        assert defaults[name] == getattr(library, name), name
