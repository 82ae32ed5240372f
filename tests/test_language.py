"""The language stage: identification, bad inputs, and counts through the runner."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pytest

from tamis.dataset import Dataset
from tamis.pipeline import SourceConfig
from tamis.runner import run_stage
from tamis.stages.language import LanguageFilter
from conftest import write_dataset

UDHR = Path(__file__).resolve().parent.parent / "include" / "sample" / "udhr" / "date=2026-11-20"


def udhr(code: str, chars: int = 2000) -> str:
    return (UDHR / f"{code}.txt").read_text(encoding="utf-8")[:chars]


def records(texts: list[str | None], source: str = "web") -> pa.Table:
    return pa.table(
        {
            "id": [f"{source}/{i}" for i in range(len(texts))],
            "source": [source] * len(texts),
            "text": pa.array(texts, pa.string()),
        }
    )


def outcome(result, doc_id: str) -> tuple[str | None, str | None]:
    """(lang, drop reason) of one record."""
    kept = {r["id"]: r["lang"] for r in result.kept.select(["id", "lang"]).to_pylist()}
    dropped = {r["id"]: r["reason"] for r in result.dropped.to_pylist()}
    return kept.get(doc_id), dropped.get(doc_id)


def test_identifies_english_chinese_japanese_and_records_columns():
    stage = LanguageFilter()
    result = stage.process_batch(records([udhr("eng"), udhr("cmn_hans"), udhr("cmn_hant"), udhr("jpn"), udhr("kor")]))
    assert result.kept.column("lang").to_pylist() == ["en", "zh", "zh", "ja", "ko"]
    scores = result.kept.column("lang_score").to_pylist()
    assert all(0.5 <= s <= 1.0 for s in scores)


def test_mixed_script_text_takes_the_dominant_language():
    mixed = "今日は東京でPythonとApache Airflowの勉強会がありました。とても楽しかったです。"
    latin_with_han = "The word 学校 means school in Chinese and Japanese, and it is written with two characters."
    result = LanguageFilter().process_batch(records([mixed, latin_with_han]))
    assert result.kept.column("lang").to_pylist() == ["ja", "en"]


def test_empty_whitespace_emoji_and_digits_are_dropped_as_no_text():
    result = LanguageFilter().process_batch(records(["", "  \n\t  ", "😀🎉👍🏽", "12 345 - 678", None]))
    assert result.kept.num_rows == 0
    assert result.dropped.column("reason").to_pylist() == ["no_text"] * 5


def test_unlisted_script_gets_its_own_reason():
    result = LanguageFilter().process_batch(records([udhr("amh"), udhr("khm")]))
    assert result.dropped.column("reason").to_pylist() == ["lang_unknown_script"] * 2
    assert "letters in a script the detector knows" in result.dropped.column("detail")[0].as_py()


def test_very_short_text_is_low_confidence_not_a_guess():
    lang, reason = outcome(LanguageFilter().process_batch(records(["ok"])), "web/0")
    assert lang is None and reason == "lang_low_confidence"


def test_allowed_languages_drop_the_others_with_the_detected_language_in_detail():
    stage = LanguageFilter({"allowed_languages": ["en", "zh"]})
    result = stage.process_batch(records([udhr("eng"), udhr("deu"), udhr("cmn_hans")]))
    assert result.kept.column("lang").to_pylist() == ["en", "zh"]
    assert result.dropped.column("reason").to_pylist() == ["lang_not_allowed"]
    assert result.dropped.column("detail")[0].as_py().startswith("lang=de ")


def test_one_megabyte_single_line_is_bounded():
    line = (udhr("fra", 5000).replace("\n", " ") * 220)[:1_000_000]
    stage = LanguageFilter()
    stage.process_batch(records(["warm up the detector"]))
    started = time.perf_counter()
    result = stage.process_batch(records([line]))
    assert time.perf_counter() - started < 2.0
    assert result.kept.column("lang").to_pylist() == ["fr"]


def test_code_is_labelled_but_not_filtered_by_default():
    code = "def main():\n    for item in items:\n        print(item)\n"
    context = {"sources": {"repo": SourceConfig(path="x", type="code")}}
    result = LanguageFilter({"allowed_languages": ["de"]}, context=context).process_batch(records([code], "repo"))
    assert result.kept.num_rows == 1 and result.kept.column("lang")[0].as_py() != "und"
    prose = LanguageFilter({"allowed_languages": ["de"]}, context=context).process_batch(records([code], "web"))
    assert prose.kept.num_rows == 0


def test_unknown_language_codes_are_rejected():
    with pytest.raises(ValueError, match="xx"):
        LanguageFilter({"allowed_languages": ["en", "xx"]})



def test_counts_reconcile_through_the_runner(tmp_path):
    texts = [udhr("eng"), udhr("deu"), "", "😀", udhr("amh"), udhr("jpn"), "ok"]
    write_dataset(tmp_path / "in", records(texts))
    manifest = run_stage(LanguageFilter({"allowed_languages": ["en", "ja"]}), str(tmp_path / "in"), str(tmp_path / "out"))
    counts = manifest["counts"]
    assert counts == {"in": 7, "kept": 2, "dropped": 5, "quarantined": 0}
    assert manifest["drop_reasons"] == {
        "lang_low_confidence": 1, "lang_not_allowed": 1, "lang_unknown_script": 1, "no_text": 2,
    }
    out = Dataset(str(tmp_path / "out")).read(["id", "lang", "lang_score"])
    assert sorted(out.column("lang").to_pylist()) == ["en", "ja"]
