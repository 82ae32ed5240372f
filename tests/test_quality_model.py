"""``tamis train-quality`` and the quality stage's model score: a real fastText model trained
here from repository data (curated text against web text, the DCLM recipe) scores every
document the rules keep, keeps the score as a column and drops below ``min_score``."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from conftest import TEST_DATA, read_jsonl, write_dataset, write_jsonl
from tamis.cli import main
from tamis.dataset import Dataset
from tamis.runner import run_stage
from tamis.stages.quality import QualityFilter

WIKI = read_jsonl(TEST_DATA / "web_en/wikipedia_en_sample.jsonl.gz")
SPEECHES = read_jsonl(TEST_DATA / "web_en/us_presidential_speeches.jsonl.gz")
WEB = read_jsonl(TEST_DATA / "web_en/cc_c4_pile_fixtures_by_source.jsonl.gz")
# Rules off, so that only the model decides in these tests.
NO_RULES = {
    "gopher": {
        k: None
        for k in (
            "min_words",
            "min_mean_word_length",
            "min_stop_words",
            "min_alpha_words_ratio",
            "max_dup_line_frac",
            "max_dup_para_frac",
            "max_dup_line_char_frac",
            "max_dup_para_char_frac",
            "max_hash_word_ratio",
            "max_ellipsis_word_ratio",
            "max_bullet_lines_ratio",
            "max_ellipsis_lines_ratio",
            "max_mean_word_length",
            "max_words",
        )
    }
    | {"max_top_ngram_char_frac": {}, "max_dup_ngram_char_frac": {}},
    "c4": {"lorem_ipsum": False, "min_sentences": None, "max_boilerplate_lines_ratio": None},
    "fineweb": {
        "min_line_punct_ratio": None,
        "max_short_line_ratio": None,
        "max_char_dup_ratio": None,
        "max_list_ratio": None,
    },
}


def train_part(rows: list[dict]) -> list[dict]:
    return [r for i, r in enumerate(rows) if i % 4 != 3]


def held_out(rows: list[dict]) -> list[dict]:
    """Every fourth document: the web fixtures come grouped by origin, and every origin is held out."""
    return [r for i, r in enumerate(rows) if i % 4 == 3]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Trained on three quarters of the Wikipedia articles and speeches against three quarters of the web documents."""
    folder = tmp_path_factory.mktemp("model")
    positive = write_jsonl(folder / "curated.jsonl", train_part(WIKI) + train_part(SPEECHES))
    negative = write_jsonl(folder / "web.jsonl", train_part(WEB))
    path = folder / "quality.bin"
    assert (
        main(
            [
                "train-quality",
                str(path),
                "--positive",
                str(positive),
                "--negative",
                str(negative),
                "--epoch",
                "25",
                "--lr",
                "1.0",
                "--dim",
                "16",
                "--bucket",
                "20000",
            ]
        )
        == 0
    )
    return path


def table(rows: list[dict], source: str) -> pa.Table:
    return pa.table(
        {
            "id": [f"{source}/{i}" for i in range(len(rows))],
            "source": [source] * len(rows),
            "text": [r["text"] for r in rows],
        }
    )


def test_held_out_curated_text_scores_above_held_out_web_text(model):
    stage = QualityFilter({**NO_RULES, "model": {"path": str(model)}})
    stage.setup()
    curated = stage.process_batch(table(held_out(WIKI) + held_out(SPEECHES), "curated")).kept.column(
        "quality_model_score"
    )
    web = stage.process_batch(table(held_out(WEB), "web")).kept.column("quality_model_score")
    curated, web = np.array(curated.to_pylist()), np.array(web.to_pylist())
    assert len(curated) == 30 and len(web) == 20
    assert ((0 <= curated) & (curated <= 1)).all() and ((0 <= web) & (web <= 1)).all()
    # Most held-out pairs are ordered right (the area under the ROC curve).
    assert (curated[:, None] > web[None, :]).mean() > 0.85


