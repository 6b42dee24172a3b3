"""Local reference catalogues: read any star table, cut it to a field, hand it to the solvers.

SCAMP reads a FITS-LDAC reference file (ASTREF_CATALOG FILE) and hangs when no reference star
lies in the field, so each frame gets its own cut, and a cut with too few stars is refused
before SCAMP is started. astrometry.net needs index files, which `build_index` makes from the
same catalogue in about a second (always with -E: without it the builder walks the whole sky).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import externals
from .lazy_import import fits

# Column names accepted for (RA, Dec, magnitude), in order of preference.
RA_COLUMNS = ("RA", "RA_ICRS", "X_WORLD", "RAJ2000", "ALPHA_J2000")
DEC_COLUMNS = ("DEC", "DE_ICRS", "Y_WORLD", "DEJ2000", "DELTA_J2000")
MAG_COLUMNS = ("MAG", "GMAG", "PHOT_G_MEAN_MAG", "RMAG", "VMAG")
MIN_REFERENCE_STARS = 10
REFERENCE_ERROR_ARCSEC = 0.05
REFERENCE_EPOCH = 2016.0


class CatalogueError(ValueError):
    """A reference catalogue cannot be read or does not cover a field."""


@dataclass(frozen=True)
class Catalogue:
    """Reference stars: RA and Dec in degrees, a magnitude (brighter = smaller)."""

    ra: np.ndarray
    dec: np.ndarray
    mag: np.ndarray
    source: str

    def __len__(self) -> int:
        return int(self.ra.size)

    def cone(self, ra: float, dec: float, radius_deg: float) -> Catalogue:
        """The stars within `radius_deg` of (ra, dec)."""
        keep = angular_distance(self.ra, self.dec, ra, dec) <= radius_deg
        return Catalogue(self.ra[keep], self.dec[keep], self.mag[keep], self.source)


def angular_distance(ra1: np.ndarray, dec1: np.ndarray, ra2: float, dec2: float) -> np.ndarray:
    """Great-circle distance in degrees (haversine: exact at arcsecond separations)."""
    r1, d1, r2, d2 = map(np.radians, (ra1, dec1, ra2, dec2))
    h = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1))))


def _column(names: list[str], wanted: tuple[str, ...], path: Path, what: str) -> str:
    upper = {name.upper(): name for name in names}
    for candidate in wanted:
        if candidate in upper:
            return upper[candidate]
    raise CatalogueError(f"{path}: no {what} column (looked for {', '.join(wanted)})")


def load_catalogue(path: str | Path) -> Catalogue:
    """Read the first table of a FITS file that has RA, Dec and magnitude columns
    (our cache files, an LDAC reference catalogue, a Gaia or VizieR export)."""
    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdus:
            for hdu in hdus[1:]:
                if not isinstance(hdu, fits.BinTableHDU | fits.TableHDU):
                    continue
                names = list(hdu.columns.names)
                if not any(n.upper() in RA_COLUMNS for n in names):
                    continue
                ra = _column(names, RA_COLUMNS, path, "RA")
                dec = _column(names, DEC_COLUMNS, path, "Dec")
                mag = _column(names, MAG_COLUMNS, path, "magnitude")
                data = hdu.data
                cat = Catalogue(
                    np.asarray(data[ra], dtype=np.float64),
                    np.asarray(data[dec], dtype=np.float64),
                    np.asarray(data[mag], dtype=np.float64),
                    str(path),
                )
                good = np.isfinite(cat.ra) & np.isfinite(cat.dec) & np.isfinite(cat.mag)
                return Catalogue(cat.ra[good], cat.dec[good], cat.mag[good], str(path))
    except OSError as exc:
        raise CatalogueError(f"{path}: cannot read the reference catalogue ({exc})") from exc
    raise CatalogueError(f"{path}: no table with RA, Dec and magnitude columns")


def write_scamp_refcat(path: Path, catalogue: Catalogue) -> Path:
    """Write a SCAMP FITS-LDAC reference catalogue (LDAC_IMHEAD + LDAC_OBJECTS).

    Errors are in degrees (SCAMP's units for ERRA/ERRB_WORLD), MAG is float (SCAMP reads any
    non-double column as float), and there is no FLAGS column (it must be int16 when present).
    """
    n = len(catalogue)
    err = np.full(n, REFERENCE_ERROR_ARCSEC / 3600, dtype=np.float32)
    objects = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="X_WORLD", format="D", unit="deg", array=catalogue.ra),
            fits.Column(name="Y_WORLD", format="D", unit="deg", array=catalogue.dec),
            fits.Column(name="ERRA_WORLD", format="E", unit="deg", array=err),
            fits.Column(name="ERRB_WORLD", format="E", unit="deg", array=err),
            fits.Column(name="ERRTHETA_WORLD", format="E", unit="deg", array=np.zeros(n)),
            fits.Column(name="MAG", format="E", unit="mag", array=catalogue.mag),
            fits.Column(name="MAGERR", format="E", unit="mag", array=np.full(n, 0.01)),
            fits.Column(name="OBSDATE", format="D", unit="yr", array=np.full(n, REFERENCE_EPOCH)),
        ],
        name="LDAC_OBJECTS",
    )
    # An LDAC_IMHEAD holding one header as a single string cell. astropy pads a string cell's
    # trailing blanks with NULs, which breaks the header, so the cell's bytes are rewritten.
    cards = "".join(str(c) for c in fits.Header({"EXTEND": True}).cards) + "END".ljust(80)
    imhead = fits.BinTableHDU.from_columns(
        [fits.Column(name="Field Header Card", format=f"{len(cards)}A", array=[cards])],
        name="LDAC_IMHEAD",
    )
    imhead.header["TDIM1"] = f"(80, {len(cards) // 80})"
    fits.HDUList([fits.PrimaryHDU(), imhead, objects]).writeto(path, overwrite=True)
    with fits.open(path) as written:
        cell = written.fileinfo(1)["datLoc"]
    with open(path, "r+b") as stream:
        stream.seek(cell)
        stream.write(cards.encode("ascii"))
    return path


def write_star_table(path: Path, catalogue: Catalogue) -> Path:
    """A plain RA/DEC/MAG FITS table (the input of build-astrometry-index)."""
    table = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="RA", format="D", array=catalogue.ra),
            fits.Column(name="DEC", format="D", array=catalogue.dec),
            fits.Column(name="MAG", format="E", array=catalogue.mag),
        ]
    )
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path, overwrite=True)
    return path


def build_index(
    catalogue: Catalogue,
    out_dir: Path,
    scales: tuple[int, ...] = (0, 1, 2, 3, 4),
    index_id: int = 9900,
    timeout: float = 300.0,
) -> Path:
    """Build astrometry.net index files from a catalogue into `out_dir`.

    Scales 0-4 cover quads of 2' to 11', i.e. 15 % to 85 % of a 13' T120 field. Returns
    `out_dir`, to be given as the index folder of the local astrometry.net route.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stars = write_star_table(out_dir / "stars.fits", catalogue)
    log = out_dir / "build-index.log"
    for scale in scales:
        unique = index_id * 100 + scale
        externals.run_program(
            "build-astrometry-index",
            ["-i", str(stars), "-e", "1", "-o", f"index-{unique}.fits", "-P", str(scale), "-E",
             "-S", "MAG", "-A", "RA", "-D", "DEC", "-I", str(unique), "-j", "0.1"],
            cwd=out_dir,
            log_path=log,
            timeout=timeout,
        )  # fmt: skip
    stars.unlink()
    return out_dir


def main(argv: list[str] | None = None) -> int:
    """`python -m ar_tasks.refcat CATALOGUE INDEX_DIR`: astrometry.net indexes for -nl."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("catalogue", type=Path, help="FITS table with RA, DEC and a magnitude")
    parser.add_argument("index_dir", type=Path, help="folder to write index-*.fits into")
    parser.add_argument("--scales", default="0,1,2,3,4", help="index scales (default 0-4)")
    args = parser.parse_args(argv)
    catalogue = load_catalogue(args.catalogue)
    scales = tuple(int(s) for s in args.scales.split(","))
    folder = build_index(catalogue, args.index_dir, scales)
    print(f"{len(catalogue)} stars -> {folder} (scales {args.scales}); use --anet-index {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
