"""The publish step: a night's QC records gathered into `manifest.json`, written last.

Both faces keep one record per part of the night in `<products>/<night>/ar_qc/` (`setup`,
`masters`, `group_<name>`, `astrometry_<name>`) and publish the same manifest from them, so a
night has one provenance whichever face reduced it. A night that failed (even before its
inventory) still gets a manifest saying why. The schema is in README ("The manifest").
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .. import __version__, externals
from ..fitsio import sha256_file, write_bytes_atomic
from ..inventory import GroupKey, Inventory
from ..layout import COSMETIC, MASTERS, REDUCED, STACKED, NightLayout
from ..provenance import stored_key
from ..threads import default_jobs, run_each

QC_FOLDER = "ar_qc"
MANIFEST = "manifest.json"
SCHEMA_VERSION = 2
PRODUCT_FOLDERS = (MASTERS, COSMETIC, STACKED, REDUCED)
PYTHON_PACKAGES = ("numpy", "astropy", "scipy", "pillow", "click")
VERSION_ATTRIBUTES = {"numpy": "numpy", "pillow": "PIL"}  # module names whose __version__ holds


def write_record(layout: NightLayout, name: str, payload: dict[str, Any]) -> None:
    path = layout.out_dir / QC_FOLDER / f"{name}.json"
    write_bytes_atomic(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def forget_records(layout: NightLayout, names: Iterable[str]) -> None:
    """Delete these records (the tasks about to run write them again)."""
    for name in names:
        (layout.out_dir / QC_FOLDER / f"{name}.json").unlink(missing_ok=True)


def read_record(layout: NightLayout, name: str) -> dict[str, Any] | None:
    try:
        return json.loads((layout.out_dir / QC_FOLDER / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def read_manifest(layout: NightLayout) -> dict[str, Any] | None:
    try:
        return json.loads((layout.out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def local_products(layout: NightLayout, sha: bool = True) -> list[dict[str, Any]]:
    """Every FITS product of a local night folder with its size, and (`sha`) its SHA-256 and
    provenance key. Hashed in threads: hashing releases the GIL (the 38 products of a 1024²
    night of 61 frames, 0.15 GB, took 0.12 s of SHA-256 on one core)."""
    paths = [
        path for name in PRODUCT_FOLDERS for path in sorted((layout.out_dir / name).glob("*.fits"))
    ]

    def entry(path: Path) -> dict[str, Any]:
        found: dict[str, Any] = {"path": str(path.relative_to(layout.out_dir))}
        if sha:
            found.update(sha256=sha256_file(path), key=stored_key(path) or "")
        found["bytes"] = path.stat().st_size
        return found

    return run_each(entry, paths, default_jobs() if sha else 1)


def software_versions(tools: bool) -> dict[str, str]:
    """The versions behind the products, read from installed metadata (a cosmetic run never
    imports astropy); the external programs' own version lines when the night used them."""
    found = {"ar_tasks": __version__, "python": platform.python_version()}
    for name in PYTHON_PACKAGES:
        module = sys.modules.get(VERSION_ATTRIBUTES.get(name, ""))
        # An imported module knows its version; else the wheel's dist-info folder name says it
        # (importlib.metadata costs ~4 ms a package, 16 ms of every run's manifest).
        found[name] = getattr(module, "__version__", None) or _installed_version(name)
    if tools:
        for program in ("sextractor", "psfex", "scamp", "solve-field"):
            found[program] = externals.tool_version(program)
    return found


def _installed_version(name: str) -> str:
    versions = _dist_info_versions()
    wanted = _normalised(name)
    if wanted in versions:
        return versions[wanted]
    from importlib.metadata import PackageNotFoundError, version  # 17 ms to import

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


