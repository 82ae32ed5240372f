"""Writes include/tamis/native/text_tables.json: the character classes and special cases the
quality rules' word splitter needs to split words as the reference (datatrove 0.10.1, which
uses spaCy 3.8's English tokenizer) does.

    benchmarks/.peer-venv/bin/python scripts/make_text_tables.py

Runs once, in the peer virtualenv (benchmarks/peer_venv.sh: datatrove 0.10.1, spaCy 3.8.18);
its output is committed, so tamis itself needs neither. Every class is evaluated with the
reference's own regular expressions over every code point, and stored as ranges.
spaCy is MIT-licensed (c) ExplosionAI GmbH; datatrove is Apache-2.0 (c) HuggingFace.
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from pathlib import Path

import datatrove
import regex
import spacy
from datatrove.utils.text import PUNCTUATION_SET, TERMINAL_PUNCTUATION
from spacy.lang import char_classes as cc
from spacy.lang.en import English
from spacy.pipeline.sentencizer import Sentencizer
from spacy.tokenizer import Tokenizer

OUT = Path(__file__).resolve().parents[1] / "include" / "tamis" / "native" / "text_tables.json"
ALL = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)


def ranges(chars) -> list[list[int]]:
    points = sorted({ord(c) for c in chars})
    out: list[list[int]] = []
    for p in points:
        if out and out[-1][1] == p - 1:
            out[-1][1] = p
        else:
            out.append([p, p])
    return out


def matching(pattern: str, flags=0) -> list[list[int]]:
    return ranges(m.group() for m in re.finditer(pattern, ALL, flags))


def where(test) -> list[list[int]]:
    return ranges(c for c in ALL if test(c))


# Alternatives of the prefix/suffix lists that are longer than one character or depend on
# their neighbours; the splitter handles them by name.
MULTI = {r"\+(?![0-9])", r"\.\.+", "……", "US$", "C$", "A$"}


def single_chars(entries: list[str]) -> list[list[int]]:
    singles = [
        e if e.startswith("[") else re.escape(e.replace("\\", ""))
        for e in entries
        if e not in MULTI and len(e.replace("\\", "")) == 1 or e.startswith("[")
    ]
    return matching("(?:" + "|".join(singles) + ")")


def nfc_unsafe(c: str) -> bool:
    """A code point whose NFC quick check is not Yes: NFC changes it, or it may combine with or
    be reordered against the character before it (Hangul vowel and final jamo compose too)."""
    cp = ord(c)
    return (
        unicodedata.normalize("NFC", c) != c
        or unicodedata.combining(c) != 0
        or 0x1161 <= cp <= 0x1175
        or 0x11A8 <= cp <= 0x11C2
    )


def main() -> None:
    nlp = English()
    tok = nlp.tokenizer
    rules = tok.rules
    # Special cases that hold an affix are also looked for across the tokens the affix rules
    # make (spaCy's special-case matcher): their pattern is the split without special cases.
    affixes_only = Tokenizer(
        nlp.vocab,
        rules={},
        prefix_search=tok.prefix_search,
        suffix_search=tok.suffix_search,
        infix_finditer=tok.infix_finditer,
        token_match=tok.token_match,
        url_match=tok.url_match,
    )
    specials, matcher = {}, {}
    for orth, pieces in rules.items():
        parts = [p[65] for p in pieces]  # 65: spacy.attrs.ORTH
        if "".join(parts) != orth:
            raise SystemExit(f"special case {orth!r} does not split into its own text")
        specials[orth] = [len(p) for p in parts]
        if tok.find_prefix(orth) or tok.find_infix(orth) or tok.find_suffix(orth) or " " in orth:
            matcher[orth] = [len(t.text) for t in affixes_only(orth)]

    second_of_pair = set()
    for c in ALL:
        d = unicodedata.decomposition(c)
        if d and not d.startswith("<"):
            parts = d.split()
            if len(parts) == 2:
                second_of_pair.add(chr(int(parts[1], 16)))

    quotes = cc.CONCAT_QUOTES
    flags = {
        "space": where(str.isspace),
        "py_alpha": where(str.isalpha),
        "unicode_punct": where(lambda c: unicodedata.category(c).startswith("P")),
        "letter": where(lambda c: unicodedata.category(c).startswith("L")),
        "word_char": matching(r"\w"),
        "digit": matching(r"\d"),
        "sentence_punct": ranges(c for c in Sentencizer.default_punct_chars if len(c) == 1),
        "dt_punct": ranges(c for c in PUNCTUATION_SET if len(c) == 1),
        "dt_terminal": ranges(c for c in TERMINAL_PUNCTUATION if len(c) == 1),
        "prefix": single_chars(
            ["§", "%", "=", "—", "–"]
            + cc.LIST_PUNCT
            + cc.LIST_ELLIPSES
            + cc.LIST_QUOTES
            + cc.LIST_CURRENCY
            + cc.LIST_ICONS
        ),
        "suffix": single_chars(cc.LIST_PUNCT + cc.LIST_ELLIPSES + cc.LIST_QUOTES + cc.LIST_ICONS + ["—", "–"]),
        "period_after": matching(
            r"[0-9{al}{e}{p}(?:{q})]".format(al=cc.ALPHA_LOWER, e=r"%²\-\+", q=quotes, p=cc.PUNCT)
        ),
        "alpha": matching(f"[{cc.ALPHA}]"),
        "alpha_lower": matching(f"[{cc.ALPHA_LOWER}]"),
        "alpha_upper": matching(f"[{cc.ALPHA_UPPER}]"),
        "quote": matching(f"[{quotes}]"),
        "icon": matching(cc.LIST_ICONS[0]),
        "unspaced": ranges(
            m.group()
            for m in regex.finditer(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}]", ALL)
        ),
        "nfc_unsafe": ranges(c for c in ALL if nfc_unsafe(c) or c in second_of_pair),
    }
    if set(Sentencizer.default_punct_chars) != {c for c in Sentencizer.default_punct_chars if len(c) == 1}:
        raise SystemExit("a sentence punctuation mark longer than one character")
    tables = {
        "about": f"generated by scripts/make_text_tables.py from spaCy {spacy.__version__} (MIT) and datatrove "
        f"{datatrove.__version__ if hasattr(datatrove, '__version__') else '0.10.1'} (Apache-2.0), Python "
        f"{sys.version.split()[0]} (Unicode {unicodedata.unidata_version})",
        "flags": flags,
        "currency": [c.replace("\\", "") for c in cc.LIST_CURRENCY],
        "units": cc.LIST_UNITS,
        "specials": specials,
        "matcher": matcher,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(tables, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(specials)} special cases)")


if __name__ == "__main__":
    main()
