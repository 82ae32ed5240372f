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

import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

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
    return {
        "status": "incomplete",
        "committed_shards": committed,
        "message": f"no {MANIFEST} yet: {committed} shard(s) committed (still running, or stopped before the end)",
    }


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
            entry.update(
                {
                    "counts": {k: int(counts.get(k, 0)) for k in ("in", "kept", "dropped", "quarantined")},
                    "drop_reasons": dict(m.get("drop_reasons", {})),
                    "quarantine_reasons": dict(m.get("quarantine_reasons", {})),
                    "pii": pii_counts(m),
                    "elapsed_s": m.get("elapsed_s"),
                    "docs_per_s": m.get("docs_per_s"),
                    "finished_at": m.get("finished_at"),
                }
            )
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
        rows.append(
            {"stage": s["stage"], **c, "drop_rate": (c["dropped"] + c["quarantined"]) / c["in"] if c["in"] else 0.0}
        )
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
            expectations.append(
                {
                    "suite": suite.get("expectation_suite_name") or suite.get("name") or "",
                    "expectation": e.get("expectation_type") or e.get("type") or "",
                    "kwargs": kwargs,
                    "success": bool(e.get("success")),
                    "unexpected_count": result.get("unexpected_count"),
                    "observed_value": _scalar(result.get("observed_value")),
                }
            )
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


def find_records(
    stage_url: str,
    record_id: str | None = None,
    source: str | None = None,
    lang: str | None = None,
    limit: int = 25,
    text_chars: int = 600,
    offset: int = 0,
) -> dict[str, Any]:
    """Records of a finished stage by id, or filtered by source and language, for a stage no
    index covers (:func:`indexed_records` reads through one).

    The filter is pushed into the Parquet scan (row-group statistics skip what cannot
    match), and the scan stops after ``offset + limit`` rows.
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
    table = data.scanner(columns=shown, filter=condition).head(offset + limit + 1)
    rows = table.slice(offset, limit).to_pylist()
    for row in rows:
        text = row.get("text")
        if isinstance(text, str):
            row["text_chars"] = len(text)
            row["text"] = text if len(text) <= text_chars else text[:text_chars] + " …"
    return {
        "columns": shown,
        "rows": rows,
        "message": None if rows else "no record matches",
        "next_offset": offset + limit if table.num_rows > offset + limit else None,
    }


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
        out.append(
            {
                "survivor_id": r["survivor_id"],
                "size": int(r["size"]),
                "duplicate_ids": list(r.get("duplicate_ids") or [])[:10],
                "similarity": None
                if pair is None or pair.get("similarity") is None
                else round(float(pair["similarity"]), 3),
                "survivor_text": texts.get(r["survivor_id"], ""),
                "duplicate_id": dup,
                "duplicate_text": texts.get(dup, "") if dup else "",
            }
        )
    return {"clusters": out, "total_clusters": total, "duplicates": duplicates}


# --------------------------------------------------------------------------- examples behind the numbers
#
# A stage names its output part after the input shard it read, so a record's part name is
# the same in every stage of a run: a dropped record's text is in the same-named part of the
# stage's input, and a record found once is found in every stage by reading one part.
#
# A rule may point at the text that triggered it: a ``detail`` that holds ``span=START:END``
# (character offsets into the text the stage read) is shown with that span highlighted.

SPAN = re.compile(r"(?:^|[\s;,(])span=(\d+):(\d+)\)?")
EXAMPLES_PER_PAGE = 20
SNIPPET_CHARS = 600
DIFF_CHARS = 4000  # shown of each side of a before/after
DIFF_CONTEXT = 160  # unchanged characters kept around a change
DIFF_SCAN_CHARS = 200_000  # compared of a text (a longer one's end is not diffed)
REDACTED = "\u2588"


def parse_detail(detail: str | None) -> tuple[str, tuple[int, int] | None]:
    """(the detail without its span, the span) of a drop's detail."""
    if not detail:
        return "", None
    match = SPAN.search(detail)
    if match is None:
        return detail, None
    start, end = int(match.group(1)), int(match.group(2))
    rest = (detail[: match.start()] + detail[match.end() :]).strip(" ;,")
    return rest, (start, end) if end >= start else None


def handles_pii(manifest: dict[str, Any]) -> bool:
    """A stage that looks for PII (it counts ``pii.*`` metrics): the records it dropped, and the
    values it masked, are never shown."""
    return any(key.startswith("pii.") for key in manifest.get("metrics", {}))


