"""Airflow plugin: the T120 night browser in Airflow's UI.

A top-level nav entry (the archive's nights, trends), a tab on every DAG run (that run's
nights) and on every task instance (its night, or its group), and a summary on the home
dashboard; all served by one FastAPI app at /t120 behind Airflow's login (t120_browser.app).
"""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin
from t120_browser.app import URL_PREFIX, app


class T120NightsPlugin(AirflowPlugin):
    name = "t120_nights"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": app, "url_prefix": URL_PREFIX, "name": "T120 night browser"}
    ]
    external_views: ClassVar[list[dict[str, Any]]] = [
        {
            "name": "T120 nights",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "t120-nights",
            "nav_top_level": True,
        },
        {
            "name": "T120 nights",
            "href": f"{URL_PREFIX}/run/{{DAG_ID}}/{{RUN_ID}}",
            "destination": "dag_run",
            "url_route": "t120-run",
        },
        {
            "name": "T120 night",
            "href": f"{URL_PREFIX}/ti/{{DAG_ID}}/{{RUN_ID}}/{{TASK_ID}}/{{MAP_INDEX}}",
            "destination": "task_instance",
            "url_route": "t120-task",
        },
    ]
    react_apps: ClassVar[list[dict[str, Any]]] = [
        {
            "name": "T120 summary",
            "bundle_url": f"{URL_PREFIX}/static/summary.js",
            "destination": "dashboard",
            "url_route": "t120-summary",
        }
    ]
