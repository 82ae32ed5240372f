"""nightly_ingest: each day's new partition, cleaned, deduplicated against the corpus and appended."""

from tamis_airflow.nightly import build_nightly_dag

dag = build_nightly_dag("default", dag_id="nightly_ingest")
