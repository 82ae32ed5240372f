"""Releases: a pipeline's datasets versioned with DVC, with lineage back to the raw files.

A release workspace is a DVC repository of its own (``dvc init --no-scm``), apart from
the project checkout::

    <workspace>/
      pipeline.yaml           the pipeline config, rewritten to run inside the workspace:
                              sources under sources/, every stage's effective params spelled out
      dvc.yaml                one DVC stage per pipeline stage, in pipeline order
      dvc.lock                written by ``dvc repro``: the hash of every input, param and output
      sources/<name>/         a snapshot of each raw source, tracked by sources/<name>.dvc
      data/<stage>/           each stage's output dataset (a DVC out)
      timings/<stage>.json    the run's timings, kept out of the outs (see :func:`seal`)
      gates/<stage>.json      the stage's quality-gate verdict on the released data, likewise
      release.json            the last release manifest
      sources/<name>.origin.json  where each source came from (a Git source's commit, an HTTP
                              source's checksums and the files that did not match them)

The remote (a folder by default, S3 by config) receives the DVC cache objects and, under
``releases/<version>/``, the release manifest with the dvc.yaml, dvc.lock and pipeline.yaml
that restore that version (``dvc pull`` with that lock).

Reproducibility: a stage's output folder must hash the same whenever the same inputs and
params are processed, or DVC would see a new version on every run and rerun everything
downstream. The runner's manifests carry the run's timings; :func:`seal` (the second command
of every DVC stage) moves them to ``timings/`` and writes paths relative to the workspace,
so the sealed outs are byte-identical across runs and across workspaces.

A release belongs to the pipeline's team (``team``), or to everyone (``release.public``): the
catalog shows it only to those who may read it. Its *contents* are the final stage's dataset
and the document dataset its index names: ``tamis release preheat`` (:mod:`tamis.preheat`)
copies exactly those files from the remote to the hot location training jobs read, and the
manifest lists each with its sha256 and its DVC md5 (its object in the remote).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shlex
import sys
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tamis import __version__

# Imported where used: ``seal`` runs once per DVC stage in a fresh interpreter, and should
# not pay for the stage registry, Arrow or DVC.
if TYPE_CHECKING:
    from tamis.pipeline import Pipeline

log = logging.getLogger("tamis.release")

PIPELINE_FILE = "pipeline.yaml"
DVC_FILE = "dvc.yaml"
LOCK_FILE = "dvc.lock"
RELEASE_FILE = "release.json"
ORIGIN_SUFFIX = ".origin.json"
SOURCES_DIR = "sources"
DATA_DIR = "data"
TIMINGS_DIR = "timings"
GATES_DIR = "gates"
GATE_RESULT = "_gates/result.json"
# Where pods mount the hot volume unless release.hot says otherwise.
HOT_MOUNT = "/mnt/tamis-hot"
MANIFEST = "_manifest.json"
COMMITS_DIR = "_commits"
# Manifest and commit fields that describe one run rather than the data it produced.
VOLATILE_MANIFEST_KEYS = ("finished_at", "elapsed_s", "docs_per_s", "workers", "engine", "fingerprint_sha256")
# Files of a run's bookkeeping (what made the output, who was writing it), not of the data.
RUN_FILES = ("_fingerprint.json", "_lease.json")
VOLATILE_COMMIT_KEYS = ("started_at", "elapsed_s")


class ReleaseError(RuntimeError):
    pass


class ReleaseConfig(BaseModel):
    """The pipeline YAML's ``release:`` block."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Local folder of the DVC repository; default <storage_root>/releases/<pipeline>/workspace.
    workspace: str | None = None
    # DVC remote: a folder or s3://bucket/prefix; default <storage_root>/releases/<pipeline>/remote.
    remote: str | None = None
    # S3-compatible endpoint of an s3:// remote; default TAMIS_S3_ENDPOINT_URL / AWS_ENDPOINT_URL.
    endpoint_url: str | None = None

    @field_validator("workspace", "remote", "endpoint_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return value or None

    remote_name: str = "storage"
    push_jobs: int = Field(default=4, ge=1)
    # Readable by every team (stored once, under a prefix every team may read), not only the pipeline's.
    public: bool = False
    # Where `tamis release preheat` puts verified copies for training jobs: a local folder or the
    # mount of a volume they share; default <storage_root>/releases/hot, or HOT_MOUNT in pods.
    hot: str | None = None
    # The PersistentVolumeClaim (k8s/hot-volume.yaml) mounted at `hot` when tasks run as pods.
    hot_volume_claim: str = "tamis-hot"

    @field_validator("hot", mode="before")
    @classmethod
    def _no_hot_is_unset(cls, value: Any) -> Any:
        return value or None

    @field_validator("hot_volume_claim")
    @classmethod
    def _claim_name(cls, value: str) -> str:
        from tamis.execution import check_dns_label

        return check_dns_label(value)

    @property
    def workspace_folder(self) -> str:
        """The workspace, once :func:`release_config` has filled in its default."""
        assert self.workspace is not None, "release_config fills in the workspace"
        return self.workspace

    @property
    def remote_url(self) -> str:
        """The remote, once :func:`release_config` has filled in its default."""
        assert self.remote is not None, "release_config fills in the remote"
        return self.remote


def release_config(pipeline: Pipeline, overrides: dict[str, Any] | None = None) -> ReleaseConfig:
    """The ``release:`` block of the pipeline config (paths already resolved against its
    folder), with the defaults that depend on the storage root filled in."""
    from tamis import storage
    from tamis.pipeline import ConfigError, resolve_path

    block = pipeline.release.model_dump()
    for key, value in (overrides or {}).items():
        if value is not None:
            block[key] = resolve_path(str(value), Path.cwd()) if key in ("workspace", "remote", "hot") else value
    try:
        config = ReleaseConfig(**block)
    except ValueError as exc:
        raise ConfigError(f"invalid release block in {pipeline.path}: {exc}") from exc
    default_root = storage.join(pipeline.storage_root, "releases", pipeline.name)
    workspace = config.workspace
    if workspace is None:
        if "://" in pipeline.storage_root:
            raise ConfigError(
                f"{pipeline.path}: the storage root is {pipeline.storage_root}; "
                "set release.workspace to a local folder for the DVC repository"
            )
        workspace = storage.join(default_root, "workspace")
    if "://" in workspace:
        raise ConfigError(f"{pipeline.path}: release.workspace must be a local folder, got {workspace}")
    hot = config.hot
    if hot is not None:
        hot = resolve_path(hot, Path(pipeline.path).parent)
    elif pipeline.execution.mode == "kubernetes":
        hot = HOT_MOUNT
    elif "://" not in pipeline.storage_root:
        hot = storage.join(pipeline.storage_root, "releases", "hot")
    if hot is not None and "://" in hot:
        raise ConfigError(f"{pipeline.path}: release.hot must be a local folder or a mounted volume, got {hot}")
    return config.model_copy(
        update={"workspace": workspace, "remote": config.remote or storage.join(default_root, "remote"), "hot": hot}
    )


# --- dvc.yaml --------------------------------------------------------------------------------


def stage_out(stage: str) -> str:
    return f"{DATA_DIR}/{stage}"


def dvc_stages(pipeline: Pipeline) -> dict[str, Any]:
    """The ``dvc.yaml`` content: one DVC stage per pipeline stage, in pipeline order.

    Each stage depends on the previous stage's output (the first on the source snapshots)
    and on its own params in pipeline.yaml, so a changed param reruns that stage, and the
    stages after it only if its output changed.
    """
    stages: dict[str, Any] = {}
    previous: str | None = None
    for name in pipeline.stage_names:
        run = ["tamis", "run", name, "--pipeline", PIPELINE_FILE, "--engine", "local"]
        if previous is not None:
            run += ["--input", stage_out(previous)]
        run += ["--output", stage_out(name)]
        # The gate runs on the stage's output as every run's does; a failed gate stops dvc repro.
        gate_cmd = ["tamis", "validate", name, "--pipeline", PIPELINE_FILE, "--dataset", stage_out(name)]
        seal_cmd = ["python", "-m", "tamis.release", "seal", stage_out(name)]
        params = [f"stages.{_stage_position(pipeline, name)}"]
        if previous is None:
            deps = [f"{SOURCES_DIR}/{source}" for source in sorted(pipeline.sources)]
            params.append("sources")  # formats and field names decide what ingest reads
        else:
            deps = [stage_out(previous)]
        stages[name] = {
            "cmd": [shlex.join(run), shlex.join(gate_cmd), shlex.join(seal_cmd)],
            "deps": deps,
            "params": [{PIPELINE_FILE: params}],
            "outs": [stage_out(name)],
        }
        previous = name
    return {"stages": stages}


def workspace_pipeline(pipeline: Pipeline) -> dict[str, Any]:
    """The pipeline config as it runs inside the workspace (paths relative to it)."""
    config = pipeline.model_dump(mode="json", exclude={"release"})
    config["storage_root"] = DATA_DIR
    # Inside the workspace every source is its snapshot, a local folder read as before.
    config["sources"] = {
        name: {"path": f"{SOURCES_DIR}/{name}", **{k: source[k] for k in source_read_fields()}}
        for name, source in sorted(config["sources"].items())
    }
    # Effective params, defaults included: dvc.lock then pins every value the stage used.
    config["stages"] = [
        {"name": spec.name, "type": spec.type, "params": pipeline.stage(spec.name).params.model_dump(mode="json")}
        for spec in pipeline.stages
    ]
    config["execution"] = {"mode": "local"}
    return config


def source_read_fields() -> tuple[str, ...]:
    from tamis.pipeline import SourceConfig

    return SourceConfig.READ_FIELDS


def _stage_position(pipeline: Pipeline, name: str) -> int:
    """DVC params address a list item by its position: ``stages.<n>`` is the stage's whole
    entry (name, type and params), so a change of any of them reruns it."""
    return pipeline.stage_names.index(name)


# --- the workspace ---------------------------------------------------------------------------


def prepare_workspace(pipeline: Pipeline, config: ReleaseConfig) -> Path:
    """Create or update the workspace: DVC repo, remote, source snapshots, pipeline.yaml, dvc.yaml."""
    from tamis import storage
    from tamis.sources.location import location

    workspace = Path(config.workspace_folder)
    workspace.mkdir(parents=True, exist_ok=True)
    names = sorted(pipeline.sources)
    for name in names:
        origin = location(pipeline.sources[name]).snapshot(workspace / SOURCES_DIR / name)
        _write_if_changed(
            workspace / SOURCES_DIR / f"{name}{ORIGIN_SUFFIX}", json.dumps(origin, indent=2, sort_keys=True)
        )
    _write_if_changed(workspace / PIPELINE_FILE, yaml.safe_dump(workspace_pipeline(pipeline), sort_keys=False))
    _write_if_changed(workspace / DVC_FILE, yaml.safe_dump(dvc_stages(pipeline), sort_keys=False))
    remote: dict[str, str] = {"url": _dvc_remote_url(config.remote_url)}
    endpoint = config.endpoint_url or (storage.s3_endpoint() if config.remote_url.startswith("s3://") else None)
    if endpoint:
        remote["endpointurl"] = endpoint
    with _dvc_repo(workspace, "prepare", create=True) as repo:
        with repo.config.edit() as conf:  # credentials stay in the environment, never in the config
            conf["remote"][config.remote_name] = remote
            conf["core"]["remote"] = config.remote_name
        repo.add([f"{SOURCES_DIR}/{name}" for name in names])
    log.info(
        "release workspace %s ready: %d sources, stages %s, remote %s",
        workspace,
        len(names),
        ", ".join(pipeline.stage_names),
        config.remote,
    )
    return workspace


def repro(workspace: Path, force: bool = False) -> dict[str, Any]:
    """``dvc repro``: run the stages whose deps or params changed; returns which ran."""
    from dvc.stage import PipelineStage

    with _dvc_repo(workspace, "repro") as repo:
        stages = repo.reproduce(force=force)
    ran = [stage.name for stage in stages if isinstance(stage, PipelineStage)]
    log.info("dvc repro in %s: %s", workspace, f"ran {', '.join(ran)}" if ran else "every stage is up to date")
    return {"ran": ran, "up_to_date": not ran}


def push(workspace: Path, config: ReleaseConfig) -> dict[str, Any]:
    """``dvc push`` to the remote, then check that the remote holds every object of the lock."""
    with _dvc_repo(workspace, "push") as repo:
        pushed = repo.push(remote=config.remote_name, jobs=config.push_jobs)
        missing = repo.status(cloud=True, remote=config.remote_name)
    if missing:
        raise ReleaseError(f"release: after dvc push, the remote {config.remote} still lacks: {missing}")
    log.info("dvc push: %d files sent to %s", pushed, config.remote)
    return {"remote": config.remote, "pushed": pushed}


@contextlib.contextmanager
def _dvc_repo(workspace: Path, step: str, create: bool = False) -> Iterator[Any]:
    """The workspace's DVC repository, opened in this process with the workspace as the working
    directory. Stage commands find this interpreter's ``tamis`` and ``python`` first on PATH;
    DVC's errors become ReleaseErrors."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    workspace = Path(workspace)
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), path])
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    try:
        if create and not (workspace / ".dvc").is_dir():
            Repo.init(str(workspace), no_scm=True).close()
        # DVC resolves targets against the working directory, as its command line does.
        with contextlib.chdir(workspace), Repo(str(workspace)) as repo, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # raised inside DVC's own modules
            yield repo
    except DvcException as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        raise ReleaseError(f"release: dvc {step} failed in {workspace}: {exc}{cause}") from exc
    finally:
        os.environ["PATH"] = path


def _dvc_remote_url(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def _write_if_changed(path: Path, text: str) -> None:
    """Leave the file (and its mtime) alone when the content is the same."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


# --- sealing a stage's output ----------------------------------------------------------------


def seal(dataset_dir: str | Path, workspace: str | Path = ".") -> dict[str, Any]:
    """Make a stage's output depend only on its inputs and params: move the run's timings from
    ``_manifest.json`` and ``_commits/*.json`` to ``timings/<stage>.json`` and its gate verdict
    to ``gates/<stage>.json`` (outside the out), and write workspace paths relative to the
    workspace. Runs after ``tamis run`` and ``tamis validate`` in each DVC stage; downstream
    stages then hash a manifest that is the same on every run."""
    workspace = Path(workspace).resolve()
    dataset = Path(dataset_dir)
    if not dataset.is_absolute():
        dataset = workspace / dataset
    manifest_path = dataset / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(f"release: no {MANIFEST} in {dataset}; the stage did not finish")
    prefixes = [f"file://{workspace}/", f"{workspace}/"]
    manifest = json.loads(manifest_path.read_text())
    timings: dict[str, Any] = {
        "stage": manifest.get("stage"),
        **{k: manifest.pop(k) for k in VOLATILE_MANIFEST_KEYS if k in manifest},
        "parts": {},
    }
    for name in RUN_FILES:
        path = dataset / name
        if path.exists():
            timings[name.strip("_").removesuffix(".json")] = json.loads(path.read_text() or "null")
            path.unlink()
    for commit_path in sorted((dataset / COMMITS_DIR).glob("*.json")):
        commit = json.loads(commit_path.read_text())
        timings["parts"][commit_path.stem] = {k: commit.pop(k) for k in VOLATILE_COMMIT_KEYS if k in commit}
        _write_json(commit_path, _relative_paths(commit, prefixes))
    _write_json(manifest_path, _relative_paths(manifest, prefixes))
    timings_path = workspace / TIMINGS_DIR / f"{dataset.name}.json"
    timings_path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(timings_path, timings)
    gate = dataset / GATE_RESULT
    if gate.exists():
        (workspace / GATES_DIR).mkdir(exist_ok=True)
        os.replace(gate, workspace / GATES_DIR / f"{dataset.name}.json")
        gate.parent.rmdir()
    return timings


def _relative_paths(value: Any, prefixes: list[str]) -> Any:
    if isinstance(value, str):
        for prefix in prefixes:
            if value.startswith(prefix):
                return value[len(prefix) :]
        return value
    if isinstance(value, list):
        return [_relative_paths(v, prefixes) for v in value]
    if isinstance(value, dict):
        return {k: _relative_paths(v, prefixes) for k, v in value.items()}
    return value


def _write_json(path: Path, obj: Any) -> None:
    # The same layout as the runner's manifests: sorted keys, two-space indent.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


# --- the release manifest --------------------------------------------------------------------


def file_entries(root: Path, relative_to: Path) -> list[dict[str, Any]]:
    """Every file under ``root`` with its size and sha256, paths relative to ``relative_to``."""
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        entries.append(
            {
                "path": path.relative_to(relative_to).as_posix(),
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
            }
        )
    return entries


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def release_manifest(
    pipeline: Pipeline,
    config: ReleaseConfig,
    source_run_id: str | None = None,
    run_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Lineage of the workspace's current state: raw files -> every stage -> the final files.

    Raises if the chain is broken: a stage whose recorded input manifest is not the previous
    stage's, an ingest part whose input is not a snapshotted raw file, or an out whose hash
    differs from dvc.lock (the workspace was changed after ``dvc repro``).
    """
    workspace = Path(config.workspace_folder)
    lock_path = workspace / LOCK_FILE
    if not lock_path.exists():
        raise ReleaseError(f"release: no {LOCK_FILE} in {workspace}; run `dvc repro` first")
    lock_bytes = lock_path.read_bytes()
    lock = yaml.safe_load(lock_bytes)
    lock_sha256 = hashlib.sha256(lock_bytes).hexdigest()
    with _dvc_repo(workspace, "status") as repo:
        status = repo.status()
    if status:
        raise ReleaseError(f"release: the workspace {workspace} differs from {LOCK_FILE}: {status}")
    now = now or datetime.now(UTC)
    version = f"{pipeline.name}-{now:%Y%m%d}-{lock_sha256[:8]}"

    sources = {}
    raw_files: dict[str, dict[str, Any]] = {}
    for name in sorted(pipeline.sources):
        files = file_entries(workspace / SOURCES_DIR / name, workspace)
        tracked = yaml.safe_load((workspace / SOURCES_DIR / f"{name}.dvc").read_text())["outs"][0]
        origin_path = workspace / SOURCES_DIR / f"{name}{ORIGIN_SUFFIX}"
        sources[name] = {
            "origin": pipeline.sources[name].location,
            "kind": pipeline.sources[name].kind,
            "lineage": json.loads(origin_path.read_text()) if origin_path.exists() else None,
            "path": f"{SOURCES_DIR}/{name}",
            "dvc_md5": tracked["md5"],
            "files": files,
        }
        raw_files.update({f["path"]: f for f in files})

    stages = []
    previous_manifest_sha = None
    for index, name in enumerate(pipeline.stage_names):
        locked = lock["stages"].get(name)
        if locked is None:
            raise ReleaseError(f"release: stage {name!r} is not in {LOCK_FILE}; run `dvc repro`")
        out_dir = workspace / stage_out(name)
        manifest_bytes = (out_dir / MANIFEST).read_bytes()
        manifest = json.loads(manifest_bytes)
        manifest_sha = hashlib.sha256(manifest_bytes).hexdigest()
        if index > 0 and manifest.get("input_manifest_sha256") != previous_manifest_sha:
            raise ReleaseError(
                f"release: stage {name!r} read an input manifest "
                f"{manifest.get('input_manifest_sha256')} but {pipeline.stage_names[index - 1]!r} "
                f"has {previous_manifest_sha}"
            )
        if index == 0:
            unknown = [p["input"] for p in manifest["parts"] if p["input"] not in raw_files]
            if unknown:
                raise ReleaseError(
                    f"release: stage {name!r} read files that are not in the source snapshot: {unknown[:5]}"
                )
        timings_path = workspace / TIMINGS_DIR / f"{name}.json"
        stages.append(
            {
                "stage": name,
                "cmd": locked["cmd"],
                "deps": [{"path": d["path"], "md5": d["md5"]} for d in locked.get("deps", [])],
                "params": manifest["params"],
                "input": manifest["input"],
                "input_manifest_sha256": manifest.get("input_manifest_sha256"),
                "output": stage_out(name),
                "dvc_md5": locked["outs"][0]["md5"],
                "manifest_sha256": manifest_sha,
                "counts": manifest["counts"],
                "drop_reasons": manifest["drop_reasons"],
                "quarantine_reasons": manifest["quarantine_reasons"],
                "metrics": manifest.get("metrics", {}),
                "parts": manifest["parts"],
                "timings": json.loads(timings_path.read_text()) if timings_path.exists() else None,
            }
        )
        previous_manifest_sha = manifest_sha

    final = pipeline.stage_names[-1]
    source_run = compare_with_run(pipeline, source_run_id, stages) if source_run_id else None
    return {
        "version": version,
        "pipeline": pipeline.name,
        "team": pipeline.team,
        "public": config.public,
        "pipeline_config": pipeline.path,
        "created_at": now.isoformat(timespec="seconds"),
        "tamis_version": __version__,
        "run_id": run_id,
        "source_run_id": source_run_id,
        "dvc": {
            "remote": config.remote,
            "lock_sha256": lock_sha256,
            "lock": lock,
            "pipeline_yaml_sha256": sha256_file(workspace / PIPELINE_FILE),
        },
        "sources": sources,
        "stages": stages,
        "source_run": source_run,
        "gates": gate_results(workspace, pipeline.stage_names),
        "final": {
            "stage": final,
            "path": stage_out(final),
            "files": file_entries(workspace / stage_out(final), workspace),
        },
        "contents": release_contents(workspace, lock, final, pipeline.stage_names),
        "config": clone_config(pipeline, sources),
    }


def release_contents(workspace: Path, lock: dict[str, Any], final: str, stage_names: list[str]) -> dict[str, Any]:
    """What a user of the release reads: the final dataset and the document dataset its index
    names, every file with its size, sha256 and DVC md5 (its object in the remote)."""
    datasets = [final]
    documents = _indexed_documents(workspace / stage_out(final))
    if documents in stage_names and documents != final:
        datasets.append(documents)
    files = []
    for stage in datasets:
        out = lock["stages"][stage]["outs"][0]
        md5_of = {
            entry["relpath"]: entry["md5"] for entry in json.loads(_cache_object(workspace, out["md5"]).read_text())
        }
        for entry in file_entries(workspace / stage_out(stage), workspace):
            relpath = entry["path"][len(stage_out(stage)) + 1 :]
            if relpath not in md5_of:
                raise ReleaseError(
                    f"release: {entry['path']} is not in the DVC output of stage {stage!r}; run `dvc repro`"
                )
            files.append({**entry, "md5": md5_of[relpath]})
    return {"datasets": datasets, "files": files, "bytes": sum(f["bytes"] for f in files)}


def _indexed_documents(dataset: Path) -> str | None:
    """The stage whose records the dataset's index points to (packed sequences keep their
    documents in a sibling dataset), if it has an index."""
    import pyarrow.parquet as pq

    from tamis.stages.index import DOCUMENTS_NAME_KEY, INDEX_DIR, METADATA_FILE

    path = dataset / INDEX_DIR / METADATA_FILE
    if not path.exists():
        return None
    name = (pq.read_schema(path).metadata or {}).get(DOCUMENTS_NAME_KEY)
    return name.decode() if name else None


def _cache_object(workspace: Path, md5: str) -> Path:
    return workspace / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def store_object_url(remote: str, md5: str) -> str:
    """Where the remote keeps the object of a file with this DVC md5."""
    from tamis import storage

    return storage.join(remote, "files", "md5", md5[:2], md5[2:])


def binary_prefix(manifest: dict[str, Any]) -> str:
    """The path of the release's token binary, without .bin/.idx (the final dataset's first)."""
    paths = {f["path"] for f in manifest["contents"]["files"]}
    pairs = sorted(p[:-4] for p in paths if p.endswith(".bin") and p[:-4] + ".idx" in paths)
    final = manifest["final"]["path"] + "/"
    pairs.sort(key=lambda p: not p.startswith(final))
    if not pairs:
        raise FileNotFoundError(f"release {manifest['version']} holds no .bin/.idx pair of packed sequences")
    return pairs[0]


def gate_results(workspace: Path, stage_names: list[str]) -> dict[str, Any]:
    """Each stage's quality-gate verdict on the released data (null where none was recorded)."""
    results: dict[str, Any] = {}
    for stage in stage_names:
        path = workspace / GATES_DIR / f"{stage}.json"
        result = json.loads(path.read_text()) if path.exists() else None
        results[stage] = (
            None if result is None else {k: result.get(k) for k in ("success", "evaluated", "failed", "facts")}
        )
    return results


