"""The report data (tamis.report) and the stage metrics (tamis.metrics), from a real run
over the bundled sample: ingest -> normalize -> language -> near_dedup."""

from __future__ import annotations

import json
import shutil
import socket

import pyarrow.compute as pc
import pytest

from conftest import REPO
from tamis import report
from tamis.cli import run_one
from tamis.dataset import Dataset
from tamis.gates import GateConfig, validate
from tamis.metrics import emit_stage_metrics

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
        "sources": {
            "web": {"path": str(SAMPLE / "web"), "id_field": "id", "url_field": "url"},
            "udhr": {"path": str(SAMPLE / "udhr"), "format": "text"},
        },
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
    assert (
        reasons[("near_dedup", "near_duplicate")] == manifests(run_url)["near_dedup"]["drop_reasons"]["near_duplicate"]
    )


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
    udhr = report.find_records(
        url, source="udhr", lang=wanted["lang"] if wanted["source"] == "udhr" else None, limit=500
    )
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
    config = GateConfig(
        expectations=[{"expect_column_values_to_not_match_regex": {"column": "text", "regex": "Article 1"}}]
    )
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


# --------------------------------------------------------------------------- the documents behind the numbers


def test_dropped_examples_page_through_every_drop_of_a_rule_with_the_text_the_stage_read(run):
    _, run_url = run
    url = f"{run_url}/near_dedup"
    side = Dataset(url).read_side("dropped")
    wanted = sorted(pc.filter(side.column("id"), pc.equal(side.column("reason"), "near_duplicate")).to_pylist())
    seen, offset = [], 0
    while offset is not None:
        page = report.dropped_examples(url, "near_duplicate", offset, limit=3)
        assert len(page["rows"]) <= 3 and page["total"] == len(wanted)
        seen += page["rows"]
        offset = page["next_offset"]
    assert sorted(r["id"] for r in seen) == wanted
    inputs = Dataset(f"{run_url}/language").read(columns=["id", "text"]).to_pylist()
    texts = {r["id"]: r["text"] for r in inputs}
    for row in seen:
        assert row["snippet"]["before"] == texts[row["id"]][: report.SNIPPET_CHARS]
        assert row["detail"] in texts  # a duplicate's detail is the survivor's id


def test_a_language_drop_names_the_span_the_detector_read():
    import pyarrow as pa

    from tamis.stages.language import LanguageFilter

    english = (REPO / "include/sample/udhr/date=2026-11-20/eng.txt").read_text()
    texts = ["\n\t  " + english, "  " + english[:120]]
    result = LanguageFilter({"allowed_languages": ["fr"], "max_chars": 400}).process_batch(
        pa.table({"id": ["long", "short"], "source": ["web", "web"], "text": texts})
    )
    assert result.dropped.column("reason").to_pylist() == ["lang_not_allowed"] * 2
    for text, detail in zip(texts, result.dropped.column("detail").to_pylist()):
        detail, (start, end) = report.parse_detail(detail)
        assert text[start:end] == text.lstrip()[:400] and detail.startswith("lang=en score=")


def test_a_marker_rule_names_the_span_of_its_marker():
    import pyarrow as pa

    from tamis.stages.quality import QualityFilter

    text = (REPO / "include/sample/udhr/date=2026-11-20/eng.txt").read_text()
    marked = text[:900] + " {placeholder} " + text[900:]
    result = QualityFilter({"c4": {"curly_bracket": True}}).process_batch(
        pa.table({"id": ["a", "b"], "source": ["web", "web"], "text": [text, marked]})
    )
    assert result.dropped.column("reason").to_pylist() == ["c4_curly_bracket"]
    detail, span = report.parse_detail(result.dropped.column("detail")[0].as_py())
    assert marked[span[0] : span[1]] == "{" and detail == "marker found"


def test_changed_examples_show_what_normalize_changed(run):
    _, run_url = run
    page = report.changed_examples(f"{run_url}/normalize", limit=4)
    before = {r["id"]: r["text"] for r in Dataset(f"{run_url}/ingest").read(columns=["id", "text"]).to_pylist()}
    after = {r["id"]: r["text"] for r in Dataset(f"{run_url}/normalize").read(columns=["id", "text"]).to_pylist()}
    changed = [i for i in after if after[i] != before[i]]
    assert page["rows"] and len(page["rows"]) == min(4, len(changed))
    for row in page["rows"]:
        for side, text in (("before", before[row["id"]]), ("after", after[row["id"]])):
            assert all(piece in text for _, run in row[side] for piece in run.split(" … ")), side
        assert any(kind == "changed" for kind, _ in row["before"] + row["after"])


