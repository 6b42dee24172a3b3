"""The DAG's stages of the night plan, called directly: selection, failure records, manifest."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ar_tasks import pipeline
from ar_tasks.steps import StepError

M67_V = {"object": "M-67", "filter": "V", "exposure_ms": 60000}


@pytest.fixture
def roots(small_archive, tmp_path):
    return str(small_archive), str(tmp_path / "products")


def test_objects_and_filters_restrict_the_groups(roots):
    raw, products = roots
    params = {"objects": ["M 67"], "filters": ["V", "B"]}
    ready = pipeline.prepare_night(raw, products, "2023-05-10", params)
    assert [g["group"] for g in ready["groups"]] == [M67_V]
    assert ready["groups"][0]["label"] == "2023-05-10 M-67 V 60s"
    assert ready["current"] is False and ready["solve"] is False


def test_group_failure_is_recorded_and_fails_the_night(roots, tmp_path):
    raw, products = roots
    params = {"interpolate": False}  # 120 s: no darks
    ready = pipeline.prepare_night(raw, products, "2023-05-10", params)
    assert M67_V in [g["group"] for g in ready["groups"]]
    assert len(ready["groups"]) == 2  # the 120 s groups are blocked: their records say why
    done = pipeline.reduce_group(raw, products, "2023-05-10", M67_V, params)
    assert done["combined"] == 3 and done["reused"] is False
    blocked = {"object": "NGC-2420", "filter": "V", "exposure_ms": 120000}
    with pytest.raises(StepError, match="Master files are missing"):
        pipeline.reduce_group(raw, products, "2023-05-10", blocked, params)
    summary = pipeline.publish_night(raw, products, "2023-05-10", params)
    assert summary["status"] == "failed"
    manifest = json.loads((tmp_path / "products" / "2023-05-10" / "manifest.json").read_text())
    assert manifest["groups"]["M-67_V_60000"]["status"] == "done"
    assert manifest["groups"]["NGC-2420_V_120000"]["status"] == "failed"
    assert any("120000ms" in p for p in manifest["problems"])
    assert manifest["parameters"] == params


def test_a_complete_night_is_current_on_rerun(roots):
    """Once a night is published as a success, preparing it again finds every product
    current and hands no group on; overwrite does the night again."""
    raw, products = roots
    params = {"objects": ["M 67"]}
    ready = pipeline.prepare_night(raw, products, "2023-05-10", params)
    for pair in ready["groups"]:
        pipeline.reduce_group(raw, products, "2023-05-10", pair["group"], params)
    assert pipeline.publish_night(raw, products, "2023-05-10", params)["status"] == "success"
    again = pipeline.prepare_night(raw, products, "2023-05-10", params)
    assert again == {"night": "2023-05-10", "current": True, "groups": [], "solve": False}
    other = pipeline.prepare_night(raw, products, "2023-05-10", {**params, "stack": False})
    assert other["current"] is False  # other params: another night key


def _reduce(raw: str, products: str, night: str, params: dict) -> dict:
    """The DAG's stages for one night, in order."""
    ready = pipeline.prepare_night(raw, products, night, params)
    for pair in ready["groups"]:
        pipeline.reduce_group(raw, products, night, pair["group"], params)
    return pipeline.publish_night(raw, products, night, params)


