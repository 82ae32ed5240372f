"""Pack: fixed-length training sequences from tokenized documents.

Two modes:

- ``best_fit``: a document is never split unless it is longer than ``seq_len``; then it
  is cut into ``seq_len`` chunks and its tail is packed like a short document. Tails
  and short documents fill sequences best-fit-decreasing (each goes to the fullest
  sequence it still fits in). Only the remainder of a sequence is padded.
- ``concat``: one token stream in dataset order, cut every ``seq_len`` tokens; only the
  last sequence is padded.

Each output row is one sequence: ``id`` (``seq/<number>``), ``input_ids`` (``seq_len``
ids), ``doc_ids``, ``source`` and ``doc_offsets`` (start of each document, or document
piece, in the sequence) so a trainer can mask attention across documents, and
``n_pad``. Documents are separated by the end-of-text token the tokenize stage appends.

Packing is a whole-dataset step shaped as map -> reduce -> shuffle -> write. The plan
reads only ``token_count`` of every shard (a map step on the engine's workers) and
plans every sequence with numpy (best-fit placement is one loop over documents, never
over tokens: about a second per million documents); then each input shard scatters its
token slices to the output part that will hold their sequence (under ``_work/pack/``,
again on the workers: a shuffle through the store, so it is the same on Spark); apply
then assembles each output part's sequences from its own pieces. The plan holds a few
integers per document; a worker holds one shard's tokens. The plan depends only on the
data, so it is deterministic.

Counts: a row of this stage is a sequence, so the manifest's in/kept count sequences;
the documents are counted in the metrics ``pack.docs_packed`` (documents whose first
token is in a sequence) and ``pack.doc_pieces``, beside ``pack.sequences``,
``pack.tokens`` and ``pack.pad_tokens``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from tamis import storage
from tamis.stage import BatchResult, DatasetStage, InputShard, PathOrName, StageParams
from tamis.stages.tokenize import tokenizer_dependency
from tamis.tokenizer import load_tokenizer, pad_id

OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("doc_ids", pa.list_(pa.string())),
        ("doc_offsets", pa.list_(pa.int32())),
        ("source", pa.list_(pa.string())),
        ("n_pad", pa.int32()),
    ]
)
_PIECE_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("pos", pa.int32()),
        ("first", pa.bool_()),
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
    ]
)
_ROWS_PER_BATCH = 1024


class PackParams(StageParams):
    # The tokenizer the tokenize stage used (it names the padding token); relative to include/pipelines.
    tokenizer: PathOrName = "../sample/tokenizer.json"
    pad_token: str | None = None  # None: <|pad|>, <pad>, [PAD]... or the end-of-text token when there is none
    seq_len: int = Field(default=2048, ge=2)
    mode: Literal["best_fit", "concat"] = "best_fit"


class PackPlanError(ValueError):
    pass


class Pack(DatasetStage):
    type_name = "pack"
    Params = PackParams
    params: PackParams
    joins_corpus = False
    default_gate = {"required_columns": ["id", "input_ids", "doc_ids", "doc_offsets", "n_pad"], "min_text_chars": None}

    def __init__(
        self,
        params: StageParams | dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(params, context, name)
        self._pad_id: int | None = None

    def setup(self) -> None:
        tokenizer = load_tokenizer(self.params.tokenizer)
        self._pad_id = pad_id(tokenizer, self.params.tokenizer, self.params.pad_token)

    def check_ready(self) -> None:
        self.setup()

    def dependencies(self, output_url: str) -> dict[str, str]:
        return tokenizer_dependency(self.params.tokenizer)

    def plan(self, shards: list[InputShard], work_url: str, run) -> dict[str, int]:
        lengths = run.map(_token_counts, shards)
        sizes = np.array([len(x) for x in lengths], dtype=np.int64)
        all_lengths = np.concatenate(lengths) if lengths else np.empty(0, np.int64)
        plan = plan_sequences(all_lengths, self.params.seq_len, self.params.mode)

        shard_of_doc = np.repeat(np.arange(len(shards)), sizes)
        doc_base = np.concatenate([[0], np.cumsum(sizes)])
        # A sequence is written by the output part of the shard holding its first token.
        starts = plan.pos == 0
        seq_part = np.empty(plan.n_sequences, dtype=np.int64)
        seq_part[plan.seq[starts]] = shard_of_doc[plan.doc[starts]]
        piece_part = seq_part[plan.seq]
        piece_shard = shard_of_doc[plan.doc]

        by_shard = np.argsort(piece_shard, kind="stable")
        bounds = np.searchsorted(piece_shard[by_shard], np.arange(len(shards) + 1))
        jobs = []
        for s, shard in enumerate(shards):
            mine = by_shard[bounds[s] : bounds[s + 1]]
            if len(mine) == 0:
                continue
            targets = {
                p: _pieces_url(work_url, shards[p].name, shard.name) for p in np.unique(piece_part[mine]).tolist()
            }
            jobs.append(
                (
                    shard.url,
                    plan.doc[mine] - doc_base[s],
                    plan.lo[mine],
                    plan.hi[mine],
                    plan.seq[mine],
                    plan.pos[mine],
                    piece_part[mine],
                    targets,
                )
            )
        run.map(_scatter_shard, jobs)
        return {"pack.empty_docs": int((all_lengths <= 0).sum())}

    def apply(self, shard: InputShard, work_url: str) -> Iterator[BatchResult]:
        if self._pad_id is None:
            self.setup()
        assert self._pad_id is not None, "setup finds the padding token"
        fs, folder = storage.filesystem(storage.join(work_url, "pack", shard.name))
        protocol = work_url.split("://", 1)[0] + "://" if "://" in work_url else ""
        urls = sorted(protocol + p for p in fs.glob(f"{folder}/*.parquet")) if fs.exists(folder) else []
        tables = [_read(url) for url in urls]
        pieces = pa.concat_tables(tables) if tables else _PIECE_SCHEMA.empty_table()
        sequences, metrics = assemble(pieces, self.params.seq_len, self._pad_id)
        for start in range(0, max(sequences.num_rows, 1), _ROWS_PER_BATCH):
            yield BatchResult(
                kept=sequences.slice(start, _ROWS_PER_BATCH), metrics=metrics if start == 0 else Counter()
            )


def _pieces_url(work_url: str, part: str, shard: str) -> str:
    return storage.join(work_url, "pack", part, f"{shard}.parquet")


class PackingPlan:
    """Every piece of every document: which tokens ``[lo, hi)`` of document ``doc`` go to
    sequence ``seq`` at position ``pos``."""

    def __init__(self, doc, lo, hi, seq, pos, n_sequences):
        self.doc, self.lo, self.hi, self.seq, self.pos = doc, lo, hi, seq, pos
        self.n_sequences = n_sequences


def plan_sequences(lengths: np.ndarray, seq_len: int, mode: str) -> PackingPlan:
    """Plan the sequences for documents of ``lengths`` tokens (in dataset order)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if mode == "concat":
        return _plan_concat(lengths, seq_len)
    if mode == "best_fit":
        return _plan_best_fit(lengths, seq_len)
    raise ValueError(f"unknown pack mode {mode!r}")


