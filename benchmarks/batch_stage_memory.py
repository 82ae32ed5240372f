"""Peak memory of the per-batch stages at two input sizes: flat, or growing with the input?

Builds the benchmark corpus (web text, code and multilingual pages from ../shared/data with
exact and near copies, see bench_corpus.py) at --mb MB and at --scale times that, ingests
each, then runs every per-batch stage of the default pipeline with its default parameters
in order, one worker, each in a fresh interpreter (its seconds include start-up). Prints
per stage and size the peak RSS of that process (VmHWM: one worker runs in the stage's own
process), its seconds and MB/s, and the ratio of the peaks.

    .venv/bin/python benchmarks/batch_stage_memory.py [--mb 100] [--scale 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_corpus import build_corpus, pipeline_yaml  # noqa: E402

STAGES = ["normalize", "language", "quality", "pii", "tokenize"]
RUN = """
import json, sys
from tamis.cli import Engines, run_group
from tamis.pipeline import load_pipeline
pipeline = load_pipeline(sys.argv[1])
run_group(pipeline, [sys.argv[2]], "bench", Engines(pipeline, "local", 1), {})
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({"peak_kib": int(status["VmHWM"].split()[0])}))
"""


def run_stage_process(config: Path, stage: str, env: dict) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of a fresh interpreter running one stage with one worker."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUN, str(config), stage], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])["peak_kib"] / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=100)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="tamis-batch-memory-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAMIS_")}
    rows: dict[str, dict[float, tuple[float, float, float]]] = {s: {} for s in STAGES}
    for mb in (args.mb, args.mb * args.scale):
        corpus = out / f"corpus-{mb:g}"
        size, docs = build_corpus(corpus, mb, files_per_source=max(8, int(mb // 8)))
        config = out / f"p{mb:g}.yaml"
        config.write_text(pipeline_yaml(corpus, out / f"store-{mb:g}", ["ingest", *STAGES], 1))
        print(f"corpus {mb:g} MB: {size / 1e6:.0f} MB, {docs} documents", flush=True)
        run_stage_process(config, "ingest", env)
        for stage in STAGES:  # each reads the one before it, as in the pipeline
            seconds, peak = run_stage_process(config, stage, env)
            rows[stage][mb] = (seconds, peak, size / 1e6 / seconds)
            print(f"  {stage}: {seconds:.1f}s, {size / 1e6 / seconds:.2f} MB/s, peak RSS {peak:.0f} MiB", flush=True)
    small, large = args.mb, args.mb * args.scale
    print(f"\n| stage | peak RSS at {small:g} MB | at {large:g} MB | ratio | MB/s at {large:g} MB |")
    print("|---|---|---|---|---|")
    for stage, by_size in rows.items():
        print(
            f"| {stage} | {by_size[small][1]:.0f} MiB | {by_size[large][1]:.0f} MiB | "
            f"{by_size[large][1] / by_size[small][1]:.2f} | {by_size[large][2]:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
