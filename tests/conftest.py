from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

from tamis.pipeline import load_pipeline

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"  # excerpts of the evaluation corpora (SOURCE.md)
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

# A test process started by pytest-xdist runs with a bare __main__ (no __file__, no spec),
# which pyspark.sql.connect (imported by Great Expectations) takes for a doctest run and
# answers with sys.exit(0). Give it the file a test process really runs.
_main = sys.modules["__main__"]
if getattr(_main, "__spec__", None) is None and not hasattr(_main, "__file__"):
    _main.__file__ = __file__


def pytest_collection_modifyitems(items):
    """The slow (end-to-end) tests first: the two test processes of scripts/test.sh, which
    take whole files, then start on the long files and the short ones fill in around them,
    instead of one process running a ten-minute file alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def make_pipeline(tmp_path):
    """Write a pipeline YAML into tmp_path and load it; sources are {name: {path, ...}}."""

    def make(
        sources: dict, stages: dict | None = None, gates: dict | None = None, workers: int = 1, name: str = "test"
    ):
        config = {
            "name": name,
            "storage_root": str(tmp_path / "store"),
            "workers": workers,
            "sources": sources,
            "stages": stages or {"ingest": {}, "normalize": {}, "exact_dedup": {}},
        }
        if gates is not None:
            config["gates"] = gates
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return load_pipeline(str(path))

    return make


def write_dataset(root: Path, parts, row_group_size: int | None = None) -> str:
    """A committed dataset laid out as the runner leaves one: a Parquet file per part and
    the manifest that lists them. ``parts``: a table, a list of tables, or
    {part name: table or list of rows}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(parts, pa.Table):
        parts = [parts]
    if isinstance(parts, list):
        parts = {f"part_{i:05d}": table for i, table in enumerate(parts)}
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for name, table in parts.items():
        if isinstance(table, list):
            table = pa.Table.from_pylist(table)
        pq.write_table(table, root / f"{name}.parquet", row_group_size=row_group_size)
        entries.append({"name": name, "bytes": (root / f"{name}.parquet").stat().st_size})
    (root / "_manifest.json").write_text(json.dumps({"parts": entries}))
    return str(root)


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    """The first ``limit`` records of a JSON Lines file (gzipped when it ends in .gz)."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(limit) if limit is not None else iter(int, 1), f)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory):
    """An Airflow home of the tests' own (SQLite), set before Airflow is first imported."""
    home = tmp_path_factory.mktemp("airflow_home")
    os.environ.update(airflow_env(home))
    return home


