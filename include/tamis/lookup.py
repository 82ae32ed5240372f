"""Lookups through a dataset's index (``<dataset>/_index/``, written by the index stage),
without scanning the corpus.

* :func:`get` — one document by id: a row-group read of ``metadata.parquet`` (sorted by
  id, so the row-group statistics name the single group to read), then one row group of
  the document's part.
* :func:`query` — the index rows matching a filter over the index columns (comparisons,
  IN, BETWEEN, LIKE, IS NULL, AND/OR/NOT: :mod:`tamis.index_filter`), through DuckDB,
  which skips row groups by their statistics.
* :func:`sequence` — one packed sequence from ``tokens.bin`` by its offset index.

The ``tamis get`` and ``tamis query`` commands (:func:`add_lookup_commands`) call these.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tamis import storage
from tamis.index_filter import FilterError, compile_filter
from tamis.stages.index import (
    BINARY_PREFIX,
    DOCUMENTS_KEY,
    DOCUMENTS_NAME_KEY,
    INDEX_DIR,
    METADATA_FILE,
)


class IndexLookupError(LookupError):
    pass


class NoIndex(IndexLookupError):
    pass


class QueryError(ValueError):
    pass


def metadata_url(dataset_url: str) -> str:
    return storage.join(dataset_url, INDEX_DIR, METADATA_FILE)


def get(dataset_url: str, doc_id: str, with_record: bool = True) -> dict[str, Any] | None:
    """The index entry of ``doc_id`` merged with its full record (text and all), or None.

    With ``with_record=False`` only the index entry is read (no document part is opened).
    """
    url = metadata_url(dataset_url)
    fs, path = storage.filesystem(url)
    if not fs.exists(path):
        raise NoIndex(f"{dataset_url} has no index ({INDEX_DIR}/{METADATA_FILE}); run the index stage on it")
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        groups = _row_groups_holding(parquet, doc_id)
        entry = None
        for rg in groups:
            table = parquet.read_row_group(rg)
            hit = table.filter(pc.equal(table.column("id"), doc_id))
            if hit.num_rows:
                entry = hit.to_pylist()[0]
                break
        key_values = parquet.schema_arrow.metadata or {}
    if entry is None or not with_record or entry.get("shard") is None:
        return entry
    documents_url = _documents_url(dataset_url, key_values)
    part_url = storage.join(documents_url, f"{entry['shard']}.parquet")
    fs, path = storage.filesystem(part_url)
    with fs.open(path, "rb") as f:
        group = pq.ParquetFile(f).read_row_group(int(entry["row_group"]))
    record = group.slice(int(entry["row"]), 1).to_pylist()[0]
    if record.get("id") != doc_id:
        raise IndexLookupError(
            f"index of {dataset_url} is stale: {part_url} row group {entry['row_group']} row {entry['row']} "
            f"holds {record.get('id')!r}, not {doc_id!r}"
        )
    return {**record, **entry}


def query(
    dataset_url: str,
    where: str | None = None,
    columns: list[str] | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> pa.Table:
    """Index rows matching ``where``, a filter over the index columns such as
    ``source = 'code' and lang in ('en', 'fr')`` (the grammar of :mod:`tamis.index_filter`;
    None: every row)."""
    import duckdb  # only the query path needs it

    url = metadata_url(dataset_url)
    fs, path = storage.filesystem(url)
    if not fs.exists(path):
        raise NoIndex(f"{dataset_url} has no index ({INDEX_DIR}/{METADATA_FILE}); run the index stage on it")
    with fs.open(path, "rb") as f:
        index_columns = pq.read_schema(f).names
    unknown = [c for c in columns or [] if c not in index_columns]
    if unknown:
        raise QueryError(f"columns {unknown} are not in the index of {dataset_url}; it has {', '.join(index_columns)}")
    try:
        predicate = compile_filter(where, index_columns) if where is not None else None
    except FilterError as exc:
        raise QueryError(str(exc)) from None
    if "://" in url and not url.startswith("file://"):
        # Object stores go through this URL's own fsspec filesystem (its endpoint and
        # credentials), registered on a connection of its own.
        cursor = duckdb.connect()
        cursor.register_filesystem(fs)
        source = url
    else:
        cursor = _database().cursor()  # a cursor per call: the shared database is never used by two threads
        source = path
    select = ", ".join(_quote(c) for c in columns) if columns else "*"
    sql = f"SELECT {select} FROM read_parquet($path)"
    params: dict[str, Any] = {"path": source}
    if predicate is not None:
        sql += f" WHERE {predicate.sql}"
        params.update(predicate.params)
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    if offset:
        sql += f" OFFSET {int(offset)}"
    try:
        return cursor.sql(sql, params=params).to_arrow_table()
    except duckdb.Error as exc:
        raise QueryError(f"query {where!r} failed on {url}: {exc}") from exc
    finally:
        cursor.close()


@functools.lru_cache(maxsize=1)
def _database():
    """One in-memory DuckDB per process for local indexes: opening one costs ~60 ms, a query a few."""
    import duckdb

    return duckdb.connect()


def sequence(dataset_url: str, seq: int) -> np.ndarray:
    """Token ids of packed sequence ``seq`` (local datasets: the binary is memory-mapped)."""
    from tamis.export import TokenBinary

    binary = TokenBinary(storage.join(dataset_url, INDEX_DIR, BINARY_PREFIX))
    if not 0 <= seq < len(binary):
        raise IndexLookupError(f"sequence {seq} is out of range: {dataset_url} has {len(binary)} sequences")
    return np.array(binary[seq])


def document_tokens(dataset_url: str, doc_id: str) -> np.ndarray | None:
    """The tokens of ``doc_id`` as packed: read from ``tokens.bin`` when the document sits
    in one sequence, else (a document cut into pieces) from its record's ``input_ids``."""
    entry = get(dataset_url, doc_id, with_record=False)
    if entry is None or entry.get("seq") is None:
        return None
    if entry.get("n_pieces", 1) > 1:
        record = get(dataset_url, doc_id)
        return np.array(record["input_ids"]) if record and "input_ids" in record else None
    from tamis.export import TokenBinary

    binary = TokenBinary(storage.join(dataset_url, INDEX_DIR, BINARY_PREFIX))
    start = int(entry["seq_offset"])
    return np.array(binary[int(entry["seq"])][start : start + int(entry["token_count"])])


