"""Mix: weighted sampling of tokenized documents by source, to a token budget.

The plan is made once over the whole dataset from three light columns
(``source``, ``token_count``, row position): each source gets ``weight * budget``
tokens. A source that has fewer tokens than its share is repeated, whole epochs
first, up to its epoch cap; the fractional rest of an epoch is a seeded random subset
of its documents, taken in a seeded order until the token target is met. A source
that cannot reach its share within the cap gives everything the cap allows, and the
realized shares are reported as they are (never renormalised silently).

Output rows: every selected document once with ``epoch`` 0, then its repeats with
``epoch`` 1, 2, ... and ids ``<id>#1``, ``<id>#2``... Unselected documents are
dropped with reason ``mix_not_sampled`` (or ``mix_source_unweighted``). Repeats are
new rows, so a repeat batch counts its rows as both in and kept; ``mix.input_docs``
and ``mix.repeat_rows`` in the manifest metrics tell the two apart
(``in = mix.input_docs + mix.repeat_rows``).
"""

from __future__ import annotations

import io
import json
import logging
import math
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, field_validator, model_validator

from tamis import storage
from tamis.stage import BatchResult, DatasetStage, InputShard, StageParams, iter_shard_batches, split_by_reason

log = logging.getLogger("tamis.stages.mix")

WEIGHT_TOLERANCE = 1e-6


class MixError(ValueError):
    pass


class MixParams(StageParams):
    # Share of the output tokens per source; must sum to 1. Sources absent here are dropped.
    weights: dict[str, float] = Field(default_factory=lambda: {"web": 0.7, "code": 0.2, "udhr": 0.1})
    # Output size in tokens; null = the tokens available in the weighted sources.
    token_budget: int | None = Field(default=None, gt=0)
    seed: int = 0
    # Most times a document may appear (1 = no upsampling); per-source overrides below.
    max_epochs: float = Field(default=4.0, ge=1.0)
    max_epochs_by_source: dict[str, float] = Field(default_factory=dict)

    @field_validator("weights")
    @classmethod
    def _weights_are_a_distribution(cls, weights: dict[str, float]) -> dict[str, float]:
        if not weights:
            raise ValueError("mix weights are empty: give at least one source a weight")
        negative = {s: w for s, w in weights.items() if not (w >= 0 and math.isfinite(w))}
        if negative:
            raise ValueError(f"mix weights must be finite and >= 0; got {negative}")
        total = sum(weights.values())
        if abs(total - 1.0) > WEIGHT_TOLERANCE:
            raise ValueError(
                f"mix weights must sum to 1 (tolerance {WEIGHT_TOLERANCE}); they sum to {total!r}: {weights}"
            )
        return weights

    @field_validator("max_epochs_by_source")
    @classmethod
    def _caps_allow_one_epoch(cls, caps: dict[str, float]) -> dict[str, float]:
        low = {s: c for s, c in caps.items() if not c >= 1.0}
        if low:
            raise ValueError(f"max_epochs_by_source must be >= 1 for every source; got {low}")
        return caps

    @model_validator(mode="after")
    def _caps_name_weighted_sources(self) -> MixParams:
        stray = sorted(set(self.max_epochs_by_source) - set(self.weights))
        if stray:
            raise ValueError(f"max_epochs_by_source names sources without a mix weight: {stray}")
        return self

    def cap(self, source: str) -> float:
        return self.max_epochs_by_source.get(source, self.max_epochs)


