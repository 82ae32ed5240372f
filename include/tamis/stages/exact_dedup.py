"""Exact dedup: drop every document whose content hash was seen earlier.

"Earlier" is a deterministic order: parts in manifest order (date, source, file),
then rows within a part, so the survivor of a duplicate group is the first ingested
copy. Plan: each shard's rows are hashed (a map step on the engine's workers), one
sort over the 128-bit hashes (numpy locally; a Spark window partitioned by hash on
Spark) finds the first occurrence of each, and every shard's duplicates (row numbers
with the survivor's id) are written to its drop plan under ``_work/``. Apply: each shard
drops the rows its plan lists.

With ``corpus_url`` (the nightly ingest), the hashes of the existing corpus come first,
so a document the corpus already holds is dropped without its text being read again.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from tamis import storage
from tamis.corpus import content_hashes, corpus_state, hash_files, known_hashes
from tamis.stage import (
    CorpusContext,
    DropListStage,
    InputShard,
    StageParams,
    write_drop_plan,
)

REASON = "exact_duplicate"
_HASH_BYTES = 16
# Plan memory per document: its hash, shard and row numbers, its id, and the sort's indices.
STATE_BYTES_PER_ROW = 96
# Spark takes no fixed-size binary: hashes travel as plain binary there.
_HASHED_SCHEMA = pa.schema([("shard", pa.int32()), ("row", pa.int64()), ("id", pa.string()), ("hash", pa.binary())])


class ExactDedupParams(StageParams):
    # "text": byte-identical text; "normalized": ignoring case and all whitespace differences
    key: Literal["text", "normalized"] = "normalized"
    # Incremental: documents already in this corpus (tamis.corpus) count as earlier copies.
    corpus_url: str | None = None
    # The corpus partition (date) this run builds: only the partitions before it count.
    partition: str | None = None
    # Plan state held at once (hashes, ids and positions, about STATE_BYTES_PER_ROW a
    # document); beyond it the hashes are partitioned on disk and each partition is
    # deduplicated alone, so the memory does not grow with the corpus.
    memory_budget_mb: int = Field(default=1024, ge=8)


class ExactDedup(DropListStage):
    type_name = "exact_dedup"
    Params = ExactDedupParams
    params: ExactDedupParams
    drop_reason = REASON
    duplicate_reasons = (REASON,)

    @property
    def corpus_hash_key(self) -> str:
        return self.params.key

    def corpus_params(self, corpus: CorpusContext) -> dict[str, Any]:
        return {"corpus_url": corpus.url, "partition": corpus.date}

    def dependencies(self, output_url: str) -> dict[str, str]:
        if not self.params.corpus_url:
            return {}
        return {"corpus": corpus_state(self.params.corpus_url, self.params.partition)}

    # -- plan ----------------------------------------------------------------------------

    def plan(self, shards: list[InputShard], work_url: str, engine) -> dict[str, int]:
        files = hash_files(self.params.corpus_url, self.params.partition) if self.params.corpus_url else []
        total_rows = sum(_footer_rows(s.url) for s in shards) + sum(_footer_rows(url) for url in files)
        partitions = max(1, math.ceil(total_rows * STATE_BYTES_PER_ROW / (self.params.memory_budget_mb << 20)))
        if partitions > 1:
            return self._plan_on_disk(shards, files, work_url, engine, partitions)
        hashed = engine.map(_hash_shard, [s.url for s in shards])
        names = [s.name for s in shards]
        if self.params.corpus_url:
            # The corpus goes first: a document it already holds is the survivor.
            hashed.insert(0, known_hashes(self.params.corpus_url, self.params.partition))
            names.insert(0, "_corpus")
        duplicates = find_duplicates(names, hashed)
        for name, (rows, survivors) in duplicates.items():
            write_drop_plan(work_url, name, rows, survivors)
        # Only a plan that spilled reports partitions: the count is the local engine's, and
        # the in-memory plan must report what Spark's does.
        return {"exact_dedup.corpus_documents": len(hashed[0][1]) if self.params.corpus_url else 0}

    def _plan_on_disk(
        self, shards: list[InputShard], files: list[str], work_url: str, run, partitions: int
    ) -> dict[str, int]:
        """The same plan with bounded memory: every row's (shard, row, id, hash) is written to
        the partition its hash falls in, each partition is sorted and deduplicated alone
        (a hash lives in one partition, so its first copy is found there), and each shard's
        duplicates are gathered from the partitions last. Corpus files get shard numbers
        -n..-1, so they come first, as in memory."""
        folder = storage.join(work_url, "hashes")
        run.map(_partition_rows, [(i, s.url, partitions, folder, False) for i, s in enumerate(shards)])
        corpus_rows = sum(
            run.map(_partition_rows, [(j - len(files), url, partitions, folder, True) for j, url in enumerate(files)])
        )
        run.map(_deduplicate_partition, [(p, folder) for p in range(partitions)])
        for i, shard in enumerate(shards):
            found = _read_tables(storage.join(folder, "duplicates", f"s{i:06d}"))
            if found is not None and found.num_rows:
                found = found.sort_by("row")
                write_drop_plan(work_url, shard.name, found.column("row"), found.column("survivor"))
        storage.remove_tree(folder)
        return {"exact_dedup.corpus_documents": corpus_rows, "exact_dedup.spill_partitions": partitions}

    def plan_spark(self, shards: list[InputShard], work_url: str, run) -> dict[str, int]:
        """The same plan as Spark jobs: hashes per shard on the executors, the first of each
        hash by a window partitioned by hash, each shard's plan file written by a task."""
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        items = [(i, s.url) for i, s in enumerate(shards)]
        frames = run.frame(_hashed_rows, items, _HASHED_SCHEMA)
        corpus_documents = 0
        if self.params.corpus_url:
            files = hash_files(self.params.corpus_url, self.params.partition)
            # Corpus files get shard numbers -n..-1 in date order: all before the new shards.
            corpus = run.frame(_corpus_rows, [(i - len(files), url) for i, url in enumerate(files)], _HASHED_SCHEMA)
            corpus_documents = corpus.count()
            frames = corpus.unionByName(frames)
        first = Window.partitionBy("hash").orderBy("shard", "row")
        ranked = frames.withColumn("survivor", F.first("id").over(first)).withColumn("rank", F.row_number().over(first))
        duplicates = ranked.where((F.col("rank") > 1) & (F.col("shard") >= 0)).select("shard", "row", "survivor")
        names = [s.name for s in shards]
        duplicates.groupBy("shard").applyInArrow(
            lambda table: _write_shard_plan(table, names, work_url), "shard int, rows long"
        ).collect()
        return {"exact_dedup.corpus_documents": corpus_documents}


