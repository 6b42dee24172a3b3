"""Running one function over many items in threads, results in the items' order.

The reduction's hot loops are numpy, hashing and file I/O, which release the GIL, so threads
use both cores without the pickling and memory cost of processes, as long as each call is
long; the CLI runs its masters' and groups' block-by-block numpy work in worker processes
(see workers).
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable, Hashable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

# Each thread holds its working frames outside the shared memory budget: about 100 MB at
# 1024² (measured: --jobs 2 against --jobs 1 on 1024² x 50), growing with the frame area.
MAX_DEFAULT_JOBS = 4


def default_jobs() -> int:
    """Threads to use when the caller does not say: the cores, at most MAX_DEFAULT_JOBS."""
    return max(1, min(MAX_DEFAULT_JOBS, os.cpu_count() or 1))


def run_each(work: Callable[[Any], Any], items: list, jobs: int) -> list:
    """`work` on every item, `jobs` at a time in threads; the results in the items' order."""
    if jobs <= 1 or len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(min(jobs, len(items))) as pool:
        futures = [pool.submit(contextvars.copy_context().run, work, item) for item in items]
        return [future.result() for future in futures]


Task = tuple[Callable[[], Any], tuple[Hashable, ...]]  # (work, keys of the tasks it needs)


def run_graph(tasks: dict[Hashable, Task], jobs: int) -> dict[Hashable, Any]:
    """Run every task once the tasks it needs have finished, `jobs` at a time; the results by
    key. Phases end without a barrier: a core freed by one master starts the next ready task
    (another master, or a group whose masters exist) instead of waiting for the slowest.

    Ready tasks start in the order of `tasks` (list the ones that unlock most work first).
    Tasks should report their own failures; an exception stops the run and is raised here.
    """
    unknown = {need for _, needs in tasks.values() for need in needs} - set(tasks)
    if unknown:
        raise ValueError(f"tasks need unknown tasks: {sorted(map(str, unknown))}")
    waiting, results = dict(tasks), {}
    while jobs <= 1 and waiting:  # one job: in the calling thread, as run_each does
        key = next((k for k, (_, needs) in waiting.items() if set(needs) <= results.keys()), None)
        if key is None:
            raise ValueError(f"tasks wait on each other: {sorted(map(str, waiting))}")
        results[key] = waiting.pop(key)[0]()
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        running: dict[Future, Hashable] = {}
        while waiting or running:
            for key, (work, needs) in list(waiting.items()):
                if len(running) >= max(1, jobs):
                    break
                if all(need in results for need in needs):
                    # Each task in a copy of the caller's context: its log records keep
                    # the night and group (ar_tasks.logs).
                    running[pool.submit(contextvars.copy_context().run, work)] = key
                    del waiting[key]
            if not running:
                raise ValueError(f"tasks wait on each other: {sorted(map(str, waiting))}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                results[running.pop(future)] = future.result()
    return results
