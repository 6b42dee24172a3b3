"""Synthetic OHP T120 observing nights with known truth, for tests, the demo and benchmarks.

A night is written the way the T120 camera and the observers leave it (uint16 FITS with
BZERO 32768, no WCS keywords, DATE-OBS/EXPTIME/FILTER/OBJECT/OBJCTRA/OBJCTDEC headers, one
folder per frame type), and next to it the truth that made it (bias, dark rate, flats, sky,
star catalogues, dithers, seeing, cosmic rays), so every reduction step can be checked
against the model rather than against another pipeline.

Conventions (the truth uses them too):

* Pixel coordinates are 0-based numpy coordinates: ``data[j, i]`` is centred on (x, y) = (i, j).
  FITS CRPIX values in the truth WCS dictionaries are 1-based, as FITS wants.
* Dither sign: a star's position in science frame k is its position in the field's nominal
  (undithered) grid plus (dx_k, dy_k); the frame's WCS is the nominal WCS with CRPIX moved by
  (+dx_k, +dy_k) (see :func:`frame_wcs`).
* Star fluxes are total ADU/s at flat = 1 (the rendered +-12 px stamp holds all of it).
* Randomness is seeded from (seed, tag...): the camera (bias, dark, flat patterns) from the seed
  alone, star catalogues from the seed and the object, everything else from the seed and the
  night, and each frame has its own generator, so a file's bytes depend only on those.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from astropy import units as u
from astropy.coordinates import Angle
from astropy.io import fits
from astropy.wcs import WCS

from ar_tasks.camera import (
    CD_MATRIX,
    NAXIS,
    PIXEL_SCALE_ARCSEC,
    SATURATION_ADU,
    sanitize_filter,
)
from ar_tasks.refcat import Catalogue, write_star_table

# Camera model (ADU unless said).
GAIN_E_PER_ADU = 1.2
READ_NOISE_ADU = 6.0
BIAS_LEVEL_ADU = 300.0
ADC_MAX = 65535
BINNING = 2
CCD_TEMP_C = -60.0
INSTRUMENT = "Andor iKon-L 936"
DARK_BASE_ADU_S = 0.02
AMP_GLOW_ADU_S = 1.5
HOT_PIXEL_FRACTION = 5e-4
PSF_BETA = 3.0
STAMP_RADIUS_PX = 12
OVERSAMPLE = 3
READOUT_S = 10.0
SKY_RATES_ADU_S = {"B": 1.5, "V": 3.0, "R": 5.0, "I": 8.0}
DEFAULT_SKY_RATE_ADU_S = 4.0
# Relative star throughput and colour term per filter (flux = V * thr * 10**(-0.4 k (c - 0.5))).
FILTER_THROUGHPUT = {
    "B": (0.5, 1.0),
    "V": (1.0, 0.0),
    "R": (1.1, -0.5),
    "I": (0.9, -1.0),
}
FIELD_CENTRES_DEG = {"M 67": (132.825, 11.8), "NGC 2420": (114.596, 21.5733)}
EXPOSURE_KEYWORDS = ("EXPTIME", "EXPOSURE")
IMAGETYP = {"dark": "Dark Frame", "flat": "Flat Field", "object": "Light Frame"}
FOLDER = {"dark": "DARK", "flat": "FLAT", "object": "ORIGINAL"}
TRUTH_DIRNAME = "_truth"


class ScienceGroup(NamedTuple):
    """A run of science frames on one object through one filter."""

    object: str
    filter: str
    exposure_s: float
    n_frames: int


class Spoiler(NamedTuple):
    """What spoils one science frame, as an archive's bad frames are spoiled: the frame is
    number `frame` (1-based) of the group (object, filter). Strengths are free, so a test can
    take each pathology from harmless to ruinous."""

    object: str
    filter: str
    frame: int
    transparency: float = 1.0  # star flux through cloud (1: clear; the sky is unchanged)
    trail_px: float = 0.0  # length of a tracking trail along x (px)
    defocus: float = 1.0  # FWHM factor
    field: str | None = None  # the name of another field the telescope pointed at instead


DEFAULT_SCIENCE = (
    ScienceGroup("M 67", "V", 60.0, 5),
    ScienceGroup("M 67", "R", 60.0, 5),
    ScienceGroup("NGC 2420", "V", 120.0, 5),
    ScienceGroup("NGC 2420", "R", 120.0, 5),
    ScienceGroup("NGC 2420", "B", 120.0, 5),
)


@dataclass(frozen=True)
class NightSpec:
    """What to observe in one synthetic night; the defaults give 61 frames.

    The defaults exercise dark interpolation on purpose: B flats are 10 s and NGC 2420 frames
    120 s, exposures for which no dark is taken.
    """

    night: str = "2023-05-10"
    size: int = NAXIS
    seed: int = 0
    darks: tuple[tuple[float, int], ...] = ((5.0, 5), (60.0, 5), (180.0, 5))
    flats: tuple[tuple[str, float, int], ...] = (
        ("V", 5.0, 7),
        ("R", 5.0, 7),
        ("B", 10.0, 7),
    )
    science: tuple[ScienceGroup, ...] = DEFAULT_SCIENCE
    frames_per_group: int | None = None
    sky_scale: float = 1.0
    exposure_keyword: str = "EXPTIME"
    max_dither_px: float | None = None
    fwhm_px: float = 3.5
    bias_offset_adu: float = 0.0  # this night's bias minus the camera's (a bias that drifts)
    spoiled: tuple[Spoiler, ...] = ()  # clouded, trailed, defocused or mis-pointed frames
    new_dust: float = 0.0  # depth of a dust donut this night's filters picked up (a dusty filter)

    def __post_init__(self) -> None:
        date.fromisoformat(self.night)
        if self.exposure_keyword not in EXPOSURE_KEYWORDS:
            raise ValueError(f"exposure_keyword must be one of {EXPOSURE_KEYWORDS}")
        if self.size < 32:
            raise ValueError("size must be >= 32")
        if self.frames_per_group is not None and self.frames_per_group < 1:
            raise ValueError("frames_per_group must be >= 1")
        groups = tuple(ScienceGroup(*g) for g in self.science)
        object.__setattr__(self, "science", groups)
        object.__setattr__(self, "spoiled", tuple(Spoiler(*s) for s in self.spoiled))

    @property
    def groups(self) -> tuple[ScienceGroup, ...]:
        """Science groups with frames_per_group applied."""
        if self.frames_per_group is None:
            return self.science
        return tuple(g._replace(n_frames=self.frames_per_group) for g in self.science)

    @property
    def dither_px(self) -> float:
        """Largest dither offset, 15 px at 1024 scaled with the frame size by default."""
        if self.max_dither_px is not None:
            return float(self.max_dither_px)
        return 15.0 * self.size / NAXIS

    @property
    def filters(self) -> tuple[str, ...]:
        """Every filter used by flats or science frames, in first-use order."""
        names = [f for f, _, _ in self.flats] + [g.filter for g in self.science]
        return tuple(dict.fromkeys(names))


# ---------------------------------------------------------------------------------------------
# Randomness


def _rng(seed: int, *tags: object) -> np.random.Generator:
    """A generator keyed by the seed and string tags, so streams do not depend on call order."""
    words = [int(seed) % 2**63] + [zlib.crc32(str(t).encode()) for t in tags]
    return np.random.default_rng(words)


# ---------------------------------------------------------------------------------------------
# Camera: bias, dark, flats


@dataclass(frozen=True)
class _Camera:
    bias: np.ndarray
    dark_rate: np.ndarray
    hot_pixels: np.ndarray
    prnu: np.ndarray
    dust: tuple[tuple[float, float, float, float], ...]  # (x, y, radius, depth)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return x, y


def _make_camera(size: int, seed: int) -> _Camera:
    """The detector's fixed patterns: the same for every night of a given seed."""
    rng = _rng(seed, "camera", size)
    x, y = _grid(size)
    cols = 1.5 * rng.standard_normal(size) + 2.0 * np.sin(2 * np.pi * np.arange(size) / 173.0)
    rows = 4.0 * (np.arange(size) / size) + 1.0 * (np.arange(size) / size) ** 2
    bias = (BIAS_LEVEL_ADU + cols[None, :] + rows[:, None]).astype(np.float32)

    base = DARK_BASE_ADU_S * (1 + 0.1 * rng.standard_normal((size, size), dtype=np.float32))
    glow = AMP_GLOW_ADU_S * np.exp(-np.hypot(x - (size - 1), y) / (0.06 * size))
    dark = np.clip(base, 0, None) + glow
    n_hot = max(1, round(HOT_PIXEL_FRACTION * size * size))
    hot_idx = rng.choice(size * size, n_hot, replace=False)
    hot = np.zeros(size * size, bool)
    hot[hot_idx] = True
    dark.ravel()[hot_idx] = np.exp(rng.uniform(np.log(5.0), np.log(200.0), n_hot))

    prnu = (1 + 0.01 * rng.standard_normal((size, size), dtype=np.float32)).astype(np.float32)
    scale = size / NAXIS
    dust = tuple(
        (
            float(rng.uniform(0.1, 0.9) * size),
            float(rng.uniform(0.1, 0.9) * size),
            float(rng.uniform(15, 40) * scale),
            float(rng.uniform(0.02, 0.05)),
        )
        for _ in range(int(rng.integers(2, 5)))
    )
    return _Camera(bias, dark.astype(np.float32), hot.reshape(size, size), prnu, dust)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * z))


