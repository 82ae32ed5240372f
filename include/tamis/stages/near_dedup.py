"""Near-duplicate removal: MinHash signatures, LSH banding, connected components.

Plan, map step (on the engine's workers): every shard's texts become MinHash
signatures. Plan, reduce: band keys -> candidate pairs -> optional verification by the
signature-estimated Jaccard -> connected components -> one survivor per cluster by a
deterministic rule; each shard's drops go to its drop plan. Apply (per shard): drop every
other member with reason ``near_duplicate`` and the survivor's id as detail. On Spark
(:func:`plan_on_spark`) the map, the candidate pairs and the verification are Spark jobs.

Incremental: with ``index_url`` the signatures of everything already kept persist as
Parquet; a new batch is compared with itself and with the index (only index rows
sharing a band key with the batch are read), indexed documents always survive, and the
batch's own survivors are appended to the index as one part. The part is named after
the day (nightly runs) or the output dataset, so a resumed or repeated run replaces its
own part instead of matching against it.

Side output: ``_clusters/clusters.parquet`` (survivor, size, duplicate ids, a sample
of pairs with their estimated similarity).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from tamis import minhash, storage
from tamis.stage import READ_BATCH_ROWS, BatchResult, CorpusContext, DropListStage, InputShard, StageParams, write_drop_plan

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


class NearDedup(DropListStage):
    type_name = "near_dedup"
    Params = NearDedupParams
    params: NearDedupParams
    drop_reason = REASON
    duplicate_reasons = (REASON,)

    def corpus_params(self, corpus: CorpusContext) -> dict:
        # The day's part of the index is named after the day: a re-run replaces it.
        return {"index_url": corpus.index_url(self.name), "index_part": f"date={corpus.date}"}

    def dependencies(self, output_url: str) -> dict[str, str]:
        if not self.params.index_url:
            return {}
        index = SignatureIndex(self.params.index_url, self.params.minhash_config())
        return {"index": index.state(exclude=self.params.index_part or _run_key(output_url))}

    def plan(self, shards: list[InputShard], work_url: str, engine) -> dict[str, int]:
        params = self.params
        config = params.minhash_config()
        output_url = work_url.rsplit("/", 1)[0]
        part = params.index_part or _run_key(output_url)
        new, sizes = _gather(engine.imap(_sign_shard, [s.url for s in shards]), [s.url for s in shards], config.num_perm)
        keys = minhash.band_keys(new.sig, config)
        indexed = None
        if params.index_url:
            indexed = SignatureIndex(params.index_url, config).matching(keys, exclude=part)
        plan = plan_drops(new, keys, indexed, config, params)
        shard_of = np.repeat(np.arange(len(shards)), sizes)
        row_of = np.arange(len(shard_of)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        for i in np.unique(shard_of[plan.dropped]):
            mask = shard_of[plan.dropped] == i
            write_drop_plan(work_url, shards[i].name, row_of[plan.dropped[mask]], plan.survivor_ids[mask].tolist())
        write_parquet_atomic(plan.clusters, storage.join(output_url, CLUSTERS_FILE), output_url)
        if params.index_url and params.update_index:
            SignatureIndex(params.index_url, config).write_part(part, plan.kept_signed)
        return dict(plan.summary)

    def plan_spark(self, shards: list[InputShard], work_url: str, run) -> dict[str, int]:
        return plan_on_spark(self, shards, work_url, run)

    def batch_metrics(self, table: pa.Table, result: BatchResult) -> Counter:
        return _source_metrics(table, result.dropped)


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

def _sign_shard(stage: NearDedup, url: str) -> Signed:
    return sign_part(url, stage.params.minhash_config(), stage.params.quality_column)


def sign_part(url: str, config: minhash.MinHashConfig, quality_column: str | None) -> Signed:
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


def _gather(results: Iterator[tuple[int, Signed]], urls: list[str], num_perm: int) -> tuple[Signed, np.ndarray]:
    """Copy each shard's signatures into one array sized from the Parquet footers, as they
    arrive (in any order): the peak is the index plus one shard, not twice the index."""
    sizes = np.zeros(len(urls), dtype=np.int64)
    for i, url in enumerate(urls):
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as f:
            sizes[i] = pq.ParquetFile(f).metadata.num_rows
    sig = np.empty((int(sizes.sum()), num_perm), dtype=np.uint32)
    shingles = np.empty(int(sizes.sum()), dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    metas: list[pa.Table | None] = [None] * len(urls)
    for i, part in results:
        if len(part.sig) != sizes[i]:
            raise ValueError(f"{urls[i]}: read {len(part.sig)} rows, its footer says {sizes[i]}")
        sig[starts[i]: starts[i] + sizes[i]] = part.sig
        shingles[starts[i]: starts[i] + sizes[i]] = part.shingles
        metas[i] = part.meta.cast(_META_SCHEMA)
    meta = pa.concat_tables(metas) if metas else _empty_meta()
    return Signed(meta, sig, shingles), sizes


# --------------------------------------------------------------------------- reduce

@dataclass
class DropPlan:
    dropped: np.ndarray  # indices into the new documents, ascending
    survivor_ids: np.ndarray  # object array of the survivor id of each dropped document
    clusters: pa.Table
    kept_signed: Signed  # new documents that survive and have shingles (the index append)
    summary: Counter


def plan_drops(new: Signed, keys: np.ndarray, indexed: tuple[Signed, np.ndarray] | None,
               config: minhash.MinHashConfig, params: NearDedupParams) -> DropPlan:
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
    return DropPlan(dropped, survivor_ids, clusters, kept_signed, +summary)


# --------------------------------------------------------------------------- incremental index

class IndexMismatch(ValueError):
    pass


class SignatureIndex:
    """Signatures and band keys of the documents kept so far, as Parquet parts:

        <index_url>/_index.json        the MinHash settings every part was built with
        <index_url>/<run key>.parquet  id, source, date, band_000.., sig (one part per run)
        <index_url>/<run key>/*.parquet  the same, as several files (a part Spark wrote)
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

    def part_files(self) -> dict[str, list[str]]:
        """Every part's Parquet files (URLs), by part name."""
        fs, path = storage.filesystem(self.url)
        if not fs.exists(path):
            return {}
        protocol = self.url.split("://", 1)[0] + "://" if "://" in self.url else ""
        parts: dict[str, list[str]] = {}
        for entry in fs.ls(path, detail=True):
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if name.startswith(("_", ".")):
                continue
            if entry["type"] == "directory":
                files = sorted(f for f in fs.glob(f"{entry['name'].rstrip('/')}/*.parquet"))
                parts[name] = [protocol + f for f in files]
            elif name.endswith(".parquet"):
                parts[name[: -len(".parquet")]] = [protocol + entry["name"]]
        return dict(sorted(parts.items()))

    def parts(self) -> list[str]:
        return list(self.part_files())

    def state(self, exclude: str | None) -> str:
        """A version of the index without part ``exclude``: what an incremental run compares against."""
        digest = hashlib.sha256(json.dumps(self.config.fingerprint(), sort_keys=True).encode())
        for name, files in self.part_files().items():
            if name == exclude:
                continue
            for url in files:
                fs, path = storage.filesystem(url)
                info = fs.info(path)
                digest.update(f"{name}/{url.rsplit('/', 1)[-1]}:{info.get('size')}:{info.get('ETag') or info.get('mtime')}".encode())
        return digest.hexdigest()

    def matching(self, keys: np.ndarray, exclude: str | None = None) -> tuple[Signed, np.ndarray] | None:
        """Indexed documents sharing at least one band key with ``keys``: only their band
        columns are read in full; signatures are read for the matching rows."""
        if not self._check():
            return None
        bands = band_columns(self.config)
        wanted = [np.unique(keys[:, i]) for i in range(self.config.bands)]
        metas, sigs, found_keys = [], [], []
        for name, files in self.part_files().items():
            if name == exclude:
                continue
            for url in files:
                fs, path = storage.filesystem(url)
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
                sigs.append(signature_matrix(rows.column("sig"), self.config.num_perm))
                found_keys.append(part_keys[hit])
                metas.append(_meta(rows, tier=0, quality_column=None, length=None))
        if not metas:
            return None
        meta = pa.concat_tables(metas)
        return Signed(meta, np.concatenate(sigs), np.ones(meta.num_rows, np.int64)), np.concatenate(found_keys)

    def prepare(self) -> None:
        if not self._check():
            storage.write_json_atomic(storage.join(self.url, INDEX_META), self.config.fingerprint(), self.url)

    def remove_part(self, name: str) -> None:
        storage.remove_tree(storage.join(self.url, f"{name}.parquet"))
        storage.remove_tree(storage.join(self.url, name))

    def write_part(self, run_key: str, signed: Signed) -> None:
        self.prepare()
        keys = minhash.band_keys(signed.sig, self.config)
        table = index_rows(signed.meta.column("id"), signed.meta.column("source"), signed.meta.column("date"),
                           keys, signed.sig, self.config)
        self.remove_part(run_key)
        write_parquet_atomic(table, storage.join(self.url, f"{run_key}.parquet"), self.url)


def band_columns(config: minhash.MinHashConfig) -> list[str]:
    return [f"band_{i:03d}" for i in range(config.bands)]


def index_rows(ids, sources, dates, keys: np.ndarray, sig: np.ndarray, config: minhash.MinHashConfig) -> pa.Table:
    """Index rows: id, source, date, one uint64 column per band, the signature as fixed-size bytes."""
    columns = {"id": ids, "source": sources, "date": dates}
    for i, column in enumerate(band_columns(config)):
        columns[column] = pa.array(np.ascontiguousarray(keys[:, i]), pa.uint64())
    width = config.num_perm * 4
    columns["sig"] = pa.Array.from_buffers(pa.binary(width), len(sig), [None, pa.py_buffer(np.ascontiguousarray(sig).tobytes())])
    return pa.table(columns)


def signature_matrix(column, num_perm: int) -> np.ndarray:
    """(n, num_perm) uint32 from a column of signature bytes (fixed-size or variable binary)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.binary())
    n = len(column)
    if n == 0:
        return np.empty((0, num_perm), np.uint32)
    if pa.types.is_fixed_size_binary(column.type):
        flat = np.frombuffer(column.buffers()[1], dtype=np.uint32)
        return flat[column.offset * num_perm:(column.offset + n) * num_perm].reshape(n, num_perm)
    column = column.cast(pa.large_binary())
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int64)[column.offset: column.offset + n + 1]
    data = np.frombuffer(column.buffers()[2], dtype=np.uint8)[offsets[0]: offsets[-1]]
    return data.view(np.uint32).reshape(n, num_perm)


def _run_key(output_url: str) -> str:
    return "run-" + hashlib.sha256(output_url.rstrip("/").encode()).hexdigest()[:16]


def write_parquet_atomic(table: pa.Table, url: str, dataset_url: str) -> None:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes_atomic(url, sink.getvalue(), dataset_url)


# --------------------------------------------------------------------------- on Spark

_SPARK_ROWS = pa.schema([
    ("shard", pa.int32()), ("row", pa.int64()), ("tier", pa.int8()), ("id", pa.string()), ("source", pa.string()),
    ("date", pa.string()), ("length", pa.int64()), ("quality", pa.float64()), ("shingles", pa.int64()),
    ("keys", pa.list_(pa.int64())), ("sig", pa.binary()),
])
_SPARK_PAIRS = pa.schema([("id_a", pa.string()), ("id_b", pa.string()), ("similarity", pa.float32())])


def plan_on_spark(stage: NearDedup, shards: list[InputShard], work_url: str, run) -> dict[str, int]:
    """The plan of :meth:`NearDedup.plan` with its heavy steps as Spark jobs: signatures on
    the executors, candidate pairs by a shuffle on band keys (members of a bucket ordered by
    id, linked to the first member and to their predecessor, as locally), verification on
    the executors, matching against the corpus index by a join. Only the verified edges and
    the documents they touch come to the driver, where clusters and survivors are chosen
    with the local functions: both engines drop the same documents for the same survivors."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    params = stage.params
    config = params.minhash_config()
    output_url = work_url.rsplit("/", 1)[0]
    part = params.index_part or _run_key(output_url)
    new = run.frame(_signed_rows, [(i, s.url) for i, s in enumerate(shards)], _SPARK_ROWS).cache()
    pool = new
    index = SignatureIndex(params.index_url, config) if params.index_url else None
    if index is not None and index._check():
        files = [url for name, urls in index.part_files().items() if name != part for url in urls]
        indexed = run.frame(_indexed_rows, [(i - len(files), url) for i, url in enumerate(files)], _SPARK_ROWS)
        new_keys = new.select(F.posexplode("keys").alias("band", "key")).distinct()
        matched_ids = indexed.select("id", F.posexplode("keys").alias("band", "key")) \
            .join(new_keys, ["band", "key"], "left_semi").select("id").distinct()
        pool = new.unionByName(indexed.join(matched_ids, "id", "left_semi"))

    buckets = pool.where("shingles > 0").select("id", F.posexplode("keys").alias("band", "key"))
    in_bucket = Window.partitionBy("band", "key").orderBy("id")
    linked = buckets.select("id", F.first("id").over(in_bucket).alias("head"), F.lag("id").over(in_bucket).alias("prev"))
    pairs = linked.where("head != id").select(F.col("head").alias("x"), "id") \
        .unionByName(linked.where("prev is not null").select(F.col("prev").alias("x"), "id")) \
        .select(F.least("x", "id").alias("id_a"), F.greatest("x", "id").alias("id_b")).distinct()
    sigs = pool.select("id", "sig")
    with_sigs = pairs.join(sigs.withColumnRenamed("id", "id_a").withColumnRenamed("sig", "sig_a"), "id_a") \
        .join(sigs.withColumnRenamed("id", "id_b").withColumnRenamed("sig", "sig_b"), "id_b")
    num_perm = config.num_perm
    edges = with_sigs.select("id_a", "id_b", "sig_a", "sig_b").mapInArrow(
        lambda batches: _verify_batches(batches, num_perm), from_arrow_spark(_SPARK_PAIRS)).toArrow()
    candidate_pairs = edges.num_rows
    if params.verify and edges.num_rows:
        sims = edges.column("similarity").to_numpy()
        edges = edges.filter(pa.array(sims >= np.float32(params.threshold) - np.float32(1e-6)))

    node_ids = pa.chunked_array([edges.column("id_a"), edges.column("id_b")]).unique() if edges.num_rows \
        else pa.array([], pa.string())
    nodes = _SPARK_ROWS.empty_table()
    if len(node_ids):
        wanted = run.session.createDataFrame(pa.table({"id": node_ids}))
        nodes = pool.join(F.broadcast(wanted), "id", "left_semi").select(*_SPARK_ROWS.names).toArrow()
        # The local order: new documents by (shard, row), then indexed ones by (file, row).
        nodes = nodes.sort_by([("tier", "descending"), ("shard", "ascending"), ("row", "ascending")])
    summary, drops, clusters = _choose_survivors(nodes, edges, candidate_pairs, params, config)
    summary["near_dup.no_shingles"] = new.where("shingles = 0").count()
    summary["near_dup.index_rows_matched"] = pool.count() - new.count()
    for shard in np.unique(drops["shard"]):
        mask = drops["shard"] == shard
        write_drop_plan(work_url, shards[int(shard)].name, drops["row"][mask], drops["survivor"][mask].tolist())
    write_parquet_atomic(clusters, storage.join(output_url, CLUSTERS_FILE), output_url)

    if index is not None and params.update_index:
        index.prepare()
        index.remove_part(part)
        dropped = run.session.createDataFrame(pa.table({"shard": pa.array(drops["shard"], pa.int32()),
                                                        "row": pa.array(drops["row"], pa.int64())}))
        kept = new.where("shingles > 0").join(F.broadcast(dropped), ["shard", "row"], "left_anti")
        folder = storage.join(params.index_url, part)
        kept.select(*_SPARK_ROWS.names).mapInArrow(
            lambda batches: _write_index_file(batches, folder, config), "rows long").collect()
    new.unpersist()
    return {k: int(v) for k, v in summary.items() if v}


def from_arrow_spark(schema: pa.Schema):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def _signed_rows(stage: NearDedup, item: tuple[int, str]) -> Iterator[pa.Table]:
    shard, url = item
    config = stage.params.minhash_config()
    signed = sign_part(url, config, stage.params.quality_column)
    n = len(signed.sig)
    keys = minhash.band_keys(signed.sig, config).view(np.int64)  # Spark has no unsigned 64-bit type
    meta = signed.meta
    yield pa.table({
        "shard": pa.array(np.full(n, shard, np.int32)), "row": pa.array(np.arange(n, dtype=np.int64)),
        "tier": pa.array(np.ones(n, np.int8)), "id": meta.column("id"), "source": meta.column("source"),
        "date": meta.column("date"), "length": meta.column("length"), "quality": meta.column("quality"),
        "shingles": pa.array(signed.shingles, pa.int64()),
        "keys": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * config.bands), pa.array(keys.ravel())),
        "sig": _sig_column(signed.sig),
    }, schema=_SPARK_ROWS)


def _indexed_rows(stage: NearDedup, item: tuple[int, str]) -> Iterator[pa.Table]:
    file_number, url = item
    config = stage.params.minhash_config()
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    n = table.num_rows
    keys = np.column_stack([table.column(b).to_numpy() for b in band_columns(config)]) if n \
        else np.empty((0, config.bands), np.uint64)
    yield pa.table({
        "shard": pa.array(np.full(n, file_number, np.int32)), "row": pa.array(np.arange(n, dtype=np.int64)),
        "tier": pa.array(np.zeros(n, np.int8)), "id": table.column("id"), "source": table.column("source"),
        "date": table.column("date"), "length": pa.nulls(n, pa.int64()), "quality": pa.nulls(n, pa.float64()),
        "shingles": pa.array(np.ones(n, np.int64)),
        "keys": pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * config.bands),
                                         pa.array(keys.astype(np.uint64).view(np.int64).ravel())),
        "sig": _sig_column(signature_matrix(table.column("sig"), config.num_perm)),
    }, schema=_SPARK_ROWS)


def _sig_column(sig: np.ndarray) -> pa.Array:
    n, width = len(sig), sig.shape[1] * 4 if sig.ndim == 2 else 0
    offsets = np.arange(n + 1, dtype=np.int32) * width
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(sig).tobytes())])


def _verify_batches(batches, num_perm: int):
    """(id_a, id_b, sig_a, sig_b) -> the estimated Jaccard of each pair."""
    for batch in batches:
        a = signature_matrix(batch.column("sig_a"), num_perm)
        b = signature_matrix(batch.column("sig_b"), num_perm)
        yield pa.RecordBatch.from_arrays(
            [batch.column("id_a"), batch.column("id_b"), pa.array(minhash.similarity(a, b), pa.float32())],
            names=["id_a", "id_b", "similarity"])


def _write_index_file(batches, folder: str, config: minhash.MinHashConfig):
    import uuid

    tables = [pa.Table.from_batches([b]) for b in batches]
    rows = sum(t.num_rows for t in tables)
    if rows:
        table = pa.concat_tables(tables)
        flat = pc.list_flatten(table.column("keys")).to_numpy(zero_copy_only=False)
        keys = flat.astype(np.int64).view(np.uint64).reshape(-1, config.bands)
        out = index_rows(table.column("id"), table.column("source"), table.column("date"), keys,
                         signature_matrix(table.column("sig"), config.num_perm), config)
        write_parquet_atomic(out, storage.join(folder, f"{uuid.uuid4().hex}.parquet"), folder)
    yield pa.RecordBatch.from_arrays([pa.array([rows], pa.int64())], names=["rows"])


def _choose_survivors(nodes: pa.Table, edges: pa.Table, candidate_pairs: int, params: NearDedupParams,
                      config: minhash.MinHashConfig) -> tuple[Counter, dict[str, np.ndarray], pa.Table]:
    """Clusters and survivors among the documents that have a verified edge."""
    n = nodes.num_rows
    ids = nodes.column("id").combine_chunks() if n else pa.array([], pa.string())
    sig = signature_matrix(nodes.column("sig"), config.num_perm)
    a = pc.index_in(edges.column("id_a"), value_set=ids).to_numpy(zero_copy_only=False).astype(np.int64) if n \
        else np.empty(0, np.int64)
    b = pc.index_in(edges.column("id_b"), value_set=ids).to_numpy(zero_copy_only=False).astype(np.int64) if n \
        else np.empty(0, np.int64)
    meta = pa.table({"tier": nodes.column("tier"), "id": ids, "date": nodes.column("date"),
                     "length": nodes.column("length"), "quality": nodes.column("quality")})
    labels = minhash.components(n, a, b)
    survivor = minhash.survivors(labels, minhash.priority_rank(meta, params.keep))
    tier = nodes.column("tier").to_numpy()
    indexed = np.flatnonzero(tier == 0)
    survivor[indexed] = indexed  # already in the corpus: never dropped here
    found = minhash.Clusters(survivor, labels, candidate_pairs, len(a))
    dropped = np.flatnonzero(found.duplicate & (tier == 1))
    drops = {
        "shard": nodes.column("shard").to_numpy()[dropped], "row": nodes.column("row").to_numpy()[dropped],
        "survivor": np.asarray(pc.take(ids, pa.array(survivor[dropped], pa.int64())).to_pylist(), dtype=object),
    }
    clusters = minhash.cluster_table(ids, sig, found, params.sample_pairs)
    summary = Counter({
        "near_dup.candidate_pairs": candidate_pairs,
        "near_dup.verified_pairs": len(a),
        "near_dup.clusters": clusters.num_rows,
        "near_dup.dropped_for_index": int(np.count_nonzero(tier[survivor[dropped]] == 0)),
    })
    return summary, drops, clusters
