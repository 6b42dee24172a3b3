"""Astrometric reduction of one image by the route the user chose, and its reduced/ product.

Routes, as astro_reduce's README describes them (not as 5.1.3's code ran them):
`--sex` catalogues only; `--psfex` adds a PSF model (implies --sex); `--sexagain` re-extracts
with that PSF (implies --psfex); `--scamp` solves with SCAMP (implies --sex); `-m` is all four;
`-nl` / `-no` solve with astrometry.net locally / online instead of SCAMP (and cancel -m).

Every tool runs in a private scratch folder under the night's products; only the useful files
are moved into SEXRES/, PSFRES/, SCAMPRES/ and reduced/, so nothing partial is ever visible.
A failed solve is reported and recorded, never written as solved, and never deletes an earlier
result. The reduced/ file carries a provenance key, so a rerun reuses it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import anet_local, anet_online, astromatic, externals, refcat
from .astro_config import ConfigError, config_file, configs_key
from .camera import HeaderError
from .fitsio import read_product, set_card, sha256_file, write_image
from .layout import ASTROMATIC_FOLDERS, REDUCED, SCRATCH_PREFIX
from .lazy_import import fits
from .logs import VERBOSE
from .provenance import KEY_KEYWORD, code_identity, input_key, is_current, product_key, stamp
from .wcs_headers import (
    header_pointing,
    initial_wcs,
    merge_wcs,
    nominal_scale_arcsec,
    read_card_file,
    write_card_file,
)

SEXRES, PSFRES, SCAMPRES = ASTROMATIC_FOLDERS
MODES = ("none", "astromatic", "astrometrynet_local", "astrometrynet_online")
DEFAULT_ONLINE_CATALOG = "GAIA-EDR3"
POSITION_MAXERR_DEG = 0.1  # SCAMP's POSITION_MAXERR (6') in t120.scamp
REFCAT_ENV, REFCAT_CACHE_ENV = "AR_REFCAT", "AR_REFCAT_CACHE"

log = logging.getLogger(__name__)


class UnusableSolution(ValueError):
    """A solver reported success but its header holds no usable WCS."""


@dataclass(frozen=True)
class AstrometryOptions:
    """Which astrometric steps to run and with what references; see the module docstring."""

    sex: bool = False
    psfex: bool = False
    sexagain: bool = False
    scamp: bool = False
    local: bool = False
    online: bool = False
    forceimg: bool = False
    refcat: str | None = None  # a local reference catalogue file (FITS table)
    refcat_cache: str | None = None  # a folder of per-field catalogues fetched from VizieR
    astref_catalog: str = DEFAULT_ONLINE_CATALOG  # SCAMP's own online query otherwise
    index_dir: str | None = None  # astrometry.net index folder for -nl
    config_dir: str | None = None  # the user's configuration files
    online_settings: anet_online.OnlineSettings = field(default_factory=anet_online.OnlineSettings)
    timeout: float = externals.DEFAULT_TIMEOUT_S  # per tool call
    cpulimit: float = 30.0  # solve-field CPU seconds per image
    overwrite: bool = False
    solve_each: bool = False  # every image solved on its own (5.1.3's way), not once per group

    @classmethod
    def from_flags(
        cls,
        astromatic: bool = False,
        sex: bool = False,
        psfex: bool = False,
        sexagain: bool = False,
        scamp: bool = False,
        local: bool = False,
        online: bool = False,
        forceimg: bool = False,
        **settings: Any,
    ) -> AstrometryOptions:
        """Apply the README's implications between the flags."""
        if local or online:
            astromatic = scamp = False  # -nl / -no replace SCAMP and cancel -m
        if astromatic:
            sex = psfex = sexagain = scamp = True
        psfex = psfex or sexagain
        sex = sex or psfex or scamp or ((local or online) and not forceimg)
        settings.setdefault("refcat", os.environ.get(REFCAT_ENV) or None)
        settings.setdefault("refcat_cache", os.environ.get(REFCAT_CACHE_ENV) or None)
        return cls(sex, psfex, sexagain, scamp, local, online, forceimg, **settings)

    @classmethod
    def from_mode(cls, mode: str, **settings: Any) -> AstrometryOptions:
        """The DAG's `astrometry` param: none, astromatic, astrometrynet_local or _online."""
        if mode not in MODES:
            raise ValueError(f"astrometry mode {mode!r} is not one of {', '.join(MODES)}")
        flags = {
            "none": {},
            "astromatic": {"astromatic": True},
            "astrometrynet_local": {"local": True},
            "astrometrynet_online": {"online": True},
        }[mode]
        return cls.from_flags(**flags, **settings)

    @property
    def requested(self) -> bool:
        return self.sex or self.local or self.online

    @property
    def solver(self) -> str | None:
        """The solving route, or None for catalogues only."""
        if self.local and self.online:
            return "astrometry.net local, then online"
        if self.local:
            return "astrometry.net local"
        if self.online:
            return "astrometry.net online"
        return "SCAMP" if self.scamp else None

    def provenance(self) -> dict[str, Any]:
        """What decides a solution, for its product key (never the API key)."""
        used = ["t120.sex", "t120.conv", "t120.param"]
        used += ["t120.psfex", "t120_psf.param"] if self.psfex else []
        used += ["t120.scamp", "t120.ahead"] if self.scamp else []
        used += ["astrometry.cfg", "t120.ahead"] if self.local or self.online else []
        refs: dict[str, Any] = {}
        if self.scamp:
            refs["scamp_refs"] = (
                _file_digest(self.refcat)
                if self.refcat
                else f"vizier-cache:{self.refcat_cache}"
                if self.refcat_cache
                else f"online:{self.astref_catalog}"
            )
        if self.local:
            refs["index"] = _index_digest(anet_local.index_dir(self.index_dir))
        if self.online:
            refs["server"] = self.online_settings.resolved_server()
        flags = ("sex", "psfex", "sexagain", "scamp", "local", "online", "forceimg")
        return {
            "code": astrometry_code(),
            "tools": {name: externals.tool_version(name) for name in self.programs()},
            "flags": {name: getattr(self, name) for name in flags},
            "configs": configs_key(tuple(dict.fromkeys(used)), self.config_dir),
            "cpulimit": self.cpulimit if self.local else None,
            **refs,
        }

    @property
    def route(self) -> str:
        """The steps asked for, e.g. "sex,psfex,sexagain,scamp" (empty: no astrometry); both
        faces name a route the same way, so their records and manifests agree."""
        flags = ("sex", "psfex", "sexagain", "scamp", "local", "online", "forceimg")
        return ",".join(name for name in flags if getattr(self, name))

    def programs(self) -> list[str]:
        """The external programs this route runs."""
        used = ["sextractor"] if self.sex else []
        used += ["psfex"] if self.psfex else []
        used += ["scamp"] if self.scamp else []
        used += ["solve-field"] if self.local else []
        return used


