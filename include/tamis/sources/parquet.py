"""Parquet files, row group by row group.

Damage is isolated as narrowly as the format allows: a value that is not valid UTF-8 rejects
its record; a row group that cannot be decoded (a corrupt page) rejects that row group and
the others are read; a footer that cannot be read, or a column that cannot hold text,
rejects the file.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tamis.sources.chunk import SAMPLE_CHARS, SOURCE_RECORD_SCHEMA, Chunk, Fields, open_target, reject, rejected

BATCH_ROWS = 4096
# Errors that mean "these bytes are not valid Parquet"; a lost connection is not one of them.
_DAMAGE = (OSError, pa.ArrowException)
_NOT_DAMAGE = (ConnectionError, TimeoutError)


def read_parquet(url: str, fields: Fields, fs=None) -> Iterator[Chunk]:
    fs, path = open_target(url, fs)
    with fs.open(path, "rb") as f:
        try:
            parquet = pq.ParquetFile(f, page_checksum_verification=True)
        except _NOT_DAMAGE:
            raise
        except _DAMAGE as exc:
            yield reject("unreadable_parquet", str(exc))
            return
        problem = schema_problem(parquet.schema_arrow, fields)
        if problem:
            yield reject("schema_mismatch", problem)
            return
        columns = list(dict.fromkeys(c for c in fields if c))
        metadata = parquet.metadata
        first = 0  # records before this row group
        for group in range(metadata.num_row_groups):
            rows = metadata.row_group(group).num_rows
            batches = parquet.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=columns)
            read = 0
            while True:
                try:
                    batch = next(batches, None)
                except _NOT_DAMAGE:
                    raise
                except _DAMAGE as exc:
                    where = f"row group {group} (records {first + read + 1} to {first + rows})"
                    yield reject("unreadable_row_group", f"{where}: {type(exc).__name__}: {exc}", line=first + read + 1)
                    break
                if batch is None:
                    break
                yield _chunk(batch, fields, first + read)
                read += batch.num_rows
            first += rows


def schema_problem(schema: pa.Schema, fields: Fields) -> str | None:
    text_field = fields.text
    if text_field not in schema.names:
        return f"missing column {text_field!r} (columns: {', '.join(schema.names)})"
    if not _is_text(schema.field(text_field).type):
        return f"column {text_field!r} is {schema.field(text_field).type}, not a string"
    for name in (fields.id, fields.url):
        if not name:
            continue
        if name not in schema.names:
            return f"missing column {name!r}"
        kind = schema.field(name).type
        if not _castable_to_string(kind):
            return f"column {name!r} is {kind}, not a string"
    return None


def _is_text(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return any(
        check(kind)
        for check in (
            pa.types.is_string,
            pa.types.is_large_string,
            pa.types.is_binary,
            pa.types.is_large_binary,
            pa.types.is_string_view,
            pa.types.is_binary_view,
        )
    )


def _castable_to_string(kind: pa.DataType) -> bool:
    """Numbers, dates and the like make ids and URLs; lists and structs do not."""
    try:
        pa.array([], kind).cast(pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return False
    return True


def _chunk(batch: pa.RecordBatch, fields: Fields, first: int) -> Chunk:
    """Records ``first``.. of the file; a record with bytes that are not valid UTF-8 is rejected."""
    n = batch.num_rows
    columns: dict[str, pa.Array] = {}
    bad = np.zeros(n, dtype=bool)
    reasons: dict[int, str] = {}
    for role, name in zip(("text", "id", "url"), fields):
        if not name:
            columns[role] = pa.nulls(n, pa.string())
            continue
        values, invalid = _as_strings(batch.column(name))
        for row in invalid:
            reasons.setdefault(row, f"column {name!r} is not valid UTF-8")
        bad[invalid] = True
        columns[role] = values
    ordinals = np.arange(first, first + n)
    records = pa.table(
        [columns["text"], columns["id"], columns["url"], pa.array(ordinals + 1), pa.array(ordinals)],
        schema=SOURCE_RECORD_SCHEMA,
    )
    if not bad.any():
        return Chunk(records=records)
    good_rows = records.filter(pa.array(~bad))
    rows = np.flatnonzero(bad).tolist()
    ids, texts = columns["id"].to_pylist(), columns["text"].to_pylist()
    entries = [
        (first + row + 1, ids[row], "invalid_utf8", reasons[row], texts[row] and texts[row][:SAMPLE_CHARS])
        for row in rows
    ]
    return Chunk(records=good_rows, rejected=rejected(entries))


def _as_strings(column: pa.Array) -> tuple[pa.Array, list[int]]:
    """The column as strings, and the rows whose bytes are not valid UTF-8 (nulled). A Parquet
    string column is not checked when it is read, so it is checked here."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    try:
        strings = column.cast(pa.string())
        strings.validate(full=True)
        return strings, []
    except pa.ArrowInvalid:
        pass
    raw = column.cast(
        pa.large_binary()
        if pa.types.is_large_string(column.type) or pa.types.is_large_binary(column.type)
        else pa.binary()
    )
    values: list[str | None] = []
    invalid: list[int] = []
    for row, value in enumerate(raw.to_pylist()):
        try:
            values.append(None if value is None else value.decode("utf-8"))
        except UnicodeDecodeError:
            values.append(None)
            invalid.append(row)
    return pa.array(values, pa.string()), invalid
