"""Near-duplicate removal: MinHash signatures, LSH banding, connected components.

Map (``prepare``, a process pool): every shard's texts become MinHash signatures.
Reduce (``prepare``): band keys -> candidate pairs -> optional verification by the
signature-estimated Jaccard -> connected components -> one survivor per cluster by a
deterministic rule. Apply (``run_shard``, per shard in the workers): drop every other
member with reason ``near_duplicate`` and the survivor's id as detail.

Incremental: with ``index_url`` the signatures of everything already kept persist as
Parquet; a new batch is compared with itself and with the index (only index rows
sharing a band key with the batch are read), indexed documents always survive, and the
batch's own survivors are appended to the index as one part. The part is named after
the output dataset, so a resumed or repeated run replaces its own part instead of
matching against it.

Side output: ``_clusters/clusters.parquet`` (survivor, size, duplicate ids, a sample
of pairs with their estimated similarity).
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from tamis import minhash, storage
from tamis.runner import process_context
from tamis.stage import READ_BATCH_ROWS, BatchResult, InputShard, Stage, StageParams, drop_listed_rows

REASON = "near_duplicate"
INDEX_META = "_index.json"
CLUSTERS_FILE = "_clusters/clusters.parquet"


class NearDedupParams(StageParams):
    shingle: Literal["word", "char"] = "word"  # word n-grams (prose, code) or character n-grams (no spaces: CJK)
    ngram: int = Field(default=2, ge=1, le=256)  # 2: best F1 on the labelled near-dup sets (benchmarks/near_dedup.py)
    lowercase: bool = True
    num_perm: int = Field(default=128, ge=2, le=1024)
    threshold: float = Field(default=0.8, gt=0.0, lt=1.0)  # Jaccard similarity that makes a near duplicate
    bands: int | None = Field(default=None, ge=1)  # None: derived from threshold and num_perm
    rows: int | None = Field(default=None, ge=1)
    fp_weight: float = Field(default=0.5, ge=0.0)  # weights of the (bands, rows) search
    fn_weight: float = Field(default=0.5, ge=0.0)
    seed: int = 42
    verify: bool = True  # keep only candidate pairs whose estimated Jaccard reaches the threshold
    keep: Literal["first", "longest", "highest_quality"] = "first"
    quality_column: str | None = None  # required by keep=highest_quality; higher is better
    index_url: str | None = None  # signatures of the corpus kept so far (incremental runs)
    update_index: bool = True  # append this batch's survivors to index_url
    # This run's part of the index; nightly runs name it after their date so that re-running
    # a day replaces that day's part. None: derived from the output URL.
    index_part: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._=-]+$")
    sample_pairs: int = Field(default=5, ge=0)  # pairs per cluster written to the cluster report

    @model_validator(mode="after")
    def _consistent(self):
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither (derived from threshold)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows ({self.bands}*{self.rows}) exceeds num_perm ({self.num_perm})")
        if self.keep == "highest_quality" and not self.quality_column:
            raise ValueError("keep=highest_quality needs quality_column")
        return self

    def minhash_config(self) -> minhash.MinHashConfig:
        bands, rows = (self.bands, self.rows) if self.bands else minhash.optimal_bands(
            self.threshold, self.num_perm, self.fp_weight, self.fn_weight)
        return minhash.MinHashConfig(shingle=self.shingle, ngram=self.ngram, num_perm=self.num_perm, bands=bands,
                                     rows=rows, seed=self.seed, lowercase=self.lowercase)


@dataclass
class Signed:
    """Signatures of a set of documents with what the survivor rule needs."""

    meta: pa.Table  # tier, id, source, date, length, quality
    sig: np.ndarray  # (n, num_perm) uint32
    shingles: np.ndarray  # (n,) shingle count; 0 = nothing to compare


class NearDedup(Stage):
    name = "near_dedup"
    Params = NearDedupParams

    def __init__(self, params=None, context=None):
        super().__init__(params, context)
        self._drops: dict[str, tuple[np.ndarray, list[str]]] = {}
        self._summary: Counter = Counter()
        self._first_shard: str | None = None

    def prepare(self, shards: list[InputShard], work_url: str, workers: int) -> None:
        params: NearDedupParams = self.params
        config = params.minhash_config()
        output_url = work_url.rsplit("/", 1)[0]
        part = params.index_part or _run_key(output_url)
        args = [(s.url, config, params.quality_column) for s in shards]
        if workers > 1 and len(shards) > 1:
            context = process_context()
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                new, sizes = _gather(pool.map(_sign_shard, *zip(*args)), [s.url for s in shards], config.num_perm)
        else:
            new, sizes = _gather((_sign_shard(*a) for a in args), [s.url for s in shards], config.num_perm)
        keys = minhash.band_keys(new.sig, config)
        indexed = None
        if params.index_url:
            index = Index(params.index_url, config)
            indexed = index.matching(keys, exclude=part)
        plan = plan_drops(new, keys, indexed, config, params)
        shard_of = np.repeat(np.arange(len(shards)), sizes)
        row_of = np.arange(len(shard_of)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        self._drops = {}
        for i in np.unique(shard_of[plan.dropped]):
            mask = shard_of[plan.dropped] == i
            self._drops[shards[i].name] = (row_of[plan.dropped[mask]], plan.survivor_ids[mask].tolist())
        self._summary = plan.summary
        self._first_shard = shards[0].name if shards else None
        write_parquet_atomic(plan.clusters, storage.join(output_url, CLUSTERS_FILE), output_url)
        if params.index_url and params.update_index:
            Index(params.index_url, config).write_part(part, plan.kept_signed)

    def run_shard(self, shard: InputShard) -> Iterator[BatchResult]:
        rows, survivors = self._drops.get(shard.name, (np.empty(0, np.int64), []))
        for i, (table, result) in enumerate(drop_listed_rows(shard, rows, survivors, REASON)):
            result.metrics = _source_metrics(table, result.dropped)
            if i == 0 and shard.name == self._first_shard:
                # Dataset-wide figures are counted once, on the first shard, so that the
                # manifest's sum over shards states them exactly.
                result.metrics.update(self._summary)
            yield result


def _source_metrics(table: pa.Table, dropped: pa.Table) -> Counter:
    metrics: Counter = Counter()
    if "source" not in table.column_names:
        return metrics
    for column, kind in ((table.column("source"), "in"), (dropped.column("source"), "dropped")):
        if len(column):
            for row in column.value_counts().to_pylist():
                metrics[f"near_dup.{row['values']}.{kind}"] += int(row["counts"])
    return metrics


# --------------------------------------------------------------------------- map

def _sign_shard(url: str, config: minhash.MinHashConfig, quality_column: str | None) -> Signed:
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        names = parquet.schema_arrow.names
        columns = [c for c in ("id", "source", "date", "text", quality_column) if c and c in names]
        if "id" not in names or "text" not in names:
            raise ValueError(f"{url}: near_dedup needs columns 'id' and 'text', found {names}")
        if quality_column and quality_column not in names:
            raise ValueError(f"{url}: quality_column {quality_column!r} is not a column ({names})")
        sigs, counts, metas = [], [], []
        # Batches bound the text held at once; only signatures and metadata accumulate.
        for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=columns):
            text = batch.column("text")
            sig, shingles = minhash.signatures(text, config)
            sigs.append(sig)
            counts.append(shingles)
            metas.append(_meta(batch, tier=1, quality_column=quality_column,
                               length=pc.fill_null(pc.binary_length(text), 0)))
    if not metas:
        return Signed(_empty_meta(), np.empty((0, config.num_perm), np.uint32), np.empty(0, np.int64))
    return Signed(pa.concat_tables(metas), np.concatenate(sigs), np.concatenate(counts))


def _meta(batch, tier: int, quality_column: str | None, length) -> pa.Table:
    n = batch.num_rows

    def column(name, type_):
        if name and name in batch.schema.names:
            return batch.column(name).cast(type_)
        return pa.nulls(n, type_)

    return pa.table({
        "tier": pa.array(np.full(n, tier, dtype=np.int8)),
        "id": column("id", pa.string()),
        "source": column("source", pa.string()),
        "date": column("date", pa.string()),
        "length": length.cast(pa.int64()) if length is not None else pa.nulls(n, pa.int64()),
        "quality": column(quality_column, pa.float64()),
    })


_META_SCHEMA = pa.schema([("tier", pa.int8()), ("id", pa.string()), ("source", pa.string()), ("date", pa.string()),
                          ("length", pa.int64()), ("quality", pa.float64())])


def _empty_meta() -> pa.Table:
    return _META_SCHEMA.empty_table()


def _gather(results: Iterator[Signed], urls: list[str], num_perm: int) -> tuple[Signed, np.ndarray]:
    """Copy each shard's signatures into one array sized from the Parquet footers, as they
    arrive: the peak is the index plus one shard, not twice the index."""
    sizes = np.zeros(len(urls), dtype=np.int64)
    for i, url in enumerate(urls):
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as f:
            sizes[i] = pq.ParquetFile(f).metadata.num_rows
    sig = np.empty((int(sizes.sum()), num_perm), dtype=np.uint32)
    shingles = np.empty(int(sizes.sum()), dtype=np.int64)
    metas = []
    for i, (start, part) in enumerate(zip(np.cumsum(sizes) - sizes, results)):
        if len(part.sig) != sizes[i]:
            raise ValueError(f"{urls[i]}: read {len(part.sig)} rows, its footer says {sizes[i]}")
        sig[start: start + sizes[i]] = part.sig
        shingles[start: start + sizes[i]] = part.shingles
        metas.append(part.meta.cast(_META_SCHEMA))
    meta = pa.concat_tables(metas) if metas else _empty_meta()
    return Signed(meta, sig, shingles), sizes


# --------------------------------------------------------------------------- reduce

@dataclass
class Plan:
    dropped: np.ndarray  # indices into the new documents, ascending
    survivor_ids: np.ndarray  # object array of the survivor id of each dropped document
    clusters: pa.Table
    kept_signed: Signed  # new documents that survive and have shingles (the index append)
    summary: Counter


def plan_drops(new: Signed, keys: np.ndarray, indexed: tuple[Signed, np.ndarray] | None,
               config: minhash.MinHashConfig, params: NearDedupParams) -> Plan:
    """Cluster the new documents (and the matching indexed ones) and decide who goes."""
    n_new = len(new.sig)
    all_meta, all_sig, all_keys, active = new.meta, new.sig, keys, new.shingles > 0
    if indexed is not None and len(indexed[0].sig):
        old, old_keys = indexed
        all_meta = pa.concat_tables([new.meta, old.meta.cast(_META_SCHEMA)])
        all_sig = np.concatenate([new.sig, old.sig])
        all_keys = np.concatenate([keys, old_keys])
        active = np.concatenate([active, np.ones(len(old.sig), dtype=bool)])
    priority = minhash.priority_rank(all_meta, params.keep)
    found = minhash.cluster(all_sig, all_keys, active, minhash.id_rank(all_meta.column("id")), priority,
                            params.threshold if params.verify else None)
    # Indexed documents are already in the corpus: they are never dropped here.
    found.survivor[n_new:] = np.arange(n_new, len(all_sig))
    dropped = np.flatnonzero(found.duplicate[:n_new])
    ids = all_meta.column("id").combine_chunks()
    survivor_ids = np.asarray(pc.take(ids, pa.array(found.survivor[dropped], pa.int64())).to_pylist(), dtype=object)
    clusters = minhash.cluster_table(ids, all_sig, found, params.sample_pairs)
    kept = np.flatnonzero(~found.duplicate[:n_new] & (new.shingles > 0))
    kept_signed = Signed(new.meta.take(pa.array(kept, pa.int64())), new.sig[kept], new.shingles[kept])
    summary = Counter({
        "near_dup.candidate_pairs": found.candidate_pairs,
        "near_dup.verified_pairs": found.verified_pairs,
        "near_dup.clusters": clusters.num_rows,
        "near_dup.no_shingles": int(n_new - np.count_nonzero(new.shingles)),
        "near_dup.index_rows_matched": len(all_sig) - n_new,
        "near_dup.dropped_for_index": int(np.count_nonzero(found.survivor[dropped] >= n_new)),
    })
    return Plan(dropped, survivor_ids, clusters, kept_signed, +summary)


# --------------------------------------------------------------------------- incremental index

class IndexMismatch(ValueError):
    pass


class Index:
    """Signatures and band keys of the documents kept so far, as Parquet parts:

        <index_url>/_index.json        the MinHash settings every part was built with
        <index_url>/<run key>.parquet  id, source, date, band_000.., sig (one part per run)
    """

    def __init__(self, url: str, config: minhash.MinHashConfig):
        self.url = url
        self.config = config

    def _check(self) -> bool:
        meta_url = storage.join(self.url, INDEX_META)
        if not storage.exists(meta_url):
            return False
        found = storage.read_json(meta_url)
        if found != self.config.fingerprint():
            raise IndexMismatch(f"index {self.url} was built with {found}, this stage uses {self.config.fingerprint()}; "
                                "use a new index_url or the same MinHash settings")
        return True

    def parts(self) -> list[str]:
        fs, path = storage.filesystem(self.url)
        if not fs.exists(path):
            return []
        return sorted(p.rsplit("/", 1)[-1][: -len(".parquet")] for p in fs.glob(f"{path}/*.parquet"))

    def matching(self, keys: np.ndarray, exclude: str | None = None) -> tuple[Signed, np.ndarray] | None:
        """Indexed documents sharing at least one band key with ``keys``: only their band
        columns are read in full; signatures are read for the matching rows."""
        if not self._check():
            return None
        bands = [f"band_{i:03d}" for i in range(self.config.bands)]
        wanted = [np.unique(keys[:, i]) for i in range(self.config.bands)]
        metas, sigs, found_keys = [], [], []
        for name in self.parts():
            if name == exclude:
                continue
            fs, path = storage.filesystem(storage.join(self.url, f"{name}.parquet"))
            with fs.open(path, "rb") as f:
                part = pq.ParquetFile(f)
                band_table = part.read(columns=bands)
                part_keys = np.column_stack([band_table.column(b).to_numpy() for b in bands]) if band_table.num_rows \
                    else np.empty((0, len(bands)), np.uint64)
                hit = np.zeros(len(part_keys), dtype=bool)
                for i in range(len(bands)):
                    hit |= np.isin(part_keys[:, i], wanted[i])
                if not hit.any():
                    continue
                rows = part.read(columns=["id", "source", "date", "sig"]).filter(pa.array(hit))
            flat = np.frombuffer(rows.column("sig").combine_chunks().buffers()[1], dtype=np.uint32)
            sigs.append(flat[: rows.num_rows * self.config.num_perm].reshape(rows.num_rows, self.config.num_perm))
            found_keys.append(part_keys[hit])
            metas.append(_meta(rows, tier=0, quality_column=None, length=None))
        if not metas:
            return None
        meta = pa.concat_tables(metas)
        return Signed(meta, np.concatenate(sigs), np.ones(meta.num_rows, np.int64)), np.concatenate(found_keys)

    def write_part(self, run_key: str, signed: Signed) -> None:
        if not self._check():
            storage.write_json_atomic(storage.join(self.url, INDEX_META), self.config.fingerprint(), self.url)
        keys = minhash.band_keys(signed.sig, self.config)
        columns = {"id": signed.meta.column("id"), "source": signed.meta.column("source"),
                   "date": signed.meta.column("date")}
        for i in range(self.config.bands):
            columns[f"band_{i:03d}"] = pa.array(keys[:, i], pa.uint64())
        width = self.config.num_perm * 4
        columns["sig"] = pa.Array.from_buffers(pa.binary(width), len(signed.sig),
                                               [None, pa.py_buffer(np.ascontiguousarray(signed.sig).tobytes())])
        write_parquet_atomic(pa.table(columns), storage.join(self.url, f"{run_key}.parquet"), self.url)


def _run_key(output_url: str) -> str:
    return "run-" + hashlib.sha256(output_url.rstrip("/").encode()).hexdigest()[:16]


def write_parquet_atomic(table: pa.Table, url: str, dataset_url: str) -> None:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes_atomic(url, sink.getvalue(), dataset_url)
