"""What the night browser reads: the night index, a night's manifest, its PNG and JSON files,
from a local or S3 products root, through ar_tasks (never written).

Only files inside a night's folder are served, only PNG and JSON: a relative path is checked
part by part (no `..`, no empty part, no backslash, no leading slash), and a local one must
still resolve inside the night folder (symbolic links included).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

NIGHT = re.compile(r"^\d{4}-\d{2}-\d{2}$")
SERVED = {".png": "image/png", ".json": "application/json"}
PRODUCTS_ENV = "AR_PRODUCTS_ROOT"


class NotServed(LookupError):
    """A night or file the browser does not serve (missing, outside the night, not PNG/JSON)."""


class Products:
    """A products root (a folder or s3://bucket/prefix), read only."""

    def __init__(self, root: str | None = None, s3: dict[str, str] | None = None) -> None:
        self.root = str(root or os.environ.get(PRODUCTS_ENV, "/data/t120/products"))
        self.s3 = s3 or {}

    @property
    def in_s3(self) -> bool:
        from ar_tasks.storage import is_s3

        return is_s3(self.root)

    def nights(self) -> list[dict[str, Any]]:
        """The night index, by night."""
        from ar_tasks import night_index

        return night_index.read_index(self.root, self.s3)

    def manifest(self, night: str) -> dict[str, Any]:
        try:
            return json.loads(self.read(night, "manifest.json"))
        except ValueError:
            raise NotServed(f"{night}: its manifest is not JSON") from None

    def read(self, night: str, relpath: str) -> bytes:
        """The bytes of a PNG or JSON file of a night (NotServed otherwise)."""
        parts = checked_path(night, relpath)
        if self.in_s3:
            from ar_tasks.storage import S3Settings, S3Store, StorageError, join

            try:
                return S3Store(S3Settings(**self.s3)).read_bytes(join(self.root, night, *parts))
            except StorageError:
                raise NotServed(f"{night}/{relpath}: not found") from None
        folder = (Path(self.root) / night).resolve()
        path = folder.joinpath(*parts).resolve()
        if not path.is_relative_to(folder) or not path.is_file():
            raise NotServed(f"{night}/{relpath}: not found")
        return path.read_bytes()

    def pictures(self, night: str) -> list[str]:
        """The night's PNG files (quick-looks and its QC figure), by folder."""
        if self.in_s3:
            from ar_tasks.storage import S3Settings, S3Store, join

            store = S3Store(S3Settings(**self.s3))
            names = [r.relpath for r in store.list_files(join(self.root, night))]
        else:
            folder = Path(self.root) / night
            names = [p.relative_to(folder).as_posix() for p in folder.rglob("*.png")]
        return sorted(n for n in names if n.endswith(".png") and not n.startswith("."))


def checked_path(night: str, relpath: str) -> tuple[str, ...]:
    """The parts of a served file's path inside its night folder; NotServed when the night is
    not a night name, or the path leaves the folder, or is not a PNG or JSON file."""
    if not NIGHT.match(night or ""):
        raise NotServed(f"{night!r} is not a night (YYYY-MM-DD)")
    if not relpath or "\\" in relpath or "\0" in relpath or relpath.startswith("/"):
        raise NotServed(f"{relpath!r}: not a path inside the night")
    parts = PurePosixPath(relpath).parts
    if any(part in ("", ".", "..") for part in parts) or len(parts) != relpath.count("/") + 1:
        raise NotServed(f"{relpath!r}: not a path inside the night")
    if PurePosixPath(relpath).suffix.lower() not in SERVED:
        raise NotServed(f"{relpath!r}: only PNG and JSON files are served")
    return parts
