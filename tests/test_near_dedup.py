"""Near-duplicate removal: MinHash + LSH + exact verification + connected components,
local and incremental."""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import TEST_DATA, read_jsonl, write_dataset
from tamis import minhash
from tamis.dataset import Dataset
from tamis.runner import run_stage
from tamis.stages import near_dedup
from tamis.stages.near_dedup import CLUSTERS_FILE, IndexMismatch, NearDedup, NearDedupParams

SAMPLE = Path(__file__).resolve().parents[1] / "include" / "sample" / "web" / "date=2026-11-20"
THRESHOLD = 0.8


def sample_docs(name: str = "wikipedia.jsonl", limit: int | None = None) -> list[dict]:
    docs = [json.loads(line) for line in (SAMPLE / name).read_text().splitlines()]
    return docs[:limit]


def perturb(text: str, seed: int, rate: float = 0.004) -> str:
    """A near copy: about ``rate`` of the words replaced, as an edit or a template change would."""
    rng = random.Random(seed)
    words = text.split()
    for _ in range(max(1, int(len(words) * rate))):
        words[rng.randrange(len(words))] = f"edit{rng.randrange(10**6)}"
    return " ".join(words)


def record(id_: str, text: str, source: str = "wiki", date: str = "2026-11-20", **extra) -> dict:
    return {"id": id_, "source": source, "date": date, "url": None, "text": text, **extra}


def dropped_pairs(url: str) -> dict[str, str]:
    side = Dataset(url).read_side("dropped")
    return {r["id"]: r["detail"] for r in side.to_pylist()} if side.num_rows else {}


def word_ngrams(text: str, n: int = 2) -> set[tuple[bytes, ...]]:
    """Word n-grams as the stage defines words (ASCII letters, digits, '_' and non-ASCII
    bytes, ASCII-lowercased), computed independently of it."""
    words = [w.lower() for w in re.findall(rb"[A-Za-z0-9_\x80-\xff]+", text.encode())]
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)} or ({tuple(words)} if words else set())


def true_jaccard(a: str, b: str, n: int = 2) -> float:
    x, y = word_ngrams(a, n), word_ngrams(b, n)
    return len(x & y) / len(x | y) if x | y else 0.0


def copy_at_threshold(text: str, seed: int, above: bool) -> str:
    """An edited copy whose true word 2-gram Jaccard with ``text`` lies right above (>=) or
    right below (<) THRESHOLD: a fixed sequence of word substitutions, cut where the
    Jaccard crosses the threshold (found by bisection, one substitution apart)."""
    words = text.split()
    rng = random.Random(seed)
    edits = [(rng.randrange(len(words)), f"edit{rng.randrange(10**9)}") for _ in range(len(words))]

    def edited(k: int) -> str:
        out = list(words)
        for i, token in edits[:k]:
            out[i] = token
        return " ".join(out)

    lo, hi = 0, len(edits)  # true_jaccard(edited(lo)) >= THRESHOLD > true_jaccard(edited(hi))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if true_jaccard(text, edited(mid)) >= THRESHOLD:
            lo = mid
        else:
            hi = mid
    return edited(lo if above else hi)


@lru_cache(maxsize=1)
def threshold_pairs() -> tuple[list[dict], list[dict], dict[str, str], dict[str, float]]:
    """Real documents (movie reviews, Wikipedia articles, web pages from tests/data), and one
    edited copy of each right at the threshold: every other copy just above it, the rest
    just below. Returns (originals, copies, {above copy: its original}, {copy: true J})."""
    texts = [r["text"] for r in read_jsonl(TEST_DATA / "web_en" / "movie_reviews_polarity_2000.jsonl.gz", 40)]
    texts += [
        r["text"]
        for r in read_jsonl(TEST_DATA / "web_en" / "wikipedia_en_sample.jsonl.gz")
        if 300 <= len(r["text"].split()) <= 4000
    ][:14]
    texts += [
        r["text"]
        for r in read_jsonl(TEST_DATA / "web_en" / "cc_c4_pile_fixtures_by_source.jsonl.gz")
        if 300 <= len(r["text"].split()) <= 4000
    ][:12]
    originals, copies, expected, jaccard = [], [], {}, {}
    for i, text in enumerate(texts):
        above = i % 2 == 0
        copy = copy_at_threshold(text, seed=i, above=above)
        originals.append(record(f"orig/{i:03d}", text, source="orig"))
        copy_id = f"copy/{i:03d}-{'above' if above else 'below'}"
        copies.append(record(copy_id, copy, source="copy", date="2026-11-21"))
        jaccard[copy_id] = true_jaccard(text, copy)
        if above:
            expected[copy_id] = f"orig/{i:03d}"
    return originals, copies, expected, jaccard