def clone_config(pipeline: Pipeline, sources: dict[str, Any]) -> dict[str, Any]:
    """A pipeline config that starts where this release did: the same sources (a Git source
    pinned to the commit it was read at), every stage with its effective parameters, the gates."""
    config: dict[str, Any] = {"name": pipeline.name}
    if pipeline.team:
        config["team"] = pipeline.team
    config["sources"] = {}
    for name, source in sorted(pipeline.sources.items()):
        entry = source.model_dump(mode="json", exclude_none=True)
        commit = (sources[name].get("lineage") or {}).get("commit")
        if commit:
            entry["revision"] = commit
        config["sources"][name] = entry
    config["stages"] = [
        {"name": spec.name, "type": spec.type, "params": pipeline.stage(spec.name).params.model_dump(mode="json")}
        for spec in pipeline.stages
    ]
    if pipeline.gates:
        config["gates"] = pipeline.gates
    return config


def compare_with_run(pipeline: Pipeline, run_id: str, stages: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether each stage of the release holds the same data parts (names and sha256) as the
    corpus run that triggered it; null for a stage that run did not finish. A run built with
    other parameters (a sample, a subset of sources) differs, and this record shows where."""
    from tamis.dataset import Dataset

    identical: dict[str, bool | None] = {}
    for entry in stages:
        dataset = Dataset(pipeline.stage_url(run_id, entry["stage"]))
        if not dataset.is_complete():
            identical[entry["stage"]] = None
            continue
        theirs = [(p["name"], p["sha256"]) for p in dataset.manifest()["parts"]]
        identical[entry["stage"]] = theirs == [(p["name"], p["sha256"]) for p in entry["parts"]]
    return {"run": pipeline.run_url(run_id), "identical_parts": identical}


def write_release(
    pipeline: Pipeline, config: ReleaseConfig, source_run_id: str | None = None, run_id: str | None = None
) -> dict[str, Any]:
    """Write the release manifest into the workspace and, with the files that restore the
    version, to ``<remote>/releases/<version>/``."""
    from tamis import storage

    manifest = release_manifest(pipeline, config, source_run_id, run_id)
    workspace = Path(config.workspace_folder)
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (workspace / RELEASE_FILE).write_bytes(body)
    target = storage.join(config.remote_url, "releases", manifest["version"])
    fs, root = remote_filesystem(config, target)
    fs.makedirs(root, exist_ok=True)
    fs.pipe(
        {
            f"{root}/{RELEASE_FILE}": body,
            **{f"{root}/{name}": (workspace / name).read_bytes() for name in (DVC_FILE, LOCK_FILE, PIPELINE_FILE)},
        }
    )
    log.info(
        "release %s: %d stages, final %s (%d files), manifest at %s",
        manifest["version"],
        len(manifest["stages"]),
        manifest["final"]["path"],
        len(manifest["final"]["files"]),
        target,
    )
    return manifest


def remote_filesystem(config: ReleaseConfig, url: str):
    """The remote's filesystem, reached through the release's own endpoint when it names one."""
    from fsspec.core import url_to_fs

    from tamis import storage

    if not url.startswith("s3://") or not config.endpoint_url:
        return storage.filesystem(url)
    options = storage.storage_options(url)
    options["client_kwargs"] = {**options.get("client_kwargs", {}), "endpoint_url": config.endpoint_url}
    return url_to_fs(url, **options)


def release(
    pipeline: Pipeline,
    config: ReleaseConfig,
    force: bool = False,
    source_run_id: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Every step in order: prepare the workspace, ``dvc repro``, ``dvc push``, the manifest."""
    workspace = prepare_workspace(pipeline, config)
    repro(workspace, force=force)
    push(workspace, config)
    return write_release(pipeline, config, source_run_id, run_id)


# --- command line ------------------------------------------------------------------------------


def add_release_commands(subparsers: argparse._SubParsersAction) -> None:
    """``tamis release <step>``: the steps of the dataset_release DAG, and ``all`` of them."""
    parser = subparsers.add_parser(
        "release", help="version a pipeline's datasets with DVC and write a release manifest"
    )
    steps = parser.add_subparsers(required=True, dest="release_step")
    for step, help_text in (
        ("prepare", "create or update the DVC workspace: sources, pipeline.yaml, dvc.yaml"),
        ("repro", "dvc repro: rerun the stages whose inputs or params changed"),
        ("push", "dvc push to the release remote"),
        ("manifest", "write the release manifest (lineage, dvc.lock) to the workspace and remote"),
        ("all", "prepare, repro, push and manifest in one go"),
        ("preheat", "copy a release from the remote to the hot location, verify it, mark it ready"),
    ):
        sub = steps.add_parser(step, help=help_text)
        sub.add_argument("--pipeline", default="default", help="pipeline name under include/pipelines or a YAML path")
        sub.add_argument("--workspace", help="local folder of the DVC repository (default: release.workspace)")
        sub.add_argument("--remote", help="DVC remote, a folder or s3://... (default: release.remote)")
        if step in ("repro", "all"):
            sub.add_argument("--force", action="store_true", help="rerun every stage")
        if step == "preheat":
            sub.add_argument("--version", help="the release to preheat (default: the workspace's last release)")
            sub.add_argument("--hot", help="the hot location, a local folder or mounted volume (default: release.hot)")
        if step in ("manifest", "all"):
            sub.add_argument(
                "--source-run-id", help="the corpus run whose update triggered this release, for the record"
            )
            sub.add_argument("--run-id", help="the orchestrator run making this release, for the record")
        sub.set_defaults(func=_cmd_release)
    seal_parser = steps.add_parser("seal", help="move a stage output's timings out of it (run by dvc.yaml)")
    seal_parser.add_argument("dataset", help="the stage's output folder")
    seal_parser.add_argument("--workspace", default=".", help="the release workspace (default: the current folder)")
    seal_parser.set_defaults(func=_cmd_seal)


def _cmd_release(args: argparse.Namespace) -> int:
    from tamis.pipeline import load_pipeline

    pipeline = load_pipeline(args.pipeline)
    config = release_config(
        pipeline, {"workspace": args.workspace, "remote": args.remote, "hot": getattr(args, "hot", None)}
    )
    step = args.release_step
    try:
        _run_step(step, args, pipeline, config)
    except ReleaseError as exc:  # DVC's own message says what failed; no traceback needed
        print(f"tamis: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _run_step(step: str, args: argparse.Namespace, pipeline: Pipeline, config: ReleaseConfig) -> None:
    if step == "prepare":
        prepare_workspace(pipeline, config)
    elif step == "repro":
        result = repro(Path(config.workspace_folder), force=args.force)
        print(json.dumps({"ran": result["ran"], "up_to_date": result["up_to_date"]}))
    elif step == "push":
        print(json.dumps({"remote": push(Path(config.workspace_folder), config)["remote"]}))
    elif step == "preheat":
        from tamis.preheat import preheat

        version = args.version or last_release_version(config)
        print(json.dumps(preheat(config, version)))
    else:
        if step == "all":
            manifest = release(
                pipeline, config, force=args.force, source_run_id=args.source_run_id or None, run_id=args.run_id or None
            )
        else:
            manifest = write_release(pipeline, config, args.source_run_id or None, args.run_id or None)
        track(pipeline, config, manifest)
        print(
            json.dumps(
                {
                    "version": manifest["version"],
                    "remote": config.remote,
                    "final": manifest["final"]["path"],
                    "lock_sha256": manifest["dvc"]["lock_sha256"],
                }
            )
        )


def track(pipeline: Pipeline, config: ReleaseConfig, manifest: dict[str, Any]) -> None:
    """The release as an MLflow run; its pointer goes beside the release manifest on the remote."""
    from tamis import storage, tracking

    target = storage.join(config.remote_url, "releases", manifest["version"])
    tracking.track_release(pipeline, manifest, config.workspace_folder, remote_filesystem(config, target))


def last_release_version(config: ReleaseConfig) -> str:
    path = Path(config.workspace_folder) / RELEASE_FILE
    if not path.exists():
        raise ReleaseError(f"release: no {RELEASE_FILE} in {config.workspace}; write the release manifest first")
    return json.loads(path.read_text())["version"]


def _cmd_seal(args: argparse.Namespace) -> int:
    seal(args.dataset, args.workspace)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m tamis.release``: the release commands without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="python -m tamis.release")
    add_release_commands(parser.add_subparsers(required=True, dest="command"))
    args = parser.parse_args(["release", *(argv if argv is not None else sys.argv[1:])])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args) or 0
    except (ReleaseError, FileNotFoundError, ValueError) as exc:  # ConfigError is a ValueError
        print(f"tamis: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
