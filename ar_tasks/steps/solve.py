"""The astrometry step: one group's aux frames and stack solved by the chosen route."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .. import astrometry, group_astrometry
from ..inventory import Frame, GroupKey
from ..layout import NightLayout
from ..logs import VERBOSE
from ..threads import run_each
from .common import StepError, problem

log = logging.getLogger(__name__)


def astrometry_images(
    layout: NightLayout, group: GroupKey, frames: list[Frame], include_stack: bool = True
) -> list[Path]:
    """The aux frames of a group that exist, then its stack (when asked and present)."""
    images = [layout.aux(f) for f in frames if layout.aux(f).is_file()]
    if include_stack and layout.stack(group).is_file():
        images.append(layout.stack(group))
    return images


def solve_group(
    layout: NightLayout,
    group: GroupKey,
    frames: list[Frame],
    options: astrometry.AstrometryOptions,
    include_stack: bool = True,
    jobs: int = 1,
) -> dict[str, Any]:
    """Astrometry of one group's aux frames and stack; one failed image does not stop the rest.

    With a solver, the group is solved once (its anchor) and every other registered image
    derived from it (ar_tasks.group_astrometry), unless `options.solve_each`. The external
    programs are single-threaded, so `jobs` images are solved at once.
    """
    images = astrometry_images(layout, group, frames, include_stack)
    if not images:
        raise StepError(f"No calibrated frame or stack of {group.name} to solve.")
    alignment = None
    if options.solver and not options.solve_each:
        stack = layout.stack(group) if layout.stack(group) in images else None
        aux_of = {frame.path: layout.aux(frame) for frame in frames}
        alignment = group_astrometry.read_alignment(layout.stack_qc(group), stack, aux_of)
    if alignment is not None:
        records = group_astrometry.solve_images(layout.out_dir, images, alignment, options, jobs)
    else:
        records = run_each(
            lambda path: astrometry.solve_image(layout.out_dir, path, options), images, jobs
        )
    result: dict[str, Any] = {"solver": options.solver, "images": records}
    for status in ("solved", "failed", "reused", "catalogued"):
        result[status] = sum(r["status"] == status for r in records)
    result["problems"] = []
    for record in records:
        name = Path(record["image"]).name
        if record["status"] == "failed":
            message = f"{name}: astrometry failed: {record.get('reason', 'unknown reason')}"
            result["problems"].append(problem(message))
        else:
            log.log(VERBOSE, "    %s: %s", name, _describe(record))
    return result


def _describe(record: dict[str, Any]) -> str:
    """One line for a solved, catalogued or reused image."""
    if record["status"] == "reused":
        return f"{record['product']} is current: reused."
    if record["status"] == "catalogued":
        return f"catalogue {record['product']} ({record['seconds']} s)."
    stats = record.get("stats", {})
    figures = []
    if record.get("method") == "derived":
        figures.append(f"derived from {Path(record['anchor']).name}")
    if "matched_references" in stats:
        figures.append(f"{stats['matched_references']} references")
    if stats.get("sigma_arcsec"):
        figures.append(f'scatter {max(stats["sigma_arcsec"]):.3f}"')
    detail = f" ({', '.join(figures)})" if figures else ""
    return f"solved by {record['solver']}{detail} in {record['seconds']} s -> {record['product']}."
