"""The ``corpus_build`` DAG: each stage's tasks, each followed by its quality gate.

The tasks of a stage depend on where it runs (``execution.mode``):

* ``local`` and ``spark``: one task running ``tamis run <stage>`` (the command picks the
  engine from the pipeline);
* ``kubernetes``: a per-batch stage fans out: a task lists its input shards, pods mapped
  over batches of shards process them, and one pod writes the manifest; a whole-dataset
  stage is one pod, or a SparkApplication when it is listed under
  ``execution.kubernetes.spark.stages``.

The builders read what each stage declares (its kind, whether it reads the sources) and
never name a particular stage.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Asset, Param, chain

from tamis.pipeline import PIPELINES_DIR, ConfigError, Pipeline, check_pipeline, load_pipeline
from tamis_airflow import commands, kubernetes

START_DATE = pendulum.datetime(2026, 11, 1, tz="UTC")


def checked_pipeline(pipeline_name: str) -> Pipeline:
    """The pipeline, refused at DAG parsing when anything a stage needs is wrong, so that the
    error shows as the DAG's import error instead of failing a task mid-run."""
    pipeline = load_pipeline(pipeline_name)
    problems = check_pipeline(pipeline)
    if problems:
        raise ConfigError(f"{pipeline.path}: " + "; ".join(problems))
    return pipeline


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


def source_env(pipeline: Pipeline, argv: list[str]) -> dict[str, str]:
    """The connections of the pipeline's sources, for the commands that read sources, as
    ``AIRFLOW_CONN_<ID>`` (the connection's JSON, rendered when the task runs; its secrets
    are masked in the rendered fields like any connection's)."""
    if not kubernetes.reads_sources(pipeline, argv):
        return {}
    fields = ("conn_type", "host", "login", "password", "port", "schema")
    return {
        f"AIRFLOW_CONN_{conn_id.upper()}": "{"
        + ", ".join(
            [f'"{f}": {{{{ conn.{conn_id}.{f} | tojson }}}}' for f in fields]
            + [f'"extra": {{{{ conn.{conn_id}.extra_dejson | tojson }}}}']
        )
        + "}"
        for conn_id in kubernetes.source_connections(pipeline)
    }


def stage_operator(pipeline: Pipeline, task_id: str, argv: list[str], **kwargs):
    """A task running ``tamis <argv>``: a local process, or a pod / Spark application."""
    if pipeline.execution.mode == "kubernetes":
        return kubernetes.execution_operator(pipeline, task_id, argv, **kwargs)
    command = commands.shell_command(commands.tamis_executable(), argv)
    env = {**storage_env(pipeline), **source_env(pipeline, argv), "TAMIS_LEASE_OWNER": kubernetes.LEASE_OWNER}
    return BashOperator(task_id=task_id, bash_command=command, env=env, append_env=True, **kwargs)


def stage_tasks(pipeline: Pipeline, stage: str, argv: list[str], pipeline_ref: str) -> list:
    """The tasks that run ``stage`` (in order, to be chained): one task, or on Kubernetes
    a per-batch stage's fan-out (list shards -> mapped pods -> manifest pod)."""
    cfg = pipeline.execution
    if (
        cfg.mode == "kubernetes"
        and stage not in cfg.kubernetes.spark.stages
        and pipeline.stage_type(stage).kind == "batch"
    ):
        batches = kubernetes.shard_batches_task(pipeline, stage, pipeline_ref, argv)
        mapped = kubernetes.mapped_shard_operator(pipeline, stage, batches)
        # A stage with no shards (a day without data) maps to nothing; its manifest is still written.
        manifest = stage_operator(pipeline, f"{stage}_manifest", [*argv, "--manifest-only"], trigger_rule="none_failed")
        return [batches, mapped, manifest]
    return [stage_operator(pipeline, stage, argv)]


def build_corpus_dag(pipeline_name: str = "default", dag_id: str = "corpus_build") -> DAG:
    pipeline = checked_pipeline(pipeline_name)
    pipeline_ref = "{{ params.pipeline }}"
    # A DAG built from a YAML path outside include/pipelines offers that path.
    known = sorted({*(p.stem for p in PIPELINES_DIR.glob("*.yaml")), pipeline_name})
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
            "pipeline": Param(
                pipeline_name,
                type="string",
                enum=known,
                description="pipeline config under include/pipelines (same stages as this DAG)",
            ),
            "sources": Param(
                [],
                type="array",
                items={"type": "string"},
                description="sources to ingest; empty means every source of the pipeline",
            ),
            "sample_fraction": Param(
                1.0,
                type="number",
                exclusiveMinimum=0,
                maximum=1,
                description="keep this fraction of documents, chosen deterministically by id",
            ),
        },
        doc_md=(Path(__file__).with_name("corpus_build.md")).read_text(),
    ) as dag:
        tasks = []
        for stage in pipeline.stage_names:
            extra = []
            if pipeline.stage_type(stage).reads_sources:
                extra = [
                    "--param",
                    "sources={{ params.sources | tojson }}",
                    "--param",
                    "sample_fraction={{ params.sample_fraction }}",
                ]
            tasks += stage_tasks(pipeline, stage, commands.stage_argv(stage, pipeline_ref, extra), pipeline_ref)
            tasks.append(stage_operator(pipeline, f"{stage}_gate", commands.gate_argv(stage, pipeline_ref)))
        tasks.append(
            stage_operator(pipeline, "summary", commands.summary_argv(pipeline_ref), outlets=[corpus_asset(pipeline)])
        )
        chain(*tasks)
    return dag
