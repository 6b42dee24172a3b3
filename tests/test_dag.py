"""The Airflow DAG t120_reduce: integrity, parse cost, params, backfill, and dag.test() vs truth."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from astropy.io import fits
from conftest import REPO, fitsverify
from truth_checks import (
    GROUPS,
    check_interpolated_darks,
    check_master_darks,
    check_master_flats,
    check_product_names,
    check_stack,
    fits_products,
)

from ar_tasks.nights import night_of
from ar_tasks.synthetic import NightSpec, load_truth, write_night

NIGHTS = ["2023-05-10", "2023-05-11"]
AIRFLOW = Path(sys.executable).with_name("airflow")
pytestmark = pytest.mark.e2e  # dag.test() on an Airflow database: run apart with -m e2e


@pytest.fixture(scope="session")
def dag():
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    db.resetdb()
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.get_dag("t120_reduce")


# Params a test may change: every run states them, so one test's choice (kept by the DAG
# object that dag.test() reuses) never carries over to the next.
DEFAULT_CONF = {
    "astrometry": "none",
    "png": True,
    "stack": True,
    "interpolate": True,
    "overwrite": False,
    "objects": [],
    "filters": [],
    "refcat": None,
    "anet_index": None,
    "dark_window_days": 90,
    "flat_window_days": 30,
}


def _run(dag, **conf):
    run = dag.test(run_conf={**DEFAULT_CONF, **conf})
    return run.state


def test_dag_has_tags_retries_docs_and_limits(dag):
    assert dag.tags and dag.doc_md and "night" in dag.doc_md
    assert all(t.retries >= 1 for t in dag.tasks)
    assert dag.max_active_runs == 2 and dag.max_active_tasks == 16
    assert dag.catchup is False
    assert {t.pool for t in dag.tasks if t.task_id == "solve_group"} == {"astrometry"}
    assert {t.task_id for t in dag.tasks} == {
        "list_nights", "prepare_night", "plan_groups", "plan_solves", "reduce_group",
        "solve_group", "publish",
    }  # fmt: skip


def test_parsing_imports_no_science_stack():
    code = (
        "import sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(REPO / 'dags')!r})\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "heavy = ('numpy', 'astropy', 'scipy', 'matplotlib', 'ar_tasks')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_ruff_air_rules_are_clean():
    ruff = Path(sys.executable).with_name("ruff")
    result = subprocess.run(
        [str(ruff), "check", "--select", "AIR", str(REPO / "dags")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    "conf",
    [
        {"products_root": "relative/products"},
        {"products_root": "s3://"},
        {"raw_root": "data/raw"},
        {"first_night": "10/05/2023"},
        {"astrometry": "guess"},
        {"interpolate": "yes"},
        {"max_fwhm_ratio": 0.8},
        {"max_ellipticity": 1.0},
        {"min_transparency": 1.5},
        {"frame_rejection": "off"},
    ],
)
def test_malformed_params_are_rejected(dag, conf):
    from airflow.sdk.definitions.param import ParamValidationError

    params = copy.deepcopy(dag.params)
    with pytest.raises(ParamValidationError):  # raised on assignment or on validation
        params.update(conf)
        params.validate()


def test_frame_qc_params_default_to_the_library_thresholds(dag):
    from ar_tasks.frame_qc import Thresholds

    library = Thresholds()
    assert dag.params["frame_rejection"] is library.reject
    for name in ("max_fwhm_ratio", "max_ellipticity", "min_transparency"):
        assert dag.params[name] == getattr(library, name), name


def test_good_params_are_accepted(dag):
    params = copy.deepcopy(dag.params)
    params.update({"products_root": "s3://t120-products/reduced", "first_night": "2023-05-10"})
    params.update({"frame_rejection": False, "max_fwhm_ratio": 2, "min_transparency": 0.3})
    params.validate()


@pytest.fixture(scope="session")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("dag_archive")
    for night in NIGHTS:
        write_night(root / "raw", NightSpec(night=night, size=512, frames_per_group=3))
    return root


@pytest.fixture(scope="session")
def reduced_archive(dag, archive):
    conf = {
        "first_night": NIGHTS[0],
        "last_night": NIGHTS[1],
        "raw_root": str(archive / "raw"),
        "products_root": str(archive / "products"),
    }
    assert _run(dag, **conf) == "success"
    return archive, conf


@pytest.mark.parametrize("night", NIGHTS)
def test_dag_products_match_truth(reduced_archive, night):
    archive, _ = reduced_archive
    products = archive / "products" / night
    truth = load_truth(archive / "raw" / "_truth" / night)
    check_product_names(products, frames_per_group=3)
    check_master_darks(products, truth)
    check_interpolated_darks(products, truth)
    check_master_flats(products, truth)
    for group in GROUPS:
        check_stack(products, truth, group, frames=3)
        assert (products / "stacked" / f"{group}.png").is_file()
    assert (products / "ar_masters" / "mtrans_V.png").is_file()
    fitsverify(fits_products(products))
    assert not (archive / "raw" / night / "ar_masters").exists()  # raw tree untouched


@pytest.mark.parametrize("night", NIGHTS)
def test_manifest_describes_the_night(reduced_archive, night):
    archive, conf = reduced_archive
    manifest = json.loads((archive / "products" / night / "manifest.json").read_text())
    assert manifest["status"] == "success" and manifest["problems"] == []
    assert len(manifest["inputs"]) == 51 and all(len(i["sha256"]) == 64 for i in manifest["inputs"])
    assert set(manifest["groups"]) == set(GROUPS)
    assert all(g["stack"]["combined"] == 3 for g in manifest["groups"].values())
    # Every science frame's QC is in the manifest; the png param draws the night's QC figure.
    for group in manifest["groups"].values():
        assert [q["stacked"] for q in group["stack"]["qc"]] == [True] * 3
        assert all(q["fwhm_arcsec"] and q["transparency"] > 0.9 for q in group["stack"]["qc"])
    assert manifest["qc_figure"] == "qc_frames.png"
    # The publish step keeps the archive's night index: the night's entry, from its manifest.
    from ar_tasks import night_index

    entries = {e["night"]: e for e in night_index.read_index(str(archive / "products"))}
    assert entries[night] == night_index.summarise(manifest)
    assert entries[night]["frames"]["object"] == 15 and entries[night]["rejected"] == 0
    assert (archive / "products" / night / "qc_frames.png").read_bytes().startswith(b"\x89PNG")
    assert manifest["parameters"]["raw_root"] == conf["raw_root"]
    assert manifest["software"]["ar_tasks"]
    assert manifest["masters"]["darks"]["60000"]["noise_adu"] > 0
    assert {p["path"] for p in manifest["products"]} == {
        str(p.relative_to(archive / "products" / night))
        for p in fits_products(archive / "products" / night)
    }


def test_the_night_browser_tabs_read_the_real_runs(reduced_archive):
    """The run and task-instance tabs of the night browser look the run and its mapped task
    up in Airflow's database: the run's nights, and a reduce_group instance's group."""
    import html
    import sys

    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from fastapi.testclient import TestClient
    from sqlalchemy import select

    sys.path.insert(0, str(REPO / "plugins"))
    from t120_browser import app as browser
    from t120_browser.products import Products

    archive, conf = reduced_archive
    with create_session() as session:
        runs = session.scalars(select(DagRun).where(DagRun.dag_id == "t120_reduce")).all()
        (run_id,) = [
            r.run_id
            for r in runs
            if (r.conf or {}).get("last_night") == NIGHTS[1]
            and (r.conf or {}).get("products_root") == conf["products_root"]
        ][-1:]
        ti = session.scalars(
            select(TaskInstance).where(
                TaskInstance.run_id == run_id,
                TaskInstance.task_id == "reduce_group",
                TaskInstance.map_index == 0,
            )
        ).one()
        label = ti.rendered_map_index
    assert browser._run_nights(browser.airflow_run("t120_reduce", run_id)) == NIGHTS
    assert browser.airflow_task_label("t120_reduce", run_id, "reduce_group", 0) == label
    night, group = label.split(" ", 1)
    assert night in NIGHTS and group  # '<night> <object> <filter> <s>s'
    browser.app.dependency_overrides[browser.require_reader] = lambda: "a reader"
    browser.app.dependency_overrides[browser.products] = lambda: Products(conf["products_root"])
    try:
        client = TestClient(browser.app)
        tab = client.get(f"/run/t120_reduce/{run_id}").text
        assert all(f"/night/{n}'" in tab for n in NIGHTS) and tab.count("success") >= 2
        task = client.get(f"/ti/t120_reduce/{run_id}/reduce_group/0").text
        name = browser._group_name(
            json.loads((archive / "products" / night / "manifest.json").read_text()), group
        )
        assert name and f"<h3 id='{name}'>" in task
        # The night's page links to the run that wrote its manifest.
        made = json.loads((archive / "products" / night / "manifest.json").read_text())
        assert made["airflow_run"] == {"dag_id": "t120_reduce", "run_id": run_id}
        page = client.get(f"/night/{night}").text
        assert f"made by run {html.escape(run_id)}" in page
    finally:
        browser.app.dependency_overrides.clear()


