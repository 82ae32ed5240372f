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
from tamis.dataset import Dataset
from tamis.pipeline import ConfigError, load_pipeline
from tamis_airflow import commands
from tamis_airflow import kubernetes as tk

K8S = REPO / "k8s"
K8S_VERSION = "1.34"
PIPELINE_REF = "{{ params.pipeline }}"
RUN_ID = "manual__2026-11-23T08:00:00+00:00"
METRICS = {"tamis_docs_processed_total", "tamis_docs_per_second", "tamis_errors_total", "tamis_drop_rate",
           "tamis_duplicate_rate", "tamis_pii_detection_rate"}
# Everything the cluster-side config can set, so that each field reaches a schema check.
FULL_KUBERNETES = {
    "image": "registry.example.com/tamis:0.1.0",
    "namespace": "tamis",
    "resources": {"requests": {"cpu": "2", "memory": "3Gi"}, "limits": {"cpu": "4", "memory": "6Gi"}},
    "node_selector": {"workload": "batch"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "tamis", "effect": "NoSchedule"},
                    {"key": "spot", "operator": "Exists", "toleration_seconds": 300, "effect": "NoExecute"}],
    "env": {"TAMIS_LOG_LEVEL": "INFO", "OMP_NUM_THREADS": 2},
    "secrets": ["tamis-hf-token"],
    "connections": ["aws_default"],
    "labels": {"team": "data"},
    "execution_timeout_s": 7200,
    "spark": {"executor": {"instances": 8, "cores": 4, "memory": "12g"}, "conf": {"spark.sql.shuffle.partitions": "512"}},
}


@pytest.fixture(autouse=True)
def _airflow(airflow_home, monkeypatch):
    monkeypatch.delenv("TAMIS_EXECUTION", raising=False)


def with_execution(pipeline, execution: dict):
    return pipeline.model_copy(update={"execution": execution})


@pytest.fixture(scope="module")
def cluster_pipeline():
    return with_execution(load_pipeline("default"), {"mode": "kubernetes", "kubernetes": FULL_KUBERNETES})


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
    registry = referencing.Registry().with_resources([
        ("", referencing.Resource.from_contents(schema, default_specification=referencing.jsonschema.DRAFT202012)),
        ("_definitions.json", referencing.Resource.from_contents(definitions,
                                                                default_specification=referencing.jsonschema.DRAFT202012)),
    ])
    jsonschema.Draft202012Validator(schema, registry=registry).validate(value)


def render(operator, context: dict) -> None:
    operator.render_template_fields(context)


def context_for(dag, **params) -> dict:
    return {"params": {"pipeline": "default", "sources": [], "sample_fraction": 1.0, **params},
            "run_id": RUN_ID, "dag": dag}


def a_dag():
    from airflow.sdk import DAG

    return DAG("k8s_test", schedule=None, start_date=pendulum.datetime(2026, 11, 1, tz="UTC"))


def every_command(pipeline) -> list[tuple[str, list[str]]]:
    """The task ids and ``tamis`` argv of corpus_build, as corpus.build_corpus_dag makes them."""
    out = []
    for stage in pipeline.stage_names:
        out.append((stage, commands.stage_argv(stage, PIPELINE_REF)))
        out.append((f"{stage}_gate", commands.gate_argv(stage, PIPELINE_REF)))
    out.append(("summary", commands.summary_argv(PIPELINE_REF)))
    return out


# --- config ---------------------------------------------------------------------------


def test_default_pipeline_runs_locally_unless_switched():
    assert tk.execution_config(load_pipeline("default")).mode == "local"


def test_execution_switch_reads_the_environment(monkeypatch):
    monkeypatch.setenv("TAMIS_EXECUTION", "kubernetes")
    assert tk.execution_config(load_pipeline("default")).mode == "kubernetes"


