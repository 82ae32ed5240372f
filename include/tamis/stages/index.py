"""Index: a metadata index by document id, and the packed token binary, as side
outputs of the dataset it indexes.

The stage passes its input through unchanged (so the output dataset is the indexed
data plus its index) and writes, under ``<output>/_index/``:

``metadata.parquet``
    One row per document, sorted by ``id``, in small row groups, so a lookup by id
    reads one row group: ``id``, ``source``, the document's other scalar columns
    (``lang``, quality signals, ``date``, ``url``...), ``token_count``, where the
    full record lives (``shard``: part name in the document dataset, ``row_group``,
    ``row``: row inside that row group) and, when the input is packed, where its
    tokens are (``seq``: the lowest-numbered sequence in ``tokens.bin`` holding a piece
    of it, ``seq_offset``: the piece's token offset there, ``n_pieces``: how many pieces
    packing cut it into; a one-piece document is ``token_count`` tokens from there). Parquet key-value metadata names the document dataset.
``tokens.bin`` / ``tokens.idx``
    The packed sequences in Megatron's layout (see :mod:`tamis.export`): ``.idx``
    holds the byte offset of every sequence, the offset index into the binary.

The input is either packed sequences (``doc_ids`` column: the document records are
read from the ``documents`` dataset of the same run) or document records (``id``).
Lookups go through :mod:`tamis.lookup`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from tamis import export, storage
from tamis.dataset import Dataset
from tamis.stage import BatchResult, DatasetStage, InputShard, StageParams, iter_shard_batches

log = logging.getLogger("tamis.stages.index")

INDEX_DIR = "_index"
METADATA_FILE = "metadata.parquet"
BINARY_PREFIX = "tokens"
# Parquet key-value metadata of metadata.parquet
DOCUMENTS_KEY = b"tamis.documents_url"
DOCUMENTS_NAME_KEY = b"tamis.documents_name"
# Record-sized columns never go into the index: the index must stay small.
HEAVY_COLUMNS = {"text", "input_ids"}
LOCATION_COLUMNS = ["shard", "row_group", "row"]


class IndexBuildError(ValueError):
    """The input cannot be indexed."""


class IndexParams(StageParams):
    # Dataset holding the document records when the input is packed: a stage name of the
    # same run (its sibling folder) or a URL; null = the input itself holds documents.
    documents: str | None = "mix"
    # Rows per row group of metadata.parquet: smaller reads less per lookup, larger compresses better.
    row_group_rows: int = Field(default=1024, ge=16)
    # Document columns to carry into the index; null = every scalar column but text.
    columns: list[str] | None = None
    # Write the packed sequences as tokens.bin/.idx (packed input only).
    binary: bool = True
    binary_dtype: Literal["auto", "uint16", "int32"] = "auto"


class IndexStage(DatasetStage):
    type_name = "index"
    Params = IndexParams
    params: IndexParams
    joins_corpus = False
    default_gate = {"required_columns": ["id", "input_ids", "doc_ids", "doc_offsets", "n_pad"], "min_text_chars": None}

    def __init__(
        self,
        params: StageParams | dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(params, context, name)
        self._input_url: str | None = None

    def input_shards(self, input_url: str | None) -> list[InputShard]:
        self._input_url = input_url
        return super().input_shards(input_url)

    def plan(self, shards: list[InputShard], work_url: str, run) -> dict[str, int]:
        """The index is the plan: metadata.parquet (and the token binary) are written under
        the output's ``_index/`` before the parts pass through."""
        output_url, input_url, packed, documents_url, documents_name = self._sources(shards, work_url)
        if packed and not self.params.documents:
            metadata = _locations(run.map(_packed_pieces, _piece_jobs(shards, with_lengths=True)), with_lengths=True)
        else:
            doc_shards = Dataset(documents_url).shards()
            tables = run.map(_document_rows, [(s, self.params.columns) for s in doc_shards])
            metadata = _concat_metadata(tables)
            if packed:
                locations = _locations(
                    run.map(_packed_pieces, _piece_jobs(shards, with_lengths=False)), with_lengths=False
                )
                metadata = metadata.join(locations, "id", join_type="left outer")
        metadata = metadata.sort_by("id")
        duplicated = _first_duplicate(metadata.column("id"))
        if duplicated is not None:
            raise IndexBuildError(f"index: document id {duplicated!r} appears more than once in {documents_url}")
        return self._write(metadata, output_url, input_url, packed, documents_url, documents_name)

    def plan_spark(self, shards: list[InputShard], work_url: str, run) -> dict[str, int]:
        """The same index with its global steps on Spark: document rows read on the executors,
        packed pieces grouped by id with a shuffle, the join and the sort by id as Spark jobs;
        the sorted partitions are then streamed, in order, into one metadata file."""
        from pyspark.sql import functions as F

        output_url, input_url, packed, documents_url, documents_name = self._sources(shards, work_url)
        if packed and not self.params.documents:
            frame = _spark_locations(run, shards, with_lengths=True)
        else:
            doc_shards = Dataset(documents_url).shards()
            schema = _document_rows_schema(doc_shards, self.params.columns)
            frame = run.frame(_document_rows_frame, [(s, self.params.columns) for s in doc_shards], schema)
            if packed:
                frame = frame.join(_spark_locations(run, shards, with_lengths=False), "id", "left_outer")
        folder = storage.join(work_url, "index")
        columns = frame.columns
        frame.orderBy("id").mapInArrow(lambda batches: _write_sorted_partition(batches, folder), "rows long").agg(
            F.sum("rows")
        ).collect()
        metadata = _read_sorted_partitions(folder, columns)
        # Sorted by id, a repeated id is two neighbours: checked here, as locally, rather than
        # by a job of its own that read every row from the store once more.
        duplicated = _first_duplicate(metadata.column("id"))
        if duplicated is not None:
            raise IndexBuildError(f"index: document id {duplicated!r} appears more than once in {documents_url}")
        return self._write(metadata, output_url, input_url, packed, documents_url, documents_name)

    def _sources(self, shards: list[InputShard], work_url: str) -> tuple[str, str, bool, str, str | None]:
        output_url = work_url.rsplit("/", 1)[0]  # the runner passes <output>/_work
        input_url = self._input_url or (shards[0].url.rsplit("/", 1)[0] if shards else None)
        if input_url is None:
            raise IndexBuildError("index: no input dataset")
        packed = "doc_ids" in _schema(shards[0].url).names if shards else False
        documents_url, documents_name = input_url, None
        if packed and self.params.documents:
            documents_url, documents_name = _resolve_documents(input_url, self.params.documents)
            if not Dataset(documents_url).is_complete():
                raise IndexBuildError(
                    f"index: the document dataset {documents_url} (param documents={self.params.documents!r}) "
                    "is not a committed dataset; run that stage first or set documents to its URL"
                )
        return output_url, input_url, packed, documents_url, documents_name

    def _write(
        self,
        metadata: pa.Table,
        output_url: str,
        input_url: str,
        packed: bool,
        documents_url: str,
        documents_name: str | None,
    ) -> dict[str, int]:
        index_url = storage.join(output_url, INDEX_DIR)
        key_values = {DOCUMENTS_KEY: documents_url.encode()}
        if documents_name:
            key_values[DOCUMENTS_NAME_KEY] = documents_name.encode()
        metadata = metadata.combine_chunks().replace_schema_metadata(key_values)  # one layout, whatever the engine
        _write_parquet(metadata, storage.join(index_url, METADATA_FILE), output_url, self.params.row_group_rows)
        summary = {"index.documents": metadata.num_rows}
        if packed and self.params.binary:
            if self.params.binary_dtype == "auto":
                dtype = export.token_dtype(export.max_token_id(input_url))
            else:
                dtype = np.dtype(self.params.binary_dtype)
            written = export.write_megatron(
                export.iter_packed_batches(input_url), storage.join(index_url, BINARY_PREFIX), dtype, output_url
            )
            summary["index.binary_sequences"] = written["sequences"]
            summary["index.binary_tokens"] = written["tokens"]
        log.info("index: %d documents indexed into %s", metadata.num_rows, index_url)
        return summary

    def apply(self, shard: InputShard, work_url: str) -> Iterator[BatchResult]:
        for _, table in iter_shard_batches(shard):
            yield BatchResult(kept=table, metrics=Counter({"index.rows": table.num_rows}))


