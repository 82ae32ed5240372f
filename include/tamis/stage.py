"""The stage contract shared by every step of the pipeline.

A stage turns input shards into batches of :class:`BatchResult`: the records it keeps,
the ones it drops (with a reason) and the ones it quarantines (bad input, with a
reason). The runner owns everything else: parallelism, resume, commits, counters,
progress, leases and fingerprints; an engine (a local process pool, or Spark) runs the
shards.

Two kinds of stage:

* :class:`Stage`, per batch: ``process_batch(table) -> BatchResult`` is a map over
  record batches (normalize, the filters, pii, tokenize...).
* :class:`DatasetStage`, whole dataset: ``plan`` looks at every shard once (the reduce
  step: dedup clusters, a mixture, a packing) and writes its plan into the output's work
  folder; ``apply`` then runs shard by shard and reads only that plan.

A stage also *declares* what orchestration needs to know (class attributes below), so
that the DAG builders, the command line, the nightly ingest and the release read those
declarations and never name particular stages.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from tamis import storage
from tamis.dataset import Dataset, InputShard, open_part

if TYPE_CHECKING:
    from tamis.engines import Engine

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
# A read batch also stops at about this many bytes of data: a stage holds several
# intermediate copies of a batch's text, so 2,048 long documents would cost hundreds of MB.
READ_BATCH_BYTES = 4 << 20


@dataclass(frozen=True)
class PathParam:
    """Marks a stage parameter as a local path: a pipeline resolves it against its YAML's
    folder. With ``may_be_name`` the value may instead be a name (a tokenizer on a hub)."""

    may_be_name: bool = False

    @staticmethod
    def looks_like_path(value: str) -> bool:
        return (
            value.startswith((".", "~", "/"))
            or value.endswith((".json", ".bin", ".ftz", ".txt", ".yaml"))
            or value.count("/") > 1
        )


LocalPath = Annotated[str, PathParam()]
PathOrName = Annotated[str, PathParam(may_be_name=True)]


class StageParams(BaseModel):
    """Base for every stage's parameters: unknown keys are an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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


@dataclass(frozen=True)
class CorpusContext:
    """What a stage of an incremental (nightly) run is told about the corpus it extends."""

    url: str  # <storage_root>/corpus/<pipeline>
    date: str  # the partition being built, YYYY-MM-DD

    def index_url(self, stage_name: str) -> str:
        """Where a stage keeps its own index over the corpus (e.g. near dedup's signatures)."""
        return storage.join(self.url, "_index", stage_name)


def split_by_reason(
    table: pa.Table, reasons: pa.Array | list, detail: pa.Array | list | None = None
) -> tuple[pa.Table, pa.Table]:
    """Split ``table`` into (kept, dropped): a null reason keeps the row."""
    reasons = pa.array(reasons, type=pa.string())
    drop_mask = pc.is_valid(reasons)
    kept = table.filter(pc.invert(drop_mask))
    dropped_rows = table.filter(drop_mask)
    if detail is None:
        details = pa.nulls(dropped_rows.num_rows, pa.string())
    else:
        details = pc.filter(pa.array(detail, type=pa.string()), drop_mask)
    source = (
        dropped_rows.column("source")
        if "source" in table.column_names
        else pa.nulls(dropped_rows.num_rows, pa.string())
    )
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


def drop_listed_rows(
    shard: InputShard, rows: np.ndarray, details: list, reason: str
) -> Iterator[tuple[pa.Table, BatchResult]]:
    """Read ``shard`` batch by batch and drop the rows numbered ``rows`` (sorted, counted over
    the whole shard), each with its detail (e.g. the id of the copy that survives). Yields
    every input batch with its result; an empty shard yields one empty result."""
    for offset, table in iter_shard_batches(shard):
        lo, hi = np.searchsorted(rows, [offset, offset + table.num_rows])
        reasons = np.full(table.num_rows, None, dtype=object)
        detail = np.full(table.num_rows, None, dtype=object)
        reasons[rows[lo:hi] - offset] = reason
        detail[rows[lo:hi] - offset] = details[lo:hi]
        kept, dropped = split_by_reason(table, reasons.tolist(), detail.tolist())
        yield table, BatchResult(kept=kept, dropped=dropped)


