"""Ingest: raw source files (jsonl, jsonl.gz, parquet, plain-text dirs) into records.

Sources are laid out by date partition (``<source path>/date=YYYY-MM-DD/<files>``);
files directly under the source path belong to the run's date. Each input file is one
shard. Ids are stable: ``<source>/<record id>`` when the source has an id field, else
``<source>/<hash of file path and record ordinal>``.

JSON Lines are parsed with Arrow's reader block by block; a block that Arrow rejects
(a malformed line, invalid UTF-8, a wrongly typed field) is re-read line by line so
that only the bad lines are quarantined, each with its file, line number and reason.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
from collections import Counter
from typing import Iterator

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq
from pydantic import Field

from tamis import storage
from tamis.stage import QUARANTINE_SCHEMA, BatchResult, CorpusContext, InputShard, Stage, StageParams, split_by_reason

RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("date", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
    ]
)
_DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".jsonl.gz": "jsonl.gz", ".json.gz": "jsonl.gz", ".parquet": "parquet", ".txt": "text"}
SAMPLE_CHARS = 200


class IngestParams(StageParams):
    max_doc_bytes: int = Field(default=10_000_000, gt=0)
    block_bytes: int = Field(default=8 << 20, gt=0)
    sources: list[str] | None = None  # None: every source of the pipeline
    date: str | None = None  # only this date partition (nightly ingest); None: all of them
    undated: str = "undated"  # date recorded for files outside any date= partition
    sample_fraction: float = Field(default=1.0, gt=0.0, le=1.0)


class Ingest(Stage):
    type_name = "ingest"
    Params = IngestParams
    reads_sources = True
    default_gate = {"required_columns": ["id", "source", "date", "text"]}

    def corpus_params(self, corpus: CorpusContext) -> dict:
        return {"date": corpus.date}  # only the day's partition of each source

    def check_ready(self) -> None:
        sources = self.context.get("sources", {})
        unknown = sorted(set(self.params.sources or []) - set(sources))
        if unknown:
            raise ValueError(f"ingest: unknown sources {unknown}; configured: {sorted(sources)}")
        for name in self._selected():
            if not storage.exists(sources[name].path):
                raise FileNotFoundError(f"ingest: source {name!r}: path {sources[name].path} does not exist")

    def _selected(self) -> list[str]:
        return sorted(self.params.sources or self.context.get("sources", {}))

    def input_shards(self, input_url: str | None) -> list[InputShard]:
        shards = []
        for source_name in self._selected():
            source = self.context["sources"][source_name]
            fs, root = storage.filesystem(source.path)
            protocol = source.path.split("://", 1)[0] + "://" if "://" in source.path else ""
            by_date: dict[str, list[tuple[str, int]]] = {}
            for path, info in sorted(fs.find(root, detail=True).items()):
                if info["type"] != "file":
                    continue
                rel = path[len(root.rstrip("/")) + 1 :]
                parts = rel.split("/")
                if any(p.startswith((".", "_")) for p in parts):
                    continue
                match = _DATE_DIR.match(parts[0]) if len(parts) > 1 else None
                date = match.group(1) if match else self.params.undated
                if self.params.date and date != self.params.date:
                    continue
                if _file_format(path, source.format) is None:
                    continue
                by_date.setdefault(date, []).append((protocol + path, info["size"]))
            for date, files in sorted(by_date.items()):
                for k, (url, size) in enumerate(files):
                    rel = url[len(protocol + root.rstrip("/")) + 1 :]
                    shards.append(
                        InputShard(
                            name=f"{date}_{source_name}_{k:05d}",
                            url=url,
                            size_bytes=size,
                            attrs=(("source", source_name), ("date", date), ("relpath", rel)),
                        )
                    )
        return shards

    def run_shard(self, shard: InputShard) -> Iterator[BatchResult]:
        source = self.context["sources"][shard.attr("source")]
        fmt = _file_format(shard.url, source.format)
        reader = _FileReader(shard, source, self.params)
        if shard.size_bytes == 0:
            yield reader.whole_file_quarantined("empty_file", "the file has no bytes")
            return
        if fmt == "parquet":
            yield from reader.parquet()
        elif fmt == "text":
            yield reader.text_file()
        else:
            yield from reader.jsonl(compressed=fmt == "jsonl.gz")


def _file_format(path: str, configured: str) -> str | None:
    if configured != "auto":
        return configured
    name = path.rsplit("/", 1)[-1].lower()
    for suffix, fmt in sorted(_FORMATS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return fmt
    return None


class _FileReader:
    def __init__(self, shard: InputShard, source, params: IngestParams):
        self.shard = shard
        self.source = source
        self.params = params
        self.source_name = shard.attr("source")
        self.date = shard.attr("date")
        self.relpath = shard.attr("relpath")
        self.ordinal = 0  # records seen so far in this file: the basis of generated ids
        fields = [(source.text_field, pa.string())]
        if source.id_field:
            fields.append((source.id_field, pa.string()))
        if source.url_field:
            fields.append((source.url_field, pa.string()))
        self.json_options = pj.ParseOptions(explicit_schema=pa.schema(fields), unexpected_field_behavior="ignore")

    # -- formats -------------------------------------------------------------------------

    def jsonl(self, compressed: bool) -> Iterator[BatchResult]:
        fs, path = storage.filesystem(self.shard.url)
        with fs.open(path, "rb") as raw:
            stream = gzip.GzipFile(fileobj=raw) if compressed else raw
            first_line = 1
            try:
                for block in _line_blocks(stream, self.params.block_bytes):
                    yield self._json_block(block, first_line)
                    first_line += block.count(b"\n")
            except (OSError, EOFError) as exc:  # truncated or corrupt gzip stream
                yield self.whole_file_quarantined("unreadable_file", f"{type(exc).__name__}: {exc}", line=first_line)

    def _json_block(self, block: bytes, first_line: int) -> BatchResult:
        try:
            table = pj.read_json(
                io.BytesIO(block),
                parse_options=self.json_options,
                read_options=pj.ReadOptions(block_size=max(len(block) + 1, 1 << 20), use_threads=False),
            )
        except (pa.ArrowInvalid, UnicodeDecodeError):
            return self._json_lines_slowly(block, first_line)
        return self._records(table, lines=None)

    def _json_lines_slowly(self, block: bytes, first_line: int) -> BatchResult:
        text_field, id_field, url_field = self.source.text_field, self.source.id_field, self.source.url_field
        rows: dict[str, list] = {text_field: [], "_id": [], "_url": [], "_line": []}
        bad: list[tuple[int, str, str, bytes]] = []
        for offset, line in enumerate(block.split(b"\n")):
            if not line.strip():
                continue
            number = first_line + offset
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad.append((number, "invalid_utf8", f"byte {exc.start}: {exc.reason}", line))
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                bad.append((number, "malformed_json", str(exc), line))
                continue
            if not isinstance(record, dict):
                bad.append((number, "not_an_object", f"a JSON {type(record).__name__}, not an object", line))
                continue
            text = record.get(text_field)
            if text is not None and not isinstance(text, str):
                bad.append((number, "bad_field_type", f"field {text_field!r} is a {type(text).__name__}, not a string", line))
                continue
            rows[text_field].append(text)
            rows["_id"].append(None if not id_field or record.get(id_field) is None else str(record[id_field]))
            rows["_url"].append(None if not url_field or record.get(url_field) is None else str(record[url_field]))
            rows["_line"].append(number)
        columns = {text_field: pa.array(rows[text_field], pa.string())}
        if id_field:
            columns[id_field] = pa.array(rows["_id"], pa.string())
        if url_field:
            columns[url_field] = pa.array(rows["_url"], pa.string())
        result = self._records(pa.table(columns), lines=rows["_line"])
        if bad:
            result.quarantined = pa.concat_tables([result.quarantined, self._quarantine_rows(bad)])
        return result

    def parquet(self) -> Iterator[BatchResult]:
        fs, path = storage.filesystem(self.shard.url)
        with fs.open(path, "rb") as f:
            try:
                parquet = pq.ParquetFile(f)
            except (pa.ArrowInvalid, OSError) as exc:
                yield self.whole_file_quarantined("unreadable_parquet", str(exc))
                return
            schema = parquet.schema_arrow
            problem = self._parquet_schema_problem(schema)
            if problem:
                yield self.whole_file_quarantined("schema_mismatch", problem)
                return
            columns = [c for c in (self.source.text_field, self.source.id_field, self.source.url_field) if c]
            for batch in parquet.iter_batches(batch_size=4096, columns=columns):
                table = pa.Table.from_batches([batch])
                yield self._records(table.cast(pa.schema([(c, pa.string()) for c in columns])), lines=None)

    def _parquet_schema_problem(self, schema: pa.Schema) -> str | None:
        text_field = self.source.text_field
        if text_field not in schema.names:
            return f"missing column {text_field!r} (columns: {', '.join(schema.names)})"
        if not pa.types.is_string(schema.field(text_field).type) and not pa.types.is_large_string(schema.field(text_field).type):
            return f"column {text_field!r} is {schema.field(text_field).type}, not a string"
        for optional in (self.source.id_field, self.source.url_field):
            if optional and optional not in schema.names:
                return f"missing column {optional!r}"
        return None

    def text_file(self) -> BatchResult:
        data = storage.read_bytes(self.shard.url)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return self.whole_file_quarantined("invalid_utf8", f"byte {exc.start}: {exc.reason}")
        table = pa.table({self.source.text_field: pa.array([text], pa.string())})
        result = self._records(table, lines=None, ids=[f"{self.source_name}/{self.relpath}"])
        return result

    # -- records -------------------------------------------------------------------------

    def _records(self, table: pa.Table, lines: list[int] | None, ids: list[str] | None = None) -> BatchResult:
        n = table.num_rows
        text = table.column(self.source.text_field)
        if ids is None:
            ids = self._ids(table, n)
        url = table.column(self.source.url_field) if self.source.url_field else pa.nulls(n, pa.string())
        records = pa.table(
            {
                "id": pa.array(ids, pa.string()),
                "source": pa.array([self.source_name] * n, pa.string()),
                "date": pa.array([self.date] * n, pa.string()),
                "url": url,
                "text": text,
            },
            schema=RECORD_SCHEMA,
        )
        self.ordinal += n
        missing = pc.is_null(text)
        too_large = pc.greater(pc.binary_length(pc.fill_null(text, "")), self.params.max_doc_bytes)
        to_quarantine = pc.or_(missing, too_large)
        quarantined = self._quarantine_records(records.filter(to_quarantine), pc.filter(missing, to_quarantine), lines, to_quarantine)
        records = records.filter(pc.invert(to_quarantine))
        reasons = pc.if_else(pc.equal(pc.utf8_trim_whitespace(records.column("text")), ""), "empty_text", pa.scalar(None, pa.string()))
        if self.params.sample_fraction < 1.0:
            reasons = pc.coalesce(reasons, _sampled_out(records.column("id"), self.params.sample_fraction))
        kept, dropped = split_by_reason(records, reasons)
        return BatchResult(kept=kept, dropped=dropped, quarantined=quarantined, metrics=Counter({"ingest.bytes": int(pc.sum(pc.binary_length(kept.column("text"))).as_py() or 0)}))

    def _ids(self, table: pa.Table, n: int) -> list[str]:
        id_field = self.source.id_field
        given = table.column(id_field).to_pylist() if id_field else [None] * n
        prefix = f"{self.source_name}/"
        ids = []
        for k, value in enumerate(given):
            if value is None:
                key = f"{self.relpath}\x00{self.ordinal + k}".encode()
                value = hashlib.blake2b(key, digest_size=8).hexdigest()
            ids.append(prefix + value)
        return ids

    def _quarantine_records(self, records: pa.Table, missing: pa.Array, lines, mask) -> pa.Table:
        if records.num_rows == 0:
            return QUARANTINE_SCHEMA.empty_table()
        line_numbers = pc.filter(pa.array(lines, pa.int64()), mask) if lines is not None else pa.nulls(records.num_rows, pa.int64())
        texts = records.column("text").to_pylist()
        missing_flags = missing.to_pylist()
        reasons, details, samples = [], [], []
        for text, is_missing in zip(texts, missing_flags):
            if is_missing:
                reasons.append("missing_text_field")
                details.append(f"no string field {self.source.text_field!r}")
                samples.append(None)
            else:
                reasons.append("doc_too_large")
                details.append(f"{len(text.encode())} bytes > max_doc_bytes {self.params.max_doc_bytes}")
                samples.append(text[:SAMPLE_CHARS])
        return pa.table(
            {
                "source_file": pa.array([self.shard.url] * records.num_rows, pa.string()),
                "line": line_numbers,
                "id": records.column("id"),
                "reason": pa.array(reasons, pa.string()),
                "detail": pa.array(details, pa.string()),
                "sample": pa.array(samples, pa.string()),
            },
            schema=QUARANTINE_SCHEMA,
        )

    def _quarantine_rows(self, bad: list[tuple[int, str, str, bytes]]) -> pa.Table:
        return pa.table(
            {
                "source_file": [self.shard.url] * len(bad),
                "line": [b[0] for b in bad],
                "id": [None] * len(bad),
                "reason": [b[1] for b in bad],
                "detail": [b[2] for b in bad],
                "sample": [b[3][:SAMPLE_CHARS].decode("utf-8", "replace") for b in bad],
            },
            schema=QUARANTINE_SCHEMA,
        )

    def whole_file_quarantined(self, reason: str, detail: str, line: int | None = None) -> BatchResult:
        """A file that yields no records at all still counts: one unit in, one quarantined."""
        quarantined = pa.table(
            {
                "source_file": [self.shard.url],
                "line": [line],
                "id": [None],
                "reason": [reason],
                "detail": [detail],
                "sample": [None],
            },
            schema=QUARANTINE_SCHEMA,
        )
        return BatchResult(kept=RECORD_SCHEMA.empty_table(), quarantined=quarantined)


def _line_blocks(stream, block_bytes: int) -> Iterator[bytes]:
    """Yield blocks of whole lines of about ``block_bytes`` (a longer line is one block)."""
    pending = b""
    while True:
        chunk = stream.read(block_bytes)
        if not chunk:
            break
        pending += chunk
        cut = pending.rfind(b"\n")
        if cut < 0:
            continue
        yield pending[: cut + 1]
        pending = pending[cut + 1 :]
    if pending:
        yield pending + b"\n"


def _sampled_out(ids: pa.ChunkedArray, fraction: float) -> pa.Array:
    """Deterministic sampling by id: the same fraction keeps the same documents on every run."""
    threshold = int(fraction * 2**32)
    keep = [int.from_bytes(hashlib.blake2b(i.encode(), digest_size=4).digest(), "big") < threshold for i in ids.to_pylist()]
    return pa.array([None if k else "sampled_out" for k in keep], pa.string())