class Mix(DatasetStage):
    type_name = "mix"
    Params = MixParams
    params: MixParams
    joins_corpus = False
    default_gate = {"required_columns": ["id", "source", "input_ids", "token_count"], "max_drop_rate": 0.9}

    def check_ready(self) -> None:
        sources = self.context.get("sources")
        if sources is None:
            return
        unknown = sorted(set(self.params.weights) - set(sources))
        if unknown:
            raise MixError(
                f"mix weights name sources the pipeline does not define: {unknown}; defined sources: {sorted(sources)}"
            )

    # -- reduce: the global plan -------------------------------------------------------

    def plan(self, shards: list[InputShard], work_url: str, run) -> dict[str, int]:
        columns = run.map(_plan_columns, [s.url for s in shards])
        codes, present, tokens, offsets = _encode(columns)
        by_code_tokens = np.bincount(codes, weights=tokens, minlength=len(present)).astype(np.int64)
        by_code_docs = np.bincount(codes, minlength=len(present))
        available = {s: int(by_code_tokens[i]) for i, s in enumerate(present)}
        docs = {s: int(by_code_docs[i]) for i, s in enumerate(present)}
        budget, targets = self._targets(available, docs)
        copies = np.zeros(codes.size, dtype=np.int32)
        realized = {}
        for source, target in targets.items():
            rows = np.flatnonzero(codes == present.index(source)) if source in present else np.zeros(0, np.int64)
            realized[source] = _select(copies, rows, tokens[rows], target, _source_rng(self.params.seed, source))
        for shard, start, stop in zip(shards, offsets[:-1], offsets[1:]):
            _write_copies(work_url, shard.name, copies[start:stop])
        return self._finish_plan(work_url, budget, available, realized)

    def plan_spark(self, shards: list[InputShard], work_url: str, run) -> dict[str, int]:
        """The same plan on Spark: token totals per source by an aggregation, each source's
        seeded selection in one group (its rows in dataset order), each shard's copy counts
        written by a task."""
        from pyspark.sql import functions as F

        rows = run.frame(_plan_rows, [(i, s.url) for i, s in enumerate(shards)], _PLAN_ROWS).cache()
        totals = rows.groupBy("source").agg(F.sum("tokens").alias("tokens"), F.count("*").alias("docs")).toArrow()
        available = dict(zip(totals.column("source").to_pylist(), totals.column("tokens").to_pylist()))
        docs = dict(zip(totals.column("source").to_pylist(), totals.column("docs").to_pylist()))
        budget, targets = self._targets({s: int(t) for s, t in available.items()}, {s: int(d) for s, d in docs.items()})
        seed = self.params.seed
        chosen = (
            rows.groupBy("source")
            .applyInArrow(
                lambda table: _select_group(table, targets, seed), "shard int, row long, tokens long, copies int"
            )
            .cache()
        )
        realized_rows = (
            chosen.join(rows.select("shard", "row", "source"), ["shard", "row"])
            .groupBy("source")
            .agg(F.sum(F.col("tokens") * F.col("copies")).alias("tokens"))
            .toArrow()
        )
        realized = {
            s: int(t)
            for s, t in zip(realized_rows.column("source").to_pylist(), realized_rows.column("tokens").to_pylist())
            if s in targets
        }
        names = [s.name for s in shards]
        chosen.groupBy("shard").applyInArrow(lambda table: _write_group(table, names, work_url), "shard int").collect()
        for shard in shards:  # an empty part has no group: its plan is empty
            if not storage.exists(_copies_url(work_url, shard.name)):
                _write_copies(work_url, shard.name, np.zeros(0, np.int32))
        chosen.unpersist()
        rows.unpersist()
        return self._finish_plan(work_url, budget, {s: int(t) for s, t in available.items()}, realized)

    def _targets(self, available: dict[str, int], docs: dict[str, int]) -> tuple[int, dict[str, float]]:
        """The token budget and each weighted source's token target, within its epoch cap."""
        weights = self.params.weights
        empty = sorted(s for s, w in weights.items() if w > 0 and available.get(s, 0) == 0)
        if empty:
            detail = ", ".join(f"{s} ({docs.get(s, 0)} documents)" for s in empty)
            raise MixError(f"mix: sources with a weight have no tokens in the input: {detail}")
        budget = self.params.token_budget or sum(available[s] for s, w in weights.items() if w > 0)
        return budget, {s: min(w * budget, self.params.cap(s) * available[s]) for s, w in weights.items() if w > 0}

    def _finish_plan(
        self, work_url: str, budget: int, available: dict[str, int], realized: dict[str, int]
    ) -> dict[str, int]:
        weights = self.params.weights
        plan: dict[str, dict[str, Any]] = {}
        for source in sorted(set(available) | set(weights)):
            weight = float(weights.get(source, 0.0))
            requested = weight * budget
            if weight == 0:
                plan[source] = _plan_entry(weight, requested, available.get(source, 0), 0, capped=False)
                continue
            cap = self.params.cap(source)
            capped = requested > cap * available[source] + 0.5
            plan[source] = _plan_entry(weight, requested, available[source], realized.get(source, 0), capped, cap)
            if capped:
                log.warning(
                    "mix: source %r cannot reach its share: %d tokens requested, %d available x %.3g epochs cap;"
                    " it gives %d tokens",
                    source,
                    round(requested),
                    available[source],
                    cap,
                    realized.get(source, 0),
                )
        total = sum(p["tokens"] for p in plan.values()) or 1
        for entry in plan.values():
            entry["realized_share"] = entry["tokens"] / total
        summary = {"budget": budget, "seed": self.params.seed, "sources": plan}
        storage.write_json_atomic(storage.join(work_url, "mix", "plan.json"), summary, work_url)
        log.info("mix: plan %s", json.dumps({s: round(p["realized_share"], 4) for s, p in plan.items()}))
        metrics = {}
        for source, entry in plan.items():
            metrics[f"mix.tokens_requested.{source}"] = round(entry["requested_tokens"])
            metrics[f"mix.capped.{source}"] = int(entry["capped"])
        return metrics

    # -- map: apply the plan to one shard ---------------------------------------------

    def apply(self, shard: InputShard, work_url: str) -> Iterator[BatchResult]:
        url = _copies_url(work_url, shard.name)
        if not storage.exists(url):
            raise MixError(f"mix: no plan for shard {shard.name} under {work_url}; the plan step must run first")
        copies = np.load(io.BytesIO(storage.read_bytes(url)))
        weighted = {s for s, w in self.params.weights.items() if w > 0}
        max_copies = int(copies.max()) if copies.size else 0
        for epoch in range(max(max_copies, 1)):
            start = 0
            for _, batch in iter_shard_batches(shard):
                n = batch.num_rows
                counts = copies[start : start + n]
                start += n
                if epoch == 0:
                    yield self._first_pass(batch, counts, weighted)
                elif n:
                    yield self._repeat_pass(batch, counts, epoch)
            if start != copies.size:
                raise MixError(
                    f"mix: shard {shard.name} has {start} rows but the plan has {copies.size}; the input changed"
                )

    def _first_pass(self, batch: pa.Table, counts: np.ndarray, weighted: set[str]) -> BatchResult:
        source = batch.column("source")
        is_weighted = pc.is_in(source, value_set=pa.array(sorted(weighted), pa.string()))
        reasons = pc.if_else(
            pa.array(counts > 0),
            pa.scalar(None, pa.string()),
            pc.if_else(is_weighted, pa.scalar("mix_not_sampled"), pa.scalar("mix_source_unweighted")),
        )
        kept, dropped = split_by_reason(batch, reasons)
        kept = kept.append_column("epoch", pa.array(np.zeros(kept.num_rows, np.int32)))
        metrics = Counter(_per_source(batch, "mix.tokens_available"))
        metrics.update(_per_source(kept, "mix.tokens"))
        metrics.update(_per_source(kept, "mix.docs", tokens=False))
        metrics["mix.input_docs"] = batch.num_rows
        return BatchResult(kept=kept, dropped=dropped, metrics=metrics)

    def _repeat_pass(self, batch: pa.Table, counts: np.ndarray, epoch: int) -> BatchResult:
        repeats = batch.filter(pa.array(counts > epoch))
        ids = pc.binary_join_element_wise(repeats.column("id"), pa.scalar(str(epoch)), "#")
        repeats = repeats.set_column(repeats.schema.get_field_index("id"), "id", ids)
        repeats = repeats.append_column("epoch", pa.array(np.full(repeats.num_rows, epoch, np.int32)))
        metrics = Counter(_per_source(repeats, "mix.tokens"))
        metrics.update(_per_source(repeats, "mix.docs", tokens=False))
        metrics["mix.repeat_rows"] = repeats.num_rows
        return BatchResult(kept=repeats, metrics=metrics)