def test_a_before_after_keeps_the_changes_and_cuts_the_long_unchanged_stretches():
    before = "Intro line.\n" + "unchanged words here. " * 400 + "\nMail me at a@b.example now.\n" + "tail " * 300
    after = before.replace("a@b.example", "<EMAIL_ADDRESS>")
    diff = report.text_diff(before, after, redact_changed=True)
    assert [t for kind, t in diff["after"] if kind == "changed"] == ["<EMAIL_ADDRESS>"]
    assert diff["values"] == ["a@b.example"] and "a@b.example" not in json.dumps(diff["before"])
    shown = "".join(t for _, t in diff["after"])
    assert len(shown) < 2 * report.DIFF_CONTEXT + 100 and " … " in shown


def test_a_cluster_shows_its_survivor_and_members_with_their_estimated_jaccard(run):
    _, run_url = run
    url = f"{run_url}/near_dedup"
    first = report.cluster_samples(url, limit=1)["clusters"][0]
    cluster = report.cluster_members(url, first["duplicate_ids"][0])  # found from a member too
    assert cluster["survivor"]["id"] == first["survivor_id"] and cluster["survivor"]["text"]
    assert [m["id"] for m in cluster["members"]] == first["duplicate_ids"][: len(cluster["members"])]
    threshold = Dataset(url).manifest()["params"]["threshold"]
    for member in cluster["members"]:
        assert member["text"] and threshold - 0.05 <= member["similarity"] <= 1.0
    sampled = cluster["members"][0]
    assert sampled["similarity"] == pytest.approx(first["similarity"], abs=1e-3)  # the stage's own estimate


def test_a_document_journey_ends_at_the_rule_that_dropped_it(run):
    _, run_url = run
    page = report.dropped_examples(f"{run_url}/near_dedup", "near_duplicate", limit=1)
    doc = page["rows"][0]
    journey = report.document_journey(run_url, STAGES, doc["id"])  # no part given: found by id
    assert journey["part"] == doc["part"]
    assert [(s["stage"], s["status"]) for s in journey["steps"]] == [
        ("ingest", "kept"),
        ("normalize", "kept"),
        ("language", "kept"),
        ("near_dedup", "dropped"),
    ]
    assert journey["steps"][-1]["reason"] == "near_duplicate" and journey["steps"][-1]["duplicate_of"] == doc["detail"]
    assert journey["steps"][2]["record"]["lang"]
    assert report.document_journey(run_url, STAGES, "web/no-such-document")["found"] is False


def test_compare_shows_counts_params_and_documents_one_run_kept_and_the_other_dropped(run):
    from tamis import compare

    pipeline, run_url = run
    strict = pipeline.run_url("strict")
    run_one(pipeline, "near_dedup", "strict", input_url=f"{run_url}/language", overrides={"threshold": 0.3})
    data = compare.compare_runs(run_url, strict, STAGES)
    a = Dataset(f"{run_url}/near_dedup").manifest()
    b = Dataset(f"{strict}/near_dedup").manifest()
    rows = {(r["stage"], r["name"]): r for r in data["counts"]}
    assert rows[("near_dedup", "kept")]["difference"] == b["counts"]["kept"] - a["counts"]["kept"] < 0
    assert rows[("ingest", "kept")]["b"] is None  # the second run did not run ingest
    assert {(p["stage"], p["param"], p["a"], p["b"]) for p in data["params"] if p["stage"] == "near_dedup"} == {
        ("near_dedup", "threshold", "0.8", "0.3")
    }
    samples = data["kept_by_a_dropped_by_b"]
    assert samples and not data["kept_by_b_dropped_by_a"]
    kept_a = set(Dataset(f"{run_url}/near_dedup").read(columns=["id"]).column("id").to_pylist())
    dropped_b = set(Dataset(f"{strict}/near_dedup").read_side("dropped").column("id").to_pylist())
    assert all(s["id"] in kept_a and s["id"] in dropped_b for s in samples)


def test_records_page_through_the_index(run, tmp_path):
    from tamis.runner import run_stage
    from tamis.stages.index import IndexStage

    _, run_url = run
    indexed = str(tmp_path / "index")
    run_stage(IndexStage({"documents": None}), f"{run_url}/near_dedup", indexed)
    table = Dataset(f"{run_url}/near_dedup").read(columns=["id", "source", "text"])
    udhr = sorted(r["id"] for r in table.to_pylist() if r["source"] == "udhr")
    seen, offset = [], 0
    while offset is not None:
        page = report.indexed_records(indexed, {"source": "udhr"}, offset, limit=7)
        seen += page["rows"]
        offset = page["next_offset"]
    assert [r["id"] for r in seen] == udhr  # the index is sorted by id
    texts = {r["id"]: r["text"] for r in table.to_pylist()}
    assert all(texts[r["id"]].startswith(r["text"].removesuffix(" …")) for r in seen)
    assert report.indexed_records(indexed, {"nope": "x"})["message"] == "the index has no 'nope' column"


