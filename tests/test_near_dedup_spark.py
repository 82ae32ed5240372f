"""Near dedup on the Spark engine finds the same clusters as on the local engine and writes
the same dataset; also with the incremental index."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_near_dedup import THRESHOLD, dropped_pairs, threshold_pairs

from conftest import write_dataset
from tamis.dataset import Dataset
from tamis.runner import run_stage
from tamis.stages.near_dedup import CLUSTERS_FILE, NearDedup

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "include" / "sample" / "web" / "date=2026-11-20"


def perturb(text: str, seed: int, rate: float = 0.004) -> str:
    rng = random.Random(seed)
    words = text.split()
    for _ in range(max(1, int(len(words) * rate))):
        words[rng.randrange(len(words))] = f"edit{rng.randrange(10**6)}"
    return " ".join(words)


def on_spark(spark, params: dict, input_url: str, output_url: str) -> dict:
    return run_stage(NearDedup(params), input_url, output_url, engine=spark)


def test_spark_job_matches_local_stage(spark, tmp_path):
    docs = [json.loads(line) for line in (SAMPLE / "wikipedia.jsonl").read_text().splitlines()][:10]
    speeches = [json.loads(line) for line in (SAMPLE / "speeches.jsonl").read_text().splitlines()][:3]
    rows = [
        {"id": f"wiki/{i:02d}", "source": "wiki", "date": "2026-11-20", "text": d["text"]} for i, d in enumerate(docs)
    ]
    rows += [
        {"id": f"speech/{i}", "source": "speech", "date": "2026-11-20", "text": d["text"]}
        for i, d in enumerate(speeches)
    ]
    copies = [
        {"id": f"mirror/{i:02d}", "source": "mirror", "date": "2026-11-21", "text": perturb(docs[i]["text"], seed=i)}
        for i in (0, 3, 7)
    ]
    copies += [
        {"id": "mirror/03b", "source": "mirror", "date": "2026-11-21", "text": perturb(docs[3]["text"], seed=33)},
        {"id": "odd/empty", "source": "mirror", "date": "2026-11-21", "text": ""},
        {"id": "odd/word", "source": "mirror", "date": "2026-11-21", "text": "hello"},
        {"id": "odd/word2", "source": "mirror", "date": "2026-11-21", "text": "Hello"},
    ]
    input_url = write_dataset(tmp_path / "in", {"p0": rows[:7], "p1": rows[7:], "p2": copies})
    params = {"sample_pairs": 2}

    local = run_stage(NearDedup(params), input_url, str(tmp_path / "local"))
    remote = on_spark(spark, params, input_url, str(tmp_path / "spark"))

    def drops(url):
        side = Dataset(url).read_side("dropped")
        return sorted((r["id"], r["reason"], r["detail"]) for r in side.to_pylist())

    assert drops(str(tmp_path / "spark")) == drops(str(tmp_path / "local"))
    assert {d[0] for d in drops(str(tmp_path / "local"))} == {
        "mirror/00",
        "mirror/03",
        "mirror/03b",
        "mirror/07",
        "odd/word2",
    }
    assert remote["counts"] == local["counts"]
    c = remote["counts"]
    assert c["in"] == c["kept"] + c["dropped"] + c["quarantined"]
    assert remote["metrics"]["near_dup.mirror.dropped"] == local["metrics"]["near_dup.mirror.dropped"] == 5

    def clusters(url):
        table = pq.read_table(Path(url) / CLUSTERS_FILE).to_pylist()
        return sorted((c["survivor_id"], c["size"], tuple(sorted(c["duplicate_ids"]))) for c in table)

    assert clusters(str(tmp_path / "spark")) == clusters(str(tmp_path / "local"))
    assert [p["sha256"] for p in remote["parts"]] == [p["sha256"] for p in local["parts"]]
    assert remote["engine"] == "spark" and remote["metrics"] == local["metrics"]


def test_spark_job_splits_pairs_right_at_the_threshold_as_the_local_stage_does(spark, tmp_path):
    # Pairs at J = 0.80-0.81 and 0.79-0.80: no signature settles them, so both paths shingle
    # their documents again and compare the exact Jaccard with the threshold.
    originals, copies, expected, _ = threshold_pairs()
    input_url = write_dataset(
        tmp_path / "in", {"p0": originals[::2] + copies[1::2], "p1": originals[1::2] + copies[::2]}
    )
    local = run_stage(NearDedup({}), input_url, str(tmp_path / "local"))
    remote = on_spark(spark, {}, input_url, str(tmp_path / "spark"))
    drops = dropped_pairs(str(tmp_path / "spark"))
    assert drops == dropped_pairs(str(tmp_path / "local"))
    assert {copy: expected[copy] for copy in drops} == drops and len(drops) >= 0.9 * len(expected)
    assert remote["counts"] == local["counts"]
    pair_figures = {
        k: v
        for k, v in local["metrics"].items()
        if k.startswith(("near_dup.s_curve.", "near_dup.candidates_by_jaccard.", "near_dup.verified_by_jaccard."))
        or k in ("near_dup.candidate_pairs", "near_dup.verified_pairs", "near_dup.exact_jaccard_pairs")
    }
    assert pair_figures["near_dup.exact_jaccard_pairs"] >= len(drops)
    assert {k: remote["metrics"].get(k) for k in pair_figures} == pair_figures

    def report(url):  # the cluster report, sample similarities included
        return sorted(
            (
                c["survivor_id"],
                tuple(c["duplicate_ids"]),
                tuple((p["id_a"], p["id_b"], round(p["similarity"], 6)) for p in c["sample_pairs"]),
            )
            for c in pq.read_table(Path(url) / CLUSTERS_FILE).to_pylist()
        )

    local_report = report(str(tmp_path / "local"))
    assert report(str(tmp_path / "spark")) == local_report
    assert all(THRESHOLD <= p[2] < THRESHOLD + 0.01 for c in local_report for p in c[2])  # exact, not estimated


def test_the_incremental_index_gives_the_same_drops_on_both_engines(spark, tmp_path):
    """Two days against one index, on each engine: day two's copies of day one's documents
    are dropped in favour of the indexed originals, right at the threshold too."""
    originals, copies, expected, _ = threshold_pairs()
    day1 = write_dataset(tmp_path / "day1", {"p0": originals})
    day2 = write_dataset(tmp_path / "day2", {"p0": copies[: len(copies) // 2], "p1": copies[len(copies) // 2 :]})
    results = {}
    for engine in ("local", "spark"):
        params = {"index_url": str(tmp_path / engine / "index")}
        run = (
            (lambda p, i, o: run_stage(NearDedup(p), i, o))
            if engine == "local"
            else (lambda p, i, o: on_spark(spark, p, i, o))
        )
        run({**params, "index_part": "day1"}, day1, str(tmp_path / engine / "out1"))
        manifest = run({**params, "index_part": "day2"}, day2, str(tmp_path / engine / "out2"))
        results[engine] = (manifest, dropped_pairs(str(tmp_path / engine / "out2")))
    (local, local_drops), (remote, remote_drops) = results["local"], results["spark"]
    assert remote_drops == local_drops and local_drops
    assert set(local_drops) <= set(expected) and len(local_drops) >= 0.9 * len(expected)
    assert remote["metrics"] == local["metrics"] and local["metrics"]["near_dup.dropped_for_index"] == len(local_drops)
    assert [p["sha256"] for p in remote["parts"]] == [p["sha256"] for p in local["parts"]]
