"""Memory of the whole-dataset dedup plans: held in memory vs partitioned on disk.

A corpus of --mb MB of English web text from ../shared/data (Wikipedia, speeches, movie
reviews, C4/Pile fixtures, extracted pages, DCLM samples; the research-only ABC news set
excluded), then edited copies of it (a word in 150 replaced, some cut short) until the
size is reached, is written as a committed dataset of parts of --part-mb MB (a fixed
shard size, as a pipeline's earlier stages leave it, so that what one shard costs is the
same at every input size). Each stage's plan step
(``step="plan"``: the map over the shards and the reduce, not the per-shard apply) runs in
a fresh interpreter with one worker, first with the default ``memory_budget_mb`` (the plan
held in memory), then with --budget-mb (spilled to disk where the plan's state passes
it); both runs must write the same drop plans. Printed per stage and input size: seconds,
peak RSS of the process (VmHWM), its RSS once the imports are done (the floor), the
plan's own peak above that floor and per document, the spill partitions ("-": the plan
fit its budget), and the ratios of the small budget's time and peak to the default's. With
--scale 2 (or more) the corpus is also built at that many times the size, to show
which peak grows with the input and which does not.

    .venv/bin/python benchmarks/dataset_stage_memory.py [--data ../shared/data] [--mb 50]
        [--budget-mb 8] [--part-mb 8] [--scale 2] [--stages near_dedup,exact_dedup]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEB = [
    "web_en/wikipedia_en_sample.jsonl",
    "web_en/us_presidential_speeches.jsonl",
    "web_en/movie_reviews_polarity_2000.jsonl.gz",
    "web_en/cc_c4_pile_fixtures_by_source.jsonl",
    "web_en/trafilatura_eval_en_pages.jsonl",
    "quality/dclm_human_quality.jsonl",
]
STAGES = {
    "near_dedup": ("tamis.stages.near_dedup", "NearDedup"),
    "exact_dedup": ("tamis.stages.exact_dedup", "ExactDedup"),
}


def web_texts(data: Path) -> list[str]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_corpus import read_texts

    return [t for rel in WEB for t in read_texts(rel, data)]


def build_corpus(root: Path, data: Path, target_mb: float, part_mb: float, seed: int = 0) -> tuple[str, int, int]:
    """A committed dataset of >= target_mb MB: the real texts, then edited copies."""
    rng = random.Random(seed)
    base = web_texts(data)
    rng.shuffle(base)  # every size gets the same mix of sources
    rows, size, copy = [], 0, 0
    while size < target_mb * 1e6:
        for i, text in enumerate(base):
            if copy:
                words = text.split(" ")
                for _ in range(max(1, len(words) // 150)):
                    words[rng.randrange(len(words))] = f"w{rng.randrange(10**6)}"
                if rng.random() < 0.3:
                    words = words[: max(1, int(len(words) * 0.97))]
                text = " ".join(words)
            rows.append({"id": f"web/{i:07d}-c{copy}", "source": "web", "date": "2026-11-20", "text": text})
            size += len(text.encode())
            if size >= target_mb * 1e6:
                break
        copy += 1
    rng.shuffle(rows)
    from bench_corpus import write_committed_dataset  # on the path once web_texts ran

    write_committed_dataset(rows, root, max(1, round(size / (part_mb * 1e6))))
    return str(root), len(rows), size


def plan_in_process(stage: str, input_url: str, output_url: str, params: dict) -> dict:
    """The stage's plan step in a fresh interpreter, so that its peak RSS is its own."""
    out = subprocess.run(
        [sys.executable, __file__, "_plan", stage, input_url, output_url, json.dumps(params)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _plan_child(stage: str, input_url: str, output_url: str, params: dict) -> None:
    import importlib

    from tamis.runner import PLAN_DONE, WORK_DIR, run_stage

    module, cls = STAGES[stage]
    stage_class = getattr(importlib.import_module(module), cls)
    floor = _rss_mb("VmRSS")
    started = time.time()
    run_stage(stage_class(params), input_url, output_url, workers=1, step="plan")
    elapsed = time.time() - started
    work = Path(output_url) / WORK_DIR
    done = json.loads((work / PLAN_DONE).read_text())
    print(
        json.dumps(
            {
                "elapsed_s": elapsed,
                "rss_peak_mb": _rss_mb("VmHWM"),
                "rss_floor_mb": floor,
                "plans": _plan_digest(work),
                "metrics": done["metrics"],
            }
        )
    )


def _rss_mb(field: str) -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0]) / 1024


def _plan_digest(work: Path) -> str:
    """One digest of every drop plan the step wrote (row numbers and survivors)."""
    import pyarrow.parquet as pq

    digest = hashlib.sha256()
    for path in sorted(work.rglob("*.parquet")):
        digest.update(str(path.relative_to(work)).encode())
        digest.update(json.dumps(pq.read_table(path).to_pydict(), sort_keys=True).encode())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--mb", type=float, default=50)
    parser.add_argument("--budget-mb", type=int, default=8)
    parser.add_argument("--part-mb", type=float, default=8)
    parser.add_argument("--scale", type=int, default=1, help="also run at this many times --mb")
    parser.add_argument("--stages", default="near_dedup,exact_dedup")
    args = parser.parse_args()
    stages = args.stages.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="tamis-stage-memory-"))
    try:
        print(
            "| stage | input | memory_budget_mb | seconds | peak RSS MB | floor MB | plan peak MB | "
            "plan peak B/doc | spill partitions |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for scale in sorted({1, args.scale}):
            input_url, docs, size = build_corpus(tmp / f"corpus-{scale}", args.data, args.mb * scale, args.part_mb)
            label = f"{size / 1e6:.0f} MB, {docs:,} docs"
            for stage in stages:
                runs = {}
                for plan, budget in (("1024 (default)", 1024), (str(args.budget_mb), args.budget_mb)):
                    out = tmp / f"out-{scale}-{stage}-{budget}"
                    r = plan_in_process(stage, input_url, str(out), {"memory_budget_mb": budget})
                    runs[plan] = r
                    own = r["rss_peak_mb"] - r["rss_floor_mb"]
                    partitions = next((v for k, v in r["metrics"].items() if k.endswith(".spill_partitions")), "-")
                    print(
                        f"| {stage} | {label} | {plan} | {r['elapsed_s']:.1f} | {r['rss_peak_mb']:.0f} | "
                        f"{r['rss_floor_mb']:.0f} | {own:.0f} | {own * 2**20 / docs:.0f} | {partitions} |",
                        flush=True,
                    )
                    shutil.rmtree(out, ignore_errors=True)
                default, small = runs.values()
                same = "same drop plans" if default["plans"] == small["plans"] else "DIFFERENT DROP PLANS"
                peaks = [r["rss_peak_mb"] - r["rss_floor_mb"] for r in (default, small)]
                print(
                    f"|   | | {args.budget_mb} / 1024: time x{small['elapsed_s'] / default['elapsed_s']:.2f}, "
                    f"plan peak x{peaks[1] / max(peaks[0], 1):.2f}, {same} | | | | | | |",
                    flush=True,
                )
            shutil.rmtree(tmp / f"corpus-{scale}", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_plan":
        _plan_child(sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5]))
    else:
        main()
