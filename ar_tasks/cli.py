"""The `astro_reduce` command, run in a night folder holding DARK/, FLAT/ and ORIGINAL/.

Same options, folders, names and messages (E:/W: prefixes, the elapsed-time summary) as
astro_reduce 5.1.3, but every problem is named, the rest of the night still gets reduced, the
exit status is non-zero when anything failed, and a log file is kept beside the products.
"""

from __future__ import annotations

import datetime as dt
import functools
import gc
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from . import __version__, steps
from .astrometry import AstrometryOptions
from .inventory import Inventory
from .layout import NightLayout
from .storage import StorageError, is_s3
from .threads import Task, default_jobs, run_graph
from .workspace import night_workspace

LOG_FILE = "astro_reduce.log"
OPTION_ORDER = (
    "setup",
    "clear",
    "clearall",
    "interpolate",
    "verbose",
    "tmppng",
    "stkpng",
    "nomaster",
    "nostack",
    "overwrite",
    "link",
    "astromatic",
    "sex",
    "psfex",
    "sexagain",
    "scamp",
    "astrometrynet_local",
    "astrometrynet_online",
    "forceimg",
    "astrometryonly",
)
ASTROMETRY_SETTINGS = {
    "refcat": "refcat",
    "refcat_cache": "refcat_cache",
    "astref_catalog": "astref_catalog",
    "anet_index": "index_dir",
    "astro_config": "config_dir",
    "tool_timeout": "timeout",
    "cpulimit": "cpulimit",
}


class Reporter:
    """Prints 5.1.3-style coloured messages, counts errors, and mirrors everything to a log."""

    def __init__(self, verbose: bool, log_path: Path | None = None):
        self.verbose = verbose
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self._log_path = log_path
        self._lock = threading.Lock()

    def __call__(self, level: str, message: str) -> None:
        if level == "error":
            self.errors.append(message)
            self._print("E: " + message, fg="red", err=True)
        elif level == "warning":
            self.warnings.append(message)
            self._print("W: " + message, fg="magenta")
        elif level == "info":
            self._print(message, fg="green")
        elif self.verbose:
            self._print(message)

    def _print(self, text: str, fg: str | None = None, err: bool = False) -> None:
        with self._lock:  # steps run in threads: one message at a time, whole
            self._print_unlocked(text, fg, err)

    def _print_unlocked(self, text: str, fg: str | None, err: bool) -> None:
        click.secho(text, fg=fg, err=err)
        if self._log_path is not None:
            stamp = dt.datetime.now().isoformat(timespec="seconds")
            try:
                with open(self._log_path, "a", encoding="utf-8") as log:
                    log.write(f"{stamp} {text}\n")
            except OSError:
                self._log_path = None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="astro_reduce")
