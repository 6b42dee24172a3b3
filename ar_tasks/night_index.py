"""The archive's night index: one small summary per night, kept by the publish step.

A data manager's view of years of nights (the night browser, archive trends) must not read
1500 manifests of 50-500 kB per request. Each publish writes its night's summary,
`<products_root>/ar_index/<night>.json` (about 1 kB: status, counts, problems, the QC
medians a trend needs), after the night's manifest; one file per night, so nights published
at once never write the same file. `read_index` reads them all (1500 local files in well
under a second: bench.night_index); `indexed_nights` and `read_entry` read what one
question needs (the previous flat of a filter: one listing and a GET or two); `rebuild`
makes them from the manifests of an archive published before the index existed.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .fitsio import write_bytes_atomic
from .inventory import GroupKey
from .nights import NIGHT_PATTERN
from .storage import S3Settings, S3Store, StorageError, is_s3, join

log = logging.getLogger(__name__)
INDEX_FOLDER = "ar_index"
SCHEMA = 1
KINDS = ("dark", "flat", "object")  # frames counted per kind


def summarise(manifest: dict[str, Any]) -> dict[str, Any]:
    """A night's index entry from its manifest: what a listing and a trend need, no more."""
    groups = manifest.get("groups") or {}
    inputs = manifest.get("inputs") or []
    frames = {kind: sum(1 for i in inputs if i.get("kind") == kind) for kind in KINDS}
    qc = [(name, q) for name, g in groups.items() for q in (g.get("stack") or {}).get("qc") or []]
    stacked = [(name, q) for name, q in qc if q.get("stacked")]
    images = [i for a in (manifest.get("astrometry") or {}).values() for i in a.get("images", [])]
    problems = list(manifest.get("problems") or [])
    return {
        "schema": SCHEMA,
        "night": manifest.get("night"),
        "status": manifest.get("status"),
        "night_key": manifest.get("night_key"),
        "frames": frames,
        "quarantined": len(manifest.get("quarantined") or []),
        "rejected": sum(len((g.get("stack") or {}).get("left_out") or []) for g in groups.values()),
        "groups": len(groups),
        "groups_failed": sum(1 for g in groups.values() if g.get("status") == "failed"),
        "stacks": sum(1 for g in groups.values() if (g.get("stack") or {}).get("combined")),
        "solved": [sum(1 for i in images if i.get("status") == "solved"), len(images)],
        "borrowed": {
            name: entry.get("night")
            for name, entry in ((manifest.get("calibrations") or {}).get("borrowed") or {}).items()
        },
        "problems": len(problems),
        "problem": problems[0] if problems else None,
        "warnings": len(manifest.get("warnings") or []),
        "fwhm_arcsec": _median(q.get("fwhm_arcsec") for _, q in stacked),
        "sky_adu_s": _sky_rates(stacked),
        "darks": _masters(
            (manifest.get("masters") or {}).get("darks") or {}, "level_adu", "noise_adu"
        ),
        "flats": _masters(
            (manifest.get("masters") or {}).get("flats") or {}, "noise", "vs_previous"
        ),
        "qc_figure": manifest.get("qc_figure"),
        "airflow_run": manifest.get("airflow_run"),
    }


def _median(values: Iterable[Any]) -> float | None:
    numbers = [float(v) for v in values if isinstance(v, int | float)]
    return round(statistics.median(numbers), 4) if numbers else None


def _sky_rates(stacked: list[tuple[str, dict[str, Any]]]) -> dict[str, float | None]:
    """Per filter, the median sky of the stacked frames in ADU per second (dark sky, moon)."""
    rates: dict[str, list[float]] = {}
    for name, qc in stacked:
        try:
            group = GroupKey.parse(name)
        except ValueError:
            continue
        if isinstance(qc.get("sky"), int | float) and group.exposure_ms > 0:
            rates.setdefault(group.filter, []).append(qc["sky"] * 1000 / group.exposure_ms)
    return {band: _median(values) for band, values in sorted(rates.items())}


def _masters(records: dict[str, Any], *fields: str) -> dict[str, dict[str, Any]]:
    """The night's own masters' QC figures (borrowed ones are their lender's)."""
    return {
        str(name): {field: record.get(field) for field in fields}
        for name, record in sorted(records.items())
        if isinstance(record, dict) and record.get("file")
    }


def entry_url(products_root: str, night: str) -> str:
    return join(str(products_root), INDEX_FOLDER, f"{night}.json")


def write_entry(
    products_root: str, manifest: dict[str, Any], s3: dict[str, str] | None = None
) -> str:
    """Write (or replace) a night's entry; returns where. Skipped when unchanged."""
    night = str(manifest.get("night"))
    url = entry_url(products_root, night)
    payload = (json.dumps(summarise(manifest), sort_keys=True) + "\n").encode()
    if is_s3(products_root):
        store = S3Store(S3Settings(**(s3 or {})))
        try:
            if store.read_bytes(url) == payload:
                return url
        except StorageError:
            pass
        store.write_bytes(url, payload)
        return url
    path = Path(url)
    if not (path.is_file() and path.read_bytes() == payload):
        write_bytes_atomic(path, payload)
    return url


def read_index(products_root: str, s3: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every night's entry, by night; an unreadable entry is skipped with a warning."""
    entries = (read_entry(products_root, night, s3) for night in indexed_nights(products_root, s3))
    return [entry for entry in entries if entry is not None]


def indexed_nights(products_root: str, s3: dict[str, str] | None = None) -> list[str]:
    """The nights that have an entry, by night: one listing, no entry read."""
    if is_s3(products_root):
        store = S3Store(S3Settings(**(s3 or {})))
        names = [r.relpath for r in store.list_files(join(products_root, INDEX_FOLDER))]
    else:
        folder = Path(products_root) / INDEX_FOLDER
        names = [p.name for p in folder.glob("*.json")] if folder.is_dir() else []
    nights = [name.removesuffix(".json") for name in names if name.endswith(".json")]
    return sorted(night for night in nights if NIGHT_PATTERN.match(night))


def read_entry(
    products_root: str, night: str, s3: dict[str, str] | None = None
) -> dict[str, Any] | None:
    """One night's entry (None, with a warning, when it cannot be read or is not JSON)."""
    url = entry_url(products_root, night)
    try:
        if is_s3(products_root):
            payload = S3Store(S3Settings(**(s3 or {}))).read_bytes(url)
        else:
            payload = Path(url).read_bytes()
        entry = json.loads(payload)
    except (OSError, StorageError) as exc:
        log.warning("Night index entry %s cannot be read: %s", url, exc)
        return None
    except ValueError:
        log.warning("Night index entry %s.json is not JSON: skipped.", night)
        return None
    return entry if isinstance(entry, dict) and entry.get("night") else None


def rebuild(products_root: str) -> int:
    """Write the entry of every night folder of a local products root that has a manifest
    (an archive published before the index existed); returns how many."""
    count = 0
    for folder in sorted(Path(products_root).iterdir()):
        manifest_path = folder / "manifest.json"
        if NIGHT_PATTERN.match(folder.name) and manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text())
            except (OSError, ValueError) as exc:
                log.warning("%s cannot be read: %s", manifest_path, exc)
                continue
            write_entry(products_root, manifest)
            count += 1
    return count