@pytest.fixture
def corpus(tmp_path) -> tuple[str, dict[str, str]]:
    """Two parts of real Wikipedia articles; the second also holds near copies of five of them."""
    docs = sample_docs(limit=24)
    originals = [record(f"wiki/{i:03d}", d["text"]) for i, d in enumerate(docs)]
    copies = [
        record(f"copy/{i:03d}", perturb(docs[i]["text"], seed=i), source="mirror", date="2026-11-21")
        for i in (1, 4, 9, 16, 20)
    ]
    url = write_dataset(tmp_path / "in", {"p0": originals[:12], "p1": originals[12:] + copies})
    return url, {c["id"]: f"wiki/{int(c['id'][-3:]):03d}" for c in copies}


def test_bands_for_recall_reach_the_recall_with_the_fewest_candidates_below_the_threshold():
    grid = np.linspace(0.0, 1.0, 2001)
    for threshold, num_perm, recall in (
        (0.8, 128, 0.97),
        (0.8, 256, 0.97),
        (0.7, 64, 0.9),
        (0.9, 128, 0.99),
        (0.5, 128, 0.97),
    ):
        bands, rows = minhash.bands_for_recall(threshold, num_perm, recall)
        assert bands * rows <= num_perm
        at_threshold = 1 - (1 - threshold**rows) ** bands
        assert at_threshold >= recall
        below = grid[grid <= threshold]

        def area(b, r, below=below):
            return np.trapezoid(1 - (1 - below**r) ** b, below)

        # No other banding that reaches the recall makes fewer candidates below the threshold.
        feasible = [
            (b, r)
            for r in range(1, num_perm + 1)
            for b in range(1, num_perm // r + 1)
            if 1 - (1 - threshold**r) ** b >= recall
        ]
        assert area(bands, rows) <= min(area(b, r) for b, r in feasible) + 1e-9
    with pytest.raises(ValueError, match="raise num_perm"):
        minhash.bands_for_recall(0.5, 2, 0.9)  # at best 1 - 0.5^2 = 0.75


def test_default_banding_makes_a_candidate_of_97_percent_of_the_pairs_at_the_threshold():
    params = NearDedupParams()
    config = params.minhash_config()
    assert params.candidate_recall == 0.97 and params.threshold == THRESHOLD
    assert minhash.candidate_probability(THRESHOLD, config.bands, config.rows) >= 0.97


def test_s_curve_gives_the_candidate_probability_from_half_to_one():
    curve = minhash.s_curve(15, 7)
    grid = [j for j, _ in curve.points]
    assert grid == pytest.approx([0.5 + 0.05 * k for k in range(11)])
    for j, p in curve.points:
        assert p == pytest.approx(1 - (1 - j**7) ** 15, abs=1e-12)
    probabilities = [p for _, p in curve.points]
    assert probabilities == sorted(probabilities) and probabilities[-1] == 1.0
    assert curve.effective_threshold == pytest.approx((1 / 15) ** (1 / 7))
    assert 0.3 < minhash.candidate_probability(curve.effective_threshold, 15, 7) < 0.7


def test_exact_jaccard_of_shingle_sets_matches_python_sets():
    config = minhash.MinHashConfig(ngram=2)
    texts = [d["text"] for d in sample_docs(limit=6)]
    texts += [perturb(t, seed=k, rate=0.08) for k, t in enumerate(texts)] + ["", "One", "one two", "Two one two"]
    sets = minhash.shingle_sets(pa.array(texts), config)
    assert sets.sizes.tolist() == [len(word_ngrams(t)) for t in texts]
    a = np.array([i for i in range(len(texts)) for _ in range(len(texts))])
    b = np.array([j for _ in range(len(texts)) for j in range(len(texts))])
    exact = minhash.jaccard(sets, sets, a, b, chunk=5000)  # small runs: pairs span several chunks
    expected = [true_jaccard(texts[i], texts[j]) for i, j in zip(a, b)]
    assert exact.tolist() == pytest.approx(expected, abs=1e-4)
    # Two containers (as in the Spark job, one per side of the pairs) give the same figures.
    reversed_sets = minhash.ShingleSets.from_arrow(sets.take(np.arange(len(texts))[::-1]).to_arrow())
    assert minhash.jaccard(sets, reversed_sets, a, len(texts) - 1 - b).tolist() == exact.tolist()


def test_signature_verdicts_settle_only_what_a_binomial_tail_below_1e_9_allows():
    num_perm, threshold = 128, THRESHOLD
    agree = np.arange(num_perm + 1)
    accept, reject = minhash.signature_verdicts(agree / num_perm, threshold, num_perm)

    def tail(ks):  # P(K in ks) for K ~ Binomial(num_perm, threshold)
        return sum(math.comb(num_perm, k) * threshold**k * (1 - threshold) ** (num_perm - k) for k in ks)

    first_accept, last_reject = agree[accept].min(), agree[reject].max()
    assert tail(range(first_accept, num_perm + 1)) <= 1e-9 < tail(range(first_accept - 1, num_perm + 1))
    assert tail(range(0, last_reject + 1)) <= 1e-9 < tail(range(0, last_reject + 2))
    assert accept[num_perm] and reject[0] and not (accept | reject)[round(threshold * num_perm)]


def test_signature_similarity_estimates_word_ngram_jaccard():
    config = minhash.MinHashConfig(ngram=3)
    texts = [d["text"] for d in sample_docs(limit=6)]
    variants = [perturb(t, seed=7, rate=0.05) for t in texts]
    sig, _ = minhash.signatures(pa.array(texts + variants), config)
    for i in range(len(texts)):
        a, b = word_ngrams(texts[i], 3), word_ngrams(variants[i], 3)
        exact = len(a & b) / len(a | b)
        estimate = float(minhash.similarity(sig[i : i + 1], sig[len(texts) + i : len(texts) + i + 1])[0])
        assert abs(estimate - exact) < 0.15, (i, exact, estimate)
    unrelated = minhash.similarity(sig[:1], sig[1:2])[0]
    assert unrelated < 0.1


def test_shingles_ignore_case_and_punctuation_and_count_short_documents():
    config = minhash.MinHashConfig(ngram=3)
    hashes, counts = minhash.shingle_hashes(
        pa.array(["The cat sat, on the mat.", "the CAT sat on  the mat", "", None, "hi"]), config
    )
    assert counts.tolist() == [4, 4, 0, 0, 1]
    assert hashes[:4].tolist() == hashes[4:8].tolist()
    char_hashes, char_counts = minhash.shingle_hashes(
        pa.array(["naïve café", "ab"]), minhash.MinHashConfig(shingle="char", ngram=5)
    )
    assert char_counts.tolist() == [len("naïve café") - 4, 1]


def test_shingles_of_a_document_do_not_depend_on_its_neighbours_in_the_batch():
    # Documents are hashed as one concatenated buffer: words must not run across them.
    texts = ["ends with a word", "", "", "starts", "Starts", "  spaced  ", "x"] + [
        d["text"] for d in sample_docs(limit=3)
    ]
    for shingle in ("word", "char"):
        config = minhash.MinHashConfig(shingle=shingle, ngram=2)
        together, counts = minhash.shingle_hashes(pa.array(texts), config)
        alone = [minhash.shingle_hashes(pa.array([t]), config)[0] for t in texts]
        assert counts.tolist() == [len(a) for a in alone]
        assert together.tolist() == np.concatenate(alone).tolist()
    hashes, _ = minhash.shingle_hashes(pa.array(["starts", "Starts"]), minhash.MinHashConfig(ngram=2))
    assert hashes[0] == hashes[1]


def _word_shingles_by_definition(text: str, n: int, lowercase: bool) -> list[int]:
    """The word shingles as minhash documents them, one Python step at a time."""
    mask = (1 << 64) - 1

    def mix(x: int) -> int:
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    units = []
    for word in re.findall(rb"[A-Za-z0-9_\x80-\xff]+", text.encode()):
        if lowercase:
            word = word.lower()  # bytes.lower folds ASCII only
        h = sum(b * pow(int(minhash._Q), t, 1 << 64) for t, b in enumerate(word)) & mask
        units.append(mix(h ^ ((len(word) * int(minhash._LEN_MIX)) & mask)))
    combine = [int(c) for c in minhash._COMBINE]
    if n == 1:
        return units
    if 0 < len(units) < n:
        return [mix(sum(u * c for u, c in zip(units, combine)) & mask)]
    return [mix(sum(u * c for u, c in zip(units[i : i + n], combine)) & mask) for i in range(len(units) - n + 1)]


@pytest.mark.parametrize("ngram,lowercase", [(1, True), (2, True), (3, False), (5, True)])
def test_word_shingles_are_the_documented_hashes(ngram, lowercase):
    rng = random.Random(ngram)
    pieces = ["a", "B", "é", "中", "_", "1", " ", "\n", "-", ".", "AbC", "x y", "\U0001f600", "Ünïcode"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randrange(0, 25))) for _ in range(1500)]
    texts += [d["text"] for d in sample_docs(limit=3)]
    hashes, counts = minhash.shingle_hashes(pa.array(texts), minhash.MinHashConfig(ngram=ngram, lowercase=lowercase))
    expected = [_word_shingles_by_definition(t, ngram, lowercase) for t in texts]
    assert counts.tolist() == [len(e) for e in expected]
    assert hashes.tolist() == [h for e in expected for h in e]


