"""Shared fixtures: synthetic nights with truth, the real `astro_reduce` command, fitsverify."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Airflow reads its configuration when first imported: a private, throw-away home for the tests.
os.environ["AIRFLOW_HOME"] = tempfile.mkdtemp(prefix="ar_airflow_home_")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(REPO / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"

from ar_tasks.synthetic import NightSpec, load_truth, write_night  # noqa: E402

NIGHT = "2023-05-10"
ASTRO_REDUCE = Path(sys.executable).with_name("astro_reduce")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the throw-away Airflow home."""
    shutil.rmtree(os.environ["AIRFLOW_HOME"], ignore_errors=True)


def run_cli(night_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed console script in a night folder, as a user would."""
    return subprocess.run(
        [str(ASTRO_REDUCE), *args], cwd=night_dir, capture_output=True, text=True, timeout=600
    )


def fitsverify(paths: list[Path]) -> None:
    """Every file passes NASA's fitsverify with no warning and no error."""
    assert shutil.which("fitsverify"), "fitsverify missing: run `make install`"
    assert paths, "nothing to verify"
    for start in range(0, len(paths), 50):
        chunk = [str(p) for p in paths[start : start + 50]]
        result = subprocess.run(["fitsverify", "-q", *chunk], capture_output=True, text=True)
        failures = [
            line for line in result.stdout.splitlines() if not line.startswith("verification OK")
        ]
        assert result.returncode == 0 and not failures, result.stdout + result.stderr


@pytest.fixture(scope="session")
def full_night(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A default 1024^2 T120 night (61 frames), set up and reduced with `-i -t -r`."""
    root = tmp_path_factory.mktemp("archive")
    night_dir = write_night(root, NightSpec(night=NIGHT))
    setup = run_cli(night_dir, "--setup")
    assert setup.returncode == 0, setup.stdout + setup.stderr
    reduce = run_cli(night_dir, "-i", "-t", "-r")
    assert reduce.returncode == 0, reduce.stdout + reduce.stderr
    return night_dir, load_truth(root / "_truth" / NIGHT)


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine 256^2 night with 3 frames per group (copy it before changing it)."""
    root = tmp_path_factory.mktemp("small")
    write_night(root, NightSpec(night=NIGHT, size=256, frames_per_group=3))
    return root


@pytest.fixture
def small_night(small_archive: Path, tmp_path: Path) -> Path:
    """A private copy of the small night, in its own folder (so escapes can be detected)."""
    night_dir = tmp_path / "nights" / NIGHT
    shutil.copytree(small_archive / NIGHT, night_dir)
    return night_dir


ASTRO_SPEC = NightSpec(
    night=NIGHT,
    darks=((60.0, 3), (120.0, 3)),
    flats=(("V", 5.0, 3), ("R", 5.0, 3)),
    science=(("M 67", "V", 60.0, 3), ("NGC 2420", "R", 120.0, 3)),
)


class AstroArchive:
    """A pristine 1024^2 raw night of two fields (3 frames each), its truth, a reference
    catalogue of both fields (what a Gaia cut would be) and astrometry.net indexes built from
    it. Nothing of the true WCS goes to the solvers: only stars, as a catalogue would give."""

    def __init__(self, root: Path) -> None:
        from ar_tasks.refcat import build_index, write_star_table
        from ar_tasks.synthetic import field_catalogue, reference_catalogue

        self.root = root
        self.raw = root / "raw"
        self.night_dir = write_night(self.raw, ASTRO_SPEC)
        self.truth = load_truth(self.raw / "_truth" / NIGHT)
        self.catalogues = {name: field_catalogue(self.truth, name) for name in self.truth.fields}
        self.everything = reference_catalogue(self.truth)
        self.refcat = write_star_table(root / "refcat.fits", self.everything)
        self.index = build_index(self.everything, root / "index")


@pytest.fixture(scope="session")
def astro_archive(tmp_path_factory: pytest.TempPathFactory) -> AstroArchive:
    return AstroArchive(tmp_path_factory.mktemp("astro"))


@pytest.fixture(scope="session")
def astro_reduced(astro_archive: AstroArchive, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The astrometry night set up and cosmetically reduced by the CLI (`-i`), pristine."""
    night_dir = tmp_path_factory.mktemp("astro_reduced") / NIGHT
    shutil.copytree(astro_archive.night_dir, night_dir)
    for args in (["--setup"], ["-i"]):
        result = run_cli(night_dir, *args)
        assert result.returncode == 0, result.stdout + result.stderr
    return night_dir


@pytest.fixture
def astro_night(astro_reduced: Path, tmp_path: Path) -> Path:
    """A private copy of the cosmetically reduced astrometry night."""
    night_dir = tmp_path / NIGHT
    shutil.copytree(astro_reduced, night_dir, symlinks=True)
    return night_dir


class S3Server:
    """moto's S3 server on 127.0.0.1 (a real S3-protocol endpoint, not patched boto3)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{self._server._server.server_port}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        self._buckets = 0

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def new_bucket(self) -> str:
        self._buckets += 1
        name = f"t120-test-{self._buckets}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture(scope="session")
def s3_server() -> S3Server:
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The S3 server, with the standard AWS environment pointing at it for this test."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server
