"""Pipeline configs: the YAML files under include/pipelines/.

Every tunable lives there. Relative paths resolve against the config file's folder,
and ``${VAR:-default}`` reads the environment, so one file serves a laptop and a pod.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tamis import storage
from tamis.gates import GateConfig, gate_config
from tamis.stage import Stage
from tamis.stages import stage_class

PIPELINES_DIR = Path(__file__).resolve().parent.parent / "pipelines"
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    path: str
    format: Literal["auto", "jsonl", "jsonl.gz", "parquet", "text"] = "auto"
    text_field: str = "text"
    id_field: str | None = None
    url_field: str | None = None
    # What kind of text the source holds; quality rules differ for code and prose.
    type: Literal["prose", "code"] = "prose"

    # A source name starts record ids (``<source>/<record id>``) and output part names, so it
    # holds no '/' (ids stay unambiguous) and cannot climb out of a folder.
    SAFE_NAME: ClassVar[re.Pattern] = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

    @classmethod
    def check_name(cls, name: str) -> str:
        if not cls.SAFE_NAME.fullmatch(name) or ".." in name:
            raise ValueError(
                f"source name {name!r} is not allowed: use 1 to 64 letters, digits, '.', '-' or '_', "
                "starting with a letter or digit, with no '..'"
            )
        return name


class Orchestration(_Strict):
    """How the scheduler treats every stage task."""

    retries: int = Field(default=2, ge=0)
    retry_delay_s: int = Field(default=30, ge=0)
    task_timeout_s: int = Field(default=3600, gt=0)


class Nightly(_Strict):
    """The incremental ingest: each day's partition is cleaned, deduplicated against the
    corpus and appended to it."""

    schedule: str = "@daily"
    start_date: str = "2026-11-20"
    # The last day to ingest; None: every day up to today (catch-up runs included).
    end_date: str | None = None
    catchup: bool = True
    # The last stage whose output joins the corpus; later stages (tokenize...) belong to releases.
    until_stage: str = "exact_dedup"

    @field_validator("end_date", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return value or None


class Pipeline(_Strict):
    name: str
    path: str = Field(exclude=True)
    storage_root: str
    # Airflow connection whose credentials reach an s3:// storage root (tasks export them).
    storage_connection: str = "aws_default"
    workers: int = Field(default=2, ge=1)
    execution: dict[str, Any] = Field(default_factory=lambda: {"mode": "local"})
    sources: dict[str, SourceConfig]
    stages: dict[str, dict[str, Any]]
    gates: dict[str, dict[str, Any]] = Field(default_factory=dict)
    orchestration: Orchestration = Field(default_factory=lambda: Orchestration())
    nightly: Nightly = Field(default_factory=lambda: Nightly())
    release: dict[str, Any] = Field(default_factory=dict)  # validated by tamis.release.ReleaseConfig

    @field_validator("sources")
    @classmethod
    def _source_names_are_safe(cls, value: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        for name in value:
            SourceConfig.check_name(name)
        return value

    @field_validator("stages", mode="before")
    @classmethod
    def _null_params_are_defaults(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {name: params or {} for name, params in value.items()}
        return value

    @property
    def stage_names(self) -> list[str]:
        return list(self.stages)

    def stage(self, name: str, overrides: dict[str, Any] | None = None) -> Stage:
        if name not in self.stages:
            raise ConfigError(f"pipeline {self.name!r} has no stage {name!r}; it has: {', '.join(self.stages)}")
        params = {**self.stages[name], **(overrides or {})}
        cls = stage_class(name)
        try:
            return cls(params, context={"sources": self.sources, "pipeline": self.name})
        except ValueError as exc:
            raise ConfigError(f"invalid parameters for stage {name!r} in {self.path}: {exc}") from exc

    def gate(self, name: str) -> GateConfig:
        try:
            return gate_config(self.gates, name)
        except ValueError as exc:
            raise ConfigError(f"invalid gate for stage {name!r} in {self.path}: {exc}") from exc

    def run_url(self, run_id: str) -> str:
        return storage.join(self.storage_root, "runs", safe_run_id(run_id))

    def stage_url(self, run_id: str, stage: str) -> str:
        return storage.join(self.run_url(run_id), stage)

    @property
    def corpus_url(self) -> str:
        return storage.join(self.storage_root, "corpus", self.name)

    @property
    def near_dedup_index_url(self) -> str:
        """Signatures of every document in the corpus, for incremental near dedup."""
        return storage.join(self.corpus_url, "_index", "near_dedup")

    @property
    def corpus_stages(self) -> list[str]:
        """The stages a nightly run goes through before appending to the corpus."""
        names = self.stage_names
        if self.nightly.until_stage not in names:
            raise ConfigError(f"nightly.until_stage {self.nightly.until_stage!r} is not a stage of {self.path}")
        return names[: names.index(self.nightly.until_stage) + 1]

    def previous_stage(self, stage: str) -> str | None:
        names = self.stage_names
        index = names.index(stage)
        return names[index - 1] if index > 0 else None


def safe_run_id(run_id: str) -> str:
    """Airflow run ids carry ':' and '+'; keep paths portable across filesystems and S3."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", run_id).strip("_")


def resolve_pipeline_path(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        return candidate.resolve()
    named = PIPELINES_DIR / f"{name_or_path}.yaml"
    if named.exists():
        return named
    known = ", ".join(sorted(p.stem for p in PIPELINES_DIR.glob("*.yaml")))
    raise ConfigError(f"no pipeline config {name_or_path!r} (a YAML path, or one of: {known})")


def load_pipeline(name_or_path: str = "default") -> Pipeline:
    path = resolve_pipeline_path(name_or_path)
    raw = yaml.safe_load(_expand_env(path.read_text()))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = path.parent
    raw["storage_root"] = _resolve(raw.get("storage_root", "../../data"), base)
    for source in (raw.get("sources") or {}).values():
        if isinstance(source, dict) and "path" in source:
            source["path"] = _resolve(source["path"], base)
    try:
        pipeline = Pipeline(path=str(path), **raw)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    for name in pipeline.stages:
        pipeline.stage(name)  # validates every stage's parameters up front
        pipeline.gate(name)
    return pipeline


def _expand_env(text: str) -> str:
    return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), text)


def _resolve(path: str, base: Path) -> str:
    if "://" in path:
        return path
    return str((base / path).resolve())
