"""Forked worker processes: state in, results, log records and written digests back."""

from __future__ import annotations

import functools
import logging
import os
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ar_tasks import fitsio, workers
from ar_tasks.logs import ContextFilter, log_context


def _whoami(extra: int) -> tuple[int, str, bool, int]:
    state = workers.state()
    return os.getpid(), state["plan"], callable(state["fn"]), extra


def _warn(message: str) -> str:
    with log_context(group="M-67_V_60000"):
        logging.getLogger("ar_tasks.steps.stack").warning("frame %s: %s", 7, message)
        logging.getLogger("ar_tasks.steps.stack").debug("not shown: below the level")
    return "warned"


def _fail() -> None:
    raise KeyError("no such frame")


def _write(path: str) -> str:
    fitsio.write_image(Path(path), np.arange(64, dtype=np.float32).reshape(8, 8), None)
    return path


class _Keeper(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(ContextFilter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.where}{record.getMessage()}")


PASSED = b"passed"


def alone(test: Callable[..., None]) -> Callable[..., None]:
    """Run the test in a forked child, where its thread is the only one: worker_pool does not
    fork beside other threads, and the suite runs servers in threads of this process."""

    @functools.wraps(test)
    def run(*args: object, **kwargs: object) -> None:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            os.close(read)
            try:
                assert threading.active_count() == 1
                test(*args, **kwargs)
                report = PASSED
            except BaseException:
                report = traceback.format_exc().encode()
            os.write(write, report)
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            report = pipe.read()
        _, status = os.waitpid(pid, 0)
        # Only the child's own word counts: a child that died before saying it failed.
        assert report == PASSED, report.decode() or f"the child died (status {status})"

    return run


@alone
def test_a_call_runs_in_another_process_that_holds_the_state():
    state = {"plan": "closures cannot be pickled", "fn": lambda: None}
    with workers.worker_pool(2, state) as pool:
        assert pool is not None
        pid, plan, closure, extra = pool.call(_whoami, 5)
    assert pid != os.getpid()
    assert plan == state["plan"] and closure and extra == 5


@alone
def test_log_records_of_a_worker_reach_the_callers_handlers_with_their_context():
    keeper = _Keeper()
    library = logging.getLogger("ar_tasks")
    level = library.level
    library.addHandler(keeper)
    library.setLevel(logging.INFO)
    try:
        with log_context(night="2023-05-10"), workers.worker_pool(2, None) as pool:
            assert pool.call(_warn, "too few stars") == "warned"
    finally:
        library.removeHandler(keeper)
        library.setLevel(level)
    assert keeper.lines == ["WARNING 2023-05-10 M-67_V_60000: frame 7: too few stars"]


@alone
def test_an_exception_in_a_worker_comes_back_naming_it():
    with workers.worker_pool(2, None) as pool, pytest.raises(workers.WorkerError) as caught:
        pool.call(_fail)
    assert "KeyError: 'no such frame'" in str(caught.value)
    assert "_fail" in str(caught.value)  # the worker's traceback


@alone
def test_the_caller_trusts_the_digests_a_worker_took_of_its_files(tmp_path):
    target = tmp_path / "stack.fits"
    with workers.worker_pool(2, None) as pool:
        pool.call(_write, str(target))
    known = fitsio._written_digest(target)
    assert known is not None
    assert known == fitsio.sha256_file(target)
    copy = target.with_suffix(".new")
    copy.write_bytes(target.read_bytes())
    os.replace(copy, target)  # replaced by the same bytes (a new inode): the digest no longer holds
    assert fitsio._written_digest(target) is None


@alone
def test_no_workers_for_one_job_or_beside_a_running_thread():
    with workers.worker_pool(1, None) as pool:
        assert pool is None
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        with workers.worker_pool(2, None) as pool:
            assert pool is None  # a fork could inherit a lock this thread holds
    finally:
        release.set()
        other.join()
