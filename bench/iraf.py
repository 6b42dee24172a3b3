"""The same cosmetic reduction of one night done by IRAF 2.17 (Debian `iraf`, `iraf-noao`).

The benchmark times it against ours and checks that both give the same products. `prepare`
takes the inventory of the night with our own code (so frames, names and groups are ours) and
writes a CL script; the Command it returns runs IRAF alone (no Python), so the measured time and
memory are IRAF's. The script follows our algorithm step by step:

1. master darks: imcombine median of the raw darks of each exposure;
2. missing exposures: imexpr of our weighted least-squares dark line (fixed weights, below);
3. master flats: imarith dark subtraction, imcombine median scaled by each frame's median of the
   central half (statsec), divided by the central median of the result (imstatistics midpt);
4. aux frames: imarith (raw - dark) / flat;
5. stacks: xregister (Fourier cross-correlation of the central 3/4, sawtooth peak centring: 0.01
   px on the synthetic nights; spline3 resampling) onto one reference frame, then imcombine
   median with zero=median (every sky brought to the reference's, as ours does).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits

from ar_tasks.inventory import Frame, GroupKey, Inventory, take_inventory
from ar_tasks.registration import shift_image
from bench.harness import Command

INTERPOLANT = "spline3"  # xregister's kernel closest to our Lanczos-3 (of poly3/5, sinc, ...)
MAX_SHIFT_FRACTION = 0.04  # xregister searches shifts up to this fraction of the frame
STACK_BORDER = 30  # px left out of the stack comparison (dithered edges)
DARK_REL_TOL = 1e-5  # master darks: max |IRAF - ours| / level (a few float32 roundings)
FLAT_NOISE_TOL = 1.0  # master flats: RMS difference / expected master-flat noise
STACK_NOISE_TOL = 1.0  # stacks: RMS difference off bright stars / sky noise of our stack
STAR_SIGMA = 20.0  # stack pixels this far above the sky are stars, where kernels differ most
COMBINE = "reject=none offsets=none masktype=none blank=0. outtype=real weight=none"
IMARITH = "pixtype=real calctype=real verbose- noact-"

# The measured command: fresh scratch and parameters, IRAF, then IRAF's errors and missing
# products turned into a non-zero exit (the CL itself exits 0 after a failed task, and
# xregister writes a shift of exactly 0 when it cannot correlate, e.g. a bad region).
RUN = r"""set -u
rm -rf tmp .iraf/uparm && mkdir tmp && rm -f ./*.fits iraf.log done.marker || exit 1
irafcl -c < reduce.cl > iraf.log 2>&1 || { tail -n 30 iraf.log; exit 1; }
if grep -n -i -E "error|not an image|cannot|no such|warning" iraf.log; then exit 1; fi
if grep -s -E "\s0\.\s+0\.$" tmp/*.shifts; then echo "xregister: no shift"; exit 1; fi
while read -r f; do [ -s "$f" ] || { echo "IRAF product missing: $f"; exit 1; }; done < products.lst
"""


def dark_weights(exposures: Sequence[int], counts: Sequence[int], exposure: int) -> list[float]:
    """Weights w_i with dark(t) = sum w_i mdark_i: our weighted least-squares line at t.

    With c_i = n_i / sum n, xbar = sum c_i t_i, Sxx = sum c_i (t_i - xbar)^2, the fitted line
    at t is sum c_i y_i + (t - xbar) sum c_i (t_i - xbar) y_i / Sxx, linear in the masters y_i.
    """
    c = np.asarray(counts, float) / float(sum(counts))
    t = np.asarray(exposures, float)
    xbar = float(np.sum(c * t))
    sxx = float(np.sum(c * (t - xbar) ** 2))
    return (c + c * (exposure - xbar) * (t - xbar) / sxx).tolist()


def _section(shape: tuple[int, int], divisor: int) -> str:
    """IRAF section (1-based, inclusive) leaving shape // divisor out on each side."""
    height, width = shape
    return (
        f"[{width // divisor + 1}:{width - width // divisor},"
        f"{height // divisor + 1}:{height - height // divisor}]"
    )


class _Script:
    """The CL lines, @lists, expected products and plan (for compare) of one night."""

    def __init__(self, work_dir: Path, shape: tuple[int, int]):
        self.work_dir, self.shape = work_dir, shape
        self.cl = ['set imtype = "fits"', "reset clobber = no"]
        self.products: list[str] = []
        self.plan: dict = {"flats": {}, "groups": {}}

    def listing(self, name: str, names: Sequence[str]) -> str:
        (self.work_dir / "lists" / name).write_text("".join(f"{n}\n" for n in names))
        return f"@lists/{name}"

    def darks(self, inventory: Inventory) -> None:
        darks = inventory.darks_by_exposure()
        for ms, frames in sorted(darks.items()):
            names = self.listing(f"dark_{ms}", [f"raw/{f.path}" for f in frames])
            self.cl.append(
                f"imcombine {names} mdark_{ms}.fits combine=median scale=none zero=none "
                f"statsec='' {COMBINE}"
            )
            self.products.append(f"mdark_{ms}.fits")
        exposures = sorted(darks)
        if len(exposures) > 26:
            raise ValueError("imexpr takes at most 26 operands (a-z)")
        for ms in (e for e in inventory.needed_exposures() if e not in darks):
            if len(exposures) == 1:
                self.cl.append(f"imcopy mdark_{exposures[0]}.fits mdark_{ms}.fits verbose-")
            else:
                weights = dark_weights(exposures, [len(darks[e]) for e in exposures], ms)
                expr = " + ".join(f"({w:.17g}) * {chr(97 + i)}" for i, w in enumerate(weights))
                ops = " ".join(f"{chr(97 + i)}=mdark_{e}.fits" for i, e in enumerate(exposures))
                self.cl.append(f'imexpr "{expr}" mdark_{ms}.fits {ops} outtype=real verbose-')
            self.products.append(f"mdark_{ms}.fits")

    def flats(self, inventory: Inventory) -> None:
        central = _section(self.shape, 4)
        for filt, frames in sorted(inventory.flats_by_filter().items()):
            subtracted = [f"tmp/{frame.stem}_ds.fits" for frame in frames]
            for frame, name in zip(frames, subtracted, strict=True):
                dark = f"mdark_{frame.exposure_ms}.fits"
                self.cl.append(f"imarith raw/{frame.path} - {dark} {name} {IMARITH}")
            names, combined = self.listing(f"flat_{filt}", subtracted), f"tmp/flat_{filt}.fits"
            self.cl += [
                f"imcombine {names} {combined} combine=median scale=median "
                f'statsec="{central}" zero=none {COMBINE}',
                f"imstatistics {combined}{central} fields=midpt lower=INDEF upper=INDEF "
                "nclip=0 binwidth=0.01 format- | scan (x)",
                f"imarith {combined} / (x) mtrans_{filt}.fits {IMARITH}",
            ]
            self.products.append(f"mtrans_{filt}.fits")
            self.plan["flats"][filt] = subtracted

    def stack(self, group: GroupKey, frames: list[Frame], reference: str) -> None:
        frames = sorted(frames, key=lambda f: f.path != reference)  # imcombine zeros: 1st frame
        g, aux = group.name, [f"{f.stem}_aux.fits" for f in frames]
        raws = self.listing(f"{g}.raw", [f"raw/{f.path}" for f in frames])
        subs = self.listing(f"{g}.sub", [f"tmp/{f.stem}_ds.fits" for f in frames])
        registered = [f"tmp/{f.stem}_reg.fits" for f in frames[1:]]
        self.cl += [
            f"imarith {raws} - mdark_{group.exposure_ms}.fits {subs} {IMARITH}",
            f"imarith {subs} / mtrans_{group.filter}.fits {self.listing(f'{g}.aux', aux)} "
            f"{IMARITH}",
        ]
        if registered:  # the reference itself is not resampled (nor is it by ours)
            others = self.listing(f"{g}.others", aux[1:])
            regs = self.listing(f"{g}.reg", registered)
            window = 2 * math.ceil(MAX_SHIFT_FRACTION * max(self.shape)) + 1
            self.cl.append(
                f'xregister {others} {aux[0]} "{_section(self.shape, 8)}" tmp/{g}.shifts '
                f"output={regs} databasefmt- append- records='' coords='' xlag=0 ylag=0 "
                "dxlag=0 dylag=0 background=median border=INDEF loreject=INDEF hireject=INDEF "
                f"apodize=0.1 filter=none correlation=fourier xwindow={window} "
                f"ywindow={window} function=sawtooth xcbox=5 ycbox=5 "
                f"interp_type={INTERPOLANT} boundary_type=nearest constant=0. interactive- "
                "verbose-"
            )
        stacked = self.listing(f"{g}.stack", [aux[0], *registered])
        self.cl.append(
            f"imcombine {stacked} {g}.fits combine=median scale=none zero=median statsec='' "
            f"{COMBINE}"
        )
        self.products += [*aux, f"{g}.fits"]
        self.plan["groups"][g] = {"reference": reference, "frames": [f.path for f in frames]}

    def write(self) -> None:
        self.cl += ['print "done" > done.marker', "logout"]
        (self.work_dir / "reduce.cl").write_text("\n".join(self.cl) + "\n")
        names = [*self.products, "done.marker"]
        (self.work_dir / "products.lst").write_text("".join(f"{p}\n" for p in names))
        (self.work_dir / "plan.json").write_text(json.dumps(self.plan, indent=1))


def prepare(
    night_dir: Path, work_dir: Path, references: Mapping[str, str] | None = None
) -> Command:
    """Read the night's headers, write work_dir/reduce.cl, its @lists and plan.json, and return
    the command that runs IRAF only (products: mdark_<ms>, mtrans_<F>, <stem>_aux, <group>).

    Each stack is registered on its group's first frame, or on `references[group]` (a raw path
    relative to the night, e.g. our stack's ARREF card) so that both stacks share a pixel grid.
    """
    work_dir = Path(work_dir).resolve()  # HOME and the uparm must be absolute for IRAF
    inventory = take_inventory(night_dir)
    if inventory.shape is None or not inventory.of_kind("dark"):
        raise ValueError(f"{night_dir}: no usable frame or no dark")
    (work_dir / "lists").mkdir(parents=True, exist_ok=True)
    (work_dir / ".hushiraf").touch()  # no banner
    raw = work_dir / "raw"  # short relative names for IRAF
    if raw.is_symlink():
        raw.unlink()
    raw.symlink_to(Path(night_dir).resolve())
    script = _Script(work_dir, inventory.shape)
    script.darks(inventory)
    script.flats(inventory)
    for group, frames in sorted(inventory.groups().items()):
        if group.filter in script.plan["flats"]:  # ours fails a group with no flat too
            script.stack(group, frames, (references or {}).get(group.name, frames[0].path))
    script.write()
    env = {"USER": "bench", "HOME": str(work_dir), "TMPDIR": str(work_dir / "tmp")}
    return Command(["bash", "-c", RUN], work_dir, env, "iraf")


def _read(path: Path) -> np.ndarray:
    return fits.getdata(path).astype(np.float32)


def _mad_sigma(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def _central_median(image: np.ndarray) -> float:
    h, w = image.shape
    return float(np.median(image[h // 4 : h - h // 4, w // 4 : w - w // 4]))


def _iraf_shift(iraf_dir: Path, group: str, frames: list[str], frame: str) -> tuple[float, float]:
    """(dy, dx) by which xregister moved `frame` onto IRAF's reference (frames[0])."""
    rows = [r.split() for r in (iraf_dir / "tmp" / f"{group}.shifts").read_text().splitlines()]
    _, x, y = [r for r in rows if len(r) == 3][frames.index(frame) - 1]
    return float(y), float(x)


def compare(iraf_dir: Path, ours_dir: Path) -> dict:
    """Agreement of IRAF's products (iraf_dir, after the Command ran) with ours (a night folder
    reduced by astro_reduce -i), as a flat dict of numbers and one `agree_*` flag per kind:

    - darks (measured and interpolated): max |IRAF - ours| in ADU, and relative to each pixel's
      level (hot pixels) or the median level; agree if <= 1e-5 (a few float32 roundings);
    - flats: RMS of IRAF - ours over finite pixels (%), against the expected noise of a master
      flat (scatter of two normalised flats x sqrt(pi/2 / N)); agree if <= 1x that noise;
    - stacks: IRAF's stack is first moved onto our reference frame (by IRAF's own shift, Lanczos)
      when the references differ; then, inside a 30 px border and after removing the median
      offset (each stack keeps its own reference's sky), the RMS of IRAF - ours over our stack's
      sky noise (MAD): on all pixels, on pixels below sky + 20 sigma (off bright stars, where
      the kernels differ in proportion to the flux) and robust (MAD); agree if the off-star RMS
      is <= 1x the noise.
    """
    plan = json.loads((iraf_dir / "plan.json").read_text())
    masters, out = ours_dir / "ar_masters", {}
    dark_abs, dark_rel = 0.0, 0.0
    for path in sorted(iraf_dir.glob("mdark_*.fits")):
        ours = _read(masters / path.name)
        diff = np.abs(_read(path) - ours)
        level = np.maximum(np.abs(ours), np.median(ours))  # hot pixels: their own level
        dark_abs = max(dark_abs, float(diff.max()))
        dark_rel = max(dark_rel, float(np.max(diff / level)))
    out.update(dark_max_abs_adu=dark_abs, dark_max_rel=dark_rel)
    out["agree_darks"] = dark_rel <= DARK_REL_TOL
    flat_ratio = 0.0
    for filt, subtracted in plan["flats"].items():
        diff = _read(iraf_dir / f"mtrans_{filt}.fits") - _read(masters / f"mtrans_{filt}.fits")
        rms = float(np.sqrt(np.nanmean(diff**2)))
        a, b = (_read(iraf_dir / name) for name in subtracted[:2])
        per_frame = _mad_sigma(a / _central_median(a) - b / _central_median(b)) / 2**0.5
        noise = per_frame * (math.pi / 2 / len(subtracted)) ** 0.5
        out[f"flat_{filt}_rms_diff_pct"], out[f"flat_{filt}_noise_pct"] = 100 * rms, 100 * noise
        flat_ratio = max(flat_ratio, rms / noise)
    out["flat_max_diff_over_noise"] = flat_ratio
    out["agree_flats"] = flat_ratio <= FLAT_NOISE_TOL
    worst = 0.0
    for group, info in plan["groups"].items():
        ours_path = ours_dir / "stacked" / f"{group}.fits"
        ours, iraf = _read(ours_path), _read(iraf_dir / f"{group}.fits")
        ours_ref = fits.getheader(ours_path).get("ARREF", info["reference"])
        if ours_ref != info["reference"]:
            dy, dx = _iraf_shift(iraf_dir, group, info["frames"], ours_ref)
            iraf = shift_image(iraf, -dy, -dx)
        b = STACK_BORDER
        diff, ours = (iraf - ours)[b:-b, b:-b], ours[b:-b, b:-b]
        keep = np.isfinite(diff)
        diff, ours = diff[keep], ours[keep]
        offset, noise = float(np.median(diff)), _mad_sigma(ours)
        diff -= offset
        sky = ours < np.median(ours) + STAR_SIGMA * noise
        key = f"stack_{group}"
        out[f"{key}_offset_adu"], out[f"{key}_noise_adu"] = offset, noise
        out[f"{key}_rms_over_noise"] = float(np.sqrt(np.mean(diff**2))) / noise
        out[f"{key}_sky_rms_over_noise"] = float(np.sqrt(np.mean(diff[sky] ** 2))) / noise
        out[f"{key}_robust_over_noise"] = _mad_sigma(diff) / noise
        out[f"{key}_resampled"] = ours_ref != info["reference"]
        worst = max(worst, out[f"{key}_sky_rms_over_noise"])
    out["stack_max_sky_rms_over_noise"] = worst
    out["agree_stacks"] = worst <= STACK_NOISE_TOL
    return out
