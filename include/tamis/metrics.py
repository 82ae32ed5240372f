"""Pipeline metrics of a finished stage, for the same monitoring that watches Airflow.

Airflow sends its own metrics to StatsD when configured; a stage sends its figures to
the same place: UDP StatsD lines with DogStatsD tags (``|#stage:...,pipeline:...``,
which statsd_exporter turns into Prometheus labels) to ``TAMIS_STATSD_HOST`` and
``TAMIS_STATSD_PORT`` (8125 when only the host is set). Where Prometheus scrapes a
node_exporter textfile collector instead, ``TAMIS_PROMETHEUS_TEXTFILE_DIR`` names its
local folder and each stage writes ``tamis_<pipeline>_<stage>.prom`` there.

The figures, all labelled ``stage`` and ``pipeline``:

- ``tamis_docs_processed_total`` (counter): documents read by the stage
- ``tamis_docs_per_second`` (gauge): documents read per second of the stage's run
- ``tamis_errors_total`` (counter): records quarantined as bad input
- ``tamis_drop_rate`` (gauge): dropped / read
- ``tamis_duplicate_rate`` (gauge, stages that declare duplicate drop reasons in their
  manifest, ``declares.duplicate_reasons``): records dropped for those reasons / read
- ``tamis_pii_detection_rate`` (gauge, stages that count PII: ``pii.entity.<TYPE>`` or
  ``pii.findings`` in their manifest): entities found per document read (bookkeeping
  counters such as ``pii.findings`` are not entities and do not count)

Counters count documents over all runs, on both paths: statsd_exporter adds up what it
receives, and the textfile adds each run's count to the value the file already holds, so
``increase()`` over a window is what the runs in it processed. Gauges hold the last run's
figure until the next run replaces it.

After the drift check of a nightly run (:mod:`tamis.trends`), labelled ``stage="drift"``:

- ``tamis_drift_breaches`` (gauge): rates further from their trailing mean than the tolerance
- ``tamis_drift_max_change`` (gauge): the largest distance of a rate from its trailing mean

Metrics never stop a stage: a failed send is logged and dropped.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
from typing import Any

log = logging.getLogger("tamis.metrics")

# Every figure a stage exports: name -> (Prometheus type, help text).
METRICS = {
    "tamis_docs_processed_total": ("counter", "Documents read by the stage, over all its runs."),
    "tamis_docs_per_second": ("gauge", "Documents read per second in the stage's last run."),
    "tamis_errors_total": ("counter", "Records quarantined as bad input by the stage, over all its runs."),
    "tamis_drop_rate": ("gauge", "Share of the documents read that the stage's last run dropped."),
    "tamis_duplicate_rate": ("gauge", "Share of the documents read that the stage's last run dropped as duplicates."),
    "tamis_pii_detection_rate": ("gauge", "PII entities found per document read in the stage's last run."),
    "tamis_drift_breaches": (
        "gauge",
        "Rates of the last nightly run further from their trailing mean than the tolerance.",
    ),
    "tamis_drift_max_change": (
        "gauge",
        "The largest distance of a rate of the last nightly run from its trailing mean.",
    ),
}
COUNTERS = tuple(name for name, (kind, _) in METRICS.items() if kind == "counter")
PII_ENTITY_PREFIX = "pii.entity."
PII_FINDINGS = "pii.findings"


def pii_entity_counts(manifest_metrics: dict[str, Any]) -> dict[str, int]:
    """Entity type -> count from a manifest's ``pii.entity.<TYPE>`` metrics, largest first.

    The PII stage's bookkeeping counters (``pii.findings``, ``pii.docs_analysed``...) share
    the ``pii.`` prefix but are not entity types; the report and the detection rate both
    read entities through this function so they agree on what an entity is."""
    out = {
        key[len(PII_ENTITY_PREFIX) :]: int(value)
        for key, value in manifest_metrics.items()
        if key.startswith(PII_ENTITY_PREFIX) and isinstance(value, (int, float))
    }
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def stage_metrics(manifest: dict[str, Any]) -> dict[str, float]:
    """The figures of one finished stage, by metric name."""
    counts = manifest.get("counts", {})
    n_in = int(counts.get("in", 0))
    dropped = int(counts.get("dropped", 0))
    rate = manifest.get("docs_per_s")
    if rate is None:
        elapsed = manifest.get("elapsed_s") or 0
        rate = n_in / elapsed if elapsed else 0.0
    figures = {
        "tamis_docs_processed_total": float(n_in),
        "tamis_docs_per_second": float(rate),
        "tamis_errors_total": float(counts.get("quarantined", 0)),
        "tamis_drop_rate": dropped / n_in if n_in else 0.0,
    }
    duplicate_reasons = manifest.get("declares", {}).get("duplicate_reasons") or []
    if duplicate_reasons:
        reasons = manifest.get("drop_reasons", {})
        duplicates = sum(int(reasons.get(reason, 0)) for reason in duplicate_reasons)
        figures["tamis_duplicate_rate"] = duplicates / n_in if n_in else 0.0
    stage_counters = manifest.get("metrics", {})
    pii = pii_entity_counts(stage_counters)
    # A PII stage that found nothing still reports its rate: 0, not a missing series.
    if pii or PII_FINDINGS in stage_counters:
        figures["tamis_pii_detection_rate"] = sum(pii.values()) / n_in if n_in else 0.0
    return figures


def statsd_lines(figures: dict[str, float], stage: str, pipeline: str) -> list[str]:
    tags = f"#stage:{_tag(stage)},pipeline:{_tag(pipeline)}"
    return [f"{name}:{_number(value)}|{'c' if name in COUNTERS else 'g'}|{tags}" for name, value in figures.items()]


def prometheus_text(
    figures: dict[str, float], stage: str, pipeline: str, previous: dict[str, float] | None = None
) -> str:
    """The textfile of a stage; counters add this run's figure to ``previous`` (the values
    the file held: see :func:`read_prometheus_counters`)."""
    labels = f'stage="{_label(stage)}",pipeline="{_label(pipeline)}"'
    previous = previous or {}
    lines = []
    for name, value in figures.items():
        if name in COUNTERS:
            value += previous.get(name, 0.0)
        kind, help_text = METRICS[name]
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name}{{{labels}}} {_number(value)}")
    return "\n".join(lines) + "\n"


def read_prometheus_counters(text: str) -> dict[str, float]:
    """Counter values of a stage's textfile; what cannot be read counts as a counter reset."""
    values = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match["name"] in COUNTERS:
            try:
                values[match["name"]] = float(match["value"])
            except ValueError:
                continue
    return values


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{.*\})?\s+(?P<value>\S+)\s*$")


