"""The production execution path: each stage task as Kubernetes pods or a Spark application.

A pipeline chooses where its stages run with ``execution.mode``; in ``kubernetes`` mode the
``execution.kubernetes`` block (:mod:`tamis.execution`) says how. Pods run exactly the
``tamis`` command line that the local executor runs, in the project's image: a per-batch stage
as pods mapped over batches of its shards, then one pod that writes the manifest; a
whole-dataset stage as one pod. The stages named in ``execution.kubernetes.spark.stages``
run as SparkApplications built from ``k8s/spark-application.yaml`` instead, whose driver runs
the same command line on Spark (``spark_jobs/run_stage.py``).

Credentials never enter a pod spec: Airflow connections are handed to pods as Kubernetes
Secrets (``tamis-conn-<conn id>``, built by :func:`connection_secret_manifest`), exposed as env.
Pods get the connections listed under ``execution.kubernetes.connections`` and those the
pipeline's sources name; a source's Secret holds only ``AIRFLOW_CONN_<ID>``, which the source
readers use, so that it never replaces the store's ``AWS_*`` credentials.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from tamis.execution import ExecutionConfig, KubernetesExecution, check_dns_label
from tamis.pipeline import ConfigError, Pipeline, load_pipeline

K8S_DIR = Path(__file__).resolve().parents[2] / "k8s"
# Where the image keeps the bundle (Dockerfile: WORKDIR /opt/tamis).
IMAGE_ROOT = "/opt/tamis"
TAMIS = "tamis"
SPARK_ENTRY = "spark_jobs/run_stage.py"
CONNECTION_SECRET_PREFIX = "tamis-conn-"


def execution_config(pipeline: Pipeline) -> ExecutionConfig:
    return pipeline.execution


def kubernetes_config(pipeline: Pipeline) -> KubernetesExecution:
    return pipeline.execution.kubernetes


def source_connections(pipeline: Pipeline) -> list[str]:
    """The Airflow connections the pipeline's sources name."""
    return sorted({s.connection for s in pipeline.sources.values() if s.connection})


def pod_connections(pipeline: Pipeline) -> list[str]:
    """Airflow connections whose Secrets every pod gets: the configured ones, the storage
    connection when the store is S3 (a pod cannot read the data without it), and those the
    sources name (a source's Secret holds only its AIRFLOW_CONN_<ID>)."""
    names = list(kubernetes_config(pipeline).connections)
    if pipeline.storage_root.startswith("s3://") and pipeline.storage_connection not in names:
        names.append(pipeline.storage_connection)
    return names + [c for c in source_connections(pipeline) if c not in names]


def reads_sources(pipeline: Pipeline, argv: list[str]) -> bool:
    """Whether ``tamis <argv>`` reads the raw sources: a stage that reads them (or the listing of
    its shards), and the release's snapshot of them."""
    if list(argv[:2]) == ["release", "prepare"]:
        return True
    if len(argv) >= 2 and argv[0] in ("run", "shards") and argv[1] in pipeline.stage_names:
        return pipeline.stage_type(argv[1]).reads_sources
    return False


def connection_secret_name(conn_id: str) -> str:
    return check_dns_label(CONNECTION_SECRET_PREFIX + re.sub(r"[^a-z0-9-]+", "-", conn_id.lower()).strip("-"))


# --- pods -----------------------------------------------------------------------------


