"""Provenance keys: a product is reused only when it was made from the same inputs.

Every product header carries ARKEY, a SHA-256 over the software version, the step, its
parameters and the keys (or checksums) of its inputs. A rerun recomputes a product only when its
key changed, so reruns are cheap and can never reuse a product made from other data.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from . import __version__
from .fitschecksum import checksums_hold
from .fitsio import FrameError, read_header, sha256_file

KEY_KEYWORD = "ARKEY"
VERSION_KEYWORD = "ARVERS"


def product_key(step: str, **inputs: Any) -> str:
    """Deterministic key of a product from its step name and JSON-able inputs."""
    payload = json.dumps({"version": __version__, "step": step, **inputs}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


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
