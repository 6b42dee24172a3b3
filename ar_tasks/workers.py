"""Tasks in forked worker processes, for numpy work two threads cannot share.

The cosmetic hot loops are many small numpy calls on blocks that stay in the CPU cache (a
Lanczos shift is 22 calls per block of rows). Each call lets go of the GIL and takes it back,
and on a 2-core virtual machine every handover is a futex wake-up of the other core: two
threads shifting a 50-frame stack's frames took 0.38 s per stack, one thread alone 0.41 s.
Processes share no GIL: on the 286-frame night each of the five combines took 1.0-1.2 s
beside another in threads and 0.72 s in workers, and `-i` 6.8-7.1 s against 5.7 s.

The workers are forked once, before any thread of the caller starts (a fork beside running
threads can inherit a lock that one of them held), and inherit the caller's state: the night
plan, whose task bodies are closures that cannot be pickled. What a call gives back travels
by pickle: its result, the log records it emitted (handled again in the caller's loggers,
with their night and group, so the CLI's console, log file and error count see them), and
the SHA-256 digests fitsio took of the files it wrote (so the manifest need not read them).
Workers die with the caller (a killed run writes nothing more) and leave Ctrl-C to it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import fitsio
from .logs import current_context, log_context

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies
_state: Any = None  # what the caller handed its workers at the fork
_records: list[logging.LogRecord] = []  # a worker's log records since its last call


class WorkerError(RuntimeError):
    """An exception in a worker that is not one of a task's own, recorded failures."""


def state() -> Any:
    """In a worker: the state its pool was made with."""
    return _state


class WorkerPool:
    """Forked workers that run module-level functions and hand back results, logs, digests."""

    def __init__(self, executor: ProcessPoolExecutor):
        self._executor = executor

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """function(*args) in a worker (both picklable); its log records are handled here."""
        outcome, value, records, written = self._executor.submit(_invoke, function, args).result()
        fitsio.adopt_written(written)
        for record in records:
            with log_context(**record.__dict__.pop("ar_context", {})):
                logging.getLogger(record.name).handle(record)
        if outcome == "error":
            raise WorkerError(value)
        return value


@contextlib.contextmanager
def worker_pool(jobs: int, shared: Any) -> Iterator[WorkerPool | None]:
    """`jobs` workers holding `shared`; None (run in threads) when there is nothing to gain
    (one job) or a fork would not be safe (another thread is running, or no fork here).
    multiprocessing is imported here (12 ms), not by every process that imports the plan."""
    if jobs < 2 or threading.active_count() > 1:
        yield None
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if "fork" not in multiprocessing.get_all_start_methods():
        yield None
        return
    executor = ProcessPoolExecutor(
        jobs,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_start_worker,
        initargs=(shared, os.getpid()),
    )
    try:
        # With fork, the first submission forks every worker, here, before any thread starts.
        executor.submit(int).result()
        yield WorkerPool(executor)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _start_worker(shared: Any, caller: int) -> None:
    """In a new worker: die with the caller (a killed reduction must not go on writing
    products), leave Ctrl-C to it, keep the state, and collect every log record instead of
    emitting it (the caller's handlers write to streams and counters that live there)."""
    global _state
    die_with(caller)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _state = shared
    fitsio.take_written()  # the caller's digests are the caller's
    known = logging.Logger.manager.loggerDict.values()
    loggers = [logging.getLogger(), *(x for x in known if isinstance(x, logging.Logger))]
    for logger in loggers:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True  # every record reaches the collector on the root logger
    logging.getLogger().addHandler(_Collector())


def die_with(caller: int) -> None:
    """SIGKILL when the caller dies (Linux); exit now if it already has."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: it ends at its next call
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != caller:
        os._exit(1)


class _Collector(logging.Handler):
    """Keeps each record, made picklable, with the log context it was emitted in."""

    def emit(self, record: logging.LogRecord) -> None:
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info))
            record.exc_info = None
        record.ar_context = current_context()
        _records.append(record)


def _invoke(
    function: Callable[..., Any], args: tuple[Any, ...]
) -> tuple[str, Any, list[logging.LogRecord], dict[str, Any]]:
    """Run one call in a worker; an exception comes back as its traceback's text."""
    try:
        outcome, value = "done", function(*args)
    except Exception:
        outcome, value = "error", traceback.format_exc()
    records = list(_records)
    _records.clear()
    return outcome, value, records, fitsio.take_written()
