"""Near-duplicate removal: MinHash + LSH + connected components, local and incremental."""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasketch.lsh import _optimal_param

from tamis import minhash
from tamis.dataset import Dataset
from tamis.runner import run_stage
from tamis.stages.near_dedup import CLUSTERS_FILE, IndexMismatch, NearDedup, NearDedupParams
from conftest import write_dataset

SAMPLE = Path(__file__).resolve().parents[1] / "include" / "sample" / "web" / "date=2026-11-20"


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


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z0-9_\x80-\U0010ffff]+", text.lower())
    return {tuple(words[i: i + n]) for i in range(len(words) - n + 1)} or {tuple(words)}


@pytest.fixture
def corpus(tmp_path) -> tuple[str, dict[str, str]]:
    """Two parts of real Wikipedia articles; the second also holds near copies of five of them."""
    docs = sample_docs(limit=24)
    originals = [record(f"wiki/{i:03d}", d["text"]) for i, d in enumerate(docs)]
    copies = [record(f"copy/{i:03d}", perturb(docs[i]["text"], seed=i), source="mirror", date="2026-11-21")
              for i in (1, 4, 9, 16, 20)]
    url = write_dataset(tmp_path / "in", {"p0": originals[:12], "p1": originals[12:] + copies})
    return url, {c["id"]: f"wiki/{int(c['id'][-3:]):03d}" for c in copies}


def test_optimal_bands_match_datasketch():
    for threshold, num_perm in ((0.5, 128), (0.8, 128), (0.9, 256), (0.7, 64)):
        assert minhash.optimal_bands(threshold, num_perm) == _optimal_param(threshold, num_perm, 0.5, 0.5)


def test_signature_similarity_estimates_word_ngram_jaccard():
    config = minhash.MinHashConfig(ngram=3)
    texts = [d["text"] for d in sample_docs(limit=6)]
    variants = [perturb(t, seed=7, rate=0.05) for t in texts]
    sig, _ = minhash.signatures(pa.array(texts + variants), config)
    for i in range(len(texts)):
        a, b = word_ngrams(texts[i], 3), word_ngrams(variants[i], 3)
        exact = len(a & b) / len(a | b)
        estimate = float(minhash.similarity(sig[i: i + 1], sig[len(texts) + i: len(texts) + i + 1])[0])
        assert abs(estimate - exact) < 0.15, (i, exact, estimate)
    unrelated = minhash.similarity(sig[:1], sig[1:2])[0]
    assert unrelated < 0.1


def test_shingles_ignore_case_and_punctuation_and_count_short_documents():
    config = minhash.MinHashConfig(ngram=3)
    hashes, counts = minhash.shingle_hashes(pa.array(["The cat sat, on the mat.", "the CAT sat on  the mat", "", None, "hi"]), config)
    assert counts.tolist() == [4, 4, 0, 0, 1]
    assert hashes[:4].tolist() == hashes[4:8].tolist()
    char_hashes, char_counts = minhash.shingle_hashes(pa.array(["naïve café", "ab"]), minhash.MinHashConfig(shingle="char", ngram=5))
    assert char_counts.tolist() == [len("naïve café") - 4, 1]


def test_shingles_of_a_document_do_not_depend_on_its_neighbours_in_the_batch():
    # Documents are hashed as one concatenated buffer: words must not run across them.
    texts = ["ends with a word", "", "", "starts", "Starts", "  spaced  ", "x"] + [d["text"] for d in sample_docs(limit=3)]
    for shingle in ("word", "char"):
        config = minhash.MinHashConfig(shingle=shingle, ngram=2)
        together, counts = minhash.shingle_hashes(pa.array(texts), config)
        alone = [minhash.shingle_hashes(pa.array([t]), config)[0] for t in texts]
        assert counts.tolist() == [len(a) for a in alone]
        assert together.tolist() == np.concatenate(alone).tolist()
    hashes, _ = minhash.shingle_hashes(pa.array(["starts", "Starts"]), minhash.MinHashConfig(ngram=2))
    assert hashes[0] == hashes[1]


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
    for keep, extra, survivor in (("first", {}, "a/1"), ("longest", {}, "a/2"),
                                  ("highest_quality", {"quality_column": "quality"}, "a/3")):
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


def test_bad_input_empty_one_word_huge_and_repeated_documents(tmp_path):
    text = sample_docs(limit=1)[0]["text"]
    huge = (text + "\n") * (10_000_000 // len(text) + 1)
    identical = [record(f"same/{i:05d}", "The same short notice, repeated across many pages.") for i in range(10_000)]
    rows = [record("bad/empty1", ""), record("bad/empty2", ""), record("bad/word1", "hello"),
            record("bad/word2", "hello"), record("bad/huge", huge), record("bad/huge-copy", perturb(huge, seed=1, rate=0.0001))]
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
    first = write_dataset(tmp_path / "batch1", {"b1": [record(f"wiki/{i:03d}", d["text"]) for i, d in enumerate(docs[:12])]})
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


def test_index_built_with_other_settings_is_refused(tmp_path):
    url = write_dataset(tmp_path / "in", {"p": [record("a/1", sample_docs(limit=1)[0]["text"])]})
    index_url = str(tmp_path / "index")
    run_stage(NearDedup({"index_url": index_url}), url, str(tmp_path / "out1"))
    with pytest.raises(IndexMismatch, match="built with"):
        run_stage(NearDedup({"index_url": index_url, "ngram": 3}), url, str(tmp_path / "out2"))


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
