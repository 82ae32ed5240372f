"""Experiment tracking: every corpus build, nightly run and release is an MLflow run.

A run records:

* params: the pipeline (name, storage root, execution mode, sources) and every parameter of
  every stage, as the stage ran it (``stage.<name>.<param>``, nested keys joined by ``.``);
* metrics: each stage's counts, drop rate and manifest metrics (``<stage>.<metric>``), the
  drift check's figures for a nightly run;
* artifacts: the stage manifests and gate results, the run summary, the drift check, the
  pipeline YAML, the release manifest;
* datasets (MLflow's dataset tracking): the inputs (the sources, or a nightly run's day of
  them) and the output (the final dataset, the corpus partition, the released data), each
  with its DVC hash (``md5`` of the folder as ``dvc add`` computes it) as digest;
* tags: ``tamis.kind`` (corpus_build, nightly, release), ``tamis.run_id``, ``tamis.pipeline``
  and, inside an Airflow task, ``airflow.dag_id``, ``airflow.run_id`` and ``airflow.task_id``.

The store is ``reports.mlflow.tracking_uri`` of the pipeline YAML (a tracking server), or by
default a SQLite store with its artifacts under ``<storage_root>/mlflow/`` (a local storage
root only: an ``s3://`` root needs a tracking URI). The experiment is ``tamis/<pipeline>``.
Logging the same kind of run with the same run id again replaces the earlier MLflow run.

A run's folder gets ``_mlflow.json`` (store, experiment and MLflow run id), which the report
pages link to; a release's folder on the remote gets the same beside its ``release.json``.

Tracking never fails the data run it describes: an unreachable server is logged as a warning.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, field_validator

from tamis import storage
from tamis.dataset import Dataset

if TYPE_CHECKING:
    from tamis.pipeline import Pipeline

log = logging.getLogger("tamis.tracking")

POINTER = "_mlflow.json"
AIRFLOW_TAGS = {
    "airflow.dag_id": "AIRFLOW_CTX_DAG_ID",
    "airflow.run_id": "AIRFLOW_CTX_DAG_RUN_ID",
    "airflow.task_id": "AIRFLOW_CTX_TASK_ID",
}
PARAM_VALUE_CHARS = 6000
BATCH = 100


class MlflowConfig(BaseModel):
    """The pipeline YAML's ``reports.mlflow`` block."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # A tracking server (http://...), a database URI; null: SQLite under <storage_root>/mlflow.
    tracking_uri: str | None = None
    # null: tamis/<pipeline name>
    experiment: str | None = None

    @field_validator("tracking_uri", "experiment", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return value or None


def store(pipeline: Pipeline) -> tuple[str, str | None] | None:
    """(tracking URI, artifact location of a new experiment) or None when nothing can be tracked."""
    config = pipeline.reports.mlflow
    if not config.enabled:
        return None
    if config.tracking_uri:
        return config.tracking_uri, None
    if "://" in pipeline.storage_root and not pipeline.storage_root.startswith("file://"):
        log.warning(
            "tracking: the storage root %s is not local; set reports.mlflow.tracking_uri to track runs",
            pipeline.storage_root,
        )
        return None
    root = Path(storage.filesystem(storage.join(pipeline.storage_root, "mlflow"))[1])
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()


def experiment_name(pipeline: Pipeline) -> str:
    return pipeline.reports.mlflow.experiment or f"tamis/{pipeline.name}"


# --------------------------------------------------------------------------- what a run logs


def flatten(value: Any, prefix: str) -> dict[str, str]:
    """Nested params as ``prefix.key.sub`` -> text; lists are written as JSON."""
    if isinstance(value, dict) and value:
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}"))
        return out
    text = json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) or value is None else str(value)
    return {prefix: text[:PARAM_VALUE_CHARS]}


