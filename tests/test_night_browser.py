"""The night browser's app (plugins/t120_browser) on a real products root: listings, a night
made readable, escaping, the files served and refused, trends, run and task tabs, S3.

The products are made by the DAG's own stage functions (ar_tasks.pipeline, as its tasks call
them); the app runs behind FastAPI's TestClient with the login dependency replaced (the real
login is tested against Airflow's app in test_night_browser_airflow.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ar_tasks import pipeline
from ar_tasks.synthetic import NightSpec, ScienceGroup, Spoiler, write_night

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

from t120_browser import app as browser  # noqa: E402
from t120_browser.products import Products  # noqa: E402

NIGHT, FAILED = "2023-05-10", "2023-05-11"
EVIL = "<script>alert(1)</script>"
PARAMS = {"png": True, "interpolate": True}


def _reduce(raw: Path, products: Path, night: str) -> None:
    """A night as the DAG's tasks reduce it."""
    ready = pipeline.prepare_night(str(raw), str(products), night, PARAMS)
    for pair in ready.get("groups", []):
        pipeline.reduce_group(str(raw), str(products), night, pair["group"], PARAMS)
    pipeline.publish_night(str(raw), str(products), night, PARAMS)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Two nights: one with a clouded frame, a damaged file and an OBJECT that is HTML; one
    without calibrations (it fails: no archive to borrow from within its window)."""
    root = tmp_path_factory.mktemp("browser")
    raw, products = root / "raw", root / "products"
    spec = NightSpec(
        night=NIGHT,
        size=256,
        darks=((60.0, 3),),
        flats=(("V", 5.0, 3),),
        science=(ScienceGroup("M 67", "V", 60.0, 4), ScienceGroup(EVIL, "V", 60.0, 2)),
        spoiled=(Spoiler("M 67", "V", 2, transparency=0.3),),
    )
    night_dir = write_night(raw, spec)
    (night_dir / "ORIGINAL" / "truncated.fits").write_bytes(b"SIMPLE  =                    T")
    (night_dir / "ORIGINAL" / "<img src=x onerror=alert(2)>.fits").write_bytes(b"not FITS")
    write_night(raw, NightSpec(night=FAILED, size=256, darks=(), flats=(), frames_per_group=2))
    for night in (NIGHT, FAILED):
        _reduce(raw, products, night)
    return products


@pytest.fixture
def client(archive: Path):
    browser.app.dependency_overrides[browser.require_reader] = lambda: "a reader"
    browser.app.dependency_overrides[browser.products] = lambda: Products(str(archive))
    yield TestClient(browser.app)
    browser.app.dependency_overrides.clear()


def test_the_nights_are_listed_and_filtered(client):
    page = client.get("/")
    assert page.status_code == 200
    assert f"/night/{NIGHT}" in page.text and f"/night/{FAILED}" in page.text
    assert "2 of 2 nights" in page.text
    assert "reprocess(&quot;2023-05-10&quot;,&quot;2023-05-10&quot;)" in page.text
    failed = client.get("/", params={"status": "failed"}).text
    assert f"/night/{FAILED}" in failed and f"/night/{NIGHT}'" not in failed
    assert "1 of 2 nights" in client.get("/", params={"first": FAILED}).text


def test_a_night_is_made_readable_and_every_string_escaped(client):
    page = client.get(f"/night/{NIGHT}")
    assert page.status_code == 200
    text = page.text
    assert "ORIGINAL/truncated.fits" in text  # quarantined, with its reason
    assert "transparency 0.3" in text  # the clouded frame, left out with its figure
    assert "ar_masters/mdark_60000.fits" in text and "M-67_V_60000" in text
    manifest = json.loads((client.get(f"/night/{NIGHT}/file/manifest.json")).text)
    for product in manifest["products"]:
        assert product["sha256"] in text  # every product with its SHA-256
    # The OBJECT from a FITS header and a file name, both HTML, come back escaped.
    assert "<script>alert" not in text and "<img src=x" not in text
    assert "OBJECT &#x27;&lt;script&gt;alert(1)&lt;/script&gt;&#x27;" in text
    assert "ORIGINAL/&lt;img src=x onerror=alert(2)&gt;.fits" in text
    assert "qc_frames.png" in text and "stacked/M-67_V_60000.png" in text
    assert client.get("/night/2023-05-12").status_code == 404


def test_only_png_and_json_inside_the_night_are_served(client, archive):
    png = client.get(f"/night/{NIGHT}/file/qc_frames.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    assert client.get(f"/night/{NIGHT}/file/ar_qc/masters.json").status_code == 200
    (archive / "secret.png").write_bytes(b"\x89PNG outside every night")
    for refused in (
        f"/night/{NIGHT}/file/stacked/M-67_V_60000.fits",  # FITS: not served
        f"/night/{NIGHT}/file/../secret.png",
        f"/night/{NIGHT}/file/..%2Fsecret.png",
        f"/night/{NIGHT}/file/stacked/..%2F..%2Fsecret.png",
        f"/night/{NIGHT}/file/%2Fetc%2Fpasswd.png",
        f"/night/{NIGHT}/file/stacked%5C..%5C..%5Csecret.png",
        "/night/..%2F/file/secret.png",
        f"/night/{NIGHT}/file/missing.png",
    ):
        response = client.get(refused)
        assert response.status_code == 404, refused
        assert b"outside every night" not in response.content


def test_trends_and_the_dashboard_summary(client):
    picture = client.get("/trends.png", params={"first": NIGHT, "last": FAILED})
    assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")
    assert "trends.png?first=2023-05-10" in client.get("/trends", params={"first": NIGHT}).text
    summary = client.get("/api/summary").json()
    assert summary["nights"] == 2 and summary["failed"] == 1
    assert [n["night"] for n in summary["last"]] == [FAILED, NIGHT]
    assert "AirflowPlugin" in client.get("/static/summary.js").text


def test_the_run_and_task_tabs(client):
    browser.app.dependency_overrides[browser.run_lookup] = lambda: (
        lambda dag_id, run_id: {"conf": {"first_night": NIGHT, "last_night": FAILED}}
    )
    page = client.get("/run/t120_reduce/manual__1")
    assert page.status_code == 200
    assert f"/night/{NIGHT}" in page.text and f"/night/{FAILED}" in page.text
    other = client.get("/run/another_dag/manual__1")
    assert other.status_code == 200 and "is not a T120 reduction" in other.text
    assert "is not a T120 reduction" in client.get("/ti/another_dag/manual__1/a_task/0").text
    browser.app.dependency_overrides[browser.label_lookup] = lambda: (
        lambda dag_id, run_id, task_id, map_index: f"{NIGHT} M-67 V 60s"
    )
    task = client.get("/ti/t120_reduce/manual__1/reduce_group/0")
    assert task.status_code == 200
    assert "M-67_V_60000" in task.text and "transparency 0.3" in task.text
    browser.app.dependency_overrides[browser.label_lookup] = lambda: (
        lambda dag_id, run_id, task_id, map_index: None
    )
    assert "not about one night" in client.get("/ti/t120_reduce/manual__1/list_nights/-1").text


def test_an_s3_products_root(client, archive, s3_server):
    s3, bucket = s3_server.client(), s3_server.new_bucket()
    for path in sorted(archive.rglob("*")):
        if path.is_file():
            key = f"products/{path.relative_to(archive).as_posix()}"
            s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    settings = {"endpoint_url": s3_server.endpoint, "access_key": "testing"}
    settings.update(secret_key="testing", region="us-east-1")
    browser.app.dependency_overrides[browser.products] = lambda: Products(
        f"s3://{bucket}/products", settings
    )
    assert "2 of 2 nights" in client.get("/").text
    assert "transparency 0.3" in client.get(f"/night/{NIGHT}").text
    png = client.get(f"/night/{NIGHT}/file/qc_frames.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    assert client.get(f"/night/{NIGHT}/file/..%2Fsecret.png").status_code == 404
    assert client.get(f"/night/{NIGHT}/file/stacked/M-67_V_60000.fits").status_code == 404


def test_the_astrometry_of_each_image_is_shown():
    """Full and derived solves, a refused derived WCS and a failure, escaped."""
    from t120_browser import pages

    images = [
        {"image": "stacked/M-67_V_60000.fits", "status": "solved", "method": "full",
         "solver": "SCAMP", "stats": {"matched_references": 157, "sigma_arcsec": [0.046]}},
        {"image": "ar_cosmetic/a_aux.fits", "status": "solved", "method": "derived",
         "anchor": "stacked/M-67_V_60000.fits", "solver": "SCAMP",
         "stats": {"matched_references": 91, "sigma_arcsec": [0.044]},
         "check": {"reference": "catalogue"}},
        {"image": "ar_cosmetic/b_aux.fits", "status": "solved", "method": "full",
         "solver": "SCAMP", "check_failed": "3 of 90 stars matched the catalogue"},
        {"image": "ar_cosmetic/<b>c_aux.fits", "status": "failed", "solver": "SCAMP",
         "reason": "not tried: <b>no</b>"},
    ]  # fmt: skip
    html = pages.night_page(NIGHT, {"astrometry": {"M-67_V_60000": {"images": images}}}, [], "")
    assert "<h2>Astrometry</h2>" in html
    assert "derived from M-67_V_60000.fits" in html and "0.044" in html
    assert "derived WCS refused: 3 of 90 stars matched the catalogue" in html
    assert "&lt;b&gt;c_aux.fits" in html and "not tried: &lt;b&gt;no&lt;/b&gt;" in html
