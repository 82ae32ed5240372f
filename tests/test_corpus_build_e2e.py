"""The corpus_build DAG, end to end through Airflow itself, on the bundled sample."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import airflow_env
from tamis.dataset import Dataset
from tamis.pipeline import load_pipeline, safe_run_id

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("e2e_airflow")
    data = tmp_path_factory.mktemp("e2e_data")
    env = {**os.environ, **airflow_env(home, data)}
    for command in (["db", "migrate"], ["dags", "reserialize"]):
        subprocess.run([AIRFLOW, *command], env=env, check=True, capture_output=True)
    result = subprocess.run([AIRFLOW, "dags", "test", "corpus_build"], env=env, capture_output=True, text=True, timeout=900)
    log = result.stdout + result.stderr
    finished = re.findall(r"DagRun Finished: dag_id=corpus_build.*?run_id=([^,]+),.*?state=(\w+)", log)
    assert result.returncode == 0 and finished, log[-5000:]
    run_id, state = finished[-1]
    os.environ["TAMIS_DATA_ROOT"] = str(data)
    try:
        pipeline = load_pipeline("default")
    finally:
        del os.environ["TAMIS_DATA_ROOT"]
    return {"state": state, "run_id": run_id, "pipeline": pipeline, "data": data, "log": log}


def test_the_run_succeeds_and_writes_under_the_run_folder(corpus_run):
    assert corpus_run["state"] == "success"
    run_dir = corpus_run["data"] / "runs" / safe_run_id(corpus_run["run_id"])
    # Besides its stages, a run folder holds only run-level records named with a leading '_'
    # (_mlflow.json: where the run is tracked).
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("_")) == sorted(corpus_run["pipeline"].stage_names)
    assert (run_dir / "_mlflow.json").exists()


# Documents a stage read from the previous one. Mix adds repeated rows (upsampling) and
# pack counts the sequences it makes, so their own metrics say how many documents came in.
DOCUMENTS_READ = {"mix": "mix.input_docs", "pack": "pack.docs_packed"}


def test_every_stage_reconciles_and_reads_what_the_previous_kept(corpus_run):
    pipeline, run_id = corpus_run["pipeline"], corpus_run["run_id"]
    previous_kept = None
    for stage in pipeline.stage_names:
        dataset = Dataset(pipeline.stage_url(run_id, stage))
        manifest = dataset.manifest()
        counts = manifest["counts"]
        assert counts["in"] == counts["kept"] + counts["dropped"] + counts["quarantined"], stage
        if previous_kept is not None:
            read = manifest["metrics"][DOCUMENTS_READ[stage]] if stage in DOCUMENTS_READ else counts["in"]
            assert read == previous_kept, stage
        assert dataset.read(columns=["id"]).num_rows == counts["kept"], stage
        previous_kept = counts["kept"]


def test_the_released_sequences_are_full_and_barely_padded(corpus_run):
    pipeline, run_id = corpus_run["pipeline"], corpus_run["run_id"]
    metrics = Dataset(pipeline.stage_url(run_id, "pack")).manifest()["metrics"]
    seq_len = pipeline.stage("pack").params.seq_len
    assert metrics["pack.sequences"] * seq_len == metrics["pack.tokens"] + metrics["pack.pad_tokens"]
    assert metrics["pack.pad_tokens"] / (metrics["pack.tokens"] + metrics["pack.pad_tokens"]) <= 0.01


def test_ingest_sees_the_whole_sample(corpus_run):
    counts = Dataset(corpus_run["pipeline"].stage_url(corpus_run["run_id"], "ingest")).manifest()["counts"]
    assert counts["in"] == 40 + 21 + 201 + 250 + 25 + 160 + 40


def test_every_gate_passed_and_recorded_its_result(corpus_run):
    pipeline, run_id = corpus_run["pipeline"], corpus_run["run_id"]
    for stage in pipeline.stage_names:
        result = Dataset(pipeline.stage_url(run_id, stage)).gate_result()
        assert result["success"] and result["evaluated"] >= 8, stage


def test_the_summary_task_printed_the_funnel(corpus_run):
    assert re.search(r"ingest\s+737\s+\d+", corpus_run["log"])
    assert "output: " in corpus_run["log"]
