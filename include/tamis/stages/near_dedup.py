"""Near-duplicate removal: MinHash signatures, LSH banding, connected components.

Map (``prepare``, a process pool): every shard's texts become MinHash signatures.
Reduce (``prepare``): band keys (bands x rows chosen so that a pair at exactly the
threshold becomes a candidate with probability ``candidate_recall``) -> candidate pairs ->
verification by the exact Jaccard of the candidates' shingle sets (only documents that
have a candidate are read and shingled again) -> connected components -> one survivor
per cluster by a deterministic rule. Apply (``run_shard``, per shard in the workers):
drop every other member with reason ``near_duplicate`` and the survivor's id as detail.

Incremental: with ``index_url`` the signatures and shingle sets of everything already
kept persist as Parquet; a new batch is compared with itself and with the index (only
index rows sharing a band key with the batch are read), indexed documents always
survive, and the batch's own survivors are appended to the index as one part. The part
is named after the output dataset, so a resumed or repeated run replaces its own part
instead of matching against it.

Side output: ``_clusters/clusters.parquet`` (survivor, size, duplicate ids, a sample
of pairs with their similarity). Manifest metrics (on the first shard): the S-curve of
the banding (``near_dup.s_curve.*``) and the candidate and verified pairs per Jaccard
bin (``near_dup.candidates_by_jaccard.*``, ``near_dup.verified_by_jaccard.*``).
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Literal

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
INDEX_ROW_GROUP = 4096  # index rows per row group: a lookup reads the groups that hold a match
JACCARD_BIN = 0.05


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
        bands, rows = (self.bands, self.rows) if self.bands else minhash.bands_for_recall(
            self.threshold, self.num_perm, self.candidate_recall)
        return minhash.MinHashConfig(shingle=self.shingle, ngram=self.ngram, num_perm=self.num_perm, bands=bands,
                                     rows=rows, seed=self.seed, lowercase=self.lowercase)


@dataclass
class Signed:
    """Signatures of a set of documents with what the survivor rule needs."""

    meta: pa.Table  # tier, id, source, date, length, quality
    sig: np.ndarray  # (n, num_perm) uint32
    shingles: np.ndarray  # (n,) shingle count; 0 = nothing to compare
    sets: minhash.ShingleSets | None = None  # when kept for exact verification of every document


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
        exact = params.verify == "exact"
        # The index keeps the shingle set of every survivor: then every set is made in the map.
        keep_sets = exact and bool(params.index_url) and params.update_index
        args = [(s.url, config, params.quality_column, keep_sets) for s in shards]
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=process_context()) \
            if workers > 1 and len(shards) > 1 else None
        try:
            mapper = pool.map if pool else map
            new, sizes = _gather(mapper(_sign_shard, *zip(*args)), [s.url for s in shards], config.num_perm)
            keys = minhash.band_keys(new.sig, config)
            indexed = None
            if params.index_url:
                index = Index(params.index_url, config, shingle_sets=exact)
                indexed = index.matching(keys, exclude=part)
            plan = plan_drops(new, keys, indexed, config, params,
                              lambda rows: _reread_sets([s.url for s in shards], sizes, rows, config, mapper))
        finally:
            if pool:
                pool.shutdown()
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
            Index(params.index_url, config, shingle_sets=exact).write_part(part, plan.kept_signed)

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

def _sign_shard(url: str, config: minhash.MinHashConfig, quality_column: str | None, keep_sets: bool = False) -> Signed:
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
            metas.append(_meta(batch, tier=1, quality_column=quality_column,
                               length=pc.fill_null(pc.binary_length(text), 0)))
            if keep_sets:
                sets.append(minhash.shingle_sets(text, config))
    empty_sets = minhash.ShingleSets.empty() if keep_sets else None
    if not metas:
        return Signed(_empty_meta(), np.empty((0, config.num_perm), np.uint32), np.empty(0, np.int64), empty_sets)
    return Signed(pa.concat_tables(metas), np.concatenate(sigs), np.concatenate(counts),
                  minhash.ShingleSets.concat(sets) if keep_sets else None)


def _shard_sets(url: str, rows: np.ndarray, config: minhash.MinHashConfig) -> minhash.ShingleSets:
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


def _reread_sets(urls: list[str], sizes: np.ndarray, rows: np.ndarray, config: minhash.MinHashConfig,
                 mapper) -> minhash.ShingleSets:
    """Shingle sets of documents ``rows`` (ascending indices over all shards), one task per
    shard that holds any of them."""
    firsts = np.cumsum(sizes) - sizes
    shard = np.searchsorted(np.cumsum(sizes), rows, side="right")
    wanted = np.unique(shard)
    per_shard = [rows[shard == i] - firsts[i] for i in wanted]
    return minhash.ShingleSets.concat(list(mapper(_shard_sets, [urls[i] for i in wanted], per_shard,
                                                  [config] * len(wanted))))


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
    metas, sets = [], []
    for i, (start, part) in enumerate(zip(np.cumsum(sizes) - sizes, results)):
        if len(part.sig) != sizes[i]:
            raise ValueError(f"{urls[i]}: read {len(part.sig)} rows, its footer says {sizes[i]}")
        sig[start: start + sizes[i]] = part.sig
        shingles[start: start + sizes[i]] = part.shingles
        metas.append(part.meta.cast(_META_SCHEMA))
        sets.append(part.sets)
    meta = pa.concat_tables(metas) if metas else _empty_meta()
    kept_sets = minhash.ShingleSets.concat(sets) if sets and all(s is not None for s in sets) else None
    return Signed(meta, sig, shingles, kept_sets), sizes


# --------------------------------------------------------------------------- reduce

@dataclass
class Plan:
    dropped: np.ndarray  # indices into the new documents, ascending
    survivor_ids: np.ndarray  # object array of the survivor id of each dropped document
    clusters: pa.Table
    kept_signed: Signed  # new documents that survive and have shingles (the index append)
    summary: Counter


def plan_drops(new: Signed, keys: np.ndarray, indexed: tuple[Signed, np.ndarray] | None,
               config: minhash.MinHashConfig, params: NearDedupParams,
               load_sets: Callable[[np.ndarray], minhash.ShingleSets] | None = None) -> Plan:
    """Cluster the new documents (and the matching indexed ones) and decide who goes.

    ``load_sets(rows)`` gives the shingle sets of new documents ``rows`` (ascending) when
    ``new`` does not hold them: exact verification asks only for documents with a candidate.
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
    priority = minhash.priority_rank(all_meta, params.keep)
    a, b = minhash.candidate_edges(all_keys, minhash.id_rank(all_meta.column("id")), active)
    if params.verify == "exact":
        fresh_sets = new.sets.take if new.sets is not None else load_sets
        candidate_similarity, pair_similarity, exact_pairs = _exact_verification(
            all_sig, a, b, n_new, fresh_sets, old.sets if old is not None else None, params.threshold)
    else:
        def pair_similarity(x, y):
            return minhash.pair_similarity(all_sig, x, y)
        candidate_similarity = pair_similarity(a, b) if params.verify == "estimate" else None
        exact_pairs = 0
    if candidate_similarity is not None:
        pair_similarity = reusing_known_pairs(a, b, candidate_similarity, len(all_sig), pair_similarity)
    found = minhash.cluster(len(all_sig), a, b, candidate_similarity, params.threshold, priority)
    # Indexed documents are already in the corpus: they are never dropped here.
    found.survivor[n_new:] = np.arange(n_new, len(all_sig))
    dropped = np.flatnonzero(found.duplicate[:n_new])
    ids = all_meta.column("id").combine_chunks()
    survivor_ids = np.asarray(pc.take(ids, pa.array(found.survivor[dropped], pa.int64())).to_pylist(), dtype=object)
    clusters = minhash.cluster_table(ids, found, params.sample_pairs, pair_similarity)
    kept = np.flatnonzero(~found.duplicate[:n_new] & (new.shingles > 0))
    kept_signed = Signed(new.meta.take(pa.array(kept, pa.int64())), new.sig[kept], new.shingles[kept],
                         new.sets.take(kept) if new.sets is not None else None)
    summary = +Counter({
        "near_dup.candidate_pairs": found.candidate_pairs,
        "near_dup.verified_pairs": found.verified_pairs,
        "near_dup.exact_jaccard_pairs": exact_pairs,
        "near_dup.clusters": clusters.num_rows,
        "near_dup.no_shingles": int(n_new - np.count_nonzero(new.shingles)),
        "near_dup.index_rows_matched": len(all_sig) - n_new,
        "near_dup.dropped_for_index": int(np.count_nonzero(found.survivor[dropped] >= n_new)),
    })
    summary.update(pair_metrics(config, candidate_similarity, found.verified))
    return Plan(dropped, survivor_ids, clusters, kept_signed, summary)