def test_stage_drops_near_copies_and_names_the_survivor(corpus, tmp_path):
    input_url, expected = corpus
    manifest = run_stage(NearDedup({}), input_url, str(tmp_path / "out"))
    assert dropped_pairs(str(tmp_path / "out")) == expected
    counts = manifest["counts"]
    assert counts == {"in": 29, "kept": 24, "dropped": 5, "quarantined": 0}
    assert manifest["drop_reasons"] == {"near_duplicate": 5}
    assert manifest["metrics"]["near_dup.mirror.dropped"] == 5
    assert manifest["metrics"]["near_dup.mirror.in"] == 5
    assert "near_dup.wiki.dropped" not in manifest["metrics"]
    kept_ids = set(Dataset(str(tmp_path / "out")).read(["id"]).column("id").to_pylist())
    assert kept_ids.isdisjoint(expected) and set(expected.values()) <= kept_ids


def test_cluster_report_lists_members_and_sample_similarities(corpus, tmp_path):
    input_url, expected = corpus
    run_stage(NearDedup({"sample_pairs": 3}), input_url, str(tmp_path / "out"))
    clusters = pq.read_table(tmp_path / "out" / CLUSTERS_FILE).to_pylist()
    assert {c["survivor_id"]: c["duplicate_ids"] for c in clusters} == {v: [k] for k, v in expected.items()}
    for c in clusters:
        assert c["size"] == 2
        (pair,) = c["sample_pairs"]
        assert (pair["id_a"], pair["id_b"]) == (c["survivor_id"], c["duplicate_ids"][0])
        assert 0.8 <= pair["similarity"] <= 1.0


