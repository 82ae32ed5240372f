"""The ``dataset_release`` DAG: version the corpus with DVC whenever it is updated.

Scheduled on the corpus Asset that ``corpus_build`` (and the nightly ingest) update, it runs
the ``tamis release`` steps in order: prepare the workspace, ``dvc repro``, ``dvc push``,
the release manifest. The workspace is a folder every task must see: on one machine a local
folder, with Kubernetes execution a shared volume (``release.workspace`` in the pipeline YAML).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Asset, chain

from tamis.pipeline import Pipeline, load_pipeline
from tamis_airflow.corpus import START_DATE, corpus_asset, default_args, stage_operator


# The corpus run whose asset event triggered this run (empty when triggered by hand).
SOURCE_RUN_ID = ("{% for events in triggering_asset_events.values() %}{% for event in events %}"
                 "{% if loop.last and event.source_run_id %}{{ event.source_run_id }}{% endif %}{% endfor %}{% endfor %}")


def release_asset(pipeline: Pipeline) -> Asset:
    """Updated when a release of the pipeline's corpus has been pushed and its manifest written."""
    return Asset(name=f"tamis_release_{pipeline.name}", uri=f"tamis://release/{pipeline.name}")


def release_argv(step: str, pipeline: Pipeline, *extra: str) -> list[str]:
    return ["release", step, "--pipeline", pipeline.name, *extra]


def build_release_dag(pipeline_name: str = "default", dag_id: str = "dataset_release") -> DAG:
    pipeline = load_pipeline(pipeline_name)
    # dvc repro may run every stage in one task: give it each stage's timeout.
    repro_timeout = timedelta(seconds=pipeline.orchestration.task_timeout_s * len(pipeline.stage_names))
    with DAG(
        dag_id=dag_id,
        description=f"Version the corpus of pipeline {pipeline.name!r} with DVC and write its release manifest",
        schedule=[corpus_asset(pipeline)],
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,  # one DVC workspace per pipeline
        default_args=default_args(pipeline),
        tags=["tamis", "release"],
        doc_md=__doc__,
    ) as dag:
        prepare = stage_operator(pipeline, "prepare_workspace", release_argv("prepare", pipeline))
        reproduce = stage_operator(pipeline, "dvc_repro", release_argv("repro", pipeline),
                                   execution_timeout=repro_timeout)
        push = stage_operator(pipeline, "dvc_push", release_argv("push", pipeline))
        manifest = stage_operator(pipeline, "release_manifest",
                                  release_argv("manifest", pipeline, "--run-id", "{{ run_id }}",
                                               "--source-run-id", SOURCE_RUN_ID),
                                  outlets=[release_asset(pipeline)])
        chain(prepare, reproduce, push, manifest)
    return dag
