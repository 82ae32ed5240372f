"""Plain-text files: a whole file is one record, its id the file's path in the source."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from tamis.sources.chunk import SAMPLE_CHARS, SOURCE_RECORD_SCHEMA, Chunk, open_target, reject, sample_of


def read_text(url: str, size: int, record_id: str, max_doc_bytes: int, fs=None) -> Iterator[Chunk]:
    fs, path = open_target(url, fs)
    if size > max_doc_bytes:  # judged by its size, so a huge file is never loaded
        with fs.open(path, "rb") as f:
            head = f.read(SAMPLE_CHARS * 4)
        yield reject(
            "doc_too_large",
            f"{size} bytes > max_doc_bytes {max_doc_bytes}",
            record_id=record_id,
            sample=sample_of(head),
        )
        return
    with fs.open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield reject("invalid_utf8", f"byte {exc.start}: {exc.reason}")
        return
    yield Chunk(
        records=pa.table(
            [
                pa.array([text]),
                pa.array([record_id]),
                pa.nulls(1, pa.string()),
                pa.nulls(1, pa.int64()),
                pa.array([0], pa.int64()),
            ],
            schema=SOURCE_RECORD_SCHEMA,
        )
    )
