"""Experiment tracking: a corpus build logged by ``tamis summary`` (the last task of
corpus_build) and a nightly run logged by ``tamis nightly run``, read back through the
MLflow client from the default store under the storage root."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest
import yaml

from conftest import REPO
from tamis import storage
from tamis.cli import main, run_one
from tamis.dataset import Dataset
from tamis.pipeline import load_pipeline
from tamis.tracking import POINTER

SAMPLE = REPO / "include" / "sample"
STAGES = ["ingest", "normalize", "exact_dedup"]
RUN_ID = "manual__2026-11-21T00:00:00+00:00"
AIRFLOW = {"AIRFLOW_CTX_DAG_ID": "corpus_build", "AIRFLOW_CTX_DAG_RUN_ID": RUN_ID, "AIRFLOW_CTX_TASK_ID": "summary"}


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """A corpus build of three stages, ended by ``tamis summary`` inside an Airflow task's environment."""
    import os

    root = tmp_path_factory.mktemp("tracking")
    web = root / "src" / "web" / "date=2026-11-20"
    web.mkdir(parents=True)
    shutil.copyfile(SAMPLE / "web/date=2026-11-20/speeches.jsonl", web / "speeches.jsonl")
    config = {
        "name": "tracked",
        "storage_root": str(root / "store"),
        "workers": 1,
        "sources": {"web": {"path": str(root / "src" / "web"), "id_field": "id", "url_field": "url"}},
        "stages": {"ingest": {}, "normalize": {}, "exact_dedup": {"key": "text"}},
    }
    path = root / "tracked.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    pipeline = load_pipeline(str(path))
    for stage in STAGES:
        run_one(pipeline, stage, RUN_ID)
    os.environ.update(AIRFLOW)
    try:
        assert main(["summary", "--pipeline", str(path), "--run-id", RUN_ID]) == 0
        pointer = storage.read_json(storage.join(pipeline.run_url(RUN_ID), POINTER))
        client = mlflow.MlflowClient(tracking_uri=pointer["tracking_uri"])
        return {
            "root": root,
            "path": path,
            "pipeline": pipeline,
            "pointer": pointer,
            "client": client,
            "run": client.get_run(pointer["run_id"]),
        }
    finally:
        for key in AIRFLOW:
            del os.environ[key]


def test_the_default_store_lives_under_the_storage_root(build):
    assert build["pointer"]["tracking_uri"] == f"sqlite:///{build['root'] / 'store' / 'mlflow' / 'mlflow.db'}"
    experiment = build["client"].get_experiment(build["run"].info.experiment_id)
    assert experiment.name == "tamis/tracked"
    assert experiment.artifact_location.startswith((build["root"] / "store" / "mlflow").as_uri())


def test_run_is_tagged_with_the_airflow_dag_and_run(build):
    tags = build["run"].data.tags
    assert tags["airflow.dag_id"] == "corpus_build" and tags["airflow.run_id"] == RUN_ID
    assert tags["tamis.kind"] == "corpus_build" and tags["tamis.run_id"] == RUN_ID
    assert build["run"].info.status == "FINISHED"


def test_params_are_the_pipeline_and_every_stage_param_as_run(build):
    params = build["run"].data.params
    pipeline = build["pipeline"]
    assert params["pipeline.name"] == "tracked" and json.loads(params["pipeline.stages"]) == STAGES
    for stage in STAGES:
        ran = Dataset(pipeline.stage_url(RUN_ID, stage)).manifest()["params"]
        for key, value in ran.items():
            if not isinstance(value, (dict, list)) and value is not None:
                assert params[f"stage.{stage}.{key}"] == str(value), (stage, key)
    assert params["stage.exact_dedup.key"] == "text"  # the pipeline's own value, not the default


def test_metrics_are_each_stage_counts_and_metrics(build):
    metrics = build["run"].data.metrics
    for stage in STAGES:
        manifest = Dataset(build["pipeline"].stage_url(RUN_ID, stage)).manifest()
        for key in ("in", "kept", "dropped", "quarantined"):
            assert metrics[f"{stage}.{key}"] == manifest["counts"][key], (stage, key)
        for key, value in manifest["metrics"].items():
            assert metrics[f"{stage}.{key}"] == value


