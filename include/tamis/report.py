"""The data-quality report of a run, built from what the stages wrote.

Everything here reads datasets (manifests, gate results, Parquet parts, cluster tables)
and returns plain dicts and lists, so the report pages, the command line and the tests
share one implementation. Nothing here renders HTML or knows about Airflow.

PII is reported as counts by entity type only (manifest metrics ``pii.entity.<TYPE>``); the
Great Expectations results are reported without the sample values that Great
Expectations keeps for failed expectations, since those may be the very PII a gate
caught.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from tamis import storage
from tamis.dataset import GATE_RESULT, MANIFEST, Dataset
from tamis.metrics import pii_entity_counts

CLUSTERS_DIR = "_clusters"


class StageNotReady(LookupError):
    pass


# --------------------------------------------------------------------------- stages


def stage_status(stage_url: str) -> dict[str, Any]:
    """What a stage folder holds: ``done`` (manifest written), ``incomplete`` (some shards
    committed, no manifest yet: running, or stopped before the end) or ``not run``."""
    dataset = Dataset(stage_url)
    if dataset.is_complete():
        try:
            manifest = dataset.manifest()
        except ValueError as exc:  # a truncated or hand-edited manifest is reported, not raised
            return {"status": "unreadable", "message": f"{MANIFEST} could not be read: {exc}"}
        return {"status": "done", "manifest": manifest}
    fs, path = storage.filesystem(stage_url)
    if not fs.exists(path):
        return {"status": "not run"}
    commits = storage.join(stage_url, "_commits")
    _, commits_path = storage.filesystem(commits)
    committed = len([p for p in fs.glob(f"{commits_path}/*.json")]) if fs.exists(commits_path) else 0
    return {"status": "incomplete", "committed_shards": committed,
            "message": f"no {MANIFEST} yet: {committed} shard(s) committed (still running, or stopped before the end)"}


def run_exists(run_url: str) -> bool:
    fs, path = storage.filesystem(run_url)
    return fs.exists(path)


def run_report(run_url: str, stage_names: list[str]) -> dict[str, Any]:
    """Per-stage funnel, reasons, PII counts and gate results of one run."""
    stages = []
    for name in stage_names:
        url = storage.join(run_url, name)
        status = stage_status(url)
        entry: dict[str, Any] = {"stage": name, "url": url, "status": status["status"]}
        for key in ("message", "committed_shards"):
            if key in status:
                entry[key] = status[key]
        if status["status"] == "done":
            m = status["manifest"]
            counts = m.get("counts", {})
            entry.update({
                "counts": {k: int(counts.get(k, 0)) for k in ("in", "kept", "dropped", "quarantined")},
                "drop_reasons": dict(m.get("drop_reasons", {})),
                "quarantine_reasons": dict(m.get("quarantine_reasons", {})),
                "pii": pii_counts(m),
                "elapsed_s": m.get("elapsed_s"),
                "docs_per_s": m.get("docs_per_s"),
                "finished_at": m.get("finished_at"),
            })
        entry["gate"] = gate_result(url)
        stages.append(entry)
    done = [s for s in stages if s["status"] == "done"]
    return {
        "run_url": run_url,
        "exists": run_exists(run_url),
        "stages": stages,
        "complete": bool(stages) and len(done) == len(stages),
        "final_stage": done[-1]["stage"] if done else None,
    }


def funnel(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per finished stage: in, kept, dropped, quarantined and the drop rate."""
    rows = []
    for s in report["stages"]:
        if s["status"] != "done":
            continue
        c = s["counts"]
        rows.append({"stage": s["stage"], **c,
                     "drop_rate": (c["dropped"] + c["quarantined"]) / c["in"] if c["in"] else 0.0})
    return rows


