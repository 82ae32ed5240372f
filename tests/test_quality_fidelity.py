"""The named quality rules decide as their reference does (datatrove 0.10.1's Gopher, C4 and
FineWeb filters), rule by rule, on real documents, and the same with or without normalize.

The reference's decisions were computed once by scripts/make_rule_fidelity_fixture.py and
are stored in tests/data/rule_fidelity/reference.jsonl.gz; the documents are the
repository's excerpts of the evaluation corpora (tests/data/SOURCE.md)."""

from __future__ import annotations

import gzip
import json
import unicodedata

import numpy as np
import pyarrow as pa
import pytest

from conftest import TEST_DATA
from tamis.stages.normalize import Normalize
from tamis.stages.quality import GROUPS, QualityFilter, QualityParams
from tamis.text_stats import words

FIXTURE = TEST_DATA / "rule_fidelity"
INPUTS = [
    "web_en/wikipedia_en_sample.jsonl.gz",
    "web_en/us_presidential_speeches.jsonl.gz",
    "web_en/movie_reviews_polarity_2000.jsonl.gz",
    "web_en/cc_c4_pile_fixtures_by_source.jsonl.gz",
    "code/code_03.jsonl.gz",
    "rule_fidelity/udhr_sample.jsonl.gz",
]


def _read(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


REFERENCE = {r["id"]: r for r in _read(FIXTURE / "reference.jsonl.gz")}
DOCS = [(f"{name}:{r['id']}", r["text"]) for name in INPUTS for r in _read(TEST_DATA / name)]
DOCS = [(doc_id, text) for doc_id, text in DOCS if doc_id in REFERENCE]  # normalize left out the empty ones


@pytest.fixture(scope="module")
def reference_keeps() -> dict[str, np.ndarray]:
    return _keeps([t for _, t in DOCS])


def _keeps(texts: list[str], params: QualityParams | None = None) -> dict[str, np.ndarray]:
    table = pa.table({"id": [str(i) for i in range(len(texts))], "source": ["web"] * len(texts), "text": texts})
    failures = QualityFilter(params or QualityParams.reference()).rule_failures(table)
    keeps = {rule: ~failed for rule, failed in failures.items()}
    for group, rules in GROUPS.items():
        keeps[group] = np.logical_and.reduce([keeps[r] for r in rules if r in keeps])
    return keeps


def test_the_fixture_exercises_every_group():
    assert len(DOCS) > 400
    for group in GROUPS:
        dropped = sum(REFERENCE[d]["groups"][group] is False for d, _ in DOCS)
        assert 10 < dropped < len(DOCS) - 10, group


@pytest.mark.parametrize(
    "name", list(GROUPS) + [r for rules in GROUPS.values() for r in rules if r != "c4_boilerplate_lines"]
)
def test_each_group_and_rule_decides_as_the_reference(name, reference_keeps):
    """The raw text (no normalize before the stage) against the reference on normalize's output."""
    keeps = reference_keeps[name]
    where = "groups" if name in GROUPS else "rules"
    differ = [
        doc_id
        for (doc_id, _), ours in zip(DOCS, keeps)
        if REFERENCE[doc_id][where][name] is not None and bool(ours) != REFERENCE[doc_id][where][name]
    ]
    assert differ == []


def _perturbed(text: str) -> str:
    """What normalize removes: CRLF, trailing spaces, runs of spaces and blank lines,
    zero-width and control characters, decomposed accents, blank edges."""
    text = unicodedata.normalize("NFD", text).replace("\n", " \t\r\n").replace(". ", ".   \u200b")
    return "\n\n\ufeff" + text.replace("\n\n", "\n\n\n\n\n") + "  \n\x0c"


def test_decisions_are_the_same_with_or_without_normalize():
    raw = [t for _, t in DOCS]
    table = pa.table({"id": [d for d, _ in DOCS], "source": ["web"] * len(DOCS), "text": raw})
    normalized = Normalize().process_batch(table).kept.column("text").to_pylist()
    perturbed = [_perturbed(t) for t in raw]
    params = QualityParams()
    before, after, edited = _keeps(raw, params), _keeps(normalized, params), _keeps(perturbed, params)
    for rule in before:
        assert np.array_equal(before[rule], after[rule]), rule
        assert np.array_equal(before[rule], edited[rule]), rule


def test_words_are_split_as_the_reference_splits_them():
    # datatrove's split_into_words (spaCy 3.8's English tokenizer) on the same sentences.
    assert words("I can't go to the U.S. today, it's 5km away... See www.example.com/page or e-mail me:)") == [
        "I",
        "ca",
        "n't",
        "go",
        "to",
        "the",
        "U.S.",
        "today",
        ",",
        "it",
        "'s",
        "5",
        "km",
        "away",
        "...",
        "See",
        "www.example.com/page",
        "or",
        "e",
        "-",
        "mail",
        "me",
        ":)",
    ]
    assert words('Mr. Smith paid $20 (twenty dollars) for well-known "things".') == [
        "Mr.",
        "Smith",
        "paid",
        "$",
        "20",
        "(",
        "twenty",
        "dollars",
        ")",
        "for",
        "well",
        "-",
        "known",
        '"',
        "things",
        '"',
        ".",
    ]


def test_the_default_profile_differs_from_the_reference_only_where_documented(reference_keeps):
    defaults, reference = _keeps([t for _, t in DOCS], QualityParams()), reference_keeps
    changed = {
        rule
        for rule in reference
        if rule not in GROUPS and not np.array_equal(defaults.get(rule, True), reference[rule])
    }
    assert changed <= {"c4_curly_bracket"}
    assert "c4_boilerplate_lines" in defaults and "c4_boilerplate_lines" not in reference
