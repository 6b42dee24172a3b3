"""Which night a run reduces (Europe/Paris noon to noon, across DST) and which nights exist."""

from __future__ import annotations

import datetime as dt

import pytest

from ar_tasks import nights

UTC = dt.UTC


@pytest.mark.parametrize(
    ("moment", "night"),
    [
        (dt.datetime(2023, 5, 10, 10, 0, tzinfo=UTC), "2023-05-10"),  # noon CEST: night starts
        (dt.datetime(2023, 5, 10, 9, 59, tzinfo=UTC), "2023-05-09"),
        (dt.datetime(2023, 5, 11, 2, 0, tzinfo=UTC), "2023-05-10"),  # after midnight
        (dt.datetime(2023, 1, 10, 11, 0, tzinfo=UTC), "2023-01-10"),  # noon CET
        (dt.datetime(2023, 3, 26, 10, 0, tzinfo=UTC), "2023-03-26"),  # DST starts that night
        (dt.datetime(2023, 10, 29, 11, 0, tzinfo=UTC), "2023-10-29"),  # DST ends that night
    ],
)
def test_night_of(moment, night):
    assert nights.night_of(moment) == night


def test_last_complete_night():
    assert nights.last_complete_night(dt.datetime(2023, 5, 11, 10, 0, tzinfo=UTC)) == "2023-05-10"
    assert nights.last_complete_night(dt.datetime(2023, 5, 11, 9, 0, tzinfo=UTC)) == "2023-05-09"


def test_night_range_and_errors():
    assert nights.night_range("2024-02-28", "2024-03-01") == [
        "2024-02-28",
        "2024-02-29",
        "2024-03-01",
    ]
    with pytest.raises(ValueError, match="before"):
        nights.night_range("2024-03-02", "2024-03-01")
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        nights.parse_night("2024/03/01")


def test_nights_with_raw_data(tmp_path):
    for night, content in (
        ("2023-05-10", "DARK/d.fits"),
        ("2023-05-11", None),
        ("2023-05-12", "FLAT/x.txt"),
    ):
        folder = tmp_path / night
        folder.mkdir()
        if content:
            (folder / content).parent.mkdir()
            (folder / content).write_bytes(b"")
    (tmp_path / "_truth").mkdir()
    assert nights.nights_with_raw_data(tmp_path, "2023-05-01", "2023-05-31") == ["2023-05-10"]
    with pytest.raises(FileNotFoundError, match="raw root"):
        nights.nights_with_raw_data(tmp_path / "absent", "2023-05-01", "2023-05-02")
