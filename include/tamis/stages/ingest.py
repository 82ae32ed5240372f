"""Ingest: raw source files (jsonl, jsonl.gz, parquet, plain-text dirs, WARC) into records.

A source is a local or NFS folder, an ``s3://`` prefix, a Git repository at a revision or
files over HTTP(S) with their checksums (:mod:`tamis.sources.location`); each shard names its
file by a lineage URL (a Git file's names the commit, an HTTP file's its sha256), and a file
whose bytes cannot be used (a checksum that does not match) is quarantined with its reason.
Sources are laid out by date partition (``<source path>/date=YYYY-MM-DD/<files>``);
files outside any ``date=`` folder get the date named by ``undated``. Each input file is
one shard. Ids are stable: ``<source>/<record id>`` when the source has an id field, else
``<source>/<hash of file path and record ordinal>``; a text file's id is
``<source>/<its path in the source>``.

The readers in :mod:`tamis.sources` read the files and reject bad input (a malformed line,
invalid UTF-8, a line longer than ``max_doc_bytes``, a damaged row group or file) with its
line and reason; this stage turns what they read into records and quarantines the rejects.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from tamis.sources import Chunk, Fields, SkippedEntry, SourceFile, read_jsonl, read_parquet, read_text, reject
from tamis.sources.chunk import SAMPLE_CHARS
from tamis.sources.location import RejectedFile, SourceLocation, location
from tamis.sources.warc import WARC_COLUMNS, read_warc
from tamis.stage import QUARANTINE_SCHEMA, BatchResult, CorpusContext, InputShard, Stage, StageParams, split_by_reason

RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("date", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
        *WARC_COLUMNS,  # a web archive's fetch date and content type; null for other sources
    ]
)


class IngestParams(StageParams):
    # A larger document, or a JSON line longer than this, is quarantined; a long line is
    # skipped while it streams in, never held whole.
    max_doc_bytes: int = Field(default=10_000_000, gt=0)
    block_bytes: int = Field(default=8 << 20, gt=0)
    sources: list[str] | None = None  # None: every source of the pipeline
    date: str | None = None  # only this date partition (nightly ingest); None: all of them
    # Date recorded for files outside any date= partition; it names output parts, so no '/'.
    undated: str = Field(default="undated", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    sample_fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    # Main-text extraction of WARC sources' HTML (benchmarks/html_extraction.py).
    html_extractor: Literal["resiliparse", "trafilatura"] = "resiliparse"


class Ingest(Stage):
    type_name = "ingest"
    Params = IngestParams
    params: IngestParams
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
            try:
                location(sources[name]).check_ready()
            except FileNotFoundError as exc:
                raise FileNotFoundError(f"ingest: source {name!r}: {exc}") from None

    def _selected(self) -> list[str]:
        return sorted(self.params.sources or self.context.get("sources", {}))

    def _location(self, source_name: str) -> SourceLocation:
        """One location per source and process: a Git source's revision is resolved once."""
        locations = self.__dict__.setdefault("_locations", {})
        if source_name not in locations:
            locations[source_name] = location(self.context["sources"][source_name])
        return locations[source_name]

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_locations"}

    def input_shards(self, input_url: str | None) -> list[InputShard]:
        """One shard per file; per date, one more for the source's entries that cannot be
        read, so that each is counted (quarantined with its reason)."""
        shards = []
        for source_name in self._selected():
            source = self.context["sources"][source_name]
            try:
                listing = self._location(source_name).list(self.params.undated, self.params.date)
            except (OSError, LookupError) as exc:
                raise type(exc)(f"ingest: source {source_name!r} ({source.location}): {exc}") from None
            files: dict[str, list[SourceFile]] = {}
            skipped: dict[str, list[SkippedEntry]] = {}
            for f in listing.files:
                files.setdefault(f.date, []).append(f)
            for entry in listing.skipped:
                skipped.setdefault(entry.date, []).append(entry)
            for date in sorted(files.keys() | skipped.keys()):
                for k, f in enumerate(files.get(date, [])):
                    attrs: tuple[tuple[str, str], ...] = (
                        ("source", source_name),
                        ("date", date),
                        ("relpath", f.relpath),
                        ("format", f.format),
                    )
                    shards.append(
                        InputShard(name=f"{date}_{source_name}_{k:05d}", url=f.url, size_bytes=f.size, attrs=attrs)
                    )
                if date in skipped:
                    entries = json.dumps([[e.url, e.reason, e.detail] for e in skipped[date]])
                    attrs = (("source", source_name), ("date", date), ("skipped", entries))
                    shards.append(
                        InputShard(name=f"{date}_{source_name}_skipped", url=source.location, size_bytes=0, attrs=attrs)
                    )
        return shards

    def run_shard(self, shard: InputShard) -> Iterator[BatchResult]:
        skipped = shard.attr("skipped")
        if skipped is not None:
            yield _skipped_entries(skipped)
            return
        source_name = shard.attr("source")
        assert source_name is not None, "input_shards names the source of every shard"
        source = self.context["sources"][source_name]
        fields = Fields(source.text_field, source.id_field, source.url_field)
        records = _Records(shard, self.params, source.text_field)
        try:
            opened = self._location(source_name).open(shard.url, shard.size_bytes)
        except RejectedFile as exc:
            yield records.result(reject(exc.reason, exc.detail))
            return
        if opened.size == 0:
            yield records.result(reject("empty_file", "the file has no bytes"))
            return
        fmt = shard.attr("format")
        if fmt == "parquet":
            chunks = read_parquet(opened.path, fields, fs=opened.fs)
        elif fmt == "warc":
            chunks = read_warc(opened.path, self.params.max_doc_bytes, self.params.html_extractor, fs=opened.fs)
        elif fmt == "text":
            relpath = shard.attr("relpath")
            assert relpath is not None, "input_shards gives every source file its relpath"
            chunks = read_text(opened.path, opened.size, relpath, self.params.max_doc_bytes, fs=opened.fs)
        else:
            chunks = read_jsonl(
                opened.path, fields, fmt == "jsonl.gz", self.params.block_bytes, self.params.max_doc_bytes, fs=opened.fs
            )
        for chunk in chunks:
            yield records.result(chunk)


