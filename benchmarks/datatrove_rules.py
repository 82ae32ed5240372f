"""The reference decisions: datatrove 0.10.1's Gopher, C4 and FineWeb filters, per group and per rule.

    benchmarks/.peer-venv/bin/python benchmarks/datatrove_rules.py IN.jsonl OUT.jsonl

Runs in the peer virtualenv (benchmarks/peer_venv.sh), never in tamis's own. IN holds one
``{"id", "text"}`` object a line; OUT gets one ``{"id", "groups", "rules"}`` object a line,
where each value is true (kept), false (dropped) or null (the filter raised). A group is the
filter with its defaults (C4 with ``filter_no_terminal_punct=False``, as FineWeb ran it); a
rule is the same filter with every other rule switched off, named as the tamis rule it
corresponds to.
"""

from __future__ import annotations

import json
import sys

from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.utils.text import split_into_words

GOPHER_OFF = dict(
    min_doc_words=None,
    max_doc_words=None,
    min_avg_word_length=None,
    max_avg_word_length=None,
    max_symbol_word_ratio=None,
    max_bullet_lines_ratio=None,
    max_ellipsis_lines_ratio=None,
    max_non_alpha_words_ratio=None,
    min_stop_words=None,
)
REPETITION_OFF = dict(
    dup_line_frac=None,
    dup_para_frac=None,
    dup_line_char_frac=None,
    dup_para_char_frac=None,
    top_n_grams=(),
    dup_n_grams=(),
)
C4_OFF = dict(
    filter_no_terminal_punct=False, min_num_sentences=-1, filter_lorem_ipsum=False, filter_curly_bracket=False
)
FINEWEB_OFF = dict(line_punct_thr=0.0, short_line_thr=1.0, char_duplicates_ratio=1.0, new_line_ratio=float("inf"))

GROUPS = {
    "gopher_quality": GopherQualityFilter(),
    "gopher_repetition": GopherRepetitionFilter(),
    "c4": C4QualityFilter(filter_no_terminal_punct=False),
    "fineweb": FineWebQualityFilter(),
}


def _one(cls, off: dict, **on):
    return cls(**{**off, **on})


RULES = {
    "gopher_min_words": _one(GopherQualityFilter, GOPHER_OFF, min_doc_words=50),
    "gopher_max_words": _one(GopherQualityFilter, GOPHER_OFF, max_doc_words=100_000),
    "gopher_min_mean_word_length": _one(GopherQualityFilter, GOPHER_OFF, min_avg_word_length=3),
    "gopher_max_mean_word_length": _one(GopherQualityFilter, GOPHER_OFF, max_avg_word_length=10),
    "gopher_bullet_lines": _one(GopherQualityFilter, GOPHER_OFF, max_bullet_lines_ratio=0.9),
    "gopher_ellipsis_lines": _one(GopherQualityFilter, GOPHER_OFF, max_ellipsis_lines_ratio=0.3),
    "gopher_alpha_words": _one(GopherQualityFilter, GOPHER_OFF, max_non_alpha_words_ratio=0.8),
    "gopher_stop_words": _one(GopherQualityFilter, GOPHER_OFF, min_stop_words=2),
    "gopher_dup_para_frac": _one(GopherRepetitionFilter, REPETITION_OFF, dup_para_frac=0.3),
    "gopher_dup_para_char_frac": _one(GopherRepetitionFilter, REPETITION_OFF, dup_para_char_frac=0.2),
    "gopher_dup_line_frac": _one(GopherRepetitionFilter, REPETITION_OFF, dup_line_frac=0.3),
    "gopher_dup_line_char_frac": _one(GopherRepetitionFilter, REPETITION_OFF, dup_line_char_frac=0.2),
    **{
        f"gopher_top_{n}gram": _one(GopherRepetitionFilter, REPETITION_OFF, top_n_grams=((n, f),))
        for n, f in ((2, 0.2), (3, 0.18), (4, 0.16))
    },
    **{
        f"gopher_dup_{n}gram": _one(GopherRepetitionFilter, REPETITION_OFF, dup_n_grams=((n, f),))
        for n, f in ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
    },
    "c4_lorem_ipsum": _one(C4QualityFilter, C4_OFF, filter_lorem_ipsum=True),
    "c4_curly_bracket": _one(C4QualityFilter, C4_OFF, filter_curly_bracket=True),
    "c4_min_sentences": _one(C4QualityFilter, C4_OFF, min_num_sentences=5),
    "fineweb_line_punct_ratio": _one(FineWebQualityFilter, FINEWEB_OFF, line_punct_thr=0.12),
    "fineweb_short_line_ratio": _one(FineWebQualityFilter, FINEWEB_OFF, short_line_thr=0.67),
    "fineweb_char_dup_ratio": _one(FineWebQualityFilter, FINEWEB_OFF, char_duplicates_ratio=0.01),
    "fineweb_list_ratio": _one(FineWebQualityFilter, FINEWEB_OFF, new_line_ratio=0.3),
}


def _symbol_ratio(text: str, symbol_count: int) -> bool:
    """GopherQualityFilter tests '#' and ellipses under one threshold; this is its ellipsis test alone."""
    return symbol_count / len(split_into_words(text)) <= 0.1


def keeps(step, text: str, doc_id: str) -> bool | None:
    try:
        result = step.filter(Document(text=text, id=doc_id))  # C4 edits doc.text: a fresh Document each time
    except Exception:  # noqa: BLE001  a ZeroDivisionError on a document without words, for instance
        return None
    return result is True or (isinstance(result, tuple) and bool(result[0]))


def decide(doc_id: str, text: str) -> dict:
    groups = {name: keeps(step, text, doc_id) for name, step in GROUPS.items()}
    rules = {name: keeps(step, text, doc_id) for name, step in RULES.items()}
    for name, count in (
        ("gopher_hash_word_ratio", text.count("#")),
        ("gopher_ellipsis_word_ratio", text.count("...") + text.count("…")),
    ):
        try:
            rules[name] = _symbol_ratio(text, count)
        except ZeroDivisionError:
            rules[name] = None
    return {"id": doc_id, "groups": groups, "rules": rules}


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as out:
        for line in f:
            record = json.loads(line)
            out.write(json.dumps(decide(record["id"], record["text"])) + "\n")


if __name__ == "__main__":
    main()
