"""run_each: every item, in the items' order, really `jobs` at a time."""

from __future__ import annotations

import threading

import pytest

from ar_tasks.threads import default_jobs, run_each


def test_results_come_in_the_items_order():
    assert run_each(lambda n: n * n, list(range(20)), jobs=3) == [n * n for n in range(20)]


def test_two_jobs_run_at_once():
    """A barrier of two parties passes only if two items run concurrently."""
    barrier = threading.Barrier(2, timeout=10)
    assert run_each(lambda _: barrier.wait() >= 0, [0, 1], jobs=2) == [True, True]


def test_one_job_runs_in_the_calling_thread():
    caller = threading.get_ident()
    assert run_each(lambda _: threading.get_ident(), [0, 1, 2], jobs=1) == [caller] * 3


def test_an_error_reaches_the_caller():
    def fail(n: int) -> int:
        if n == 3:
            raise ValueError("item 3")
        return n

    with pytest.raises(ValueError, match="item 3"):
        run_each(fail, list(range(6)), jobs=2)


def test_default_jobs_is_at_least_one():
    assert 1 <= default_jobs() <= 4