def _schema(url: str) -> pa.Schema:
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        return pq.read_schema(f)


def _resolve_documents(input_url: str, documents: str) -> tuple[str, str | None]:
    if "://" in documents or documents.startswith("/"):
        return documents, None
    return storage.join(input_url.rstrip("/").rsplit("/", 1)[0], documents), documents


def _index_columns(schema: pa.Schema, requested: list[str] | None, source_url: str) -> list[str]:
    if requested is not None:
        missing = [c for c in requested if c not in schema.names]
        if missing:
            raise IndexBuildError(f"index: columns {missing} are not in {source_url}; it has {schema.names}")
        columns = list(requested)
    else:
        columns = [
            f.name
            for f in schema
            if f.name not in HEAVY_COLUMNS and not pa.types.is_nested(f.type) and not pa.types.is_binary(f.type)
        ]
    for required in ("id", "source"):
        if required not in schema.names:
            raise IndexBuildError(f"index: {source_url} has no {required!r} column; it has {schema.names}")
        if required not in columns:
            columns.insert(0 if required == "id" else 1, required)
    return [c for c in columns if c not in LOCATION_COLUMNS]


def _document_rows(stage: IndexStage, job: tuple[InputShard, list[str] | None]) -> pa.Table:
    """The index columns of one document part plus where each row lives (part, row group, row)."""
    shard, requested = job
    tables = []
    fs, path = storage.filesystem(shard.url)
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        schema = parquet.schema_arrow
        columns = _index_columns(schema, requested, shard.url)
        needs_lengths = "token_count" not in schema.names and "input_ids" in schema.names
        for rg in range(parquet.num_row_groups):
            table = parquet.read_row_group(rg, columns=columns + (["input_ids"] if needs_lengths else []))
            if needs_lengths:
                lengths = pc.cast(pc.list_value_length(table.column("input_ids")), pa.int32())
                table = table.drop_columns(["input_ids"]).append_column("token_count", lengths)
            n = table.num_rows
            table = table.append_column("shard", pa.array([shard.name] * n, pa.string()))
            table = table.append_column("row_group", pa.array(np.full(n, rg, np.int32)))
            table = table.append_column("row", pa.array(np.arange(n, dtype=np.int32)))
            tables.append(table)
    if not tables:
        return pa.table({"id": pa.array([], pa.string()), "source": pa.array([], pa.string())})
    return _typed(pa.concat_tables(tables, promote_options="permissive"))


