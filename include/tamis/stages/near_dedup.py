"""Near-duplicate removal: MinHash signatures, LSH banding, connected components.

Plan, map step (on the engine's workers): every shard's texts become MinHash signatures.
Plan, reduce: band keys (bands x rows chosen so that a pair at exactly the threshold
becomes a candidate with probability ``candidate_recall``) -> candidate pairs ->
verification by the exact Jaccard of the candidates' shingle sets (only documents that
have a candidate are read and shingled again, again on the workers) -> connected
components -> one survivor per cluster by a deterministic rule; each shard's drops go to
its drop plan. Apply (per shard): drop every other member with reason ``near_duplicate``
and the survivor's id as detail. On Spark (:func:`plan_on_spark`) the signatures, the
candidate pairs, their verification and the match against the index are Spark jobs.

Incremental: with ``index_url`` the signatures and shingle sets of everything already
kept persist as Parquet; a new batch is compared with itself and with the index (only
index rows sharing a band key with the batch are read), indexed documents always
survive, and the batch's own survivors are appended to the index as one part. The part
is named after the day (nightly runs) or the output dataset, so a resumed or repeated run
replaces its own part instead of matching against it.

Memory: when the plan's state (signatures, band keys and metadata of every document, read
off the Parquet footers before anything is signed) would pass ``memory_budget_mb``, the
plan runs on disk (:func:`plan_on_disk`): band keys partitioned by key, each partition
sorted alone, and only the documents that share a bucket read back. It decides the same
drops, survivors and clusters, and writes the same index rows; only it reports
``near_dup.spill_partitions``.

Side output: ``_clusters/clusters.parquet`` (survivor, size, duplicate ids, a sample
of pairs with their similarity). Manifest metrics (from the plan): the S-curve of
the banding (``near_dup.s_curve.*``) and the candidate and verified pairs per Jaccard
bin (``near_dup.candidates_by_jaccard.*``, ``near_dup.verified_by_jaccard.*``).
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from tamis import minhash, storage
from tamis.stage import (
    READ_BATCH_ROWS,
    BatchResult,
    CorpusContext,
    DropListStage,
    InputShard,
    StageParams,
    write_drop_plan,
)

REASON = "near_duplicate"
INDEX_META = "_index.json"
CLUSTERS_FILE = "_clusters/clusters.parquet"
INDEX_ROW_GROUP = 4096  # index rows per row group: a lookup reads the groups that hold a match
JACCARD_BIN = 0.05
# Plan memory per document besides its signature (4 x num_perm B): its band keys (8 B a
# band), metadata (ids, source, date, length, quality) and the index arrays of the
# banding's and the survivor rule's sorts.
STATE_BYTES_PER_DOC = 400
# Shingle sets kept for the index: 4 B a distinct shingle, about one per 5 bytes of text.
SET_BYTES_PER_TEXT_BYTE = 0.8
# A band-key row of the on-disk plan (band, key, document) while its partition is sorted.
KEY_ROW_BYTES = 64
SPILL_DIR = "near_dup"


class NearDedupParams(StageParams):
    shingle: Literal["word", "char"] = "word"  # word n-grams (prose, code) or character n-grams (no spaces: CJK)
    ngram: int = Field(default=2, ge=1, le=256)  # 2: best F1 on the labelled near-dup sets (benchmarks/near_dedup.py)
    lowercase: bool = True
    num_perm: int = Field(default=128, ge=2, le=1024)
    threshold: float = Field(default=0.8, gt=0.0, lt=1.0)  # Jaccard similarity that makes a near duplicate
    # Probability that a pair at exactly `threshold` becomes a candidate; bands x rows are derived from it.
    candidate_recall: float = Field(default=0.97, gt=0.0, lt=1.0)
    bands: int | None = Field(default=None, ge=1)  # None: derived from threshold, num_perm and candidate_recall
    rows: int | None = Field(default=None, ge=1)
    seed: int = 42
    # exact: Jaccard of the candidates' shingle sets; estimate: from their signatures
    # (about +-0.035 at J = 0.8 with 128 permutations); off: every candidate pair is a duplicate.
    verify: Literal["exact", "estimate", "off"] = "exact"
    keep: Literal["first", "longest", "highest_quality"] = "first"
    quality_column: str | None = None  # required by keep=highest_quality; higher is better
    index_url: str | None = None  # signatures of the corpus kept so far (incremental runs)
    update_index: bool = True  # append this batch's survivors to index_url
    # This run's part of the index; nightly runs name it after their date so that re-running
    # a day replaces that day's part. None: derived from the output URL.
    index_part: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._=-]+$")
    sample_pairs: int = Field(default=5, ge=0)  # pairs per cluster written to the cluster report
    # Plan state held at once (signatures, band keys and metadata of every document, about
    # STATE_BYTES_PER_DOC + 4 x num_perm a document, plus the shingle sets when the index
    # keeps them); beyond it the band keys are partitioned on disk and only the documents
    # that have a candidate are held, so the memory does not grow with the dataset. Exact
    # verification holds the shingle sets of half a budget's worth of documents at a time.
    memory_budget_mb: int = Field(default=1024, ge=8)

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
        if self.bands:
            assert self.rows is not None, "_consistent requires rows along with bands"
            bands, rows = self.bands, self.rows
        else:
            bands, rows = minhash.bands_for_recall(self.threshold, self.num_perm, self.candidate_recall)
        return minhash.MinHashConfig(
            shingle=self.shingle,
            ngram=self.ngram,
            num_perm=self.num_perm,
            bands=bands,
            rows=rows,
            seed=self.seed,
            lowercase=self.lowercase,
        )


@dataclass
class Signed:
    """Signatures of a set of documents with what the survivor rule needs."""

    meta: pa.Table  # tier, id, source, date, length, quality
    sig: np.ndarray  # (n, num_perm) uint32
    shingles: np.ndarray  # (n,) shingle count; 0 = nothing to compare
    sets: minhash.ShingleSets | None = None  # when kept for exact verification of every document


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
        return {"index": self.index().state(exclude=self.params.index_part or _run_key(output_url))}

    def index(self) -> SignatureIndex:
        assert self.params.index_url, "only a stage given an index_url has an index"
        return SignatureIndex(
            self.params.index_url, self.params.minhash_config(), shingle_sets=self.params.verify == "exact"
        )

    def plan(self, shards: list[InputShard], work_url: str, run) -> dict[str, int | float]:
        params = self.params
        config = params.minhash_config()
        output_url = work_url.rsplit("/", 1)[0]
        part = params.index_part or _run_key(output_url)
        # The index keeps the shingle set of every survivor: then every set is made in the map.
        keep_sets = params.verify == "exact" and bool(params.index_url) and params.update_index
        urls = [s.url for s in shards]
        sizes, text_bytes = _footers(urls)
        state = int(sizes.sum()) * (STATE_BYTES_PER_DOC + 4 * config.num_perm) + (
            int(text_bytes.sum() * SET_BYTES_PER_TEXT_BYTE) if keep_sets else 0
        )
        budget = params.memory_budget_mb << 20
        # Exact verification holds the sets of half a budget's worth of documents at a time.
        sets_at_once = max(
            2, int((budget // 2) / (SET_BYTES_PER_TEXT_BYTE * text_bytes.sum() / max(int(sizes.sum()), 1) + 8))
        )
        if state > budget:
            return plan_on_disk(self, shards, sizes, work_url, run, keep_sets, sets_at_once)
        new = _gather(run.imap(_sign_shard, [(url, keep_sets) for url in urls]), urls, sizes, config.num_perm)
        keys = minhash.band_keys(new.sig, config)
        # Documents without shingles are never banded: their keys match nothing.
        indexed = self.index().matching(keys[new.shingles > 0], exclude=part) if params.index_url else None
        plan = plan_drops(
            new, keys, indexed, config, params, lambda rows: _reread_sets(run, urls, sizes, rows), sets_at_once
        )
        _write_plan(work_url, shards, sizes, plan.dropped, plan.survivor_ids, plan.clusters)
        if params.index_url and params.update_index:
            self.index().write_part(part, plan.kept_signed)
        return dict(plan.summary)

    def plan_spark(self, shards: list[InputShard], work_url: str, run) -> dict[str, int | float]:
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


def _sign_shard(stage: NearDedup, item: tuple[str, bool]) -> Signed:
    url, keep_sets = item
    return sign_part(url, stage.params.minhash_config(), stage.params.quality_column, keep_sets)


def sign_part(url: str, config: minhash.MinHashConfig, quality_column: str | None, keep_sets: bool = False) -> Signed:
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        names = parquet.schema_arrow.names
        columns = [c for c in ("id", "source", "date", "text", quality_column) if c and c in names]
        if "id" not in names or "text" not in names:
            raise ValueError(f"{url}: near_dedup needs columns 'id' and 'text', found {names}")
        if quality_column and quality_column not in names:
            raise ValueError(f"{url}: quality_column {quality_column!r} is not a column ({names})")
        sigs, counts, metas, sets = [], [], [], []
        # Batches bound the text held at once; only signatures and metadata accumulate.
        for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=columns):
            text = batch.column("text")
            sig, shingles = minhash.signatures(text, config)
            sigs.append(sig)
            counts.append(shingles)
            metas.append(
                _meta(batch, tier=1, quality_column=quality_column, length=pc.fill_null(pc.binary_length(text), 0))
            )
            if keep_sets:
                sets.append(minhash.shingle_sets(text, config))
    empty_sets = minhash.ShingleSets.empty() if keep_sets else None
    if not metas:
        return Signed(_empty_meta(), np.empty((0, config.num_perm), np.uint32), np.empty(0, np.int64), empty_sets)
    return Signed(
        pa.concat_tables(metas),
        np.concatenate(sigs),
        np.concatenate(counts),
        minhash.ShingleSets.concat(sets) if keep_sets else None,
    )


def _shard_sets_task(stage: NearDedup, item: tuple[str, np.ndarray]) -> minhash.ShingleSets:
    url, rows = item
    return shard_sets(url, rows, stage.params.minhash_config())


def shard_sets(url: str, rows: np.ndarray, config: minhash.MinHashConfig) -> minhash.ShingleSets:
    """Shingle sets of the given rows (ascending) of one shard, read again from its text:
    only the row groups that hold them are read, and their texts are shingled a few
    megabytes at a time."""
    fs, path = storage.filesystem(url)
    parts, pending, pending_bytes = [], [], 0
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        group_rows = np.array([parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)], np.int64)
        group_ends = np.cumsum(group_rows)
        group_of = np.searchsorted(group_ends, rows, side="right")
        for g in minhash.sorted_unique(group_of):
            local = rows[group_of == g] - (group_ends[g] - group_rows[g])
            text = parquet.read_row_group(int(g), columns=["text"]).column("text").take(pa.array(local, pa.int64()))
            pending.append(text.combine_chunks())
            pending_bytes += text.nbytes
            if pending_bytes >= minhash.CHUNK_BYTES:
                parts.append(minhash.shingle_sets(pa.concat_arrays(pending), config))
                pending, pending_bytes = [], 0
    if pending:
        parts.append(minhash.shingle_sets(pa.concat_arrays(pending), config))
    found = minhash.ShingleSets.concat(parts)
    if len(found) != len(rows):
        raise ValueError(f"{url}: {len(rows)} rows asked for, {len(found)} found: the shard changed while it was read")
    return found


def _reread_sets(run, urls: list[str], sizes: np.ndarray, rows: np.ndarray) -> minhash.ShingleSets:
    """Shingle sets of documents ``rows`` (ascending indices over all shards), one task per
    shard that holds any of them."""
    firsts = np.cumsum(sizes) - sizes
    shard = np.searchsorted(np.cumsum(sizes), rows, side="right")
    wanted = np.unique(shard)
    jobs = [(urls[i], rows[shard == i] - firsts[i]) for i in wanted]
    return minhash.ShingleSets.concat(run.map(_shard_sets_task, jobs))


def _meta(batch, tier: int, quality_column: str | None, length) -> pa.Table:
    n = batch.num_rows

    def column(name, type_):
        if name and name in batch.schema.names:
            return batch.column(name).cast(type_)
        return pa.nulls(n, type_)

    return pa.table(
        {
            "tier": pa.array(np.full(n, tier, dtype=np.int8)),
            "id": column("id", pa.string()),
            "source": column("source", pa.string()),
            "date": column("date", pa.string()),
            "length": length.cast(pa.int64()) if length is not None else pa.nulls(n, pa.int64()),
            "quality": column(quality_column, pa.float64()),
        }
    )


_META_SCHEMA = pa.schema(
    [
        ("tier", pa.int8()),
        ("id", pa.string()),
        ("source", pa.string()),
        ("date", pa.string()),
        ("length", pa.int64()),
        ("quality", pa.float64()),
    ]
)


def _empty_meta() -> pa.Table:
    return _META_SCHEMA.empty_table()


def _footers(urls: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rows and uncompressed text bytes of every shard, from its Parquet footer."""
    rows, text_bytes = np.zeros(len(urls), np.int64), np.zeros(len(urls), np.int64)
    for i, url in enumerate(urls):
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        rows[i] = meta.num_rows
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            text_bytes[i] += sum(
                group.column(c).total_uncompressed_size
                for c in range(group.num_columns)
                if group.column(c).path_in_schema == "text"
            )
    return rows, text_bytes


