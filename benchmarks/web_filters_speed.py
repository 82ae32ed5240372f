"""Speed of the web filters, each against the quality and normalize stages in the same run.

    .venv/bin/python benchmarks/web_filters_speed.py [--data ../shared/data] [--eval-sets DIR] [--copies 2]

Documents: every text of ``<data>/web_en`` (news, Wikipedia, speeches, reviews, Common
Crawl samples), ``--copies`` times, each given a URL (the real page and adult URLs of
``tests/data/urls`` in turn). Per-batch stages run in this process on one core, batch by
batch as the runner feeds them; the whole-dataset stages (``domain_cap``,
``repeated_lines``) run through the runner with one worker, plan included. Evaluation
sets for ``decontaminate``: ``--eval-sets`` (default: the sample's GSM8K excerpt; give the
whole GSM8K test set, or more, to see the index size not matter).
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tamis.runner import run_stage
from tamis.stages.decontaminate import Decontaminate
from tamis.stages.domain_cap import DomainCap
from tamis.stages.normalize import Normalize
from tamis.stages.quality import QualityFilter
from tamis.stages.repeated_lines import RepeatedLines
from tamis.stages.safety import ContentSafety
from tamis.stages.url_filter import UrlFilter

REPO = Path(__file__).resolve().parents[1]
BATCH = 2048


def documents(data: Path, copies: int) -> pa.Table:
    texts = []
    for path in sorted((data / "web_en").iterdir()):
        if path.name.startswith("abc_news"):  # research-only corpus: not used here
            continue
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8") as f:
                texts += [json.loads(line)["text"] for line in f if line.strip()]
    urls = []
    for name in ("page_urls", "ut1_adult_urls"):
        urls += [
            u if "://" in u else "http://" + u
            for u in gzip.decompress((REPO / "tests/data/urls" / f"{name}.txt.gz").read_bytes()).decode().split()
        ]
    texts = texts * copies
    return pa.table(
        {
            "id": [f"d{i}" for i in range(len(texts))],
            "source": ["web"] * len(texts),
            "url": [urls[i % len(urls)] for i in range(len(texts))],
            "text": texts,
        }
    )


def per_batch(stage, table: pa.Table) -> float:
    stage.setup()
    stage.process_batch(table.slice(0, 16))
    started = time.perf_counter()
    for start in range(0, table.num_rows, BATCH):
        stage.process_batch(table.slice(start, BATCH))
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--eval-sets", default=str(REPO / "include/sample/eval"))
    parser.add_argument("--copies", type=int, default=2)
    args = parser.parse_args()
    table = documents(args.data, args.copies)
    n, mb = table.num_rows, sum(len(t.encode()) for t in table.column("text").to_pylist()) / 1e6
    print(f"{n} documents, {mb:.1f} MB; one core; same run")
    results = {}
    for name, stage in (
        ("normalize", Normalize()),
        ("quality (rules)", QualityFilter()),
        ("url_filter", UrlFilter()),
        ("safety (lists)", ContentSafety()),
        ("decontaminate", Decontaminate({"eval_sets": args.eval_sets})),
    ):
        results[name] = per_batch(stage, table)
    with tempfile.TemporaryDirectory() as tmp:
        parts = Path(tmp) / "in"
        parts.mkdir()
        entries = []
        for k, start in enumerate(range(0, n, 20_000)):
            pq.write_table(table.slice(start, 20_000), parts / f"p{k}.parquet")
            entries.append({"name": f"p{k}", "bytes": (parts / f"p{k}.parquet").stat().st_size})
        (parts / "_manifest.json").write_text(json.dumps({"parts": entries}))
        for name, stage in (
            ("domain_cap (plan + apply)", DomainCap({"max_per_domain": 100})),
            ("repeated_lines (plan + apply)", RepeatedLines({"max_repeats": 10})),
        ):
            started = time.perf_counter()
            run_stage(stage, str(parts), str(Path(tmp) / name.split()[0]), workers=1)
            results[name] = time.perf_counter() - started
    print(f"{'stage':<32}{'docs/s/core':>12}{'MB/s':>8}{'vs quality':>12}")
    for name, seconds in results.items():
        print(f"{name:<32}{n / seconds:>12,.0f}{mb / seconds:>8.1f}{results['quality (rules)'] / seconds:>11.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