@click.option("-s", "--setup", is_flag=True, help="Set up the night folder (inventory, names).")
@click.option("-c", "--clear", is_flag=True, help="Remove working files; keep stacked/, reduced/.")
@click.option("-z", "--clearall", is_flag=True, help="Remove working files, stacked/ and reduced/.")
@click.option("-i", "--interpolate", is_flag=True, help="Interpolate missing master darks.")
@click.option("-v", "--verbose", is_flag=True, help="Report each step and each file found.")
@click.option("-t", "--tmppng", is_flag=True, help="PNG quick-looks of masters and aux frames.")
@click.option("-r", "--stkpng", is_flag=True, help="PNG quick-looks of stacked images.")
@click.option("--nomaster", is_flag=True, help="Use the masters already in ar_masters/.")
@click.option("--nostack", is_flag=True, help="Calibrate only; do not stack.")
@click.option("--overwrite", is_flag=True, help="Recompute products even when they are current.")
@click.option("--link", is_flag=True, help="With --setup: link working files instead of copying.")
@click.option("-m", "--astromatic", is_flag=True, help="All of --sex --psfex --sexagain --scamp.")
@click.option("--sex", is_flag=True, help="SExtractor catalogues into SEXRES/.")
@click.option("--psfex", is_flag=True, help="PSFEx models (PSFRES/); implies --sex.")
@click.option("--sexagain", is_flag=True, help="SExtractor again with the PSF; implies --psfex.")
@click.option("--scamp", is_flag=True, help="SCAMP astrometry into reduced/; implies --sex.")
@click.option(
    "-nl", "--astrometrynet_local", is_flag=True, help="Solve with solve-field (cancels -m)."
)
@click.option(
    "-no", "--astrometrynet_online", is_flag=True, help="Solve on nova.astrometry.net (cancels -m)."
)
@click.option("--forceimg", is_flag=True, help="With -no/-nl: send the image, not a source list.")
@click.option("--astrometryonly", is_flag=True, help="Only the astrometry, on existing products.")
@click.option(
    "--refcat",
    type=click.Path(exists=True, dir_okay=False),
    help="SCAMP reference catalogue: a FITS table with RA, DEC, MAG [env AR_REFCAT].",
)
@click.option(
    "--refcat-cache",
    type=click.Path(file_okay=False),
    help="Folder of per-field Gaia DR3 catalogues, fetched once from VizieR [env AR_REFCAT_CACHE].",
)
@click.option(
    "--astref-catalog", help="Online catalogue SCAMP queries otherwise (default GAIA-EDR3)."
)
@click.option(
    "--anet-index",
    type=click.Path(exists=True, file_okay=False),
    help="astrometry.net index folder for -nl [env AR_ANET_INDEX_DIR].",
)
@click.option(
    "--astro-config",
    type=click.Path(exists=True, file_okay=False),
    help="Folder of your own t120.sex/.psfex/.scamp... [env AR_ASTROMATIC_CONFIGS].",
)
@click.option("--tool-timeout", type=float, help="Seconds allowed per external program (120).")
@click.option("--cpulimit", type=float, help="CPU seconds solve-field may spend per image (30).")
@click.option(
    "--online-timeout", type=float, help="Seconds per image with -no, retries included (600)."
)
@click.option(
    "--jobs",
    type=int,
    default=0,
    help="Masters, groups or images processed at once (default: CPU count; at most 4 for "
    "masters and groups).",
)
@click.option(
    "--raw", help="The night's raw folder (DARK, FLAT, ORIGINAL) or s3:// URL [default: here]."
)
@click.option(
    "--products", help="Where the night's products go: a folder or s3:// URL [default: --raw]."
)
def cli(**options: Any) -> None:
    """Reduce an OHP T120 night: master darks and flats, calibrated (aux) frames, stacks.

    Run `astro_reduce --setup` once in the night folder, then `astro_reduce [options]`.
    """
    started = time.monotonic()
    click.secho("    Welcome to astro_reduce!", fg="cyan", bold=True)
    click.secho(
        f"    astro_reduce-airflow {__version__}, after astro_reduce 5.1.3 by Raphaël Duque "
        "& Jeremie Vaubaillon.\n\n",
        fg="cyan",
    )
    given = [name for name in OPTION_ORDER if options[name]]
    given += [f"{name}={options[name]}" for name in ASTROMETRY_SETTINGS if options[name]]
    raw, products = options["raw"], options["products"]
    if not raw and not products:
        report = _run(NightLayout.in_place(Path.cwd()), given, options)
    else:
        raw, products = _roots(raw, products)
        try:
            with night_workspace(raw, products, "") as layout:
                report = _run(layout, given, options, label=products)
        except StorageError as exc:
            click.secho(f"E: {exc}", fg="red", err=True)
            sys.exit(1)
    _finish(report, started)


def _roots(raw: str | None, products: str | None) -> tuple[str, str]:
    """--raw/--products as absolute paths or s3:// URLs (products default to the raw folder)."""
    raw = raw or "."
    if is_s3(raw) and not products:
        raise click.UsageError("--raw in S3 needs --products: raw data is never written to.")
    products = products or raw
    return tuple(  # type: ignore[return-value]
        root if is_s3(root) else str(Path(root).resolve()) for root in (raw, products)
    )