def _exact_verification(sig: np.ndarray, a: np.ndarray, b: np.ndarray, n_new: int,
                        fresh_sets: Callable[[np.ndarray], minhash.ShingleSets],
                        indexed_sets: minhash.ShingleSets | None, threshold: float):
    """Similarity of every candidate pair: the signature estimate where it settles the
    verdict beyond doubt (``minhash.signature_verdicts``), the exact Jaccard elsewhere, from
    the shingle sets of just those pairs' documents (new ones from ``fresh_sets(rows)``,
    indexed ones, numbered from ``n_new``, from ``indexed_sets``). Also returns the
    similarity function of the cluster report (exact where both sets are at hand) and the
    number of pairs that needed their exact Jaccard."""
    estimate = minhash.pair_similarity(sig, a, b)
    accept, reject = minhash.signature_verdicts(estimate, threshold, sig.shape[1])
    open_ = ~(accept | reject)
    involved = minhash.sorted_unique(np.concatenate([a[open_], b[open_]]))
    fresh, known = involved[involved < n_new], involved[involved >= n_new] - n_new
    sets = minhash.ShingleSets.concat([fresh_sets(fresh) if len(fresh) else minhash.ShingleSets.empty()]
                                      + ([indexed_sets.take(known)] if len(known) else []))
    position = np.full(len(sig), -1, dtype=np.int64)
    position[involved] = np.arange(len(involved))
    similarity = estimate.copy()
    similarity[open_] = minhash.jaccard(sets, sets, position[a[open_]], position[b[open_]])

    def pair_similarity(x, y):
        out = minhash.pair_similarity(sig, x, y)
        both = (position[x] >= 0) & (position[y] >= 0)
        out[both] = minhash.jaccard(sets, sets, position[x[both]], position[y[both]])
        return out

    return similarity, pair_similarity, int(np.count_nonzero(open_))


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


