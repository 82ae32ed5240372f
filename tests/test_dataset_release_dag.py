"""The dataset_release DAG: triggered by the corpus asset, the release steps in order, the
last one making the release ready for training."""

from __future__ import annotations

from types import SimpleNamespace

import jinja2
import pytest

from conftest import REPO
from tamis.pipeline import load_pipeline

DAGS = REPO / "dags"


@pytest.fixture(scope="module")
def dagbag(airflow_home):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS), bundle_path=DAGS, safe_mode=False)


def test_dataset_release_is_scheduled_on_the_asset_that_corpus_build_updates(dagbag):
    from airflow.sdk.definitions.timetables.assets import AssetTriggeredTimetable
    from tamis_airflow.corpus import corpus_asset

    dag = dagbag.dags["dataset_release"]
    assert isinstance(dag.timetable, AssetTriggeredTimetable)
    asset = corpus_asset(load_pipeline("default"))
    assert list(dag.schedule) == [asset]
    assert [a.uri for a in dag.timetable.asset_condition.objects] == [asset.uri]
    assert asset in dagbag.dags["corpus_build"].get_task("summary").outlets


def test_release_steps_run_in_order_with_retries_timeouts_and_a_release_asset(dagbag):
    dag = dagbag.dags["dataset_release"]
    order = [t.task_id for t in dag.topological_sort()]
    assert order == ["prepare_workspace", "dvc_repro", "dvc_push", "release_manifest", "preheat"]
    for upstream, downstream in zip(order, order[1:]):
        assert dag.get_task(upstream).downstream_task_ids == {downstream}
    pipeline = load_pipeline("default")
    for task in dag.tasks:
        assert task.retries == pipeline.orchestration.retries
        assert task.execution_timeout.total_seconds() >= pipeline.orchestration.task_timeout_s
        step = {"prepare_workspace": "prepare", "dvc_repro": "repro", "dvc_push": "push",
                "release_manifest": "manifest", "preheat": "preheat"}[task.task_id]
        assert f"tamis release {step} --pipeline default" in task.bash_command
    assert [a.uri for a in dag.get_task("release_manifest").outlets] == ["tamis://release/default"]
    # Training DAGs schedule on this one: it changes only once a verified hot copy is ready.
    assert [a.uri for a in dag.get_task("preheat").outlets] == ["tamis://release-ready/default"]


def test_the_manifest_task_records_the_corpus_run_that_triggered_it(dagbag):
    task = dagbag.dags["dataset_release"].get_task("release_manifest")
    template = jinja2.Environment().from_string(task.bash_command)
    events = {"corpus": [SimpleNamespace(source_run_id="manual__1"), SimpleNamespace(source_run_id="manual__2")]}
    rendered = template.render(run_id="asset_triggered__9", triggering_asset_events=events)
    assert rendered.endswith("--run-id 'asset_triggered__9' --source-run-id 'manual__2'")
    by_hand = template.render(run_id="manual__3", triggering_asset_events={})
    assert by_hand.endswith("--source-run-id ''")