def _document_rows_frame(stage: IndexStage, job) -> Iterator[pa.Table]:
    yield _document_rows(stage, job)


def _document_rows_schema(shards: list[InputShard], requested: list[str] | None) -> pa.Schema:
    """The schema :func:`_document_rows` gives, from the first part's footer."""
    if not shards:
        return pa.schema([("id", pa.string()), ("source", pa.string())])
    schema = _schema(shards[0].url)
    fields = [schema.field(c) for c in _index_columns(schema, requested, shards[0].url)]
    if "token_count" not in schema.names and "input_ids" in schema.names:
        fields.append(pa.field("token_count", pa.int32()))
    fields += [pa.field("shard", pa.string()), pa.field("row_group", pa.int32()), pa.field("row", pa.int32())]
    return pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in fields])


def _concat_metadata(tables: list[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t.num_columns > 2 or t.num_rows]
    if not tables:
        return pa.table({"id": pa.array([], pa.string()), "source": pa.array([], pa.string())})
    return _typed(pa.concat_tables(tables, promote_options="permissive"))


def _typed(table: pa.Table) -> pa.Table:
    # An all-null column (e.g. url of a source without urls) is typed null; joins need a real type.
    for i, f in enumerate(table.schema):
        if pa.types.is_null(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.string()))
    return table


