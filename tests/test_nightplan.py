"""The night plan: its tasks and their needs, and provenance keys that know the code."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from ar_tasks import masters, registration
from ar_tasks.layout import NightLayout
from ar_tasks.nightplan import STAGES, NightPlan, ReductionOptions
from ar_tasks.provenance import KEY_KEYWORD, code_identity
from ar_tasks.steps import load_inventory, setup_night
from ar_tasks.synthetic import NightSpec, write_night


@pytest.fixture
def night(small_archive, tmp_path) -> NightLayout:
    folder = shutil.copytree(small_archive / "2023-05-10", tmp_path / "2023-05-10")
    layout = NightLayout.in_place(folder)
    setup_night(layout)
    return layout


def _reduce(layout: NightLayout) -> None:
    plan = NightPlan.build(load_inventory(layout), ReductionOptions(interpolate=True))
    plan.run(plan.start(layout), STAGES, jobs=2)


def _products(layout: NightLayout) -> dict[str, tuple[str, int]]:
    """Each FITS product's provenance key and modification time."""
    from ar_tasks.fitsio import read_header

    return {
        str(p.relative_to(layout.out_dir)): (read_header(p)[KEY_KEYWORD], p.stat().st_mtime_ns)
        for folder in ("ar_masters", "ar_cosmetic", "stacked")
        for p in sorted((layout.out_dir / folder).glob("*.fits"))
    }


def _changed(before: dict, after: dict) -> set[str]:
    assert set(before) == set(after)
    return {path for path in before if before[path] != after[path]}


def test_the_plan_lists_each_task_with_what_it_needs(night):
    plan = NightPlan.build(load_inventory(night), ReductionOptions(interpolate=True))
    tasks = plan.tasks
    assert tasks["interpolation"].needs == ("dark 5000", "dark 60000", "dark 180000")
    assert tasks["flat B"].needs == ("interpolation",)  # 10 s flats: an interpolated dark
    assert tasks["calibrate NGC-2420_V_120000"].needs == ("interpolation", "flat V")
    assert tasks["combine M-67_V_60000"].needs == ("register M-67_V_60000",)
    assert "solve M-67_V_60000" not in tasks  # no astrometry asked
    reads = plan.reads(["group"], tasks["calibrate M-67_V_60000"].group)
    assert set(reads.raw) == {f.path for f in load_inventory(night).groups()[
        tasks["calibrate M-67_V_60000"].group]}  # fmt: skip
    assert "ar_masters/mdark_60000.*" in reads.products
    assert not [p for p in reads.products if "mtrans_B" in p or "mdark_120000" in p]


def test_a_changed_constant_recomputes_exactly_what_depends_on_it(night, monkeypatch):
    """The flat's response floor changes the master flats and everything made from them (aux
    frames, stacks), never the darks; a registration constant changes only the stacks."""
    _reduce(night)
    first = _products(night)
    _reduce(night)
    assert _changed(first, _products(night)) == set()  # same code, same constants: all reused
    monkeypatch.setattr(masters, "FLAT_MIN_RESPONSE", 0.06)
    _reduce(night)
    second = _products(night)
    changed = _changed(first, second)
    assert changed == {p for p in first if not p.startswith("ar_masters/mdark_")}
    assert {p for p in changed if p.startswith("ar_masters/")} == {
        "ar_masters/mtrans_B.fits",
        "ar_masters/mtrans_R.fits",
        "ar_masters/mtrans_V.fits",
    }
    monkeypatch.setattr(registration, "DETECTION_SIGMA", registration.DETECTION_SIGMA + 0.5)
    _reduce(night)
    assert _changed(second, _products(night)) == {p for p in first if p.startswith("stacked/")}


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_code_identity_changes_with_the_functions_source_only(tmp_path):
    """A fix to a function's body changes its identity (the products it makes are remade);
    a module constant does not (the steps list the constants they read as parameters)."""
    source = tmp_path / "algorithm_v1.py"
    source.write_text("LIMIT = 1\n\ndef clip(x):\n    return min(x, LIMIT)\n")
    original = code_identity(_load(source, "algorithm_v1").clip)
    source.write_text("LIMIT = 2\n\ndef clip(x):\n    return min(x, LIMIT)\n")
    assert code_identity(_load(source, "algorithm_v1b").clip) == original
    source.write_text("LIMIT = 2\n\ndef clip(x):\n    return max(min(x, LIMIT), 0)\n")
    assert code_identity(_load(source, "algorithm_v1c").clip) != original


def test_a_night_with_science_frames_only_plans_no_master(tmp_path):
    night = write_night(tmp_path, NightSpec(size=64, frames_per_group=2))
    shutil.rmtree(night / "DARK")
    shutil.rmtree(night / "FLAT")
    layout = NightLayout.in_place(night)
    setup_night(layout)
    plan = NightPlan.build(load_inventory(layout), ReductionOptions(interpolate=True))
    assert not [t for t in plan.tasks if t.startswith(("dark", "flat", "interpolation"))]
    run = plan.run(plan.start(layout), STAGES)
    assert "There are no dark files at all! Cannot calibrate or interpolate." in run.records[
        "masters"]["problems"]  # fmt: skip
    assert all(
        r["status"] == "failed" and "Master files are missing" in r["error"]
        for name, r in run.records.items()
        if name.startswith("group_")
    )
