"""The association rules alone: which other night's master serves a need, and why not."""

from __future__ import annotations

import pytest

from ar_tasks.association import (
    Need,
    Offer,
    Setup,
    Windows,
    days_between,
    identity,
    mean_date_obs,
    search,
)

NIGHT = "2023-05-10"
WHEN = "2023-05-11T00:00:00.000"  # the night's science, around midnight UT
SETUP = Setup((1024, 1024), "2x2", "Andor iKon-L 936", -80.0)
FLAT_V = Need("flat", filter="V")


def offer(night: str, hours: float = 19.5, name: str = "mtrans_V", **changes) -> Offer:
    """A master of `night` whose inputs were taken at `hours` UT on that date."""
    whole = int(hours)
    minutes = round((hours - whole) * 60)
    fields = {
        "night": night,
        "name": name,
        "key": f"key-{night}-{name}",
        "date_obs": f"{night}T{whole:02d}:{minutes:02d}:00.000",
        "setup": SETUP,
        "frames": 7,
    }
    return Offer(**(fields | changes))


def nights(found) -> list[str]:
    return [c.offer.night for c in found.candidates]


def test_the_nearest_night_wins_whether_before_or_after():
    offers = [offer("2023-05-06"), offer("2023-05-12"), offer("2023-05-09")]
    found = search(FLAT_V, offers, NIGHT, WHEN, SETUP, Windows())
    assert nights(found) == ["2023-05-09", "2023-05-12", "2023-05-06"]
    assert found.candidates[0].days == pytest.approx(1 + 4.5 / 24, abs=1e-4)  # 9th 19:30 -> 11th
    later = search(
        FLAT_V, [offer("2023-05-06"), offer("2023-05-11")], NIGHT, WHEN, SETUP, Windows()
    )
    assert nights(later)[0] == "2023-05-11"  # 19.5 h after the science: nearer than 4.8 d before


def test_equal_distances_go_to_the_earlier_night():
    # 12:00 UT on the 10th and 12:00 UT on the 11th are both 12 h from midnight.
    offers = [offer("2023-05-11", hours=12), offer("2023-05-10", hours=12)]
    found = search(FLAT_V, offers, "2023-05-09", WHEN, SETUP, Windows())
    assert [c.days for c in found.candidates] == [0.5, 0.5]
    assert nights(found) == ["2023-05-10", "2023-05-11"]
    # And whatever order the archive lists them in.
    assert nights(search(FLAT_V, offers[::-1], "2023-05-09", WHEN, SETUP, Windows())) == nights(
        found
    )


def test_windows_per_kind_and_past_only():
    far = offer("2023-04-01")  # 39.8 d before
    assert nights(search(FLAT_V, [far], NIGHT, WHEN, SETUP, Windows())) == []
    assert nights(search(FLAT_V, [far], NIGHT, WHEN, SETUP, Windows(flat_days=45))) == [
        "2023-04-01"
    ]
    dark = offer("2023-04-01", name="mdark_60000")
    need = Need("dark", exposure_ms=60000)
    assert nights(search(need, [dark], NIGHT, WHEN, SETUP, Windows())) == ["2023-04-01"]
    assert nights(search(need, [dark], NIGHT, WHEN, SETUP, Windows(dark_days=0))) == []
    both = [offer("2023-05-11"), offer("2023-05-08")]
    assert nights(search(FLAT_V, both, NIGHT, WHEN, SETUP, Windows(past_only=True))) == [
        "2023-05-08"
    ]


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (Setup((512, 512), "2x2", "Andor iKon-L 936", -80.0), "frames of 512x512 px"),
        (Setup((1024, 1024), "1x1", "Andor iKon-L 936", -80.0), "binning '1x1'"),
        (Setup((1024, 1024), "2x2", "FLI PL230", -80.0), "instrument 'FLI PL230'"),
        (Setup((1024, 1024), "2x2", "Andor iKon-L 936", -60.0), "CCD set-point -60 °C"),
    ],
)
def test_another_camera_setup_is_refused_with_its_reason(setup, reason):
    found = search(FLAT_V, [offer("2023-05-09", setup=setup)], NIGHT, WHEN, SETUP, Windows())
    assert found.candidates == []
    assert len(found.refused) == 1 and reason in found.refused[0]
    assert "2023-05-09 mtrans_V" in found.refused[0]


def test_unknown_setup_fields_do_not_refuse():
    bare = Setup((1024, 1024))
    found = search(FLAT_V, [offer("2023-05-09", setup=bare)], NIGHT, WHEN, SETUP, Windows())
    assert nights(found) == ["2023-05-09"]


def test_bad_masters_are_skipped_for_the_next_one():
    offers = [offer("2023-05-09"), offer("2023-05-06"), offer("2023-05-08", bad="fails its QC")]
    listed = frozenset({("2023-05-09", "mtrans_V")})
    found = search(FLAT_V, offers, NIGHT, WHEN, SETUP, Windows(), listed)
    assert nights(found) == ["2023-05-06"]
    assert any("listed as bad" in r for r in found.refused)
    assert any("fails its QC" in r for r in found.refused)


def test_the_failure_names_what_was_looked_for_where_and_what_was_seen():
    found = search(FLAT_V, [offer("2023-05-09", bad="fails its QC")], NIGHT, WHEN, SETUP, Windows())
    message = found.failure("s3://t120/raw", Windows())
    assert message.startswith("No master flat in filter V on this night, and no usable one")
    assert "±30 d in s3://t120/raw" in message and "2023-05-09 mtrans_V: fails its QC" in message
    dark = Need("dark", exposure_ms=120000)
    assert "master dark of 120 s" in search(dark, [], NIGHT, WHEN, SETUP, Windows()).failure(
        "/raw", Windows(past_only=True)
    )


def test_only_the_same_master_and_never_the_night_itself():
    offers = [offer(NIGHT), offer("2023-05-09", name="mtrans_R"), offer("2023-05-09")]
    assert nights(search(FLAT_V, offers, NIGHT, WHEN, SETUP, Windows())) == ["2023-05-09"]


def test_dates():
    assert mean_date_obs(["2023-05-10T23:00:00", "2023-05-11T01:00:00.000Z"]) == (
        "2023-05-11T00:00:00.000"
    )
    assert mean_date_obs(["garbage", ""]) == ""
    assert days_between("2023-05-10T12:00:00", "2023-05-11T00:00:00") == 0.5
    assert days_between("2023-05-10", "not a date") is None


def test_identity_names_each_borrowed_master_by_night_and_key():
    found = search(FLAT_V, [offer("2023-05-09")], NIGHT, WHEN, SETUP, Windows())
    assert identity({"mtrans_V": found.candidates[0]}) == {
        "mtrans_V": ["2023-05-09", "key-2023-05-09-mtrans_V"]
    }