def airflow_env(home: Path, data_root: Path | None = None) -> dict[str, str]:
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "GX_ANALYTICS_ENABLED": "False",
    }
    if data_root is not None:
        env["TAMIS_DATA_ROOT"] = str(data_root)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory):
    """moto's S3 server on loopback, enforcing credentials: the first IAM calls make a
    user and its key, after which every request must be signed with that key."""
    import subprocess
    import sys
    import time

    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3"},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    for _ in range(100):
        try:
            iam.create_user(UserName="tamis")
            break
        except Exception:
            time.sleep(0.1)
    iam.put_user_policy(
        UserName="tamis",
        PolicyName="all",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        ),
    )
    key = iam.create_access_key(UserName="tamis")["AccessKey"]
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )
    s3.create_bucket(Bucket="lake")
    yield {
        "endpoint": endpoint,
        "key": key["AccessKeyId"],
        "secret": key["SecretAccessKey"],
        "bucket": "lake",
        "client": s3,
    }
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(scope="session")
def spark():
    """The Spark engine on a local master in this process (one JVM for the session)."""
    from tamis.engines.spark import SparkEngine

    engine = SparkEngine.connect("local[2]", {"spark.sql.shuffle.partitions": "2"})
    yield engine
    engine.session.stop()


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory):
    """A real Spark standalone cluster on loopback: a master and two one-core workers started
    from pyspark's own distribution (its bin/spark-class and jars). Stops all it started."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    import pyspark

    home = Path(pyspark.__file__).resolve().parent
    root = tmp_path_factory.mktemp("spark_cluster")
    env = {
        **os.environ,
        "SPARK_HOME": str(home),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(root / "logs"),
        "SPARK_NO_DAEMONIZE": "1",
        "PYSPARK_PYTHON": sys.executable,
    }
    port, ui = free_port(), free_port()
    spark_class = str(home / "bin" / "spark-class")

    def start(*args: str, log: str) -> subprocess.Popen:
        return subprocess.Popen(
            [spark_class, *args],
            env=env,
            start_new_session=True,
            stdout=(root / log).open("w"),
            stderr=subprocess.STDOUT,
        )

    processes = [
        start(
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            str(ui),
            log="master.log",
        )
    ]
    master = f"spark://127.0.0.1:{port}"
    for i in range(2):
        processes.append(
            start(
                "org.apache.spark.deploy.worker.Worker",
                master,
                "--host",
                "127.0.0.1",
                "--cores",
                "1",
                "--memory",
                "2g",
                "--webui-port",
                str(free_port()),
                "--work-dir",
                str(root / f"work{i}"),
                log=f"worker{i}.log",
            )
        )
    deadline = time.time() + 120
    alive = 0
    while time.time() < deadline:
        try:
            state = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=2).read())
            alive = sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")
            if alive == 2:
                break
        except OSError:
            pass
        time.sleep(1)
    try:
        assert alive == 2, f"the Spark cluster did not come up: {(root / 'master.log').read_text()[-2000:]}"
        yield {"master": master, "home": home, "ui": f"http://127.0.0.1:{ui}", "logs": root}
    finally:
        for process in reversed(processes):
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


class S3Tree:
    """Reads a folder on the S3 server, to compare it with a local one."""

    def __init__(self, moto_s3, prefix: str):
        self.client, self.bucket, self.prefix = moto_s3["client"], moto_s3["bucket"], prefix

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}")["Body"].read()

    def keys(self, folder: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/{folder}/"
        )
        return sorted(o["Key"][len(self.prefix) + 1 :] for page in pages for o in page.get("Contents", []))


def same_dataset(remote: S3Tree, local: Path, stage: str) -> dict:
    """A dataset on S3 holds what a local one holds: the same parts, side tables and commits
    byte for byte (timings aside) and the same manifest figures. Returns the remote manifest."""
    r = json.loads(remote.read(f"{stage}/_manifest.json"))
    m = json.loads((local / stage / "_manifest.json").read_text())
    for key in ("counts", "drop_reasons", "quarantine_reasons", "metrics"):
        assert r[key] == m[key], (stage, key)
    assert [(p["name"], p["sha256"]) for p in r["parts"]] == [(p["name"], p["sha256"]) for p in m["parts"]], stage
    for folder in ("_dropped", "_quarantine"):
        local_files = (
            sorted(p.name for p in (local / stage / folder).glob("*.parquet"))
            if (local / stage / folder).exists()
            else []
        )
        assert [k.rsplit("/", 1)[1] for k in remote.keys(f"{stage}/{folder}")] == local_files, (stage, folder)
        for name in local_files:
            assert remote.read(f"{stage}/{folder}/{name}") == (local / stage / folder / name).read_bytes(), (
                stage,
                name,
            )
    for commit in sorted((local / stage / "_commits").glob("*.json")):
        theirs = json.loads(remote.read(f"{stage}/_commits/{commit.name}"))
        ours = json.loads(commit.read_text())
        for record in (theirs, ours):
            for timing in ("started_at", "elapsed_s"):
                record.pop(timing)
            record.pop("input")  # the input part's URL: s3:// there, a path here
        assert theirs == ours, (stage, commit.name)
    return r


@pytest.fixture(scope="session")
def local_build(tmp_path_factory):
    """The default pipeline built on this machine with the local engine: what the other
    engines and execution paths must reproduce."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("local_build")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAMIS_", "AWS_", "AIRFLOW_CONN_"))}
    subprocess.run(
        [sys.executable, "-m", "tamis.cli", "build", "--run-id", "local"],
        env={**env, "TAMIS_DATA_ROOT": str(root)},
        check=True,
        capture_output=True,
    )
    return root / "runs" / "local"


NIGHTLY_DAYS = ["2026-11-20", "2026-11-21", "2026-11-22"]


@pytest.fixture(scope="session")
def local_nightly(tmp_path_factory):
    """The sample's three days appended by `tamis nightly run`, in order, on this machine:
    the corpus every other way of running the nightly ingest must reproduce."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("local_nightly")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAMIS_", "AWS_", "AIRFLOW_CONN_"))}
    for day in NIGHTLY_DAYS:
        done = subprocess.run(
            [sys.executable, "-m", "tamis.cli", "nightly", "run", "--date", day, "--run-id", f"n-{day}"],
            env={**env, "TAMIS_DATA_ROOT": str(root)},
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    return root / "corpus" / "default"