_PIECES = pa.schema(
    [
        ("id", pa.string()),
        ("seq", pa.int64()),
        ("seq_offset", pa.int32()),
        ("source", pa.string()),
        ("token_count", pa.int64()),
    ]
)


def _piece_jobs(shards: list[InputShard], with_lengths: bool) -> list[tuple[InputShard, int, bool]]:
    """Each packed part with the number of its first sequence (manifest order is the order
    of ``tokens.bin``): row counts come from the Parquet footers."""
    jobs, base = [], 0
    for shard in shards:
        jobs.append((shard, base, with_lengths))
        fs, path = storage.filesystem(shard.url)
        with fs.open(path, "rb") as f:
            base += pq.ParquetFile(f).metadata.num_rows
    return jobs


def _packed_pieces(stage: IndexStage, job: tuple[InputShard, int, bool]) -> pa.Table:
    """Every document piece of one packed part: its sequence, its offset there and (with
    lengths) its source and length."""
    shard, base, with_lengths = job
    ids, seqs, offsets, lengths, sources = [], [], [], [], []
    fs, path = storage.filesystem(shard.url)
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        wanted = ["doc_ids", "doc_offsets"] + (["input_ids", "n_pad", "source"] if with_lengths else [])
        missing = [c for c in wanted if c not in parquet.schema_arrow.names]
        if missing:
            raise IndexBuildError(f"index: packed part {shard.url} lacks columns {missing}")
        for batch in parquet.iter_batches(columns=wanted):
            doc_ids = batch.column("doc_ids")
            per_row = pc.list_value_length(doc_ids).to_numpy(zero_copy_only=False)
            seqs.append(np.repeat(np.arange(base, base + batch.num_rows, dtype=np.int64), per_row))
            start = pc.list_flatten(batch.column("doc_offsets")).to_numpy(zero_copy_only=False).astype(np.int32)
            ids.append(pc.list_flatten(doc_ids).cast(pa.string()))
            offsets.append(start)
            if with_lengths:
                # A piece runs to the next piece's start, or to the real (unpadded) end of its row.
                seq_len = pc.list_value_length(batch.column("input_ids")).to_numpy(zero_copy_only=False)
                n_pad = batch.column("n_pad").to_numpy(zero_copy_only=False)
                row_end = np.repeat(seq_len - n_pad, per_row)
                nxt = np.append(start[1:], 0)
                last = np.cumsum(per_row) - 1
                is_last = np.zeros(start.size, bool)
                is_last[last[per_row > 0]] = True
                lengths.append((np.where(is_last, row_end, nxt) - start).astype(np.int64))
                source = batch.column("source")
                if pa.types.is_list(source.type):  # pack writes one source per document piece
                    sources.append(pc.list_flatten(source).cast(pa.string()))
                else:
                    sources.append(pa.array(np.repeat(source.to_numpy(zero_copy_only=False), per_row), pa.string()))
            base += batch.num_rows
    n = sum(len(s) for s in seqs)
    return pa.table(
        {
            "id": pa.concat_arrays(ids) if ids else pa.array([], pa.string()),
            "seq": pa.array(np.concatenate(seqs) if seqs else np.zeros(0, np.int64)),
            "seq_offset": pa.array(np.concatenate(offsets) if offsets else np.zeros(0, np.int32)),
            "source": pa.concat_arrays(sources) if sources else pa.nulls(n, pa.string()),
            "token_count": pa.array(np.concatenate(lengths) if lengths else np.zeros(n, np.int64)),
        },
        schema=_PIECES,
    )


def _packed_pieces_frame(stage: IndexStage, job) -> Iterator[pa.Table]:
    yield _packed_pieces(stage, job)