def reasons_by_rule(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (stage, rule, kind, count), largest first within a stage."""
    rows = []
    for s in report["stages"]:
        if s["status"] != "done":
            continue
        for kind, reasons in (("dropped", s["drop_reasons"]), ("quarantined", s["quarantine_reasons"])):
            for rule, count in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
                rows.append({"stage": s["stage"], "rule": rule, "kind": kind, "count": int(count)})
    return rows


def pii_counts(manifest: dict[str, Any]) -> dict[str, int]:
    """Entity type -> count from the ``pii.entity.<TYPE>`` metrics; never any value."""
    return pii_entity_counts(manifest.get("metrics", {}))


def gate_result(stage_url: str) -> dict[str, Any] | None:
    """The stage's Great Expectations summary without unexpected sample values."""
    url = storage.join(stage_url, GATE_RESULT)
    if not storage.exists(url):
        return None
    try:
        raw = storage.read_json(url)
    except ValueError as exc:
        return {"success": False, "error": f"{GATE_RESULT} could not be read: {exc}", "expectations": []}
    expectations = []
    for suite in raw.get("suites", []):
        for e in suite.get("expectations", []):
            kwargs = {k: v for k, v in (e.get("kwargs") or {}).items() if k != "batch_id"}
            result = e.get("result") or {}
            expectations.append({
                "suite": suite.get("expectation_suite_name") or suite.get("name") or "",
                "expectation": e.get("expectation_type") or e.get("type") or "",
                "kwargs": kwargs,
                "success": bool(e.get("success")),
                "unexpected_count": result.get("unexpected_count"),
                "observed_value": _scalar(result.get("observed_value")),
            })
    return {
        "success": bool(raw.get("success")),
        "evaluated": int(raw.get("evaluated", len(expectations))),
        "failed": len(raw.get("failed", [])),
        "facts": raw.get("facts", {}),
        "expectations": expectations,
    }


def _scalar(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else None


# --------------------------------------------------------------------------- distributions


def dataset_columns(stage_url: str) -> list[str]:
    return Dataset(stage_url).column_names()


def records_stage(report: dict[str, Any], column: str = "text") -> str | None:
    """The last finished stage whose records have ``column`` (later stages may pack them away)."""
    for s in reversed(report["stages"]):
        if s["status"] == "done" and column in dataset_columns(s["url"]):
            return s["stage"]
    return None


def value_counts(stage_url: str, column: str, limit: int = 30) -> list[tuple[str, int]]:
    """Counts of the values of a string column over every part, largest first."""
    totals: dict[str, int] = {}
    for batch in Dataset(stage_url).iter_batches(columns=[column]):
        for item in pc.value_counts(batch.column(0)).to_pylist():
            key = "(null)" if item["values"] is None else str(item["values"])
            totals[key] = totals.get(key, 0) + int(item["counts"])
    return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]


def log_bins(max_value: float) -> np.ndarray:
    """Bin edges 0, 1, 2, 5, 10, 20, 50, ... covering ``max_value``: lengths span orders of magnitude."""
    edges = [0.0, 1.0]
    decade = 1.0
    while edges[-1] <= max_value:
        for step in (2.0, 5.0, 10.0):
            edges.append(decade * step)
            if edges[-1] > max_value:
                break
        decade *= 10.0
    return np.array(edges)


def histogram(stage_url: str, column: str, max_rows: int = 2_000_000) -> dict[str, Any]:
    """Histogram of text length in characters (``column="text"``) or of a numeric column
    (``token_count``), read batch by batch; at most ``max_rows`` rows are read."""
    chunks, rows, total = [], 0, 0
    for batch in Dataset(stage_url).iter_batches(columns=[column]):
        values = batch.column(0)
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            values = pc.utf8_length(values)
        values = values.drop_null().to_numpy(zero_copy_only=False).astype(np.float64)
        total += batch.num_rows
        if rows >= max_rows:
            continue
        chunks.append(values[: max_rows - rows])
        rows += len(chunks[-1])
    data = np.concatenate(chunks) if chunks else np.empty(0)
    edges = log_bins(float(data.max()) if len(data) else 1.0)
    counts, _ = np.histogram(data, bins=edges)
    # Leading empty bins (no document of 0-10 characters) only push the data to the right.
    first = int(np.argmax(counts > 0)) if counts.any() else 0
    edges, counts = edges[first:], counts[first:]
    return {
        "column": column,
        "edges": edges.tolist(),
        "counts": counts.astype(int).tolist(),
        "rows": len(data),
        "total_rows": int(total),
        "sampled": bool(total > rows),
        "sum": float(data.sum()) if len(data) else 0.0,
        "mean": float(data.mean()) if len(data) else 0.0,
        "median": float(np.median(data)) if len(data) else 0.0,
        "p99": float(np.percentile(data, 99)) if len(data) else 0.0,
        "max": float(data.max()) if len(data) else 0.0,
    }


# --------------------------------------------------------------------------- records


def _parts_dataset(stage_url: str) -> pads.Dataset:
    dataset = Dataset(stage_url)
    shards = dataset.shards()
    if not shards:
        raise StageNotReady(f"{stage_url} has no parts")
    fs, _ = storage.filesystem(shards[0].url)
    return pads.dataset([storage.filesystem(s.url)[1] for s in shards], format="parquet", filesystem=fs)


def find_records(stage_url: str, record_id: str | None = None, source: str | None = None,
                 lang: str | None = None, limit: int = 25, text_chars: int = 600) -> dict[str, Any]:
    """Records of a finished stage by id, or filtered by source and language.

    The filter is pushed into the Parquet scan (row-group statistics skip what cannot
    match), and the scan stops after ``limit`` rows.
    """
    if not Dataset(stage_url).is_complete():
        raise StageNotReady(f"no finished dataset at {stage_url}")
    data = _parts_dataset(stage_url)
    names = data.schema.names
    condition = None
    for column, value in (("id", record_id), ("source", source), ("lang", lang)):
        if value:
            if column not in names:
                return {"columns": [], "rows": [], "message": f"this dataset has no {column!r} column"}
            term = pads.field(column) == value
            condition = term if condition is None else condition & term
    shown = [c for c in ("id", "source", "date", "lang", "token_count", "url", "text") if c in names]
    table = data.scanner(columns=shown, filter=condition).head(limit)
    rows = table.to_pylist()
    for row in rows:
        text = row.get("text")
        if isinstance(text, str):
            row["text_chars"] = len(text)
            row["text"] = text if len(text) <= text_chars else text[:text_chars] + " …"
    return {"columns": shown, "rows": rows, "message": None if rows else "no record matches"}


def texts_by_id(stage_url: str, ids: list[str], chars: int = 300) -> dict[str, str]:
    """The beginning of the text of each id found in a finished dataset."""
    if not ids or not Dataset(stage_url).is_complete():
        return {}
    data = _parts_dataset(stage_url)
    if "text" not in data.schema.names:
        return {}
    table = data.to_table(columns=["id", "text"], filter=pads.field("id").isin(ids))
    return {i: (t or "")[:chars] for i, t in zip(table.column("id").to_pylist(), table.column("text").to_pylist())}


def cluster_samples(stage_url: str, limit: int = 8, chars: int = 300) -> dict[str, Any] | None:
    """The largest near-duplicate clusters (``_clusters/*.parquet``) with text snippets of
    the survivor and of one duplicate, which lives only in the stage's input."""
    clusters_url = storage.join(stage_url, CLUSTERS_DIR)
    fs, path = storage.filesystem(clusters_url)
    if not fs.exists(path):
        return None
    files = sorted(fs.glob(f"{path}/*.parquet"))
    if not files:
        return {"clusters": [], "total_clusters": 0, "duplicates": 0}
    table = pads.dataset(files, format="parquet", filesystem=fs).to_table()
    total = table.num_rows
    duplicates = int(pc.sum(table.column("size")).as_py() or 0) - total if total else 0
    top = table.take(pc.sort_indices(table, sort_keys=[("size", "descending"), ("survivor_id", "ascending")])[:limit])
    rows = top.to_pylist()
    manifest = Dataset(stage_url).manifest()
    survivors = [r["survivor_id"] for r in rows]
    first_dups = [r["duplicate_ids"][0] for r in rows if r.get("duplicate_ids")]
    source_url = manifest.get("input") or stage_url
    texts = texts_by_id(source_url, survivors + first_dups, chars)
    out = []
    for r in rows:
        dup = r["duplicate_ids"][0] if r.get("duplicate_ids") else None
        pair = next((p for p in (r.get("sample_pairs") or []) if p.get("id_b") == dup), None)
        out.append({
            "survivor_id": r["survivor_id"], "size": int(r["size"]),
            "duplicate_ids": list(r.get("duplicate_ids") or [])[:10],
            "similarity": None if pair is None or pair.get("similarity") is None else round(float(pair["similarity"]), 3),
            "survivor_text": texts.get(r["survivor_id"], ""),
            "duplicate_id": dup, "duplicate_text": texts.get(dup, "") if dup else "",
        })
    return {"clusters": out, "total_clusters": total, "duplicates": duplicates}
