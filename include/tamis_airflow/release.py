"""The ``dataset_release`` DAG: version the corpus with DVC whenever it is updated.

Scheduled on the corpus Asset that ``corpus_build`` (and the nightly ingest) update, it runs
the ``tamis release`` steps in order: prepare the workspace, ``dvc repro``, ``dvc push``,
the release manifest, then ``preheat``: the release is copied from the remote to the hot
location training jobs read (``release.hot``; a ReadWriteMany volume mounted in pods), every
file's hash is verified, and only then the task succeeds and updates the *ready* Asset
(``tamis://release-ready/<pipeline>``) that training DAGs schedule on; the version it made
ready is in ``<hot>/_latest/<pipeline>.json``. The workspace is a folder every task must see:
on one machine a local folder, with Kubernetes execution a shared volume (``release.workspace``).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import DAG, Asset, chain

from tamis.pipeline import ConfigError, Pipeline, load_pipeline, resolve_pipeline_path
from tamis.release import release_config
from tamis_airflow.corpus import START_DATE, corpus_asset, default_args, stage_operator

# The corpus run whose asset event triggered this run (empty when triggered by hand).
SOURCE_RUN_ID = (
    "{% for events in triggering_asset_events.values() %}{% for event in events %}"
    "{% if loop.last and event.source_run_id %}{{ event.source_run_id }}{% endif %}{% endfor %}{% endfor %}"
)


def release_asset(pipeline: Pipeline) -> Asset:
    """Updated when a release of the pipeline's corpus has been pushed and its manifest written."""
    return Asset(name=f"tamis_release_{pipeline.name}", uri=f"tamis://release/{pipeline.name}")


def release_ready_asset(pipeline: Pipeline) -> Asset:
    """Updated once a release has been copied to the hot location and every file verified."""
    return Asset(name=f"tamis_release_ready_{pipeline.name}", uri=f"tamis://release-ready/{pipeline.name}")


def pipeline_ref(pipeline: Pipeline) -> str:
    """How a command names the pipeline: its name when it is one of include/pipelines, else its file."""
    try:
        if resolve_pipeline_path(pipeline.name) == Path(pipeline.path):
            return pipeline.name
    except ConfigError:
        pass
    return pipeline.path


def release_argv(step: str, pipeline: Pipeline, *extra: str) -> list[str]:
    return ["release", step, "--pipeline", pipeline_ref(pipeline), *extra]


def hot_volume(pipeline: Pipeline) -> dict:
    """In pods, the hot location is the shared volume (k8s/hot-volume.yaml) mounted at release.hot,
    which the pod's TAMIS_HOT_ROOT names (the default pipeline reads it)."""
    if pipeline.execution.mode != "kubernetes":
        return {}
    from kubernetes.client import models as k8s

    config = release_config(pipeline)
    env = {**pipeline.execution.kubernetes.env, "TAMIS_HOT_ROOT": config.hot}
    return {
        "volumes": [
            k8s.V1Volume(
                name="tamis-hot",
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=config.hot_volume_claim),
            )
        ],
        "volume_mounts": [k8s.V1VolumeMount(name="tamis-hot", mount_path=config.hot)],
        "env_vars": [k8s.V1EnvVar(name=k, value=v) for k, v in env.items()],
    }


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
        reproduce = stage_operator(
            pipeline, "dvc_repro", release_argv("repro", pipeline), execution_timeout=repro_timeout
        )
        push = stage_operator(pipeline, "dvc_push", release_argv("push", pipeline))
        manifest = stage_operator(
            pipeline,
            "release_manifest",
            release_argv("manifest", pipeline, "--run-id", "{{ run_id }}", "--source-run-id", SOURCE_RUN_ID),
            outlets=[release_asset(pipeline)],
        )
        preheat = stage_operator(
            pipeline,
            "preheat",
            release_argv("preheat", pipeline),
            outlets=[release_ready_asset(pipeline)],
            **hot_volume(pipeline),
        )
        chain(prepare, reproduce, push, manifest, preheat)
    return dag
