"""Two runs side by side: what a change of thresholds or of pipeline did.

* counts per stage and per rule (drop and quarantine reasons) of both runs with the
  difference, from the manifests;
* the parameters that differ, stage by stage, as each stage ran them (its manifest);
* samples of documents one run kept and the other dropped: the drop tables of both runs are
  read (ids and reasons only), and a document dropped by one run only is shown when the
  other run's same stage kept it (one part read per sample).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tamis import storage
from tamis.dataset import Dataset
from tamis.report import parse_detail, read_part_rows
from tamis.tracking import flatten

SAMPLES = 10


def _manifests(run_url: str, stages: list[str]) -> dict[str, dict[str, Any]]:
    found = {}
    for name in stages:
        dataset = Dataset(storage.join(run_url, name))
        if dataset.is_complete():
            try:
                found[name] = dataset.manifest()
            except ValueError:
                continue
    return found


def count_rows(a: dict[str, dict], b: dict[str, dict], stages: list[str]) -> list[dict[str, Any]]:
    """Per stage: in, kept, dropped, quarantined of both runs (None where a run lacks the stage),
    then per rule of that stage."""
    rows = []
    for name in stages:
        ma, mb = a.get(name), b.get(name)
        if ma is None and mb is None:
            continue
        for key in ("in", "kept", "dropped", "quarantined"):
            rows.append(_row(name, key, "count", _count(ma, "counts", key), _count(mb, "counts", key)))
        for kind, field in (("dropped", "drop_reasons"), ("quarantined", "quarantine_reasons")):
            rules = sorted(set((ma or {}).get(field, {})) | set((mb or {}).get(field, {})))
            for rule in rules:
                rows.append(_row(name, rule, kind, _count(ma, field, rule), _count(mb, field, rule)))
    return rows


def _count(manifest: dict | None, field: str, key: str) -> int | None:
    """A count of a manifest's ``field`` (0 when not listed); None for a stage the run lacks."""
    return None if manifest is None else manifest[field].get(key, 0)


def _row(stage: str, name: str, kind: str, a: int | None, b: int | None) -> dict[str, Any]:
    return {
        "stage": stage,
        "name": name,
        "kind": kind,
        "a": a,
        "b": b,
        "difference": None if a is None or b is None else int(b) - int(a),
    }


def param_diff(a: dict[str, dict], b: dict[str, dict], stages: list[str]) -> list[dict[str, Any]]:
    """Every parameter whose value differs between the two runs, by stage."""
    rows: list[dict[str, Any]] = []
    for name in stages:
        ma, mb = a.get(name), b.get(name)
        if ma is None or mb is None:
            if ma is not None or mb is not None:
                rows.append(
                    {
                        "stage": name,
                        "param": "(stage)",
                        "a": "ran" if ma else "not run",
                        "b": "ran" if mb else "not run",
                    }
                )
            continue
        if ma.get("type") != mb.get("type"):
            rows.append({"stage": name, "param": "(type)", "a": ma.get("type"), "b": mb.get("type")})
        fa, fb = flatten(ma.get("params") or {}, name), flatten(mb.get("params") or {}, name)
        for key in sorted(set(fa) | set(fb)):
            if fa.get(key) != fb.get(key):
                rows.append({"stage": name, "param": key[len(name) + 1 :], "a": fa.get(key), "b": fb.get(key)})
    return rows


def _drops(run_url: str, manifests: dict[str, dict]) -> pa.Table:
    """Every drop of a run: id, stage, reason, detail, part (ids and reasons only are read)."""
    tables = []
    for name, manifest in manifests.items():
        url = storage.join(run_url, name)
        fs, _ = storage.filesystem(url)
        for part in manifest.get("parts", []):
            path = storage.filesystem(storage.join(url, "_dropped", f"{part['name']}.parquet"))[1]
            if not fs.exists(path):
                continue
            table = pq.read_table(path, filesystem=fs, columns=["id", "reason", "detail"])
            n = table.num_rows
            tables.append(
                table.append_column("stage", pa.array([name] * n, pa.string())).append_column(
                    "part", pa.array([part["name"]] * n, pa.string())
                )
            )
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("reason", pa.string()),
            ("detail", pa.string()),
            ("stage", pa.string()),
            ("part", pa.string()),
        ]
    )
    return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()


def kept_by_one(
    run_keeps: str,
    keeps: dict[str, dict],
    drops_other: pa.Table,
    drops_self: pa.Table,
    limit: int = SAMPLES,
    candidates: int = 500,
) -> list[dict[str, Any]]:
    """Documents the other run dropped and ``run_keeps`` kept at that same stage (the first
    ``candidates`` drops of the other run only are looked up, a part read per stage and part)."""
    only_other = drops_other.filter(pc.invert(pc.is_in(drops_other.column("id"), drops_self.column("id"))))
    rows = [r for r in only_other.slice(0, candidates).to_pylist() if r["stage"] in keeps]
    groups: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        groups.setdefault((row["stage"], row["part"]), []).append(row["id"])
    kept: set[tuple[str, str]] = set()
    for (stage, part), ids in groups.items():
        kept.update((stage, i) for i in read_part_rows(storage.join(run_keeps, stage), part, ids, ["id"]))
    samples = []
    for row in rows:
        if (row["stage"], row["id"]) in kept:
            samples.append({**row, "detail": parse_detail(row["detail"])[0]})
            if len(samples) == limit:
                break
    return samples


def compare_runs(run_a: str, run_b: str, stages: list[str], samples: int = SAMPLES) -> dict[str, Any]:
    a, b = _manifests(run_a, stages), _manifests(run_b, stages)
    drops_a, drops_b = _drops(run_a, a), _drops(run_b, b)
    return {
        "a": run_a,
        "b": run_b,
        "stages": [s for s in stages if s in a or s in b],
        "counts": count_rows(a, b, stages),
        "params": param_diff(a, b, stages),
        "kept_by_a_dropped_by_b": kept_by_one(run_a, a, drops_b, drops_a, samples),
        "kept_by_b_dropped_by_a": kept_by_one(run_b, b, drops_a, drops_b, samples),
        "dropped": {"a": drops_a.num_rows, "b": drops_b.num_rows},
    }