def _pod_kwargs(pipeline: Pipeline, cfg: KubernetesExecution) -> dict[str, Any]:
    from airflow.providers.cncf.kubernetes.secret import Secret
    from kubernetes.client import models as k8s

    secret_names = [*cfg.secrets, *(connection_secret_name(c) for c in pod_connections(pipeline))]
    timeout = cfg.execution_timeout_s or pipeline.orchestration.task_timeout_s
    return {
        "kubernetes_conn_id": cfg.kubernetes_conn_id,
        "in_cluster": cfg.in_cluster,
        "namespace": cfg.namespace,
        "image": cfg.image,
        "image_pull_policy": cfg.image_pull_policy,
        "service_account_name": cfg.service_account,
        "pod_template_file": str(K8S_DIR / cfg.pod_template),
        "container_resources": k8s.V1ResourceRequirements(
            requests=dict(cfg.resources.requests), limits=dict(cfg.resources.limits)
        ),
        "node_selector": dict(cfg.node_selector),
        "tolerations": [
            k8s.V1Toleration(
                key=t.key, operator=t.operator, value=t.value, effect=t.effect, toleration_seconds=t.toleration_seconds
            )
            for t in cfg.tolerations
        ],
        "labels": {"app.kubernetes.io/name": "tamis", "tamis/pipeline": pipeline.name, **cfg.labels},
        "env_vars": [k8s.V1EnvVar(name=k, value=v) for k, v in cfg.env.items()],
        "configmaps": list(cfg.config_maps),
        "secrets": [Secret("env", None, name) for name in secret_names],
        "startup_timeout_seconds": cfg.startup_timeout_s,
        "execution_timeout": timedelta(seconds=timeout),
        # The pod's own deadline backs up Airflow's, so a lost scheduler cannot leave it running.
        "active_deadline_seconds": timeout,
        "get_logs": True,
        "on_finish_action": "delete_succeeded_pod",
    }


def kubernetes_stage_operator(pipeline: Pipeline, task_id: str, argv: list[str], **kwargs):
    """A KubernetesPodOperator that runs ``tamis <argv>`` in the project's image."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    cfg = kubernetes_config(pipeline)
    options = {**_pod_kwargs(pipeline, cfg), **kwargs}
    return KubernetesPodOperator(task_id=task_id, cmds=[TAMIS], arguments=list(argv), **options)


def mapped_shard_operator(pipeline: Pipeline, task_id: str, argument_lists, **kwargs):
    """Pods mapped over batches of shards: one ``tamis <argv> --shard A --shard B ...`` each.

    ``argument_lists`` is the XComArg of :func:`shard_batches_task` (argument lists made at run
    time, once the input exists). Each pod commits its own shards; a retried pod redoes only
    those not yet committed. The pods of one run share a lease owner, so they write the
    stage's dataset together while another run is kept out.
    """
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    cfg = kubernetes_config(pipeline)
    options = {**_pod_kwargs(pipeline, cfg), **kwargs}
    options["env_vars"] = [*options["env_vars"], k8s.V1EnvVar(name="TAMIS_LEASE_OWNER", value=LEASE_OWNER)]
    return KubernetesPodOperator.partial(
        task_id=task_id, cmds=[TAMIS], max_active_tis_per_dagrun=cfg.fanout.max_active_tasks, **options
    ).expand(arguments=argument_lists)


# Every task of one stage in one run shares it: mapped pods write disjoint shards together.
LEASE_OWNER = "{{ dag.dag_id }}/{{ run_id }}/{{ task.task_id }}"


def shard_batches(pipeline_ref: str, stage: str, run_id: str, argv: list[str], shards_per_task: int) -> list[list[str]]:
    """``argv`` plus ``--shard`` options, one argument list per batch of the stage's input shards."""
    from tamis.cli import parse_params, stage_io

    pipeline = load_pipeline(pipeline_ref)
    params = parse_params([argv[i + 1] for i, a in enumerate(argv) if a == "--param"])
    input_url, _ = stage_io(pipeline, stage, run_id)
    names = [shard.name for shard in pipeline.stage(stage, params).input_shards(input_url)]
    return [
        [*argv, *[x for name in names[i : i + shards_per_task] for x in ("--shard", name)]]
        for i in range(0, len(names), shards_per_task)
    ]