def _make_flat(camera: _Camera, filt: str, seed: int) -> np.ndarray:
    """Vignetting x gradient x PRNU x dust donuts, normalised to a central median of 1."""
    size = camera.bias.shape[0]
    rng = _rng(seed, "flat", filt, size)
    x, y = _grid(size)
    cx, cy = (size - 1) / 2 + rng.uniform(-0.03, 0.03, 2) * size
    rho2 = (x - cx) ** 2 + (y - cy) ** 2
    rho2 /= rho2.max()  # 1 at the farthest corner, where the drop is 15-20 %
    flat = 1 - rng.uniform(0.15, 0.20) * (0.7 * rho2 + 0.3 * rho2**2)
    theta = rng.uniform(0, 2 * np.pi)
    gradient = rng.uniform(0.02, 0.04)
    flat *= 1 + gradient * ((x - cx) * np.cos(theta) + (y - cy) * np.sin(theta)) / size
    flat *= camera.prnu
    soft = max(0.5, 0.8 * size / NAXIS)
    for dx, dy, radius, depth in camera.dust:
        r = np.hypot(x - dx, y - dy)
        # Out-of-focus dust shadows the pupil: an annulus with the secondary's hole inside.
        ring = _sigmoid((r - 0.35 * radius) / soft) * _sigmoid((radius - r) / soft)
        flat *= 1 - depth * rng.uniform(0.9, 1.1) * ring
    lo, hi = size // 4, 3 * size // 4
    return (flat / np.median(flat[lo:hi, lo:hi])).astype(np.float32)


