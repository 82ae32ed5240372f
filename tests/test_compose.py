"""docker-compose.yaml (through Docker Compose's own loader, no engine needed), the Dockerfile
and .dockerignore: what the multi-service setup runs and what the image is built from."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import compose
import pytest
import yaml

from conftest import REPO
from tamis.pipeline import load_pipeline
from tamis_airflow import kubernetes as tk

COMPOSE_BINARY = Path(compose.__file__).parent / "docker-compose"
AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
}


def compose_config(path: Path = REPO / "docker-compose.yaml", env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(COMPOSE_BINARY), "-f", str(path), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


@pytest.fixture(autouse=True)
def _airflow(airflow_home):
    """Airflow is imported by some checks: give it the tests' own home."""


@pytest.fixture(scope="module")
def resolved() -> dict:
    result = compose_config()
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_loader_rejects_an_invalid_file(tmp_path):
    # Guards the check itself: the loader validates against the Compose specification.
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  api:\n    image: 3\n    restart: sometimes\n")
    result = compose_config(bad)
    assert result.returncode != 0 and "services.api" in result.stderr


def test_compose_defines_airflow_postgres_and_an_s3_store(resolved):
    services = resolved["services"]
    assert set(AIRFLOW_SERVICES) | {"airflow-init", "postgres", "s3"} <= set(services)
    for name, component in AIRFLOW_SERVICES.items():
        assert services[name]["command"] == ["airflow", component]
        assert services[name]["image"] == "tamis:0.1.0"
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "healthcheck" in services[name]
    assert services["s3"]["image"] == "tamis:0.1.0" and services["s3"]["command"][0] == "moto_server"
    assert services["postgres"]["image"].startswith("postgres:")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_compose_init_migrates_the_database_sets_the_password_and_creates_the_bucket(resolved, tmp_path):
    import time
    import urllib.request

    import boto3

    init = resolved["services"]["airflow-init"]
    script = init["command"][0]
    assert init["entrypoint"] == ["/bin/bash", "-c"]
    assert re.search(r"^airflow db migrate$", script, re.M)
    setup = script.split("<<'PY'\n", 1)[1].split("\nPY", 1)[0]
    # Run the init's own setup step against a real S3-compatible server on this machine.
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/")
                break
            except OSError:
                time.sleep(0.1)
        env = {
            **init["environment"],
            "AWS_ENDPOINT_URL": endpoint,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "passwords.json"),
        }
        for _ in range(2):  # a second run (a restarted stack) must also succeed
            result = subprocess.run(
                [sys.executable, "-"], input=setup, capture_output=True, text=True, env={**os.environ, **env}
            )
            assert result.returncode == 0, result.stderr
        users = env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"]
        assert json.loads((tmp_path / "passwords.json").read_text()) == {
            users.split(":")[0]: env["AIRFLOW_ADMIN_PASSWORD"]
        }
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_DEFAULT_REGION"],
        )
        bucket = init["environment"]["TAMIS_DATA_ROOT"].removeprefix("s3://").split("/")[0]
        assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_every_airflow_service_shares_database_secret_and_executor(resolved):
    envs = [resolved["services"][name]["environment"] for name in [*AIRFLOW_SERVICES, "airflow-init"]]
    for key in (
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
        "AIRFLOW__API_AUTH__JWT_SECRET",
        "AIRFLOW__CORE__EXECUTOR",
        "AIRFLOW_CONN_AWS_DEFAULT",
        "TAMIS_DATA_ROOT",
    ):
        assert len({env[key] for env in envs}) == 1, key
    assert envs[0]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")
    assert "@postgres:5432/" in envs[0]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]


def test_aws_connection_and_tamis_env_point_at_the_same_s3_store(resolved):
    from airflow.sdk import Connection

    env = resolved["services"]["airflow-scheduler"]["environment"]
    conn = Connection.from_json(env["AIRFLOW_CONN_AWS_DEFAULT"], conn_id="aws_default")
    assert conn.conn_type == "aws"
    from_connection = tk.connection_env(conn)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        assert from_connection[key] == env[key], key
    # The endpoint is the s3 service on the port it listens on.
    port = resolved["services"]["s3"]["command"][resolved["services"]["s3"]["command"].index("--port") + 1]
    assert env["AWS_ENDPOINT_URL"] == f"http://s3:{port}"


