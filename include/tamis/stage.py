"""The stage contract shared by every step of the pipeline.

A stage turns one input shard into batches of :class:`BatchResult`: the records it
keeps, the ones it drops (with a reason) and the ones it quarantines (bad input,
with a reason). The runner owns everything else: parallelism, resume, commits,
counters and progress.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

DROPPED_SCHEMA = pa.schema(
    [("id", pa.string()), ("source", pa.string()), ("reason", pa.string()), ("detail", pa.string())]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        ("source_file", pa.string()),
        ("line", pa.int64()),
        ("id", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("sample", pa.string()),
    ]
)
READ_BATCH_ROWS = 2048


class StageParams(BaseModel):
    """Base for every stage's parameters: unknown keys are an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class InputShard:
    """One unit of work: a committed input part, or a raw source file for ingest."""

    name: str  # output part name, e.g. "2026-11-20_web_00000"
    url: str
    size_bytes: int
    attrs: tuple[tuple[str, str], ...] = ()

    def attr(self, key: str, default: str | None = None) -> str | None:
        return dict(self.attrs).get(key, default)


@dataclass
class BatchResult:
    kept: pa.Table
    dropped: pa.Table = field(default_factory=DROPPED_SCHEMA.empty_table)
    quarantined: pa.Table = field(default_factory=QUARANTINE_SCHEMA.empty_table)
    metrics: Counter = field(default_factory=Counter)
    rows_in: int | None = None  # defaults to kept + dropped + quarantined

    @property
    def counted_in(self) -> int:
        if self.rows_in is not None:
            return self.rows_in
        return self.kept.num_rows + self.dropped.num_rows + self.quarantined.num_rows


def split_by_reason(table: pa.Table, reasons: pa.Array | list, detail: pa.Array | list | None = None) -> tuple[pa.Table, pa.Table]:
    """Split ``table`` into (kept, dropped): a null reason keeps the row."""
    reasons = pa.array(reasons, type=pa.string())
    drop_mask = pc.is_valid(reasons)
    kept = table.filter(pc.invert(drop_mask))
    dropped_rows = table.filter(drop_mask)
    if detail is None:
        details = pa.nulls(dropped_rows.num_rows, pa.string())
    else:
        details = pc.filter(pa.array(detail, type=pa.string()), drop_mask)
    source = dropped_rows.column("source") if "source" in table.column_names else pa.nulls(dropped_rows.num_rows, pa.string())
    dropped = pa.table(
        {
            "id": dropped_rows.column("id"),
            "source": source,
            "reason": pc.filter(reasons, drop_mask),
            "detail": details,
        },
        schema=DROPPED_SCHEMA,
    )
    return kept, dropped


def drop_listed_rows(shard: InputShard, rows: np.ndarray, details: list, reason: str) -> Iterator[tuple[pa.Table, BatchResult]]:
    """Read ``shard`` batch by batch and drop the rows numbered ``rows`` (sorted, counted over
    the whole shard), each with its detail (e.g. the id of the copy that survives). Yields
    every input batch with its result; an empty shard yields one empty result."""
    with _open(shard.url) as f:
        parquet = pq.ParquetFile(f)
        offset = 0
        for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS):
            table = pa.Table.from_batches([batch])
            lo, hi = np.searchsorted(rows, [offset, offset + table.num_rows])
            reasons = np.full(table.num_rows, None, dtype=object)
            detail = np.full(table.num_rows, None, dtype=object)
            reasons[rows[lo:hi] - offset] = reason
            detail[rows[lo:hi] - offset] = details[lo:hi]
            kept, dropped = split_by_reason(table, reasons.tolist(), detail.tolist())
            yield table, BatchResult(kept=kept, dropped=dropped)
            offset += table.num_rows
        if offset == 0:
            empty = parquet.schema_arrow.empty_table()
            yield empty, BatchResult(kept=empty)


class Stage:
    """A step of the pipeline. Subclasses set ``name`` and ``Params`` and implement
    :meth:`process_batch` (record-wise stages) or override :meth:`run_shard`."""

    name: ClassVar[str]
    Params: ClassVar[type[StageParams]] = StageParams

    def __init__(self, params: StageParams | dict[str, Any] | None = None, context: dict[str, Any] | None = None):
        if not isinstance(params, StageParams):
            params = self.Params(**(params or {}))
        self.params = params
        # Pipeline-level facts a stage may need (sources, run date); never the stage's own tunables.
        self.context = context or {}

    def check_ready(self) -> None:
        """Fail before any work starts when the configuration cannot work (missing files...)."""

    def input_shards(self, input_url: str | None) -> list[InputShard]:
        from tamis.dataset import Dataset

        if input_url is None:
            raise ValueError(f"stage {self.name!r} needs an input dataset (--input), and none was given")
        return Dataset(input_url).shards()

    def run_shard(self, shard: InputShard) -> Iterator[BatchResult]:
        parquet = pq.ParquetFile(_open(shard.url))
        batches = parquet.iter_batches(batch_size=READ_BATCH_ROWS)
        produced = False
        for batch in batches:
            produced = True
            yield self.process_batch(pa.Table.from_batches([batch]))
        if not produced:
            yield self.process_batch(parquet.schema_arrow.empty_table())

    def process_batch(self, table: pa.Table) -> BatchResult:
        raise NotImplementedError

    def prepare(self, shards: list[InputShard], work_url: str, workers: int) -> None:
        """Whole-dataset stages compute their global state here (the reduce step)."""


def _open(url: str):
    from tamis.storage import filesystem

    fs, path = filesystem(url)
    return fs.open(path, "rb")
