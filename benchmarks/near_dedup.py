"""Near-dedup benchmark: accuracy at the threshold, on labelled near-duplicates, and speed.

Peer: the seeds' approach, datasketch MinHash (num_perm 128, one ``update`` per
whitespace word) with MinHashLSH at threshold 0.8, run in the same process.

S-curve: the default banding's candidate probability at J = 0.5 ... 1.0 and its
effective threshold, next to the previous default (9 x 13, datasketch's optimum).

Perturbation set (built here, deterministically, from ../shared/data): real documents of
eight sources, each with one edited copy whose TRUE Jaccard under the stage's shingling
(word 2-grams, computed here with Python sets) spreads around the threshold (word
substitutions, deletions, insertions and swaps, block deletions and insertions, layout
and case changes), plus hard negatives: pairs of different documents of one source
wrapped in the same real header and footer (a template), at true Jaccard 0.55-0.9.
A pair is predicted duplicate when both documents land in one cluster (tamis) or when one
is returned by the LSH query of the other (peer); positives are the pairs with true
Jaccard >= 0.8, and every predicted pair outside the labelled ones is checked by its true
Jaccard too. Printed: P/R/F1 and the share of pairs found per true-Jaccard bin, for the
default, its signature-estimate variant, the previous default, 256 permutations, and
the peer.

Labelled sets (../shared/data/near_dup), duplicate-pair detection, precision/recall/F1:
  cpython   the same stdlib file in 3.11.2 and 3.11.7 = positive; any other pair negative
  license   same (normalised) declared licence = positive; different licences negative
  readme    consecutive README versions = positive; versions of different repos negative
  stsb      STS-B pairs scored >= 4.5 positive, <= 2 negative (each pair on its own)

Speed and memory: a corpus of >= --corpus-mb MB is built in a temp dir from
../shared/data plus perturbed copies; the whole stage (signatures, LSH, verification,
components, filtering, writing) runs through the runner in a fresh process with 1 and 2
workers, and at --rss-scale times the corpus for peak RSS. The peer runs on a --peer-mb MB
subset and is extrapolated (it is too slow for the whole corpus in a few minutes).

    .venv/bin/python benchmarks/near_dedup.py [--corpus-mb 100] [--peer-mb 4] [--rss-scale 4]
        [--skip-perturbation] [--skip-accuracy] [--skip-speed]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NEAR_DUP = DATA / "near_dup"
THRESHOLD = 0.8
NUM_PERM = 128
NGRAM = 2  # the default shingling: word 2-grams


def set_data(path: Path) -> None:
    global DATA, NEAR_DUP
    DATA, NEAR_DUP = path, path / "near_dup"


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# --------------------------------------------------------------------------- true Jaccard

# The stage's words: runs of ASCII letters, digits, '_' and non-ASCII bytes, ASCII-lowercased.
_WORD = re.compile(rb"[A-Za-z0-9_\x80-\xff]+")


def word_shingles(text: str, n: int = NGRAM) -> frozenset:
    """The set of word n-grams of ``text`` as the stage defines them, computed independently."""
    words = [w.lower() for w in _WORD.findall(text.encode("utf-8"))]
    if len(words) < n:
        return frozenset([tuple(words)]) if words else frozenset()
    return frozenset(zip(*(words[i:] for i in range(n))))


def true_jaccard(a: frozenset, b: frozenset) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 0.0


# --------------------------------------------------------------------------- S-curve


def print_s_curve() -> None:
    from tamis import minhash
    from tamis.stages.near_dedup import NearDedupParams

    default = NearDedupParams().minhash_config()
    curves = {
        f"default {default.bands} x {default.rows} of {default.num_perm}": minhash.s_curve(default.bands, default.rows),
        "previous 9 x 13 of 128": minhash.s_curve(9, 13),
    }
    wide = NearDedupParams(num_perm=256).minhash_config()
    curves[f"{wide.bands} x {wide.rows} of 256"] = minhash.s_curve(wide.bands, wide.rows)
    print(f"\n== S-curve: probability that a pair of Jaccard J becomes a candidate (threshold {THRESHOLD}) ==")
    grid = [j for j, _ in next(iter(curves.values())).points]
    print(f"{'banding':<24}{'eff.thr':>8}" + "".join(f"{j:>7.2f}" for j in grid))
    for label, curve in curves.items():
        print(f"{label:<24}{curve.effective_threshold:>8.3f}" + "".join(f"{p:>7.3f}" for _, p in curve.points))


# --------------------------------------------------------------------------- perturbation set

PERTURBATION_SOURCES = [  # (name, files under ../shared/data, text field)
    ("wikipedia", "web_en/wikipedia_en_sample.jsonl", "text"),
    ("speeches", "web_en/us_presidential_speeches.jsonl", "text"),
    ("web_pages", "web_en/trafilatura_eval_en_pages.jsonl", "text"),
    ("c4_pile", "web_en/cc_c4_pile_fixtures_by_source.jsonl", "text"),
    ("reviews", "web_en/movie_reviews_polarity_2000.jsonl.gz", "text"),
    ("news", "quality/article_extraction_benchmark.jsonl", "article_body"),
    ("web_non_en", "multilingual/trafilatura_eval_pages_non_en.jsonl.gz", "text"),
    ("code", "code/code_0*.jsonl.gz", "text"),
]
PER_SOURCE = 400  # documents drawn per source before cleaning
MIN_WORDS, MAX_WORDS = 60, 3000


@dataclass
class LabelledPairs:
    texts: list[str]
    pairs: np.ndarray  # (m, 2) document indices, i < j
    jaccard: np.ndarray  # true Jaccard of each pair
    kind: list[str]  # how the pair was made


def _tokens(text: str) -> list[tuple[str, str]]:
    """(word, following whitespace) pairs, so that edits keep the layout."""
    parts = re.split(r"(\s+)", text)
    if len(parts) % 2:
        parts.append("")
    return [(parts[i], parts[i + 1]) for i in range(0, len(parts), 2) if parts[i]]


def _join(tokens: list[tuple[str, str]]) -> str:
    return "".join(w + (s or " ") for w, s in tokens)


def _edit_words(tokens, target: float, rng: random.Random, vocab: list[str]):
    """Scattered word edits: each touches about two word 2-grams, so k of them on n words
    give J ~ (n - 2k) / (n + 2k)."""
    tokens = list(tokens)
    k = max(1, round(len(tokens) * (1 - target) / (2 * (1 + target))))
    for _ in range(k):
        i = rng.randrange(len(tokens))
        op = rng.random()
        if op < 0.5:
            tokens[i] = (rng.choice(vocab), tokens[i][1])
        elif op < 0.7 and len(tokens) > 2:
            del tokens[i]
        elif op < 0.9:
            tokens.insert(i, (rng.choice(vocab), " "))
        elif i + 1 < len(tokens):
            tokens[i], tokens[i + 1] = tokens[i + 1], tokens[i]
    return tokens


def _edit_block(tokens, target: float, rng: random.Random, other):
    """One block removed (J ~ (n - m) / n) or a block of another document inserted (J ~ n / (n + m))."""
    n = len(tokens)
    if rng.random() < 0.5:
        m = min(n - 2, round(n * (1 - target)))
        at = rng.randrange(n - m + 1)
        return tokens[:at] + tokens[at + m :]
    m = min(len(other), round(n * (1 / target - 1)))
    at = rng.randrange(n + 1)
    start = rng.randrange(len(other) - m + 1)
    return tokens[:at] + other[start : start + m] + tokens[at:]


def _edit_layout(tokens, rng: random.Random):
    """Whitespace and ASCII case only: the same shingle set (J = 1)."""
    out = []
    for w, s in tokens:
        if w.isascii() and rng.random() < 0.05:
            w = w.upper() if rng.random() < 0.5 else w.capitalize()
        out.append((w, rng.choice([" ", "  ", "\n", "\t"]) if rng.random() < 0.3 else s))
    return out


def _source_documents(pattern: str, field: str) -> list[str]:
    texts = []
    for path in sorted(DATA.glob(pattern)):
        texts += [r[field] for r in read_jsonl(path) if isinstance(r.get(field), str)]
    return texts


def _clean(texts: list[str], shingles: list[frozenset]) -> list[int]:
    """Indices of documents with no other document at true J >= 0.3 (the first of each
    such group stays): the base documents must not be near duplicates of one another.
    Candidates come from a loose banding (64 x 2), each then judged by its true Jaccard."""
    from tamis import minhash

    config = minhash.MinHashConfig(ngram=NGRAM, num_perm=128, bands=64, rows=2)
    sig, counts = minhash.signatures(pa.array(texts, pa.large_string()), config)
    a, b = minhash.candidate_edges(minhash.band_keys(sig, config), np.arange(len(texts)), counts > 0)
    dropped = set()
    for i, j in zip(a.tolist(), b.tolist()):
        if i not in dropped and j not in dropped and true_jaccard(shingles[i], shingles[j]) >= 0.3:
            dropped.add(max(i, j))
    return [i for i in range(len(texts)) if i not in dropped]


def perturbation_set(seed: int = 14) -> LabelledPairs:
    rng = random.Random(seed)
    texts, kinds, pairs = [], [], []
    for name, pattern, field in PERTURBATION_SOURCES:
        docs = []
        for text in _source_documents(pattern, field):
            n = len(_WORD.findall(text.encode("utf-8")))
            if MIN_WORDS <= n <= MAX_WORDS:
                docs.append(text)
        docs = rng.sample(docs, min(PER_SOURCE, len(docs)))
        keep = _clean(docs, [word_shingles(t) for t in docs])
        docs = [docs[i] for i in keep]
        split = len(docs) * 3 // 4
        base, material = docs[:split], docs[split:]
        token_lists = [_tokens(t) for t in docs]
        vocab = sorted({w for tokens in token_lists for w, _ in tokens})
        for i, text in enumerate(base):
            tokens = token_lists[i]
            # Most copies near the threshold, the rest spread over 0.5 .. 1.
            target = rng.uniform(0.72, 0.9) if rng.random() < 0.6 else rng.uniform(0.5, 1.0)
            kind = rng.choices(["words", "block", "words+block", "layout"], weights=[55, 25, 15, 5])[0]
            if kind == "layout":
                edited = _edit_layout(tokens, rng)
            elif kind == "words":
                edited = _edit_words(tokens, target, rng, vocab)
            elif kind == "block":
                edited = _edit_block(tokens, target, rng, token_lists[rng.randrange(len(token_lists))])
            else:
                half = target**0.5
                edited = _edit_words(
                    _edit_block(tokens, half, rng, token_lists[rng.randrange(len(token_lists))]), half, rng, vocab
                )
            pairs.append((len(texts), len(texts) + 1, f"copy:{kind}"))
            texts += [text, _join(edited)]
            kinds += [name, name]
        # Hard negatives: two different documents of this source inside one real header and
        # footer (another document of the source), at true Jaccard 0.55-0.9.
        for k in range(0, len(material) - 2, 3):
            frame, x, y = (token_lists[split + k + d] for d in range(3))
            frame = frame[:1500]
            target = rng.uniform(0.55, 0.9)
            body = max(1, round(len(frame) * (1 - target) / (2 * target)))
            cut = len(frame) // 2
            pairs.append((len(texts), len(texts) + 1, "template"))
            texts += [_join(frame[:cut] + x[:body] + frame[cut:]), _join(frame[:cut] + y[:body] + frame[cut:])]
            kinds += [name, name]
    # Shuffled, so that document order (which ranks ids) says nothing about the pairs.
    order = list(range(len(texts)))
    rng.shuffle(order)
    position = {old: new for new, old in enumerate(order)}
    texts = [texts[i] for i in order]
    shingles = [word_shingles(t) for t in texts]
    labelled = np.array([sorted((position[i], position[j])) for i, j, _ in pairs], dtype=np.int64)
    jaccard = np.array([true_jaccard(shingles[i], shingles[j]) for i, j in labelled])
    return LabelledPairs(texts, labelled, jaccard, [k for _, _, k in pairs])


# --------------------------------------------------------------------------- predictors


def tamis_survivors(texts: list[str], params: dict) -> tuple[np.ndarray, dict]:
    """The stage's reduce (``plan_drops``) over in-memory texts: the survivor of every
    document, and the summary metrics it would write to the manifest."""
    from tamis import minhash
    from tamis.stages.near_dedup import NearDedupParams, Signed, plan_drops

    p = NearDedupParams(**params)
    config = p.minhash_config()
    column = pa.array(texts, pa.large_string())
    sig, shingles = minhash.signatures(column, config)
    n = len(texts)
    ids = pa.array([f"{i:08d}" for i in range(n)])
    meta = pa.table(
        {
            "tier": pa.array(np.ones(n, np.int8)),
            "id": ids,
            "source": pa.nulls(n, pa.string()),
            "date": pa.nulls(n, pa.string()),
            "length": pa.array(np.arange(n), pa.int64()),
            "quality": pa.nulls(n, pa.float64()),
        }
    )
    plan = plan_drops(
        Signed(meta, sig, shingles),
        minhash.band_keys(sig, config),
        None,
        config,
        p,
        lambda rows: minhash.shingle_sets(column.take(pa.array(rows)), config),
    )
    survivor = np.arange(n)
    survivor[plan.dropped] = np.array([int(s) for s in plan.survivor_ids], dtype=np.int64)
    return survivor, dict(plan.summary)


def tamis_pairs_alone(texts: list[str], pairs: np.ndarray, params: dict) -> np.ndarray:
    """Each pair judged as a two-document corpus: a candidate when a band key is shared,
    a duplicate when verification passes (as ``plan_drops`` decides for two documents)."""
    from tamis import minhash
    from tamis.stages.near_dedup import NearDedupParams

    p = NearDedupParams(**params)
    config = p.minhash_config()
    column = pa.array(texts, pa.large_string())
    sig, shingles = minhash.signatures(column, config)
    keys = minhash.band_keys(sig, config)
    a, b = pairs[:, 0], pairs[:, 1]
    found = (keys[a] == keys[b]).any(axis=1) & (shingles[a] > 0) & (shingles[b] > 0)
    if p.verify == "exact":
        sets = minhash.shingle_sets(column, config)
        found &= minhash.passes(minhash.jaccard(sets, sets, a, b), p.threshold)
    elif p.verify == "estimate":
        found &= minhash.passes(minhash.similarity(sig[a], sig[b]), p.threshold)
    return found


def peer_hashes(texts: list[str]) -> list:
    from datasketch import MinHash

    hashes = []
    for text in texts:
        m = MinHash(num_perm=NUM_PERM)
        for word in text.split():
            m.update(word.encode("utf-8"))
        hashes.append(m)
    return hashes


def peer_neighbours(texts: list[str]) -> list[set]:
    from datasketch import MinHashLSH

    hashes = peer_hashes(texts)
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    for i, m in enumerate(hashes):
        lsh.insert(i, m)
    return [set(lsh.query(m)) - {i} for i, m in enumerate(hashes)]


def peer_pairs_alone(texts: list[str], pairs: np.ndarray) -> np.ndarray:
    from datasketch import MinHashLSH

    hashes = peer_hashes(texts)
    found = np.zeros(len(pairs), dtype=bool)
    for k, (i, j) in enumerate(pairs.tolist()):
        lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
        lsh.insert("a", hashes[i])
        found[k] = bool(lsh.query(hashes[j]))
    return found


def cluster_pairs(survivor: np.ndarray) -> set:
    """Every pair of documents that share a cluster."""
    out = set()
    order = np.argsort(survivor, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(survivor[order])) + 1)
    for g in groups:
        if len(g) > 1:
            g = sorted(g.tolist())
            out.update((g[x], g[y]) for x in range(len(g)) for y in range(x + 1, len(g)))
    return out


def neighbour_pairs(neighbours: list[set]) -> set:
    return {(min(i, j), max(i, j)) for i, ns in enumerate(neighbours) for j in ns}


# --------------------------------------------------------------------------- scoring


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


BIN_EDGES = [0.0] + [round(0.5 + 0.05 * k, 2) for k in range(10)] + [1.0]


def bin_labels() -> list[str]:
    return ["<0.50"] + [f"{e:.2f}" for e in BIN_EDGES[1:-1]] + ["=1.00"]


def bin_of(jaccard: np.ndarray) -> np.ndarray:
    inner = np.searchsorted(np.array(BIN_EDGES[1:-1]), jaccard + 1e-12, side="right")
    return np.where(jaccard >= 1.0 - 1e-12, len(BIN_EDGES) - 1, inner)


def score_perturbation(data: LabelledPairs, predicted: set, true_j) -> dict:
    """P/R/F1 over the labelled pairs plus every other predicted pair (judged by its true
    Jaccard), and the share found per true-Jaccard bin."""
    labelled = {tuple(p): j for p, j in zip(data.pairs.tolist(), data.jaccard.tolist())}
    extra = {p: true_j(*p) for p in predicted if p not in labelled}
    jaccard = np.array(list(labelled.values()) + list(extra.values()))
    found = np.array([p in predicted for p in labelled] + [True] * len(extra))
    positive = jaccard >= THRESHOLD - 1e-12
    tp = int(np.count_nonzero(found & positive))
    fp = int(np.count_nonzero(found & ~positive))
    fn = int(np.count_nonzero(~found & positive))
    bins = bin_of(jaccard)
    per_bin = [
        (int(np.count_nonzero(bins == k)), int(np.count_nonzero(found & (bins == k)))) for k in range(len(BIN_EDGES))
    ]
    return {"prf": prf(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn, "extra": len(extra), "per_bin": per_bin}


PERTURBATION_VARIANTS = {
    "tamis default (exact)": {},
    "tamis default, estimate": {"verify": "estimate"},
    "tamis previous 9x13, estimate": {"bands": 9, "rows": 13, "verify": "estimate"},
    "tamis 256 perms (exact)": {"num_perm": 256},
    "tamis 256 perms, estimate": {"num_perm": 256, "verify": "estimate"},
}


def perturbation() -> None:
    started = time.time()
    data = perturbation_set()
    shingles = [word_shingles(t) for t in data.texts]

    def true_j(i, j):
        return true_jaccard(shingles[i], shingles[j])

    positives = int(np.count_nonzero(data.jaccard >= THRESHOLD))
    near = int(np.count_nonzero((data.jaccard >= 0.75) & (data.jaccard < 0.85)))
    print(
        f"\n== perturbation set: {len(data.texts)} documents, {len(data.pairs)} labelled pairs "
        f"({positives} at true J >= {THRESHOLD}, {near} at 0.75-0.85, "
        f"{sum(k == 'template' for k in data.kind)} template pairs); built in {time.time() - started:.0f}s =="
    )
    results = {}
    for label, params in PERTURBATION_VARIANTS.items():
        t0 = time.time()
        survivor, summary = tamis_survivors(data.texts, params)
        elapsed = time.time() - t0
        results[label] = score_perturbation(data, cluster_pairs(survivor), true_j)
        results[label]["note"] = (
            f"{summary.get('near_dup.candidate_pairs', 0)} candidates, "
            f"{summary.get('near_dup.verified_pairs', 0)} verified, {elapsed:.1f}s"
        )
    t0 = time.time()
    results["peer: datasketch words"] = score_perturbation(data, neighbour_pairs(peer_neighbours(data.texts)), true_j)
    results["peer: datasketch words"]["note"] = f"{time.time() - t0:.1f}s"
    print(f"{'method':<32}{'P':>7}{'R':>7}{'F1':>7}{'TP':>6}{'FP':>5}{'FN':>5}   (extra predicted pairs judged)  notes")
    for label, r in results.items():
        p, rec, f = r["prf"]
        print(
            f"{label:<32}{p:>7.3f}{rec:>7.3f}{f:>7.3f}{r['tp']:>6}{r['fp']:>5}{r['fn']:>5}   ({r['extra']})  {r['note']}"
        )
    print(
        f"\nshare of pairs predicted duplicate, per bin of true Jaccard (bins >= {THRESHOLD}: recall; below: false positives)"
    )
    labels = list(results)
    print(f"{'true J':<8}{'pairs':>7}" + "".join(f"{lab.replace('tamis ', '')[:22]:>24}" for lab in labels))
    for k, name in enumerate(bin_labels()):
        n = results[labels[0]]["per_bin"][k][0]
        cells = []
        for lab in labels:
            total, hit = results[lab]["per_bin"][k]
            cells.append(f"{hit / total:>18.3f} ({total:>3})" if total else f"{'-':>24}")
        print(f"{name:<8}{n:>7}" + "".join(cells))


# --------------------------------------------------------------------------- labelled sets


def labelled_sets() -> dict[str, tuple[list[str], set, set]]:
    """name -> (texts, positive pairs, negative pairs) with pairs as (i, j), i < j."""
    sets = {}
    cpython = read_jsonl(NEAR_DUP / "cpython_3.11.2_vs_3.11.7_pairs.jsonl.gz")
    texts = [r["text_a"] for r in cpython] + [r["text_b"] for r in cpython]
    n = len(cpython)
    pos = {(i, i + n) for i in range(n)}
    sets["cpython"] = (texts, pos, _all_pairs(len(texts)) - pos)

    licences = [
        (r["text"], _licence(r["declared_license"])) for r in read_jsonl(NEAR_DUP / "license_texts_clusters.jsonl")
    ]
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
    pos = {
        tuple(sorted((i, where[(r["cluster"], r["version_index"] + 1)])))
        for i, r in enumerate(readmes)
        if (r["cluster"], r["version_index"] + 1) in where
    }
    neg = {
        (i, j)
        for i in range(len(readmes))
        for j in range(i + 1, len(readmes))
        if readmes[i]["cluster"] != readmes[j]["cluster"]
    }
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
    "mit": "MIT",
    "mit license": "MIT",
    "isc": "ISC",
    "isc license": "ISC",
    "apache-2.0": "Apache-2.0",
    "apache license 2.0": "Apache-2.0",
    "apache 2.0": "Apache-2.0",
    "asl 2": "Apache-2.0",
    "bsd-3-clause": "BSD-3-Clause",
    "modified bsd license": "BSD-3-Clause",
    "bsd 3-clause license": "BSD-3-Clause",
    "bsd-2-clause": "BSD-2-Clause",
    "blueoak-1.0.0": "BlueOak-1.0.0",
    "mpl-2.0": "MPL-2.0",
    "mit-0": "MIT-0",
    "psf-2.0": "PSF-2.0",
}


def _licence(declared: str | None) -> str | None:
    """One well-known licence name, or None (missing, compound, free text: not a usable label)."""
    return _LICENCE_NAMES.get((declared or "").strip().lower())


def score(predicted, pos: set, neg: set) -> tuple[int, int, int]:
    tp = sum(1 for p in pos if predicted(p))
    fp = sum(1 for p in neg if predicted(p))
    return tp, fp, len(pos) - tp


def tamis_predictor(texts: list[str], params: dict, pairs: list | None):
    if pairs is not None:  # STS pairs are judged one by one, as two-document corpora
        found = dict(zip(pairs, tamis_pairs_alone(texts, np.array(pairs, dtype=np.int64), params).tolist()))
        return lambda pair: found[pair]
    survivor, _ = tamis_survivors(texts, params)
    return lambda pair: survivor[pair[0]] == survivor[pair[1]]


def peer_predictor(texts: list[str], pairs: list | None):
    if pairs is not None:
        found = dict(zip(pairs, peer_pairs_alone(texts, np.array(pairs, dtype=np.int64)).tolist()))
        return lambda pair: found[pair]
    neighbours = peer_neighbours(texts)
    return lambda pair: pair[1] in neighbours[pair[0]]


def accuracy(variants: dict[str, dict]) -> None:
    sets = labelled_sets()
    print(f"\n== labelled sets: duplicate-pair detection, threshold {THRESHOLD} ==")
    print(f"{'method':<34}{'set':<9}{'pos':>7}{'neg':>9}{'P':>7}{'R':>7}{'F1':>7}")
    results: dict[str, list] = {}
    methods = [("peer: datasketch words", None)] + [(f"tamis: {name}", params) for name, params in variants.items()]
    for label, params in methods:
        totals = np.zeros(3, dtype=np.int64)
        f1s = []
        for name, (texts, pos, neg) in sets.items():
            pairs = sorted(pos | neg) if name == "stsb" else None
            predicted = peer_predictor(texts, pairs) if params is None else tamis_predictor(texts, params, pairs)
            tp, fp, fn = score(predicted, pos, neg)
            totals += (tp, fp, fn)
            p, r, f = prf(tp, fp, fn)
            f1s.append(f)
            print(f"{label:<34}{name:<9}{len(pos):>7}{len(neg):>9}{p:>7.3f}{r:>7.3f}{f:>7.3f}")
        p, r, f = prf(*totals)
        results[label] = [p, r, f, float(np.mean(f1s))]
        print(f"{label:<34}{'ALL':<9}{'':>7}{'':>9}{p:>7.3f}{r:>7.3f}{f:>7.3f}   macro-F1 {np.mean(f1s):.3f}")
    peer = results["peer: datasketch words"]
    for label, (_, _, f, macro) in results.items():
        if label.startswith("tamis"):
            print(
                f"{label}: pooled F1 {f:.3f} vs peer {peer[2]:.3f} (ratio {f / peer[2]:.2f}); "
                f"macro F1 {macro:.3f} vs {peer[3]:.3f} (ratio {macro / peer[3]:.2f})"
            )


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
            rows.append(
                {"id": f"{source}/{i:07d}-c{copy}", "source": f"{source}_copy", "date": "2026-11-21", "text": t}
            )
            size += len(t.encode())
            if size >= target_mb * 1e6:
                break
    rng.shuffle(rows)
    from bench_corpus import write_committed_dataset

    write_committed_dataset(rows, root, parts)
    return str(root), len(rows), size


def run_stage_in_process(input_url: str, output_url: str, workers: int, params: dict | None = None) -> dict:
    """The stage in a fresh interpreter, so that its peak RSS is its own."""
    out = subprocess.run(
        [sys.executable, __file__, "_stage", input_url, output_url, str(workers), json.dumps(params or {})],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _stage_child(input_url: str, output_url: str, workers: int, params: dict) -> None:
    import threading

    import psutil

    from tamis.runner import run_stage
    from tamis.stages.near_dedup import NearDedup

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

    def cpu_s() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    # The stage's own CPU time, as the peer's is its loop's: interpreter start and imports excluded.
    cpu_before = cpu_s()
    started = time.time()
    manifest = run_stage(NearDedup(params), input_url, output_url, workers=workers)
    elapsed = time.time() - started
    done.set()
    cpu = cpu_s() - cpu_before
    status = Path("/proc/self/status").read_text()
    rss_self = int(status.split("VmHWM:")[1].split()[0]) / 1024  # this process's own peak since exec
    rss_children = worker_peak[0] / 2**20
    print(
        json.dumps(
            {
                "elapsed_s": elapsed,
                "cpu_s": cpu,
                "counts": manifest["counts"],
                "rss_main_mb": rss_self,
                "rss_worker_mb": rss_children,
                "metrics": manifest["metrics"],
            }
        )
    )


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
        print(
            f"peer (datasketch per-word + MinHashLSH), 1 core, on a {subset_bytes / 1e6:.1f} MB subset: "
            f"{peer_docs:.0f} docs/s, {peer_mbs:.2f} MB/s -> {mb / peer_mbs:.0f}s extrapolated to the corpus"
        )
        results = {}
        runs = [
            ("default", 1, {}),
            ("default", 2, {}),
            ("previous 9x13, estimate", 1, {"bands": 9, "rows": 13, "verify": "estimate"}),
            ("256 perms", 1, {"num_perm": 256}),
        ]
        for label, workers, params in runs:
            r = run_stage_in_process(input_url, str(tmp / "out"), workers, params)
            shutil.rmtree(tmp / "out", ignore_errors=True)
            results[(label, workers)] = r
            c, m = r["counts"], r["metrics"]
            print(
                f"tamis stage, {label}, {workers} worker(s): {r['elapsed_s']:.1f}s wall ({r['cpu_s']:.1f}s CPU), "
                f"{c['in'] / r['elapsed_s']:.0f} docs/s, {mb / r['elapsed_s']:.1f} MB/s, dropped {c['dropped']} of {c['in']}, "
                f"{m.get('near_dup.candidate_pairs', 0)} candidates, {m.get('near_dup.verified_pairs', 0)} verified, "
                f"peak RSS main {r['rss_main_mb']:.0f} MB / worker {r['rss_worker_mb']:.0f} MB"
            )
            if workers == 1:
                print(
                    f"  vs peer on 1 core: {peer_s / (subset_bytes / 1e6) * mb / r['elapsed_s']:.1f}x by wall time, "
                    f"{peer_s / (subset_bytes / 1e6) * mb / r['cpu_s']:.1f}x by CPU time (peer: CPU time)"
                )
        print(
            f"scaling 1 -> 2 workers: {results[('default', 1)]['elapsed_s'] / results[('default', 2)]['elapsed_s']:.2f}x "
            f"(machine has {os.cpu_count()} cores)"
        )
        metrics = results[("default", 1)]["metrics"]
        print("manifest figures of the default run:")
        for prefix in ("near_dup.s_curve.", "near_dup.candidates_by_jaccard.", "near_dup.verified_by_jaccard."):
            print(
                "  "
                + prefix
                + "*: "
                + ", ".join(f"{k[len(prefix) :]}={v}" for k, v in metrics.items() if k.startswith(prefix))
            )
        if args.rss_scale > 1:
            big_url, big_docs, big_size = build_corpus(tmp / "corpus-big", args.corpus_mb * args.rss_scale, seed=2)
            r = run_stage_in_process(big_url, str(tmp / "out-big"), 1)
            print(
                f"tamis stage at {big_size / 1e6:.0f} MB ({big_docs} docs), 1 worker: {r['elapsed_s']:.1f}s, "
                f"{big_size / 1e6 / r['elapsed_s']:.1f} MB/s, peak RSS {r['rss_main_mb']:.0f} MB "
                f"(vs {results[('default', 1)]['rss_main_mb']:.0f} MB at {mb:.0f} MB)"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


VARIANTS = {
    "word 2-grams (default)": {},
    "previous 9x13, estimate": {"bands": 9, "rows": 13, "verify": "estimate"},
    "word 5-grams": {"ngram": 5},
    "word 3-grams": {"ngram": 3},
    "word 1-grams": {"ngram": 1},
    "char 5-grams": {"shingle": "char", "ngram": 5},
}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_stage":
        _stage_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), json.loads(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus-mb", type=float, default=100.0)
    parser.add_argument("--peer-mb", type=float, default=4.0)
    parser.add_argument("--rss-scale", type=float, default=4.0)
    parser.add_argument("--data", type=Path, default=DATA, help="the evaluation corpora (default ../shared/data)")
    parser.add_argument("--skip-perturbation", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    set_data(args.data)
    print_s_curve()
    if not args.skip_perturbation:
        perturbation()
    if not args.skip_accuracy:
        accuracy(VARIANTS)
    if not args.skip_speed:
        speed(args)


if __name__ == "__main__":
    main()