def iter_shard_batches(shard: InputShard, columns: list[str] | None = None) -> Iterator[tuple[int, pa.Table]]:
    """(first row number, table) for every batch of a committed part; an empty part yields
    one empty table, so that its schema carries over."""
    with open_part(shard) as f:
        parquet = pq.ParquetFile(f)
        offset = 0
        for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=columns):
            for table in _bounded(pa.Table.from_batches([batch])):
                yield offset, table
                offset += table.num_rows
        if offset == 0:
            schema = parquet.schema_arrow
            empty = schema.empty_table()
            yield 0, empty if columns is None else empty.select(columns)


def _bounded(table: pa.Table) -> Iterator[pa.Table]:
    """``table`` in consecutive slices of about READ_BATCH_BYTES each (a row is never cut)."""
    if table.nbytes <= READ_BATCH_BYTES or table.num_rows < 2:
        yield table
        return
    if "text" in table.column_names:  # documents differ in length by orders of magnitude
        row_bytes = pc.fill_null(pc.binary_length(table.column("text")), 0).to_numpy(zero_copy_only=False)
        ends = np.cumsum(row_bytes.astype(np.int64) + (table.nbytes - int(row_bytes.sum())) // table.num_rows)
    else:
        ends = np.arange(1, table.num_rows + 1, dtype=np.int64) * (table.nbytes // table.num_rows + 1)
    cuts = np.searchsorted(ends, np.arange(READ_BATCH_BYTES, int(ends[-1]), READ_BATCH_BYTES), side="right")
    bounds = [0, *sorted({int(c) for c in cuts if 0 < c < table.num_rows}), table.num_rows]
    for start, stop in zip(bounds, bounds[1:]):
        yield table.slice(start, stop - start)


class Stage:
    """A per-batch step of the pipeline. Subclasses set ``Params`` and implement
    :meth:`process_batch`, or override :meth:`run_shard` when a shard is not read as
    record batches of a dataset (ingest reads raw files)."""

    Params: ClassVar[type[StageParams]] = StageParams
    # The built-in name of this kind of stage; a pipeline names each instance itself.
    type_name: ClassVar[str] = ""

    # -- declarations: what orchestration reads, instead of naming stages -------------------
    kind: ClassVar[str] = "batch"  # "batch" or "dataset"
    # Shards are raw source files (the pipeline's sources), not a previous stage's parts.
    reads_sources: ClassVar[bool] = False
    # Its output is part of the corpus a nightly run appends; later stages make releases.
    joins_corpus: ClassVar[bool] = True
    # Engines that can run it.
    engines: ClassVar[tuple[str, ...]] = ("local", "spark")
    # Drop reasons that mean "a copy of another document" (the duplicate-rate metric).
    duplicate_reasons: ClassVar[tuple[str, ...]] = ()
    # Default quality gate of its output, under the pipeline's gate settings.
    default_gate: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        params: StageParams | dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
        name: str | None = None,
    ):
        if not isinstance(params, StageParams):
            params = self.Params(**(params or {}))
        self.params = params
        # The instance name: its output folder, its task id, its row in the report.
        self.name = name or self.type_name or getattr(type(self), "name", None) or type(self).__name__
        # Pipeline-level facts a stage may need (sources, pipeline name); never its own tunables.
        self.context = context or {}

    def setup(self) -> None:
        """Load what the stage needs in a worker (a model, a tokenizer): the engine calls it
        once per worker process, before the first shard, and never pickles its results."""

    def check_ready(self) -> None:
        """Fail before any work starts when the configuration cannot work (missing files...)."""

    def corpus_params(self, corpus: CorpusContext) -> dict[str, Any]:
        """Parameters of this stage in an incremental run that extends ``corpus`` by one day."""
        return {}

    def dependencies(self, output_url: str) -> dict[str, str]:
        """What the output depends on beyond its input and parameters (a tokenizer file, a
        model, the corpus a nightly run deduplicates against), each as a version: a content
        hash. They go into the output's fingerprint, so a change is never served stale."""
        return {}

    def input_shards(self, input_url: str | None) -> list[InputShard]:
        if input_url is None:
            raise ValueError(f"stage {self.name!r} needs an input dataset (--input), and none was given")
        return Dataset(input_url).shards()

    def run_shard(self, shard: InputShard) -> Iterator[BatchResult]:
        for _, table in iter_shard_batches(shard):
            yield self.process_batch(table)

    def process_batch(self, table: pa.Table) -> BatchResult:
        raise NotImplementedError(f"{type(self).__name__} implements neither process_batch nor run_shard")


class DatasetStage(Stage):
    """A whole-dataset step: :meth:`plan` over every shard, then :meth:`apply` per shard.

    ``plan`` writes whatever ``apply`` needs under ``work_url`` (the output's work folder)
    and returns dataset-wide metrics for the manifest; it may use ``engine.map`` for its
    own map steps (the local pool or Spark tasks). A stage may also define
    ``plan_spark(shards, work_url, engine)`` doing its global step as Spark shuffles; the
    Spark engine then calls it instead. Both must write the same plan."""

    kind = "dataset"

    def plan(self, shards: list[InputShard], work_url: str, engine: Engine) -> Mapping[str, float]:
        raise NotImplementedError

    def apply(self, shard: InputShard, work_url: str) -> Iterator[BatchResult]:
        raise NotImplementedError


class DropListStage(DatasetStage):
    """A whole-dataset stage whose plan says, per shard, which rows to drop (with a detail
    each, e.g. the id of the copy that survives): dedup. ``apply`` is shared."""

    drop_reason: ClassVar[str] = "duplicate"

    def apply(self, shard: InputShard, work_url: str) -> Iterator[BatchResult]:
        plan = read_drop_plan(work_url, shard.name)
        rows = plan.column("row").to_numpy() if plan is not None else np.empty(0, np.int64)
        details = plan.column("detail").to_pylist() if plan is not None else []
        for table, result in drop_listed_rows(shard, rows, details, self.drop_reason):
            result.metrics.update(self.batch_metrics(table, result))
            yield result

    def batch_metrics(self, table: pa.Table, result: BatchResult) -> Counter:
        """Counters of one applied batch (``table`` is the batch as read)."""
        return Counter()


DROP_PLAN_SCHEMA = pa.schema([("row", pa.int64()), ("detail", pa.string())])


def drop_plan_url(work_url: str, shard_name: str) -> str:
    return storage.join(work_url, "drops", f"{shard_name}.parquet")


def write_drop_plan(work_url: str, shard_name: str, rows: Any, details: Any) -> None:
    """The rows of a shard to drop (ascending row numbers) with each one's detail."""
    plan = pa.table(
        {"row": pa.array(rows, pa.int64()), "detail": pa.array(details, pa.string())}, schema=DROP_PLAN_SCHEMA
    ).sort_by("row")
    sink = pa.BufferOutputStream()
    pq.write_table(plan, sink, compression="zstd")
    storage.write_bytes_atomic(drop_plan_url(work_url, shard_name), sink.getvalue().to_pybytes(), work_url)


def read_drop_plan(work_url: str, shard_name: str) -> pa.Table | None:
    url = drop_plan_url(work_url, shard_name)
    if not storage.exists(url):
        return None
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        return pq.read_table(f)


class FunctionParams(StageParams):
    """Parameters of a function stage: keyword arguments of the function, checked against
    its signature when the stage is made."""

    model_config = ConfigDict(extra="allow", frozen=True)


class FunctionStage(Stage):
    """The smallest stage: a plain function ``f(table, **params) -> reasons``, one reason
    (a string) or None (keep) per row."""

    Params = FunctionParams

    def __init__(
        self,
        function: Callable[..., Any],
        params: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
        name: str | None = None,
    ):
        import inspect

        super().__init__(params, context, name or function.__name__)
        self.function = function
        kwargs = self.params.model_dump()
        try:
            inspect.signature(function).bind(None, **kwargs)
        except TypeError as exc:
            raise ValueError(
                f"{function.__module__}.{function.__qualname__} cannot take params {sorted(kwargs)}: {exc}"
            ) from None

    def process_batch(self, table: pa.Table) -> BatchResult:
        reasons = self.function(table, **self.params.model_dump())
        if isinstance(reasons, (pa.Array, pa.ChunkedArray)):
            reasons = reasons.to_pylist()
        reasons = list(reasons)
        if len(reasons) != table.num_rows:
            raise ValueError(
                f"stage {self.name!r}: {self.function.__qualname__} returned {len(reasons)} reasons "
                f"for {table.num_rows} rows"
            )
        bad = [r for r in reasons if r is not None and not isinstance(r, str)]
        if bad:
            raise ValueError(f"stage {self.name!r}: a reason must be a string or None, got {type(bad[0]).__name__}")
        kept, dropped = split_by_reason(table, reasons)
        return BatchResult(kept=kept, dropped=dropped)
