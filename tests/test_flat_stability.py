"""Flat stability against truth: a filter that picks up dust shows in its night's comparison
with the archive's previous flat, and in the trends; clean nights stay at the noise."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ar_tasks import flat_stability, night_index, pipeline, trends
from ar_tasks.synthetic import NightSpec, ScienceGroup, write_night

PARAMS = {"png": False, "interpolate": True}
NIGHTS = ("2023-05-08", "2023-05-09", "2023-05-10")


def test_change_of_flats_on_arrays():
    rng = np.random.default_rng(0)
    flat = 1 + 0.003 * rng.standard_normal((256, 256))
    same = flat * (1 + 0.003 * rng.standard_normal(flat.shape))
    assert flat_stability.change(flat, same)["rms"] == pytest.approx(0.003, rel=0.1)
    dusty = same.copy()
    dusty[100:110, 100:110] *= 0.95  # 0.2% of the central half, 5% deep
    clean, dust = flat_stability.change(flat, same), flat_stability.change(flat, dusty)
    assert dust["rms"] == pytest.approx(clean["rms"], rel=0.05)  # the scatter barely moves
    assert dust["p999"] > 3 * clean["p999"]  # the tail does
    with pytest.raises(ValueError, match="shape"):
        flat_stability.change(flat, flat[:10])


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Three nights of one camera reduced as the DAG's tasks do; the last night's filter
    has gathered a dust donut 5% deep (the camera's own donuts are 2-5%)."""
    root = tmp_path_factory.mktemp("flats")
    raw, products = root / "raw", root / "products"
    base = NightSpec(
        size=256,
        darks=((60.0, 3),),
        flats=(("V", 5.0, 5),),
        science=(ScienceGroup("M 67", "V", 60.0, 2),),
    )
    for night in NIGHTS:
        spec = dataclasses.replace(base, night=night, new_dust=0.05 if night == NIGHTS[2] else 0)
        write_night(raw, spec)
        ready = pipeline.prepare_night(str(raw), str(products), night, PARAMS)
        for pair in ready["groups"]:
            pipeline.reduce_group(str(raw), str(products), night, pair["group"], PARAMS)
        pipeline.publish_night(str(raw), str(products), night, PARAMS)
    return products


def test_each_flat_is_compared_with_the_previous_night_and_dust_shows(archive):
    entries = {e["night"]: e for e in night_index.read_index(str(archive))}
    assert entries[NIGHTS[0]]["flats"]["V"]["vs_previous"] is None  # the first flat
    second = entries[NIGHTS[1]]["flats"]["V"]["vs_previous"]
    third = entries[NIGHTS[2]]["flats"]["V"]["vs_previous"]
    assert second["night"] == NIGHTS[0] and third["night"] == NIGHTS[1]
    # Two clean nights differ by the master flats' own noise (5 flats of ~25k ADU: ~0.4%).
    assert second["rms"] < 0.01
    assert third["p999"] > 2 * second["p999"]  # the new dust donut
    data = trends.series(entries.values())
    assert [n for n, _ in data["flat_change"]["V"]] == list(NIGHTS[1:])
