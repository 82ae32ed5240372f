"""Registers the tamis release catalog with Airflow.

The api-server mounts the catalog app under ``/tamis-catalog`` (pages, and a JSON API under
``/tamis-catalog/api``); the Airflow UI gets a "Datasets" entry in its Browse menu showing
the catalog inside the UI.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from tamis_catalog.app import URL_PREFIX, app


class TamisCatalogPlugin(AirflowPlugin):
    name = "tamis_catalog"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "tamis release catalog"}]
    external_views = [
        {
            "name": "Datasets",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "tamis_catalog",
            "category": "browse",
        },
    ]
