"""Trends across nightly runs and the drift check, from real nightly runs over the bundled
sample's three days (include/sample/web): the third day re-crawls five documents of the
first, so its exact-duplicate rate jumps from 0 to 20 %."""

from __future__ import annotations

import pytest
import yaml

from conftest import REPO
from tamis import storage
from tamis.cli import main
from tamis.corpus import partitions
from tamis.dataset import Dataset
from tamis.pipeline import ConfigError, load_pipeline
from tamis.trends import DRIFT_FILE, DriftConfig, check_drift, pipeline_runs, run_rates

SAMPLE = REPO / "include" / "sample"
DAYS = ["2026-11-20", "2026-11-21", "2026-11-22"]


def write_pipeline(root, drift: dict, name: str = "drift_test"):
    config = {
        "name": name,
        "storage_root": str(root / "store"),
        "workers": 1,
        "sources": {"web": {"path": str(SAMPLE / "web"), "id_field": "id", "url_field": "url"}},
        "stages": {"ingest": {}, "normalize": {}, "exact_dedup": {}},
        "nightly": {"start_date": DAYS[0]},
        "reports": {"drift": drift, "mlflow": {"enabled": False}},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def drift_of(pipeline, run_id: str) -> dict:
    return storage.read_json(storage.join(pipeline.run_url(run_id), DRIFT_FILE))


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    """Three nightly runs; the drift check fails the third. Returns (pipeline, exit codes, textfile dir)."""
    import os

    root = tmp_path_factory.mktemp("trends")
    path = write_pipeline(root, {"window": 2, "min_history": 2, "tolerance": 0.05, "on_breach": "fail"})
    prom = root / "prom"
    os.environ["TAMIS_PROMETHEUS_TEXTFILE_DIR"] = str(prom)
    try:
        codes = [
            main(
                ["nightly", "run", "--pipeline", str(path), "--run-id", f"night_{day}", "--date", day, "--wait-s", "5"]
            )
            for day in DAYS
        ]
    finally:
        del os.environ["TAMIS_PROMETHEUS_TEXTFILE_DIR"]
    return load_pipeline(str(path)), codes, prom


def test_a_jump_past_the_tolerance_fails_the_night_and_it_is_not_appended(nights):
    pipeline, codes, _ = nights
    assert codes[:2] == [0, 0] and codes[2] != 0
    assert sorted(partitions(pipeline.corpus_url)) == DAYS[:2]
    result = drift_of(pipeline, "night_2026-11-22")
    breached = {b["series"]: b for b in result["breaches"]}
    manifest = Dataset(pipeline.stage_url("night_2026-11-22", "exact_dedup")).manifest()
    rate = manifest["drop_reasons"]["exact_duplicate"] / manifest["counts"]["in"]
    assert result["status"] == "breach" and result["history"] == DAYS[:2]
    assert breached["drop_rate/exact_dedup/exact_duplicate"]["value"] == pytest.approx(rate, abs=1e-6)
    assert "duplicate_rate/exact_dedup" in breached  # the stage declares exact_duplicate a duplicate reason


def test_the_breach_is_emitted_as_a_metric(nights):
    _, _, prom = nights
    text = (prom / "tamis_drift_test_drift.prom").read_text()
    breaches = float(next(line for line in text.splitlines() if line.startswith("tamis_drift_breaches{")).split()[-1])
    assert breaches >= 2


def test_the_first_nights_have_too_little_history_to_judge(nights):
    pipeline, _, _ = nights
    first = drift_of(pipeline, "night_2026-11-20")
    assert first["status"] == "not enough history" and first["breaches"] == []


def test_runs_over_time_are_the_nights_in_date_order_with_their_manifest_rates(nights):
    pipeline, _, _ = nights
    runs = pipeline_runs(pipeline)
    assert [(r.date, r.kind, r.appended) for r in runs] == [
        (DAYS[0], "nightly", True),
        (DAYS[1], "nightly", True),
        (DAYS[2], "nightly", False),
    ]
    ingest = Dataset(pipeline.stage_url("night_2026-11-20", "ingest")).manifest()
    assert runs[0].stages["ingest"]["counts"] == ingest["counts"]
    assert runs[2].drift["status"] == "breach"


def test_rates_come_from_counts_declarations_and_metrics():
    stages = {
        "dedup": {
            "counts": {"in": 200, "kept": 150, "dropped": 50, "quarantined": 0},
            "drop_reasons": {"copy": 40, "other": 10},
            "quarantine_reasons": {},
            "metrics": {
                "language.detected.en": 30,
                "language.detected.fr": 10,
                "pii.entity.EMAIL_ADDRESS": 20,
                "pii.findings": 20,
            },
            "declares": {"duplicate_reasons": ["copy"]},
        },
    }
    rates = run_rates(stages)
    assert rates["drop_rate/dedup/copy"] == 0.2 and rates["duplicate_rate/dedup"] == 0.2
    assert rates["pii_rate/dedup/EMAIL_ADDRESS"] == 0.1 and "pii_rate/dedup/findings" not in rates
    assert rates["lang_share/en"] == 0.75 and rates["lang_share/fr"] == 0.25


def test_drift_compares_with_the_mean_of_the_window_only():
    config = DriftConfig(window=2, min_history=2, tolerance=0.05)
    history = [{"r": 0.9}, {"r": 0.10}, {"r": 0.12}]  # the oldest night is outside the window
    assert check_drift({"r": 0.14}, history, config)["status"] == "ok"
    result = check_drift({"r": 0.20}, history, config)
    assert result["status"] == "breach" and result["breaches"][0]["baseline"] == pytest.approx(0.11)
    # A rule that did not fire before, then fires: its baseline is 0.
    assert check_drift({"new": 0.3}, history, config)["breaches"][0]["series"] == "new"
    # Entities per document may exceed 1: there the tolerance is relative.
    assert check_drift({"p": 10.4}, [{"p": 10.0}, {"p": 10.0}], config)["status"] == "ok"
    assert check_drift({"p": 11.0}, [{"p": 10.0}, {"p": 10.0}], config)["status"] == "breach"


def test_drift_settings_are_validated_with_the_pipeline(tmp_path):
    path = write_pipeline(tmp_path, {"window": 0, "on_breach": "explode"})
    with pytest.raises(ConfigError, match="window|on_breach"):
        load_pipeline(str(path))
