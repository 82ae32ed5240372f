"""The language stage: identification on real multilingual text with each detector, the
fallback, bad inputs, and counts through the runner."""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import time
from pathlib import Path

import pyarrow as pa
import pytest

from conftest import TEST_DATA, write_dataset
from tamis.dataset import Dataset
from tamis.pipeline import SourceConfig
from tamis.runner import run_stage
from tamis.stages.language import LanguageFilter, fasttext_model_path, known_languages

UDHR = Path(__file__).resolve().parent.parent / "include" / "sample" / "udhr" / "date=2026-11-20"
# UDHR translations in scripts lid.176 and lingua do not read, and in languages lid.176 lacks.
with gzip.open(TEST_DATA / "multilingual" / "udhr_unicode_388docs.jsonl.gz", "rt", encoding="utf-8") as f:
    UDHR_MORE = {r["lang_code"]: r["text"] for r in map(json.loads, f)}
DETECTORS = ["fasttext", "lingua", "cld2"]
# UDHR file -> its language, for languages every detector knows.
SHARED_LANGUAGES = {
    "eng": "en",
    "deu": "de",
    "fra": "fr",
    "spa": "es",
    "rus": "ru",
    "arb": "ar",
    "cmn_hans": "zh",
    "jpn": "ja",
    "kor": "ko",
    "hin": "hi",
    "ell_monotonic": "el",
    "heb": "he",
    "tha": "th",
    "tur": "tr",
    "vie": "vi",
    "pol": "pl",
}


def udhr(code: str, chars: int = 2000) -> str:
    path = UDHR / f"{code}.txt"
    return (path.read_text(encoding="utf-8") if path.exists() else UDHR_MORE[code])[:chars]


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


@pytest.mark.parametrize("detector", DETECTORS)
def test_each_detector_names_the_language_of_udhr_translations(detector):
    codes = list(SHARED_LANGUAGES)
    result = LanguageFilter({"detector": detector, "fallback": None}).process_batch(records([udhr(c) for c in codes]))
    assert result.kept.column("lang").to_pylist() == [SHARED_LANGUAGES[c] for c in codes]
    scores = result.kept.column("lang_score").to_pylist()
    assert all(0.5 <= s <= 1.0 for s in scores)


def test_default_detector_reads_scripts_lingua_cannot():
    result = LanguageFilter().process_batch(records([udhr("amh"), udhr("khm"), udhr("mya"), udhr("tam")]))
    assert result.kept.column("lang").to_pylist() == ["am", "km", "my", "ta"]


def test_languages_lid176_lacks_are_named_by_the_lingua_fallback():
    codes = {"zul": "zu", "xho": "xh", "sna": "sn", "sot": "st", "tsn": "tn", "mri": "mi"}
    result = LanguageFilter().process_batch(records([udhr(c) for c in codes]))
    assert result.kept.column("lang").to_pylist() == list(codes.values())
    assert result.metrics["language.fallback.decided"] == len(codes)


def test_without_fallback_unknown_languages_are_undecided_not_mislabelled():
    result = LanguageFilter({"fallback": None}).process_batch(records([udhr(c) for c in ("zul", "xho", "sna", "tsn")]))
    assert result.kept.num_rows == 0
    assert result.dropped.column("reason").to_pylist() == ["lang_low_confidence"] * 4


def test_documents_fasttext_is_sure_of_never_reach_the_fallback():
    result = LanguageFilter().process_batch(records([udhr(c) for c in ("eng", "deu", "jpn")]))
    assert result.metrics["language.fallback.asked"] == 0


def test_line_breaks_inside_a_document_do_not_split_it():
    # fastText reads one line per document: a text of many short lines is still one answer.
    lines = udhr("fra", 3000).replace(" ", "\n", 40).replace("\n", "\r\n", 5)
    result = LanguageFilter({"fallback": None}).process_batch(records([lines, udhr("eng")]))
    assert result.kept.column("lang").to_pylist() == ["fr", "en"]


