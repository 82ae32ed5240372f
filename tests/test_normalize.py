"""Normalize: Unicode forms, control characters, whitespace; code keeps its indentation."""

from __future__ import annotations

import pyarrow as pa

from tamis.pipeline import SourceConfig
from tamis.stages.normalize import Normalize

CONTEXT = {"sources": {"web": SourceConfig(path="/x"), "code": SourceConfig(path="/y", type="code")}}


def normalize(texts, sources=None, **params):
    sources = sources or ["web"] * len(texts)
    table = pa.table({"id": [f"d{i}" for i in range(len(texts))], "source": sources, "text": texts})
    return Normalize(params, CONTEXT).process_batch(table)


def test_nfc_composes_and_nfkc_folds_compatibility_characters():
    decomposed = "Cafe\u0301 ﬁnance ２０２６"
    assert normalize([decomposed]).kept.column("text")[0].as_py() == "Café ﬁnance ２０２６"
    assert normalize([decomposed], unicode_form="NFKC").kept.column("text")[0].as_py() == "Café finance 2026"


def test_control_and_zero_width_characters_are_removed_but_newlines_kept():
    text = "\ufeffHello\x00 wor\u200bld\x1b\r\nsecond line\x85"
    assert normalize([text]).kept.column("text")[0].as_py() == "Hello world\nsecond line"


def test_prose_whitespace_collapses_while_code_indentation_survives():
    prose = "Too   many\t\tspaces \u00a0here.  \n\n\n\n\nNext paragraph."
    code = "def f():\n        return  1   \n\n\n\n\nx = 2"
    result = normalize([prose, code], sources=["web", "code"]).kept.column("text").to_pylist()
    assert result[0] == "Too many spaces here.\n\n\nNext paragraph."
    assert result[1] == "def f():\n        return  1\n\n\nx = 2"


def test_text_that_normalizes_to_nothing_is_dropped_with_a_reason():
    result = normalize(["\u200b \t\x07\n", "kept"])
    assert result.kept.column("id").to_pylist() == ["d1"]
    assert result.dropped.to_pylist() == [
        {"id": "d0", "source": "web", "reason": "empty_after_normalize", "detail": None}
    ]
    assert result.metrics["normalize.changed_docs"] == 1


def test_single_blanks_become_spaces_and_ascii_documents_keep_their_bytes():
    texts = ["a\tb\u00a0c\u3000d e", "plain ascii text", "Cafe\u0301", None, "x\u2009 \u2009y"]
    result = normalize(texts, unicode_form="NFKC")
    out = dict(zip(result.kept.column("id").to_pylist(), result.kept.column("text").to_pylist()))
    assert out == {"d0": "a b c d e", "d1": "plain ascii text", "d2": "Café", "d3": None, "d4": "x y"}
