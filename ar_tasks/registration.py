"""Registration of dithered frames: translation by FFT cross-correlation, sub-pixel refined.

5.1.3 correlated raw frames: the flat sky's own correlation (a pyramid peaking at zero shift)
swamped the stars, so at bright sky every shift came out (0, 0). Here each frame first becomes a
detection image (mesh background removed, single-pixel defects suppressed, noise zeroed), the
correlation is zero-padded (no wrap-around), and the peak is refined to a fraction of a pixel.
Shifting never wraps either: uncovered pixels are NaN.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .combine import block_sum, median_of, nanmedian_axis0

BACKGROUND_MESH = 64  # px: the scale of sky structure removed before correlating
BACKGROUND_SUBSAMPLE = 2  # every other pixel of a cell estimates its sky
DETECTION_SIGMA = 2.0  # soft threshold (sigma) subtracted from the background-free image
SHARP_SIGMA = 3.0  # a pixel this far above its 3x3 median ...
SHARP_RATIO = 0.5  # ... whose median is below half of it is a defect, not a star
MAX_SHIFT_FRACTION = 0.45  # shifts searched, as a fraction of each axis
GHOST_WARNING_FRACTION = 0.15  # 5.1.3's "Beware of ghosts!" threshold
LANCZOS_ORDER = 3  # resampling kernel half-width (px)
SHIFT_BLOCK_PIXELS = 1 << 16  # pixels per block of rows shifted at once (256 KiB of float32)
COARSE_BINNING = 4  # px per side of the bins in which shifts are first found
COARSE_MIN_SIZE = 256  # px: smaller frames are correlated at full resolution
REFINE_STARS = 60  # brightest stars whose centroids refine the correlation shift
MIN_REFINE_STARS = 5
MIN_PEAK_SNR = 10.0  # peak signal-to-noise of a star used for refinement
PEAK_BOX = 9  # px: a star's peak is the maximum of this box around it
CENTROID_RADIUS = 6  # px


CHECK_STARS = 40  # brightest stars of each frame that check its shift
MATCH_TOLERANCE_PX = 2.0  # a star found this close to its predicted place is matched
MIN_MATCHED_STARS = 5  # astroalign needs 3 matches, Siril 10 pairs
MIN_MATCHED_FRACTION = 0.3  # of the stars that should be seen in both (Siril: 30% of pairs)
MAX_RESIDUAL_PX = 0.5  # RMS of the matched stars about the shift
FLUX_RADIUS = 6  # px: half-size of the box a star's flux is summed in
SKY_RADIUS = 10  # px: the box whose border gives the star's local sky


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
    """Smooth sky map: the median of each mesh cell, interpolated bilinearly to full size.

    Each cell's median is taken over every other pixel in both axes (1024 of a 64 px cell's
    4096): a quarter of the work, for a sky level still far more precise than the
    detection threshold needs.
    """
    height, width = image.shape
    ny, nx = max(1, height // mesh), max(1, width // mesh)
    if height < mesh or width < mesh:
        level = _nanmedian(image) if np.isfinite(image).any() else 0.0
        return np.full(image.shape, level, dtype=np.float32)
    step = BACKGROUND_SUBSAMPLE
    cells = image[: ny * mesh : step, : nx * mesh : step]
    cells = cells.reshape(ny, mesh // step, nx, mesh // step).transpose(0, 2, 1, 3)
    grid = nanmedian_axis0(np.moveaxis(cells.reshape(ny, nx, -1), 2, 0)).astype(np.float64)
    fill = _nanmedian(grid) if np.isfinite(grid).any() else 0.0
    grid = _median3x3(np.where(np.isfinite(grid), grid, fill))
    # Bilinear interpolation as two small matrix products: (height x ny)(ny x nx), then
    # (height x nx)(nx x width) in float32 (0.5 ms at 1024^2, against 2.2 ms gathering the two
    # neighbouring cells of every pixel). The BLAS is single-threaded (see ar_tasks/__init__).
    by_rows = (_interpolation_matrix(height, ny, mesh) @ grid).astype(np.float32)
    return by_rows @ _interpolation_matrix(width, nx, mesh).T.astype(np.float32)


def _nanmedian(values: np.ndarray) -> np.floating:
    """np.nanmedian of all the values, to the bit. numpy's median imports numpy.ma on its
    first call (9 ms of a night's run, under the import lock): median_of does not."""
    values = np.asarray(values).reshape(-1)
    return median_of(values[~np.isnan(values)])


def _median3x3(grid: np.ndarray) -> np.ndarray:
    """3x3 median filter with edge replication (a small grid: numpy is enough, no scipy).
    The middle of 9 values, as np.median gives it."""
    padded = np.pad(grid, 1, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3))
    return np.partition(windows.reshape(*grid.shape, 9), 4, axis=-1)[..., 4]