def _skipped_entries(skipped: str) -> BatchResult:
    """The source's unreadable entries (a shard's ``skipped`` attribute, JSON), quarantined."""
    entries = json.loads(skipped)
    quarantined = pa.table(
        {
            "source_file": [url for url, _, _ in entries],
            "line": pa.nulls(len(entries), pa.int64()),
            "id": pa.nulls(len(entries), pa.string()),
            "reason": [reason for _, reason, _ in entries],
            "detail": [detail for _, _, detail in entries],
            "sample": pa.nulls(len(entries), pa.string()),
        },
        schema=QUARANTINE_SCHEMA,
    )
    return BatchResult(kept=RECORD_SCHEMA.empty_table(), quarantined=quarantined)


class _Records:
    """Turns what a reader read from one file into the stage's records: ids, source and
    date, and the records quarantined (no text, too large) or dropped (empty, sampled out)."""

    def __init__(self, shard: InputShard, params: IngestParams, text_field: str):
        self.shard = shard
        self.params = params
        self.text_field = text_field
        self.source_name = shard.attr("source")
        self.date = shard.attr("date")
        self.relpath = shard.attr("relpath")

    def result(self, chunk: Chunk) -> BatchResult:
        read = chunk.records
        n = read.num_rows
        text = read.column("text")
        records = pa.table(
            {
                "id": self._ids(read),
                "source": pa.array([self.source_name] * n, pa.string()),
                "date": pa.array([self.date] * n, pa.string()),
                "url": read.column("url"),
                "text": text,
                **{
                    name: read.column(name) if name in read.column_names else pa.nulls(n, kind)
                    for name, kind in WARC_COLUMNS
                },
            },
            schema=RECORD_SCHEMA,
        )
        missing = pc.is_null(text)
        too_large = pc.fill_null(pc.greater(pc.binary_length(text), self.params.max_doc_bytes), False)
        to_quarantine = pc.or_(missing, too_large)
        quarantined = pa.concat_tables(
            [
                self._quarantine_records(
                    records.filter(to_quarantine),
                    pc.filter(missing, to_quarantine),
                    pc.filter(read.column("line"), to_quarantine),
                ),
                self._quarantine_rejected(chunk.rejected),
            ]
        )
        records = records.filter(pc.invert(to_quarantine))
        reasons = pc.if_else(
            pc.equal(pc.utf8_trim_whitespace(records.column("text")), ""), "empty_text", pa.scalar(None, pa.string())
        )
        if self.params.sample_fraction < 1.0:
            reasons = pc.coalesce(reasons, _sampled_out(records.column("id"), self.params.sample_fraction))
        kept, dropped = split_by_reason(records, reasons)
        text_bytes = pc.sum(pc.binary_length(kept.column("text"))).as_py() or 0
        metrics = Counter({"ingest.bytes": text_bytes}) + chunk.metrics
        return BatchResult(kept=kept, dropped=dropped, quarantined=quarantined, metrics=metrics)

    def _ids(self, read: pa.Table) -> pa.ChunkedArray:
        """``<source>/<record id>``, or ``<source>/<hash of file path and ordinal>`` for a record without one."""
        ids = pc.binary_join_element_wise(self.source_name, read.column("id"), "/")
        if ids.null_count == 0:
            return ids
        generated = [
            f"{self.source_name}/" + hashlib.blake2b(f"{self.relpath}\x00{ordinal}".encode(), digest_size=8).hexdigest()
            for ordinal in pc.filter(read.column("ordinal"), pc.is_null(ids)).to_pylist()
        ]
        return pc.replace_with_mask(
            ids.combine_chunks(), pc.is_null(ids).combine_chunks(), pa.array(generated, pa.string())
        )

    def _quarantine_records(self, records: pa.Table, missing: pa.ChunkedArray, lines: pa.ChunkedArray) -> pa.Table:
        if records.num_rows == 0:
            return QUARANTINE_SCHEMA.empty_table()
        reasons: list[str] = []
        details: list[str] = []
        samples: list[str | None] = []
        for text, is_missing in zip(records.column("text").to_pylist(), missing.to_pylist()):
            if is_missing:
                reasons.append("missing_text_field")
                details.append(f"no string field {self.text_field!r}")
                samples.append(None)
            else:
                reasons.append("doc_too_large")
                details.append(f"{len(text.encode())} bytes > max_doc_bytes {self.params.max_doc_bytes}")
                samples.append(text[:SAMPLE_CHARS])
        return pa.table(
            {
                "source_file": pa.array([self.shard.url] * records.num_rows, pa.string()),
                "line": lines,
                "id": records.column("id"),
                "reason": pa.array(reasons, pa.string()),
                "detail": pa.array(details, pa.string()),
                "sample": pa.array(samples, pa.string()),
            },
            schema=QUARANTINE_SCHEMA,
        )

    def _quarantine_rejected(self, rejected: pa.Table) -> pa.Table:
        n = rejected.num_rows
        return pa.table(
            {
                "source_file": pa.array([self.shard.url] * n, pa.string()),
                "line": rejected.column("line"),
                "id": pc.binary_join_element_wise(self.source_name, rejected.column("id"), "/"),
                "reason": rejected.column("reason"),
                "detail": rejected.column("detail"),
                "sample": rejected.column("sample"),
            },
            schema=QUARANTINE_SCHEMA,
        )


def _sampled_out(ids: pa.ChunkedArray, fraction: float) -> pa.Array:
    """Deterministic sampling by id: the same fraction keeps the same documents on every run."""
    threshold = int(fraction * 2**32)
    keep = [
        int.from_bytes(hashlib.blake2b(i.encode(), digest_size=4).digest(), "big") < threshold for i in ids.to_pylist()
    ]
    return pa.array([None if k else "sampled_out" for k in keep], pa.string())
