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
from typing import Any, Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from tamis import export, storage
from tamis.dataset import Dataset
from tamis.stage import BatchResult, InputShard, Stage, StageParams

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


class Index(Stage):
    name = "index"
    Params = IndexParams
    params: IndexParams

    def __init__(self, params=None, context=None):
        super().__init__(params, context)
        self._input_url: str | None = None
        self._first_shard: str | None = None
        self._summary: Counter = Counter()

    def input_shards(self, input_url: str) -> list[InputShard]:
        self._input_url = input_url
        return super().input_shards(input_url)

    def prepare(self, shards: list[InputShard], work_url: str, workers: int) -> None:
        output_url = work_url.rsplit("/", 1)[0]  # the runner passes <output>/_work
        input_url = self._input_url or (shards[0].url.rsplit("/", 1)[0] if shards else None)
        if input_url is None:
            raise IndexBuildError("index: no input dataset")
        index_url = storage.join(output_url, INDEX_DIR)
        packed = "doc_ids" in _schema(shards[0].url).names if shards else False

        documents_url, documents_name = input_url, None
        if packed and self.params.documents:
            documents_url, documents_name = _resolve_documents(input_url, self.params.documents)
            if not Dataset(documents_url).is_complete():
                raise IndexBuildError(
                    f"index: the document dataset {documents_url} (param documents={self.params.documents!r}) "
                    "is not a committed dataset; run that stage first or set documents to its URL"
                )
        if packed and not self.params.documents:
            metadata = _packed_locations(shards, with_lengths=True)
        else:
            metadata = _document_metadata(Dataset(documents_url).shards(), self.params.columns)
            if packed:
                metadata = metadata.join(_packed_locations(shards), "id", join_type="left outer")
        metadata = metadata.sort_by("id")
        duplicated = _first_duplicate(metadata.column("id"))
        if duplicated is not None:
            raise IndexBuildError(f"index: document id {duplicated!r} appears more than once in {documents_url}")
        key_values = {DOCUMENTS_KEY: documents_url.encode()}
        if documents_name:
            key_values[DOCUMENTS_NAME_KEY] = documents_name.encode()
        metadata = metadata.replace_schema_metadata(key_values)
        _write_parquet(metadata, storage.join(index_url, METADATA_FILE), output_url, self.params.row_group_rows)
        self._summary["index.documents"] = metadata.num_rows

        if packed and self.params.binary:
            if self.params.binary_dtype == "auto":
                dtype = export.token_dtype(export.max_token_id(input_url))
            else:
                dtype = np.dtype(self.params.binary_dtype)
            written = export.write_megatron(
                export.iter_packed_batches(input_url), storage.join(index_url, BINARY_PREFIX), dtype, output_url
            )
            self._summary["index.binary_sequences"] = written["sequences"]
            self._summary["index.binary_tokens"] = written["tokens"]
        self._first_shard = shards[0].name if shards else None
        log.info("index: %d documents indexed into %s", metadata.num_rows, index_url)

    def run_shard(self, shard: InputShard) -> Iterator[BatchResult]:
        summary = Counter(self._summary) if shard.name == self._first_shard else Counter()
        for result in super().run_shard(shard):
            result.metrics.update(summary)  # global figures once, on the first shard
            summary = Counter()
            yield result

    def process_batch(self, table: pa.Table) -> BatchResult:
        return BatchResult(kept=table, metrics=Counter({"index.rows": table.num_rows}))


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
            f.name for f in schema
            if f.name not in HEAVY_COLUMNS and not pa.types.is_nested(f.type) and not pa.types.is_binary(f.type)
        ]
    for required in ("id", "source"):
        if required not in schema.names:
            raise IndexBuildError(f"index: {source_url} has no {required!r} column; it has {schema.names}")
        if required not in columns:
            columns.insert(0 if required == "id" else 1, required)
    return [c for c in columns if c not in LOCATION_COLUMNS]


def _document_metadata(shards: list[InputShard], requested: list[str] | None) -> pa.Table:
    """The index columns of every document plus where it lives (part, row group, row)."""
    tables = []
    for shard in shards:
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
    table = pa.concat_tables(tables, promote_options="permissive")
    # An all-null column (e.g. url of a source without urls) is typed null; joins need a real type.
    for i, f in enumerate(table.schema):
        if pa.types.is_null(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.string()))
    return table