def _with_new_dust(flat: np.ndarray, depth: float) -> np.ndarray:
    """The flat with one more dust donut (a fixed place, a fifth of the way in), renormalised."""
    size = flat.shape[0]
    x, y = _grid(size)
    radius, soft = 30 * size / NAXIS, max(0.5, 0.8 * size / NAXIS)
    r = np.hypot(x - 0.3 * size, y - 0.35 * size)
    ring = _sigmoid((r - 0.35 * radius) / soft) * _sigmoid((radius - r) / soft)
    dusty = flat * (1 - depth * ring)
    lo, hi = size // 4, 3 * size // 4
    return (dusty / np.median(dusty[lo:hi, lo:hi])).astype(np.float32)


def sky_rate(filt: str, sky_scale: float = 1.0) -> float:
    """Sky in ADU/s/px at flat = 1 for a filter."""
    return SKY_RATES_ADU_S.get(filt, DEFAULT_SKY_RATE_ADU_S) * sky_scale


# ---------------------------------------------------------------------------------------------
# Fields and stars


@dataclass(frozen=True)
class _Field:
    name: str
    ra0: float
    dec0: float
    wcs: dict[str, Any]
    ra: np.ndarray
    dec: np.ndarray
    x: np.ndarray
    y: np.ndarray
    flux: dict[str, np.ndarray]


