"""The night plan: every task of a night's reduction, what it reads and writes, what it needs.

One plan, two faces. The `astro_reduce` command runs a whole plan in its thread graph (the
masters and the groups' cosmetic tasks in worker processes, which share no GIL: see workers);
the DAG runs it stage by stage (the masters in the night's task, each group's cosmetic tasks in
that group's task, its astrometry in the astrometry pool) and the S3 workspace downloads exactly
what a stage's tasks declare they read. No dependency rule is written anywhere else.

Tasks, their stage and what each needs first:

    dark <ms>          masters   -
    interpolation      masters   every dark task          (exposures without darks, -i)
    borrow darks       masters   -                        (darks the night cannot make)
    flat <filter>      masters   the darks of its exposures
    borrow flats       masters   -                        (flats the night cannot make)
    master previews    masters   every master task        (--tmppng / png)
    calibrate <group>  group     its dark and flat tasks
    register <group>   group     calibrate <group>        (unless --nostack)
    combine <group>    group     register <group>
    previews <group>   group     combine (or calibrate) <group>   (--tmppng, --stkpng / png)
    solve <group>      solve     combine (or calibrate) <group>   (an astrometry route)

A night that cannot make a master (no frames for it, or its own listed as bad) borrows the
nearest usable one of another night of the archive (calibration_library), when the plan is
given the archive; the night's own calibrations always win, its own dark line included.

Each group's outcome is one record (`group_<name>`, `astrometry_<name>`), the masters' one
record (`masters`); publish gathers the records into the manifest (steps.publish).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, camera
from . import calibration_library as library
from .association import Candidate, Need, Search, Windows, identity
from .astrometry import AstrometryOptions
from .fitsio import FrameError
from .frame_qc import Thresholds
from .inventory import Frame, GroupKey, Inventory
from .layout import ASTROMATIC_FOLDERS, COSMETIC, MASTERS, REDUCED, STACKED, NightLayout
from .logs import log_context
from .steps import calibrate, masters, previews, solve, stack
from .steps.common import StepError, problem, remove_stale
from .steps.publish import build_manifest, write_record
from .threads import Task, run_graph
from .workers import WorkerPool, worker_pool
from .workers import state as worker_state

log = logging.getLogger(__name__)
STAGES = ("masters", "group", "solve")
# The thread graph starts ready tasks in this order of kinds: what unlocks most work first
# (every master, then every calibration, which unlock the stacks), the slow solves last.
KIND_ORDER = (
    "dark",
    "interpolation",
    "borrow",
    "missing",
    "flat",
    "master",
    "calibrate",
    "register",
    "combine",
    "previews",
    "solve",
)
FAILURES = (StepError, FrameError, ValueError, OSError)  # a task's own, recorded failures
# Kinds a worker process may run: numpy work whose state is a group's record and alignment,
# or its own part of the masters' record (solves wait on their tools, in threads).
FORKED_KINDS = ("dark", "interpolation", "flat", "calibrate", "register", "combine", "previews")


@dataclass(frozen=True)
class ReductionOptions:
    """What a reduction is asked to do: the CLI's flags and the DAG's params, in one form."""

    interpolate: bool = False
    stack: bool = True
    aux_png: bool = False  # --tmppng: masters and aux frames
    stack_png: bool = False  # --stkpng
    overwrite: bool = False
    make_masters: bool = True  # False: --nomaster, use the masters already there
    objects: tuple[str, ...] = ()
    filters: tuple[str, ...] = ()
    astrometry: AstrometryOptions = field(default_factory=AstrometryOptions)
    astrometry_jobs: int = 1  # images one solve task solves at once
    windows: Windows = field(default_factory=Windows)  # how far masters may be borrowed from
    frame_qc: Thresholds = field(default_factory=Thresholds)  # which frames a stack leaves out

    def selects(self, group: GroupKey) -> bool:
        """True when a group passes the object and filter restrictions (names sanitised)."""
        objects = {camera.sanitize_object(o) for o in self.objects}
        filters = {camera.sanitize_filter(f) for f in self.filters}
        return (not objects or group.object in objects) and (not filters or group.filter in filters)

    def provenance(self) -> dict[str, Any]:
        """The options that decide the night's products (not overwrite, not the jobs)."""
        solving = self.astrometry.provenance() if self.astrometry.requested else None
        return {
            "interpolate": self.interpolate,
            "stack": self.stack,
            "aux_png": self.aux_png,
            "stack_png": self.stack_png,
            "make_masters": self.make_masters,
            "objects": sorted(self.objects),
            "filters": sorted(self.filters),
            "astrometry": solving,
            "windows": self.windows.provenance(),
            "frame_qc": self.frame_qc.parameters(),
        }


