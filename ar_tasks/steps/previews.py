"""The previews step: PNG quick-looks of masters, aux frames and stacks (5.1.3's -t and -r)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..layout import NightLayout
from ..previews import refresh_previews
from .common import relative


def make_previews(
    layout: NightLayout, sources: list[Path], overwrite: bool = False
) -> dict[str, Any]:
    """PNGs of the existing `sources` (kept when newer than their FITS, unless `overwrite`)."""
    present = [p for p in sources if p.is_file()]
    written = refresh_previews(present, overwrite)
    return {"written": [relative(layout, p) for p in written], "kept": len(present) - len(written)}


def master_sources(layout: NightLayout) -> list[Path]:
    """Every master of the night folder (the masters of this run and any supplied ones)."""
    return sorted(layout.masters.glob("*.fits")) if layout.masters.is_dir() else []