def pipeline_params(pipeline: Pipeline, manifests: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The pipeline's settings and every stage's params: as the stage ran them when it finished
    (its manifest), else as configured."""
    params = {
        "pipeline.name": pipeline.name,
        "pipeline.storage_root": pipeline.storage_root,
        "pipeline.workers": str(pipeline.workers),
        "pipeline.execution.mode": pipeline.execution.mode,
        "pipeline.stages": json.dumps(pipeline.stage_names),
    }
    for name, source in pipeline.sources.items():
        params.update(flatten(source.model_dump(mode="json"), f"source.{name}"))
    for name in pipeline.stage_names:
        spec = pipeline.spec(name)
        params[f"stage.{name}.type"] = spec.type
        ran = manifests.get(name, {}).get("params")
        params.update(
            flatten(ran if ran is not None else pipeline.stage(name).params.model_dump(mode="json"), f"stage.{name}")
        )
    return params


def stage_metrics(manifests: dict[str, dict[str, Any]]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name, m in manifests.items():
        counts = m.get("counts", {})
        for key in ("in", "kept", "dropped", "quarantined"):
            metrics[f"{name}.{key}"] = float(counts.get(key, 0))
        n_in = counts.get("in", 0)
        metrics[f"{name}.drop_rate"] = (counts.get("dropped", 0) + counts.get("quarantined", 0)) / n_in if n_in else 0.0
        if m.get("elapsed_s") is not None:
            metrics[f"{name}.elapsed_s"] = float(m["elapsed_s"])
        for reason, count in m.get("drop_reasons", {}).items():
            metrics[f"{name}.dropped.{reason}"] = float(count)
        for key, value in m.get("metrics", {}).items():
            if isinstance(value, (int, float)):
                metrics[f"{name}.{key}"] = float(value)
    return {_metric_key(k): v for k, v in metrics.items()}


def _metric_key(key: str) -> str:
    # MLflow keys hold letters, digits, '_', '-', '.', ' ', '/'.
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)[:250]


def dvc_md5(url: str) -> str | None:
    """The DVC hash of a local file or folder (what ``dvc add`` would record), else None."""
    fs, path = storage.filesystem(url)
    if not storage._is_local(fs) or not os.path.exists(path):
        return None
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    local = LocalFileSystem()
    with tempfile.TemporaryDirectory() as scratch:
        _, _, obj = build(HashFileDB(local, scratch), path, local, "md5", dry_run=True)
    return obj.hash_info.value


def dataset_entry(name: str, url: str, context: str, md5: str | None = None) -> dict[str, Any]:
    return {"name": name, "url": url, "context": context, "dvc_md5": md5 if md5 is not None else dvc_md5(url)}


def source_entry(name: str, source, date: str | None = None) -> dict[str, Any]:
    """A source as an input dataset. A Git or HTTP source has no path to hash: its location
    names the revision read, and ingest's lineage names each file's commit or checksum."""
    label = f"source:{name}@{date}" if date else f"source:{name}"
    if source.path is None:
        return {"name": label, "url": source.location, "context": "input", "dvc_md5": None}
    return dataset_entry(label, source.path, "input")


def airflow_tags() -> dict[str, str]:
    return {tag: os.environ[var] for tag, var in AIRFLOW_TAGS.items() if os.environ.get(var)}


# --------------------------------------------------------------------------- logging a run


def log_run(
    pipeline: Pipeline,
    kind: str,
    run_id: str,
    manifests: dict[str, dict[str, Any]],
    datasets: list[dict[str, Any]],
    artifacts: dict[str, Any],
    extra_metrics: dict[str, float] | None = None,
    extra_tags: dict[str, str] | None = None,
) -> dict[str, Any] | None:
    """Log one run to MLflow; returns the pointer (store, experiment, run id), or None when
    tracking is off or failed."""
    where = store(pipeline)
    if where is None:
        return None
    try:
        return _log(
            pipeline, where, kind, run_id, manifests, datasets, artifacts, extra_metrics or {}, extra_tags or {}
        )
    except Exception as exc:  # the data run stands on its own; a tracking outage must not fail it
        log.warning(
            "tracking: could not log the %s run %s to MLflow at %s: %s: %s",
            kind,
            run_id,
            where[0],
            type(exc).__name__,
            exc,
        )
        return None


def _log(pipeline, where, kind, run_id, manifests, datasets, artifacts, extra_metrics, extra_tags) -> dict[str, Any]:
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag, Metric, Param

    tracking_uri, artifact_location = where
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    name = experiment_name(pipeline)
    experiment = client.get_experiment_by_name(name)
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment(name, artifact_location=artifact_location)
    )
    tags = {
        "tamis.kind": kind,
        "tamis.run_id": run_id,
        "tamis.pipeline": pipeline.name,
        "mlflow.runName": f"{kind} {run_id}",
        **airflow_tags(),
        **extra_tags,
    }
    for earlier in client.search_runs(
        [experiment_id],
        filter_string=(f"tags.`tamis.kind` = '{_quote(kind)}' and tags.`tamis.run_id` = '{_quote(run_id)}'"),
    ):
        client.delete_run(earlier.info.run_id)  # the same run logged again (a retried task, a rebuilt day)
    run = client.create_run(experiment_id, tags=tags, run_name=tags["mlflow.runName"])
    mlflow_run_id = run.info.run_id
    try:
        params = [Param(k, v) for k, v in pipeline_params(pipeline, manifests).items()]
        metrics = [Metric(k, v, 0, 0) for k, v in {**stage_metrics(manifests), **extra_metrics}.items()]
        for i in range(0, len(params), BATCH):
            client.log_batch(mlflow_run_id, params=params[i : i + BATCH])
        for i in range(0, len(metrics), BATCH):
            client.log_batch(mlflow_run_id, metrics=metrics[i : i + BATCH])
        inputs = []
        for entry in datasets:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # a local path fits two equal source kinds
                source = resolve_dataset_source(entry["url"])
            # mlflow marks Dataset.profile abstract without ABCMeta, and MetaDataset leaves it out.
            dataset = MetaDataset(source=source, name=entry["name"], digest=entry["dvc_md5"])  # type: ignore[abstract]
            inputs.append(
                DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", entry["context"])])
            )
        if inputs:
            client.log_inputs(mlflow_run_id, datasets=inputs)
        with tempfile.TemporaryDirectory() as folder:
            for relative, content in artifacts.items():
                target = Path(folder) / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, (bytes, bytearray)):
                    target.write_bytes(content)
                else:
                    target.write_text(json.dumps(content, indent=2, sort_keys=True, default=str))
            client.log_artifacts(mlflow_run_id, folder)
        client.set_terminated(mlflow_run_id, "FINISHED")
    except Exception:
        client.set_terminated(mlflow_run_id, "FAILED")
        raise
    pointer = {
        "tracking_uri": tracking_uri,
        "experiment": name,
        "experiment_id": experiment_id,
        "run_id": mlflow_run_id,
        "kind": kind,
        "tamis_run_id": run_id,
    }
    log.info(
        "tracking: %s run %s logged to MLflow as %s (experiment %s, %s)",
        kind,
        run_id,
        mlflow_run_id,
        name,
        tracking_uri,
    )
    return pointer


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _stage_files(pipeline: Pipeline, run_id: str, stages: list[str]) -> tuple[dict, dict]:
    manifests: dict[str, dict[str, Any]] = {}
    artifacts: dict[str, Any] = {}  # file name -> JSON object, or the bytes of a file
    for name in stages:
        dataset = Dataset(pipeline.stage_url(run_id, name))
        if not dataset.is_complete():
            continue
        manifests[name] = dataset.manifest()
        artifacts[f"manifests/{name}.json"] = manifests[name]
        gate = dataset.gate_result()
        if gate is not None:
            artifacts[f"gates/{name}.json"] = gate
    artifacts["pipeline.yaml"] = Path(pipeline.path).read_bytes()
    return manifests, artifacts


def _write_pointer(folder_url: str, pointer: dict[str, Any] | None) -> None:
    if pointer is not None:
        storage.write_json_atomic(storage.join(folder_url, POINTER), pointer, folder_url)


def read_pointer(folder_url: str) -> dict[str, Any] | None:
    url = storage.join(folder_url, POINTER)
    try:
        return storage.read_json(url) if storage.exists(url) else None
    except ValueError:
        return None


# --------------------------------------------------------------------------- the three kinds of run


def track_corpus_build(pipeline: Pipeline, run_id: str, summary: dict[str, Any]) -> dict[str, Any] | None:
    """A corpus build: every stage of the run, the sources in, the final dataset out."""
    if store(pipeline) is None:
        return None
    manifests, artifacts = _stage_files(pipeline, run_id, pipeline.stage_names)
    artifacts["summary.json"] = summary
    datasets = [source_entry(name, source) for name, source in sorted(pipeline.sources.items())]
    if summary.get("output"):
        datasets.append(
            dataset_entry(
                f"{pipeline.name}:{summary['output'].rstrip('/').rsplit('/', 1)[-1]}", summary["output"], "output"
            )
        )
    pointer = log_run(pipeline, "corpus_build", run_id, manifests, datasets, artifacts)
    _write_pointer(pipeline.run_url(run_id), pointer)
    return pointer


def track_nightly(
    pipeline: Pipeline, run_id: str, date: str, partition: dict[str, Any], drift: dict[str, Any] | None
) -> dict[str, Any] | None:
    """A nightly run: its corpus stages, the day's source partitions in, the corpus partition out."""
    if store(pipeline) is None:
        return None
    from tamis.metrics import drift_metrics

    manifests, artifacts = _stage_files(pipeline, run_id, pipeline.corpus_stages)
    datasets = []
    for name, source in sorted(pipeline.sources.items()):
        if source.path is None:
            datasets.append(source_entry(name, source, date))
        elif storage.exists(day := storage.join(source.path, f"date={date}")):
            datasets.append(dataset_entry(f"source:{name}@{date}", day, "input"))
    datasets.append(dataset_entry(f"corpus:{pipeline.name}@{date}", partition["output"], "output"))
    extra = {}
    if drift is not None:
        artifacts["drift.json"] = drift
        extra = {k.removeprefix("tamis_"): v for k, v in drift_metrics(drift).items()}
    pointer = log_run(pipeline, "nightly", run_id, manifests, datasets, artifacts, extra, {"tamis.date": date})
    _write_pointer(pipeline.run_url(run_id), pointer)
    return pointer


def track_release(
    pipeline: Pipeline, manifest: dict[str, Any], workspace: str, remote_folder: tuple[Any, str] | None = None
) -> dict[str, Any] | None:
    """A release: the stages as DVC reproduced them, the source snapshots in and the released
    data out with the hashes of dvc.lock, the release manifest as an artifact."""
    if store(pipeline) is None:
        return None
    manifests = {s["stage"]: s for s in manifest["stages"]}
    datasets = [
        dataset_entry(f"source:{name}", str(Path(workspace) / s["path"]), "input", s["dvc_md5"])
        for name, s in sorted(manifest["sources"].items())
    ]
    final = manifest["stages"][-1]
    datasets.append(
        dataset_entry(
            f"release:{manifest['version']}", str(Path(workspace) / final["output"]), "output", final["dvc_md5"]
        )
    )
    run_id = manifest.get("run_id") or manifest["version"]
    tags = {"tamis.release_version": manifest["version"], "dvc.lock_sha256": manifest["dvc"]["lock_sha256"]}
    if manifest.get("source_run_id"):
        tags["tamis.source_run_id"] = manifest["source_run_id"]
    artifacts = {"release.json": manifest, "pipeline.yaml": Path(pipeline.path).read_bytes()}
    pointer = log_run(pipeline, "release", run_id, manifests, datasets, artifacts, extra_tags=tags)
    if pointer is not None and remote_folder is not None:
        fs, root = remote_folder
        fs.pipe({f"{root}/mlflow.json": json.dumps(pointer, indent=2, sort_keys=True).encode()})
    return pointer