def test_mixed_script_text_takes_the_dominant_language():
    mixed = "今日は東京でPythonとApache Airflowの勉強会がありました。とても楽しかったです。"
    latin_with_han = "The word 学校 means school in Chinese and Japanese, and it is written with two characters."
    result = LanguageFilter().process_batch(records([mixed, latin_with_han]))
    assert result.kept.column("lang").to_pylist() == ["ja", "en"]


def test_empty_whitespace_emoji_and_digits_are_dropped_as_no_text():
    result = LanguageFilter().process_batch(records(["", "  \n\t  ", "😀🎉👍🏽", "12 345 - 678", None]))
    assert result.kept.num_rows == 0
    assert result.dropped.column("reason").to_pylist() == ["no_text"] * 5
    assert set(result.dropped.column("detail").to_pylist()) == {"no letters in the text"}


@pytest.mark.parametrize("detector", ["fasttext", "lingua"])
def test_scripts_the_detector_cannot_read_get_their_own_reason(detector):
    codes = ["chr", "iii", "ike", "tzm_tfng"]
    result = LanguageFilter({"detector": detector, "fallback": None}).process_batch(records([udhr(c) for c in codes]))
    assert result.dropped.column("reason").to_pylist() == ["lang_unknown_script"] * 4
    detail = result.dropped.column("detail")[0].as_py()
    assert detail.startswith("0 of 72 letters in a script the detector knows span=")


def test_cld2_reads_cherokee_and_inuktitut_syllabics():
    result = LanguageFilter({"detector": "cld2", "fallback": None}).process_batch(records([udhr("chr"), udhr("ike")]))
    assert result.kept.column("lang").to_pylist() == ["chr", "iu"]


def test_a_word_many_languages_share_is_low_confidence_not_a_guess():
    result = LanguageFilter().process_batch(records(["Taxi", "Hotel", "Maria"]))
    assert result.kept.num_rows == 0
    assert result.dropped.column("reason").to_pylist() == ["lang_low_confidence"] * 3
    assert result.dropped.column("detail")[0].as_py().startswith("lang=")


def test_allowed_languages_drop_the_others_with_the_detected_language_in_detail():
    stage = LanguageFilter({"allowed_languages": ["en", "zh"]})
    result = stage.process_batch(records([udhr("eng"), udhr("deu"), udhr("cmn_hans")]))
    assert result.kept.column("lang").to_pylist() == ["en", "zh"]
    assert result.dropped.column("reason").to_pylist() == ["lang_not_allowed"]
    assert result.dropped.column("detail")[0].as_py().startswith("lang=de score=")


@pytest.mark.parametrize("detector", DETECTORS)
def test_candidate_languages_limit_the_answers(detector):
    stage = LanguageFilter({"detector": detector, "fallback": None, "candidate_languages": ["de", "nl", "en"]})
    result = stage.process_batch(records([udhr("deu"), udhr("nld"), udhr("eng"), udhr("dan"), udhr("swe")]))
    langs = dict(zip(result.kept.column("id").to_pylist(), result.kept.column("lang").to_pylist()))
    assert [langs.get(f"web/{i}") for i in range(3)] == ["de", "nl", "en"]
    assert set(langs.values()) <= {"de", "nl", "en"}
    assert all(0.0 <= s <= 1.0 for s in result.kept.column("lang_score").to_pylist())


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


def test_the_fallback_is_asked_only_where_the_answer_filters_a_document():
    # fastText is unsure of a short Zulu text; as code the stage keeps it whatever its
    # language, so only the prose copy is worth the fallback's time.
    context = {"sources": {"repo": SourceConfig(path="x", type="code")}}
    zulu = udhr("zul", 300)
    table = pa.concat_tables([records([zulu], "repo"), records([zulu], "web")])
    result = LanguageFilter(context=context).process_batch(table)
    assert result.metrics["language.fallback.asked"] == 1
    langs = dict(zip(result.kept.column("source").to_pylist(), result.kept.column("lang").to_pylist()))
    assert langs["web"] == "zu" and langs["repo"] != "zu"
    as_prose = LanguageFilter({"filter_code": True}, context=context).process_batch(table)
    assert as_prose.metrics["language.fallback.asked"] == 2
    assert as_prose.kept.column("lang").to_pylist() == ["zu", "zu"]