def _plan_concat(lengths: np.ndarray, seq_len: int) -> PackingPlan:
    docs = np.flatnonzero(lengths > 0)
    ends = np.cumsum(lengths[docs])
    starts = ends - lengths[docs]
    first = starts // seq_len
    count = (ends - 1) // seq_len - first + 1
    piece_doc = np.repeat(np.arange(len(docs)), count)
    k = np.arange(len(piece_doc)) - np.repeat(np.cumsum(count) - count, count)
    seq = first[piece_doc] + k
    lo_global = np.maximum(starts[piece_doc], seq * seq_len)
    hi_global = np.minimum(ends[piece_doc], (seq + 1) * seq_len)
    n_sequences = int((ends[-1] + seq_len - 1) // seq_len) if len(docs) else 0
    return PackingPlan(
        docs[piece_doc],
        lo_global - starts[piece_doc],
        hi_global - starts[piece_doc],
        seq,
        (lo_global - seq * seq_len).astype(np.int32),
        n_sequences,
    )


def _plan_best_fit(lengths: np.ndarray, seq_len: int) -> PackingPlan:
    n_full = np.where(lengths > 0, lengths // seq_len, 0)
    tail = np.where(lengths > 0, lengths % seq_len, 0)

    # Whole chunks of long documents: one sequence each.
    chunk_doc = np.repeat(np.arange(len(lengths)), n_full)
    chunk_k = np.arange(len(chunk_doc)) - np.repeat(np.cumsum(n_full) - n_full, n_full)

    # Tails and short documents: best-fit decreasing into bins of seq_len.
    item_doc = np.flatnonzero(tail > 0)
    item_size = tail[item_doc]
    item_bin = _best_fit_decreasing(item_size, seq_len)
    n_bins = int(item_bin.max()) + 1 if len(item_bin) else 0

    # Number sequences in dataset order of their last document, a bin after the whole
    # chunks of the document whose tail it holds: read in sequence order, every
    # document's pieces come in order.
    bin_last_doc = np.full(n_bins, -1, dtype=np.int64)
    np.maximum.at(bin_last_doc, item_bin, item_doc)
    key_doc = np.concatenate([chunk_doc, bin_last_doc])
    key_k = np.concatenate([chunk_k, n_full[bin_last_doc]])
    order = np.lexsort((key_k, key_doc))
    seq_number = np.empty(len(order), dtype=np.int64)
    seq_number[order] = np.arange(len(order))

    # Inside a bin, documents go in dataset order.
    by_bin = np.lexsort((item_doc, item_bin))
    sorted_bin, sorted_size = item_bin[by_bin], item_size[by_bin]
    cum = np.cumsum(sorted_size)
    bin_start = np.searchsorted(sorted_bin, sorted_bin, side="left")
    before = cum - sorted_size - np.where(bin_start > 0, cum[bin_start - 1], 0)
    item_pos = np.empty(len(item_doc), dtype=np.int64)
    item_pos[by_bin] = before

    doc = np.concatenate([chunk_doc, item_doc])
    lo = np.concatenate([chunk_k * seq_len, n_full[item_doc] * seq_len])
    hi = np.concatenate([(chunk_k + 1) * seq_len, lengths[item_doc]])
    seq = np.concatenate([seq_number[: len(chunk_doc)], seq_number[len(chunk_doc) :][item_bin]])
    pos = np.concatenate([np.zeros(len(chunk_doc), np.int64), item_pos]).astype(np.int32)
    return PackingPlan(doc, lo, hi, seq, pos, len(order))


def _best_fit_decreasing(sizes: np.ndarray, capacity: int) -> np.ndarray:
    """Bin of each item. Bins are bucketed by free space; one Python int is the bitset of
    non-empty buckets, so "the smallest free space >= size" is a shift and a lowest-bit
    lookup (word-parallel in C), not a scan over bins."""
    order = np.argsort(-sizes, kind="stable")
    buckets: list[list[int]] = [[] for _ in range(capacity + 1)]
    free_space: list[int] = []
    nonempty = 0
    item_bin = np.empty(len(sizes), dtype=np.int64)
    for item, size in zip(order.tolist(), sizes[order].tolist()):
        fits = nonempty >> size
        if fits:
            space = size + (fits & -fits).bit_length() - 1
            bucket = buckets[space]
            b = bucket.pop()
            if not bucket:
                nonempty &= ~(1 << space)
        else:
            b = len(free_space)
            free_space.append(capacity)
            space = capacity
        left = space - size
        free_space[b] = left
        if left > 0:
            if not buckets[left]:
                nonempty |= 1 << left
            buckets[left].append(b)
        item_bin[item] = b
    return item_bin


def assemble(pieces: pa.Table, seq_len: int, pad: int) -> tuple[pa.Table, Counter]:
    """Build the output rows of one part from its pieces (any order)."""
    if pieces.num_rows == 0:
        return OUTPUT_SCHEMA.empty_table(), Counter({"pack.sequences": 0})
    seq_all = pieces.column("seq").to_numpy()
    pos_all = pieces.column("pos").to_numpy()
    order = np.lexsort((pos_all, seq_all))
    pieces = pieces.take(pa.array(order))
    seq, pos = seq_all[order], pos_all[order].astype(np.int64)
    ids = pieces.column("input_ids").combine_chunks()
    offsets = ids.offsets.to_numpy()
    values = ids.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    lens = np.diff(offsets)

    numbers, local = np.unique(seq, return_inverse=True)
    n = len(numbers)
    dest_start = local * seq_len + pos
    dest = np.repeat(dest_start - (np.cumsum(lens) - lens), lens) + np.arange(len(values))
    if len(dest) and (pos + lens > seq_len).any():
        raise PackPlanError("pack: a piece overflows its sequence; the plan and the data disagree")
    flat = np.full(n * seq_len, pad, dtype=np.int32)
    flat[dest] = values
    used = np.bincount(local, weights=lens, minlength=n).astype(np.int64)
    per_seq = np.concatenate([[0], np.cumsum(np.bincount(local, minlength=n))]).astype(np.int32)
    list_offsets = pa.array(per_seq)
    table = pa.table(
        {
            "id": pa.array([f"seq/{k:012d}" for k in numbers.tolist()], pa.string()),
            "input_ids": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * seq_len), pa.array(flat)),
            "doc_ids": pa.ListArray.from_arrays(list_offsets, pieces.column("doc_id").combine_chunks()),
            "doc_offsets": pa.ListArray.from_arrays(list_offsets, pa.array(pos.astype(np.int32))),
            "source": pa.ListArray.from_arrays(list_offsets, pieces.column("source").combine_chunks()),
            "n_pad": pa.array((seq_len - used).astype(np.int32)),
        },
        schema=OUTPUT_SCHEMA,
    )
    first = pieces.column("first").to_numpy(zero_copy_only=False)
    metrics = Counter(
        {
            "pack.sequences": n,
            "pack.tokens": int(used.sum()),
            "pack.pad_tokens": int(n * seq_len - used.sum()),
            "pack.docs_packed": int(first.sum()),
            "pack.doc_pieces": int(len(first)),
        }
    )
    return table, metrics


