"""Median combination of many frames with bounded memory.

5.1.3 held N float64 frames, their correlation maps and rolled copies, then a 3-D median on top
(4 GB for 20 x 2048^2). Here frames are float32, kept in memory only up to a budget and spilled
to a scratch file beyond it, and the median is computed over row blocks, so peak memory stays
about flat as the number of frames grows.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

DEFAULT_MEMORY_BUDGET = 96 * 1024 * 1024  # bytes of frames a process holds in RAM together
MEMORY_BUDGET_ENV = "AR_MEMORY_BUDGET_MB"  # overrides DEFAULT_MEMORY_BUDGET, in MiB
DEFAULT_BLOCK_BYTES = 8 * 1024 * 1024  # bytes of the (frames x rows x columns) block cube


NETWORK_MAX_FRAMES = 40  # up to here a sorting network beats numpy's per-pixel sort (measured)
# Pixels sorted together: the block stays in the CPU's L2/L3 cache, and it is large enough
# that two threads do not queue for the GIL between numpy's calls (an 8 MB cube of 20 frames
# in each of two threads: 14.5 ms at 1 MiB, 6.8 ms at 4 MiB; 4.1 and 3.5 ms in one thread).
_NETWORK_BLOCK_BYTES = 4 << 20
_INF = np.float32(np.inf)


@functools.cache
def sorting_network(count: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort for `count` items: compare-exchange pairs (low, high).

    Applied to whole rows of pixels with np.minimum/np.maximum it sorts every pixel's values
    at once, in SIMD: ten times faster than sorting a million 5-value rows one by one.
    """
    pairs = []
    p = 1
    while p < count:
        k = p
        while k >= 1:
            for j in range(k % p, count - k, 2 * k):
                for i in range(min(k, count - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple(pairs)


@functools.cache
def median_network(count: int) -> tuple[tuple[int, int, bool, bool], ...]:
    """sorting_network(count) pruned to what the median and the extremes need: (low, high,
    keep the minimum, keep the maximum) for each compare-exchange that leads to them.

    Walking the network backwards from the outputs wanted (the two middle rows, and the first
    and last, which tell undefined pixels), a pair neither of whose outputs is wanted later is
    dropped, and a pair with one wanted output computes only that one: 16 of 18 operations at 5
    frames, 154 of 206 at 20. Every wanted output is made by the same operations on the same
    values as in the whole network, so the median is bit-identical.
    """
    wanted = {0, count - 1, (count - 1) // 2, count // 2}
    kept = []
    for low, high in reversed(sorting_network(count)):
        keep_low, keep_high = low in wanted, high in wanted
        if keep_low or keep_high:
            kept.append((low, high, keep_low, keep_high))
            wanted |= {low, high}
    return tuple(reversed(kept))


def median_of(values: np.ndarray) -> np.floating:
    """np.median of all the values, to the bit (NaN if any is NaN), ten times faster.

    numpy's median partitions around two or three indices at once, which takes its slow path
    (0.95 ms for the 117,000 values of a frame's sky sample); one index, then the largest value
    below it, give the same two middle values in 0.09 ms.
    """
    values = np.asarray(values).reshape(-1)
    if values.dtype.kind != "f":
        values = values.astype(np.float64)  # as np.median averages integers
    if values.size == 0:
        return np.float64(np.nan)
    middle = values.size // 2
    ordered = np.partition(values, middle)
    if np.isnan(ordered[middle:].max()):  # NaN are ordered last, so one is in this half
        return ordered.dtype.type(np.nan)
    if values.size % 2:
        return ordered[middle]
    return (ordered[:middle].max() + ordered[middle]) / 2  # in the values' type, as np.mean


def nanmedian_axis0(cube: np.ndarray) -> np.ndarray:
    """Median along axis 0 ignoring NaN (and inf); NaN where no value is finite.

    Exact: the middle value, or the mean of the two middle values for an even count. Small
    stacks go through a sorting network, large ones through numpy's sort along a contiguous
    axis; both are several times faster than numpy.nanmedian.
    """
    cube = np.asarray(cube, dtype=np.float32)
    count = cube.shape[0]
    if count <= NETWORK_MAX_FRAMES:
        return _network_median(list(cube.reshape(count, -1))).reshape(cube.shape[1:])
    ordered = np.moveaxis(cube, 0, -1).copy()
    missing = ~np.isfinite(ordered)
    if missing.any():
        ordered[missing] = np.inf  # sorted last, then left out of the count
    ordered.sort(axis=-1)
    flat = ordered.reshape(-1, count)
    return _middle(flat.T, missing.reshape(-1, count).T).reshape(cube.shape[1:])


def _network_median(frames: Sequence[np.ndarray]) -> np.ndarray:
    """nanmedian_axis0 of equally long 1-D float32 arrays by a sorting network, in blocks.

    NaN become +inf as each block is copied (np.fmin), so no mask is built; the few pixels
    with an undefined value (a shifted frame's uncovered edge) are found from the sorted rows
    (+inf last, -inf first) and redone at the end from the frames, all at once.
    """
    count, size = len(frames), frames[0].size
    network = median_network(count)
    step = max(1024, _NETWORK_BLOCK_BYTES // (4 * count))
    result = np.empty(size, dtype=np.float32)
    block = np.empty((count, min(step, size)), dtype=np.float32)
    spare = np.empty(min(step, size), dtype=np.float32)
    low_index, high_index = (count - 1) // 2, count // 2
    partial = []
    for start in range(0, size, step):
        stop = min(size, start + step)
        values = block[:, : stop - start]
        for row, frame in zip(values, frames, strict=True):
            np.fmin(frame[start:stop], _INF, out=row)  # a copy in which NaN is +inf
        rows = list(values)
        low = spare[: stop - start]
        for i, j, keep_low, keep_high in network:
            if keep_low and keep_high:
                np.minimum(rows[i], rows[j], out=low)
                np.maximum(rows[i], rows[j], out=rows[j])
                rows[i], low = low, rows[i]  # swap references, not pixels
            elif keep_low:
                np.minimum(rows[i], rows[j], out=rows[i])
            else:
                np.maximum(rows[i], rows[j], out=rows[j])
        median = result[start:stop]
        np.add(rows[low_index], rows[high_index], out=median)
        median *= np.float32(0.5)
        partial.append(np.flatnonzero((rows[-1] == _INF) | (rows[0] == -_INF)) + start)
    pixels = np.concatenate(partial)
    if pixels.size:
        cube = np.stack([frame[pixels] for frame in frames])
        missing = ~np.isfinite(cube)
        cube[missing] = _INF
        cube.sort(axis=0)
        result[pixels] = _middle(cube, missing)
    return result


def _middle(ordered: np.ndarray, missing: np.ndarray) -> np.ndarray:
    """Median of sorted values (axis 0) of which `missing` ones (sorted last) do not count."""
    count = ordered.shape[0]
    low, high = (count - 1) // 2, count // 2
    median = (ordered[low] + ordered[high]) * np.float32(0.5)
    if not missing.any():
        return median.astype(np.float32, copy=False)
    valid = count - np.count_nonzero(missing, axis=0)
    partial = np.nonzero(valid < count)[0]
    ordered = ordered[:, partial]
    n = valid[partial]
    a = ordered[np.maximum(n - 1, 0) // 2, np.arange(partial.size)]
    b = ordered[np.minimum(n // 2, count - 1), np.arange(partial.size)]
    median[partial] = np.where(n > 0, (a + b) * np.float32(0.5), np.nan)
    return median.astype(np.float32, copy=False)


class MemoryBudget:
    """Bytes of frames that stacks sharing this budget may hold in RAM together.

    One budget per process (`process_budget()`; each worker process has its own), shared by
    every FrameStack of every thread, keeps peak memory flat however many groups run at once
    and however many frames they hold: a stack that cannot take more spills its next frames
    to disk.
    """

    def __init__(self, limit: int):
        if limit < 0:
            raise ValueError(f"a memory budget cannot be negative ({limit} bytes)")
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def take(self, nbytes: int) -> bool:
        """Reserve `nbytes` if they fit; False (nothing reserved) if they do not."""
        with self._lock:
            if self._used + nbytes > self.limit:
                return False
            self._used += nbytes
            return True

    def give_back(self, nbytes: int) -> None:
        with self._lock:
            self._used = max(0, self._used - nbytes)


@functools.cache
def process_budget() -> MemoryBudget:
    """The budget shared by the whole process: AR_MEMORY_BUDGET_MB MiB, else 96 MiB."""
    value = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    try:
        limit = int(float(value) * 2**20) if value else DEFAULT_MEMORY_BUDGET
    except ValueError:
        raise ValueError(f"{MEMORY_BUDGET_ENV}={value!r} is not a number of MiB") from None
    return MemoryBudget(limit)


class FrameStack:
    """An append-only stack of equally shaped float32 frames, readable by row blocks.

    Frames stay in memory while the memory budget allows (by default the process's, shared
    with every other stack; an int gives this stack a budget of its own), then go to a scratch
    folder (removed on close). With sparse=True a frame that is mostly zero (a detection
    image: 3% of its pixels are not) is kept as its non-zero pixels, about 16 times smaller,
    so a group of hundreds of frames stays in memory. Use as a context manager.
    """

    def __init__(
        self,
        memory_budget: int | MemoryBudget | None = None,
        scratch_dir: Path | None = None,
        sparse: bool = False,
    ):
        if memory_budget is None:
            memory_budget = process_budget()
        elif isinstance(memory_budget, int):
            memory_budget = MemoryBudget(memory_budget)
        self._budget = memory_budget
        self._scratch_parent = scratch_dir
        self._scratch: Path | None = None
        self._sparse = sparse
        self._frames: list[np.ndarray | Path | _Sparse] = []
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
        """Drop the frames, give their bytes back to the budget and delete the scratch folder."""
        self._frames.clear()
        self._budget.give_back(self._in_memory)
        self._in_memory = 0
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def append(self, frame: np.ndarray, copy: bool = True) -> None:
        """Add a frame (as float32, C order). With copy=False a float32 frame is kept as it is,
        not copied: for a fresh array its caller hands over and never changes again."""
        frame = np.ascontiguousarray(frame, dtype=np.float32)
        if frame.ndim != 2:
            raise ValueError(f"frames must be 2-D, got shape {frame.shape}")
        if self.shape is None:
            self.shape = (int(frame.shape[0]), int(frame.shape[1]))
        elif frame.shape != self.shape:
            raise ValueError(f"frame shape {frame.shape} differs from the stack's {self.shape}")
        item: np.ndarray | _Sparse = frame.copy() if copy else frame
        if self._sparse and frame.size < 2**31:  # int32 indices
            compact = _Sparse.of(frame)
            if compact.nbytes < frame.nbytes // 2:
                item = compact
        if self._budget.take(item.nbytes):
            self._frames.append(item)
            self._in_memory += item.nbytes
            return
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="ar_stack_", dir=self._scratch_parent))
        path = self._scratch / f"{len(self._frames):05d}.f32"
        if isinstance(item, _Sparse):
            self._frames.append(item.spill(path))
            return
        frame.tofile(path)
        self._frames.append(path)

    def rows(self, index: int, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop) of frame `index`. A sparse frame is expanded into `out` when
        given (a buffer of at least that many rows, reused by the caller), else into a new
        array; a dense frame in memory is returned as stored."""
        assert self.shape is not None
        item = self._frames[index]
        if isinstance(item, np.ndarray):
            return item[start:stop]
        width = self.shape[1]
        if isinstance(item, _Sparse):
            block = np.empty((stop - start) * width, np.float32) if out is None else out
            return item.rows(start * width, stop * width, block).reshape(stop - start, width)
        count = (stop - start) * width
        block = np.fromfile(item, dtype=np.float32, count=count, offset=start * width * 4)
        return block.reshape(stop - start, width)

    def frame(self, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """One whole frame (see rows for `out`)."""
        assert self.shape is not None
        return self.rows(index, 0, self.shape[0], out)

    def median(self, block_bytes: int = DEFAULT_BLOCK_BYTES) -> np.ndarray:
        """Pixel-wise NaN-ignoring median of all frames, computed by row blocks."""
        if not self._frames or self.shape is None:
            raise ValueError("cannot combine an empty stack")
        height, width = self.shape
        if len(self._frames) == 1:
            return self.frame(0).copy()
        in_memory = [f for f in self._frames if isinstance(f, np.ndarray)]
        if len(in_memory) == len(self._frames) and len(in_memory) <= NETWORK_MAX_FRAMES:
            # No block cube to assemble: the network reads the frames where they are.
            return _network_median([f.reshape(-1) for f in in_memory]).reshape(self.shape)
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


class _Sparse:
    """A frame kept as its non-zero pixels: ascending flat indices and their values, in
    memory or (after `spill`) in one scratch file of `count` indices then `count` values."""

    def __init__(self, indices: np.ndarray | None, values: np.ndarray | None, count: int):
        self.indices, self.values, self.count = indices, values, count
        self.path: Path | None = None
        self.nbytes = 8 * count

    @classmethod
    def of(cls, frame: np.ndarray) -> _Sparse:
        flat = frame.reshape(-1)
        # Through a mask: np.flatnonzero of the floats themselves is six times slower.
        indices = np.flatnonzero(flat != 0).astype(np.int32)
        return cls(indices, flat[indices], indices.size)

    def spill(self, path: Path) -> _Sparse:
        """Write the pixels to `path` and keep only the path."""
        assert self.indices is not None and self.values is not None
        with open(path, "wb") as stream:
            self.indices.tofile(stream)
            self.values.tofile(stream)
        spilled = _Sparse(None, None, self.count)
        spilled.path = path
        return spilled

    def rows(self, begin: int, end: int, out: np.ndarray) -> np.ndarray:
        """Flat pixels [begin, end) expanded into `out` (at least end - begin long)."""
        indices, values = self.indices, self.values
        if indices is None or values is None:
            assert self.path is not None
            indices = np.fromfile(self.path, dtype=np.int32, count=self.count)
            values = np.fromfile(
                self.path, dtype=np.float32, count=self.count, offset=4 * self.count
            )
        block = out.reshape(-1)[: end - begin]
        block.fill(0)
        first, last = np.searchsorted(indices, (begin, end))
        block[indices[first:last] - begin] = values[first:last]
        return block


def block_sum(image: np.ndarray, factor: int) -> np.ndarray:
    """Sum of factor x factor blocks, float32 (edge rows and columns that do not fill a block
    are dropped). Adding strided slices is several times faster than numpy's sum over the
    short axes of a 4-D reshape."""
    height, width = image.shape[0] // factor, image.shape[1] // factor
    cropped = image[: height * factor, : width * factor].astype(np.float32, copy=False)
    if factor == 1:
        return cropped.copy()
    columns = cropped[:, 0::factor].copy()
    for offset in range(1, factor):
        columns += cropped[:, offset::factor]
    binned = columns[0::factor].copy()
    for offset in range(1, factor):
        binned += columns[offset::factor]
    return binned


def median_noise_factor(count: int) -> float:
    """Noise of a median of `count` Gaussian values, in units of one value's sigma.

    sqrt(pi/2)/sqrt(n) for large n; exact for n = 1 and 2 (the median is then the mean).
    """
    if count <= 2:
        return 1.0 / np.sqrt(count)
    return float(np.sqrt(np.pi / (2 * count)))
