"""Lines (or paragraphs) repeated across the corpus: navigation, cookie banners, footers.

A line that appears in more than ``max_repeats`` documents of the corpus is boilerplate of
some site or template, whatever the document around it (dolma's paragraph deduplication,
FineWeb's line rules; Gopher's repetition rules only see one document at a time). Lines are
compared normalized: lower-cased, digits as ``0`` (dates and counters vary), whitespace
collapsed; lines of fewer than ``min_line_chars`` characters are never counted.

Plan, with bounded memory (a disk-backed exact count, not a sketch that over-counts):

1. map, per shard: the distinct normalized line hashes of each document, counted over the
   shard and split by hash into ``buckets`` files under the work folder;
2. map, per bucket: the shards' counts of that bucket summed; the hashes over
   ``max_repeats`` are the bucket's repeated lines (only one bucket is in memory at a time);
3. map, per shard: the text of the ``top_lines`` most repeated lines, written with their
   counts to ``_repeated/top_lines.parquet`` beside the output for the report.

Apply, per shard: repeated lines are removed from each document (the other lines keep
their order and text); a document left with fewer than ``min_doc_chars`` characters is
dropped (``repeated_lines.too_short``). ``repeated_lines.lines_removed``,
``repeated_lines.chars_removed`` and ``repeated_lines.docs_changed`` count what went.
"""

from __future__ import annotations

import heapq
import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from tamis import storage
from tamis.stage import (
    BatchResult,
    DatasetStage,
    InputShard,
    StageParams,
    iter_shard_batches,
    split_by_reason,
)
from tamis.text_hash import string_hashes

REASON = "repeated_lines.too_short"
SIDE_DIR = "_repeated"
TOP_LINES = "top_lines.parquet"
_PARAGRAPH = r"\n[ \t]*\n\s*"


class RepeatedLinesParams(StageParams):
    unit: Literal["line", "paragraph"] = "line"
    # A line in more documents than this is removed everywhere.
    max_repeats: int = Field(default=100, ge=1)
    min_line_chars: int = Field(default=10, ge=1)  # shorter lines are never counted nor removed
    min_doc_chars: int = Field(default=200, ge=0)  # a document cut below this is dropped
    buckets: int = Field(default=64, ge=1, le=4096)  # partitions of the count: memory per step ~ 1/buckets
    top_lines: int = Field(default=50, ge=0)


class RepeatedLines(DatasetStage):
    type_name = "repeated_lines"
    Params = RepeatedLinesParams
    params: RepeatedLinesParams
    default_gate = {"max_drop_rate": 0.5}

    def plan(self, shards: list[InputShard], work_url: str, run) -> dict[str, int]:
        run.map(_count_shard, [(s.name, s.url, work_url) for s in shards])
        reduced = run.map(_reduce_bucket, [(b, [s.name for s in shards], work_url) for b in range(self.params.buckets)])
        repeated = sum(n for n, _ in reduced)
        top = heapq.nlargest(
            self.params.top_lines, (pair for _, pairs in reduced for pair in pairs), key=lambda p: (p[1], p[0])
        )
        if top:
            wanted = {h for h, _ in top}
            texts: dict[int, str] = {}
            for found in run.map(_find_texts, [(s.url, sorted(wanted)) for s in shards]):
                for h, text in found.items():
                    texts.setdefault(h, text)
            table = pa.table(
                {
                    "line": [texts.get(h) for h, _ in top],
                    "documents": [c for _, c in top],
                    "hash": pa.array([h for h, _ in top], pa.uint64()),
                }
            )
        else:
            table = pa.table(
                {
                    "line": pa.array([], pa.string()),
                    "documents": pa.array([], pa.int64()),
                    "hash": pa.array([], pa.uint64()),
                }
            )
        _write_parquet(storage.join(_output_url(work_url), SIDE_DIR, TOP_LINES), table, _output_url(work_url))
        return {"repeated_lines.distinct_repeated": repeated}

    def apply(self, shard: InputShard, work_url: str) -> Iterator[BatchResult]:
        repeated = _repeated_hashes(work_url, self.params.buckets)
        p = self.params
        for _, table in iter_shard_batches(shard):
            n = table.num_rows
            if n == 0 or len(repeated) == 0:
                yield BatchResult(kept=table)
                continue
            text = pc.fill_null(table.column("text").combine_chunks(), "")
            pieces = _pieces(text, p.unit)
            hashes, counted = _normalized_hashes(pieces, p.min_line_chars)
            pos = np.minimum(np.searchsorted(repeated, hashes), len(repeated) - 1)
            remove = counted & (repeated[pos] == hashes)
            changed = np.bincount(pieces.doc[remove], minlength=n) > 0
            metrics: Counter[str] = Counter()
            if not changed.any():
                yield BatchResult(kept=table)
                continue
            keep = ~remove
            kept_pieces = pieces.values.filter(pa.array(keep))
            per_doc = np.bincount(pieces.doc[keep], minlength=n)
            offsets = np.concatenate([[0], np.cumsum(per_doc)]).astype(np.int32)
            joined = pc.binary_join(
                pa.ListArray.from_arrays(pa.array(offsets), kept_pieces), "\n" if p.unit == "line" else "\n\n"
            )
            new_text = pc.if_else(pa.array(changed), joined, text)
            metrics["repeated_lines.lines_removed"] += int(remove.sum())
            metrics["repeated_lines.chars_removed"] += int(lengths(pieces.values.filter(pa.array(remove))).sum())
            metrics["repeated_lines.docs_changed"] += int(changed.sum())
            table = table.set_column(table.column_names.index("text"), "text", new_text)
            short = changed & (lengths(new_text) < p.min_doc_chars)
            removed_lines = np.bincount(pieces.doc[remove], minlength=n)
            reasons = np.full(n, None, dtype=object)
            reasons[short] = REASON
            details = np.full(n, None, dtype=object)
            left = lengths(new_text)
            for i in np.flatnonzero(short):
                details[i] = f"{removed_lines[i]} repeated {p.unit}s removed, {left[i]} chars left"
            kept, dropped = split_by_reason(table, reasons.tolist(), details.tolist())
            yield BatchResult(kept=kept, dropped=dropped, metrics=metrics)


