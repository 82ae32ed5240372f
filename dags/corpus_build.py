"""corpus_build: raw sources to a clean, deduplicated corpus (include/pipelines/default.yaml)."""

from tamis_airflow.corpus import build_corpus_dag

dag = build_corpus_dag("default", dag_id="corpus_build")
