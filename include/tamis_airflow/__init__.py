"""Airflow side of tamis: builds DAGs from pipeline configs. The stage logic stays in
``tamis``, which never imports Airflow; tasks call the ``tamis`` command line."""
