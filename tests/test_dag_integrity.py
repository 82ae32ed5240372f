"""Every DAG file imports, has no cycle, and every task can retry and time out."""

from __future__ import annotations

import pytest

from conftest import REPO

DAGS = REPO / "dags"


@pytest.fixture(scope="module")
def dagbag(airflow_home):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS), bundle_path=DAGS, safe_mode=False)


def test_every_dag_file_imports(dagbag):
    assert dagbag.import_errors == {}
    assert "corpus_build" in dagbag.dags


def test_no_dag_has_a_cycle(dagbag):
    for dag in dagbag.dags.values():
        dag.check_cycle()  # raises AirflowDagCycleException


def test_every_task_retries_and_has_a_timeout(dagbag):
    for dag_id, dag in dagbag.dags.items():
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"
            assert task.execution_timeout is not None, f"{dag_id}.{task.task_id} has no execution_timeout"


def test_corpus_build_runs_each_stage_then_its_gate_in_pipeline_order(dagbag):
    from tamis.pipeline import load_pipeline

    dag = dagbag.dags["corpus_build"]
    expected = [t for stage in load_pipeline("default").stage_names for t in (stage, f"{stage}_gate")] + ["summary"]
    order = [t.task_id for t in dag.topological_sort()]
    assert order == expected
    for upstream, downstream in zip(expected, expected[1:]):
        assert downstream in dag.get_task(upstream).downstream_task_ids
