"""The astrometry switches imply each other as astro_reduce's README says (not as 5.1.3 ran)."""

from __future__ import annotations

import pytest

from ar_tasks.astrometry import AstrometryOptions


def _steps(options: AstrometryOptions) -> tuple:
    return (options.sex, options.psfex, options.sexagain, options.scamp, options.solver)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({}, (False, False, False, False, None)),  # cosmetic only: 5.1.3 had no such mode
        ({"sex": True}, (True, False, False, False, None)),
        ({"psfex": True}, (True, True, False, False, None)),
        ({"sexagain": True}, (True, True, True, False, None)),
        ({"scamp": True}, (True, False, False, True, "SCAMP")),
        ({"astromatic": True}, (True, True, True, True, "SCAMP")),
        ({"astromatic": True, "local": True}, (True, False, False, False, "astrometry.net local")),
        ({"local": True, "forceimg": True}, (False, False, False, False, "astrometry.net local")),
        ({"online": True}, (True, False, False, False, "astrometry.net online")),
        ({"local": True, "online": True, "sexagain": True},
         (True, True, True, False, "astrometry.net local, then online")),
    ],
)  # fmt: skip
def test_flag_implications(flags, expected):
    assert _steps(AstrometryOptions.from_flags(**flags)) == expected


def test_dag_modes_and_environment_defaults(monkeypatch):
    monkeypatch.setenv("AR_REFCAT", "/data/refs.fits")
    options = AstrometryOptions.from_mode("astromatic")
    assert options.solver == "SCAMP" and options.refcat == "/data/refs.fits"
    assert not AstrometryOptions.from_mode("none").requested
    with pytest.raises(ValueError, match="not one of"):
        AstrometryOptions.from_mode("astrometry.net")


def test_the_api_key_never_shows(monkeypatch):
    from ar_tasks.anet_online import OnlineSettings

    settings = OnlineSettings(api_key="s3cr3t", server="http://127.0.0.1:9")
    options = AstrometryOptions.from_flags(online=True, online_settings=settings)
    assert "s3cr3t" not in repr(options) and "s3cr3t" not in repr(options.provenance())