def pair_metrics(config: minhash.MinHashConfig, candidate_similarity: np.ndarray | None,
                 verified: np.ndarray) -> dict[str, float | int]:
    """The banding's S-curve and the candidate and verified pairs per Jaccard bin:

    - ``near_dup.s_curve.bands`` / ``.rows``, ``near_dup.s_curve.effective_threshold``
      ((1/bands)^(1/rows)), ``near_dup.s_curve.<J>`` for J = 0.50, 0.55 ... 1.00: the
      probability that a pair of Jaccard J becomes a candidate;
    - ``near_dup.candidates_by_jaccard.<bin>`` and ``near_dup.verified_by_jaccard.<bin>``:
      pairs whose measured similarity lies in [bin, bin + 0.05) (1.00: identical sets);
      empty bins are left out, and there are none when verification is off.
    """
    curve = minhash.s_curve(config.bands, config.rows)
    metrics: dict[str, float | int] = {"near_dup.s_curve.bands": config.bands, "near_dup.s_curve.rows": config.rows,
                                       "near_dup.s_curve.effective_threshold": round(curve.effective_threshold, 6)}
    metrics.update({f"near_dup.s_curve.{j:.2f}": round(p, 6) for j, p in curve.points})
    if candidate_similarity is not None:
        for name, sims in (("candidates", candidate_similarity), ("verified", candidate_similarity[verified])):
            bins = np.floor(np.asarray(sims, np.float64) / JACCARD_BIN + 1e-9).astype(np.int64)
            for k in np.flatnonzero(np.bincount(bins)):
                metrics[f"near_dup.{name}_by_jaccard.{k * JACCARD_BIN:.2f}"] = int(np.count_nonzero(bins == k))
    return metrics


