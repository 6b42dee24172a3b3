"""Reference catalogue fetch: against a local fake VizieR that answers astroquery's real request.

The fake reads the ASU script astroquery POSTs (-source, -c, -c.rd, -out, the Gmag filter) and
answers a real VOTable of the synthetic stars in the cone, so the query, its parsing, the cache
and the retries are all exercised without the internet.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import angular_separation
from astropy.io import fits
from astropy.table import Table
from vizier_standin import FakeVizier, gaia_table

from ar_tasks.refcat_fetch import (
    GAIA_DR3,
    SERVER_ENV,
    RefcatError,
    cached_catalogue_path,
    fetch_field_catalogue,
)

RA0, DEC0 = 132.8, 11.8


def _synthetic_stars(n: int = 4000, seed: int = 7) -> Table:
    """Gaia-like stars spread over 0.7 deg around the test field."""
    rng = np.random.default_rng(seed)
    radius = 0.7 * np.sqrt(rng.uniform(0, 1, n))
    angle = rng.uniform(0, 2 * np.pi, n)
    return gaia_table(
        RA0 + radius * np.cos(angle) / np.cos(np.radians(DEC0)),
        DEC0 + radius * np.sin(angle),
        rng.uniform(9.0, 21.5, n),
        rng.uniform(0.01, 2.0, n),
        rng.uniform(0.01, 2.0, n),
        rng.uniform(0.0003, 0.05, n),
    )


STARS = _synthetic_stars()


@pytest.fixture
def vizier() -> Iterator[FakeVizier]:
    fake = FakeVizier(STARS)
    yield fake
    fake.close()


@pytest.fixture
def dead_server() -> str:
    """An http URL where nothing listens: any query there is a connection error."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _read(path: Path) -> tuple[fits.Header, fits.FITS_rec]:
    with fits.open(path) as hdus:
        return hdus[1].header.copy(), hdus[1].data.copy()


def _inside(ra: float, dec: float, radius: float, limit: float = 20.0) -> Table:
    sep = angular_separation(
        STARS["RA_ICRS"].quantity, STARS["DE_ICRS"].quantity, ra * u.deg, dec * u.deg
    )
    chosen = STARS[(sep.to_value(u.deg) <= radius) & (STARS["Gmag"] < limit)]
    chosen.sort("RA_ICRS")
    return chosen


def test_fetch_writes_the_stars_of_the_cone(vizier: FakeVizier, tmp_path: Path) -> None:
    path = fetch_field_catalogue(RA0 + 0.01, DEC0 - 0.01, 0.2, tmp_path, server=vizier.server)

    assert path == tmp_path / "gaiadr3_132.80+11.80_r0.25.fits"
    assert path == cached_catalogue_path(tmp_path, RA0 + 0.01, DEC0 - 0.01, 0.2)
    [(url_path, fields)] = vizier.requests
    assert url_path == "/viz-bin/votable"
    assert fields["-source"] == GAIA_DR3 and fields["-c.rd"] == "0.25"
    assert fields["-c"] == "132.80000000+11.80000000" and fields["Gmag"] == "<20.0"
    assert fields["-out.max"] == "unlimited"
    assert {"RA_ICRS", "DE_ICRS", "Gmag", "e_Gmag"} <= set(fields["-out"].split(","))

    header, data = _read(path)
    assert header["CATALOG"] == GAIA_DR3 and header["RADIUS"] == 0.25
    assert (header["RA_CEN"], header["DEC_CEN"], header["MAGLIM"]) == (132.8, 11.8, 20.0)
    assert header["EPOCH"] == 2016.0 and header["SERVER"] == vizier.server
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", header["DATE"])
    assert data["RA"].dtype == np.dtype(">f8") and data["DEC"].dtype == np.dtype(">f8")
    assert data["MAG"].dtype == np.dtype(">f4") and data["MAGERR"].dtype == np.dtype(">f4")

    expected = _inside(132.8, 11.8, 0.25)
    assert 50 < len(expected) == len(data)
    got = data[np.argsort(data["RA"])]
    np.testing.assert_array_equal(got["RA"], expected["RA_ICRS"])
    np.testing.assert_array_equal(got["DEC"], expected["DE_ICRS"])
    np.testing.assert_array_equal(got["MAG"], expected["Gmag"])
    np.testing.assert_allclose(got["MAGERR"], expected["e_Gmag"], rtol=1e-6)
    np.testing.assert_allclose(got["RAERR"] * 3.6e6, expected["e_RA_ICRS"], rtol=1e-6)
    # Every star of the requested (smaller, off-centre) cone is in the file.
    assert set(_inside(RA0 + 0.01, DEC0 - 0.01, 0.2)["RA_ICRS"]) <= set(data["RA"])