# --------------------------------------------------------------------------- PII stays masked on every page


@pytest.fixture(scope="module")
def pii_run(tmp_path_factory):
    """ingest -> normalize -> pii (mask) over real sentences with synthetic PII, and the same
    with ``action: remove``; returns (run urls, the e-mail addresses in the input)."""
    import yaml

    from conftest import TEST_DATA, read_jsonl, write_jsonl
    from tamis.pipeline import load_pipeline

    root = tmp_path_factory.mktemp("pii_report")
    records = [r for r in read_jsonl(TEST_DATA / "pii" / "presidio_synth_v2.jsonl.gz")][:300]
    write_jsonl(root / "src" / "date=2026-11-20" / "synth.jsonl", [{"id": r["id"], "text": r["text"]} for r in records])
    emails = [s["value"] for r in records for s in r["spans"] if s["label"] == "EMAIL_ADDRESS"]
    urls = {}
    for action in ("mask", "remove"):
        config = {
            "name": f"pii_{action}",
            "storage_root": str(root / "store"),
            "workers": 1,
            "sources": {"synth": {"path": str(root / "src"), "id_field": "id"}},
            "stages": {
                "ingest": {},
                "normalize": {},
                "pii": {"entities": ["EMAIL_ADDRESS", "PHONE_NUMBER"], "action": action},
            },
        }
        path = root / f"{action}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        pipeline = load_pipeline(str(path))
        for stage in ("ingest", "normalize", "pii"):
            run_one(pipeline, stage, action)
        urls[action] = pipeline.run_url(action)
    assert emails
    return urls, emails


def test_pii_examples_show_masks_never_values(pii_run):
    urls, emails = pii_run
    page = report.pii_examples(f"{urls['mask']}/pii", "EMAIL_ADDRESS", limit=50)
    assert page["rows"] and page["total"] >= len(page["rows"])
    for row in page["rows"]:
        assert not any(e in row["text"] for e in emails)
        assert [row["text"][a:b] for a, b in row["marks"]] and all(
            row["text"][a:b].startswith("<") for a, b in row["marks"]
        )
        assert "<EMAIL_ADDRESS>" in row["text"]


def test_before_and_after_of_masking_blanks_the_values(pii_run):
    urls, emails = pii_run
    page = report.changed_examples(f"{urls['mask']}/pii", limit=20)
    assert page["rows"] and page["redacted"]
    for row in page["rows"]:
        shown = "".join(t for _, t in row["before"] + row["after"])
        assert not any(e in shown for e in emails)
        assert any(kind == "changed" and set(t) == {report.REDACTED} for kind, t in row["before"])


def test_a_masked_document_journey_never_shows_the_values_even_before_the_mask(pii_run):
    urls, emails = pii_run
    doc = report.pii_examples(f"{urls['mask']}/pii", "EMAIL_ADDRESS", limit=1)["rows"][0]
    journey = report.document_journey(urls["mask"], ["ingest", "normalize", "pii"], doc["id"])
    shown = json.dumps(journey)
    assert [s["status"] for s in journey["steps"]] == ["kept", "kept", "kept"]
    masking = journey["steps"][-1]
    assert masking["text"] and "<EMAIL_ADDRESS>" in masking["text"] and not any(e in shown for e in emails)
    assert any(kind == "changed" and set(t) == {report.REDACTED} for kind, t in masking["diff"]["before"])


def test_what_a_pii_stage_dropped_is_listed_without_text(pii_run):
    urls, emails = pii_run
    page = report.dropped_examples(f"{urls['remove']}/pii", "pii_found", limit=100)
    assert page["rows"] and page["text_hidden"] and all(r["snippet"] is None for r in page["rows"])
    journey = report.document_journey(urls["remove"], ["ingest", "normalize", "pii"], page["rows"][0]["id"])
    assert journey["text_hidden"] and not any(e in json.dumps(journey) for e in emails)


def test_word_changes_rebuild_both_texts_and_stay_local():
    import random

    text = (REPO / "include/sample/udhr/date=2026-11-20/eng.txt").read_text()
    words = text.split(" ")
    plain = [k for k, w in enumerate(words) if w.isalpha()]  # a mask replaces a word, not the spaces around it
    rng = random.Random(7)
    for _ in range(20):
        edited = list(words)
        for k in rng.sample(plain, 5):
            edited[k] = "<PERSON>"
        after = " ".join(edited)
        changes = report._changes(text, after)
        assert "".join(a for _, a, _ in changes) == text and "".join(b for _, _, b in changes) == after
        assert sum(len(b) for op, _, b in changes if op != "equal") <= 5 * len("<PERSON>")
