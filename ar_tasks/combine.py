"""Median combination of many frames with bounded memory.

5.1.3 held N float64 frames, their correlation maps and rolled copies, then a 3-D median on top
(4 GB for 20 x 2048^2). Here frames are float32, kept in memory only up to a budget and spilled
to a scratch file beyond it, and the median is computed over row blocks, so peak memory stays
about flat as the number of frames grows.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import TracebackType

import numpy as np

DEFAULT_MEMORY_BUDGET = 256 * 1024 * 1024  # bytes of frames held in RAM before spilling
DEFAULT_BLOCK_BYTES = 32 * 1024 * 1024  # bytes of the (frames x rows x columns) block cube


def nanmedian_axis0(cube: np.ndarray) -> np.ndarray:
    """Median along axis 0 ignoring NaN; NaN where every value is NaN.

    The frames axis is moved last (contiguous) and sorted there, NaN last, so the median of the
    n finite values sits at (n-1)//2 and n//2: exact, and several times faster than
    numpy.nanmedian on stacks.
    """
    ordered = np.moveaxis(cube, 0, -1).copy()
    last = cube.shape[0] - 1
    finite = np.isfinite(ordered)
    if finite.all():  # the usual case: a partial sort is enough
        kth = sorted({last // 2, (last + 1) // 2})
        ordered.partition(kth, axis=-1)
        return ((ordered[..., kth[0]].astype(np.float64) + ordered[..., kth[-1]]) / 2).astype(
            np.float32
        )
    ordered.sort(axis=-1)
    count = np.count_nonzero(finite, axis=-1)
    low = np.minimum(np.maximum(count - 1, 0) // 2, last)[..., np.newaxis]
    high = np.minimum(count // 2, last)[..., np.newaxis]
    a = np.take_along_axis(ordered, low, axis=-1)[..., 0]
    b = np.take_along_axis(ordered, high, axis=-1)[..., 0]
    median = ((a.astype(np.float64) + b) / 2).astype(np.float32)
    median[count == 0] = np.nan
    return median


class FrameStack:
    """An append-only stack of equally shaped float32 frames, readable by row blocks.

    Frames stay in memory until `memory_budget` bytes are used, then go to a scratch folder
    (removed on close). Use as a context manager.
    """

    def __init__(
        self,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        scratch_dir: Path | None = None,
    ):
        self._budget = memory_budget
        self._scratch_parent = scratch_dir
        self._scratch: Path | None = None
        self._frames: list[np.ndarray | Path] = []
        self._in_memory = 0
        self.shape: tuple[int, int] | None = None

    def __enter__(self) -> FrameStack:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._frames)

    def close(self) -> None:
        """Drop the frames and delete the scratch folder."""
        self._frames.clear()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def append(self, frame: np.ndarray) -> None:
        """Add a frame (copied as float32, C order)."""
        frame = np.ascontiguousarray(frame, dtype=np.float32)
        if frame.ndim != 2:
            raise ValueError(f"frames must be 2-D, got shape {frame.shape}")
        if self.shape is None:
            self.shape = (int(frame.shape[0]), int(frame.shape[1]))
        elif frame.shape != self.shape:
            raise ValueError(f"frame shape {frame.shape} differs from the stack's {self.shape}")
        if self._in_memory + frame.nbytes <= self._budget:
            self._frames.append(frame.copy())
            self._in_memory += frame.nbytes
            return
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="ar_stack_", dir=self._scratch_parent))
        path = self._scratch / f"{len(self._frames):05d}.f32"
        frame.tofile(path)
        self._frames.append(path)

    def rows(self, index: int, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of frame `index`."""
        assert self.shape is not None
        item = self._frames[index]
        if isinstance(item, np.ndarray):
            return item[start:stop]
        width = self.shape[1]
        count = (stop - start) * width
        block = np.fromfile(item, dtype=np.float32, count=count, offset=start * width * 4)
        return block.reshape(stop - start, width)

    def frame(self, index: int) -> np.ndarray:
        """One whole frame."""
        assert self.shape is not None
        return self.rows(index, 0, self.shape[0])

    def median(self, block_bytes: int = DEFAULT_BLOCK_BYTES) -> np.ndarray:
        """Pixel-wise NaN-ignoring median of all frames, computed by row blocks."""
        if not self._frames or self.shape is None:
            raise ValueError("cannot combine an empty stack")
        height, width = self.shape
        if len(self._frames) == 1:
            return self.frame(0).copy()
        block = max(1, block_bytes // (len(self._frames) * width * 4))
        result = np.empty(self.shape, dtype=np.float32)
        cube = np.empty((len(self._frames), min(block, height), width), dtype=np.float32)
        for start in range(0, height, block):
            stop = min(height, start + block)
            part = cube[:, : stop - start]
            for index in range(len(self._frames)):
                part[index] = self.rows(index, start, stop)
            result[start:stop] = nanmedian_axis0(part)
        return result


def median_noise_factor(count: int) -> float:
    """Noise of a median of `count` Gaussian values, in units of one value's sigma.

    sqrt(pi/2)/sqrt(n) for large n; exact for n = 1 and 2 (the median is then the mean).
    """
    if count <= 2:
        return 1.0 / np.sqrt(count)
    return float(np.sqrt(np.pi / (2 * count)))
