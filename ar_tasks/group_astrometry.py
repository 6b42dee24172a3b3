"""A group's astrometry with one full solve: the anchor solved, every other image derived.

The anchor is the image with the most stars: the stack, else the alignment reference frame,
else the best-scored frame. Each other registered image gets the anchor's WCS moved by the
registration shift and checked on its own stars (ar_tasks.derived_wcs); an image whose check
fails, or that did not register, is solved on its own. When two anchors fail the rest of the
group is not tried (the same field, the same references: a wrong index or catalogue would make
each image spend its whole CPU limit), and when the references cannot cover the pointing at all
the first failure stops the group.

Each derived product's key holds its image, the anchor's key, the shift and the check's
settings, so a new anchor solution or a new registration remakes exactly the derived products.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import anet_local, astrometry, derived_wcs, externals, registration
from .camera import HeaderError
from .fitsio import read_product, set_card, write_image
from .layout import REDUCED
from .lazy_import import fits
from .provenance import code_identity, input_key, is_current, product_key, stamp
from .threads import run_each
from .wcs_headers import header_pointing, merge_wcs

MAX_ANCHORS = 2  # full solves tried before the group's other images are given up
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alignment:
    """Where each image's pixels lie on the group's alignment grid (the stack's pixels):
    image path -> (dy, dx) registration shift; the anchors to try, best first."""

    shifts: dict[Path, tuple[float, float]]
    anchors: list[Path]


def read_alignment(qc_file: Path, stack: Path | None, aux_of: dict[str, Path]) -> Alignment | None:
    """The registration's shifts from the stack's QC file (`stacked/<group>.qc.json`), or None
    when the group was not registered (no stack, stacking off, a damaged file)."""
    try:
        record = json.loads(qc_file.read_text())["record"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    shifts: dict[Path, tuple[float, float]] = {}
    scores: dict[Path, float] = {}
    for entry in record.get("qc") or []:
        aux = aux_of.get(entry.get("path"))
        shift = entry.get("shift")
        if aux is not None and isinstance(shift, list) and len(shift) == 2:
            shifts[aux] = (float(shift[0]), float(shift[1]))
            scores[aux] = float(entry.get("score") or 0.0)
    for path, shift in (record.get("shifts") or {}).items():
        if aux_of.get(path) is not None:
            shifts.setdefault(aux_of[path], (float(shift[0]), float(shift[1])))
    if not shifts:
        return None
    reference = aux_of.get(record.get("reference") or "")
    anchors = [stack] if stack is not None else []
    anchors += [reference] if reference in shifts else []
    anchors += sorted((p for p in shifts if p != reference), key=lambda p: -scores.get(p, 0.0))
    if stack is not None:
        shifts[stack] = (0.0, 0.0)
    return Alignment(shifts, anchors)


@dataclass(frozen=True)
class Anchor:
    """The group's solved image: its solution, shift and the check's reference stars."""

    image: Path
    key: str
    solver: str
    solution: fits.Header
    shift: tuple[float, float]
    references: tuple[np.ndarray, np.ndarray]
    reference_name: str


def solve_images(
    out_dir: Path,
    images: list[Path],
    alignment: Alignment,
    options: astrometry.AstrometryOptions,
    jobs: int = 1,
) -> list[dict[str, Any]]:
    """Records of every image (in the images' order): anchor solved, the others derived."""
    records: dict[Path, dict[str, Any]] = {}
    anchor: Anchor | None = None
    for candidate in [a for a in alignment.anchors if a in images][:MAX_ANCHORS]:
        record = _full(out_dir, candidate, options)
        records[candidate] = record
        if record["status"] in ("solved", "reused"):
            try:
                anchor = _anchor(out_dir, candidate, record, alignment, options)
            except (ValueError, OSError) as exc:  # the others are then solved on their own
                log.warning("%s: cannot derive other images from it (%s)", candidate.name, exc)
            break
        if record.get("reference_problem"):
            break
    rest = [image for image in images if image not in records]
    if anchor is None and any(r["status"] in ("solved", "reused") for r in records.values()):
        solved = run_each(lambda image: _full(out_dir, image, options), rest, jobs)
        records.update(zip(rest, solved, strict=True))
        return [records[image] for image in images]
    if anchor is None:
        failure = next(iter(records.values()), {"reason": "no image of the group to solve"})
        reason = (
            f"not tried: the group's {'best image' if len(records) == 1 else 'best images'} "
            f"did not solve ({failure.get('reason', 'unknown reason')})"
        )
        for image in rest:
            records[image] = {
                "image": str(image.relative_to(out_dir)),
                "solver": options.solver,
                "status": "failed",
                "reason": reason,
            }
        return [records[image] for image in images]

    def each(image: Path) -> dict[str, Any]:
        if image not in alignment.shifts:
            return _full(out_dir, image, options)
        try:
            record = derive_image(out_dir, image, anchor, alignment.shifts[image], options)
        except (ValueError, OSError) as exc:  # an unreadable image: its own solve says why
            record = {"status": "unchecked", "reason": f"its WCS cannot be derived ({exc})"}
        if record["status"] != "unchecked":
            return record
        log.info(
            "%s: derived WCS rejected (%s): solving it on its own", image.name, record["reason"]
        )
        full = _full(out_dir, image, options)
        return {**full, "check": record.get("check"), "check_failed": record["reason"]}

    for image, record in zip(rest, run_each(each, rest, jobs), strict=True):
        records[image] = record
    return [records[image] for image in images]


def _full(out_dir: Path, image: Path, options: astrometry.AstrometryOptions) -> dict[str, Any]:
    record = astrometry.solve_image(out_dir, image, options)
    if record["status"] in ("solved", "reused"):
        record["method"] = "full"
    return record


def _anchor(
    out_dir: Path,
    image: Path,
    record: dict[str, Any],
    alignment: Alignment,
    options: astrometry.AstrometryOptions,
) -> Anchor:
    """The solved anchor, and the reference stars every derived image is checked against:
    the local catalogue around the solved field, else the anchor's own stars."""
    product = out_dir / record["product"]
    data, header = read_product(product)
    header = header.to_astropy()
    solution = derived_wcs.solution_cards(header)
    height, width = data.shape
    try:  # the cone SCAMP's references were cut from: a per-field cache fetches it once
        pointing = header_pointing(header)
    except HeaderError:
        centre = derived_wcs._wcs(solution).all_pix2world([[(width - 1) / 2, (height - 1) / 2]], 0)
        pointing = (float(centre[0][0]), float(centre[0][1]))
    scale = derived_wcs.pixel_scale_arcsec(solution)
    radius = scale * math.hypot(width, height) / 2 / 3600 + astrometry.POSITION_MAXERR_DEG
    catalogue, index = None, None
    try:
        catalogue = astrometry.reference_stars(options, pointing, radius)
        if catalogue is None and options.local:
            index = anet_local.index_stars(
                anet_local.index_dir(options.index_dir), pointing, radius
            )
    except (ValueError, OSError, externals.ToolError) as exc:  # the anchor's own stars then
        log.warning("%s: no reference stars for the check (%s)", image.name, exc)
    if catalogue is not None and len(catalogue) >= derived_wcs.MIN_MATCHED:
        references, name = (catalogue.ra, catalogue.dec), "catalogue"
    elif index is not None and len(index[0]) >= derived_wcs.MIN_MATCHED:
        references, name = index, "index stars"
    else:
        stars = derived_wcs.image_stars(data)
        references, name = derived_wcs.sky_positions(solution, stars), f"stars of {image.name}"
    return Anchor(
        image=image,
        key=str(header.get("ARKEY", "")),
        solver=str(header.get("ASTSOLVR", record.get("solver") or "")),
        solution=solution,
        shift=alignment.shifts[image],
        references=references,
        reference_name=name,
    )


def derive_image(
    out_dir: Path,
    image: Path,
    anchor: Anchor,
    shift: tuple[float, float],
    options: astrometry.AstrometryOptions,
) -> dict[str, Any]:
    """reduced/<image>: the anchor's WCS moved by the shift, checked and refined on the image's
    own stars. Status "unchecked" (with the reason) when the check fails: nothing is written."""
    started = time.monotonic()
    relative = (round(shift[0] - anchor.shift[0], 3), round(shift[1] - anchor.shift[1], 3))
    record: dict[str, Any] = {
        "image": str(image.relative_to(out_dir)),
        "solver": anchor.solver,
        "method": "derived",
        "anchor": str(anchor.image.relative_to(out_dir)),
        "shift_px": list(relative),
    }
    key = product_key(
        "astrometry-derived",
        image=input_key(image),
        anchor=anchor.key,
        shift=relative,
        check=derived_wcs.settings(),
        code=code_identity(derived_wcs, registration, derive_image, _write_derived),
        astrometry=options.provenance(),
    )
    target = out_dir / REDUCED / image.name
    if not options.overwrite and is_current(target, key):
        return {**record, "status": "reused", "product": str(target.relative_to(out_dir))}
    data, header = read_product(image)
    # Registration's shift (dy, dx) takes this image's pixels onto the grid: (x, y) here is
    # (x + dx, y + dy) there, and (x + dx - anchor dx, ...) on the anchor.
    guess = derived_wcs.moved(anchor.solution, relative[1], relative[0])
    stars = derived_wcs.image_stars(data)
    solution, check = derived_wcs.check(
        guess, stars, anchor.references, data.shape, anchor.reference_name
    )
    record["check"] = check.as_dict()
    record["seconds"] = round(time.monotonic() - started, 3)
    if check.problem:
        return {**record, "status": "unchecked", "reason": check.problem}
    _write_derived(target, data, header.to_astropy(), solution, anchor, relative, check, key)
    record["status"] = "solved"
    record["product"] = str(target.relative_to(out_dir))
    record["stats"] = {
        "matched_references": check.matched,
        "sigma_arcsec": [record["check"]["rms_arcsec"]],
    }
    record["seconds"] = round(time.monotonic() - started, 3)
    return record


def _write_derived(
    target: Path,
    data: np.ndarray,
    header: fits.Header,
    solution: fits.Header,
    anchor: Anchor,
    shift: tuple[float, float],
    check: derived_wcs.Check,
    key: str,
) -> None:
    """The image with the derived WCS and the cards that say how it was found."""
    merged = merge_wcs(header, solution)
    set_card(merged, "ASTSOLVR", anchor.solver, "astrometric solver (of the anchor)")
    set_card(merged, "ASTMETHD", "derived", "from its group's solved anchor, checked")
    set_card(merged, "ASTANCHR", anchor.image.name, "the group's solved image")
    set_card(merged, "ASTSHFTX", shift[1], "[px] registration shift x onto the anchor")
    set_card(merged, "ASTSHFTY", shift[0], "[px] registration shift y onto the anchor")
    set_card(merged, "ASTCORRX", round(check.correction_px[0], 4), "[px] check's CRPIX1 change")
    set_card(merged, "ASTCORRY", round(check.correction_px[1], 4), "[px] check's CRPIX2 change")
    set_card(merged, "ASTNREF", check.matched, "stars matched in the check")
    set_card(merged, "ASTSIGMA", round(check.rms_arcsec, 4), "[arcsec] check's scatter")
    set_card(merged, "ASTCHKRF", check.reference[:68], "what the check matched against")
    merged.add_history(
        f"WCS derived from {anchor.image.name} ({anchor.solver}) by the registration shift "
        f"dx={shift[1]:+.3f} dy={shift[0]:+.3f} px, checked on {check.matched} stars against "
        f"the {check.reference}: scatter {check.rms_arcsec:.3f} arcsec (astro_reduce-airflow)"
    )
    write_image(target, data, stamp(merged, key))