def _task_states(run) -> dict[str, set[str]]:
    states: dict[str, set[str]] = {}
    for ti in run.get_task_instances():
        states.setdefault(ti.task_id, set()).add(str(ti.state))
    return states


def test_second_run_recomputes_nothing(dag, reduced_archive):
    """A rerun of current nights maps no task for them (list_nights' cheap check) and writes
    nothing; a night whose frames were only touched is checked by content, found current,
    and nothing of it is recomputed either."""
    archive, conf = reduced_archive
    nights = [archive / "products" / night for night in NIGHTS]
    products = [p for night in nights for p in sorted(fits_products(night))]
    written = [*products, *(night / "manifest.json" for night in nights)]
    before = {p: p.stat().st_mtime_ns for p in written}
    run = dag.test(run_conf={**DEFAULT_CONF, **conf})
    assert run.state == "success"
    states = _task_states(run)
    assert states["list_nights"] == {"success"}
    for task_id in ("prepare_night", "reduce_group", "publish"):
        assert states[task_id] == {"skipped"}, states
    assert {p: p.stat().st_mtime_ns for p in written} == before

    frame = sorted((archive / "raw" / NIGHTS[1] / "ORIGINAL").glob("*.fits"))[0]
    stat = frame.stat()
    os.utime(frame, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, touched
    run = dag.test(run_conf={**DEFAULT_CONF, **conf})
    assert run.state == "success"
    assert _task_states(run)["prepare_night"] == {"success"}
    manifest = json.loads((archive / "products" / NIGHTS[1] / "manifest.json").read_text())
    assert manifest["recomputed"] == [] and manifest["status"] == "success"
    unchanged = [*products, nights[0] / "manifest.json"]
    assert {p: p.stat().st_mtime_ns for p in unchanged} == {p: before[p] for p in unchanged}


def test_nights_without_calibrations_borrow_them_from_their_neighbours(dag, tmp_path):
    """A range where half the nights lack calibrations (06-02: no darks; 06-04: science
    only): every night succeeds, each product naming its masters' night, against truth."""
    raw = tmp_path / "raw"
    spec = {"size": 512, "frames_per_group": 2}
    write_night(raw, NightSpec(night="2023-06-01", **spec))
    write_night(raw, NightSpec(night="2023-06-02", darks=(), **spec))
    write_night(raw, NightSpec(night="2023-06-04", darks=(), flats=(), **spec))
    (raw / "2023-06-03").mkdir()  # a night folder without data: skipped, not failed
    products = tmp_path / "products"
    run = dag.test(
        run_conf={
            **DEFAULT_CONF,
            "first_night": "2023-06-01",
            "last_night": "2023-06-04",
            "raw_root": str(raw),
            "products_root": str(products),
        }
    )
    assert run.state == "success", _task_states(run)
    assert not (products / "2023-06-03").exists()
    expected = {  # night -> (its darks' night, its flats' night)
        "2023-06-01": ("2023-06-01", "2023-06-01"),
        "2023-06-02": ("2023-06-01", "2023-06-02"),
        # 06-02's flats need darks it borrows: only a night's own frames make a lent master.
        "2023-06-04": ("2023-06-01", "2023-06-01"),
    }
    for night, (darks, flats) in expected.items():
        manifest = json.loads((products / night / "manifest.json").read_text())
        assert manifest["status"] == "success", manifest["problems"]
        for name, group in manifest["groups"].items():
            assert group["masters"]["dark"]["night"] == darks, (night, name)
            assert group["masters"]["flat"]["night"] == flats, (night, name)
            stack = fits.getheader(products / night / "stacked" / f"{name}.fits")
            assert (stack["ARDKNGT"], stack["ARFLNGT"]) == (darks, flats)
    truth = load_truth(raw / "_truth" / "2023-06-04")
    for group in GROUPS:
        check_stack(products / "2023-06-04", truth, group, frames=2)
    fitsverify(fits_products(products / "2023-06-04"))
    # The borrowed masters were made once, in the products tree's library (06-02 has only
    # its entry there: the description of its flats, which it cannot lend).
    library = products / "ar_calibrations"
    made = sorted(p.relative_to(library).parts[0] for p in library.rglob("*.fits"))
    assert set(made) == {"2023-06-01"}
    assert (library / "2023-06-02" / "calibrations.json").is_file()


def test_night_without_darks_fails_only_its_branch(dag, tmp_path):
    raw = tmp_path / "raw"
    spec = {"size": 256, "frames_per_group": 2}
    write_night(raw, NightSpec(night="2023-06-01", **spec))
    broken = write_night(raw, NightSpec(night="2023-06-02", **spec))
    for dark in (broken / "DARK").iterdir():
        dark.unlink()
    (raw / "2023-06-03").mkdir()  # a night folder without data: skipped, not failed
    no_borrowing = {"dark_window_days": 0, "flat_window_days": 0}
    state = _run(
        dag,
        first_night="2023-06-01",
        last_night="2023-06-03",
        raw_root=str(raw),
        products_root=str(tmp_path / "products"),
        **no_borrowing,
    )
    assert state == "failed"
    good = json.loads((tmp_path / "products" / "2023-06-01" / "manifest.json").read_text())
    assert (
        good["status"] == "success"
        and len(list((tmp_path / "products" / "2023-06-01" / "stacked").glob("*.fits"))) == 5
    )
    bad = json.loads((tmp_path / "products" / "2023-06-02" / "manifest.json").read_text())
    assert bad["status"] == "failed"
    assert any("No master dark of 60 s on this night" in p for p in bad["problems"])
    assert not (tmp_path / "products" / "2023-06-03").exists()

    # Again: one night current, the other would fail as before. Nothing runs (the planners
    # find no night), the run fails at list_nights (no retry), and no file is written.
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "products").rglob("*")}
    run = dag.test(
        run_conf={
            **DEFAULT_CONF,
            "first_night": "2023-06-01",
            "last_night": "2023-06-03",
            "raw_root": str(raw),
            "products_root": str(tmp_path / "products"),
            **no_borrowing,
        }
    )
    assert run.state == "failed"
    states = _task_states(run)
    assert states["list_nights"] == {"failed"}, states
    for task_id in ("prepare_night", "reduce_group", "solve_group", "publish"):
        assert states[task_id] <= {"upstream_failed", "skipped"}, states
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "products").rglob("*")} == written


