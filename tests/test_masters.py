"""Master darks, dark interpolation and master flats against known truth."""

import numpy as np
import pytest
from camera_model import dark_rate, expose, frame_sigma, robust_std, structured_bias, vignetted_flat

from ar_tasks import masters
from ar_tasks.combine import median_noise_factor

SHAPE = (256, 256)


@pytest.fixture(scope="module")
def detector():
    rng = np.random.default_rng(10)
    bias = structured_bias(SHAPE, rng)
    rate, hot = dark_rate(SHAPE, rng)
    return rng, bias, rate, hot


def _darks(rng, bias, rate, seconds, count, cosmics=True):
    frames = []
    for _ in range(count):
        frame = expose(rate * seconds, bias, rng)
        if cosmics:
            hits = rng.integers(0, SHAPE[0], size=(10, 2))
            frame[hits[:, 0], hits[:, 1]] += 3000
        frames.append(frame)
    return frames


def test_master_dark_error_within_noise_of_a_median(detector):
    rng, bias, rate, hot = detector
    count, seconds = 5, 60
    master = masters.master_dark(_darks(rng, bias, rate, seconds, count))
    residual = (master - (bias + rate * seconds))[~hot]
    expected = float(np.median(frame_sigma(rate * seconds))) * median_noise_factor(count)
    assert robust_std(residual) < 1.5 * expected
    assert abs(float(np.median(residual))) < 0.2 * expected
    assert master.dtype == np.float32


def test_dark_line_interpolates_a_missing_exposure(detector):
    rng, bias, rate, hot = detector
    exposures = [5000, 60000, 180000]
    darks = [masters.master_dark(_darks(rng, bias, rate, e / 1000, 5)) for e in exposures]
    slope, intercept = masters.fit_dark_model(exposures, darks, [5, 5, 5])
    predicted = masters.interpolate_dark(slope, intercept, 120000)
    residual = (predicted - (bias + rate * 120))[~hot]
    # Noise of a line prediction from 3 masters, each a median of 5 (largest frame noise).
    x = np.array(exposures, float)
    leverage = 1 / 3 + (120000 - x.mean()) ** 2 / np.sum((x - x.mean()) ** 2)
    sigma = float(np.median(frame_sigma(rate * 180))) * median_noise_factor(5) * np.sqrt(leverage)
    assert robust_std(residual) < 1.5 * sigma
    assert abs(float(np.median(residual))) < 0.2 * sigma


def test_dark_line_is_exact_on_noiseless_lines():
    bias, rate = np.full((3, 3), 300.0), np.full((3, 3), 0.5)
    darks = [bias + rate * e / 1000 for e in (10000, 60000)]
    slope, intercept = masters.fit_dark_model([10000, 60000], darks, [3, 7])
    np.testing.assert_allclose(masters.interpolate_dark(slope, intercept, 30000), 315.0, rtol=1e-6)


def test_dark_line_needs_two_exposures():
    with pytest.raises(ValueError, match="two or more"):
        masters.fit_dark_model([1000, 1000], [np.zeros(2), np.ones(2)], [1, 1])


def _flats(rng, bias, rate, truth, count=7, seconds=5.0):
    frames, darks = [], _darks(rng, bias, rate, seconds, 5, cosmics=False)
    dark = masters.master_dark(darks)
    for level in np.linspace(20000, 30000, count):
        frames.append(expose(rate * seconds + level * truth, bias, rng))
    return frames, dark


def _column_normalised_master(frames, dark):
    """astro_reduce 5.1.3's flat: each column divided by its own mean (bug B11)."""
    normalised = [(f - dark) / np.mean(f - dark, axis=0) for f in frames]
    return np.median(normalised, axis=0)


def test_master_flat_error_below_half_a_percent(detector):
    rng, bias, rate, _ = detector
    truth = vignetted_flat(SHAPE, rng)
    frames, dark = _flats(rng, bias, rate, truth)
    master, undefined = masters.master_flat(masters.normalise_flat(f, dark)[0] for f in frames)
    assert undefined == 0
    rms = float(np.sqrt(np.mean((master / truth - 1) ** 2)))
    assert rms < 0.005, rms
    old = _column_normalised_master(frames, dark)
    old_rms = float(np.sqrt(np.mean((old / np.median(old) / truth - 1) ** 2)))
    assert old_rms > 0.03, old_rms  # 5.1.3's column normalisation: about 5%


