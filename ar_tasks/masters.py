"""Master darks, dark interpolation in exposure time, and master flats: pure array functions.

The file handling (which frames, which names, headers) lives in `steps.masters`, which calls
these functions; here everything takes and returns numpy arrays so each algorithm can be tested
against known truth.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from .combine import FrameStack, median_of

# Flat pixels below this fraction of the central level are not corrected (NaN in the master):
# dividing by a near-zero response would turn noise into huge values (5.1.3 let inf through).
FLAT_MIN_RESPONSE = 0.05
LEVEL_SUBSAMPLE = 2  # robust_level reads every other pixel of the central region ...
LEVEL_SUBSAMPLE_MIN_SIZE = 256  # ... of frames at least this large


def central_region(shape: tuple[int, ...]) -> tuple[slice, slice]:
    """The central half of the frame in each axis: the region that defines a flat's level."""
    height, width = shape[-2], shape[-1]
    return slice(height // 4, height - height // 4), slice(width // 4, width - width // 4)


def robust_level(image: np.ndarray) -> float:
    """Median of the finite pixels of the central region, after one 5-sigma (MAD) clip.

    One global statistic per flat: 5.1.3 divided each column by its own mean, which erased the
    flat's structure along x (a +-13% sky gradient remained in its stacks). Every other pixel
    in each axis is enough: 65,000 values of a 1024^2 frame fix the level to ~1e-5.
    """
    rows, columns = central_region(image.shape)
    step = LEVEL_SUBSAMPLE if min(image.shape[-2:]) >= LEVEL_SUBSAMPLE_MIN_SIZE else 1
    values = image[rows.start : rows.stop : step, columns.start : columns.stop : step]
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("no finite pixel in the central region")
    median = float(median_of(values))
    mad = float(median_of(np.abs(values - median))) * 1.4826
    if mad > 0:
        values = values[np.abs(values - median) < 5 * mad]
    return float(median_of(values))


def master_dark(frames: Iterable[np.ndarray], copy: bool = True) -> np.ndarray:
    """Pixel-wise median of dark frames of one exposure (bias + dark current, float32).

    With copy=False float32 frames are kept as given until the median is taken (for fresh
    arrays the caller hands over, such as frames read one by one from files).
    """
    with FrameStack() as combined:
        for frame in frames:
            combined.append(frame, copy=copy)
        return combined.median()


def pair_noise(first: np.ndarray, second: np.ndarray) -> float:
    """Per-frame noise (ADU) from the difference of two frames of the same scene (robust MAD).

    Every other pixel in each axis: a quarter of a 1024^2 frame fixes it to ~0.3%.
    """
    diff = first[::2, ::2] - second[::2, ::2]
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return float("nan")
    return float(1.4826 * median_of(np.abs(diff - median_of(diff))) / np.sqrt(2))


def fit_dark_model(
    exposures_ms: Sequence[int], masters: Sequence[np.ndarray], counts: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel weighted least-squares line dark = intercept + slope * exposure_ms.

    Weights are the number of frames behind each master (its variance is ~1/N); 5.1.3 weighted
    exposures equally. Needs at least two distinct exposures.
    """
    x = np.asarray(exposures_ms, dtype=np.float64)
    w = np.asarray(counts, dtype=np.float64)
    if len(set(x.tolist())) < 2:
        raise ValueError("a dark line needs master darks at two or more exposures")
    if len(masters) != len(x) or len(w) != len(x):
        raise ValueError("exposures, masters and counts must have the same length")
    w = w / w.sum()
    x_mean = float(np.sum(w * x))
    sxx = float(np.sum(w * (x - x_mean) ** 2))
    # Both lines are fixed combinations of the masters: slope = sum a_k M_k with
    # a_k = w_k (x_k - xm) / sxx, intercept = sum (w_k - xm a_k) M_k. Summed in float64 with
    # scalar weights, in place: a third of the passes of forming sxy and the weighted mean.
    slope_weights = w * (x - x_mean) / sxx
    intercept_weights = w - x_mean * slope_weights
    slope = np.zeros(masters[0].shape, dtype=np.float64)
    intercept = np.zeros(masters[0].shape, dtype=np.float64)
    term = np.empty_like(slope)
    for a, b, master in zip(slope_weights, intercept_weights, masters, strict=True):
        np.multiply(master, a, out=term)
        slope += term
        np.multiply(master, b, out=term)
        intercept += term
    return slope.astype(np.float32), intercept.astype(np.float32)


def interpolate_dark(slope: np.ndarray, intercept: np.ndarray, exposure_ms: int) -> np.ndarray:
    """The dark model evaluated at one exposure."""
    return (intercept + slope * np.float32(exposure_ms)).astype(np.float32)


def normalise_flat(
    flat: np.ndarray, dark: np.ndarray, out: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """Dark-subtract one flat and divide it by its robust central level; returns (flat, level).
    `out` (float32, which may be `flat` itself) receives it instead of a new frame."""
    signal = np.subtract(flat, dark, out=out, dtype=np.float32)
    level = robust_level(signal)
    if not level > 0:
        raise ValueError(f"the flat's central level is {level:.3g} ADU after dark subtraction")
    signal /= np.float32(level)
    return signal, level


def finish_flat(median: np.ndarray) -> tuple[np.ndarray, int]:
    """Renormalise a median of normalised flats to a central level of 1, and guard it.

    Pixels whose response is below FLAT_MIN_RESPONSE (dead or nearly dead) or not finite become
    NaN, so the calibration leaves them undefined instead of dividing by ~0. Returns the master
    and the number of such pixels.
    """
    master = median / np.float32(robust_level(median))
    bad = ~np.isfinite(master) | (master < FLAT_MIN_RESPONSE)
    master[bad] = np.nan
    return master.astype(np.float32), int(bad.sum())


def master_flat(normalised: Iterable[np.ndarray], copy: bool = True) -> tuple[np.ndarray, int]:
    """Median of normalised flats, finished by finish_flat (`copy` as for master_dark)."""
    with FrameStack() as combined:
        for frame in normalised:
            combined.append(frame, copy=copy)
        return finish_flat(combined.median())
