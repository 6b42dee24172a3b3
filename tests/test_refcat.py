"""Reference catalogues: any star table in, SCAMP's LDAC and astrometry.net indexes out."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from ar_tasks.refcat import (
    Catalogue,
    CatalogueError,
    angular_distance,
    build_index,
    load_catalogue,
    write_scamp_refcat,
    write_star_table,
)


def _stars(n: int = 300, seed: int = 1) -> Catalogue:
    rng = np.random.default_rng(seed)
    return Catalogue(
        132.8 + rng.uniform(-0.2, 0.2, n), 11.8 + rng.uniform(-0.2, 0.2, n),
        rng.uniform(12, 19, n), "test",
    )  # fmt: skip


def test_scamp_refcat_has_the_ldac_layout_scamp_reads(tmp_path):
    stars = _stars()
    path = write_scamp_refcat(tmp_path / "ref.ldac", stars)
    with fits.open(path) as hdus:
        assert [h.name for h in hdus] == ["PRIMARY", "LDAC_IMHEAD", "LDAC_OBJECTS"]
        objects = hdus["LDAC_OBJECTS"]
        assert objects.columns["X_WORLD"].format == "D" and objects.columns["MAG"].format == "E"
        assert objects.data["ERRA_WORLD"][0] == pytest.approx(0.05 / 3600)  # degrees
        raw = np.asarray(hdus["LDAC_IMHEAD"].data).tobytes().decode()
        assert raw.rstrip().endswith("END") and len(raw) % 80 == 0
    back = load_catalogue(path)
    assert np.allclose(back.ra, stars.ra) and np.allclose(back.mag, stars.mag, atol=1e-5)


def test_cone_cut_and_unreadable_tables(tmp_path):
    stars = _stars()
    cut = stars.cone(132.8, 11.8, 0.1)
    assert 0 < len(cut) < len(stars)
    assert np.all(angular_distance(cut.ra, cut.dec, 132.8, 11.8) <= 0.1)
    assert angular_distance(np.array([0.0]), np.array([0.0]), 0.0, 1 / 3600)[0] * 3600 == (
        pytest.approx(1.0)
    )
    bad = tmp_path / "bad.fits"
    fits.BinTableHDU.from_columns([fits.Column(name="X", format="D", array=[1.0])]).writeto(bad)
    with pytest.raises(CatalogueError, match="no table with RA"):
        load_catalogue(bad)
    with pytest.raises(CatalogueError, match="cannot read"):
        load_catalogue(tmp_path / "absent.fits")


def test_index_build_is_fast_and_local(tmp_path):
    folder = build_index(_stars(), tmp_path / "index", scales=(1, 2))
    assert sorted(p.name for p in folder.glob("index-*.fits")) == [
        "index-990001.fits",
        "index-990002.fits",
    ]
    assert not (folder / "stars.fits").exists()
    write_star_table(tmp_path / "t.fits", _stars(10))
    assert len(load_catalogue(tmp_path / "t.fits")) == 10