def snippet(text: str, span: tuple[int, int] | None, chars: int = SNIPPET_CHARS) -> dict[str, Any]:
    """The part of ``text`` worth showing: around the span when there is one, else its start;
    split as (before, match, after) so a page can highlight the match."""
    if span is None:
        cut = text[:chars]
        return {"before": cut, "match": "", "after": "", "start": 0, "cut_end": len(text) > chars, "chars": len(text)}
    start, end = max(0, min(span[0], len(text))), max(0, min(span[1], len(text)))
    margin = max((chars - (end - start)) // 2, 80)
    lo, hi = max(0, start - margin), min(len(text), end + margin)
    return {
        "before": text[lo:start],
        "match": text[start:end],
        "after": text[end:hi],
        "start": lo,
        "cut_end": hi < len(text),
        "chars": len(text),
    }


def _side_files(stage_url: str, folder: str, parts: list[str]) -> list[tuple[str, str]]:
    fs, _ = storage.filesystem(stage_url)
    out = []
    for part in parts:
        url = storage.join(stage_url, folder, f"{part}.parquet")
        path = storage.filesystem(url)[1]
        if fs.exists(path):
            out.append((part, path))
    return out


def _part_names(manifest: dict[str, Any]) -> list[str]:
    return [p["name"] for p in manifest.get("parts", [])]


def _scan_side(
    stage_url: str, folder: str, columns: list[str], condition, offset: int, limit: int, manifest: dict[str, Any]
) -> tuple[list[dict[str, Any]], bool]:
    """Rows of the ``_dropped`` or ``_quarantine`` tables matching ``condition``, part by part in
    manifest order, from ``offset``; reads no further than the page (and one row more) needs."""
    fs, _ = storage.filesystem(stage_url)
    rows: list[dict[str, Any]] = []
    seen = 0
    for part, path in _side_files(stage_url, folder, _part_names(manifest)):
        table = pq.read_table(path, filesystem=fs, columns=columns, filters=condition)
        if seen + table.num_rows > offset:
            start = max(offset - seen, 0)
            rows += [{**row, "part": part} for row in table.slice(start, limit + 1 - len(rows)).to_pylist()]
        seen += table.num_rows
        if len(rows) > limit:
            break
    return rows[:limit], len(rows) > limit


def read_part_rows(dataset_url: str, part: str, ids: list[str], columns: list[str] | None = None) -> dict[str, dict]:
    """The records ``ids`` of one part of a dataset (one part read, the id filter pushed down)."""
    url = storage.join(dataset_url, f"{part}.parquet")
    fs, path = storage.filesystem(url)
    if not ids or not fs.exists(path):
        return {}
    names = pq.read_schema(path, filesystem=fs).names
    wanted = [c for c in (columns or names) if c in names]
    if "id" not in wanted:
        wanted = ["id", *wanted]
    table = pq.read_table(path, filesystem=fs, columns=wanted, filters=pads.field("id").isin(ids))
    return {row["id"]: row for row in table.to_pylist()}


def _texts_by_part(dataset_url: str | None, rows: list[dict[str, Any]]) -> dict[str, str]:
    """Texts of ``rows`` (each with ``id`` and ``part``) from the same-named parts of a dataset."""
    if not dataset_url or not Dataset(dataset_url).is_complete():
        return {}
    by_part: dict[str, list[str]] = {}
    for row in rows:
        by_part.setdefault(row["part"], []).append(row["id"])
    texts = {}
    for part, ids in by_part.items():
        for doc_id, record in read_part_rows(dataset_url, part, ids, ["id", "text"]).items():
            if isinstance(record.get("text"), str):
                texts[doc_id] = record["text"]
    return texts


def dropped_examples(
    stage_url: str, rule: str | None, offset: int = 0, limit: int = EXAMPLES_PER_PAGE
) -> dict[str, Any]:
    """The documents ``rule`` (None: any rule) dropped in a finished stage, a page at a time,
    each with the rule's detail and its text as the stage read it (the triggering span
    marked). A PII stage's drops are listed without text."""
    manifest = Dataset(stage_url).manifest()
    condition = None if rule is None else pads.field("reason") == rule
    rows, more = _scan_side(
        stage_url, "_dropped", ["id", "source", "reason", "detail"], condition, offset, limit, manifest
    )
    hidden = handles_pii(manifest)
    texts = {} if hidden else _texts_by_part(manifest.get("input"), rows)
    for row in rows:
        row["detail"], span = parse_detail(row.get("detail"))
        text = texts.get(row["id"])
        row["snippet"] = snippet(text, span) if text is not None else None
        row["span"] = span
    return {
        "stage": manifest.get("stage"),
        "rule": rule,
        "kind": "dropped",
        "total": int(manifest["counts"]["dropped"] if rule is None else manifest.get("drop_reasons", {}).get(rule, 0)),
        "offset": offset,
        "rows": rows,
        "next_offset": offset + limit if more else None,
        "text_hidden": hidden,
        "duplicate": rule in ((manifest.get("declares") or {}).get("duplicate_reasons") or []),
    }


def quarantine_examples(stage_url: str, rule: str, offset: int = 0, limit: int = EXAMPLES_PER_PAGE) -> dict[str, Any]:
    """What a stage quarantined for ``rule``: file, line, detail and the short sample it kept."""
    manifest = Dataset(stage_url).manifest()
    rows, more = _scan_side(
        stage_url,
        "_quarantine",
        ["source_file", "line", "id", "reason", "detail", "sample"],
        pads.field("reason") == rule,
        offset,
        limit,
        manifest,
    )
    return {
        "stage": manifest.get("stage"),
        "rule": rule,
        "kind": "quarantined",
        "total": int(manifest.get("quarantine_reasons", {}).get(rule, 0)),
        "offset": offset,
        "rows": rows,
        "next_offset": offset + limit if more else None,
    }


def mask_pattern(manifest: dict[str, Any]) -> re.Pattern | None:
    """The replacement a PII stage writes for a masked value (its ``mask`` param, ``{entity}`` in it)."""
    template = (manifest.get("params") or {}).get("mask")
    if not isinstance(template, str) or "{entity}" not in template:
        return None
    head, _, tail = template.partition("{entity}")
    return re.compile(re.escape(head) + r"[A-Z][A-Z0-9_]*" + re.escape(tail))


def redact_spans(text: str, spans: list[dict[str, Any]] | None) -> str:
    out, last = [], 0
    for span in sorted(spans or [], key=lambda s: s["start"]):
        start, end = max(span["start"], last), span["end"]
        if end <= start:
            continue
        out.append(text[last:start])
        out.append(f"<{span.get('entity') or 'PII'}>")
        last = end
    out.append(text[last:])
    return "".join(out)


def pii_examples(stage_url: str, entity: str, offset: int = 0, limit: int = EXAMPLES_PER_PAGE) -> dict[str, Any]:
    """Documents a PII stage found ``entity`` in, as it output them: masked values appear only
    as their mask (flagged spans are masked here), never as the value."""
    dataset = Dataset(stage_url)
    manifest = dataset.manifest()
    columns = dataset.column_names()
    total = int(manifest.get("metrics", {}).get(f"pii.entity.{entity}", 0))
    if "pii_types" not in columns or "text" not in columns:
        return {
            "stage": manifest.get("stage"),
            "entity": entity,
            "total": total,
            "rows": [],
            "offset": offset,
            "next_offset": None,
            "message": "this stage's records do not say which PII types they hold",
        }
    pattern = mask_pattern(manifest)
    with_spans = "pii_spans" in columns
    wanted = [c for c in ("id", "source", "pii_count", "pii_types", "text", "pii_spans") if c in columns]
    condition = pc.match_substring(pads.field("pii_types"), entity)
    rows: list[dict[str, Any]] = []
    skipped, more = 0, False
    for shard in dataset.shards():
        fs, path = storage.filesystem(shard.url)
        table = pq.read_table(path, filesystem=fs, columns=wanted, filters=condition)
        for row in table.to_pylist():
            if entity not in (row.get("pii_types") or "").replace(" ", "").split(","):
                continue
            if skipped < offset:
                skipped += 1
                continue
            if len(rows) == limit:
                more = True
                break
            text = (
                redact_spans(row.pop("text") or "", row.pop("pii_spans", None)) if with_spans else row.pop("text") or ""
            )
            if not with_spans and pattern is None:
                text = None  # neither masked nor flagged: the text may hold the values
            marks = [m.span() for m in pattern.finditer(text)] if text is not None and pattern else []
            if with_spans and text is not None:
                marks = [m.span() for m in re.finditer(r"<[A-Z][A-Z0-9_]*>", text)]
            row.update(part=shard.name, text=None if text is None else text[:DIFF_CHARS], marks=marks)
            rows.append(row)
        if more:
            break
    return {
        "stage": manifest.get("stage"),
        "entity": entity,
        "total": total,
        "rows": rows,
        "offset": offset,
        "next_offset": offset + limit if more else None,
        "message": None,
    }


_TOKEN = re.compile(r"\s+|\w+|[^\w\s]")


def _changes(before: str, after: str) -> list[tuple[str, str, str]]:
    """(op, before piece, after piece) runs that turn ``before`` into ``after``: lines are
    matched first, then the words of each changed line against its counterpart, so that a
    long text with edits here and there costs about its length, not its length squared."""
    import difflib

    a_lines, b_lines = before.splitlines(keepends=True), after.splitlines(keepends=True)
    out: list[tuple[str, str, str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a_lines, b_lines).get_opcodes():
        if op == "equal":
            out.append(("equal", "".join(a_lines[i1:i2]), "".join(b_lines[j1:j2])))
        elif op == "replace" and i2 - i1 == j2 - j1:  # edited lines, each against its own
            for a_line, b_line in zip(a_lines[i1:i2], b_lines[j1:j2]):
                out += _word_changes(a_line, b_line)
        else:
            out += _word_changes("".join(a_lines[i1:i2]), "".join(b_lines[j1:j2]))
    return out


def _word_changes(a: str, b: str, window: int = 200, anchor: int = 3) -> list[tuple[str, str, str]]:
    """Word-level changes of two texts that differ here and there (a stage's edits are local:
    a mask, a collapsed space). Both are walked together; at a difference, the two sides
    resume at the nearest place where ``anchor`` words agree again, looked for within
    ``window`` words; beyond that the rest is one replaced piece. Linear in the text's length."""
    ta, tb = _TOKEN.findall(a), _TOKEN.findall(b)
    anchors: dict[tuple[str, ...], list[int]] = {}
    for size in (anchor, 1):  # one word agreeing is the fallback near the end of a text
        for k in range(len(tb) - size + 1):
            anchors.setdefault(tuple(tb[k : k + size]), []).append(k)
    out: list[tuple[str, str, str]] = []
    i = j = 0
    while i < len(ta) and j < len(tb):
        same_i, same_j = i, j
        while i < len(ta) and j < len(tb) and ta[i] == tb[j]:
            i += 1
            j += 1
        if i > same_i:
            out.append(("equal", "".join(ta[same_i:i]), "".join(tb[same_j:j])))
        if i == len(ta) or j == len(tb):
            break
        step = _resync(ta, i, j, anchors, window, anchor) or _resync(ta, i, j, anchors, window, 1)
        if step is None:
            break
        out.append(_edit(ta[i : i + step[0]], tb[j : j + step[1]]))
        i, j = i + step[0], j + step[1]
    if i < len(ta) or j < len(tb):
        out.append(_edit(ta[i:], tb[j:]))
    return out


def _resync(ta: list[str], i: int, j: int, anchors: dict, window: int, anchor: int) -> tuple[int, int] | None:
    """The fewest words (from ``ta[i]`` and ``tb[j]`` on) to skip until ``anchor`` words agree."""
    from bisect import bisect_left

    best: tuple[int, int] | None = None
    for di in range(min(window, len(ta) - i - anchor + 1)):
        if best is not None and di >= sum(best):
            break
        places = anchors.get(tuple(ta[i + di : i + di + anchor]))
        if not places:
            continue
        k = bisect_left(places, j)
        if k < len(places) and places[k] - j < window and (best is None or di + places[k] - j < sum(best)):
            best = (di, places[k] - j)
    return best


def _edit(removed: list[str], added: list[str]) -> tuple[str, str, str]:
    op = "replace" if removed and added else "delete" if removed else "insert"
    return (op, "".join(removed), "".join(added))


def text_diff(
    before: str, after: str, redact_changed: bool = False, context: int = DIFF_CONTEXT, chars: int = DIFF_CHARS
) -> dict[str, Any]:
    """What a stage changed in a text: both sides as runs of (same | changed, text), word by
    word, with long unchanged stretches cut to ``context`` characters around each change, and
    at most ``chars`` characters a side. With ``redact_changed`` the changed runs of
    ``before`` are blanked (what a PII stage replaced is the value itself); ``values`` lists
    those replaced pieces, for the caller to blank wherever else they show."""
    left: list[tuple[str, str]] = []
    right: list[tuple[str, str]] = []
    values: list[str] = []
    changes = _changes(before[:DIFF_SCAN_CHARS], after[:DIFF_SCAN_CHARS])
    for k, (op, a, b) in enumerate(changes):
        if op == "equal":
            first, last = k == 0, k == len(changes) - 1
            for side, text in ((left, a), (right, b)):
                side.append(("same", _condense(text, context, keep_head=not first, keep_tail=not last)))
            continue
        if a:
            values.append(a)
            left.append(("changed", REDACTED * min(len(a), 12) if redact_changed else a))
        if b:
            right.append(("changed", b))
    cut = len(before) > DIFF_SCAN_CHARS or len(after) > DIFF_SCAN_CHARS
    left, cut_left = _limit(left, chars)
    right, cut_right = _limit(right, chars)
    return {"before": left, "after": right, "cut": cut or cut_left or cut_right, "values": values}


def _condense(text: str, context: int, keep_head: bool, keep_tail: bool) -> str:
    """An unchanged stretch: its end that leads to the next change, its start that follows the
    last one, and " … " for what lies between."""
    head = text[:context] if keep_head else ""
    tail = text[-context:] if keep_tail else ""
    if len(text) <= len(head) + len(tail) + 5:
        return text
    return f"{head} … {tail}"


def _limit(runs: list[tuple[str, str]], chars: int) -> tuple[list[tuple[str, str]], bool]:
    out, used = [], 0
    for kind, text in runs:
        if used + len(text) > chars:
            out.append((kind, text[: max(chars - used, 0)]))
            return out, True
        out.append((kind, text))
        used += len(text)
    return out, False


def replaced_values(before: str, after: str) -> list[str]:
    """The pieces of ``before`` that a stage replaced (for a PII stage: the values it masked)."""
    return [a for op, a, _ in _changes(before, after) if op in ("replace", "delete") and a]


def redact_values(text: str, values: list[str]) -> str:
    for value in sorted({v for v in values if v.strip()}, key=len, reverse=True):
        text = text.replace(value, REDACTED * min(len(value), 12))
    return text


def changed_examples(stage_url: str, offset: int = 0, limit: int = 10) -> dict[str, Any]:
    """Before and after of the documents whose text a stage changed (normalize, PII masking),
    part by part: each part of the output is read with the same-named part of the input."""
    manifest = Dataset(stage_url).manifest()
    input_url = manifest.get("input")
    pii = handles_pii(manifest)
    rows: list[dict[str, Any]] = []
    if not input_url or not Dataset(input_url).is_complete():
        return {
            "stage": manifest.get("stage"),
            "rows": [],
            "offset": offset,
            "next_offset": None,
            "message": "this stage has no dataset as input",
        }
    seen = 0
    for part in _part_names(manifest):
        after = _read_texts(stage_url, part)
        before = _read_texts(input_url, part)
        if after is None or before is None:
            continue
        joined = after.join(before, "id", right_suffix="_before")
        differs = joined.filter(pc.not_equal(joined.column("text"), joined.column("text_before")))
        if seen + differs.num_rows > offset:
            start = max(offset - seen, 0)
            for row in differs.slice(start, limit + 1 - len(rows)).to_pylist():
                diff = text_diff(row["text_before"], row["text"], redact_changed=pii)
                diff.pop("values")  # never shown: for a PII stage they are the values themselves
                rows.append({"id": row["id"], "part": part, **diff})
        seen += differs.num_rows
        if len(rows) > limit:
            break
    return {
        "stage": manifest.get("stage"),
        "rows": rows[:limit],
        "offset": offset,
        "next_offset": offset + limit if len(rows) > limit else None,
        "message": None,
        "redacted": pii,
    }


def _read_texts(dataset_url: str, part: str) -> pa.Table | None:
    url = storage.join(dataset_url, f"{part}.parquet")
    fs, path = storage.filesystem(url)
    if not fs.exists(path):
        return None
    if "text" not in pq.read_schema(path, filesystem=fs).names:
        return None
    return pq.read_table(path, filesystem=fs, columns=["id", "text"])


# --------------------------------------------------------------------------- duplicate clusters


def cluster_files(stage_url: str) -> list[str]:
    fs, path = storage.filesystem(storage.join(stage_url, CLUSTERS_DIR))
    return sorted(fs.glob(f"{path}/*.parquet")) if fs.exists(path) else []


def cluster_of(stage_url: str, doc_id: str) -> dict[str, Any] | None:
    """The cluster a document belongs to (as survivor or member), from ``_clusters/``."""
    files = cluster_files(stage_url)
    if not files:
        return None
    fs, _ = storage.filesystem(stage_url)
    data = pads.dataset(files, format="parquet", filesystem=fs)
    table = data.to_table(filter=pads.field("survivor_id") == doc_id)
    if table.num_rows == 0:
        table = data.to_table(filter=pc.list_value_length(pads.field("duplicate_ids")) > 0)
        hit = pc.is_in(pc.list_flatten(table.column("duplicate_ids")), pa.array([doc_id]))
        if not pc.any(hit).as_py():
            return None
        parents = pc.list_parent_indices(table.column("duplicate_ids"))
        table = table.take(pc.filter(parents, hit).slice(0, 1))
    return table.to_pylist()[0]


def cluster_members(stage_url: str, survivor_id: str, limit: int = 12, chars: int = 1200) -> dict[str, Any] | None:
    """A duplicate cluster side by side: the survivor (kept) and its members (dropped), each
    with its text as the stage read it and its estimated Jaccard similarity to the survivor
    (MinHash with the stage's own parameters when it has them, else the sampled pairs)."""
    cluster = cluster_of(stage_url, survivor_id)
    if cluster is None:
        return None
    manifest = Dataset(stage_url).manifest()
    survivor = cluster["survivor_id"]
    members = list(cluster.get("duplicate_ids") or [])
    shown = members[:limit]
    located = _dropped_parts(stage_url, manifest, shown)
    texts = _texts_by_part(manifest.get("input"), [{"id": i, "part": p} for i, p in located.items()])
    survivor_part = _kept_part(stage_url, manifest, survivor)
    if survivor_part is not None:
        texts.update(_texts_by_part(manifest.get("input"), [{"id": survivor, "part": survivor_part}]))
    sampled = {p["id_b"]: p["similarity"] for p in cluster.get("sample_pairs") or [] if p.get("similarity") is not None}
    estimated = _minhash_similarity(manifest.get("params") or {}, texts.get(survivor), [texts.get(m) for m in shown])
    rows = []
    for i, member in enumerate(shown):
        similarity = estimated[i] if estimated is not None and estimated[i] is not None else sampled.get(member)
        rows.append(
            {
                "id": member,
                "part": located.get(member),
                "similarity": None if similarity is None else round(float(similarity), 3),
                "text": (texts.get(member) or "")[:chars],
            }
        )
    return {
        "stage": manifest.get("stage"),
        "survivor": {"id": survivor, "part": survivor_part, "text": (texts.get(survivor) or "")[:chars]},
        "size": int(cluster["size"]),
        "members": rows,
        "more_members": max(len(members) - len(shown), 0),
    }


def _dropped_parts(stage_url: str, manifest: dict[str, Any], ids: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    fs, _ = storage.filesystem(stage_url)
    for part, path in _side_files(stage_url, "_dropped", _part_names(manifest)):
        table = pq.read_table(path, filesystem=fs, columns=["id"], filters=pads.field("id").isin(ids))
        for doc_id in table.column("id").to_pylist():
            found[doc_id] = part
        if len(found) == len(ids):
            break
    return found


def _kept_part(stage_url: str, manifest: dict[str, Any], doc_id: str) -> str | None:
    fs, _ = storage.filesystem(stage_url)
    for part in _part_names(manifest):
        path = storage.filesystem(storage.join(stage_url, f"{part}.parquet"))[1]
        table = pq.read_table(path, filesystem=fs, columns=["id"], filters=pads.field("id") == doc_id)
        if table.num_rows:
            return part
    return None


def _minhash_similarity(
    params: dict[str, Any], survivor: str | None, members: list[str | None]
) -> list[float | None] | None:
    """Estimated Jaccard of each member with the survivor, by the stage's own MinHash settings."""
    from tamis import minhash

    needed = ("shingle", "ngram", "num_perm", "seed", "lowercase")
    if survivor is None or not all(k in params for k in needed):
        return None
    try:
        config = minhash.MinHashConfig(
            shingle=params["shingle"],
            ngram=int(params["ngram"]),
            num_perm=int(params["num_perm"]),
            bands=1,
            rows=1,
            seed=int(params["seed"]),
            lowercase=bool(params["lowercase"]),
        )
    except (ValueError, TypeError):
        return None
    present = [i for i, m in enumerate(members) if m is not None]
    if not present:
        return [None] * len(members)
    sig, _ = minhash.signatures(pa.array([survivor] + [members[i] for i in present], pa.string()), config)
    sims = minhash.similarity(np.repeat(sig[:1], len(present), axis=0), sig[1:])
    out: list[float | None] = [None] * len(members)
    for i, value in zip(present, sims):
        out[i] = float(value)
    return out


# --------------------------------------------------------------------------- one document through a run


def locate(run_url: str, stages: list[str], doc_id: str) -> str | None:
    """The part name of ``doc_id`` in a run: from an index of the run when one holds it, else
    by reading the id column of the first finished stage (kept, then dropped)."""
    from tamis import lookup

    for name in reversed(stages):
        url = storage.join(run_url, name)
        if storage.exists(lookup.metadata_url(url)):
            try:
                entry = lookup.get(url, doc_id, with_record=False)
            except LookupError:
                entry = None
            if entry and entry.get("shard"):
                return str(entry["shard"])
            break
    for name in stages:
        url = storage.join(run_url, name)
        if not Dataset(url).is_complete():
            continue
        manifest = Dataset(url).manifest()
        if "id" not in Dataset(url).column_names() and not manifest.get("drop_reasons"):
            continue
        dropped = _dropped_parts(url, manifest, [doc_id])
        if dropped:
            return dropped[doc_id]
        if "id" in Dataset(url).column_names():
            return _kept_part(url, manifest, doc_id)
    return None


def document_journey(run_url: str, stages: list[str], doc_id: str, part: str | None = None) -> dict[str, Any]:
    """What every stage of a run did to one document: kept (its text, and what the stage
    changed in it), dropped (rule, detail) or never reached; read one part per stage.

    The text is the last one kept; earlier ones show only in the before/after of the stages
    that changed them. Once a document went through a stage that masks PII, the values it
    masked are blanked in those before/after views too, and a document a PII stage dropped
    is shown without text."""
    part = part or locate(run_url, stages, doc_id)
    steps: list[dict[str, Any]] = []
    if part is None:
        return {"id": doc_id, "part": None, "steps": steps, "found": False}
    previous_text: str | None = None
    masked: list[str] = []
    hide_all = False
    for name in stages:
        url = storage.join(run_url, name)
        if not Dataset(url).is_complete():
            steps.append({"stage": name, "status": "not run"})
            continue
        manifest = Dataset(url).manifest()
        pii = handles_pii(manifest)
        kept = read_part_rows(url, part, [doc_id]).get(doc_id)
        if kept is None and "doc_ids" in Dataset(url).column_names():
            steps.append({"stage": name, "status": "packed", "detail": "records here are packed sequences"})
            continue
        if kept is not None:
            text = kept.get("text") if isinstance(kept.get("text"), str) else None
            step: dict[str, Any] = {
                "stage": name,
                "status": "kept",
                "record": {
                    k: v
                    for k, v in kept.items()
                    if k not in ("text", "input_ids", "pii_spans") and not isinstance(v, (list, dict, bytes))
                },
            }
            if text is not None:
                if "pii_spans" in kept:
                    text = redact_spans(text, kept.get("pii_spans"))
                if previous_text is not None and text != previous_text:
                    step["diff"] = text_diff(previous_text, text, redact_changed=pii)
                    if pii:  # blanked too where the before/after of earlier stages shows them
                        masked += step["diff"]["values"]
                step.get("diff", {}).pop("values", None)
                step["text"] = text
                previous_text = text
            steps.append(step)
            continue
        dropped = read_part_rows(storage.join(url, "_dropped"), part, [doc_id]).get(doc_id)
        if dropped is not None:
            detail, span = parse_detail(dropped.get("detail"))
            steps.append(
                {
                    "stage": name,
                    "status": "dropped",
                    "reason": dropped.get("reason"),
                    "detail": detail,
                    "span": span,
                    "duplicate_of": _duplicate_of(manifest, dropped),
                }
            )
            hide_all = hide_all or pii
            break
        steps.append({"stage": name, "status": "absent"})
        break
    last_text = max((i for i, step in enumerate(steps) if step.get("text") is not None), default=None)
    for i, step in enumerate(steps):
        if i != last_text:
            step.pop("text", None)  # earlier texts show only as the diffs of the stages that changed them
        if hide_all:
            step.pop("text", None)
            step.pop("diff", None)
            continue
        if masked and step.get("text") is not None:
            step["text"] = redact_values(step["text"], masked)
        if masked and "diff" in step:
            step["diff"] = {
                **step["diff"],
                **{
                    side: [(kind, redact_values(t, masked)) for kind, t in step["diff"][side]]
                    for side in ("before", "after")
                },
            }
    return {"id": doc_id, "part": part, "steps": steps, "found": bool(steps), "text_hidden": hide_all}


def _duplicate_of(manifest: dict[str, Any], dropped: dict[str, Any]) -> str | None:
    """A duplicate's detail is the id of the copy that was kept."""
    reasons = (manifest.get("declares") or {}).get("duplicate_reasons") or []
    detail = dropped.get("detail")
    return detail if dropped.get("reason") in reasons and isinstance(detail, str) and detail else None


# --------------------------------------------------------------------------- records through the index


def index_of(run_url: str, stages: list[str], stage: str) -> str | None:
    """The stage of the run whose index (``_index/metadata.parquet``) covers ``stage``'s records."""
    from tamis.lookup import metadata_url
    from tamis.stages.index import index_summary

    for name in stages:
        url = storage.join(run_url, name)
        if not storage.exists(metadata_url(url)):
            continue
        documents = (index_summary(url).get("documents_url") or "").rstrip("/")
        if documents.rsplit("/", 1)[-1] == stage or name == stage:
            return url
    return None


def indexed_records(
    index_url: str, filters: dict[str, str], offset: int = 0, limit: int = 25, text_chars: int = 600
) -> dict[str, Any]:
    """A page of records through an index: the filter runs on the index alone (DuckDB over
    ``metadata.parquet``), then the texts are read from the row groups the index points at,
    each row group once."""
    from tamis import lookup
    from tamis.stages.index import LOCATION_COLUMNS

    fs, path = storage.filesystem(lookup.metadata_url(index_url))
    names = pq.read_schema(path, filesystem=fs).names
    terms = []
    for column, value in filters.items():
        if not value:
            continue
        if column not in names:
            return {"columns": [], "rows": [], "next_offset": None, "message": f"the index has no {column!r} column"}
        terms.append(f'"{column}" = \'' + value.replace("'", "''") + "'")
    shown = [c for c in ("id", "source", "date", "lang", "token_count", "url") if c in names]
    located = [c for c in LOCATION_COLUMNS if c in names]
    found = lookup.query(
        index_url, " and ".join(terms) or "true", columns=shown + located, limit=limit + 1, offset=offset
    )
    rows = found.slice(0, limit).to_pylist()
    texts = _texts_at(lookup.documents_url(index_url), rows) if len(located) == 3 else {}
    for row in rows:
        for column in located:
            row.pop(column)
        text = texts.get(row["id"])
        if isinstance(text, str):
            row["text_chars"] = len(text)
            row["text"] = text if len(text) <= text_chars else text[:text_chars] + " …"
    columns = shown + (["text"] if texts else [])
    return {
        "columns": columns,
        "rows": rows,
        "next_offset": offset + limit if found.num_rows > limit else None,
        "message": None if rows else "no record matches",
    }


def _texts_at(documents_url: str, rows: list[dict[str, Any]]) -> dict[str, str]:
    """Texts of index rows (shard, row_group, row), reading each row group once."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        if row.get("shard") is not None:
            groups.setdefault((str(row["shard"]), int(row["row_group"])), []).append(row)
    texts: dict[str, str] = {}
    for (shard, group), members in groups.items():
        url = storage.join(documents_url, f"{shard}.parquet")
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as f:
            table = pq.ParquetFile(f).read_row_group(group, columns=["id", "text"])
        for row in members:
            record = table.slice(int(row["row"]), 1).to_pylist()
            if record and record[0]["id"] == row["id"]:  # a stale index shows no text rather than another's
                texts[row["id"]] = record[0]["text"]
    return texts