def realized_shares(manifest: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Requested vs realized token share per source, from a mix manifest."""
    metrics = manifest["metrics"]
    weights = manifest["params"]["weights"]
    tokens = {k.split(".", 2)[2]: v for k, v in metrics.items() if k.startswith("mix.tokens.")}
    total = sum(tokens.values()) or 1
    sources = sorted(set(tokens) | set(weights))
    return {
        s: {
            "requested": float(weights.get(s, 0.0)),
            "realized": tokens.get(s, 0) / total,
            "tokens": tokens.get(s, 0),
            "capped": bool(metrics.get(f"mix.capped.{s}", 0)),
        }
        for s in sources
    }


def _select(copies: np.ndarray, rows: np.ndarray, tokens: np.ndarray, target: float, rng: np.random.Generator) -> int:
    """Set ``copies[rows]`` so the selected tokens come as close to ``target`` as one
    document allows: whole epochs, then a seeded prefix of a seeded permutation."""
    total = int(tokens.sum())
    full = int(target // total)
    copies[rows] = full
    rest = target - full * total
    order = rng.permutation(rows.size)
    cumulative = np.cumsum(tokens[order])
    # The prefix length whose token sum is nearest the rest of the target.
    k = int(np.searchsorted(cumulative, rest, side="left"))
    if k < cumulative.size:
        below = cumulative[k - 1] if k > 0 else 0
        if abs(rest - below) <= abs(cumulative[k] - rest):
            k -= 1
        k += 1  # prefix length
    chosen = order[: min(k, rows.size)]
    copies[rows[chosen]] += 1
    return full * total + int(tokens[chosen].sum())


def _source_rng(seed: int, source: str) -> np.random.Generator:
    # crc32, not hash(): Python's string hash changes between processes.
    return np.random.default_rng([seed, zlib.crc32(source.encode())])


def _plan_entry(weight, requested, available, realized, capped, cap=None) -> dict[str, Any]:
    return {
        "weight": weight,
        "requested_tokens": float(requested),
        "available_tokens": int(available),
        "tokens": int(realized),
        "epochs": (realized / available) if available else 0.0,
        "epoch_cap": cap,
        "capped": bool(capped),
    }


_PLAN_ROWS = pa.schema([("shard", pa.int32()), ("row", pa.int64()), ("source", pa.string()), ("tokens", pa.int64())])


def _plan_columns(stage: Mix, url: str) -> tuple[pa.Array, np.ndarray]:
    """A shard's source and token count per row: all the plan reads."""
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        names = parquet.schema_arrow.names
        missing = [c for c in ("id", "source") if c not in names]
        if missing or ("token_count" not in names and "input_ids" not in names):
            raise MixError(
                f"mix: {url} lacks {missing or ['token_count']}; mix runs on tokenized documents "
                f"(columns id, source, token_count); it has {names}"
            )
        column = "token_count" if "token_count" in names else "input_ids"
        table = parquet.read(columns=["source", column])
    count = table.column(column)
    if column == "input_ids":
        count = pc.list_value_length(count)
    if count.null_count or table.column("source").null_count:
        raise MixError(f"mix: {url} has null source or token counts")
    return table.column("source").cast(pa.string()).combine_chunks(), count.to_numpy().astype(np.int64)


def _plan_rows(stage: Mix, item: tuple[int, str]) -> Iterator[pa.Table]:
    shard, url = item
    sources, tokens = _plan_columns(stage, url)
    n = len(tokens)
    yield pa.table(
        {
            "shard": pa.array(np.full(n, shard, np.int32)),
            "row": pa.array(np.arange(n, dtype=np.int64)),
            "source": sources,
            "tokens": pa.array(tokens),
        },
        schema=_PLAN_ROWS,
    )


def _encode(columns: list[tuple[pa.Array, np.ndarray]]) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Every row's source as a code into the returned source names, its token count, and
    each shard's first row number (and the total at the end)."""
    offsets = np.concatenate([[0], np.cumsum([len(t) for _, t in columns])]).astype(np.int64)
    if not columns or offsets[-1] == 0:
        return np.zeros(0, np.int32), [], np.zeros(0, np.int64), offsets
    # Encoding the chunked column at once gives one dictionary, so codes agree across shards.
    encoded = pc.dictionary_encode(pa.chunked_array([s for s, _ in columns], pa.string())).combine_chunks()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32)
    return codes, encoded.dictionary.to_pylist(), np.concatenate([t for _, t in columns]), offsets


