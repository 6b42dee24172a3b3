"""A night's folders for one step, whatever the roots: local folders as they are, or an S3
night mirrored into a scratch folder for the step and its products uploaded after it.

Only what the step needs is downloaded (its raw files; its product folders, so provenance keys
can be checked and current products reused). After the step, new and changed products are
uploaded (SHA-256 compared), products the step deleted (stale ones) are deleted in S3, the
manifest goes last, and the scratch folder is removed. Raw objects are only ever read.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .fitsio import sha256_file
from .layout import NightLayout
from .provenance import stored_key
from .storage import (
    KEY_METADATA,
    S3Settings,
    S3Store,
    StorageError,
    is_s3,
    join,
    local_files,
)

SCRATCH_ENV = "AR_SCRATCH"  # where S3 nights are mirrored (default: the system temp folder)
LAST = ("manifest.json",)
log = logging.getLogger(__name__)


@contextmanager
def night_workspace(
    raw_root: str,
    products_root: str,
    night: str,
    raw_folders: Iterable[str] | None = None,
    raw_files: Iterable[str] | Callable[[Path], Iterable[str]] | None = None,
    products: Iterable[str] | Callable[[Path], Iterable[str]] | None = None,
    settings: S3Settings | None = None,
) -> Iterator[NightLayout]:
    """Yield the NightLayout a step works in.

    `raw_files` (relative paths, or a function of the products folder returning them, e.g.
    from the inventory) or `raw_folders` choose which raw objects to download (default: the
    whole night); `products` are glob patterns of the product files to download, or a function
    of the products folder returning them (default: all). The night's top-level files, such
    as the inventory, always come, and come first: the functions can read them (the night
    plan says what a step reads).
    """
    if not is_s3(raw_root) and not is_s3(products_root):
        yield NightLayout(Path(raw_root) / night, Path(products_root) / night)
        return
    store = S3Store(settings)
    # The folders keep the night's name: astro_reduce's `<dir>.json` is named after it.
    name = night or Path(str(products_root).rstrip("/")).name or "night"
    scratch = Path(tempfile.mkdtemp(prefix=f"ar_{night}_", dir=os.environ.get(SCRATCH_ENV)))
    try:
        out_dir = Path(products_root) / night
        before: dict[str, str] = {}
        if is_s3(products_root):
            out_dir = scratch / "products" / name
            before = _download_products(store, join(products_root, night), out_dir, products)
        raw_dir = Path(raw_root) / night
        if is_s3(raw_root):
            raw_dir = scratch / "raw" / name
            files = raw_files(out_dir) if callable(raw_files) else raw_files
            _download_raw(store, join(raw_root, night), raw_dir, raw_folders, files)
        try:
            yield NightLayout(raw_dir, out_dir)
        finally:  # a failed step's records (and its complete products) are kept too
            if is_s3(products_root):
                publish_changes(store, out_dir, join(products_root, night), before)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _download_raw(
    store: S3Store,
    url: str,
    folder: Path,
    folders: Iterable[str] | None,
    files: Iterable[str] | None,
) -> None:
    folder.mkdir(parents=True)
    wanted_files = set(files) if files is not None else None
    if wanted_files == set():
        return  # the step reads no raw frame: not even a listing
    wanted_folders = set(folders) if folders is not None else None
    for remote in store.list_files(url):
        top = remote.relpath.split("/")[0]
        if wanted_files is not None and remote.relpath not in wanted_files:
            continue
        if wanted_folders is not None and top not in wanted_folders:
            continue
        path = store.download(join(url, remote.relpath), folder / remote.relpath)
        # The object's time, not the download's: a later inventory sees an unchanged file.
        os.utime(path, ns=(remote.mtime_ns, remote.mtime_ns))


def _download_products(
    store: S3Store,
    url: str,
    folder: Path,
    patterns: Iterable[str] | Callable[[Path], Iterable[str]] | None,
) -> dict[str, str]:
    """Download the night's top-level files, then the chosen products; return the SHA-256 of
    everything downloaded, to tell afterwards what the step changed."""
    folder.mkdir(parents=True)
    listing = list(store.list_files(url))
    top = [r for r in listing if "/" not in r.relpath]
    before = _download_each(store, url, folder, top)
    if callable(patterns):
        patterns = patterns(folder)
    wanted = list(patterns) if patterns is not None else None
    chosen = [
        r
        for r in listing
        if "/" in r.relpath
        and (wanted is None or any(fnmatch.fnmatchcase(r.relpath, p) for p in wanted))
    ]
    before.update(_download_each(store, url, folder, chosen))
    return before


def _download_each(store: S3Store, url: str, folder: Path, files: list) -> dict[str, str]:
    before = {}
    for remote in files:
        try:
            _, before[remote.relpath] = store.download_verified(
                join(url, remote.relpath), folder / remote.relpath
            )
        except StorageError as exc:  # left out: the step remakes it (and replaces the object)
            log.warning("%s", exc)
    return before


def publish_changes(store: S3Store, folder: Path, url: str, before: dict[str, str]) -> list[str]:
    """Upload new and changed files, delete the ones the step removed; manifest last."""
    now = local_files(folder)
    changed = []
    for rel, path in sorted(now.items(), key=lambda item: item[0] in LAST):
        digest = sha256_file(path)
        if before.get(rel) != digest:
            key = stored_key(path) if path.suffix == ".fits" else None
            store.upload(path, join(url, rel), digest, {KEY_METADATA: key} if key else None)
            changed.append(rel)
    for rel in sorted(set(before) - set(now)):
        store.delete(join(url, rel))
        changed.append(rel)
    return changed