def _packed_locations(shards: list[InputShard], with_lengths: bool = False) -> pa.Table:
    """First (sequence, token offset) of every document id in the packed sequences.

    Sequence numbers follow manifest order, the order of ``tokens.bin``."""
    ids, seqs, offsets, lengths, sources = [], [], [], [], []
    base = 0
    for shard in shards:
        fs, path = storage.filesystem(shard.url)
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            wanted = ["doc_ids", "doc_offsets"] + (["input_ids", "n_pad", "source"] if with_lengths else [])
            missing = [c for c in wanted if c not in parquet.schema_arrow.names]
            if missing:
                raise IndexBuildError(f"index: packed part {shard.url} lacks columns {missing}")
            for batch in parquet.iter_batches(columns=wanted):
                doc_ids = batch.column("doc_ids")
                doc_offsets = batch.column("doc_offsets")
                per_row = pc.list_value_length(doc_ids).to_numpy(zero_copy_only=False)
                seq = np.repeat(np.arange(base, base + batch.num_rows, dtype=np.int64), per_row)
                start = pc.list_flatten(doc_offsets).to_numpy(zero_copy_only=False).astype(np.int32)
                ids.append(pc.list_flatten(doc_ids))
                seqs.append(seq)
                offsets.append(start)
                if with_lengths:
                    # A chunk runs to the next chunk's start, or to the real (unpadded) end of its row.
                    seq_len = pc.list_value_length(batch.column("input_ids")).to_numpy(zero_copy_only=False)
                    n_pad = batch.column("n_pad").to_numpy(zero_copy_only=False)
                    row_end = np.repeat(seq_len - n_pad, per_row)
                    nxt = np.append(start[1:], 0)
                    last = np.cumsum(per_row) - 1
                    is_last = np.zeros(start.size, bool)
                    is_last[last[per_row > 0]] = True
                    lengths.append(np.where(is_last, row_end, nxt) - start)
                    source = batch.column("source")
                    if pa.types.is_list(source.type):  # pack writes one source per document piece
                        sources.append(pc.list_flatten(source).to_numpy(zero_copy_only=False))
                    else:
                        sources.append(np.repeat(source.to_numpy(zero_copy_only=False), per_row))
                base += batch.num_rows
    table = pa.table({
        "id": pa.concat_arrays([a.cast(pa.string()) for a in ids]) if ids else pa.array([], pa.string()),
        "seq": pa.array(np.concatenate(seqs) if seqs else np.zeros(0, np.int64)),
        "seq_offset": pa.array(np.concatenate(offsets) if offsets else np.zeros(0, np.int32)),
    })
    if with_lengths:
        table = table.append_column("source", pa.array(np.concatenate(sources) if sources else [], pa.string()))
        table = table.append_column("token_count", pa.array(np.concatenate(lengths) if lengths else [], pa.int64()))
        # A document split across sequences counts all its pieces.
        totals = table.group_by("id").aggregate([("token_count", "sum")]).rename_columns(["id", "token_count"])
    pieces = table.group_by("id").aggregate([([], "count_all")]).rename_columns(["id", "n_pieces"])
    table = table.sort_by([("id", "ascending"), ("seq", "ascending"), ("seq_offset", "ascending")])
    if table.num_rows:
        id_values = table.column("id").combine_chunks()
        first = np.ones(table.num_rows, bool)
        differs = pc.not_equal(id_values.slice(1), id_values.slice(0, table.num_rows - 1))
        first[1:] = differs.to_numpy(zero_copy_only=False)
        table = table.filter(pa.array(first))
    table = table.join(pieces, "id")
    if with_lengths:
        table = table.drop_columns(["token_count"]).join(totals, "id")
        table = table.select(["id", "source", "token_count", "seq", "seq_offset", "n_pieces"])
    return table


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
            table, f, row_group_size=row_group_rows, compression="zstd", write_statistics=True,
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
    return {"documents": meta.num_rows, "row_groups": meta.num_row_groups,
            "documents_url": kv.get(DOCUMENTS_KEY, b"").decode() or None}