def _interpolation_weights(size: int, cells: int, mesh: int) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel, the cell below it and the weight of the cell above (clamped)."""
    position = np.clip((np.arange(size) + 0.5) / mesh - 0.5, 0, cells - 1)
    lower = np.minimum(np.floor(position).astype(int), max(cells - 2, 0))
    return lower, position - lower


def _interpolation_matrix(size: int, cells: int, mesh: int) -> np.ndarray:
    """Linear interpolation weights from cell centres to pixel centres (clamped at the edges)."""
    lower, weight = _interpolation_weights(size, cells, mesh)
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
    data = np.asarray(image, dtype=np.float32)
    residual = background(data)  # background() ignores NaN and inf
    np.subtract(data, residual, out=residual)  # in place: no frame-sized temporaries
    residual[~np.isfinite(residual)] = 0.0
    sigma = _noise(residual)
    if not sigma > 0:
        return np.zeros_like(residual)
    _replace_sharp_pixels(residual, sigma)
    residual /= np.float32(sigma)
    residual -= np.float32(DETECTION_SIGMA)
    return np.maximum(residual, 0.0, out=residual)


def _replace_sharp_pixels(residual: np.ndarray, sigma: float) -> None:
    """Replace, in place, pixels far above their 3x3 median whose median is below half of them.

    Only pixels above SHARP_SIGMA can qualify, so the median is computed for those alone
    (a few percent of the frame) instead of filtering the whole image.
    """
    height, width = residual.shape
    # Flat indices: ten times faster than np.nonzero's (rows, cols) of a 2-D mask.
    rows, cols = np.divmod(np.flatnonzero(residual > SHARP_SIGMA * sigma), width)
    if rows.size == 0:
        return
    around_rows = [np.clip(rows + d, 0, height - 1) for d in (-1, 0, 1)]  # edge replicated
    around_cols = [np.clip(cols + d, 0, width - 1) for d in (-1, 0, 1)]
    neighbours = np.stack([residual[r, c] for r in around_rows for c in around_cols])
    local = nanmedian_axis0(neighbours)
    values = residual[rows, cols]
    sharp = (values - local > SHARP_SIGMA * sigma) & (local < SHARP_RATIO * values)
    residual[rows[sharp], cols[sharp]] = local[sharp]


def _noise(residual: np.ndarray) -> float:
    """Robust sky noise (MAD) of a background-subtracted image, from a regular subsample."""
    values = residual[::3, ::3]
    values = values[values != 0]
    if values.size == 0:
        return 0.0
    return 1.4826 * float(median_of(np.abs(values - median_of(values))))


def quality_score(detection: np.ndarray) -> float:
    """Sharpness-weighted signal-to-noise (sum of squares of the detection image): more,
    brighter and sharper stars on a darker sky score higher."""
    # float32 squares, summed pairwise by numpy: deterministic and precise to ~1e-7.
    return float(np.sum(np.square(detection, dtype=np.float32)))


class _CrossCorrelation:
    """Zero-padded FFT cross-correlation against one reference, at a given binning.

    Binned 4x4, the transforms are 16 times smaller: enough to find the shift within a pixel
    or two, which the star centroids then refine.
    """

    def __init__(self, reference: np.ndarray, binning: int, max_shift_fraction: float):
        self.binning = binning
        image = block_sum(reference, binning)
        self.shape = image.shape
        self.max_shift = (
            int(self.shape[0] * max_shift_fraction),
            int(self.shape[1] * max_shift_fraction),
        )
        self._padded = (
            fast_length(self.shape[0] + self.max_shift[0]),
            fast_length(self.shape[1] + self.max_shift[1]),
        )
        self._reference = np.fft.rfft2(image, s=self._padded)

    def peak(self, detection: np.ndarray) -> Shift:
        """The correlation peak, sub-pixel interpolated, in unbinned pixels."""
        spectrum = self._reference * np.conj(
            np.fft.rfft2(block_sum(detection, self.binning), s=self._padded)
        )
        corr = np.fft.irfft2(spectrum, s=self._padded)
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
        return Shift(float(dy * self.binning), float(dx * self.binning), ratio)


def fast_length(size: int) -> int:
    """The smallest 2^a 3^b 5^c >= size: a length the FFT handles fastest."""
    best = 2 * size
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            length = power35
            while length < size:
                length *= 2
            best = min(best, length)
            power35 *= 3
        power5 *= 5
    return best


class Correlator:
    """Measures frames' shifts against one reference detection image.

    A 4x4-binned correlation finds each shift; the brightest stars' centroids refine it. Only
    when too few stars agree is the full-resolution correlation computed (once, then reused).
    """

    def __init__(self, reference: np.ndarray, max_shift_fraction: float = MAX_SHIFT_FRACTION):
        if not np.any(reference):
            raise RegistrationError("the reference frame shows no sources above the noise")
        self.shape = reference.shape
        self._reference = reference
        self._max_shift_fraction = max_shift_fraction
        binning = COARSE_BINNING if min(self.shape) >= COARSE_MIN_SIZE else 1
        self._coarse = _CrossCorrelation(reference, binning, max_shift_fraction)
        self._full: _CrossCorrelation | None = None
        peaks = np.array(brightest_peaks(reference), dtype=np.float64).reshape(-1, 2)
        found = centroids(reference, peaks[:, 0], peaks[:, 1])
        self._stars = found[np.isfinite(found).all(axis=1)]

    def shift(self, detection: np.ndarray) -> Shift:
        """The translation taking `detection`'s frame onto the reference."""
        if detection.shape != self.shape:
            raise RegistrationError(f"shape {detection.shape} differs from {self.shape}")
        if not np.any(detection):
            raise RegistrationError("the frame shows no sources above the noise")
        coarse = self._coarse.peak(detection)
        refined = self._refine(detection, coarse, tolerance=max(1.0, self._coarse.binning / 2))
        if refined.stars or self._coarse.binning == 1:
            return refined
        if self._full is None:
            self._full = _CrossCorrelation(self._reference, 1, self._max_shift_fraction)
        return self._refine(detection, self._full.peak(detection), tolerance=1.0)

    def _refine(self, detection: np.ndarray, coarse: Shift, tolerance: float) -> Shift:
        """Median offset of the brightest stars' windowed centroids, around the coarse shift.

        The correlation weights stars by flux squared, so a few bright stars decide it; the
        median over many stars is several times more precise (0.01 px instead of 0.05 px on
        sparse fields). Kept only when enough stars agree within `tolerance` of the coarse
        shift.
        """
        stars = self._stars
        found = centroids(detection, stars[:, 0] - coarse.dy, stars[:, 1] - coarse.dx)
        offsets = (stars - found)[np.isfinite(found).all(axis=1)]
        if len(offsets) < MIN_REFINE_STARS:
            return coarse
        dy, dx = median_of(offsets[:, 0]), median_of(offsets[:, 1])
        if abs(dy - coarse.dy) > tolerance or abs(dx - coarse.dx) > tolerance:
            return coarse
        return Shift(float(dy), float(dx), coarse.peak_ratio, stars=len(offsets))