def _gather(results: Iterator[tuple[int, Signed]], urls: list[str], sizes: np.ndarray, num_perm: int) -> Signed:
    """Copy each shard's signatures into one array sized from the Parquet footers, as they
    arrive (in any order): the peak is the index plus one shard, not twice the index."""
    sig = np.empty((int(sizes.sum()), num_perm), dtype=np.uint32)
    shingles = np.empty(int(sizes.sum()), dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    metas: list = [None] * len(urls)
    sets: list = [None] * len(urls)
    for i, part in results:
        _check_rows(urls[i], len(part.sig), sizes[i])
        sig[starts[i] : starts[i] + sizes[i]] = part.sig
        shingles[starts[i] : starts[i] + sizes[i]] = part.shingles
        metas[i] = part.meta.cast(_META_SCHEMA)
        sets[i] = part.sets
    meta = pa.concat_tables(metas) if metas else _empty_meta()
    kept_sets = minhash.ShingleSets.concat(sets) if sets and all(s is not None for s in sets) else None
    return Signed(meta, sig, shingles, kept_sets)


def _check_rows(url: str, read: int, footer: int) -> None:
    if read != footer:
        raise ValueError(f"{url}: read {read} rows, its footer says {footer}")


# --------------------------------------------------------------------------- reduce


@dataclass
class DropPlan:
    dropped: np.ndarray  # indices into the new documents, ascending
    survivor_ids: np.ndarray  # object array of the survivor id of each dropped document
    clusters: pa.Table
    kept_signed: Signed  # new documents that survive and have shingles (the index append)
    summary: Counter


def plan_drops(
    new: Signed,
    keys: np.ndarray,
    indexed: tuple[Signed, np.ndarray] | None,
    config: minhash.MinHashConfig,
    params: NearDedupParams,
    load_sets: Callable[[np.ndarray], minhash.ShingleSets] | None = None,
    sets_at_once: int | None = None,
) -> DropPlan:
    """Cluster the new documents (and the matching indexed ones) and decide who goes.

    ``load_sets(rows)`` gives the shingle sets of new documents ``rows`` (ascending) when
    ``new`` does not hold them: exact verification asks only for documents with a candidate,
    ``sets_at_once`` documents at most at a time (None: all at once).
    """
    n_new = len(new.sig)
    all_meta, all_sig, all_keys, active = new.meta, new.sig, keys, new.shingles > 0
    old = None
    if indexed is not None and len(indexed[0].sig):
        old, old_keys = indexed
        all_meta = pa.concat_tables([new.meta, old.meta.cast(_META_SCHEMA)])
        all_sig = np.concatenate([new.sig, old.sig])
        all_keys = np.concatenate([keys, old_keys])
        active = np.concatenate([active, np.ones(len(old.sig), dtype=bool)])
    a, b = minhash.candidate_edges(all_keys, minhash.id_rank(all_meta.column("id")), active)
    fresh_sets = new.sets.take if new.sets is not None else load_sets

    def sets_of(rows: np.ndarray) -> minhash.ShingleSets:
        fresh, known = rows[rows < n_new], rows[rows >= n_new] - n_new
        parts = [minhash.ShingleSets.empty()]
        if len(fresh):
            assert fresh_sets is not None, "exact verification signs with sets, or is given load_sets"
            parts = [fresh_sets(fresh)]
        if len(known):
            assert old is not None and old.sets is not None, "an index for exact verification keeps the sets"
            parts.append(old.sets.take(known))
        return minhash.ShingleSets.concat(parts)

    decision = decide(all_meta, all_sig, a, b, n_new, sets_of, params, sets_at_once)
    kept = np.flatnonzero(~decision.found.duplicate[:n_new] & (new.shingles > 0))
    kept_signed = Signed(
        new.meta.take(pa.array(kept, pa.int64())),
        new.sig[kept],
        new.shingles[kept],
        new.sets.take(kept) if new.sets is not None else None,
    )
    summary = decision.summary(
        config, no_shingles=int(n_new - np.count_nonzero(new.shingles)), index_rows_matched=len(all_sig) - n_new
    )
    return DropPlan(decision.dropped, decision.survivor_ids, decision.clusters, kept_signed, summary)


@dataclass
class Decision:
    """Clusters and survivors of documents numbered new ones first, then indexed ones."""

    found: minhash.Clusters
    n_new: int
    dropped: np.ndarray  # new documents that go, ascending
    survivor_ids: np.ndarray  # object array: the survivor id of each dropped document
    clusters: pa.Table  # the cluster report
    exact_pairs: int  # candidate pairs that needed their exact Jaccard

    def summary(self, config: minhash.MinHashConfig, no_shingles: int, index_rows_matched: int) -> Counter:
        found = self.found
        summary = +Counter(
            {
                "near_dup.candidate_pairs": found.candidate_pairs,
                "near_dup.verified_pairs": found.verified_pairs,
                "near_dup.exact_jaccard_pairs": self.exact_pairs,
                "near_dup.clusters": self.clusters.num_rows,
                "near_dup.no_shingles": no_shingles,
                "near_dup.index_rows_matched": index_rows_matched,
                "near_dup.dropped_for_index": int(np.count_nonzero(found.survivor[self.dropped] >= self.n_new)),
            }
        )
        summary.update(pair_metrics(config, found.candidate_similarity, found.verified))
        return summary


def decide(
    meta: pa.Table,
    sig: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    n_new: int,
    load_sets: Callable[[np.ndarray], minhash.ShingleSets],
    params: NearDedupParams,
    sets_at_once: int | None = None,
) -> Decision:
    """Verification, clusters and survivors from the candidate pairs (a, b) of documents
    with metadata ``meta`` and signatures ``sig`` (the first ``n_new`` are new, the rest
    indexed). Documents without a candidate may be left out: they survive alone. Both the
    in-memory and the on-disk plan decide here."""
    priority = minhash.priority_rank(meta, params.keep)
    if params.verify == "exact":
        candidate_similarity, pair_similarity, exact_pairs = _exact_verification(
            sig, a, b, load_sets, params.threshold, sets_at_once
        )
    else:

        def pair_similarity(x, y):
            return minhash.pair_similarity(sig, x, y)

        candidate_similarity = pair_similarity(a, b) if params.verify == "estimate" else None
        exact_pairs = 0
    if candidate_similarity is not None:
        pair_similarity = reusing_known_pairs(a, b, candidate_similarity, len(sig), pair_similarity)
    found = minhash.cluster(len(sig), a, b, candidate_similarity, params.threshold, priority)
    # Indexed documents are already in the corpus: they are never dropped here.
    found.survivor[n_new:] = np.arange(n_new, len(sig))
    dropped = np.flatnonzero(found.duplicate[:n_new])
    ids = meta.column("id").combine_chunks()
    survivor_ids = np.asarray(pc.take(ids, pa.array(found.survivor[dropped], pa.int64())).to_pylist(), dtype=object)
    clusters = minhash.cluster_table(ids, found, params.sample_pairs, pair_similarity)
    return Decision(found, n_new, dropped, survivor_ids, clusters, exact_pairs)


def _exact_verification(
    sig: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    load_sets: Callable[[np.ndarray], minhash.ShingleSets],
    threshold: float,
    sets_at_once: int | None = None,
):
    """Similarity of every candidate pair: the signature estimate where it settles the
    verdict beyond doubt (``minhash.signature_verdicts``), the exact Jaccard elsewhere, from
    the shingle sets of just those pairs' documents (``load_sets(rows)``, rows ascending):
    held all at once when there are at most ``sets_at_once`` of them, else kept in a scratch
    file and read back ``sets_at_once`` at a time (:class:`_SetFile`). Also returns the
    similarity function of the cluster report (exact where both documents needed their set)
    and the number of pairs that needed their exact Jaccard."""
    estimate = minhash.pair_similarity(sig, a, b)
    accept, reject = minhash.signature_verdicts(estimate, threshold, sig.shape[1])
    open_ = ~(accept | reject)
    involved = minhash.sorted_unique(np.concatenate([a[open_], b[open_]]))
    if sets_at_once is None or len(involved) <= sets_at_once:
        # All the sets fit at once: loaded once, kept for the report.
        sets = load_sets(involved) if len(involved) else minhash.ShingleSets.empty()
        position = np.full(len(sig), -1, dtype=np.int64)
        position[involved] = np.arange(len(involved))

        def exact(x, y):
            return minhash.jaccard(sets, sets, position[x], position[y])
    else:
        store = _SetFile(involved, load_sets, sets_at_once)

        def exact(x, y):
            return store.jaccard(x, y)

    needed = np.zeros(len(sig), dtype=bool)
    needed[involved] = True
    similarity = estimate.copy()
    similarity[open_] = exact(a[open_], b[open_])

    def pair_similarity(x, y):
        out = minhash.pair_similarity(sig, x, y)
        both = needed[x] & needed[y]
        out[both] = exact(x[both], y[both])
        return out

    return similarity, pair_similarity, int(np.count_nonzero(open_))


class _SetFile:
    """The shingle sets of documents ``docs`` (ascending) in a local scratch file: loaded
    once, ``at_once`` documents at a time in document order (so that texts read again are
    read in order), then read back for a chunk of pairs at a time."""

    def __init__(self, docs: np.ndarray, load_sets: Callable[[np.ndarray], minhash.ShingleSets], at_once: int):
        self.docs = docs
        self.at_once = at_once
        self.file = tempfile.TemporaryFile()  # noqa: SIM115 -- open while the report may still ask for a pair
        sizes = []
        for start in range(0, len(docs), at_once):
            sets = load_sets(docs[start : start + at_once])
            self.file.write(np.ascontiguousarray(sets.values, dtype=np.uint32).tobytes())
            sizes.append(sets.sizes)
        self.offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum(np.concatenate(sizes) if sizes else np.zeros(0, np.int64), out=self.offsets[1:])

    def take(self, rows: np.ndarray) -> minhash.ShingleSets:
        """The sets of documents ``docs[rows]`` (rows ascending)."""
        sizes = self.offsets[rows + 1] - self.offsets[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        values = np.empty(int(offsets[-1]), dtype=np.uint32)
        for row, start, end in zip(rows.tolist(), offsets[:-1].tolist(), offsets[1:].tolist()):
            self.file.seek(int(self.offsets[row]) * 4)
            self.file.readinto(values[start:end].view(np.uint8))  # type: ignore[arg-type]  # numpy types its buffer protocol from Python 3.12
        return minhash.ShingleSets(values, offsets)

    def jaccard(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Exact Jaccard of the pairs (x, y) of documents among ``docs``, with the sets of at
        most ``at_once`` documents in memory."""
        out = np.empty(len(x), dtype=np.float64)
        step = max(1, self.at_once // 2)
        for start in range(0, len(x), step):
            cx, cy = x[start : start + step], y[start : start + step]
            wanted = minhash.sorted_unique(np.concatenate([cx, cy]))
            sets = self.take(np.searchsorted(self.docs, wanted))
            out[start : start + step] = minhash.jaccard(
                sets, sets, np.searchsorted(wanted, cx), np.searchsorted(wanted, cy)
            )
        return out


def reusing_known_pairs(a: np.ndarray, b: np.ndarray, similarity: np.ndarray, n: int, measure):
    """``measure(x, y)`` that takes the similarity of an already measured pair (a[i], b[i])
    from ``similarity`` instead of measuring it again (n: the number of documents). Most
    survivor-member pairs of the cluster report are candidate pairs: they show the
    similarity their verification used."""
    codes = np.minimum(a, b) * n + np.maximum(a, b)
    order = np.argsort(codes, kind="stable")
    codes, similarity = codes[order], np.asarray(similarity, dtype=np.float64)[order]

    def pair_similarity(x, y):
        wanted = np.minimum(x, y) * n + np.maximum(x, y)
        at = np.minimum(np.searchsorted(codes, wanted), max(len(codes) - 1, 0))
        known = codes[at] == wanted if len(codes) else np.zeros(len(x), dtype=bool)
        out = np.empty(len(x), dtype=np.float64)
        out[known] = similarity[at[known]]
        if not known.all():
            out[~known] = measure(x[~known], y[~known])
        return out

    return pair_similarity


def pair_metrics(
    config: minhash.MinHashConfig, candidate_similarity: np.ndarray | None, verified: np.ndarray
) -> dict[str, float | int]:
    """The banding's S-curve and the candidate and verified pairs per Jaccard bin:

    - ``near_dup.s_curve.bands`` / ``.rows``, ``near_dup.s_curve.effective_threshold``
      ((1/bands)^(1/rows)), ``near_dup.s_curve.<J>`` for J = 0.50, 0.55 ... 1.00: the
      probability that a pair of Jaccard J becomes a candidate;
    - ``near_dup.candidates_by_jaccard.<bin>`` and ``near_dup.verified_by_jaccard.<bin>``:
      pairs whose measured similarity lies in [bin, bin + 0.05) (1.00: identical sets);
      empty bins are left out, and there are none when verification is off.
    """
    curve = minhash.s_curve(config.bands, config.rows)
    metrics: dict[str, float | int] = {
        "near_dup.s_curve.bands": config.bands,
        "near_dup.s_curve.rows": config.rows,
        "near_dup.s_curve.effective_threshold": round(curve.effective_threshold, 6),
    }
    metrics.update({f"near_dup.s_curve.{j:.2f}": round(p, 6) for j, p in curve.points})
    if candidate_similarity is not None:
        for name, sims in (("candidates", candidate_similarity), ("verified", candidate_similarity[verified])):
            bins = np.floor(np.asarray(sims, np.float64) / JACCARD_BIN + 1e-9).astype(np.int64)
            for k in np.flatnonzero(np.bincount(bins)):
                metrics[f"near_dup.{name}_by_jaccard.{k * JACCARD_BIN:.2f}"] = int(np.count_nonzero(bins == k))
    return metrics


def _write_plan(
    work_url: str,
    shards: list[InputShard],
    sizes: np.ndarray,
    dropped: np.ndarray,
    survivor_ids: np.ndarray,
    clusters: pa.Table,
) -> None:
    """Each shard's drop plan (``dropped``: ascending document numbers over all shards, new
    ones only) and the cluster report."""
    ends = np.cumsum(sizes)
    shard_of = np.searchsorted(ends, dropped, side="right")
    for i in np.unique(shard_of):
        mask = shard_of == i
        write_drop_plan(work_url, shards[i].name, dropped[mask] - (ends[i] - sizes[i]), survivor_ids[mask].tolist())
    output_url = work_url.rsplit("/", 1)[0]
    write_parquet_atomic(clusters, storage.join(output_url, CLUSTERS_FILE), output_url)


# --------------------------------------------------------------------------- bounded memory


def plan_on_disk(
    stage: NearDedup,
    shards: list[InputShard],
    sizes: np.ndarray,
    work_url: str,
    run,
    keep_sets: bool,
    sets_at_once: int,
) -> dict[str, int | float]:
    """The plan of :meth:`NearDedup.plan` within ``memory_budget_mb``, deciding the same drops.

    Documents are numbered as in memory: new ones by (shard, row), then the index's by
    (part, file, row). Map: each shard's metadata, signatures (and shingle sets when the
    index keeps them) go to a file of its own, and its band keys, as (band, key, document)
    rows, to partitions by key; the index's band keys are partitioned alike. A bucket lives
    in one partition, so each partition is sorted alone, on the workers: an indexed
    document in a bucket with a new one is *matched* (what :meth:`SignatureIndex.matching`
    reads), then the buckets of two or more new or matched documents are kept. Here, only
    the documents of those buckets are read back, ranked by id and linked within buckets as
    in memory (:func:`minhash.bucket_links`); :func:`decide` verifies, clusters and picks
    survivors. The index part is written by the workers, a file per shard (a part as a
    folder, as Spark writes it). The spill files are removed at the end.

    Memory here: per document that has a candidate, its metadata and signature
    (4 x num_perm B); per candidate pair three numbers; per matched indexed document one;
    nothing for a document without a candidate; the shingle sets of ``sets_at_once``
    documents at a time. A partition task holds its rows (KEY_ROW_BYTES each, enough
    partitions that one fits the budget), a map task one shard."""
    params = stage.params
    config = params.minhash_config()
    output_url = work_url.rsplit("/", 1)[0]
    part = params.index_part or _run_key(output_url)
    folder = storage.join(work_url, SPILL_DIR)
    storage.remove_tree(folder)  # what an interrupted plan left
    urls = [s.url for s in shards]
    n_new = int(sizes.sum())
    starts = np.cumsum(sizes) - sizes
    index = stage.index() if params.index_url else None
    index_files = (
        [url for name, files in index.part_files().items() if compared_part(name, part) for url in files]
        if index is not None and index._check()
        else []
    )
    index_sizes, _ = _footers(index_files)
    index_starts = n_new + np.cumsum(index_sizes) - index_sizes
    key_rows = (n_new + int(index_sizes.sum())) * config.bands
    partitions = max(2, -(-key_rows * KEY_ROW_BYTES // (params.memory_budget_mb << 20)))

    no_shingles = sum(
        run.map(
            _spill_shard,
            [(i, url, int(starts[i]), int(sizes[i]), partitions, folder, keep_sets) for i, url in enumerate(urls)],
        )
    )
    run.map(
        _spill_index_keys,
        [(j, url, int(index_starts[j]), int(index_sizes[j]), partitions, folder) for j, url in enumerate(index_files)],
    )
    matched = minhash.sorted_unique(
        np.concatenate(
            [np.empty(0, np.int64), *run.map(_shared_buckets, [(p, folder, n_new) for p in range(partitions)])]
        )
    )
    nodes = minhash.sorted_unique(
        np.concatenate(
            [
                np.empty(0, np.int64),
                *run.map(_candidate_buckets, [(p, folder, n_new, matched) for p in range(partitions)]),
            ]
        )
    )
    n_fresh = int(np.searchsorted(nodes, n_new))

    files = [_docs_url(folder, i) for i in range(len(shards))] + index_files
    file_sizes = np.concatenate([sizes, index_sizes]).astype(np.int64)
    located = _locate(nodes, file_sizes)
    tables = run.map(
        _take_rows_task,
        [(files[f], rows, _NODE_COLUMNS if f < len(shards) else _INDEXED_NODE_COLUMNS) for f, rows in located],
    )
    meta = pa.concat_tables(
        [_empty_meta()]
        + [
            t.select(_META_SCHEMA.names).cast(_META_SCHEMA)
            if f < len(shards)
            else _meta(t, tier=0, quality_column=None, length=None)
            for (f, _), t in zip(located, tables)
        ]
    )
    sig = np.concatenate(
        [np.empty((0, config.num_perm), np.uint32)]
        + [signature_matrix(t.column("sig"), config.num_perm) for t in tables]
    )
    del tables
    rank = minhash.id_rank(meta.column("id"))
    a_parts, b_parts = [], []
    for p in range(partitions):
        table = _read_folder(storage.join(folder, "buckets", f"p{p:06d}"))
        if table is None or not table.num_rows:
            continue
        band, key = table.column("band").to_numpy(), table.column("key").to_numpy()
        members = np.searchsorted(nodes, table.column("doc").to_numpy())
        order = np.lexsort((rank[members], key, band))
        band, key, members = band[order], key[order], members[order]
        first = np.ones(len(members), dtype=bool)
        first[1:] = (band[1:] != band[:-1]) | (key[1:] != key[:-1])
        a, b = minhash.bucket_links(members, first)
        a, b = minhash.unique_pairs([a], [b], len(nodes))
        a_parts.append(a)
        b_parts.append(b)
    a, b = minhash.unique_pairs(a_parts, b_parts, len(nodes))

    def load_sets(rows: np.ndarray) -> minhash.ShingleSets:
        wanted = nodes[rows]
        parts = []
        # New documents' sets are in their files when the index keeps them all, else made again.
        if not keep_sets and np.any(wanted < n_new):
            parts.append(_reread_sets(run, urls, sizes, wanted[wanted < n_new]))
        stored = wanted if keep_sets else wanted[wanted >= n_new]
        jobs = [(files[f], r, ["sets"] if f < len(shards) else ["shingles"]) for f, r in _locate(stored, file_sizes)]
        parts += [minhash.ShingleSets.from_arrow(t.column(0)) for t in run.map(_take_rows_task, jobs)]
        return minhash.ShingleSets.concat(parts)

    decision = decide(meta, sig, a, b, n_fresh, load_sets, params, sets_at_once)
    dropped = nodes[decision.dropped]
    _write_plan(work_url, shards, sizes, dropped, decision.survivor_ids, decision.clusters)
    if index is not None and params.update_index:
        index.prepare()
        index.remove_part(part)
        part_folder = storage.join(index.url, part)
        shard_of = np.searchsorted(np.cumsum(sizes), dropped, side="right")
        run.map(
            _index_shard,
            [
                (
                    files[i],
                    dropped[shard_of == i] - starts[i],
                    storage.join(part_folder, f"s{i:06d}.parquet"),
                    index.url,
                )
                for i in range(len(shards))
            ],
        )
    storage.remove_tree(folder)
    summary = decision.summary(config, no_shingles=no_shingles, index_rows_matched=len(matched))
    return {**summary, "near_dup.spill_partitions": partitions}


_NODE_COLUMNS = [*_META_SCHEMA.names, "sig"]
_INDEXED_NODE_COLUMNS = ["id", "source", "date", "sig"]
_KEY_SCHEMA = pa.schema([("band", pa.int32()), ("key", pa.uint64()), ("doc", pa.int64())])


def _docs_url(folder: str, shard: int) -> str:
    return storage.join(folder, "docs", f"s{shard:06d}.parquet")


def _spill_shard(stage: NearDedup, job: tuple[int, str, int, int, int, str, bool]) -> int:
    """Sign one shard: its metadata, signatures, shingle counts (and sets) to its file,
    its band keys to the partitions. Returns its documents without shingles."""
    shard, url, start, size, partitions, folder, keep_sets = job
    config = stage.params.minhash_config()
    signed = sign_part(url, config, stage.params.quality_column, keep_sets)
    _check_rows(url, len(signed.sig), size)
    docs = (
        signed.meta.cast(_META_SCHEMA)
        .append_column("shingles", pa.array(signed.shingles, pa.int64()))
        .append_column("sig", _fixed_sig(signed.sig))
    )
    if keep_sets:
        assert signed.sets is not None, "sign_part keeps the sets when asked to"
        docs = docs.append_column("sets", signed.sets.to_arrow())
    write_parquet_atomic(docs, _docs_url(folder, shard), folder, row_group_size=INDEX_ROW_GROUP)
    banded = np.flatnonzero(signed.shingles > 0)  # documents without shingles are never banded
    _spill_keys(minhash.band_keys(signed.sig[banded], config), start + banded, partitions, folder, f"s{shard:07d}")
    return int(size - len(banded))


def _spill_index_keys(stage: NearDedup, job: tuple[int, str, int, int, int, str]) -> None:
    """One index file's band keys to the partitions, its rows numbered from ``start``."""
    number, url, start, size, partitions, folder = job
    bands = band_columns(stage.params.minhash_config())
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        table = pq.read_table(f, columns=bands)
    _check_rows(url, table.num_rows, size)
    keys = (
        np.column_stack([table.column(b).to_numpy() for b in bands]) if size else np.empty((0, len(bands)), np.uint64)
    )
    _spill_keys(keys, start + np.arange(size, dtype=np.int64), partitions, folder, f"x{number:07d}")


def _spill_keys(keys: np.ndarray, docs: np.ndarray, partitions: int, folder: str, name: str) -> None:
    n, bands = keys.shape
    key = keys.ravel()
    part_of = key % np.uint64(partitions)  # band keys are mixed hashes: spread evenly
    order = np.argsort(part_of, kind="stable")
    ends = np.cumsum(np.bincount(part_of.astype(np.int64), minlength=partitions))
    rows = pa.table(
        {
            "band": pa.array(np.tile(np.arange(bands, dtype=np.int32), n)[order]),
            "key": pa.array(key[order]),
            "doc": pa.array(np.repeat(docs, bands)[order]),
        },
        schema=_KEY_SCHEMA,
    )
    for p in np.flatnonzero(np.diff(np.r_[0, ends])):
        chunk = rows.slice(int(ends[p - 1]) if p else 0, int(ends[p] - (ends[p - 1] if p else 0)))
        write_parquet_atomic(chunk, storage.join(folder, f"p{p:06d}", f"{name}.parquet"), folder)


def _buckets_of(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by bucket (band, key), and each sorted row's bucket number."""
    band, key = table.column("band").to_numpy(), table.column("key").to_numpy()
    order = np.lexsort((key, band))
    band, key = band[order], key[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = (band[1:] != band[:-1]) | (key[1:] != key[:-1])
    return order, np.cumsum(first) - 1


def _shared_buckets(stage: NearDedup, job: tuple[int, str, int]) -> np.ndarray:
    """Indexed documents of one partition that share a bucket with a new document."""
    p, folder, n_new = job
    table = _read_folder(storage.join(folder, f"p{p:06d}"))
    if table is None or not table.num_rows:
        return np.empty(0, np.int64)
    order, bucket = _buckets_of(table)
    doc = table.column("doc").to_numpy()[order]
    with_new = np.bincount(bucket, weights=(doc < n_new).astype(np.float64)) > 0
    return minhash.sorted_unique(doc[(doc >= n_new) & with_new[bucket]])


def _candidate_buckets(stage: NearDedup, job: tuple[int, str, int, np.ndarray]) -> np.ndarray:
    """One partition's buckets of two or more new or matched documents, written for the
    linking; returns their documents."""
    p, folder, n_new, matched = job
    table = _read_folder(storage.join(folder, f"p{p:06d}"))
    if table is None or not table.num_rows:
        return np.empty(0, np.int64)
    doc = table.column("doc").to_numpy()
    at = np.minimum(np.searchsorted(matched, doc), max(len(matched) - 1, 0))
    pooled = (doc < n_new) | ((matched[at] == doc) if len(matched) else False)
    table = table.filter(pa.array(pooled))
    if not table.num_rows:
        return np.empty(0, np.int64)
    order, bucket = _buckets_of(table)
    shared = np.bincount(bucket)[bucket] > 1
    table = table.take(pa.array(order[shared]))
    if table.num_rows:
        write_parquet_atomic(table, storage.join(folder, "buckets", f"p{p:06d}", "buckets.parquet"), folder)
    return minhash.sorted_unique(table.column("doc").to_numpy())


def _read_folder(url: str) -> pa.Table | None:
    fs, path = storage.filesystem(url)
    if not fs.exists(path):
        return None
    tables = []
    for file in sorted(fs.glob(f"{path}/*.parquet")):
        with fs.open(file, "rb") as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables) if tables else None


def _locate(docs: np.ndarray, file_sizes: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(file number, its rows) holding each of ``docs`` (ascending numbers over files of
    ``file_sizes`` rows), in file order: reading them in turn gives ``docs`` in order."""
    ends = np.cumsum(file_sizes)
    file_of = np.searchsorted(ends, docs, side="right")
    return [(int(f), docs[file_of == f] - (ends[f] - file_sizes[f])) for f in minhash.sorted_unique(file_of)]


def _take_rows_task(stage: NearDedup, job: tuple[str, np.ndarray, list[str]]) -> pa.Table:
    """Columns of the given rows (ascending) of one Parquet file, reading only the row
    groups that hold them."""
    url, rows, columns = job
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        group_rows = np.array([parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)], np.int64)
        group_ends = np.cumsum(group_rows)
        group_of = np.searchsorted(group_ends, rows, side="right")
        groups = minhash.sorted_unique(group_of)
        read_start = np.cumsum(group_rows[groups]) - group_rows[groups]  # where each group lands in what is read
        positions = rows - (group_ends[group_of] - group_rows[group_of]) + read_start[np.searchsorted(groups, group_of)]
        table = parquet.read_row_groups(groups.tolist(), columns=columns)
    return table.take(pa.array(positions, pa.int64()))


def _index_shard(stage: NearDedup, job: tuple[str, np.ndarray, str, str]) -> int:
    """One shard's surviving documents that have shingles, as an index file of the run's part."""
    docs_url, dropped, out_url, index_url = job
    index = stage.index()
    fs, path = storage.filesystem(docs_url)
    with fs.open(path, "rb") as f:
        docs = pq.read_table(f)
    keep = docs.column("shingles").to_numpy() > 0
    keep[dropped] = False
    docs = docs.filter(pa.array(keep))
    if not docs.num_rows:
        return 0
    sig = signature_matrix(docs.column("sig"), index.config.num_perm)
    sets = minhash.ShingleSets.from_arrow(docs.column("sets")) if index.shingle_sets else None
    table = index_rows(
        docs.column("id"),
        docs.column("source"),
        docs.column("date"),
        minhash.band_keys(sig, index.config),
        sig,
        index.config,
        sets,
    )
    write_parquet_atomic(table, out_url, index_url, row_group_size=INDEX_ROW_GROUP)
    return table.num_rows


def _fixed_sig(sig: np.ndarray) -> pa.Array:
    return pa.Array.from_buffers(
        pa.binary(sig.shape[1] * 4), len(sig), [None, pa.py_buffer(np.ascontiguousarray(sig).tobytes())]
    )


# --------------------------------------------------------------------------- incremental index


def compared_part(name: str, part: str | None) -> bool:
    """Whether index part ``name`` is compared with a run that writes part ``part``: never
    the run's own, and for a nightly day (parts ``date=YYYY-MM-DD``) only the days before
    it, so re-running a day once later days are indexed gives what its first run gave."""
    if name == part:
        return False
    if part is not None and part.startswith("date=") and name.startswith("date="):
        return name < part
    return True


class IndexMismatch(ValueError):
    pass


class SignatureIndex:
    """Signatures, band keys and (for exact verification) shingle sets of the documents
    kept so far, as Parquet parts:

        <index_url>/_index.json          the MinHash settings every part was built with
        <index_url>/<run key>.parquet    id, source, date, band_000.., sig[, shingles] (one part per run)
        <index_url>/<run key>/*.parquet  the same, as several files (a part Spark wrote)
    """

    def __init__(self, url: str, config: minhash.MinHashConfig, shingle_sets: bool = True):
        self.url = url
        self.config = config
        self.shingle_sets = shingle_sets

    def fingerprint(self) -> dict:
        return {**self.config.fingerprint(), "shingle_sets": self.shingle_sets}

    def _check(self) -> bool:
        meta_url = storage.join(self.url, INDEX_META)
        if not storage.exists(meta_url):
            return False
        found = storage.read_json(meta_url)
        if found != self.fingerprint():
            raise IndexMismatch(
                f"index {self.url} was built with {found}, this stage uses {self.fingerprint()}; "
                "use a new index_url or the same MinHash settings"
            )
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
                parts[name] = [protocol + f for f in sorted(fs.glob(f"{entry['name'].rstrip('/')}/*.parquet"))]
            elif name.endswith(".parquet"):
                parts[name[: -len(".parquet")]] = [protocol + entry["name"]]
        return dict(sorted(parts.items()))

    def parts(self) -> list[str]:
        return list(self.part_files())

    def state(self, exclude: str | None) -> str:
        """A version of the parts a run writing part ``exclude`` compares against (``compared_part``)."""
        digest = hashlib.sha256(json.dumps(self.fingerprint(), sort_keys=True).encode())
        for name, files in self.part_files().items():
            if not compared_part(name, exclude):
                continue
            for url in files:
                fs, path = storage.filesystem(url)
                info = fs.info(path)
                digest.update(
                    f"{name}/{url.rsplit('/', 1)[-1]}:{info.get('size')}:"
                    f"{info.get('ETag') or info.get('mtime')}".encode()
                )
        return digest.hexdigest()

    def matching(self, keys: np.ndarray, exclude: str | None = None) -> tuple[Signed, np.ndarray] | None:
        """Indexed documents sharing at least one band key with ``keys``: only their band
        columns are read in full; signatures and sets come from the row groups that match."""
        if not self._check():
            return None
        bands = band_columns(self.config)
        wanted = [minhash.sorted_unique(keys[:, i]) for i in range(self.config.bands)]
        metas, sigs, found_keys, sets = [], [], [], []
        columns = ["id", "source", "date", "sig"] + (["shingles"] if self.shingle_sets else [])
        for name, files in self.part_files().items():
            if not compared_part(name, exclude):
                continue
            for url in files:
                fs, path = storage.filesystem(url)
                with fs.open(path, "rb") as f:
                    part = pq.ParquetFile(f)
                    band_table = part.read(columns=bands)
                    part_keys = (
                        np.column_stack([band_table.column(b).to_numpy() for b in bands])
                        if band_table.num_rows
                        else np.empty((0, len(bands)), np.uint64)
                    )
                    hit = np.zeros(len(part_keys), dtype=bool)
                    for i in range(len(bands)):
                        hit |= np.isin(part_keys[:, i], wanted[i])
                    if not hit.any():
                        continue
                    group_rows = np.array([part.metadata.row_group(g).num_rows for g in range(part.num_row_groups)])
                    group_ends = np.cumsum(group_rows)
                    groups = np.unique(np.searchsorted(group_ends, np.flatnonzero(hit), side="right"))
                    in_groups = np.concatenate(
                        [np.arange(group_ends[g] - group_rows[g], group_ends[g]) for g in groups]
                    )
                    rows = part.read_row_groups(groups.tolist(), columns=columns).filter(pa.array(hit[in_groups]))
                sigs.append(signature_matrix(rows.column("sig"), self.config.num_perm))
                found_keys.append(part_keys[hit])
                metas.append(_meta(rows, tier=0, quality_column=None, length=None))
                if self.shingle_sets:
                    sets.append(minhash.ShingleSets.from_arrow(rows.column("shingles")))
        if not metas:
            return None
        meta = pa.concat_tables(metas)
        found_sets = minhash.ShingleSets.concat(sets) if self.shingle_sets else None
        return Signed(meta, np.concatenate(sigs), np.ones(meta.num_rows, np.int64), found_sets), np.concatenate(
            found_keys
        )

    def prepare(self) -> None:
        if not self._check():
            storage.write_json_atomic(storage.join(self.url, INDEX_META), self.fingerprint(), self.url)

    def remove_part(self, name: str) -> None:
        storage.remove_tree(storage.join(self.url, f"{name}.parquet"))
        storage.remove_tree(storage.join(self.url, name))

    def write_part(self, run_key: str, signed: Signed) -> None:
        self.prepare()
        keys = minhash.band_keys(signed.sig, self.config)
        table = index_rows(
            signed.meta.column("id"),
            signed.meta.column("source"),
            signed.meta.column("date"),
            keys,
            signed.sig,
            self.config,
            signed.sets if self.shingle_sets else None,
        )
        self.remove_part(run_key)
        write_parquet_atomic(
            table, storage.join(self.url, f"{run_key}.parquet"), self.url, row_group_size=INDEX_ROW_GROUP
        )


def band_columns(config: minhash.MinHashConfig) -> list[str]:
    return [f"band_{i:03d}" for i in range(config.bands)]


def index_rows(
    ids,
    sources,
    dates,
    keys: np.ndarray,
    sig: np.ndarray,
    config: minhash.MinHashConfig,
    sets: minhash.ShingleSets | None = None,
) -> pa.Table:
    """Index rows: id, source, date, one uint64 column per band, the signature as fixed-size
    bytes, and the shingle set when the index keeps them."""
    columns = {"id": ids, "source": sources, "date": dates}
    for i, column in enumerate(band_columns(config)):
        columns[column] = pa.array(np.ascontiguousarray(keys[:, i]), pa.uint64())
    width = config.num_perm * 4
    columns["sig"] = pa.Array.from_buffers(
        pa.binary(width), len(sig), [None, pa.py_buffer(np.ascontiguousarray(sig).tobytes())]
    )
    if sets is not None:
        columns["shingles"] = sets.to_arrow()
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
        return flat[column.offset * num_perm : (column.offset + n) * num_perm].reshape(n, num_perm)
    column = column.cast(pa.large_binary())
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int64)[column.offset : column.offset + n + 1]
    data = np.frombuffer(column.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return data.view(np.uint32).reshape(n, num_perm)


def _run_key(output_url: str) -> str:
    return "run-" + hashlib.sha256(output_url.rstrip("/").encode()).hexdigest()[:16]


def write_parquet_atomic(table: pa.Table, url: str, dataset_url: str, row_group_size: int | None = None) -> None:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=row_group_size)
    storage.write_bytes_atomic(url, sink.getvalue(), dataset_url)


# --------------------------------------------------------------------------- on Spark

# A document on Spark: where it is, its metadata (the local plan's columns), its signature data.
_SPARK_ROWS = pa.schema(
    [
        ("shard", pa.int32()),
        ("row", pa.int64()),
        *_META_SCHEMA,
        ("shingles", pa.int64()),
        ("keys", pa.list_(pa.int64())),
        ("sig", pa.binary()),
        ("sets", pa.binary()),
    ]
)
_SPARK_PAIRS = pa.schema([("id_a", pa.string()), ("id_b", pa.string()), ("similarity", pa.float64())])
_SPARK_SETS = pa.schema([("id", pa.string()), ("sets", pa.binary())])


def plan_on_spark(stage: NearDedup, shards: list[InputShard], work_url: str, run) -> dict[str, int | float]:
    """The plan of :meth:`NearDedup.plan` with its heavy steps as Spark jobs: signatures on
    the executors, candidate pairs by a shuffle on band keys (members of a bucket ordered by
    id, linked to the first member and to their predecessor, as locally), the match against
    the corpus index by a join, verification on the executors (the signatures settle the
    clear pairs; the documents of the others alone are shingled again, by tasks that read
    just their rows). Only the scored pairs and the documents of the verified ones come to
    the driver, where clusters and survivors are chosen with the local functions: both
    engines drop the same documents for the same survivors and report the same figures."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    params = stage.params
    config = params.minhash_config()
    output_url = work_url.rsplit("/", 1)[0]
    part = params.index_part or _run_key(output_url)
    exact = params.verify == "exact"
    keep_sets = exact and bool(params.index_url) and params.update_index
    new = run.frame(_signed_rows, [(i, s.url, keep_sets) for i, s in enumerate(shards)], _SPARK_ROWS).cache()
    pool = new
    index = stage.index() if params.index_url else None
    if index is not None and index._check():
        files = [url for name, urls in index.part_files().items() if compared_part(name, part) for url in urls]
        indexed = run.frame(_indexed_rows, [(i - len(files), url) for i, url in enumerate(files)], _SPARK_ROWS)
        new_keys = new.select(F.posexplode("keys").alias("band", "key")).distinct()
        matched_ids = (
            indexed.select("id", F.posexplode("keys").alias("band", "key"))
            .join(new_keys, ["band", "key"], "left_semi")
            .select("id")
            .distinct()
        )
        pool = new.unionByName(indexed.join(matched_ids, "id", "left_semi"))

    buckets = pool.where("shingles > 0").select("id", F.posexplode("keys").alias("band", "key"))
    in_bucket = Window.partitionBy("band", "key").orderBy("id")
    linked = buckets.select(
        "id", F.first("id").over(in_bucket).alias("head"), F.lag("id").over(in_bucket).alias("prev")
    )
    pairs = (
        linked.where("head != id")
        .select(F.col("head").alias("x"), "id")
        .unionByName(linked.where("prev is not null").select(F.col("prev").alias("x"), "id"))
        .select(F.least("x", "id").alias("id_a"), F.greatest("x", "id").alias("id_b"))
        .distinct()
    )
    scored = _score(pairs, pool.select("id", F.col("sig").alias("v")), config.num_perm, "signatures")
    similarity = scored.column("similarity").to_numpy().copy()
    exact_pairs, set_docs = 0, run.session.createDataFrame([], from_arrow_spark(_SPARK_SETS))
    if exact and scored.num_rows:
        accept, reject = minhash.signature_verdicts(similarity, params.threshold, config.num_perm)
        open_ = ~(accept | reject)
        exact_pairs = int(np.count_nonzero(open_))
        if exact_pairs:
            open_pairs = scored.select(["id_a", "id_b"]).filter(pa.array(open_))
            set_docs = _set_docs(run, shards, new, pool, open_pairs).cache()
            measured = _score(
                run.session.createDataFrame(open_pairs),
                set_docs.select("id", F.col("sets").alias("v")),
                config.num_perm,
                "sets",
            )
            at = pc.index_in(_pair_keys(open_pairs), value_set=_pair_keys(measured)).to_numpy(zero_copy_only=False)
            if np.isnan(at.astype(np.float64)).any():
                raise RuntimeError(f"near_dedup (spark): {exact_pairs} pairs to verify, fewer verified")
            similarity[np.flatnonzero(open_)] = measured.column("similarity").to_numpy()[at.astype(np.int64)]
    candidate_similarity = similarity if params.verify != "off" else None
    verified = (
        minhash.passes(similarity, params.threshold)
        if candidate_similarity is not None
        else np.ones(scored.num_rows, dtype=bool)
    )
    edges = scored.filter(pa.array(verified))

    node_ids = (
        pa.chunked_array([edges.column("id_a"), edges.column("id_b")]).unique()
        if edges.num_rows
        else pa.array([], pa.string())
    )
    nodes = _SPARK_ROWS.empty_table()
    if len(node_ids):
        wanted = run.session.createDataFrame(pa.table({"id": node_ids}))
        nodes = (
            pool.drop("sets")
            .join(F.broadcast(wanted), "id", "left_semi")
            .join(set_docs, "id", "left")
            .select(*_SPARK_ROWS.names)
            .toArrow()
        )
        # The local order: new documents by (shard, row), then indexed ones by (file, row).
        nodes = nodes.sort_by([("tier", "descending"), ("shard", "ascending"), ("row", "ascending")])
    summary, drops, clusters = _choose_survivors(
        nodes, edges, scored.set_column(2, "similarity", pa.array(similarity)), params, config
    )
    summary["near_dup.candidate_pairs"] = scored.num_rows
    summary["near_dup.exact_jaccard_pairs"] = exact_pairs
    summary["near_dup.no_shingles"] = new.where("shingles = 0").count()
    summary["near_dup.index_rows_matched"] = pool.count() - new.count()
    summary = +summary
    summary.update(pair_metrics(config, candidate_similarity, verified))
    for shard in np.unique(drops["shard"]):
        mask = drops["shard"] == shard
        write_drop_plan(work_url, shards[int(shard)].name, drops["row"][mask], drops["survivor"][mask].tolist())
    write_parquet_atomic(clusters, storage.join(output_url, CLUSTERS_FILE), output_url)

    if index is not None and params.update_index:
        index.prepare()
        index.remove_part(part)
        dropped = run.session.createDataFrame(
            pa.table({"shard": pa.array(drops["shard"], pa.int32()), "row": pa.array(drops["row"], pa.int64())})
        )
        kept = new.where("shingles > 0").join(F.broadcast(dropped), ["shard", "row"], "left_anti")
        folder = storage.join(index.url, part)
        with_sets = index.shingle_sets
        kept.select(*_SPARK_ROWS.names).mapInArrow(
            lambda batches: _write_index_file(batches, folder, config, with_sets), "rows long"
        ).collect()
    new.unpersist()
    return dict(summary)


def from_arrow_spark(schema: pa.Schema):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def _score(pairs, values, num_perm: int, kind: str) -> pa.Table:
    """(id_a, id_b, similarity) of every pair: from the signatures, or the exact Jaccard of
    the shingle sets, computed on the executors."""
    with_values = pairs.join(values.withColumnRenamed("id", "id_a").withColumnRenamed("v", "v_a"), "id_a").join(
        values.withColumnRenamed("id", "id_b").withColumnRenamed("v", "v_b"), "id_b"
    )
    return (
        with_values.select("id_a", "id_b", "v_a", "v_b")
        .mapInArrow(lambda batches: _verify_batches(batches, num_perm, kind), from_arrow_spark(_SPARK_PAIRS))
        .toArrow()
    )


def _verify_batches(batches, num_perm: int, kind: str):
    for batch in batches:
        if kind == "sets":
            a = minhash.ShingleSets.from_arrow(batch.column("v_a"))
            b = minhash.ShingleSets.from_arrow(batch.column("v_b"))
            rows = np.arange(batch.num_rows)
            similarity = minhash.jaccard(a, b, rows, rows)
        else:
            similarity = minhash.pair_similarity(
                np.concatenate(
                    [signature_matrix(batch.column("v_a"), num_perm), signature_matrix(batch.column("v_b"), num_perm)]
                ),
                np.arange(batch.num_rows),
                np.arange(batch.num_rows) + batch.num_rows,
            )
        yield pa.RecordBatch.from_arrays(
            [batch.column("id_a"), batch.column("id_b"), pa.array(similarity, pa.float64())],
            names=["id_a", "id_b", "similarity"],
        )


def _pair_keys(table: pa.Table) -> pa.Array:
    return pc.binary_join_element_wise(table.column("id_a"), table.column("id_b"), "\x00")


def _set_docs(run, shards: list[InputShard], new, pool, open_pairs: pa.Table):
    """(id, sets) of the documents of the pairs to verify exactly: new ones shingled again
    from just their rows, indexed ones from the index."""
    from pyspark.sql import functions as F

    ids = pa.chunked_array([open_pairs.column("id_a"), open_pairs.column("id_b")]).unique()
    wanted = run.session.createDataFrame(pa.table({"id": ids}))
    located = new.select("id", "shard", "row").join(F.broadcast(wanted), "id", "left_semi").toArrow()
    jobs = []
    shard_numbers = located.column("shard").to_numpy()
    for shard in np.unique(shard_numbers):
        mask = shard_numbers == shard
        rows = located.column("row").to_numpy()[mask]
        order = np.argsort(rows)
        jobs.append(
            (
                shards[int(shard)].url,
                rows[order],
                np.asarray(located.column("id").to_pylist(), dtype=object)[mask][order],
            )
        )
    fresh = run.frame(_set_rows, jobs, _SPARK_SETS)
    indexed = pool.where("tier = 0").select("id", "sets").join(F.broadcast(wanted), "id", "left_semi")
    return fresh.unionByName(indexed)


def _set_rows(stage: NearDedup, job) -> Iterator[pa.Table]:
    url, rows, ids = job
    sets = shard_sets(url, rows, stage.params.minhash_config())
    yield pa.table({"id": pa.array(list(ids), pa.string()), "sets": sets.to_arrow()}, schema=_SPARK_SETS)


def _signed_rows(stage: NearDedup, item: tuple[int, str, bool]) -> Iterator[pa.Table]:
    shard, url, keep_sets = item
    config = stage.params.minhash_config()
    signed = sign_part(url, config, stage.params.quality_column, keep_sets)
    n = len(signed.sig)
    keys = minhash.band_keys(signed.sig, config).view(np.int64)  # Spark has no unsigned 64-bit type
    meta = signed.meta
    yield pa.table(
        {
            "shard": pa.array(np.full(n, shard, np.int32)),
            "row": pa.array(np.arange(n, dtype=np.int64)),
            "tier": pa.array(np.ones(n, np.int8)),
            "id": meta.column("id"),
            "source": meta.column("source"),
            "date": meta.column("date"),
            "length": meta.column("length"),
            "quality": meta.column("quality"),
            "shingles": pa.array(signed.shingles, pa.int64()),
            "keys": pa.ListArray.from_arrays(
                pa.array(np.arange(n + 1, dtype=np.int32) * config.bands), pa.array(keys.ravel())
            ),
            "sig": _sig_column(signed.sig),
            "sets": signed.sets.to_arrow().cast(pa.binary()) if signed.sets is not None else pa.nulls(n, pa.binary()),
        },
        schema=_SPARK_ROWS,
    )


def _indexed_rows(stage: NearDedup, item: tuple[int, str]) -> Iterator[pa.Table]:
    file_number, url = item
    config = stage.params.minhash_config()
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    n = table.num_rows
    keys = (
        np.column_stack([table.column(b).to_numpy() for b in band_columns(config)])
        if n
        else np.empty((0, config.bands), np.uint64)
    )
    sets = table.column("shingles").cast(pa.binary()) if "shingles" in table.column_names else pa.nulls(n, pa.binary())
    yield pa.table(
        {
            "shard": pa.array(np.full(n, file_number, np.int32)),
            "row": pa.array(np.arange(n, dtype=np.int64)),
            "tier": pa.array(np.zeros(n, np.int8)),
            "id": table.column("id"),
            "source": table.column("source"),
            "date": table.column("date"),
            "length": pa.nulls(n, pa.int64()),
            "quality": pa.nulls(n, pa.float64()),
            "shingles": pa.array(np.ones(n, np.int64)),
            "keys": pa.ListArray.from_arrays(
                pa.array(np.arange(n + 1, dtype=np.int32) * config.bands),
                pa.array(keys.astype(np.uint64).view(np.int64).ravel()),
            ),
            "sig": _sig_column(signature_matrix(table.column("sig"), config.num_perm)),
            "sets": sets,
        },
        schema=_SPARK_ROWS,
    )


def _sig_column(sig: np.ndarray) -> pa.Array:
    n, width = len(sig), sig.shape[1] * 4 if sig.ndim == 2 else 0
    offsets = np.arange(n + 1, dtype=np.int32) * width
    return pa.Array.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(sig).tobytes())]
    )


def _write_index_file(batches, folder: str, config: minhash.MinHashConfig, with_sets: bool):
    import uuid

    tables = [pa.Table.from_batches([b]) for b in batches]
    rows = sum(t.num_rows for t in tables)
    if rows:
        table = pa.concat_tables(tables)
        flat = pc.list_flatten(table.column("keys")).to_numpy(zero_copy_only=False)
        keys = flat.astype(np.int64).view(np.uint64).reshape(-1, config.bands)
        sets = minhash.ShingleSets.from_arrow(table.column("sets")) if with_sets else None
        out = index_rows(
            table.column("id"),
            table.column("source"),
            table.column("date"),
            keys,
            signature_matrix(table.column("sig"), config.num_perm),
            config,
            sets,
        )
        write_parquet_atomic(
            out, storage.join(folder, f"{uuid.uuid4().hex}.parquet"), folder, row_group_size=INDEX_ROW_GROUP
        )
    yield pa.RecordBatch.from_arrays([pa.array([rows], pa.int64())], names=["rows"])


def _choose_survivors(
    nodes: pa.Table, edges: pa.Table, scored: pa.Table, params: NearDedupParams, config: minhash.MinHashConfig
) -> tuple[Counter, dict[str, np.ndarray], pa.Table]:
    """Clusters and survivors among the documents that have a verified edge, and the cluster
    report with the similarity each pair was judged by, as the local stage gives them."""
    n = nodes.num_rows
    ids = nodes.column("id").combine_chunks() if n else pa.array([], pa.string())
    sig = signature_matrix(nodes.column("sig"), config.num_perm)

    def positions(column) -> np.ndarray:
        found = pc.index_in(column, value_set=ids).to_numpy(zero_copy_only=False) if n else np.full(len(column), np.nan)
        return found

    a, b = positions(edges.column("id_a")).astype(np.int64), positions(edges.column("id_b")).astype(np.int64)
    meta = pa.table(
        {
            "tier": nodes.column("tier"),
            "id": ids,
            "date": nodes.column("date"),
            "length": nodes.column("length"),
            "quality": nodes.column("quality"),
        }
    )
    found = minhash.cluster(n, a, b, None, params.threshold, minhash.priority_rank(meta, params.keep))
    tier = nodes.column("tier").to_numpy()
    indexed = np.flatnonzero(tier == 0)
    found.survivor[indexed] = indexed  # already in the corpus: never dropped here
    has_set = nodes.column("sets").is_valid().to_numpy(zero_copy_only=False) if n else np.zeros(0, dtype=bool)
    sets = minhash.ShingleSets.from_arrow(nodes.column("sets").fill_null(b"")) if n else minhash.ShingleSets.empty()

    def pair_similarity(x, y):  # exact where both documents were shingled again, as locally
        out = minhash.pair_similarity(sig, x, y)
        both = has_set[x] & has_set[y]
        out[both] = minhash.jaccard(sets, sets, x[both], y[both])
        return out

    if params.verify != "off" and n:
        ca, cb = positions(scored.column("id_a")), positions(scored.column("id_b"))
        among = ~(np.isnan(ca.astype(np.float64)) | np.isnan(cb.astype(np.float64)))
        pair_similarity = reusing_known_pairs(
            ca[among].astype(np.int64),
            cb[among].astype(np.int64),
            scored.column("similarity").to_numpy()[among],
            n,
            pair_similarity,
        )
    dropped = np.flatnonzero(found.duplicate & (tier == 1))
    drops = {
        "shard": nodes.column("shard").to_numpy()[dropped],
        "row": nodes.column("row").to_numpy()[dropped],
        "survivor": np.asarray(pc.take(ids, pa.array(found.survivor[dropped], pa.int64())).to_pylist(), dtype=object),
    }
    clusters = minhash.cluster_table(ids, found, params.sample_pairs, pair_similarity)
    summary = Counter(
        {
            "near_dup.verified_pairs": len(a),
            "near_dup.clusters": clusters.num_rows,
            "near_dup.dropped_for_index": int(np.count_nonzero(tier[found.survivor[dropped]] == 0)),
        }
    )
    return summary, drops, clusters
