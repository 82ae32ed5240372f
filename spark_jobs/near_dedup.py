"""Near-duplicate removal on Spark: the algorithm of ``tamis.stages.near_dedup`` at scale.

Signatures and band keys are computed per partition with the same ``tamis.minhash``
functions (mapInArrow). Candidate pairs come from grouping band keys: inside each
bucket, members ordered by id are linked to the first member and to their predecessor
(window functions), exactly as the local path links them. Pairs are verified on the
executors: by default the documents that have a candidate are shingled again and each
pair gets the exact Jaccard of its shingle sets (``verify: estimate`` uses the
signatures). The verified edge list, which is small next to the corpus, is collected and
clustered on the driver with the local functions, so both paths give the same clusters
and survivors.

Output: a dataset with the runner's layout: ``<part>.parquet`` per input part,
``_dropped/<part>.parquet``, ``_clusters/clusters.parquet`` and ``_manifest.json`` with
counts that reconcile.

    spark-submit spark_jobs/near_dedup.py --input URL --output URL [--pipeline default] [--param KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tamis import __version__, minhash, storage
from tamis.dataset import Dataset
from tamis.stages.near_dedup import (CLUSTERS_FILE, REASON, NearDedupParams, pair_metrics, reusing_known_pairs,
                                     write_parquet_atomic)

log = logging.getLogger("tamis.spark.near_dedup")

SIGNED_SCHEMA = "id string, source string, date string, length long, quality double, shingles long, keys array<long>, sig binary"
SETS_SCHEMA = "id string, shingles binary"
PAIR_SCHEMA = "id_a string, id_b string, similarity double"


def _spark_path(url: str) -> str:
    return "s3a://" + url[len("s3://"):] if url.startswith("s3://") else url


def sign_batches(batches, config: minhash.MinHashConfig, quality_column: str | None):
    """mapInArrow: record batches with id/source/date/text -> signatures and band keys."""
    width = config.num_perm * 4
    for batch in batches:
        n = batch.num_rows
        text = batch.column("text")
        sig, shingles = minhash.signatures(text, config)
        keys = minhash.band_keys(sig, config).view(np.int64)  # Spark has no unsigned 64-bit type
        quality = batch.column(quality_column).cast(pa.float64()) if quality_column else pa.nulls(n, pa.float64())
        yield pa.RecordBatch.from_arrays([
            batch.column("id").cast(pa.string()),
            batch.column("source").cast(pa.string()) if "source" in batch.schema.names else pa.nulls(n, pa.string()),
            batch.column("date").cast(pa.string()) if "date" in batch.schema.names else pa.nulls(n, pa.string()),
            pc.fill_null(pc.binary_length(text), 0).cast(pa.int64()),
            quality,
            pa.array(shingles, pa.int64()),
            pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * config.bands), pa.array(keys.ravel())),
            pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(np.arange(n + 1, dtype=np.int32) * width),
                                                   pa.py_buffer(np.ascontiguousarray(sig).tobytes())]),
        ], names=["id", "source", "date", "length", "quality", "shingles", "keys", "sig"])


def set_batches(batches, config: minhash.MinHashConfig):
    """mapInArrow: (id, text) -> the shingle set of each document, for exact verification."""
    for batch in batches:
        yield pa.RecordBatch.from_arrays([batch.column("id").cast(pa.string()),
                                          minhash.shingle_sets(batch.column("text"), config).to_arrow()],
                                         names=["id", "shingles"])


def verify_batches(batches, num_perm: int):
    """mapInArrow: (id_a, id_b, shingles_a, shingles_b) -> exact Jaccard of each pair, or
    (id_a, id_b, sig_a, sig_b) -> its signature estimate."""
    for batch in batches:
        if "shingles_a" in batch.schema.names:
            a = minhash.ShingleSets.from_arrow(batch.column("shingles_a"))
            b = minhash.ShingleSets.from_arrow(batch.column("shingles_b"))
            rows = np.arange(batch.num_rows)
            similarity = minhash.jaccard(a, b, rows, rows)
        else:
            similarity = minhash.similarity(_sig_matrix(batch.column("sig_a"), num_perm),
                                            _sig_matrix(batch.column("sig_b"), num_perm))
        yield pa.RecordBatch.from_arrays([batch.column("id_a"), batch.column("id_b"), pa.array(similarity, pa.float64())],
                                         names=["id_a", "id_b", "similarity"])


def _sig_matrix(column: pa.Array, num_perm: int) -> np.ndarray:
    column = column.cast(pa.large_binary())
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int64)[column.offset: column.offset + len(column) + 1]
    if len(column) == 0:
        return np.empty((0, num_perm), np.uint32)
    data = np.frombuffer(column.buffers()[2], dtype=np.uint8)[offsets[0]: offsets[-1]]
    return data.view(np.uint32).reshape(len(column), num_perm)


def run(spark, input_url: str, output_url: str, params: NearDedupParams) -> dict[str, Any]:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    started = time.time()
    if __name__ != "__main__":
        # Executors have tamis installed but not this entry-point file: ship its functions by value.
        from pyspark import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    config = params.minhash_config()
    if params.index_url:
        raise ValueError("the Spark job deduplicates a whole dataset; incremental runs against index_url use the stage")
    shards = Dataset(input_url).shards()
    part_names = [s.name for s in shards]
    records = spark.read.parquet(*[_spark_path(s.url) for s in shards]) \
        .withColumn("_part", F.regexp_replace(F.col("_metadata.file_name"), r"\.parquet$", ""))
    text_columns = [c for c in ("id", "source", "date", "text", params.quality_column) if c and c in records.columns]
    quality_column = params.quality_column
    signed = records.select(*text_columns).mapInArrow(
        lambda batches: sign_batches(batches, config, quality_column), SIGNED_SCHEMA).cache()

    buckets = signed.where("shingles > 0").select("id", F.posexplode("keys").alias("band", "key"))
    in_bucket = Window.partitionBy("band", "key").orderBy("id")
    linked = buckets.select("id", F.first("id").over(in_bucket).alias("head"), F.lag("id").over(in_bucket).alias("prev"))
    pairs = linked.where("head != id").select(F.col("head").alias("x"), "id") \
        .unionByName(linked.where("prev is not null").select(F.col("prev").alias("x"), "id")) \
        .select(F.least("x", "id").alias("id_a"), F.greatest("x", "id").alias("id_b")).distinct()
    candidates, sets, exact_pairs = _score_pairs(spark, pairs, signed, records, params, config)
    candidate_count = candidates.num_rows
    candidate_similarity = candidates.column("similarity").to_numpy() if params.verify != "off" else None
    verified_mask = minhash.passes(candidate_similarity, params.threshold) if candidate_similarity is not None \
        else np.ones(candidate_count, dtype=bool)
    edges = candidates.filter(pa.array(verified_mask))

    # Reduce on the driver: only documents that have an edge take part.
    node_ids = pa.chunked_array([edges.column("id_a"), edges.column("id_b")]).unique() if edges.num_rows else pa.array([], pa.string())
    nodes = spark.createDataFrame(pa.table({"id": node_ids})) if len(node_ids) else None
    if nodes is not None:
        node_frame = signed.join(F.broadcast(nodes), "id").select("id", "date", "length", "quality", "sig")
        if sets is not None:
            node_frame = node_frame.join(sets, "id", "left")
        node_rows = node_frame.toArrow()
    else:
        node_rows = pa.table({"id": pa.array([], pa.string()), "date": pa.array([], pa.string()),
                              "length": pa.array([], pa.int64()), "quality": pa.array([], pa.float64()),
                              "sig": pa.array([], pa.binary()), "shingles": pa.array([], pa.binary())})
    drops, clusters, verified = _cluster_on_driver(node_rows, edges, candidates if params.verify != "off" else None,
                                                   params, config)
    write_parquet_atomic(clusters, storage.join(output_url, CLUSTERS_FILE), output_url)

    drop_df = spark.createDataFrame(drops) if drops.num_rows else spark.createDataFrame([], "id string, detail string")
    marked = records.join(F.broadcast(drop_df), "id", "left")
    kept = marked.where(F.col("detail").isNull()).drop("detail")
    dropped = marked.where(F.col("detail").isNotNull()) \
        .select("id", F.col("source") if "source" in records.columns else F.lit(None).cast("string").alias("source"),
                F.lit(REASON).alias("reason"), "detail", "_part")
    columns = [c for c in records.columns if c != "_part"]
    parts = _write_parts(kept.select(*columns, "_part"), output_url, "", part_names, records.select(*columns).schema)
    _write_parts(dropped, output_url, "_dropped", part_names, None)

    manifest = _manifest(input_url, output_url, params, shards, parts, drops.num_rows,
                         {"near_dup.candidate_pairs": candidate_count, "near_dup.verified_pairs": verified,
                          "near_dup.exact_jaccard_pairs": exact_pairs, "near_dup.clusters": clusters.num_rows,
                          "near_dup.no_shingles": signed.where("shingles = 0").count(),
                          **pair_metrics(config, candidate_similarity, verified_mask)}, started)
    storage.write_json_atomic(Dataset(output_url).manifest_url, manifest, output_url)
    storage.remove_tree(storage.join(output_url, "_tmp"))
    signed.unpersist()
    if sets is not None:
        sets.unpersist()
    return manifest


def _score_pairs(spark, pairs, signed, records, params: NearDedupParams, config) -> tuple[pa.Table, Any, int]:
    """(id_a, id_b, similarity) of every candidate pair, as the local stage measures it: the
    signature estimate, replaced by the exact Jaccard for the pairs the signatures do not
    settle (``minhash.signature_verdicts``), whose documents alone are shingled again.
    Also the shingle sets of those documents (a cached frame) and how many pairs they served."""
    from pyspark.sql import functions as F

    num_perm = config.num_perm
    sigs = signed.select("id", "sig")
    scored = pairs \
        .join(sigs.withColumnRenamed("id", "id_a").withColumnRenamed("sig", "sig_a"), "id_a") \
        .join(sigs.withColumnRenamed("id", "id_b").withColumnRenamed("sig", "sig_b"), "id_b") \
        .select("id_a", "id_b", "sig_a", "sig_b") \
        .mapInArrow(lambda batches: verify_batches(batches, num_perm), PAIR_SCHEMA).toArrow()
    if params.verify != "exact" or scored.num_rows == 0:
        return scored, None, 0
    accept, reject = minhash.signature_verdicts(scored.column("similarity").to_numpy(), params.threshold, num_perm)
    open_ = ~(accept | reject)
    if not open_.any():
        return scored, None, 0
    open_pairs = spark.createDataFrame(scored.select(["id_a", "id_b"]).filter(pa.array(open_)))
    open_ids = open_pairs.select(F.col("id_a").alias("id")).union(open_pairs.select(F.col("id_b").alias("id"))).distinct()
    sets = records.select("id", "text").join(open_ids, "id").mapInArrow(
        lambda batches: set_batches(batches, config), SETS_SCHEMA).cache()
    exact = open_pairs \
        .join(sets.withColumnRenamed("id", "id_a").withColumnRenamed("shingles", "shingles_a"), "id_a") \
        .join(sets.withColumnRenamed("id", "id_b").withColumnRenamed("shingles", "shingles_b"), "id_b") \
        .select("id_a", "id_b", "shingles_a", "shingles_b") \
        .mapInArrow(lambda batches: verify_batches(batches, num_perm), PAIR_SCHEMA).toArrow()
    similarity = scored.column("similarity").to_numpy().copy()
    at = pc.index_in(_pair_keys(scored), value_set=_pair_keys(exact)).to_numpy(zero_copy_only=False)
    found = open_ & ~np.isnan(at.astype(np.float64))
    similarity[found] = exact.column("similarity").to_numpy()[at[found].astype(np.int64)]
    if found.sum() != open_.sum():
        raise RuntimeError(f"near_dedup (spark): {int(open_.sum())} pairs to verify, {int(found.sum())} verified")
    return scored.set_column(2, "similarity", pa.array(similarity, pa.float64())), sets, int(open_.sum())


def _pair_keys(table: pa.Table) -> pa.Array:
    return pc.binary_join_element_wise(table.column("id_a"), table.column("id_b"), "\x00")


def _cluster_on_driver(nodes: pa.Table, edges: pa.Table, candidates: pa.Table | None, params: NearDedupParams,
                       config) -> tuple[pa.Table, pa.Table, int]:
    n = nodes.num_rows
    ids = nodes.column("id").combine_chunks() if n else pa.array([], pa.string())
    sig = _sig_matrix(nodes.column("sig").combine_chunks(), config.num_perm) if n else np.empty((0, config.num_perm), np.uint32)
    a = pc.index_in(edges.column("id_a"), value_set=ids).to_numpy(zero_copy_only=False) if n else np.empty(0, np.int64)
    b = pc.index_in(edges.column("id_b"), value_set=ids).to_numpy(zero_copy_only=False) if n else np.empty(0, np.int64)
    meta = pa.table({"tier": pa.array(np.ones(n, np.int8)), "id": ids, "date": nodes.column("date"),
                     "length": nodes.column("length"), "quality": nodes.column("quality")})
    # The edges are verified already: every one joins its documents.
    found = minhash.cluster(n, a.astype(np.int64), b.astype(np.int64), None, params.threshold,
                            minhash.priority_rank(meta, params.keep))
    if params.verify == "exact" and "shingles" in nodes.column_names:
        column = nodes.column("shingles")
        has_set = column.is_valid().to_numpy(zero_copy_only=False) if n else np.zeros(0, dtype=bool)
        sets = minhash.ShingleSets.from_arrow(column) if n else minhash.ShingleSets.empty()

        def pair_similarity(x, y):  # exact where both sets are at hand, as in the local stage
            out = minhash.pair_similarity(sig, x, y)
            both = has_set[x] & has_set[y]
            out[both] = minhash.jaccard(sets, sets, x[both], y[both])
            return out
    else:
        def pair_similarity(x, y):
            return minhash.pair_similarity(sig, x, y)
    if candidates is not None and n:
        # Pairs already measured show that figure, as in the local stage.
        ca = pc.index_in(candidates.column("id_a"), value_set=ids).to_numpy(zero_copy_only=False)
        cb = pc.index_in(candidates.column("id_b"), value_set=ids).to_numpy(zero_copy_only=False)
        among = ~(np.isnan(ca.astype(np.float64)) | np.isnan(cb.astype(np.float64)))
        pair_similarity = reusing_known_pairs(ca[among].astype(np.int64), cb[among].astype(np.int64),
                                              candidates.column("similarity").to_numpy()[among], n, pair_similarity)
    dup = np.flatnonzero(found.duplicate)
    drops = pa.table({"id": pc.take(ids, pa.array(dup, pa.int64())),
                      "detail": pc.take(ids, pa.array(found.survivor[dup], pa.int64()))})
    return drops, minhash.cluster_table(ids, found, params.sample_pairs, pair_similarity), len(a)


def _write_parts(frame, output_url: str, folder: str, part_names: list[str], empty_schema) -> dict[str, dict]:
    """Write one Parquet file per input part under ``folder`` and return name -> file facts."""
    import pyarrow.parquet as pq

    tmp = storage.join(output_url, "_tmp", "spark", folder or "parts")
    frame.repartition("_part").write.mode("overwrite").partitionBy("_part").parquet(_spark_path(tmp))
    fs, tmp_path = storage.filesystem(tmp)
    facts = {}
    for name in part_names:
        final = storage.join(output_url, folder, f"{name}.parquet") if folder else Dataset(output_url).part_url(name)
        files = sorted(p for p in fs.glob(f"{tmp_path}/_part={name}/*.parquet"))
        if len(files) > 1:
            pieces = [pq.read_table(fs.open(p, "rb")) for p in files]
            local = storage.join(tmp, f"{name}.merged.parquet")
            write_parquet_atomic(pa.concat_tables(pieces), local, output_url)
            files = [storage.filesystem(local)[1]]
        if not files:
            if empty_schema is None:
                continue
            from pyspark.sql.pandas.types import to_arrow_schema

            local = storage.join(tmp, f"{name}.empty.parquet")
            write_parquet_atomic(to_arrow_schema(empty_schema).empty_table(), local, output_url)
            files = [storage.filesystem(local)[1]]
        digest = hashlib.sha256(fs.cat_file(files[0])).hexdigest()
        rows = pq.ParquetFile(fs.open(files[0], "rb")).metadata.num_rows
        size = fs.size(files[0])
        scheme = tmp[: tmp.index("://") + 3] if "://" in tmp else ""
        storage.publish(scheme + files[0], final)
        facts[name] = {"rows": rows, "bytes": size, "sha256": digest}
    return facts


def _source_counts(url: str, column: str = "source") -> Counter:
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(url)
    if not fs.exists(path):
        return Counter()
    with fs.open(path, "rb") as f:
        table = pq.read_table(f, columns=[column] if column in pq.read_schema(f).names else [])
    if table.num_columns == 0:
        return Counter({None: table.num_rows})
    return Counter({row["values"]: row["counts"] for row in table.column(column).value_counts().to_pylist()})


def _manifest(input_url, output_url, params, shards, parts, dropped_total, summary, started) -> dict[str, Any]:
    # Counts are read back from the files just written: what the manifest states is what is there.
    counts = Counter()
    metrics: Counter = Counter(summary)
    output = Dataset(output_url)
    for shard in shards:
        kept = _source_counts(output.part_url(shard.name))
        dropped = _source_counts(output.dropped_url(shard.name))
        counts["kept"] += sum(kept.values())
        counts["dropped"] += sum(dropped.values())
        for source, n in (kept + dropped).items():
            if source is not None:
                metrics[f"near_dup.{source}.in"] += n
        for source, n in dropped.items():
            if source is not None:
                metrics[f"near_dup.{source}.dropped"] += n
    counts["in"] = sum(pq_rows(s.url) for s in shards)
    counts["quarantined"] = 0
    if counts["in"] != counts["kept"] + counts["dropped"] or counts["dropped"] != dropped_total:
        raise RuntimeError(f"near_dedup (spark): counts do not reconcile: {dict(counts)}, planned drops {dropped_total}")
    elapsed = time.time() - started
    input_dataset = Dataset(input_url)
    return {
        "stage": "near_dedup",
        "engine": "spark",
        "tamis_version": __version__,
        "input": input_url,
        "input_manifest_sha256": hashlib.sha256(storage.read_bytes(input_dataset.manifest_url)).hexdigest(),
        "output": output_url,
        "params": params.model_dump(mode="json"),
        "counts": {k: counts[k] for k in ("in", "kept", "dropped", "quarantined")},
        "drop_reasons": {REASON: counts["dropped"]} if counts["dropped"] else {},
        "quarantine_reasons": {},
        "metrics": dict(sorted((k, v) for k, v in metrics.items() if v)),
        "input_bytes": sum(s.size_bytes for s in shards),
        "parts": [{"name": s.name, "input": s.url, **parts[s.name]} for s in shards],
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 3),
        "docs_per_s": round(counts["in"] / elapsed, 1) if elapsed > 0 else None,
    }


def pq_rows(url: str) -> int:
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


def spark_session(master: str | None = None, shuffle_partitions: int | None = None):
    import os

    from pyspark.sql import SparkSession

    # Python workers must run the interpreter that has tamis installed.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("tamis-near-dedup").config("spark.ui.enabled", "false")
    if master:
        builder = builder.master(master)
    if shuffle_partitions:
        builder = builder.config("spark.sql.shuffle.partitions", str(shuffle_partitions))
    return builder.getOrCreate()


def main(argv: list[str] | None = None) -> int:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--pipeline", help="take the near_dedup params of this pipeline config (name or YAML path)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--master", help="Spark master, e.g. local[*] (default: spark-submit's)")
    parser.add_argument("--shuffle-partitions", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    values: dict[str, Any] = {}
    if args.pipeline:
        from tamis.pipeline import load_pipeline

        values.update(load_pipeline(args.pipeline).stages.get("near_dedup", {}))
    for pair in args.param:
        key, _, value = pair.partition("=")
        values[key] = yaml.safe_load(value)
    params = NearDedupParams(**values)
    if Dataset(args.output).is_complete():
        log.info("%s is already complete, nothing to do", args.output)
        return 0
    spark = spark_session(args.master, args.shuffle_partitions)
    manifest = run(spark, args.input, args.output, params)
    print(json.dumps({"stage": "near_dedup", "output": args.output, "counts": manifest["counts"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
