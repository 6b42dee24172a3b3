"""The read+write floor: read every raw frame and write the same products, nothing else.

No reduction at all: each raw frame is read as float32 with astropy, each FITS product of a
reference run is written (same folder, name and shape, float32, atomically like ours) and each
working copy is copied. Whatever a reducer spends beyond this is computation or overhead.

Run as `python -m bench.floor NIGHT_DIR PLAN.json`, where the plan (made by `plan()` from a
finished run of ours) lists the products; the plan is read, not discovered, so the floor does
no bookkeeping a reducer would not also do.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

RAW_FOLDERS = ("DARK", "FLAT", "ORIGINAL")
WORKING_FOLDERS = ("ar_darks", "ar_flats", "ar_objects")


def plan(ours_dir: Path) -> dict:
    """What a run of ours wrote: FITS products (path and shape) and working copies."""
    from astropy.io import fits

    images = []
    for path in sorted(ours_dir.rglob("*.fits")):
        relative = path.relative_to(ours_dir)
        if relative.parts[0] in RAW_FOLDERS + WORKING_FOLDERS:
            continue
        header = fits.getheader(path)
        images.append({"path": str(relative), "shape": [header["NAXIS2"], header["NAXIS1"]]})
    copies = [
        str(p.relative_to(ours_dir))
        for folder in WORKING_FOLDERS
        for p in sorted((ours_dir / folder).glob("*"))
        if p.is_file()
    ]
    return {"images": images, "copies": copies}


def run(night_dir: Path, product_plan: dict) -> None:
    """Read every raw frame, copy the working copies, write every product."""
    import numpy as np
    from astropy.io import fits

    frames = []
    for folder in RAW_FOLDERS:
        for path in sorted((night_dir / folder).iterdir()):
            with fits.open(path, memmap=False) as hdus:
                frames.append(np.asarray(hdus[0].data, dtype=np.float32))
    raws = sorted(p for f in RAW_FOLDERS for p in (night_dir / f).iterdir())
    for relative, source in zip(product_plan["copies"], raws, strict=False):
        target = night_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    for index, image in enumerate(product_plan["images"]):
        data = frames[index % len(frames)]
        shape = tuple(image["shape"])
        if data.shape != shape:
            data = np.zeros(shape, dtype=np.float32)
        target = night_dir / image["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.part")
        fits.PrimaryHDU(data).writeto(temporary, overwrite=True)
        os.replace(temporary, target)


def main(argv: list[str]) -> int:
    night_dir, plan_file = Path(argv[0]), Path(argv[1])
    run(night_dir, json.loads(plan_file.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
