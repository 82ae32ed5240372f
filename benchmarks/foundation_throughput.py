"""Throughput of ingest + normalize + exact dedup on 1 and 2 workers, with peak RSS.

Builds a corpus of real documents from ../shared/data (web text, code, multilingual),
repeated with small edits and some exact copies so that dedup has work, then runs the
three stages once per worker count, each in a fresh process; peak RSS is that of the
process and all its workers together.

    .venv/bin/python benchmarks/foundation_throughput.py [--mb 60] [--files 48]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SOURCES = {
    "web": [
        "web_en/wikipedia_en_sample.jsonl",
        "web_en/us_presidential_speeches.jsonl",
        "web_en/movie_reviews_polarity_2000.jsonl.gz",
        "web_en/cc_c4_pile_fixtures_by_source.jsonl",
    ],
    "code": ["code/code_00.jsonl.gz", "code/code_01.jsonl.gz"],
    "multilingual": [
        "multilingual/udhr_unicode_388docs.jsonl.gz",
        "multilingual/trafilatura_eval_pages_non_en.jsonl.gz",
    ],
}


def read_texts(rel: str) -> list[str]:
    path = DATA / rel
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def build_corpus(root: Path, target_mb: int, files: int) -> tuple[int, int]:
    rng = random.Random(0)
    per_source = target_mb * 1_000_000 // len(SOURCES)
    total_bytes = total_docs = 0
    for source, rels in SOURCES.items():
        texts = [t for rel in rels for t in read_texts(rel) if t.strip()]
        rows, size, k = [], 0, 0
        while size < per_source:
            text = texts[k % len(texts)]
            if k >= len(texts) and rng.random() < 0.9:  # later passes: mostly edited copies, some exact ones
                text = f"{text}\n[{k}]"
            rows.append({"id": f"{source}-{k}", "text": text})
            size += len(text.encode())
            k += 1
        per_file = -(-len(rows) // (files // len(SOURCES)))
        for i in range(0, len(rows), per_file):
            out = root / source / "date=2026-11-20" / f"part{i // per_file:03d}.jsonl"
            out.parent.mkdir(parents=True, exist_ok=True)
            data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[i : i + per_file])
            out.write_text(data)
            total_bytes += len(data.encode())
        total_docs += len(rows)
    return total_bytes, total_docs


class TreeRssSampler(threading.Thread):
    """Peak resident memory of this process and all its descendants (the workers fork from
    a server process, so getrusage's children figure would not see them)."""

    def __init__(self, every_s: float = 0.05):
        super().__init__(daemon=True)
        self.every_s, self.peak, self.stop = every_s, 0, threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.every_s)


def run_stages(config: str, workers: int) -> None:
    """Child process: run the three stages and print timings as JSON."""
    from tamis.cli import run_one
    from tamis.pipeline import load_pipeline

    sampler = TreeRssSampler()
    sampler.start()
    pipeline = load_pipeline(config)
    timings = {}
    for stage in ("ingest", "normalize", "exact_dedup"):
        started = time.perf_counter()
        manifest = run_one(pipeline, stage, f"w{workers}", workers=workers)
        timings[stage] = {
            "s": time.perf_counter() - started,
            "in": manifest["counts"]["in"],
            "kept": manifest["counts"]["kept"],
        }
    sampler.stop.set()
    sampler.join()
    print(json.dumps({"timings": timings, "peak_rss_mib": sampler.peak / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=60)
    parser.add_argument("--files", type=int, default=48)
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_stages(args.child[0], int(args.child[1]))
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        total_bytes, total_docs = build_corpus(root / "sources", args.mb, args.files)
        config = root / "bench.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "name": "bench",
                    "storage_root": str(root / "store"),
                    "sources": {
                        name: {
                            "path": str(root / "sources" / name),
                            "id_field": "id",
                            "type": "code" if name == "code" else "prose",
                        }
                        for name in SOURCES
                    },
                    "stages": {"ingest": {}, "normalize": {}, "exact_dedup": {}},
                },
                sort_keys=False,
            )
        )
        print(f"corpus: {total_bytes / 1e6:.1f} MB, {total_docs} docs, {args.files} files")
        results = {}
        for workers in (1, 2):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(config), str(workers)], capture_output=True, text=True
            )
            if out.returncode != 0:
                sys.exit(f"the {workers}-worker run failed:\n{out.stderr[-3000:]}")
            results[workers] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{'workers':>7} {'stage':<12} {'seconds':>8} {'MB/s':>8} {'docs/s':>9}")
        totals = {}
        for workers, result in results.items():
            total_s = 0.0
            for stage, t in result["timings"].items():
                total_s += t["s"]
                print(
                    f"{workers:>7} {stage:<12} {t['s']:>8.2f} {total_bytes / 1e6 / t['s']:>8.1f} {t['in'] / t['s']:>9.0f}"
                )
            totals[workers] = total_s
            print(
                f"{workers:>7} {'all three':<12} {total_s:>8.2f} {total_bytes / 1e6 / total_s:>8.1f} "
                f"{total_docs / total_s:>9.0f}   peak RSS {result['peak_rss_mib']:.0f} MiB"
            )
        print(f"scaling 2 workers / 1 worker: {totals[1] / totals[2]:.2f}x")
        print(f"kept after exact dedup: {results[1]['timings']['exact_dedup']['kept']} of {total_docs}")


if __name__ == "__main__":
    main()
