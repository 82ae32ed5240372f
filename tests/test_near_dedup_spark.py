"""The Spark job finds the same clusters as the local stage and writes the same dataset layout."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tamis.dataset import Dataset
from tamis.runner import run_stage
from tamis.stages.near_dedup import CLUSTERS_FILE, NearDedup, NearDedupParams

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "include" / "sample" / "web" / "date=2026-11-20"
sys.path.insert(0, str(REPO))

from spark_jobs import near_dedup as spark_near_dedup  # noqa: E402
from conftest import write_dataset
from test_near_dedup import THRESHOLD, dropped_pairs, threshold_pairs


def perturb(text: str, seed: int, rate: float = 0.004) -> str:
    rng = random.Random(seed)
    words = text.split()
    for _ in range(max(1, int(len(words) * rate))):
        words[rng.randrange(len(words))] = f"edit{rng.randrange(10**6)}"
    return " ".join(words)


@pytest.fixture(scope="module")
def spark():
    session = spark_near_dedup.spark_session("local[2]", shuffle_partitions=2)
    yield session
    session.stop()



def test_spark_job_matches_local_stage(spark, tmp_path):
    docs = [json.loads(line) for line in (SAMPLE / "wikipedia.jsonl").read_text().splitlines()][:10]
    speeches = [json.loads(line) for line in (SAMPLE / "speeches.jsonl").read_text().splitlines()][:3]
    rows = [{"id": f"wiki/{i:02d}", "source": "wiki", "date": "2026-11-20", "text": d["text"]} for i, d in enumerate(docs)]
    rows += [{"id": f"speech/{i}", "source": "speech", "date": "2026-11-20", "text": d["text"]} for i, d in enumerate(speeches)]
    copies = [{"id": f"mirror/{i:02d}", "source": "mirror", "date": "2026-11-21", "text": perturb(docs[i]["text"], seed=i)}
              for i in (0, 3, 7)]
    copies += [{"id": "mirror/03b", "source": "mirror", "date": "2026-11-21", "text": perturb(docs[3]["text"], seed=33)},
               {"id": "odd/empty", "source": "mirror", "date": "2026-11-21", "text": ""},
               {"id": "odd/word", "source": "mirror", "date": "2026-11-21", "text": "hello"},
               {"id": "odd/word2", "source": "mirror", "date": "2026-11-21", "text": "Hello"}]
    input_url = write_dataset(tmp_path / "in", {"p0": rows[:7], "p1": rows[7:], "p2": copies})
    params = {"sample_pairs": 2}

    local = run_stage(NearDedup(params), input_url, str(tmp_path / "local"))
    remote = spark_near_dedup.run(spark, input_url, str(tmp_path / "spark"), NearDedupParams(**params))

    def drops(url):
        side = Dataset(url).read_side("dropped")
        return sorted((r["id"], r["reason"], r["detail"]) for r in side.to_pylist())

    assert drops(str(tmp_path / "spark")) == drops(str(tmp_path / "local"))
    assert {d[0] for d in drops(str(tmp_path / "local"))} == {"mirror/00", "mirror/03", "mirror/03b", "mirror/07", "odd/word2"}
    assert remote["counts"] == local["counts"]
    c = remote["counts"]
    assert c["in"] == c["kept"] + c["dropped"] + c["quarantined"]
    assert remote["metrics"]["near_dup.mirror.dropped"] == local["metrics"]["near_dup.mirror.dropped"] == 5

    def clusters(url):
        table = pq.read_table(Path(url) / CLUSTERS_FILE).to_pylist()
        return sorted((c["survivor_id"], c["size"], tuple(sorted(c["duplicate_ids"]))) for c in table)

    assert clusters(str(tmp_path / "spark")) == clusters(str(tmp_path / "local"))
    out = Dataset(str(tmp_path / "spark"))
    assert [s.name for s in out.shards()] == ["p0", "p1", "p2"]
    kept = out.read()
    assert sorted(kept.column("id").to_pylist()) == sorted(Dataset(str(tmp_path / "local")).read().column("id").to_pylist())
    assert set(kept.column_names) == {"id", "source", "date", "text"}


def test_spark_job_splits_pairs_right_at_the_threshold_as_the_local_stage_does(spark, tmp_path):
    # Pairs at J = 0.80-0.81 and 0.79-0.80: no signature settles them, so both paths shingle
    # their documents again and compare the exact Jaccard with the threshold.
    originals, copies, expected, _ = threshold_pairs()
    input_url = write_dataset(tmp_path / "in", {"p0": originals[::2] + copies[1::2], "p1": originals[1::2] + copies[::2]})
    local = run_stage(NearDedup({}), input_url, str(tmp_path / "local"))
    remote = spark_near_dedup.run(spark, input_url, str(tmp_path / "spark"), NearDedupParams())
    drops = dropped_pairs(str(tmp_path / "spark"))
    assert drops == dropped_pairs(str(tmp_path / "local"))
    assert {copy: expected[copy] for copy in drops} == drops and len(drops) >= 0.9 * len(expected)
    assert remote["counts"] == local["counts"]
    pair_figures = {k: v for k, v in local["metrics"].items()
                    if k.startswith(("near_dup.s_curve.", "near_dup.candidates_by_jaccard.", "near_dup.verified_by_jaccard."))
                    or k in ("near_dup.candidate_pairs", "near_dup.verified_pairs", "near_dup.exact_jaccard_pairs")}
    assert pair_figures["near_dup.exact_jaccard_pairs"] >= len(drops)
    assert {k: remote["metrics"].get(k) for k in pair_figures} == pair_figures

    def report(url):  # the cluster report, sample similarities included
        return sorted((c["survivor_id"], tuple(c["duplicate_ids"]),
                       tuple((p["id_a"], p["id_b"], round(p["similarity"], 6)) for p in c["sample_pairs"]))
                      for c in pq.read_table(Path(url) / CLUSTERS_FILE).to_pylist())

    local_report = report(str(tmp_path / "local"))
    assert report(str(tmp_path / "spark")) == local_report
    assert all(THRESHOLD <= p[2] < THRESHOLD + 0.01 for c in local_report for p in c[2])  # exact, not estimated
