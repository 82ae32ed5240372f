"""corpus_build against a real S3 API (moto's server on loopback) with credentials from
the Airflow connection aws_default; bad endpoints, credentials and buckets fail fast."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import airflow_env
from tamis.pipeline import load_pipeline, safe_run_id

pytestmark = pytest.mark.slow

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
TAMIS = [sys.executable, "-m", "tamis.cli"]
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "TAMIS_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL")


def connection(moto_s3, **overrides) -> str:
    conn = {
        "conn_type": "aws",
        "login": moto_s3["key"],
        "password": moto_s3["secret"],
        "extra": {"endpoint_url": moto_s3["endpoint"], "region_name": "us-east-1"},
    }
    conn.update(overrides)
    return json.dumps(conn)


def clean_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in AWS_VARS and not k.startswith("AIRFLOW_CONN_")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def s3_run(moto_s3, tmp_path_factory):
    home = tmp_path_factory.mktemp("s3_airflow")
    root = f"s3://{moto_s3['bucket']}/tamis"
    env = clean_env(**airflow_env(home), TAMIS_DATA_ROOT=root, AIRFLOW_CONN_AWS_DEFAULT=connection(moto_s3))
    for command in (["db", "migrate"], ["dags", "reserialize"]):
        subprocess.run([AIRFLOW, *command], env=env, check=True, capture_output=True)
    result = subprocess.run(
        [AIRFLOW, "dags", "test", "corpus_build"], env=env, capture_output=True, text=True, timeout=900
    )
    log = result.stdout + result.stderr
    finished = re.findall(r"DagRun Finished: dag_id=corpus_build.*?run_id=([^,]+),.*?state=(\w+)", log)
    assert result.returncode == 0 and finished and finished[-1][1] == "success", log[-5000:]
    return {"run_id": finished[-1][0], "root": root, "home": home, "env": env}


def s3_manifest(moto_s3, key: str) -> dict:
    return json.loads(moto_s3["client"].get_object(Bucket=moto_s3["bucket"], Key=key)["Body"].read())


def test_corpus_build_on_s3_writes_the_same_bytes_as_a_local_build(s3_run, moto_s3, local_build):
    prefix = f"tamis/runs/{safe_run_id(s3_run['run_id'])}"
    for stage in load_pipeline("default").stage_names:
        remote = s3_manifest(moto_s3, f"{prefix}/{stage}/_manifest.json")
        local = json.loads((local_build / stage / "_manifest.json").read_text())
        assert remote["counts"] == local["counts"], stage
        assert [(p["name"], p["sha256"]) for p in remote["parts"]] == [
            (p["name"], p["sha256"]) for p in local["parts"]
        ], stage
        first = remote["parts"][0]
        body = (
            moto_s3["client"]
            .get_object(Bucket=moto_s3["bucket"], Key=f"{prefix}/{stage}/{first['name']}.parquet")["Body"]
            .read()
        )
        assert hashlib.sha256(body).hexdigest() == first["sha256"]


def test_nothing_private_is_left_on_s3(s3_run, moto_s3):
    keys = [
        o["Key"]
        for page in moto_s3["client"].get_paginator("list_objects_v2").paginate(Bucket=moto_s3["bucket"])
        for o in page.get("Contents", [])
    ]
    assert keys and not [k for k in keys if "/_tmp/" in k]


def test_a_missing_connection_fails_the_task_before_it_starts(s3_run):
    env = {k: v for k, v in s3_run["env"].items() if k != "AIRFLOW_CONN_AWS_DEFAULT"}
    result = subprocess.run(
        [AIRFLOW, "tasks", "test", "corpus_build", "ingest", "2026-11-22"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert "aws_default" in output and "isn't defined" in output
    assert "Running command" not in output


@pytest.mark.parametrize(
    "case, expected",
    [
        ("wrong_secret", "was denied; check the storage connection's credentials"),
        ("no_bucket", "S3 bucket 'missing-bucket' does not exist"),
        ("unreachable", "cannot use S3 bucket 'lake' at http://127.0.0.1:9"),
    ],
)
def test_bad_s3_settings_fail_fast_with_a_clear_message_and_publish_nothing(moto_s3, case, expected):
    bucket, endpoint, secret = moto_s3["bucket"], moto_s3["endpoint"], moto_s3["secret"]
    if case == "wrong_secret":
        secret = "not-the-secret"
    elif case == "no_bucket":
        bucket = "missing-bucket"
    else:
        endpoint = "http://127.0.0.1:9"
    env = clean_env(AWS_ACCESS_KEY_ID=moto_s3["key"], AWS_SECRET_ACCESS_KEY=secret, TAMIS_S3_ENDPOINT_URL=endpoint)
    result = subprocess.run(
        [*TAMIS, "run", "ingest", "--output", f"s3://{bucket}/bad/{case}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert expected in result.stderr
    listed = moto_s3["client"].list_objects_v2(Bucket=moto_s3["bucket"], Prefix=f"bad/{case}")
    assert listed["KeyCount"] == 0
