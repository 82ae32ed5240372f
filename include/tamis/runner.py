"""The stage runner: one implementation of parallelism, resume, commits and counters
for every stage.

A shard is committed when its ``_commits/<part>.json`` exists; that file is written
after the part and its side tables are published, so a crash at any moment leaves
either a committed shard or nothing a reader would pick up. The manifest is written
last, once every shard is committed, and it is what downstream stages read.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tamis import __version__, storage
from tamis.dataset import Dataset
from tamis.metrics import emit_stage_metrics
from tamis.stage import DROPPED_SCHEMA, QUARANTINE_SCHEMA, InputShard, Stage

log = logging.getLogger("tamis.runner")

PARQUET_OPTIONS = {"compression": "zstd", "write_statistics": True}


class StageError(RuntimeError):
    pass


class CountsDoNotReconcile(StageError):
    pass


def run_stage(
    stage: Stage,
    input_url: str | None,
    output_url: str,
    workers: int = 1,
    progress_every_s: float = 10.0,
    only_shards: list[str] | None = None,
) -> dict[str, Any] | None:
    """Run ``stage`` over every shard of ``input_url`` into ``output_url`` and return the manifest.

    With ``only_shards`` (one mapped task per shard), just those shards are processed and
    committed; a later run without it finds them committed and writes the manifest.
    """
    started = time.time()
    for url in (input_url, output_url):
        if url:
            storage.check_reachable(url)
    output = Dataset(output_url)
    if output.is_complete():
        log.info("%s: %s is already complete, nothing to do", stage.name, output_url)
        return output.manifest()
    stage.check_ready()
    shards = stage.input_shards(input_url)
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise StageError(f"{stage.name}: input shard names are not unique: {sorted(names)}")

    stats: dict[str, dict[str, Any]] = {}
    pending: list[InputShard] = []
    for shard in shards:
        done = output.committed(shard.name)
        if done is None:
            pending.append(shard)
        else:
            stats[shard.name] = done
    if stats:
        log.info("%s: resuming, %d of %d shards already committed", stage.name, len(stats), len(shards))

    if only_shards is not None:
        if type(stage).prepare is not Stage.prepare:
            raise StageError(f"{stage.name}: a whole-dataset stage cannot run shard by shard")
        unknown = sorted(set(only_shards) - set(names))
        if unknown:
            raise StageError(f"{stage.name}: no input shards named {unknown}")
        pending = [s for s in pending if s.name in set(only_shards)]
    stage.prepare(shards, storage.join(output_url, "_work"), workers)
    progress = _Progress(stage.name, shards, stats, progress_every_s)
    if workers <= 1 or len(pending) <= 1:
        for shard in pending:
            stats[shard.name] = run_shard(stage, shard, output_url)
            progress.shard_done(shard, stats[shard.name])
    else:
        _run_pool(stage, pending, output_url, workers, stats, progress)
    if only_shards is not None:
        log.info("%s: committed shards %s; the manifest is written by a run over all shards", stage.name, only_shards)
        return None

    manifest = _manifest(stage, input_url, output_url, shards, stats, workers, started)
    storage.write_json_atomic(output.manifest_url, manifest, output_url)
    storage.remove_tree(storage.join(output_url, "_tmp"))
    emit_stage_metrics(manifest, stage.context.get("pipeline", ""))
    c = manifest["counts"]
    log.info(
        "%s: done in %.1fs: in=%d kept=%d dropped=%d quarantined=%d",
        stage.name, manifest["elapsed_s"], c["in"], c["kept"], c["dropped"], c["quarantined"],
    )
    return manifest


def process_context() -> multiprocessing.context.BaseContext:
    """Worker processes fork from a fresh single-threaded server that has already imported
    Arrow and tamis: a plain fork of this process is unsafe (Arrow's thread pools do not
    survive it) and spawn pays the imports again for every pool."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tamis.runner", "pyarrow.parquet", "numpy"])
    return context