def test_backfill_dry_run_lists_one_run_per_night(dag):
    env = dict(os.environ)
    subprocess.run(
        [str(AIRFLOW), "dags", "reserialize"], env=env, capture_output=True, check=True, timeout=300
    )
    result = subprocess.run(
        [
            str(AIRFLOW),
            "backfill",
            "create",
            "--dag-id",
            "t120_reduce",
            "--from-date",
            "2023-05-10",
            "--to-date",
            "2023-05-13",
            "--dry-run",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]

    rows = re.findall(r"^\| (\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\+00:00) ", result.stdout, re.M)
    moments = [dt.datetime.fromisoformat(row) for row in rows]
    assert [night_of(m) for m in moments] == ["2023-05-10", "2023-05-11", "2023-05-12"], (
        result.stdout
    )


def test_single_night_run_like_a_scheduled_one(dag, small_archive, tmp_path):
    """One night per run (scheduled runs and backfills): the mapped night group has a single
    instance, whose result reaches the collector as a bare dict."""
    state = _run(
        dag,
        first_night="2023-05-10",
        raw_root=str(small_archive),
        products_root=str(tmp_path / "products"),
        png=False,
    )
    assert state == "success"
    night = tmp_path / "products" / "2023-05-10"
    assert {p.stem for p in (night / "stacked").glob("*.fits")} == set(GROUPS)
    assert not list(night.rglob("*.png"))
    assert json.loads((night / "manifest.json").read_text())["status"] == "success"


def _astrometry_run(dag, astro_archive, products: Path, mode: str, **extra) -> dict:
    state = _run(
        dag,
        first_night=NIGHTS[0],
        raw_root=str(astro_archive.raw),
        products_root=str(products),
        png=False,
        astrometry=mode,
        **extra,
    )
    manifest = json.loads((products / NIGHTS[0] / "manifest.json").read_text())
    assert state == "success", manifest["problems"]
    return manifest


def test_dag_astrometry_routes_match_truth(dag, astro_archive, tmp_path, monkeypatch):
    """The DAG's astrometry task runs the mode chosen in params per (night, group): the
    Astromatic chain, then solve-field, then the web API (a local stand-in, key and server
    from an Airflow connection); every reduced/ WCS matches the truth."""
    from nova_standin import NovaStandin
    from truth_checks import wcs_error_arcsec

    products = tmp_path / "products"
    night = products / NIGHTS[0]
    expected = 8  # two groups: three aux frames and a stack each
    config = tmp_path / "standin.cfg"
    config.write_text(f"inparallel\ncpulimit 30\nadd_path {astro_archive.index}\nautoindex\n")
    with NovaStandin(config) as standin:
        port = standin.url.rsplit(":", 1)[1]
        connection = {
            "conn_type": "http",
            "host": "127.0.0.1",
            "schema": "http",
            "port": int(port),
            "password": "dag-key",
        }
        monkeypatch.setenv("AIRFLOW_CONN_ASTROMETRY_NET", json.dumps(connection))
        routes = [
            ("astromatic", {"refcat": str(astro_archive.refcat)}, "SCAMP"),
            (
                "astrometrynet_local",
                {"anet_index": str(astro_archive.index)},
                "astrometry.net local",
            ),
            ("astrometrynet_online", {}, "astrometry.net online"),
        ]
        for mode, extra, solver in routes:
            manifest = _astrometry_run(dag, astro_archive, products, mode, **extra)
            solved = manifest["astrometry"]
            assert sum(g["solved"] for g in solved.values()) == expected, (mode, solved)
            reduced = sorted((night / "reduced").glob("*.fits"))
            assert len(reduced) == expected
            for path in reduced:
                header = fits.getheader(path)
                assert header["ASTSOLVR"] == solver
                # Each group's stack solved once, its frames derived from it and checked.
                method = "derived" if "_aux" in path.name else "full"
                assert header["ASTMETHD"] == method, (mode, path.name)
                assert wcs_error_arcsec(path, astro_archive.truth)[0] < 0.1, (mode, path.name)
            listed = {p["path"] for p in manifest["products"]}
            assert {f"reduced/{p.name}" for p in reduced} <= listed
        assert ("POST", "/api/login") in standin.requests
        # A rerun with the same mode finds the night current: nothing runs, nothing is sent,
        # the manifest stays as the last run wrote it.
        sent, written = len(standin.requests), (night / "manifest.json").read_bytes()
        _astrometry_run(dag, astro_archive, products, "astrometrynet_online")
        assert (night / "manifest.json").read_bytes() == written and len(standin.requests) == sent
        # Without its manifest the night is done again, and reuses every solution.
        (night / "manifest.json").unlink()
        manifest = _astrometry_run(dag, astro_archive, products, "astrometrynet_online")
        assert sum(g["reused"] for g in manifest["astrometry"].values()) == expected
        assert not [p for p in manifest["recomputed"] if p.startswith("reduced/")]
        assert len(standin.requests) == sent
    fitsverify(reduced)
    assert "dag-key" not in (night / "manifest.json").read_text()


def _s3_objects(client, bucket: str, prefix: str) -> dict[str, dict]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o for page in pages for o in page.get("Contents", [])}


