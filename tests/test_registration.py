"""Registration: sub-pixel shifts against truth, bright sky, fixed-pattern defects, no wrap."""

import numpy as np
import pytest
from camera_model import READ_NOISE, render, star_field

from ar_tasks import registration
from ar_tasks.combine import FrameStack

SHAPE = (512, 512)
DITHERS = [(3.3, -7.6), (12.45, 9.1), (-0.2, 0.7), (-14.8, 13.35), (0.5, 0.5)]


def _noisy(image, rng):
    return (rng.poisson(image) + rng.normal(0, READ_NOISE, image.shape)).astype(np.float32)


@pytest.mark.parametrize("sky", [100.0, 20000.0])
def test_subpixel_shifts_within_five_hundredths(sky):
    """5.1.3 found (0, 0) at bright sky; the background is removed before correlating."""
    rng = np.random.default_rng(30)
    stars, fwhm = star_field(SHAPE, rng)
    hot = rng.random(SHAPE) < 1e-3  # same detector pixels in every frame
    frames = []
    for dy, dx in [(0.0, 0.0), *DITHERS]:
        frame = _noisy(render(SHAPE, stars, fwhm, dy, dx, sky), rng)
        frame[hot] += 500
        frames.append(frame)
    correlator = registration.Correlator(registration.detection_image(frames[0]))
    for (dy, dx), frame in zip(DITHERS, frames[1:], strict=True):
        shift = correlator.shift(registration.detection_image(frame))
        # The shift brings the frame back onto the reference: the opposite of its dither.
        assert abs(shift.dy + dy) < 0.05 and abs(shift.dx + dx) < 0.05, (dy, dx, shift)
        assert shift.peak_ratio > 2


def test_sparse_field_falls_back_to_the_full_resolution_correlation():
    """Three stars are too few to refine the binned shift: the full-resolution correlation
    is measured instead, still within a tenth of a pixel."""
    rng = np.random.default_rng(32)
    stars = np.array([[120.3, 200.7, 4e4], [300.1, 90.4, 3e4], [410.6, 380.2, 5e4]])
    reference = _noisy(render(SHAPE, stars, 3.5), rng)
    correlator = registration.Correlator(registration.detection_image(reference))
    for dy, dx in DITHERS:
        frame = _noisy(render(SHAPE, stars, 3.5, dy, dx), rng)
        shift = correlator.shift(registration.detection_image(frame))
        assert shift.stars == 0
        assert abs(shift.dy + dy) < 0.1 and abs(shift.dx + dx) < 0.1, (dy, dx, shift)


def test_frame_without_sources_is_refused():
    rng = np.random.default_rng(31)
    stars, fwhm = star_field(SHAPE, rng)
    correlator = registration.Correlator(registration.detection_image(render(SHAPE, stars, fwhm)))
    with pytest.raises(registration.RegistrationError):
        correlator.shift(registration.detection_image(np.full(SHAPE, 100, np.float32)))


def test_shift_never_wraps_and_marks_uncovered_pixels():
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    out = registration.shift_image(image, 3, -2)
    assert np.isnan(out[:3]).all() and np.isnan(out[:, -2:]).all()
    np.testing.assert_array_equal(out[3:, :-2], image[:-3, 2:])
    half = registration.shift_image(image, 0, 0.5)
    assert np.isnan(half[:, :3]).all() and np.isnan(half[:, -2:]).all()  # kernel off the edge
    np.testing.assert_allclose(half[:, 3:-2], image[:, 2:-3] + 0.5, rtol=1e-5)  # linear ramp


def test_subpixel_shift_keeps_a_star_sharp_and_its_flux():
    """Lanczos-3: a 3.5 px FWHM star shifted by fractions keeps its flux, place and width."""
    shape = (64, 64)
    star = np.array([[32.0, 30.0, 1000.0]])
    for dy, dx in ((0.5, 0.5), (0.25, -0.4)):
        moved = registration.shift_image(render(shape, star, 3.5, sky=0), dy, dx)
        truth = render(shape, star, 3.5, dy, dx, sky=0)
        inner = np.s_[8:-8, 8:-8]
        assert abs(np.nansum(moved[inner]) / truth[inner].sum() - 1) < 1e-3
        assert np.nanmax(np.abs(moved[inner] - truth[inner])) < 0.01 * truth.max()


def test_stack_has_no_wrapped_flux_and_rejects_cosmic_rays():
    rng = np.random.default_rng(32)
    shape = (128, 128)
    truth = np.zeros(shape, np.float32)
    truth[5, 120] = 1000  # a star near the right edge
    frames, cosmics = [], []
    for index, dx in enumerate((0, 10, 20)):
        frame = registration.shift_image(truth, 0, dx)  # dithered rightwards
        frame = np.nan_to_num(frame) + rng.normal(0, 1, shape).astype(np.float32)
        y, x = 60 + index, 40 + index
        frame[y, x] += 5000  # a cosmic ray, never at the same sky place twice
        cosmics.append((y, x - dx))
        frames.append(registration.shift_image(frame, 0, -dx))
    with FrameStack() as stack:
        for frame in frames:
            stack.append(frame)
        combined = stack.median()
    assert combined[5, 120] == pytest.approx(1000, abs=5)
    # The star moved off the right edge in shifted frames: nothing comes back on the left.
    assert np.nanmax(np.abs(combined[:, :30])) < 10
    for y, x in cosmics:
        assert abs(combined[y, x]) < 10
    assert np.isnan(combined[:, -1]).sum() == 0  # the reference covers every column


def test_ghost_fraction():
    shifts = [registration.Shift(10, -80, 5), registration.Shift(1, 1, 5)]
    assert registration.ghost_fraction(shifts, (512, 512)) == pytest.approx(80 / 512)


@pytest.mark.parametrize(
    "dy, dx", [(0, 0), (2.3, -1.7), (-0.4, 0.9), (10.9995, 3), (-250, 1.5), (400, 0), (7.5, -300)]
)
def test_shifting_rows_from_windows_is_shifting_the_frame(dy, dx):
    """Any block of output rows, made from only the source rows it needs, is bit-identical
    to the same rows of the whole shifted frame (the stack is made this way)."""
    rng = np.random.default_rng(4)
    image = rng.normal(size=(300, 257)).astype(np.float32)
    image[5, 7] = np.nan
    whole = registration.shift_image(image, dy, dx)
    blocks = np.empty_like(whole)
    for start in range(0, 300, 37):
        stop = min(300, start + 37)
        low, high = registration.source_rows(300, dy, start, stop)
        window = image[low:high].copy()  # nothing outside the rows it says it needs
        registration.shift_rows(window, low, 300, dy, dx, start, stop, blocks[start:stop])
    np.testing.assert_array_equal(blocks, whole)