def test_two_workers_give_the_same_result_as_one(corpus, tmp_path):
    input_url, _ = corpus
    run_stage(NearDedup({}), input_url, str(tmp_path / "one"), workers=1)
    run_stage(NearDedup({}), input_url, str(tmp_path / "two"), workers=2)
    assert dropped_pairs(str(tmp_path / "one")) == dropped_pairs(str(tmp_path / "two"))


def test_keep_rules_pick_longest_or_highest_quality(tmp_path):
    text = sample_docs(limit=1)[0]["text"]
    rows = [
        record("a/1", text, quality=0.2),
        record("a/2", text + " An appended closing line.", quality=0.1),
        record("a/3", perturb(text, seed=3), quality=0.9, date="2026-11-22"),
    ]
    url = write_dataset(tmp_path / "in", {"p": rows})
    for keep, extra, survivor in (
        ("first", {}, "a/1"),
        ("longest", {}, "a/2"),
        ("highest_quality", {"quality_column": "quality"}, "a/3"),
    ):
        out = str(tmp_path / keep)
        run_stage(NearDedup({"keep": keep, **extra}), url, out)
        drops = dropped_pairs(out)
        assert set(drops.values()) == {survivor}, keep
        assert survivor not in drops and len(drops) == 2


def test_verification_removes_pairs_below_the_threshold(tmp_path):
    # With a single row per band every shared shingle min makes a candidate: verification must
    # then reject the pairs whose estimated Jaccard is far below the threshold.
    docs = sample_docs(limit=8)
    rows = [record(f"w/{i}", d["text"]) for i, d in enumerate(docs)]
    rows += [record("w/half", " ".join(docs[0]["text"].split()[: len(docs[0]["text"].split()) // 2]))]
    url = write_dataset(tmp_path / "in", {"p": rows})
    loose = {"bands": 64, "rows": 1, "threshold": 0.8}
    run_stage(NearDedup({**loose, "verify": "off"}), url, str(tmp_path / "raw"))
    run_stage(NearDedup({**loose, "verify": "exact"}), url, str(tmp_path / "verified"))
    raw, verified = dropped_pairs(str(tmp_path / "raw")), dropped_pairs(str(tmp_path / "verified"))
    assert "w/half" in raw
    assert verified == {}


def test_threshold_pairs_sit_right_at_the_threshold():
    _, copies, expected, jaccard = threshold_pairs()
    above = [j for c, j in jaccard.items() if c in expected]
    below = [j for c, j in jaccard.items() if c not in expected]
    assert len(above) >= 30 and len(below) >= 30
    assert all(THRESHOLD <= j < THRESHOLD + 0.01 for j in above)
    assert all(THRESHOLD - 0.01 <= j < THRESHOLD for j in below)


# Every near pair is a candidate under 64 bands of 2 rows (probability 1 - 1e-28 at J = 0.8),
# so verification alone decides: the exact Jaccard must split the pairs at the threshold.
VERIFY_ONLY = {"bands": 64, "rows": 2}


@pytest.mark.parametrize("params", [VERIFY_ONLY, {}], ids=["verification", "default"])
def test_stage_splits_pairs_right_at_the_threshold(tmp_path, params):
    originals, copies, expected, _ = threshold_pairs()
    url = write_dataset(tmp_path / "in", {"p0": originals[::2] + copies[1::2], "p1": originals[1::2] + copies[::2]})
    manifest = run_stage(NearDedup(params), url, str(tmp_path / "out"))
    drops = dropped_pairs(str(tmp_path / "out"))
    # Precision is exact: nothing below the threshold goes, and each copy names its original.
    assert {copy: expected[copy] for copy in drops} == drops
    if params:
        assert drops == expected
    else:
        # The default banding makes a candidate of 97 % of the pairs at exactly the threshold.
        assert len(drops) >= 0.9 * len(expected)
    metrics = manifest["metrics"]
    assert metrics["near_dup.verified_pairs"] == len(drops)
    assert metrics["near_dup.verified_by_jaccard.0.80"] == len(drops)  # all in [0.80, 0.85)
    assert (
        sum(v for k, v in metrics.items() if k.startswith("near_dup.candidates_by_jaccard."))
        == metrics["near_dup.candidate_pairs"]
    )
    assert metrics["near_dup.exact_jaccard_pairs"] >= len(drops)  # no signature settles a pair at 0.80


def test_incremental_index_splits_pairs_right_at_the_threshold_as_one_run_does(tmp_path):
    originals, copies, expected, _ = threshold_pairs()
    whole = write_dataset(tmp_path / "whole", {"p0": originals, "p1": copies})
    run_stage(NearDedup({}), whole, str(tmp_path / "out-whole"))
    index_url = str(tmp_path / "index")
    first = write_dataset(tmp_path / "batch1", {"b1": originals})
    run_stage(NearDedup({"index_url": index_url}), first, str(tmp_path / "out1"))
    # The originals' text is gone: the copies meet them only through the index's shingle sets.
    shutil.rmtree(tmp_path / "batch1")
    second = write_dataset(tmp_path / "batch2", {"b2": copies})
    manifest = run_stage(NearDedup({"index_url": index_url}), second, str(tmp_path / "out2"))
    drops = dropped_pairs(str(tmp_path / "out2"))
    assert drops == dropped_pairs(str(tmp_path / "out-whole"))
    assert {copy: expected[copy] for copy in drops} == drops and len(drops) >= 0.9 * len(expected)
    assert manifest["metrics"]["near_dup.dropped_for_index"] == len(drops)
    assert manifest["metrics"]["near_dup.exact_jaccard_pairs"] >= len(drops)


def test_manifest_shows_the_s_curve_of_the_banding(corpus, tmp_path):
    input_url, _ = corpus
    params = {"num_perm": 64, "candidate_recall": 0.9}
    metrics = run_stage(NearDedup(params), input_url, str(tmp_path / "out"))["metrics"]
    config = NearDedupParams(**params).minhash_config()
    assert (metrics["near_dup.s_curve.bands"], metrics["near_dup.s_curve.rows"]) == (config.bands, config.rows)
    assert metrics["near_dup.s_curve.effective_threshold"] == pytest.approx(
        (1 / config.bands) ** (1 / config.rows), abs=1e-6
    )
    for k in range(11):
        j = 0.5 + 0.05 * k
        assert metrics[f"near_dup.s_curve.{j:.2f}"] == pytest.approx(1 - (1 - j**config.rows) ** config.bands, abs=1e-6)
    assert (
        sum(v for k, v in metrics.items() if k.startswith("near_dup.verified_by_jaccard."))
        == metrics["near_dup.verified_pairs"]
        == 5
    )


def test_bad_input_empty_one_word_huge_and_repeated_documents(tmp_path):
    text = sample_docs(limit=1)[0]["text"]
    huge = (text + "\n") * (10_000_000 // len(text) + 1)
    identical = [record(f"same/{i:05d}", "The same short notice, repeated across many pages.") for i in range(10_000)]
    rows = [
        record("bad/empty1", ""),
        record("bad/empty2", ""),
        record("bad/word1", "hello"),
        record("bad/word2", "hello"),
        record("bad/huge", huge),
        record("bad/huge-copy", perturb(huge, seed=1, rate=0.0001)),
    ]
    url = write_dataset(tmp_path / "in", {"odd": rows, "same": identical})
    manifest = run_stage(NearDedup({}), url, str(tmp_path / "out"))
    c = manifest["counts"]
    assert c["in"] == c["kept"] + c["dropped"] + c["quarantined"] == 10_006
    drops = dropped_pairs(str(tmp_path / "out"))
    assert drops["bad/word2"] == "bad/word1"
    assert drops["bad/huge-copy"] == "bad/huge"
    assert "bad/empty1" not in drops and "bad/empty2" not in drops  # nothing to compare: left to exact dedup
    assert manifest["metrics"]["near_dup.no_shingles"] == 2
    repeated = {k: v for k, v in drops.items() if k.startswith("same/")}
    assert len(repeated) == 9_999 and set(repeated.values()) == {"same/00000"}


def test_incremental_batch_is_checked_against_the_index_without_recomputing_it(tmp_path):
    docs = sample_docs(limit=20)
    index_url = str(tmp_path / "index")
    first = write_dataset(
        tmp_path / "batch1", {"b1": [record(f"wiki/{i:03d}", d["text"]) for i, d in enumerate(docs[:12])]}
    )
    run_stage(NearDedup({"index_url": index_url}), first, str(tmp_path / "out1"))
    (part1,) = Path(index_url).glob("*.parquet")
    digest1 = hashlib.sha256(part1.read_bytes()).hexdigest()
    assert pq.read_table(part1).num_rows == 12
    # Batch 1's text is gone: batch 2 can only be compared with it through the index.
    shutil.rmtree(tmp_path / "batch1")
    shutil.rmtree(tmp_path / "out1")
    second_rows = [record(f"new/{i:03d}", d["text"], date="2026-11-21") for i, d in enumerate(docs[12:], start=12)]
    second_rows += [record(f"near/{i:03d}", perturb(docs[i]["text"], seed=i), date="2026-11-21") for i in (2, 5, 11)]
    second_rows += [record("resend/015", perturb(docs[15]["text"], seed=99), date="2026-11-21")]
    second = write_dataset(tmp_path / "batch2", {"b2": second_rows})
    manifest = run_stage(NearDedup({"index_url": index_url}), second, str(tmp_path / "out2"))
    expected = {"near/002": "wiki/002", "near/005": "wiki/005", "near/011": "wiki/011", "resend/015": "new/015"}
    assert dropped_pairs(str(tmp_path / "out2")) == expected
    assert manifest["metrics"]["near_dup.dropped_for_index"] == 3
    assert hashlib.sha256(part1.read_bytes()).hexdigest() == digest1
    parts = sorted(Path(index_url).glob("*.parquet"))
    assert len(parts) == 2
    assert sum(pq.read_table(p).num_rows for p in parts) == 12 + 8
    # Re-running the same batch replaces its own index part instead of matching itself.
    shutil.rmtree(tmp_path / "out2")
    run_stage(NearDedup({"index_url": index_url}), second, str(tmp_path / "out2"))
    assert dropped_pairs(str(tmp_path / "out2")) == expected
    assert len(list(Path(index_url).glob("*.parquet"))) == 2


# One MiB a document against the smallest budget (8 MiB): every plan below goes to disk.
SPILLED_STATE_BYTES = 1 << 20
# 64 KiB a band-key row: many partitions, even for a few documents.
SPILLED_KEY_ROW_BYTES = 1 << 16
# A million bytes of shingle set per byte of text: exact verification takes a pair at a time.
PAIR_AT_A_TIME = 1e6


def spilled(monkeypatch) -> None:
    monkeypatch.setattr(near_dedup, "STATE_BYTES_PER_DOC", SPILLED_STATE_BYTES)
    monkeypatch.setattr(near_dedup, "KEY_ROW_BYTES", SPILLED_KEY_ROW_BYTES)


def decided(manifest: dict, out: str) -> tuple:
    """What a plan decides, as the output shows it: drops with their survivors, the kept
    ids, the cluster report, the parts' hashes and every metric but the spill's own."""
    metrics = {k: v for k, v in manifest["metrics"].items() if k != "near_dup.spill_partitions"}
    kept = sorted(Dataset(out).read(["id"]).column("id").to_pylist())
    clusters = pq.read_table(Path(out) / CLUSTERS_FILE).to_pylist()
    return dropped_pairs(out), kept, clusters, [p["sha256"] for p in manifest["parts"]], metrics


def spill_partitions(documents: int, budget_mb: int = 8) -> int:
    bands = NearDedupParams().minhash_config().bands
    return math.ceil(documents * bands * SPILLED_KEY_ROW_BYTES / (budget_mb << 20))


@pytest.mark.parametrize(
    "params", [{}, {"verify": "estimate", "keep": "longest"}, {"verify": "off"}], ids=["exact", "estimate", "off"]
)
def test_a_plan_over_its_memory_budget_goes_to_disk_and_decides_the_same(tmp_path, monkeypatch, params):
    originals, copies, expected, _ = threshold_pairs()
    # Four more copies of the first original, their ids against the order of their rows: a
    # bucket links its members in id order, whichever plan builds it. And two documents
    # without shingles.
    extra = [
        record(f"dup/{4 - i}", perturb(originals[0]["text"], seed=i, rate=0.01 * i), source="dup", date="2026-11-22")
        for i in range(4)
    ] + [record("dup/empty", ""), record("dup/empty-too", "")]
    url = write_dataset(
        tmp_path / "in",
        {"p0": originals[::2] + copies[1::2] + extra[:2], "p1": originals[1::2] + copies[::2] + extra[2:]},
    )
    params = {"memory_budget_mb": 8, **params}
    in_memory = run_stage(NearDedup(params), url, str(tmp_path / "memory"), workers=2)
    monkeypatch.setattr(near_dedup, "SET_BYTES_PER_TEXT_BYTE", PAIR_AT_A_TIME)
    pair_at_a_time = run_stage(NearDedup(params), url, str(tmp_path / "pairs"), workers=2)
    spilled(monkeypatch)
    on_disk = run_stage(NearDedup(params), url, str(tmp_path / "disk"), workers=2)
    assert "near_dup.spill_partitions" not in in_memory["metrics"] | pair_at_a_time["metrics"]
    assert on_disk["metrics"]["near_dup.spill_partitions"] == spill_partitions(
        len(originals) + len(copies) + len(extra)
    )
    assert (
        decided(on_disk, str(tmp_path / "disk"))
        == decided(in_memory, str(tmp_path / "memory"))
        == decided(pair_at_a_time, str(tmp_path / "pairs"))
    )
    drops = dropped_pairs(str(tmp_path / "disk"))
    kin = {"orig/000", copies[0]["id"], *(f"dup/{i}" for i in range(1, 5))}
    survivors = {drops.pop(i) for i in sorted(kin & set(drops))}
    assert len(survivors) == 1 and survivors <= kin and "dup/empty" not in drops
    # Every other drop is an original or its edited copy, naming the other.
    assert drops and all(min(pair)[len("copy/") :][:3] == max(pair)[len("orig/") :][:3] for pair in drops.items())
    if not params.get("verify"):
        assert {copy: expected[copy] for copy in drops} == drops  # exact: nothing below the threshold goes
    assert on_disk["metrics"]["near_dup.no_shingles"] == 2
    assert not list((tmp_path / "disk").rglob(near_dedup.SPILL_DIR))  # removed once the plan is written


def index_table(index_url: str) -> pa.Table:
    """Every row of an index, whatever files its parts are in, in id order."""
    files = sorted(Path(index_url).rglob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).sort_by("id")


def test_a_spilled_nightly_plan_matches_the_index_and_writes_a_part_the_next_day_reads(tmp_path, monkeypatch):
    originals, copies, expected, _ = threshold_pairs()
    # Reviews beyond the 40 that threshold_pairs takes: unrelated to the originals.
    reviews = read_jsonl(TEST_DATA / "web_en" / "movie_reviews_polarity_2000.jsonl.gz", 50)[40:]
    fresh = [record(f"fresh/{i:03d}", r["text"], date="2026-11-21") for i, r in enumerate(reviews)]
    days = {
        "2026-11-20": {"a": originals[:33], "b": originals[33:]},
        # The day's copies of earlier documents, new documents, and a near copy of one of them.
        "2026-11-21": {
            "c": copies[:33] + fresh[:5],
            "d": copies[33:]
            + fresh[5:]
            + [record("fresh/003-copy", perturb(fresh[3]["text"], seed=3), date="2026-11-21")],
        },
        # Near copies of a document of each earlier day, checked without updating the index.
        "2026-11-22": {
            "e": [
                record("late/001", perturb(originals[1]["text"], seed=11), date="2026-11-22"),
                record("late/fresh", perturb(fresh[7]["text"], seed=12), date="2026-11-22"),
            ]
        },
    }
    urls = {day: write_dataset(tmp_path / "in" / day, parts) for day, parts in days.items()}

    def nightly(mode: str, day: str, index: str, **extra) -> tuple:
        monkeypatch.undo()
        if mode == "disk":
            spilled(monkeypatch)
            # A document alone fills the budget, so that even the third day's two spill.
            monkeypatch.setattr(near_dedup, "STATE_BYTES_PER_DOC", 8 << 20)
            monkeypatch.setattr(near_dedup, "SET_BYTES_PER_TEXT_BYTE", PAIR_AT_A_TIME)
        out = str(tmp_path / f"{mode}-{index}-{day}")
        params = {"memory_budget_mb": 8, "index_url": str(tmp_path / index), "index_part": f"date={day}", **extra}
        manifest = run_stage(NearDedup(params), urls[day], out, workers=2)
        assert ("near_dup.spill_partitions" in manifest["metrics"]) == (mode == "disk")
        return decided(manifest, out)

    for day in ("2026-11-20", "2026-11-21"):
        assert nightly("disk", day, "index-disk") == nightly("memory", day, "index-memory")
    second = dropped_pairs(str(tmp_path / "disk-index-disk-2026-11-21"))
    assert second["fresh/003-copy"] == "fresh/003"
    assert {k: v for k, v in second.items() if k != "fresh/003-copy"} == {
        c: expected[c] for c in second if c in expected
    }
    # The spilled plan's index parts are a folder of files each, holding the same rows.
    assert sorted(p.name for p in (tmp_path / "index-disk").iterdir() if not p.name.startswith("_")) == [
        "date=2026-11-20",
        "date=2026-11-21",
    ]
    assert index_table(str(tmp_path / "index-disk")).equals(index_table(str(tmp_path / "index-memory")))
    # The next day, either plan reads the spilled plan's parts as it reads its own.
    third = nightly("memory", "2026-11-22", "index-memory", update_index=False)
    assert third[0] == {"late/001": "orig/001", "late/fresh": "fresh/007"}
    assert nightly("memory", "2026-11-22", "index-disk", update_index=False) == third
    assert nightly("disk", "2026-11-22", "index-disk", update_index=False) == third


def test_index_built_with_other_settings_is_refused(tmp_path):
    url = write_dataset(tmp_path / "in", {"p": [record("a/1", sample_docs(limit=1)[0]["text"])]})
    index_url = str(tmp_path / "index")
    run_stage(NearDedup({"index_url": index_url}), url, str(tmp_path / "out1"))
    with pytest.raises(IndexMismatch, match="built with"):
        run_stage(NearDedup({"index_url": index_url, "ngram": 3}), url, str(tmp_path / "out2"))
    # An index without shingle sets cannot serve exact verification.
    with pytest.raises(IndexMismatch, match="shingle_sets"):
        run_stage(NearDedup({"index_url": index_url, "verify": "estimate"}), url, str(tmp_path / "out3"))


def test_params_are_validated():
    with pytest.raises(ValueError, match="both bands and rows"):
        NearDedupParams(bands=8)
    with pytest.raises(ValueError, match="quality_column"):
        NearDedupParams(keep="highest_quality")
    with pytest.raises(ValueError, match="exceeds num_perm"):
        NearDedupParams(bands=20, rows=10, num_perm=128)
    assert NearDedupParams().minhash_config().bands * NearDedupParams().minhash_config().rows <= 128


def test_components_join_chains_and_survivor_is_best_ranked():
    labels = minhash.components(6, np.array([0, 1, 4]), np.array([1, 2, 5]))
    assert labels[0] == labels[1] == labels[2] != labels[3]
    assert labels[4] == labels[5] != labels[0]
    survivor = minhash.survivors(labels, priority=np.array([5, 0, 3, 1, 2, 4]))
    assert survivor.tolist() == [1, 1, 1, 3, 4, 4]