def field_centre(name: str) -> tuple[float, float]:
    """True centre (deg) of a known field, or a stable made-up one for any other object."""
    if name in FIELD_CENTRES_DEG:
        return FIELD_CENTRES_DEG[name]
    h = zlib.crc32(name.encode())
    return (h % 36000) / 100.0, -20.0 + (h // 36000 % 8000) / 100.0


def nominal_wcs_keywords(ra0: float, dec0: float, size: int) -> dict[str, Any]:
    """FITS WCS keywords of a field's undithered grid: CRVAL at the frame centre."""
    centre = (size + 1) / 2
    return {
        "CTYPE1": "RA---TAN",
        "CTYPE2": "DEC--TAN",
        "CUNIT1": "deg",
        "CUNIT2": "deg",
        "CRVAL1": ra0,
        "CRVAL2": dec0,
        "CRPIX1": centre,
        "CRPIX2": centre,
        "CD1_1": CD_MATRIX[0][0],
        "CD1_2": CD_MATRIX[0][1],
        "CD2_1": CD_MATRIX[1][0],
        "CD2_2": CD_MATRIX[1][1],
    }


def perturbed_wcs_keywords(
    keywords: dict[str, Any], rotation_deg: float, scale: float
) -> dict[str, Any]:
    """The keywords with the CD matrix rotated on the sky and scaled.

    The true camera angle and plate scale of a field are never exactly the nominal ones, so
    an astrometric solver seeded with the nominal CD matrix must find them.
    """
    theta = math.radians(rotation_deg)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    cd = np.array([[keywords["CD1_1"], keywords["CD1_2"]], [keywords["CD2_1"], keywords["CD2_2"]]])
    new = scale * rot @ cd
    out = dict(keywords)
    out.update({f"CD{i + 1}_{j + 1}": float(new[i, j]) for i in range(2) for j in range(2)})
    return out


def frame_wcs(wcs_keywords: dict[str, Any], dx: float = 0.0, dy: float = 0.0) -> WCS:
    """The WCS of a frame dithered by (dx, dy): the nominal one with CRPIX moved by (+dx, +dy)."""
    header = fits.Header(wcs_keywords)
    header["CRPIX1"] += dx
    header["CRPIX2"] += dy
    return WCS(header)


def _make_field(name: str, spec: NightSpec, filters: Sequence[str] = ()) -> _Field:
    """A star catalogue fixed per (seed, object): uniform positions, power-law fluxes.

    Only the flux scale depends on the spec: the three brightest stars in the frame peak near
    saturation in the object's longest exposure and the next five are bright but unsaturated,
    so even a small test frame has saturated stars and clean reference stars.
    """
    size = spec.size
    rng = _rng(spec.seed, "field", name)
    ra0, dec0 = field_centre(name)
    optics = _rng(spec.seed, "optics", name)
    keywords = perturbed_wcs_keywords(
        nominal_wcs_keywords(ra0, dec0, size),
        rotation_deg=float(optics.uniform(-0.4, 0.4)),
        scale=float(optics.uniform(0.997, 1.003)),
    )
    half = 0.65 * size * PIXEL_SCALE_ARCSEC / 3600
    n_field = max(20, round(rng.uniform(150, 250) * (size / NAXIS) ** 2))
    n = round(n_field * 1.3**2)
    dec = dec0 + rng.uniform(-half, half, n)
    ra = ra0 + rng.uniform(-half, half, n) / np.cos(np.radians(dec0))
    x, y = frame_wcs(keywords).all_world2pix(ra, dec, 0)

    # p(F) ~ F^-1.5 over three decades: a couple of percent are within 2x of the top.
    a = 0.5
    rel = (1 - rng.uniform(0, 1, n) * (1 - 1e-3**a)) ** (-1 / a) * 1e-3
    inside = (x > 20) & (x < size - 21) & (y > 20) & (y < size - 21)
    order = np.argsort(np.where(inside, rel, -1))[::-1]
    rel[order[:3]] = rng.uniform(0.8, 1.3, 3)
    rel[order[3:8]] = np.maximum(rel[order[3:8]], np.exp(rng.uniform(np.log(0.03), np.log(0.5), 5)))
    colour = rng.normal(0.5, 0.3, n)

    groups = [g for g in spec.groups if g.object == name]
    t_max = max((g.exposure_s for g in groups), default=60.0)
    sky_max = max((sky_rate(g.filter, spec.sky_scale) for g in groups), default=5.0)
    alpha = _moffat_alpha(spec.fwhm_px, PSF_BETA)
    peak_fraction = (PSF_BETA - 1) / (np.pi * alpha**2)
    headroom = max(SATURATION_ADU - BIAS_LEVEL_ADU - sky_max * t_max, 1000.0)
    f_top = headroom / (peak_fraction * t_max)
    flux = {}
    for filt in dict.fromkeys([g.filter for g in groups] + list(filters)):
        thr, k = FILTER_THROUGHPUT.get(filt, (1.0, 0.0))
        flux[filt] = f_top * rel * thr * 10 ** (-0.4 * k * (colour - 0.5))
    return _Field(name, ra0, dec0, keywords, ra, dec, x, y, flux)


def _moffat_alpha(fwhm: float, beta: float) -> float:
    return fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1))


def render_stars(
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    size: int,
    fwhm: float,
    beta: float = PSF_BETA,
    radius: int = STAMP_RADIUS_PX,
) -> np.ndarray:
    """Moffat stars (flux per star, 0-based centres) on a size x size float32 image.

    Each star is a (2 radius + 1)^2 stamp integrated on an OVERSAMPLE^2 sub-grid and scaled so
    the stamp holds exactly its flux; all stamps are evaluated at once and summed by bincount.
    """
    x, y, flux = (np.asarray(v, np.float64) for v in (x, y, flux))
    keep = (x > -radius - 1) & (x < size + radius) & (y > -radius - 1) & (y < size + radius)
    x, y, flux = x[keep], y[keep], flux[keep]
    image = np.zeros(size * size)
    if x.size == 0:
        return image.reshape(size, size).astype(np.float32)
    alpha2 = _moffat_alpha(fwhm, beta) ** 2
    k = np.arange(-radius, radius + 1)
    sub = (np.arange(OVERSAMPLE) + 0.5) / OVERSAMPLE - 0.5
    offsets = (k[:, None] + sub[None, :]).ravel()
    cx, cy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    ddx = ((cx - x)[:, None] + offsets[None, :]).astype(np.float32) ** 2
    ddy = ((cy - y)[:, None] + offsets[None, :]).astype(np.float32) ** 2
    inv = 1 / (1 + (ddy[:, :, None] + ddx[:, None, :]) / np.float32(alpha2))
    prof = inv * inv * inv if beta == 3.0 else inv ** np.float32(beta)
    width = 2 * radius + 1
    prof = prof.reshape(-1, width, OVERSAMPLE, width, OVERSAMPLE).sum(axis=(2, 4))
    prof *= (flux / prof.sum(axis=(1, 2)))[:, None, None]
    iy, ix = cy[:, None] + k, cx[:, None] + k
    valid = ((iy >= 0) & (iy < size))[:, :, None] & ((ix >= 0) & (ix < size))[:, None, :]
    index = iy[:, :, None] * size + ix[:, None, :]
    image += np.bincount(index[valid], weights=prof[valid], minlength=size * size)
    return image.reshape(size, size).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Planning a night


