"""The same input through the local engine (1 and 2 workers) and through a Spark standalone
cluster on loopback (1 and 2 workers of one core each), stage by stage: MB/s, the Spark
overhead (local time / Spark time at equal cores) and the peak memory of one worker (a local
pool worker; on Spark an executor JVM with its Python workers).

Stages: ingest, normalize, quality, exact_dedup, near_dedup, tokenize, pack (every kind:
per batch, and whole dataset with a global step), default parameters, no gates.

    .venv/bin/python benchmarks/spark_scaling.py [--mb 200] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_corpus import build_corpus, pipeline_yaml  # noqa: E402

STAGES = ["ingest", "normalize", "quality", "exact_dedup", "near_dedup", "tokenize", "pack"]
RUN = (
    """
import json, sys, time
from tamis.cli import Engines, run_one
from tamis.pipeline import load_pipeline
pipeline = load_pipeline(sys.argv[1])
engines = Engines(pipeline, sys.argv[2], int(sys.argv[3]))
times = {}
for stage in %r:
    started = time.time()
    run_one(pipeline, stage, "bench", engines=engines)
    times[stage] = time.time() - started
print(json.dumps(times))
"""
    % STAGES
)


class PeakRss(threading.Thread):
    """Peak RSS of the largest worker: each root process's tree summed, the max over roots."""

    def __init__(self, roots):
        super().__init__(daemon=True)
        self.roots = roots  # a callable returning the processes whose trees are workers
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for root in self.roots():
                try:
                    tree = [root, *root.children(recursive=True)]
                    self.peak = max(self.peak, sum(p.memory_info().rss for p in tree if p.is_running()))
                except psutil.Error:
                    pass
            time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(config: Path, engine: str, workers: int, env: dict, roots) -> tuple[dict, int]:
    sampler = PeakRss(roots)
    sampler.start()
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(config), engine, str(workers)], env=env, capture_output=True, text=True
    )
    sampler.stop.set()
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1]), sampler.peak


def start_cluster(workers: int, root: Path) -> tuple[str, list[subprocess.Popen]]:
    import pyspark

    home = Path(pyspark.__file__).resolve().parent
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    port, ui = free_port(), free_port()
    spark_class = str(home / "bin" / "spark-class")
    procs = [
        subprocess.Popen(
            [
                spark_class,
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--webui-port",
                str(ui),
            ],
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    master = f"spark://127.0.0.1:{port}"
    for i in range(workers):
        procs.append(
            subprocess.Popen(
                [
                    spark_class,
                    "org.apache.spark.deploy.worker.Worker",
                    master,
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    "1",
                    "--memory",
                    "3g",
                    "--webui-port",
                    str(free_port()),
                    "--work-dir",
                    str(root / f"w{workers}-{i}"),
                ],
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    for _ in range(120):
        try:
            state = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=2).read())
            if sum(w["state"] == "ALIVE" for w in state.get("workers", [])) == workers:
                return master, procs
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit("the Spark cluster did not start")


def executor_roots(procs: list[subprocess.Popen]):
    def roots():
        found = []
        for worker in procs[1:]:
            try:
                found += psutil.Process(worker.pid).children()  # each executor JVM (its Python workers below it)
            except psutil.Error:
                pass
        return found

    return roots


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=200)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="tamis-spark-scaling-"))
    corpus = out / "corpus"
    size, docs = build_corpus(corpus, args.mb, files_per_source=8)
    mb = size / 1e6
    print(f"corpus: {mb:.0f} MB, {docs} documents, 24 files; stages: {', '.join(STAGES)}", flush=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAMIS_")}
    results = {}
    for workers in (1, 2):
        config = out / f"local{workers}.yaml"
        config.write_text(pipeline_yaml(corpus, out / f"store-local{workers}", STAGES, workers))
        me = psutil.Process()

        def local_roots(me=me):
            kids = me.children()
            return [w for k in kids for w in k.children(recursive=True) if "python" in w.name()] or kids

        times, peak = run_config(config, "local", workers, env, local_roots)
        results[f"local x{workers}"] = (times, peak)
        print(f"local x{workers}: {sum(times.values()):.1f}s", flush=True)
    for workers in (1, 2):
        master, procs = start_cluster(workers, out)
        try:
            config = out / f"spark{workers}.yaml"
            config.write_text(
                pipeline_yaml(
                    corpus,
                    out / f"store-spark{workers}",
                    STAGES,
                    workers,
                    {"mode": "spark", "spark": {"master": master}},
                )
            )
            times, peak = run_config(config, "spark", workers, env, executor_roots(procs))
            results[f"spark x{workers}"] = (times, peak)
            print(f"spark x{workers}: {sum(times.values()):.1f}s", flush=True)
        finally:
            for p in reversed(procs):
                os.killpg(p.pid, signal.SIGTERM)
            for p in procs:
                p.wait(timeout=60)

    print(f"\n| {'stage':<12} | " + " | ".join(f"{k} MB/s" for k in results) + " |")
    print("|" + "---|" * (len(results) + 1))
    for stage in STAGES:
        print(f"| {stage:<12} | " + " | ".join(f"{mb / t[stage]:.2f}" for t, _ in results.values()) + " |")
    totals = {k: sum(t.values()) for k, (t, _) in results.items()}
    print(f"| {'all':<12} | " + " | ".join(f"{mb / totals[k]:.2f}" for k in results) + " |")
    print("| peak RSS of one worker | " + " | ".join(f"{p / 2**20:.0f} MiB" for _, p in results.values()) + " |")
    for workers in (1, 2):
        print(
            f"Spark overhead at {workers} core(s): local {totals[f'local x{workers}']:.1f}s / spark "
            f"{totals[f'spark x{workers}']:.1f}s = {totals[f'local x{workers}'] / totals[f'spark x{workers}']:.2f}x"
        )
    print(
        f"scaling 2/1: local {totals['local x1'] / totals['local x2']:.2f}x, "
        f"spark {totals['spark x1'] / totals['spark x2']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
