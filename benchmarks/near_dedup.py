"""Near-dedup benchmark: accuracy on labelled near-duplicates, speed and memory of the stage.

Peer: the seeds' approach, datasketch MinHash (num_perm 128, one ``update`` per
whitespace word) with MinHashLSH at threshold 0.8, run in the same process.

Accuracy (../shared/data/near_dup), duplicate-pair detection, precision/recall/F1:
  cpython   the same stdlib file in 3.11.2 and 3.11.7 = positive; any other pair negative
  license   same (normalised) declared licence = positive; different licences negative
  readme    consecutive README versions = positive; versions of different repos negative
  stsb      STS-B pairs scored >= 4.5 positive, <= 2 negative (each pair on its own)
A pair is predicted duplicate when both documents land in one cluster (tamis) or when one
is returned by the LSH query of the other (peer).

Speed and memory: a corpus of >= --corpus-mb MB is built in a temp dir from
../shared/data plus perturbed copies; the whole stage (signatures, LSH, components,
filtering, writing) runs through the runner in a fresh process with 1 and 2 workers, and
at --rss-scale times the corpus for peak RSS. The peer runs on a --peer-mb MB subset and
is extrapolated (it is too slow for the whole corpus in a few minutes).

    .venv/bin/python benchmarks/near_dedup.py [--corpus-mb 100] [--peer-mb 4] [--rss-scale 4] [--skip-speed]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NEAR_DUP = DATA / "near_dup"
THRESHOLD = 0.8
NUM_PERM = 128


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# --------------------------------------------------------------------------- labelled sets

def labelled_sets() -> dict[str, tuple[list[str], set, set]]:
    """name -> (texts, positive pairs, negative pairs) with pairs as (i, j), i < j."""
    sets = {}
    cpython = read_jsonl(NEAR_DUP / "cpython_3.11.2_vs_3.11.7_pairs.jsonl.gz")
    texts = [r["text_a"] for r in cpython] + [r["text_b"] for r in cpython]
    n = len(cpython)
    pos = {(i, i + n) for i in range(n)}
    sets["cpython"] = (texts, pos, _all_pairs(len(texts)) - pos)

    licences = [(r["text"], _licence(r["declared_license"])) for r in read_jsonl(NEAR_DUP / "license_texts_clusters.jsonl")]
    licences = [(t, l) for t, l in licences if l]
    texts = [t for t, _ in licences]
    pos, neg = set(), set()
    for i in range(len(licences)):
        for j in range(i + 1, len(licences)):
            (pos if licences[i][1] == licences[j][1] else neg).add((i, j))
    sets["license"] = (texts, pos, neg)

    readmes = read_jsonl(NEAR_DUP / "readme_version_lineages.jsonl.gz")
    texts = [r["text"] for r in readmes]
    where = {(r["cluster"], r["version_index"]): i for i, r in enumerate(readmes)}
    pos = {tuple(sorted((i, where[(r["cluster"], r["version_index"] + 1)])))
           for i, r in enumerate(readmes) if (r["cluster"], r["version_index"] + 1) in where}
    neg = {(i, j) for i in range(len(readmes)) for j in range(i + 1, len(readmes)) if readmes[i]["cluster"] != readmes[j]["cluster"]}
    sets["readme"] = (texts, pos, neg)

    sts = [r for r in read_jsonl(NEAR_DUP / "stsb_en_all_splits.jsonl") if r["score"] >= 4.5 or r["score"] <= 2.0]
    texts = [s for r in sts for s in (r["sentence1"], r["sentence2"])]
    pos = {(2 * k, 2 * k + 1) for k, r in enumerate(sts) if r["score"] >= 4.5}
    neg = {(2 * k, 2 * k + 1) for k, r in enumerate(sts) if r["score"] <= 2.0}
    sets["stsb"] = (texts, pos, neg)
    return sets


def _all_pairs(n: int) -> set:
    return {(i, j) for i in range(n) for j in range(i + 1, n)}


_LICENCE_NAMES = {
    "mit": "MIT", "mit license": "MIT", "isc": "ISC", "isc license": "ISC", "apache-2.0": "Apache-2.0",
    "apache license 2.0": "Apache-2.0", "apache 2.0": "Apache-2.0", "asl 2": "Apache-2.0", "bsd-3-clause": "BSD-3-Clause",
    "modified bsd license": "BSD-3-Clause", "bsd 3-clause license": "BSD-3-Clause", "bsd-2-clause": "BSD-2-Clause",
    "blueoak-1.0.0": "BlueOak-1.0.0", "mpl-2.0": "MPL-2.0", "mit-0": "MIT-0", "psf-2.0": "PSF-2.0",
}


def _licence(declared: str | None) -> str | None:
    """One well-known licence name, or None (missing, compound, free text: not a usable label)."""
    return _LICENCE_NAMES.get((declared or "").strip().lower())


def score(predicted, pos: set, neg: set) -> tuple[int, int, int]:
    tp = sum(1 for p in pos if predicted(p))
    fp = sum(1 for p in neg if predicted(p))
    return tp, fp, len(pos) - tp


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def tamis_predictor(texts: list[str], params: dict, pairwise: bool):
    from tamis import minhash
    from tamis.stages.near_dedup import NearDedupParams

    p = NearDedupParams(**params)
    config = p.minhash_config()
    sig, shingles = minhash.signatures(pa.array(texts, pa.large_string()), config)
    keys = minhash.band_keys(sig, config)
    if pairwise:  # STS pairs are judged one by one, as two-document corpora
        def predicted(pair):
            i, j = pair
            shared = (keys[i] == keys[j]).any() and shingles[i] > 0 and shingles[j] > 0
            return bool(shared and (not p.verify or minhash.similarity(sig[[i]], sig[[j]])[0] >= p.threshold - 1e-6))
        return predicted
    ids = pa.array([f"{i:08d}" for i in range(len(texts))])
    found = minhash.cluster(sig, keys, shingles > 0, minhash.id_rank(ids), np.arange(len(texts)),
                            p.threshold if p.verify else None)
    labels = found.labels
    return lambda pair: labels[pair[0]] == labels[pair[1]]


def peer_predictor(texts: list[str], pairwise: bool):
    from datasketch import MinHash, MinHashLSH

    hashes = []
    for text in texts:
        m = MinHash(num_perm=NUM_PERM)
        for word in text.split():
            m.update(word.encode("utf-8"))
        hashes.append(m)
    if pairwise:
        def predicted(pair):
            lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
            lsh.insert("a", hashes[pair[0]])
            return bool(lsh.query(hashes[pair[1]]))
        return predicted
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    for i, m in enumerate(hashes):
        lsh.insert(i, m)
    neighbours = [set(lsh.query(m)) for m in hashes]
    return lambda pair: pair[1] in neighbours[pair[0]]


def accuracy(variants: dict[str, dict]) -> None:
    sets = labelled_sets()
    print(f"\n== accuracy: duplicate-pair detection, threshold {THRESHOLD} ==")
    print(f"{'method':<34}{'set':<9}{'pos':>7}{'neg':>9}{'P':>7}{'R':>7}{'F1':>7}")
    results: dict[str, list] = {}
    methods = [("peer: datasketch words", None)] + [(f"tamis: {name}", params) for name, params in variants.items()]
    for label, params in methods:
        totals = np.zeros(3, dtype=np.int64)
        f1s = []
        for name, (texts, pos, neg) in sets.items():
            pairwise = name == "stsb"
            predicted = peer_predictor(texts, pairwise) if params is None else tamis_predictor(texts, params, pairwise)
            tp, fp, fn = score(predicted, pos, neg)
            totals += (tp, fp, fn)
            p, r, f = prf(tp, fp, fn)
            f1s.append(f)
            print(f"{label:<34}{name:<9}{len(pos):>7}{len(neg):>9}{p:>7.3f}{r:>7.3f}{f:>7.3f}")
        p, r, f = prf(*totals)
        results[label] = [p, r, f, float(np.mean(f1s))]
        print(f"{label:<34}{'ALL':<9}{'':>7}{'':>9}{p:>7.3f}{r:>7.3f}{f:>7.3f}   macro-F1 {np.mean(f1s):.3f}")
    peer = results["peer: datasketch words"]
    for label, (p, r, f, macro) in results.items():
        if label.startswith("tamis"):
            print(f"{label}: pooled F1 {f:.3f} vs peer {peer[2]:.3f} (ratio {f / peer[2]:.2f}); "
                  f"macro F1 {macro:.3f} vs {peer[3]:.3f} (ratio {macro / peer[3]:.2f})")


# --------------------------------------------------------------------------- speed corpus

def corpus_texts() -> list[tuple[str, str]]:
    """(source, text) of every real document under ../shared/data (research-only files excluded)."""
    out = []
    for path in sorted(DATA.glob("*/*.jsonl*")):
        if "abc_news" in path.name:
            continue
        for r in read_jsonl(path):
            for key in ("text", "text_a", "text_b", "full_page_text", "sentence1", "sentence2"):
                if isinstance(r.get(key), str) and r[key]:
                    out.append((path.parent.name, r[key]))
    return out


def _perturb(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for _ in range(max(1, len(words) // 150)):
        words[rng.randrange(len(words))] = f"w{rng.randrange(10**6)}"
    if rng.random() < 0.3:
        words = words[: max(1, int(len(words) * 0.97))]
    return " ".join(words)


def build_corpus(root: Path, target_mb: float, seed: int = 0, parts: int = 8) -> tuple[str, int, int]:
    """A committed dataset of >= target_mb MB: the real texts, then perturbed copies."""
    rng = random.Random(seed)
    base = corpus_texts()
    rows, size, copy = [], 0, 0
    for i, (source, text) in enumerate(base):
        rows.append({"id": f"{source}/{i:07d}", "source": source, "date": "2026-11-20", "text": text})
        size += len(text.encode())
    while size < target_mb * 1e6:
        copy += 1
        for i, (source, text) in enumerate(base):
            t = _perturb(text, rng)
            rows.append({"id": f"{source}/{i:07d}-c{copy}", "source": f"{source}_copy", "date": "2026-11-21", "text": t})
            size += len(t.encode())
            if size >= target_mb * 1e6:
                break
    rng.shuffle(rows)
    root.mkdir(parents=True, exist_ok=True)
    manifest = []
    per = -(-len(rows) // parts)
    for k in range(parts):
        name = f"part{k:02d}"
        pq.write_table(pa.Table.from_pylist(rows[k * per: (k + 1) * per]), root / f"{name}.parquet")
        manifest.append({"name": name, "bytes": (root / f"{name}.parquet").stat().st_size})
    (root / "_manifest.json").write_text(json.dumps({"parts": manifest}))
    return str(root), len(rows), size


def run_stage_in_process(input_url: str, output_url: str, workers: int) -> dict:
    """The stage in a fresh interpreter, so that its peak RSS is its own."""
    out = subprocess.run([sys.executable, __file__, "_stage", input_url, output_url, str(workers)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _stage_child(input_url: str, output_url: str, workers: int) -> None:
    from tamis.runner import run_stage
    from tamis.stages.near_dedup import NearDedup

    import threading

    import psutil

    # ru_maxrss survives exec (it would report the parent's size), so peaks are sampled.
    worker_peak = [0]
    done = threading.Event()

    def sample() -> None:
        me = psutil.Process()
        while not done.wait(0.1):
            for child in me.children():
                try:
                    worker_peak[0] = max(worker_peak[0], child.memory_info().rss)
                except psutil.Error:
                    pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.time()
    manifest = run_stage(NearDedup({}), input_url, output_url, workers=workers)
    elapsed = time.time() - started
    done.set()
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    status = Path("/proc/self/status").read_text()
    rss_self = int(status.split("VmHWM:")[1].split()[0]) / 1024  # this process's own peak since exec
    rss_children = worker_peak[0] / 2**20
    print(json.dumps({"elapsed_s": elapsed, "cpu_s": cpu, "counts": manifest["counts"], "rss_main_mb": rss_self,
                      "rss_worker_mb": rss_children, "metrics": manifest["metrics"]}))


def peer_speed(texts: list[str]) -> float:
    """CPU seconds for the seeds' loop (MinHash per word, LSH query then insert) over ``texts``."""
    from datasketch import MinHash, MinHashLSH

    started = time.process_time()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    kept = 0
    for i, text in enumerate(texts):
        m = MinHash(num_perm=NUM_PERM)
        for word in text.split():
            m.update(word.encode("utf-8"))
        if not lsh.query(m):
            lsh.insert(i, m)
            kept += 1
    return time.process_time() - started


