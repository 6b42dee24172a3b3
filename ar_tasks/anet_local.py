"""astrometry.net on this machine: solve-field against a configured index folder.

solve-field exits 0 whether it solved or not, so success is read from its `.solved` file. Its
configuration is written per run from the shipped template plus `add_path <index folder>`, so
only the chosen indexes are searched (the system /etc/astrometry.cfg loads every installed
index). The CPU limit bounds an unsolvable frame; a wall-clock timeout bounds everything else.
"""

from __future__ import annotations

import functools
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


class CoverageError(ValueError):
    """No index file of the folder can solve a field at this pointing and scale."""


MIN_INDEX_STARS = 10  # an index needs at least this many stars where the field may be


def check_coverage(indexes: Path, pointing: tuple[float, float], radius_deg: float) -> None:
    """Refuse before any tool runs when no index holds quads that fit the field and stars
    where the field may be (within the search radius of the pointing): otherwise solve-field
    spends its whole CPU limit on every image. An index whose layout is not understood counts
    as covering (the check must never refuse a usable index)."""
    field_arcsec = 2 * radius_deg * 3600
    reach = HINT_RADIUS_DEG + radius_deg
    seen = []
    for path in sorted(indexes.glob("index-*.fits")):
        stat = path.stat()
        coverage = _index_coverage(str(path), stat.st_size, stat.st_mtime_ns)
        if coverage is None:
            return
        smallest_quad, stars = coverage
        nearby = _within(stars, pointing, reach) if stars is not None else MIN_INDEX_STARS
        if smallest_quad < field_arcsec and nearby >= MIN_INDEX_STARS:
            return
        seen.append(f"{path.name} ({nearby} stars, quads from {smallest_quad / 60:.1f}')")
    raise CoverageError(
        f"no astrometry.net index in {indexes} covers RA {pointing[0]:.4f} Dec "
        f"{pointing[1]:.4f} with quads smaller than the {field_arcsec / 60:.1f}' field "
        f"(at least {MIN_INDEX_STARS} stars within {reach:.2f} deg needed: "
        f"{'; '.join(seen[:3]) + ('; ...' if len(seen) > 3 else '') or 'no index'}): "
        "wrong index folder?"
    )


@functools.lru_cache(maxsize=64)
def _index_coverage(path: str, size: int, mtime_ns: int) -> tuple[float, np.ndarray | None] | None:
    """(smallest quad in arcsec, star unit vectors) of an index file, None when unreadable."""
    try:
        with fits.open(path, memmap=False) as hdus:
            smallest = float(hdus[0].header["SCALE_L"]) * 180 / np.pi * 3600
            little = str(hdus[0].header.get("ENDIAN", "04:03:02:01")).startswith("04")
            tables = {hdu.header.get("TTYPE1"): hdu for hdu in hdus[1:]}
            data, kind = tables["kdtree_data_stars"], tables["kdtree_header_stars"]
            ranges = tables.get("kdtree_range_stars")
            stored = str(kind.header.get("KDT_DATA", "double"))
            order = "<" if little else ">"
            raw = data.data.tobytes() if data.data is not None else b""
            if stored == "double":
                return smallest, np.frombuffer(raw, dtype=f"{order}f8").reshape(-1, 3)
            if stored not in ("u32", "u16") or ranges is None:
                return smallest, None
            box = np.frombuffer(ranges.data.tobytes(), dtype=f"{order}f8")
            units = np.frombuffer(raw, dtype=f"{order}u{4 if stored == 'u32' else 2}")
            return smallest, box[:3] + units.reshape(-1, 3) / box[6]
    except (OSError, KeyError, ValueError, TypeError, IndexError):
        return None


def _near(stars: np.ndarray, pointing: tuple[float, float], radius_deg: float) -> np.ndarray:
    ra, dec = np.radians(pointing)
    centre = np.array([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
    return stars @ centre >= np.cos(np.radians(radius_deg))


def _within(stars: np.ndarray, pointing: tuple[float, float], radius_deg: float) -> int:
    return int(np.count_nonzero(_near(stars, pointing, radius_deg)))


def index_stars(
    indexes: Path, pointing: tuple[float, float], radius_deg: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """RA, Dec (degrees) of the index files' stars within `radius_deg` of a pointing: the
    reference catalogue of the local route (each file holds a subset; duplicates removed)."""
    found = []
    for path in sorted(indexes.glob("index-*.fits")):
        stat = path.stat()
        coverage = _index_coverage(str(path), stat.st_size, stat.st_mtime_ns)
        if coverage is not None and coverage[1] is not None:
            found.append(coverage[1][_near(coverage[1], pointing, radius_deg)])
    if not found:
        return None
    xyz = np.unique(np.round(np.concatenate(found), 12), axis=0)
    ra = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0])) % 360
    dec = np.degrees(np.arcsin(np.clip(xyz[:, 2], -1, 1)))
    return ra, dec


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
