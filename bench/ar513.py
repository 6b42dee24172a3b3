"""The original astro_reduce 5.1.3 as a benchmark baseline: its own venv and its commands.

5.1.3 always runs sex, psfex and scamp after the cosmetic steps (no flag turns them off
without starting astrometry.net instead), so its PATH starts with no-op programs of those
names. The no-op `scamp` must still write an empty `scamp.xml`: 5.1.3 parses that file right
after SCAMP and would die with FileNotFoundError (exit 1) without it. With an empty Fields
table there are no `.head` files to merge, `reduced/` stays empty and the exit is 0.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.harness import Command

# The whole resolved set (uv pip freeze), so a rebuild months later installs the same bytes.
# The eight named first are the versions the behaviour study ran (setuptools for pkg_resources).
_TRANSITIVE = """
astropy-iers-data==0.2026.11.2.0.34.55 backports-tarfile==1.2.0 beautifulsoup4==4.15.0
certifi==2026.10.18 cffi==2.1.1 charset-normalizer==3.5.2 contourpy==1.3.3
cryptography==50.0.2 cycler==0.12.1 fonttools==4.68.0 html5lib==1.1 idna==3.20
importlib-metadata==10.2.0 jaraco-classes==3.4.0 jaraco-context==6.1.2
jaraco-functools==4.6.0 jeepney==0.9.0 keyring==25.7.0 kiwisolver==1.5.1
lazy-importer==0.1.0 more-itertools==11.2.1 packaging==26.3 pillow==13.0.0 pycparser==3.12
pyerfa==2.0.1.5 pyparsing==3.3.3 python-dateutil==4.0.0 pyvo==1.9.1 pyyaml==6.0.3
requests==2.34.2 secretstorage==3.5.0 six==1.17.0 soupsieve==4.1.2 typing-extensions==4.16.0
tzdata==2026.6 urllib3==2.8.0 webencodings==0.6.1 zipp==4.1.2"""
AR513_PINS: tuple[str, ...] = (
    "astro-reduce==5.1.3",
    "astropy==8.0.2",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "matplotlib==3.11.2",
    "click==8.5.1",
    "astroquery==0.4.11",
    "setuptools==65.5.0",
    *_TRANSITIVE.split(),
)
PYTHON = "python3.11"  # 5.1.3 needs pkg_resources, gone from fresh 3.12 venvs
MARKER = ".ar513-ready"
NOOP_BIN = "noop-bin"
RAW_FOLDERS = ("DARK", "FLAT", "ORIGINAL")

_NOOP = "#!/bin/sh\n# astro_reduce 5.1.3 benchmark: skip the astromatic stage.\nexit 0\n"
# What 5.1.3 reads after SCAMP: a VOTable whose first table has these two columns.
_EMPTY_SCAMP_XML = """<?xml version="1.0"?>
<VOTABLE version="1.3" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">
<RESOURCE><TABLE name="Fields">
<FIELD name="Catalog_Name" datatype="char" arraysize="*"/>
<FIELD name="XY_Contrast" datatype="float"/>
<DATA><TABLEDATA></TABLEDATA></DATA>
</TABLE></RESOURCE></VOTABLE>
"""
_NOOP_SCAMP = (
    "#!/bin/sh\n# No-op SCAMP: an empty report, since 5.1.3 parses it.\n"
    f"cat > scamp.xml <<'EOF'\n{_EMPTY_SCAMP_XML}EOF\nexit 0\n"
)
NOOP_PROGRAMS: dict[str, str] = {
    "sex": _NOOP,
    "source-extractor": _NOOP,
    "psfex": _NOOP,
    "scamp": _NOOP_SCAMP,
}


def _uv() -> str:
    """The project's uv (next to this interpreter), else one on PATH."""
    local = Path(sys.prefix) / "bin" / "uv"
    found = str(local) if local.is_file() else shutil.which("uv")
    if not found:
        raise FileNotFoundError("uv not found (expected in the project venv)")
    return found


def _env(venv_dir: Path) -> dict[str, str]:
    """Environment of every 5.1.3 run: no-op astromatic programs first, a private mpl cache."""
    path = os.environ.get("PATH", os.defpath)
    return {
        "PATH": f"{venv_dir / NOOP_BIN}:{venv_dir / 'bin'}:{path}",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": str(venv_dir / "mplconfig"),  # font cache built once, by ensure_venv
        "PYTHONNOUSERSITE": "1",
        "PYTHONPATH": "",  # keep its top-level `helpers`/`cosmetic` from meeting ours
        # Its processing order follows set order (config lists, missing darks), and the peak
        # RSS with it: 570 or 870-890 MB on the same night depending on the seed. Seed 0 is
        # the usual (high) case, fixed so repeated runs measure the same thing.
        "PYTHONHASHSEED": "0",
    }