@dataclass
class Pieces:
    """The lines (or paragraphs) of a batch of documents, flat, with the document of each."""

    values: pa.Array
    doc: np.ndarray  # int64
    n_docs: int


def split(lists: pa.Array | pa.ChunkedArray, n_docs: int) -> Pieces:
    """Flatten a list<string> column (one list per document) into :class:`Pieces`."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    values = pc.list_flatten(lists)
    doc = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    return Pieces(values, doc, n_docs)


def lengths(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return pc.utf8_length(values).to_numpy(zero_copy_only=False).astype(np.int64)


def _pieces(text: pa.Array, unit: str) -> Pieces:
    parts = pc.split_pattern(text, "\n") if unit == "line" else pc.split_pattern_regex(text, _PARAGRAPH)
    return split(parts, len(text))


def _normalized_hashes(pieces: Pieces, min_chars: int) -> tuple[np.ndarray, np.ndarray]:
    """The hash of each piece, normalized, and whether it is long enough to count."""
    norm = pc.utf8_lower(pieces.values)
    norm = pc.replace_substring_regex(norm, r"\d", "0")
    norm = pc.utf8_trim_whitespace(pc.replace_substring_regex(norm, r"\s+", " "))
    return string_hashes(norm), lengths(norm) >= min_chars


def _count_shard(stage: RepeatedLines, item: tuple[str, str, str]) -> None:
    """Documents per distinct normalized line of one shard, written bucket by bucket."""
    name, url, work_url = item
    p = stage.params
    hashes, docs = [], []
    first_doc = 0
    for _, table in iter_shard_batches(InputShard(name=name, url=url, size_bytes=0), columns=["text"]):
        pieces = _pieces(pc.fill_null(table.column("text").combine_chunks(), ""), p.unit)
        h, counted = _normalized_hashes(pieces, p.min_line_chars)
        hashes.append(h[counted])
        docs.append(pieces.doc[counted] + first_doc)
        first_doc += table.num_rows
    h = np.concatenate(hashes) if hashes else np.empty(0, np.uint64)
    d = np.concatenate(docs) if docs else np.empty(0, np.int64)
    # One count per document however often the line repeats inside it.
    order = np.lexsort((d, h))
    h, d = h[order], d[order]
    first = np.ones(len(h), bool)
    first[1:] = (h[1:] != h[:-1]) | (d[1:] != d[:-1])
    unique, counts = np.unique(h[first], return_counts=True)
    bucket = (unique % np.uint64(p.buckets)).astype(np.int64)
    for b in np.unique(bucket):
        sel = bucket == b
        _write_counts(_counts_url(work_url, int(b), name), unique[sel], counts[sel], work_url)


def _reduce_bucket(stage: RepeatedLines, item: tuple[int, list[str], str]) -> tuple[int, list[tuple[int, int]]]:
    """Sum one bucket over the shards; keep the lines over the limit."""
    bucket, names, work_url = item
    read = [c for c in (_read_counts(_counts_url(work_url, bucket, name)) for name in names) if c is not None]
    hashes = np.concatenate([h for h, _ in read]) if read else np.empty(0, np.uint64)
    counts = np.concatenate([c for _, c in read]) if read else np.empty(0, np.int64)
    order = np.argsort(hashes, kind="stable")
    hashes, counts = hashes[order], counts[order]
    starts = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]]) if len(hashes) else np.empty(0, np.int64)
    totals = np.add.reduceat(counts, starts) if len(starts) else np.empty(0, np.int64)
    unique = hashes[starts]
    over = totals > stage.params.max_repeats
    _write_counts(_repeated_url(work_url, bucket), unique[over], totals[over], work_url)
    top = np.argsort(-totals[over], kind="stable")[: stage.params.top_lines]
    return int(over.sum()), [(int(unique[over][i]), int(totals[over][i])) for i in top]


def _find_texts(stage: RepeatedLines, item: tuple[str, list[int]]) -> dict[int, str]:
    url, wanted = item
    wanted_arr = np.array(wanted, np.uint64)
    found: dict[int, str] = {}
    for _, table in iter_shard_batches(InputShard(name="", url=url, size_bytes=0), columns=["text"]):
        pieces = _pieces(pc.fill_null(table.column("text").combine_chunks(), ""), stage.params.unit)
        h, counted = _normalized_hashes(pieces, stage.params.min_line_chars)
        hit = np.flatnonzero(counted & np.isin(h, wanted_arr))
        for i in hit:
            found.setdefault(int(h[i]), pieces.values[int(i)].as_py().strip()[:500])
        if len(found) == len(wanted):
            break
    return found


def _repeated_hashes(work_url: str, buckets: int) -> np.ndarray:
    # Keyed by the plan's own record too, so a plan made again in the same place is read again.
    plan_done = storage.join(work_url, "_plan.json")
    marker = storage.read_bytes(plan_done) if storage.exists(plan_done) else b""
    return _read_repeated(work_url, buckets, marker)


@lru_cache(maxsize=2)
def _read_repeated(work_url: str, buckets: int, marker: bytes) -> np.ndarray:
    """Every repeated line's hash, sorted: read once per worker process."""
    parts = [c[0] for c in (_read_counts(_repeated_url(work_url, b)) for b in range(buckets)) if c is not None]
    return np.sort(np.concatenate(parts)) if parts else np.empty(0, np.uint64)