def shard_batches_task(pipeline: Pipeline, stage: str, pipeline_ref: str, argv: list[str], **kwargs):
    """A task that lists a stage's input shards (it reads manifests and listings, no data)
    and returns the argument lists of the mapped pods. ``pipeline_ref`` and ``argv`` may hold
    templates; they are rendered when the task runs."""
    from airflow.sdk import task

    connection = pipeline.storage_connection if pipeline.storage_root.startswith("s3://") else None
    sources = source_connections(pipeline) if pipeline.stage_type(stage).reads_sources else []
    per_task = kubernetes_config(pipeline).fanout.shards_per_task

    @task(task_id=f"list_{stage}_shards", **kwargs)
    def list_shards(pipeline_ref: str, argv: list[str], run_id: str | None = None) -> list[list[str]]:
        import os

        from airflow.sdk import Connection

        if connection:
            os.environ.update(connection_env(Connection.get(connection)))
        for conn_id in sources:  # listing a Git, HTTP or S3 source reaches it
            os.environ.update(connection_env(Connection.get(conn_id), source_only=True))
        assert run_id is not None, "Airflow fills a task's run_id argument from the DAG run's context"
        return shard_batches(pipeline_ref, stage, run_id, argv, per_task)

    return list_shards(pipeline_ref, argv)


# --- Spark ----------------------------------------------------------------------------


def spark_application(pipeline: Pipeline, stage: str, arguments: list[str]) -> dict[str, Any]:
    """The SparkApplication for ``stage``, from the template in k8s/ and the pipeline's config."""
    cfg = kubernetes_config(pipeline)
    spark = cfg.spark
    template_path = K8S_DIR / spark.template
    body = yaml.safe_load(template_path.read_text())
    if body.get("kind") != "SparkApplication":
        raise ConfigError(f"{template_path}: expected kind SparkApplication, found {body.get('kind')!r}")
    body = copy.deepcopy(body)
    name = check_dns_label(f"tamis-{stage.replace('_', '-')}")
    body["metadata"] = {**body.get("metadata", {}), "name": name, "namespace": cfg.namespace}
    body["metadata"]["labels"] = {
        **body["metadata"].get("labels", {}),
        "tamis/pipeline": pipeline.name,
        "tamis/stage": stage,
    }
    spec = body["spec"]
    spec.update(
        {
            "image": cfg.image,
            "imagePullPolicy": cfg.image_pull_policy,
            "sparkVersion": spark.spark_version,
            "mainApplicationFile": f"local://{IMAGE_ROOT}/{SPARK_ENTRY}",
            "arguments": list(arguments),
            "sparkConf": {**spec.get("sparkConf", {}), **spark.conf},
        }
    )
    env = [{"name": k, "value": v} for k, v in cfg.env.items()]
    env_from = (
        [{"configMapRef": {"name": n}} for n in cfg.config_maps]
        + [{"secretRef": {"name": n}} for n in cfg.secrets]
        + [{"secretRef": {"name": connection_secret_name(c)}} for c in pod_connections(pipeline)]
    )
    tolerations = [
        {
            k: v
            for k, v in {
                "key": t.key,
                "operator": t.operator,
                "value": t.value,
                "effect": t.effect,
                "tolerationSeconds": t.toleration_seconds,
            }.items()
            if v is not None
        }
        for t in cfg.tolerations
    ]
    for role, size in (("driver", spark.driver), ("executor", spark.executor)):
        part = spec.setdefault(role, {})
        part.update({"cores": size.cores, "memory": size.memory})
        if role == "driver":
            # The driver creates its executors, so it needs the tamis-spark Role (k8s/rbac.yaml).
            part["serviceAccount"] = spark.service_account
        else:
            part["instances"] = size.instances
        part["labels"] = {**part.get("labels", {}), "tamis/pipeline": pipeline.name, "tamis/stage": stage}
        part["env"] = [*part.get("env", []), *env]
        part["envFrom"] = [*part.get("envFrom", []), *env_from]
        if cfg.node_selector:
            part["nodeSelector"] = dict(cfg.node_selector)
        if tolerations:
            part["tolerations"] = tolerations
    return body