def test_unknown_language_codes_are_rejected_per_detector():
    with pytest.raises(ValueError, match="xx"):
        LanguageFilter({"allowed_languages": ["en", "xx"]})
    # Zulu is only reachable through the lingua fallback.
    LanguageFilter({"allowed_languages": ["zu"]})
    with pytest.raises(ValueError, match="zu"):
        LanguageFilter({"allowed_languages": ["zu"], "fallback": None})
    with pytest.raises(ValueError, match="candidate_languages"):
        LanguageFilter({"candidate_languages": ["en", "zu"]})


def test_parameters_that_would_do_nothing_are_rejected():
    with pytest.raises(ValueError, match="high_accuracy"):
        LanguageFilter({"fallback": None, "high_accuracy": True})
    with pytest.raises(ValueError, match="fallback must differ"):
        LanguageFilter({"fallback": "fasttext"})
    with pytest.raises(ValueError, match="fallback_min_confidence"):
        LanguageFilter({"fallback": None, "fallback_min_confidence": 0.4})


def test_min_confidence_moves_documents_between_kept_and_low_confidence():
    texts = [udhr("eng", 60), udhr("deu", 60), "ok", "Radio", "Tennis"]
    strict = LanguageFilter({"fallback": None, "min_confidence": 0.99}).process_batch(records(texts))
    lenient = LanguageFilter({"fallback": None, "min_confidence": 0.0}).process_batch(records(texts))
    assert lenient.kept.num_rows == len(texts)
    assert strict.kept.num_rows < lenient.kept.num_rows
    assert all(s >= 0.99 for s in strict.kept.column("lang_score").to_pylist())


def test_model_file_is_a_dependency_by_content():
    digest = hashlib.sha256(fasttext_model_path().read_bytes()).hexdigest()
    assert LanguageFilter().dependencies("out") == {"lid.176.ftz": digest}
    assert LanguageFilter({"detector": "lingua", "fallback": "cld2"}).dependencies("out") == {}


def test_a_stage_that_has_detected_still_pickles_for_workers():
    stage = LanguageFilter()
    stage.process_batch(records([udhr("eng"), "Taxi"]))  # loads fastText and the lingua fallback
    copy = pickle.loads(pickle.dumps(stage))
    assert copy.process_batch(records([udhr("ita")])).kept.column("lang").to_pylist() == ["it"]


def test_languages_known_without_the_model_are_the_model_labels():
    import fasttext

    labels = fasttext.load_model(str(fasttext_model_path())).get_labels()
    assert known_languages("fasttext") == {label.removeprefix("__label__") for label in labels}


def test_counts_reconcile_through_the_runner(tmp_path):
    texts = [udhr("eng"), udhr("deu"), "", "😀", udhr("chr"), udhr("jpn"), "Taxi", udhr("zul")]
    write_dataset(tmp_path / "in", records(texts))
    stage = LanguageFilter({"allowed_languages": ["en", "ja", "zu"]})
    manifest = run_stage(stage, str(tmp_path / "in"), str(tmp_path / "out"))
    counts = manifest["counts"]
    assert counts == {"in": 8, "kept": 3, "dropped": 5, "quarantined": 0}
    assert manifest["drop_reasons"] == {
        "lang_low_confidence": 1,
        "lang_not_allowed": 1,
        "lang_unknown_script": 1,
        "no_text": 2,
    }
    out = Dataset(str(tmp_path / "out")).read(["id", "lang", "lang_score"])
    assert sorted(out.column("lang").to_pylist()) == ["en", "ja", "zu"]


def test_cld2_reads_text_with_stray_control_characters():
    # U+0092 is what a cp1252 apostrophe becomes when decoded as Latin-1; CLD2 calls it
    # invalid UTF-8 unless the stage blanks it out.
    text = "Elle est arrivée à l\x92école ce matin avec ses amis\x00 et les professeurs de la classe."
    result = LanguageFilter({"detector": "cld2", "fallback": None}).process_batch(records([text]))
    assert result.kept.column("lang").to_pylist() == ["fr"]
