"""The release catalog: every release of the pipelines this bundle knows, what it holds, how
it was made, and how to read it.

Releases are found where ``tamis release`` writes them: ``<remote>/releases/<version>/
release.json`` of each pipeline config (``include/pipelines/*.yaml``, or the YAML files and
folders listed in ``TAMIS_CATALOG_PIPELINES``, separated by ``os.pathsep``). Records are read
from a folder laid out like the release: its verified hot copy (:mod:`tamis.preheat`), else
the release workspace while it still holds that version. Lookups by filter go through the
release's index (:mod:`tamis.lookup`), never a scan of the data.

Who may see a release is decided by the caller (the Airflow plugin asks Airflow's auth
manager which teams a user belongs to); :func:`readable` applies that answer: a public
release, or one of no team, is readable by everyone; any other by its team.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tamis import storage
from tamis.pipeline import PIPELINES_DIR, ConfigError, Pipeline, load_pipeline
from tamis.release import LOCK_FILE, RELEASE_FILE, ReleaseConfig, binary_prefix, release_config, remote_filesystem

PIPELINES_ENV = "TAMIS_CATALOG_PIPELINES"
TEXT_CHARS = 400
HEAVY = {"input_ids", "doc_ids", "doc_offsets"}
_PIPELINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class Release:
    manifest: dict[str, Any]
    pipeline: Pipeline
    config: ReleaseConfig

    @property
    def version(self) -> str:
        return self.manifest["version"]


# --------------------------------------------------------------------------- finding releases


def pipeline_paths() -> list[Path]:
    listed = os.environ.get(PIPELINES_ENV)
    roots = [Path(p) for p in listed.split(os.pathsep) if p] if listed else [PIPELINES_DIR]
    paths: list[Path] = []
    for root in roots:
        paths += sorted(root.glob("*.y*ml")) if root.is_dir() else [root]
    return paths


def releases() -> tuple[list[Release], list[str]]:
    """Every release, newest first, and the problems met (a config that does not load, a
    store that cannot be listed), so that one broken pipeline does not hide the others."""
    found: dict[str, Release] = {}
    problems = []
    for path in pipeline_paths():
        try:
            pipeline = load_pipeline(str(path))
            config = release_config(pipeline)
            for manifest in _stored_manifests(config):
                found.setdefault(manifest["version"], Release(manifest, pipeline, config))
        except (ConfigError, OSError, ValueError) as exc:
            problems.append(f"{path.name}: {exc}")
    ordered = sorted(found.values(), key=lambda r: (r.manifest.get("created_at") or "", r.version), reverse=True)
    return ordered, problems


def find(version: str) -> Release | None:
    return next((r for r in releases()[0] if r.version == version), None)


def _stored_manifests(config: ReleaseConfig) -> list[dict[str, Any]]:
    fs, root = remote_filesystem(config, storage.join(config.remote_url, "releases"))
    if not fs.exists(root):
        return []
    manifests = []
    for path in sorted(fs.glob(f"{root.rstrip('/')}/*/{RELEASE_FILE}")):
        with fs.open(path, "rb") as f:
            manifests.append(json.loads(f.read()))
    return manifests


def readable(manifest: dict[str, Any], teams: set[str] | None) -> bool:
    """Whether a reader in ``teams`` (None: no team model, everyone reads everything) may see it."""
    if teams is None or manifest.get("public") or not manifest.get("team"):
        return True
    return manifest["team"] in teams


# --------------------------------------------------------------------------- what a release is


def summary(release: Release) -> dict[str, Any]:
    m = release.manifest
    stages = m["stages"]
    final_counts = stages[-1]["counts"] if stages else {}
    return {
        "name": m["pipeline"],
        "version": m["version"],
        "created_at": m.get("created_at"),
        "team": m.get("team"),
        "public": bool(m.get("public")),
        "dvc": {"revision": m["dvc"]["lock_sha256"], "remote": m["dvc"]["remote"]},
        "documents": final_counts.get("kept"),
        "bytes": (m.get("contents") or {}).get("bytes"),
        "tokens": token_counts(m),
        "mixture": mixture(m),
        "ready": hot_folder(release) is not None,
    }


def detail(release: Release) -> dict[str, Any]:
    m = release.manifest
    return {
        **summary(release),
        "pipeline": {"config": m.get("config"), "source_path": m.get("pipeline_config")},
        "stages": [
            {
                "stage": s["stage"],
                "counts": s["counts"],
                "drop_reasons": s["drop_reasons"],
                "quarantine_reasons": s["quarantine_reasons"],
                "params": s["params"],
                "bytes": sum(p.get("bytes", 0) for p in s["parts"]),
                "dvc_md5": s["dvc_md5"],
            }
            for s in m["stages"]
        ],
        "gates": m.get("gates") or {},
        "lineage": lineage(m),
        "contents": {
            "datasets": (m.get("contents") or {}).get("datasets", []),
            "files": len((m.get("contents") or {}).get("files", [])),
        },
        "source_run": m.get("source_run"),
        "loading": loading_code(release),
    }


def token_counts(manifest: dict[str, Any]) -> dict[str, int]:
    """Token totals the stages counted (``<stage type>.tokens``, padding, sequences)."""
    counts: dict[str, int] = {}
    for stage in manifest["stages"]:
        for key, value in stage.get("metrics", {}).items():
            if key.count(".") == 1 and key.split(".")[1] in ("tokens", "pad_tokens", "sequences"):
                counts[key] = value
    return counts


def mixture(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """Tokens per source after the last stage that counted them, with the weights it was given."""
    for stage in reversed(manifest["stages"]):
        by_source = {
            k.split(".", 2)[2]: v
            for k, v in stage.get("metrics", {}).items()
            if k.count(".") >= 2 and k.split(".")[1] == "tokens"
        }
        if by_source:
            total = sum(by_source.values()) or 1
            return {
                "stage": stage["stage"],
                "weights": stage["params"].get("weights"),
                "tokens": by_source,
                "shares": {k: round(v / total, 4) for k, v in sorted(by_source.items())},
            }
    return None


def lineage(manifest: dict[str, Any]) -> dict[str, Any]:
    """Raw sources (where each came from: a commit, checksums) -> each stage -> the contents."""
    sources = {}
    for name, source in manifest["sources"].items():
        origin = source.get("lineage") or {"location": source["origin"]}
        sources[name] = {
            "kind": source.get("kind", "local"),
            "origin": source["origin"],
            "commit": origin.get("commit"),
            "revision": origin.get("revision"),
            "rejected": origin.get("rejected", []),
            "files": len(source["files"]),
            "bytes": sum(f["bytes"] for f in source["files"]),
            "dvc_md5": source["dvc_md5"],
        }
    chain = [
        {
            "stage": s["stage"],
            "input_manifest_sha256": s["input_manifest_sha256"],
            "manifest_sha256": s["manifest_sha256"],
            "dvc_md5": s["dvc_md5"],
        }
        for s in manifest["stages"]
    ]
    return {"sources": sources, "stages": chain, "final": manifest["final"]["path"]}


# --------------------------------------------------------------------------- reading records


def hot_folder(release: Release) -> Path | None:
    from tamis.preheat import hot_copy

    return hot_copy(release.config.hot, release.version) if release.config.hot else None


def view(release: Release) -> tuple[str, str] | None:
    """(folder laid out like the release, "hot" or "workspace"), or None when neither holds it."""
    hot = hot_folder(release)
    if hot is not None:
        return str(hot), "hot"
    workspace = Path(release.config.workspace_folder)
    try:
        current = json.loads((workspace / RELEASE_FILE).read_text())["version"]
        lock = (workspace / LOCK_FILE).read_bytes()
    except (OSError, ValueError, KeyError):
        return None
    import hashlib

    if current == release.version and hashlib.sha256(lock).hexdigest() == release.manifest["dvc"]["lock_sha256"]:
        return str(workspace), "workspace"
    return None


def documents_dataset(manifest: dict[str, Any]) -> str:
    """The release dataset holding document records (the index's documents, else the final one)."""
    datasets = (manifest.get("contents") or {}).get("datasets") or [manifest["final"]["stage"]]
    return f"data/{datasets[-1]}"


def preview(release: Release, limit: int = 10) -> dict[str, Any]:
    """The first ``limit`` records of the release's documents, texts cut at TEXT_CHARS."""
    import pyarrow.parquet as pq

    from tamis.dataset import Dataset

    where = view(release)
    if where is None:
        return {"rows": [], "columns": [], "message": _not_readable(release)}
    folder, read_from = where
    dataset = Dataset(storage.join(folder, documents_dataset(release.manifest)))
    rows: list[dict[str, Any]] = []
    columns: list[str] = []
    for part in dataset.manifest()["parts"]:
        fs, path = storage.filesystem(dataset.part_url(part["name"]))
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            columns = [c for c in parquet.schema_arrow.names if c not in HEAVY]
            for batch in parquet.iter_batches(batch_size=limit, columns=columns):
                rows += [_shown(r) for r in batch.to_pylist()[: limit - len(rows)]]
                break
        if len(rows) >= limit:
            break
    return {"rows": rows, "columns": columns, "read_from": read_from, "dataset": documents_dataset(release.manifest)}


def sample(release: Release, filters: dict[str, str], limit: int = 10) -> dict[str, Any]:
    """Records whose index entries equal every ``filters`` value, found through the index."""
    import pyarrow.parquet as pq

    from tamis import lookup

    where = view(release)
    if where is None:
        return {"rows": [], "columns": [], "message": _not_readable(release)}
    folder, read_from = where
    indexed = storage.join(folder, release.manifest["final"]["path"])
    metadata = lookup.metadata_url(indexed)
    if not storage.exists(metadata):
        return {"rows": [], "columns": [], "message": f"release {release.version} has no index to sample through"}
    schema = pq.read_schema(storage.filesystem(metadata)[1])
    predicate = filter_predicate(schema, filters)
    found = lookup.query(indexed, predicate, limit=limit)
    rows = []
    for entry in found.to_pylist():
        record = lookup.get(indexed, entry["id"]) or entry
        rows.append(_shown({k: v for k, v in record.items() if k not in HEAVY}))
    columns = list(dict.fromkeys(c for r in rows for c in r))
    return {
        "rows": rows,
        "columns": columns,
        "where": predicate,
        "read_from": read_from,
        "filterable": [f.name for f in schema if _literal_kind(f.type) is not None],
    }


def filter_predicate(schema, filters: dict[str, str]) -> str:
    """An SQL predicate of equalities on index columns, each value a checked literal: a reader's
    filter never becomes SQL of its own."""
    parts = []
    for column, value in sorted(filters.items()):
        if column not in schema.names:
            raise ValueError(f"the index has no column {column!r}; it has {', '.join(schema.names)}")
        kind = _literal_kind(schema.field(column).type)
        if kind is None:
            raise ValueError(f"column {column!r} cannot be filtered on")
        if kind == "int":
            if not re.fullmatch(r"-?\d{1,18}", value.strip()):
                raise ValueError(f"{column} is a whole number, not {value!r}")
            literal = value.strip()
        else:
            literal = "'" + value.replace("'", "''") + "'"
        parts.append('"' + column.replace('"', '""') + f'" = {literal}')
    return " AND ".join(parts) or "TRUE"


def _literal_kind(kind) -> str | None:
    import pyarrow as pa

    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "str"
    if pa.types.is_integer(kind):
        return "int"
    return None


def _shown(record: dict[str, Any]) -> dict[str, Any]:
    text = record.get("text")
    if isinstance(text, str) and len(text) > TEXT_CHARS:
        record = {**record, "text": text[:TEXT_CHARS] + "…"}
    return record


def _not_readable(release: Release) -> str:
    return (
        f"release {release.version} is neither preheated nor in its workspace any more; "
        f"run `tamis release preheat --version {release.version}` to read its records here"
    )


# --------------------------------------------------------------------------- using a release


def loading_code(release: Release) -> dict[str, str]:
    """Code that loads this release, with its real paths: Hugging Face ``datasets``, the PyTorch
    loader, and the Megatron ``.bin``/``.idx`` pair (Megatron itself, or numpy alone)."""
    m = release.manifest
    hot = Path(release.config.hot or "<release.hot>") / release.version
    code = {
        "datasets": (
            "from datasets import load_dataset\n\n"
            f'records = load_dataset("parquet", data_files={str(hot / documents_dataset(m) / "*.parquet")!r}, split="train")\n'
        )
    }
    try:
        prefix = binary_prefix(m)
    except FileNotFoundError:
        return code
    code["pytorch"] = (
        "from torch.utils.data import DataLoader\n"
        "from tamis.loader import PackedSequenceDataset\n\n"
        f"dataset = PackedSequenceDataset.from_release({release.version!r}, store={release.config.remote!r},\n"
        f"                                            hot={release.config.hot!r}, seed=0, batch_size=8)\n"
        "loader = DataLoader(dataset, batch_size=8, num_workers=2)\n"
    )
    code["megatron"] = (
        "from megatron.core.datasets.indexed_dataset import IndexedDataset\n\n"
        f"sequences = IndexedDataset({str(hot / prefix)!r})\n"
    )
    code["numpy"] = (
        "import numpy as np\n\n"
        f"prefix = {str(hot / prefix)!r}\n"
        'idx = np.memmap(prefix + ".idx", mode="r", dtype=np.uint8)\n'
        "count = int(idx[18:26].view(np.uint64)[0])\n"
        "dtype = {4: np.int32, 8: np.uint16}[int(idx[17])]\n"
        "sizes = idx[34:34 + 4 * count].view(np.int32)\n"
        "pointers = idx[34 + 4 * count:34 + 12 * count].view(np.int64)\n"
        'tokens = np.memmap(prefix + ".bin", mode="r", dtype=dtype)\n'
        "first = tokens[pointers[0] // np.dtype(dtype).itemsize:][:sizes[0]]\n"
    )
    return code


def clone_yaml(release: Release, name: str) -> str:
    """The release's pipeline config, renamed ``name``: the start of a new pipeline."""
    if not _PIPELINE_NAME.match(name):
        raise ValueError(f"pipeline name {name!r} must hold only letters, digits, '.', '_' and '-'")
    config = release.manifest.get("config")
    if not config:
        raise ValueError(f"release {release.version} does not record its pipeline config (made by an older tamis)")
    head = (
        f"# A new pipeline cloned from release {release.version} of pipeline {release.manifest['pipeline']}\n"
        f"# (DVC revision {release.manifest['dvc']['lock_sha256'][:12]}): its sources, Git ones pinned to the\n"
        "# commit that release read, and every stage with its effective parameters.\n"
    )
    return head + yaml.safe_dump({**config, "name": name}, sort_keys=False, allow_unicode=True)
