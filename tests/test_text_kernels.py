"""The C rewrites give what the chains of Arrow regex replacements they stand for give."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from conftest import TEST_DATA, read_jsonl
from tamis.text_kernels import collapsed_spaces, normalized_blanks

# The regex chain normalize ran before the C pass, written out here as the reference.
_CONTROL = r"[\x{0}-\x{8}\x{b}\x{c}\x{e}-\x{1f}\x{7f}-\x{9f}\x{200b}\x{200c}\x{200d}\x{2060}\x{feff}]"
_SPACES = r"\x{a0}\x{1680}\x{2000}-\x{200a}\x{202f}\x{205f}\x{3000}"
_INLINE_SPACE = rf"[ \t{_SPACES}]{{2,}}|[\t{_SPACES}]"


def _regex_chain(text, prose, remove_controls, strip_trailing, max_blank_lines):
    text = pc.replace_substring(pc.replace_substring(text, "\r\n", "\n"), "\r", "\n")
    if remove_controls:
        text = pc.replace_substring_regex(text, _CONTROL, "")
    text = pc.if_else(pa.array(prose), pc.replace_substring_regex(text, _INLINE_SPACE, " "), text)
    if strip_trailing:
        text = pc.replace_substring_regex(text, r"(?m)[ \t]+$", "")
    text = pc.replace_substring_regex(text, "\n{%d,}" % (max_blank_lines + 2), "\n" * (max_blank_lines + 1))
    return pc.utf8_trim(text, " \t\n")


# Every character class the rewrites treat apart, their neighbours that they must leave
# alone (U+200E, U+2028, U+0085's neighbours), and multi-byte letters.
_PIECES = [
    "a", "Z", " ", "\t", "\n", "\r", "\r\n", "\x0b", "\x0c", "\x00", "\x1f", "\x7f", "\x80", "\x85", "\x9f",
    "\xa0", "\xa1", "\u1680", "\u2000", "\u200a", "\u200b", "\u200d", "\u200e", "\u2028", "\u202f", "\u205f",
    "\u2060", "\u2061", "\u3000", "\u3001", "\ufeff", "\ufefe", "é", "中", "\U0001f600", "  ", "\n\n\n\n",
]  # fmt: skip


def _random_texts(seed: int, n: int) -> list[str | None]:
    rng = random.Random(seed)
    texts: list[str | None] = ["".join(rng.choice(_PIECES) for _ in range(rng.randrange(0, 40))) for _ in range(n)]
    return texts + [None, "", " \t\n", "\u3000"]


def _corpus_texts() -> list[str]:
    files = [
        TEST_DATA / "multilingual" / "udhr_unicode_388docs.jsonl.gz",
        TEST_DATA / "web_en" / "cc_c4_pile_fixtures_by_source.jsonl.gz",
        *sorted((TEST_DATA / "code").glob("*.jsonl.gz")),
    ]
    return [row["text"] for path in files for row in read_jsonl(path)]


@pytest.mark.parametrize("string_type", [pa.string(), pa.large_string()])
@pytest.mark.parametrize("remove_controls,strip_trailing,max_blank_lines", [(True, True, 2), (False, False, 0)])
def test_normalized_blanks_is_the_regex_chain(string_type, remove_controls, strip_trailing, max_blank_lines):
    rng = np.random.default_rng(1)
    for texts in (_random_texts(3, 20_000), _corpus_texts()):
        column = pa.array(texts, string_type)
        for part in (column, column.slice(7, len(column) // 2)):  # an offset into the buffers too
            prose = rng.random(len(part)) < 0.6
            got = normalized_blanks(part, prose, remove_controls, strip_trailing, max_blank_lines)
            want = _regex_chain(part, prose, remove_controls, strip_trailing, max_blank_lines)
            assert got.type == want.type
            assert got.to_pylist() == want.to_pylist()


def test_collapsed_spaces_is_re2_s_plus_to_one_space():
    for texts in (_random_texts(5, 20_000), _corpus_texts()):
        column = pa.array(texts)
        for part in (column, column.slice(3)):
            assert collapsed_spaces(part).to_pylist() == pc.replace_substring_regex(part, r"\s+", " ").to_pylist()
    assert collapsed_spaces(pa.array(["a\u00a0 \x0b\f\r\n\tb"])).to_pylist() == ["a\u00a0 \x0b b"]


def test_a_non_string_column_is_refused():
    with pytest.raises(TypeError, match="string column"):
        collapsed_spaces(pa.array([1, 2]))
