"""The dataset_release DAG: triggered by the corpus asset, the release steps in order, the
last one making the release ready for training."""

from __future__ import annotations

from datetime import UTC

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
        step = {
            "prepare_workspace": "prepare",
            "dvc_repro": "repro",
            "dvc_push": "push",
            "release_manifest": "manifest",
            "preheat": "preheat",
        }[task.task_id]
        assert f"tamis release {step} --pipeline default" in task.bash_command
    assert [a.uri for a in dag.get_task("release_manifest").outlets] == ["tamis://release/default"]
    # Training DAGs schedule on this one: it changes only once a verified hot copy is ready.
    assert [a.uri for a in dag.get_task("preheat").outlets] == ["tamis://release-ready/default"]


def test_the_manifest_task_records_the_corpus_run_that_triggered_it(dagbag):
    """Rendered by Airflow's own templater, with the triggering events as a task receives them."""
    from datetime import datetime

    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    from tamis_airflow.corpus import corpus_asset

    dag = dagbag.dags["dataset_release"]
    task = dag.get_task("release_manifest")
    asset = corpus_asset(load_pipeline("default"))

    def event(run_id: str) -> AssetEventDagRunReferenceResult:
        return AssetEventDagRunReferenceResult(
            asset={"name": asset.name, "uri": asset.uri, "extra": {}},
            extra={},
            source_task_id="summary",
            source_dag_id="corpus_build",
            source_run_id=run_id,
            source_map_index=-1,
            source_aliases=[],
            timestamp=datetime(2026, 11, 20, tzinfo=UTC),
        )

    def render(run_id: str, events: list) -> str:
        context = {"run_id": run_id, "triggering_asset_events": TriggeringAssetEventsAccessor.build(events)}
        return task.render_template(task.bash_command, context, jinja_env=dag.get_template_env())

    assert render("asset_triggered__9", [event("manual__1"), event("manual__2")]).endswith(
        "--run-id 'asset_triggered__9' --source-run-id 'manual__2'"
    )
    assert render("manual__3", []).endswith("--source-run-id ''")
