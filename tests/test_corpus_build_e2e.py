"""The corpus_build DAG, end to end through Airflow itself, on the bundled sample."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import airflow_env
from tamis.dataset import Dataset
from tamis.pipeline import load_pipeline, safe_run_id

pytestmark = pytest.mark.slow

AIRFLOW = str(Path(sys.executable).with_name("airflow"))


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("e2e_airflow")
    data = tmp_path_factory.mktemp("e2e_data")
    env = {**os.environ, **airflow_env(home, data)}
    for command in (["db", "migrate"], ["dags", "reserialize"]):
        subprocess.run([AIRFLOW, *command], env=env, check=True, capture_output=True)
    result = subprocess.run(
        [AIRFLOW, "dags", "test", "corpus_build"], env=env, capture_output=True, text=True, timeout=900
    )
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
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("_")) == sorted(
        corpus_run["pipeline"].stage_names
    )
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


def records_in(path: Path, text_format: bool) -> int:
    """Records in one source file, counted by reading it: a text file is one document, a
    JSON Lines file one per non-blank line, a Parquet file one per row."""
    if text_format or path.suffix == ".txt":
        return 1
    if path.suffix == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def test_ingest_reads_every_record_of_every_sample_file(corpus_run):
    pipeline = corpus_run["pipeline"]
    expected = {}
    for source in pipeline.sources.values():
        for path in sorted(Path(source.path).rglob("*")):
            if path.is_file() and not path.name.startswith((".", "_")):
                expected[str(path.resolve())] = records_in(path, source.format == "text")
    ingest = Dataset(pipeline.stage_url(corpus_run["run_id"], "ingest"))
    read = {}
    for part in ingest.manifest()["parts"]:
        commit = ingest.committed(part["name"])
        read[str(Path(commit["input"]).resolve())] = commit["counts"]["in"]
    assert read == expected
    assert ingest.manifest()["counts"]["in"] == sum(expected.values())


def test_every_gate_passed_after_checking_what_the_pipeline_asks_of_its_stage(corpus_run):
    pipeline, run_id = corpus_run["pipeline"], corpus_run["run_id"]
    for stage in pipeline.stage_names:
        dataset = Dataset(pipeline.stage_url(run_id, stage))
        result = dataset.gate_result()
        assert result["success"] and result["failed"] == [], stage
        checked = [e for suite in result["suites"] for e in suite["expectations"]]
        assert result["evaluated"] == len(checked) and all(e["success"] for e in checked), stage
        columns = {e["kwargs"]["column"] for e in checked if e["expectation_type"] == "expect_column_to_exist"}
        assert columns == set(pipeline.gate(stage).required_columns), stage
        ids = dataset.read(columns=["id"]).column("id")
        assert result["facts"]["id_rows"] == len(ids) == dataset.manifest()["counts"]["kept"], stage
        assert result["facts"]["distinct_ids"] == pc.count_distinct(ids).as_py(), stage


# A line the summary task printed, as the Airflow task log carries it.
TASK_OUTPUT = re.compile(r"\[info\s*\] (?P<line>.*?) \[airflow\.task\.hooks\.\S*SubprocessHook\]")
SUMMARY_ROW = re.compile(
    r"(?P<stage>\S+)\s+(?P<in>\d+)\s+(?P<kept>\d+)\s+(?P<dropped>\d+)\s+(?P<quarantined>\d+)"
    r"\s+(?P<seconds>\d+\.\d)\s*(?P<reasons>.*)"
)


def printed_summary(log: str, pipeline_name: str) -> list[str]:
    """The lines of the last funnel printed in the log, header to footer."""
    lines = [m["line"].rstrip() for m in TASK_OUTPUT.finditer(log)]
    start = max(i for i, line in enumerate(lines) if line.startswith(f"pipeline {pipeline_name}: "))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("elapsed (sum of stages): "))
    return lines[start : end + 1]


def test_the_summary_task_printed_every_stage_as_its_manifest_says(corpus_run):
    pipeline, run_id = corpus_run["pipeline"], corpus_run["run_id"]
    lines = printed_summary(corpus_run["log"], pipeline.name)
    assert lines[0] == f"pipeline {pipeline.name}: {pipeline.run_url(run_id)}"
    rows = [SUMMARY_ROW.fullmatch(line) for line in lines[2:-2]]
    assert all(rows), lines
    assert [r["stage"] for r in rows] == pipeline.stage_names
    elapsed = 0.0
    for row in rows:
        manifest = Dataset(pipeline.stage_url(run_id, row["stage"])).manifest()
        assert {k: int(row[k]) for k in manifest["counts"]} == manifest["counts"], row["stage"]
        assert row["seconds"] == f"{manifest['elapsed_s']:.1f}", row["stage"]
        elapsed += manifest["elapsed_s"]
        # The most frequent drop and quarantine reasons, each with its count.
        reasons = {**manifest["drop_reasons"], **manifest["quarantine_reasons"]}
        shown = dict(item.split("=") for item in row["reasons"].split(", ")) if row["reasons"] else {}
        assert {k: int(v) for k, v in shown.items()} == {k: reasons[k] for k in shown}, row["stage"]
        assert sorted(map(int, shown.values()), reverse=True) == sorted(reasons.values(), reverse=True)[:3], row[
            "stage"
        ]
    assert lines[-2] == f"output: {pipeline.stage_url(run_id, pipeline.stage_names[-1])}"
    assert lines[-1] == f"elapsed (sum of stages): {elapsed:.1f}s"
