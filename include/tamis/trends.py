"""A pipeline's runs over time, and the drift check of each nightly run.

Every run of a pipeline writes its stages under ``<storage_root>/runs/<run>/``. A nightly run
is one whose output was appended to the corpus (the partition's manifest names the run's
stage it came from) or one the drift check looked at (it leaves ``_drift.json`` in the run
folder, also when the check stopped the day from being appended); every other run folder
holding this pipeline's stages is a manual run.

Each run is summed up from its manifests alone, never from its records, as rates:

* ``drop_rate/<stage>/<rule>`` and ``quarantine_rate/<stage>/<rule>``: documents the rule
  took out of the stage's input;
* ``duplicate_rate/<stage>``: the drops whose reason the stage declares a duplicate reason;
* ``pii_rate/<stage>/<TYPE>``: entities found per document read (``pii.entity.<TYPE>``);
* ``lang_share/<code>``: the share of each detected language (``language.detected.<code>``);

plus the counts of every stage and the tokens counted (``*.tokens`` metrics).

The drift check compares each rate of a nightly run with the mean of the same rate over the
``window`` nightly runs before it; a rate further from that mean than ``tolerance`` (times
the mean, where the mean is above 1, as PII entities per document may be) is a breach. The result goes to the run folder (``_drift.json``, which the report pages read), to
the monitoring (:func:`tamis.metrics.emit_drift_metrics`) and, with ``on_breach: fail``,
stops the day from being appended.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tamis import storage
from tamis.dataset import MANIFEST
from tamis.metrics import pii_entity_counts
from tamis.runner import StageError

if TYPE_CHECKING:
    from tamis.pipeline import Pipeline

log = logging.getLogger("tamis.trends")

DRIFT_FILE = "_drift.json"
LANGUAGE_METRIC = "language.detected."
TOKENS_METRIC = re.compile(r"^[A-Za-z0-9_]+\.tokens$")
_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*$")


class DriftConfig(BaseModel):
    """The pipeline YAML's ``reports.drift`` block."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # Nightly runs before this one whose mean is the baseline of each rate.
    window: int = Field(default=7, ge=1)
    # Fewer earlier nightly runs than this: nothing to compare with yet, no breach.
    min_history: int = Field(default=2, ge=1)
    # Largest distance of a rate from its baseline that is still normal (0.05: 5 points).
    tolerance: float = Field(default=0.05, gt=0.0, le=1.0)
    # A breach warns (logged, shown, counted) or fails the run's gate (the day is not appended).
    on_breach: Literal["warn", "fail"] = "warn"


class DriftBreach(StageError):
    """A nightly run's rates left their trailing window and the pipeline says to fail."""


# --------------------------------------------------------------------------- one run


@dataclass
class RunSummary:
    """What the trends need of one run: its stages' counts, reasons and metrics."""

    folder: str
    url: str
    kind: str  # "nightly" or "manual"
    date: str  # the partition date of a nightly run; the day a manual run finished
    finished_at: str
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    appended: bool = False
    drift: dict[str, Any] | None = None

    @cached_property
    def rates(self) -> dict[str, float]:
        return run_rates(self.stages)

    @property
    def tokens(self) -> int | None:
        found = [int(v) for s in self.stages.values() for k, v in s["metrics"].items() if TOKENS_METRIC.match(k)]
        return found[-1] if found else None


def stage_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The part of a stage manifest that trends and comparisons read (no parts list)."""
    return {
        "counts": {k: int(manifest.get("counts", {}).get(k, 0)) for k in ("in", "kept", "dropped", "quarantined")},
        "drop_reasons": dict(manifest.get("drop_reasons", {})),
        "quarantine_reasons": dict(manifest.get("quarantine_reasons", {})),
        "metrics": dict(manifest.get("metrics", {})),
        "declares": dict(manifest.get("declares") or {}),
        "params": manifest.get("params", {}),
        "type": manifest.get("type"),
        "pipeline": manifest.get("pipeline"),
        "finished_at": manifest.get("finished_at") or "",
    }


def run_rates(stages: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Every rate of one run, by series key (see the module's docstring)."""
    rates: dict[str, float] = {}
    languages: dict[str, int] = {}
    for name, s in stages.items():
        n_in = s["counts"]["in"]
        if n_in:
            for rule, count in s["drop_reasons"].items():
                rates[f"drop_rate/{name}/{rule}"] = count / n_in
            for rule, count in s["quarantine_reasons"].items():
                rates[f"quarantine_rate/{name}/{rule}"] = count / n_in
            duplicate_reasons = s["declares"].get("duplicate_reasons") or []
            if duplicate_reasons:
                rates[f"duplicate_rate/{name}"] = sum(s["drop_reasons"].get(r, 0) for r in duplicate_reasons) / n_in
            for entity, count in pii_entity_counts(s["metrics"]).items():
                rates[f"pii_rate/{name}/{entity}"] = count / n_in
        for key, value in s["metrics"].items():
            if key.startswith(LANGUAGE_METRIC):
                code = key[len(LANGUAGE_METRIC) :]
                languages[code] = languages.get(code, 0) + int(value)
    total = sum(languages.values())
    for code, count in languages.items():
        rates[f"lang_share/{code}"] = count / total if total else 0.0
    return rates


