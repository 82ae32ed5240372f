"""The production execution path: each stage task as a Kubernetes pod or a Spark application.

A pipeline chooses where its stages run with ``execution.mode`` (``local`` or ``kubernetes``);
the ``execution.kubernetes`` block below says how. Pods run exactly the ``tamis`` command line
that the local executor runs, in the project's image; the stages named in
``execution.kubernetes.spark.stages`` run as SparkApplications built from
``k8s/spark-application.yaml`` instead.

Credentials never enter a pod spec: Airflow connections are handed to pods as Kubernetes
Secrets (``tamis-conn-<conn id>``, built by :func:`connection_secret_manifest`), exposed as env.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tamis.pipeline import ConfigError, Pipeline, load_pipeline

K8S_DIR = Path(__file__).resolve().parents[2] / "k8s"
# Where the image keeps the bundle (Dockerfile: WORKDIR /opt/tamis).
IMAGE_ROOT = "/opt/tamis"
TAMIS = "tamis"
CONNECTION_SECRET_PREFIX = "tamis-conn-"
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_quantities(value: dict[str, str]) -> dict[str, str]:
    for resource, quantity in value.items():
        if not _QUANTITY.match(str(quantity)):
            raise ValueError(f"resource {resource!r}: {quantity!r} is not a Kubernetes quantity (e.g. 500m, 2Gi)")
    return {k: str(v) for k, v in value.items()}


def _check_dns_label(value: str) -> str:
    if not _DNS_LABEL.match(value) or len(value) > 63:
        raise ValueError(f"{value!r} is not a Kubernetes name (lower-case letters, digits and '-', at most 63)")
    return value


class Resources(_Strict):
    """Container requests and limits, as Kubernetes quantities."""

    requests: dict[str, str] = Field(default_factory=lambda: {"cpu": "1", "memory": "2Gi"})
    limits: dict[str, str] = Field(default_factory=lambda: {"memory": "4Gi"})

    @field_validator("requests", "limits", mode="before")
    @classmethod
    def _quantities(cls, value: dict[str, Any] | None) -> dict[str, str]:
        return _check_quantities(value or {})


class Toleration(_Strict):
    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0)


class SparkRole(_Strict):
    """Size of the Spark driver or of each executor."""

    cores: int = Field(default=1, ge=1)
    memory: str = "2g"
    instances: int = Field(default=1, ge=1)  # executors only

    @field_validator("memory")
    @classmethod
    def _jvm_memory(cls, value: str) -> str:
        if not re.match(r"^[0-9]+[kmgt]$", value):
            raise ValueError(f"Spark memory {value!r} must look like 512m or 4g")
        return value


class SparkConfig(_Strict):
    """Stages that run as SparkApplications (spark_jobs/<stage>.py) instead of pods."""

    stages: list[str] = Field(default_factory=lambda: ["near_dedup"])
    template: str = "spark-application.yaml"  # under k8s/
    spark_version: str = "4.3.0"
    service_account: str = "tamis-spark"
    driver: SparkRole = Field(default_factory=lambda: SparkRole(cores=1, memory="2g"))
    executor: SparkRole = Field(default_factory=lambda: SparkRole(cores=2, memory="4g", instances=2))
    conf: dict[str, str] = Field(default_factory=dict)  # sparkConf entries


class KubernetesExecution(_Strict):
    """``execution.kubernetes`` in a pipeline YAML."""

    image: str = "tamis:0.1.0"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    namespace: str = "tamis"
    service_account: str = "tamis-runner"
    kubernetes_conn_id: str | None = "kubernetes_default"
    in_cluster: bool | None = None
    pod_template: str = "pod-template.yaml"  # under k8s/
    resources: Resources = Field(default_factory=Resources)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    env: dict[str, str] = Field(default_factory=dict)
    # Names of Kubernetes Secrets whose keys become env vars in every pod.
    secrets: list[str] = Field(default_factory=list)
    # Names of ConfigMaps whose keys become env vars (k8s/storage-configmap.yaml: tamis-storage).
    config_maps: list[str] = Field(default_factory=lambda: ["tamis-storage"])
    # Airflow connection ids whose credentials pods get, through the Secret tamis-conn-<id>.
    connections: list[str] = Field(default_factory=list)
    startup_timeout_s: int = Field(default=600, gt=0)
    # Wall-clock bound of one task; defaults to orchestration.task_timeout_s.
    execution_timeout_s: int | None = Field(default=None, gt=0)
    spark: SparkConfig = Field(default_factory=SparkConfig)

    @field_validator("namespace", "service_account")
    @classmethod
    def _names(cls, value: str) -> str:
        return _check_dns_label(value)

    @field_validator("env", mode="before")
    @classmethod
    def _env_names(cls, value: dict[str, Any] | None) -> dict[str, str]:
        value = value or {}
        for name in value:
            if not _ENV_NAME.match(name):
                raise ValueError(f"env var name {name!r} is not valid in a pod")
        return {k: str(v) for k, v in value.items()}

    @field_validator("secrets", "config_maps")
    @classmethod
    def _object_names(cls, value: list[str]) -> list[str]:
        return [_check_dns_label(name) for name in value]


class ExecutionConfig(_Strict):
    """``execution`` in a pipeline YAML: the switch between this machine and the cluster."""

    mode: Literal["local", "kubernetes"] = "local"
    kubernetes: KubernetesExecution = Field(default_factory=KubernetesExecution)


def execution_config(pipeline: Pipeline) -> ExecutionConfig:
    try:
        return ExecutionConfig(**(pipeline.execution or {}))
    except ValueError as exc:
        raise ConfigError(f"invalid execution block in {pipeline.path}: {exc}") from exc


def kubernetes_config(pipeline: Pipeline) -> KubernetesExecution:
    return execution_config(pipeline).kubernetes


def connection_secret_name(conn_id: str) -> str:
    return _check_dns_label(CONNECTION_SECRET_PREFIX + re.sub(r"[^a-z0-9-]+", "-", conn_id.lower()).strip("-"))


# --- pods -----------------------------------------------------------------------------


def _pod_kwargs(pipeline: Pipeline, cfg: KubernetesExecution) -> dict[str, Any]:
    from kubernetes.client import models as k8s
    from airflow.providers.cncf.kubernetes.secret import Secret

    secret_names = [*cfg.secrets, *(connection_secret_name(c) for c in cfg.connections)]
    timeout = cfg.execution_timeout_s or pipeline.orchestration.task_timeout_s
    return {
        "kubernetes_conn_id": cfg.kubernetes_conn_id,
        "in_cluster": cfg.in_cluster,
        "namespace": cfg.namespace,
        "image": cfg.image,
        "image_pull_policy": cfg.image_pull_policy,
        "service_account_name": cfg.service_account,
        "pod_template_file": str(K8S_DIR / cfg.pod_template),
        "container_resources": k8s.V1ResourceRequirements(requests=dict(cfg.resources.requests),
                                                          limits=dict(cfg.resources.limits)),
        "node_selector": dict(cfg.node_selector),
        "tolerations": [
            k8s.V1Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect,
                             toleration_seconds=t.toleration_seconds)
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


def mapped_shard_operator(pipeline: Pipeline, task_id: str, argv: list[str], shard_names, **kwargs):
    """One pod per input shard: ``tamis <argv> --shard NAME``, mapped over ``shard_names``.

    ``shard_names`` is a list or the XComArg of a task returning one (see :func:`input_shard_names`).
    Each pod commits its shard; an unmapped ``tamis <argv>`` afterwards finds every shard
    committed (the runner resumes) and publishes the manifest.
    """
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    cfg = kubernetes_config(pipeline)
    options = {**_pod_kwargs(pipeline, cfg), **kwargs}
    base = list(argv)
    if isinstance(shard_names, (list, tuple)):
        arguments = [shard_argv(base, name) for name in shard_names]
    else:
        arguments = shard_names.map(lambda name: shard_argv(base, name))
    return (KubernetesPodOperator.partial(task_id=task_id, cmds=[TAMIS], **options)
            .expand(arguments=arguments))


def shard_argv(argv: list[str], shard: str) -> list[str]:
    return [*argv, "--shard", shard]


def input_shard_names(pipeline_ref: str, stage: str, run_id: str,
                      overrides: dict[str, Any] | None = None) -> list[str]:
    """Names of the input shards of ``stage`` in run ``run_id``: what a mapped stage fans out over."""
    pipeline = load_pipeline(pipeline_ref)
    previous = pipeline.previous_stage(stage)
    input_url = pipeline.stage_url(run_id, previous) if previous is not None else None
    return [shard.name for shard in pipeline.stage(stage, overrides).input_shards(input_url)]


def shard_lister(stage: str, pipeline_ref: str, task_id: str | None = None):
    """A task returning the input shard names of ``stage``; it lists files, it reads no data.

    ``pipeline_ref`` may be a template (``{{ params.pipeline }}``): it is rendered at run time.
    """
    from airflow.sdk import task

    @task(task_id=task_id or f"list_{stage}_shards")
    def list_shards(pipeline: str, stage: str, run_id: str | None = None) -> list[str]:
        return input_shard_names(pipeline, stage, run_id)

    return list_shards(pipeline_ref, stage)


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
    name = _check_dns_label(f"tamis-{stage.replace('_', '-')}")
    body["metadata"] = {**body.get("metadata", {}), "name": name, "namespace": cfg.namespace}
    body["metadata"]["labels"] = {**body["metadata"].get("labels", {}), "tamis/pipeline": pipeline.name,
                                  "tamis/stage": stage}
    spec = body["spec"]
    spec.update({
        "image": cfg.image,
        "imagePullPolicy": cfg.image_pull_policy,
        "sparkVersion": spark.spark_version,
        "mainApplicationFile": f"local://{IMAGE_ROOT}/spark_jobs/{stage}.py",
        "arguments": list(arguments),
        "sparkConf": {**spec.get("sparkConf", {}), **spark.conf},
    })
    env = [{"name": k, "value": v} for k, v in cfg.env.items()]
    env_from = ([{"configMapRef": {"name": n}} for n in cfg.config_maps]
                + [{"secretRef": {"name": n}} for n in cfg.secrets]
                + [{"secretRef": {"name": connection_secret_name(c)}} for c in cfg.connections])
    tolerations = [{k: v for k, v in {"key": t.key, "operator": t.operator, "value": t.value, "effect": t.effect,
                                      "tolerationSeconds": t.toleration_seconds}.items() if v is not None}
                   for t in cfg.tolerations]
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
    """A SparkKubernetesOperator that submits spark_jobs/<stage>.py with ``arguments``."""
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
    return SparkKubernetesOperator(task_id=task_id, name=body["metadata"]["name"],
                                   template_spec={"spark": body}, **options)


def spark_arguments(argv: list[str]) -> list[str]:
    """``tamis run <stage> --pipeline P --run-id R ...`` -> what the Spark job gets: ``--pipeline P --run-id R ...``."""
    return list(argv[2:])


def execution_operator(pipeline: Pipeline, task_id: str, argv: list[str], **kwargs):
    """The cluster operator for one ``tamis`` command line: a Spark app for Spark stages, else a pod."""
    cfg = kubernetes_config(pipeline)
    if len(argv) >= 2 and argv[0] == "run" and argv[1] in cfg.spark.stages:
        return spark_stage_operator(pipeline, task_id, argv[1], spark_arguments(argv), **kwargs)
    return kubernetes_stage_operator(pipeline, task_id, argv, **kwargs)


# --- credentials ----------------------------------------------------------------------


def connection_env(conn) -> dict[str, str]:
    """The env a pod needs to use an Airflow connection: AWS_* for aws, AIRFLOW_CONN_<ID> always."""
    env = {f"AIRFLOW_CONN_{conn.conn_id.upper()}": conn.get_uri()}
    if conn.conn_type == "aws":
        extra = conn.extra_dejson
        values = {
            "AWS_ACCESS_KEY_ID": conn.login or extra.get("aws_access_key_id"),
            "AWS_SECRET_ACCESS_KEY": conn.password or extra.get("aws_secret_access_key"),
            "AWS_SESSION_TOKEN": extra.get("aws_session_token"),
            "AWS_DEFAULT_REGION": extra.get("region_name"),
            "AWS_ENDPOINT_URL": extra.get("endpoint_url") or (extra.get("service_config") or {}).get(
                "s3", {}).get("endpoint_url"),
        }
        env.update({k: str(v) for k, v in values.items() if v})
    return env


def connection_secret_manifest(conn, namespace: str) -> dict[str, Any]:
    """A Secret (stringData) holding :func:`connection_env` of ``conn``, for ``kubectl apply -f -``."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": connection_secret_name(conn.conn_id), "namespace": namespace,
                     "labels": {"app.kubernetes.io/name": "tamis", "tamis/connection": conn.conn_id}},
        "type": "Opaque",
        "stringData": connection_env(conn),
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

    namespace = kubernetes_config(load_pipeline(args.pipeline)).namespace
    manifest = connection_secret_manifest(Connection.get(args.conn_id), namespace)
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