def _run(
    layout: NightLayout, given: list[str], options: dict[str, Any], label: str | None = None
) -> Reporter:
    """One command on one night's folders; returns the reporter holding its problems."""
    click.secho(f"Currently working in directory `{label or layout.name}`.", fg="green")
    click.secho(f"Options: {', '.join(given)}.", fg="green")
    if options["clearall"] or options["clear"]:
        removed = steps.clear_night(layout, everything=options["clearall"])
        click.echo(f"Removed: {', '.join(removed) if removed else 'nothing to remove'}.")
        return Reporter(verbose=False)
    verbose = options["verbose"] or options["setup"]
    report = Reporter(verbose=verbose, log_path=layout.out_dir / LOG_FILE)
    try:
        if options["setup"]:
            separate = layout.raw_dir != layout.out_dir
            _setup(layout, report, link=options["link"], copies=not separate)
        else:
            _reduce(layout, report, options)
    except steps.StepError as exc:
        report("error", str(exc))
    return report


def _setup(layout: NightLayout, report: Reporter, link: bool, copies: bool = True) -> None:
    """Inventory the night; working copies only when products live beside the raw folders
    (with --raw/--products the archive stays apart, read-only, and is not copied)."""
    report("info", "Setting up for reduction:")
    mode = ("link" if link else "copy") if copies else None
    summary = steps.setup_night(layout, working_copies=mode, log=report)
    verb = ("Linking" if link else "Copying") if copies else "Found"
    for kind, label in (("darks", "dark field"), ("flats", "flat field"), ("objects", "object")):
        report("verbose", f"  {verb} {label} images...     Done ({summary[kind]} files).")
    report("verbose", f"  Writing configuration file `{layout.config_file.name}`.")
    report("verbose", f"  Groups to stack: {', '.join(summary['groups']) or 'none'}.")
    report("info", "Done.")


def _reduce(layout: NightLayout, report: Reporter, options: dict[str, Any]) -> None:
    report("info", f"Parsing configuration file `{layout.config_file.name}`.")
    inventory = steps.load_inventory(layout)
    steps.remove_temporaries(layout)
    for problem in inventory.quarantined:
        report("warning", f"{problem.path} {problem.reason}: left out at setup.")
    if report.verbose:
        _files_found(inventory, report)
    astro = _astrometry_options(options, report)
    if options["astrometryonly"]:
        if not astro.requested:
            raise steps.StepError("--astrometryonly needs an astrometric option (-m, -nl, -no...).")
        _astrometry(layout, [g.name for g in inventory.groups()], astro, report, options)
        return
    _cosmetic(layout, inventory, report, options)
    if astro.requested:
        _astrometry(layout, [g.name for g in inventory.groups()], astro, report, options)


def _astrometry_options(options: dict[str, Any], report: Reporter) -> AstrometryOptions:
    """The astrometry flags with the README's implications, and their settings."""
    settings = {
        field: options[name] for name, field in ASTROMETRY_SETTINGS.items() if options[name]
    }
    astro = AstrometryOptions.from_flags(
        astromatic=options["astromatic"],
        sex=options["sex"],
        psfex=options["psfex"],
        sexagain=options["sexagain"],
        scamp=options["scamp"],
        local=options["astrometrynet_local"],
        online=options["astrometrynet_online"],
        forceimg=options["forceimg"],
        overwrite=options["overwrite"],
        **settings,
    )
    if options["online_timeout"]:
        online = replace(astro.online_settings, timeout=options["online_timeout"])
        astro = replace(astro, online_settings=online)
    local_or_online = options["astrometrynet_local"] or options["astrometrynet_online"]
    if local_or_online and (options["astromatic"] or options["scamp"]):
        report("warning", "-nl/-no replace SCAMP: -m and --scamp are ignored.")
    if astro.requested:
        steps_run = [n for n in ("sex", "psfex", "sexagain", "scamp") if getattr(astro, n)]
        report("info", f"Astrometry: {', '.join(steps_run) or 'no catalogue'}; "
               f"solver: {astro.solver or 'none (catalogues only)'}.")  # fmt: skip
    return astro


def _astrometry(
    layout: NightLayout,
    groups: list[str],
    astro: AstrometryOptions,
    report: Reporter,
    options: dict[str, Any],
) -> None:
    report("info", "Astrometric reduction:")
    jobs = options["jobs"] or os.cpu_count() or 1
    for name in groups:
        try:
            result = steps.solve_group(
                layout, name, astro, log=report, include_stack=not options["nostack"], jobs=jobs
            )
        except steps.StepError as exc:
            report("error", str(exc))
            continue
        counts = ", ".join(
            f"{result[s]} {s}" for s in ("solved", "catalogued", "reused", "failed") if result[s]
        )
        report("info", f"  {name}: {counts}.")


