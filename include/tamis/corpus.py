"""The growing corpus that nightly ingests append to, one date partition at a time.

    <storage_root>/corpus/<pipeline>/date=YYYY-MM-DD/   a dataset (parts + _manifest.json)
                                     date=.../_hashes.parquet  content hashes of its documents

Appending a day replaces that day's partition whole, so re-running a day is
idempotent; the partition's manifest is removed first and written last, so a reader
never takes a half-replaced partition for a complete one. The hashes let the next
day's exact dedup compare against the corpus without reading its text again.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tamis import storage
from tamis.dataset import MANIFEST, Dataset
from tamis.text_kernels import collapsed_spaces

log = logging.getLogger("tamis.corpus")
HASHES = "_hashes.parquet"
_PARTITION = re.compile(r"date=(\d{4}-\d{2}-\d{2}|undated)$")


def partition_url(corpus_url: str, date: str) -> str:
    return storage.join(corpus_url, f"date={date}")


def partitions(corpus_url: str) -> dict[str, str]:
    """Complete partitions by date."""
    fs, root = storage.filesystem(corpus_url)
    if not fs.exists(root):
        return {}
    found = {}
    for path in sorted(fs.ls(root, detail=False)):
        match = _PARTITION.search(path.rstrip("/"))
        if match:
            url = partition_url(corpus_url, match.group(1))
            if Dataset(url).is_complete():
                found[match.group(1)] = url
    return found


def append(dataset_url: str, corpus_url: str, date: str, hash_key: str) -> dict[str, Any]:
    """Publish ``dataset_url`` as the corpus partition of ``date``, replacing any earlier one."""
    source = Dataset(dataset_url)
    manifest = source.manifest()
    target = partition_url(corpus_url, date)
    fs, target_path = storage.filesystem(target)
    if fs.exists(target_path):
        storage.remove_tree(storage.join(target, MANIFEST))  # from here on the old partition is not complete
        storage.remove_tree(target)
    hashes, ids = [], []
    for shard in source.shards():
        data = storage.read_bytes(shard.url)
        storage.write_bytes_atomic(storage.join(target, f"{shard.name}.parquet"), data, target)
        table = pq.read_table(pa.BufferReader(data), columns=["id", "text"])  # the bytes just copied
        hashes.append(content_hashes(table.column("text"), hash_key))
        ids.append(table.column("id"))
    digests = np.concatenate(hashes) if hashes else np.empty((0, 16), np.uint8)
    hash_table = pa.table(
        {
            "id": pa.chunked_array(ids, pa.string()) if ids else pa.array([], pa.string()),
            "hash": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(16), len(digests), [None, pa.py_buffer(digests.tobytes())]
            ),
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(hash_table, sink, compression="zstd")
    storage.write_bytes_atomic(storage.join(target, HASHES), sink.getvalue().to_pybytes(), target)
    partition_manifest = {
        **manifest,
        "output": target,
        "appended_from": dataset_url,
        "date": date,
        "hash_key": hash_key,
    }
    storage.write_json_atomic(storage.join(target, MANIFEST), partition_manifest, target)
    storage.remove_tree(storage.join(target, "_tmp"))
    log.info("corpus %s: partition %s now holds %d documents", corpus_url, date, hash_table.num_rows)
    return partition_manifest


def content_hashes(text: pa.ChunkedArray | pa.Array, key: str = "normalized") -> np.ndarray:
    """128-bit content hashes as an (n, 16) uint8 array. ``normalized`` ignores case and
    every whitespace difference; ``text`` hashes the bytes as they are."""
    if key == "normalized":
        text = pc.utf8_trim_whitespace(collapsed_spaces(pc.utf8_lower(text)))
    digests = b"".join(hashlib.blake2b(t.encode(), digest_size=16).digest() for t in text.to_pylist())
    return np.frombuffer(digests, dtype=np.uint8).reshape(-1, 16)


def earlier(date: str, day: str | None) -> bool:
    """Whether partition ``date`` counts for a run that builds ``day`` (None: every one
    counts). A day is deduplicated against the days before it only, so re-running it once
    later days are appended gives what its first run gave."""
    return day is None or date < day


def hash_files(corpus_url: str, day: str | None) -> list[str]:
    """The content-hash files of every complete partition before ``day``, in date order."""
    return [storage.join(url, HASHES) for date, url in partitions(corpus_url).items() if earlier(date, day)]


def corpus_state(corpus_url: str, day: str | None) -> str:
    """A version of the corpus as a nightly stage building ``day`` sees it: the hash of the
    manifests of the partitions before it."""
    digest = hashlib.sha256()
    for date, url in partitions(corpus_url).items():
        if earlier(date, day):
            digest.update(date.encode() + b"\0" + storage.read_bytes(Dataset(url).manifest_url))
    return digest.hexdigest()


def known_hashes(corpus_url: str, day: str | None) -> tuple[np.ndarray, list[str]]:
    """Content hashes and ids of every complete partition before ``day``."""
    digests, ids = [], []
    for url in hash_files(corpus_url, day):
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as f:
            table = pq.read_table(f)
        column = table.column("hash").combine_chunks()
        raw = np.frombuffer(column.buffers()[1], np.uint8)
        digests.append(raw[column.offset * 16 : (column.offset + len(column)) * 16].reshape(-1, 16))
        ids.extend(table.column("id").to_pylist())
    return (np.concatenate(digests) if digests else np.empty((0, 16), np.uint8)), ids