@dataclass(frozen=True)
class Reads:
    """What a task reads: raw frames (paths in the night folder) and product globs."""

    raw: tuple[str, ...] = ()
    products: tuple[str, ...] = ()


@dataclass
class PlanTask:
    name: str
    stage: str
    run: Callable[[NightRun], None]
    needs: tuple[str, ...] = ()
    reads: Reads = Reads()
    group: GroupKey | None = None

    @property
    def kind(self) -> str:
        """The first word of the name: dark, flat, calibrate, register, solve..."""
        return self.name.split(" ")[0]


@dataclass
class NightRun:
    """The state the tasks of one run share: the layout, the records they fill, alignments."""

    layout: NightLayout
    options: ReductionOptions
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    alignments: dict[GroupKey, stack.Alignment] = field(default_factory=dict)

    def record(self, name: str) -> dict[str, Any]:
        return self.records.setdefault(name, {})

    def masters(self) -> dict[str, Any]:
        """The masters' record, with its sections (a night may make no master at all)."""
        record = self.record("masters")
        for kind in ("darks", "interpolated", "flats", "borrowed"):
            record.setdefault(kind, {})
        record.setdefault("problems", [])
        return record

    def group(self, group: GroupKey, frames: list[Frame]) -> dict[str, Any]:
        """A group's record, naming the group and its frames."""
        record = self.record(group_record(group))
        record.update(group=group.name, label=group.label, frames=[f.path for f in frames])
        return record

    def failed(self, group: GroupKey) -> bool:
        return self.records.get(group_record(group), {}).get("status") == "failed"

    def save(self) -> None:
        """Write every record of this run in the night's ar_qc/ (what publish gathers)."""
        for name, record in self.records.items():
            write_record(self.layout, name, record)


def recipes() -> dict[str, dict[str, Any]]:
    """The code identity and algorithm parameters of each kind of product (for the manifest
    and the night key; each product's own key holds its recipe too)."""
    return {
        "mdark": masters.dark_recipe(),
        "mdark-interpolated": masters.interpolation_recipe(),
        "mtrans": masters.flat_recipe(),
        "aux": calibrate.aux_recipe(),
        "stack": stack.stack_recipe(),
    }


def group_record(group: GroupKey) -> str:
    return f"group_{group.name}"


def astrometry_record(group: GroupKey) -> str:
    return f"astrometry_{group.name}"


def group_files(group: GroupKey, *folders: str) -> tuple[str, ...]:
    """Glob patterns of a group's files in product folders (its stack, aux frames, results)."""
    return tuple(f"{folder}/{group.name}{tail}" for folder in folders for tail in (".*", "_*"))