def _token_counts(stage: Pack, shard: InputShard) -> np.ndarray:
    fs, path = storage.filesystem(shard.url)
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        if "token_count" not in parquet.schema_arrow.names:
            raise PackPlanError(f"pack: {shard.url} has no token_count column; run the tokenize stage first")
        counts = parquet.read(columns=["token_count"]).column("token_count")
    return counts.fill_null(0).to_numpy().astype(np.int64)


def _scatter_shard(stage: Pack, job: tuple) -> None:
    """Cut this shard's token slices and write each to the output part that needs them."""
    url, rows, lo, hi, seq, pos, part, targets = job
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        table = pq.read_table(f, columns=["id", "source", "input_ids", "token_count"])
    ids = table.column("input_ids").combine_chunks()
    offsets = ids.offsets.to_numpy().astype(np.int64)
    values = ids.values.to_numpy(zero_copy_only=False)
    actual = np.diff(offsets)
    declared = table.column("token_count").fill_null(0).to_numpy()
    mismatch = rows[actual[rows] != declared[rows]]
    if len(mismatch):
        bad = int(mismatch[0])
        raise PackPlanError(
            f"pack: {url} row {bad} (id {table.column('id')[bad].as_py()}): token_count "
            f"{declared[bad]} does not match its {actual[bad]} input_ids"
        )
    lens = hi - lo
    starts = offsets[rows] + lo
    take = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(int(lens.sum()))
    piece_ids = pa.ListArray.from_arrays(
        pa.array(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)), pa.array(values[take], pa.int32())
    )
    pieces = pa.table(
        {
            "seq": pa.array(seq, pa.int64()),
            "pos": pa.array(pos, pa.int32()),
            "first": pa.array(lo == 0),
            "doc_id": table.column("id").take(pa.array(rows)),
            "source": table.column("source").take(pa.array(rows)),
            "input_ids": piece_ids,
        },
        schema=_PIECE_SCHEMA,
    )
    for p, target in targets.items():
        selected = pieces.filter(pa.array(part == p))
        tfs, tpath = storage.filesystem(target)
        tfs.makedirs(tpath.rsplit("/", 1)[0], exist_ok=True)
        with tfs.open(tpath, "wb") as out:
            pq.write_table(selected, out, compression="zstd")


def _read(url: str) -> pa.Table:
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, schema=_PIECE_SCHEMA)
