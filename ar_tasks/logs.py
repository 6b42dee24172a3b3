"""Logging for the library: one `ar_tasks` logger tree, a VERBOSE level, and night/group context.

The steps report through `logging`, never through callbacks or print: under Airflow the task
log shows their warnings and errors as they happen; the CLI turns the same records into
astro_reduce 5.1.3's coloured `E:`/`W:` lines and `astro_reduce.log` (see cli.CliHandler).
The night and group a message belongs to travel in a context variable, which threads.run_graph
and run_each carry into their worker threads, and every record gets them as attributes.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager

VERBOSE = 15  # between DEBUG and INFO: 5.1.3's --verbose lines (shown by the CLI with -v)
logging.addLevelName(VERBOSE, "VERBOSE")
ROOT = "ar_tasks"

_context: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "ar_tasks_log_context", default=()
)


@contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Attach `night` and `group` to every record logged inside the block."""
    merged = {**dict(_context.get()), **{k: v for k, v in fields.items() if v}}
    token = _context.set(tuple(merged.items()))
    try:
        yield
    finally:
        _context.reset(token)


def current_context() -> dict[str, str]:
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """A handler filter (a logger's filters do not reach its children) that copies the
    context onto each record (`record.night`, `record.group`) with a readable prefix
    `record.where` ("2023-05-10 M-67_V_60000: " or "")."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = current_context()
        for name in ("night", "group"):
            setattr(record, name, fields.get(name, ""))
        where = " ".join(fields[n] for n in ("night", "group") if n in fields)
        record.where = f"{where}: " if where else ""
        return True
