"""Normalize: Unicode form, control characters, newlines and whitespace.

The Unicode form runs as Arrow's utf8proc kernel; the rest as one C pass over the column
(``text_kernels.normalized_blanks``, the exact result of the regex replacements it
documents). Code keeps its indentation: only prose gets runs of spaces collapsed.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from tamis.stage import BatchResult, Stage, StageParams, split_by_reason
from tamis.text_kernels import normalized_blanks


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
        # The form first: it neither makes nor takes "\r" or "\n", so the newlines can
        # wait for the one pass below.
        if p.unicode_form != "none":
            text = _unicode_normalized(text, p.unicode_form)
        if p.collapse_spaces:
            prose = self._is_prose(table).to_numpy(zero_copy_only=False)
        else:
            prose = np.zeros(len(text), bool)
        text = normalized_blanks(text, prose, p.remove_control_chars, p.strip_trailing_spaces, p.max_blank_lines)
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