def speed(args) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tamis-near-dedup-bench-"))
    try:
        started = time.time()
        input_url, docs, size = build_corpus(tmp / "corpus", args.corpus_mb)
        mb = size / 1e6
        print(f"\n== speed: corpus {mb:.1f} MB of text, {docs} docs ({time.time() - started:.0f}s to build) ==")
        table = pq.read_table(input_url, columns=["text"]).column("text").to_pylist()
        random.Random(1).shuffle(table)
        subset, subset_bytes = [], 0
        for t in table:
            subset.append(t)
            subset_bytes += len(t.encode())
            if subset_bytes >= args.peer_mb * 1e6:
                break
        del table
        peer_s = peer_speed(subset)
        peer_mbs = subset_bytes / 1e6 / peer_s
        peer_docs = len(subset) / peer_s
        print(f"peer (datasketch per-word + MinHashLSH), 1 core, on a {subset_bytes / 1e6:.1f} MB subset: "
              f"{peer_docs:.0f} docs/s, {peer_mbs:.2f} MB/s -> {mb / peer_mbs:.0f}s extrapolated to the corpus")
        results = {}
        for workers in (1, 2):
            r = run_stage_in_process(input_url, str(tmp / f"out-w{workers}"), workers)
            results[workers] = r
            c = r["counts"]
            print(f"tamis stage, {workers} worker(s): {r['elapsed_s']:.1f}s wall ({r['cpu_s']:.1f}s CPU), "
                  f"{c['in'] / r['elapsed_s']:.0f} docs/s, {mb / r['elapsed_s']:.1f} MB/s, dropped {c['dropped']} of {c['in']}, "
                  f"peak RSS main {r['rss_main_mb']:.0f} MB / worker {r['rss_worker_mb']:.0f} MB")
            if workers == 1:
                print(f"  vs peer on 1 core: {peer_s / (subset_bytes / 1e6) * mb / r['elapsed_s']:.1f}x by wall time, "
                      f"{peer_s / (subset_bytes / 1e6) * mb / r['cpu_s']:.1f}x by CPU time (peer: CPU time)")
        print(f"scaling 1 -> 2 workers: {results[1]['elapsed_s'] / results[2]['elapsed_s']:.2f}x "
              f"(machine has {os.cpu_count()} cores)")
        shutil.rmtree(tmp / "out-w2", ignore_errors=True)
        if args.rss_scale > 1:
            big_url, big_docs, big_size = build_corpus(tmp / "corpus-big", args.corpus_mb * args.rss_scale, seed=2)
            r = run_stage_in_process(big_url, str(tmp / "out-big"), 1)
            print(f"tamis stage at {big_size / 1e6:.0f} MB ({big_docs} docs), 1 worker: {r['elapsed_s']:.1f}s, "
                  f"{big_size / 1e6 / r['elapsed_s']:.1f} MB/s, peak RSS {r['rss_main_mb']:.0f} MB "
                  f"(vs {results[1]['rss_main_mb']:.0f} MB at {mb:.0f} MB)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


VARIANTS = {
    "word 2-grams (default)": {},
    "word 5-grams": {"ngram": 5},
    "word 3-grams": {"ngram": 3},
    "word 1-grams": {"ngram": 1},
    "char 5-grams": {"shingle": "char", "ngram": 5},
}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_stage":
        _stage_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus-mb", type=float, default=100.0)
    parser.add_argument("--peer-mb", type=float, default=4.0)
    parser.add_argument("--rss-scale", type=float, default=4.0)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    if not args.skip_accuracy:
        accuracy(VARIANTS)
    if not args.skip_speed:
        speed(args)


if __name__ == "__main__":
    main()