def _footer_rows(url: str) -> int:
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


def _partition_rows(stage: ExactDedup, job: tuple[int, str, int, str, bool]) -> int:
    """Write one shard's (or corpus hash file's) rows to the partitions of their hashes."""
    shard, url, partitions, folder, is_corpus = job
    if is_corpus:
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
        digests = table.column("hash").combine_chunks()
        hashes = np.frombuffer(digests.buffers()[1], np.uint8)[digests.offset * _HASH_BYTES :]
        hashes = hashes[: len(digests) * _HASH_BYTES].reshape(-1, _HASH_BYTES)
        table = _hashed_table(shard, hashes, table.column("id").to_pylist())
    else:
        hashes, ids = _hash_shard(stage, url)
        table = _hashed_table(shard, hashes, ids)
    part_of = (hashes[:, 0].astype(np.int64) << 8 | hashes[:, 1]) % partitions if len(hashes) else np.zeros(0, np.int64)
    for p in np.unique(part_of):
        _write_table(
            table.filter(pa.array(part_of == p)), storage.join(folder, f"p{p:06d}", f"{shard + 10**6:07d}.parquet")
        )
    return table.num_rows


def _deduplicate_partition(stage: ExactDedup, job: tuple[int, str]) -> None:
    """Within one partition: every row that repeats an earlier (shard, row) of its hash,
    with that first copy's id, written by shard."""
    p, folder = job
    table = _read_tables(storage.join(folder, f"p{p:06d}"))
    if table is None or table.num_rows == 0:
        return
    table = table.sort_by([("hash", "ascending"), ("shard", "ascending"), ("row", "ascending")])
    hashes = table.column("hash").combine_chunks()
    first = np.ones(table.num_rows, dtype=bool)
    first[1:] = ~pc.equal(hashes.slice(1), hashes.slice(0, len(hashes) - 1)).to_numpy(zero_copy_only=False)
    head = np.maximum.accumulate(np.where(first, np.arange(table.num_rows), 0))
    shard = table.column("shard").to_numpy()
    repeat = ~first & (shard >= 0)
    found = pa.table(
        {
            "shard": table.column("shard").filter(pa.array(repeat)),
            "row": table.column("row").filter(pa.array(repeat)),
            "survivor": table.column("id").take(pa.array(head[repeat], pa.int64())),
        }
    )
    for s in np.unique(found.column("shard").to_numpy()):
        part = found.filter(pc.equal(found.column("shard"), int(s)))
        _write_table(part, storage.join(folder, "duplicates", f"s{s:06d}", f"p{p:06d}.parquet"))


