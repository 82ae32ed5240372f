"""Exact dedup: the first copy in ingestion order survives, across shards and workers."""

from __future__ import annotations

import json

from conftest import REPO, write_jsonl
from tamis import corpus
from tamis.cli import run_one
from tamis.dataset import Dataset
from tamis.stages import exact_dedup

SPEECHES = REPO / "include/sample/web/date=2026-11-20/speeches.jsonl"


def speeches(n):
    return [json.loads(line)["text"] for line in SPEECHES.read_text().splitlines()[:n]]


def build(tmp_path, make_pipeline, workers, key="normalized", run_id="r", memory_budget_mb=8):
    a, b, c = speeches(3)
    write_jsonl(
        tmp_path / "web/date=2026-11-20/x.jsonl",
        [{"id": "1", "text": a}, {"id": "2", "text": b}, {"id": "3", "text": a}],
    )
    write_jsonl(
        tmp_path / "web/date=2026-11-21/y.jsonl",
        [{"id": "4", "text": "  " + b.upper().replace(" ", "\n ")}, {"id": "5", "text": c}],
    )
    write_jsonl(tmp_path / "forum/date=2026-11-20/z.jsonl", [{"id": "6", "text": c}, {"id": "7", "text": a}])
    pipeline = make_pipeline(
        {
            "web": {"path": str(tmp_path / "web"), "id_field": "id"},
            "forum": {"path": str(tmp_path / "forum"), "id_field": "id"},
        },
        stages={"ingest": {}, "exact_dedup": {"key": key, "memory_budget_mb": memory_budget_mb}},
        workers=workers,
    )
    run_one(pipeline, "ingest", run_id)
    return run_one(pipeline, "exact_dedup", run_id)


def test_the_first_copy_in_date_source_file_row_order_survives(tmp_path, make_pipeline):
    manifest = build(tmp_path, make_pipeline, workers=1)
    dataset = Dataset(manifest["output"])
    # Order: 2026-11-20 forum (6, 7), 2026-11-20 web (1, 2, 3), 2026-11-21 web (4, 5).
    assert sorted(dataset.read().column("id").to_pylist()) == ["forum/6", "forum/7", "web/2"]
    dropped = {r["id"]: r["detail"] for r in dataset.read_side("dropped").to_pylist()}
    assert dropped == {"web/1": "forum/7", "web/3": "forum/7", "web/4": "web/2", "web/5": "forum/6"}
    assert manifest["counts"] == {"in": 7, "kept": 3, "dropped": 4, "quarantined": 0}


def test_text_key_only_removes_byte_identical_copies(tmp_path, make_pipeline):
    manifest = build(tmp_path, make_pipeline, workers=1, key="text")
    assert manifest["drop_reasons"] == {"exact_duplicate": 3}  # the upper-cased copy of b survives


def test_two_workers_give_the_same_parts_as_one(tmp_path, make_pipeline):
    one = build(tmp_path / "a", make_pipeline, workers=1, run_id="one")
    two = build(tmp_path / "b", make_pipeline, workers=2, run_id="two")
    assert one["output"] != two["output"] and two["workers"] == 2
    assert [p["sha256"] for p in one["parts"]] == [p["sha256"] for p in two["parts"]]


def dropped_by_id(manifest):
    return {r["id"]: r["detail"] for r in Dataset(manifest["output"]).read_side("dropped").to_pylist()}


def test_a_plan_over_its_memory_budget_is_partitioned_on_disk_and_drops_the_same_rows(
    tmp_path, make_pipeline, monkeypatch
):
    in_memory = build(tmp_path / "a", make_pipeline, workers=2, run_id="memory")
    # 7 documents at 3 MiB each against the smallest budget (8 MiB): three partitions.
    monkeypatch.setattr(exact_dedup, "STATE_BYTES_PER_ROW", 3 << 20)
    on_disk = build(tmp_path / "b", make_pipeline, workers=2, run_id="disk")
    assert "exact_dedup.spill_partitions" not in in_memory["metrics"]
    assert on_disk["metrics"]["exact_dedup.spill_partitions"] == 3
    assert dropped_by_id(on_disk) == dropped_by_id(in_memory)
    assert [p["sha256"] for p in on_disk["parts"]] == [p["sha256"] for p in in_memory["parts"]]
    assert not list((tmp_path / "b").rglob("hashes"))  # the partitions are removed once the plan is written


def test_documents_the_corpus_holds_are_dropped_as_copies_of_the_corpus_ids_in_either_plan(
    tmp_path, make_pipeline, monkeypatch
):
    first = build(tmp_path, make_pipeline, workers=1, run_id="day-1")
    pipeline = make_pipeline(
        {
            "web": {"path": str(tmp_path / "web"), "id_field": "id"},
            "forum": {"path": str(tmp_path / "forum"), "id_field": "id"},
        },
        stages={"ingest": {}, "exact_dedup": {"memory_budget_mb": 8}},
    )
    corpus.append(first["output"], pipeline.corpus_url, "2026-11-20", "normalized")
    again = {"corpus_url": pipeline.corpus_url}
    in_memory = run_one(pipeline, "exact_dedup", "day-1", output_url=str(tmp_path / "memory"), overrides=again)
    monkeypatch.setattr(exact_dedup, "STATE_BYTES_PER_ROW", 4 << 20)
    on_disk = run_one(pipeline, "exact_dedup", "day-1", output_url=str(tmp_path / "disk"), overrides=again)
    assert on_disk["metrics"]["exact_dedup.spill_partitions"] == 5  # (7 + 3 corpus rows) x 4 MiB / 8 MiB
    # Every document is a copy of one the corpus already holds: the corpus's copy survives.
    assert dropped_by_id(in_memory) == {
        **dropped_by_id(first),
        "forum/6": "forum/6",
        "forum/7": "forum/7",
        "web/2": "web/2",
    }
    assert dropped_by_id(on_disk) == dropped_by_id(in_memory)
    assert in_memory["counts"]["kept"] == on_disk["counts"]["kept"] == 0
    assert on_disk["metrics"]["exact_dedup.corpus_documents"] == 3
