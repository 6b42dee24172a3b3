"""The median of a group's registered frames, taken row block by row block from their files.

Holding every shifted frame of a group (4 MB each at 1024^2) made a 50-frame group spill
200 MB to scratch files and read them back, and touched 200 MB of fresh memory per group.
Here each block of output rows reads, for every frame, only the rows its shift needs, shifts
them into one small cube and takes the median there: memory is one cube whatever the number
of frames, and each aux frame is read once. The result is bit-identical to shifting whole
frames and combining them (same sums, same comparisons, per pixel).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .combine import DEFAULT_BLOCK_BYTES, nanmedian_axis0
from .registration import LANCZOS_ORDER, Shift, shift_rows, source_rows

MIN_BLOCK_ROWS = 16  # a block's rows, at least: each frame's window adds a few rows of kernel

RowReader = Callable[[int, int, np.ndarray], np.ndarray]  # (start, stop, buffer) -> rows


def shifted_median(
    readers: Sequence[RowReader],
    shape: tuple[int, int],
    shifts: Sequence[Shift],
    offsets: Sequence[float],
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> np.ndarray:
    """NaN-ignoring median over frames of frame[y - dy, x - dx] + offset.

    `readers[i](start, stop, buffer)` gives rows [start, stop) of frame i as float32 (in
    `buffer` when it can); uncovered pixels of a shifted frame are NaN and do not count.
    """
    if not readers:
        raise ValueError("cannot combine an empty group")
    height, width = shape
    count = len(readers)
    rows = min(height, max(MIN_BLOCK_ROWS, block_bytes // (count * width * 4)))
    cube = np.empty((count, rows, width), dtype=np.float32)
    window = np.empty((rows + 2 * LANCZOS_ORDER) * width, dtype=np.float32)
    result = np.empty(shape, dtype=np.float32)
    for start in range(0, height, rows):
        stop = min(height, start + rows)
        part = cube[:, : stop - start]
        for plane, read, shift, offset in zip(part, readers, shifts, offsets, strict=True):
            low, high = source_rows(height, shift.dy, start, stop)
            source = read(low, high, window) if high > low else window[:0].reshape(0, width)
            shift_rows(source, low, height, shift.dy, shift.dx, start, stop, plane)
            plane += np.float32(offset)
        result[start:stop] = part[0] if count == 1 else nanmedian_axis0(part)
    return result