def spark_stage_operator(pipeline: Pipeline, task_id: str, stage: str, arguments: list[str], **kwargs):
    """A SparkKubernetesOperator whose driver runs ``tamis <arguments>`` on Spark
    (spark_jobs/run_stage.py, the same command line as a pod)."""
    from airflow.providers.cncf.kubernetes.operators.spark_kubernetes import SparkKubernetesOperator

    cfg = kubernetes_config(pipeline)
    body = spark_application(pipeline, stage, arguments)
    timeout = cfg.execution_timeout_s or pipeline.orchestration.task_timeout_s
    options = {
        "namespace": cfg.namespace,
        "kubernetes_conn_id": cfg.kubernetes_conn_id or "kubernetes_default",
        "startup_timeout_seconds": cfg.startup_timeout_s,
        "execution_timeout": timedelta(seconds=timeout),
        "get_logs": True,
        **kwargs,
    }
    if cfg.in_cluster is not None:
        options.setdefault("in_cluster", cfg.in_cluster)
    return SparkKubernetesOperator(
        task_id=task_id, name=body["metadata"]["name"], template_spec={"spark": body}, **options
    )


def execution_operator(pipeline: Pipeline, task_id: str, argv: list[str], **kwargs):
    """The cluster operator for one ``tamis`` command line: a Spark application for the stages
    listed under ``kubernetes.spark.stages``, else a pod."""
    cfg = kubernetes_config(pipeline)
    if len(argv) >= 2 and argv[0] == "run" and argv[1] in cfg.spark.stages:
        return spark_stage_operator(pipeline, task_id, argv[1], list(argv), **kwargs)
    return kubernetes_stage_operator(pipeline, task_id, argv, **kwargs)


# --- credentials ----------------------------------------------------------------------


def connection_env(conn, source_only: bool = False) -> dict[str, str]:
    """The env a pod needs to use an Airflow connection: AIRFLOW_CONN_<ID> always, and AWS_* for
    an aws connection of the store (not for a source's: it would replace the store's)."""
    env = {f"AIRFLOW_CONN_{conn.conn_id.upper()}": conn.get_uri()}
    if conn.conn_type == "aws" and not source_only:
        extra = conn.extra_dejson
        values = {
            "AWS_ACCESS_KEY_ID": conn.login or extra.get("aws_access_key_id"),
            "AWS_SECRET_ACCESS_KEY": conn.password or extra.get("aws_secret_access_key"),
            "AWS_SESSION_TOKEN": extra.get("aws_session_token"),
            "AWS_DEFAULT_REGION": extra.get("region_name"),
            "AWS_ENDPOINT_URL": extra.get("endpoint_url")
            or (extra.get("service_config") or {}).get("s3", {}).get("endpoint_url"),
        }
        env.update({k: str(v) for k, v in values.items() if v})
    return env


def connection_secret_manifest(conn, namespace: str, source_only: bool = False) -> dict[str, Any]:
    """A Secret (stringData) holding :func:`connection_env` of ``conn``, for ``kubectl apply -f -``."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": connection_secret_name(conn.conn_id),
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "tamis", "tamis/connection": conn.conn_id},
        },
        "type": "Opaque",
        "stringData": connection_env(conn, source_only),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m tamis_airflow.kubernetes connection-secret CONN_ID [--pipeline P]`` prints the Secret."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tamis_airflow.kubernetes")
    sub = parser.add_subparsers(required=True, dest="command")
    secret = sub.add_parser("connection-secret", help="print the Secret that hands an Airflow connection to pods")
    secret.add_argument("conn_id")
    secret.add_argument("--pipeline", default="default")
    args = parser.parse_args(argv)
    from airflow.sdk import Connection

    pipeline = load_pipeline(args.pipeline)
    cfg = kubernetes_config(pipeline)
    source_only = (
        args.conn_id in source_connections(pipeline)
        and args.conn_id not in cfg.connections
        and args.conn_id != pipeline.storage_connection
    )
    manifest = connection_secret_manifest(Connection.get(args.conn_id), cfg.namespace, source_only)
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