def _locations(tables: list[pa.Table], with_lengths: bool) -> pa.Table:
    """Per document id: its first piece (lowest sequence, then offset), how many pieces
    packing cut it into and (with lengths) its source and total length."""
    table = pa.concat_tables(tables) if tables else _PIECES.empty_table()
    totals = (
        table.group_by("id")
        .aggregate([("token_count", "sum"), ([], "count_all")])
        .rename_columns(["id", "token_count", "n_pieces"])
    )
    table = table.sort_by([("id", "ascending"), ("seq", "ascending"), ("seq_offset", "ascending")])
    if table.num_rows:
        id_values = table.column("id").combine_chunks()
        first = np.ones(table.num_rows, bool)
        first[1:] = pc.not_equal(id_values.slice(1), id_values.slice(0, table.num_rows - 1)).to_numpy(
            zero_copy_only=False
        )
        table = table.filter(pa.array(first))
    table = table.drop_columns(["token_count"]).join(totals, "id")
    if with_lengths:
        return table.select(["id", "source", "token_count", "seq", "seq_offset", "n_pieces"])
    return table.select(["id", "seq", "seq_offset", "n_pieces"])


def _spark_locations(run, shards: list[InputShard], with_lengths: bool):
    from pyspark.sql import functions as F

    pieces = run.frame(_packed_pieces_frame, _piece_jobs(shards, with_lengths), _PIECES)
    first = F.min(F.struct("seq", "seq_offset", "source"))
    grouped = pieces.groupBy("id").agg(
        first.alias("first"), F.sum("token_count").alias("token_count"), F.count("*").alias("n_pieces")
    )
    located = grouped.select(
        "id",
        F.col("first.source").alias("source"),
        "token_count",
        F.col("first.seq").alias("seq"),
        F.col("first.seq_offset").alias("seq_offset"),
        "n_pieces",
    )
    if with_lengths:
        return located
    return located.select("id", "seq", "seq_offset", "n_pieces")


def _write_sorted_partition(batches, folder: str):
    from pyspark import TaskContext

    tables = [pa.Table.from_batches([b]) for b in batches]
    rows = sum(t.num_rows for t in tables)
    if rows:
        sink = pa.BufferOutputStream()
        pq.write_table(pa.concat_tables(tables), sink, compression="zstd")
        task = TaskContext.get()
        assert task is not None, "mapInArrow runs this inside a Spark task"
        partition = task.partitionId()
        storage.write_bytes_atomic(
            storage.join(folder, f"{partition:06d}.parquet"), sink.getvalue().to_pybytes(), folder
        )
    yield pa.RecordBatch.from_arrays([pa.array([rows], pa.int64())], names=["rows"])


def _read_sorted_partitions(folder: str, columns: list[str]) -> pa.Table:
    fs, path = storage.filesystem(folder)
    files = sorted(fs.glob(f"{path}/*.parquet")) if fs.exists(path) else []
    tables = []
    for file in files:
        with fs.open(file, "rb") as f:
            tables.append(pq.read_table(f))
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    return _typed(pa.concat_tables(tables, promote_options="permissive"))


def _first_duplicate(ids: pa.ChunkedArray) -> str | None:
    """The first id that appears twice in a sorted id column, or None."""
    if len(ids) < 2:
        return None
    values = ids.combine_chunks()
    same = pc.equal(values.slice(1), values.slice(0, len(values) - 1))
    hit = pc.index(same, True).as_py()
    return None if hit < 0 else values[hit].as_py()


def _write_parquet(table: pa.Table, url: str, dataset_url: str, row_group_rows: int) -> None:
    tmp = storage.tmp_url(dataset_url, url.rsplit("/", 1)[-1])
    fs, path = storage.filesystem(tmp)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        # Page statistics and small row groups let readers skip all but the matching group.
        pq.write_table(
            table,
            f,
            row_group_size=row_group_rows,
            compression="zstd",
            write_statistics=True,
            write_page_index=True,
        )
    storage.publish(tmp, url)


def index_summary(dataset_url: str) -> dict[str, Any]:
    """Row count and document dataset of an index, for reports."""
    url = storage.join(dataset_url, INDEX_DIR, METADATA_FILE)
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        meta = pq.ParquetFile(f).metadata
    kv = meta.metadata or {}
    return {
        "documents": meta.num_rows,
        "row_groups": meta.num_row_groups,
        "documents_url": kv.get(DOCUMENTS_KEY, b"").decode() or None,
    }
