"""Content safety: per-category scores from term lists and a trained one-vs-all model, kept
as columns; drop or flag by category and threshold; clean real text is kept. Labelled texts:
OpenAI's moderation evaluation set (tests/data/safety, MIT)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from conftest import TEST_DATA, read_jsonl, write_dataset, write_jsonl
from tamis.cli import main
from tamis.runner import run_stage
from tamis.stages.safety import CATEGORIES, ContentSafety

LABELLED = read_jsonl(TEST_DATA / "safety/openai_moderation_samples.jsonl.gz")
CODES = {"sexual": "S", "hate": "H", "violence": "V", "self_harm": "SH"}
WIKI = read_jsonl(TEST_DATA / "web_en/wikipedia_en_sample.jsonl.gz")
SPEECHES = read_jsonl(TEST_DATA / "web_en/us_presidential_speeches.jsonl.gz")


def table(texts: list[str]) -> pa.Table:
    return pa.table({"id": [f"d/{i}" for i in range(len(texts))], "source": ["web"] * len(texts), "text": texts})


def labelled(category: str, value: int) -> list[str]:
    return [r["prompt"] for r in LABELLED if r.get(CODES[category]) == value]


def test_every_category_gets_a_score_column_and_reasons_name_the_category():
    texts = labelled("self_harm", 1)[:40] + [r["text"] for r in WIKI[:20]]
    result = ContentSafety().process_batch(table(texts))
    for c in CATEGORIES:
        assert f"safety_{c}" in result.kept.column_names
    reasons = result.dropped.column("reason").to_pylist()
    assert reasons and all(r.startswith("safety.") for r in reasons)
    assert "safety.self_harm" in reasons
    assert all(i < 40 for i in (int(x.split("/")[1]) for x in result.dropped.column("id").to_pylist()))
    detail = result.dropped.column("detail")[0].as_py()
    assert all(c in detail for c in CATEGORIES)


def test_clean_real_text_is_kept_even_when_it_names_violence():
    texts = [r["text"] for r in WIKI + SPEECHES]
    assert any("massacre" in t.lower() or "murder" in t.lower() for t in texts)
    result = ContentSafety().process_batch(table(texts))
    assert result.dropped.num_rows <= 0.02 * len(texts)


def test_the_term_lists_find_explicit_sexual_texts_better_than_chance():
    positives, negatives = labelled("sexual", 1), labelled("sexual", 0)
    scores = ContentSafety({"categories": ["sexual"]}).scores(pa.array(positives + negatives))["sexual"]
    hit = scores >= 0.5
    precision = hit[: len(positives)].sum() / max(hit.sum(), 1)
    base_rate = len(positives) / (len(positives) + len(negatives))
    assert hit[: len(positives)].mean() > 0.5 and precision > 2 * base_rate


def test_flag_keeps_everything_and_a_category_threshold_overrides_the_default():
    texts = labelled("sexual", 1)[:30]
    flagged = ContentSafety({"action": "flag"}).process_batch(table(texts))
    assert flagged.dropped.num_rows == 0 and flagged.kept.num_rows == 30
    assert (
        flagged.metrics["safety.flagged"]
        == int((np.array(flagged.kept.column("safety_sexual").to_pylist()) >= 0.5).sum())
        > 0
    )
    strict = ContentSafety({"thresholds": {"sexual": 1.0}}).process_batch(table(texts))
    assert "safety.sexual" not in strict.dropped.column("reason").to_pylist()


def test_a_pipeline_list_adds_terms_and_only_chosen_categories_are_scored(tmp_path):
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "violence.txt").write_text("# our own\nalbedo\n")
    stage = ContentSafety({"categories": ["violence"], "lists": str(tmp_path / "lists"), "default_lists": False})
    stage.check_ready()
    albedo = next(r["text"] for r in WIKI if r["title"] == "Albedo")
    result = stage.process_batch(table([albedo, WIKI[0]["text"]]))
    assert result.dropped.column("reason").to_pylist() == ["safety.violence"]
    assert [c for c in result.kept.column_names if c.startswith("safety_")] == ["safety_violence"]
    assert stage.dependencies("x")  # the list file is part of the output's fingerprint


def test_a_trained_one_vs_all_model_scores_its_categories(tmp_path):
    rows = [{"text": r["prompt"], "categories": [c for c, code in CODES.items() if r.get(code) == 1]} for r in LABELLED]
    path = tmp_path / "safety.bin"
    assert (
        main(
            [
                "train-quality",
                str(path),
                "--labelled",
                str(write_jsonl(tmp_path / "l.jsonl", rows[::2])),
                "--label-column",
                "categories",
                "--loss",
                "ova",
                "--lr",
                "0.5",
                "--epoch",
                "25",
                "--dim",
                "16",
                "--bucket",
                "50000",
                "--min-count",
                "1",
            ]
        )
        == 0
    )
    assert set(json.loads((tmp_path / "safety.bin.json").read_text())["labels"]) == {
        f"__label__{c}" for c in [*CATEGORIES, "none"]
    }
    stage = ContentSafety({"model": str(path), "default_lists": False})
    stage.check_ready()
    held = rows[1::2]
    scores = stage.scores(pa.array([r["text"] for r in held]))
    for c in ("sexual", "hate"):
        actual = np.array([c in r["categories"] for r in held])
        # Held-out positives mostly rank above held-out negatives (area under the ROC curve).
        auc = (scores[c][actual][:, None] > scores[c][~actual][None, :]).mean()
        assert auc > 0.7, (c, auc)


def test_a_model_without_a_category_or_no_scorer_at_all_fails_before_any_work(tmp_path):
    rows = [{"text": r["text"], "categories": ["sexual"] if i % 2 else []} for i, r in enumerate(WIKI[:20])]
    path = tmp_path / "m.bin"
    assert (
        main(
            [
                "train-quality",
                str(path),
                "--labelled",
                str(write_jsonl(tmp_path / "l.jsonl", rows)),
                "--label-column",
                "categories",
                "--loss",
                "ova",
                "--dim",
                "4",
                "--bucket",
                "100",
            ]
        )
        == 0
    )
    with pytest.raises(ValueError, match="no label for"):
        ContentSafety({"model": str(path)}).check_ready()
    with pytest.raises(ValueError, match="nothing scores"):
        ContentSafety({"default_lists": False}).check_ready()


def test_counts_reconcile_through_the_runner(tmp_path):
    texts = labelled("sexual", 1)[:20] + [r["text"] for r in WIKI[:20]]
    write_dataset(tmp_path / "in", table(texts))
    manifest = run_stage(ContentSafety(), str(tmp_path / "in"), str(tmp_path / "out"), workers=1)
    c = manifest["counts"]
    assert c["in"] == 40 == c["kept"] + c["dropped"] and c["dropped"] > 0
    assert sum(manifest["drop_reasons"].values()) == c["dropped"]
    assert all(k.startswith("safety.") for k in manifest["drop_reasons"])
