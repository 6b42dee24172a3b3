"""Median combination: exact NaN-aware median, spilling to disk, bounded memory."""

import itertools
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ar_tasks.combine import (
    MEMORY_BUDGET_ENV,
    FrameStack,
    MemoryBudget,
    median_network,
    median_noise_factor,
    median_of,
    nanmedian_axis0,
    process_budget,
    sorting_network,
)


@pytest.mark.parametrize("count", [1, 2, 3, 5, 6, 7, 20, 40, 41, 64])
def test_nanmedian_matches_numpy(count):
    """Both routes (sorting network up to NETWORK_MAX_FRAMES, sort beyond) are exact."""
    rng = np.random.default_rng(count)
    cube = rng.normal(size=(count, 30, 40)).astype(np.float32)
    cube[rng.random(cube.shape) < 0.2] = np.nan
    cube[:, 0, 0] = np.nan
    cube[0, 0, 1] = np.inf
    cube[-1, 0, 2] = -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmedian(np.where(np.isinf(cube), np.nan, cube).astype(np.float64), axis=0)
    got = nanmedian_axis0(cube)
    assert np.isnan(got[0, 0])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    finite = np.isfinite(expected)
    assert np.array_equal(got[finite], expected[finite].astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
@pytest.mark.parametrize("count", [1, 2, 3, 4, 101, 1000, 65537])
def test_median_of_is_numpy_median_to_the_bit(count, dtype):
    """Odd and even counts, ties, a NaN: the same value and type as np.median."""
    rng = np.random.default_rng(count)
    values = (rng.normal(100, 5, count) * (1 if dtype != np.int16 else 10)).astype(dtype)
    cases = [values, np.round(values)]
    if dtype != np.int16:
        cases.append(np.where(np.arange(count) == count // 3, np.nan, values).astype(dtype))
    for case in cases:
        got, expected = np.asarray(median_of(case)), np.asarray(np.median(case))
        assert got.dtype == expected.dtype
        assert np.array_equal(got, expected, equal_nan=True)


@pytest.mark.parametrize("count", range(2, 13))
def test_sorting_network_sorts_every_zero_one_sequence(count):
    """The 0-1 principle: a network that sorts every 0/1 input sorts every input."""
    for bits in itertools.product((0, 1), repeat=count):
        values = list(bits)
        for low, high in sorting_network(count):
            if values[low] > values[high]:
                values[low], values[high] = values[high], values[low]
        assert values == sorted(values)


@pytest.mark.parametrize("count", range(1, 14))
def test_pruned_network_gives_the_median_and_the_extremes_of_every_zero_one_sequence(count):
    """The pruned network (only the operations the wanted outputs need) puts the same values
    as a full sort in the first, the two middle and the last places, for every 0/1 input."""
    wanted = {0, count - 1, (count - 1) // 2, count // 2}
    for bits in itertools.product((0, 1), repeat=count):
        values = list(bits)
        for low, high, keep_low, keep_high in median_network(count):
            small, large = min(values[low], values[high]), max(values[low], values[high])
            values[low] = small if keep_low else None  # a dropped output must never be read
            values[high] = large if keep_high else None
        assert all(values[i] == sorted(bits)[i] for i in wanted)
    full = 2 * len(sorting_network(count))
    assert sum(a + b for _, _, a, b in median_network(count)) <= full


def test_pruned_network_saves_operations():
    assert sum(a + b for _, _, a, b in median_network(5)) == 16  # of 18
    assert sum(a + b for _, _, a, b in median_network(20)) == 154  # of 206


@pytest.mark.parametrize("budget", [0, 10**9])
def test_stack_median_in_memory_and_spilled(budget, tmp_path):
    rng = np.random.default_rng(1)
    frames = [rng.normal(size=(64, 48)).astype(np.float32) for _ in range(5)]
    with FrameStack(memory_budget=budget, scratch_dir=tmp_path) as stack:
        for frame in frames:
            stack.append(frame)
        result = stack.median(block_bytes=5 * 48 * 4 * 7)  # 7 rows per block
        np.testing.assert_array_equal(stack.frame(3), frames[3])
    np.testing.assert_allclose(result, np.median(frames, axis=0), rtol=1e-6)
    assert list(tmp_path.iterdir()) == []  # scratch removed


@pytest.mark.parametrize("budget", [0, 10**9])
def test_sparse_stack_gives_back_every_frame_exactly(budget, tmp_path):
    """Detection images (mostly zero) are kept as their non-zero pixels, in memory or
    spilled; every frame, row block and median comes back bit for bit, and a frame that is
    not mostly zero is kept dense."""
    rng = np.random.default_rng(3)
    frames = [rng.normal(size=(64, 48)).astype(np.float32) for _ in range(4)]
    for frame in frames[:3]:
        frame[frame < 1.5] = 0  # 7% of the pixels remain
    with FrameStack(memory_budget=budget, scratch_dir=tmp_path, sparse=True) as stack:
        for frame in frames:
            stack.append(frame)
        buffer = np.full(64 * 48, np.nan, dtype=np.float32)
        for index, frame in enumerate(frames):
            np.testing.assert_array_equal(stack.frame(index), frame)
            np.testing.assert_array_equal(stack.frame(index, out=buffer), frame)
            np.testing.assert_array_equal(stack.rows(index, 10, 17), frame[10:17])
        np.testing.assert_array_equal(stack.median(), np.median(frames, axis=0))
        if budget:
            dense_bytes = frames[3].nbytes
            assert stack._in_memory < dense_bytes + 3 * dense_bytes // 5  # 3 sparse, 1 dense
    assert list(tmp_path.iterdir()) == []


def test_stack_rejects_other_shapes():
    with FrameStack() as stack:
        stack.append(np.zeros((4, 4)))
        with pytest.raises(ValueError, match="differs"):
            stack.append(np.zeros((4, 5)))


def test_median_noise_factor_matches_simulation():
    rng = np.random.default_rng(2)
    for count in (1, 2, 5, 20):
        medians = np.median(rng.normal(size=(count, 200000)), axis=0)
        assert medians.std() == pytest.approx(median_noise_factor(count), rel=0.12)


def test_peak_memory_stays_flat_as_frames_grow(tmp_path):
    """Combining N frames must not hold N frames: peak traced memory about flat in N."""
    import tracemalloc

    shape = (512, 512)  # 1 MiB per float32 frame
    peaks = {}
    for count in (10, 40):
        tracemalloc.start()
        with FrameStack(memory_budget=4 * 2**20, scratch_dir=tmp_path) as stack:
            for index in range(count):
                stack.append(np.full(shape, index, dtype=np.float32))
            result = stack.median(block_bytes=4 * 2**20)
        peaks[count] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        assert result[0, 0] == np.median(np.arange(count))
    assert peaks[40] < 16, peaks  # 40 float64 frames would be 80 MiB, float32 40 MiB
    assert peaks[40] < 1.5 * peaks[10] + 2, peaks


def test_stacks_sharing_a_budget_spill_once_it_is_spent(tmp_path):
    """Two stacks (two groups in two threads) share one budget: together they never hold
    more than it, the second spills what the first left no room for, and closing gives back."""
    frame = np.ones((64, 64), dtype=np.float32)  # 16 KiB
    budget = MemoryBudget(3 * frame.nbytes)
    first = FrameStack(memory_budget=budget, scratch_dir=tmp_path)
    second = FrameStack(memory_budget=budget, scratch_dir=tmp_path)
    for _ in range(2):
        first.append(frame)
    for value in range(3):
        second.append(frame * value)
    assert budget.used == 3 * frame.nbytes
    assert len(list(tmp_path.iterdir())) == 1  # the second stack's scratch folder
    np.testing.assert_array_equal(second.median(), frame)  # median of 0, 1, 2
    first.close()
    assert budget.used == frame.nbytes
    second.close()
    assert budget.used == 0
    assert list(tmp_path.iterdir()) == []


def test_threads_never_hold_more_than_the_process_budget(tmp_path):
    budget = MemoryBudget(10 * 2**16)
    frame = np.zeros((128, 128), dtype=np.float32)  # 64 KiB
    peak = []

    def fill(_: int) -> None:
        with FrameStack(memory_budget=budget, scratch_dir=tmp_path) as stack:
            for _ in range(8):
                stack.append(frame)
                peak.append(budget.used)
            stack.median()

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(fill, range(4)))
    assert max(peak) <= budget.limit
    assert budget.used == 0


def test_process_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(MEMORY_BUDGET_ENV, "64")
    process_budget.cache_clear()
    try:
        assert process_budget().limit == 64 * 2**20
        assert FrameStack()._budget is process_budget()
        monkeypatch.setenv(MEMORY_BUDGET_ENV, "lots")
        process_budget.cache_clear()
        with pytest.raises(ValueError, match="AR_MEMORY_BUDGET_MB='lots' is not a number"):
            process_budget()
    finally:
        process_budget.cache_clear()