def emit_stage_metrics(manifest: dict[str, Any], pipeline: str) -> dict[str, float]:
    """Send a finished stage's figures to StatsD and/or a Prometheus textfile, as configured
    by the environment; return the figures (also when nothing is configured)."""
    figures = stage_metrics(manifest)
    emit(figures, manifest.get("stage", "unknown"), pipeline)
    return figures


def drift_metrics(result: dict[str, Any]) -> dict[str, float]:
    changes = [abs(b["change"]) for b in result.get("breaches", [])]
    return {"tamis_drift_breaches": float(len(changes)), "tamis_drift_max_change": max(changes, default=0.0)}


def emit_drift_metrics(result: dict[str, Any], pipeline: str) -> dict[str, float]:
    """Send the figures of a nightly run's drift check, labelled ``stage="drift"``."""
    figures = drift_metrics(result)
    emit(figures, "drift", pipeline)
    return figures


def emit(figures: dict[str, float], stage: str, pipeline: str) -> None:
    host = os.environ.get("TAMIS_STATSD_HOST")
    if host:
        port = int(os.environ.get("TAMIS_STATSD_PORT") or 8125)
        try:
            # One datagram per line: every StatsD server accepts that, whatever its packet size limit.
            with socket.socket(_family(host), socket.SOCK_DGRAM) as sock:
                for line in statsd_lines(figures, stage, pipeline):
                    sock.sendto(line.encode(), (host, port))
        except OSError as exc:
            log.warning("metrics: could not send to StatsD at %s:%s: %s", host, port, exc)
    folder = os.environ.get("TAMIS_PROMETHEUS_TEXTFILE_DIR")
    if folder:
        name = f"tamis_{_file_part(pipeline)}_{_file_part(stage)}.prom"
        try:
            os.makedirs(folder, exist_ok=True)
            final = os.path.join(folder, name)
            # The folder is locked while a file is read and replaced, so two runs of a stage
            # never lose a count; the file is written aside and renamed, so the collector
            # (which reads only *.prom) never sees half of one.
            lock = os.open(folder, os.O_RDONLY)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    with open(final) as f:
                        previous = read_prometheus_counters(f.read())
                except FileNotFoundError:
                    previous = {}
                with open(final + f".{os.getpid()}.tmp", "w") as f:
                    f.write(prometheus_text(figures, stage, pipeline, previous))
                os.replace(f.name, final)
            finally:
                os.close(lock)
        except OSError as exc:
            log.warning("metrics: could not write %s in %s: %s", name, folder, exc)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def _tag(value: str) -> str:
    return re.sub(r"[,|#:\s]", "_", value)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _file_part(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", value)