def _output_url(work_url: str) -> str:
    return work_url.rstrip("/").rsplit("/", 1)[0]


def _counts_url(work_url: str, bucket: int, shard: str) -> str:
    return storage.join(work_url, "counts", f"bucket={bucket:04d}", f"{shard}.npy")


def _repeated_url(work_url: str, bucket: int) -> str:
    return storage.join(work_url, "repeated", f"bucket={bucket:04d}.npy")


def _write_counts(url: str, hashes: np.ndarray, counts: np.ndarray, root: str) -> None:
    """(hash, documents) pairs as one 2 x n uint64 array: plain numpy, cheap to read back."""
    buffer = io.BytesIO()
    np.save(buffer, np.stack([hashes.astype(np.uint64), counts.astype(np.uint64)]), allow_pickle=False)
    storage.write_bytes_atomic(url, buffer.getvalue(), root)


def _read_counts(url: str) -> tuple[np.ndarray, np.ndarray] | None:
    if not storage.exists(url):
        return None
    pairs = np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False)
    return pairs[0], pairs[1].astype(np.int64)


def _write_parquet(url: str, table: pa.Table, root: str) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes_atomic(url, sink.getvalue().to_pybytes(), root)


def _read_parquet(url: str) -> pa.Table | None:
    if not storage.exists(url):
        return None
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        return pq.read_table(f)


def top_lines(stage_url: str) -> pa.Table | None:
    """The most repeated lines a finished stage removed (for the report), or None."""
    return _read_parquet(storage.join(stage_url, SIDE_DIR, TOP_LINES))