def astrometry_code() -> str:
    """The identity of the code that turns an image into its solved reduced/ product."""
    from . import wcs_headers

    return code_identity(
        sys.modules[__name__], astromatic, anet_local, anet_online, refcat, wcs_headers
    )


@functools.lru_cache(maxsize=32)
def _digest_cached(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(Path(path))


def _file_digest(path: str) -> str:
    stat = os.stat(path)
    return _digest_cached(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def _index_digest(folder: Path) -> str:
    listing = sorted(
        f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in folder.glob("index-*.fits")
    )
    return hashlib.sha256("\n".join(listing).encode()).hexdigest()


@functools.lru_cache(maxsize=8)
def _catalogue(path: str, size: int, mtime_ns: int) -> refcat.Catalogue:
    return refcat.load_catalogue(path)


# ----------------------------------------------------------------------------------------------
# One image


@dataclass
class _Outcome:
    status: str  # solved, failed, catalogued
    reason: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    solution: fits.Header | None = None
    solver: str | None = None
    keep: dict[Path, str] = field(default_factory=dict)  # scratch file -> product folder


def solve_image(out_dir: Path, image: Path, options: AstrometryOptions) -> dict:
    """Run the chosen astrometric steps on one aux frame or stack; returns its record."""
    out_dir, image = Path(out_dir), Path(image)
    started = time.monotonic()
    record: dict[str, Any] = {
        "image": str(image.relative_to(out_dir)),
        "solver": options.solver,
    }
    try:
        key = product_key("astrometry", image=input_key(image), **options.provenance())
    except (externals.ToolError, ConfigError, OSError) as exc:
        return {**record, "status": "failed", "reason": str(exc)}
    target = _target(out_dir, image, options)
    if not options.overwrite and is_current(target, key):
        return {**record, "status": "reused", "product": str(target.relative_to(out_dir))}
    work = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{image.stem}.", dir=out_dir))
    try:
        outcome = _run(image, work, options)
        if outcome.status == "solved":
            _write_reduced(image, target, outcome, key)
        elif outcome.status == "catalogued":
            fits.setval(work / f"{image.stem}.ldac", KEY_KEYWORD, value=key)
        _keep(outcome, out_dir, work, image.stem)
    except (refcat.CatalogueError, anet_local.CoverageError) as exc:
        # The references cannot cover this pointing: the group's other images share it.
        outcome = _Outcome("failed", str(exc))
        record["reference_problem"] = True
    except (
        externals.ToolError,
        HeaderError,
        ConfigError,
        anet_online.OnlineError,
        UnusableSolution,
    ) as exc:
        outcome = _Outcome("failed", str(exc))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record.update(
        status=outcome.status,
        seconds=round(time.monotonic() - started, 2),
        **({"solver": outcome.solver} if outcome.solver else {}),
        **({"reason": outcome.reason} if outcome.reason else {}),
        **({"stats": outcome.stats} if outcome.stats else {}),
    )
    if outcome.status in ("solved", "catalogued"):
        record["product"] = str(target.relative_to(out_dir))
    return record


def _target(out_dir: Path, image: Path, options: AstrometryOptions) -> Path:
    """reduced/<image name> when solving; SEXRES/<stem>.ldac for catalogues only."""
    if options.solver:
        return out_dir / REDUCED / image.name
    return out_dir / SEXRES / f"{image.stem}.ldac"


def _run(image: Path, work: Path, options: AstrometryOptions) -> _Outcome:
    header = fits.getheader(image)
    template = read_card_file(config_file("t120.ahead", options.config_dir))
    shape = (int(header["NAXIS1"]), int(header["NAXIS2"]))
    scale = nominal_scale_arcsec(header, template)
    try:
        pointing: tuple[float, float] | None = header_pointing(header)
    except HeaderError as exc:
        if options.scamp:
            raise HeaderError(f"{exc}: SCAMP needs the pointing for its initial WCS") from exc
        pointing = None  # astrometry.net can solve blind
    stem, outcome = image.stem, _Outcome("catalogued")
    catalogue = None
    link = work / f"{stem}.fits"
    link.symlink_to(image.resolve())
    # References that cannot cover the pointing are refused before any tool runs.
    reference = None
    if options.scamp and pointing is not None:
        reference = _scamp_reference(options, pointing, shape, scale, work)
    if options.local and pointing is not None:
        radius = scale * math.hypot(*shape) / 2 / 3600
        anet_local.check_coverage(anet_local.index_dir(options.index_dir), pointing, radius)
    if options.sex:
        saturation = astromatic.saturation_level(header)
        catalogue = astromatic.extract(
            link, work / f"{stem}.ldac", work, saturation, None, options.config_dir, options.timeout
        )
        if options.psfex:
            psf = astromatic.model_psf(catalogue, work, options.config_dir, options.timeout)
            outcome.keep[psf] = PSFRES
            if options.sexagain:  # replaces the first-pass catalogue, as 5.1.3's README says
                astromatic.extract(
                    link, catalogue, work, saturation, psf, options.config_dir, options.timeout
                )
        outcome.keep[catalogue] = SEXRES
    if options.scamp:
        assert catalogue is not None and reference is not None
        _solve_scamp(catalogue, header, template, reference, work, options, outcome)
    if options.local:
        source = link if options.forceimg or catalogue is None else catalogue
        indexes = anet_local.index_dir(options.index_dir)
        solution = anet_local.solve_field(
            source, work, f"{stem}_anet", shape, scale, pointing, indexes,
            options.config_dir, options.cpulimit, None,
        )  # fmt: skip
        _take(outcome, solution.header, solution.reason, solution.stats, "astrometry.net local")
    if options.online and outcome.status != "solved":
        if options.local:
            log.log(VERBOSE, "    %s: local solve failed, trying astrometry.net online", image.name)
        _solve_online(link, catalogue, shape, scale, pointing, options, outcome)
    return outcome


def _take(
    outcome: _Outcome, header: fits.Header | None, reason: str, stats: dict, solver: str
) -> None:
    outcome.solver = solver
    outcome.stats = stats
    if header is None:
        outcome.status, outcome.reason = "failed", reason
    else:
        outcome.status, outcome.reason, outcome.solution = "solved", "", header


def _solve_scamp(
    catalogue: Path,
    header: fits.Header,
    template: fits.Header,
    reference: Path | str,
    work: Path,
    options: AstrometryOptions,
    outcome: _Outcome,
) -> None:
    write_card_file(catalogue.with_suffix(".ahead"), initial_wcs(header, template))
    head, xml = astromatic.run_scamp(
        catalogue, work, reference, options.config_dir, options.timeout
    )
    verdict = astromatic.judge_scamp(xml)
    outcome.keep[xml] = SCAMPRES
    solution = read_card_file(head) if verdict.solved and head.is_file() else None
    if solution is not None:
        outcome.keep[head] = SCAMPRES
    reason = verdict.reason or ("SCAMP wrote no header" if solution is None else "")
    _take(outcome, solution, reason, verdict.stats, "SCAMP")


def _scamp_reference(
    options: AstrometryOptions,
    pointing: tuple[float, float],
    shape: tuple[int, int],
    scale: float,
    work: Path,
) -> Path | str:
    """The reference catalogue SCAMP uses: a cut of a local file (or of the per-field cache)
    written as LDAC, or the name of the online catalogue SCAMP queries itself."""
    radius = scale * math.hypot(*shape) / 2 / 3600 + POSITION_MAXERR_DEG
    cut = reference_stars(options, pointing, radius)
    if cut is None:
        return options.astref_catalog
    if len(cut) < refcat.MIN_REFERENCE_STARS:
        raise refcat.CatalogueError(
            f"{cut.source} has {len(cut)} reference star(s) within {radius * 60:.1f}' of the "
            f"pointing (at least {refcat.MIN_REFERENCE_STARS} needed): wrong field or catalogue?"
        )
    return refcat.write_scamp_refcat(work / "refcat.ldac", cut)


def reference_stars(
    options: AstrometryOptions, pointing: tuple[float, float], radius: float
) -> refcat.Catalogue | None:
    """The local reference catalogue's stars within `radius` degrees of a pointing (a local
    file, or the per-field cache), or None when the references are online only."""
    if options.refcat:
        path = options.refcat
    elif options.refcat_cache:
        from .refcat_fetch import fetch_field_catalogue

        path = str(fetch_field_catalogue(*pointing, radius, Path(options.refcat_cache)))
    else:
        return None
    stat = os.stat(path)
    return _catalogue(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns).cone(
        *pointing, radius
    )


def _solve_online(
    image: Path,
    catalogue: Path | None,
    shape: tuple[int, int],
    scale: float,
    pointing: tuple[float, float] | None,
    options: AstrometryOptions,
    outcome: _Outcome,
) -> None:
    """The source list by default; the whole image with --forceimg, or when the list is too
    short or does not solve (as astro_reduce's README says)."""
    settings = options.online_settings
    sources = None
    if catalogue is not None and not options.forceimg:
        sources = anet_online.source_list(catalogue)
        if len(sources[0]) < anet_online.MIN_SOURCES:
            log.log(VERBOSE, "    %s: %s sources, uploading the image", image.name, len(sources[0]))
            sources = None
    header, reason = anet_online.solve(settings, shape, scale, pointing, sources, image)
    if header is None and sources is not None:
        log.log(VERBOSE, "    %s: the source list did not solve, uploading the image", image.name)
        header, reason = anet_online.solve(settings, shape, scale, pointing, None, image)
    _take(outcome, header, reason, {}, "astrometry.net online")


def _write_reduced(image: Path, target: Path, outcome: _Outcome, key: str) -> None:
    """reduced/<name>: the image with its WCS replaced by the solution, written atomically."""
    assert outcome.solution is not None
    data, header = read_product(image)
    try:
        merged = merge_wcs(header.to_astropy(), outcome.solution)
    except ValueError as exc:
        raise UnusableSolution(f"{outcome.solver}: {exc}") from exc
    set_card(merged, "ASTSOLVR", outcome.solver, "astrometric solver")
    set_card(merged, "ASTMETHD", "full", "solved on its own (derived: from its group)")
    stats = outcome.stats
    if "matched_references" in stats:
        set_card(merged, "ASTNREF", stats["matched_references"], "matched reference stars")
    if stats.get("sigma_arcsec"):
        rms = round(max(stats["sigma_arcsec"]), 4)
        set_card(merged, "ASTSIGMA", rms, "[arcsec] scatter against references")
    if "xy_contrast" in stats:
        set_card(merged, "ASTCONTR", stats["xy_contrast"], "SCAMP XY contrast")
    merged.add_history(f"WCS solved by {outcome.solver} (astro_reduce-airflow)")
    write_image(target, data, stamp(merged, key))


def _keep(outcome: _Outcome, out_dir: Path, work: Path, stem: str) -> None:
    """Move the useful tool outputs into SEXRES/, PSFRES/, SCAMPRES/ (atomic renames)."""
    for source, folder in outcome.keep.items():
        if not source.is_file():
            continue
        destination = out_dir / folder / source.name
        destination.parent.mkdir(exist_ok=True)
        os.replace(source, destination)
    tools_log = work / "tools.log"
    if tools_log.is_file():
        destination = out_dir / SEXRES / f"{stem}.log"
        destination.parent.mkdir(exist_ok=True)
        os.replace(tools_log, destination)
