"""Folder and file names of a night's products: astro_reduce 5.1.3's conventions in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .inventory import Frame, GroupKey

WORKING_FOLDERS = {"dark": "ar_darks", "flat": "ar_flats", "object": "ar_objects"}
MASTERS = "ar_masters"
COSMETIC = "ar_cosmetic"
STACKED = "stacked"
REDUCED = "reduced"
ASTROMATIC_FOLDERS = ("SEXRES", "PSFRES", "SCAMPRES")
INVENTORY_FILE = "ar_inventory.json"
QC_FIGURE = "qc_frames.png"  # the night's frame QC figure, beside manifest.json
LIBRARY_FOLDER = "ar_calibrations"  # masters made from other nights' frames (see
# calibration_library): in the DAG's products root, in the CLI's night folder
SCRATCH_PREFIX = ".ar_astro_"  # an astrometry run's scratch folder in the products folder


@dataclass(frozen=True)
class NightLayout:
    """Where a night's raw frames are read and its products written.

    The CLI uses one folder for both (the night directory); the DAG reads from the raw archive
    and writes to a separate products tree.
    """

    raw_dir: Path
    out_dir: Path

    @classmethod
    def in_place(cls, night_dir: Path) -> NightLayout:
        night_dir = Path(night_dir).resolve()
        return cls(night_dir, night_dir)

    @property
    def name(self) -> str:
        return self.out_dir.name

    @property
    def config_file(self) -> Path:
        """astro_reduce's `<dir>.json` (kept for compatibility; we read ar_inventory.json)."""
        return self.out_dir / f"{self.name}.json"

    @property
    def inventory_file(self) -> Path:
        return self.out_dir / INVENTORY_FILE

    @property
    def masters(self) -> Path:
        return self.out_dir / MASTERS

    @property
    def cosmetic(self) -> Path:
        return self.out_dir / COSMETIC

    @property
    def stacked(self) -> Path:
        return self.out_dir / STACKED

    def working_dir(self, kind: str) -> Path:
        return self.out_dir / WORKING_FOLDERS[kind]

    def raw(self, frame: Frame) -> Path:
        return self.raw_dir / frame.path

    def master_dark(self, exposure_ms: int) -> Path:
        return self.masters / f"mdark_{exposure_ms}.fits"

    def master_flat(self, filter_name: str) -> Path:
        return self.masters / f"mtrans_{filter_name}.fits"

    def aux(self, frame: Frame) -> Path:
        return self.cosmetic / f"{frame.stem}_aux.fits"

    def stack(self, group: GroupKey) -> Path:
        return self.stacked / f"{group.name}.fits"

    def stack_qc(self, group: GroupKey) -> Path:
        """The stack's frame QC (figures, shifts, frames left out), kept beside it so a rerun
        that reuses the stack still reports them."""
        return self.stacked / f"{group.name}.qc.json"


def png_path(fits_path: Path) -> Path:
    """astro_reduce's PNG name: the FITS path up to '.fits', plus '.png'."""
    name = fits_path.name
    stem = name[: name.lower().index(".fit")] if ".fit" in name.lower() else fits_path.stem
    return fits_path.with_name(stem + ".png")
