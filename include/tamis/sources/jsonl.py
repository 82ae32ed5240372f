"""JSON Lines files, plain or gzipped.

The stream is cut into blocks of whole lines; Arrow's JSON reader parses a good block in
one call. A block that is not valid UTF-8, that Arrow rejects, or whose rows do not match
its lines one to one (blank lines, two objects on a line) is re-read line by line, so that
only its bad lines are rejected, each with its line number and reason. A line longer than
``max_doc_bytes`` is never held whole: it is rejected as ``doc_too_large`` while it streams
past, so memory stays bounded whatever the length of a line.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pj

from tamis.sources.chunk import SOURCE_RECORD_SCHEMA, Chunk, Fields, open_target, reject, rejected, sample_of

# Enough of a long line to find an id written before the text.
HEAD_BYTES = 64 << 10
# What a damaged gzip stream raises (a lost connection is not one of them: it fails the shard).
_DAMAGED_GZIP = (gzip.BadGzipFile, EOFError, zlib.error)


def read_jsonl(
    url: str, fields: Fields, compressed: bool, block_bytes: int, max_doc_bytes: int, fs=None
) -> Iterator[Chunk]:
    fs, path = open_target(url, fs)
    with fs.open(path, "rb") as raw:
        stream = gzip.GzipFile(fileobj=raw) if compressed else raw
        blocks = LineBlocks(stream, block_bytes, max_doc_bytes)
        parser = _Parser(fields, max_doc_bytes)
        try:
            for piece in blocks:
                yield parser.long_line(piece) if isinstance(piece, LongLine) else parser.block(piece)
        except _DAMAGED_GZIP as exc:
            yield reject("unreadable_file", f"{type(exc).__name__}: {exc}", line=blocks.line)


@dataclass
class Block:
    first_line: int
    lines: int
    data: bytes  # whole lines, the last one ending in a newline


@dataclass
class LongLine:
    line: int
    size: int  # bytes, without the newline
    head: bytes  # its first HEAD_BYTES


class LineBlocks:
    """Cuts a byte stream into :class:`Block` s of about ``block_bytes`` and a :class:`LongLine`
    for every line longer than ``max_line_bytes``, in stream order. Holds at most one block
    and ``max_line_bytes`` of an unfinished line."""

    def __init__(self, stream: IO[bytes] | gzip.GzipFile, block_bytes: int, max_line_bytes: int):
        self.stream = stream
        self.block_bytes = block_bytes
        self.max_line_bytes = max_line_bytes
        self.line = 1  # the first line not yet handed out

    def __iter__(self) -> Iterator[Block | LongLine]:
        partial: list[bytes] = []  # the unfinished line
        partial_size = 0
        skipping: LongLine | None = None
        while chunk := self.stream.read(self.block_bytes):
            start = 0
            if skipping is not None:
                end = chunk.find(b"\n")
                if end < 0:
                    skipping.size += len(chunk)
                    continue
                skipping.size += end
                yield self._long(skipping)
                skipping, start = None, end + 1
            last = chunk.rfind(b"\n", start)
            if last < 0:
                partial.append(chunk[start:])
                partial_size += len(chunk) - start
            else:
                block = b"".join([*partial, memoryview(chunk)[start : last + 1]])  # one copy, not two
                partial, partial_size = [chunk[last + 1 :]], len(chunk) - last - 1
                yield from self._split(block)
            if partial_size > self.max_line_bytes:
                skipping = LongLine(self.line, partial_size, b"".join(partial)[:HEAD_BYTES])
                partial, partial_size = [], 0
        if skipping is not None:
            yield self._long(skipping)
        elif partial_size:
            yield from self._split(b"".join(partial) + b"\n")

    def _long(self, line: LongLine) -> LongLine:
        self.line += 1
        return line

    def _block(self, data: bytes, lines: int) -> Block:
        block = Block(self.line, lines, data)
        self.line += lines
        return block

    def _split(self, block: bytes) -> Iterator[Block | LongLine]:
        """The block, or its pieces around the lines longer than the limit."""
        if len(block) <= self.max_line_bytes + 1:
            yield self._block(block, block.count(b"\n"))
            return
        ends = np.flatnonzero(np.frombuffer(block, np.uint8) == ord("\n"))
        starts = np.concatenate(([0], ends[:-1] + 1))
        done = 0  # lines of the block handed out so far
        for k in np.flatnonzero(ends - starts > self.max_line_bytes).tolist():
            if k > done:
                yield self._block(block[starts[done] : starts[k]], k - done)
            yield self._long(LongLine(self.line, int(ends[k] - starts[k]), block[starts[k] : starts[k] + HEAD_BYTES]))
            done = k + 1
        if done < len(ends):
            yield self._block(block[starts[done] :], len(ends) - done)


class _Parser:
    def __init__(self, fields: Fields, max_doc_bytes: int):
        self.fields = fields
        self.max_doc_bytes = max_doc_bytes
        self.ordinal = 0  # records seen so far in this file
        schema = pa.schema([(name, pa.string()) for name in dict.fromkeys(f for f in fields if f)])
        self.options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")

    def block(self, block: Block) -> Chunk:
        data = block.data
        table = None
        if is_utf8(data):  # Arrow's reader would pass bad bytes through into the strings
            try:
                table = pj.read_json(
                    io.BytesIO(data),
                    parse_options=self.options,
                    read_options=pj.ReadOptions(block_size=max(len(data) + 1, 1 << 20), use_threads=False),
                )
            except pa.ArrowException:
                table = None
        lines = block.lines
        if table is None or table.num_rows != lines:
            return self._line_by_line(block)
        text, ids, urls = (table.column(name) if name else None for name in self.fields)
        first = block.first_line
        return Chunk(records=self._records(text, ids, urls, pa.array(np.arange(first, first + lines))))

    def long_line(self, line: LongLine) -> Chunk:
        self.ordinal += 1  # an unread record still takes its place, so later generated ids do not move
        return reject(
            "doc_too_large",
            f"a line of {line.size} bytes > max_doc_bytes {self.max_doc_bytes}",
            line=line.line,
            record_id=given_id(line.head, self.fields.id),
            sample=sample_of(line.head),
        )

    def _line_by_line(self, block: Block) -> Chunk:
        text_field, id_field, url_field = self.fields
        texts, ids, urls, lines = [], [], [], []
        bad: list[tuple] = []
        for offset, line in enumerate(block.data.split(b"\n")):
            if not line.strip():
                continue
            number = block.first_line + offset
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad.append((number, None, "invalid_utf8", f"byte {exc.start}: {exc.reason}", sample_of(line)))
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                bad.append((number, None, "malformed_json", str(exc), sample_of(line)))
                continue
            if not isinstance(record, dict):
                bad.append(
                    (number, None, "not_an_object", f"a JSON {type(record).__name__}, not an object", sample_of(line))
                )
                continue
            text = record.get(text_field)
            if text is not None and not isinstance(text, str):
                detail = f"field {text_field!r} is a {type(text).__name__}, not a string"
                bad.append((number, None, "bad_field_type", detail, sample_of(line)))
                continue
            texts.append(text)
            ids.append(_as_str(record.get(id_field)) if id_field else None)
            urls.append(_as_str(record.get(url_field)) if url_field else None)
            lines.append(number)
        records = self._records(
            pa.array(texts, pa.string()),
            pa.array(ids, pa.string()),
            pa.array(urls, pa.string()),
            pa.array(lines, pa.int64()),
        )
        return Chunk(records=records, rejected=rejected(bad))

    def _records(self, text, ids, urls, lines) -> pa.Table:
        n = len(text)
        ordinals = pa.array(np.arange(self.ordinal, self.ordinal + n))
        self.ordinal += n
        nulls = pa.nulls(n, pa.string())
        return pa.table(
            [text, nulls if ids is None else ids, nulls if urls is None else urls, lines, ordinals],
            schema=SOURCE_RECORD_SCHEMA,
        )


def is_utf8(data: bytes) -> bool:
    """Arrow's vectorised UTF-8 check, over the bytes in place."""
    offsets = pa.array([0, len(data)], pa.int64()).buffers()[1]
    try:
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)]).validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def given_id(head: bytes, id_field: str | None) -> str | None:
    """The id of a record whose line was cut after ``head``, when it is written before the cut.
    Only top-level members are read, each parsed whole, so a nested key of that name never counts."""
    if not id_field:
        return None
    text = head.decode("utf-8", "replace")
    decoder = json.JSONDecoder()
    whitespace = " \t\r\n"
    pos = len(text) - len(text.lstrip(whitespace))
    if not text.startswith("{", pos):
        return None
    pos += 1
    try:
        while True:
            pos = _skip(text, pos, whitespace)
            key, pos = decoder.raw_decode(text, pos)
            pos = _skip(text, pos, whitespace)
            if not isinstance(key, str) or not text.startswith(":", pos):
                return None
            value, pos = decoder.raw_decode(text, _skip(text, pos + 1, whitespace))
            if key == id_field:
                return _as_str(value)
            pos = _skip(text, pos, whitespace)
            if not text.startswith(",", pos):
                return None
            pos += 1
    except ValueError:  # the cut, or a malformed line
        return None


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def _as_str(value) -> str | None:
    return None if value is None else value if isinstance(value, str) else str(value)
