"""astrometry.net on this machine: solve-field against a configured index folder.

solve-field exits 0 whether it solved or not, so success is read from its `.solved` file. Its
configuration is written per run from the shipped template plus `add_path <index folder>`, so
only the chosen indexes are searched (the system /etc/astrometry.cfg loads every installed
index). The CPU limit bounds an unsolvable frame; a wall-clock timeout bounds everything else.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import externals
from .astro_config import config_file
from .lazy_import import fits

INDEX_ENV = "AR_ANET_INDEX_DIR"
SYSTEM_INDEX_DIR = "/usr/share/astrometry"
SCALE_TOLERANCE = 0.1  # the plate scale is known to 10 % (both astrometry.net routes)
HINT_RADIUS_DEG = 0.5  # search radius around the header pointing


@dataclass(frozen=True)
class AnetSolution:
    """A solve-field outcome: the WCS header when solved, and its match statistics."""

    header: fits.Header | None
    reason: str
    stats: dict[str, Any]


def index_dir(chosen: str | os.PathLike[str] | None = None) -> Path:
    """The index folder: the option, else AR_ANET_INDEX_DIR, else Debian's folder."""
    folder = Path(chosen or os.environ.get(INDEX_ENV) or SYSTEM_INDEX_DIR).expanduser()
    if not folder.is_dir() or not any(folder.glob("index-*.fits")):
        raise externals.ToolError(
            f"no astrometry.net index files (index-*.fits) in {folder}: give a folder with "
            f"--anet-index or {INDEX_ENV}, or build one with "
            "`python -m ar_tasks.refcat CATALOGUE DIR`"
        )
    return folder.resolve()


def write_backend_config(
    work: Path, indexes: Path, config_dir: str | None, cpulimit: float
) -> Path:
    """astrometry.cfg for this run: the template plus this run's index folder and CPU limit."""
    template = config_file("astrometry.cfg", config_dir).read_text()
    replaced = ("cpulimit", "add_path")
    lines = [line for line in template.splitlines() if not line.startswith(replaced)]
    lines += [f"cpulimit {int(cpulimit)}", f"add_path {indexes}"]
    path = work / "astrometry.cfg"
    path.write_text("\n".join(lines) + "\n")
    return path


def solve_field(
    source: Path,
    work: Path,
    name: str,
    shape: tuple[int, int],
    scale_arcsec: float,
    pointing: tuple[float, float] | None,
    indexes: Path,
    config_dir: str | None = None,
    cpulimit: float = 30.0,
    timeout: float | None = None,
) -> AnetSolution:
    """Solve an image, or a SExtractor LDAC source list (XWIN/YWIN, brightest first).

    `shape` is (width, height) in pixels; `pointing` (RA, Dec) only narrows the search.
    """
    config = write_backend_config(work, indexes, config_dir, cpulimit)
    args = [
        str(source),
        "--config", str(config),
        "--dir", str(work), "--out", name, "--temp-dir", str(work),
        "--no-plots", "--overwrite", "--new-fits", "none", "--crpix-center",
        "--cpulimit", str(int(cpulimit)),
        "--scale-units", "arcsecperpix",
        "--scale-low", f"{scale_arcsec * (1 - SCALE_TOLERANCE):.4f}",
        "--scale-high", f"{scale_arcsec * (1 + SCALE_TOLERANCE):.4f}",
        "--tweak-order", "1",
    ]  # fmt: skip
    if pointing is not None:
        args += ["--ra", f"{pointing[0]:.6f}", "--dec", f"{pointing[1]:.6f}"]
        args += ["--radius", str(HINT_RADIUS_DEG)]
    if source.suffix == ".ldac":
        args[0] = str(xy_list(source, work / f"{name}_sources.fits"))
        args += ["--x-column", "X", "--y-column", "Y", "--sort-column", "FLUX"]
        args += ["--width", str(shape[0]), "--height", str(shape[1])]
    externals.run_program(
        "solve-field", args, work, work / "tools.log", timeout or cpulimit + 60, check=True
    )
    solved, wcs_file = work / f"{name}.solved", work / f"{name}.wcs"
    if not solved.is_file() or not wcs_file.is_file():
        reason = f"astrometry.net found no solution within {cpulimit:.0f} s CPU"
        return AnetSolution(None, reason, {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        header = fits.getheader(wcs_file)
    return AnetSolution(header, "", match_statistics(work / f"{name}.corr"))


def xy_list(catalogue: Path, path: Path) -> Path:
    """A plain X/Y/FLUX table from a SExtractor LDAC catalogue (FITS 1-based windowed
    centroids). solve-field's helper scripts choke on the LDAC's VIGNET column."""
    with fits.open(catalogue) as hdus:
        table = hdus[2].data
        columns = [
            fits.Column(name="X", format="D", array=np.asarray(table["XWIN_IMAGE"])),
            fits.Column(name="Y", format="D", array=np.asarray(table["YWIN_IMAGE"])),
            fits.Column(name="FLUX", format="D", array=np.asarray(table["FLUX_AUTO"])),
        ]
    fits.BinTableHDU.from_columns(columns).writeto(path, overwrite=True)
    return path


def match_statistics(corr: Path) -> dict[str, Any]:
    """Matched stars and their scatter against the index, from solve-field's .corr table."""
    if not corr.is_file():
        return {}
    with fits.open(corr) as hdus:
        table = hdus[1].data
        if table is None or len(table) == 0:
            return {"matched_references": 0}
        ra1, dec1 = table["field_ra"], table["field_dec"]
        ra2, dec2 = table["index_ra"], table["index_dec"]
    dra = (ra1 - ra2) * np.cos(np.radians(dec2)) * 3600
    ddec = (dec1 - dec2) * 3600
    return {
        "matched_references": len(ra1),
        "sigma_arcsec": [round(float(np.std(dra)), 4), round(float(np.std(ddec)), 4)],
    }
