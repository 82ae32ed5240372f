"""``execution`` in a pipeline YAML: where the stages run.

* ``local``: each stage in a process pool on this machine (the embedded default).
* ``spark``: each stage on Spark (``execution.spark.master``: ``local[*]``, ``spark://...``,
  ``k8s://...``), through the same ``tamis`` command line.
* ``kubernetes``: each stage task as a pod running the ``tamis`` command line in the
  project's image (per-batch stages fanned out over batches of shards), and the stages
  listed under ``kubernetes.spark.stages`` as SparkApplications.

The models here are plain configuration: the Airflow side (``tamis_airflow.kubernetes``)
turns them into operators.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


def check_dns_label(value: str) -> str:
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


class SparkApplications(_Strict):
    """``kubernetes.spark``: stages that run as SparkApplications instead of pods."""

    # Stage names of the pipeline; the whole-dataset stages do their global step on Spark.
    stages: list[str] = Field(default_factory=list)
    template: str = "spark-application.yaml"  # under k8s/
    spark_version: str = "4.3.0"
    service_account: str = "tamis-spark"
    driver: SparkRole = Field(default_factory=lambda: SparkRole(cores=1, memory="2g"))
    executor: SparkRole = Field(default_factory=lambda: SparkRole(cores=2, memory="4g", instances=2))
    conf: dict[str, str] = Field(default_factory=dict)  # sparkConf entries


class Fanout(_Strict):
    """How a per-batch stage spreads over pods: one mapped task per batch of shards."""

    shards_per_task: int = Field(default=8, ge=1)
    max_active_tasks: int = Field(default=16, ge=1)


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
    fanout: Fanout = Field(default_factory=Fanout)
    spark: SparkApplications = Field(default_factory=SparkApplications)

    @field_validator("namespace", "service_account")
    @classmethod
    def _names(cls, value: str) -> str:
        return check_dns_label(value)

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
        return [check_dns_label(name) for name in value]


class SparkExecution(_Strict):
    """``execution.spark``: the cluster of ``mode: spark``."""

    master: str = "local[*]"
    conf: dict[str, str] = Field(default_factory=dict)  # SparkConf entries
    # Stage names to run on Spark; None: every stage that can (the rest run locally).
    stages: list[str] | None = None

    @field_validator("conf", mode="before")
    @classmethod
    def _strings(cls, value: dict[str, Any] | None) -> dict[str, str]:
        return {k: str(v) for k, v in (value or {}).items()}


class ExecutionConfig(_Strict):
    """``execution`` in a pipeline YAML: the switch between this machine, Spark and the cluster."""

    mode: Literal["local", "spark", "kubernetes"] = "local"
    # `tamis build` and `tamis nightly run`: consecutive per-batch stages on one engine run in
    # one pass over each shard (each still writes its own dataset); DAG tasks stay per stage.
    fuse_batch_stages: bool = False
    spark: SparkExecution = Field(default_factory=SparkExecution)
    kubernetes: KubernetesExecution = Field(default_factory=KubernetesExecution)
