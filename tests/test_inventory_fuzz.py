"""The inventory against damaged files: whatever the damage, it never raises and names every
file it leaves out (a property test: hypothesis mutates valid FITS files)."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ar_tasks.inventory import take_inventory


def _frame_bytes(kind: str) -> bytes:
    """A valid 64x64 science frame: plain FITS, gzip-compressed, or fpack (tile-compressed)."""
    data = np.random.default_rng(7).integers(200, 40000, (64, 64)).astype(np.uint16)
    header = fits.Header(
        {"EXPTIME": 60.0, "FILTER": "V", "OBJECT": "M 67", "DATE-OBS": "2023-05-10T23:00:00"}
    )
    stream = io.BytesIO()
    if kind == "fz":
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header)]).writeto(stream)
    else:
        fits.PrimaryHDU(data, header).writeto(stream)
    raw = stream.getvalue()
    return gzip.compress(raw, mtime=0) if kind == "gz" else raw


BASES = {kind: _frame_bytes(kind) for kind in ("plain", "gz", "fz")}
SUFFIX = {"plain": ".fits", "gz": ".fits.gz", "fz": ".fits.fz"}


@st.composite
def damaged(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(sorted(BASES)))
    raw = bytearray(BASES[kind])
    how = draw(st.sampled_from(["truncate", "flip header", "flip data", "flip anywhere"]))
    if how == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    else:
        low, high = {"flip header": (0, 2880), "flip data": (2880, len(raw))}.get(
            how, (0, len(raw))
        )
        high = min(high, len(raw))
        for _ in range(draw(st.integers(1, 24))):
            raw[draw(st.integers(low, high - 1))] = draw(st.integers(0, 255))
    return SUFFIX[kind], bytes(raw)


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "2023-05-10"
    (root / "ORIGINAL").mkdir(parents=True)
    return root


def test_valid_bases_are_frames(night: Path) -> None:
    for kind, raw in BASES.items():
        for old in (night / "ORIGINAL").iterdir():
            old.unlink()
        (night / "ORIGINAL" / f"good{SUFFIX[kind]}").write_bytes(raw)
        inventory = take_inventory(night, jobs=1)
        assert [f.path for f in inventory.frames] == [f"ORIGINAL/good{SUFFIX[kind]}"], kind


@settings(
    max_examples=300,
    deadline=None,  # no timing: the machine may be loaded
    derandomize=True,  # the same examples on every machine, so CI repeats what was run here
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(damaged())
def test_damaged_files_never_raise_and_are_named(night: Path, case: tuple[str, bytes]) -> None:
    suffix, raw = case
    for old in (night / "ORIGINAL").iterdir():
        old.unlink()
    name = f"ORIGINAL/frame{suffix}"
    (night / name).write_bytes(raw)
    inventory = take_inventory(night, jobs=1)  # never raises
    kept = [f.path for f in inventory.frames]
    left_out = {p.path: p.reason for p in inventory.quarantined}
    assert kept == [name] or (kept == [] and list(left_out) == [name]), (kept, left_out)
    if left_out:
        assert left_out[name].strip(), "a file left out must say why"
        assert "Traceback" not in left_out[name]
