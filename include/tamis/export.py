"""Training formats written from packed sequences.

Two formats, both read back without any tamis code:

* Parquet token shards: ``input_ids`` as ``fixed_size_list<int32>[seq_len]`` plus
  ``n_pad`` and ``source``, a fixed number of sequences per file.
* A Megatron-style ``<prefix>.bin`` / ``<prefix>.idx`` pair, laid out like
  Megatron-LM's ``MMapIndexedDataset`` (``megatron/core/datasets/indexed_dataset.py``)
  so Megatron and any numpy memmap can read it.

``.bin``: the token ids of every sequence, back to back, in ``dtype``; no header.

``.idx`` (all integers little-endian)::

    offset  size            field
    0       9               magic  b"MMIDIDX\\x00\\x00"
    9       8   uint64      version = 1
    17      1   uint8       dtype code (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64,
                            6 float64, 7 float32, 8 uint16)
    18      8   uint64      sequence count N
    26      8   uint64      document count D (length of the document index)
    34      4*N int32       sizes: tokens in each sequence
    34+4N   8*N int64       pointers: byte offset of each sequence in .bin
    34+12N  8*D int64       document index: sequence boundaries of documents,
                            starting with 0 and ending with N

Each packed sequence is one Megatron "document" here (the document index is
``0, 1, ..., N``): packing already placed the real documents inside sequences, and
the metadata index (``tamis.stages.index``) maps a document id to its sequence.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tamis import storage
from tamis.dataset import Dataset

IDX_MAGIC = b"MMIDIDX\x00\x00"
IDX_VERSION = 1
IDX_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence count, document count
DTYPE_CODES: dict[int, type[np.generic]] = {
    1: np.uint8,
    2: np.int8,
    3: np.int16,
    4: np.int32,
    5: np.int64,
    6: np.float64,
    7: np.float32,
    8: np.uint16,
}
CODE_OF_DTYPE = {np.dtype(t): code for code, t in DTYPE_CODES.items()}


class ExportError(ValueError):
    pass


def token_dtype(max_token_id: int) -> np.dtype:
    """The smallest dtype Megatron reads for this vocabulary: uint16 below 65,535, else int32."""
    return np.dtype(np.uint16) if max_token_id < 65535 else np.dtype(np.int32)


def iter_packed_batches(dataset_url: str, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Batches of a committed packed dataset, in manifest order (the order the binary uses)."""
    yield from Dataset(dataset_url).iter_batches(columns=columns or ["input_ids"])


def max_token_id(dataset_url: str) -> int:
    best = -1
    for batch in iter_packed_batches(dataset_url):
        if batch.num_rows:
            value = pc.max(pc.list_flatten(batch.column("input_ids"))).as_py()
            if value is not None:
                best = max(best, int(value))
    return best


