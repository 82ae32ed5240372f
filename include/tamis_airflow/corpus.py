"""The ``corpus_build`` DAG: one task per stage, each followed by its quality gate."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Asset, Param, chain

from tamis.pipeline import PIPELINES_DIR, Pipeline, load_pipeline
from tamis_airflow import commands, kubernetes

START_DATE = pendulum.datetime(2026, 11, 1, tz="UTC")


def corpus_asset(pipeline: Pipeline) -> Asset:
    """Updated whenever a corpus build or a nightly ingest publishes new data."""
    return Asset(name=f"tamis_corpus_{pipeline.name}", uri=f"tamis://corpus/{pipeline.name}")


def default_args(pipeline: Pipeline) -> dict:
    o = pipeline.orchestration
    return {
        "owner": "tamis",
        "retries": o.retries,
        "retry_delay": timedelta(seconds=o.retry_delay_s),
        "execution_timeout": timedelta(seconds=o.task_timeout_s),
    }


def storage_env(pipeline: Pipeline) -> dict[str, str]:
    """Credentials of the storage connection, rendered when the task runs; a missing
    connection fails the task before the command starts."""
    if not pipeline.storage_root.startswith("s3://"):
        return {}
    conn = f"conn.{pipeline.storage_connection}"
    return {
        "AWS_ACCESS_KEY_ID": "{{ %s.login or '' }}" % conn,
        "AWS_SECRET_ACCESS_KEY": "{{ %s.password or '' }}" % conn,
        "AWS_DEFAULT_REGION": "{{ %s.extra_dejson.get('region_name', 'us-east-1') }}" % conn,
        "TAMIS_S3_ENDPOINT_URL": "{{ %s.extra_dejson.get('endpoint_url', '') }}" % conn,
    }


def stage_operator(pipeline: Pipeline, task_id: str, argv: list[str], **kwargs):
    """A task running ``tamis <argv>``: a local process, or a pod / Spark application."""
    mode = kubernetes.execution_config(pipeline).mode
    if mode == "kubernetes":
        return kubernetes.execution_operator(pipeline, task_id, argv, **kwargs)
    command = commands.shell_command(commands.tamis_executable(mode), argv)
    return BashOperator(task_id=task_id, bash_command=command, env=storage_env(pipeline) or None,
                        append_env=True, **kwargs)


def build_corpus_dag(pipeline_name: str = "default", dag_id: str = "corpus_build") -> DAG:
    pipeline = load_pipeline(pipeline_name)
    pipeline_ref = "{{ params.pipeline }}"
    known = sorted(p.stem for p in PIPELINES_DIR.glob("*.yaml"))
    with DAG(
        dag_id=dag_id,
        description=f"Build a training corpus from the sources of pipeline {pipeline.name!r}",
        schedule=None,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        default_args=default_args(pipeline),
        tags=["tamis", "corpus"],
        params={
            "pipeline": Param(pipeline.name, type="string", enum=known,
                              description="pipeline config under include/pipelines (same stages as this DAG)"),
            "sources": Param([], type="array", items={"type": "string"},
                             description="sources to ingest; empty means every source of the pipeline"),
            "sample_fraction": Param(1.0, type="number", exclusiveMinimum=0, maximum=1,
                                     description="keep this fraction of documents, chosen deterministically by id"),
        },
        doc_md=(Path(__file__).with_name("corpus_build.md")).read_text(),
    ) as dag:
        tasks = []
        for stage in pipeline.stage_names:
            extra = []
            if stage == "ingest":
                extra = ["--param", "sources={{ params.sources | tojson }}",
                         "--param", "sample_fraction={{ params.sample_fraction }}"]
            run = stage_operator(pipeline, f"{stage}", commands.stage_argv(stage, pipeline_ref, extra))
            gate = stage_operator(pipeline, f"{stage}_gate", commands.gate_argv(stage, pipeline_ref))
            tasks += [run, gate]
        tasks.append(stage_operator(pipeline, "summary", commands.summary_argv(pipeline_ref),
                                    outlets=[corpus_asset(pipeline)]))
        chain(*tasks)
    return dag