def split_key(key: str) -> dict[str, str | None]:
    """``drop_rate/quality/c4_min_sentences`` -> kind, stage and name (rule, entity, language)."""
    kind, _, rest = key.partition("/")
    if kind == "lang_share":
        return {"kind": kind, "stage": None, "name": rest}
    stage, _, name = rest.partition("/")
    return {"kind": kind, "stage": stage, "name": name or None}


@lru_cache(maxsize=4096)
def _cached_manifest(url: str, stamp: tuple) -> dict[str, Any]:
    """A finished stage's summary: its manifest never changes unless rewritten (a new stamp)."""
    return stage_summary(storage.read_json(url))


def _read_summary(stage_url: str) -> dict[str, Any] | None:
    url = storage.join(stage_url, MANIFEST)
    fs, path = storage.filesystem(url)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    stamp = (info.get("size"), info.get("mtime") or info.get("LastModified") or info.get("ETag"))
    try:
        return _cached_manifest(url, tuple(str(v) for v in stamp))
    except (ValueError, FileNotFoundError):  # a truncated manifest, or one removed in between
        return None


def read_run(
    pipeline: Pipeline, folder: str, kind: str = "manual", date: str | None = None, stages: list[str] | None = None
) -> RunSummary | None:
    """The finished stages of one run folder (None when it holds none of the pipeline's)."""
    url = storage.join(pipeline.storage_root, "runs", folder)
    found: dict[str, dict[str, Any]] = {}
    for name in stages or pipeline.stage_names:
        summary = _read_summary(storage.join(url, name))
        if summary is None:
            continue
        if summary["pipeline"] not in (None, pipeline.name):
            return None  # another pipeline that shares the storage root
        found[name] = summary
    if not found:
        return None
    drift_url = storage.join(url, DRIFT_FILE)
    drift = storage.read_json(drift_url) if storage.exists(drift_url) else None
    finished = max(s["finished_at"] for s in found.values())
    if drift is not None and kind == "manual":
        kind, date = "nightly", drift.get("date")
    return RunSummary(
        folder=folder, url=url, kind=kind, date=date or finished[:10], finished_at=finished, stages=found, drift=drift
    )


def nightly_folders(pipeline: Pipeline) -> dict[str, str]:
    """Run folder -> partition date of every nightly run whose day is in the corpus."""
    from tamis import corpus

    folders = {}
    for date, url in corpus.partitions(pipeline.corpus_url).items():
        appended_from = (_read_partition(url) or {}).get("appended_from") or ""
        run_url = appended_from.rstrip("/").rsplit("/", 1)[0]
        if run_url:
            folders[run_url.rsplit("/", 1)[-1]] = date
    return folders


def _read_partition(url: str) -> dict[str, Any] | None:
    manifest_url = storage.join(url, MANIFEST)
    fs, path = storage.filesystem(manifest_url)
    try:
        info = fs.info(path)
        return _cached_partition(manifest_url, str(info.get("size")), str(info.get("mtime") or info.get("ETag")))
    except (FileNotFoundError, ValueError):
        return None


@lru_cache(maxsize=4096)
def _cached_partition(url: str, size: str, mtime: str) -> dict[str, Any]:
    manifest = storage.read_json(url)
    return {"appended_from": manifest.get("appended_from"), "date": manifest.get("date")}


def run_folders(pipeline: Pipeline) -> list[str]:
    fs, root = storage.filesystem(storage.join(pipeline.storage_root, "runs"))
    if not fs.exists(root):
        return []
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    return sorted(n for n in names if is_run_folder(n))


def is_run_folder(name: str) -> bool:
    return bool(_FOLDER.match(name)) and ".." not in name


