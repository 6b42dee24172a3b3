"""Science-frame quality: the figures that decide whether a frame enters its group's stack.

astro_reduce's advice is to look at every raw frame and delete the bad ones; an archive of
years cannot be looked at. Each aux frame gets its own figures when it is calibrated (sky and
its noise, stars, FWHM, ellipticity, saturated fraction: `measure`, written into its header);
registration adds what only the group can say (transparency against the group's best frame,
the shift and how well the stars confirm it). `judge` turns them into reasons for leaving a
frame out: relative to the group, so a night of poor seeing keeps its frames, with absolute
floors, so a group of good frames never loses its slightly worse ones (Siril users found
purely relative filters discard good frames: `calibrations_and_qc.md`).

Pure numpy on arrays; no I/O here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .camera import PIXEL_SCALE_ARCSEC
from .combine import median_of

STAR_SNR = 10.0  # peak signal-to-noise of a counted star (registration's MIN_PEAK_SNR)
SHAPE_SNR = 30.0  # peak signal-to-noise of the stars whose shape is measured
SHAPE_STARS = 15  # the brightest unsaturated stars measured (their median FWHM is good to ~2%)
SHAPE_MIN_STARS = 3  # fewer measured stars: no FWHM or ellipticity (NaN)
PEAK_BOX = 9  # px: a star is the maximum of this box
SHARP_RATIO = 0.35  # a star's 3x3 median exceeds this fraction of its peak; a cosmic's does not
STAMP_RADIUS = 7  # px: half-size of the stamp a star's moments are measured in
NONLINEAR_FRACTION = 0.8  # peaks above this fraction of the headroom are not measured
MOMENT_ITERATIONS = 5
SATURATED_FRACTION_MAX = 0.05  # BANZAI drops a frame with 5% of its pixels saturated
FWHM_FLOOR_ARCSEC = 2.5  # a frame this sharp is never left out for its FWHM (T120 seeing 2-3")
ELLIPTICITY_FLOOR = 0.2  # ... nor this round one for its shape (Siril's roundness 0.82 ~ 0.18)
ELLIPTICITY_EXCESS = 0.1  # left out only when this much more elongated than the group's best
SKY_STEP = 6  # every 6th pixel of every 6th row: 29k pixels give the sky to 1% of its noise
GAUSSIAN_FWHM = 2 * math.sqrt(2 * math.log(2))


@dataclass(frozen=True)
class Thresholds:
    """When a science frame is left out of its stack; `reject` False keeps every frame that
    registers (a frame that does not register is never stacked, whatever these say).

    Defaults: `max_fwhm_ratio` 1.5 keeps the seeing changes of a T120 sequence (2-3") and
    leaves out defocused frames; `max_ellipticity` 0.25 is above Gemini's 0.1 warning and
    Siril's 0.18 so only trailing is caught; `min_transparency` 0.6 (0.55 mag of extinction)
    sits between Gemini's 0.3 mag and 1 mag cloud bands: thin cirrus stays, thick cloud goes.
    """

    reject: bool = True
    max_fwhm_ratio: float = 1.5
    max_ellipticity: float = 0.25
    min_transparency: float = 0.6

    def __post_init__(self) -> None:
        if not self.max_fwhm_ratio >= 1:
            raise ValueError(f"max_fwhm_ratio must be >= 1, not {self.max_fwhm_ratio}")
        if not 0 < self.max_ellipticity < 1:
            raise ValueError(f"max_ellipticity must be in (0, 1), not {self.max_ellipticity}")
        if not 0 <= self.min_transparency <= 1:
            raise ValueError(f"min_transparency must be in [0, 1], not {self.min_transparency}")

    def parameters(self) -> dict[str, Any]:
        """What enters a stack's provenance key (nothing but `reject` when rejection is off)."""
        return asdict(self) if self.reject else {"reject": False}


@dataclass(frozen=True)
class FrameFigures:
    """A frame's own quality figures (NaN where they cannot be measured)."""

    sky: float  # ADU, median of the calibrated frame
    noise: float  # ADU, robust standard deviation of the sky
    stars: int  # star-like peaks above STAR_SNR
    fwhm: float  # px, median adaptive-moment FWHM of the bright unsaturated stars
    ellipticity: float  # 1 - b/a of the same stars (median)
    saturated: float  # fraction of the raw frame's pixels at or above its saturation level

    def as_record(self) -> dict[str, Any]:
        return {key: _rounded(value) for key, value in asdict(self).items()}


# Header cards of the figures: (card, field, comment).
CARDS = (
    ("QCSKY", "sky", "[ADU] sky level (median)"),
    ("QCSKYSIG", "noise", "[ADU] sky noise (robust sigma)"),
    ("QCNSTAR", "stars", "stars with peak S/N > 10"),
    ("QCFWHM", "fwhm", "[px] median FWHM of bright stars"),
    ("QCELLIP", "ellipticity", "median 1 - b/a of bright stars"),
    ("QCSATF", "saturated", "fraction of raw pixels saturated"),
)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    return value


def header_cards(figures: FrameFigures) -> list[tuple[str, Any, str]]:
    """The figures as header cards; a figure that could not be measured is left out."""
    values = figures.as_record()
    return [
        (card, values[name], comment) for card, name, comment in CARDS if values[name] is not None
    ]


def from_header(header: Mapping[str, Any]) -> FrameFigures | None:
    """The figures an aux frame's header carries (None for an aux frame written without)."""
    if "QCSKY" not in header:
        return None
    values: dict[str, Any] = {}
    for card, name, _ in CARDS:
        raw = header.get(card)
        values[name] = float("nan") if raw is None else float(raw)
    values["stars"] = int(values["stars"]) if math.isfinite(values["stars"]) else 0
    return FrameFigures(**values)


def saturated_fraction(raw: np.ndarray, level: float) -> float:
    """The fraction of a raw frame's pixels at or above its saturation level."""
    return float(np.count_nonzero(raw >= level)) / raw.size if raw.size else 0.0


def sky_sample(image: np.ndarray) -> np.ndarray:
    """The finite pixels of a sparse regular sample (every SKY_STEP-th of every SKY_STEP-th
    row): what a frame's sky level and noise are taken from."""
    sample = np.asarray(image)[::SKY_STEP, ::SKY_STEP].reshape(-1)
    return sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample


def sky_level(image: np.ndarray) -> float:
    """A frame's median level from its sky sample (0 when no pixel is finite). The raw
    frame's (bias, dark and sky) is what a star's peak stands on before it saturates."""
    sample = sky_sample(image)
    return float(median_of(sample)) if sample.size else 0.0


def measure(image: np.ndarray, headroom: float, saturated: float) -> FrameFigures:
    """The figures of a calibrated frame; `headroom` is how far above the sky a pixel may rise
    before it saturates (the raw frame's saturation level less its median), `saturated` the
    raw frame's saturated fraction."""
    sample = sky_sample(image)
    if sample.size == 0:
        return FrameFigures(math.nan, math.nan, 0, math.nan, math.nan, saturated)
    sky = float(median_of(sample))
    noise = 1.4826 * float(median_of(np.abs(sample - sky)))
    if not noise > 0:
        return FrameFigures(sky, noise, 0, math.nan, math.nan, saturated)
    ys, xs = star_peaks(image, sky, noise)
    peaks = image[ys, xs] - sky
    bright = (peaks >= SHAPE_SNR * noise) & (peaks < NONLINEAR_FRACTION * headroom)
    order = np.argsort(-peaks[bright], kind="stable")[:SHAPE_STARS]
    fwhm, ellipticity = star_shapes(image, ys[bright][order], xs[bright][order])
    return FrameFigures(sky, noise, int(ys.size), fwhm, ellipticity, saturated)


def star_peaks(image: np.ndarray, sky: float, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of star-like local maxima above STAR_SNR, away from the edges.

    Only the pixels above the threshold (a few thousand) are looked at. A cosmic ray or a hot
    pixel is far sharper than a star: its 3x3 median is a small fraction of its peak."""
    height, width = image.shape
    edge = STAMP_RADIUS + 1
    threshold = sky + STAR_SNR * noise
    rows, cols = np.divmod(np.flatnonzero(image > threshold), width)
    inside = (rows >= edge) & (rows < height - edge) & (cols >= edge) & (cols < width - edge)
    rows, cols = rows[inside], cols[inside]
    if rows.size == 0:
        return rows, cols
    flat = image.reshape(-1)
    index = rows * width + cols
    values = flat[index]
    # The 3x3 maximum first (8 looks at every candidate pixel), the full box on what remains.
    for box in (3, PEAK_BOX):
        half = box // 2
        keep = np.ones(index.size, dtype=bool)
        for dy in range(-half, half + 1):
            for dx in range(-half, half + 1):
                if (dy or dx) and (box == 3 or max(abs(dy), abs(dx)) > 1):
                    keep &= values >= flat[index + dy * width + dx]
        index, values = index[keep], values[keep]
    around = np.stack([flat[index + dy * width + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    local = np.partition(around, 4, axis=0)[4] - sky
    star_like = local > SHARP_RATIO * (values - sky)
    rows, cols = np.divmod(index[star_like], width)
    return rows, cols


def star_shapes(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> tuple[float, float]:
    """Median FWHM (px) and ellipticity of stars at (ys, xs), by adaptive second moments.

    The weight is an elliptical Gaussian matched to the star (Bernstein & Jarvis 2002): for a
    Gaussian star its measured covariance is half the star's, so doubling it converges to the
    star's own. A trail elongates the covariance along the trail; defocus widens it."""
    if ys.size < SHAPE_MIN_STARS:
        return math.nan, math.nan
    r = STAMP_RADIUS
    offsets = np.arange(-r, r + 1, dtype=np.float64)
    stamps = np.stack(
        [image[y - r : y + r + 1, x - r : x + r + 1] for y, x in zip(ys, xs, strict=True)]
    )
    stamps = stamps.astype(np.float64)
    border = np.concatenate(
        [stamps[:, 0, :], stamps[:, -1, :], stamps[:, 1:-1, 0], stamps[:, 1:-1, -1]], axis=1
    )
    stamps -= np.median(border, axis=1)[:, None, None]
    n = stamps.shape[0]
    cy, cx = np.zeros(n), np.zeros(n)
    cov = np.tile(np.array([[4.0, 0.0], [0.0, 4.0]]), (n, 1, 1))
    yy, xx = offsets[None, :, None], offsets[None, None, :]
    ok = np.ones(n, dtype=bool)
    for _ in range(MOMENT_ITERATIONS):
        inverse = np.linalg.inv(cov)
        dy, dx = yy - cy[:, None, None], xx - cx[:, None, None]
        exponent = (
            inverse[:, 0, 0, None, None] * dy**2
            + 2 * inverse[:, 0, 1, None, None] * dy * dx
            + inverse[:, 1, 1, None, None] * dx**2
        )
        weighted = stamps * np.exp(-0.5 * exponent)
        total = weighted.sum(axis=(1, 2))
        ok &= total > 0
        total = np.where(ok, total, 1.0)
        my = (weighted * dy).sum(axis=(1, 2)) / total
        mx = (weighted * dx).sum(axis=(1, 2)) / total
        myy = (weighted * dy**2).sum(axis=(1, 2)) / total - my**2
        mxx = (weighted * dx**2).sum(axis=(1, 2)) / total - mx**2
        mxy = (weighted * dy * dx).sum(axis=(1, 2)) / total - my * mx
        cy, cx = np.clip(cy + my, -2, 2), np.clip(cx + mx, -2, 2)
        # Kept within what a stamp can measure: variances 0.05 to r^2 px^2, |correlation| < 1.
        myy, mxx = np.clip(2 * myy, 0.05, r**2), np.clip(2 * mxx, 0.05, r**2)
        mxy = np.clip(2 * mxy, -0.95 * np.sqrt(myy * mxx), 0.95 * np.sqrt(myy * mxx))
        cov = np.stack([np.stack([myy, mxy], -1), np.stack([mxy, mxx], -1)], -2)
    eigen = np.linalg.eigvalsh(cov[ok & (total > 0)])
    if eigen.shape[0] < SHAPE_MIN_STARS:
        return math.nan, math.nan
    fwhm = GAUSSIAN_FWHM * np.sqrt(np.sqrt(eigen[:, 0] * eigen[:, 1]))
    ellipticity = 1 - np.sqrt(eigen[:, 0] / eigen[:, 1])
    return float(np.median(fwhm)), float(np.median(ellipticity))


def judge(
    figures: Sequence[FrameFigures | None],
    transparency: Sequence[float | None],
    thresholds: Thresholds,
    pixel_scale: float = PIXEL_SCALE_ARCSEC,
) -> list[list[str]]:
    """For each frame of a group, the figures that leave it out (empty: it stays).

    Relative to the group's best frame, with floors: a frame is too blurred when its FWHM
    exceeds `max_fwhm_ratio` times the sharpest frame's and FWHM_FLOOR_ARCSEC; too elongated
    when its ellipticity exceeds `max_ellipticity` and the roundest frame's by
    ELLIPTICITY_EXCESS; too clouded below `min_transparency` of the clearest frame (the
    transparencies are already relative); saturated beyond SATURATED_FRACTION_MAX."""
    reasons: list[list[str]] = [[] for _ in figures]
    if not thresholds.reject:
        return reasons
    fwhms = [f.fwhm for f in figures if f is not None and math.isfinite(f.fwhm)]
    shapes = [f.ellipticity for f in figures if f is not None and math.isfinite(f.ellipticity)]
    best_fwhm = min(fwhms, default=math.nan)
    roundest = min(shapes, default=math.nan)
    floor_px = FWHM_FLOOR_ARCSEC / pixel_scale
    for index, (own, clarity) in enumerate(zip(figures, transparency, strict=True)):
        why = reasons[index]
        if own is not None:
            limit = max(thresholds.max_fwhm_ratio * best_fwhm, floor_px)
            if own.fwhm > limit:
                best = best_fwhm * pixel_scale
                why.append(
                    f'FWHM {own.fwhm * pixel_scale:.2f}" > {limit * pixel_scale:.2f}" '
                    f"({thresholds.max_fwhm_ratio:g} x the group's best {best:.2f}\")"
                )
            limit = max(thresholds.max_ellipticity, roundest + ELLIPTICITY_EXCESS)
            if own.ellipticity > limit:
                why.append(f"ellipticity {own.ellipticity:.2f} > {limit:.2f} (trailed?)")
            if own.saturated > SATURATED_FRACTION_MAX:
                why.append(
                    f"{100 * own.saturated:.1f}% of pixels saturated "
                    f"(> {100 * SATURATED_FRACTION_MAX:g}%)"
                )
        if clarity is not None and clarity < thresholds.min_transparency:
            why.append(
                f"transparency {clarity:.2f} of the group's best < {thresholds.min_transparency:g}"
                f" ({-2.5 * math.log10(max(clarity, 1e-6)):.2f} mag of cloud)"
            )
    return reasons
