"""PNG quick-looks of products: ZScale, colour bar and title like 5.1.3, but cheap.

5.1.3 drew every full-size frame through pyplot (1.3 s per 2048^2 frame, as long as stacking).
Here the image is block-averaged to at most PREVIEW_PIXELS on a side first and drawn on a bare
Agg figure, which keeps a preview at a few tens of milliseconds.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from astropy.visualization import ZScaleInterval

from .fitsio import read_product, write_bytes_atomic

PREVIEW_PIXELS = 512
COLOUR_MAP = "gray"


def binned(image: np.ndarray, limit: int = PREVIEW_PIXELS) -> np.ndarray:
    """Block-average so that neither axis exceeds `limit` (NaN-aware)."""
    factor = int(np.ceil(max(image.shape) / limit))
    if factor <= 1:
        return image.astype(np.float32)
    height, width = (
        (image.shape[0] // factor) * factor,
        (image.shape[1] // factor) * factor,
    )
    blocks = image[:height, :width].reshape(height // factor, factor, width // factor, factor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        return np.nanmean(blocks, axis=(1, 3)).astype(np.float32)


def zscale_limits(image: np.ndarray) -> tuple[float, float]:
    """ZScale display limits over the finite pixels (0, 1 when there are none)."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = ZScaleInterval().get_limits(finite)
    return (float(low), float(high)) if high > low else (float(low), float(low) + 1.0)


def render_png(image: np.ndarray, title: str) -> bytes:
    """PNG bytes of an image with ZScale, a colour bar and a title; row 0 at the top."""
    from matplotlib.figure import Figure

    small = binned(image)
    low, high = zscale_limits(small)
    figure = Figure(figsize=(5.4, 4.6), dpi=100)
    axes = figure.add_subplot()
    shown = axes.imshow(small, cmap=COLOUR_MAP, vmin=low, vmax=high, interpolation="nearest")
    axes.set_title(title, fontsize=9)
    axes.set_xticks([])
    axes.set_yticks([])
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def png_path(fits_path: Path) -> Path:
    """astro_reduce's PNG name: the FITS path up to '.fits', plus '.png'."""
    name = fits_path.name
    stem = name[: name.lower().index(".fit")] if ".fit" in name.lower() else fits_path.stem
    return fits_path.with_name(stem + ".png")


def write_preview(fits_path: Path) -> Path:
    """Write the PNG quick-look beside a FITS product; returns its path."""
    data, _ = read_product(fits_path)
    target = png_path(fits_path)
    write_bytes_atomic(target, render_png(data, target.stem))
    return target


def refresh_previews(sources: list[Path], overwrite: bool = False) -> list[Path]:
    """Write the PNG of each FITS file unless a newer PNG exists (it shows the same pixels).

    Returns the PNGs written.
    """
    written = []
    for source in sources:
        target = png_path(source)
        if overwrite or not target.is_file() or target.stat().st_mtime < source.stat().st_mtime:
            written.append(write_preview(source))
    return written