def _cosmetic(
    layout: NightLayout, inventory: Inventory, report: Reporter, options: dict[str, Any]
) -> None:
    """Masters, aux frames and stacks as one graph of tasks on `jobs` threads: a group is
    calibrated as soon as its master dark and flat exist and stacked as soon as it is
    calibrated, so no core waits at the end of a phase for the slowest master or group."""
    overwrite = options["overwrite"]
    jobs = options["jobs"] or default_jobs()
    tasks: dict[str, Task] = {}
    plan = None
    if options["nomaster"]:
        if not layout.masters.is_dir():
            raise steps.StepError(
                "You used the --nomaster option but there is no MASTER folder `ar_masters`."
            )
    else:
        plan = steps.plan_masters(layout, options["interpolate"], overwrite, log=report)
        tasks.update(plan.tasks)
    calibrated: dict[str, bool] = {}
    alignments: dict[str, steps.Alignment | None] = {}

    def attempt(step: Any, *arguments: Any) -> Any:
        """The step's result, or None when it failed (reported)."""
        try:
            return step(layout, *arguments, log=report)
        except steps.StepError as exc:
            report("error", str(exc))
            return None

    def calibrate(name: str) -> None:
        calibrated[name] = attempt(steps.calibrate_group, name, overwrite) is not None

    def register(name: str) -> None:
        alignments[name] = (
            attempt(steps.register_group, name, overwrite) if calibrated[name] else None
        )

    def combine(name: str) -> None:
        alignment = alignments[name]
        if alignment is not None:
            attempt(steps.combine_group, alignment)

    groups = inventory.groups()
    report("info", "Writing auxiliary object images:")
    for group in groups:  # every calibration first: they unlock the stacks
        needs = plan.needs(group.exposure_ms, group.filter) if plan else ()
        tasks[f"calibrate {group.name}"] = (functools.partial(calibrate, group.name), needs)
    if not options["nostack"]:
        # Registration and combination are separate tasks, so the last group's stack is
        # shared between the cores rather than left to one.
        report("info", "Stacking object images:")
        for group in groups:
            calibration = (f"calibrate {group.name}",)
            tasks[f"register {group.name}"] = (functools.partial(register, group.name), calibration)
        for group in groups:
            registration = (f"register {group.name}",)
            tasks[f"combine {group.name}"] = (functools.partial(combine, group.name), registration)
    run_graph(tasks, jobs)
    if options["stkpng"]:
        steps.make_previews(layout, masters_and_aux=False, stacks=True, overwrite=overwrite)
        report("info", "Writing PNG versions of stacked images... Done.")
    if options["tmppng"]:
        steps.make_previews(layout, masters_and_aux=True, stacks=False, overwrite=overwrite)
        report("info", "Writing PNG versions of master and auxiliary images... Done.")


def _files_found(inventory: Inventory, report: Reporter) -> None:
    report("verbose", "Files found:")
    for group, frames in inventory.groups().items():
        report("verbose", f"    {group.name:<10}: {sorted(f.path for f in frames)}")
    for exposure, frames in inventory.darks_by_exposure().items():
        report("verbose", f"    {str(exposure) + 'ms':<10}: {sorted(f.path for f in frames)}")
    for name, frames in inventory.flats_by_filter().items():
        report("verbose", f"    {name:<10}: {sorted(f.path for f in frames)}")


def _finish(report: Reporter, started: float) -> None:
    elapsed = dt.timedelta(seconds=int(time.monotonic() - started))
    if report.errors:
        click.secho(f"\n{len(report.errors)} problem(s):", fg="red", err=True)
        for message in report.errors:
            click.secho(f"E: {message}", fg="red", err=True)
    click.secho(f"\nastro_reduce done. ({elapsed})", fg="green")
    sys.exit(1 if report.errors else 0)


def main() -> None:
    """Console-script entry point.

    The objects made by the imports (numpy's, click's: most of the heap) live until exit, so
    they are frozen out of the garbage collector: no collection walks them again, not even
    the last one at exit (15 ms of each command's ~0.1 s start-up cost).
    """
    gc.freeze()
    cli()
