"""Registers the tamis data-quality report pages with Airflow.

The api-server mounts the report app under ``/tamis``; the Airflow UI gets a
"Data quality" entry in its navigation and a "Data quality" tab on every DAG run, both
showing the pages inside the UI.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from tamis_reports.app import URL_PREFIX, app


class TamisReportsPlugin(AirflowPlugin):
    name = "tamis_reports"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "tamis data-quality reports"}]
    external_views = [
        {
            "name": "Data quality",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "tamis_reports",
            "category": "browse",
        },
        {
            "name": "Data quality",
            "href": URL_PREFIX + "/dags/{DAG_ID}/runs/{RUN_ID}",
            "destination": "dag_run",
            "url_route": "tamis_run_report",
        },
    ]
