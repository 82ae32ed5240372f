"""Per-domain caps: at most ``max_per_domain`` documents from one domain in the corpus.

A few sites (forums, shops, content farms) can fill a crawl with near-identical pages; a
cap keeps the corpus's domain mix broad. Counting needs the whole corpus, so this is a
whole-dataset stage. Plan: each shard's documents are counted by domain (a map step on
the engine's workers; a shard returns its distinct domains with counts, never its rows);
walking the shards in corpus order, each domain's quota is spent, and every shard where a
domain runs over gets a plan entry ``{domain: documents it may keep}``. Apply: a shard
keeps, per capped domain, its first documents up to that number, in row order, and drops
the rest (``domain_cap.over_cap``, the domain and its cap in the detail). So the survivors
are a domain's first documents in corpus order, whatever the engine.

The domain is the registered domain (``example.co.uk`` for ``a.b.example.co.uk``, from the
public-suffix list bundled with tldextract, read offline) or the host without ``www.``
(``key: host``). Documents without a URL are never capped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from functools import lru_cache
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from tamis import storage
from tamis.stage import (
    BatchResult,
    DatasetStage,
    InputShard,
    StageParams,
    iter_shard_batches,
    split_by_reason,
)

REASON = "domain_cap.over_cap"
_HOST = r"^(?:[a-z][a-z0-9+.-]*:)?//(?:[^@/?#]*@)?(?:www\.)?(?P<host>[^/:?#]+?)\.?(?::\d+)?(?:[/?#]|$)"


class DomainCapParams(StageParams):
    max_per_domain: int = Field(default=100_000, ge=1)
    key: Literal["registered_domain", "host"] = "registered_domain"


@lru_cache(maxsize=1)
def _extractor():
    import tldextract

    # The public-suffix list shipped inside the package: nothing is fetched.
    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)


def domains(urls: pa.Array, key: str) -> pa.Array:
    """The domain of each URL (null without one); hosts are resolved once per distinct host."""
    host = pc.extract_regex(pc.utf8_lower(pc.fill_null(urls, "")), _HOST).field("host")
    if key == "host" or len(host) == 0:
        return host
    encoded = pc.dictionary_encode(host)
    extract = _extractor()
    names = [(extract(h).top_domain_under_public_suffix or h) if h else None for h in encoded.dictionary.to_pylist()]
    return pa.array(names, pa.string()).take(encoded.indices)


class DomainCap(DatasetStage):
    type_name = "domain_cap"
    Params = DomainCapParams
    params: DomainCapParams
    default_gate = {"required_columns": ["id", "source", "text", "url"], "max_drop_rate": 0.9}

    def plan(self, shards: list[InputShard], work_url: str, run) -> dict[str, int]:
        counted = run.map(_count_shard, [s.url for s in shards])
        quota: Counter = Counter()
        capped_domains: set[str] = set()
        for shard, counts in zip(shards, counted):
            allowed = {}
            for domain, count in counts.items():
                left = max(self.params.max_per_domain - quota[domain], 0)
                quota[domain] += count
                if count > left:
                    allowed[domain] = left
                    capped_domains.add(domain)
            storage.write_bytes_atomic(
                _plan_url(work_url, shard.name), json.dumps(allowed, sort_keys=True).encode(), work_url
            )
        return {"domain_cap.domains": len(quota), "domain_cap.domains_capped": len(capped_domains)}

    def apply(self, shard: InputShard, work_url: str) -> Iterator[BatchResult]:
        allowed = json.loads(storage.read_bytes(_plan_url(work_url, shard.name)))
        names = sorted(allowed)
        seen = np.zeros(len(names), np.int64)
        limits = np.array([allowed[d] for d in names], np.int64)
        for _, table in iter_shard_batches(shard):
            n = table.num_rows
            if not names or n == 0:
                yield BatchResult(kept=table)
                continue
            keys = domains(_urls(table), self.params.key)
            index = pc.index_in(keys, value_set=pa.array(names, pa.string())).to_numpy(zero_copy_only=False)
            index = np.where(np.isnan(index.astype(float)), -1, index).astype(np.int64)
            over = np.zeros(n, bool)
            rows = np.flatnonzero(index >= 0)
            if len(rows):
                d = index[rows]
                # Rank of each row among its domain's rows so far (this batch after the earlier ones).
                order = np.argsort(d, kind="stable")
                sorted_d = d[order]
                starts = np.searchsorted(sorted_d, sorted_d, side="left")
                rank = np.empty(len(rows), np.int64)
                rank[order] = np.arange(len(rows)) - starts + seen[sorted_d]
                over[rows] = rank >= limits[d]
                np.add.at(seen, d, 1)
            reasons = np.full(n, None, dtype=object)
            reasons[over] = REASON
            details = np.full(n, None, dtype=object)
            for i in np.flatnonzero(over):
                details[i] = f"{names[index[i]]}: cap {self.params.max_per_domain} reached"
            kept, dropped = split_by_reason(table, reasons.tolist(), details.tolist())
            yield BatchResult(kept=kept, dropped=dropped)


def _urls(table: pa.Table) -> pa.Array:
    if "url" not in table.column_names:
        return pa.nulls(table.num_rows, pa.string())
    return table.column("url").combine_chunks()


def _count_shard(stage: DomainCap, url: str) -> dict[str, int]:
    counts: Counter = Counter()
    for _, table in iter_shard_batches(InputShard(name="", url=url, size_bytes=0), columns=None):
        keys = domains(_urls(table), stage.params.key)
        for item in pc.value_counts(keys.drop_null()).to_pylist():
            counts[item["values"]] += item["counts"]
    return dict(counts)


def _plan_url(work_url: str, shard_name: str) -> str:
    return storage.join(work_url, "allowed", f"{shard_name}.json")
