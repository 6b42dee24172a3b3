"""The stack by row blocks from the frames' files is the median of the whole shifted frames."""

import numpy as np
import pytest

from ar_tasks import fitsio, registration, stacking
from ar_tasks.combine import FrameStack


@pytest.mark.parametrize("count", [1, 2, 5, 41, 60])
def test_row_blocks_from_files_give_the_median_of_shifted_frames(count, tmp_path):
    """Bit for bit, for sorting-network and sorting stacks, blocks smaller than the shifts'
    kernels, NaN pixels, sky offsets and uncovered edges."""
    rng = np.random.default_rng(count)
    shape = (70, 53)
    frames = [rng.normal(100, 5, shape).astype(np.float32) for _ in range(count)]
    frames[0][3, 4] = np.nan
    shifts = [registration.Shift(0.0, 0.0, 1.0)] + [
        registration.Shift(*rng.uniform(-9, 9, 2), 1.0) for _ in range(count - 1)
    ]
    offsets = rng.normal(0, 3, count).tolist()
    with FrameStack(memory_budget=10**9) as whole:
        for frame, shift, offset in zip(frames, shifts, offsets, strict=True):
            shifted = registration.shift_image(frame, shift.dy, shift.dx)
            shifted += np.float32(offset)
            whole.append(shifted)
        expected = whole.median()
    readers = [
        fitsio.ProductRows(fitsio.write_image(tmp_path / f"{i}.fits", frame)).read
        for i, frame in enumerate(frames)
    ]
    block_bytes = 5 * count * shape[1] * 4  # 5 rows: the minimum of 16 applies
    got = stacking.shifted_median(readers, shape, shifts, offsets, block_bytes=block_bytes)
    np.testing.assert_array_equal(got, expected)
    assert np.isnan(got).any() == (count == 1)  # one frame: its NaN stays; more: covered


def test_an_empty_group_is_refused():
    with pytest.raises(ValueError, match="empty group"):
        stacking.shifted_median([], (4, 4), [], [])
