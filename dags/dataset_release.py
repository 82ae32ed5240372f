"""dataset_release: a DVC-versioned release each time the corpus is updated (include/pipelines/default.yaml)."""

from tamis_airflow.release import build_release_dag

dag = build_release_dag("default", dag_id="dataset_release")
