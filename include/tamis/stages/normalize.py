"""Normalize: Unicode form, control characters, newlines and whitespace.

All of it runs as Arrow compute kernels (RE2 and utf8proc in C++) over whole columns.
Code keeps its indentation: only prose gets runs of spaces collapsed.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from tamis.stage import BatchResult, Stage, StageParams, split_by_reason

# C0 and C1 control characters except tab and newline; zero-width characters and the BOM.
_CONTROL = r"[\x{0}-\x{8}\x{b}\x{c}\x{e}-\x{1f}\x{7f}-\x{9f}\x{200b}\x{200c}\x{200d}\x{2060}\x{feff}]"
_SPACES = r"\x{a0}\x{1680}\x{2000}-\x{200a}\x{202f}\x{205f}\x{3000}"
# Runs of inline blanks that collapsing changes: two or more, or one that is not a space.
# (Matching every single space between words too made the replacement four times slower.)
_INLINE_SPACE = rf"[ \t{_SPACES}]{{2,}}|[\t{_SPACES}]"


class NormalizeParams(StageParams):
    unicode_form: Literal["NFC", "NFKC", "NFD", "NFKD", "none"] = "NFC"
    remove_control_chars: bool = True
    collapse_spaces: bool = True  # prose only
    strip_trailing_spaces: bool = True
    max_blank_lines: int = Field(default=2, ge=0)


class Normalize(Stage):
    type_name = "normalize"
    Params = NormalizeParams
    params: NormalizeParams

    def process_batch(self, table: pa.Table) -> BatchResult:
        p = self.params
        text = table.column("text").combine_chunks()
        text = pc.replace_substring(text, "\r\n", "\n")
        text = pc.replace_substring(text, "\r", "\n")
        if p.unicode_form != "none":
            text = _unicode_normalized(text, p.unicode_form)
        if p.remove_control_chars:
            text = pc.replace_substring_regex(text, _CONTROL, "")
        if p.collapse_spaces:
            collapsed = pc.replace_substring_regex(text, _INLINE_SPACE, " ")
            text = pc.if_else(self._is_prose(table), collapsed, text)
        if p.strip_trailing_spaces:
            text = pc.replace_substring_regex(text, r"(?m)[ \t]+$", "")
        text = pc.replace_substring_regex(text, "\n{%d,}" % (p.max_blank_lines + 2), "\n" * (p.max_blank_lines + 1))
        text = pc.utf8_trim(text, " \t\n")
        changed = pc.sum(pc.not_equal(text, table.column("text"))).as_py() or 0
        table = table.set_column(table.schema.get_field_index("text"), "text", text)
        reasons = pc.if_else(pc.equal(text, ""), "empty_after_normalize", pa.scalar(None, pa.string()))
        kept, dropped = split_by_reason(table, reasons)
        return BatchResult(kept=kept, dropped=dropped, metrics=Counter({"normalize.changed_docs": changed}))

    def _is_prose(self, table: pa.Table) -> pa.Array:
        sources = self.context.get("sources", {})
        code_sources = [name for name, source in sources.items() if source.type == "code"]
        return pc.invert(pc.is_in(table.column("source"), value_set=pa.array(code_sources, pa.string())))


def _unicode_normalized(text: pa.Array, form: str) -> pa.Array:
    """``text`` in Unicode normal form ``form``. ASCII text is in every form already, and
    most documents are ASCII: only the others go through utf8proc."""
    other = pc.invert(pc.fill_null(pc.string_is_ascii(text), True))
    if not pc.any(other).as_py():
        return text
    normalized = pc.utf8_normalize(text.filter(other), form=form)
    return pc.replace_with_mask(text, other, normalized)
