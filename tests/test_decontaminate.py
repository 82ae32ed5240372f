"""Decontamination: a document holding an evaluation item is dropped (or flagged) with the
set and item named; clean real text is never touched; fragments shorter than the n-gram are not matches."""

from __future__ import annotations

import gzip
import json
import shutil

import pyarrow as pa

from conftest import REPO, TEST_DATA, read_jsonl, write_dataset
from tamis.dataset import Dataset
from tamis.runner import run_stage
from tamis.stages.decontaminate import Decontaminate

EVAL_DIR = REPO / "include/sample/eval"
GSM8K = [
    json.loads(line) for line in gzip.decompress((EVAL_DIR / "gsm8k_test.jsonl.gz").read_bytes()).decode().splitlines()
]
WIKI = read_jsonl(TEST_DATA / "web_en/wikipedia_en_sample.jsonl.gz")
SPEECHES = read_jsonl(TEST_DATA / "web_en/us_presidential_speeches.jsonl.gz")


def table(texts: list[str]) -> pa.Table:
    return pa.table({"id": [f"web/{i}" for i in range(len(texts))], "source": ["web"] * len(texts), "text": texts})


def pasted(article: str, insert: str) -> str:
    """A page that quotes ``insert`` in the middle of real text, as a forum or homework site does."""
    paragraphs = article.split("\n\n")
    return "\n\n".join(paragraphs[:2] + [insert] + paragraphs[2:])


def stage(eval_sets=EVAL_DIR, **params) -> Decontaminate:
    s = Decontaminate({"eval_sets": str(eval_sets), **params})
    s.check_ready()
    s.setup()
    return s


def test_a_page_quoting_a_benchmark_question_is_dropped_with_set_and_item():
    texts = [
        pasted(WIKI[0]["text"], GSM8K[41]["question"]),
        WIKI[1]["text"],
        pasted(WIKI[2]["text"], GSM8K[7]["answer"]),
    ]
    result = stage().process_batch(table(texts))
    assert result.dropped.column("id").to_pylist() == ["web/0", "web/2"]
    assert set(result.dropped.column("reason").to_pylist()) == {"decontaminate.ngram_overlap"}
    details = result.dropped.column("detail").to_pylist()
    assert details[0].startswith("gsm8k_test item 41 (") and details[1].startswith("gsm8k_test item 7 (")
    assert result.metrics["decontaminate.docs.gsm8k_test"] == 2


def test_real_text_that_quotes_no_benchmark_is_kept():
    texts = [r["text"] for r in WIKI + SPEECHES]
    result = stage().process_batch(table(texts))
    assert result.dropped.num_rows == 0 and result.kept.num_rows == len(texts)


def test_case_punctuation_and_line_breaks_do_not_hide_an_item():
    question = GSM8K[3]["question"]
    rewrapped = question.upper().replace(". ", ".\n\n").replace(", ", " , ")
    result = stage().process_batch(table([pasted(WIKI[5]["text"], rewrapped)]))
    assert result.dropped.num_rows == 1


def test_a_shared_phrase_shorter_than_the_ngram_is_not_contamination():
    words = GSM8K[3]["question"].split()
    result = stage().process_batch(table([pasted(WIKI[5]["text"], " ".join(words[:12]))]))
    assert result.dropped.num_rows == 0
    # With 8-grams the same twelve words are a match.
    assert stage(ngram=8).process_batch(table([pasted(WIKI[5]["text"], " ".join(words[:12]))])).dropped.num_rows == 1


def test_flag_keeps_the_document_and_names_every_set_it_overlaps(tmp_path):
    sets = tmp_path / "evals"
    shutil.copytree(EVAL_DIR, sets)
    # A reading-comprehension set built from Wikipedia paragraphs, one item per line.
    paragraph = WIKI[9]["text"].split("\n\n")[1]
    (sets / "wiki_reading.txt").write_text(paragraph.replace("\n", " ") + "\n")
    text = pasted(WIKI[9]["text"], GSM8K[0]["question"])
    result = stage(sets, action="flag").process_batch(table([text, WIKI[10]["text"]]))
    assert result.dropped.num_rows == 0
    assert result.kept.column("contaminated_by").to_pylist() == ["gsm8k_test,wiki_reading", None]


def test_counts_reconcile_and_the_eval_files_are_a_dependency(tmp_path):
    texts = [pasted(WIKI[i]["text"], GSM8K[i]["question"]) if i % 3 == 0 else WIKI[i]["text"] for i in range(30)]
    write_dataset(
        tmp_path / "in",
        [table(texts[:15]), table(texts[15:]).set_column(0, "id", pa.array([f"w/{i}" for i in range(15)]))],
    )
    manifest = run_stage(stage(), str(tmp_path / "in"), str(tmp_path / "out"), workers=2)
    assert manifest["counts"] == {"in": 30, "kept": 20, "dropped": 10, "quarantined": 0}
    assert manifest["drop_reasons"] == {"decontaminate.ngram_overlap": 10}
    assert Dataset(str(tmp_path / "out")).read().num_rows == 20
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "gsm8k_test.jsonl").write_text(json.dumps(GSM8K[0]) + "\n")
    assert stage().dependencies("x") != stage(changed).dependencies("x")
