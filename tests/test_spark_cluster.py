"""execution.mode spark on a real Spark standalone cluster (a master and two one-core workers
on loopback, started from pyspark's own distribution), with the data on the S3 server: every
dataset equals the local engine's, part for part."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import NIGHTLY_DAYS, S3Tree, same_dataset
from tamis.pipeline import load_pipeline

pytestmark = pytest.mark.slow

TAMIS = [sys.executable, "-m", "tamis.cli"]
DAYS = NIGHTLY_DAYS


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAMIS_", "AWS_", "AIRFLOW_CONN_"))}
    return {**env, **extra}


def spark_env(moto_s3, spark_cluster, prefix: str) -> dict[str, str]:
    """What the README says: the execution switch, the master, and the store's settings."""
    return clean_env(
        TAMIS_EXECUTION="spark",
        TAMIS_SPARK_MASTER=spark_cluster["master"],
        TAMIS_DATA_ROOT=f"s3://{moto_s3['bucket']}/{prefix}",
        TAMIS_S3_ENDPOINT_URL=moto_s3["endpoint"],
        AWS_ACCESS_KEY_ID=moto_s3["key"],
        AWS_SECRET_ACCESS_KEY=moto_s3["secret"],
        AWS_DEFAULT_REGION="us-east-1",
    )


def test_the_sample_built_on_the_cluster_is_the_local_build_part_for_part(spark_cluster, moto_s3, local_build):
    done = subprocess.run(
        [*TAMIS, "build", "--run-id", "cluster"],
        env=spark_env(moto_s3, spark_cluster, "spark-mode"),
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    assert f"spark: running on {spark_cluster['master']} with 2 cores" in done.stderr

    remote = S3Tree(moto_s3, "spark-mode/runs/cluster")
    for stage in load_pipeline("default").stage_names:
        manifest = same_dataset(remote, local_build, stage)
        assert manifest["engine"] == "spark", stage
    local_index = pq.read_table(local_build / "index/_index/metadata.parquet")
    remote_index = pq.read_table(pa.BufferReader(remote.read("index/_index/metadata.parquet")))
    # Equal but for the key-value metadata naming each run's own document folder.
    assert remote_index.replace_schema_metadata(None).equals(local_index.replace_schema_metadata(None))
    assert remote.read("index/_index/tokens.bin") == (local_build / "index/_index/tokens.bin").read_bytes()
    assert (
        remote.read("near_dedup/_clusters/clusters.parquet")
        == (local_build / "near_dedup/_clusters/clusters.parquet").read_bytes()
    )


def test_nightly_days_on_the_cluster_build_the_corpus_a_local_nightly_builds(spark_cluster, moto_s3, local_nightly):
    """Incremental: exact dedup against the corpus's hashes and near dedup against its
    signature index, three days in order, on Spark with the data on S3, and locally."""
    remote_env = spark_env(moto_s3, spark_cluster, "nightly-spark")
    for day in DAYS:
        done = subprocess.run(
            [*TAMIS, "nightly", "run", "--date", day, "--run-id", f"night-{day}"],
            env=remote_env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    remote = S3Tree(moto_s3, "nightly-spark/corpus/default")
    local = local_nightly
    dropped_for_index = 0
    for day in DAYS:
        r = json.loads(remote.read(f"date={day}/_manifest.json"))
        m = json.loads((local / f"date={day}/_manifest.json").read_text())
        assert r["engine"] == "spark" and m["engine"] == "local"
        assert r["counts"] == m["counts"] and r["drop_reasons"] == m["drop_reasons"], day
        assert r["metrics"] == m["metrics"], day
        assert [p["sha256"] for p in r["parts"]] == [p["sha256"] for p in m["parts"]], day
        dropped_for_index += r["metrics"].get("near_dup.index_rows_matched", 0)
    assert dropped_for_index > 0, "later days must be compared with the index of earlier ones"

    def index_ids(tables) -> list[str]:
        return sorted(i for table in tables for i in table.column("id").to_pylist())

    remote_index = [
        pq.read_table(pa.BufferReader(remote.read(key)))
        for key in remote.keys("_index/near_dedup")
        if key.endswith(".parquet")
    ]
    local_index = [pq.read_table(p) for p in (local / "_index/near_dedup").rglob("*.parquet")]
    assert index_ids(remote_index) == index_ids(local_index)
