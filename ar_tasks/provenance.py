"""Provenance keys: a product is reused only when the same code made it from the same inputs.

Every product header carries ARKEY, a SHA-256 over the software version, the step, the identity
of the code that makes its bytes (code_identity: the source of the functions, classes and
modules listed by the step), the algorithm's parameters (its constants, read when the key is
made) and the keys (or checksums) of its inputs. A rerun recomputes a product only when its key
changed, so reruns are cheap, can never reuse a product made from other data, and a fix to an
algorithm (or a changed constant) reaches exactly the products it touches and those made from
them.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import linecache
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__
from .fitschecksum import checksums_hold
from .fitsio import FrameError, read_header, sha256_file

KEY_KEYWORD = "ARKEY"
VERSION_KEYWORD = "ARVERS"


def product_key(step: str, **inputs: Any) -> str:
    """Deterministic key of a product from its step name and JSON-able inputs (by convention
    `code=code_identity(...)`, `parameters={...}` and the keys of what it was made from)."""
    payload = json.dumps({"version": __version__, "step": step, **inputs}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@functools.lru_cache(maxsize=64)
def code_identity(*parts: Any) -> str:
    """SHA-256 of the source text of functions, classes and modules (in the order given).

    A function's source does not include its module's constants: a step lists the constants
    it depends on as parameters of its key, so changing one of them recomputes only the
    products that read it. Cached: the source is read once per process.
    """
    digest = hashlib.sha256()
    for part in parts:
        digest.update(f"{getattr(part, '__qualname__', part.__name__)}\n".encode())
        digest.update(_source(part).encode())
    return digest.hexdigest()


def _source(part: Any) -> str:
    """The source text of a module, class or function. Functions are cut from their file by
    their code's line span (inspect.getsource tokenises, and searches sys.modules: 20 ms for a
    night's recipes, against 1 ms)."""
    if inspect.ismodule(part):
        return Path(part.__file__).read_text(encoding="utf-8")
    code = getattr(part, "__code__", None)
    if code is None:  # a class
        return inspect.getsource(part)
    linecache.checkcache(code.co_filename)
    lines = linecache.getlines(code.co_filename)
    return "".join(lines[code.co_firstlineno - 1 : _last_line(code)])


def _last_line(code: Any) -> int:
    """The last source line of a code object and of the functions defined inside it."""
    ends = [end for _, end, _, _ in code.co_positions() if end]
    ends += [_last_line(const) for const in code.co_consts if inspect.iscode(const)]
    return max(ends, default=code.co_firstlineno)


def constants(module: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The current values of a module's algorithm constants, for a product key."""
    return {name: getattr(module, name) for name in names}


def reuse_or_make(path: Path, key: str, make: Callable[[], Any], overwrite: bool = False) -> bool:
    """Keep `path` when it is current for `key` (returns True); else call `make`, which writes
    it stamped with `key`, and return False. The one place where reuse is decided."""
    if not overwrite and is_current(path, key):
        return True
    make()
    return False


def stored_key(path: Path) -> str | None:
    """The ARKEY of an existing product, or None when absent or unreadable."""
    try:
        key = read_header(path).get(KEY_KEYWORD)
    except (OSError, FrameError, ValueError):
        return None
    return None if key is None else str(key)


def input_key(path: Path) -> str:
    """Key of a product used as input: its ARKEY, or its checksum when it has none
    (for example a master supplied by the user with --nomaster)."""
    return stored_key(path) or sha256_file(path)


def is_current(path: Path, key: str) -> bool:
    """True when `path` exists, was made from exactly these inputs, and is intact: its
    CHECKSUM/DATASUM still match its bytes, for a damaged product is made again rather than
    reused (the manifest's SHA-256 then changes with it)."""
    return Path(path).is_file() and stored_key(path) == key and checksums_hold(path)


def stamp(header: Any, key: str) -> Any:
    """Record the key and the software version in a product header."""
    header[VERSION_KEYWORD] = (__version__, "astro_reduce-airflow version")
    header[KEY_KEYWORD] = key  # 64 hex digits: no room for a comment
    return header
