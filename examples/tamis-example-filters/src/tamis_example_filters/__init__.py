"""Two filters of a team's own, as tamis stages.

``MinLength`` is a class stage: parameters validated by its ``Params``, a reason and a
detail per dropped document. ``drop_short_lines`` is the smallest stage there is: a function
from a batch to one reason (or None, to keep) per row.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from tamis.stage import BatchResult, Stage, StageParams, split_by_reason


class MinLengthParams(StageParams):
    min_chars: int = Field(default=200, ge=1)


class MinLength(Stage):
    """Drops documents shorter than ``min_chars`` characters."""

    Params = MinLengthParams
    params: MinLengthParams  # what self.params holds, for type checkers

    def process_batch(self, table: pa.Table) -> BatchResult:
        chars = pc.utf8_length(table.column("text"))
        short = pc.less(chars, self.params.min_chars)
        reasons = pc.if_else(short, "too_short", pa.scalar(None, pa.string()))
        detail = pc.if_else(
            short, pc.binary_join_element_wise(pc.cast(chars, pa.string()), " chars", ""), pa.scalar(None, pa.string())
        )
        kept, dropped = split_by_reason(table, reasons, detail)
        return BatchResult(kept=kept, dropped=dropped)


def drop_short_lines(table: pa.Table, max_short_line_ratio: float = 0.5, short_line_chars: int = 20) -> list:
    """Drops documents whose lines are mostly short (menus, lists of links)."""
    reasons = []
    for text in table.column("text").to_pylist():
        lines = [line for line in text.split("\n") if line.strip()]
        short = sum(1 for line in lines if len(line) < short_line_chars)
        reasons.append("mostly_short_lines" if lines and short / len(lines) > max_short_line_ratio else None)
    return reasons