def _select_group(table: pa.Table, targets: dict[str, float], seed: int) -> pa.Table:
    """One source's rows (Spark group), in dataset order, with their copy counts."""
    table = table.sort_by([("shard", "ascending"), ("row", "ascending")])
    source = table.column("source")[0].as_py()
    tokens = table.column("tokens").to_numpy()
    copies = np.zeros(table.num_rows, dtype=np.int32)
    if source in targets:
        _select(copies, np.arange(table.num_rows), tokens, targets[source], _source_rng(seed, source))
    return pa.table(
        {
            "shard": table.column("shard"),
            "row": table.column("row"),
            "tokens": table.column("tokens"),
            "copies": pa.array(copies),
        }
    )


def _write_group(table: pa.Table, names: list[str], work_url: str) -> pa.Table:
    table = table.sort_by("row")
    shard = int(table.column("shard")[0].as_py())
    _write_copies(work_url, names[shard], table.column("copies").to_numpy().astype(np.int32))
    return pa.table({"shard": pa.array([shard], pa.int32())})


def _copies_url(work_url: str, shard_name: str) -> str:
    return storage.join(work_url, "mix", f"{shard_name}.npy")


def _write_copies(work_url: str, shard_name: str, copies: np.ndarray) -> None:
    storage.write_bytes_atomic(_copies_url(work_url, shard_name), _npy_bytes(copies), work_url)


def _per_source(table: pa.Table, prefix: str, tokens: bool = True) -> dict[str, int]:
    """Token (or row) totals by source, as ``<prefix>.<source>`` counters."""
    if table.num_rows == 0:
        return {}
    if tokens:
        if "token_count" in table.column_names:
            count = table.column("token_count")
        else:
            count = pc.list_value_length(table.column("input_ids"))
        values = pa.table({"source": table.column("source"), "n": pc.cast(count, pa.int64())})
        grouped = values.group_by("source").aggregate([("n", "sum")])
        totals = grouped.column("n_sum")
    else:
        grouped = table.group_by("source").aggregate([([], "count_all")])
        totals = grouped.column("count_all")
    return {f"{prefix}.{s}": int(n) for s, n in zip(grouped.column("source").to_pylist(), totals.to_pylist())}


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()
