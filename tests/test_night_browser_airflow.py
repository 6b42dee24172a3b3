"""The night browser inside Airflow's own API server app, on a migrated database: the plugin
is listed with every view it declares (one malformed entry would drop it from the UI without
a word), imports cleanly, and every endpoint needs a login: 401 without a token, 200 with a
Bearer token or the UI's cookie, 403 with a bad token."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.timeout(300)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))


@pytest.fixture(scope="module")
def airflow_client(tmp_path_factory):
    from airflow.utils import db

    products = tmp_path_factory.mktemp("browser_products")
    saved = {k: os.environ.get(k) for k in ("AR_PRODUCTS_ROOT", USERS, SECRET)}
    os.environ["AR_PRODUCTS_ROOT"] = str(products)
    os.environ[USERS] = "admin:admin,viewer:viewer"
    os.environ[SECRET] = "a-test-only-secret-" + "x" * 64  # signs the login's JWT
    try:
        db.resetdb()
        from airflow.api_fastapi.app import create_app

        with TestClient(create_app()) as client:
            yield client
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


USERS = "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"
SECRET = "AIRFLOW__API_AUTH__JWT_SECRET"


def _token(client: TestClient, user: str) -> str:
    from airflow.configuration import AIRFLOW_HOME

    generated = Path(AIRFLOW_HOME) / "simple_auth_manager_passwords.json.generated"
    passwords = json.loads(generated.read_text())
    response = client.post("/auth/token", json={"username": user, "password": passwords[user]})
    assert response.status_code == 201, response.text
    return response.json()["access_token"]


def test_every_endpoint_needs_a_login(airflow_client):
    token = _token(airflow_client, "viewer")
    for path in ("/t120/", "/t120/trends", "/t120/api/summary", "/t120/night/2023-05-10"):
        assert airflow_client.get(path).status_code == 401, path
        bad = airflow_client.get(path, headers={"Authorization": f"Bearer {token[:-4]}AAAA"})
        assert bad.status_code == 403, path
    good = airflow_client.get("/t120/", headers={"Authorization": f"Bearer {token}"})
    assert good.status_code == 200 and "0 of 0 nights" in good.text
    airflow_client.cookies.set("_token", token)
    try:
        assert airflow_client.get("/t120/api/summary").json() == {
            "nights": 0,
            "failed": 0,
            "last": [],
        }
    finally:
        airflow_client.cookies.clear()


def test_the_plugin_is_listed_with_every_view_and_imports_cleanly(airflow_client):
    headers = {"Authorization": f"Bearer {_token(airflow_client, 'admin')}"}
    plugins = airflow_client.get("/api/v2/plugins", headers=headers).json()["plugins"]
    (plugin,) = [p for p in plugins if p["name"] == "t120_nights"]
    from t120_nights import T120NightsPlugin

    declared = {v["url_route"] for v in T120NightsPlugin.external_views}
    assert {v["url_route"] for v in plugin["external_views"]} == declared
    assert {v["destination"] for v in plugin["external_views"]} == {
        "nav",
        "dag_run",
        "task_instance",
    }
    assert [a["destination"] for a in plugin["react_apps"]] == ["dashboard"]
    assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == ["/t120"]
    errors = airflow_client.get("/api/v2/plugins/importErrors", headers=headers).json()
    assert errors["import_errors"] == [], errors
