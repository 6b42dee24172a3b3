"""The DAG's night and group steps, called directly: selection, failure records, manifest."""

from __future__ import annotations

import json

import pytest

from ar_tasks import pipeline, steps


@pytest.fixture
def roots(small_archive, tmp_path):
    return str(small_archive), str(tmp_path / "products")


def test_objects_and_filters_restrict_the_groups(roots):
    raw, products = roots
    assert pipeline.inventory_night(raw, products, "2023-05-10")["frames"] == 51
    ready = pipeline.masters_night(
        raw, products, "2023-05-10", objects=["M 67"], filters=["V", "B"]
    )
    assert [g["name"] for g in ready["groups"]] == ["M-67_V_60000"]
    assert ready["groups"][0]["label"] == "2023-05-10 M-67 V 60s"


def test_group_failure_is_recorded_and_fails_the_night(roots, tmp_path):
    raw, products = roots
    pipeline.inventory_night(raw, products, "2023-05-10")
    pipeline.masters_night(raw, products, "2023-05-10", interpolate=False)  # 120 s: no darks
    done = pipeline.reduce_group(raw, products, "2023-05-10", "M-67_V_60000")
    assert done["combined"] == 3 and done["reused"] is False
    with pytest.raises(steps.StepError, match="Master files are missing"):
        pipeline.reduce_group(raw, products, "2023-05-10", "NGC-2420_V_120000")
    summary = pipeline.publish_night(raw, products, "2023-05-10", {"interpolate": False})
    assert summary["status"] == "failed"
    manifest = json.loads((tmp_path / "products" / "2023-05-10" / "manifest.json").read_text())
    assert manifest["groups"]["M-67_V_60000"]["status"] == "done"
    assert manifest["groups"]["NGC-2420_V_120000"]["status"] == "failed"
    assert any("120000ms" in p for p in manifest["problems"])
    assert manifest["parameters"] == {"interpolate": False}


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