# --------------------------------------------------------------------------- incremental index

class IndexMismatch(ValueError):
    pass


class Index:
    """Signatures, band keys and (for exact verification) shingle sets of the documents
    kept so far, as Parquet parts:

        <index_url>/_index.json        the MinHash settings every part was built with
        <index_url>/<run key>.parquet  id, source, date, band_000.., sig[, shingles] (one part per run)
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
            raise IndexMismatch(f"index {self.url} was built with {found}, this stage uses {self.fingerprint()}; "
                                "use a new index_url or the same MinHash settings")
        return True

    def parts(self) -> list[str]:
        fs, path = storage.filesystem(self.url)
        if not fs.exists(path):
            return []
        return sorted(p.rsplit("/", 1)[-1][: -len(".parquet")] for p in fs.glob(f"{path}/*.parquet"))

    def matching(self, keys: np.ndarray, exclude: str | None = None) -> tuple[Signed, np.ndarray] | None:
        """Indexed documents sharing at least one band key with ``keys``: only their band
        columns are read in full; signatures and sets come from the row groups that match."""
        if not self._check():
            return None
        bands = [f"band_{i:03d}" for i in range(self.config.bands)]
        wanted = [minhash.sorted_unique(keys[:, i]) for i in range(self.config.bands)]
        metas, sigs, found_keys, sets = [], [], [], []
        columns = ["id", "source", "date", "sig"] + (["shingles"] if self.shingle_sets else [])
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
                group_rows = np.array([part.metadata.row_group(g).num_rows for g in range(part.num_row_groups)])
                group_ends = np.cumsum(group_rows)
                groups = np.unique(np.searchsorted(group_ends, np.flatnonzero(hit), side="right"))
                in_groups = np.concatenate([np.arange(group_ends[g] - group_rows[g], group_ends[g]) for g in groups])
                rows = part.read_row_groups(groups.tolist(), columns=columns).filter(pa.array(hit[in_groups]))
            flat = np.frombuffer(rows.column("sig").combine_chunks().buffers()[1], dtype=np.uint32)
            sigs.append(flat[: rows.num_rows * self.config.num_perm].reshape(rows.num_rows, self.config.num_perm))
            found_keys.append(part_keys[hit])
            metas.append(_meta(rows, tier=0, quality_column=None, length=None))
            if self.shingle_sets:
                sets.append(minhash.ShingleSets.from_arrow(rows.column("shingles")))
        if not metas:
            return None
        meta = pa.concat_tables(metas)
        found_sets = minhash.ShingleSets.concat(sets) if self.shingle_sets else None
        return Signed(meta, np.concatenate(sigs), np.ones(meta.num_rows, np.int64), found_sets), np.concatenate(found_keys)

    def write_part(self, run_key: str, signed: Signed) -> None:
        if not self._check():
            storage.write_json_atomic(storage.join(self.url, INDEX_META), self.fingerprint(), self.url)
        keys = minhash.band_keys(signed.sig, self.config)
        columns = {"id": signed.meta.column("id"), "source": signed.meta.column("source"),
                   "date": signed.meta.column("date")}
        for i in range(self.config.bands):
            columns[f"band_{i:03d}"] = pa.array(keys[:, i], pa.uint64())
        width = self.config.num_perm * 4
        columns["sig"] = pa.Array.from_buffers(pa.binary(width), len(signed.sig),
                                               [None, pa.py_buffer(np.ascontiguousarray(signed.sig).tobytes())])
        if self.shingle_sets:
            columns["shingles"] = signed.sets.to_arrow()
        write_parquet_atomic(pa.table(columns), storage.join(self.url, f"{run_key}.parquet"), self.url,
                             row_group_size=INDEX_ROW_GROUP)


def _run_key(output_url: str) -> str:
    return "run-" + hashlib.sha256(output_url.rstrip("/").encode()).hexdigest()[:16]


def write_parquet_atomic(table: pa.Table, url: str, dataset_url: str, row_group_size: int | None = None) -> None:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", row_group_size=row_group_size)
    storage.write_bytes_atomic(url, sink.getvalue(), dataset_url)