@dataclass
class NightPlan:
    inventory: Inventory
    options: ReductionOptions
    tasks: dict[str, PlanTask] = field(default_factory=dict)
    night: str = ""  # the night's name (bad_masters.txt names masters by night)
    archive: library.Archive | None = None  # where masters are borrowed from (None: nowhere)
    bad: frozenset[tuple[str, str]] = frozenset()  # (night, master) listed as bad
    searches: dict[str, Search] = field(default_factory=dict)  # need -> its candidates
    borrowed: dict[str, Any] | None = None  # what was borrowed (publish), else the choice

    # ------------------------------------------------------------------ building

    @classmethod
    def build(
        cls,
        inventory: Inventory,
        options: ReductionOptions,
        night: str = "",
        archive: library.Archive | None = None,
        read_frames: bool = True,
        bad: frozenset[tuple[str, str]] | None = None,
    ) -> NightPlan:
        """The plan of a night. With an `archive`, the masters it cannot make are looked for
        in other nights (reading their calibration frames when their library entry is not
        current, unless not `read_frames`: then library.Undecided). `bad`: the masters listed
        as bad (default: the archive's lists)."""
        if bad is None:
            bad = library.read_bad_list(archive.bad_lists, archive.s3) if archive else frozenset()
        plan = cls(inventory, options, night=night, archive=archive, bad=bad)
        if archive is not None and options.make_masters:
            needs = plan.needs()
            plan.searches = library.associate(archive, night, inventory, needs, read_frames, bad)
        makers: dict[str, str] = {}  # master file name -> the task that makes it
        if options.make_masters:
            makers = plan._add_masters()
        for group, frames in plan.groups().items():
            plan._add_group(group, frames, makers)
        return plan

    def groups(self) -> dict[GroupKey, list[Frame]]:
        """The selected groups and their frames."""
        return {g: f for g, f in self.inventory.groups().items() if self.options.selects(g)}

    def _add(self, task: PlanTask) -> None:
        self.tasks[task.name] = task

    def own_darks(self) -> dict[int, list[Frame]]:
        """The night's darks by exposure, less the masters an operator listed as bad."""
        darks = self.inventory.darks_by_exposure()
        return {e: f for e, f in darks.items() if (self.night, f"mdark_{e}") not in self.bad}

    def own_flats(self) -> dict[str, list[Frame]]:
        flats = self.inventory.flats_by_filter()
        return {n: f for n, f in flats.items() if (self.night, f"mtrans_{n}") not in self.bad}

    def needed_exposures(self) -> list[int]:
        """Exposures that need a master dark: the science frames' and the own flats'."""
        science = {f.exposure_ms for f in self.inventory.of_kind("object")}
        flats = {f.exposure_ms for frames in self.own_flats().values() for f in frames}
        return sorted(science | flats)

    def needs(self) -> list[Need]:
        """The masters this night cannot make itself: darks of exposures it has no darks for
        (unless its own dark line can make them: two exposures or more with `interpolate`),
        flats of the science filters it has no flats for."""
        darks = self.own_darks()
        line = self.options.interpolate and len(darks) >= 2
        needs = [
            Need("dark", exposure_ms=e)
            for e in self.needed_exposures()
            if e not in darks and not line
        ]
        flats = self.own_flats()
        science = sorted({f.filter for f in self.inventory.of_kind("object")})
        return needs + [Need("flat", filter=name) for name in science if name not in flats]

    def chosen(self) -> dict[str, Candidate]:
        """The master each borrowed need takes: its nearest candidate."""
        return {n: s.candidates[0] for n, s in self.searches.items() if s.candidates}

    def _add_masters(self) -> dict[str, str]:
        """Master tasks; returns which task makes each master file."""
        options = self.options
        makers: dict[str, str] = {}
        darks = self.own_darks()
        for exposure, frames in darks.items():
            name = f"dark {exposure}"
            self._add(
                PlanTask(
                    name,
                    "masters",
                    _master_dark(exposure, frames),
                    reads=Reads(tuple(f.path for f in frames), (f"{MASTERS}/mdark_{exposure}.*",)),
                )
            )
            makers[f"mdark_{exposure}"] = name
        chosen = self.chosen()
        borrowed = [e for e in self.needed_exposures() if f"mdark_{e}" in chosen]
        missing = [e for e in self.needed_exposures() if e not in darks and e not in borrowed]
        if borrowed:
            self._add_borrow("darks", [f"mdark_{e}" for e in borrowed], makers)
        if missing and darks and options.interpolate:
            wanted = (*darks, *missing)
            self._add(
                PlanTask(
                    "interpolation",
                    "masters",
                    _interpolation(darks, missing),
                    needs=tuple(makers[f"mdark_{e}"] for e in darks),
                    reads=Reads((), tuple(f"{MASTERS}/mdark_{e}.*" for e in wanted)),
                )
            )
            makers.update({f"mdark_{e}": "interpolation" for e in missing})
        elif missing:
            reasons = self._failures(f"mdark_{e}" for e in missing)
            self._add(
                PlanTask("missing darks", "masters", _no_darks(missing, bool(darks), reasons))
            )
        flats = self.own_flats()
        science = {f.filter for f in self.inventory.of_kind("object")}
        absent = sorted(f for f in science | set(flats) if f not in flats)
        to_borrow = [f for f in absent if f"mtrans_{f}" in chosen]
        absent = [f for f in absent if f not in to_borrow]
        if absent:
            reasons = self._failures(f"mtrans_{f}" for f in absent)
            self._add(PlanTask("missing flats", "masters", _no_flats(absent, reasons)))
        for filter_name, frames in flats.items():
            exposures = sorted({f.exposure_ms for f in frames})
            name = f"flat {filter_name}"
            needs = sorted({makers[f"mdark_{e}"] for e in exposures if f"mdark_{e}" in makers})
            products = (
                f"{MASTERS}/mtrans_{filter_name}.*",
                *(f"{MASTERS}/mdark_{e}.*" for e in exposures),
            )
            self._add(
                PlanTask(
                    name,
                    "masters",
                    _master_flat(filter_name, frames),
                    tuple(needs),
                    Reads(tuple(f.path for f in frames), products),
                )
            )
            makers[f"mtrans_{filter_name}"] = name
        if to_borrow:
            self._add_borrow("flats", [f"mtrans_{f}" for f in to_borrow], makers)
        if options.aux_png:
            self._add(
                PlanTask(
                    "master previews",
                    "masters",
                    _master_previews,
                    needs=tuple(sorted(set(makers.values()))),
                    reads=Reads((), (f"{MASTERS}/*",)),
                )
            )
        return makers

    def _add_borrow(self, kind: str, names: list[str], makers: dict[str, str]) -> None:
        """One task that borrows these masters (see calibration_library.borrow)."""
        assert self.archive is not None
        task = f"borrow {kind}"
        searches = {n: self.searches[n] for n in names}
        products = tuple(f"{MASTERS}/{n}.*" for n in names)
        self._add(
            PlanTask(task, "masters", _borrow(self.archive, searches), reads=Reads((), products))
        )
        makers.update(dict.fromkeys(names, task))

    def _failures(self, names: Iterable[str]) -> dict[str, str]:
        """Why each of these needs found nothing in the archive (none without an archive)."""
        if self.archive is None:
            return {}
        where, windows = self.archive.raw_root, self.archive.windows
        return {n: self.searches[n].failure(where, windows) for n in names if n in self.searches}

    def _add_group(self, group: GroupKey, frames: list[Frame], makers: dict[str, str]) -> None:
        options = self.options
        raw = tuple(f.path for f in frames)
        masters_read = (
            f"{MASTERS}/mdark_{group.exposure_ms}.*",
            f"{MASTERS}/mtrans_{group.filter}.*",
        )
        master_tasks = (
            makers.get(f"mdark_{group.exposure_ms}"),
            makers.get(f"mtrans_{group.filter}"),
        )
        needs = tuple(t for t in master_tasks if t)
        cosmetic = group_files(group, COSMETIC, STACKED)
        self._add(
            PlanTask(
                f"calibrate {group.name}",
                "group",
                _calibrate(group, frames),
                needs,
                Reads(raw, (*masters_read, *group_files(group, COSMETIC))),
                group,
            )
        )
        last = f"calibrate {group.name}"
        if options.stack:
            self._add(
                PlanTask(
                    f"register {group.name}",
                    "group",
                    _register(group, frames),
                    (last,),
                    Reads(raw, cosmetic),
                    group,
                )
            )
            self._add(
                PlanTask(
                    f"combine {group.name}",
                    "group",
                    _combine(group),
                    (f"register {group.name}",),
                    Reads(raw, cosmetic),
                    group,
                )
            )
            last = f"combine {group.name}"
        if options.aux_png or (options.stack_png and options.stack):
            self._add(
                PlanTask(
                    f"previews {group.name}",
                    "group",
                    _group_previews(group, frames),
                    (last,),
                    Reads((), cosmetic),
                    group,
                )
            )
        if options.astrometry.requested:
            results = group_files(group, COSMETIC, STACKED, REDUCED, *ASTROMATIC_FOLDERS)
            self._add(
                PlanTask(
                    f"solve {group.name}",
                    "solve",
                    _solve(group, frames),
                    (last,),
                    Reads((), results),
                    group,
                )
            )

    # ------------------------------------------------------------------ reading

    def select(
        self,
        stages: Iterable[str],
        group: GroupKey | None = None,
        kinds: Iterable[str] | None = None,
    ) -> list[PlanTask]:
        """The tasks of these stages (of one group; of some kinds: "dark", "calibrate"...)."""
        chosen, wanted = set(stages), set(kinds) if kinds is not None else None
        return [
            t
            for t in self.tasks.values()
            if t.stage in chosen
            and (group is None or t.group == group)
            and (wanted is None or t.kind in wanted)
        ]

    def reads(self, stages: Iterable[str], group: GroupKey | None = None) -> Reads:
        """Everything the chosen tasks read (for the S3 workspace's downloads)."""
        raw: dict[str, None] = {}
        products: dict[str, None] = {}
        for task in self.select(stages, group):
            raw.update(dict.fromkeys(task.reads.raw))
            products.update(dict.fromkeys(task.reads.products))
        return Reads(tuple(raw), tuple(products))

    def night_key(self) -> str:
        """One key for the whole night: the frames, the options and the code. While it and the
        products listed in the manifest hold, a rerun has nothing to do."""
        borrowed = self.borrowed if self.borrowed is not None else identity(self.chosen())
        payload = {
            "version": __version__,
            "recipes": recipes(),
            "frames": [(f.path, f.sha256) for f in self.inventory.frames],
            "quarantined": [(p.path, p.reason) for p in self.inventory.quarantined],
            "options": self.options.provenance(),
            "borrowed": borrowed,
            "bad": sorted(entry for entry in self.bad if entry[0] == self.night),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def start(self, layout: NightLayout) -> NightRun:
        return NightRun(layout, self.options)

    def manifest(
        self,
        layout: NightLayout,
        night: str,
        parameters: dict[str, Any],
        raw_dir: str,
        products: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """The night's manifest from its records, with this plan's key, recipes and route."""
        return build_manifest(
            layout,
            night,
            parameters,
            raw_dir,
            products,
            night_key=self.night_key(),
            recipes=recipes(),
            astrometry_mode=self.options.astrometry.route or None,
            selected=self.groups(),
        )

    def ready_groups(self, night: NightRun) -> list[GroupKey]:
        """The groups whose master dark and flat exist. Each other group is failed now, with
        the record its calibrate task would write (the DAG maps no task for it)."""
        ready = []
        for group, frames in self.groups().items():
            absent = calibrate.missing_masters(night.layout, group)
            if absent:
                message = problem(calibrate.missing_masters_message(group, absent))
                night.group(group, frames).update(status="failed", error=message)
            else:
                ready.append(group)
        return ready

    # ------------------------------------------------------------------ running

    def run(
        self,
        night: NightRun,
        stages: Iterable[str],
        group: GroupKey | None = None,
        jobs: int = 1,
        kinds: Iterable[str] | None = None,
        processes: bool = False,
    ) -> NightRun:
        """Run the chosen tasks in the thread graph, each once the chosen tasks it needs are
        done (needs outside the choice were met by an earlier stage). With `processes`, the
        FORKED_KINDS tasks run in forked workers (see workers) when there are two of them."""
        ordered = sorted(
            self.select(stages, group, kinds), key=lambda t: KIND_ORDER.index(t.kind)
        )  # stable: within a kind, the plan's order
        chosen = {t.name: t for t in ordered}
        forked = {t.name for t in ordered if t.kind in FORKED_KINDS}
        workers_wanted = jobs if processes and len(forked) > 1 else 1
        with worker_pool(workers_wanted, (self, night.layout, night.options)) as pool:
            graph: dict[str, Task] = {}
            for task in chosen.values():
                needs = tuple(n for n in task.needs if n in chosen)
                work = _guarded(task, night)
                if pool is not None and task.name in forked:
                    work = _in_worker(pool, task, night)
                graph[task.name] = (work, needs)
            run_graph(graph, jobs)
        return night


def _guarded(task: PlanTask, night: NightRun) -> Callable[[], None]:
    """The task, in its group's log context; a failure fails its group (recorded), not the run."""

    def work() -> None:
        with log_context(group=task.group.name if task.group else ""):
            if task.group is not None and night.failed(task.group) and task.stage == "group":
                return  # an earlier task of the group failed: its record says why
            try:
                task.run(night)
            except FAILURES as exc:
                message = problem(str(exc))
                if task.group is None:
                    night.masters()["problems"].append(message)
                elif task.stage == "solve":
                    record = night.record(astrometry_record(task.group))
                    route = night.options.astrometry.route
                    record.update(group=task.group.name, mode=route, status="failed", error=message)
                else:
                    night.record(group_record(task.group)).update(status="failed", error=message)

    return work


def _in_worker(pool: WorkerPool, task: PlanTask, night: NightRun) -> Callable[[], None]:
    """The task in a worker process. A group's task gets its group's record and alignment and
    gives them back (a group's tasks run one after the other, so no other task holds them); a
    master's task starts from an empty masters' record and its entries are added to ours (the
    master tasks run side by side)."""

    def work() -> None:
        if task.group is None:
            records, _ = pool.call(_run_in_worker, task.name, {}, {})
            _add_masters(night.masters(), records.get("masters", {}))
            return
        name = group_record(task.group)
        records = {name: night.records[name]} if name in night.records else {}
        aligned = night.alignments.pop(task.group, None)
        alignments = {task.group: aligned} if aligned is not None else {}
        records, alignments = pool.call(_run_in_worker, task.name, records, alignments)
        night.records.update(records)
        night.alignments.update(alignments)

    return work


def _add_masters(record: dict[str, Any], part: dict[str, Any]) -> None:
    """A master task's entries added to the night's masters' record: its sections are QC by
    name (dicts) and problems (a list), as NightRun.masters() makes them."""
    for section, value in part.items():
        if isinstance(value, dict):
            record.setdefault(section, {}).update(value)
        else:
            record.setdefault(section, []).extend(value)


def _run_in_worker(
    name: str, records: dict[str, dict[str, Any]], alignments: dict[GroupKey, stack.Alignment]
) -> tuple[dict[str, dict[str, Any]], dict[GroupKey, stack.Alignment]]:
    """In a worker: the plan's task `name` on the state it is handed; the state back."""
    plan, layout, options = worker_state()
    night = NightRun(layout, options, records, alignments)
    _guarded(plan.tasks[name], night)()
    return night.records, night.alignments


# ---------------------------------------------------------------------- the tasks' bodies


def _master(
    section: str, name: str, label: str, path: Callable[[NightLayout], Path], make: Callable
) -> Callable[[NightRun], None]:
    """A master task: `make(layout, name, overwrite)` writes it and returns its QC record, filed
    under `section` of the masters' record; a failure removes any stale master of that name."""

    def run(night: NightRun) -> None:
        try:
            qc = make(night.layout, night.options.overwrite)
        except (StepError, FrameError, ValueError) as exc:
            remove_stale(path(night.layout))
            raise StepError(f"{label}: {exc}") from None
        night.masters()["problems"].extend(qc.pop("problems", []))  # inputs it could not read
        night.masters()[section][name] = qc

    return run


def _master_dark(exposure: int, frames: list[Frame]) -> Callable[[NightRun], None]:
    return _master(
        "darks",
        str(exposure),
        f"Master dark {exposure} ms",
        lambda layout: layout.master_dark(exposure),
        lambda layout, overwrite: masters.make_master_dark(layout, exposure, frames, overwrite),
    )


def _interpolation(darks: dict[int, list[Frame]], missing: list[int]) -> Callable[[NightRun], None]:
    def run(night: NightRun) -> None:
        record = night.masters()
        try:
            made = masters.make_interpolated_darks(
                night.layout, darks, missing, night.options.overwrite
            )
        except (StepError, OSError, ValueError) as exc:
            for exposure in missing:
                remove_stale(night.layout.master_dark(exposure))
            raise StepError(f"Dark interpolation failed: {exc}") from None
        record["interpolated"].update(made)

    return run


def _no_darks(
    missing: list[int], any_darks: bool, reasons: dict[str, str]
) -> Callable[[NightRun], None]:
    """Exposures that need a dark and will not get one: stale masters go, each is a problem
    (with an archive: what was looked for there, and why nothing qualified)."""

    def run(night: NightRun) -> None:
        record = night.masters()
        if missing and not any_darks and not reasons:
            record["problems"].append(
                problem("There are no dark files at all! Cannot calibrate or interpolate.")
            )
        for exposure in missing:
            remove_stale(night.layout.master_dark(exposure))
            reason = reasons.get(f"mdark_{exposure}")
            if reason:
                record["problems"].append(problem(reason))
            elif any_darks:
                record["problems"].append(
                    problem(
                        f"Did not find dark field images for {exposure}ms exposure. "
                        "Use --interpolate to compute the missing master darks."
                    )
                )

    return run


def _no_flats(filters: list[str], reasons: dict[str, str]) -> Callable[[NightRun], None]:
    def run(night: NightRun) -> None:
        record = night.masters()
        for filter_name in filters:
            remove_stale(night.layout.master_flat(filter_name))
            reason = reasons.get(f"mtrans_{filter_name}")
            message = reason or f"Did not find flat field images for filter {filter_name}."
            record["problems"].append(problem(message))

    return run


def _borrow(archive: library.Archive, searches: dict[str, Search]) -> Callable[[NightRun], None]:
    """Borrow each master from its nearest usable night (the next one when it fails its QC);
    a need nothing serves is a problem naming what was looked for and where."""

    def run(night: NightRun) -> None:
        record = night.masters()
        for name, found in searches.items():
            path = night.layout.masters / f"{name}.fits"
            try:
                candidate, qc = library.borrow(
                    archive, found, night.layout, night.options.overwrite
                )
            except StepError as exc:
                remove_stale(path)
                record["problems"].append(problem(str(exc)))
                continue
            qc["why"] = f"this night cannot make its {found.need.describe()}"
            qc["candidates"] = [c.describe() for c in found.candidates]
            qc["refused"] = list(found.refused)  # nearby masters that did not qualify, and why
            record["borrowed"][name] = qc
            log.info(
                "  %s: borrowed from %s (%.2f d away).", name, candidate.offer.night, candidate.days
            )

    return run


def _master_flat(filter_name: str, frames: list[Frame]) -> Callable[[NightRun], None]:
    return _master(
        "flats",
        filter_name,
        f"Master flat {filter_name}",
        lambda layout: layout.master_flat(filter_name),
        lambda layout, overwrite: masters.make_master_flat(layout, filter_name, frames, overwrite),
    )


def _master_previews(night: NightRun) -> None:
    sources = previews.master_sources(night.layout)
    night.masters()["previews"] = previews.make_previews(
        night.layout, sources, night.options.overwrite
    )


def _calibrate(group: GroupKey, frames: list[Frame]) -> Callable[[NightRun], None]:
    def run(night: NightRun) -> None:
        record = night.group(group, frames)
        record.update(
            calibrate.calibrate_group(night.layout, group, frames, night.options.overwrite)
        )
        record["status"] = "done"

    return run


def _register(group: GroupKey, frames: list[Frame]) -> Callable[[NightRun], None]:
    def run(night: NightRun) -> None:
        options = night.options
        alignment = stack.register_group(
            night.layout, group, frames, options.overwrite, options.frame_qc
        )
        night.alignments[group] = alignment

    return run


def _combine(group: GroupKey) -> Callable[[NightRun], None]:
    def run(night: NightRun) -> None:
        alignment = night.alignments.pop(group)
        night.record(group_record(group))["stack"] = stack.combine_group(night.layout, alignment)

    return run


def _group_previews(group: GroupKey, frames: list[Frame]) -> Callable[[NightRun], None]:
    def run(night: NightRun) -> None:
        layout, options = night.layout, night.options
        sources = [layout.aux(f) for f in frames] if options.aux_png else []
        sources += [layout.stack(group)] if options.stack_png and options.stack else []
        done = previews.make_previews(layout, sources, options.overwrite)
        night.record(group_record(group))["previews"] = done

    return run


def _solve(group: GroupKey, frames: list[Frame]) -> Callable[[NightRun], None]:
    def run(night: NightRun) -> None:
        options = night.options
        result = solve.solve_group(
            night.layout, group, frames, options.astrometry, options.stack, options.astrometry_jobs
        )
        record = night.record(astrometry_record(group))
        record.update(result, group=group.name, mode=options.astrometry.route, status="done")

    return run
