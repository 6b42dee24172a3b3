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
# A master's QC (master_problem): what makes a master unfit to calibrate anything, here or
# in another night that borrows it.
MAX_INPUT_DISAGREEMENT = 2.0  # robust std(input - master) / one input's own noise
MAX_UNDEFINED_FRACTION = {"dark": 0.001, "flat": 0.02}  # NaN pixels (flats: response < 5%)
DARK_LEVEL_RANGE_ADU = (1.0, 60000.0)  # a master dark's median level outside it is no dark
# One calibration frame's own plausibility (frame_problem), before it may enter a master:
MAX_SATURATED_FRACTION = 0.05  # at or above saturation (BANZAI's 5%)
MAX_UNDEFINED_INPUT = 0.01  # NaN or infinite pixels (a T120 raw frame, 16-bit, has none)
MIN_FLAT_SNR = 50.0  # a flat's median S/N after dark subtraction (BANZAI's 50)
# An input that strays from the master of its siblings (outliers): |frame - master| >= 6
# sigma in more than 5% of its pixels (BANZAI's comparison), among at least 3 frames.
OUTLIER_SIGMA = 6.0
OUTLIER_FRACTION = 0.05


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


QC_INPUTS = 3  # inputs a master's QC compares with it (read anyway: kept, not read again)


def input_noise(inputs: list[np.ndarray]) -> float:
    """The noise of one input: the quietest pair of the first inputs (pair_noise), so one
    faulty input among three does not hide itself by inflating the yardstick. NaN with fewer
    than two inputs."""
    pairs = [
        pair_noise(inputs[i], inputs[j])
        for i in range(len(inputs))
        for j in range(i + 1, len(inputs))
    ]
    finite = [p for p in pairs if np.isfinite(p)]
    return min(finite) if finite else float("nan")


def disagreement(inputs: list[np.ndarray], master: np.ndarray, frame_noise: float) -> float:
    """How far the inputs stray from their master, in units of one input's own noise: the
    largest robust std(input - master) over `inputs` (every other pixel). Below 1 when they
    agree (the fixed pattern cancels; a median of N correlates with each input), much more
    when one is off (a light leak, a moved shadow, a frame of another set-up). NaN when the
    noise is unknown (a single input)."""
    if not (np.isfinite(frame_noise) and frame_noise > 0):
        return float("nan")
    worst = float("nan")
    for frame in inputs:
        diff = frame[::2, ::2] - master[::2, ::2]
        diff = diff[np.isfinite(diff)]
        if diff.size:
            spread = 1.4826 * float(median_of(np.abs(diff - median_of(diff)))) / frame_noise
            worst = max(worst, spread) if np.isfinite(worst) else spread
    return worst


def undefined_fraction(master: np.ndarray) -> float:
    """Fraction of a master's pixels that are NaN or infinite (flats: dead, see finish_flat)."""
    return float(1.0 - np.count_nonzero(np.isfinite(master)) / master.size)


def master_problem(kind: str, qc: dict[str, float]) -> str:
    """Why a master with these QC figures must not be used ("" when it may): too many
    undefined pixels, an input that disagrees with the master, a dark level no dark has."""
    undefined = qc.get("undefined_fraction", 0.0)
    if undefined > MAX_UNDEFINED_FRACTION[kind]:
        limit = MAX_UNDEFINED_FRACTION[kind]
        return f"{undefined:.2%} of its pixels are undefined (at most {limit:.1%})"
    ratio = qc.get("disagreement", float("nan"))
    if np.isfinite(ratio) and ratio > MAX_INPUT_DISAGREEMENT:
        return (
            f"an input differs from it by {ratio:.2f} times one input's noise "
            f"(at most {MAX_INPUT_DISAGREEMENT}): its inputs do not agree"
        )
    level = qc.get("level_adu")
    low, high = DARK_LEVEL_RANGE_ADU
    if kind == "dark" and level is not None and not low <= level <= high:
        return f"its median level is {level:.1f} ADU (a dark lies in {low:g}..{high:g})"
    return ""


def frame_problem(frame: np.ndarray, saturation: float) -> str:
    """Why a raw dark or flat cannot enter a master ("" when it may): undefined pixels over
    MAX_UNDEFINED_INPUT, constant (a readout that failed, an all-zero file), more than
    MAX_SATURATED_FRACTION of it saturated."""
    sample = frame[::2, ::2]
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return "has no defined pixel"
    undefined = 1.0 - finite.size / sample.size
    if undefined > MAX_UNDEFINED_INPUT:
        return (
            f"has {undefined:.1%} of its pixels NaN or infinite (at most "
            f"{MAX_UNDEFINED_INPUT:.0%} in a calibration frame)"
        )
    low, high = float(finite.min()), float(finite.max())
    if low == high:
        return f"is constant (every pixel is {low:g} ADU)"
    saturated = float(np.count_nonzero(finite >= saturation)) / finite.size
    if saturated > MAX_SATURATED_FRACTION:
        return (
            f"has {saturated:.1%} of its pixels at or above saturation ({saturation:g} ADU; at "
            f"most {MAX_SATURATED_FRACTION:.0%})"
        )
    return ""


def flat_signal_problem(level_adu: float, gain: float) -> str:
    """Why a dark-subtracted flat of this central level is too faint ("" when it is not):
    its photon S/N, sqrt(level x gain), below MIN_FLAT_SNR."""
    snr = float(np.sqrt(max(level_adu, 0.0) * gain))
    if snr < MIN_FLAT_SNR:
        return (
            f"is too faint: its level of {level_adu:.0f} ADU gives S/N {snr:.0f} "
            f"(at least {MIN_FLAT_SNR:g})"
        )
    return ""


def outlier_fraction(frame: np.ndarray, master: np.ndarray, noise: float) -> float:
    """The fraction of a frame's pixels (every other one) at OUTLIER_SIGMA x `noise` or more
    from the master."""
    diff = np.abs(frame[::2, ::2] - master[::2, ::2])
    finite = np.isfinite(diff)
    if not finite.any():
        return 0.0
    return float(np.count_nonzero(diff[finite] >= OUTLIER_SIGMA * noise)) / int(finite.sum())


def median_without_outliers(
    stack: FrameStack, noise: float
) -> tuple[np.ndarray, dict[int, float], list[int]]:
    """The median of a stack, taken again without the frames that stray from it (each
    frame's outlier_fraction above OUTLIER_FRACTION); returns (median, {index: fraction} of
    the frames left out, the indices kept). Only a minority can be outliers, and only among
    three frames or more: otherwise nothing is left out (the master's QC judges it)."""
    median = stack.median()
    everyone = list(range(len(stack)))
    if len(stack) < 3 or not (np.isfinite(noise) and noise > 0):
        return median, {}, everyone
    fractions = {i: outlier_fraction(stack.frame(i), median, noise) for i in everyone}
    stray = {i: f for i, f in fractions.items() if f > OUTLIER_FRACTION}
    if not stray or 2 * len(stray) >= len(stack):
        return median, {}, everyone
    kept = [i for i in everyone if i not in stray]
    with FrameStack() as again:
        for i in kept:
            again.append(stack.frame(i))
        return again.median(), stray, kept
