"""The alerts of k8s/prometheus-rules.yaml, evaluated by Prometheus's own rule engine
(``promtool test rules``, Debian's ``prometheus`` package) on what real runs exported.

Real stages (ingest, normalize, pii, exact_dedup) run night after night on the sample's
movie reviews with ``TAMIS_PROMETHEUS_TEXTFILE_DIR`` set, each followed by the nightly
drift check against the usual nights before it, then on nights that differ: one
with PII-dense texts sent four times each and broken lines, one with a single document,
one with no data. The textfiles each run left become promtool's input series, as a
node_exporter textfile collector would have exposed them, and every alert must stay quiet
over usual nights and fire on the night made to trip it: an alert that can never fire, or
always fires, fails here.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import REPO, TEST_DATA
from tamis import trends
from tamis.cli import run_one
from tamis.dataset import Dataset
from tamis.metrics import COUNTERS, METRICS, emit_drift_metrics
from tamis.pipeline import load_pipeline

pytestmark = pytest.mark.slow

RULES = REPO / "k8s" / "prometheus-rules.yaml"
SAMPLE_WEB = REPO / "include" / "sample" / "web"
PIPELINE = "alerts"
STAGES = ["ingest", "normalize", "pii", "exact_dedup"]
USUAL_DAY, JUMP_DAY, ONE_DOC_DAY, EMPTY_DAY = "2026-11-21", "2026-11-23", "2026-11-24", "2026-11-25"
# Runs in the order they happen. The first run in a process pays the imports and the PII
# model's load that later runs skip; in production every stage runs in a process of its
# own, all alike, so the usual nights are the runs after it.
RUNS = [
    ("first", USUAL_DAY),
    ("usual_a", USUAL_DAY),
    ("usual_b", USUAL_DAY),
    ("jump", JUMP_DAY),
    ("one_doc", ONE_DOC_DAY),
    ("empty", EMPTY_DAY),
]

STEP_MIN = 5  # scrape and rule evaluation interval of the unit tests
SAMPLES_PER_DAY = 24 * 60 // STEP_MIN
USUAL_NIGHTS = 8  # the 7-day baseline (offset 1d) and the day before the night under test
EVAL_MIN = USUAL_NIGHTS * 24 * 60 + 40  # 40 minutes into the night under test: past every `for`
# The collector's own labels on every series it exposes.
COLLECTOR = {"job": "node", "instance": "worker-1:9100"}
SAMPLE_LINE = re.compile(
    r'^(?P<name>tamis_\w+)\{stage="(?P<stage>[^"]*)",pipeline="(?P<pipeline>[^"]*)"\} (?P<value>\S+)$'
)


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: scripts/setup.sh installs Debian's prometheus package"
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> {"exported": {(metric, stage): value} in the textfiles after the run,
    "manifests": {stage: manifest}}, for the RUNS in order."""
    root = tmp_path_factory.mktemp("alerts")
    web = root / "web"
    shutil.copytree(SAMPLE_WEB / f"date={USUAL_DAY}", web / f"date={USUAL_DAY}")
    with gzip.open(TEST_DATA / "pii" / "presidio_synth_v2.jsonl.gz", "rt", encoding="utf-8") as f:
        labelled = [json.loads(line) for line in f]
    dense = [r["text"] for r in labelled if len(r["spans"]) >= 2]
    texts = [" ".join(dense[i : i + 4]) for i in range(0, 240, 4)]
    lines = [json.dumps({"id": f"leak-{i}-{copy}", "text": t}) for copy in range(4) for i, t in enumerate(texts)]
    lines += [f'{{"id": "broken-{i}", "text": "cut off' for i in range(10)]
    (web / f"date={JUMP_DAY}").mkdir()
    (web / f"date={JUMP_DAY}" / "leak.jsonl").write_text("\n".join(lines) + "\n")
    first_article = (SAMPLE_WEB / "date=2026-11-20" / "wikipedia.jsonl").read_text().splitlines()[0]
    (web / f"date={ONE_DOC_DAY}").mkdir()
    (web / f"date={ONE_DOC_DAY}" / "one.jsonl").write_text(first_article + "\n")
    config = {
        "name": PIPELINE,
        "storage_root": str(root / "store"),
        "workers": 1,
        "sources": {"web": {"path": str(web), "id_field": "id", "url_field": "url"}},
        "stages": {stage: {} for stage in STAGES},
    }
    (root / "alerts.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    pipeline = load_pipeline(str(root / "alerts.yaml"))
    textfiles = root / "textfiles"
    out = {}
    with pytest.MonkeyPatch.context() as env:
        env.delenv("TAMIS_STATSD_HOST", raising=False)
        env.setenv("TAMIS_PROMETHEUS_TEXTFILE_DIR", str(textfiles))
        usual_rates = []
        for name, day in RUNS:
            for stage in STAGES:
                run_one(pipeline, stage, name, overrides={"date": day} if stage == "ingest" else None)
            manifests = {s: Dataset(pipeline.stage_url(name, s)).manifest() for s in STAGES}
            # The nightly drift check, against the usual nights before this one.
            summaries = {s: trends.stage_summary(m) for s, m in manifests.items()}
            emit_drift_metrics(trends.drift(summaries, usual_rates, pipeline.reports.drift), PIPELINE)
            if day == USUAL_DAY:
                usual_rates.append(trends.run_rates(summaries))
            out[name] = {"exported": _read_textfiles(textfiles), "manifests": manifests}
    return out


def _read_textfiles(folder) -> dict[tuple[str, str], float]:
    exported = {}
    for path in sorted(folder.glob("*.prom")):
        text = path.read_text()
        lint = subprocess.run([_promtool(), "check", "metrics"], input=text, capture_output=True, text=True)
        assert lint.returncode == 0, (path.name, lint.stdout + lint.stderr)
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            match = SAMPLE_LINE.match(line)
            assert match and match["pipeline"] == PIPELINE, line
            exported[(match["name"], match["stage"])] = float(match["value"])
    return exported


def _increments(runs) -> dict[str, dict[tuple[str, str], float]]:
    """Per run, how much each counter grew: what Prometheus's increase() sees."""
    out, before = {}, {}
    for name, _ in RUNS:
        exported = runs[name]["exported"]
        out[name] = {key: value - before.get(key, 0.0) for key, value in exported.items() if key[0] in COUNTERS}
        before = exported
    return out


def test_textfile_counters_add_each_run_and_gauges_hold_the_last(runs):
    increments = _increments(runs)
    for name, _ in RUNS:
        for stage, manifest in runs[name]["manifests"].items():
            counts = manifest["counts"]
            assert increments[name][("tamis_docs_processed_total", stage)] == counts["in"], (name, stage)
            assert increments[name][("tamis_errors_total", stage)] == counts["quarantined"], (name, stage)
            dropped = counts["dropped"] / counts["in"] if counts["in"] else 0.0
            assert runs[name]["exported"][("tamis_drop_rate", stage)] == pytest.approx(dropped, abs=1e-6)


def test_the_nights_differ_as_meant(runs):
    """The data does what each night is for, read from the manifests (not from the metrics)."""
    usual, jump, one_doc, empty = (runs[n]["manifests"] for n in ("usual_a", "jump", "one_doc", "empty"))

    def rate(manifest, part):
        return manifest["counts"][part] / manifest["counts"]["in"]

    assert rate(jump["exact_dedup"], "dropped") >= 0.5 > rate(usual["exact_dedup"], "dropped") + 0.3
    assert rate(jump["ingest"], "quarantined") > 0.02 and usual["ingest"]["counts"]["quarantined"] == 0
    findings = {
        n: runs[n]["manifests"]["pii"]["metrics"]["pii.findings"] / runs[n]["manifests"]["pii"]["counts"]["in"]
        for n in ("usual_a", "jump")
    }
    assert findings["jump"] > 10 * findings["usual_a"] + 1
    assert {m["counts"]["in"] for m in one_doc.values()} == {1}
    assert {m["counts"]["in"] for m in empty.values()} == {0}


def _alert_rules() -> list[dict]:
    (document,) = [d for d in yaml.safe_load_all(RULES.read_text()) if d and d.get("kind") == "PrometheusRule"]
    return [rule for group in document["spec"]["groups"] for rule in group["rules"]]


TAMIS_ALERTS = sorted(r["alert"] for r in _alert_rules() if "tamis_" in r["expr"])
VOLUME_ALERTS = sorted(r["alert"] for r in _alert_rules() if "tamis_" not in r["expr"])


def _night_series(runs, nights: list[str]) -> list[dict]:
    """promtool input series: one run per night, at the start of the night; gauges hold the
    run's figure, counters grow by what the run added; a series a run did not export goes
    stale, as when a textfile no longer holds it."""
    increments = _increments(runs)
    keys = sorted({key for name in nights for key in runs[name]["exported"]})
    series = []
    for metric, stage in keys:
        segments, total = [], 0.0
        for name in nights:
            exported = runs[name]["exported"]
            if metric in COUNTERS:
                total += increments[name].get((metric, stage), 0.0)
                value = total if (metric, stage) in exported else None
            else:
                value = exported.get((metric, stage))
            if value is None:
                segments.append(f"stale _x{SAMPLES_PER_DAY - 2}")
            else:
                segments.append(f"{value:.9g}x{SAMPLES_PER_DAY - 1}")
        labels = ",".join(f'{k}="{v}"' for k, v in {"pipeline": PIPELINE, "stage": stage, **COLLECTOR}.items())
        series.append({"series": f"{metric}{{{labels}}}", "values": " ".join(segments)})
    return series


def _usual_nights(last: str) -> list[str]:
    return [("usual_a", "usual_b")[i % 2] for i in range(USUAL_NIGHTS)] + [last]


def _volume_series(available_gib: list[float]) -> list[dict]:
    """kubelet's volume series (not tamis's): a 100 GiB claim whose free space follows
    ``available_gib`` per sample, the last value held to the end."""
    labels = 'namespace="tamis",persistentvolumeclaim="tamis-scratch"'
    gib = 1 << 30
    samples = (USUAL_NIGHTS + 1) * SAMPLES_PER_DAY
    values = [available_gib[min(i, len(available_gib) - 1)] for i in range(samples)]
    return [
        {"series": f"kubelet_volume_stats_capacity_bytes{{{labels}}}", "values": f"{100 * gib}x{samples - 1}"},
        {
            "series": f"kubelet_volume_stats_available_bytes{{{labels}}}",
            "values": " ".join(str(int(v * gib)) for v in values),
        },
    ]


def _expected(alerts: dict[str, list[dict]], at_min: int = EVAL_MIN) -> list[dict]:
    severity = {r["alert"]: r["labels"]["severity"] for r in _alert_rules()}
    return [
        {
            "eval_time": f"{at_min}m",
            "alertname": alert,
            "exp_alerts": [{"exp_labels": {**labels, "severity": severity[alert]}} for labels in fired],
        }
        for alert, fired in alerts.items()
    ]


def _stages(*stages: str) -> list[dict]:
    return [{"pipeline": PIPELINE, "stage": s} for s in stages]


def _scenarios(runs) -> list[dict]:
    quiet = dict.fromkeys(TAMIS_ALERTS, [])
    end = (USUAL_NIGHTS + 1) * 24 * 60 - STEP_MIN
    half_full = [50.0]
    steady_usage = [60.0 - 0.001 * i for i in range((USUAL_NIGHTS + 1) * SAMPLES_PER_DAY)]  # logs, a few MiB a day
    filling = [60.0] * (EVAL_MIN // STEP_MIN - 144) + [60.0 - 0.3 * i for i in range(150)]  # 36 GiB in 12 hours
    pvc = [{"namespace": "tamis", "persistentvolumeclaim": "tamis-scratch"}]
    return [
        {
            "name": "usual nights: nothing fires",
            "input_series": _night_series(runs, _usual_nights("usual_a")) + _volume_series(steady_usage),
            "alert_rule_test": _expected({**quiet, **dict.fromkeys(VOLUME_ALERTS, [])})
            + _expected(quiet, at_min=EVAL_MIN + 6 * 60)
            + _expected(quiet, at_min=end),
        },
        {
            "name": "a night of leaked, resent PII and broken lines",
            "input_series": _night_series(runs, _usual_nights("jump")) + _volume_series(half_full),
            "alert_rule_test": _expected(
                {
                    "TamisDropRateHigh": _stages("exact_dedup"),
                    "TamisDropRateJump": _stages("exact_dedup"),
                    "TamisDuplicateRateJump": _stages("exact_dedup"),
                    "TamisPiiDetectionRateJump": _stages("pii"),
                    "TamisErrorRateHigh": _stages("ingest"),
                    "TamisDriftBreach": _stages("drift"),
                }
            )
            # The error alert covers the runs of the last hour, then resolves.
            + _expected({"TamisErrorRateHigh": []}, at_min=EVAL_MIN + 2 * 60),
        },
        {
            "name": "a night of one document",
            "input_series": _night_series(runs, _usual_nights("one_doc")) + _volume_series(half_full),
            "alert_rule_test": _expected({"TamisThroughputLow": _stages(*STAGES)}),
        },
        {
            "name": "a night with no data",
            "input_series": _night_series(runs, _usual_nights("empty")) + _volume_series(half_full),
            "alert_rule_test": _expected(quiet),
        },
        {
            "name": "a volume nearly full",
            "input_series": _volume_series([5.0]),
            "alert_rule_test": _expected({"TamisStorageNearFull": pvc, "TamisStorageFillingUp": []}),
        },
        {
            "name": "a volume filling up",
            "input_series": _volume_series(filling),
            "alert_rule_test": _expected({"TamisStorageFillingUp": pvc, "TamisStorageNearFull": []}),
        },
    ]


def _rule_file(path, with_annotations: bool) -> None:
    """The PrometheusRule's groups as a plain Prometheus rule file. promtool's unit tests
    compare annotations too; they are templates that decide nothing, so the unit tests
    read the rules without them (``promtool check rules`` checks them)."""
    groups = [
        {
            **group,
            "rules": [
                rule if with_annotations else {k: v for k, v in rule.items() if k != "annotations"}
                for rule in group["rules"]
            ],
        }
        for group in next(d for d in yaml.safe_load_all(RULES.read_text()) if d)["spec"]["groups"]
    ]
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))


def test_promtool_accepts_the_rules(tmp_path):
    _rule_file(tmp_path / "rules.yaml", with_annotations=True)
    result = subprocess.run(
        [_promtool(), "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in result.stdout + result.stderr


def test_every_alert_fires_on_its_night_and_stays_quiet_on_usual_ones(runs, tmp_path):
    scenarios = _scenarios(runs)
    fired = {t["alertname"] for s in scenarios for t in s["alert_rule_test"] if t["exp_alerts"]}
    quiet = {t["alertname"] for t in scenarios[0]["alert_rule_test"] if not t["exp_alerts"]}
    every_alert = set(TAMIS_ALERTS) | set(VOLUME_ALERTS)
    assert fired == quiet == every_alert, "every rule needs a night that trips it and usual nights that do not"
    assert set(TAMIS_ALERTS) and {m for r in _alert_rules() for m in re.findall(r"\btamis_\w+", r["expr"])} == set(
        METRICS
    )

    _rule_file(tmp_path / "rules.yaml", with_annotations=False)
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": f"{STEP_MIN}m",
        "tests": [{"interval": f"{STEP_MIN}m", **s} for s in scenarios],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run([_promtool(), "test", "rules", "tests.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
