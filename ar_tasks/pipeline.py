"""Night and group steps for the Airflow DAG: plain arguments in, small JSON-able dicts out.

Each function works on one night (`<raw_root>/<night>` -> `<products_root>/<night>`) or one
(night, group), records what it did in `<products>/<night>/ar_qc/*.json`, and returns keys,
counts and QC figures for XCom. `publish_night` gathers those records into `manifest.json`,
written last. Reruns are cheap because the steps reuse products whose provenance key matches.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from . import __version__, camera, steps
from .astrometry import AstrometryOptions
from .fitsio import sha256_file, write_bytes_atomic
from .inventory import Inventory
from .layout import (
    ASTROMATIC_FOLDERS,
    COSMETIC,
    INVENTORY_FILE,
    MASTERS,
    REDUCED,
    STACKED,
    NightLayout,
)
from .previews import refresh_previews
from .provenance import stored_key
from .storage import KEY_METADATA, SHA_METADATA, S3Settings, S3Store, is_s3, join, split_s3
from .workspace import night_workspace

QC_FOLDER = "ar_qc"
JOBS_ENV = "AR_ASTROMETRY_JOBS"  # images one astrometry task solves at once (default 1)
MANIFEST = "manifest.json"


def check_roots(raw_root: str, products_root: str, s3: dict[str, str] | None = None) -> None:
    """Refuse unusable roots before any work starts: relative paths, malformed s3:// URLs,
    and buckets that do not exist or cannot be read (the error names the URL)."""
    _check_forms(raw_root, products_root)
    buckets = [root for root in (raw_root, products_root) if is_s3(root)]
    if buckets:
        store = S3Store(S3Settings(**(s3 or {})))
        for root in buckets:
            store.check_bucket(root)


def _check_forms(*roots: str) -> None:
    """Each root is an absolute path or a well-formed s3://bucket/prefix."""
    for root in roots:
        if is_s3(root):
            split_s3(root)
        elif not Path(root).is_absolute():
            raise ValueError(f"{root!r} must be an absolute path or s3://bucket/prefix")


def _workspace(
    raw_root: str, products_root: str, night: str, s3: dict[str, str] | None, **choice: Any
) -> Any:
    """The night's folders for one step (an S3 night is mirrored: see ar_tasks.workspace)."""
    _check_forms(raw_root, products_root)
    return night_workspace(
        raw_root, products_root, night, settings=S3Settings(**(s3 or {})), **choice
    )


def _group_products(group: str, *folders: str) -> list[str]:
    """Glob patterns of a group's files in product folders (its stack and its aux frames)."""
    return [f"{folder}/{group}{tail}" for folder in folders for tail in (".*", "_*")]


def _group_raw_files(group: str) -> Any:
    """The raw paths of a group's frames, read from the inventory in the products folder."""

    def paths(out_dir: Path) -> list[str]:
        inventory = Inventory.from_json((out_dir / INVENTORY_FILE).read_text())
        return [f.path for f in inventory.groups().get(steps.GroupKey.parse(group), [])]

    return paths