@dataclass(frozen=True)
class Stars:
    """A frame's brightest stars: (y, x) centroids and fluxes in the frame's own units
    (NaN near the edges), as registration checks a shift and compares transparencies."""

    positions: np.ndarray  # (n, 2)
    fluxes: np.ndarray  # (n,)


def star_list(detection: np.ndarray, image: np.ndarray) -> Stars:
    """The brightest stars of a frame: found on its detection image, measured on the image."""
    peaks = np.array(brightest_peaks(detection, CHECK_STARS), dtype=np.float64).reshape(-1, 2)
    found = centroids(detection, peaks[:, 0], peaks[:, 1])
    found = found[np.isfinite(found).all(axis=1)]
    return Stars(found, aperture_fluxes(image, found))


def aperture_fluxes(image: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Box-aperture fluxes less the median of a wider box's border (the local sky)."""
    height, width = image.shape
    fluxes = np.full(len(positions), np.nan)
    if not len(positions):
        return fluxes
    iy, ix = np.rint(positions[:, 0]).astype(int), np.rint(positions[:, 1]).astype(int)
    ok = (iy >= SKY_RADIUS) & (iy < height - SKY_RADIUS)
    ok &= (ix >= SKY_RADIUS) & (ix < width - SKY_RADIUS)
    if not ok.any():
        return fluxes
    r, s = FLUX_RADIUS, SKY_RADIUS
    boxes = np.stack(
        [image[y - s : y + s + 1, x - s : x + s + 1] for y, x in zip(iy[ok], ix[ok], strict=True)]
    )
    ring = np.concatenate(
        [boxes[:, 0, :], boxes[:, -1, :], boxes[:, 1:-1, 0], boxes[:, 1:-1, -1]], axis=1
    )
    core = boxes[:, s - r : s + r + 1, s - r : s + r + 1].astype(np.float64)
    fluxes[ok] = core.sum(axis=(1, 2)) - core[0].size * np.median(ring, axis=1)
    return fluxes


@dataclass(frozen=True)
class Match:
    """How well a frame's own stars confirm its shift onto the reference."""

    matched: int  # reference stars with a frame star within MATCH_TOLERANCE_PX of its place
    expected: int  # stars that both frames should show (the sparser list, inside the overlap)
    residual: float  # px, RMS of the matched stars about the shift
    flux_ratio: float  # median frame / reference flux of the matched stars (NaN: none)

    @property
    def problem(self) -> str | None:
        """Why the shift cannot be trusted, or None."""
        needed = max(MIN_MATCHED_STARS, math.ceil(MIN_MATCHED_FRACTION * self.expected))
        if self.matched < needed:
            return (
                f"does not register: {self.matched} of {self.expected} stars matched "
                f"(at least {needed} needed; another field, or too few stars?)"
            )
        if not self.residual <= MAX_RESIDUAL_PX:
            return f"does not register: residual {self.residual:.2f} px > {MAX_RESIDUAL_PX} px"
        return None


def match_stars(reference: Stars, frame: Stars, shift: Shift, shape: tuple[int, int]) -> Match:
    """Match the frame's stars, moved by `shift`, with the reference's."""
    moved = frame.positions + np.array([shift.dy, shift.dx])
    margin = CENTROID_RADIUS + 2
    height, width = shape

    def inside(points: np.ndarray) -> np.ndarray:
        return (
            (points[:, 0] > margin)
            & (points[:, 0] < height - margin)
            & (points[:, 1] > margin)
            & (points[:, 1] < width - margin)
        )

    ref_in = reference.positions[inside(reference.positions - np.array([shift.dy, shift.dx]))]
    frame_in = moved[inside(moved)]
    expected = min(len(ref_in), len(frame_in))
    if not len(reference.positions) or not len(moved):
        return Match(0, expected, math.nan, math.nan)
    distance = np.hypot(
        reference.positions[:, None, 0] - moved[None, :, 0],
        reference.positions[:, None, 1] - moved[None, :, 1],
    )
    nearest = np.argmin(distance, axis=1)
    close = distance[np.arange(len(nearest)), nearest] <= MATCH_TOLERANCE_PX
    if not close.any():
        return Match(0, expected, math.nan, math.nan)
    offsets = reference.positions[close] - moved[nearest[close]]
    residual = float(np.sqrt(np.mean(np.sum((offsets - np.median(offsets, axis=0)) ** 2, axis=1))))
    ratios = frame.fluxes[nearest[close]] / reference.fluxes[close]
    ratios = ratios[np.isfinite(ratios) & (reference.fluxes[close] > 0)]
    ratio = float(np.median(ratios)) if ratios.size else math.nan
    return Match(int(close.sum()), expected, residual, ratio)


def brightest_peaks(detection: np.ndarray, count: int = REFINE_STARS) -> list[tuple[int, int]]:
    """Significant local maxima of a detection image, brightest first, away from the edges."""
    edge = CENTROID_RADIUS + 2
    ys, xs = _local_maxima(detection, MIN_PEAK_SNR, PEAK_BOX)
    inside = (ys > edge) & (ys < detection.shape[0] - edge)
    inside &= (xs > edge) & (xs < detection.shape[1] - edge)
    ys, xs = ys[inside], xs[inside]
    order = np.argsort(-detection[ys, xs], kind="stable")[:count]
    return list(zip(ys[order].tolist(), xs[order].tolist(), strict=True))


def _local_maxima(image: np.ndarray, threshold: float, box: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels above `threshold`, at least box // 2 from the edges, that are the maximum of the
    box x box square around them.

    Only the pixels above the threshold (a few thousand) are compared with their
    neighbourhood, the 3x3 square first (which leaves a few hundred), instead of
    max-filtering the whole frame.
    """
    height, width = image.shape
    half = box // 2
    # Flat indices: ten times faster than np.nonzero's (rows, cols) of a 2-D mask.
    ys, xs = np.divmod(np.flatnonzero(image > threshold), width)
    inside = (ys >= half) & (ys < height - half) & (xs >= half) & (xs < width - half)
    flat = image.reshape(-1)
    index = ys[inside] * width + xs[inside]
    values = flat[index]
    for reach in sorted({1, half}):
        keep = np.ones(index.size, dtype=bool)
        for dy in range(-reach, reach + 1):
            for dx in range(-reach, reach + 1):
                if max(abs(dy), abs(dx)) > (0 if reach == 1 else 1):
                    keep &= values >= flat[index + dy * width + dx]
        index, values = index[keep], values[keep]
    return np.divmod(index, width)


def centroids(
    detection: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    sigma: float = 1.5,
    iterations: int = 5,
) -> np.ndarray:
    """Gaussian-windowed centroids (SExtractor's XWIN/YWIN scheme) near each (y, x), all at
    once; rows of NaN where a window leaves the frame or holds no signal. Returns (n, 2)."""
    radius = CENTROID_RADIUS
    y = np.array(ys, dtype=np.float64)
    x = np.array(xs, dtype=np.float64)
    ok = np.ones(y.shape, dtype=bool)
    offsets = np.arange(-radius, radius + 1)
    height, width = detection.shape
    for _ in range(iterations):
        iy, ix = np.rint(y), np.rint(x)
        ok &= (iy >= radius) & (ix >= radius) & (iy < height - radius) & (ix < width - radius)
        iy = np.where(ok, iy, radius).astype(int)
        ix = np.where(ok, ix, radius).astype(int)
        yy = iy[:, None] + offsets  # (n, box)
        xx = ix[:, None] + offsets
        box = detection[yy[:, :, None], xx[:, None, :]]  # (n, box, box)
        window = (
            np.exp(-((yy - y[:, None]) ** 2) / (2 * sigma**2))[:, :, None]
            * np.exp(-((xx - x[:, None]) ** 2) / (2 * sigma**2))[:, None, :]
        )
        weights = box * window
        total = weights.sum(axis=(1, 2))
        ok &= total > 0
        total = np.where(ok, total, 1.0)
        # The window biases a plain centroid towards its centre; XWIN doubles the step.
        y = y + 2 * ((weights.sum(axis=2) * yy).sum(axis=1) / total - y)
        x = x + 2 * ((weights.sum(axis=1) * xx).sum(axis=1) / total - x)
    result = np.column_stack([y, x])
    result[~ok] = np.nan
    return result


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
    image = np.asarray(image, dtype=np.float32)
    out = np.empty(image.shape, dtype=np.float32)
    shift_rows(image, 0, image.shape[0], dy, dx, 0, image.shape[0], out)
    return out


def source_rows(height: int, dy: float, start: int, stop: int) -> tuple[int, int]:
    """The rows [low, high) of a frame that rows [start, stop) of its shifted image need
    (low == high when those rows are all uncovered)."""
    rows_from = _taps(dy)[0]
    first, last = _covered(height, rows_from, start, stop)
    if first >= last:
        return 0, 0
    return first - max(rows_from), last - min(rows_from)


def _covered(height: int, rows_from: list[int], start: int, stop: int) -> tuple[int, int]:
    """The part of output rows [start, stop) whose kernel stays inside the frame."""
    return max(max(rows_from), 0, start), min(height + min(rows_from), height, stop)


def shift_rows(
    window: np.ndarray,
    window_start: int,
    height: int,
    dy: float,
    dx: float,
    start: int,
    stop: int,
    out: np.ndarray,
) -> None:
    """Rows [start, stop) of shift_image(image, dy, dx), written into `out`, from `window`:
    rows [window_start, ...) of an image `height` rows high, covering source_rows(...).

    A group's stack is taken by row blocks straight from its aux frames this way, with no
    shifted frame held whole. The passes run over blocks of rows that stay in the CPU cache
    (1.7 times faster than whole-frame passes); each pixel gets the same sums in the same
    order whatever the blocks, so the result is bit-identical to shifting the whole frame.
    """
    (rows_from, row_weights), (cols_from, col_weights) = _taps(dy), _taps(dx)
    width = window.shape[1]
    out.fill(np.nan)
    top, bottom = _covered(height, rows_from, start, stop)
    left, right = max(max(cols_from), 0), min(width + min(cols_from), width)
    if top >= bottom or left >= right:
        return
    image = window
    block = max(1, SHIFT_BLOCK_PIXELS // width)
    vertical = np.empty((min(block, bottom - top), width), dtype=np.float32)
    term = np.empty_like(vertical)
    for first in range(top, bottom, block):
        last = min(first + block, bottom)
        column, scratch = vertical[: last - first], term[: last - first]
        # Along y: column[y] = sum_k w_k image[y - offset_k] for the block's rows ...
        low = first - window_start
        high = last - window_start
        np.multiply(image[low - rows_from[0] : high - rows_from[0]], row_weights[0], out=column)
        for offset, weight in zip(rows_from[1:], row_weights[1:], strict=True):
            np.multiply(image[low - offset : high - offset], weight, out=scratch)
            column += scratch
        # ... then along x, into the output rows.
        target = out[first - start : last - start, left:right]
        scratch = scratch[:, : right - left]
        np.multiply(
            column[:, left - cols_from[0] : right - cols_from[0]], col_weights[0], out=target
        )
        for offset, weight in zip(cols_from[1:], col_weights[1:], strict=True):
            np.multiply(column[:, left - offset : right - offset], weight, out=scratch)
            target += scratch


@functools.lru_cache(maxsize=1024)
def _taps(shift: float) -> tuple[tuple[int, ...], tuple[np.float32, ...]]:
    """Source offsets and weights along one axis: out[y] = sum_k w_k image[y - offset_k].

    A whole shift (within 1e-3 px) is one tap of weight 1; otherwise the point sits at
    m + (1 - fraction), m = y - whole - 1, and the Lanczos taps are m - order + 1 .. m + order.
    Cached: a stack asks for each frame's taps at every block of rows.
    """
    whole = int(np.floor(shift))
    fraction = float(shift - whole)
    if fraction < 1e-3:
        return (whole,), (np.float32(1),)
    if fraction > 1 - 1e-3:
        return (whole + 1,), (np.float32(1),)
    taps = range(-LANCZOS_ORDER + 1, LANCZOS_ORDER + 1)
    weights = lanczos_weights(1 - fraction)
    return tuple(whole + 1 - tap for tap in taps), tuple(np.float32(w) for w in weights)


def lanczos_weights(fraction: float, order: int = LANCZOS_ORDER) -> np.ndarray:
    """Weights of samples m-order+1 .. m+order for a point at m + fraction (sum 1)."""
    offsets = fraction - np.arange(-order + 1, order + 1)
    weights = np.sinc(offsets) * np.sinc(offsets / order)
    return weights / weights.sum()


def ghost_fraction(shifts: list[Shift], shape: tuple[int, int]) -> float:
    """Largest shift as a fraction of the field size (5.1.3 warned above 15%)."""
    if not shifts:
        return 0.0
    return max(max(abs(s.dy) / shape[0], abs(s.dx) / shape[1]) for s in shifts)