@dataclass
class _Frame:
    kind: str
    relpath: str
    exposure_s: float
    start: datetime
    filter: str | None = None
    object: str | None = None
    dx: float | None = None
    dy: float | None = None
    fwhm_px: float | None = None
    level_adu: float | None = None
    ccd_temp: float = CCD_TEMP_C
    n_cosmics: int = 0
    cosmic_pixels: list[list[float]] = field(default_factory=list)
    transparency: float = 1.0
    trail_px: float = 0.0
    field_name: str | None = None  # the field actually observed, when not `object`


def _exposure_token(t: float) -> str:
    return f"{round(t):03d}s" if float(t).is_integer() else f"{t:g}s".replace(".", "p")


def _object_token(name: str) -> str:
    """File-name form of OBJECT as a camera would write it: 'M 67' -> 'M67'."""
    return re.sub(r"[^A-Za-z0-9+\-]", "", name) or "object"


def _plan_night(spec: NightSpec) -> tuple[list[_Frame], dict[str, dict[str, Any]]]:
    """Every frame in time order, with its random per-frame parameters, and each field's
    per-night pointing error (within 2 arcmin of the true centre)."""
    rng = _rng(spec.seed, "night", spec.night)
    evening = datetime.combine(date.fromisoformat(spec.night), datetime.min.time())
    counters: dict[str, int] = {}
    frames: list[_Frame] = []

    def add(kind: str, prefix: str, t: float, clock: datetime, **kw: Any) -> datetime:
        counters[prefix] = counters.get(prefix, 0) + 1
        relpath = f"{FOLDER[kind]}/{prefix}-{counters[prefix]:03d}.fits"
        temp = round(CCD_TEMP_C + rng.normal(0, 0.05), 2)
        frames.append(_Frame(kind, relpath, float(t), clock, ccd_temp=temp, **kw))
        return clock + timedelta(seconds=t + READOUT_S)

    clock = evening + timedelta(hours=19, minutes=30)  # twilight flats (UT)
    for filt, t, n in spec.flats:
        for _ in range(n):
            level = float(rng.uniform(20000, 30000))
            clock = add(
                "flat", f"flat-{sanitize_filter(filt)}", t, clock, filter=filt, level_adu=level
            )
    clock += timedelta(minutes=10)
    for t, n in spec.darks:
        for _ in range(n):
            clock = add("dark", f"dark-{_exposure_token(t)}", t, clock)

    clock = max(clock, evening + timedelta(hours=23, minutes=20))  # science crosses midnight
    pointings: dict[str, dict[str, Any]] = {}
    for g in spec.groups:
        if g.object not in pointings:
            pointings[g.object] = _pointing(g.object, rng)
        clock += timedelta(minutes=5)
        prefix = f"{_object_token(g.object)}-{sanitize_filter(g.filter)}-"
        prefix += _exposure_token(g.exposure_s)
        for number in range(1, g.n_frames + 1):
            dx, dy = rng.uniform(-spec.dither_px, spec.dither_px, 2)
            fwhm = spec.fwhm_px * rng.uniform(0.9, 1.1)
            spoiler = _spoiler(spec, g, number)
            clock = add(
                "object",
                prefix,
                g.exposure_s,
                clock,
                filter=g.filter,
                object=g.object,
                dx=float(dx),
                dy=float(dy),
                fwhm_px=float(fwhm * spoiler.defocus),
                transparency=spoiler.transparency,
                trail_px=spoiler.trail_px,
                field_name=spoiler.field,
            )
    return frames, pointings


def _spoiler(spec: NightSpec, group: ScienceGroup, number: int) -> Spoiler:
    """How frame `number` of `group` is spoiled (a clean Spoiler when it is not)."""
    for spoiler in spec.spoiled:
        if (spoiler.object, spoiler.filter, spoiler.frame) == (group.object, group.filter, number):
            return spoiler
    return Spoiler(group.object, group.filter, number)


def _pointing(name: str, rng: np.random.Generator) -> dict[str, Any]:
    """Header pointing: the true centre plus an error of up to 2 arcmin, in a random direction."""
    ra0, dec0 = field_centre(name)
    error = float(rng.uniform(0, 120))
    angle = rng.uniform(0, 2 * np.pi)
    dec = dec0 + error * np.sin(angle) / 3600
    ra = (ra0 + error * np.cos(angle) / 3600 / np.cos(np.radians(dec0))) % 360
    return {
        "ra_deg": float(ra),
        "dec_deg": float(dec),
        "error_arcsec": error,
        "objctra": Angle(ra, u.deg).to_string(unit=u.hour, sep=" ", precision=2, pad=True),
        "objctdec": Angle(dec, u.deg).to_string(
            unit=u.deg, sep=" ", precision=1, pad=True, alwayssign=True
        ),
    }


# ---------------------------------------------------------------------------------------------
# Rendering frames


@dataclass(frozen=True)
class _Model:
    spec: NightSpec
    camera: _Camera
    flats: dict[str, np.ndarray]
    fields: dict[str, _Field]
    pointings: dict[str, dict[str, Any]]