def _record(layout: NightLayout, name: str, payload: dict[str, Any]) -> None:
    path = layout.out_dir / QC_FOLDER / f"{name}.json"
    write_bytes_atomic(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def _read_record(layout: NightLayout, name: str) -> dict[str, Any] | None:
    path = layout.out_dir / QC_FOLDER / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _selected(key: steps.GroupKey, objects: Iterable[str], filters: Iterable[str]) -> bool:
    """True when a group passes the optional object and filter restrictions (names sanitised)."""
    wanted_objects = {camera.sanitize_object(o) for o in objects}
    wanted_filters = {camera.sanitize_filter(f) for f in filters}
    return (not wanted_objects or key.object in wanted_objects) and (
        not wanted_filters or key.filter in wanted_filters
    )


def inventory_night(
    raw_root: str, products_root: str, night: str, s3: dict[str, str] | None = None
) -> dict[str, Any]:
    """Inventory one night (no working copies) and drop products it no longer covers."""
    started = time.monotonic()
    patterns = [f"{folder}/*" for folder in (MASTERS, COSMETIC, STACKED, QC_FOLDER)]
    with _workspace(raw_root, products_root, night, s3, products=patterns) as layout:
        summary = steps.setup_night(layout, working_copies=None)
        summary.update(night=night, seconds=round(time.monotonic() - started, 3))
        _record(layout, "setup", summary)
        return {
            "night": night,
            "frames": summary["frames"],
            "groups": summary["groups"],
            "quarantined": len(summary["quarantined"]),
        }


def masters_night(
    raw_root: str,
    products_root: str,
    night: str,
    interpolate: bool = True,
    overwrite: bool = False,
    objects: Iterable[str] = (),
    filters: Iterable[str] = (),
    png: bool = False,
    s3: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Masters of one night (and their PNGs); returns the groups that can be reduced."""
    started = time.monotonic()
    raw, patterns = ["DARK", "FLAT"], [f"{MASTERS}/*", f"{QC_FOLDER}/*"]
    with _workspace(
        raw_root, products_root, night, s3, raw_folders=raw, products=patterns
    ) as layout:
        result = steps.make_masters(layout, interpolate=interpolate, overwrite=overwrite)
        inventory = steps.load_inventory(layout)
        ready, blocked = [], {}
        for group in inventory.groups():
            if not _selected(group, objects, filters):
                continue
            missing = steps.missing_masters(layout, group)
            if missing:
                blocked[group.name] = f"missing {', '.join(missing)}"
            else:
                ready.append({"name": group.name, "label": f"{night} {group.label}"})
        if png:
            refresh_previews(sorted(layout.masters.glob("*.fits")), overwrite)
        result.update(night=night, blocked=blocked, seconds=round(time.monotonic() - started, 3))
        _record(layout, "masters", result)
        return {"night": night, "groups": ready, "problems": len(result["problems"])}


def reduce_group(
    raw_root: str,
    products_root: str,
    night: str,
    group: str,
    stack: bool = True,
    overwrite: bool = False,
    s3: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Calibrate and stack one (object, filter, exposure) group; a failure is recorded."""
    started = time.monotonic()
    patterns = [f"{MASTERS}/*", f"{QC_FOLDER}/*", *_group_products(group, COSMETIC, STACKED)]
    raw = _group_raw_files(group)
    with _workspace(raw_root, products_root, night, s3, raw_files=raw, products=patterns) as layout:
        try:
            result = steps.reduce_group(layout, group, stack=stack, overwrite=overwrite)
        except Exception as exc:  # recorded for the manifest, then re-raised for Airflow
            _record(
                layout, f"group_{group}", {"group": group, "status": "failed", "error": str(exc)}
            )
            raise
        result.update(status="done", seconds=round(time.monotonic() - started, 3))
        _record(layout, f"group_{group}", result)
        stack_qc = result.get("stack", {})
        return {
            "night": night,
            "group": group,
            "calibrated": result["calibrated"],
            "combined": stack_qc.get("combined"),
            "reused": stack_qc.get("reused"),
        }


def astrometry_group(
    raw_root: str,
    products_root: str,
    night: str,
    group: str,
    mode: str,
    settings: dict[str, Any] | None = None,
    stack: bool = True,
    overwrite: bool = False,
    s3: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Solve one group's aux frames and stack by `mode` (see astrometry.MODES).

    `settings` are AstrometryOptions fields (refcat, index_dir, online_settings...). An image
    that does not solve is recorded (and fails the night in its manifest), not raised: another
    attempt would give the same answer, and the other images are still solved.
    """
    started = time.monotonic()
    folders = (COSMETIC, STACKED, REDUCED, *ASTROMATIC_FOLDERS)
    patterns = [f"{QC_FOLDER}/*", *_group_products(group, *folders)]
    with _workspace(raw_root, products_root, night, s3, raw_files=[], products=patterns) as layout:
        options = AstrometryOptions.from_mode(mode, overwrite=overwrite, **(settings or {}))
        if not options.requested:
            return {"night": night, "group": group, "astrometry": "none"}
        jobs = int(os.environ.get(JOBS_ENV, "1"))
        result = steps.solve_group(layout, group, options, include_stack=stack, jobs=jobs)
        result.update(mode=mode, seconds=round(time.monotonic() - started, 3))
        _record(layout, f"astrometry_{group}", result)
        return {
            "night": night,
            "group": group,
            "astrometry": mode,
            **{k: result[k] for k in ("solved", "failed", "reused", "catalogued")},
        }


def previews_group(
    raw_root: str,
    products_root: str,
    night: str,
    group: str,
    overwrite: bool = False,
    s3: dict[str, str] | None = None,
) -> dict[str, Any]:
    """PNG quick-looks of a group's stack and aux frames (kept when newer than the FITS)."""
    patterns = _group_products(group, COSMETIC, STACKED)
    with _workspace(raw_root, products_root, night, s3, raw_files=[], products=patterns) as layout:
        key = steps.GroupKey.parse(group)
        frames = steps.load_inventory(layout).groups().get(key, [])
        sources = [layout.stack(key)] + [layout.aux(f) for f in frames]
        written = refresh_previews([p for p in sources if p.is_file()], overwrite)
        return {"night": night, "group": group, "written": len(written)}


def publish_night(
    raw_root: str,
    products_root: str,
    night: str,
    parameters: dict[str, Any],
    s3: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write `manifest.json` for a night from its QC records; last, and atomically.

    Returns the night's status; the caller fails the night's branch when it is not 'success'.
    """
    with _workspace(
        raw_root, products_root, night, s3, raw_files=[], products=[f"{QC_FOLDER}/*"]
    ) as layout:
        setup = _read_record(layout, "setup") or {}
        masters = _read_record(layout, "masters") or {}
        inventory = steps.load_inventory(layout)
        problems: list[str] = list(masters.get("problems", []))
        groups: dict[str, Any] = {}
        recomputed: list[str] = []
        for key in inventory.groups():
            name = key.name
            if name in masters.get("blocked", {}):
                groups[name] = {"status": "failed", "error": masters["blocked"][name]}
                problems.append(f"{name}: {masters['blocked'][name]}")
                continue
            record = _read_record(layout, f"group_{name}")
            if record is None:
                groups[name] = {"status": "not reduced"}
                continue
            groups[name] = record
            if record.get("status") == "failed":
                problems.append(f"{name}: {record.get('error')}")
            recomputed += record.get("written", [])
            stack_qc = record.get("stack") or {}
            if stack_qc and not stack_qc.get("reused"):
                recomputed.append(stack_qc["file"])
        astrometry: dict[str, Any] = {}
        for key in inventory.groups():
            solved = _read_record(layout, f"astrometry_{key.name}")
            if solved is None or solved.get("mode") != parameters.get("astrometry"):
                continue
            astrometry[key.name] = solved
            problems += solved.get("problems", [])
            recomputed += [
                r["product"] for r in solved["images"] if r["status"] in ("solved", "catalogued")
            ]
        for kind in ("darks", "interpolated", "flats"):
            for qc in masters.get(kind, {}).values():
                if not qc.get("reused"):
                    recomputed.append(qc["file"])
        manifest = {
            "night": night,
            "status": "failed" if problems else "success",
            "software": _versions(),
            "parameters": parameters,
            "raw_dir": join(raw_root, night),
            "inputs": [
                {
                    "path": f.path,
                    "kind": f.kind,
                    "sha256": f.sha256,
                    "exposure_ms": f.exposure_ms,
                    "filter": f.filter,
                    "object": f.object,
                }
                for f in inventory.frames
            ],
            "quarantined": setup.get("quarantined", []),
            "warnings": setup.get("warnings", []),
            "masters": {k: masters.get(k, {}) for k in ("darks", "interpolated", "flats")},
            "groups": groups,
            "astrometry": astrometry,
            "problems": problems,
            "recomputed": sorted(set(recomputed)),
            "products": _products(layout, products_root, night, s3),
            "timings": {
                "setup": setup.get("seconds"),
                "masters": masters.get("seconds"),
                "groups": {n: g.get("seconds") for n, g in groups.items() if "seconds" in g},
                "astrometry": {n: a.get("seconds") for n, a in astrometry.items()},
            },
        }
        payload = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        write_bytes_atomic(layout.out_dir / MANIFEST, payload.encode())
        return {
            "night": night,
            "status": manifest["status"],
            "groups": len(groups),
            "recomputed": len(manifest["recomputed"]),
            "problems": problems,
        }


PRODUCT_FOLDERS = (MASTERS, COSMETIC, STACKED, REDUCED)


def _products(
    layout: NightLayout, products_root: str, night: str, s3: dict[str, str] | None
) -> list[dict[str, str]]:
    """Every FITS product of the night with its SHA-256 and provenance key (in S3: from the
    metadata recorded at upload, without downloading the products)."""
    if is_s3(products_root):
        store = S3Store(S3Settings(**(s3 or {})))
        url = join(products_root, night)
        remote = [
            f.relpath
            for f in store.list_files(url)
            if f.relpath.endswith(".fits") and f.relpath.split("/")[0] in PRODUCT_FOLDERS
        ]
        entries = []
        for rel in sorted(remote):
            meta = store.metadata(join(url, rel))
            entries.append(
                {
                    "path": rel,
                    "sha256": meta.get(SHA_METADATA, ""),
                    "key": meta.get(KEY_METADATA, ""),
                }
            )
        return entries
    entries = []
    for name in PRODUCT_FOLDERS:
        folder = layout.out_dir / name
        for path in sorted(folder.glob("*.fits")) if folder.is_dir() else []:
            entries.append(
                {
                    "path": str(path.relative_to(layout.out_dir)),
                    "sha256": sha256_file(path),
                    "key": stored_key(path) or "",
                }
            )
    return entries


def _versions() -> dict[str, str]:
    """The versions behind the products (read from the installed metadata, not by importing
    the packages: a cosmetic run never imports astropy)."""
    return {"ar_tasks": __version__, **{name: version(name) for name in ("numpy", "astropy")}}