def test_compose_env_makes_the_default_pipeline_store_in_s3(resolved, monkeypatch):
    env = resolved["services"]["airflow-scheduler"]["environment"]
    for key in ("TAMIS_DATA_ROOT", "TAMIS_EXECUTION", "TAMIS_WORKERS"):
        monkeypatch.setenv(key, env[key])
    pipeline = load_pipeline("default")
    assert pipeline.storage_root == "s3://tamis/data"
    assert pipeline.stage_url("r1", "ingest") == "s3://tamis/data/runs/r1/ingest"
    assert tk.execution_config(pipeline).mode == "local"


def test_compose_passwords_can_be_overridden_from_the_environment():
    result = compose_config(env={"POSTGRES_PASSWORD": "s3cr3t-pg", "TAMIS_S3_SECRET": "s3cr3t-s3"})
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cr3t-pg"
    scheduler = services["airflow-scheduler"]["environment"]
    assert ":s3cr3t-pg@" in scheduler["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert json.loads(scheduler["AIRFLOW_CONN_AWS_DEFAULT"])["password"] == "s3cr3t-s3"


# --- Dockerfile -----------------------------------------------------------------------


def dockerfile_instructions(path: Path = REPO / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            lines.append(current)
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def dockerignore_patterns() -> list[str]:
    return [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def ignored(path: str) -> bool:
    parts = path.rstrip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in dockerignore_patterns():
        pattern = pattern.rstrip("/")
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.removeprefix("**/")) for p in prefixes):
            return True
    return False


def test_dockerfile_builds_from_python_311_slim_with_java_and_a_non_root_user():
    steps = dockerfile_instructions()
    assert steps[0][0] == "FROM" and re.fullmatch(r"python:3\.11-slim(-\w+)?", steps[0][1])
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert re.search(r"openjdk-(1[7-9]|2\d)-jre-headless", runs)  # Spark 4 needs Java 17+
    assert "pip install -r requirements.txt" in runs and "pip install --no-deps -e ." in runs
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    # The last USER is the uid the pod template runs as.
    pod = yaml.safe_load((REPO / "k8s" / "pod-template.yaml").read_text())
    uid = dict(a.split("=", 1) for op, a in steps if op == "ARG" and "=" in a)["TAMIS_UID"]
    assert users[-1] in ("${TAMIS_UID}", uid) and pod["spec"]["securityContext"]["runAsUser"] == int(uid)


def test_dockerfile_copies_only_files_that_exist_and_are_not_ignored():
    steps = dockerfile_instructions()
    copied = []
    for op, args in steps:
        if op == "COPY":
            sources = [s for s in args.split() if not s.startswith("--")][:-1]
            copied += sources
    assert {"requirements.txt", "pyproject.toml", "include/", "dags/", "plugins/", "spark_jobs/", "k8s/"} <= set(copied)
    for source in copied:
        assert (REPO / source).exists(), f"Dockerfile copies {source}, which does not exist"
        assert not ignored(source), f"Dockerfile copies {source}, which .dockerignore leaves out"
    # What the build must not carry.
    for local_only in (".venv", ".git", "data", ".airflow"):
        assert ignored(local_only), local_only


def test_image_layout_matches_what_the_cluster_side_expects():
    steps = dockerfile_instructions()
    workdir = [args for op, args in steps if op == "WORKDIR"][-1]
    assert workdir == tk.IMAGE_ROOT
    entrypoint = json.loads([args for op, args in steps if op == "ENTRYPOINT"][-1])
    copies = {args.split()[-1]: args.split()[0] for op, args in steps if op == "COPY"}
    assert copies[entrypoint[0]] == "k8s/image/entrypoint.sh"
    assert os.access(REPO / "k8s" / "image" / "entrypoint.sh", os.X_OK)
    # SparkApplications run the driver entry point from the image's copy of the bundle.
    assert (REPO / tk.SPARK_ENTRY).is_file() and tk.SPARK_ENTRY.startswith("spark_jobs/")
    env = " ".join(args for op, args in steps if op == "ENV")
    assert "SPARK_HOME=/usr/local/lib/python3.11/site-packages/pyspark" in env
    assert "AIRFLOW__CORE__DAGS_FOLDER=/opt/tamis/dags" in env
