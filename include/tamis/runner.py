"""The stage runner: one implementation of parallelism, resume, commits, counters, leases
and fingerprints for every stage, on any engine.

A run of a stage into an output dataset:

1. takes the dataset's lease (one writer per dataset, :mod:`tamis.lease`);
2. compares the output's ``_fingerprint.json`` (the stage's type, parameters, code, the
   files it depends on and its input manifest) with this run's: an output made by anything
   else is never reused or resumed: the run stops with the difference, or, asked to
   rebuild, removes it first;
3. for a whole-dataset stage, writes the plan under ``_work/`` (kept for resume and for
   shard tasks, which only read it);
4. runs every shard not yet committed on the engine: a shard is committed when its
   ``_commits/<part>.json`` exists, written after the part and its side tables are
   published, so a crash at any moment leaves either a committed shard or nothing a reader
   would pick up;
5. writes the manifest last, once every shard is committed; it is what downstream
   stages read.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tamis import __version__, storage
from tamis.dataset import Dataset, InputShard
from tamis.engines import Engine, TaskFailed
from tamis.engines.local import LocalEngine
from tamis.lease import Lease
from tamis.metrics import emit_stage_metrics
from tamis.stage import DROPPED_SCHEMA, QUARANTINE_SCHEMA, BatchResult, DatasetStage, Stage

log = logging.getLogger("tamis.runner")

PARQUET_OPTIONS = {"compression": "zstd", "write_statistics": True}
FINGERPRINT = "_fingerprint.json"
WORK_DIR = "_work"
PLAN_DONE = "_plan.json"


class StageError(RuntimeError):
    pass


class CountsDoNotReconcile(StageError):
    pass


class StaleOutput(StageError):
    """The output folder holds a dataset made by other inputs, parameters or code."""


def run_stage(
    stage: Stage,
    input_url: str | None,
    output_url: str,
    workers: int = 1,
    progress_every_s: float = 10.0,
    only_shards: list[str] | None = None,
    engine: Engine | None = None,
    step: str = "all",
    rebuild: bool = False,
) -> dict[str, Any] | None:
    """Run ``stage`` over every shard of ``input_url`` into ``output_url`` and return the manifest.

    ``step``: ``all`` (plan, shards, manifest), ``plan`` (a whole-dataset stage's plan only),
    ``manifest`` (only the manifest; every shard must be committed already). ``rebuild``
    replaces an output made by a different run instead of refusing it. With
    ``only_shards`` (one mapped task per batch of shards) just those shards are processed
    and committed, and None is returned; a whole-dataset stage then reads the plan a
    ``plan`` step wrote.
    """
    started = time.time()
    engine = engine or LocalEngine(workers)
    for url in (input_url, output_url):
        if url:
            storage.check_reachable(url)
    output = Dataset(output_url)
    stage.check_ready()
    shards = stage.input_shards(input_url)
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise StageError(f"{stage.name}: input shard names are not unique: {sorted(names)}")
    fingerprint = stage_fingerprint(stage, input_url, output_url, shards)

    with Lease(output_url):
        if _claim_output(stage, output_url, fingerprint, rebuild):
            log.info("%s: %s is already complete, nothing to do", stage.name, output_url)
            return output.manifest()
        stats = _committed(output, shards)
        pending = _largest_first([s for s in shards if s.name not in stats])
        if stats and step == "all" and only_shards is None:
            log.info("%s: resuming, %d of %d shards already committed", stage.name, len(stats), len(shards))
        if only_shards is not None:
            unknown = sorted(set(only_shards) - set(names))
            if unknown:
                raise StageError(f"{stage.name}: no input shards named {unknown}")
            pending = [s for s in pending if s.name in set(only_shards)]
        if step == "manifest":
            if pending:
                raise StageError(
                    f"{stage.name}: {len(pending)} shards are not committed yet, e.g. "
                    f"{', '.join(s.name for s in pending[:5])}; run them first"
                )
        work_url = storage.join(output_url, WORK_DIR)
        plan_metrics: dict[str, float] = {}

        with engine.running(stage) as run:
            if isinstance(stage, DatasetStage):
                plan_metrics = _plan(
                    stage,
                    shards,
                    work_url,
                    engine,
                    run,
                    fingerprint,
                    may_plan=only_shards is None and step != "manifest",
                )
                if step == "plan":
                    return None
            elif step == "plan":
                raise StageError(f"{stage.name}: a per-batch stage has no plan step")
            progress = _Progress(stage.name, shards, stats, progress_every_s)
            tasks = [(shard, output_url, work_url) for shard in pending]
            try:
                for index, commit in run.imap(_shard_task, tasks):
                    stats[pending[index].name] = commit
                    progress.shard_done(pending[index], commit)
            except TaskFailed as failed:
                shard = pending[failed.index]
                if isinstance(failed.error, StageError):
                    raise failed.error from None
                raise StageError(
                    f"{stage.name}: shard {shard.name} ({shard.url}) failed: "
                    f"{type(failed.error).__name__}: {failed.error}"
                ) from failed.error
        if only_shards is not None:
            log.info(
                "%s: committed shards %s; the manifest is written by a run over all shards", stage.name, only_shards
            )
            return None

        manifest = _manifest(stage, input_url, output_url, shards, stats, engine, plan_metrics, fingerprint, started)
        _finish(stage, output_url, manifest)
    return _done(stage, manifest)


def _largest_first(shards: list[InputShard]) -> list[InputShard]:
    """The shards in the order workers take them: the largest first, so that the run does
    not end on one worker finishing a large shard while the others wait."""
    return sorted(shards, key=lambda shard: shard.size_bytes, reverse=True)


def _claim_output(stage: Stage, output_url: str, fingerprint: dict[str, Any], rebuild: bool) -> bool:
    """Under the output's lease: refuse (or, rebuilding, clear) an output made by another
    run, record this run's fingerprint, and tell whether the output is complete already."""
    found = _stored_fingerprint(output_url)
    if found is None and _has_any_output(output_url):
        # The mapped tasks of one stage share its lease: a sibling may have written the
        # fingerprint between the two reads, and then the output is its, not a stranger's.
        found = _stored_fingerprint(output_url)
        if found is None and not rebuild:
            raise StaleOutput(
                f"{stage.name}: {output_url} holds output without a fingerprint; use --rebuild to replace it"
            )
    if rebuild and found != fingerprint and _has_any_output(output_url):
        log.info("%s: %s was made by a different run; rebuilding it", stage.name, output_url)
        _clear_output(output_url)
        found = None
    if found is not None and found != fingerprint:
        raise StaleOutput(
            f"{stage.name}: {output_url} was made by a different run ({describe_difference(found, fingerprint)}); "
            "use a new --run-id or --output, or --rebuild to replace it"
        )
    if found is None:
        storage.write_json_atomic(storage.join(output_url, FINGERPRINT), fingerprint, output_url)
    return Dataset(output_url).is_complete()


def _finish(stage: Stage, output_url: str, manifest: dict[str, Any]) -> None:
    storage.write_json_atomic(Dataset(output_url).manifest_url, manifest, output_url)
    storage.remove_tree(storage.join(output_url, "_tmp"))
    storage.remove_tree(storage.join(output_url, WORK_DIR))


def _done(stage: Stage, manifest: dict[str, Any]) -> dict[str, Any]:
    emit_stage_metrics(manifest, stage.context.get("pipeline", ""))
    c = manifest["counts"]
    log.info(
        "%s: done in %.1fs: in=%d kept=%d dropped=%d quarantined=%d",
        stage.name,
        manifest["elapsed_s"],
        c["in"],
        c["kept"],
        c["dropped"],
        c["quarantined"],
    )
    return manifest


# --------------------------------------------------------------------------- fused stages


class FusedStages(Stage):
    """Consecutive per-batch stages run in one pass over each shard: the first reads the
    shard, each batch it keeps goes through the next stage's ``process_batch``, and so on.
    Every stage still writes its own dataset (parts, side tables, commits, manifest, so its
    gate and its report row are whole); what is saved is reading, decoding and scheduling
    each shard once per stage."""

    def __init__(self, stages: list[Stage]):
        super().__init__({}, stages[0].context, name="+".join(s.name for s in stages))
        self.stages = stages

    def setup(self) -> None:
        for stage in self.stages:
            stage.setup()


def run_fused(
    stages: list[Stage],
    input_url: str | None,
    output_urls: list[str],
    engine: Engine | None = None,
    workers: int = 1,
    rebuild: bool = False,
    progress_every_s: float = 10.0,
) -> list[dict[str, Any]]:
    """Run per-batch ``stages`` (each reading the one before) fused: see :class:`FusedStages`.
    Returns their manifests, which are the ones separate runs would write."""
    if any(isinstance(stage, DatasetStage) for stage in stages):
        raise StageError("only per-batch stages can run fused")
    started = time.time()
    engine = engine or LocalEngine(workers)
    for url in [input_url, *output_urls]:
        if url:
            storage.check_reachable(url)
    for stage in stages:
        stage.check_ready()
    shards = stages[0].input_shards(input_url)
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise StageError(f"{stages[0].name}: input shard names are not unique: {sorted(names)}")
    # A later stage's input does not exist yet: its fingerprint names the fingerprint of the
    # stage before it, and takes the input manifest's hash once the group is done.
    fingerprints = [stage_fingerprint(stages[0], input_url, output_urls[0], shards)]
    for stage, output_url in zip(stages[1:], output_urls[1:]):
        after = hashlib.sha256(json.dumps(fingerprints[-1], sort_keys=True).encode()).hexdigest()
        fingerprints.append({**stage_fingerprint(stage, None, output_url, []), "input": {"after_fingerprint": after}})
    with contextlib.ExitStack() as held:
        for url in output_urls:
            held.enter_context(Lease(url))
        complete = [_claim_output(stage, url, fp, rebuild) for stage, url, fp in zip(stages, output_urls, fingerprints)]
        if all(complete):
            return [Dataset(url).manifest() for url in output_urls]
        committed = [_committed(Dataset(url), shards) for url in output_urls]
        pending = _largest_first([s for s in shards if not all(s.name in c for c in committed)])
        redo = {s.name for s in pending}  # a shard not committed by every stage is redone by all
        stats = [{k: v for k, v in c.items() if k not in redo} for c in committed]
        fused = FusedStages(stages)
        progress = _Progress(fused.name, shards, stats[0], progress_every_s)
        with engine.running(fused) as run:
            try:
                for index, commits in run.imap(_fused_task, [(shard, output_urls) for shard in pending]):
                    for k, commit in enumerate(commits):
                        stats[k][pending[index].name] = commit
                    progress.shard_done(pending[index], commits[0])
            except TaskFailed as failed:
                shard = pending[failed.index]
                raise StageError(
                    f"{fused.name}: shard {shard.name} ({shard.url}) failed: "
                    f"{type(failed.error).__name__}: {failed.error}"
                ) from failed.error
        manifests = []
        stage_input, stage_shards = input_url, shards
        for k, (stage, output_url) in enumerate(zip(stages, output_urls)):
            fingerprint = fingerprints[k]
            if k:
                previous = Dataset(output_urls[k - 1])  # this stage's input
                manifest_sha = hashlib.sha256(storage.read_bytes(previous.manifest_url)).hexdigest()
                fingerprint = {**fingerprint, "input": {"manifest_sha256": manifest_sha}}
                storage.write_json_atomic(storage.join(output_url, FINGERPRINT), fingerprint, output_url)
            manifest = _manifest(
                stage, stage_input, output_url, stage_shards, stats[k], engine, {}, fingerprint, started
            )
            manifest["fused_with"] = [s.name for s in stages]
            _finish(stage, output_url, manifest)
            manifests.append(manifest)
            stage_input = output_url
            stage_shards = [
                InputShard(
                    name=s.name, url=Dataset(output_url).part_url(s.name), size_bytes=stats[k][s.name]["part"]["bytes"]
                )
                for s in shards
            ]
    return [_done(stage, manifest) for stage, manifest in zip(stages, manifests)]


def _fused_task(fused: FusedStages, task: tuple[InputShard, list[str]]) -> list[dict[str, Any]]:
    shard, output_urls = task
    chain = [(stage, Dataset(url)) for stage, url in zip(fused.stages, output_urls)]
    writers = [_ShardWriters(dataset, shard.name) for _, dataset in chain]
    started = time.time()
    try:
        for result in fused.stages[0].run_shard(shard):
            writers[0].add(fused.stages[0], shard, result)
            table = result.kept
            for (stage, _), writer in zip(chain[1:], writers[1:]):
                result = stage.process_batch(table)
                writer.add(stage, shard, result)
                table = result.kept
        parts = [w.publish() for w in writers]
    finally:
        for writer in writers:
            writer.discard()
    commits: list[dict[str, Any]] = []
    inputs = [shard.url] + [dataset.part_url(shard.name) for _, dataset in chain[:-1]]
    for writer, part, source in zip(writers, parts, inputs):
        size = shard.size_bytes if source == shard.url else commits[-1]["part"]["bytes"]
        commits.append(writer.commit(shard, source, size, part, time.time() - started))
    return commits


# --------------------------------------------------------------------------- fingerprints


def stage_fingerprint(stage: Stage, input_url: str | None, output_url: str, shards: list[InputShard]) -> dict[str, Any]:
    """What made an output: the stage's type and code, its parameters, what else it depends
    on, and its input (the input manifest's hash, or the raw files' names and sizes)."""
    cls = type(stage)
    source = inspect.getsourcefile(cls)
    code = hashlib.sha256(open(source, "rb").read()).hexdigest() if source else None
    input_key: dict[str, Any]
    if input_url is not None and Dataset(input_url).is_complete():
        input_key = {"manifest_sha256": hashlib.sha256(storage.read_bytes(Dataset(input_url).manifest_url)).hexdigest()}
    else:
        listing = json.dumps([[s.name, s.url, s.size_bytes] for s in shards]).encode()
        input_key = {"files_sha256": hashlib.sha256(listing).hexdigest(), "files": len(shards)}
    return {
        "type": f"{cls.__module__}:{cls.__qualname__}",
        "tamis_version": __version__,
        "code_sha256": code,
        "params": stage.params.model_dump(mode="json"),
        "dependencies": dict(sorted(stage.dependencies(output_url).items())),
        "input": input_key,
    }


def describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    changes.append(f"{key}.{sub}: {_short(a.get(sub))} -> {_short(b.get(sub))}")
        else:
            changes.append(f"{key}: {_short(a)} -> {_short(b)}")
    return "; ".join(changes[:5]) + ("; ..." if len(changes) > 5 else "")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _stored_fingerprint(output_url: str) -> dict[str, Any] | None:
    url = storage.join(output_url, FINGERPRINT)
    fs, path = storage.filesystem(url)
    fs.invalidate_cache(path.rsplit("/", 1)[0])  # other processes write here: never trust a cached listing
    return storage.read_json(url) if fs.exists(path) else None


def _has_any_output(output_url: str) -> bool:
    fs, path = storage.filesystem(output_url)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return False
    return any(not p.rstrip("/").endswith(("_lease.json", "/_tmp")) for p in fs.ls(path, detail=False))


def _clear_output(output_url: str) -> None:
    fs, path = storage.filesystem(output_url)
    for entry in fs.ls(path, detail=False):
        if not entry.rstrip("/").endswith("_lease.json"):
            fs.rm(entry, recursive=True)


# --------------------------------------------------------------------------- plan and shards


def _plan(stage: DatasetStage, shards, work_url, engine, run, fingerprint, may_plan: bool) -> dict[str, float]:
    """The whole-dataset plan: reused when an earlier step of this run wrote it, else made."""
    marker = storage.join(work_url, PLAN_DONE)
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
    if storage.exists(marker):
        done = storage.read_json(marker)
        if done.get("fingerprint") == key:
            return done.get("metrics", {})
    if not may_plan:
        raise StageError(
            f"{stage.name}: a whole-dataset stage needs its plan before it runs shard by shard; "
            "run it with --plan-only first"
        )
    started = time.time()
    planner = getattr(stage, "plan_spark", None) if engine.name == "spark" else None
    try:
        metrics = (planner or stage.plan)(shards, work_url, run)
    except TaskFailed as failed:  # a map step of the plan: the stage's own error says what is wrong
        raise failed.error from None
    metrics = dict(sorted((metrics or {}).items()))
    storage.write_json_atomic(
        marker, {"fingerprint": key, "metrics": metrics, "elapsed_s": round(time.time() - started, 3)}, work_url
    )
    log.info("%s: planned in %.1fs", stage.name, time.time() - started)
    return metrics


def _committed(output: Dataset, shards: list[InputShard]) -> dict[str, dict[str, Any]]:
    stats = {}
    for shard in shards:
        done = output.committed(shard.name)
        if done is not None:
            stats[shard.name] = done
    return stats


def _shard_task(stage: Stage, task: tuple[InputShard, str, str]) -> dict[str, Any]:
    shard, output_url, work_url = task
    return run_shard(stage, shard, output_url, work_url)


def run_shard(stage: Stage, shard: InputShard, output_url: str, work_url: str | None = None) -> dict[str, Any]:
    """Process one shard and commit it. Runs on a worker of the engine."""
    started = time.time()
    writers = _ShardWriters(Dataset(output_url), shard.name)
    if isinstance(stage, DatasetStage):
        results = stage.apply(shard, work_url or storage.join(output_url, WORK_DIR))
    else:
        results = stage.run_shard(shard)
    try:
        for result in results:
            writers.add(stage, shard, result)
        part = writers.publish()
    finally:
        writers.discard()
    return writers.commit(shard, shard.url, shard.size_bytes, part, time.time() - started)


class _ShardWriters:
    """One shard's output in one dataset: the kept part, the side tables and the counters;
    a commit file makes it visible."""

    def __init__(self, dataset: Dataset, name: str):
        self.dataset = dataset
        self.kept = _PartWriter(dataset, dataset.part_url(name))
        self.dropped = _PartWriter(dataset, dataset.dropped_url(name), DROPPED_SCHEMA)
        self.quarantined = _PartWriter(dataset, dataset.quarantine_url(name), QUARANTINE_SCHEMA)
        self.counts: Counter = Counter()
        self.drop_reasons: Counter = Counter()
        self.quarantine_reasons: Counter = Counter()
        self.metrics: Counter = Counter()

    def add(self, stage: Stage, shard: InputShard, result: BatchResult) -> None:
        n_in = result.counted_in
        n_out = result.kept.num_rows + result.dropped.num_rows + result.quarantined.num_rows
        if n_in != n_out:
            raise CountsDoNotReconcile(
                f"{stage.name}: shard {shard.name}: in={n_in} but kept+dropped+quarantined={n_out}"
            )
        self.counts["in"] += n_in
        self.counts["kept"] += result.kept.num_rows
        self.counts["dropped"] += result.dropped.num_rows
        self.counts["quarantined"] += result.quarantined.num_rows
        self.drop_reasons.update(_value_counts(result.dropped, "reason"))
        self.quarantine_reasons.update(_value_counts(result.quarantined, "reason"))
        self.metrics.update(result.metrics)
        self.kept.write(result.kept)
        self.dropped.write(result.dropped)
        self.quarantined.write(result.quarantined)

    def publish(self) -> dict[str, Any] | None:
        part = self.kept.publish(always=True)
        self.dropped.publish()
        self.quarantined.publish()
        return part

    def discard(self) -> None:
        for writer in (self.kept, self.dropped, self.quarantined):
            writer.discard()

    def commit(
        self, shard: InputShard, source_url: str, input_bytes: int, part: dict[str, Any] | None, elapsed_s: float
    ) -> dict[str, Any]:
        commit = {
            "name": shard.name,
            "input": source_url,
            "counts": {k: self.counts[k] for k in ("in", "kept", "dropped", "quarantined")},
            "drop_reasons": dict(sorted(self.drop_reasons.items())),
            "quarantine_reasons": dict(sorted(self.quarantine_reasons.items())),
            "metrics": dict(sorted(self.metrics.items())),
            "input_bytes": input_bytes,
            "part": part,
            "started_at": round(time.time() - elapsed_s, 3),
            "elapsed_s": round(elapsed_s, 3),
        }
        storage.write_json_atomic(self.dataset.commit_url(shard.name), commit, self.dataset.url)
        return commit


class _PartWriter:
    """Writes a Parquet file aside under ``_tmp/`` and publishes it in one move."""

    def __init__(self, dataset: Dataset, final_url: str, schema: pa.Schema | None = None):
        self.dataset = dataset
        self.final_url = final_url
        self.schema = schema
        self.rows = 0
        self._tmp: str | None = None
        self._file: storage.HashingWriter | None = None
        self._writer: pq.ParquetWriter | None = None
        self._last_empty: pa.Table | None = None

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            self._last_empty = table
            return
        writer = self._writer
        if writer is None:
            writer = self._open(table.schema)
        elif table.schema != writer.schema:
            table = table.cast(writer.schema)
        writer.write_table(table)
        self.rows += table.num_rows

    def _open(self, schema: pa.Schema) -> pq.ParquetWriter:
        self._tmp = storage.tmp_url(self.dataset.url, self.final_url.rsplit("/", 1)[-1])
        fs, path = storage.filesystem(self._tmp)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self._file = storage.HashingWriter(fs.open(path, "wb"))
        self._writer = pq.ParquetWriter(self._file, schema, **PARQUET_OPTIONS)
        return self._writer

    def publish(self, always: bool = False) -> dict[str, Any] | None:
        writer = self._writer
        if writer is None:
            if not always:
                return None
            schema = self.schema or (self._last_empty.schema if self._last_empty is not None else pa.schema([]))
            writer = self._open(schema)
        assert self._file is not None and self._tmp is not None, "_open opens the file that its writer writes"
        writer.close()
        self._file.close()
        storage.publish(self._tmp, self.final_url)
        self._tmp = None
        self._writer = None
        return {"rows": self.rows, "bytes": self._file.size, "sha256": self._file.digest.hexdigest()}

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


# --------------------------------------------------------------------------- manifest


def _manifest(
    stage, input_url, output_url, shards, stats, engine, plan_metrics, fingerprint, started
) -> dict[str, Any]:
    totals: Counter = Counter()
    drop_reasons: Counter = Counter()
    quarantine_reasons: Counter = Counter()
    metrics: Counter = Counter(plan_metrics)
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
    # From the first shard's start: shards committed by earlier tasks of the run (mapped pods
    # before a manifest step, a resumed run) count in the stage's time.
    elapsed = time.time() - min([started, *(stats[s.name].get("started_at", started) for s in shards)])
    return {
        "stage": stage.name,
        "pipeline": stage.context.get("pipeline"),
        "type": fingerprint["type"],
        "declares": declarations(stage),
        "engine": engine.name,
        "tamis_version": __version__,
        "input": input_url,
        "input_manifest_sha256": fingerprint["input"].get("manifest_sha256"),
        "output": output_url,
        "params": stage.params.model_dump(mode="json"),
        "fingerprint_sha256": hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest(),
        "counts": counts,
        "drop_reasons": dict(sorted(drop_reasons.items())),
        "quarantine_reasons": dict(sorted(quarantine_reasons.items())),
        "metrics": dict(sorted(metrics.items())),
        "input_bytes": sum(s.size_bytes for s in shards),
        "parts": parts,
        "workers": engine.workers,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 3),
        "docs_per_s": round(counts["in"] / elapsed, 1) if elapsed > 0 else None,
    }


def declarations(stage: Stage) -> dict[str, Any]:
    """What a stage declares about itself, recorded in its manifest for readers (metrics, report)."""
    return {
        "kind": stage.kind,
        "reads_sources": stage.reads_sources,
        "joins_corpus": stage.joins_corpus,
        "duplicate_reasons": list(stage.duplicate_reasons),
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
            self.stage_name,
            self.done_shards,
            self.total_shards,
            self.docs,
            self.docs / elapsed,
            rate_bytes / 1e6,
            eta,
        )