def test_dag_on_s3_gives_the_local_products(dag, reduced_archive, s3_server, monkeypatch):
    """raw_root and products_root in S3 (moto's server, reached only through the Airflow
    connection): the same products, byte for byte, as the local run; raw objects untouched;
    a rerun recomputes nothing."""
    import hashlib
    import time

    archive, local_conf = reduced_archive
    client, bucket = s3_server.client(), s3_server.new_bucket()
    for path in sorted((archive / "raw").rglob("*.fits")):
        rel = path.relative_to(archive / "raw").as_posix()
        if not rel.startswith("_truth"):
            client.put_object(Bucket=bucket, Key=f"raw/{rel}", Body=path.read_bytes())
    raw_before = {k: o["ETag"] for k, o in _s3_objects(client, bucket, "raw/").items()}
    connection = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": s3_server.endpoint, "region_name": "us-east-1"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key, raising=False)
    conf = {
        **local_conf,
        "raw_root": f"s3://{bucket}/raw",
        "products_root": f"s3://{bucket}/products",
    }
    started = time.monotonic()
    assert _run(dag, **conf) == "success"
    print(f"S3 run of {len(NIGHTS)} nights: {time.monotonic() - started:.1f} s")

    after = _s3_objects(client, bucket, "")
    assert {k: o["ETag"] for k, o in after.items() if k.startswith("raw/")} == raw_before
    for night in NIGHTS:
        local = archive / "products" / night
        local_fits = {p.relative_to(local).as_posix(): p for p in fits_products(local)}
        remote_fits = {
            k.removeprefix(f"products/{night}/")
            for k in after
            if k.startswith(f"products/{night}/") and k.endswith(".fits")
        }
        assert remote_fits == set(local_fits)
        for rel, path in local_fits.items():
            body = client.get_object(Bucket=bucket, Key=f"products/{night}/{rel}")
            data = body["Body"].read()
            assert data == path.read_bytes(), rel  # same pixels, same header, same bytes
            assert body["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
        manifest = json.loads(
            client.get_object(Bucket=bucket, Key=f"products/{night}/manifest.json")["Body"].read()
        )
        assert manifest["status"] == "success"
        assert manifest["raw_dir"] == f"s3://{bucket}/raw/{night}"
        listed = {p["path"]: p["sha256"] for p in manifest["products"]}
        local_manifest = json.loads((local / "manifest.json").read_text())
        assert listed == {p["path"]: p["sha256"] for p in local_manifest["products"]}
        assert not [k for k in after if k.startswith(f"products/{night}/") and ".part" in k]

    # Each night's entry in the archive's index, in S3 as in the local run.
    from ar_tasks import night_index

    settings = {"endpoint_url": s3_server.endpoint, "access_key": "testing"}
    settings.update(secret_key="testing", region="us-east-1")
    remote_index = night_index.read_index(conf["products_root"], settings)
    local_index = night_index.read_index(local_conf["products_root"])
    assert [e["night"] for e in remote_index] == NIGHTS
    for entry in (*remote_index, *local_index):  # each names the run that wrote it
        assert entry.pop("airflow_run")["dag_id"] == "t120_reduce"
    assert remote_index == local_index
    assert _run(dag, **conf) == "success"  # current: checked by listings, nothing written
    assert _s3_objects(client, bucket, "") == after


def _damage(night: Path) -> None:
    """The kinds of files a real archive holds beside good frames."""
    good = sorted((night / "ORIGINAL").glob("*.fits"))[0]
    (night / "ORIGINAL" / "truncated.fits").write_bytes(good.read_bytes()[:20000])
    (night / "ORIGINAL" / "notes.fits").write_text("observing log, not a frame\n")
    (night / "FLAT" / "README.txt").write_text("flats taken at dusk\n")


def test_cli_and_dag_write_the_same_products_and_provenance(dag, tmp_path, caplog):
    """One night with damaged files, reduced by the astro_reduce command in its folder and by
    the DAG into a products tree: the same products byte for byte (SHA-256), the same
    inputs, quarantine, night key and group records; the DAG's task log has the warnings."""
    import logging
    import shutil

    from conftest import run_cli

    raw = tmp_path / "raw"
    night = write_night(raw, NightSpec(size=256, frames_per_group=3, seed=5))
    _damage(night)
    cli_night = shutil.copytree(night, tmp_path / "cli" / night.name)
    setup = run_cli(cli_night, "--setup")
    assert setup.returncode == 1 and "E: ORIGINAL/notes.fits" in setup.stderr  # named, left out
    result = run_cli(cli_night, "-i", "-t", "-r")
    assert result.returncode == 0, result.stderr
    caplog.set_level(logging.WARNING, logger="ar_tasks")
    products = tmp_path / "products"
    state = _run(dag, first_night=night.name, raw_root=str(raw), products_root=str(products))
    assert state == "success"
    by_cli = json.loads((cli_night / "manifest.json").read_text())
    by_dag = json.loads((products / night.name / "manifest.json").read_text())
    assert by_cli["status"] == by_dag["status"] == "success"
    assert by_cli["products"] == by_dag["products"] and len(by_dag["products"]) == 28
    for field in ("inputs", "quarantined", "night_key", "recipes", "masters"):
        assert by_cli[field] == by_dag[field], field
    assert {q["path"] for q in by_dag["quarantined"]} == {
        "ORIGINAL/truncated.fits",
        "ORIGINAL/notes.fits",
    }
    for name, group in by_dag["groups"].items():
        assert by_cli["groups"][name]["stack"]["shifts"] == group["stack"]["shifts"]
        assert by_cli["groups"][name]["stack"]["qc"] == group["stack"]["qc"]
        assert group["stack"]["aligned"] is True and group["stack"]["left_out"] == []
        assert group["stack"]["ghost_risk"] is False and group["stack"]["missing_aux"] == []
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("ar_tasks")]
    assert any("truncated.fits" in m and "left out" in m for m in logged), logged
    assert any("README.txt is not named like a FITS file" in m for m in logged), logged