def test_documents_below_min_score_are_dropped_with_their_score(tmp_path, model):
    rows = table(held_out(WIKI) + held_out(WEB), "mixed")
    write_dataset(tmp_path / "in", rows)
    stage = QualityFilter({**NO_RULES, "model": {"path": str(model), "min_score": 0.5}})
    manifest = run_stage(stage, str(tmp_path / "in"), str(tmp_path / "out"), workers=2)
    out = Dataset(str(tmp_path / "out"))
    kept = out.read()
    dropped = out.read_side("dropped")
    assert manifest["counts"]["in"] == 40 == kept.num_rows + dropped.num_rows
    assert dropped.num_rows > 0 and kept.num_rows > 0
    assert set(dropped.column("reason").to_pylist()) == {"model_score"}
    assert all(float(d.split(" vs ")[0]) < 0.5 for d in dropped.column("detail").to_pylist())
    assert min(kept.column("quality_model_score").to_pylist()) >= 0.5
    assert manifest["metrics"]["quality.model.scored"] == 40
    assert manifest["metrics"]["quality.rule_hits.model_score"] == dropped.num_rows


def test_rules_run_first_and_the_model_scores_what_they_keep(model):
    stage = QualityFilter({"model": {"path": str(model)}})
    result = stage.process_batch(table(held_out(WIKI)[:10] + [{"text": "too short"}], "web"))
    assert result.dropped.column("id").to_pylist()[-1] == "web/10"
    assert result.dropped.column("reason").to_pylist()[-1] == "gopher_min_words"
    assert result.kept.column("quality_model_score").null_count == 0
    assert result.metrics["quality.model.scored"] == result.kept.num_rows


def test_a_label_column_trains_one_label_per_value_with_provenance(tmp_path):
    labelled = write_jsonl(tmp_path / "web.jsonl", WEB)
    path = tmp_path / "origin.bin"
    assert (
        main(
            [
                "train-quality",
                str(path),
                "--labelled",
                str(labelled),
                "--label-column",
                "source",
                "--valid-fraction",
                "0.25",
                "--dim",
                "16",
                "--bucket",
                "20000",
            ]
        )
        == 0
    )
    provenance = json.loads((tmp_path / "origin.bin.json").read_text())
    counts = {}
    for r in WEB:
        label = "__label__" + r["source"].replace(" ", "_")
        counts[label] = counts.get(label, 0) + 1
    assert provenance["labels"] == dict(sorted(counts.items())) and len(counts) > 2
    assert provenance["inputs"][0]["kind"] == "labelled" and len(provenance["inputs"][0]["sha256"]) == 64
    held = provenance["held_out"]
    assert 0 < held["documents"] < len(WEB) and held["documents"] + provenance["train_documents"] == len(WEB)
    import fasttext

    assert sorted(fasttext.load_model(str(path)).get_labels()) == sorted(counts)


def test_high_values_make_a_quality_model_from_a_label_column(tmp_path, model):
    rows = [{"text": r["text"], "label": "1"} for r in WIKI[:40]] + [
        {"text": r["text"], "label": "0"} for r in WEB[:40]
    ]
    labelled = write_jsonl(tmp_path / "labelled.jsonl", rows)
    path = tmp_path / "q.bin"
    assert (
        main(["train-quality", str(path), "--labelled", str(labelled), "--high", "1", "--dim", "8", "--bucket", "1000"])
        == 0
    )
    assert json.loads((tmp_path / "q.bin.json").read_text())["labels"] == {"__label__hq": 40, "__label__lq": 40}
    # A different model file is a different dependency: the output is never served stale.
    deps = [QualityFilter({"model": {"path": str(p)}}).dependencies("x")["quality_model"] for p in (path, model)]
    assert deps[0] != deps[1]


def test_bad_training_input_is_a_clear_error(tmp_path, capsys):
    labelled = write_jsonl(tmp_path / "one.jsonl", [{"text": r["text"], "label": "x"} for r in WIKI[:5]])
    assert main(["train-quality", str(tmp_path / "m.bin"), "--labelled", str(labelled)]) == 2
    assert "1 label(s)" in capsys.readouterr().err
    assert main(["train-quality", str(tmp_path / "m.bin"), "--positive", str(labelled)]) == 2
    assert "--negative" in capsys.readouterr().err
    assert main(["train-quality", str(tmp_path / "m.bin"), "--labelled", str(labelled), "--label-column", "stars"]) == 2
    assert "no column 'stars'" in capsys.readouterr().err
