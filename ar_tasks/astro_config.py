"""Where the SExtractor, PSFEx, SCAMP and astrometry.net configuration files are.

They live in the repository's include/astromatic_configs/ and are installed inside the package
as `ar_tasks.astromatic_configs`, so a plain `pip install` finds them (5.1.3 looked for them in
a folder its installer never wrote). A user folder, given by option or by the environment
variable AR_ASTROMATIC_CONFIGS, overrides them file by file: it may hold only t120.scamp.
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

CONFIG_ENV = "AR_ASTROMATIC_CONFIGS"
CONFIG_FILES = (
    "t120.sex",
    "t120.conv",
    "t120.param",
    "t120_psf.param",
    "t120.psfex",
    "t120.scamp",
    "t120.ahead",
    "astrometry.cfg",
)


class ConfigError(FileNotFoundError):
    """A configuration file or folder cannot be found."""


def shipped_dir() -> Path:
    """The configuration folder installed with the package (or the source tree's)."""
    try:
        folder = Path(str(resources.files("ar_tasks.astromatic_configs")))
    except ModuleNotFoundError:
        folder = Path(__file__).resolve().parent.parent / "include" / "astromatic_configs"
    if not (folder / "t120.sex").is_file():
        raise ConfigError(f"the shipped configuration files are missing from {folder}")
    return folder


def user_dir(override: str | os.PathLike[str] | None = None) -> Path | None:
    """The user's configuration folder (option first, then AR_ASTROMATIC_CONFIGS), if any."""
    chosen = override or os.environ.get(CONFIG_ENV)
    if not chosen:
        return None
    folder = Path(chosen).expanduser()
    if not folder.is_dir():
        source = "option" if override else f"${CONFIG_ENV}"
        raise ConfigError(f"configuration folder {folder} (from {source}) does not exist")
    return folder


def config_file(name: str, override: str | os.PathLike[str] | None = None) -> Path:
    """Absolute path of one configuration file: the user's copy if there is one."""
    if name not in CONFIG_FILES:
        raise ValueError(f"unknown configuration file {name!r}")
    folder = user_dir(override)
    if folder is not None and (folder / name).is_file():
        return (folder / name).resolve()
    return (shipped_dir() / name).resolve()


def configs_key(names: tuple[str, ...], override: str | os.PathLike[str] | None = None) -> str:
    """SHA-256 over the contents of the configuration files used: part of provenance keys,
    so editing a configuration makes the next run recompute the astrometry."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode())
        digest.update(config_file(name, override).read_bytes())
    return digest.hexdigest()
