"""Registration of dithered frames: translation by FFT cross-correlation, sub-pixel refined.

5.1.3 correlated raw frames: the flat sky's own correlation (a pyramid peaking at zero shift)
swamped the stars, so at bright sky every shift came out (0, 0). Here each frame first becomes a
detection image (mesh background removed, single-pixel defects suppressed, noise zeroed), the
correlation is zero-padded (no wrap-around), and the peak is refined to a fraction of a pixel.
Shifting never wraps either: uncovered pixels are NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft, ndimage

from .combine import nanmedian_axis0

BACKGROUND_MESH = 64  # px: the scale of sky structure removed before correlating
DETECTION_SIGMA = 2.0  # soft threshold (sigma) subtracted from the background-free image
SHARP_SIGMA = 3.0  # a pixel this far above its 3x3 median ...
SHARP_RATIO = 0.5  # ... whose median is below half of it is a defect, not a star
MAX_SHIFT_FRACTION = 0.45  # shifts searched, as a fraction of each axis
GHOST_WARNING_FRACTION = 0.15  # 5.1.3's "Beware of ghosts!" threshold
LANCZOS_ORDER = 3  # resampling kernel half-width (px)
REFINE_STARS = 60  # brightest stars whose centroids refine the correlation shift
MIN_REFINE_STARS = 5
MIN_PEAK_SNR = 10.0  # peak signal-to-noise of a star used for refinement
CENTROID_RADIUS = 6  # px


class RegistrationError(ValueError):
    """No reliable shift could be measured (no sources, flat or ambiguous correlation)."""


@dataclass(frozen=True)
class Shift:
    """Translation that brings a frame onto the reference: out[y, x] = frame[y - dy, x - dx]."""

    dy: float
    dx: float
    peak_ratio: float  # correlation peak over the strongest peak away from it (>1: unambiguous)
    stars: int = 0  # stars whose centroids refined the shift (0: correlation peak only)


def background(image: np.ndarray, mesh: int = BACKGROUND_MESH) -> np.ndarray:
    """Smooth sky map: the median of each mesh cell, interpolated bilinearly to full size."""
    height, width = image.shape
    ny, nx = max(1, height // mesh), max(1, width // mesh)
    cells = image[: ny * mesh, : nx * mesh] if height >= mesh and width >= mesh else None
    if cells is None:
        level = np.nanmedian(image) if np.isfinite(image).any() else 0.0
        return np.full(image.shape, level, dtype=np.float32)
    cells = cells.reshape(ny, mesh, nx, mesh).transpose(0, 2, 1, 3).reshape(ny, nx, -1)
    grid = nanmedian_axis0(np.moveaxis(cells, 2, 0)).astype(np.float64)
    fill = np.nanmedian(grid) if np.isfinite(grid).any() else 0.0
    grid = ndimage.median_filter(np.where(np.isfinite(grid), grid, fill), size=3, mode="nearest")
    return (
        _interpolation_matrix(height, ny, mesh) @ grid @ _interpolation_matrix(width, nx, mesh).T
    ).astype(np.float32)


def _interpolation_matrix(size: int, cells: int, mesh: int) -> np.ndarray:
    """Linear interpolation weights from cell centres to pixel centres (clamped at the edges)."""
    position = np.clip((np.arange(size) + 0.5) / mesh - 0.5, 0, cells - 1)
    lower = np.minimum(np.floor(position).astype(int), max(cells - 2, 0))
    weight = position - lower
    matrix = np.zeros((size, cells))
    matrix[np.arange(size), lower] = 1 - weight
    if cells > 1:
        matrix[np.arange(size), lower + 1] += weight
    return matrix


def detection_image(image: np.ndarray) -> np.ndarray:
    """Background-subtracted image in which only significant, star-like signal remains.

    Pixels much sharper than any star (cosmic rays, hot pixels: far above their 3x3 median,
    which a star's core is not) are replaced by that median; hot pixels sit at the same
    detector place in every frame and would otherwise pull the correlation towards zero shift.
    Everything else is kept linear (a median filter of the whole frame costs precision), minus
    a soft threshold that zeroes the sky noise. The result is in units of the sky noise, so
    its values are signal-to-noise ratios.
    """
    data = np.where(np.isfinite(image), image, np.nan).astype(np.float32)
    residual = np.nan_to_num(data - background(data), nan=0.0)
    sigma = _noise(residual)
    if not sigma > 0:
        return np.zeros_like(residual)
    _replace_sharp_pixels(residual, sigma)
    return np.clip(residual / np.float32(sigma) - DETECTION_SIGMA, 0.0, None).astype(np.float32)


def _replace_sharp_pixels(residual: np.ndarray, sigma: float) -> None:
    """Replace, in place, pixels far above their 3x3 median whose median is below half of them.

    Only pixels above SHARP_SIGMA can qualify, so the median is computed for those alone
    (a few percent of the frame) instead of filtering the whole image.
    """
    rows, cols = np.nonzero(residual > SHARP_SIGMA * sigma)
    if rows.size == 0:
        return
    padded = np.pad(residual, 1, mode="edge")
    neighbours = np.stack(
        [padded[rows + 1 + dy, cols + 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    )
    local = np.median(neighbours, axis=0)
    values = residual[rows, cols]
    sharp = (values - local > SHARP_SIGMA * sigma) & (local < SHARP_RATIO * values)
    residual[rows[sharp], cols[sharp]] = local[sharp]


def _noise(residual: np.ndarray) -> float:
    """Robust sky noise (MAD) of a background-subtracted image, from a regular subsample."""
    values = residual[::3, ::3]
    values = values[values != 0]
    if values.size == 0:
        return 0.0
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def quality_score(detection: np.ndarray) -> float:
    """Sharpness-weighted signal-to-noise (sum of squares of the detection image): more,
    brighter and sharper stars on a darker sky score higher."""
    return float(np.sum(detection.astype(np.float64) ** 2))


class Correlator:
    """Cross-correlates frames against one reference detection image, reusing its transform."""

    def __init__(self, reference: np.ndarray, max_shift_fraction: float = MAX_SHIFT_FRACTION):
        self.shape = reference.shape
        self.max_shift = (
            int(self.shape[0] * max_shift_fraction),
            int(self.shape[1] * max_shift_fraction),
        )
        self._padded = (
            fft.next_fast_len(self.shape[0] + self.max_shift[0], real=True),
            fft.next_fast_len(self.shape[1] + self.max_shift[1], real=True),
        )
        if not np.any(reference):
            raise RegistrationError("the reference frame shows no sources above the noise")
        self._reference = fft.rfft2(reference, s=self._padded, workers=-1)
        self._stars = [
            c for c in (centroid(reference, y, x) for y, x in brightest_peaks(reference)) if c
        ]

    def shift(self, detection: np.ndarray) -> Shift:
        """The translation taking `detection`'s frame onto the reference."""
        if detection.shape != self.shape:
            raise RegistrationError(f"shape {detection.shape} differs from {self.shape}")
        if not np.any(detection):
            raise RegistrationError("the frame shows no sources above the noise")
        spectrum = self._reference * np.conj(fft.rfft2(detection, s=self._padded, workers=-1))
        corr = fft.irfft2(spectrum, s=self._padded, workers=-1)
        # corr[k] = sum_r ref[r] * frame[r - k]: its peak is at the shift (dy, dx), modulo padding.
        corr = np.fft.fftshift(corr)
        cy, cx = self._padded[0] // 2, self._padded[1] // 2
        my, mx = self.max_shift
        window = corr[cy - my : cy + my + 1, cx - mx : cx + mx + 1]
        iy, ix = np.unravel_index(int(np.argmax(window)), window.shape)
        peak = float(window[iy, ix])
        if not peak > 0:
            raise RegistrationError("the cross-correlation is flat")
        dy = iy - my + _subpixel(window[max(iy - 1, 0) : iy + 2, ix])
        dx = ix - mx + _subpixel(window[iy, max(ix - 1, 0) : ix + 2])
        ratio = _peak_ratio(window, iy, ix, peak)
        return self._refine(detection, Shift(dy=float(dy), dx=float(dx), peak_ratio=ratio))

    def _refine(self, detection: np.ndarray, coarse: Shift) -> Shift:
        """Median offset of the brightest stars' windowed centroids, around the coarse shift.

        The correlation weights stars by flux squared, so a few bright stars decide it; the
        median over many stars is several times more precise (0.01 px instead of 0.05 px on
        sparse fields). Kept only when enough stars agree within a pixel of the coarse shift.
        """
        offsets = []
        for y, x in self._stars:
            found = centroid(detection, y - coarse.dy, x - coarse.dx)
            if found is not None:
                offsets.append((y - found[0], x - found[1]))
        if len(offsets) < MIN_REFINE_STARS:
            return coarse
        dy, dx = np.median(np.array(offsets), axis=0)
        if abs(dy - coarse.dy) > 1 or abs(dx - coarse.dx) > 1:
            return coarse
        return Shift(float(dy), float(dx), coarse.peak_ratio, stars=len(offsets))


def brightest_peaks(detection: np.ndarray, count: int = REFINE_STARS) -> list[tuple[int, int]]:
    """Significant local maxima of a detection image, brightest first, away from the edges."""
    edge = CENTROID_RADIUS + 2
    local_max = ndimage.maximum_filter(detection, size=9, mode="constant")
    ys, xs = np.nonzero((detection == local_max) & (detection > MIN_PEAK_SNR))
    inside = (ys > edge) & (ys < detection.shape[0] - edge)
    inside &= (xs > edge) & (xs < detection.shape[1] - edge)
    ys, xs = ys[inside], xs[inside]
    order = np.argsort(-detection[ys, xs], kind="stable")[:count]
    return list(zip(ys[order].tolist(), xs[order].tolist(), strict=True))


def centroid(
    detection: np.ndarray, y: float, x: float, sigma: float = 1.5, iterations: int = 5
) -> tuple[float, float] | None:
    """Gaussian-windowed centroid (SExtractor's XWIN/YWIN scheme) near (y, x), or None."""
    radius = CENTROID_RADIUS
    for _ in range(iterations):
        iy, ix = round(y), round(x)
        if iy < radius or ix < radius:
            return None
        box = detection[iy - radius : iy + radius + 1, ix - radius : ix + radius + 1]
        if box.shape != (2 * radius + 1, 2 * radius + 1):
            return None
        yy, xx = np.mgrid[iy - radius : iy + radius + 1, ix - radius : ix + radius + 1]
        weights = box * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))
        total = float(weights.sum())
        if not total > 0:
            return None
        # The window biases a plain centroid towards its centre; XWIN doubles the step.
        y += 2 * (float((weights * yy).sum()) / total - y)
        x += 2 * (float((weights * xx).sum()) / total - x)
    return y, x


