"""The Astromatic chain on one image: SExtractor -> PSFEx -> SExtractor with the PSF -> SCAMP.

Each function runs one program in a private work folder with the T120 configuration and
returns the file it made. SCAMP writes a .head even when matching failed, so its success is
judged from scamp.xml (contrasts, matched references, scatter), never from the file existing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import externals
from .astro_config import config_file
from .lazy_import import fits

MIN_CONTRAST = 10.0  # 5.1.3's gate on XY_Contrast; good solves give 20-80, failures 0-2
MIN_MATCHED_REFERENCES = 10
MAX_REFERENCE_SIGMA_ARCSEC = 0.5
SATURATION_FRACTION = 0.9  # of the raw SATURATE: calibrated values are flat-divided


@dataclass(frozen=True)
class ScampVerdict:
    """SCAMP's own figures for one field, and whether they show a real match."""

    solved: bool
    reason: str
    stats: dict[str, Any]


def saturation_level(header: fits.Header) -> float:
    """SExtractor's saturation level for a calibrated frame or stack, in its ADU."""
    return SATURATION_FRACTION * float(header.get("SATURATE", 64000.0))


def extract(
    image: Path,
    catalogue: Path,
    work: Path,
    saturation: float,
    psf: Path | None = None,
    config_dir: str | None = None,
    timeout: float = externals.DEFAULT_TIMEOUT_S,
) -> Path:
    """Run SExtractor on `image` into the FITS-LDAC `catalogue` (with the PSF: second pass)."""
    params = "t120_psf.param" if psf is not None else "t120.param"
    args = [
        str(image),
        "-c", str(config_file("t120.sex", config_dir)),
        "-PARAMETERS_NAME", str(config_file(params, config_dir)),
        "-FILTER_NAME", str(config_file("t120.conv", config_dir)),
        "-CATALOG_NAME", str(catalogue),
        "-SATUR_LEVEL", f"{saturation:.1f}",
    ]  # fmt: skip
    if psf is not None:
        args += ["-PSF_NAME", str(psf)]
    externals.run_program("sextractor", args, work, work / "tools.log", timeout)
    if not catalogue.is_file():
        raise externals.ToolError(f"SExtractor wrote no catalogue for {image.name}")
    return catalogue


def model_psf(
    catalogue: Path,
    work: Path,
    config_dir: str | None = None,
    timeout: float = externals.DEFAULT_TIMEOUT_S,
) -> Path:
    """Run PSFEx on a first-pass catalogue; returns the .psf file beside it."""
    args = [
        str(catalogue),
        "-c", str(config_file("t120.psfex", config_dir)),
        "-PSF_DIR", str(work),
        "-XML_NAME", str(work / "psfex.xml"),
    ]  # fmt: skip
    externals.run_program("psfex", args, work, work / "tools.log", timeout)
    psf = work / (catalogue.stem + ".psf")
    if not psf.is_file():
        raise externals.ToolError(f"PSFEx could not model the PSF of {catalogue.stem}")
    return psf


def run_scamp(
    catalogue: Path,
    work: Path,
    reference: Path | str,
    config_dir: str | None = None,
    timeout: float = externals.DEFAULT_TIMEOUT_S,
) -> tuple[Path, Path]:
    """Run SCAMP on one catalogue whose <stem>.ahead holds the initial WCS.

    `reference` is a local LDAC reference file, or the name of an online catalogue that SCAMP
    queries itself (e.g. GAIA-EDR3). Returns (<stem>.head, <stem>.xml: its scamp.xml).
    """
    xml = catalogue.with_suffix(".xml")
    args = [str(catalogue), "-c", str(config_file("t120.scamp", config_dir)), "-XML_NAME", str(xml)]
    if isinstance(reference, Path):
        args += ["-ASTREF_CATALOG", "FILE", "-ASTREFCAT_NAME", str(reference)]
    else:
        args += ["-ASTREF_CATALOG", reference]
    externals.run_program("scamp", args, work, work / "tools.log", timeout, check=False)
    head = catalogue.with_suffix(".head")
    if not xml.is_file():
        raise externals.ToolError(f"SCAMP wrote no report for {catalogue.stem}")
    return head, xml


def judge_scamp(xml: Path) -> ScampVerdict:
    """Read scamp.xml and decide whether the field was really matched."""
    from astropy.io.votable import parse  # only needed here, and slow to import

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tables = {t.name: t.array for t in parse(str(xml)).iter_tables()}
        except Exception as exc:  # a truncated or malformed report is a failure, not a crash
            return ScampVerdict(False, f"unreadable SCAMP report ({exc})", {})
    fields, groups = tables.get("Fields"), tables.get("FGroups")
    if fields is None or groups is None or len(fields) == 0 or len(groups) == 0:
        return ScampVerdict(False, "SCAMP report without field statistics", {})
    sigma = [float(v) for v in groups["AstromSigma_Reference"][0]]
    stats = {
        "xy_contrast": round(float(fields["XY_Contrast"][0]), 2),
        "as_contrast": round(float(fields["AS_Contrast"][0]), 2),
        "detections": int(fields["NDetect"][0]),
        "matched_references": int(groups["AstromNDets_Reference"][0]),
        "sigma_arcsec": [round(v, 4) for v in sigma],
    }
    problems = []
    if not stats["xy_contrast"] >= MIN_CONTRAST:
        problems.append(f"XY contrast {stats['xy_contrast']} < {MIN_CONTRAST}")
    if not stats["as_contrast"] >= MIN_CONTRAST / 2:
        problems.append(f"angle/scale contrast {stats['as_contrast']} < {MIN_CONTRAST / 2}")
    if stats["matched_references"] < MIN_MATCHED_REFERENCES:
        problems.append(f"{stats['matched_references']} matched references")
    if not max(sigma) < MAX_REFERENCE_SIGMA_ARCSEC:
        problems.append(f'scatter {max(sigma):.2f}" against the references')
    if problems:
        return ScampVerdict(False, "SCAMP did not match: " + ", ".join(problems), stats)
    return ScampVerdict(True, "", stats)
