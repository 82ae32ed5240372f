"""The whole default pipeline, ingest to index, at 1 and 2 workers, against datatrove.

Builds a corpus from ../shared/data (web text, code, multilingual pages; near copies and
exact copies, see bench_corpus.py), runs every stage of the default pipeline with its
default parameters (gates apart) in a fresh process per worker count, and prints per stage
MB/s per core (corpus MB / seconds / workers), docs/s and the peak RSS of one worker. Then
the equivalent datatrove 0.10.1 pipeline (its Gopher quality, Gopher repetition, C4 and
FineWeb filters, its PII formatter, its 4-step MinHash dedup and its tokenizer, one task
and one worker) on the same input, in the peer virtualenv (benchmarks/peer_venv.sh), and
the ratio. With --fused also the pipeline with ``execution.fuse_batch_stages`` on. With
--tree, another checkout of tamis (an earlier commit) runs the same pipeline on one worker,
interleaved with this one --repeats times, and the best times of each are compared.

    .venv/bin/python benchmarks/pipeline_throughput.py [--mb 200] [--peer-python PYTHON] [--fused]
        [--tree OTHER_CHECKOUT [--repeats 2]]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_corpus import REPO, build_corpus, pipeline_yaml  # noqa: E402

STAGES = [
    "ingest",
    "normalize",
    "language",
    "quality",
    "pii",
    "exact_dedup",
    "near_dedup",
    "tokenize",
    "mix",
    "pack",
    "index",
]
RUN = """
import json, sys, time
from tamis.cli import Engines, run_group, stage_groups
from tamis.dataset import Dataset
from tamis.pipeline import load_pipeline
pipeline = load_pipeline(sys.argv[1])
engines = Engines(pipeline, "local", int(sys.argv[2]))
out = {}
for group in stage_groups(pipeline, engines, pipeline.stage_names):
    started = time.time()
    run_group(pipeline, group, "bench", engines, {})
    docs = Dataset(pipeline.stage_url("bench", group[0])).manifest()["counts"]["in"]
    out["+".join(group)] = {"s": time.time() - started, "docs": docs}
print(json.dumps(out))
"""

PEER = r"""
import json, sys, time
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.dedup import MinhashDedupSignature, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.tokens import DocumentTokenizer
from datatrove.pipeline.writers import JsonlWriter

corpus, work, tokenizer = sys.argv[1], sys.argv[2], sys.argv[3]
config = MinhashConfig()
steps = {
    "read + quality + pii": [JsonlReader(corpus, glob_pattern="*/date=*/*.jsonl", doc_progress=False),
        GopherQualityFilter(), GopherRepetitionFilter(), C4QualityFilter(filter_no_terminal_punct=False),
        FineWebQualityFilter(), PIIFormatter(), JsonlWriter(f"{work}/clean")],
    "minhash signatures": [JsonlReader(f"{work}/clean"), MinhashDedupSignature(f"{work}/sigs", config=config)],
    "minhash buckets": [MinhashDedupBuckets(f"{work}/sigs", f"{work}/buckets", config=config)],
    "minhash clusters": [MinhashDedupCluster(f"{work}/buckets", f"{work}/remove", config=config)],
    "minhash filter": [JsonlReader(f"{work}/clean"), MinhashDedupFilter(f"{work}/remove"), JsonlWriter(f"{work}/deduped")],
    "tokenize": [JsonlReader(f"{work}/deduped"), DocumentTokenizer(f"{work}/tokens", tokenizer_name_or_path=tokenizer,
                                                                    eos_token="<|endoftext|>")],
}
out = {}
for name, pipeline in steps.items():
    tasks = config.num_buckets if name == "minhash buckets" else 1
    started = time.time()
    LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=f"{work}/logs/{name}").run()
    out[name] = time.time() - started