def pipeline_runs(pipeline: Pipeline) -> list[RunSummary]:
    """Every run of the pipeline with a finished stage, oldest first: nightly runs by their
    day, manual runs by when they finished."""
    nightly = nightly_folders(pipeline)
    corpus_stages = pipeline.corpus_stages
    runs = []
    for folder in run_folders(pipeline):
        date = nightly.get(folder)
        run = read_run(pipeline, folder, "nightly" if date else "manual", date, corpus_stages if date else None)
        if run is None:
            continue
        run.appended = date is not None
        runs.append(run)
    return sorted(runs, key=lambda r: (r.date, r.finished_at, r.folder))


# --------------------------------------------------------------------------- drift


def check_drift(rates: dict[str, float], history: list[dict[str, float]], config: DriftConfig) -> dict[str, Any]:
    """Each rate against the mean of the same rate over ``history`` (the runs before, oldest
    first; only the last ``window`` count). A rate a run does not have is 0 in that run."""
    window = history[-config.window :]
    result: dict[str, Any] = {
        "window": len(window),
        "tolerance": config.tolerance,
        "on_breach": config.on_breach,
        "checked": 0,
        "breaches": [],
    }
    if len(window) < config.min_history:
        result["status"] = "not enough history"
        return result
    keys = sorted(set(rates).union(*window))
    for key in keys:
        value = rates.get(key, 0.0)
        baseline = sum(h.get(key, 0.0) for h in window) / len(window)
        result["checked"] += 1
        # Shares and drop rates lie in 0..1; PII entities per document may exceed 1, and
        # there the tolerance is relative to the baseline.
        if abs(value - baseline) > config.tolerance * max(1.0, baseline):
            result["breaches"].append(
                {
                    "series": key,
                    **split_key(key),
                    "value": round(value, 6),
                    "baseline": round(baseline, 6),
                    "change": round(value - baseline, 6),
                }
            )
    result["breaches"].sort(key=lambda b: -abs(b["change"]))
    result["status"] = "breach" if result["breaches"] else "ok"
    return result


def drift(stages: dict[str, dict[str, Any]], history: list[dict[str, float]], config: DriftConfig) -> dict[str, Any]:
    """The drift check of one run's stage summaries (:func:`stage_summary`) against the
    rates of the runs before it."""
    result = check_drift(run_rates(stages), history, config)
    if not any(s["counts"]["in"] for s in stages.values()):
        # A day without new documents has no rates; it is not a drift from the days before.
        result.update(status="no documents", breaches=[], checked=0)
    return result


def drift_of_run(pipeline: Pipeline, run_id: str, date: str, config: DriftConfig | None = None) -> dict[str, Any]:
    """The drift check of the nightly run ``run_id`` (the day ``date``) against the nightly
    runs of earlier days, written to the run folder as ``_drift.json``."""
    from tamis.pipeline import safe_run_id

    config = config or pipeline.reports.drift
    folder = safe_run_id(run_id)
    stages = pipeline.corpus_stages
    run = read_run(pipeline, folder, "nightly", date, stages)
    if run is None:
        raise LookupError(f"run {run_id!r} has no finished stage of pipeline {pipeline.name!r} to check for drift")
    earlier = [r for r in pipeline_runs(pipeline) if r.kind == "nightly" and r.appended and r.date < date]
    result = {"date": date, "run": run.url, **drift(run.stages, [r.rates for r in earlier], config)}
    result["history"] = [r.date for r in earlier[-config.window :]]
    storage.write_json_atomic(storage.join(run.url, DRIFT_FILE), result, run.url)
    return result


def apply_drift_check(pipeline: Pipeline, run_id: str, date: str) -> dict[str, Any] | None:
    """Run the configured drift check of a nightly run: write it, emit it, log each breach,
    and raise :class:`DriftBreach` when a breach must fail the run."""
    from tamis.metrics import emit_drift_metrics

    config = pipeline.reports.drift
    if not config.enabled:
        return None
    result = drift_of_run(pipeline, run_id, date, config)
    emit_drift_metrics(result, pipeline.name)
    for breach in result["breaches"]:
        log.warning(
            "drift on %s: %s is %.4f, the mean of the %d nights before is %.4f (tolerance %.4f)",
            date,
            breach["series"],
            breach["value"],
            result["window"],
            breach["baseline"],
            config.tolerance,
        )
    if result["status"] == "breach" and config.on_breach == "fail":
        names = ", ".join(b["series"] for b in result["breaches"][:5])
        raise DriftBreach(
            f"drift check of {date}: {len(result['breaches'])} rate(s) left their trailing window "
            f"({names}); the day was not appended (reports.drift.on_breach: fail)"
        )
    return result
