"""Flat stability: each master flat against the archive's previous master flat of its filter.

A filter that gathers dust, a camera that is taken off and put back, a flat lamp that ages:
each changes the flat field between nights, which a data manager sees in a trend, not in one
night's products. The comparison is the robust scatter of flat / previous flat (normalised to
a median of 1) over the central half of the frame, and its 99.9th percentile (a new dust
donut is a small area: the scatter barely moves, the tail does). The previous flat is found
through the night index (the latest earlier night with its own master flat of the filter).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .combine import median_of
from .fitsio import FrameError, read_product
from .layout import MASTERS
from .night_index import indexed_nights, read_entry
from .storage import S3Settings, S3Store, StorageError, is_s3, join

log = logging.getLogger(__name__)
TAIL_PERCENTILE = 99.9


def change(flat: np.ndarray, previous: np.ndarray) -> dict[str, float]:
    """How a master flat differs from the previous one: robust RMS and the 99.9th percentile
    of |flat / previous - 1|, the ratio normalised to a median of 1, over the central half."""
    if flat.shape != previous.shape:
        raise ValueError(f"shape {flat.shape} differs from the previous flat's {previous.shape}")
    height, width = flat.shape
    box = (slice(height // 4, 3 * height // 4), slice(width // 4, 3 * width // 4))
    a, b = flat[box].astype(np.float64), previous[box].astype(np.float64)
    good = np.isfinite(a) & np.isfinite(b) & (b > 0)
    if not good.any():
        raise ValueError("no pixel is defined in both flats")
    ratio = a[good] / b[good]
    ratio = ratio / float(median_of(ratio))
    deviation = np.abs(ratio - 1)
    rms = 1.4826 * float(median_of(deviation))
    tail = float(np.percentile(deviation, TAIL_PERCENTILE))
    return {"rms": round(rms, 6), "p999": round(tail, 6)}


def previous_night(
    products_root: str, night: str, filter_name: str, s3: dict[str, str] | None = None
) -> str | None:
    """The latest night before `night` whose own master flat of the filter is indexed: one
    listing of the index, then entries read from the latest earlier night back (usually the
    first is it), never the whole archive's."""
    for earlier in reversed(indexed_nights(products_root, s3)):
        if earlier >= night:
            continue
        entry = read_entry(products_root, earlier, s3) or {}
        if filter_name in (entry.get("flats") or {}):
            return earlier
    return None


def compare_flats(
    layout: Any, flats: dict[str, Any], products_root: str, night: str, s3: dict[str, str] | None
) -> None:
    """Add `vs_previous` ({night, rms, p999}) to each of the night's own master flat records
    that has a previous flat in the archive; a flat that cannot be compared says why."""
    for filter_name, record in flats.items():
        if not isinstance(record, dict) or not record.get("file"):
            continue
        previous = previous_night(products_root, night, filter_name, s3)
        if previous is None:
            continue
        try:
            current = read_product(layout.master_flat(filter_name))[0]
            earlier = _read_flat(products_root, previous, filter_name, s3)
            record["vs_previous"] = {"night": previous, **change(current, earlier)}
        except (FrameError, OSError, StorageError, ValueError) as exc:
            record["vs_previous"] = {"night": previous, "error": str(exc)}
            log.warning("Master flat %s not compared with %s's: %s", filter_name, previous, exc)


def _read_flat(
    products_root: str, night: str, filter_name: str, s3: dict[str, str] | None
) -> np.ndarray:
    name = f"mtrans_{filter_name}.fits"
    if not is_s3(products_root):
        return read_product(Path(products_root) / night / MASTERS / name)[0]
    with tempfile.TemporaryDirectory(prefix="ar_flat_") as folder:
        path = Path(folder) / name
        S3Store(S3Settings(**(s3 or {}))).download(join(products_root, night, MASTERS, name), path)
        return read_product(path)[0]
