"""Repeated lines across the corpus: lines in more than max_repeats documents are removed
everywhere (Wikipedia's section headings, a speech archive's navigation), the rest of each
document is untouched, documents left too short are dropped, and the most removed lines
are written for the report."""

from __future__ import annotations

import re
from collections import Counter

import pyarrow as pa
import pytest

from conftest import TEST_DATA, read_jsonl, write_dataset
from tamis.dataset import Dataset
from tamis.runner import run_stage
from tamis.stages.repeated_lines import RepeatedLines, top_lines

DOCS = [r["text"] for r in read_jsonl(TEST_DATA / "web_en/wikipedia_en_sample.jsonl.gz")] + [
    r["text"] for r in read_jsonl(TEST_DATA / "web_en/us_presidential_speeches.jsonl.gz")
]


def norm(line: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\d", "0", line.lower())).strip()


def documents_per_line(docs: list[str], min_chars: int = 10) -> Counter:
    counts: Counter = Counter()
    for text in docs:
        counts.update({norm(line) for line in text.split("\n") if len(norm(line)) >= min_chars})
    return counts


def run(tmp_path, name="out", workers=1, **params):
    parts = [
        pa.table(
            {
                "id": [f"d{i}" for i in range(k, len(DOCS), 3)],
                "source": ["web"] * len(range(k, len(DOCS), 3)),
                "text": DOCS[k::3],
            }
        )
        for k in range(3)
    ]
    if not (tmp_path / "in").exists():
        write_dataset(tmp_path / "in", parts)
    manifest = run_stage(
        RepeatedLines({"buckets": 8, **params}), str(tmp_path / "in"), str(tmp_path / name), workers=workers
    )
    out = Dataset(str(tmp_path / name)).read()
    return manifest, dict(zip(out.column("id").to_pylist(), out.column("text").to_pylist()))


def test_lines_in_more_than_max_repeats_documents_are_removed_and_nothing_else(tmp_path):
    counts = documents_per_line(DOCS)
    manifest, out = run(tmp_path, workers=2, max_repeats=3, min_doc_chars=0)
    repeated = {line for line, c in counts.items() if c > 3}
    assert {"references", "external links", "web resources >>"} <= repeated
    for i, text in enumerate(DOCS):
        expected = [line for line in text.split("\n") if norm(line) not in repeated or len(norm(line)) < 10]
        assert out[f"d{i}"] == "\n".join(expected)
    removed = sum(1 for text in DOCS for line in text.split("\n") if norm(line) in repeated and len(norm(line)) >= 10)
    assert manifest["metrics"]["repeated_lines.lines_removed"] == removed
    assert manifest["metrics"]["repeated_lines.distinct_repeated"] == len(repeated)


def test_the_most_repeated_lines_are_written_for_the_report(tmp_path):
    counts = documents_per_line(DOCS)
    run(tmp_path, max_repeats=3, min_doc_chars=0, top_lines=5)
    top = top_lines(str(tmp_path / "out")).to_pylist()
    expected = sorted(((c, line) for line, c in counts.items() if c > 3), reverse=True)[:5]
    assert [r["documents"] for r in top] == [c for c, _ in expected]
    assert norm(top[0]["line"]) == expected[0][1]
    assert all(r["line"] for r in top)


def test_documents_left_too_short_are_dropped_with_a_reason(tmp_path):
    counts = documents_per_line(DOCS)
    repeated = {line for line, c in counts.items() if c > 3}
    manifest, out = run(tmp_path, max_repeats=3, min_doc_chars=3000)
    short = set()
    for i, text in enumerate(DOCS):
        lines = text.split("\n")
        kept = [line for line in lines if norm(line) not in repeated or len(norm(line)) < 10]
        if len(kept) < len(lines) and len("\n".join(kept)) < 3000:
            short.add(f"d{i}")
    assert short and short.isdisjoint(out)
    assert manifest["drop_reasons"] == {"repeated_lines.too_short": len(short)}
    assert manifest["counts"]["in"] == len(DOCS) == len(out) + len(short)
    # A document that was short to begin with but lost nothing is kept.
    untouched_short = [f"d{i}" for i, t in enumerate(DOCS) if len(t) < 3000 and f"d{i}" not in short]
    assert all(d in out for d in untouched_short)


@pytest.mark.parametrize("buckets", [1, 7])
def test_the_count_is_exact_whatever_the_number_of_buckets(tmp_path, buckets):
    _, reference = run(tmp_path, "ref", max_repeats=2, min_doc_chars=0, buckets=32)
    _, out = run(tmp_path, "b", max_repeats=2, min_doc_chars=0, buckets=buckets)
    assert out == reference


def test_paragraphs_repeated_across_documents_are_removed(tmp_path):
    manifest, out = run(tmp_path, unit="paragraph", max_repeats=3, min_doc_chars=0)
    assert manifest["metrics"]["repeated_lines.lines_removed"] > 0
    assert all("\n\nReferences\n\n" not in text for text in out.values())
