"""A dataset: Parquet parts plus the files that make them trustworthy.

Layout under the dataset URL::

    <part>.parquet            kept records, one part per input shard
    _dropped/<part>.parquet   id, source, reason of every dropped record
    _quarantine/<part>.parquet  bad input with its reason
    _commits/<part>.json      the shard's counters; written last, it commits the shard
    _manifest.json            written once every shard is committed
    _gates/result.json        the quality gate's verdict on the dataset
    _tmp/                     files being written, never read
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tamis import storage

MANIFEST = "_manifest.json"
GATE_RESULT = "_gates/result.json"


class DatasetNotFound(FileNotFoundError):
    pass


@dataclass(frozen=True)
class InputShard:
    """One unit of work: a committed input part, or a raw source file for ingest."""

    name: str  # output part name, e.g. "2026-11-20_web_00000"
    url: str
    size_bytes: int
    attrs: tuple[tuple[str, str], ...] = ()

    def attr(self, key: str, default: str | None = None) -> str | None:
        return dict(self.attrs).get(key, default)


@dataclass
class Dataset:
    url: str

    def part_url(self, name: str) -> str:
        return storage.join(self.url, f"{name}.parquet")

    def dropped_url(self, name: str) -> str:
        return storage.join(self.url, "_dropped", f"{name}.parquet")

    def quarantine_url(self, name: str) -> str:
        return storage.join(self.url, "_quarantine", f"{name}.parquet")

    def commit_url(self, name: str) -> str:
        return storage.join(self.url, "_commits", f"{name}.json")

    @property
    def manifest_url(self) -> str:
        return storage.join(self.url, MANIFEST)

    def is_complete(self) -> bool:
        return storage.exists(self.manifest_url)

    def manifest(self) -> dict[str, Any]:
        manifest = storage.read_json_if_exists(self.manifest_url)
        if manifest is None:
            raise DatasetNotFound(f"no committed dataset at {self.url} (missing {MANIFEST})")
        return manifest

    def gate_result(self) -> dict[str, Any] | None:
        return storage.read_json_if_exists(storage.join(self.url, GATE_RESULT))

    def shards(self) -> list[InputShard]:
        """The committed parts, in manifest order: a stage only ever reads a finished dataset."""
        manifest = self.manifest()
        return [
            InputShard(name=part["name"], url=self.part_url(part["name"]), size_bytes=part["bytes"])
            for part in manifest["parts"]
        ]

    def committed(self, name: str) -> dict[str, Any] | None:
        return storage.read_json_if_exists(self.commit_url(name))

    def column_names(self) -> list[str]:
        """The columns of the parts (read from the first part's footer); none for an empty dataset."""
        shards = self.shards()
        if not shards:
            return []
        with open_part(shards[0]) as f:
            return pq.read_schema(f).names

    def iter_batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        for shard in self.shards():
            with open_part(shard) as f:
                yield from pq.ParquetFile(f).iter_batches(columns=columns)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        batches = list(self.iter_batches(columns))
        if batches:
            return pa.Table.from_batches(batches)
        first = self.shards()
        if not first:
            return pa.table({})
        with open_part(first[0]) as f:
            schema = pq.read_schema(f)
        return schema.empty_table() if columns is None else schema.empty_table().select(columns)

    def read_side(self, kind: str) -> pa.Table:
        """Concatenate the ``_dropped`` or ``_quarantine`` tables of all parts."""
        tables = []
        for shard in self.shards():
            url = self.dropped_url(shard.name) if kind == "dropped" else self.quarantine_url(shard.name)
            if storage.exists(url):
                tables.append(pq.read_table(storage.filesystem(url)[1], filesystem=storage.filesystem(url)[0]))
        return pa.concat_tables(tables) if tables else pa.table({})


def open_part(shard: InputShard):
    """A committed part, opened for reading. (Handing s3fs the manifest's size saves no
    request: it still asks for the object's ETag before its first read.)"""
    fs, path = storage.filesystem(shard.url)
    return fs.open(path, "rb")
