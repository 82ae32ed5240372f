"""The Kubernetes execution path, checked offline: every pod and SparkApplication the DAGs
would submit, and every manifest under k8s/, against the Kubernetes API schemas."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pendulum
import promql_parser
import pytest
import referencing
import yaml
from kubernetes_validate.utils import schema_contents

from conftest import REPO
from tamis import metrics as tamis_metrics
from tamis.dataset import Dataset
from tamis.execution import KubernetesExecution
from tamis.pipeline import ConfigError, load_pipeline
from tamis_airflow import commands
from tamis_airflow import kubernetes as tk

K8S = REPO / "k8s"
K8S_VERSION = "1.34"
RUN_ID = "manual__2026-11-23T08:00:00+00:00"
METRICS = set(tamis_metrics.METRICS)  # every gauge and counter the pipeline exports
# Everything the cluster-side config can set, so that each field reaches a schema check.
FULL_KUBERNETES = {
    "image": "registry.example.com/tamis:0.1.0",
    "namespace": "tamis",
    "resources": {"requests": {"cpu": "2", "memory": "3Gi"}, "limits": {"cpu": "4", "memory": "6Gi"}},
    "node_selector": {"workload": "batch"},
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "tamis", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists", "toleration_seconds": 300, "effect": "NoExecute"},
    ],
    "env": {"TAMIS_LOG_LEVEL": "INFO", "OMP_NUM_THREADS": 2},
    "secrets": ["tamis-hf-token"],
    "connections": ["aws_default"],
    "labels": {"team": "data"},
    "execution_timeout_s": 7200,
    "spark": {
        "executor": {"instances": 8, "cores": 4, "memory": "12g"},
        "conf": {"spark.sql.shuffle.partitions": "512"},
    },
}


@pytest.fixture(autouse=True)
def _airflow(airflow_home, monkeypatch):
    monkeypatch.delenv("TAMIS_EXECUTION", raising=False)


def pipeline_with(tmp_path, execution: dict):
    """The default pipeline with another execution block, loaded (and so validated) as a user's YAML is."""
    config = yaml.safe_load((REPO / "include/pipelines/default.yaml").read_text())
    config["execution"] = execution
    for source in config["sources"].values():
        source["path"] = str(REPO / "include/pipelines" / source["path"])
    config["storage_root"] = str(tmp_path / "store")
    for stage in ("tokenize", "pack"):
        config["stages"][stage]["tokenizer"] = str(REPO / "include/sample/tokenizer.json")
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return load_pipeline(str(path))


@pytest.fixture
def cluster_pipeline(tmp_path):
    return pipeline_with(tmp_path, {"mode": "kubernetes", "kubernetes": FULL_KUBERNETES})


def serialize(obj) -> dict:
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def validate_kind(document: dict) -> None:
    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def validate_part(value, definition: str) -> None:
    """Validate a fragment (an EnvVar, a Toleration...) against its core definition, e.g. ``envvar-v1``."""
    folder = f"kubernetes-json-schema/v{K8S_VERSION}.0-local-strict"
    schema = schema_contents(f"{folder}/{definition}.json", K8S_VERSION)
    definitions = schema_contents(f"{folder}/_definitions.json", K8S_VERSION)
    registry = referencing.Registry().with_resources(
        [
            ("", referencing.Resource.from_contents(schema, default_specification=referencing.jsonschema.DRAFT202012)),
            (
                "_definitions.json",
                referencing.Resource.from_contents(
                    definitions, default_specification=referencing.jsonschema.DRAFT202012
                ),
            ),
        ]
    )
    jsonschema.Draft202012Validator(schema, registry=registry).validate(value)


def context_for(dag, task) -> dict:
    return {
        "params": dag.params.dump(),
        "run_id": RUN_ID,
        "dag": dag,
        "task": task,
        "ds": "2026-11-22",
        "triggering_asset_events": {},
    }