print(json.dumps(out))
"""


class WorkerPeak(threading.Thread):
    """Peak RSS of the largest single process under ``parent`` (a pool worker, or the
    process itself with one worker)."""

    def __init__(self, parent: int):
        super().__init__(daemon=True)
        self.parent = parent
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                root = psutil.Process(self.parent)
                for proc in [root, *root.children(recursive=True)]:
                    try:
                        self.peak = max(self.peak, proc.memory_info().rss)
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            time.sleep(0.1)


def run_tamis(config: Path, workers: int, env: dict) -> tuple[dict, int]:
    process = subprocess.Popen(
        [sys.executable, "-c", RUN, str(config), str(workers)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sampler = WorkerPeak(process.pid)
    sampler.start()
    out, err = process.communicate()
    sampler.stop.set()
    if process.returncode != 0:
        raise SystemExit(err[-3000:])
    return json.loads(out.strip().splitlines()[-1]), sampler.peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=200)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--peer-python", default=str(REPO / "benchmarks/.peer-venv/bin/python"))
    parser.add_argument("--fused", action="store_true", help="also run with consecutive per-batch stages fused")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--tree", type=Path, default=None, help="another tamis checkout to compare with")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each tree with --tree")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="tamis-pipeline-"))
    corpus = out / "corpus"
    size, docs = build_corpus(corpus, args.mb, files_per_source=8)
    mb = size / 1e6
    print(f"corpus: {mb:.0f} MB, {docs} documents, 24 files", flush=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAMIS_")}
    runs = {}
    variants = [(int(w), False) for w in args.workers.split(",")] + ([(1, True)] if args.fused else [])
    for workers, fused in variants:
        label = f"{workers} worker{'s' if workers > 1 else ''}{' fused' if fused else ''}"
        config = out / f"p{workers}{'f' if fused else ''}.yaml"
        execution = {"mode": "local", "fuse_batch_stages": True} if fused else None
        config.write_text(
            pipeline_yaml(corpus, out / f"store-{workers}{'f' if fused else ''}", STAGES, workers, execution)
        )
        stages, peak = run_tamis(config, workers, env)
        runs[label] = (workers, stages, peak)
        print(
            f"{label}: {sum(s['s'] for s in stages.values()):.1f}s, peak RSS of one worker {peak / 2**20:.0f} MiB",
            flush=True,
        )

    labels = list(runs)
    print("\n| stage | " + " | ".join(f"{label}: MB/s per core" for label in labels) + " | docs/s (1 worker) |")
    print("|---|" + "---|" * (len(labels) + 1))
    first = runs[labels[0]][1]
    for stage in first:
        cells = []
        for label in labels:
            workers, stages, _ = runs[label]
            # A fused group's one pass is shown at its first stage.
            group = next(g for g in stages if stage in g.split("+"))
            cells.append(f"{mb / stages[group]['s'] / workers:.2f}" if group.startswith(stage) else "(fused above)")
        print(f"| {stage} | " + " | ".join(cells) + f" | {first[stage]['docs'] / first[stage]['s']:.0f} |")
    totals = {label: sum(s["s"] for s in stages.values()) for label, (_, stages, _) in runs.items()}
    print("| whole pipeline | " + " | ".join(f"{mb / totals[l] / runs[l][0]:.2f}" for l in labels) + " | |")
    print("| peak RSS of one worker | " + " | ".join(f"{runs[l][2] / 2**20:.0f} MiB" for l in labels) + " | |")
    if "2 workers" in totals:
        print(f"scaling, 2 workers over 1: {totals['1 worker'] / totals['2 workers']:.2f}x")
    if args.fused:
        print(f"fused per-batch stages: {totals['1 worker'] / totals['1 worker fused']:.2f}x the unfused pipeline")

    if args.tree is not None:
        compare_trees(args.tree, REPO, corpus, out, env, args.repeats, mb)

    peer = Path(args.peer_python)
    if not peer.exists():
        print(f"(no peer virtualenv at {peer}: run benchmarks/peer_venv.sh for the datatrove comparison)")
        return 0
    done = subprocess.run(
        [str(peer), "-c", PEER, str(corpus), str(out / "datatrove"), str(REPO / "include/sample/tokenizer.json")],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        print(f"datatrove failed: {done.stderr[-2000:]}")
        return 1
    peer_times = json.loads(done.stdout.strip().splitlines()[-1])
    peer_total = sum(peer_times.values())
    ours = sum(
        first[s]["s"] for s in ("ingest", "normalize", "quality", "pii", "exact_dedup", "near_dedup", "tokenize")
    )
    print("\ndatatrove 0.10.1, one worker: " + ", ".join(f"{k} {v:.1f}s" for k, v in peer_times.items()))
    print(
        f"datatrove: {mb / peer_total:.2f} MB/s per core; tamis, the same steps (ingest to tokenize, "
        f"language apart): {mb / ours:.2f} MB/s per core = {peer_total / ours:.2f}x datatrove; "
        f"the whole tamis pipeline: {mb / totals[labels[0]]:.2f} MB/s per core"
    )
    return 0


def compare_trees(other: Path, this: Path, corpus: Path, out: Path, env: dict, repeats: int, mb: float) -> None:
    """Both checkouts on one worker, interleaved so that both see the same load; best of each."""
    best: dict[str, dict[str, float]] = {}
    for rep in range(repeats):
        for label, tree in (("other", other), ("this", this)):
            config = out / f"tree-{label}-{rep}.yaml"
            config.write_text(pipeline_yaml(corpus, out / f"store-tree-{label}-{rep}", STAGES, 1, repo=tree))
            stages, _ = run_tamis(config, 1, {**env, "PYTHONPATH": str(tree / "include")})
            for stage, figures in stages.items():
                best.setdefault(label, {})[stage] = min(best.get(label, {}).get(stage, float("inf")), figures["s"])
    print(f"\n{other} against this checkout, one worker, best of {repeats}, MB/s per core:")
    print("| stage | other | this | ratio |\n|---|---|---|---|")
    for stage in best["this"]:
        before, after = best["other"].get(stage), best["this"][stage]
        if before is not None:
            print(f"| {stage} | {mb / before:.2f} | {mb / after:.2f} | {before / after:.2f}x |")
    before, after = sum(best["other"].values()), sum(best["this"].values())
    print(f"| whole pipeline | {mb / before:.2f} | {mb / after:.2f} | {before / after:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
