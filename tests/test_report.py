"""The report data (tamis.report) and the stage metrics (tamis.metrics), from a real run
over the bundled sample: ingest -> normalize -> language -> near_dedup."""

from __future__ import annotations

import json
import shutil
import socket

import pyarrow.compute as pc
import pytest

from tamis import report
from tamis.cli import run_one
from tamis.dataset import Dataset
from tamis.gates import GateConfig, validate
from tamis.metrics import emit_stage_metrics

from conftest import REPO

SAMPLE = REPO / "include" / "sample"
STAGES = ["ingest", "normalize", "language", "near_dedup"]
RUN_ID = "manual__2026-11-20T00:00:00+00:00"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run of four stages; returns (pipeline, run_url)."""
    import yaml

    from tamis.pipeline import load_pipeline

    root = tmp_path_factory.mktemp("report")
    config = {
        "name": "report_test",
        "storage_root": str(root / "store"),
        "workers": 1,
        "sources": {"web": {"path": str(SAMPLE / "web"), "id_field": "id", "url_field": "url"},
                    "udhr": {"path": str(SAMPLE / "udhr"), "format": "text"}},
        "stages": {"ingest": {}, "normalize": {}, "language": {}, "near_dedup": {}},
    }
    path = root / "report_test.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    pipeline = load_pipeline(str(path))
    for stage in STAGES:
        run_one(pipeline, stage, RUN_ID)
    return pipeline, pipeline.run_url(RUN_ID)


def manifests(run_url: str) -> dict[str, dict]:
    return {s: Dataset(f"{run_url}/{s}").manifest() for s in STAGES}


def test_funnel_rows_equal_each_stage_manifest(run):
    _, run_url = run
    data = report.run_report(run_url, STAGES)
    rows = {r["stage"]: r for r in report.funnel(data)}
    assert list(rows) == STAGES and data["complete"] and data["final_stage"] == "near_dedup"
    for stage, manifest in manifests(run_url).items():
        for key in ("in", "kept", "dropped", "quarantined"):
            assert rows[stage][key] == manifest["counts"][key], (stage, key)
    reasons = {(r["stage"], r["rule"]): r["count"] for r in report.reasons_by_rule(data)}
    assert reasons[("near_dedup", "near_duplicate")] == manifests(run_url)["near_dedup"]["drop_reasons"]["near_duplicate"]


def test_stage_without_manifest_is_incomplete_and_missing_stage_is_not_run(run, tmp_path):
    _, run_url = run
    copy = tmp_path / "stopped"
    shutil.copytree(run_url, copy)
    (copy / "language" / "_manifest.json").unlink()  # as if the stage stopped before its manifest
    shutil.rmtree(copy / "near_dedup")
    data = report.run_report(str(copy), STAGES)
    status = {s["stage"]: s for s in data["stages"]}
    assert status["normalize"]["status"] == "done"
    assert status["language"]["status"] == "incomplete"
    assert status["language"]["committed_shards"] == len(list((copy / "language" / "_commits").glob("*.json"))) > 0
    assert status["near_dedup"]["status"] == "not run"
    assert not data["complete"] and [r["stage"] for r in report.funnel(data)] == ["ingest", "normalize"]


def test_truncated_manifest_is_reported_not_raised(run, tmp_path):
    _, run_url = run
    shutil.copytree(f"{run_url}/ingest", tmp_path / "ingest")
    manifest = tmp_path / "ingest" / "_manifest.json"
    manifest.write_text(manifest.read_text()[:100])
    data = report.run_report(str(tmp_path), ["ingest"])
    assert data["stages"][0]["status"] == "unreadable" and "could not be read" in data["stages"][0]["message"]
    assert report.funnel(data) == []


def test_run_that_wrote_nothing_does_not_exist(tmp_path):
    data = report.run_report(str(tmp_path / "never"), STAGES)
    assert not data["exists"] and all(s["status"] == "not run" for s in data["stages"])


def test_language_counts_cover_every_kept_record(run):
    _, run_url = run
    url = f"{run_url}/language"
    counts = dict(report.value_counts(url, "lang", limit=1000))
    assert sum(counts.values()) == Dataset(url).manifest()["counts"]["kept"]
    assert counts.get("en", 0) > counts.get("fr", 0) > 0  # the web sample is English; UDHR holds one French text


def test_length_histogram_counts_every_document_and_its_characters(run):
    _, run_url = run
    url = f"{run_url}/normalize"
    h = report.histogram(url, "text")
    texts = Dataset(url).read(columns=["text"]).column("text").to_pylist()
    assert sum(h["counts"]) == h["rows"] == len(texts)
    assert h["sum"] == sum(len(t) for t in texts)
    assert h["edges"][-1] > max(len(t) for t in texts) and not h["sampled"]
    capped = report.histogram(url, "text", max_rows=10)
    assert capped["rows"] == 10 and capped["sampled"] and capped["total_rows"] == len(texts)


def test_records_by_id_and_by_source(run):
    _, run_url = run
    url = f"{run_url}/language"
    table = Dataset(url).read(columns=["id", "source", "lang", "text"])
    wanted = table.slice(7, 1).to_pylist()[0]
    found = report.find_records(url, record_id=wanted["id"])
    assert [r["id"] for r in found["rows"]] == [wanted["id"]]
    assert found["rows"][0]["text_chars"] == len(wanted["text"])
    udhr = report.find_records(url, source="udhr", lang=wanted["lang"] if wanted["source"] == "udhr" else None, limit=500)
    assert udhr["rows"] and {r["source"] for r in udhr["rows"]} == {"udhr"}
    assert len(udhr["rows"]) <= pc.sum(pc.equal(table.column("source"), "udhr")).as_py()
    assert report.find_records(url, record_id="web/does-not-exist")["rows"] == []


def test_cluster_samples_account_for_every_near_duplicate(run):
    _, run_url = run
    url = f"{run_url}/near_dedup"
    samples = report.cluster_samples(url, limit=3)
    dropped = Dataset(url).manifest()["drop_reasons"]["near_duplicate"]
    assert samples["duplicates"] == dropped > 0
    first = samples["clusters"][0]
    assert first["size"] >= samples["clusters"][-1]["size"] >= 2
    assert first["survivor_text"] and first["duplicate_text"]  # the duplicate's text comes from the stage input
    assert report.cluster_samples(f"{run_url}/normalize") is None


def test_gate_result_keeps_counts_but_no_record_values(run):
    _, run_url = run
    url = f"{run_url}/normalize"
    config = GateConfig(expectations=[{"expect_column_values_to_not_match_regex": {"column": "text", "regex": "Article 1"}}])
    validate(url, "normalize", config)
    gate = report.gate_result(url)
    failed = [e for e in gate["expectations"] if not e["success"]]
    assert not gate["success"] and gate["failed"] == 1
    assert failed[0]["expectation"] == "expect_column_values_to_not_match_regex" and failed[0]["unexpected_count"] > 0
    assert "All human beings" not in json.dumps(gate)  # the matched UDHR texts stay out of the report


def test_stage_metrics_arrive_as_statsd_lines_over_udp(run, monkeypatch):
    _, run_url = run
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    monkeypatch.setenv("TAMIS_STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("TAMIS_STATSD_PORT", str(receiver.getsockname()[1]))
    manifest = Dataset(f"{run_url}/near_dedup").manifest()
    figures = emit_stage_metrics(manifest, "report_test")
    lines = [receiver.recv(4096).decode() for _ in figures]
    receiver.close()
    parsed = {}
    for line in lines:
        name_value, kind, tags = line.split("|")
        name, value = name_value.split(":")
        parsed[name] = (float(value), kind, tags)
    c = manifest["counts"]
    assert parsed["tamis_docs_processed_total"][:2] == (c["in"], "c")
    assert parsed["tamis_duplicate_rate"][0] == pytest.approx(c["dropped"] / c["in"], rel=1e-5)
    assert parsed["tamis_drop_rate"][1] == "g" and parsed["tamis_errors_total"][0] == c["quarantined"]
    assert parsed["tamis_docs_per_second"][0] == pytest.approx(manifest["docs_per_s"], rel=1e-5)
    assert {t for _, _, t in parsed.values()} == {"#stage:near_dedup,pipeline:report_test"}
    assert "tamis_pii_detection_rate" not in parsed