def parse_dags(monkeypatch, mode: str) -> dict:
    """The DAGs as Airflow parses them from dags/, in an execution mode."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("TAMIS_EXECUTION", mode)
    bag = DagBag(dag_folder=str(REPO / "dags"), bundle_path=REPO / "dags", safe_mode=False)
    assert bag.import_errors == {}
    return bag.dags


def rendered(task, dag):
    task.render_template_fields(context_for(dag, task))
    return task


def a_dag():
    from airflow.sdk import DAG

    return DAG("k8s_test", schedule=None, start_date=pendulum.datetime(2026, 11, 1, tz="UTC"))


# --- config ---------------------------------------------------------------------------


def test_default_pipeline_runs_locally_unless_switched():
    assert tk.execution_config(load_pipeline("default")).mode == "local"


def test_execution_switch_reads_the_environment(monkeypatch):
    monkeypatch.setenv("TAMIS_EXECUTION", "kubernetes")
    assert tk.execution_config(load_pipeline("default")).mode == "kubernetes"


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"resources": {"requests": {"cpu": "two"}}}, "cpu"),
        ({"namespace": "Tamis_Prod"}, "Tamis_Prod"),
        ({"tolerations": [{"key": "a", "effect": "Sometimes"}]}, "effect"),
        ({"imag": "tamis:1"}, "imag"),
        ({"env": {"BAD NAME": "x"}}, "BAD NAME"),
        ({"spark": {"driver": {"memory": "2GB"}}}, "2GB"),
        ({"spark": {"stages": ["near_dedupe"]}}, "near_dedupe"),
    ],
)
def test_invalid_kubernetes_config_is_a_config_error_naming_the_field(tmp_path, bad, field):
    with pytest.raises(ConfigError, match=re.escape(field)):
        pipeline_with(tmp_path, {"mode": "kubernetes", "kubernetes": bad})


# --- the DAGs as parsed ----------------------------------------------------------------


def test_every_pod_of_every_dag_validates_against_the_kubernetes_schema(monkeypatch):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    pods = 0
    for dag in parse_dags(monkeypatch, "kubernetes").values():
        for task in dag.tasks:
            if isinstance(task, MappedOperator):
                task = task.unmap({"arguments": ["run", task.task_id, "--shard", "a-shard"]})
            if type(task) is not KubernetesPodOperator:  # SparkKubernetesOperator is a subclass
                continue
            pod = serialize(rendered(task, dag).build_pod_request_obj(dry_run=True))
            validate_kind(pod)
            assert pod["spec"]["serviceAccountName"] == "tamis-runner" and pod["metadata"]["namespace"] == "tamis"
            assert "{{" not in json.dumps(pod)
            pods += 1
    assert pods >= 30


def test_a_pod_runs_the_command_line_the_local_task_runs(monkeypatch):
    """Every task both modes have runs the same tamis arguments; a per-batch stage's pods
    run its local command plus their own --shard options."""
    from airflow.providers.cncf.kubernetes.operators.spark_kubernetes import SparkKubernetesOperator
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    local = parse_dags(monkeypatch, "local")
    cluster = parse_dags(monkeypatch, "kubernetes")
    compared = 0
    for dag_id, dag in cluster.items():
        local_tasks = {t.task_id: t for t in local[dag_id].tasks}
        for task in dag.tasks:
            if task.task_id not in local_tasks:
                continue
            bash = rendered(local_tasks[task.task_id], local[dag_id])
            local_argv = shlex.split(bash.bash_command)
            assert Path(local_argv[0]).name == "tamis"
            if isinstance(task, MappedOperator):
                lister = task._get_specified_expand_input().value["arguments"].operator
                argv = rendered(lister, dag).op_args[1]
            elif isinstance(task, SparkKubernetesOperator):
                argv = rendered(task, dag).template_spec["spark"]["spec"]["arguments"]
            else:
                argv = serialize(rendered(task, dag).build_pod_request_obj(dry_run=True))["spec"]["containers"][0][
                    "args"
                ]
            assert argv == local_argv[1:], (dag_id, task.task_id)
            compared += 1
    assert compared >= 20


def test_per_batch_stages_fan_out_and_whole_dataset_stages_run_on_spark(monkeypatch):
    from airflow.providers.cncf.kubernetes.operators.spark_kubernetes import SparkKubernetesOperator
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    dag = parse_dags(monkeypatch, "kubernetes")["corpus_build"]
    pipeline = load_pipeline("default")
    for stage in pipeline.stage_names:
        task = dag.get_task(stage)
        if stage in pipeline.execution.kubernetes.spark.stages:
            assert isinstance(task, SparkKubernetesOperator), stage
        elif pipeline.stage_type(stage).kind == "batch":
            assert isinstance(task, MappedOperator), stage
            assert f"list_{stage}_shards" in task.upstream_task_ids
            manifest = dag.get_task(f"{stage}_manifest")
            assert manifest.trigger_rule == "none_failed" and stage in manifest.upstream_task_ids
        assert f"{stage}_gate" in dag.task_dict


def test_shard_batches_cover_every_input_shard_once(tmp_path, monkeypatch):
    from tamis.cli import main

    monkeypatch.setenv("TAMIS_DATA_ROOT", str(tmp_path / "store"))
    assert main(["run", "ingest", "--run-id", RUN_ID, "--workers", "1", "--param", "sources=[udhr, web]"]) == 0
    parts = [p["name"] for p in Dataset(load_pipeline("default").stage_url(RUN_ID, "ingest")).manifest()["parts"]]
    argv = commands.stage_argv("normalize", "default")
    batches = tk.shard_batches("default", "normalize", RUN_ID, argv, 3)
    assert all(batch[: len(argv)] == argv for batch in batches)
    named = [batch[i + 1] for batch in batches for i in range(len(argv), len(batch), 2)]
    assert named == parts and all(len(batch) <= len(argv) + 6 for batch in batches)


# --- pods from config -------------------------------------------------------------------


def test_pod_carries_resources_scheduling_env_and_credentials_from_config(cluster_pipeline):
    with a_dag():
        op = tk.kubernetes_stage_operator(cluster_pipeline, "normalize", commands.stage_argv("normalize", "default"))
    pod = serialize(op.build_pod_request_obj(dry_run=True))
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    assert container["image"] == FULL_KUBERNETES["image"]
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "3Gi"},
        "limits": {"cpu": "4", "memory": "6Gi"},
    }
    assert spec["nodeSelector"] == {"workload": "batch"}
    assert {t["key"] for t in spec["tolerations"]} == {"dedicated", "spot"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["OMP_NUM_THREADS"] == "2" and env["TAMIS_EXECUTION"] == "kubernetes"
    refs = {(k, v["name"]) for source in container["envFrom"] for k, v in source.items()}
    assert refs == {
        ("configMapRef", "tamis-storage"),
        ("secretRef", "tamis-hf-token"),
        ("secretRef", "tamis-conn-aws-default"),
    }
    # The pod template's hardening survives the merge with the operator's settings.
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/scratch", "/tmp"}
    assert spec["activeDeadlineSeconds"] == 7200
    assert op.execution_timeout.total_seconds() == 7200
    assert pod["metadata"]["labels"]["team"] == "data"
    # No credential value is written into the pod spec.
    assert "secret" not in json.dumps(container["env"]).lower()


def test_an_s3_store_hands_its_connection_to_every_pod(tmp_path):
    pipeline = pipeline_with(tmp_path, {"mode": "kubernetes"}).model_copy(update={"storage_root": "s3://lake/tamis"})
    with a_dag():
        op = tk.kubernetes_stage_operator(pipeline, "ingest", commands.stage_argv("ingest", "default"))
    container = serialize(op.build_pod_request_obj(dry_run=True))["spec"]["containers"][0]
    assert {"secretRef": {"name": "tamis-conn-aws-default"}} in container["envFrom"]


def test_execution_timeout_defaults_to_the_orchestration_timeout(tmp_path):
    pipeline = pipeline_with(tmp_path, {"mode": "kubernetes"})
    with a_dag():
        op = tk.kubernetes_stage_operator(pipeline, "ingest", commands.stage_argv("ingest", "default"))
    assert op.execution_timeout.total_seconds() == pipeline.orchestration.task_timeout_s


# --- Spark ----------------------------------------------------------------------------


def spark_body(pipeline, stage="near_dedup"):
    """The SparkApplication exactly as the operator submits it (the provider's own builder)."""
    from airflow.providers.cncf.kubernetes.operators.custom_object_launcher import CustomObjectLauncher

    dag = a_dag()
    with dag:
        op = tk.spark_stage_operator(pipeline, stage, stage, commands.stage_argv(stage, "default"))
    rendered(op, dag)
    launcher = CustomObjectLauncher(
        name=op.name, namespace=op.namespace, kube_client=None, custom_obj_api=None, template_body=op.template_body
    )
    return op, launcher.body


def test_spark_application_has_the_crd_shape_and_its_driver_runs_the_stage_command(cluster_pipeline):
    from tamis.cli import _parser

    op, body = spark_body(cluster_pipeline)
    assert body["apiVersion"] == "sparkoperator.k8s.io/v1beta2" and body["kind"] == "SparkApplication"
    spec = body["spec"]
    for field in ("type", "mode", "image", "mainApplicationFile", "sparkVersion", "driver", "executor"):
        assert spec.get(field), f"SparkApplication spec lacks {field}"
    assert spec["type"] == "Python" and spec["mode"] == "cluster"
    main = spec["mainApplicationFile"].removeprefix("local://")
    assert main.startswith(tk.IMAGE_ROOT + "/") and (REPO / main[len(tk.IMAGE_ROOT) + 1 :]).is_file()
    assert spec["image"] == FULL_KUBERNETES["image"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", body["metadata"]["name"])
    assert body["metadata"]["namespace"] == "tamis" == op.namespace
    # The driver's arguments are a tamis command line for this stage.
    args = _parser().parse_args(spec["arguments"])
    assert (args.command, args.stage, args.run_id) == ("run", "near_dedup", RUN_ID)
    assert spec["executor"]["instances"] == 8 and spec["executor"]["memory"] == "12g"
    assert spec["driver"]["serviceAccount"] == "tamis-spark"
    assert spec["sparkConf"]["spark.sql.shuffle.partitions"] == "512"


def test_spark_application_pod_parts_validate_against_core_schemas(cluster_pipeline):
    _, body = spark_body(cluster_pipeline)
    for role in ("driver", "executor"):
        part = body["spec"][role]
        assert part["env"], role
        for env in part["env"]:
            validate_part(env, "envvar-v1")
        for source in part["envFrom"]:
            validate_part(source, "envfromsource-v1")
        for toleration in part["tolerations"]:
            validate_part(toleration, "toleration-v1")
        validate_part(part["securityContext"], "securitycontext-v1")
        validate_part({"labels": part["labels"]}, "objectmeta-meta-v1")
        assert part["nodeSelector"] == {"workload": "batch"}
    refs = {v["name"] for s in body["spec"]["driver"]["envFrom"] for v in s.values()}
    assert refs == {"tamis-storage", "tamis-hf-token", "tamis-conn-aws-default"}


def test_spark_application_from_a_template_of_another_kind_is_refused(tmp_path):
    pipeline = pipeline_with(
        tmp_path, {"mode": "kubernetes", "kubernetes": {"spark": {"template": "pod-template.yaml"}}}
    )
    with pytest.raises(ConfigError, match="SparkApplication"):
        tk.spark_application(pipeline, "near_dedup", [])


# --- credentials ----------------------------------------------------------------------


def test_connection_secret_hands_aws_credentials_to_pods_as_env():
    from airflow.sdk import Connection

    conn = Connection.from_uri(
        "aws://AKIAEXAMPLE:wJalr%2FEXAMPLEKEY@/?region_name=eu-west-1&endpoint_url=http%3A%2F%2Fminio%3A9000",
        conn_id="aws_default",
    )
    secret = tk.connection_secret_manifest(conn, "tamis")
    validate_kind(secret)
    assert secret["metadata"]["name"] == "tamis-conn-aws-default" == tk.connection_secret_name("aws_default")
    data = secret["stringData"]
    assert data["AWS_ACCESS_KEY_ID"] == "AKIAEXAMPLE"
    assert data["AWS_SECRET_ACCESS_KEY"] == "wJalr/EXAMPLEKEY"
    assert data["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert data["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert Connection.from_uri(data["AIRFLOW_CONN_AWS_DEFAULT"], conn_id="x").password == "wJalr/EXAMPLEKEY"


# --- manifests ------------------------------------------------------------------------


def manifests() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(K8S.glob("*.yaml"))}


def all_documents() -> list[dict]:
    return [d for docs in manifests().values() for d in docs]


def test_every_core_manifest_validates_against_the_kubernetes_schema():
    checked = 0
    for docs in manifests().values():
        for doc in docs:
            if doc["apiVersion"] in ("v1", "rbac.authorization.k8s.io/v1"):
                validate_kind(doc)
                checked += 1
    kinds = {d["kind"] for d in all_documents()}
    assert {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Pod",
        "SparkApplication",
        "PrometheusRule",
        "Kustomization",
    } <= kinds
    assert checked >= 9


def test_manifests_and_config_defaults_name_the_same_objects():
    docs = all_documents()
    names = {(d["kind"], d["metadata"]["name"]) for d in docs if "metadata" in d and "name" in d["metadata"]}
    defaults = KubernetesExecution()
    assert ("Namespace", defaults.namespace) in names
    assert ("ServiceAccount", defaults.service_account) in names
    assert ("ServiceAccount", defaults.spark.service_account) in names
    for config_map in defaults.config_maps:
        assert ("ConfigMap", config_map) in names
    assert (K8S / defaults.pod_template).is_file() and (K8S / defaults.spark.template).is_file()
    for doc in docs:
        if "namespace" in doc.get("metadata", {}):
            assert doc["metadata"]["namespace"] == defaults.namespace, doc["metadata"]
    kustomization = next(d for d in docs if d["kind"] == "Kustomization")
    assert all((K8S / r).is_file() for r in kustomization["resources"])


def test_pod_launcher_role_grants_what_the_operators_need_and_is_bound():
    docs = all_documents()
    role = next(d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "tamis-pod-launcher")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    needed = [("", "pods", v) for v in ("create", "get", "list", "watch", "delete", "patch")]
    needed += [("", "pods/log", "get"), ("", "pods/exec", "create")]
    needed += [("sparkoperator.k8s.io", "sparkapplications", v) for v in ("create", "get", "list", "watch", "delete")]
    assert [n for n in needed if n not in granted] == []
    binding = next(d for d in docs if d["kind"] == "RoleBinding" and d["roleRef"]["name"] == "tamis-pod-launcher")
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    assert {s["name"] for s in binding["subjects"]} <= accounts


def test_spark_template_embedded_pod_parts_validate():
    template = next(d for d in all_documents() if d["kind"] == "SparkApplication")
    assert template["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    main = template["spec"]["mainApplicationFile"].removeprefix("local://")
    assert (REPO / main[len(tk.IMAGE_ROOT) + 1 :]).is_file()
    for role in ("driver", "executor"):
        validate_part(template["spec"][role]["securityContext"], "securitycontext-v1")
    assert all(isinstance(v, str) for v in template["spec"]["sparkConf"].values())


def test_prometheus_rules_parse_and_watch_every_pipeline_metric_by_stage_and_pipeline():
    rule_doc = next(d for d in all_documents() if d["kind"] == "PrometheusRule")
    assert rule_doc["apiVersion"] == "monitoring.coreos.com/v1"
    rules = [r for group in rule_doc["spec"]["groups"] for r in group["rules"]]
    used = set()
    for rule in rules:
        promql_parser.parse(rule["expr"])  # raises on a syntax error
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        metrics = set(re.findall(r"\btamis_[a-z_]+\b", rule["expr"]))
        used |= metrics
        if metrics:
            assert "by (pipeline, stage)" in rule["expr"], rule["alert"]
    assert used == METRICS
    alerts = {r["alert"] for r in rules}
    assert {"TamisErrorRateHigh", "TamisDropRateHigh", "TamisStorageNearFull"} <= alerts
    assert len(alerts) == len(rules)


def test_image_entrypoint_runs_tamis_for_bare_arguments_and_commands_as_given(tmp_path):
    entrypoint = K8S / "image" / "entrypoint.sh"
    assert subprocess.run(["bash", "-n", str(entrypoint)]).returncode == 0
    # tini only reaps children; stand-in that drops its own options so the dispatch can be run here.
    shim = tmp_path / "bin" / "tini"
    shim.parent.mkdir()
    shim.write_text('#!/bin/sh\nshift 2\nexec "$@"\n')
    shim.chmod(0o755)
    venv_bin = Path(commands.tamis_executable()).parent
    env = {**os.environ, "PATH": f"{shim.parent}:{venv_bin}:{os.environ['PATH']}"}
    bare = subprocess.run(["bash", str(entrypoint), "run", "--help"], env=env, capture_output=True, text=True)
    assert bare.returncode == 0 and "usage: tamis run" in bare.stdout
    given = subprocess.run(
        ["bash", str(entrypoint), "python", "-c", "print('as given')"], env=env, capture_output=True, text=True
    )
    assert given.returncode == 0 and given.stdout.strip() == "as given"


def test_the_default_pipeline_execution_block_holds_the_documented_defaults(monkeypatch):
    monkeypatch.delenv("TAMIS_IMAGE", raising=False)
    config = tk.execution_config(load_pipeline("default")).kubernetes
    defaults = KubernetesExecution()
    # Every value the YAML spells out is the default, but for the stages it sends to Spark.
    assert config.model_copy(update={"spark": defaults.spark}) == defaults
    assert config.image == "tamis:0.1.0"