@functools.cache
def _dist_info_versions() -> dict[str, str]:
    """{normalised name: version} from the `name-version.dist-info` folders on sys.path (the
    first one found wins, as for imports): one listing per folder."""
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for folder in names:
            if folder.endswith(".dist-info") and "-" in folder:
                package, _, release = folder[: -len(".dist-info")].rpartition("-")
                found.setdefault(_normalised(package), release)
    return found


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def build_manifest(
    layout: NightLayout,
    night: str,
    parameters: dict[str, Any],
    raw_dir: str,
    products: list[dict[str, Any]],
    night_key: str = "",
    recipes: dict[str, Any] | None = None,
    astrometry_mode: str | None = None,
    selected: Iterable[GroupKey] | None = None,
) -> dict[str, Any]:
    """The manifest of a night from its records (see README for each field). A `selected`
    group without its record (or, with astrometry, a reduced group without its solving record)
    did not finish: it is a problem, and listed in `incomplete`, so that neither a rerun's
    cheap check nor an operator takes the night for settled."""
    setup = read_record(layout, "setup") or {}
    manifest: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "night": night,
        "night_key": night_key,
        "software": software_versions(tools=bool(astrometry_mode)),
        "recipes": recipes or {},
        "parameters": parameters,
        "raw_dir": raw_dir,
        "quarantined": setup.get("quarantined", []),
        "warnings": setup.get("warnings", []),
    }
    try:
        inventory = Inventory.from_json(layout.inventory_file.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        reason = setup.get("error") or "the night's setup did not finish (no inventory)"
        manifest.update(status="failed", problems=[reason], inputs=[], groups={}, products=[])
        return manifest
    masters = read_record(layout, "masters") or {}
    problems: list[str] = list(masters.get("problems", []))
    groups: dict[str, Any] = {}
    astrometry: dict[str, Any] = {}
    recomputed: list[str] = []
    incomplete: list[str] = []
    wanted = set(selected) if selected is not None else set()
    for kind in ("darks", "interpolated", "flats", "borrowed"):
        recomputed += [qc["file"] for qc in masters.get(kind, {}).values() if not qc.get("reused")]
    for key in inventory.groups():
        record = read_record(layout, f"group_{key.name}")
        if record is None:
            if key in wanted:
                incomplete.append(key.name)
                problems.append(f"{key.name}: not reduced (its task did not finish; rerun it)")
            continue  # else not selected (objects, filters)
        groups[key.name] = record
        if record.get("status") == "failed":
            problems.append(f"{key.name}: {record.get('error')}")
        recomputed += record.get("written", [])
        stack = record.get("stack") or {}
        if stack and not stack.get("reused"):
            recomputed.append(stack["file"])
        if not astrometry_mode:
            continue
        solved = read_record(layout, f"astrometry_{key.name}")
        if solved is None or solved.get("mode") != astrometry_mode:  # none, or another route's
            if key in wanted and record.get("status") != "failed":
                incomplete.append(f"astrometry {key.name}")
                problems.append(f"{key.name}: not solved (its task did not finish; rerun it)")
            continue
        astrometry[key.name] = solved
        if solved.get("status") == "failed":
            problems.append(f"{key.name}: {solved.get('error')}")
        problems += solved.get("problems", [])
        images = solved.get("images", [])
        recomputed += [r["product"] for r in images if r["status"] in ("solved", "catalogued")]
    manifest.update(
        status="failed" if problems else "success",
        inputs=[
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
        masters={k: masters.get(k, {}) for k in ("darks", "interpolated", "flats")},
        calibrations=calibrations(layout, masters.get("borrowed", {})),
        groups=groups,
        astrometry=astrometry,
        problems=problems,
        incomplete=incomplete,
        recomputed=sorted(set(recomputed)),
        products=products,
        timings={
            "setup": setup.get("seconds"),
            "masters": masters.get("seconds"),
            "groups": {n: g.get("seconds") for n, g in groups.items() if "seconds" in g},
            "astrometry": {n: a.get("seconds") for n, a in astrometry.items()},
        },
    )
    return manifest


def calibrations(layout: NightLayout, borrowed: dict[str, Any]) -> dict[str, Any]:
    """The masters borrowed from other nights (each with its night, distance, why and the
    candidates seen), and `changed`: how that differs from the night's previous manifest
    (a nearer night that arrived, a master listed as bad), e.g. "mtrans_V: 2023-05-01 ->
    2023-05-06" ("not borrowed": the night's own master, or none)."""
    previous = read_manifest(layout)
    changed: list[str] = []
    if previous is not None:
        before = {
            name: qc.get("night")
            for name, qc in previous.get("calibrations", {}).get("borrowed", {}).items()
        }
        now = {name: qc.get("night") for name, qc in borrowed.items()}
        for name in sorted(set(before) | set(now)):
            if before.get(name) != now.get(name):
                was, now_from = before.get(name), now.get(name)
                changed.append(f"{name}: {was or 'not borrowed'} -> {now_from or 'not borrowed'}")
    return {"borrowed": borrowed, "changed": changed}


def add_qc_figure(layout: NightLayout, manifest: dict[str, Any], drawer: Any = None) -> None:
    """Draw the night's QC figure (before the manifest, which is written last) and name it
    in the manifest; matplotlib is imported only to draw it (in `drawer`'s process, if any)."""
    from .. import qc_figure

    path = qc_figure.write_night_figure(layout, manifest, drawer)
    manifest["qc_figure"] = None if path is None else qc_figure.FIGURE_FILE


def write_manifest(layout: NightLayout, manifest: dict[str, Any]) -> Path:
    payload = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    return write_bytes_atomic(layout.out_dir / MANIFEST, payload.encode())


def summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """A manifest's few figures, for XCom and the CLI."""
    return {
        "night": manifest["night"],
        "status": manifest["status"],
        "groups": len(manifest.get("groups", {})),
        "recomputed": len(manifest.get("recomputed", [])),
        "problems": manifest.get("problems", []),
    }