def test_manifests_and_gate_results_are_artifacts(build, tmp_path):
    client, run_id = build["client"], build["pointer"]["run_id"]
    names = {a.path for a in client.list_artifacts(run_id, "manifests")}
    assert names == {f"manifests/{s}.json" for s in STAGES}
    local = client.download_artifacts(run_id, "manifests/exact_dedup.json", str(tmp_path))
    assert json.loads(Path(local).read_text()) == Dataset(build["pipeline"].stage_url(RUN_ID, "exact_dedup")).manifest()
    assert {a.path for a in client.list_artifacts(run_id)} >= {"manifests", "summary.json", "pipeline.yaml"}


def test_datasets_in_and_out_carry_the_hash_dvc_gives_them(build, tmp_path):
    """The digests equal what ``dvc add`` records for the same folders, in a DVC repository of their own."""
    from dvc.repo import Repo

    inputs = build["run"].inputs.dataset_inputs
    by_context = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset for d in inputs}
    output = Dataset(build["pipeline"].stage_url(RUN_ID, "exact_dedup"))
    repo_dir = tmp_path / "dvc"
    shutil.copytree(build["root"] / "src" / "web", repo_dir / "web")
    shutil.copytree(output.url, repo_dir / "out")
    Repo.init(str(repo_dir), no_scm=True).close()
    with Repo(str(repo_dir)) as repo:
        repo.add([str(repo_dir / "web"), str(repo_dir / "out")])
    md5 = {name: yaml.safe_load((repo_dir / f"{name}.dvc").read_text())["outs"][0]["md5"] for name in ("web", "out")}
    assert by_context["input"].digest == md5["web"] and by_context["input"].name == "source:web"
    assert by_context["output"].digest == md5["out"]
    assert json.loads(by_context["output"].source)["uri"].endswith("exact_dedup")


def test_logging_the_same_run_again_replaces_it(build):
    assert main(["summary", "--pipeline", str(build["path"]), "--run-id", RUN_ID]) == 0
    client = build["client"]
    live = client.search_runs([build["run"].info.experiment_id], filter_string=f"tags.`tamis.run_id` = '{RUN_ID}'")
    assert len(live) == 1 and live[0].info.run_id != build["pointer"]["run_id"]


def test_an_unreachable_tracking_server_does_not_fail_the_run(build, tmp_path, caplog):
    config = yaml.safe_load(build["path"].read_text())
    config["reports"] = {"mlflow": {"tracking_uri": "http://127.0.0.1:9"}}  # nothing listens on the discard port
    path = tmp_path / "tracked.yaml"
    path.write_text(yaml.safe_dump(config))
    import os

    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        assert main(["summary", "--pipeline", str(path), "--run-id", RUN_ID]) == 0
    finally:
        del os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert "could not log the corpus_build run" in caplog.text


def test_a_nightly_run_logs_its_day_in_and_the_corpus_partition_out(build):
    pipeline = build["pipeline"]
    assert (
        main(
            [
                "nightly",
                "run",
                "--pipeline",
                str(build["path"]),
                "--run-id",
                "night-1",
                "--date",
                "2026-11-20",
                "--wait-s",
                "5",
            ]
        )
        == 0
    )
    pointer = storage.read_json(storage.join(pipeline.run_url("night-1"), POINTER))
    run = build["client"].get_run(pointer["run_id"])
    assert run.data.tags["tamis.kind"] == "nightly" and run.data.tags["tamis.date"] == "2026-11-20"
    datasets = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(datasets) == {"source:web@2026-11-20", "corpus:tracked@2026-11-20"}
    partition = Dataset(json.loads(datasets["corpus:tracked@2026-11-20"].dataset.source)["uri"]).manifest()
    assert partition["date"] == "2026-11-20" and run.data.metrics["exact_dedup.kept"] == partition["counts"]["kept"]
    assert "drift.json" in {a.path for a in build["client"].list_artifacts(pointer["run_id"])}
