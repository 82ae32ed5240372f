"""The production path, run as rendered: every task of corpus_build, nightly_ingest and
dataset_release in kubernetes mode, taken from the DAGs as Airflow parses them, rendered for
a run, and executed here in dependency order:

* a pod: its container's exact command, args and env (its own, its ConfigMaps' and Secrets')
  in a subprocess standing in for the container, in the image's working directory (the
  checkout), with its volumes mapped to local folders;
* a SparkApplication: its mainApplicationFile, arguments, sparkConf, sizes and env through
  spark-submit against a real Spark standalone cluster on loopback;
* the task that lists a stage's shards (it runs in the Airflow worker): its own code, and
  the mapped pods it feeds are unmapped by Airflow's own machinery.

The data lives on the S3 server; the datasets must equal a local build's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import NIGHTLY_DAYS, REPO, S3Tree, airflow_env, same_dataset

pytestmark = pytest.mark.slow

IMAGE_ROOT = "/opt/tamis"  # the image's WORKDIR (Dockerfile): the checkout stands in for it
CORPUS_RUN = "manual__2026-11-23T08:00:00+00:00"
DAY = "2026-11-20"
NIGHTLY_RUN = f"scheduled__{DAY}T00:00:00+00:00"


@pytest.fixture(scope="module")
def cluster(moto_s3, spark_cluster, tmp_path_factory, monkeypatch_module):
    """The deployment this test stands in for: its ConfigMap, its connection Secret, and the
    environment Airflow parses the DAGs in."""
    from airflow.sdk import Connection

    from tamis_airflow.kubernetes import connection_env

    root = tmp_path_factory.mktemp("rendered")
    conn = Connection(
        conn_id="aws_default",
        conn_type="aws",
        login=moto_s3["key"],
        password=moto_s3["secret"],
        extra=json.dumps({"endpoint_url": moto_s3["endpoint"], "region_name": "us-east-1"}),
    )
    storage = {
        "TAMIS_DATA_ROOT": f"s3://{moto_s3['bucket']}/k8s",
        "AWS_DEFAULT_REGION": "us-east-1",
        "TAMIS_RELEASE_WORKSPACE": str(root / "release-workspace"),  # a shared volume in a cluster
        "TAMIS_RELEASE_REMOTE": f"s3://{moto_s3['bucket']}/k8s-releases",
        "TAMIS_NIGHTLY_END_DATE": DAY,
    }
    parse_env = {
        **airflow_env(root / "airflow"),
        **storage,
        "TAMIS_EXECUTION": "kubernetes",
        "AIRFLOW_CONN_AWS_DEFAULT": conn.get_uri(),
        # Sized for the two one-core workers of the test cluster; two pods a per-batch stage;
        # one whole-dataset stage (near dedup) as a SparkApplication, the others as pods, so
        # that both paths of a whole-dataset stage run. (Every stage on Spark, the index among
        # them, is tests/test_spark_cluster.py's; a second SparkApplication here cost 80 s.)
        "TAMIS_SPARK_EXECUTOR_CORES": "1",
        "TAMIS_SPARK_EXECUTOR_MEMORY": "1g",
        "TAMIS_SPARK_EXECUTORS": "2",
        "TAMIS_SHARDS_PER_POD": "24",
        "TAMIS_SPARK_APPLICATIONS": "[near_dedup]",
    }
    for name in list(os.environ):
        if name.startswith(("TAMIS_", "AWS_", "AIRFLOW_CONN_")):
            monkeypatch_module.delenv(name)
    for name, value in parse_env.items():
        monkeypatch_module.setenv(name, value)
    # The pods' volumes (TMPDIR among them) sit at a short path: multiprocessing's
    # forkserver makes a Unix socket under TMPDIR, and its path may not pass 107 bytes.
    volumes = Path(tempfile.mkdtemp(prefix="pods-"))
    yield {
        "root": root,
        "volumes": volumes,
        "config_maps": {"tamis-storage": storage},
        "secrets": {"tamis-conn-aws-default": connection_env(conn)},
        "spark": spark_cluster,
    }
    shutil.rmtree(volumes, ignore_errors=True)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def parse_dags() -> dict:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"), bundle_path=REPO / "dags", safe_mode=False)
    assert bag.import_errors == {}
    return bag.dags


class Executor:
    """Runs a DAG's rendered tasks as the cluster would, in dependency order."""

    def __init__(self, cluster, dag, run_id: str, logical_date: str):
        self.cluster = cluster
        self.dag = dag
        self.run_id = run_id
        self.ds = logical_date
        self.xcom: dict[str, object] = {}
        self.ran: list[str] = []
        self.scratch = cluster["volumes"] / dag.dag_id
        self.log = cluster["root"] / f"{dag.dag_id}.log"
        self.lock = threading.Lock()

    def context(self, task) -> dict:
        return {
            "dag": self.dag,
            "task": task,
            "run_id": self.run_id,
            "ds": self.ds,
            "params": self.dag.params.dump(),
            "triggering_asset_events": {},
        }

    def run(self) -> None:
        from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
        from airflow.providers.cncf.kubernetes.operators.spark_kubernetes import SparkKubernetesOperator
        from airflow.sdk.definitions.mappedoperator import MappedOperator

        for task in self.dag.topological_sort():
            if isinstance(task, MappedOperator):
                source = task._get_specified_expand_input().value["arguments"].operator.task_id
                pods = [task.unmap({"arguments": arguments}) for arguments in self.xcom[source]]
                # Mapped pods run side by side, as the cluster runs them.
                with ThreadPoolExecutor(max_workers=2) as pool:
                    list(
                        pool.map(
                            lambda item, task_id=task.task_id: self.pod(item[1], label=f"{task_id}[{item[0]}]"),
                            enumerate(pods),
                        )
                    )
            elif isinstance(task, SparkKubernetesOperator):
                self.spark_application(task)
            elif isinstance(task, KubernetesPodOperator):
                self.pod(task, label=task.task_id)
            else:  # a Python task of the Airflow worker (listing shards): its own code
                task.render_template_fields(self.context(task))
                self.xcom[task.task_id] = task.execute(self.context(task))
                self.ran.append(task.task_id)

    def pod(self, op, label: str) -> None:
        from kubernetes.client import ApiClient

        op.render_template_fields(self.context(op))
        pod = ApiClient().sanitize_for_serialization(op.build_pod_request_obj(dry_run=True))
        (container,) = pod["spec"]["containers"]
        mounts = {m["mountPath"]: str(self.scratch / m["name"]) for m in container.get("volumeMounts", [])}
        env = self.env_from(container.get("envFrom", []))
        env.update({e["name"]: self.mapped(e["value"], mounts) for e in container.get("env", [])})
        for folder in mounts.values():
            Path(folder).mkdir(parents=True, exist_ok=True)
        self.execute([*container["command"], *container.get("args", [])], env, label)

    def spark_application(self, op) -> None:
        import pyspark

        op.render_template_fields(self.context(op))
        spec = op.template_spec["spark"]["spec"]
        main = spec["mainApplicationFile"].removeprefix("local://").replace(IMAGE_ROOT, str(REPO), 1)
        driver, executor = spec["driver"], spec["executor"]
        submit = [
            str(Path(pyspark.__file__).parent / "bin" / "spark-submit"),
            "--master",
            self.cluster["spark"]["master"],
            "--deploy-mode",
            "client",
            "--name",
            op.template_spec["spark"]["metadata"]["name"],
            "--driver-memory",
            driver["memory"],
            "--executor-memory",
            executor["memory"],
            "--executor-cores",
            str(executor["cores"]),
            "--total-executor-cores",
            str(executor["cores"] * executor["instances"]),
        ]
        for key, value in spec.get("sparkConf", {}).items():
            submit += ["--conf", f"{key}={value}"]
        # The operator gives executor pods their env and envFrom; on a standalone cluster
        # the same variables travel as spark.executorEnv.
        executor_env = self.env_from(executor.get("envFrom", []))
        executor_env.update({e["name"]: e["value"] for e in executor.get("env", [])})
        for key, value in executor_env.items():
            submit += ["--conf", f"spark.executorEnv.{key}={value}"]
        env = self.env_from(driver.get("envFrom", []))
        env.update({e["name"]: e["value"] for e in driver.get("env", [])})
        self.execute([*submit, main, *spec["arguments"]], env, op.task_id)

    def env_from(self, sources: list[dict]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in sources:
            if "configMapRef" in source:
                env.update(self.cluster["config_maps"][source["configMapRef"]["name"]])
            if "secretRef" in source:
                env.update(self.cluster["secrets"][source["secretRef"]["name"]])
        return env

    @staticmethod
    def mapped(value: str, mounts: dict[str, str]) -> str:
        for path, local in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if value == path or value.startswith(path + "/"):
                return local + value[len(path) :]
        return value

    def execute(self, argv: list[str], container_env: dict[str, str], label: str) -> None:
        # The image's PATH leads to its Python and tamis; the venv is that Python here.
        image_env = {
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "PYSPARK_PYTHON": sys.executable,
            "LANG": "C.UTF-8",
            "GX_ANALYTICS_ENABLED": "False",
        }
        if "PYTHONPATH" in os.environ:  # the checkout under test, when the venv has another installed
            image_env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        started = time.monotonic()
        done = subprocess.run(
            argv, cwd=REPO, env={**image_env, **container_env}, capture_output=True, text=True, timeout=900
        )
        elapsed = time.monotonic() - started
        with self.lock, self.log.open("a") as log:
            log.write(f"\n===== {label} ({elapsed:.1f}s): {argv}\n{done.stdout}\n{done.stderr}\n")
            self.ran.append(label)
        assert done.returncode == 0, f"{label} exited {done.returncode}:\n{done.stderr[-4000:]}"


@pytest.fixture(scope="module")
def executed(cluster):
    dags = parse_dags()
    runs = {}
    for dag_id, run_id, day in (
        ("corpus_build", CORPUS_RUN, "2026-11-23"),
        ("nightly_ingest", NIGHTLY_RUN, DAY),
        ("dataset_release", "asset_triggered__2026-11-23T09:00:00+00:00", "2026-11-23"),
    ):
        executor = Executor(cluster, dags[dag_id], run_id, day)
        executor.run()
        runs[dag_id] = executor
    return runs


def test_every_task_of_the_three_dags_ran_as_rendered(executed):
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    for dag_id, executor in executed.items():
        ran = {label.split("[")[0] for label in executor.ran}
        assert ran == {t.task_id for t in executor.dag.tasks}, dag_id
        mapped = [t.task_id for t in executor.dag.tasks if isinstance(t, MappedOperator)]
        assert all(any(label.startswith(f"{m}[") for label in executor.ran) for m in mapped), dag_id
    kinds = {type(t).__name__ for e in executed.values() for t in e.dag.tasks}
    assert {"KubernetesPodOperator", "SparkKubernetesOperator", "MappedOperator"} <= kinds


def test_corpus_build_on_pods_and_spark_applications_writes_the_local_build(executed, moto_s3, local_build):
    from tamis.pipeline import load_pipeline, safe_run_id

    remote = S3Tree(moto_s3, f"k8s/runs/{safe_run_id(CORPUS_RUN)}")
    pipeline = load_pipeline("default")
    spark_stages = set(pipeline.execution.kubernetes.spark.stages)
    for stage in pipeline.stage_names:
        manifest = same_dataset(remote, local_build, stage)
        assert manifest["engine"] == ("spark" if stage in spark_stages else "local"), stage


def test_a_nightly_day_on_the_cluster_appends_what_a_local_nightly_appends(executed, moto_s3, local_nightly):
    # The cluster's corpus holds this one day; so did the local one when its first day was appended.
    assert DAY == NIGHTLY_DAYS[0]
    remote = json.loads(S3Tree(moto_s3, "k8s/corpus/default").read(f"date={DAY}/_manifest.json"))
    local = json.loads((local_nightly / f"date={DAY}/_manifest.json").read_text())
    assert remote["counts"] == local["counts"] and remote["drop_reasons"] == local["drop_reasons"]
    assert [p["sha256"] for p in remote["parts"]] == [p["sha256"] for p in local["parts"]]
    assert not S3Tree(moto_s3, "k8s/corpus/default").keys("_claims"), "the day's claim was given back"


def test_the_release_reproduces_the_build_and_is_pushed_to_the_remote(executed, moto_s3, local_build):
    workspace = Path(executed["dataset_release"].cluster["config_maps"]["tamis-storage"]["TAMIS_RELEASE_WORKSPACE"])
    release = json.loads((workspace / "release.json").read_text())
    for stage in release["stages"]:
        local = json.loads((local_build / stage["stage"] / "_manifest.json").read_text())
        assert stage["counts"] == local["counts"], stage["stage"]
    pushed = S3Tree(moto_s3, "k8s-releases").keys(f"releases/{release['version']}")
    assert any(key.endswith("dvc.lock") for key in pushed)
    # The preheat pod copied it from the store to the hot volume and verified it.
    hot = executed["dataset_release"].scratch / "tamis-hot" / release["version"]
    ready = json.loads((hot / "_READY.json").read_text())
    assert sorted(f["path"] for f in ready["files"]) == sorted(f["path"] for f in release["contents"]["files"])