def _expose(rng: np.random.Generator, signal_adu: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Poisson on electrons, then the noiseless bias and Gaussian read noise (float32 ADU)."""
    electrons = rng.poisson(np.clip(signal_adu, 0, None).astype(np.float64) * GAIN_E_PER_ADU)
    adu = electrons.astype(np.float32) / np.float32(GAIN_E_PER_ADU)
    adu += bias
    adu += np.float32(READ_NOISE_ADU) * rng.standard_normal(adu.shape, dtype=np.float32)
    return adu


def _add_cosmics(rng: np.random.Generator, image: np.ndarray) -> tuple[int, list[list[float]]]:
    """3-15 short tracks (1-4 px, 300-5000 ADU per pixel), added after the noise.

    Returns the number of tracks and every hit pixel as [x, y, ADU].
    """
    size = image.shape[0]
    hits: list[list[float]] = []
    n_tracks = int(rng.integers(3, 16))
    for _ in range(n_tracks):
        x0, y0 = rng.uniform(0, size - 1, 2)
        angle = rng.uniform(0, 2 * np.pi)
        steps = np.arange(int(rng.integers(1, 5)))
        xs = np.clip(np.rint(x0 + steps * np.cos(angle)), 0, size - 1).astype(int)
        ys = np.clip(np.rint(y0 + steps * np.sin(angle)), 0, size - 1).astype(int)
        for px, py in dict.fromkeys(zip(xs.tolist(), ys.tolist(), strict=True)):
            value = float(rng.uniform(300, 5000))
            image[py, px] += value
            hits.append([px, py, round(value, 1)])
    return n_tracks, hits


def _signal(frame: _Frame, model: _Model) -> np.ndarray:
    """Expected ADU above bias for a frame, before noise."""
    t = frame.exposure_s
    dark = model.camera.dark_rate * np.float32(t)
    if frame.kind == "dark":
        return dark
    flat = model.flats[frame.filter]
    if frame.kind == "flat":
        return dark + flat * np.float32(frame.level_adu)
    fld = model.fields[frame.field_name or frame.object]
    size = model.spec.size
    # A trail is the star drawn at evenly spaced points along x, each with its share of flux.
    steps = max(1, math.ceil(2 * frame.trail_px) + 1)
    along = np.linspace(-frame.trail_px / 2, frame.trail_px / 2, steps) if steps > 1 else [0.0]
    flux = fld.flux[frame.filter] * (frame.transparency / steps)
    stars = sum(
        render_stars(fld.x + frame.dx + a, fld.y + frame.dy, flux, size, frame.fwhm_px)
        for a in along
    )
    sky = np.float32(sky_rate(frame.filter, model.spec.sky_scale))
    return dark + flat * ((stars + sky) * np.float32(t))


def _fill_header(h: fits.Header, frame: _Frame, model: _Model) -> None:
    """Header cards as the T120 camera writes them: no WCS, pointing only in OBJCTRA/DEC."""
    h["TELESCOP"] = ("OHP T120", "Telescope")
    h["INSTRUME"] = (INSTRUMENT, "Camera")
    h["IMAGETYP"] = (IMAGETYP[frame.kind], "Type of image")
    h[model.spec.exposure_keyword] = (frame.exposure_s, "[s] Exposure time")
    h["DATE-OBS"] = (
        frame.start.isoformat(timespec="milliseconds"),
        "UT start of exposure",
    )
    h["XBINNING"] = (BINNING, "Binning factor in width")
    h["YBINNING"] = (BINNING, "Binning factor in height")
    h["CCD-TEMP"] = (frame.ccd_temp, "[C] CCD temperature")
    h["GAIN"] = (GAIN_E_PER_ADU, "[e-/ADU] Electronic gain")
    h["SATURATE"] = (SATURATION_ADU, "[ADU] Saturation level")
    if frame.kind == "flat":
        h["OBJECT"] = "FLAT"
    if frame.kind == "object":
        pointing = model.pointings[frame.object]
        h["OBJECT"] = (frame.object, "Target")
        h["OBJCTRA"] = (pointing["objctra"], "[hms] Telescope RA")
        h["OBJCTDEC"] = (pointing["objctdec"], "[dms] Telescope Dec")
    if frame.filter is not None:
        h["FILTER"] = (frame.filter, "Filter")


def _write_frame(frame: _Frame, model: _Model, night_dir: Path) -> _Frame:
    """Render, digitise (round, clip to the 16-bit ADC) and write one frame as uint16."""
    rng = _rng(model.spec.seed, "frame", model.spec.night, frame.relpath)
    image = _expose(rng, _signal(frame, model), model.camera.bias)
    frame.n_cosmics, frame.cosmic_pixels = _add_cosmics(rng, image)
    # uint16 data makes astropy write BITPIX 16 with BZERO 32768 right after NAXISn.
    hdu = fits.PrimaryHDU(data=np.clip(np.rint(image), 0, ADC_MAX).astype(np.uint16))
    _fill_header(hdu.header, frame, model)
    hdu.writeto(night_dir / frame.relpath, overwrite=True)
    return frame


# ---------------------------------------------------------------------------------------------
# Truth


def _field_truth(fld: _Field, pointing: dict[str, Any]) -> dict[str, Any]:
    stars = [
        {
            "ra": float(fld.ra[i]),
            "dec": float(fld.dec[i]),
            "x": float(fld.x[i]),
            "y": float(fld.y[i]),
            "flux": {f: float(v[i]) for f, v in fld.flux.items()},
        }
        for i in range(fld.ra.size)
    ]
    return {
        "wcs": fld.wcs,
        "center_ra_deg": fld.ra0,
        "center_dec_deg": fld.dec0,
        "pointing": pointing,
        "stars": stars,
    }


def _frame_truth(frame: _Frame) -> dict[str, Any]:
    return {
        "path": frame.relpath,
        "type": frame.kind,
        "exposure_s": frame.exposure_s,
        "filter": frame.filter,
        "object": frame.object,
        "date_obs": frame.start.isoformat(timespec="milliseconds"),
        "dx": frame.dx,
        "dy": frame.dy,
        "fwhm_px": frame.fwhm_px,
        "flat_level_adu": frame.level_adu,
        "n_cosmics": frame.n_cosmics,
        "cosmic_pixels": frame.cosmic_pixels,
        "transparency": frame.transparency,
        "trail_px": frame.trail_px,
        "field": frame.field_name or frame.object,
    }


def _write_truth(truth_dir: Path, model: _Model, frames: list[_Frame]) -> None:
    spec = model.spec
    truth_dir.mkdir(parents=True, exist_ok=True)
    arrays = {
        "bias": model.camera.bias,
        "dark_rate": model.camera.dark_rate,
        "hot_pixels": model.camera.hot_pixels,
    }
    arrays.update({f"flat_{f}": v for f, v in model.flats.items()})
    np.savez(truth_dir / "truth.npz", **arrays)
    doc = {
        "night": spec.night,
        "spec": dataclasses.asdict(spec),
        "camera": {
            "gain_e_per_adu": GAIN_E_PER_ADU,
            "read_noise_adu": READ_NOISE_ADU,
            "bias_level_adu": BIAS_LEVEL_ADU,
            "size": spec.size,
            "pixel_scale_arcsec": PIXEL_SCALE_ARCSEC,
            "saturation_adu": SATURATION_ADU,
            "adc_max_adu": ADC_MAX,
            "binning": BINNING,
            "psf_beta": PSF_BETA,
            "stamp_radius_px": STAMP_RADIUS_PX,
        },
        "sky_rate_adu_s": {f: sky_rate(f, spec.sky_scale) for f in spec.filters},
        "frames": [_frame_truth(f) for f in frames],
        "fields": {n: _field_truth(f, model.pointings.get(n, {})) for n, f in model.fields.items()},
    }
    (truth_dir / "truth.json").write_text(json.dumps(doc, indent=1))


@dataclass
class Truth:
    """What a synthetic night was made of (see the module docstring for conventions)."""

    night: str
    camera: dict[str, Any]
    sky_rate: dict[str, float]
    frames: list[dict[str, Any]]
    fields: dict[str, dict[str, Any]]
    bias: np.ndarray
    dark_rate: np.ndarray
    flats: dict[str, np.ndarray]
    hot_pixels: np.ndarray
    spec: dict[str, Any]

    def frame(self, relpath: str) -> dict[str, Any]:
        """The truth entry of a raw file, by its path relative to the night directory."""
        for entry in self.frames:
            if entry["path"] == relpath:
                return entry
        raise KeyError(relpath)

    def wcs(self, obj: str, dx: float = 0.0, dy: float = 0.0) -> WCS:
        """The true WCS of a field, dithered by (dx, dy)."""
        return frame_wcs(self.fields[obj]["wcs"], dx, dy)


def load_truth(truth_dir: str | os.PathLike[str]) -> Truth:
    """Read truth.npz and truth.json written by :func:`write_night`."""
    truth_dir = Path(truth_dir)
    doc = json.loads((truth_dir / "truth.json").read_text())
    with np.load(truth_dir / "truth.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    flats = {k.removeprefix("flat_"): v for k, v in arrays.items() if k.startswith("flat_")}
    return Truth(
        night=doc["night"],
        camera=doc["camera"],
        sky_rate=doc["sky_rate_adu_s"],
        frames=doc["frames"],
        fields=doc["fields"],
        bias=arrays["bias"],
        dark_rate=arrays["dark_rate"],
        flats=flats,
        hot_pixels=arrays["hot_pixels"],
        spec=doc["spec"],
    )


def field_catalogue(truth: Truth, name: str) -> Catalogue:
    """A field's stars as a reference catalogue gives them: RA, Dec and a magnitude (from the
    flux in the field's first filter), nothing of the true WCS."""
    stars = truth.fields[name]["stars"]
    band = next(iter(stars[0]["flux"]))
    return Catalogue(
        np.array([s["ra"] for s in stars]),
        np.array([s["dec"] for s in stars]),
        np.array([25 - 2.5 * np.log10(s["flux"][band]) for s in stars]),
        name,
    )


def reference_catalogue(truth: Truth) -> Catalogue:
    """Every field of a night in one catalogue (what a Gaia cut of the nights would be)."""
    parts = [field_catalogue(truth, name) for name in truth.fields]
    return Catalogue(
        *(np.concatenate([getattr(c, a) for c in parts]) for a in ("ra", "dec", "mag")),
        "synthetic fields",
    )


# ---------------------------------------------------------------------------------------------
# Public writers


def build_model(spec: NightSpec) -> tuple[_Model, list[_Frame]]:
    """The night's full model and frame plan, without writing anything."""
    camera = _make_camera(spec.size, spec.seed)
    if spec.bias_offset_adu:
        camera = dataclasses.replace(camera, bias=camera.bias + np.float32(spec.bias_offset_adu))
    flats = {f: _make_flat(camera, f, spec.seed) for f in spec.filters}
    if spec.new_dust:
        flats = {f: _with_new_dust(flat, spec.new_dust) for f, flat in flats.items()}
    objects = dict.fromkeys(g.object for g in spec.groups)
    fields = {name: _make_field(name, spec) for name in objects}
    for spoiler in spec.spoiled:  # fields observed by mistake, in the filters they were seen
        if spoiler.field and spoiler.field not in fields:
            seen = [s.filter for s in spec.spoiled if s.field == spoiler.field]
            fields[spoiler.field] = _make_field(spoiler.field, spec, seen)
    frames, pointings = _plan_night(spec)
    return _Model(spec, camera, flats, fields, pointings), frames


def write_night(
    raw_root: str | os.PathLike[str],
    spec: NightSpec,
    truth_root: str | os.PathLike[str] | None = None,
    workers: int | None = None,
) -> Path:
    """Write one night to <raw_root>/<night>/{DARK,FLAT,ORIGINAL} and its truth to
    <truth_root>/<night>/ (default truth_root: <raw_root>/_truth, never a night name).

    Frames are independent (one generator each), so they render on a small thread pool.
    """
    night_dir = Path(raw_root) / spec.night
    truth_dir = Path(truth_root if truth_root is not None else night_dir.parent / TRUTH_DIRNAME)
    model, frames = build_model(spec)
    kinds = {f.kind for f in frames} | {"object"}  # a night without darks has no DARK/
    for kind in kinds:
        (night_dir / FOLDER[kind]).mkdir(parents=True, exist_ok=True)
    workers = workers or min(2, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = list(pool.map(lambda f: _write_frame(f, model, night_dir), frames))
    _write_truth(truth_dir / spec.night, model, done)
    return night_dir


def write_archive(
    raw_root: str | os.PathLike[str],
    nights: Sequence[str],
    spec: NightSpec | None = None,
    truth_root: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Write several nights sharing one camera; each night's randomness comes from (seed, night)."""
    base = spec or NightSpec()
    return [
        write_night(raw_root, dataclasses.replace(base, night=night), truth_root)
        for night in nights
    ]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Write synthetic OHP T120 nights with truth.")
    parser.add_argument("--root", required=True, type=Path, help="raw archive root")
    parser.add_argument("--night", action="append", required=True, help="YYYY-MM-DD (repeat)")
    parser.add_argument("--size", type=int, default=NAXIS)
    parser.add_argument("--frames-per-group", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sky-scale", type=float, default=1.0)
    parser.add_argument("--exposure-keyword", choices=EXPOSURE_KEYWORDS, default="EXPTIME")
    parser.add_argument("--truth-root", type=Path, default=None)
    parser.add_argument(
        "--science-only",
        action="append",
        default=[],
        help="a night (one of --night) written without darks or flats (repeat)",
    )
    parser.add_argument(
        "--refcat", type=Path, default=None, help="also write the fields' star catalogue here"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: one line per night with its path and frame count."""
    args = _parse_args(argv)
    base = NightSpec(
        size=args.size,
        seed=args.seed,
        frames_per_group=args.frames_per_group,
        sky_scale=args.sky_scale,
        exposure_keyword=args.exposure_keyword,
    )
    unknown = sorted(set(args.science_only) - set(args.night))
    if unknown:
        raise SystemExit(f"--science-only {', '.join(unknown)}: not among the --night values")
    dirs = [
        write_night(
            args.root,
            dataclasses.replace(
                base,
                night=night,
                **({"darks": (), "flats": ()} if night in args.science_only else {}),
            ),
            args.truth_root,
        )
        for night in args.night
    ]
    for night_dir in dirs:
        n_frames = sum(len(list((night_dir / f).glob("*.fits"))) for f in FOLDER.values())
        print(f"{night_dir} {n_frames} frames")
    if args.refcat is not None:
        truth_root = args.truth_root or args.root / TRUTH_DIRNAME
        catalogue = reference_catalogue(load_truth(truth_root / args.night[0]))
        write_star_table(args.refcat, catalogue)
        print(f"{args.refcat} {len(catalogue)} reference stars")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
