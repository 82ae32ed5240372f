"""The cluster side of datasets as a service, checked offline: the hot volume, each team's
service account and S3 policy (enforced by moto's IAM), the preheat pod mounting the hot
volume, and pods handed the credentials of the sources they read."""

from __future__ import annotations

import json

import boto3
import kubernetes_validate
import pendulum
import pytest
import yaml

from conftest import REPO
from tamis.release import ReleaseConfig
from tamis_airflow import commands, teams
from tamis_airflow import kubernetes as tk

K8S = REPO / "k8s"
K8S_VERSION = "1.34"


@pytest.fixture(autouse=True)
def _airflow(airflow_home, monkeypatch):
    monkeypatch.delenv("TAMIS_EXECUTION", raising=False)


def documents(path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_the_hot_volume_is_a_read_write_many_claim_applied_with_the_rest():
    (claim,) = documents(K8S / "hot-volume.yaml")
    kubernetes_validate.validate(claim, K8S_VERSION, strict=True)
    assert claim["kind"] == "PersistentVolumeClaim" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["metadata"]["name"] == ReleaseConfig().hot_volume_claim
    assert "hot-volume.yaml" in documents(K8S / "kustomization.yaml")[0]["resources"]


def test_team_manifests_in_k8s_are_what_the_renderer_writes_and_validate(tmp_path):
    committed = sorted(p.name for p in (K8S / "teams").iterdir())
    names = sorted({p.split(".")[0] for p in committed} - {"kustomization"})
    teams.render(names, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == committed
    for name in committed:
        assert (tmp_path / name).read_text() == (K8S / "teams" / name).read_text(), name
    for team in names:
        account, config_map = documents(K8S / "teams" / f"{team}.yaml")
        for doc in (account, config_map):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert account["metadata"]["name"] == f"tamis-team-{team}"
        assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(f"role/tamis-team-{team}")
        assert config_map["data"]["TAMIS_DATA_ROOT"].endswith(f"/teams/{team}")
        assert config_map["data"]["TAMIS_TEAM"] == team
    assert documents(K8S / "teams/kustomization.yaml")[0]["resources"] == [f"{t}.yaml" for t in names]


def test_a_team_name_that_cannot_name_kubernetes_objects_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a Kubernetes name"):
        teams.render(["Data_Team"], tmp_path)


@pytest.fixture(scope="module")
def team_clients(moto_s3):
    """An S3 client per team, signed with a key of an IAM user holding only the team's policy."""
    iam = boto3.client(
        "iam",
        endpoint_url=moto_s3["endpoint"],
        region_name="us-east-1",
        aws_access_key_id=moto_s3["key"],
        aws_secret_access_key=moto_s3["secret"],
    )
    clients = {}
    for team in ("data", "research"):
        user = f"policy-{team}"
        iam.create_user(UserName=user)
        iam.put_user_policy(
            UserName=user,
            PolicyName="team",
            PolicyDocument=json.dumps(teams.s3_policy(team, bucket=moto_s3["bucket"], prefix="tamis")),
        )
        key = iam.create_access_key(UserName=user)["AccessKey"]
        clients[team] = boto3.client(
            "s3",
            endpoint_url=moto_s3["endpoint"],
            region_name="us-east-1",
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
        )
    admin = moto_s3["client"]
    for key in (
        "tamis/teams/data/runs/a.parquet",
        "tamis/teams/research/runs/b.parquet",
        "tamis/public/research/r.json",
    ):
        admin.put_object(Bucket=moto_s3["bucket"], Key=key, Body=b"x")
    return clients


def allowed(call) -> bool:
    from botocore.exceptions import ClientError

    try:
        call()
        return True
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "AccessDenied", exc
        return False


def test_each_team_reads_and_writes_its_prefix_and_reads_but_never_writes_another_teams(team_clients, moto_s3):
    bucket, data = moto_s3["bucket"], team_clients["data"]
    assert allowed(lambda: data.get_object(Bucket=bucket, Key="tamis/teams/data/runs/a.parquet"))
    assert allowed(lambda: data.put_object(Bucket=bucket, Key="tamis/teams/data/runs/c.parquet", Body=b"y"))
    assert not allowed(lambda: data.get_object(Bucket=bucket, Key="tamis/teams/research/runs/b.parquet"))
    assert not allowed(lambda: data.put_object(Bucket=bucket, Key="tamis/teams/research/runs/d.parquet", Body=b"y"))
    # Public releases: everyone reads them, each team writes only its own.
    assert allowed(lambda: data.get_object(Bucket=bucket, Key="tamis/public/research/r.json"))
    assert allowed(lambda: data.put_object(Bucket=bucket, Key="tamis/public/data/r.json", Body=b"y"))
    assert not allowed(lambda: data.put_object(Bucket=bucket, Key="tamis/public/research/r.json", Body=b"y"))
    assert allowed(lambda: team_clients["research"].get_object(Bucket=bucket, Key="tamis/public/data/r.json"))


def test_listing_is_limited_to_the_teams_and_the_public_prefixes():
    # moto does not evaluate conditions, so the listing condition is checked as written.
    (listing,) = [s for s in teams.s3_policy("data")["Statement"] if s["Action"] == "s3:ListBucket"]
    assert listing["Condition"]["StringLike"]["s3:prefix"] == [
        "tamis/teams/data",
        "tamis/teams/data/*",
        "tamis/public",
        "tamis/public/*",
    ]


def release_dag(monkeypatch, hot: str | None):
    from tamis_airflow.release import build_release_dag

    monkeypatch.setenv("TAMIS_EXECUTION", "kubernetes")
    if hot is None:
        monkeypatch.delenv("TAMIS_HOT_ROOT", raising=False)
    else:
        monkeypatch.setenv("TAMIS_HOT_ROOT", hot)
    return build_release_dag("default", dag_id="release_k8s_test")


def serialize(obj) -> dict:
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


@pytest.mark.parametrize("hot, mount", [("/data/hot", "/data/hot"), (None, "/mnt/tamis-hot")])
def test_the_preheat_pod_mounts_the_hot_volume_at_the_hot_location(monkeypatch, hot, mount):
    dag = release_dag(monkeypatch, hot)
    task = dag.get_task("preheat")
    task.render_template_fields({"run_id": "manual__1", "dag": dag, "params": {}})
    pod = serialize(task.build_pod_request_obj(dry_run=True))
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    (volume,) = [v for v in pod["spec"]["volumes"] if v.get("persistentVolumeClaim")]
    assert volume["persistentVolumeClaim"]["claimName"] == "tamis-hot"
    mounts = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts[volume["name"]] == mount
    # The command finds the hot location where the volume is mounted.
    assert {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}["TAMIS_HOT_ROOT"] == mount
    assert pod["spec"]["containers"][0]["args"][:2] == ["release", "preheat"]
    assert [a.uri for a in task.outlets] == ["tamis://release-ready/default"]
    # The other release steps need no hot volume.
    manifest = serialize(dag.get_task("release_manifest").build_pod_request_obj(dry_run=True))
    assert not any(v.get("persistentVolumeClaim") for v in manifest["spec"].get("volumes") or [])


@pytest.fixture
def sourced(make_pipeline):
    return make_pipeline(
        {
            "wiki": {"kind": "git", "url": "https://git.example.org/wiki.git", "connection": "src_git"},
            "lake": {"path": "s3://lake/wiki", "connection": "src_s3"},
        },
        stages={"ingest": {}, "normalize": {}},
    )


def test_pods_get_the_secrets_of_the_connections_their_sources_name(sourced):
    from airflow.sdk import DAG

    from tamis.execution import ExecutionConfig

    execution = ExecutionConfig(mode="kubernetes", kubernetes={"connections": ["aws_default"]})
    pipeline = sourced.model_copy(update={"execution": execution})
    with DAG("k8s_sources", schedule=None, start_date=pendulum.datetime(2026, 11, 1, tz="UTC")):
        op = tk.kubernetes_stage_operator(pipeline, "ingest", commands.stage_argv("ingest", pipeline.path))
    pod = serialize(op.build_pod_request_obj(dry_run=True))
    refs = [s["secretRef"]["name"] for s in pod["spec"]["containers"][0]["envFrom"] if "secretRef" in s]
    assert refs == ["tamis-conn-aws-default", "tamis-conn-src-git", "tamis-conn-src-s3"]


def test_a_sources_secret_holds_only_its_connection_so_the_store_keys_stay_the_stores():
    from airflow.sdk import Connection

    conn = Connection.from_uri(
        "aws://AKIASOURCE:source%2Fsecret@/?endpoint_url=http%3A%2F%2Fminio%3A9000", conn_id="src_s3"
    )
    secret = tk.connection_secret_manifest(conn, "tamis", source_only=True)
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
    assert set(secret["stringData"]) == {"AIRFLOW_CONN_SRC_S3"}
    from tamis.sources.connections import parse_uri

    assert parse_uri("src_s3", secret["stringData"]["AIRFLOW_CONN_SRC_S3"]).s3_options()["secret"] == "source/secret"
    assert "AWS_ACCESS_KEY_ID" in tk.connection_secret_manifest(conn, "tamis")["stringData"]


def test_only_commands_that_read_sources_get_their_credentials(sourced):
    from airflow.providers.standard.operators.bash import BashOperator
    from airflow.sdk import DAG

    from tamis_airflow.corpus import stage_operator
    from tamis_airflow.release import release_argv

    with DAG("local_sources", schedule=None, start_date=pendulum.datetime(2026, 11, 1, tz="UTC")):
        ingest = stage_operator(sourced, "ingest", commands.stage_argv("ingest", sourced.path))
        normalize = stage_operator(sourced, "normalize", commands.stage_argv("normalize", sourced.path))
        gate = stage_operator(sourced, "ingest_gate", commands.gate_argv("ingest", sourced.path))
        prepare = stage_operator(sourced, "prepare_workspace", release_argv("prepare", sourced))
    assert isinstance(ingest, BashOperator)
    for op in (ingest, prepare):
        assert {k for k in op.env if k.startswith("AIRFLOW_CONN_")} == {"AIRFLOW_CONN_SRC_GIT", "AIRFLOW_CONN_SRC_S3"}
        assert "{{ conn.src_git.password | tojson }}" in op.env["AIRFLOW_CONN_SRC_GIT"]
    for op in (normalize, gate):
        assert not any(k.startswith("AIRFLOW_CONN_") for k in op.env)