def _subpixel(values: np.ndarray) -> float:
    """Offset of a peak from its central sample, by a Gaussian (log-parabola) through 3 points."""
    if values.size != 3:
        return 0.0
    left, centre, right = (float(v) for v in values)
    if min(left, centre, right) > 0:
        left, centre, right = np.log(left), np.log(centre), np.log(right)
    denominator = left - 2 * centre + right
    if denominator >= 0:
        return 0.0
    return float(np.clip(0.5 * (left - right) / denominator, -0.5, 0.5))


def _peak_ratio(window: np.ndarray, iy: int, ix: int, peak: float, guard: int = 5) -> float:
    """Main peak over the highest value outside a small box around it."""
    masked = window.copy()
    masked[max(iy - guard, 0) : iy + guard + 1, max(ix - guard, 0) : ix + guard + 1] = -np.inf
    second = float(masked.max()) if np.isfinite(masked).any() else 0.0
    return peak / second if second > 0 else float("inf")


def shift_image(image: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Translate by (dy, dx) pixels: out[y, x] = image[y - dy, x - dx].

    Fractional parts use a separable Lanczos-3 kernel (as SWarp does), which keeps the PSF
    sharp where bilinear interpolation broadened stacked stars by 3-5%. Pixels whose kernel
    reaches outside the frame or a NaN are NaN: nothing wraps round the edges.
    """
    out = image.astype(np.float32)
    out = _shift_axis(out, dy, axis=0)
    return _shift_axis(out, dx, axis=1)


def lanczos_weights(fraction: float, order: int = LANCZOS_ORDER) -> np.ndarray:
    """Weights of samples m-order+1 .. m+order for a point at m + fraction (sum 1)."""
    offsets = fraction - np.arange(-order + 1, order + 1)
    weights = np.sinc(offsets) * np.sinc(offsets / order)
    return weights / weights.sum()


def _shift_axis(image: np.ndarray, shift: float, axis: int) -> np.ndarray:
    whole = int(np.floor(shift))
    fraction = float(shift - whole)
    if fraction < 1e-3:
        return _integer_shift(image, whole, axis)
    if fraction > 1 - 1e-3:
        return _integer_shift(image, whole + 1, axis)
    # out[y] = image(y - whole - fraction): the point sits at m + (1 - fraction), m = y - whole - 1.
    out = np.zeros_like(image)
    for tap, weight in zip(
        range(-LANCZOS_ORDER + 1, LANCZOS_ORDER + 1), lanczos_weights(1 - fraction), strict=True
    ):
        out += np.float32(weight) * _integer_shift(image, whole + 1 - tap, axis)
    return out


def _integer_shift(image: np.ndarray, shift: int, axis: int) -> np.ndarray:
    out = np.full_like(image, np.nan)
    size = image.shape[axis]
    if abs(shift) >= size:
        return out
    source = [slice(None)] * 2
    target = [slice(None)] * 2
    if shift >= 0:
        source[axis], target[axis] = slice(0, size - shift), slice(shift, size)
    else:
        source[axis], target[axis] = slice(-shift, size), slice(0, size + shift)
    out[tuple(target)] = image[tuple(source)]
    return out


def ghost_fraction(shifts: list[Shift], shape: tuple[int, int]) -> float:
    """Largest shift as a fraction of the field size (5.1.3 warned above 15%)."""
    if not shifts:
        return 0.0
    return max(max(abs(s.dy) / shape[0], abs(s.dx) / shape[1]) for s in shifts)