class MegatronWriter:
    """Streams sequences into ``<prefix>.bin`` and writes ``<prefix>.idx`` on close.

    Both files are written aside and published in one move each (the .idx last), so a
    reader that finds the .idx also finds the complete .bin.
    """

    def __init__(self, prefix_url: str, dtype: np.dtype | str, dataset_url: str):
        self.prefix_url = prefix_url
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise ExportError(f"dtype {self.dtype} has no Megatron code; use one of {sorted(map(str, CODE_OF_DTYPE))}")
        self.dataset_url = dataset_url
        self._sizes: list[np.ndarray] = []
        self._tmp_bin = storage.tmp_url(dataset_url, prefix_url.rsplit("/", 1)[-1] + ".bin")
        fs, path = storage.filesystem(self._tmp_bin)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self._fs, self._bin_path = fs, path
        self._bin = fs.open(path, "wb")
        self._limit = np.iinfo(self.dtype).max if self.dtype.kind in "iu" else None

    def write(self, input_ids: pa.ListArray | pa.ChunkedArray) -> None:
        """Append a column of token-id lists, one sequence per row (no per-row Python loop)."""
        if isinstance(input_ids, pa.ChunkedArray):
            for chunk in input_ids.chunks:
                self.write(chunk)
            return
        if len(input_ids) == 0:
            return
        if input_ids.null_count:
            raise ExportError("a packed sequence has null input_ids; pack must emit every sequence in full")
        values = pc.list_flatten(input_ids).to_numpy(zero_copy_only=False)
        if self._limit is not None and values.size and (values.max() > self._limit or values.min() < 0):
            raise ExportError(f"token id {int(values.max())} does not fit {self.dtype}")
        self._bin.write(values.astype(self.dtype, copy=False).tobytes())
        self._sizes.append(pc.list_value_length(input_ids).to_numpy(zero_copy_only=False).astype(np.int32))

    def close(self) -> dict:
        self._bin.close()
        sizes = np.concatenate(self._sizes) if self._sizes else np.zeros(0, np.int32)
        pointers = np.zeros(sizes.size, np.int64)
        if sizes.size:
            np.cumsum(sizes[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        document_index = np.arange(sizes.size + 1, dtype=np.int64)
        header = IDX_HEADER.pack(IDX_MAGIC, IDX_VERSION, CODE_OF_DTYPE[self.dtype], sizes.size, document_index.size)
        idx = header + sizes.tobytes() + pointers.tobytes() + document_index.tobytes()
        storage.publish(self._tmp_bin, self.prefix_url + ".bin")
        storage.write_bytes_atomic(self.prefix_url + ".idx", idx, self.dataset_url)
        return {
            "sequences": int(sizes.size),
            "tokens": int(sizes.sum(dtype=np.int64)),
            "dtype": str(self.dtype),
            "bin": self.prefix_url + ".bin",
            "idx": self.prefix_url + ".idx",
        }

    def discard(self) -> None:
        if not self._bin.closed:
            self._bin.close()
        if self._fs.exists(self._bin_path):
            self._fs.rm(self._bin_path)


def write_megatron(
    batches: Iterable[pa.RecordBatch | pa.Table], prefix_url: str, dtype: np.dtype | str, dataset_url: str
) -> dict:
    """Write the ``input_ids`` of ``batches`` as ``<prefix_url>.bin/.idx``; return a summary."""
    writer = MegatronWriter(prefix_url, dtype, dataset_url)
    try:
        for batch in batches:
            writer.write(batch.column("input_ids"))
        return writer.close()
    except BaseException:
        writer.discard()
        raise


def export_megatron(packed_url: str, prefix_url: str, dtype: str = "auto") -> dict:
    """Write a committed packed dataset as a Megatron ``.bin``/``.idx`` pair."""
    chosen = token_dtype(max_token_id(packed_url)) if dtype == "auto" else np.dtype(dtype)
    dataset_url = prefix_url.rsplit("/", 1)[0]
    return write_megatron(iter_packed_batches(packed_url), prefix_url, chosen, dataset_url)


def export_parquet_shards(packed_url: str, output_url: str, sequences_per_shard: int = 65536) -> list[str]:
    """Write the packed sequences as Parquet token shards ``tokens_00000.parquet``...

    ``input_ids`` becomes a ``fixed_size_list<int32>`` so every reader sees the
    sequence length in the schema. Returns the shard URLs in order.
    """
    if sequences_per_shard < 1:
        raise ExportError("sequences_per_shard must be at least 1")
    urls: list[str] = []
    pending: list[pa.Table] = []
    pending_rows = 0

    def flush(tables: list[pa.Table]) -> None:
        table = pa.concat_tables(tables)
        url = storage.join(output_url, f"tokens_{len(urls):05d}.parquet")
        tmp = storage.tmp_url(output_url, url.rsplit("/", 1)[-1])
        fs, path = storage.filesystem(tmp)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "wb") as f:
            pq.write_table(table, f, compression="zstd")
        storage.publish(tmp, url)
        urls.append(url)

    for batch in iter_packed_batches(packed_url, ["input_ids", "n_pad", "source"]):
        table = _fixed_size(pa.Table.from_batches([batch]))
        pending.append(table)
        pending_rows += table.num_rows
        while pending_rows >= sequences_per_shard:
            whole = pa.concat_tables(pending)
            flush([whole.slice(0, sequences_per_shard)])
            rest = whole.slice(sequences_per_shard)
            pending, pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
    if pending_rows:
        flush(pending)
    storage.remove_tree(storage.join(output_url, "_tmp"))
    return urls


def _fixed_size(table: pa.Table) -> pa.Table:
    ids = table.column("input_ids").combine_chunks()
    lengths = pc.unique(pc.list_value_length(ids)).to_pylist()
    if len(lengths) != 1:
        raise ExportError(f"packed sequences must share one length; found lengths {sorted(lengths)}")
    flat = pc.list_flatten(ids).cast(pa.int32())
    fixed = pa.FixedSizeListArray.from_arrays(flat, lengths[0])
    return table.set_column(table.schema.get_field_index("input_ids"), "input_ids", fixed)


class TokenBinary:
    """Random access to the sequences of a ``.bin``/``.idx`` pair through a numpy memmap."""

    def __init__(self, prefix: str):
        self.prefix = _local_path(prefix)
        with open(self.prefix + ".idx", "rb") as f:
            head = f.read(IDX_HEADER.size)
            if len(head) < IDX_HEADER.size:
                raise ExportError(f"{self.prefix}.idx is truncated ({len(head)} bytes)")
            magic, version, code, n_seq, n_doc = IDX_HEADER.unpack(head)
        if magic != IDX_MAGIC or version != IDX_VERSION:
            raise ExportError(f"{self.prefix}.idx is not a version-{IDX_VERSION} MMIDIDX index")
        if code not in DTYPE_CODES:
            raise ExportError(f"{self.prefix}.idx names unknown dtype code {code}")
        self.dtype = np.dtype(DTYPE_CODES[code])
        idx = np.memmap(self.prefix + ".idx", mode="r", dtype=np.uint8)
        start = IDX_HEADER.size
        self.sizes = np.frombuffer(idx, np.int32, n_seq, start)
        self.pointers = np.frombuffer(idx, np.int64, n_seq, start + 4 * n_seq)
        self.document_index = np.frombuffer(idx, np.int64, n_doc, start + 12 * n_seq)
        self._bin: np.memmap | None = None

    @property
    def bin(self) -> np.memmap:
        if self._bin is None:  # opened lazily so the object pickles cheaply to loader workers
            self._bin = np.memmap(self.prefix + ".bin", mode="r", dtype=np.uint8)
        return self._bin

    def __len__(self) -> int:
        return int(self.sizes.size)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.frombuffer(self.bin, self.dtype, int(self.sizes[i]), int(self.pointers[i]))

    def __getstate__(self):
        return {"prefix": self.prefix}

    def __setstate__(self, state):
        self.__init__(state["prefix"])


def _local_path(url: str) -> str:
    fs, path = storage.filesystem(url)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol not in ("file", "local"):
        raise ExportError(f"{url}: memory-mapped reading needs a local path; copy the .bin/.idx locally first")
    return path