def test_the_cheap_check_sees_every_change(small_archive, tmp_path):
    """nights_to_reduce drops a current night without reading a frame, and hands on a night
    as soon as anything a product depends on may have changed: a frame's stamp, a new or
    replaced file (a quarantined one too), a missing product, other params, overwrite."""
    raw = tmp_path / "raw"
    shutil.copytree(small_archive, raw)
    products, night = str(tmp_path / "products"), "2023-05-10"
    params = {"objects": ["M 67"]}
    night_dir = raw / night

    def todo(**changed) -> list[str]:
        return pipeline.nights_to_reduce(str(raw), products, [night], {**params, **changed}).todo

    assert todo() == [night]  # never reduced
    assert _reduce(str(raw), products, night, params)["status"] == "success"
    assert todo() == [] and todo(overwrite=True) == [night] and todo(stack=False) == [night]

    frame = sorted((night_dir / "ORIGINAL").glob("*.fits"))[0]
    stat = frame.stat()
    os.utime(frame, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, touched
    assert todo() == [night]
    assert pipeline.prepare_night(str(raw), products, night, params)["current"] is True
    assert todo() == []  # the content check renewed the stamps

    (night_dir / "ORIGINAL" / "late.fits").write_bytes(frame.read_bytes()[:20000])
    (night_dir / "ORIGINAL" / "empty.fits").write_bytes(b"")  # a 0-byte file has a stamp too
    assert todo() == [night]
    assert _reduce(str(raw), products, night, params)["status"] == "success"
    assert todo() == []  # the truncated file is quarantined, and its stamp recorded
    shutil.copy2(frame, night_dir / "ORIGINAL" / "late.fits")  # replaced by a good frame
    assert todo() == [night]
    assert _reduce(str(raw), products, night, params)["status"] == "success"
    assert todo() == []

    stack = Path(products) / night / "stacked" / "M-67_V_60000.fits"
    stack.unlink()
    assert todo() == [night]


def test_a_night_without_calibrations_fails_with_its_reason(tmp_path):
    """Science frames only: prepared (no group is ready), published as failed with why."""
    from ar_tasks.synthetic import NightSpec, write_night

    raw = tmp_path / "raw"
    write_night(raw, NightSpec(size=128, frames_per_group=2))
    shutil.rmtree(raw / "2023-05-10" / "DARK")
    shutil.rmtree(raw / "2023-05-10" / "FLAT")
    products = str(tmp_path / "products")
    ready = pipeline.prepare_night(str(raw), products, "2023-05-10", {})
    assert ready["groups"] == []
    summary = pipeline.publish_night(str(raw), products, "2023-05-10", {})
    assert summary["status"] == "failed"
    # No other night in the archive: what was looked for, and where, is named.
    assert (
        f"No master dark of 60 s on this night, and no usable one within ±90 d in {raw}."
        in summary["problems"]
    )
    flats = f"No master flat in filter V on this night, and no usable one within ±30 d in {raw}."
    assert flats in summary["problems"]
    manifest = json.loads((tmp_path / "products" / "2023-05-10" / "manifest.json").read_text())
    assert all(g["status"] == "failed" for g in manifest["groups"].values())
    assert any("Did not find folder DARK" in w for w in manifest["warnings"])
    assert manifest["incomplete"] == []

    # Every task finished: a rerun would fail the same way, and the cheap check says so.
    choice = pipeline.nights_to_reduce(str(raw), products, ["2023-05-10"], {})
    assert choice.todo == [] and choice.failed == {"2023-05-10": manifest["problems"]}
    assert pipeline.nights_to_reduce(
        str(raw), products, ["2023-05-10"], {"overwrite": True}
    ).todo == ["2023-05-10"]
    (raw / "2023-05-10" / "DARK").mkdir()  # any change: tried again
    shutil.copy2(next((raw / "2023-05-10" / "ORIGINAL").iterdir()), raw / "2023-05-10" / "DARK")
    assert pipeline.nights_to_reduce(str(raw), products, ["2023-05-10"], {}).todo == ["2023-05-10"]


def test_a_group_whose_task_did_not_finish_leaves_the_night_to_do(roots, tmp_path):
    """A group task that never wrote its record (a killed worker, an S3 error): the manifest
    says the group did not finish, and the cheap check hands the night on again. A record of
    an earlier run cannot stand in for it: prepare_night forgets the records it will redo."""
    raw, products = roots
    params = {"objects": ["M 67"]}
    assert _reduce(raw, products, "2023-05-10", params)["status"] == "success"
    params["png"] = True  # other params: the night is done again
    ready = pipeline.prepare_night(raw, products, "2023-05-10", params)
    assert len(ready["groups"]) == 2
    for pair in ready["groups"][1:]:  # the first group's task "dies" before its record
        pipeline.reduce_group(raw, products, "2023-05-10", pair["group"], params)
    summary = pipeline.publish_night(raw, products, "2023-05-10", params)
    manifest = json.loads((tmp_path / "products" / "2023-05-10" / "manifest.json").read_text())
    name = "{object}_{filter}_{exposure_ms}".format(**ready["groups"][0]["group"])
    assert summary["status"] == "failed" and manifest["incomplete"] == [name]
    assert f"{name}: not reduced (its task did not finish; rerun it)" in manifest["problems"]
    choice = pipeline.nights_to_reduce(raw, products, ["2023-05-10"], params)
    assert choice.todo == ["2023-05-10"] and choice.failed == {}


def test_a_failed_setup_still_gets_a_manifest(tmp_path):
    """A folder that is not a night: prepare fails, publish says why in the manifest."""
    (tmp_path / "raw" / "2023-05-10" / "notes").mkdir(parents=True)
    raw, products = str(tmp_path / "raw"), str(tmp_path / "products")
    with pytest.raises(StepError, match="not a night folder"):
        pipeline.prepare_night(raw, products, "2023-05-10", {})
    summary = pipeline.publish_night(raw, products, "2023-05-10", {})
    assert summary["status"] == "failed"
    assert "not a night folder" in summary["problems"][0]


@pytest.mark.parametrize(
    ("raw", "products", "message"),
    [("/raw", "s3:///x", "no bucket"), ("raw", "/p", "absolute")],
)
def test_unusable_roots_are_refused(raw, products, message):
    with pytest.raises(ValueError, match=message):
        pipeline.check_roots(raw, products)


def test_a_missing_bucket_is_named_before_any_work(s3):
    from ar_tasks.storage import StorageError

    with pytest.raises(StorageError, match=r"s3://no-such-bucket/products: (NoSuchBucket|404)"):
        pipeline.check_roots("/raw", "s3://no-such-bucket/products")
