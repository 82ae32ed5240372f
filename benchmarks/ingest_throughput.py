"""Ingest throughput by input format, and peak memory on one very long line.

Builds a corpus of real documents from ../shared/data (web text, code, multilingual) as
JSON Lines, gzipped JSON Lines and Parquet, plus a small gzip holding a single line of
``--long-line-mb`` MiB. Each case runs the ingest stage alone (reading, checking, writing
its parts), on one worker, in a fresh process, for every code tree given (``--tree
NAME=INCLUDE_DIR``; default: this checkout), the trees taking turns, so that two versions
are compared in the same run. MB/s is over CPU time, which a busy machine disturbs less
than wall time.

    .venv/bin/python benchmarks/ingest_throughput.py [--mb 100] [--long-line-mb 400] \
        [--tree before=/path/to/old/include --tree after=include]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
FILES = [
    "web_en/wikipedia_en_sample.jsonl",
    "web_en/us_presidential_speeches.jsonl",
    "web_en/cc_c4_pile_fixtures_by_source.jsonl",
    "code/code_00.jsonl.gz",
    "multilingual/udhr_unicode_388docs.jsonl.gz",
    "multilingual/trafilatura_eval_pages_non_en.jsonl.gz",
]


def read_rows(data: Path) -> list[dict]:
    rows = []
    for rel in FILES:
        path = data / rel
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            rows += [{"text": json.loads(line)["text"]} for line in f]
    return [r for r in rows if r["text"].strip()]


def build(root: Path, data: Path, target_mb: int, long_line_mb: int) -> dict[str, int]:
    """Writes the sources; returns their sizes in bytes as ingest reads them."""
    rows, k, size = [], 0, 0
    base = read_rows(data)
    while size < target_mb * 1_000_000:
        row = {"id": f"d{k}", "url": f"https://example.org/{k}", "text": base[k % len(base)]["text"]}
        rows.append(row)
        size += len(json.dumps(row, ensure_ascii=False).encode()) + 1
        k += 1
    files = 8
    per_file = -(-len(rows) // files)
    sizes = {}
    for fmt in ("jsonl", "jsonl_gz", "parquet"):
        (root / fmt).mkdir(parents=True)
    for i in range(files):
        part = rows[i * per_file : (i + 1) * per_file]
        data_bytes = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part).encode()
        (root / "jsonl" / f"part{i}.jsonl").write_bytes(data_bytes)
        (root / "jsonl_gz" / f"part{i}.jsonl.gz").write_bytes(gzip.compress(data_bytes, compresslevel=6))
        pq.write_table(pa.Table.from_pylist(part), root / "parquet" / f"part{i}.parquet")
    sizes["jsonl"] = sizes["jsonl_gz"] = sum(p.stat().st_size for p in (root / "jsonl").iterdir())
    sizes["parquet"] = sizes["jsonl"]  # the same documents: MB/s counts the JSON bytes they stand for
    (root / "long_line").mkdir()
    with gzip.open(root / "long_line" / "a.jsonl.gz", "wb", compresslevel=1) as f:
        f.write(b'{"id": "short", "text": "A short document before the long one."}\n{"id": "long", "text": "')
        chunk = b"word " * (1 << 18)  # 1.25 MiB
        for _ in range(long_line_mb * 4 // 5):
            f.write(chunk)
        f.write(b'"}\n{"id": "after", "text": "A short document after it."}\n')
    sizes["long_line"] = 0
    return sizes


def child(config: str, source: str) -> None:
    """Runs ingest over one source and prints its figures as JSON."""
    from tamis.cli import run_one
    from tamis.pipeline import load_pipeline

    pipeline = load_pipeline(config)
    started, cpu_started = time.perf_counter(), time.process_time()
    manifest = run_one(pipeline, "ingest", source, workers=1, overrides={"sources": [source]})
    print(
        json.dumps(
            {
                "s": time.perf_counter() - started,
                "cpu_s": time.process_time() - cpu_started,
                "counts": manifest["counts"],
                "quarantine_reasons": manifest["quarantine_reasons"],
                "peak_rss_mib": peak_rss_mib(),
            }
        )
    )


def peak_rss_mib() -> float:
    """This process's own peak (getrusage would also count the parent's memory before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--long-line-mb", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the one with the least CPU time counts")
    parser.add_argument("--tree", action="append", metavar="NAME=INCLUDE_DIR", help="code tree to measure (repeatable)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    trees = dict(t.split("=", 1) for t in args.tree) if args.tree else {"this": str(REPO / "include")}

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sizes = build(root / "sources", args.data, args.mb, args.long_line_mb)
        print(
            f"corpus: {sizes['jsonl'] / 1e6:.1f} MB of JSON Lines in 8 files (also gzipped and as Parquet); "
            f"one {args.long_line_mb} MiB line in a {(root / 'sources/long_line/a.jsonl.gz').stat().st_size / 1e6:.1f} MB gzip"
        )
        configs, envs = {}, {}
        for name, include in trees.items():
            configs[name] = root / f"{name}.yaml"
            configs[name].write_text(
                yaml.safe_dump(
                    {
                        "name": "bench",
                        "storage_root": str(root / "store" / name),
                        "sources": {
                            s: {"path": str(root / "sources" / s), "id_field": "id", "url_field": "url"} for s in sizes
                        },
                        "stages": {"ingest": {}},
                    }
                )
            )
            envs[name] = {**os.environ, "PYTHONPATH": str(Path(include).resolve())}
        # Trees take turns, case by case, so that a change in the machine's load hits both alike.
        results: dict[str, dict[str, dict]] = {name: {} for name in trees}
        for source in sizes:
            for _ in range(args.repeat if source != "long_line" else 1):
                for name in trees:
                    subprocess.run(["rm", "-rf", str(root / "store" / name / "runs" / source)], check=True)
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", str(configs[name]), source],
                        capture_output=True,
                        text=True,
                        env=envs[name],
                        check=False,
                    )
                    if out.returncode != 0:
                        result = {"failed": out.stderr.strip().splitlines()[-1][:200]}
                    else:
                        result = json.loads(out.stdout.strip().splitlines()[-1])
                    best = results[name].get(source)
                    if best is None or "failed" in best or ("cpu_s" in result and result["cpu_s"] < best["cpu_s"]):
                        results[name][source] = result

        print(f"{'tree':<10} {'input':<10} {'wall s':>7} {'CPU s':>7} {'MB/CPU s':>9} {'peak RSS MiB':>13}  outcome")
        for name, by_source in results.items():
            for source, r in by_source.items():
                if "failed" in r:
                    print(f"{name:<10} {source:<10} {'-':>7} {'-':>7} {'-':>9} {'-':>13}  failed: {r['failed']}")
                    continue
                rate = f"{sizes[source] / 1e6 / r['cpu_s']:.1f}" if sizes[source] else "-"
                outcome = f"kept {r['counts']['kept']}, quarantined {r['quarantine_reasons'] or 0}"
                print(
                    f"{name:<10} {source:<10} {r['s']:>7.2f} {r['cpu_s']:>7.2f} {rate:>9} {r['peak_rss_mib']:>13.0f}  {outcome}"
                )
        names = list(results)
        for other in names[1:]:
            ratios = [
                f"{s} {results[names[0]][s]['cpu_s'] / results[other][s]['cpu_s']:.2f}x"
                for s in sizes
                if "cpu_s" in results[names[0]][s] and "cpu_s" in results[other][s]
            ]
            print(f"{other} vs {names[0]}, CPU time ratio (>1: {other} is faster): " + ", ".join(ratios))


if __name__ == "__main__":
    main()
