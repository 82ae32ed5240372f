"""Quality gates: Great Expectations suites pass on good data and stop bad data."""

from __future__ import annotations

from conftest import write_jsonl
from tamis.cli import main, run_one
from tamis.gates import GateConfig, validate


def ingest(tmp_path, make_pipeline, rows, gates=None):
    write_jsonl(tmp_path / "web/a.jsonl", rows)
    pipeline = make_pipeline({"web": {"path": str(tmp_path / "web"), "id_field": "id"}}, gates=gates)
    return pipeline, run_one(pipeline, "ingest", "r")["output"]


def test_a_clean_dataset_passes_and_the_result_is_saved(tmp_path, make_pipeline):
    pipeline, url = ingest(tmp_path, make_pipeline, [{"id": str(i), "text": f"text {i}"} for i in range(5)])
    result = validate(url, "ingest", pipeline.gate("ingest"))
    assert result["success"] and result["failed"] == []
    assert result["facts"]["distinct_ids"] == 5
    assert (tmp_path / "store/runs/r/ingest/_gates/result.json").exists()


def test_duplicate_ids_fail_the_gate(tmp_path, make_pipeline):
    pipeline, url = ingest(tmp_path, make_pipeline, [{"id": "same", "text": "one"}, {"id": "same", "text": "two"}])
    result = validate(url, "ingest", GateConfig())
    assert not result["success"]
    assert [f["expectation"] for f in result["failed"]] == ["expect_column_pair_values_to_be_equal"]


def test_a_drop_rate_above_the_bound_fails_the_gate_and_the_command_exits_non_zero(tmp_path, make_pipeline):
    rows = [{"id": str(i), "text": "" if i % 2 else "kept"} for i in range(10)]
    pipeline, _ = ingest(tmp_path, make_pipeline, rows, gates={"default": {"max_drop_rate": 0.2}})
    code = main(["validate", "ingest", "--pipeline", pipeline.path, "--run-id", "r"])
    assert code == 1


def test_extra_expectations_come_from_the_yaml(tmp_path, make_pipeline):
    rows = [{"id": "1", "text": "mail me at someone@example.org"}]
    gates = {
        "default": {
            "expectations": [
                {"expect_column_values_to_not_match_regex": {"column": "text", "regex": "[\\w.]+@[\\w.]+"}}
            ]
        }
    }
    pipeline, url = ingest(tmp_path, make_pipeline, rows, gates=gates)
    result = validate(url, "ingest", pipeline.gate("ingest"))
    assert [f["expectation"] for f in result["failed"]] == ["expect_column_values_to_not_match_regex"]