def _row_groups_holding(parquet: pq.ParquetFile, doc_id: str) -> list[int]:
    """Row groups whose id statistics admit ``doc_id`` (one, for a sorted index)."""
    meta = parquet.metadata
    column = parquet.schema_arrow.get_field_index("id")
    groups = []
    for rg in range(meta.num_row_groups):
        stats = meta.row_group(rg).column(column).statistics
        if stats is None or not stats.has_min_max or stats.min <= doc_id <= stats.max:
            groups.append(rg)
    return groups


def documents_url(dataset_url: str) -> str:
    """The dataset holding the full records of an index's documents."""
    fs, path = storage.filesystem(metadata_url(dataset_url))
    with fs.open(path, "rb") as f:
        return _documents_url(dataset_url, pq.ParquetFile(f).schema_arrow.metadata or {})


def _documents_url(dataset_url: str, key_values: dict[bytes, bytes]) -> str:
    # A sibling of the indexed dataset is found next to it even after the run folder moved.
    name = key_values.get(DOCUMENTS_NAME_KEY)
    if name:
        sibling = storage.join(dataset_url.rstrip("/").rsplit("/", 1)[0], name.decode())
        if storage.exists(sibling):
            return sibling
    stored = key_values.get(DOCUMENTS_KEY)
    if not stored:
        raise IndexLookupError(f"index of {dataset_url} does not name its document dataset")
    return stored.decode()


def _quote(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


# --------------------------------------------------------------------------- commands


def add_lookup_commands(sub: argparse._SubParsersAction) -> None:
    """``tamis get`` and ``tamis query``, on the index a dataset's index stage wrote."""
    get_cmd = sub.add_parser("get", help="print one document of an indexed dataset by id (JSON)")
    get_cmd.add_argument("dataset", help="URL of the dataset the index stage wrote (holds _index/)")
    get_cmd.add_argument("id", help="the document id, <source>/<id>")
    get_cmd.add_argument("--index-only", action="store_true", help="only the index entry; no document part is read")
    get_cmd.set_defaults(func=_cmd_get)

    query_cmd = sub.add_parser("query", help="print the index rows matching a filter (JSON Lines)")
    query_cmd.add_argument("dataset", help="URL of the dataset the index stage wrote (holds _index/)")
    query_cmd.add_argument(
        "--where",
        help="filter over the index columns: comparisons, IN, BETWEEN, LIKE, IS NULL, "
        "AND, OR, NOT, e.g. \"source = 'code' and token_count > 500\" (default: every row)",
    )
    query_cmd.add_argument("--columns", help="comma-separated index columns to print (default: all)")
    query_cmd.add_argument("--limit", type=int, help="at most this many rows")
    query_cmd.set_defaults(func=_cmd_query)


def _cmd_get(args: argparse.Namespace) -> int:
    record = get(args.dataset, args.id, with_record=not args.index_only)
    if record is None:
        raise IndexLookupError(f"no document {args.id!r} in the index of {args.dataset}")
    print(json.dumps(record, ensure_ascii=False, default=str))
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    table = query(args.dataset, args.where, columns=columns, limit=args.limit)
    out = sys.stdout
    for batch in table.to_batches():
        for row in batch.to_pylist():
            out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return 0