def test_same_field_is_never_fetched_twice(
    vizier: FakeVizier, dead_server: str, tmp_path: Path
) -> None:
    first = fetch_field_catalogue(RA0, DEC0, 0.2, tmp_path, server=vizier.server)
    before = first.read_bytes()
    # Another night, pointing slightly off: same cache cell, no request, even to a dead server.
    again = fetch_field_catalogue(RA0 - 0.012, DEC0 + 0.02, 0.2, tmp_path, server=dead_server)
    # A smaller cone in a neighbouring cell, but inside the cached cone: reused as well.
    inside = fetch_field_catalogue(RA0 + 0.1, DEC0, 0.1, tmp_path, server=dead_server)
    assert again == inside == first and first.read_bytes() == before
    assert len(vizier.requests) == 1

    # A deeper limit than the cache holds is a new query (and replaces the shallower file).
    deeper = fetch_field_catalogue(RA0, DEC0, 0.2, tmp_path, mag_limit=21.0, server=vizier.server)
    assert deeper == first and len(vizier.requests) == 2
    assert fits.getval(deeper, "MAGLIM", 1) == 21.0


def test_server_from_environment(
    vizier: FakeVizier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SERVER_ENV, vizier.server)
    path = fetch_field_catalogue(RA0, DEC0, 0.1, tmp_path)
    assert path.is_file() and len(vizier.requests) == 1


def test_transient_errors_are_retried(vizier: FakeVizier, tmp_path: Path) -> None:
    vizier.statuses = [503, 503]
    path = fetch_field_catalogue(RA0, DEC0, 0.2, tmp_path, server=vizier.server, backoff=0.01)
    assert len(vizier.requests) == 3
    assert len(_read(path)[1]) == len(_inside(RA0, DEC0, 0.25))


def test_permanent_failure_is_bounded_and_leaves_nothing(
    vizier: FakeVizier, dead_server: str, tmp_path: Path
) -> None:
    vizier.always = 503
    start = time.perf_counter()
    with pytest.raises(RefcatError, match=re.escape(vizier.server)) as failure:
        fetch_field_catalogue(RA0, DEC0, 0.2, tmp_path, server=vizier.server, backoff=0.01)
    assert time.perf_counter() - start < 5.0
    assert len(vizier.requests) == 4  # 1 + retries=3, never more
    assert "failed 4 times" in str(failure.value) and "RA 132.8000 Dec +11.8000" in str(
        failure.value
    )
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(RefcatError, match=re.escape(dead_server)):
        fetch_field_catalogue(RA0, DEC0, 0.2, tmp_path, server=dead_server, retries=1, backoff=0)
    assert list(tmp_path.iterdir()) == []


def test_client_errors_are_not_retried(vizier: FakeVizier, tmp_path: Path) -> None:
    vizier.always = 400
    with pytest.raises(RefcatError, match="HTTP 400"):
        fetch_field_catalogue(RA0, DEC0, 0.2, tmp_path, server=vizier.server, backoff=0.01)
    assert len(vizier.requests) == 1


def test_empty_field_is_an_error(vizier: FakeVizier, tmp_path: Path) -> None:
    with pytest.raises(RefcatError, match=r"no star for field RA 10\.0000 Dec -45\.0000"):
        fetch_field_catalogue(10.0, -45.0, 0.2, tmp_path, server=vizier.server)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_no_partial_file(
    vizier: FakeVizier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        fetch_field_catalogue(RA0, DEC0, 0.2, tmp_path, server=vizier.server)
    assert list(tmp_path.iterdir()) == []


def test_cache_key_is_filesystem_safe_and_covers_the_cone() -> None:
    assert (
        cached_catalogue_path(Path("c"), 359.99, -0.01, 0.2).name == "gaiadr3_0.00+0.00_r0.25.fits"
    )
    assert cached_catalogue_path(Path("c"), -12.0, -33.333, 1.0).name == (
        "gaiadr3_348.00-33.35_r1.05.fits"
    )
    assert cached_catalogue_path(Path("c"), 5, 89.99, 0.2, "II/246/out").name == (
        "ii_246_out_5.00+90.00_r0.25.fits"
    )
    rng = np.random.default_rng(1)
    for ra, dec, radius in zip(
        rng.uniform(0, 360, 500),
        rng.uniform(-90, 90, 500),
        rng.uniform(0.01, 1.0, 500),
        strict=True,
    ):
        name = cached_catalogue_path(Path("c"), ra, dec, radius).name
        found = re.fullmatch(r"gaiadr3_(\d+\.\d\d)([+-]\d+\.\d\d)_r(\d+\.\d\d)\.fits", name)
        assert found, name
        cra, cdec, cradius = (float(v) for v in found.groups())
        sep = angular_separation(cra * u.deg, cdec * u.deg, ra * u.deg, dec * u.deg)
        assert sep.to_value(u.deg) + radius <= cradius
