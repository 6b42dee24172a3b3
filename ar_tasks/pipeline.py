"""The night plan's stages for the Airflow DAG: plain arguments in, small JSON-able dicts out.

Each function runs one stage of the night plan (ar_tasks.nightplan) for one night
(`<raw_root>/<night>` -> `<products_root>/<night>`) or one (night, group), in a workspace that
downloads from S3 exactly what the stage's tasks declare they read; it writes the stage's QC
records in `ar_qc/` and returns keys, counts and QC figures for XCom. `publish_night` gathers
the records into `manifest.json`, written last, exactly as the CLI does.

Errors a rerun would meet again (DETERMINISTIC) are for the DAG to fail at once; others (S3,
network) may be transient and keep their retries.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import calibration_library as library
from . import flat_stability, night_index
from .association import Windows
from .astro_config import ConfigError
from .astrometry import AstrometryOptions
from .frame_qc import Thresholds
from .inventory import GroupKey, Inventory, describes
from .layout import COSMETIC, INVENTORY_FILE, MASTERS, STACKED, NightLayout
from .logs import log_context
from .nightplan import NightPlan, ReductionOptions, astrometry_record, group_record
from .nights import raw_stamps
from .steps import publish
from .steps.common import StepError
from .steps.publish import QC_FOLDER, local_products
from .steps.setup import load_inventory, setup_night
from .storage import KEY_METADATA, SHA_METADATA, S3Settings, S3Store, is_s3, join, split_s3
from .threads import default_jobs, run_each
from .workspace import night_workspace

log = logging.getLogger(__name__)
JOBS_ENV = "AR_ASTROMETRY_JOBS"  # images one astrometry task solves at once (default 1)
# ValueError covers bad params and unreadable frames or headers (FrameError, HeaderError).
DETERMINISTIC = (StepError, ValueError, ConfigError)
CHECK_JOBS = 8  # nights checked at once by nights_to_reduce


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


def reduction_options(
    params: dict[str, Any], settings: dict[str, Any] | None = None
) -> ReductionOptions:
    """The DAG's params as ReductionOptions; `settings` are AstrometryOptions fields (refcat,
    index_dir, online_settings...), kept apart because they hold credentials."""
    mode = params.get("astrometry") or "none"
    overwrite = bool(params.get("overwrite", False))
    png = bool(params.get("png", False))
    return ReductionOptions(
        interpolate=bool(params.get("interpolate", True)),
        stack=bool(params.get("stack", True)),
        aux_png=png,
        stack_png=png,
        overwrite=overwrite,
        objects=tuple(params.get("objects") or ()),
        filters=tuple(params.get("filters") or ()),
        astrometry=AstrometryOptions.from_mode(mode, overwrite=overwrite, **(settings or {})),
        astrometry_jobs=int(os.environ.get(JOBS_ENV, "1")),
        windows=windows_of(params),
        frame_qc=thresholds_of(params),
    )


def thresholds_of(params: dict[str, Any]) -> Thresholds:
    """When a stack leaves a frame out (params `frame_rejection`, `max_fwhm_ratio`,
    `max_ellipticity`, `min_transparency`; a missing one takes its default)."""
    default = Thresholds()
    return Thresholds(
        reject=bool(params.get("frame_rejection", default.reject)),
        max_fwhm_ratio=_number(params, "max_fwhm_ratio", default.max_fwhm_ratio),
        max_ellipticity=_number(params, "max_ellipticity", default.max_ellipticity),
        min_transparency=_number(params, "min_transparency", default.min_transparency),
    )


def _number(params: dict[str, Any], name: str, default: float) -> float:
    value = params.get(name)
    return default if value is None else float(value)


def windows_of(params: dict[str, Any]) -> Windows:
    """How far masters may be borrowed from (params `dark_window_days`, `flat_window_days`;
    `calibrations_past_only`, which the DAG sets for scheduled runs)."""
    default = Windows()
    return Windows(
        dark_days=_days(params, "dark_window_days", default.dark_days),
        flat_days=_days(params, "flat_window_days", default.flat_days),
        past_only=bool(params.get("calibrations_past_only", False)),
    )


def _days(params: dict[str, Any], name: str, default: float) -> float:
    value = params.get(name)
    days = default if value is None else float(value)
    if not days >= 0:
        raise ValueError(f"{name} must be a number of days >= 0, not {value!r}")
    return days


def archive_of(
    raw_root: str, products_root: str, options: ReductionOptions, s3: dict[str, str] | None
) -> library.Archive:
    """The archive a night of this products tree borrows masters from: the raw root's other
    nights, the library in the products root (see calibration_library)."""
    return library.archive_for(raw_root, products_root, options.windows, options.interpolate, s3)


def borrowed_identity(layout: NightLayout) -> dict[str, Any]:
    """What the night's masters record says was borrowed (its night key's part)."""
    record = publish.read_record(layout, "masters") or {}
    borrowed = record.get("borrowed", {})
    return {name: [qc.get("night"), qc.get("key")] for name, qc in sorted(borrowed.items())}


def _workspace(
    raw_root: str, products_root: str, night: str, s3: dict[str, str] | None, **choice: Any
) -> Any:
    """The night's folders for one stage (an S3 night is mirrored: see ar_tasks.workspace)."""
    _check_forms(raw_root, products_root)
    return night_workspace(
        raw_root, products_root, night, settings=S3Settings(**(s3 or {})), **choice
    )