def _write_noop_bin(venv_dir: Path) -> None:
    """Write the no-op astromatic programs into <venv>/noop-bin."""
    bin_dir = venv_dir / NOOP_BIN
    bin_dir.mkdir(exist_ok=True)
    for name, text in NOOP_PROGRAMS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)


def _marker_text() -> str:
    """What a complete venv records: changing a pin or a no-op program forces a rebuild."""
    return "\n".join([*sorted(AR513_PINS), *NOOP_PROGRAMS.values()]) + "\n"


def ensure_venv(venv_dir: Path) -> Path:
    """Build (once) the pinned 5.1.3 venv with its no-op astromatic bin; reuse it when complete."""
    venv_dir = venv_dir.absolute()
    marker = venv_dir / MARKER
    if marker.is_file() and marker.read_text() == _marker_text():
        return venv_dir
    if venv_dir.exists():
        if any(venv_dir.iterdir()) and not (venv_dir / "pyvenv.cfg").is_file():
            raise FileExistsError(f"{venv_dir} exists and is not a venv: not replacing it")
        shutil.rmtree(venv_dir)
    uv = _uv()
    python = str(venv_dir / "bin" / "python")
    subprocess.run([uv, "venv", "-q", "-p", PYTHON, str(venv_dir)], check=True)
    # Bytecode now, so the first measured run does not pay for compiling astropy & co.
    install = [uv, "pip", "install", "-q", "-p", python, "--compile-bytecode", *AR513_PINS]
    subprocess.run(install, check=True)
    frozen = subprocess.run(
        [uv, "pip", "freeze", "-p", python], check=True, capture_output=True, text=True
    ).stdout.split()
    if sorted(frozen) != sorted(AR513_PINS):
        extra = sorted(set(frozen) ^ set(AR513_PINS))
        raise RuntimeError(f"5.1.3 venv differs from the pins: {extra}")
    _write_noop_bin(venv_dir)
    # One start-up imports pyplot and builds the font cache into MPLCONFIGDIR.
    version = subprocess.run(
        [str(venv_dir / "bin" / "astro_reduce"), "--version"],
        env={**os.environ, **_env(venv_dir)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    if "5.1.3" not in version:
        raise RuntimeError(f"unexpected astro_reduce version: {version!r}")
    marker.write_text(_marker_text())
    return venv_dir


def _copy_night(night_dir: Path, work_dir: Path) -> None:
    """Fresh work_dir holding the raw folders (5.1.3 works in its cwd and never cleans it)."""
    night, work = night_dir.resolve(), work_dir.resolve()
    if work == night or work in night.parents:
        raise ValueError(f"work_dir {work} would contain the night {night}")
    missing = [f for f in RAW_FOLDERS if not (night / f).is_dir()]
    if missing:
        raise FileNotFoundError(f"{night} lacks {', '.join(missing)}")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for folder in RAW_FOLDERS:
        shutil.copytree(night / folder, work / folder)


def _commands(venv_dir: Path, work_dir: Path, reduce_flags: list[str]) -> list[Command]:
    """[setup, reduce]: the two processes a 5.1.3 user runs on a night."""
    exe = str(venv_dir.absolute() / "bin" / "astro_reduce")
    env = _env(venv_dir.absolute())
    cwd = work_dir.resolve()
    return [
        Command([exe, "--setup"], cwd, env, "astro_reduce 5.1.3 --setup"),
        Command([exe, *reduce_flags], cwd, env, f"astro_reduce 5.1.3 {' '.join(reduce_flags)}"),
    ]


def prepare(venv_dir: Path, night_dir: Path, work_dir: Path) -> list[Command]:
    """Copy the night into work_dir; [setup, reduce with -i] (darks interpolated, no PNGs)."""
    _copy_night(night_dir, work_dir)
    return _commands(venv_dir, work_dir, ["-i"])


def prepare_png(venv_dir: Path, night_dir: Path, work_dir: Path) -> list[Command]:
    """As prepare, with -t -r too, so the PNG quick-looks are timed as well."""
    _copy_night(night_dir, work_dir)
    return _commands(venv_dir, work_dir, ["-i", "-t", "-r"])
