"""A plain install (the wheel `pip install .` builds) finds its configuration files and runs
the Astromatic tools with them: 5.1.3's installed package looked in a folder it never wrote."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

from conftest import REPO

CHECK = textwrap.dedent(
    """
    import sys, tempfile
    from pathlib import Path
    import numpy as np
    from astropy.io import fits
    import ar_tasks
    from ar_tasks import astro_config, astromatic

    assert "site-packages" in ar_tasks.__file__, ar_tasks.__file__
    for name in astro_config.CONFIG_FILES:
        path = astro_config.config_file(name)
        assert path.is_file() and "site-packages" in str(path), path
    work = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:256, 0:256]
    image = rng.normal(100.0, 5.0, (256, 256))
    for cx, cy in rng.uniform(20, 236, (40, 2)):
        image += 3000.0 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 1.5**2))
    fits.writeto(work / "img.fits", image.astype(np.float32), fits.Header({"GAIN": 1.2}))
    catalogue = astromatic.extract(work / "img.fits", work / "img.ldac", work, 60000.0)
    n = len(fits.getdata(catalogue, 2))
    assert n >= 35, n
    print("sources", n)
    """
)


def test_installed_wheel_finds_its_configuration_files(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("ar_tasks", "include"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    python = sys.executable
    build = [python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, str(source), "-w", str(tmp_path / "dist")], check=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("*.whl"))
    uv = str(REPO / ".venv" / "bin" / "uv")
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "-q", "--python", python, str(venv)], check=True, timeout=120)
    install = [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python")]
    constraints = ["-c", str(REPO / "requirements.txt")]
    subprocess.run([*install, *constraints, str(wheel)], check=True, timeout=600)
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", CHECK],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sources" in result.stdout