def _write_table(table: pa.Table, url: str) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes_atomic(url, sink.getvalue().to_pybytes(), url.rsplit("/", 1)[0])


def _read_tables(folder: str) -> pa.Table | None:
    fs, path = storage.filesystem(folder)
    if not fs.exists(path):
        return None
    tables = []
    for file in sorted(fs.glob(f"{path}/*.parquet")):
        with fs.open(file, "rb") as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables) if tables else None


def _hash_shard(stage: ExactDedup, url: str) -> tuple[np.ndarray, list[str]]:
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        table = pq.read_table(f, columns=["id", "text"])
    return content_hashes(table.column("text"), stage.params.key), table.column("id").to_pylist()


def _hashed_rows(stage: ExactDedup, item: tuple[int, str]) -> Iterator[pa.Table]:
    shard, url = item
    hashes, ids = _hash_shard(stage, url)
    yield _hashed_table(shard, hashes, ids)


def _corpus_rows(stage: ExactDedup, item: tuple[int, str]) -> Iterator[pa.Table]:
    shard, url = item
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    n = table.num_rows
    yield pa.table(
        {
            "shard": pa.array(np.full(n, shard, np.int32)),
            "row": pa.array(np.arange(n, dtype=np.int64)),
            "id": table.column("id"),
            "hash": table.column("hash").cast(pa.binary()),
        },
        schema=_HASHED_SCHEMA,
    )


def _hashed_table(shard: int, hashes: np.ndarray, ids: list[str]) -> pa.Table:
    n = len(ids)
    offsets = np.arange(n + 1, dtype=np.int32) * _HASH_BYTES
    column = pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(hashes.tobytes())])
    return pa.table(
        {
            "shard": pa.array(np.full(n, shard, np.int32)),
            "row": pa.array(np.arange(n, dtype=np.int64)),
            "id": pa.array(ids, pa.string()),
            "hash": column,
        },
        schema=_HASHED_SCHEMA,
    )


def _write_shard_plan(table: pa.Table, names: list[str], work_url: str) -> pa.Table:
    shard = int(table.column("shard")[0].as_py())
    write_drop_plan(work_url, names[shard], table.column("row"), table.column("survivor"))
    return pa.table({"shard": pa.array([shard], pa.int32()), "rows": pa.array([table.num_rows], pa.int64())})


def find_duplicates(
    names: list[str], hashed: list[tuple[np.ndarray, list[str]]]
) -> dict[str, tuple[np.ndarray, list[str]]]:
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
    result.pop("_corpus", None)
    return result