@pytest.mark.parametrize("bad, field", [
    ({"resources": {"requests": {"cpu": "two"}}}, "cpu"),
    ({"namespace": "Tamis_Prod"}, "Tamis_Prod"),
    ({"tolerations": [{"key": "a", "effect": "Sometimes"}]}, "effect"),
    ({"imag": "tamis:1"}, "imag"),
    ({"env": {"BAD NAME": "x"}}, "BAD NAME"),
    ({"spark": {"driver": {"memory": "2GB"}}}, "2GB"),
])
def test_invalid_kubernetes_config_is_a_config_error_naming_the_field(bad, field):
    pipeline = with_execution(load_pipeline("default"), {"mode": "kubernetes", "kubernetes": bad})
    with pytest.raises(ConfigError, match=re.escape(field)):
        tk.execution_config(pipeline)


# --- pods -----------------------------------------------------------------------------


def test_every_stage_pod_validates_against_the_kubernetes_schema(cluster_pipeline):
    dag = a_dag()
    for task_id, argv in every_command(cluster_pipeline):
        with dag:
            op = tk.kubernetes_stage_operator(cluster_pipeline, task_id, argv)
        render(op, context_for(dag))
        pod = serialize(op.build_pod_request_obj(dry_run=True))
        validate_kind(pod)
        assert pod["metadata"]["namespace"] == "tamis"
        assert pod["spec"]["serviceAccountName"] == "tamis-runner"


def test_pod_runs_the_same_command_line_as_the_local_executor(cluster_pipeline):
    dag = a_dag()
    for task_id, argv in every_command(cluster_pipeline):
        local = commands.shell_command(commands.tamis_executable("local"), argv)
        with dag:
            op = tk.kubernetes_stage_operator(cluster_pipeline, task_id, argv)
        context = context_for(dag, sources=["web", "udhr"])
        render(op, context)
        container = serialize(op.build_pod_request_obj(dry_run=True))["spec"]["containers"][0]
        local_argv = shlex.split(op.render_template(local, context))
        assert Path(local_argv[0]).name == "tamis" and container["command"] == ["tamis"]
        assert container["args"] == local_argv[1:]
        assert RUN_ID in container["args"] and "{{" not in " ".join(container["args"])


