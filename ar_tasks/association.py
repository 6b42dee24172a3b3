"""Which master a night borrows when it cannot make one itself: the association rules alone.

Pure functions on small records, so each rule is tested on its own: a master offered by
another night of the archive (an Offer) serves a night's need (a Need) when it is the same kind
of calibration for the same thing (a dark of the same exposure, a flat of the same filter), was
made with the same camera set-up (frame shape, binning, INSTRUME, CCD set-point where headers
give them), is not listed or known as bad, and lies within the kind's window of the night in
time (|Δ DATE-OBS| of the master's inputs and of the night's science frames, never file
dates). The nearest wins; at equal distance the earlier night (calibrations taken before the
science), then the night's name. LCO's BANZAI takes the nearest without a limit; Gemini's
DRAGONS uses symmetric windows per kind: so do we (see Windows for the defaults and why).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

DAY_S = 86400.0


@dataclass(frozen=True)
class Windows:
    """How far in time a master may be borrowed from, per kind (days; 0: never borrowed).

    Darks ±90 d: the T120's darks hold its bias, and the bias of a CCD kept at its set-point
    (−80 °C on the T120, where the dark current itself is negligible) moves by a few ADU over
    months and after every warm-up of the camera: DRAGONS uses ±90 d for bias frames.
    Flats ±30 d: dust on the filters and the window moves whenever the filter wheel or the
    camera is handled, and its shadows change the flat by percents; DRAGONS's ±180 d is for
    twilight flats of a closed instrument. `past_only`: only nights before this one (a
    scheduled run, which must not depend on nights still to come).
    """

    dark_days: float = 90.0
    flat_days: float = 30.0
    past_only: bool = False

    def days(self, kind: str) -> float:
        return self.dark_days if kind == "dark" else self.flat_days

    def provenance(self) -> dict[str, float]:
        return {"dark_days": self.dark_days, "flat_days": self.flat_days}


@dataclass(frozen=True)
class Setup:
    """What the frames of a master and the frames it calibrates must share (empty: unknown,
    which matches anything: older headers do not say)."""

    shape: tuple[int, int]
    binning: str = ""
    instrument: str = ""
    set_temp: float | None = None

    def mismatch(self, other: Setup) -> str:
        """The first difference that forbids using one's master on the other ("" if none)."""
        if tuple(self.shape) != tuple(other.shape):
            return f"frames of {_size(other.shape)} (not {_size(self.shape)})"
        for name in ("binning", "instrument"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine and theirs and mine != theirs:
                return f"{name} {theirs!r} (not {mine!r})"
        temps = (self.set_temp, other.set_temp)
        if None not in temps and abs(temps[0] - temps[1]) >= 0.5:  # type: ignore[operator]
            return f"CCD set-point {other.set_temp:g} °C (not {self.set_temp:g} °C)"
        return ""


@dataclass(frozen=True)
class Need:
    """A master a night needs and cannot make: a dark for an exposure or a flat for a filter."""

    kind: str  # "dark" or "flat"
    exposure_ms: int = 0
    filter: str = ""

    @property
    def name(self) -> str:
        """The master's astro_reduce name: mdark_<ms> or mtrans_<filter>."""
        return f"mdark_{self.exposure_ms}" if self.kind == "dark" else f"mtrans_{self.filter}"

    def describe(self) -> str:
        if self.kind == "dark":
            return f"master dark of {self.exposure_ms / 1000:g} s"
        return f"master flat in filter {self.filter}"

    @classmethod
    def parse(cls, name: str) -> Need:
        if name.startswith("mdark_"):
            return cls("dark", exposure_ms=int(name.removeprefix("mdark_")))
        return cls("flat", filter=name.removeprefix("mtrans_"))


@dataclass(frozen=True)
class Offer:
    """A master another night can make from its own raw calibration frames."""

    night: str
    name: str  # mdark_<ms> or mtrans_<filter>
    key: str  # the master's provenance key (its ARKEY once made)
    date_obs: str  # mean DATE-OBS of its inputs
    setup: Setup
    frames: int
    how: str = "measured"  # or "interpolated" (the night's dark line)
    bad: str = ""  # why it must not be used ("" when it may)


@dataclass(frozen=True)
class Candidate:
    offer: Offer
    days: float  # |Δ DATE-OBS| in days

    def describe(self) -> str:
        how = "" if self.offer.how == "measured" else f" ({self.offer.how})"
        return f"{self.offer.night}{how}, {self.days:.2f} d away"


@dataclass
class Search:
    """The answer for one need: its candidates, best first, and what was looked at."""

    need: Need
    candidates: list[Candidate] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # nearby offers that did not qualify

    def failure(self, where: str, windows: Windows) -> str:
        """The clear failure of a need nothing qualifies for: what, where, what was seen."""
        days = windows.days(self.need.kind)
        side = "before this night " if windows.past_only else ""
        text = (
            f"No {self.need.describe()} on this night, and no usable one within "
            f"±{days:g} d {side}in {where}"
        )
        if self.refused:
            text += (
                f" (seen: {'; '.join(self.refused[:4])}{' ...' if len(self.refused) > 4 else ''})"
            )
        return text + "."


def parse_date_obs(text: str) -> dt.datetime | None:
    """DATE-OBS as a naive UT datetime (ISO, with or without a fraction or a Z), or None."""
    try:
        moment = dt.datetime.fromisoformat(str(text).strip().removesuffix("Z"))
    except ValueError:
        return None
    return moment.replace(tzinfo=None) if moment.tzinfo else moment


def mean_date_obs(dates: Iterable[str]) -> str:
    """The mean of DATE-OBS values (ISO, milliseconds); "" when none can be read."""
    moments = [m for m in map(parse_date_obs, dates) if m is not None]
    if not moments:
        return ""
    origin = moments[0]
    offset = sum((m - origin).total_seconds() for m in moments) / len(moments)
    return (origin + dt.timedelta(seconds=offset)).isoformat(timespec="milliseconds")


def days_between(first: str, second: str) -> float | None:
    """|first - second| in days, or None when either date cannot be read."""
    a, b = parse_date_obs(first), parse_date_obs(second)
    if a is None or b is None:
        return None
    return abs((a - b).total_seconds()) / DAY_S


def search(
    need: Need,
    offers: Sequence[Offer],
    night: str,
    when: str,
    setup: Setup,
    windows: Windows,
    bad: frozenset[tuple[str, str]] = frozenset(),
) -> Search:
    """Every offer that may serve `need` of night `night` (its science at `when`), nearest
    first; the others seen nearby are named with why not, for the failure message."""
    found = Search(need)
    limit = windows.days(need.kind)
    for offer in offers:
        if offer.name != need.name or offer.night == night:
            continue
        days = days_between(offer.date_obs, when)
        if days is None:
            found.refused.append(f"{offer.night}: no readable DATE-OBS")
            continue
        later = offer.night > night if offer.night and night else offer.date_obs > when
        if limit <= 0 or days > limit or (windows.past_only and later):
            continue  # outside the window: not worth naming
        reason = offer.bad or ("listed as bad" if (offer.night, offer.name) in bad else "")
        reason = reason or setup.mismatch(offer.setup)
        if reason:
            found.refused.append(f"{offer.night} {offer.name}: {reason}")
            continue
        found.candidates.append(Candidate(offer, round(days, 4)))
    # Nearest; then the earlier night; then measured before interpolated; then by name.
    found.candidates.sort(
        key=lambda c: (c.days, c.offer.date_obs, c.offer.how != "measured", c.offer.night)
    )
    return found


def identity(chosen: dict[str, Candidate]) -> dict[str, Any]:
    """What a night key holds of its borrowed masters: each one's night and key."""
    return {name: [c.offer.night, c.offer.key] for name, c in sorted(chosen.items())}


def _size(shape: Sequence[int]) -> str:
    return f"{shape[1]}x{shape[0]} px" if len(shape) == 2 else str(shape)