def _run_pool(stage, pending, output_url, workers, stats, progress) -> None:
    context = process_context()
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(run_shard, stage, shard, output_url): shard for shard in pending}
        remaining = set(futures)
        while remaining:
            finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for future in finished:
                shard = futures[future]
                try:
                    stats[shard.name] = future.result()
                except Exception as exc:
                    for other in remaining:
                        other.cancel()
                    raise StageError(f"{stage.name}: shard {shard.name} ({shard.url}) failed: {exc}") from exc
                progress.shard_done(shard, stats[shard.name])


def run_shard(stage: Stage, shard: InputShard, output_url: str) -> dict[str, Any]:
    """Process one shard and commit it. Runs in a worker process."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.time()
    dataset = Dataset(output_url)
    kept = _PartWriter(dataset, dataset.part_url(shard.name))
    dropped = _PartWriter(dataset, dataset.dropped_url(shard.name), DROPPED_SCHEMA)
    quarantined = _PartWriter(dataset, dataset.quarantine_url(shard.name), QUARANTINE_SCHEMA)
    counts = Counter()
    drop_reasons: Counter = Counter()
    quarantine_reasons: Counter = Counter()
    metrics: Counter = Counter()
    try:
        for result in stage.run_shard(shard):
            n_in = result.counted_in
            n_out = result.kept.num_rows + result.dropped.num_rows + result.quarantined.num_rows
            if n_in != n_out:
                raise CountsDoNotReconcile(
                    f"{stage.name}: shard {shard.name}: in={n_in} but kept+dropped+quarantined={n_out}"
                )
            counts["in"] += n_in
            counts["kept"] += result.kept.num_rows
            counts["dropped"] += result.dropped.num_rows
            counts["quarantined"] += result.quarantined.num_rows
            drop_reasons.update(_value_counts(result.dropped, "reason"))
            quarantine_reasons.update(_value_counts(result.quarantined, "reason"))
            metrics.update(result.metrics)
            kept.write(result.kept)
            dropped.write(result.dropped)
            quarantined.write(result.quarantined)
        part = kept.publish(always=True)
        dropped.publish()
        quarantined.publish()
    finally:
        for writer in (kept, dropped, quarantined):
            writer.discard()
    commit = {
        "name": shard.name,
        "input": shard.url,
        "counts": {k: counts[k] for k in ("in", "kept", "dropped", "quarantined")},
        "drop_reasons": dict(sorted(drop_reasons.items())),
        "quarantine_reasons": dict(sorted(quarantine_reasons.items())),
        "metrics": dict(sorted(metrics.items())),
        "input_bytes": shard.size_bytes,
        "part": part,
        "elapsed_s": round(time.time() - started, 3),
    }
    storage.write_json_atomic(dataset.commit_url(shard.name), commit, output_url)
    return commit


class _PartWriter:
    """Writes a Parquet file aside under ``_tmp/`` and publishes it in one move."""

    def __init__(self, dataset: Dataset, final_url: str, schema: pa.Schema | None = None):
        self.dataset = dataset
        self.final_url = final_url
        self.schema = schema
        self.rows = 0
        self._tmp: str | None = None
        self._file = None
        self._writer: pq.ParquetWriter | None = None
        self._last_empty: pa.Table | None = None

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            self._last_empty = table
            return
        if self._writer is None:
            self._open(table.schema)
        elif table.schema != self._writer.schema:
            table = table.cast(self._writer.schema)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def _open(self, schema: pa.Schema) -> None:
        self._tmp = storage.tmp_url(self.dataset.url, self.final_url.rsplit("/", 1)[-1])
        fs, path = storage.filesystem(self._tmp)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self._file = fs.open(path, "wb")
        self._writer = pq.ParquetWriter(self._file, schema, **PARQUET_OPTIONS)

    def publish(self, always: bool = False) -> dict[str, Any] | None:
        if self._writer is None:
            if not always:
                return None
            schema = self.schema or (self._last_empty.schema if self._last_empty is not None else pa.schema([]))
            self._open(schema)
        self._writer.close()
        self._file.close()
        fs, path = storage.filesystem(self._tmp)
        digest = hashlib.sha256()
        with fs.open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        size = fs.size(path)
        storage.publish(self._tmp, self.final_url)
        self._tmp = None
        self._writer = None
        return {"rows": self.rows, "bytes": size, "sha256": digest.hexdigest()}

    def discard(self) -> None:
        if self._tmp is None:
            return
        try:
            if self._writer is not None:
                self._writer.close()
            if self._file is not None:
                self._file.close()
            fs, path = storage.filesystem(self._tmp)
            if fs.exists(path):
                fs.rm(path)
        except Exception:  # a failed cleanup of a private temp file must not hide the real error
            log.warning("could not remove temporary file %s", self._tmp)


def _value_counts(table: pa.Table, column: str) -> dict[str, int]:
    if table.num_rows == 0:
        return {}
    counts = table.column(column).value_counts()
    return {str(v["values"]): int(v["counts"]) for v in counts.to_pylist()}


def _manifest(stage, input_url, output_url, shards, stats, workers, started) -> dict[str, Any]:
    totals: Counter = Counter()
    drop_reasons: Counter = Counter()
    quarantine_reasons: Counter = Counter()
    metrics: Counter = Counter()
    parts = []
    for shard in shards:
        s = stats[shard.name]
        totals.update(s["counts"])
        drop_reasons.update(s["drop_reasons"])
        quarantine_reasons.update(s["quarantine_reasons"])
        metrics.update(s["metrics"])
        parts.append({"name": shard.name, "input": s["input"], **s["part"]})
    counts = {k: totals[k] for k in ("in", "kept", "dropped", "quarantined")}
    if counts["in"] != counts["kept"] + counts["dropped"] + counts["quarantined"]:
        raise CountsDoNotReconcile(f"{stage.name}: counts do not reconcile: {counts}")
    input_manifest = None
    if input_url and Dataset(input_url).is_complete():
        input_manifest = hashlib.sha256(storage.read_bytes(Dataset(input_url).manifest_url)).hexdigest()
    elapsed = time.time() - started
    return {
        "stage": stage.name,
        "tamis_version": __version__,
        "input": input_url,
        "input_manifest_sha256": input_manifest,
        "output": output_url,
        "params": stage.params.model_dump(mode="json"),
        "counts": counts,
        "drop_reasons": dict(sorted(drop_reasons.items())),
        "quarantine_reasons": dict(sorted(quarantine_reasons.items())),
        "metrics": dict(sorted(metrics.items())),
        "input_bytes": sum(s.size_bytes for s in shards),
        "parts": parts,
        "workers": workers,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 3),
        "docs_per_s": round(counts["in"] / elapsed, 1) if elapsed > 0 else None,
    }


class _Progress:
    def __init__(self, stage_name: str, shards: list[InputShard], done: dict, every_s: float):
        self.stage_name = stage_name
        self.total_bytes = sum(s.size_bytes for s in shards) or 1
        self.total_shards = len(shards)
        self.done_shards = len(done)
        self.done_bytes = sum(s.size_bytes for s in shards if s.name in done)
        self.start_bytes = self.done_bytes
        self.docs = 0
        self.started = time.time()
        self.every_s = every_s
        self.last = 0.0

    def shard_done(self, shard: InputShard, stats: dict) -> None:
        self.done_shards += 1
        self.done_bytes += shard.size_bytes
        self.docs += stats["counts"]["in"]
        now = time.time()
        if now - self.last < self.every_s and self.done_shards < self.total_shards:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-6)
        rate_bytes = (self.done_bytes - self.start_bytes) / elapsed
        eta = (self.total_bytes - self.done_bytes) / rate_bytes if rate_bytes > 0 else 0.0
        log.info(
            "%s: %d/%d shards, %d docs, %.0f docs/s, %.1f MB/s, ETA %.0fs",
            self.stage_name, self.done_shards, self.total_shards, self.docs,
            self.docs / elapsed, rate_bytes / 1e6, eta,
        )