def _plan_reader(options: ReductionOptions) -> Any:
    """The night plan from the inventory in a products folder, made once per stage."""

    @functools.cache
    def plan(out_dir: Path) -> NightPlan:
        inventory = Inventory.from_json((out_dir / INVENTORY_FILE).read_text())
        return NightPlan.build(inventory, options)

    return plan


def group_label(night: str, group: GroupKey) -> str:
    return f"{night} {group.label}"


@dataclass
class NightChoice:
    """What a run's nights need: `todo` to be reduced; `failed` (night -> its problems) failed
    before with the same frames, params and code, every task of it finished: reducing them
    again would give the same failure."""

    todo: list[str] = field(default_factory=list)
    failed: dict[str, list[str]] = field(default_factory=dict)


def nights_to_reduce(
    raw_root: str,
    products_root: str,
    nights: list[str],
    params: dict[str, Any],
    settings: dict[str, Any] | None = None,
    s3: dict[str, str] | None = None,
) -> NightChoice:
    """Sort the nights by night_state: all to do with `overwrite`; current ones dropped (a
    rerun of years of current nights then maps no task for them)."""
    if params.get("overwrite"):
        return NightChoice(todo=list(nights))
    options = reduction_options(params, settings)
    # In threads: in S3 each night's check is a few listings and small downloads: latency.
    states = run_each(
        lambda night: night_state(raw_root, products_root, night, options, s3),
        list(nights),
        CHECK_JOBS,
    )
    choice = NightChoice()
    for night, (state, problems) in zip(nights, states, strict=True):
        if state == "current":
            log.info("Night %s: its manifest and products are current: nothing to do.", night)
        elif state == "failed":
            choice.failed[night] = problems
        else:
            choice.todo.append(night)
    return choice


def night_state(
    raw_root: str,
    products_root: str,
    night: str,
    options: ReductionOptions,
    s3: dict[str, str] | None = None,
) -> tuple[str, list[str]]:
    """The cheap check of a rerun, reading no frame and no product: ("current", []) or
    ("failed", its problems) when the night's manifest was written for the night key of its
    stored inventory (a success; or a failure with every task finished), that inventory still
    describes the raw files (same paths, sizes and times), and every product listed is there
    with its size; else ("todo", []). Anything unreadable or changed says "todo":
    prepare_night then decides by content."""
    with _workspace(raw_root, products_root, night, s3, raw_files=[], products=[]) as layout:
        try:
            inventory = load_inventory(layout)
        except StepError:
            return "todo", []
        if not describes(inventory, raw_stamps(raw_root, night, s3)):
            return "todo", []
        archive = archive_of(raw_root, products_root, options, s3)
        try:
            plan = NightPlan.build(inventory, options, night, archive, read_frames=False)
        except library.Undecided:
            return "todo", []
        manifest = _manifest_for(layout, plan, products_root, night, s3)
    if manifest is None:
        return "todo", []
    if manifest.get("status") == "success":
        return "current", []
    if manifest.get("incomplete") == []:  # schema 2 manifests before it have none: todo
        return "failed", list(manifest.get("problems", []))
    return "todo", []


