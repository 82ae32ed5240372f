"""The quality stage: every rule can fire, code and prose are judged apart, other
languages are not dropped by English-only rules, and counts reconcile."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write_dataset
from tamis.dataset import Dataset
from tamis.pipeline import SourceConfig
from tamis.runner import run_stage
from tamis.stages.quality import QualityFilter
from tamis.text_stats import words

SAMPLE = Path(__file__).resolve().parent.parent / "include" / "sample"
CODE_CONTEXT = {"sources": {"repo": SourceConfig(path="x", type="code"), "web": SourceConfig(path="x")}}


def _article() -> str:
    record = json.loads((SAMPLE / "web" / "date=2026-11-20" / "wikipedia.jsonl").open().readline())
    paragraphs = record["text"].split("\n\n")
    return "\n\n".join(paragraphs[:6])


ARTICLE = _article()
SENTENCES = [s.strip() + "." for s in ARTICLE.replace("\n", " ").split(". ") if s.strip()]
WORDS = ARTICLE.split()


def _code(name: str) -> str:
    table = pq.read_table(SAMPLE / "code" / "date=2026-11-20" / "files.parquet", columns=["id", "text"])
    return {r["id"]: r["text"] for r in table.to_pylist()}[f"python/cpython@v3.11.7:{name}"]


BISECT = _code("Lib/bisect.py")


def records(texts: list[str | None], source: str = "web", lang: list[str] | None = None) -> pa.Table:
    table = pa.table(
        {
            "id": [f"{source}/{i}" for i in range(len(texts))],
            "source": [source] * len(texts),
            "text": pa.array(texts, pa.string()),
        }
    )
    return table if lang is None else table.append_column("lang", pa.array(lang, pa.string()))


def hits(result) -> set[str]:
    return {k.removeprefix("quality.rule_hits.") for k in result.metrics}


def test_a_clean_encyclopedia_article_passes_every_rule():
    result = QualityFilter(context=CODE_CONTEXT).process_batch(records([ARTICLE]))
    assert result.dropped.num_rows == 0 and hits(result) == set()
    row = result.kept.to_pylist()[0]
    assert row["word_count"] > 300 and 4 < row["mean_word_length"] < 6 and row["alpha_ratio"] > 0.8


PROSE_CASES = {
    "gopher_min_words": ("Too short to be a document.", {}),
    "gopher_max_words": (ARTICLE, {"gopher": {"max_words": 100}}),
    "gopher_min_mean_word_length": (" ".join(w[:2] for w in WORDS), {}),
    "gopher_max_mean_word_length": (" ".join("".join(WORDS[i : i + 4]) for i in range(0, len(WORDS), 4)), {}),
    "gopher_hash_word_ratio": (" ".join(("#" + w) if i % 5 == 0 else w for i, w in enumerate(WORDS)), {}),
    "gopher_ellipsis_word_ratio": (" ".join(w + "..." if i % 6 == 0 else w for i, w in enumerate(WORDS)), {}),
    "gopher_bullet_lines": ("\n".join("- " + s for s in SENTENCES), {}),
    "gopher_ellipsis_lines": ("\n".join(s[:-1] + "..." for s in SENTENCES), {}),
    "gopher_alpha_words": (ARTICLE + "\n" + " ".join(str(1000 + i) for i in range(len(WORDS))), {}),
    "gopher_stop_words": ((SAMPLE / "udhr" / "date=2026-11-20" / "deu.txt").read_text()[:3000], {}),
    "gopher_dup_line_frac": ("\n".join(SENTENCES[:8] * 3), {}),
    "gopher_dup_para_frac": ("\n\n".join(ARTICLE.split("\n\n")[:3] * 3), {}),
    "gopher_dup_line_char_frac": ("\n".join(SENTENCES[:8] * 3), {}),
    "gopher_dup_para_char_frac": ("\n\n".join(ARTICLE.split("\n\n")[:3] * 3), {}),
    "gopher_top_2gram": (" ".join(w if i % 3 else w + " click here" for i, w in enumerate(WORDS)), {}),
    "gopher_dup_5gram": (" ".join(SENTENCES[:10]) + " " + " ".join(SENTENCES[:10]), {}),
    "gopher_dup_10gram": (" ".join(SENTENCES[:10]) + " " + " ".join(SENTENCES[:10]), {}),
    "c4_lorem_ipsum": (ARTICLE + "\n\nLorem ipsum dolor sit amet, consectetur adipiscing elit.", {}),
    "c4_curly_bracket": (ARTICLE + "\n\nvar config = {debug: true};", {"c4": {"curly_bracket": True}}),
    "c4_boilerplate_lines": (
        "\n".join(
            SENTENCES[:6]
            + [
                "This site uses cookies to improve your experience.",
                "Please enable JavaScript to view the comments.",
                "By using this site you agree to our Terms of Use and Privacy Policy.",
            ]
        ),
        {},
    ),
    "c4_min_sentences": (" ".join(SENTENCES[:2]) + " " + " ".join(w.strip(".?!") for w in WORDS[:60]), {}),
    "fineweb_line_punct_ratio": ("\n".join(" ".join(WORDS[i : i + 12]) for i in range(0, 600, 12)), {}),
    "fineweb_short_line_ratio": ("\n".join(" ".join(WORDS[i : i + 3]) + "." for i in range(0, 600, 3)), {}),
    "fineweb_char_dup_ratio": (ARTICLE + "\n" + SENTENCES[3] + "\n" + SENTENCES[3], {}),
    "fineweb_list_ratio": ("\n".join(WORDS[:300]), {}),
}


@pytest.mark.parametrize("rule", sorted(PROSE_CASES))
def test_each_prose_rule_fires(rule):
    text, params = PROSE_CASES[rule]
    result = QualityFilter(params, context=CODE_CONTEXT).process_batch(records([text]))
    assert rule in hits(result)
    assert result.kept.num_rows == 0
    assert result.dropped.column("reason")[0].as_py() in hits(result)


def test_disabled_rule_does_not_fire():
    text, _ = PROSE_CASES["gopher_min_words"]
    params = {"gopher": {"min_words": None}, "c4": {"min_sentences": None}}
    result = QualityFilter(params).process_batch(records([text]))
    assert "gopher_min_words" not in hits(result) and "c4_min_sentences" not in hits(result)


CODE_CASES = {
    "code_max_line_length": BISECT + "\nTABLE = [" + ", ".join(str(i) for i in range(400)) + "]\n",
    "code_mean_line_length": "\n".join(BISECT.replace("\n", " ")[i : i + 300] for i in range(0, 3000, 300)),
    "code_alnum_fraction": BISECT[:400] + "\n" + "\n".join(["# " + "=-" * 30, "#" + " " * 40 + "|"] * 40),
    "code_autogenerated": "# Code generated by make_opcodes.py; DO NOT EDIT.\n" + BISECT,
    "code_encoded_data": 'BLOB = """\n' + base64.encodebytes(BISECT.encode() * 3).decode() + '"""\n' + BISECT[:500],
}


@pytest.mark.parametrize("rule", sorted(CODE_CASES))
def test_each_code_rule_fires(rule):
    result = QualityFilter(context=CODE_CONTEXT).process_batch(records([CODE_CASES[rule]], "repo"))
    assert result.dropped.column("reason").to_pylist() == [rule]


def test_code_is_judged_by_code_rules_not_prose_rules():
    stage = QualityFilter(context=CODE_CONTEXT)
    as_code = stage.process_batch(records([BISECT], "repo"))
    as_prose = stage.process_batch(records([BISECT], "web"))
    assert as_code.kept.num_rows == 1 and hits(as_code) == set()
    assert as_prose.kept.num_rows == 0
    assert not any(rule.startswith("code_") for rule in hits(as_prose))


def test_stop_words_follow_the_lang_column():
    german = PROSE_CASES["gopher_stop_words"][0]
    stage = QualityFilter()
    assert "gopher_stop_words" in hits(stage.process_batch(records([german])))
    assert "gopher_stop_words" not in hits(stage.process_batch(records([german], lang=["de"])))
    # A language without a stop-word list is never judged by that rule.
    swahili = (SAMPLE / "udhr" / "date=2026-11-20" / "swh.txt").read_text()[:3000]
    assert "gopher_stop_words" not in hits(stage.process_batch(records([swahili], lang=["sw"])))


def test_chinese_and_japanese_are_not_dropped_by_word_rules():
    texts = [(SAMPLE / "udhr" / "date=2026-11-20" / f"{c}.txt").read_text()[:4000] for c in ("cmn_hans", "jpn")]
    result = QualityFilter().process_batch(records(texts, lang=["zh", "ja"]))
    word_rules = {
        "gopher_min_words",
        "gopher_min_mean_word_length",
        "gopher_max_mean_word_length",
        "gopher_stop_words",
        "fineweb_list_ratio",
        "gopher_alpha_words",
    }
    assert not (hits(result) & word_rules)


def test_bad_inputs_are_dropped_with_a_reason_not_a_crash():
    huge = (" ".join(SENTENCES) + " ") * 200
    huge_line = huge[:1_000_000].replace("\n", " ")
    result = QualityFilter().process_batch(records(["", "   \n\n  ", "😀🎉👍🏽", None, huge_line]))
    reasons = result.dropped.column("reason").to_pylist()
    assert result.kept.num_rows + len(reasons) == 5
    assert reasons[:4] == ["gopher_min_words"] * 4


def test_no_model_means_no_model_library_is_imported():
    # In a fresh interpreter: the language stage, run earlier in the session, loads fastText.
    code = (
        "import sys, pyarrow as pa\n"
        "from tamis.stages.quality import QualityFilter\n"
        "stage = QualityFilter()\n"
        "stage.check_ready()\n"
        f"result = stage.process_batch(pa.table({{'id': ['a'], 'source': ['web'], 'text': [{ARTICLE!r}]}}))\n"
        "assert 'quality_model_score' not in result.kept.column_names\n"
        "print(sorted(m for m in ('fasttext', 'kenlm') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_missing_model_file_fails_before_any_work(tmp_path):
    stage = QualityFilter({"model": {"path": str(tmp_path / "quality.bin"), "min_score": 0.5}})
    with pytest.raises(FileNotFoundError, match="quality.bin"):
        stage.check_ready()


def test_counts_reconcile_through_the_runner(tmp_path):
    prose = [ARTICLE, PROSE_CASES["c4_lorem_ipsum"][0], PROSE_CASES["gopher_min_words"][0], ""]
    table = pa.concat_tables([records(prose), records([BISECT, CODE_CASES["code_autogenerated"]], "repo")])
    write_dataset(tmp_path / "in", table)
    stage = QualityFilter(context=CODE_CONTEXT)
    manifest = run_stage(stage, str(tmp_path / "in"), str(tmp_path / "out"), workers=1)
    assert manifest["counts"] == {"in": 6, "kept": 2, "dropped": 4, "quarantined": 0}
    assert manifest["drop_reasons"] == {"c4_lorem_ipsum": 1, "code_autogenerated": 1, "gopher_min_words": 2}
    out = Dataset(str(tmp_path / "out")).read()
    assert sorted(out.column("id").to_pylist()) == ["repo/0", "web/0"]
    assert {"word_count", "mean_word_length", "alpha_ratio"} <= set(out.column_names)


def test_prose_figures_count_the_rules_words_and_are_null_for_code():
    table = pa.concat_tables([records([ARTICLE]), records([BISECT], "repo")])
    rows = {r["id"]: r for r in QualityFilter(context=CODE_CONTEXT).process_batch(table).kept.to_pylist()}
    spelled = [w for w in words(ARTICLE) if any(c.isalnum() for c in w)]
    assert rows["web/0"]["word_count"] == len(spelled)
    assert rows["web/0"]["mean_word_length"] == pytest.approx(sum(map(len, spelled)) / len(spelled), abs=1e-3)
    assert rows["repo/0"]["word_count"] is None and rows["repo/0"]["alpha_ratio"] is None


def test_the_code_alnum_fraction_counts_every_letter_and_digit_of_any_script():
    import numpy as np

    from tamis.stages.quality import CodeRules, _code_rules

    texts = ["ab12 -- é中\n", "", "٣²Ⅻ_ǅ\u0301 !", "= = ="]
    column = pa.array(texts)
    rules = {name: value for name, _, value, _ in _code_rules(column, np.ones(len(texts), bool), CodeRules())}
    # letters and digits: a b 1 2 é 中 of 11; ٣ ² Ⅻ ǅ of 8 (the combining accent and "_" are neither)
    assert rules["code_alnum_fraction"].tolist() == [6 / 11, 0.0, 4 / 8, 0.0]
