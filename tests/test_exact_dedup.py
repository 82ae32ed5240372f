"""Exact dedup: the first copy in ingestion order survives, across shards and workers."""

from __future__ import annotations

import json

from conftest import REPO, write_jsonl
from tamis.cli import run_one
from tamis.dataset import Dataset

SPEECHES = REPO / "include/sample/web/date=2026-11-20/speeches.jsonl"


def speeches(n):
    return [json.loads(line)["text"] for line in SPEECHES.read_text().splitlines()[:n]]


def build(tmp_path, make_pipeline, workers, key="normalized", run_id="r"):
    a, b, c = speeches(3)
    write_jsonl(tmp_path / "web/date=2026-11-20/x.jsonl", [{"id": "1", "text": a}, {"id": "2", "text": b}, {"id": "3", "text": a}])
    write_jsonl(tmp_path / "web/date=2026-11-21/y.jsonl", [{"id": "4", "text": "  " + b.upper().replace(" ", "\n ")}, {"id": "5", "text": c}])
    write_jsonl(tmp_path / "forum/date=2026-11-20/z.jsonl", [{"id": "6", "text": c}, {"id": "7", "text": a}])
    pipeline = make_pipeline({
        "web": {"path": str(tmp_path / "web"), "id_field": "id"},
        "forum": {"path": str(tmp_path / "forum"), "id_field": "id"},
    }, stages={"ingest": {}, "exact_dedup": {"key": key}}, workers=workers)
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