def prepare_night(
    raw_root: str,
    products_root: str,
    night: str,
    params: dict[str, Any],
    settings: dict[str, Any] | None = None,
    s3: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Inventory a night and make its masters (the plan's "masters" stage); returns the
    groups ready to reduce. A night whose products are all current (same frames, options
    and code: its night key, and every product in its manifest present) stops here."""
    started = time.monotonic()
    options = reduction_options(params, settings)
    patterns = [f"{folder}/*" for folder in (MASTERS, COSMETIC, STACKED, QC_FOLDER)]
    with (
        log_context(night=night),
        _workspace(raw_root, products_root, night, s3, products=patterns) as layout,
    ):
        setup_night(layout, working_copies=None)
        archive = archive_of(raw_root, products_root, options, s3)
        plan = NightPlan.build(load_inventory(layout), options, night, archive)
        if not options.overwrite and _all_current(layout, plan, products_root, night, s3):
            log.info("Night %s: every product is current (night key and products): reused.", night)
            return {"night": night, "current": True, "groups": [], "solve": False}
        # This run's group tasks write these again: one that does not finish leaves no
        # record of an earlier run behind, and the manifest says it did not finish.
        publish.forget_records(
            layout, [name(g) for g in plan.groups() for name in (group_record, astrometry_record)]
        )
        run = plan.run(plan.start(layout), ["masters"], jobs=default_jobs())
        run.masters()["seconds"] = round(time.monotonic() - started, 3)
        ready = [
            {"night": night, "group": asdict(group), "label": group_label(night, group)}
            for group in plan.ready_groups(run)
        ]
        # Each own master flat against the archive's previous one (its trend: dust, lamps).
        flat_stability.compare_flats(
            layout, run.masters().get("flats") or {}, products_root, night, s3
        )
        run.save()
        return {
            "night": night,
            "current": False,
            "groups": ready,
            "solve": options.astrometry.requested,
        }


def _all_current(
    layout: NightLayout,
    plan: NightPlan,
    products_root: str,
    night: str,
    s3: dict[str, str] | None,
) -> bool:
    """True when the manifest was a success for this very night key and its products are
    all still there with their sizes (one listing; no product is read)."""
    manifest = _manifest_for(layout, plan, products_root, night, s3)
    return manifest is not None and manifest.get("status") == "success"


def _manifest_for(
    layout: NightLayout,
    plan: NightPlan,
    products_root: str,
    night: str,
    s3: dict[str, str] | None,
) -> dict[str, Any] | None:
    """The night's manifest when it was written for this very night key and the products it
    lists are all still there with their sizes (one listing; no product is read), else None."""
    manifest = publish.read_manifest(layout)
    if not manifest or manifest.get("night_key") != plan.night_key():
        return None
    present = {
        entry["path"]: entry.get("bytes")
        for entry in night_products(layout, products_root, night, s3, sha=False)
    }
    listed = manifest.get("products", [])
    return manifest if all(present.get(p["path"], -1) == p.get("bytes") for p in listed) else None


def reduce_group(
    raw_root: str,
    products_root: str,
    night: str,
    group: dict[str, Any],
    params: dict[str, Any],
    settings: dict[str, Any] | None = None,
    s3: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Calibrate, register, combine and preview one group (the plan's "group" stage)."""
    key = GroupKey(**group)
    options = reduction_options(params, settings)
    record = _run_group_stage(raw_root, products_root, night, key, options, "group", s3)
    stack = record.get("stack") or {}
    return {
        "night": night,
        "group": key.name,
        "calibrated": record.get("calibrated"),
        "combined": stack.get("combined"),
        "left_out": len(stack.get("left_out") or []),
        "reused": stack.get("reused"),
    }


def solve_group(
    raw_root: str,
    products_root: str,
    night: str,
    group: dict[str, Any],
    params: dict[str, Any],
    settings: dict[str, Any] | None = None,
    s3: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Solve one group's aux frames and stack (the plan's "solve" stage). An image that does
    not solve is recorded (and fails the night in its manifest), not raised: another attempt
    would give the same answer, and the other images are still solved."""
    key = GroupKey(**group)
    options = reduction_options(params, settings)
    record = _run_group_stage(raw_root, products_root, night, key, options, "solve", s3)
    counts = {k: record.get(k, 0) for k in ("solved", "failed", "reused", "catalogued")}
    return {"night": night, "group": key.name, "astrometry": params.get("astrometry"), **counts}


def _run_group_stage(
    raw_root: str,
    products_root: str,
    night: str,
    group: GroupKey,
    options: ReductionOptions,
    stage: str,
    s3: dict[str, str] | None,
) -> dict[str, Any]:
    """One stage of one group, its record written; StepError when the group failed."""
    started = time.monotonic()
    plan_of = _plan_reader(options)
    name = group_record(group) if stage == "group" else astrometry_record(group)
    with (
        log_context(night=night, group=group.name),
        _workspace(
            raw_root,
            products_root,
            night,
            s3,
            raw_files=lambda out: plan_of(out).reads([stage], group).raw,
            products=lambda out: plan_of(out).reads([stage], group).products,
        ) as layout,
    ):
        plan = plan_of(layout.out_dir)
        if group not in plan.groups():
            raise StepError(f"No files found for group {group.name}.")
        run = plan.run(plan.start(layout), [stage], group, jobs=default_jobs())
        record = run.record(name)
        record["seconds"] = round(time.monotonic() - started, 3)
        run.save()
    if record.get("status") == "failed":
        raise StepError(f"{group.name}: {record.get('error')}")
    return record


def publish_night(
    raw_root: str,
    products_root: str,
    night: str,
    params: dict[str, Any],
    settings: dict[str, Any] | None = None,
    s3: dict[str, str] | None = None,
    run: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write `manifest.json` for a night from its QC records; last, and atomically; then its
    entry in the archive's night index (night_index). `run` (the DAG's dag_id and run_id)
    is recorded in a manifest this run writes. Returns the night's summary; the caller
    fails the night's branch when its status is not success."""
    manifest = _publish_manifest(raw_root, products_root, night, params, settings, s3, run)
    if manifest.get("night"):
        night_index.write_entry(products_root, manifest, s3)
    return publish.summary(manifest)


def _publish_manifest(
    raw_root: str,
    products_root: str,
    night: str,
    params: dict[str, Any],
    settings: dict[str, Any] | None,
    s3: dict[str, str] | None,
    run: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The night's manifest, written (or found current) in its products folder."""
    options = reduction_options(params, settings)
    with (
        log_context(night=night),
        _workspace(
            raw_root, products_root, night, s3, raw_files=[], products=[f"{QC_FOLDER}/*"]
        ) as layout,
    ):
        raw_dir = join(raw_root, night)
        if not layout.inventory_file.is_file():  # the setup failed: the manifest says why
            products = night_products(layout, products_root, night, s3)
            manifest = publish.build_manifest(layout, night, params, raw_dir, products)
        else:
            archive = archive_of(raw_root, products_root, options, s3)
            bad = library.read_bad_list(archive.bad_lists, s3)
            plan = NightPlan.build(load_inventory(layout), options, night, bad=bad)
            plan.borrowed = borrowed_identity(layout)  # what the masters' stage borrowed
            if not options.overwrite and _all_current(layout, plan, products_root, night, s3):
                manifest = publish.read_manifest(layout) or {}
                changes = manifest.get("calibrations", {}).get("changed")
                if manifest.get("recomputed") or changes:  # this run changed nothing: say so
                    manifest["recomputed"] = []
                    manifest.get("calibrations", {})["changed"] = []
                    publish.write_manifest(layout, manifest)
                return manifest
            products = night_products(layout, products_root, night, s3)
            manifest = plan.manifest(layout, night, params, raw_dir, products)
            if options.aux_png:  # the png param: the night's QC figure beside the manifest
                publish.add_qc_figure(layout, manifest)
        if run:
            manifest["airflow_run"] = dict(run)  # the run that wrote it (the night browser)
        publish.write_manifest(layout, manifest)
    return manifest


def night_products(
    layout: NightLayout,
    products_root: str,
    night: str,
    s3: dict[str, str] | None,
    sha: bool = True,
) -> list[dict[str, Any]]:
    """Every FITS product of the night with its SHA-256, size and provenance key (in S3: from
    the metadata recorded at upload, without downloading the products)."""
    if not products_root or not is_s3(products_root):
        return local_products(layout, sha)
    store = S3Store(S3Settings(**(s3 or {})))
    url = join(products_root, night)
    entries = []
    for remote in sorted(store.list_files(url), key=lambda r: r.relpath):
        if not remote.relpath.endswith(".fits"):
            continue
        if remote.relpath.split("/")[0] not in publish.PRODUCT_FOLDERS:
            continue
        entry: dict[str, Any] = {"path": remote.relpath, "bytes": remote.size}
        if sha:
            meta = store.metadata(join(url, remote.relpath))
            entry.update(sha256=meta.get(SHA_METADATA, ""), key=meta.get(KEY_METADATA, ""))
        entries.append(entry)
    return entries
