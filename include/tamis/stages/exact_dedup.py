"""Exact dedup: drop every document whose content hash was seen earlier.

"Earlier" is a deterministic order: parts in manifest order (date, source, file),
then rows within a part, so the survivor of a duplicate group is the first ingested
copy. Map: each worker hashes its shard. Reduce: one sort over 128-bit hashes finds
the first occurrence of each. Apply: each worker drops its own duplicates.

With ``corpus_url`` (the nightly ingest), the hashes of the existing corpus come first,
so a document the corpus already holds is dropped without its text being read again.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor
from typing import Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tamis import storage
from tamis.runner import process_context
from tamis.stage import BatchResult, InputShard, Stage, StageParams, drop_listed_rows

_HASH_BYTES = 16


class ExactDedupParams(StageParams):
    # "text": byte-identical text; "normalized": ignoring case and all whitespace differences
    key: Literal["text", "normalized"] = "normalized"
    # Incremental: documents already in this corpus (tamis.corpus) count as earlier copies.
    corpus_url: str | None = None
    # The partition being replaced by this run is not compared against itself.
    exclude_partition: str | None = None


class ExactDedup(Stage):
    name = "exact_dedup"
    Params = ExactDedupParams

    def __init__(self, params=None, context=None):
        super().__init__(params, context)
        self._duplicates: dict[str, tuple[np.ndarray, list[str]]] = {}

    def prepare(self, shards: list[InputShard], work_url: str, workers: int) -> None:
        urls = [s.url for s in shards]
        if workers > 1 and len(shards) > 1:
            context = process_context()
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                hashed = list(pool.map(_hash_shard, urls, [self.params.key] * len(urls)))
        else:
            hashed = [_hash_shard(url, self.params.key) for url in urls]
        names = [s.name for s in shards]
        if self.params.corpus_url:
            from tamis.corpus import known_hashes

            # The corpus goes first: a document it already holds is the survivor.
            hashed.insert(0, known_hashes(self.params.corpus_url, self.params.exclude_partition))
            names.insert(0, "_corpus")
        self._duplicates = _find_duplicates(names, hashed)

    def run_shard(self, shard: InputShard) -> Iterator[BatchResult]:
        rows, survivors = self._duplicates.get(shard.name, (np.empty(0, np.int64), []))
        for _, result in drop_listed_rows(shard, rows, survivors, "exact_duplicate"):
            yield result

    def process_batch(self, table: pa.Table) -> BatchResult:
        raise AssertionError("exact_dedup filters in run_shard")


def _hash_shard(url: str, key: str) -> tuple[np.ndarray, list[str]]:
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        table = pq.read_table(f, columns=["id", "text"])
    return content_hashes(table.column("text"), key), table.column("id").to_pylist()


def content_hashes(text: pa.ChunkedArray | pa.Array, key: str = "normalized") -> np.ndarray:
    """128-bit content hashes as an (n, 16) uint8 array."""
    if key == "normalized":
        text = pc.replace_substring_regex(pc.utf8_lower(text), r"\s+", " ")
        text = pc.utf8_trim_whitespace(text)
    digests = b"".join(hashlib.blake2b(t.encode(), digest_size=_HASH_BYTES).digest() for t in text.to_pylist())
    return np.frombuffer(digests, dtype=np.uint8).reshape(-1, _HASH_BYTES)


def _find_duplicates(names: list[str], hashed: list[tuple[np.ndarray, list[str]]]) -> dict[str, tuple[np.ndarray, list[str]]]:
    """For each shard: the row numbers that repeat an earlier document, and that document's id."""
    sizes = [len(ids) for _, ids in hashed]
    if sum(sizes) == 0:
        return {}
    all_hashes = np.concatenate([h for h, _ in hashed]).view(f"V{_HASH_BYTES}").ravel()
    all_ids = [i for _, ids in hashed for i in ids]
    shard_of = np.repeat(np.arange(len(names)), sizes)
    row_of = np.concatenate([np.arange(n) for n in sizes])
    # A stable sort by hash keeps the global (shard, row) order inside each group of equals.
    order = np.argsort(all_hashes, kind="stable")
    sorted_hashes = all_hashes[order]
    first_in_group = np.ones(len(order), dtype=bool)
    first_in_group[1:] = sorted_hashes[1:] != sorted_hashes[:-1]
    group_start = np.maximum.accumulate(np.where(first_in_group, np.arange(len(order)), 0))
    survivor = order[group_start]
    duplicates = order[~first_in_group]
    survivor_of_duplicate = survivor[~first_in_group]
    result: dict[str, tuple[np.ndarray, list[str]]] = {}
    for shard_index in np.unique(shard_of[duplicates]):
        mask = shard_of[duplicates] == shard_index
        rows = row_of[duplicates[mask]]
        by_row = np.argsort(rows)
        result[names[shard_index]] = (rows[by_row], [all_ids[i] for i in survivor_of_duplicate[mask][by_row]])
    return result
