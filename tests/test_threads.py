"""run_each: every item, in the items' order, really `jobs` at a time; run_graph: every task
after the tasks it needs, without waiting for unrelated ones."""

from __future__ import annotations

import threading
import time

import pytest

from ar_tasks.threads import default_jobs, run_each, run_graph


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


def test_graph_runs_each_task_after_what_it_needs():
    finished: list[str] = []
    lock = threading.Lock()

    def task(name: str, seconds: float = 0.0):
        def work() -> str:
            time.sleep(seconds)
            with lock:
                finished.append(name)
            return name.upper()

        return work

    tasks = {
        "dark": (task("dark", 0.05), ()),
        "flat": (task("flat"), ("dark",)),
        "slow": (task("slow", 0.3), ()),
        "calibrate": (task("calibrate"), ("dark", "flat")),
        "stack": (task("stack"), ("calibrate",)),
    }
    results = run_graph(tasks, jobs=2)
    assert results == {name: name.upper() for name in tasks}
    order = finished.index
    assert order("dark") < order("flat") < order("calibrate") < order("stack")
    # no barrier: the chain finished while the unrelated slow task still ran on the other thread
    assert order("stack") < order("slow")


def test_graph_uses_jobs_threads_at_most_and_at_once():
    barrier = threading.Barrier(2, timeout=10)
    running, most = [0], [0]
    lock = threading.Lock()

    def work() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1

    tasks = {"a": (lambda: barrier.wait(), ()), "b": (lambda: barrier.wait(), ())}
    tasks.update({f"w{i}": (work, ()) for i in range(8)})
    run_graph(tasks, jobs=2)  # the barrier passes only if a and b run together
    assert most[0] <= 2


def test_graph_with_one_job_runs_in_order_in_the_calling_thread():
    caller, seen = threading.get_ident(), []
    tasks = {
        "b": (lambda: seen.append(("b", threading.get_ident())), ("a",)),
        "a": (lambda: seen.append(("a", threading.get_ident())), ()),
    }
    run_graph(tasks, jobs=1)
    assert seen == [("a", caller), ("b", caller)]


@pytest.mark.parametrize("jobs", [1, 2])
def test_graph_refuses_unknown_or_circular_needs_and_passes_errors(jobs):
    with pytest.raises(ValueError, match="unknown"):
        run_graph({"a": (lambda: 1, ("b",))}, jobs=jobs)
    with pytest.raises(ValueError, match="wait on each other"):
        run_graph({"a": (lambda: 1, ("b",)), "b": (lambda: 2, ("a",))}, jobs=jobs)

    def fail() -> None:
        raise RuntimeError("task failed")

    with pytest.raises(RuntimeError, match="task failed"):
        run_graph({"a": (fail, ()), "b": (lambda: 2, ("a",))}, jobs=jobs)
