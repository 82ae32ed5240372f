"""The figures tamis.metrics exports for real runs: the duplicate rate follows the drop
reasons a stage declares (whatever its name, built-in or a user's), and StatsD and the
Prometheus textfile carry the same figures, run after run."""

from __future__ import annotations

import socket
from collections import Counter

import pyarrow as pa
import pytest

from conftest import TEST_DATA, read_jsonl, write_dataset, write_jsonl
from tamis import metrics
from tamis.cli import run_one
from tamis.dataset import Dataset
from tamis.runner import run_stage
from tamis.stage import BatchResult, Stage, split_by_reason

REVIEWS = TEST_DATA / "web_en" / "movie_reviews_polarity_2000.jsonl.gz"


class SeenBefore(Stage):
    """A user's stage: drops a text already seen in its batch (a copy) and a text under 40
    characters (not a copy)."""

    type_name = "seen_before"
    duplicate_reasons = ("seen_before",)

    def process_batch(self, table: pa.Table) -> BatchResult:
        seen: set[str] = set()
        reasons = []
        for text in table.column("text").to_pylist():
            reasons.append("seen_before" if text in seen else "too_short" if len(text) < 40 else None)
            seen.add(text)
        return BatchResult(*split_by_reason(table, reasons))


@pytest.fixture(scope="module")
def reviews_with_copies_and_stubs(tmp_path_factory):
    """Real reviews, 25 of them sent twice, and 10 cut to their first words."""
    texts = [r["text"] for r in read_jsonl(REVIEWS, limit=100)]
    texts += texts[:25] + [t[:30] for t in texts[50:60]]
    table = pa.table({"id": [f"web/{i}" for i in range(len(texts))], "source": ["web"] * len(texts), "text": texts})
    return write_dataset(tmp_path_factory.mktemp("reviews") / "in", table)


def _drop_reasons_read_back(url: str) -> Counter:
    return Counter(Dataset(url).read_side("dropped").column("reason").to_pylist())


def test_a_users_stage_that_declares_duplicate_reasons_gets_a_duplicate_rate(reviews_with_copies_and_stubs, tmp_path):
    out = str(tmp_path / "user_filter")
    manifest = run_stage(SeenBefore(name="user_filter"), reviews_with_copies_and_stubs, out)
    assert manifest["declares"]["duplicate_reasons"] == ["seen_before"]
    reasons = _drop_reasons_read_back(out)
    assert reasons["seen_before"] > 0 and reasons["too_short"] > 0
    figures = metrics.stage_metrics(manifest)
    n_in = manifest["counts"]["in"]
    assert figures["tamis_duplicate_rate"] == pytest.approx(reasons["seen_before"] / n_in)
    assert figures["tamis_drop_rate"] == pytest.approx(sum(reasons.values()) / n_in)


def test_the_built_in_dedup_under_another_name_is_measured_and_other_stages_have_no_duplicate_rate(
    tmp_path, make_pipeline
):
    rows = [{"id": str(i), "text": r["text"]} for i, r in enumerate(read_jsonl(REVIEWS, limit=30))]
    write_jsonl(tmp_path / "web" / "date=2026-11-20" / "a.jsonl", rows + rows[:12])
    pipeline = make_pipeline(
        {"web": {"path": str(tmp_path / "web"), "id_field": "id"}},
        stages=[
            {"name": "ingest", "type": "ingest"},
            {"name": "normalize", "type": "normalize"},
            {"name": "resent_copies", "type": "exact_dedup"},
        ],
    )
    for stage in pipeline.stage_names:
        run_one(pipeline, stage, "r")
    resent = Dataset(pipeline.stage_url("r", "resent_copies")).manifest()
    duplicates = _drop_reasons_read_back(pipeline.stage_url("r", "resent_copies"))
    assert sum(duplicates.values()) > 0
    assert metrics.stage_metrics(resent)["tamis_duplicate_rate"] == pytest.approx(
        sum(duplicates[r] for r in resent["declares"]["duplicate_reasons"]) / resent["counts"]["in"]
    )
    normalize = Dataset(pipeline.stage_url("r", "normalize")).manifest()
    assert normalize["declares"]["duplicate_reasons"] == []
    assert "tamis_duplicate_rate" not in metrics.stage_metrics(normalize)


def test_statsd_and_the_textfile_carry_the_same_figures_run_after_run(
    reviews_with_copies_and_stubs, tmp_path, monkeypatch
):
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    monkeypatch.setenv("TAMIS_STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("TAMIS_STATSD_PORT", str(receiver.getsockname()[1]))
    monkeypatch.setenv("TAMIS_PROMETHEUS_TEXTFILE_DIR", str(tmp_path / "textfiles"))
    stage = SeenBefore(name="user_filter", context={"pipeline": "nightly"})
    manifests = [run_stage(stage, reviews_with_copies_and_stubs, str(tmp_path / f"run{i}")) for i in range(2)]
    received = [receiver.recv(4096).decode() for m in manifests for _ in metrics.stage_metrics(m)]
    receiver.close()

    # What statsd_exporter would expose: counters summed, gauges the last value received.
    statsd: dict[str, float] = {}
    for line in received:
        name_value, kind, tags = line.split("|")
        name, value = name_value.rsplit(":", 1)
        assert tags == "#stage:user_filter,pipeline:nightly"
        statsd[name] = statsd.get(name, 0.0) + float(value) if kind == "c" else float(value)
    textfile = {}
    (path,) = (tmp_path / "textfiles").iterdir()
    assert path.name == "tamis_nightly_user_filter.prom"
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            assert series.endswith('{stage="user_filter",pipeline="nightly"}')
            textfile[series.split("{")[0]] = float(value)
    assert statsd.keys() == textfile.keys() == metrics.stage_metrics(manifests[-1]).keys()
    for name in textfile:
        assert textfile[name] == pytest.approx(statsd[name], rel=1e-5), name
    assert textfile["tamis_docs_processed_total"] == sum(m["counts"]["in"] for m in manifests)
    assert textfile["tamis_drop_rate"] == pytest.approx(
        manifests[-1]["counts"]["dropped"] / manifests[-1]["counts"]["in"], rel=1e-5
    )