def test_pod_carries_resources_scheduling_env_and_credentials_from_config(cluster_pipeline):
    with a_dag():
        op = tk.kubernetes_stage_operator(cluster_pipeline, "normalize", commands.stage_argv("normalize", "default"))
    pod = serialize(op.build_pod_request_obj(dry_run=True))
    spec, container = pod["spec"], pod["spec"]["containers"][0]
    assert container["image"] == FULL_KUBERNETES["image"]
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "3Gi"}, "limits": {"cpu": "4", "memory": "6Gi"}}
    assert spec["nodeSelector"] == {"workload": "batch"}
    assert {t["key"] for t in spec["tolerations"]} == {"dedicated", "spot"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["OMP_NUM_THREADS"] == "2" and env["TAMIS_EXECUTION"] == "kubernetes"
    refs = {(k, v["name"]) for source in container["envFrom"] for k, v in source.items()}
    assert refs == {("configMapRef", "tamis-storage"), ("secretRef", "tamis-hf-token"),
                    ("secretRef", "tamis-conn-aws-default")}
    # The pod template's hardening survives the merge with the operator's settings.
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/scratch", "/tmp"}
    assert spec["activeDeadlineSeconds"] == 7200
    assert op.execution_timeout.total_seconds() == 7200
    assert pod["metadata"]["labels"]["team"] == "data"
    # No credential value is written into the pod spec.
    assert "secret" not in json.dumps(container["env"]).lower()


def test_execution_timeout_defaults_to_the_orchestration_timeout():
    pipeline = with_execution(load_pipeline("default"), {"mode": "kubernetes"})
    with a_dag():
        op = tk.kubernetes_stage_operator(pipeline, "ingest", commands.stage_argv("ingest", "default"))
    assert op.execution_timeout.total_seconds() == pipeline.orchestration.task_timeout_s


def test_spark_stages_become_spark_applications_and_their_gates_pods(cluster_pipeline):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.providers.cncf.kubernetes.operators.spark_kubernetes import SparkKubernetesOperator

    with a_dag():
        run = tk.execution_operator(cluster_pipeline, "near_dedup", commands.stage_argv("near_dedup", PIPELINE_REF))
        gate = tk.execution_operator(cluster_pipeline, "near_dedup_gate", commands.gate_argv("near_dedup", PIPELINE_REF))
        other = tk.execution_operator(cluster_pipeline, "normalize", commands.stage_argv("normalize", PIPELINE_REF))
    assert isinstance(run, SparkKubernetesOperator)
    assert type(gate) is KubernetesPodOperator and type(other) is KubernetesPodOperator


# --- shards ---------------------------------------------------------------------------


@pytest.fixture
def ingested(tmp_path, monkeypatch):
    """A real ingest of the bundled udhr source into a storage root of the test's own."""
    from tamis.cli import main

    monkeypatch.setenv("TAMIS_DATA_ROOT", str(tmp_path / "store"))
    assert main(["run", "ingest", "--run-id", RUN_ID, "--workers", "1", "--param", "sources=[udhr]"]) == 0
    pipeline = load_pipeline("default")
    return Dataset(pipeline.stage_url(RUN_ID, "ingest"))


def test_shard_lister_names_the_committed_parts_of_the_previous_stage(ingested):
    with a_dag():
        lister = tk.shard_lister("normalize", PIPELINE_REF)
    names = lister.operator.python_callable(pipeline="default", stage="normalize", run_id=RUN_ID)
    assert names == [part["name"] for part in ingested.manifest()["parts"]]
    assert len(names) >= 1


def test_mapped_pods_fan_out_one_pod_per_shard_with_the_shard_option(cluster_pipeline, ingested):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    names = tk.input_shard_names("default", "normalize", RUN_ID)
    argv = commands.stage_argv("normalize", PIPELINE_REF)
    with a_dag() as dag:
        mapped = tk.mapped_shard_operator(cluster_pipeline, "normalize_shards", argv, names)
        lister = tk.shard_lister("normalize", PIPELINE_REF)
        from_xcom = tk.mapped_shard_operator(cluster_pipeline, "normalize_shards_xcom", argv, lister)
    expanded = mapped.expand_input.value["arguments"]
    assert expanded == [[*argv, "--shard", name] for name in names]
    # The XCom path maps the lister's output through the same function.
    mapper = from_xcom.expand_input.value["arguments"]
    assert [mapper.callables[0](name) for name in names] == expanded
    # One expanded pod, as the worker would build it, is a valid pod that runs `tamis ... --shard NAME`.
    with dag:
        one = KubernetesPodOperator(task_id="normalize_one_shard", arguments=expanded[0], **mapped.partial_kwargs)
    render(one, context_for(dag))
    pod = serialize(one.build_pod_request_obj(dry_run=True))
    validate_kind(pod)
    assert pod["spec"]["containers"][0]["command"] == ["tamis"]
    assert pod["spec"]["containers"][0]["args"][-2:] == ["--shard", names[0]]


# --- Spark ----------------------------------------------------------------------------


def spark_body(pipeline, stage="near_dedup"):
    """The SparkApplication exactly as the operator submits it (the provider's own builder)."""
    from airflow.providers.cncf.kubernetes.operators.custom_object_launcher import CustomObjectLauncher

    dag = a_dag()
    with dag:
        op = tk.spark_stage_operator(pipeline, stage, stage,
                                     tk.spark_arguments(commands.stage_argv(stage, PIPELINE_REF)))
    render(op, context_for(dag))
    launcher = CustomObjectLauncher(name=op.name, namespace=op.namespace, kube_client=None, custom_obj_api=None,
                                    template_body=op.template_body)
    return op, launcher.body


def test_spark_application_has_the_crd_shape_and_runs_the_stage_job(cluster_pipeline):
    op, body = spark_body(cluster_pipeline)
    assert body["apiVersion"] == "sparkoperator.k8s.io/v1beta2" and body["kind"] == "SparkApplication"
    spec = body["spec"]
    for field in ("type", "mode", "image", "mainApplicationFile", "sparkVersion", "driver", "executor"):
        assert spec.get(field), f"SparkApplication spec lacks {field}"
    assert spec["type"] == "Python" and spec["mode"] == "cluster"
    assert spec["mainApplicationFile"] == "local:///opt/tamis/spark_jobs/near_dedup.py"
    assert (REPO / "spark_jobs" / "near_dedup.py").is_file()
    assert spec["image"] == FULL_KUBERNETES["image"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", body["metadata"]["name"])
    assert body["metadata"]["namespace"] == "tamis" == op.namespace
    # The Spark job gets the stage's command line after `run <stage>`, rendered.
    assert spec["arguments"] == ["--pipeline", "default", "--run-id", RUN_ID]
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


def test_spark_application_from_a_template_of_another_kind_is_refused():
    bad = K8S / "pod-template.yaml"
    pipeline = with_execution(load_pipeline("default"),
                              {"mode": "kubernetes", "kubernetes": {"spark": {"template": bad.name}}})
    with pytest.raises(ConfigError, match="SparkApplication"):
        tk.spark_application(pipeline, "near_dedup", [])


# --- credentials ----------------------------------------------------------------------


def test_connection_secret_hands_aws_credentials_to_pods_as_env():
    from airflow.sdk import Connection

    conn = Connection.from_uri(
        "aws://AKIAEXAMPLE:wJalr%2FEXAMPLEKEY@/?region_name=eu-west-1&endpoint_url=http%3A%2F%2Fminio%3A9000",
        conn_id="aws_default")
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
    for name, docs in manifests().items():
        for doc in docs:
            if doc["apiVersion"] in ("v1", "rbac.authorization.k8s.io/v1"):
                validate_kind(doc)
                checked += 1
    kinds = {d["kind"] for d in all_documents()}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Pod", "SparkApplication",
            "PrometheusRule", "Kustomization"} <= kinds
    assert checked >= 9


def test_manifests_and_config_defaults_name_the_same_objects():
    docs = all_documents()
    names = {(d["kind"], d["metadata"]["name"]) for d in docs if "metadata" in d and "name" in d["metadata"]}
    defaults = tk.KubernetesExecution()
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
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
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
    assert template["spec"]["mainApplicationFile"] == "local:///opt/tamis/spark_jobs/near_dedup.py"
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
    assert {"TamisStageStalled", "TamisErrorRateHigh", "TamisDropRateHigh", "TamisStorageNearFull"} <= alerts
    assert len(alerts) == len(rules)


def test_image_entrypoint_runs_tamis_for_bare_arguments_and_commands_as_given(tmp_path):
    entrypoint = K8S / "image" / "entrypoint.sh"
    assert subprocess.run(["bash", "-n", str(entrypoint)]).returncode == 0
    # tini only reaps children; stand-in that drops its own options so the dispatch can be run here.
    shim = tmp_path / "bin" / "tini"
    shim.parent.mkdir()
    shim.write_text('#!/bin/sh\nshift 2\nexec "$@"\n')
    shim.chmod(0o755)
    venv_bin = Path(commands.tamis_executable("local")).parent
    env = {**os.environ, "PATH": f"{shim.parent}:{venv_bin}:{os.environ['PATH']}"}
    bare = subprocess.run(["bash", str(entrypoint), "run", "--help"], env=env, capture_output=True, text=True)
    assert bare.returncode == 0 and "usage: tamis run" in bare.stdout
    given = subprocess.run(["bash", str(entrypoint), "python", "-c", "print('as given')"], env=env,
                           capture_output=True, text=True)
    assert given.returncode == 0 and given.stdout.strip() == "as given"


def test_the_default_pipeline_execution_block_holds_the_documented_defaults(monkeypatch):
    monkeypatch.delenv("TAMIS_IMAGE", raising=False)
    config = tk.execution_config(load_pipeline("default"))
    assert config.kubernetes == tk.KubernetesExecution()
    assert config.kubernetes.image == "tamis:0.1.0"
