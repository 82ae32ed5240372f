"""Data-quality report pages of tamis runs, served by the Airflow api-server."""
