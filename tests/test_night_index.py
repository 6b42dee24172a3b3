"""The archive's night index: entries from manifests, written once per change, read back."""

from __future__ import annotations

import json
import logging

from ar_tasks import night_index

MANIFEST = {
    "night": "2023-05-12",
    "status": "failed",
    "night_key": "k" * 64,
    "inputs": [{"kind": "object"}] * 6 + [{"kind": "flat"}] * 2,
    "quarantined": [{"path": "ORIGINAL/truncated.fits", "reason": "is truncated"}],
    "warnings": ["no DARK folder"],
    "problems": ["M-67_R_60000: every frame is left out of the stack (...)"],
    "calibrations": {"borrowed": {"mdark_60000": {"night": "2023-05-10", "days": 2.1}}},
    "masters": {
        "darks": {},
        "flats": {"V": {"file": "ar_masters/mtrans_V.fits", "noise": 0.003, "level_adu": None}},
    },
    "groups": {
        "M-67_V_60000": {
            "status": "done",
            "stack": {
                "combined": 2,
                "left_out": [{"path": "ORIGINAL/c.fits", "reason": "transparency 0.31 ..."}],
                "qc": [
                    {"sky": 180.0, "fwhm_arcsec": 2.9, "stacked": True},
                    {"sky": 186.0, "fwhm_arcsec": 3.1, "stacked": True},
                    {"sky": 400.0, "fwhm_arcsec": 6.0, "stacked": False},
                ],
            },
        },
        "M-67_R_60000": {"status": "failed", "error": "every frame is left out"},
    },
    "astrometry": {"M-67_V_60000": {"images": [{"status": "solved"}, {"status": "failed"}]}},
    "qc_figure": "qc_frames.png",
    "airflow_run": {"dag_id": "t120_reduce", "run_id": "manual__2023-05-13"},
}


def test_an_entry_holds_what_a_listing_and_a_trend_need():
    entry = night_index.summarise(MANIFEST)
    assert entry == {
        "schema": 1,
        "night": "2023-05-12",
        "status": "failed",
        "night_key": "k" * 64,
        "frames": {"dark": 0, "flat": 2, "object": 6},
        "quarantined": 1,
        "rejected": 1,
        "groups": 2,
        "groups_failed": 1,
        "stacks": 1,
        "solved": [1, 2],
        "borrowed": {"mdark_60000": "2023-05-10"},
        "problems": 1,
        "problem": "M-67_R_60000: every frame is left out of the stack (...)",
        "warnings": 1,
        "fwhm_arcsec": 3.0,  # the stacked frames' median only
        "sky_adu_s": {"V": 3.05},  # (180 + 186) / 2 ADU in 60 s
        "darks": {},
        "flats": {"V": {"noise": 0.003, "vs_previous": None}},
        "qc_figure": "qc_frames.png",
        "airflow_run": {"dag_id": "t120_reduce", "run_id": "manual__2023-05-13"},
    }
    assert len(json.dumps(entry)) < 1500
    # A night that failed before its inventory has a manifest of a few fields: still an entry.
    short = night_index.summarise({"night": "2023-05-13", "status": "failed", "problems": ["x"]})
    assert short["status"] == "failed" and short["groups"] == 0 and short["fwhm_arcsec"] is None


def test_entries_are_written_once_per_change_and_read_back(tmp_path, caplog):
    root = str(tmp_path)
    url = night_index.write_entry(root, MANIFEST)
    path = tmp_path / night_index.INDEX_FOLDER / "2023-05-12.json"
    assert url == str(path) and path.is_file()
    written = path.stat().st_mtime_ns
    night_index.write_entry(root, MANIFEST)  # unchanged: not rewritten
    assert path.stat().st_mtime_ns == written
    night_index.write_entry(root, {**MANIFEST, "night": "2023-05-11", "status": "success"})
    (tmp_path / night_index.INDEX_FOLDER / "2023-05-14.json").write_text("{not json")
    caplog.set_level(logging.WARNING, logger="ar_tasks")
    entries = night_index.read_index(root)
    assert [(e["night"], e["status"]) for e in entries] == [
        ("2023-05-11", "success"),
        ("2023-05-12", "failed"),
    ]
    assert "2023-05-14.json is not JSON: skipped" in caplog.text
    assert night_index.read_index(str(tmp_path / "nowhere")) == []


def test_rebuild_indexes_an_archive_published_before_the_index(tmp_path):
    for night in ("2023-05-10", "2023-05-11"):
        (tmp_path / night).mkdir()
        manifest = {**MANIFEST, "night": night}
        (tmp_path / night / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "ar_calibrations").mkdir()  # not a night
    (tmp_path / "2023-05-12").mkdir()  # a night without a manifest yet
    assert night_index.rebuild(str(tmp_path)) == 2
    assert [e["night"] for e in night_index.read_index(str(tmp_path))] == [
        "2023-05-10",
        "2023-05-11",
    ]
