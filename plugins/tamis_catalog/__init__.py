"""The release catalog, served by the Airflow api-server: pages and a JSON API."""
