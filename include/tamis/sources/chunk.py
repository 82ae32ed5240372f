"""What every reader yields: the records of one file, in file order, and the input it rejected."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import fsspec
import pyarrow as pa

from tamis import storage

# One row per record. ``line``: the line of a text file, or the 1-based record number of a
# Parquet file. ``ordinal``: the record's place in its file, the basis of generated ids.
SOURCE_RECORD_SCHEMA = pa.schema(
    [
        ("text", pa.string()),  # null: the record has no text field
        ("id", pa.string()),  # null: the record has no id
        ("url", pa.string()),
        ("line", pa.int64()),
        ("ordinal", pa.int64()),
    ]
)
# Input that could not become a record (a malformed line, a damaged row group, a whole
# file), with why. ``id`` is the record's own id when it could still be read.
REJECTED_SCHEMA = pa.schema(
    [
        ("line", pa.int64()),
        ("id", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("sample", pa.string()),
    ]
)
SAMPLE_CHARS = 200


class Fields(NamedTuple):
    """The source's field names for the text, the record id and the URL."""

    text: str
    id: str | None = None
    url: str | None = None


@dataclass
class Chunk:
    records: pa.Table = field(default_factory=SOURCE_RECORD_SCHEMA.empty_table)
    rejected: pa.Table = field(default_factory=REJECTED_SCHEMA.empty_table)
    metrics: Counter = field(default_factory=Counter)  # the reader's own counts (records it passed over)


def rejected(rows: Sequence[tuple[int | None, str | None, str, str, str | None]]) -> pa.Table:
    """Rejected input from (line, id, reason, detail, sample) tuples."""
    columns = list(zip(*rows)) or [()] * len(REJECTED_SCHEMA)
    return pa.table([pa.array(c, type=f.type) for c, f in zip(columns, REJECTED_SCHEMA)], schema=REJECTED_SCHEMA)


def reject(
    reason: str, detail: str, line: int | None = None, record_id: str | None = None, sample: str | None = None
) -> Chunk:
    """One entry of rejected input: a line, a row group, a whole file or the rest of one."""
    return Chunk(rejected=rejected([(line, record_id, reason, detail, sample)]))


def open_target(url: str, fs: fsspec.AbstractFileSystem | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of ``url``: through ``fs`` when the source brings its own (an
    object store reached with the source's credentials), else through the store's settings."""
    if fs is None:
        return storage.filesystem(url)
    return fs, fs._strip_protocol(url)


def sample_of(data: bytes) -> str:
    return data[: SAMPLE_CHARS * 4].decode("utf-8", "replace")[:SAMPLE_CHARS]