def test_master_flat_guards_dead_pixels():
    flat = np.ones((64, 64), np.float32)
    flat[10, 10], flat[20, 20] = 0.0, 0.01
    master, undefined = masters.master_flat([flat, flat, flat])
    assert undefined == 2 and np.isnan(master[10, 10]) and np.isnan(master[20, 20])
    assert np.nanmax(np.abs(master - 1)) < 1e-6


def test_a_masters_qc_tells_agreeing_inputs_from_a_faulty_one():
    """Three dark frames of read noise 6 ADU around a fixed pattern: one input's noise is
    measured as 6 ADU (the quietest pair) even when one frame is faulty (a 40% ramp), whose
    disagreement with the master then exceeds the limit; agreeing inputs stay below 1."""
    from ar_tasks.masters import (
        MAX_INPUT_DISAGREEMENT,
        disagreement,
        input_noise,
        master_dark,
        master_problem,
    )

    rng = np.random.default_rng(3)
    pattern = 300 + 20 * rng.standard_normal((256, 256)).astype(np.float32)
    frames = [pattern + 6 * rng.standard_normal((256, 256)).astype(np.float32) for _ in range(3)]
    master = master_dark(frames)
    noise = input_noise(frames)
    assert noise == pytest.approx(6.0, rel=0.05)
    agree = disagreement(frames, master, noise)
    assert 0.3 < agree < 1.0
    assert master_problem("dark", {"disagreement": agree, "level_adu": 300.0}) == ""
    faulty = [frames[0] * np.linspace(0.8, 1.2, 256, dtype=np.float32)[None, :], *frames[1:]]
    faulty_master = master_dark(faulty)
    assert input_noise(faulty) == pytest.approx(6.0, rel=0.05)  # the pair without it
    ratio = disagreement(faulty, faulty_master, input_noise(faulty))
    assert ratio > MAX_INPUT_DISAGREEMENT
    assert "do not agree" in master_problem("dark", {"disagreement": ratio})
    assert "undefined" in master_problem("flat", {"undefined_fraction": 0.05})
    assert "median level is 0.0 ADU" in master_problem("dark", {"level_adu": 0.0})
    assert np.isnan(disagreement(frames[:1], master, input_noise(frames[:1])))


def test_an_outlier_among_siblings_is_left_out_of_the_median():
    """Five darks, one lit by a leak of 10 sigma: left out (BANZAI's 6 sigma in > 5% of the
    pixels), and the median of the other four is what a median of four gives; two strays
    among three are a majority: nothing is left out."""
    from ar_tasks.combine import FrameStack
    from ar_tasks.masters import frame_problem, median_without_outliers

    rng = np.random.default_rng(5)
    truth = np.full((128, 128), 300.0, np.float32)
    frames = [truth + 6 * rng.standard_normal(truth.shape).astype(np.float32) for _ in range(5)]
    frames[2] = frames[2] + 60
    with FrameStack() as stack:
        for frame in frames:
            stack.append(frame)
        median, stray, kept = median_without_outliers(stack, 6.0)
    assert list(stray) == [2] and stray[2] > 0.99 and kept == [0, 1, 3, 4]
    expected = 6 * median_noise_factor(4)
    assert robust_std(median - truth) < 1.2 * expected and abs(np.mean(median - truth)) < 0.5
    with FrameStack() as stack:
        for frame in (frames[0], frames[2], frames[2] + 60):
            stack.append(frame)
        assert median_without_outliers(stack, 6.0)[1] == {}
    assert frame_problem(np.full((8, 8), 7.0), 64000) == "is constant (every pixel is 7 ADU)"
    burnt = frames[0].copy()
    burnt[:20] = 65535  # 16% of the frame
    assert "15.6% of its pixels at or above saturation" in frame_problem(burnt, 64000)
    assert frame_problem(frames[0], 64000) == ""
    holes = frames[0].copy()
    holes[:8] = np.nan  # 6% of the frame
    assert frame_problem(holes, 64000).startswith("has 6.2% of its pixels NaN or infinite")
